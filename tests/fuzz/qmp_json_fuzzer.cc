// libFuzzer target: the agent's QMP JSON reader (node-agent/hypervisor).
//
// The input is one line from a QMP socket. ParseQmpJson must accept it or
// fail with INVALID_ARGUMENT; what it accepts must serialize and parse
// back to the same message; every object value goes through the guest
// statistics reader and every key through QmpUint, whose result is an
// exact integer below 2^53. Nothing may crash.

#include <google/protobuf/struct.pb.h>
#include <google/protobuf/stubs/logging.h>
#include <google/protobuf/util/message_differencer.h>

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"
#include "node-agent/hypervisor/qmp_client.h"
#include "node-agent/hypervisor/qmp_hypervisor.h"
#include "tests/fuzz/fuzz_input.h"

namespace {

using google::protobuf::Struct;
using google::protobuf::Value;

void Visit(const Struct& object, int depth) {
  if (depth > 8) return;
  for (const auto& [key, value] : object.fields()) {
    std::optional<uint64_t> n = membroker::agent::QmpUint(object, key);
    if (n) FUZZ_CHECK(*n <= (uint64_t{1} << 53), "QmpUint above 2^53");
    auto stats = membroker::agent::ParseQmpGuestStats(value);
    FUZZ_CHECK(stats.ok() == (value.kind_case() == Value::kStructValue),
               "guest stats verdict vs kind");
    if (value.kind_case() == Value::kStructValue) Visit(value.struct_value(), depth + 1);
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  // protobuf's own complaints (invalid UTF-8) are expected here: not shown.
  static const bool quiet = (google::protobuf::SetLogHandler(nullptr), true);
  (void)quiet;
  const std::string line(reinterpret_cast<const char*>(data), size);
  absl::StatusOr<Struct> parsed = membroker::agent::ParseQmpJson(line);
  if (!parsed.ok()) {
    FUZZ_CHECK(absl::IsInvalidArgument(parsed.status()), "error code %d",
               static_cast<int>(parsed.status().code()));
    return 0;
  }
  Visit(*parsed, 0);
  absl::StatusOr<std::string> text = membroker::agent::SerializeQmpJson(*parsed);
  if (!text.ok()) return 0;  // e.g. NaN cannot be written back: an error, not a crash
  absl::StatusOr<Struct> again = membroker::agent::ParseQmpJson(*text);
  FUZZ_CHECK(again.ok(), "re-parse of our own output failed: %s",
             std::string(again.status().message()).c_str());
  FUZZ_CHECK(google::protobuf::util::MessageDifferencer::Equals(*parsed, *again),
             "round trip changed the message");
  return 0;
}

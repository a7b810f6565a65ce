// libFuzzer target: the textproto config loaders (common/textproto.h) and
// the validation of what they load.
//
// The first byte picks the config: the broker's BrokerConfig (its cluster
// policy through ValidateClusterPolicy), the agent's AgentConfig, the sim
// backend's SimConfig (ValidateSimConfig) or a simulator Scenario
// (ValidateScenario). Checked: ParseTextProto accepts or fails with
// INVALID_ARGUMENT and leaves the message unchanged on error; validation
// fails only with INVALID_ARGUMENT; what parses prints and parses back to
// the same message.

#include <google/protobuf/stubs/logging.h>
#include <google/protobuf/text_format.h>
#include <google/protobuf/util/field_comparator.h>
#include <google/protobuf/util/message_differencer.h>

#include <cstdint>
#include <memory>
#include <string>

#include "broker/policy_config.h"
#include "common/textproto.h"
#include "membroker/v1/config.pb.h"
#include "membroker/v1/scenario.pb.h"
#include "sim/scenario.h"
#include "sim/sim_host.h"
#include "tests/fuzz/fuzz_input.h"

namespace {

void CheckCode(const absl::Status& s, const char* what) {
  FUZZ_CHECK(s.ok() || absl::IsInvalidArgument(s), "%s: code %d: %s", what,
             static_cast<int>(s.code()), std::string(s.message()).c_str());
}

// Equal, with NaN equal to NaN (a policy may say nan; validation refuses it).
bool SameMessage(const google::protobuf::Message& a, const google::protobuf::Message& b) {
  google::protobuf::util::DefaultFieldComparator comparator;
  comparator.set_treat_nan_as_equal(true);
  google::protobuf::util::MessageDifferencer differencer;
  differencer.set_field_comparator(&comparator);
  return differencer.Compare(a, b);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  // protobuf's own complaints (invalid UTF-8) are expected here: not shown.
  static const bool quiet = (google::protobuf::SetLogHandler(nullptr), true);
  (void)quiet;
  using namespace membroker;
  if (size == 0) return 0;
  const absl::string_view text(reinterpret_cast<const char*>(data + 1), size - 1);
  std::unique_ptr<google::protobuf::Message> message;
  switch (data[0] % 4) {
    case 0:
      message = std::make_unique<v1::BrokerConfig>();
      break;
    case 1:
      message = std::make_unique<v1::AgentConfig>();
      break;
    case 2:
      message = std::make_unique<v1::SimConfig>();
      break;
    default:
      message = std::make_unique<v1::Scenario>();
      break;
  }
  // A marker that must survive a failed parse.
  std::unique_ptr<google::protobuf::Message> before(message->New());
  before->CopyFrom(*message);
  absl::Status parsed = ParseTextProto(text, "fuzz.textproto", message.get());
  CheckCode(parsed, "ParseTextProto");
  if (!parsed.ok()) {
    FUZZ_CHECK(SameMessage(*before, *message), "a failed parse changed the message");
    return 0;
  }
  std::string printed;
  FUZZ_CHECK(google::protobuf::TextFormat::PrintToString(*message, &printed), "print");
  std::unique_ptr<google::protobuf::Message> again(message->New());
  absl::Status reparsed = ParseTextProto(printed, "printed", again.get());
  FUZZ_CHECK(reparsed.ok(), "our own output does not parse: %s",
             std::string(reparsed.message()).c_str());
  FUZZ_CHECK(SameMessage(*message, *again), "print/parse changed the message");
  if (auto* broker = dynamic_cast<v1::BrokerConfig*>(message.get())) {
    CheckCode(broker::ValidateClusterPolicy(broker->cluster_policy()), "ValidateClusterPolicy");
  } else if (auto* sim = dynamic_cast<v1::SimConfig*>(message.get())) {
    CheckCode(sim::ValidateSimConfig(*sim), "ValidateSimConfig");
  } else if (auto* scenario = dynamic_cast<v1::Scenario*>(message.get())) {
    CheckCode(sim::ValidateScenario(*scenario), "ValidateScenario");
  }
  return 0;
}

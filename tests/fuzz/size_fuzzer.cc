// libFuzzer target: the CLI's size and duration parsers and its command
// line (client/args.h, common/units.h).
//
// The first byte picks what the rest is: a size, a duration, or a command
// line (arguments separated by NUL bytes). Checked: a parsed size is at
// most 2^63 and survives FormatBytes -> ParseBytes within the printed
// precision (two decimals: 0.5 %); a parsed duration is finite and not
// negative; ParseArgs accepts or fails with INVALID_ARGUMENT (its
// contract), and the typed flag accessors of what it accepts do the same.

#include <cmath>
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "absl/strings/str_split.h"
#include "client/args.h"
#include "common/units.h"
#include "tests/fuzz/fuzz_input.h"

namespace {

void CheckCode(const absl::Status& s, const char* what) {
  FUZZ_CHECK(s.ok() || absl::IsInvalidArgument(s), "%s: code %d: %s", what,
             static_cast<int>(s.code()), std::string(s.message()).c_str());
}

void FuzzSize(absl::string_view text) {
  absl::StatusOr<uint64_t> v = membroker::ParseBytes(text);
  CheckCode(v.status(), "ParseBytes");
  if (!v.ok()) return;
  FUZZ_CHECK(*v <= (uint64_t{1} << 63), "size above 2^63");
  const std::string shown = membroker::FormatBytes(*v);
  absl::StatusOr<uint64_t> back = membroker::ParseBytes(shown);
  FUZZ_CHECK(back.ok(), "FormatBytes(%llu) = \"%s\" does not parse back: %s",
             (unsigned long long)*v, shown.c_str(), std::string(back.status().message()).c_str());
  const double diff = std::fabs(static_cast<double>(*back) - static_cast<double>(*v));
  FUZZ_CHECK(diff <= static_cast<double>(*v) * 0.005 + 1,
             "FormatBytes(%llu) = \"%s\" reads as %llu", (unsigned long long)*v, shown.c_str(),
             (unsigned long long)*back);
}

void FuzzDuration(absl::string_view text) {
  absl::StatusOr<absl::Duration> d = membroker::ParseDurationArg(text);
  CheckCode(d.status(), "ParseDurationArg");
  if (!d.ok()) return;
  FUZZ_CHECK(*d >= absl::ZeroDuration() && *d < absl::InfiniteDuration(), "duration range");
}

void FuzzArgs(absl::string_view text) {
  std::vector<std::string> args = absl::StrSplit(text, '\0');
  if (args.size() > 64) return;
  absl::StatusOr<membroker::client::Invocation> inv = membroker::client::ParseArgs(args, {});
  CheckCode(inv.status(), "ParseArgs");
  if (!inv.ok()) return;
  if (inv->help) {
    (void)membroker::client::HelpText(inv->help_path);
    return;
  }
  FUZZ_CHECK(inv->command != nullptr, "no command and no help");
  for (const auto& [name, value] : inv->flags) {
    bool present = false;
    CheckCode(membroker::client::FlagBytes(*inv, name, &present).status(), "FlagBytes");
    FUZZ_CHECK(present, "flag %s not present", name.c_str());
    CheckCode(membroker::client::FlagInt(*inv, name, 0, 1000, &present).status(), "FlagInt");
    CheckCode(membroker::client::FlagDouble(*inv, name, 0, 100, &present).status(), "FlagDouble");
    CheckCode(membroker::client::FlagBool(*inv, name, &present).status(), "FlagBool");
    CheckCode(membroker::client::FlagDuration(*inv, name, false, &present).status(),
              "FlagDuration");
    CheckCode(membroker::client::FlagHostId(*inv, name, &present).status(), "FlagHostId");
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const absl::string_view rest(reinterpret_cast<const char*>(data + 1), size - 1);
  switch (data[0] % 3) {
    case 0:
      FuzzSize(rest);
      break;
    case 1:
      FuzzDuration(rest);
      break;
    default:
      FuzzArgs(rest);
      break;
  }
  return 0;
}

// libFuzzer target: the agent's host-side working-set parsers
// (node-agent/working_set.h), fed text as the kernel would write it.
//
// Every parser gets the whole input. Each must accept it or fail with its
// documented code (INVALID_ARGUMENT; NOT_FOUND for a missing cgroup v2
// line), and what it accepts must be sane: referenced memory at most the
// mappings' size and at least one mapping; an absolute cgroup path without
// "." or ".." components; a pressure in 0..100. Nothing may crash.

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/str_split.h"
#include "node-agent/working_set.h"
#include "tests/fuzz/fuzz_input.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace membroker::agent;  // NOLINT: a fuzz entry point
  const std::string text(reinterpret_cast<const char*>(data), size);

  for (uint64_t boot : {uint64_t{0}, uint64_t{512} << 20}) {
    absl::StatusOr<GuestRamReferenced> ram = ParseGuestRamReferenced(text, boot);
    if (ram.ok()) {
      FUZZ_CHECK(ram->mappings >= 1, "no mapping counted");
      FUZZ_CHECK(ram->referenced_bytes <= ram->mapping_bytes, "referenced above size");
    } else {
      FUZZ_CHECK(ram.status().code() == absl::StatusCode::kInvalidArgument, "smaps code %d",
                 static_cast<int>(ram.status().code()));
    }
  }

  absl::StatusOr<std::string> path = ParseCgroupV2Path(text);
  if (path.ok()) {
    FUZZ_CHECK(!path->empty() && (*path)[0] == '/', "relative cgroup path");
    for (absl::string_view part : absl::StrSplit(*path, '/')) {
      FUZZ_CHECK(part != ".." && part != ".", "dot component in the cgroup path");
    }
  } else {
    FUZZ_CHECK(path.status().code() == absl::StatusCode::kInvalidArgument ||
                   path.status().code() == absl::StatusCode::kNotFound,
               "cgroup code %d", static_cast<int>(path.status().code()));
  }

  absl::StatusOr<double> psi = ParseCgroupPressureSomeAvg10(text);
  if (psi.ok()) {
    FUZZ_CHECK(*psi >= 0 && *psi <= 100, "pressure %f outside 0..100", *psi);
  } else {
    FUZZ_CHECK(psi.status().code() == absl::StatusCode::kInvalidArgument, "pressure code %d",
               static_cast<int>(psi.status().code()));
  }
  return 0;
}

#pragma once
// Loading and checking decision-quality scenarios (membroker.v1.Scenario).

#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "membroker/v1/config.pb.h"
#include "membroker/v1/scenario.pb.h"

namespace membroker::sim {

// Reads a scenario file, expands its includes (hosts of other scenario files,
// copied with "-cN" name suffixes; nested at most 4 deep) and validates the
// result. NOT_FOUND for a missing file, INVALID_ARGUMENT naming the file and
// field for anything malformed.
absl::StatusOr<membroker::v1::Scenario> LoadScenario(const std::string& path);

// Checks an expanded scenario (includes already resolved or absent).
// INVALID_ARGUMENT naming the field: empty name, non-positive duration, no
// hosts, duplicate host or VM names, a min above the VM's max, a weight
// outside 1..10000, or any SimVm error.
absl::Status ValidateScenario(const membroker::v1::Scenario& scenario);

// The SimConfig of host `index` of an expanded scenario: the host's VMs, its
// capacity as host memory, and a seed derived from the scenario's seed and
// the index. The scenario's deflate_on_oom sets it on every VM.
membroker::v1::SimConfig HostSimConfig(const membroker::v1::Scenario& scenario, int index);

// The swapless variant of an expanded scenario: every VM's swap is 0 (most
// cloud images have none), and deflate-on-oom is on for every VM when
// `deflate_on_oom` is true, off for every VM otherwise. Named
// "<name>-swapless" or "<name>-swapless-deflate"; everything else (seed,
// workloads, policies) is kept, so the figures compare with the original's.
// INVALID_ARGUMENT (as ValidateScenario) when `scenario` is not valid.
absl::StatusOr<membroker::v1::Scenario> SwaplessVariant(const membroker::v1::Scenario& scenario,
                                                        bool deflate_on_oom);

// True when on every host of an expanded scenario the guests' peak working
// sets (kernel + workload peak with its noise at the top, each at most the
// VM's max; a guest without a balloon driver at its max) fit in the host's
// capacity at the same time: a policy with
// foresight can then keep every guest alive without swap. A sufficient
// condition (peaks that never coincide may fit when this says no).
bool PeakWorkingSetsFit(const membroker::v1::Scenario& scenario);

}  // namespace membroker::sim

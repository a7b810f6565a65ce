#pragma once
// The explanation of one VM's decision as numbered steps a person can check.
// Pure: it reads the allocator's own record of what decided (the host's
// regime, the VM's smoothing), never re-derives the allocator's branches.

#include <cstdint>
#include <string>
#include <vector>

#include "broker/policy/host_step.h"

namespace membroker::policy {

// What the explanation says about the guest's statistics.
struct StatsNote {
  bool trusted = true;
  std::string untrusted_reason;  // when !trusted
  uint64_t total_bytes = 0;
  uint64_t available_bytes = 0;
  std::string health;  // the balloon's health, e.g. "BALLOON_HEALTH_STUCK"
};

// What sets a VM's floor: "pinned", "balloon unhealthy", "operator min",
// "default min", or "protect" (what the guest uses plus its margin).
std::string FloorSourceName(const VmInput& input, const VmDecision& decision);

// Returns the numbered steps for `vm` of a host whose last decision is in
// `host` (`vm` must have been decided). `host_id` only labels the text.
std::vector<std::string> ExplainSteps(const std::string& host_id, const HostStepState& host,
                                      const VmStepState& vm, const StatsNote& stats);

}  // namespace membroker::policy

#pragma once
// One host's decision step: the whole per-host loop, once, for the broker
// and the fleet simulator alike. Pure: plain structs in, a decision out; no
// protobuf, no gRPC, no clock reads, no I/O (time is an input).
//
//   1. Observe: fold a report's VM observations into the host's state. A VM
//      seen for the first time gets fresh estimator state; a VM missing
//      from the report is forgotten (reports are full snapshots). Each
//      VM's guest statistics go through the demand estimator (demand.h)
//      with the time since that VM's previous observation.
//   2. Build the allocation input from the state and the policy snapshot:
//      effective max = min(configured, policy max), min = policy min or the
//      default floor, weight = policy weight or the default, pinned, balloon
//      health, the estimator's demand / protect / active fraction /
//      pressure, and the previous target (the VM's last decision; without
//      one, its current size, so reclaim after a (re)connect is stepped).
//      The host has room to lend its free margin (allocator.h, sacrifice
//      a) when its MemAvailable covers the margin and its own PSI is low.
//   3. Decide with DecideHost (allocator.h) and record, per VM, the input
//      and the decision (for explain), and whether any target changed.

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "broker/policy/allocator.h"
#include "broker/policy/demand.h"

namespace membroker::policy {

// An operator's per-VM policy; unset fields fall back to the cluster's.
struct VmPolicySpec {
  std::optional<uint64_t> min_bytes;
  std::optional<uint64_t> max_bytes;
  std::optional<uint32_t> weight;
  bool pinned = false;
};

// The policies a decision reads: one immutable snapshot per decision.
struct PolicySet {
  PolicyParams params;
  DemandParams demand;
  std::map<std::string, VmPolicySpec> vms;  // by VM id
};

// One VM as one report shows it.
struct VmObservation {
  std::string vm_id;
  uint64_t max_bytes = 0;
  uint64_t actual_bytes = 0;
  bool balloon_healthy = true;  // false: stuck or no driver
  // Guest statistics. `stats_valid` is the edge's trust verdict (one rule,
  // applied before the step); elapsed, actual and max are filled here.
  GuestObservation guest;
};

// One host report, in plain form. VM ids are unique.
struct HostObservation {
  double now_seconds = 0;       // monotonic time the report was received
  uint64_t capacity_bytes = 0;  // 0: keep the previous capacity
  // The host's own memory: MemAvailable (0: unknown) and PSI "some" avg10.
  uint64_t host_available_bytes = 0;
  double host_psi_some_avg10_percent = 0;
  std::vector<VmObservation> vms;
};

// What the step keeps per VM between reports.
struct VmStepState {
  DemandState demand;
  double observed_seconds = 0;  // when last observed
  uint64_t max_bytes = 0;
  uint64_t actual_bytes = 0;
  bool balloon_healthy = true;
  bool decided = false;      // false until decided (and after a reconnect)
  uint64_t observed_in = 0;  // HostStepState::observations when last observed
  // The last decision's input and result. Their vm_id is left empty: the
  // VM's id is its key in HostStepState::vms.
  VmInput input;
  VmDecision decision;
};

// What the step keeps per host. Owned by the caller.
struct HostStepState {
  uint64_t capacity_bytes = 0;
  // Held free for reservations: the decision's capacity is capacity_bytes
  // minus this (at least 0), reached in reclaim steps (DecideStep).
  uint64_t reserved_bytes = 0;
  uint64_t host_available_bytes = 0;  // last reported (0: unknown)
  double host_psi_some_avg10_percent = 0;
  std::map<std::string, VmStepState> vms;  // by VM id
  // The last decision's host-wide part; its `vms` is left empty (each VM's
  // decision is in vms[id].decision).
  HostDecision decision;
  PolicyParams params;                     // of the last decision
  uint64_t observations = 0;               // ObserveHost calls so far
};

// What an observation changed.
struct ObserveResult {
  std::vector<std::string> added;    // VM ids seen for the first time
  std::vector<std::string> removed;  // VM ids no longer reported
};

// Step 1: folds `obs` into `state`.
ObserveResult ObserveHost(const HostObservation& obs, const DemandParams& demand,
                          HostStepState& state);

// Steps 2-3: decides every VM of `state` under `policies`. Returns true when
// some VM's target differs from its last decision (or it had none).
bool DecideStep(const PolicySet& policies, HostStepState& state);

// Forgets every VM's last decision (a new agent stream: it reports what it
// has, and the next decision starts from there).
void ForgetDecisions(HostStepState& state);

// The allocation input of one VM (step 2), exposed for tests.
VmInput BuildVmInput(const std::string& vm_id, const VmStepState& vm, const PolicySet& policies);

}  // namespace membroker::policy

#pragma once
// The allocation of one host's memory among its VMs. Pure: plain structs
// in, targets out; no protobuf, no gRPC, no clock reads, no I/O.
//
// Per host, capacity = host memory - host reserve - active reservations.
//   1. Floors first: floor = clamp(max(min, protect), 0, max). A VM whose
//      balloon is unhealthy (stuck, no driver) or pinned cannot give memory:
//      its floor is its current size (pinned: its max).
//   2. Desired = clamp(demand * (1 + buffer), floor, max).
//   3. If the desired sizes fit in capacity - free margin, every VM gets its
//      desired size; surplus_percent of what is left goes back to VMs by
//      weight up to max, still keeping the host's free margin (the rest
//      stays in the host's free pool).
//   4. If not, capacity - free margin - sum(floors) is shared by weighted
//      water-filling between floor and desired: first VMs under pressure
//      up to their demand, then every VM up to its demand, then up to
//      desired (needs before buffers). Weights are adjusted by the
//      idle memory tax (ESX): a VM whose memory is mostly idle gets fewer
//      shares: w_eff = w / (f + k (1 - f)), f = active fraction,
//      k = 1 / (1 - tax).
//   5. If even the floors do not fit, the host is overcommitted: every VM
//      is kept at its floor and the host is flagged.
//   Before a guest under acute pressure is left short (steps 3-4 cannot
//   give it its demand), sacrifices are made in this order, each only if
//   the previous one was not enough:
//     a. the host free margin is lent (usable = capacity) when the host
//        itself has room (HostInput::host_has_room: its MemAvailable and
//        PSI); smoothing takes it back in steps once the pressure is gone;
//     b. default floors (a VM without an operator's min) yield down to the
//        VM's protect floor, for VMs not under pressure themselves.
//   An operator's explicit min and the protect floor never yield. A guest
//   under acute pressure still left below its demand after every sacrifice
//   marks the host short (HostDecision::pressure_unmet): the host cannot
//   hold what its VMs need, which operators see as overcommitted.
//   6. Smooth against the previous target: give memory at once; take it
//      back at most reclaim_step per decision; ignore a change smaller than
//      the hysteresis band, max(hysteresis_bytes, hysteresis_percent of the
//      previous target) (unless it moves to a floor or max).
// Smoothing never takes a VM below its floor and never above its max, and
// never makes the host's sum exceed capacity (growth is cut to what the
// smoothed reclaims leave room for, taken first from the largest grants).

#include <cstdint>
#include <string>
#include <vector>

namespace membroker::policy {

// Why a VM got its target; mirrors membroker.v1.ReasonCode.
enum class Reason {
  kUnspecified = 0,
  kDemand = 1,
  kFloor = 2,
  kShare = 3,
  kStepLimit = 4,
  kHysteresis = 5,
  kMax = 6,
  kOvercommitted = 7,
  kPinned = 8,
  kBalloonUnhealthy = 9,
  kSurplus = 10,
};

// Returns "demand", "floor", ... for logs and explanations.
const char* ReasonName(Reason reason);

// Which of steps 3-5 shared the host's memory (the allocator's own record,
// so an explanation never re-derives it).
enum class Regime {
  kFits = 0,           // step 3: every desired size fits; surplus shared
  kShared = 1,         // step 4: memory above the floors shared by weight
  kOvercommitted = 2,  // step 5: even the floors do not fit
};

// Returns "fits", "shared", "overcommitted".
const char* RegimeName(Regime regime);

// What step 6 did to a VM's share.
enum class Smoothing {
  kNone = 0,        // target = share (also: first decision)
  kHysteresis = 1,  // change inside the band: target stays at the previous one
  kStepLimit = 2,   // reclaim limited to reclaim_step per decision
  kGrowthCut = 3,   // growth cut to what held-back reclaims leave room for
};

// Cluster-wide tunables (a validated membroker.v1.ClusterPolicy). These
// initializers are the shipped defaults, defined once: the broker's
// DefaultClusterPolicy() and the simulator read them from here.
struct PolicyParams {
  double buffer_percent = 20.0;
  uint64_t host_free_margin_bytes = uint64_t{128} << 20;
  uint64_t reclaim_step_bytes = uint64_t{256} << 20;
  uint64_t hysteresis_bytes = uint64_t{8} << 20;
  double idle_tax_percent = 75.0;
  // The floor of a VM without an operator min. Floors are protect-based
  // (what the guest uses plus its margin); this is only the least any guest
  // is left (a kernel and its init), and it yields under acute pressure.
  uint64_t default_min_bytes = uint64_t{64} << 20;
  uint32_t default_weight = 100;
  // Share of the step-3 surplus handed back to VMs, 0..100. 100 gives all
  // of it by weight up to max; 0 keeps it in the host's free pool, where it
  // is reclaimed memory and room for any VM to grow into at once.
  double surplus_percent = 100.0;
  // Relative hysteresis: a change is ignored when it is smaller than
  // max(hysteresis_bytes, hysteresis_percent of the previous target).
  double hysteresis_percent = 5.0;
  // Step 4 shares memory up to every VM's demand before any buffer.
  bool needs_before_buffers = true;
  // Sacrifice a (see above): the free margin is lent only while the host's
  // own memory pressure (PSI some avg10) is below this.
  double lend_margin_max_psi_percent = 10.0;
};

// One VM's inputs to the decision.
struct VmInput {
  std::string vm_id;
  uint64_t max_bytes = 0;         // effective max: min(configured, policy max)
  uint64_t min_bytes = 0;         // effective min (policy or default)
  uint32_t weight = 100;          // >= 1
  bool pinned = false;            // keeps max, never reclaimed
  bool balloon_healthy = true;    // false: cannot reclaim (stuck / no driver)
  uint64_t demand_bytes = 0;      // demand estimate
  uint64_t protect_bytes = 0;     // actively used + margin: never below this
  uint64_t actual_bytes = 0;      // balloon actual now
  uint64_t previous_target_bytes = 0;  // 0: no previous decision
  double active_fraction = 1.0;   // 0..1, share of its memory in active use
  bool under_pressure = false;    // acute pressure now or lately (DemandState::acute)
  bool min_is_default = false;    // no operator min: the floor may yield
};

// One host's inputs.
struct HostInput {
  uint64_t capacity_bytes = 0;  // already net of reserve and reservations
  std::vector<VmInput> vms;
  // The host itself has the free margin's worth of memory and no memory
  // pressure of its own: the margin may be lent (sacrifice a).
  bool host_has_room = false;
};

// One VM's decision, with every intermediate number for `explain`.
struct VmDecision {
  std::string vm_id;
  uint64_t floor_bytes = 0;
  uint64_t desired_bytes = 0;
  uint64_t share_bytes = 0;   // steps 3-5, before smoothing
  uint64_t target_bytes = 0;  // after smoothing
  double effective_weight = 0;
  Reason reason = Reason::kUnspecified;
  Smoothing smoothing = Smoothing::kNone;
  uint64_t previous_target_bytes = 0;  // what step 6 smoothed against (0: none)
  uint64_t hysteresis_band_bytes = 0;  // the band step 6 applied
  bool floor_yielded = false;  // its default floor yielded (sacrifice b)
};

// One host's decision. `vms` is in the order of HostInput::vms.
struct HostDecision {
  std::vector<VmDecision> vms;
  bool overcommitted = false;  // regime == kOvercommitted
  Regime regime = Regime::kFits;
  uint64_t usable_bytes = 0;   // capacity - free margin (+ margin lent)
  uint64_t margin_lent_bytes = 0;  // sacrifice a: free margin lent
  bool floors_yielded = false;     // sacrifice b: default floors yielded
  // A VM under acute pressure is left below its demand after every
  // sacrifice (ids in input order).
  std::vector<std::string> pressure_unmet;
  uint64_t floor_bytes = 0;    // sum of floors
  uint64_t desired_bytes = 0;  // sum of desired
  uint64_t target_bytes = 0;   // sum of targets
};

// Step 1's floor of one VM: clamp(max(min, protect), 0, max); pinned: its
// max; unhealthy balloon: at least its current size. With
// `yield_default_min`, the min is not counted (sacrifice b; the caller
// decides whether the VM's min may yield).
uint64_t FloorBytes(const VmInput& vm, bool yield_default_min = false);

// The hysteresis band around a previous target: changes smaller than
// max(hysteresis_bytes, hysteresis_percent of the previous target) are not
// made (step 6).
uint64_t HysteresisBand(uint64_t previous_target_bytes, const PolicyParams& params);

// Decides every VM's target on one host. Deterministic: the same input
// gives the same output. Invariants (see allocator_test.cc):
//   floor <= target <= max for every VM;
//   sum(targets) <= capacity unless `overcommitted`;
//   target >= protect (clamped to max) for every VM.
HostDecision DecideHost(const HostInput& input, const PolicyParams& params);

}  // namespace membroker::policy

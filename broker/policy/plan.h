#pragma once
// Fleet-wide advice from a snapshot of every host's last decision inputs:
// where a new VM fits (placement) and which VMs to move so that every host
// holds what its VMs need (the rebalance plan). Pure: plain structs in,
// advice out; no protobuf, no gRPC, no clock reads, no I/O. Nothing here
// changes a target: the broker's per-host decisions stay as they are.
//
// Per host, usable = capacity - free margin. Per VM, from its last input:
//   floor = FloorBytes (allocator.h): operator min or protect, pinned at its
//           max, an unhealthy balloon at its current size; reclaim never
//           goes below it;
//   need  = max(floor, min(demand, max)): what the VM uses now.
// A host is short when sum(need) > usable (this covers floors that do not
// fit); its deficit is sum(need) - usable.
//
// Placement of a VM of `bytes` (PlaceVms):
//   1. Candidates are connected hosts with usable - sum(floor) >= bytes:
//      room exists now or after reclaim within policy (step limits only
//      delay it). Reclaim = max(0, bytes - (usable - sum(target))).
//   2. Best first: hosts that take it without pushing any VM below its
//      need, then least reclaim, then most room left after it
//      (usable - sum(need) - bytes), then host id.
//   3. K VMs are placed one by one, each on the best host of step 2 with
//      the host's sums updated by the VMs already placed.
//
// The plan (PlanMoves):
//   1. Short hosts, largest deficit first (then host id), each in turn.
//   2. Movable VMs are those not pinned (a pinned VM keeps its place) with
//      a destination: a connected host that is not short, is no source of
//      the plan, and keeps sum(need) + the VM's need <= usable. Of those,
//      the one with the most room left (then host id).
//   3. While the host's deficit D > 0: if some movable VM alone covers D
//      (need >= D), move the one of least need x weight (small and
//      unimportant), then weight, then id; otherwise move the one of least
//      weight, then largest need (fewest moves), then id.
//   4. A host whose deficit cannot be covered stays short and is listed
//      with what is left; its chosen moves still stand (they relieve it).
// Moves only ever go to hosts that stay within their usable memory: the
// plan never makes a host short.

#include <cstdint>
#include <string>
#include <vector>

#include "broker/policy/host_step.h"

namespace membroker::policy {

// One VM of a plan snapshot.
struct PlanVm {
  std::string vm_id;
  std::string name;  // for people; may be empty
  uint64_t floor_bytes = 0;
  uint64_t need_bytes = 0;    // max(floor, min(demand, max))
  uint64_t target_bytes = 0;  // last decision's target
  uint32_t weight = 100;
  bool pinned = false;
};

// One host of a plan snapshot.
struct PlanHost {
  std::string host_id;
  bool connected = false;
  uint64_t usable_bytes = 0;  // capacity - free margin - reserved
  std::vector<PlanVm> vms;    // in id order

  // Sums over `vms`.
  uint64_t FloorBytes() const;
  uint64_t NeedBytes() const;
  uint64_t TargetBytes() const;
};

// Converts one host's decision state (copied under its lock) into its plan
// form. A VM never decided (a new stream) counts at its current size.
PlanHost PlanHostFromStep(const std::string& host_id, bool connected, const HostStepState& state);

// One host that could take the VM.
struct PlacementOption {
  std::string host_id;
  uint64_t free_bytes = 0;     // usable - sum(target), before placing
  uint64_t reclaim_bytes = 0;  // what the host would have to reclaim first
  // usable - sum(need) - bytes after placing; negative: VMs would be held
  // below their need (but at or above their floors).
  int64_t headroom_bytes = 0;
  bool within_need = false;  // headroom_bytes >= 0
};

// Where `count` VMs of `bytes` each would go.
struct PlacementResult {
  // Every host that could take one such VM now, best first.
  std::vector<PlacementOption> options;
  // Host of each of the `count` VMs, in placing order; shorter than
  // `count` when the fleet cannot take them all.
  std::vector<std::string> assignments;
};

// Placement (see the top of this file). `bytes` 0 or `count` 0 yields no
// options and no assignments.
PlacementResult PlaceVms(const std::vector<PlanHost>& hosts, uint64_t bytes, uint32_t count);

// One VM move.
struct Move {
  std::string vm_id;
  std::string vm_name;
  std::string from_host_id;
  std::string to_host_id;
  uint64_t bytes = 0;  // memory relieved on the source: the VM's need
  std::string reason;  // e.g. "host a short by 1.00 GiB"
};

// A host the plan cannot restore.
struct UnresolvedHost {
  std::string host_id;
  uint64_t short_bytes = 0;  // deficit left after the plan's moves
};

// The rebalance plan.
struct RebalancePlan {
  std::vector<Move> moves;
  uint32_t hosts_short_before = 0;
  uint32_t hosts_short_after = 0;
  uint64_t moved_bytes = 0;  // sum of moves' bytes
  std::vector<UnresolvedHost> unresolved;
};

// The plan (see the top of this file). Deterministic.
RebalancePlan PlanMoves(const std::vector<PlanHost>& hosts);

// How short a host is: max(0, sum(need) - usable).
uint64_t ShortBytes(const PlanHost& host);

}  // namespace membroker::policy

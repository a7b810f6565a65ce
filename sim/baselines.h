#pragma once
// Controllers of the baselines and the oracle for the fleet simulator. Each
// re-implements a public description; baselines.cc cites the source of
// every rule.

#include <memory>

#include "sim/fleet_sim.h"

namespace membroker::sim {

// Never sets a target: every guest keeps its boot memory.
std::unique_ptr<HostController> MakeNoBallooningController();

// Proxmox VE auto-ballooning (pvestatd + PVE::AutoBalloon::compute_alg1).
std::unique_ptr<HostController> MakeProxmoxController();

// oVirt MoM's default balloon policy (vdsm mom.d/02-balloon.policy).
std::unique_ptr<HostController> MakeMomController();

// XenServer squeezed: every VM at the same fraction between its
// dynamic-min and dynamic-max.
std::unique_ptr<HostController> MakeSqueezedController();

// The clairvoyant oracle: gives each VM the largest working set it will
// have before a balloon could follow, honouring floors; shares by need
// when the host is short. `balloon_rate` is the guests' balloon speed.
std::unique_ptr<HostController> MakeOracleController(absl::Duration period,
                                                     uint64_t balloon_rate_bytes_per_second);

}  // namespace membroker::sim

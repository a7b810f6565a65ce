#pragma once
// Demand estimation from guest statistics. Pure: elapsed time is an input.
//
//   1. used = total - available (what the guest cannot give up cheaply),
//      plus the balloon size the guest does not see (actual - total: its
//      kernel's boot reservations), measured while the balloon is still.
//   2. The estimate follows used with a fast-up / slow-down filter: it jumps
//      to a higher value at once and decays toward a lower one with a
//      half-life (default 30 s), so a brief dip does not trigger reclaim;
//      optionally a longer half-life for a while after pressure.
//   3. Pressure bumps demand at once: swap-in or major faults since the last
//      sample mean the guest is short; demand becomes at least
//      actual + max(the swapped-in bytes (rate x interval), the estimated
//      swap occupancy) + a pressure step. The swap occupancy is the running
//      balance of swap-out minus swap-in since the guest was first seen
//      (never below 0): how much of its memory the guest pushed out, so
//      one report is enough to ask for the whole deficit.
//   4. A full guest is pressure too, and its real demand is unknown
//      (censored): when available memory is near zero (at most
//      max(full_available_bytes, full_available_percent of total)), demand
//      becomes at least actual + max(pressure step, the growth of used
//      memory over the time a target takes to land). The growth is a
//      trend: an exponentially weighted rate of used memory over the last
//      reports. A guest that is not full yet but whose projected use (used
//      + trend x landing time) would fill it is asked that much already.
//      Acute pressure the agent saw from the host side counts the same.
//   5. Deflate-on-oom: a balloon that grew above its last target without
//      being asked (the guest took pages back before its OOM killer ran) is
//      pressure; for deflate_hold_seconds after it, protect is at least the
//      balloon's size: the broker never re-inflates into that guest.
//   6. protect = used + min(used * protect margin, protect margin cap);
//      under pressure at least used + the estimated swap occupancy (pages
//      being read back are working set); never more than max.
//   7. Untrusted or missing statistics keep the previous estimate (or, for
//      a VM never seen with valid stats, its current size: no reclaim).

#include <cstdint>

#include "broker/policy/allocator.h"

namespace membroker::policy {

// Tunables of the estimator; the initializers are the shipped defaults.
struct DemandParams {
  double decay_half_life_seconds = 30.0;
  double protect_margin_percent = 10.0;
  // After pressure the estimate decays with this half-life instead (0: the
  // normal one), for pressure_memory_seconds: a guest that just swapped
  // keeps room for its next surge a while longer.
  double pressure_decay_half_life_seconds = 0;
  double pressure_memory_seconds = 0;
  // Caps the protect margin in bytes (0: no cap), so a large guest's floor
  // does not hold back memory its neighbours need.
  uint64_t protect_margin_max_bytes = uint64_t{32} << 20;
  // Extra demand per pressure event, on top of the swapped-in bytes.
  uint64_t pressure_step_bytes = uint64_t{128} << 20;
  // Swap-in below this rate (bytes/s) is noise, not pressure.
  double swap_in_noise_bytes_per_second = 64.0 * 1024;
  // Major faults below this rate (1/s) are noise.
  double major_fault_noise_per_second = 50.0;
  // A guest is full when its available memory is at most the larger of
  // these (MemAvailable keeps a few per cent for the kernel's watermarks).
  uint64_t full_available_bytes = uint64_t{48} << 20;
  double full_available_percent = 4.0;
  // Seconds a target takes to land (report, decision, balloon): the horizon
  // over which growth of used memory is projected.
  double landing_seconds = 3.0;
  // Half-life of the used-memory growth trend.
  double trend_half_life_seconds = 2.0;
  // Growth below this rate (bytes/s) is noise.
  double trend_noise_bytes_per_second = 2.0 * 1024 * 1024;
  // After a deflate-on-oom, reclaim below the balloon's size waits this long.
  double deflate_hold_seconds = 120.0;
  // A guest stays under acute pressure (what the allocator's sacrifices and
  // tiers serve) this long after its last pressure sample, so a guest that
  // just got room is not left short again the next second.
  double acute_hold_seconds = 30.0;
};

// One guest observation.
struct GuestObservation {
  bool stats_valid = false;        // false: missing, stale or impossible
  uint64_t total_bytes = 0;
  uint64_t available_bytes = 0;
  uint64_t swap_in_bytes_total = 0;
  uint64_t major_faults_total = 0;
  uint64_t swap_out_bytes_total = 0;  // 0 when the guest does not send it
  uint64_t actual_bytes = 0;
  uint64_t max_bytes = 0;
  uint64_t last_target_bytes = 0;  // the target the agent applied (0: none)
  // The agent saw acute pressure from the host side since its last report
  // (the QEMU process touching nearly all it has and growing, a balloon
  // deflating on its own, available near zero): faster than the guest's
  // statistics, treated like a full guest.
  bool agent_pressure = false;
  double elapsed_seconds = 0;      // since the previous observation
};

// Per-VM estimator state, owned by the caller.
struct DemandState {
  bool initialized = false;
  double estimate_bytes = 0;
  uint64_t last_swap_in_bytes_total = 0;
  uint64_t last_major_faults_total = 0;
  uint64_t last_swap_out_bytes_total = 0;
  // Estimated guest memory in swap: swap-out minus swap-in since first seen.
  double swapped_estimate_bytes = 0;
  // Balloon size the guest does not see as its total (kernel reserve).
  uint64_t gap_bytes = 0;
  uint64_t last_actual_bytes = 0;
  // Seconds since the last pressure sample (large: never).
  double seconds_since_pressure = 1e18;
  // Used memory at the previous observation and its growth trend (bytes/s,
  // exponentially weighted; may be negative).
  uint64_t last_used_bytes = 0;
  double used_trend_bytes_per_second = 0;
  // Seconds since the last deflate-on-oom (large: never).
  double seconds_since_deflate = 1e18;
  // Outputs of the last update.
  uint64_t demand_bytes = 0;
  uint64_t protect_bytes = 0;
  uint64_t used_bytes = 0;
  double swap_in_bytes_per_second = 0;
  double major_faults_per_second = 0;
  bool pressure = false;   // pressure in this sample
  bool acute = false;      // pressure within acute_hold_seconds
  bool full = false;       // available memory near zero: demand censored
  bool deflated = false;   // the balloon deflated on its own this sample
  double active_fraction = 1.0;
};

// Folds `obs` into `state` and updates its outputs.
void UpdateDemand(const GuestObservation& obs, const DemandParams& params, DemandState& state);

// Copies the estimator's outputs (demand, protect floor, active fraction,
// pressure) into a VM's allocation input: the one place they are wired, for
// the broker and the simulator alike.
void SetDemandInputs(const DemandState& state, VmInput& input);

}  // namespace membroker::policy

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
//   6. A guest OOM kill teaches the broker: a kill the guest reports (its
//      OOM-kill counter rose) or, for a guest without that counter (QEMU's
//      and libvirt's balloon statistics have none), one inferred. The
//      guest is squeezed when it is full, under the agent's acute
//      pressure, or its page cache fell below half since the previous
//      sample (the kernel kills only after reclaim dropped the cache; a
//      process that exits leaves the cache alone). A kill shows as used
//      memory falling, with the balloon not inflated, from its peak since
//      the squeeze by at least max(oom_drop_bytes, oom_drop_percent of
//      that peak) within oom_squeeze_window_seconds (the statistics lag
//      the guest by a poll, so the fall may spread over a few samples).
//      Such a kill is pressure; for oom_hold_seconds after it, demand is
//      at least twice the size the guest died at (or the previous kill's
//      figure, if larger: each kill within the hold doubles it, up to
//      max). Protect is not raised: on a host that cannot hold every
//      guest, one guest's kill does not take its neighbours' floors. So a
//      surge that killed a guest once does not kill it again at the same
//      size; a guest killed at 1 GiB by a jump to 6 GiB is offered 2, then
//      4, then 8 GiB.
//   7. protect = used + min(used * protect margin, protect margin cap);
//      under pressure at least used + the estimated swap occupancy (pages
//      being read back are working set); never more than max.
//   8. Untrusted or missing statistics keep the previous estimate (or, for
//      a VM never seen with valid stats, its current size: no reclaim) --
//      unless the agent measured the guest from the host (9).
//   9. Host-side signals, for a guest whose statistics are missing, stale
//      or untrusted: the memory its QEMU process's guest RAM touched over
//      the agent's interval (its working set) is followed with the same
//      fast-up / slow-down filter (the recent working set), and
//      raw demand = recent working set x (1 + host_working_set_margin); the
//      estimate starts from the current size (what the guest uses today,
//      as far as anything else says) and follows raw demand with the
//      filter of 2, so it never drops below it. protect = the recent
//      working set plus the protect margin of 7: the guest is never
//      reclaimed into what it touched recently. Acute pressure (the
//      agent's, or a cgroup stall below) asks actual + the pressure step
//      at once, as in 4.
//  10. A cgroup stall: the VM's cgroup v2 memory.pressure "some avg10" at
//      or above host_psi_stall_percent is acute pressure from the host
//      side for any guest, with or without statistics (the same path as
//      the agent's pressure in 4).

#include <cstdint>
#include <string>

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
  // After a guest OOM kill, demand and protect stay raised this long.
  double oom_hold_seconds = 1800.0;
  // An OOM kill is inferred from a full guest whose used memory falls at
  // once by at least the larger of these (when it reports no counter).
  uint64_t oom_drop_bytes = uint64_t{64} << 20;
  double oom_drop_percent = 25.0;
  // How long after a guest was squeezed a fall of used memory from its
  // peak since then still counts as a kill (statistics lag by a poll).
  double oom_squeeze_window_seconds = 5.0;
  // Statistics-less guests (rule 9): demand = recent host working set x
  // (1 + this / 100).
  double host_working_set_margin_percent = 20.0;
  // A VM cgroup's memory.pressure some avg10 at or above this (percent) is
  // acute pressure (rule 10).
  double host_psi_stall_percent = 10.0;
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
  // The guest's own count of OOM kills, when its statistics carry one
  // (most do not: then kills are inferred, see above).
  bool has_oom_kills = false;
  uint64_t oom_kills_total = 0;
  uint64_t disk_caches_bytes = 0;  // the guest's page cache
  double elapsed_seconds = 0;      // since the previous observation
  // Host-side signals (the agent measures them for guests without usable
  // statistics, optionally for all): the guest memory the VM's process
  // touched over the last interval, and its cgroup's memory.pressure.
  bool has_host_working_set = false;
  uint64_t host_working_set_bytes = 0;
  double host_working_set_interval_seconds = 0;
  // How the agent measured it: "clear_refs", "refault" or "" (not said).
  std::string host_working_set_method;
  bool has_host_psi = false;
  double host_psi_some_avg10_percent = 0;
  // Evidence that the balloon works: the backend saw its driver loaded, or
  // the balloon holds memory out of the guest now (bytes).
  bool balloon_driver_ready = false;
  uint64_t balloon_inflated_bytes = 0;
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
  // Page cache and acute agent pressure at the previous observation.
  uint64_t last_disk_caches_bytes = 0;
  bool last_agent_pressure = false;
  // Seconds since the guest was last squeezed (full, acute agent pressure,
  // page cache halved; large: never), and the highest used memory and
  // balloon size since then.
  double squeeze_age_seconds = 1e18;
  uint64_t squeeze_peak_used_bytes = 0;
  uint64_t squeeze_actual_bytes = 0;
  // The guest's OOM-kill counter at the previous observation.
  bool has_last_oom_kills = false;
  uint64_t last_oom_kills_total = 0;
  // Seconds since the last guest OOM kill (large: never), the size the
  // guest died at, and what it is kept at while the hold lasts.
  double seconds_since_oom = 1e18;
  uint64_t oom_size_bytes = 0;
  uint64_t oom_demand_bytes = 0;
  // OOM kills seen so far (reported or inferred), and how the last was seen.
  uint64_t oom_kills_seen = 0;
  bool oom_inferred = false;
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
  bool oom = false;        // a guest OOM kill in this sample
  bool oom_hold = false;   // within oom_hold_seconds of the last kill
  double active_fraction = 1.0;
  // Host-side signals of the last update (rules 9 and 10): whether demand
  // came from them (statistics unusable, a working set measured), the
  // working set measured and over what interval, its recent (filtered)
  // value, and the cgroup's pressure and whether it is a stall.
  bool host_sized = false;
  bool has_host_working_set = false;
  uint64_t host_working_set_bytes = 0;
  double host_working_set_interval_seconds = 0;
  std::string host_working_set_method;  // as GuestObservation's
  double host_working_set_recent_bytes = 0;
  bool has_host_psi = false;
  double host_psi_some_avg10_percent = 0;
  bool host_stall = false;
  // The balloon has shown it works (rule 9): statistics were usable once
  // (they come through the balloon's driver), the backend saw the driver
  // loaded, or the balloon once held memory out of the guest. Without that
  // proof a guest sized from host signals is never reclaimed below what it
  // has: a guest without a balloon driver looks the same from the host,
  // and memory it cannot give back must not be promised to others.
  bool balloon_proven = false;
};

// Folds `obs` into `state` and updates its outputs.
void UpdateDemand(const GuestObservation& obs, const DemandParams& params, DemandState& state);

// Copies the estimator's outputs (demand, protect floor, active fraction,
// pressure) into a VM's allocation input: the one place they are wired, for
// the broker and the simulator alike.
void SetDemandInputs(const DemandState& state, VmInput& input);

}  // namespace membroker::policy

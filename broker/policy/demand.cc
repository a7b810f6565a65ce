#include "broker/policy/demand.h"

#include <algorithm>
#include <cmath>

namespace membroker::policy {

namespace {

// One step of the fast-up / slow-down filter: jumps to a higher `raw`,
// decays toward a lower one with `half_life_seconds`.
double FastUpSlowDown(double previous, double raw, double elapsed_seconds,
                      double half_life_seconds) {
  if (raw >= previous) return raw;
  const double keep =
      std::pow(0.5, std::max(elapsed_seconds, 0.0) / std::max(half_life_seconds, 1e-3));
  return raw + (previous - raw) * keep;
}

// Rule 9: a guest without usable statistics, sized from the host-side
// working set (and acute pressure). `stall` is rule 10.
void UpdateFromHostSignals(const GuestObservation& obs, const DemandParams& params, bool stall,
                           DemandState& state) {
  const double max = static_cast<double>(obs.max_bytes);
  const double actual = static_cast<double>(obs.actual_bytes);
  const double elapsed = std::max(obs.elapsed_seconds, 0.0);
  const bool had_working_set = state.host_sized;
  const bool first = !state.initialized;
  if (first) state.estimate_bytes = actual;  // what it has: nothing says less yet
  if (obs.has_host_working_set) {
    const double ws = std::min(static_cast<double>(obs.host_working_set_bytes),
                               max > 0 ? max : static_cast<double>(obs.host_working_set_bytes));
    state.host_working_set_recent_bytes =
        had_working_set ? FastUpSlowDown(state.host_working_set_recent_bytes, ws, elapsed,
                                         params.decay_half_life_seconds)
                        : ws;
    state.host_sized = true;
  }
  const bool pressure = stall || obs.agent_pressure;
  if (state.host_sized) {
    const double recent = state.host_working_set_recent_bytes;
    double raw = recent * (1.0 + params.host_working_set_margin_percent / 100.0);
    if (pressure) raw = std::max(raw, actual + static_cast<double>(params.pressure_step_bytes));
    state.estimate_bytes =
        first ? std::max(state.estimate_bytes, raw)
              : FastUpSlowDown(state.estimate_bytes, raw, elapsed, params.decay_half_life_seconds);
    if (max > 0) state.estimate_bytes = std::min(state.estimate_bytes, max);
    double margin = recent * params.protect_margin_percent / 100.0;
    if (params.protect_margin_max_bytes > 0) {
      margin = std::min(margin, static_cast<double>(params.protect_margin_max_bytes));
    }
    const double protect = recent + margin;
    state.protect_bytes =
        static_cast<uint64_t>(std::llround(max > 0 ? std::min(protect, max) : protect));
    state.active_fraction = actual > 0 ? std::clamp(recent / actual, 0.0, 1.0) : 1.0;
    if (!state.balloon_proven) {
      // No proof the balloon can give anything back: what it has stays.
      state.estimate_bytes = std::max(state.estimate_bytes, actual);
      state.protect_bytes = std::max(state.protect_bytes, obs.actual_bytes);
      state.active_fraction = 1.0;
    }
  } else {
    // No working set yet: the previous estimate (or the current size), but
    // acute pressure still asks for a step at once.
    if (!state.initialized) {
      state.protect_bytes = obs.actual_bytes;
      state.active_fraction = 1.0;
    }
    if (pressure) {
      state.estimate_bytes =
          std::max(state.estimate_bytes, actual + static_cast<double>(params.pressure_step_bytes));
      if (max > 0) state.estimate_bytes = std::min(state.estimate_bytes, max);
    }
  }
  state.initialized = true;
  state.demand_bytes = static_cast<uint64_t>(std::llround(state.estimate_bytes));
  state.used_bytes = 0;
  state.last_actual_bytes = obs.actual_bytes;
  state.pressure = pressure;
  state.seconds_since_pressure = pressure ? 0 : state.seconds_since_pressure + elapsed;
  state.acute = state.seconds_since_pressure < params.acute_hold_seconds;
  state.full = false;
  state.deflated = false;
  state.oom = false;
  state.swap_in_bytes_per_second = 0;
  state.major_faults_per_second = 0;
}

}  // namespace

void UpdateDemand(const GuestObservation& obs, const DemandParams& params, DemandState& state) {
  const double max = static_cast<double>(obs.max_bytes);
  const double actual = static_cast<double>(obs.actual_bytes);
  // Rule 10: the VM's cgroup stalls on memory.
  const bool host_stall =
      obs.has_host_psi && obs.host_psi_some_avg10_percent >= params.host_psi_stall_percent;
  state.has_host_working_set = obs.has_host_working_set;
  state.host_working_set_bytes = obs.has_host_working_set ? obs.host_working_set_bytes : 0;
  state.host_working_set_interval_seconds =
      obs.has_host_working_set ? obs.host_working_set_interval_seconds : 0;
  state.host_working_set_method = obs.has_host_working_set ? obs.host_working_set_method : "";
  state.has_host_psi = obs.has_host_psi;
  state.host_psi_some_avg10_percent = obs.has_host_psi ? obs.host_psi_some_avg10_percent : 0;
  state.host_stall = host_stall;
  const bool stats_usable = obs.stats_valid && obs.total_bytes != 0;
  if (stats_usable || obs.balloon_driver_ready || obs.balloon_inflated_bytes > (uint64_t{1} << 20)) {
    state.balloon_proven = true;
  }
  if (!stats_usable && (obs.has_host_working_set || state.host_sized || obs.has_host_psi)) {
    UpdateFromHostSignals(obs, params, host_stall, state);
    return;
  }
  // Statistics came back (or there were never host signals): the guest's
  // own figures rule again.
  state.host_sized = false;
  if (!stats_usable) {
    // Nothing trustworthy: keep the previous estimate; a VM never seen with
    // valid statistics is assumed to need what it has (no reclaim).
    if (!state.initialized) {
      state.estimate_bytes = actual;
      state.demand_bytes = obs.actual_bytes;
      state.protect_bytes = obs.actual_bytes;
      state.used_bytes = 0;
      state.active_fraction = 1.0;
    }
    state.pressure = false;
    state.acute = false;
    state.full = false;
    state.deflated = false;
    state.oom = false;
    state.swap_in_bytes_per_second = 0;
    state.major_faults_per_second = 0;
    return;
  }
  const bool agent_pressure = obs.agent_pressure || host_stall;
  // Deflate-on-oom: the balloon grew above the target the agent applied
  // without being asked (actual rises while the target stays below it).
  constexpr uint64_t kMoveSlackBytes = uint64_t{8} << 20;
  const bool deflated = state.initialized && obs.last_target_bytes != 0 &&
                        obs.actual_bytes > obs.last_target_bytes + kMoveSlackBytes &&
                        obs.actual_bytes > state.last_actual_bytes + kMoveSlackBytes;
  // The guest's total excludes what its kernel reserved at boot, but
  // targets are balloon sizes: count that gap (actual - total) as used.
  // It is measured only when the balloon did not move since the previous
  // observation (stats read while the balloon moves lag behind it), and
  // capped at an eighth of max so a guest cannot inflate its demand by
  // reporting a small total.
  if (state.initialized && obs.actual_bytes == state.last_actual_bytes) {
    const uint64_t gap =
        obs.actual_bytes > obs.total_bytes ? obs.actual_bytes - obs.total_bytes : 0;
    state.gap_bytes = std::min(gap, obs.max_bytes / 8);
  }
  const uint64_t previous_actual = state.last_actual_bytes;
  state.last_actual_bytes = obs.actual_bytes;
  const uint64_t used_u =
      (obs.total_bytes > obs.available_bytes ? obs.total_bytes - obs.available_bytes : 0) +
      state.gap_bytes;
  const double used = static_cast<double>(used_u);

  // Rates since the previous observation; a counter that went backwards
  // (guest reboot) restarts the baseline.
  double swap_in_rate = 0, fault_rate = 0, swapped_in = 0;
  if (state.initialized && obs.elapsed_seconds > 0) {
    if (obs.swap_in_bytes_total >= state.last_swap_in_bytes_total) {
      swapped_in = static_cast<double>(obs.swap_in_bytes_total - state.last_swap_in_bytes_total);
      swap_in_rate = swapped_in / obs.elapsed_seconds;
    }
    if (obs.major_faults_total >= state.last_major_faults_total) {
      fault_rate = static_cast<double>(obs.major_faults_total - state.last_major_faults_total) /
                   obs.elapsed_seconds;
    }
  }
  // Swap occupancy: the balance of swap-out and swap-in since first seen.
  if (state.initialized && obs.swap_out_bytes_total >= state.last_swap_out_bytes_total &&
      obs.swap_in_bytes_total >= state.last_swap_in_bytes_total) {
    state.swapped_estimate_bytes +=
        static_cast<double>(obs.swap_out_bytes_total - state.last_swap_out_bytes_total) -
        static_cast<double>(obs.swap_in_bytes_total - state.last_swap_in_bytes_total);
    state.swapped_estimate_bytes = std::clamp(state.swapped_estimate_bytes, 0.0, std::max(max, 0.0));
  } else {
    state.swapped_estimate_bytes = 0;  // first sample or counters reset
  }
  state.last_swap_in_bytes_total = obs.swap_in_bytes_total;
  state.last_major_faults_total = obs.major_faults_total;
  state.last_swap_out_bytes_total = obs.swap_out_bytes_total;
  state.swap_in_bytes_per_second = swap_in_rate;
  state.major_faults_per_second = fault_rate;
  // Growth trend of used memory, exponentially weighted over the reports.
  if (state.initialized && obs.elapsed_seconds > 0) {
    const double rate =
        (used - static_cast<double>(state.last_used_bytes)) / obs.elapsed_seconds;
    const double keep =
        std::pow(0.5, obs.elapsed_seconds / std::max(params.trend_half_life_seconds, 1e-3));
    state.used_trend_bytes_per_second = rate + (state.used_trend_bytes_per_second - rate) * keep;
  }
  // Guest OOM kill: reported by its counter, or inferred from a full guest
  // whose used memory fell at once while its balloon stayed put.
  bool oom = false;
  if (obs.has_oom_kills) {
    oom = state.initialized && state.has_last_oom_kills &&
          obs.oom_kills_total > state.last_oom_kills_total;
    state.has_last_oom_kills = true;
    state.last_oom_kills_total = obs.oom_kills_total;
    state.oom_inferred = oom ? false : state.oom_inferred;
  } else if (state.initialized) {
    // Inferred. The guest is squeezed when it is full or under the agent's
    // acute pressure, or its page cache halved; a kill shows as used memory
    // falling from its peak since then. Statistics lag the guest by up to
    // a poll, so the fall may spread over a few samples: the window keeps
    // the peak for oom_squeeze_window_seconds.
    constexpr uint64_t kCacheNoiseBytes = uint64_t{16} << 20;
    const bool cache_halved = state.last_disk_caches_bytes >= kCacheNoiseBytes &&
                              obs.disk_caches_bytes * 2 < state.last_disk_caches_bytes;
    const double total_now = static_cast<double>(obs.total_bytes);
    const bool full_now =
        static_cast<double>(obs.available_bytes) <=
        std::max(static_cast<double>(params.full_available_bytes),
                 total_now * params.full_available_percent / 100.0);
    const bool squeezed_now = full_now || agent_pressure || cache_halved;
    const bool squeezed_before = state.full || state.last_agent_pressure;
    const double elapsed = std::max(obs.elapsed_seconds, 0.0);
    const bool window_open = state.squeeze_age_seconds + elapsed <= params.oom_squeeze_window_seconds;
    if (obs.actual_bytes + kMoveSlackBytes < previous_actual) {
      // The balloon inflated: the broker's own move, not a kill.
      state.squeeze_age_seconds = 1e18;
    } else if (squeezed_now || squeezed_before) {
      const uint64_t carried = window_open ? state.squeeze_peak_used_bytes : 0;
      state.squeeze_peak_used_bytes = std::max({carried, state.last_used_bytes, used_u});
      state.squeeze_actual_bytes =
          std::max({window_open ? state.squeeze_actual_bytes : 0, previous_actual, obs.actual_bytes});
      state.squeeze_age_seconds = squeezed_now ? 0 : elapsed;
    } else {
      state.squeeze_age_seconds += elapsed;
      if (window_open) {
        state.squeeze_peak_used_bytes = std::max(state.squeeze_peak_used_bytes, used_u);
        state.squeeze_actual_bytes = std::max(state.squeeze_actual_bytes, obs.actual_bytes);
      }
    }
    if (state.squeeze_age_seconds <= params.oom_squeeze_window_seconds &&
        state.squeeze_peak_used_bytes > used_u) {
      const double peak = static_cast<double>(state.squeeze_peak_used_bytes);
      const double drop_at = std::max(static_cast<double>(params.oom_drop_bytes),
                                      peak * params.oom_drop_percent / 100.0);
      oom = peak - static_cast<double>(used_u) >= drop_at;
    }
    if (oom) {
      state.oom_inferred = true;
      state.squeeze_peak_used_bytes = used_u;  // one kill, counted once
    }
  }
  state.last_disk_caches_bytes = obs.disk_caches_bytes;
  state.last_agent_pressure = agent_pressure;
  state.seconds_since_oom =
      oom ? 0 : state.seconds_since_oom + std::max(obs.elapsed_seconds, 0.0);
  if (oom) {
    ++state.oom_kills_seen;
    // The size it died at: what it had before the kill freed memory.
    const uint64_t died_at =
        std::max({obs.actual_bytes, previous_actual, state.oom_inferred ? state.squeeze_actual_bytes : 0});
    const uint64_t doubled = died_at > obs.max_bytes / 2 ? obs.max_bytes : died_at * 2;
    const uint64_t previous = state.oom_hold ? state.oom_demand_bytes : 0;
    state.oom_size_bytes = died_at;
    state.oom_demand_bytes = std::min(std::max(doubled, previous), obs.max_bytes);
  }
  state.oom = oom;
  state.oom_hold = state.seconds_since_oom < params.oom_hold_seconds;
  state.last_used_bytes = used_u;
  const double growth = state.used_trend_bytes_per_second > params.trend_noise_bytes_per_second
                            ? state.used_trend_bytes_per_second * params.landing_seconds
                            : 0.0;
  const double total = static_cast<double>(obs.total_bytes);
  const double full_at = std::max(static_cast<double>(params.full_available_bytes),
                                  total * params.full_available_percent / 100.0);
  state.full = static_cast<double>(obs.available_bytes) <= full_at;
  state.deflated = deflated;
  state.seconds_since_deflate =
      deflated ? 0 : state.seconds_since_deflate + std::max(obs.elapsed_seconds, 0.0);
  state.pressure = swap_in_rate > params.swap_in_noise_bytes_per_second ||
                   fault_rate > params.major_fault_noise_per_second || state.full || deflated ||
                   agent_pressure || oom;

  state.seconds_since_pressure =
      state.pressure ? 0 : state.seconds_since_pressure + std::max(obs.elapsed_seconds, 0.0);
  state.acute = state.seconds_since_pressure < params.acute_hold_seconds;
  double raw = used;
  if (state.full || deflated || agent_pressure) {
    // Censored: a full guest shows only what it has. Ask for more in
    // proportion to its growth, at least a step.
    raw = std::max(raw, actual + std::max(growth, static_cast<double>(params.pressure_step_bytes)));
  }
  if (state.pressure) {
    // The guest is short: it needs at least what it has, plus what it had
    // to read back from swap, plus a step.
    raw = std::max(raw, actual + std::max(swapped_in, state.swapped_estimate_bytes) +
                            static_cast<double>(params.pressure_step_bytes));
  }
  if (!state.initialized || raw >= state.estimate_bytes) {
    state.estimate_bytes = raw;  // fast up
  } else {
    const bool recent_pressure = params.pressure_decay_half_life_seconds > 0 &&
                                 state.seconds_since_pressure < params.pressure_memory_seconds;
    const double half_life = std::max(
        recent_pressure ? params.pressure_decay_half_life_seconds : params.decay_half_life_seconds,
        1e-3);
    const double keep = std::pow(0.5, std::max(obs.elapsed_seconds, 0.0) / half_life);
    state.estimate_bytes = raw + (state.estimate_bytes - raw) * keep;  // slow down
  }
  state.initialized = true;
  state.estimate_bytes = std::min(state.estimate_bytes, max > 0 ? max : state.estimate_bytes);
  state.used_bytes = used_u;
  // What the guest will use by the time a target lands, if it keeps
  // growing: the projection is added after the filter, so it goes away as
  // soon as the growth stops.
  double projected = std::max(state.estimate_bytes, used + growth);
  if (state.oom_hold) projected = std::max(projected, static_cast<double>(state.oom_demand_bytes));
  state.demand_bytes =
      static_cast<uint64_t>(std::llround(max > 0 ? std::min(projected, max) : projected));
  double margin = used * params.protect_margin_percent / 100.0;
  if (params.protect_margin_max_bytes > 0) {
    margin = std::min(margin, static_cast<double>(params.protect_margin_max_bytes));
  }
  double protect = used + margin;
  if (state.pressure) {
    // Pages the guest is reading back from swap are working set too: never
    // balloon into them.
    protect = std::max(protect, used + state.swapped_estimate_bytes);
  }
  if (state.seconds_since_deflate < params.deflate_hold_seconds) {
    // The guest just took pages back from the balloon to stay alive: never
    // inflate into it again while the hold lasts.
    protect = std::max(protect, actual);
  }
  state.protect_bytes = static_cast<uint64_t>(std::llround(max > 0 ? std::min(protect, max) : protect));
  state.active_fraction = actual > 0 ? std::clamp(used / actual, 0.0, 1.0) : 1.0;
}

void SetDemandInputs(const DemandState& state, VmInput& input) {
  input.demand_bytes = state.demand_bytes;
  input.protect_bytes = state.protect_bytes;
  input.active_fraction = state.active_fraction;
  input.under_pressure = state.acute;
}

}  // namespace membroker::policy

#include "broker/policy/allocator.h"

#include <algorithm>
#include <cmath>
#include <numeric>

namespace membroker::policy {
namespace {

uint64_t Clamp(uint64_t v, uint64_t lo, uint64_t hi) { return std::min(std::max(v, lo), hi); }

uint64_t SatSub(uint64_t a, uint64_t b) { return a > b ? a - b : 0; }

uint64_t Scale(uint64_t bytes, double percent) {
  const double v = static_cast<double>(bytes) * (1.0 + percent / 100.0);
  if (v >= 1.8e19) return UINT64_MAX;
  return static_cast<uint64_t>(std::llround(std::max(0.0, v)));
}

// ESX's idle memory tax: w / (f + k (1 - f)), k = 1 / (1 - tax).
double EffectiveWeight(uint32_t weight, double active_fraction, double tax_percent) {
  const double tax = std::clamp(tax_percent, 0.0, 99.0) / 100.0;
  const double k = 1.0 / (1.0 - tax);
  const double f = std::clamp(active_fraction, 0.0, 1.0);
  return std::max<uint32_t>(weight, 1) / (f + k * (1.0 - f));
}

// Shares `budget` among `room[i]` by weight: each i gets min(room[i], λ w[i])
// with λ chosen so the grants sum to min(budget, Σ room). Grants are whole
// bytes and never sum above `budget`. Deterministic: ties keep index order.
std::vector<uint64_t> WaterFill(const std::vector<uint64_t>& room, const std::vector<double>& w,
                                uint64_t budget) {
  const size_t n = room.size();
  std::vector<uint64_t> grant(n, 0);
  std::vector<size_t> order(n);
  std::iota(order.begin(), order.end(), 0);
  // Fill order: the VM that saturates first (smallest room per weight).
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) {
    return static_cast<double>(room[a]) / w[a] < static_cast<double>(room[b]) / w[b];
  });
  double weight_left = 0;
  for (double x : w) weight_left += x;
  uint64_t left = budget;
  for (size_t idx = 0; idx < n; ++idx) {
    const size_t i = order[idx];
    if (left == 0 || weight_left <= 0) break;
    // The last VM in fill order takes all that is left (no rounding loss).
    const double fair = idx + 1 == n ? static_cast<double>(left)
                                     : static_cast<double>(left) * w[i] / weight_left;
    uint64_t g = fair >= static_cast<double>(room[i]) ? room[i]
                                                       : static_cast<uint64_t>(std::floor(fair));
    g = std::min(g, left);
    grant[i] = g;
    left -= g;
    weight_left -= w[i];
  }
  return grant;
}

}  // namespace

const char* ReasonName(Reason reason) {
  switch (reason) {
    case Reason::kUnspecified: return "unspecified";
    case Reason::kDemand: return "demand";
    case Reason::kFloor: return "floor";
    case Reason::kShare: return "share";
    case Reason::kStepLimit: return "step-limit";
    case Reason::kHysteresis: return "hysteresis";
    case Reason::kMax: return "max";
    case Reason::kOvercommitted: return "overcommitted";
    case Reason::kPinned: return "pinned";
    case Reason::kBalloonUnhealthy: return "balloon-unhealthy";
    case Reason::kSurplus: return "surplus";
  }
  return "unspecified";
}

const char* RegimeName(Regime regime) {
  switch (regime) {
    case Regime::kFits: return "fits";
    case Regime::kShared: return "shared";
    case Regime::kOvercommitted: return "overcommitted";
  }
  return "fits";
}

uint64_t FloorBytes(const VmInput& vm, bool yield_default_min) {
  const uint64_t max = vm.max_bytes;
  const uint64_t min = yield_default_min ? 0 : vm.min_bytes;
  uint64_t floor = Clamp(std::max(min, vm.protect_bytes), 0, max);
  if (vm.pinned) {
    floor = max;
  } else if (!vm.balloon_healthy) {
    // A balloon that does not move cannot give memory: its current size
    // is all it can be counted at.
    floor = Clamp(std::max(floor, vm.actual_bytes), 0, max);
  }
  return floor;
}

uint64_t HysteresisBand(uint64_t previous_target_bytes, const PolicyParams& params) {
  return std::max<uint64_t>(
      params.hysteresis_bytes,
      static_cast<uint64_t>(static_cast<double>(previous_target_bytes) *
                            std::clamp(params.hysteresis_percent, 0.0, 100.0) / 100.0));
}

HostDecision DecideHost(const HostInput& input, const PolicyParams& params) {
  HostDecision out;
  const size_t n = input.vms.size();
  out.vms.resize(n);
  std::vector<double> weight(n);

  // Steps 1-2: floors and desired sizes. `yield` lowers default floors to
  // the protect floor for VMs not under pressure (sacrifice b).
  auto floors = [&](bool yield) {
    out.floor_bytes = 0;
    out.desired_bytes = 0;
    for (size_t i = 0; i < n; ++i) {
      const VmInput& vm = input.vms[i];
      VmDecision& d = out.vms[i];
      d.vm_id = vm.vm_id;
      const uint64_t max = vm.max_bytes;
      const bool yields = yield && vm.min_is_default && !vm.under_pressure;
      const uint64_t floor = FloorBytes(vm, yields);
      d.floor_yielded = yields && floor < Clamp(std::max(vm.min_bytes, vm.protect_bytes), 0, max);
      d.floor_bytes = floor;
      d.desired_bytes = Clamp(Scale(vm.demand_bytes, params.buffer_percent), floor, max);
      d.effective_weight = EffectiveWeight(vm.weight, vm.active_fraction, params.idle_tax_percent);
      weight[i] = d.effective_weight;
      out.floor_bytes += floor;
      out.desired_bytes += d.desired_bytes;
    }
  };
  floors(false);

  uint64_t usable = SatSub(input.capacity_bytes, params.host_free_margin_bytes);
  // Is a guest under acute pressure left short of its demand? (It is when
  // the desired sizes do not fit: steps 4-5 may not give it all of it.)
  bool acute = false;
  for (const VmInput& vm : input.vms) acute |= vm.under_pressure && vm.balloon_healthy && !vm.pinned;
  if (acute && out.desired_bytes > usable && input.host_has_room) {
    // Sacrifice a: lend the free margin.
    out.margin_lent_bytes = input.capacity_bytes - usable;
    usable = input.capacity_bytes;
  }
  if (acute && out.desired_bytes > usable) {
    // Sacrifice b: default floors yield to the protect floor.
    floors(true);
    for (const VmDecision& d : out.vms) out.floors_yielded |= d.floor_yielded;
  }
  out.usable_bytes = usable;
  if (out.desired_bytes <= usable) {
    out.regime = Regime::kFits;
    // Step 3: everyone gets desired; the rest goes back by weight up to max.
    std::vector<uint64_t> room(n);
    for (size_t i = 0; i < n; ++i) room[i] = input.vms[i].max_bytes - out.vms[i].desired_bytes;
    const double surplus_share = std::clamp(params.surplus_percent, 0.0, 100.0) / 100.0;
    const uint64_t surplus = static_cast<uint64_t>(
        std::floor(static_cast<double>(usable - out.desired_bytes) * surplus_share));
    const std::vector<uint64_t> extra = WaterFill(room, weight, surplus);
    for (size_t i = 0; i < n; ++i) {
      VmDecision& d = out.vms[i];
      d.share_bytes = d.desired_bytes + extra[i];
      d.reason = extra[i] > 0 ? Reason::kSurplus : Reason::kDemand;
    }
  } else if (out.floor_bytes <= usable) {
    out.regime = Regime::kShared;
    // Step 4: share what is above the floors by weighted water-filling;
    // with needs_before_buffers, first up to each VM's demand, then what is
    // left up to its desired size (buffers are shared only once every VM
    // has its demand).
    std::vector<uint64_t> room(n);
    std::vector<uint64_t> extra(n, 0);
    uint64_t budget = usable - out.floor_bytes;
    if (params.needs_before_buffers) {
      // Tier 1: VMs under pressure (swapping now) up to their demand;
      // tier 2: every VM up to its demand.
      for (int tier = 1; tier <= 2; ++tier) {
        for (size_t i = 0; i < n; ++i) {
          const VmDecision& d = out.vms[i];
          const uint64_t need = Clamp(input.vms[i].demand_bytes, d.floor_bytes, d.desired_bytes);
          room[i] = tier == 1 && !input.vms[i].under_pressure ? 0
                                                              : need - d.floor_bytes - extra[i];
        }
        const std::vector<uint64_t> got = WaterFill(room, weight, budget);
        for (size_t i = 0; i < n; ++i) {
          extra[i] += got[i];
          budget -= got[i];
        }
      }
    }
    for (size_t i = 0; i < n; ++i) {
      room[i] = out.vms[i].desired_bytes - out.vms[i].floor_bytes - extra[i];
    }
    const std::vector<uint64_t> more = WaterFill(room, weight, budget);
    for (size_t i = 0; i < n; ++i) extra[i] += more[i];
    for (size_t i = 0; i < n; ++i) {
      VmDecision& d = out.vms[i];
      d.share_bytes = d.floor_bytes + extra[i];
      d.reason = d.share_bytes == d.desired_bytes ? Reason::kDemand
                 : extra[i] == 0                  ? Reason::kFloor
                                                  : Reason::kShare;
    }
  } else {
    // Step 5: even the floors do not fit.
    out.regime = Regime::kOvercommitted;
    out.overcommitted = true;
    for (VmDecision& d : out.vms) {
      d.share_bytes = d.floor_bytes;
      d.reason = Reason::kOvercommitted;
    }
  }
  for (size_t i = 0; i < n; ++i) {
    VmDecision& d = out.vms[i];
    const VmInput& vm = input.vms[i];
    if (vm.pinned) {
      d.reason = Reason::kPinned;
    } else if (!vm.balloon_healthy && d.share_bytes == d.floor_bytes) {
      d.reason = Reason::kBalloonUnhealthy;
    } else if (d.share_bytes == vm.max_bytes && d.reason != Reason::kOvercommitted) {
      d.reason = Reason::kMax;
    }
  }

  // Step 6: smooth against the previous target.
  std::vector<bool> growing(n, false);
  for (size_t i = 0; i < n; ++i) {
    VmDecision& d = out.vms[i];
    const VmInput& vm = input.vms[i];
    const uint64_t prev = vm.previous_target_bytes;
    d.target_bytes = d.share_bytes;
    if (prev == 0) continue;  // first decision: no history to smooth against
    const uint64_t prev_c = Clamp(prev, d.floor_bytes, vm.max_bytes);
    const bool to_bound = d.share_bytes == d.floor_bytes || d.share_bytes == vm.max_bytes;
    const uint64_t band = HysteresisBand(prev_c, params);
    d.previous_target_bytes = prev_c;
    d.hysteresis_band_bytes = band;
    if (d.share_bytes > prev_c) {
      if (d.share_bytes - prev_c < band && !to_bound) {
        d.target_bytes = prev_c;
        d.reason = Reason::kHysteresis;
        d.smoothing = Smoothing::kHysteresis;
      }
    } else if (d.share_bytes < prev_c) {
      const uint64_t drop = prev_c - d.share_bytes;
      if (drop < band && !to_bound) {
        d.target_bytes = prev_c;
        d.reason = Reason::kHysteresis;
        d.smoothing = Smoothing::kHysteresis;
      } else if (drop > params.reclaim_step_bytes) {
        d.target_bytes = prev_c - params.reclaim_step_bytes;
        d.reason = Reason::kStepLimit;
        d.smoothing = Smoothing::kStepLimit;
      }
    } else {
      d.target_bytes = prev_c;
    }
    growing[i] = d.target_bytes > prev_c;
  }

  // Held-back reclaims may leave less room than the shares assumed: cut
  // growth first (largest grants first, never below max(previous, floor)),
  // then, if the host would still exceed its capacity, reclaim faster than
  // the step limit (never below the share, which fits).
  if (!out.overcommitted) {
    auto total = [&] {
      uint64_t s = 0;
      for (const VmDecision& d : out.vms) s += d.target_bytes;
      return s;
    };
    uint64_t sum = total();
    if (sum > usable) {
      std::vector<size_t> order;
      for (size_t i = 0; i < n; ++i)
        if (growing[i]) order.push_back(i);
      std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) {
        return out.vms[a].target_bytes > out.vms[b].target_bytes;
      });
      for (size_t i : order) {
        if (sum <= usable) break;
        VmDecision& d = out.vms[i];
        const uint64_t lo = Clamp(input.vms[i].previous_target_bytes, d.floor_bytes,
                                  input.vms[i].max_bytes);
        const uint64_t cut = std::min(d.target_bytes - lo, sum - usable);
        d.target_bytes -= cut;
        sum -= cut;
        if (cut > 0) {
          d.reason = Reason::kStepLimit;
          d.smoothing = Smoothing::kGrowthCut;
        }
      }
    }
    if (sum > input.capacity_bytes) {
      for (size_t i = 0; i < n && sum > input.capacity_bytes; ++i) {
        VmDecision& d = out.vms[i];
        if (d.target_bytes <= d.share_bytes) continue;
        const uint64_t cut = std::min(d.target_bytes - d.share_bytes, sum - input.capacity_bytes);
        d.target_bytes -= cut;
        sum -= cut;
      }
    }
  }
  for (const VmDecision& d : out.vms) out.target_bytes += d.target_bytes;
  for (size_t i = 0; i < n; ++i) {
    const VmInput& vm = input.vms[i];
    if (vm.under_pressure && vm.balloon_healthy && !vm.pinned &&
        out.vms[i].share_bytes < std::min(vm.demand_bytes, vm.max_bytes)) {
      out.pressure_unmet.push_back(vm.vm_id);
    }
  }
  return out;
}

}  // namespace membroker::policy

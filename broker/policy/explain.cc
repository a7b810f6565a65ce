#include "broker/policy/explain.h"

#include <algorithm>
#include <cstdio>

#include "common/units.h"

namespace membroker::policy {
namespace {

std::string B(uint64_t bytes) { return FormatBytes(bytes); }

std::string Fmt(const char* fmt, double a) {
  char buf[64];
  std::snprintf(buf, sizeof(buf), fmt, a);
  return buf;
}

// The OOM hold, when one is on: why demand is at least a figure.
std::string OomHoldText(const DemandState& d) {
  if (!d.oom_hold) return "";
  return "; guest OOM kill " + Fmt("%.0f", d.seconds_since_oom) + " s ago at " +
         B(d.oom_size_bytes) +
         (d.oom_inferred ? " (inferred: used memory and page cache fell at once)"
                         : " (reported by the guest)") +
         " (" + std::to_string(d.oom_kills_seen) + " seen): demand kept at least " +
         B(d.oom_demand_bytes) + " while the OOM hold lasts";
}

// The host-side signals a decision saw (rules 9 and 10 of demand.h), as
// "; host working set 812 MiB over 10 s by refault; cgroup pressure
// some=12%" (the method only when the agent said it): empty
// when the agent sent none.
std::string HostSignalsText(const DemandState& d) {
  std::string out;
  if (d.has_host_working_set) {
    out += "; host working set " + B(d.host_working_set_bytes) + " over " +
           Fmt("%.0f", d.host_working_set_interval_seconds) + " s";
    if (!d.host_working_set_method.empty()) out += " by " + d.host_working_set_method;
    if (d.host_sized) {
      out += " (recent " + B(static_cast<uint64_t>(d.host_working_set_recent_bytes)) + ")";
    } else {
      out += " (not used: the guest's statistics are)";
    }
  }
  if (d.has_host_psi) {
    out += "; cgroup pressure some=" + Fmt("%.0f", d.host_psi_some_avg10_percent) + "%";
    if (d.host_stall) out += " (a stall: acute pressure, memory given at once)";
  }
  return out;
}

}  // namespace

std::string FloorSourceName(const VmInput& in, const VmDecision& d) {
  if (in.pinned) return "pinned";
  if (!in.balloon_healthy && d.floor_bytes == std::min(in.actual_bytes, in.max_bytes) &&
      in.actual_bytes > std::max(in.min_bytes, in.protect_bytes)) {
    return "balloon unhealthy";
  }
  if (!d.floor_yielded && in.min_bytes > in.protect_bytes) {
    return in.min_is_default ? "default min" : "operator min";
  }
  return "protect";
}

std::vector<std::string> ExplainSteps(const std::string& host_id, const HostStepState& host,
                                      const VmStepState& vm, const StatsNote& stats) {
  const VmInput& in = vm.input;
  const VmDecision& d = vm.decision;
  const PolicyParams& p = host.params;
  const HostDecision& hd = host.decision;
  std::vector<std::string> steps;
  if (vm.demand.host_sized) {
    steps.push_back(
        "0. guest statistics not used" +
        (stats.untrusted_reason.empty() ? std::string(" (missing or stale)")
                                        : ": " + stats.untrusted_reason) +
        "; sized from host signals" + HostSignalsText(vm.demand) + "; demand estimate " +
        B(in.demand_bytes) +
        (vm.demand.balloon_proven
             ? std::string(" (follows the recent working set x (1 + margin)")
             : std::string(" (not reclaimed: no sign yet that its balloon works, neither "
                           "statistics nor a balloon ever below its size")) +
        (vm.demand.acute ? ", raised: acute pressure from the host side" : "") + "), protect " +
        B(in.protect_bytes) + " (never reclaimed below the recent working set)");
  } else if (!stats.trusted) {
    steps.push_back("0. guest statistics not used: " + stats.untrusted_reason +
                    "; demand kept at " + B(in.demand_bytes) + HostSignalsText(vm.demand));
  } else {
    steps.push_back("0. guest used = total " + B(stats.total_bytes) + " - available " +
                    B(stats.available_bytes) + " = " + B(vm.demand.used_bytes) +
                    "; demand estimate " + B(in.demand_bytes) +
                    (vm.demand.full       ? " (guest is full: demand unknown, asked for its "
                                            "growth over the landing time)"
                     : vm.demand.deflated ? " (the guest deflated its balloon to stay alive)"
                     : vm.demand.pressure ? " (raised: guest is swapping)"
                     : vm.demand.acute    ? " (under acute pressure lately)"
                                          : "") +
                    OomHoldText(vm.demand) + HostSignalsText(vm.demand));
  }
  if (in.pinned) {
    steps.push_back("1. pinned by policy: floor = max = " + B(d.floor_bytes));
  } else if (!in.balloon_healthy) {
    steps.push_back("1. balloon unhealthy (" + stats.health + "): floor = current size " +
                    B(d.floor_bytes) + ", nothing is reclaimed");
  } else if (d.floor_yielded) {
    steps.push_back("1. floor = protect " + B(in.protect_bytes) + ": its default min " +
                    B(in.min_bytes) +
                    " yields for a neighbour under acute pressure (no operator min is set) = " +
                    B(d.floor_bytes));
  } else {
    steps.push_back("1. floor = clamp(max(" + std::string(in.min_is_default ? "default " : "") +
                    "min " + B(in.min_bytes) + ", protect " + B(in.protect_bytes) + "), 0, max " +
                    B(in.max_bytes) + ") = " + B(d.floor_bytes));
  }
  steps.push_back("2. desired = clamp(demand " + B(in.demand_bytes) + " x (1 + " +
                  Fmt("%.0f", p.buffer_percent) + "%), floor, max) = " + B(d.desired_bytes));
  std::string host_line = "host " + host_id + ": capacity " + B(host.capacity_bytes) +
                          " - free margin " + B(p.host_free_margin_bytes);
  if (hd.margin_lent_bytes > 0) {
    host_line += " (margin lent to a guest under acute pressure: the host has room)";
  }
  host_line += " = usable " + B(hd.usable_bytes) + "; sum of desired " + B(hd.desired_bytes) +
               ", sum of floors " + B(hd.floor_bytes);
  if (hd.floors_yielded) host_line += " (default floors yielded to protect floors)";
  switch (hd.regime) {
    case Regime::kOvercommitted: {
      // Name what holds the host there: every VM's floor and its source.
      std::string held;
      for (const auto& [id, other] : host.vms) {
        held += (held.empty() ? "" : ", ") + id + " " + B(other.decision.floor_bytes) + " (" +
                FloorSourceName(other.input, other.decision) + ")";
      }
      steps.push_back("3. " + host_line +
                      ": even the floors do not fit after every sacrifice; host overcommitted, "
                      "every VM kept at its floor; floors: " +
                      held);
      break;
    }
    case Regime::kFits:
      steps.push_back("3. " + host_line + ": everything fits; share = desired " +
                      B(d.desired_bytes) + " + surplus by weight (" +
                      Fmt("%.0f", p.surplus_percent) + "% of what is left) = " +
                      B(d.share_bytes));
      break;
    case Regime::kShared:
      if (!hd.pressure_unmet.empty()) {
        std::string who;
        for (const std::string& id : hd.pressure_unmet) who += (who.empty() ? "" : ", ") + id;
        host_line += "; host overcommitted: under acute pressure and short of demand after every "
                     "sacrifice: " + who;
      }
      steps.push_back("3. " + host_line + ": memory is short; " +
                      B(hd.usable_bytes - hd.floor_bytes) +
                      " above the floors shared by weight (weight " + std::to_string(in.weight) +
                      ", after idle tax " + Fmt("%.0f", p.idle_tax_percent) +
                      "%: " + Fmt("%.1f", d.effective_weight) +
                      "), needs before buffers -> share " + B(d.share_bytes));
      break;
  }
  std::string smooth;
  switch (d.smoothing) {
    case Smoothing::kNone:
      smooth = d.previous_target_bytes == 0 && !vm.decided
                   ? "first decision: target = share = " + B(d.target_bytes)
                   : "target = share = " + B(d.target_bytes);
      if (d.target_bytes != d.share_bytes) {
        smooth = "target " + B(d.target_bytes) + " (share " + B(d.share_bytes) +
                 ", held within capacity)";
      }
      break;
    case Smoothing::kHysteresis:
      smooth = "change from previous " + B(d.previous_target_bytes) +
               " inside the hysteresis band " + B(d.hysteresis_band_bytes) + " (max of " +
               B(p.hysteresis_bytes) + " and " + Fmt("%.0f", p.hysteresis_percent) +
               "% of the previous target): target stays " + B(d.target_bytes);
      break;
    case Smoothing::kStepLimit:
      smooth = "previous target " + B(d.previous_target_bytes) + "; reclaim limited to a step of " +
               B(p.reclaim_step_bytes) + " per decision: target " + B(d.target_bytes);
      break;
    case Smoothing::kGrowthCut:
      smooth = "previous target " + B(d.previous_target_bytes) +
               "; growth waits for memory other VMs still give back in steps: target " +
               B(d.target_bytes);
      break;
  }
  steps.push_back("4. " + smooth + " (reason: " + ReasonName(d.reason) + ")");
  return steps;
}

}  // namespace membroker::policy

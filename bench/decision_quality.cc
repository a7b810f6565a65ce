// Runs every decision-quality scenario under every policy and prints one
// table: scenario x policy with stall, guest OOM kills, memory reclaimed,
// reaction time and oscillation, and each policy's ratio to the oracle.
// Each scenario runs as written and in its swapless variants (every VM's
// swap 0; and swapless with deflate-on-oom balloons), followed by a table
// of OOM kills per policy for those. Figures only: this program never fails
// on a figure.
//
//   decision_quality [--scenarios_dir=DIR] [--only=NAME,...] [--duration=1h]
//                    [--variants=normal,swapless,deflate]

#include <dirent.h>

#include <algorithm>
#include <cstdio>
#include <map>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/strings/match.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "sim/fleet_sim.h"
#include "sim/scenario.h"

ABSL_FLAG(std::string, scenarios_dir, MB_SCENARIOS_DIR, "Directory of *.textproto scenarios");
ABSL_FLAG(std::string, only, "", "Comma-separated scenario names to run (default: all)");
ABSL_FLAG(std::string, trace, "", "Print every 5 s: working set, actual, target of this VM");
ABSL_FLAG(int, detail, 0, "Also print the N VMs with the most stall per policy");
ABSL_FLAG(std::string, policies, "",
          "Comma-separated policies to run (default: all; the oracle always runs)");
ABSL_FLAG(std::string, variants, "normal,swapless,deflate",
          "Comma-separated variants of each scenario: normal (as written), swapless (every "
          "VM's swap 0), deflate (swapless with deflate-on-oom balloons)");
ABSL_FLAG(absl::Duration, duration, absl::ZeroDuration(),
          "Simulated time per scenario (default: each scenario's own)");
// Broker policy overrides, for exploring the policy's parameters (unset:
// the broker's shipped defaults, the same the daemon runs).
ABSL_FLAG(double, surplus_percent, -1, "ClusterPolicy.surplus_percent");
ABSL_FLAG(double, hysteresis_percent, -1, "ClusterPolicy.hysteresis_percent");
ABSL_FLAG(double, buffer_percent, -1, "ClusterPolicy.buffer_percent");
ABSL_FLAG(int64_t, reclaim_step_mib, -1, "ClusterPolicy.reclaim_step_bytes in MiB");
ABSL_FLAG(int64_t, default_min_mib, -1, "ClusterPolicy.default_min_bytes in MiB");
ABSL_FLAG(double, half_life_seconds, -1, "Broker DemandParams.decay_half_life_seconds");
ABSL_FLAG(double, pressure_half_life_seconds, -1,
          "Broker DemandParams.pressure_decay_half_life_seconds");
ABSL_FLAG(double, pressure_memory_seconds, -1, "Broker DemandParams.pressure_memory_seconds");
ABSL_FLAG(double, oom_hold_seconds, -1,
          "Broker DemandParams.oom_hold_seconds (0: the broker does not learn from OOM kills)");
ABSL_FLAG(double, protect_margin_percent, -1, "ClusterPolicy.protect_margin_percent");
ABSL_FLAG(double, idle_tax_percent, -1, "ClusterPolicy.idle_tax_percent");
ABSL_FLAG(int64_t, protect_margin_max_mib, -1, "ClusterPolicy.protect_margin_max_bytes in MiB");

namespace {

using membroker::sim::PolicyKind;

std::vector<std::string> ScenarioFiles(const std::string& dir) {
  std::vector<std::string> files;
  if (DIR* d = opendir(dir.c_str())) {
    while (dirent* e = readdir(d)) {
      const std::string name = e->d_name;
      if (name.size() > 10 && name.substr(name.size() - 10) == ".textproto") {
        files.push_back(dir + "/" + name);
      }
    }
    closedir(d);
  }
  std::sort(files.begin(), files.end());
  // The mixed fleet last: it is the largest.
  std::stable_partition(files.begin(), files.end(),
                        [](const std::string& f) { return f.find("fleet_") == std::string::npos; });
  return files;
}

std::string Ratio(double value, double oracle) {
  char buf[32];
  if (oracle <= 1e-9) {
    if (value <= 1e-9) return "1.00";
    return "inf";
  }
  std::snprintf(buf, sizeof(buf), "%.2f", value / oracle);
  return buf;
}

}  // namespace

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  const std::vector<std::string> files = ScenarioFiles(absl::GetFlag(FLAGS_scenarios_dir));
  if (files.empty()) {
    std::fprintf(stderr, "no scenarios in %s\n", absl::GetFlag(FLAGS_scenarios_dir).c_str());
    return 1;
  }
  std::vector<PolicyKind> kinds;
  for (PolicyKind kind : membroker::sim::AllPolicies()) {
    if (absl::GetFlag(FLAGS_policies).empty() ||
        absl::StrContains(absl::GetFlag(FLAGS_policies), membroker::sim::PolicyName(kind)) ||
        kind == PolicyKind::kOracle) {
      kinds.push_back(kind);
    }
  }
  std::vector<std::string> only;
  if (!absl::GetFlag(FLAGS_only).empty()) only = absl::StrSplit(absl::GetFlag(FLAGS_only), ',');
  membroker::sim::RunOptions options;
  options.duration = absl::GetFlag(FLAGS_duration);
  const std::string trace = absl::GetFlag(FLAGS_trace);
  if (!trace.empty()) {
    options.observer = [trace](double now, const membroker::sim::SimVmState& vm) {
      if (vm.name != trace || static_cast<int64_t>(now * 4) % 20 != 0) return;
      std::printf("  t=%6.0f ws=%6llu actual=%6llu target=%6llu deficit=%6llu MiB\n", now,
                  static_cast<unsigned long long>(vm.working_set_bytes >> 20),
                  static_cast<unsigned long long>(vm.actual_bytes >> 20),
                  static_cast<unsigned long long>(vm.target_bytes >> 20),
                  static_cast<unsigned long long>(vm.deficit_bytes >> 20));
    };
  }
  // Cluster-policy overrides (unset: the broker's shipped defaults, then each
  // scenario's own cluster policy).
  membroker::v1::ClusterPolicy& bp = options.broker_policy;
  if (absl::GetFlag(FLAGS_surplus_percent) >= 0) {
    bp.set_surplus_percent(absl::GetFlag(FLAGS_surplus_percent));
  }
  if (absl::GetFlag(FLAGS_hysteresis_percent) >= 0) {
    bp.set_hysteresis_percent(absl::GetFlag(FLAGS_hysteresis_percent));
  }
  if (absl::GetFlag(FLAGS_buffer_percent) >= 0) {
    bp.set_buffer_percent(absl::GetFlag(FLAGS_buffer_percent));
  }
  if (absl::GetFlag(FLAGS_reclaim_step_mib) >= 0) {
    bp.set_reclaim_step_bytes(static_cast<uint64_t>(absl::GetFlag(FLAGS_reclaim_step_mib)) << 20);
  }
  if (absl::GetFlag(FLAGS_protect_margin_percent) >= 0) {
    bp.set_protect_margin_percent(absl::GetFlag(FLAGS_protect_margin_percent));
  }
  if (absl::GetFlag(FLAGS_protect_margin_max_mib) >= 0) {
    bp.set_protect_margin_max_bytes(static_cast<uint64_t>(absl::GetFlag(FLAGS_protect_margin_max_mib))
                                    << 20);
  }
  if (absl::GetFlag(FLAGS_idle_tax_percent) >= 0) {
    bp.set_idle_tax_percent(absl::GetFlag(FLAGS_idle_tax_percent));
  }
  if (absl::GetFlag(FLAGS_default_min_mib) >= 0) {
    bp.set_default_min_bytes(static_cast<uint64_t>(absl::GetFlag(FLAGS_default_min_mib)) << 20);
  }
  // Estimator settings that no cluster policy field carries (experiments).
  const double half_life = absl::GetFlag(FLAGS_half_life_seconds);
  const double pressure_half_life = absl::GetFlag(FLAGS_pressure_half_life_seconds);
  const double pressure_memory = absl::GetFlag(FLAGS_pressure_memory_seconds);
  const double oom_hold = absl::GetFlag(FLAGS_oom_hold_seconds);
  if (half_life >= 0 || pressure_half_life >= 0 || pressure_memory >= 0 || oom_hold >= 0) {
    options.tune_broker = [=](membroker::policy::PolicySet& set) {
      if (half_life >= 0) set.demand.decay_half_life_seconds = half_life;
      if (pressure_half_life >= 0) set.demand.pressure_decay_half_life_seconds = pressure_half_life;
      if (pressure_memory >= 0) set.demand.pressure_memory_seconds = pressure_memory;
      if (oom_hold >= 0) set.demand.oom_hold_seconds = oom_hold;
    };
  }
  {
    // The policy the broker runs, above the table: the shipped defaults with
    // the overrides above (a scenario's own cluster policy, if any, is
    // applied on top for that scenario and printed beside it).
    membroker::v1::Scenario empty;
    std::printf("broker cluster policy: %s\n",
                membroker::sim::BrokerClusterPolicy(empty, options).ShortDebugString().c_str());
    if (options.tune_broker) std::printf("estimator overrides: half-life or OOM-hold flags set\n");
  }

  std::vector<std::string> variants = absl::StrSplit(absl::GetFlag(FLAGS_variants), ',');
  for (const std::string& v : variants) {
    if (v != "normal" && v != "swapless" && v != "deflate") {
      std::fprintf(stderr, "--variants: unknown variant \"%s\" (normal, swapless, deflate)\n",
                   v.c_str());
      return 1;
    }
  }
  std::vector<std::string> summary;
  std::vector<std::string> oom_table;
  std::printf("%-33s %-9s %11s %5s %5s %10s %6s %6s %8s %7s %8s %8s %7s %6s\n", "scenario",
              "policy", "stall GiB*s", "OOMs", "defl", "recl GiB", "surges", "resp s", "resp max",
              "react s", "rev/VM-h", "stall/or", "recl/or", "wall s");
  for (const std::string& file : files) {
    auto loaded = membroker::sim::LoadScenario(file);
    if (!loaded.ok()) {
      std::fprintf(stderr, "%s\n", loaded.status().ToString().c_str());
      return 1;
    }
    if (!only.empty() && std::find(only.begin(), only.end(), loaded->name()) == only.end()) {
      continue;
    }
    if (loaded->cluster_policy().ByteSizeLong() > 0) {
      std::printf("%-16s scenario cluster policy: %s\n", loaded->name().c_str(),
                  loaded->cluster_policy().ShortDebugString().c_str());
    }
    for (const std::string& variant : variants) {
      absl::StatusOr<membroker::v1::Scenario> scenario = *loaded;
      if (variant != "normal") {
        scenario = membroker::sim::SwaplessVariant(*loaded, variant == "deflate");
      }
      if (!scenario.ok()) {
        std::fprintf(stderr, "%s\n", scenario.status().ToString().c_str());
        return 1;
      }
      std::map<PolicyKind, membroker::sim::QualityFigures> results;
      std::map<PolicyKind, double> wall;
      for (PolicyKind kind : kinds) {
        const absl::Time start = absl::Now();
        auto fig = membroker::sim::RunScenario(*scenario, kind, options);
        wall[kind] = absl::ToDoubleSeconds(absl::Now() - start);
        if (!fig.ok()) {
          std::fprintf(stderr, "%s/%s: %s\n", scenario->name().c_str(),
                       membroker::sim::PolicyName(kind), fig.status().ToString().c_str());
          return 1;
        }
        results[kind] = *fig;
      }
      {
        // The broker against the best baseline, for the summary.
        double best = -1;
        const char* best_name = "-";
        for (PolicyKind kind : {PolicyKind::kProxmox, PolicyKind::kMom, PolicyKind::kSqueezed}) {
          if (!results.count(kind)) continue;
          if (best < 0 || results[kind].stall_gib_seconds < best) {
            best = results[kind].stall_gib_seconds;
            best_name = membroker::sim::PolicyName(kind);
          }
        }
        if (results.count(PolicyKind::kBroker) && best >= 0) {
          const auto& b = results[PolicyKind::kBroker];
          const auto& o = results[PolicyKind::kOracle];
          char line[256];
          std::snprintf(line, sizeof(line), "%-33s %-9s %11.1f %11.1f %9s %9s %9s %5llu\n",
                        scenario->name().c_str(), best_name, best, b.stall_gib_seconds,
                        Ratio(b.stall_gib_seconds, best).c_str(),
                        Ratio(b.stall_gib_seconds, o.stall_gib_seconds).c_str(),
                        Ratio(b.reclaimed_gib, o.reclaimed_gib).c_str(),
                        static_cast<unsigned long long>(b.oom_kills));
          summary.push_back(line);
        }
      }
      const auto& oracle = results[PolicyKind::kOracle];
      for (PolicyKind kind : kinds) {
        const auto& f = results[kind];
        std::printf(
            "%-33s %-9s %11.1f %5llu %5llu %10.2f %6llu %6.2f %8.2f %7.1f %8.2f %8s %7s %6.2f\n",
            scenario->name().c_str(), membroker::sim::PolicyName(kind), f.stall_gib_seconds,
            static_cast<unsigned long long>(f.oom_kills),
            static_cast<unsigned long long>(f.oom_deflations), f.reclaimed_gib,
            static_cast<unsigned long long>(f.surges), f.response_seconds_mean,
            f.response_seconds_max, f.reaction_seconds_mean, f.reversals_per_vm_hour,
            Ratio(f.stall_gib_seconds, oracle.stall_gib_seconds).c_str(),
            Ratio(f.reclaimed_gib, oracle.reclaimed_gib).c_str(), wall[kind]);
        if (absl::GetFlag(FLAGS_detail) > 0) {
          std::printf("    longest response: %s\n", f.response_max_vm.c_str());
          auto vms = f.stall_by_vm;
          std::sort(vms.begin(), vms.end(),
                    [](const auto& a, const auto& b) { return a.second > b.second; });
          for (int i = 0; i < absl::GetFlag(FLAGS_detail) && i < static_cast<int>(vms.size());
               ++i) {
            std::printf("    %-24s %11.1f\n", vms[i].first.c_str(), vms[i].second);
          }
        }
      }
      if (variant != "normal") {
        // OOM kills per policy (deflations for deflate-on-oom guests), and
        // whether the peak working sets fit the hosts at all.
        std::string row;
        char cell[64];
        std::snprintf(cell, sizeof(cell), "%-33s %4s", scenario->name().c_str(),
                      membroker::sim::PeakWorkingSetsFit(*scenario) ? "yes" : "no");
        row += cell;
        for (PolicyKind kind : kinds) {
          const auto& f = results[kind];
          if (variant == "deflate") {
            std::snprintf(cell, sizeof(cell), " %5llu/%-7.1f",
                          static_cast<unsigned long long>(f.oom_kills), f.oom_deflated_gib);
          } else {
            std::snprintf(cell, sizeof(cell), " %13llu",
                          static_cast<unsigned long long>(f.oom_kills));
          }
          row += cell;
        }
        std::snprintf(cell, sizeof(cell), " %11.1f %11.1f\n",
                      results[PolicyKind::kBroker].stall_gib_seconds,
                      results[PolicyKind::kBroker].host_overflow_gib_seconds);
        row += cell;
        oom_table.push_back(row);
      }
    }
  }
  if (!summary.empty()) {
    std::printf("\n%-33s %-9s %11s %11s %9s %9s %9s %5s\n", "scenario", "best base", "base stall",
                "brk stall", "brk/base", "brk/or", "recl/or", "OOMs");
    for (const std::string& line : summary) std::printf("%s", line.c_str());
  }
  if (!oom_table.empty()) {
    std::printf(
        "\nswapless variants: guest OOM kills per policy (deflate: kills/GiB taken back "
        "from balloons)\n%-33s %4s",
        "scenario", "fits");
    for (PolicyKind kind : kinds) std::printf(" %13s", membroker::sim::PolicyName(kind));
    std::printf(" %11s %11s\n", "brk stall", "brk hostovf");
    for (const std::string& row : oom_table) std::printf("%s", row.c_str());
    std::printf(
        "fits: the peak working sets of every host's guests fit its capacity at once (the\n"
        "oracle then keeps every guest alive); brk stall / brk hostovf: the broker's stall and\n"
        "its host-overflow part (GiB*s), where deflated balloons land.\n");
  }
  std::printf(
      "\nstall: GiB*s of working-set deficit in guests plus touched memory above host capacity;\n"
      "recl GiB: mean GiB held back from running VMs against no ballooning; surges: deficit\n"
      "episodes over 64 MiB; resp s / resp max: mean and longest time from a surge to the first\n"
      "target above the VM's memory; react s: mean time until the VM has its working set again;\n"
      "rev/VM-h: target reversals per VM-hour; x/or: ratio to the clairvoyant oracle; defl:\n"
      "times a deflate-on-oom guest took memory back from its balloon instead of an OOM kill.\n"
      "Time advances in 0.25 s ticks: a response of 0 came in the tick the deficit appeared.\n");
  return 0;
}

// Runs every decision-quality scenario under every policy and prints one
// table: scenario x policy with stall, guest OOM kills, memory reclaimed,
// reaction time and oscillation, and each policy's ratio to the oracle.
// Figures only: this program never fails on a figure.
//
//   decision_quality [--scenarios_dir=DIR] [--only=NAME,...] [--duration=1h]

#include <cstdio>
#include <dirent.h>

#include <algorithm>
#include <map>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "sim/fleet_sim.h"
#include "sim/scenario.h"

ABSL_FLAG(std::string, scenarios_dir, MB_SCENARIOS_DIR, "Directory of *.textproto scenarios");
ABSL_FLAG(std::string, only, "", "Comma-separated scenario names to run (default: all)");
ABSL_FLAG(absl::Duration, duration, absl::ZeroDuration(),
          "Simulated time per scenario (default: each scenario's own)");

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
  std::vector<std::string> only;
  if (!absl::GetFlag(FLAGS_only).empty()) only = absl::StrSplit(absl::GetFlag(FLAGS_only), ',');
  membroker::sim::RunOptions options;
  options.duration = absl::GetFlag(FLAGS_duration);

  std::printf("%-16s %-9s %11s %5s %10s %7s %7s %8s %9s %8s %8s %7s\n", "scenario", "policy",
              "stall GiB*s", "OOMs", "reclaim GB", "surges", "resp s", "react s", "rev/VM-h",
              "stall/or", "recl/or", "wall s");
  for (const std::string& file : files) {
    auto scenario = membroker::sim::LoadScenario(file);
    if (!scenario.ok()) {
      std::fprintf(stderr, "%s\n", scenario.status().ToString().c_str());
      return 1;
    }
    if (!only.empty() && std::find(only.begin(), only.end(), scenario->name()) == only.end()) {
      continue;
    }
    std::map<PolicyKind, membroker::sim::QualityFigures> results;
    std::map<PolicyKind, double> wall;
    for (PolicyKind kind : membroker::sim::AllPolicies()) {
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
    const auto& oracle = results[PolicyKind::kOracle];
    for (PolicyKind kind : membroker::sim::AllPolicies()) {
      const auto& f = results[kind];
      std::printf("%-16s %-9s %11.1f %5llu %10.2f %7llu %7.2f %8.1f %9.2f %8s %8s %7.2f\n",
                  scenario->name().c_str(), membroker::sim::PolicyName(kind), f.stall_gib_seconds,
                  static_cast<unsigned long long>(f.oom_kills), f.reclaimed_gib,
                  static_cast<unsigned long long>(f.surges), f.response_seconds_mean,
                  f.reaction_seconds_mean,
                  f.reversals_per_vm_hour, Ratio(f.stall_gib_seconds, oracle.stall_gib_seconds).c_str(),
                  Ratio(f.reclaimed_gib, oracle.reclaimed_gib).c_str(), wall[kind]);
    }
  }
  std::printf(
      "\nstall: GiB*s of working-set deficit in guests plus touched memory above host capacity;\n"
      "reclaim GB: mean GiB held back from running VMs against no ballooning; surges: deficit\n"
      "episodes over 64 MiB; resp s: mean time from a surge to the first target above the VM's\n"
      "memory; react s: mean time until the VM has its working set again;\n"
      "rev/VM-h: target reversals per VM-hour; x/or: ratio to the clairvoyant oracle.\n");
  return 0;
}

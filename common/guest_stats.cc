#include "common/guest_stats.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"

namespace membroker {
namespace {

using membroker::v1::GuestStats;

// Appends a problem when a counter present in both went backwards.
void CheckCounter(const char* name, bool had, uint64_t before, bool has, uint64_t now,
                  std::vector<std::string>* problems) {
  if (had && has && now < before) {
    problems->push_back(absl::StrCat(name, " went backwards (", before, " -> ", now, ")"));
  }
}

}  // namespace

std::string GuestStatsProblem(const membroker::v1::VmSample& sample, absl::Duration report_interval,
                              const GuestStats* previous) {
  const GuestStats& g = sample.stats();
  // 1. The agent's verdict stands.
  if (g.untrusted()) {
    return g.untrusted_reason().empty() ? "flagged by agent" : g.untrusted_reason();
  }
  std::vector<std::string> problems;
  // 2. Age.
  if (!g.has_age_seconds()) {
    problems.push_back("stale: the guest never sent statistics");
  } else {
    const double age = g.age_seconds();
    const double limit = kStaleReportIntervals *
                         absl::ToDoubleSeconds(std::max(report_interval, kGuestStatsGranularity));
    if (std::isnan(age)) {
      problems.push_back("stale: age is not a number");
    } else if (age < 0) {
      problems.push_back(absl::StrFormat("stale: last update %.3gs in the future", -age));
    } else if (age > limit) {
      problems.push_back(absl::StrFormat("stale: last update %.3gs ago (limit %.3gs)", age, limit));
    }
  }
  // 3. The two numbers every decision needs.
  if (!g.has_total_bytes() || !g.has_available_bytes()) {
    problems.push_back("total_bytes or available_bytes missing");
  }
  if (g.has_total_bytes()) {
    const uint64_t total = g.total_bytes();
    if (total == 0) problems.push_back("total_bytes is 0");
    // 4. Parts above the whole.
    if (g.has_available_bytes() && g.available_bytes() > total) {
      problems.push_back(
          absl::StrCat("available_bytes ", g.available_bytes(), " above total_bytes ", total));
    }
    if (g.has_free_bytes() && g.free_bytes() > total) {
      problems.push_back(absl::StrCat("free_bytes ", g.free_bytes(), " above total_bytes ", total));
    }
    // 5. More memory than the VM was given.
    if (total > sample.max_bytes() && total - sample.max_bytes() > kGuestTotalSlackBytes) {
      problems.push_back(absl::StrCat("total_bytes ", total, " above the VM's max_bytes ",
                                      sample.max_bytes(), " (+64 MiB slack)"));
    }
  }
  // 6. Cumulative counters only grow.
  if (previous != nullptr) {
    const GuestStats& p = *previous;
    CheckCounter("swap_in_bytes_total", p.has_swap_in_bytes_total(), p.swap_in_bytes_total(),
                 g.has_swap_in_bytes_total(), g.swap_in_bytes_total(), &problems);
    CheckCounter("swap_out_bytes_total", p.has_swap_out_bytes_total(), p.swap_out_bytes_total(),
                 g.has_swap_out_bytes_total(), g.swap_out_bytes_total(), &problems);
    CheckCounter("major_faults_total", p.has_major_faults_total(), p.major_faults_total(),
                 g.has_major_faults_total(), g.major_faults_total(), &problems);
    CheckCounter("minor_faults_total", p.has_minor_faults_total(), p.minor_faults_total(),
                 g.has_minor_faults_total(), g.minor_faults_total(), &problems);
    CheckCounter("oom_kills_total", p.has_oom_kills_total(), p.oom_kills_total(),
                 g.has_oom_kills_total(), g.oom_kills_total(), &problems);
  }
  return absl::StrJoin(problems, "; ");
}

}  // namespace membroker

#include "node-agent/stats_validation.h"

#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace membroker::agent {
namespace {

void CheckCounter(const char* name, const std::optional<uint64_t>& previous,
                  const std::optional<uint64_t>& current, std::vector<std::string>* problems) {
  if (previous.has_value() && current.has_value() && *current < *previous) {
    problems->push_back(absl::StrCat(name, " went backwards (", *previous, " -> ", *current, ")"));
  }
}

}  // namespace

StatsVerdict ValidateGuestStats(const GuestMemoryStats* previous, const GuestMemoryStats& current,
                                uint64_t max_bytes, absl::Time now,
                                absl::Duration report_interval) {
  std::vector<std::string> problems;
  StatsVerdict verdict;
  if (!current.last_update.has_value()) {
    problems.push_back("guest never sent statistics (last_update missing)");
  } else {
    const absl::Duration age = now - *current.last_update;
    verdict.age = age < absl::ZeroDuration() ? absl::ZeroDuration() : age;
    if (age > kStaleReportIntervals * report_interval) {
      problems.push_back(absl::StrCat("stale: last_update ", absl::FormatDuration(age), " ago"));
    } else if (-age > report_interval) {
      problems.push_back(
          absl::StrCat("last_update ", absl::FormatDuration(-age), " in the future"));
    }
  }
  if (current.total_bytes.has_value()) {
    const uint64_t total = *current.total_bytes;
    if (current.available_bytes.has_value() && *current.available_bytes > total) {
      problems.push_back(absl::StrCat("available_bytes ", *current.available_bytes,
                                      " above total_bytes ", total));
    }
    if (current.free_bytes.has_value() && *current.free_bytes > total) {
      problems.push_back(
          absl::StrCat("free_bytes ", *current.free_bytes, " above total_bytes ", total));
    }
    if (total > max_bytes && total - max_bytes > kGuestTotalSlackBytes) {
      problems.push_back(absl::StrCat("total_bytes ", total, " above max_bytes ", max_bytes));
    }
  }
  if (previous != nullptr) {
    CheckCounter("swap_in_bytes_total", previous->swap_in_bytes_total,
                 current.swap_in_bytes_total, &problems);
    CheckCounter("swap_out_bytes_total", previous->swap_out_bytes_total,
                 current.swap_out_bytes_total, &problems);
    CheckCounter("major_faults_total", previous->major_faults_total, current.major_faults_total,
                 &problems);
    CheckCounter("minor_faults_total", previous->minor_faults_total, current.minor_faults_total,
                 &problems);
    CheckCounter("oom_kills_total", previous->oom_kills_total, current.oom_kills_total,
                 &problems);
  }
  if (!problems.empty()) {
    verdict.trusted = false;
    verdict.reason = absl::StrJoin(problems, "; ");
  }
  return verdict;
}

}  // namespace membroker::agent

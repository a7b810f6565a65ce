#include "node-agent/stats_validation.h"

#include <algorithm>

#include "common/guest_stats.h"

namespace membroker::agent {

membroker::v1::GuestStats ToProtoGuestStats(const GuestMemoryStats& s, absl::Time now) {
  membroker::v1::GuestStats out;
  if (s.total_bytes) out.set_total_bytes(*s.total_bytes);
  if (s.available_bytes) out.set_available_bytes(*s.available_bytes);
  if (s.free_bytes) out.set_free_bytes(*s.free_bytes);
  if (s.disk_caches_bytes) out.set_disk_caches_bytes(*s.disk_caches_bytes);
  if (s.swap_in_bytes_total) out.set_swap_in_bytes_total(*s.swap_in_bytes_total);
  if (s.swap_out_bytes_total) out.set_swap_out_bytes_total(*s.swap_out_bytes_total);
  if (s.major_faults_total) out.set_major_faults_total(*s.major_faults_total);
  if (s.minor_faults_total) out.set_minor_faults_total(*s.minor_faults_total);
  if (s.oom_kills_total) out.set_oom_kills_total(*s.oom_kills_total);
  if (s.last_update) out.set_age_seconds(absl::ToDoubleSeconds(now - *s.last_update));
  return out;
}

StatsVerdict ValidateGuestStats(const GuestMemoryStats* previous, const GuestMemoryStats& current,
                                uint64_t max_bytes, absl::Time now,
                                absl::Duration report_interval) {
  membroker::v1::VmSample sample;
  sample.set_max_bytes(max_bytes);
  *sample.mutable_stats() = ToProtoGuestStats(current, now);
  membroker::v1::GuestStats before;
  if (previous != nullptr) before = ToProtoGuestStats(*previous, now);
  StatsVerdict verdict;
  verdict.reason =
      GuestStatsProblem(sample, report_interval, previous != nullptr ? &before : nullptr);
  verdict.trusted = verdict.reason.empty();
  if (current.last_update.has_value()) {
    verdict.age = std::max(absl::ZeroDuration(), now - *current.last_update);
  }
  return verdict;
}

}  // namespace membroker::agent

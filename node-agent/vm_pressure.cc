#include "node-agent/vm_pressure.h"

#include <algorithm>
#include <iterator>

#include "node-agent/actuator.h"

namespace membroker::agent {

using membroker::v1::PressureReason;

const char* PressureReasonName(PressureReason reason) {
  switch (reason) {
    case membroker::v1::PRESSURE_REASON_RSS_NEAR_ACTUAL:
      return "rss_near_actual";
    case membroker::v1::PRESSURE_REASON_BALLOON_DEFLATE_ON_OOM:
      return "deflate_on_oom";
    case membroker::v1::PRESSURE_REASON_AVAILABLE_NEAR_ZERO:
      return "available_near_zero";
    case membroker::v1::PRESSURE_REASON_GUEST_SWAP_IN:
      return "guest_swap_in";
    default:
      return "unspecified";
  }
}

PressureDetector::PressureDetector(PressureParams params) : params_(params) {}

bool PressureDetector::ObserveRss(const std::string& vm_id, int64_t pid, uint64_t rss_bytes,
                                  uint64_t actual_bytes) {
  VmHistory& h = history_[vm_id];
  if (h.pid != pid) {
    h.pid = pid;
    h.rss_bytes.reset();
  }
  const std::optional<uint64_t> previous = h.rss_bytes;
  h.rss_bytes = rss_bytes;
  last_rss_[vm_id] = rss_bytes;
  if (!previous.has_value() || actual_bytes == 0) return false;
  const bool growing = rss_bytes >= *previous + params_.rss_growth_bytes;
  const uint64_t near = std::max<uint64_t>(
      params_.near_actual_bytes,
      static_cast<uint64_t>(static_cast<double>(actual_bytes) * params_.near_actual_percent / 100));
  const bool is_near = rss_bytes + near >= actual_bytes;
  if (!growing || !is_near) return false;
  reasons_[vm_id].insert(membroker::v1::PRESSURE_REASON_RSS_NEAR_ACTUAL);
  return true;
}

std::vector<PressureReason> PressureDetector::ObserveVm(const VmStatus& vm,
                                                        std::optional<uint64_t> applied_bytes) {
  std::vector<PressureReason> fired;
  VmHistory& h = history_[vm.vm_id];
  // 2. The balloon gave memory back that no target asked for: neither the
  // target in force now nor the one at the previous observation (a lower
  // target that just replaced a higher one does not pull actual down at
  // once).
  std::optional<uint64_t> asked = applied_bytes;
  if (asked.has_value() && h.applied_bytes.has_value()) asked = std::max(*asked, *h.applied_bytes);
  if (h.actual_bytes.has_value() && vm.actual_bytes >= *h.actual_bytes + kBalloonProgressBytes &&
      (!asked.has_value() || vm.actual_bytes >= *asked + kBalloonProgressBytes)) {
    fired.push_back(membroker::v1::PRESSURE_REASON_BALLOON_DEFLATE_ON_OOM);
  }
  h.actual_bytes = vm.actual_bytes;
  h.applied_bytes = applied_bytes;
  // 3. Fresh statistics with available near zero.
  const GuestMemoryStats& s = vm.stats;
  if (s.last_update.has_value() && s.last_update != h.stats_update) {
    h.stats_update = s.last_update;
    if (s.available_bytes.has_value() && s.total_bytes.has_value() && *s.total_bytes > 0) {
      const uint64_t low = std::max<uint64_t>(
          params_.available_low_bytes, static_cast<uint64_t>(static_cast<double>(*s.total_bytes) *
                                                             params_.available_low_percent / 100));
      if (*s.available_bytes <= low) {
        fired.push_back(membroker::v1::PRESSURE_REASON_AVAILABLE_NEAR_ZERO);
      }
    }
  }
  for (PressureReason r : fired) reasons_[vm.vm_id].insert(r);
  return fired;
}

void PressureDetector::Record(const std::string& vm_id, PressureReason reason) {
  reasons_[vm_id].insert(reason);
}

std::map<std::string, std::set<PressureReason>> PressureDetector::TakeReasons() {
  std::map<std::string, std::set<PressureReason>> out;
  out.swap(reasons_);
  return out;
}

void PressureDetector::Retain(const std::set<std::string>& present) {
  for (auto it = history_.begin(); it != history_.end();) {
    it = present.count(it->first) == 0 ? history_.erase(it) : std::next(it);
  }
  for (auto it = last_rss_.begin(); it != last_rss_.end();) {
    it = present.count(it->first) == 0 ? last_rss_.erase(it) : std::next(it);
  }
}

}  // namespace membroker::agent

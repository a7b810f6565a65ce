#pragma once
// Acute pressure of one host's VMs, from signals faster than the guest's
// own statistics (which arrive at most once a second).
//
// Per VM, every observation is checked against three rules; each firing is
// an edge (an event), not a level:
//   1. RSS near actual and growing (ObserveRss, every rss_interval): the
//      VM's process is resident to within near_actual of its balloon actual
//      and grew by at least rss_growth_bytes since the previous sample. The
//      guest is touching memory it never touched and has little left.
//   2. Deflate-on-oom (ObserveVm): the balloon actual rose by at least 1 MiB
//      since the previous observation to above the target the agent
//      applied, now and at the previous observation (or with no target):
//      the guest took pages back on its own.
//   3. Available near zero (ObserveVm, on fresh statistics only): the
//      guest's available memory is at most max(available_low_bytes,
//      available_low_percent of its total).
// The reasons seen since the last TakeReasons() are kept per VM for the
// next report.

#include <cstdint>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "absl/time/time.h"
#include "membroker/v1/types.pb.h"
#include "node-agent/hypervisor/hypervisor.h"

namespace membroker::agent {

// Thresholds of the acute pressure rules.
struct PressureParams {
  // Rule 1: RSS within this of actual counts as "near"...
  uint64_t near_actual_bytes = uint64_t{64} << 20;
  // ...or within this percentage of actual, whichever is larger.
  double near_actual_percent = 10;
  // Rule 1: growth since the previous RSS sample that counts as growing.
  uint64_t rss_growth_bytes = uint64_t{4} << 20;
  // Rule 3: available at or below max(this, available_low_percent of total).
  uint64_t available_low_bytes = uint64_t{8} << 20;
  double available_low_percent = 2;
};

// Detects acute pressure. Thread-compatible (the agent holds its mutex).
class PressureDetector {
 public:
  explicit PressureDetector(PressureParams params);

  // Rule 1 for one VM: `rss_bytes` just read from its process `pid`, with
  // its balloon actual as last listed. A new pid starts the VM's history
  // over. Returns true when the rule fires.
  bool ObserveRss(const std::string& vm_id, int64_t pid, uint64_t rss_bytes, uint64_t actual_bytes);

  // Rules 2 and 3 for one VM as just listed, with the target the agent
  // applied last (empty: none). Returns the reasons that fired.
  std::vector<membroker::v1::PressureReason> ObserveVm(const VmStatus& vm,
                                                       std::optional<uint64_t> applied_bytes);

  // Records `reason` for `vm_id` (from elsewhere, e.g. the actuator's swap-in
  // rule) for the next report.
  void Record(const std::string& vm_id, membroker::v1::PressureReason reason);

  // The reasons seen per VM since the previous call; clears them.
  std::map<std::string, std::set<membroker::v1::PressureReason>> TakeReasons();

  // The last RSS read per VM (VMs whose process could be read).
  const std::map<std::string, uint64_t>& rss_bytes() const { return last_rss_; }

  // Forgets VMs not in `present` (gone from the listing).
  void Retain(const std::set<std::string>& present);

 private:
  struct VmHistory {
    int64_t pid = 0;
    std::optional<uint64_t> rss_bytes;
    std::optional<uint64_t> actual_bytes;
    std::optional<uint64_t> applied_bytes;
    std::optional<absl::Time> stats_update;
  };

  const PressureParams params_;
  std::map<std::string, VmHistory> history_;
  std::map<std::string, uint64_t> last_rss_;
  std::map<std::string, std::set<membroker::v1::PressureReason>> reasons_;
};

// Returns "rss_near_actual", "deflate_on_oom", "available_near_zero",
// "guest_swap_in" or "unspecified".
const char* PressureReasonName(membroker::v1::PressureReason reason);

}  // namespace membroker::agent

#pragma once
// Guest statistics are untrusted input: a guest can be slow, rebooted, or
// hostile. ValidateGuestStats decides whether the broker may use them.

#include <cstdint>
#include <optional>
#include <string>

#include "absl/time/time.h"
#include "node-agent/hypervisor/hypervisor.h"

namespace membroker::agent {

// Slack above the VM's max that a guest's reported total may have
// (firmware and rounding differences).
inline constexpr uint64_t kGuestTotalSlackBytes = uint64_t{64} << 20;

// Statistics older than this many report intervals are stale.
inline constexpr int kStaleReportIntervals = 3;

// The verdict on one VM's statistics.
struct StatsVerdict {
  // False when the statistics are stale or impossible.
  bool trusted = true;
  // Why they are untrusted ("" when trusted), for operators.
  std::string reason;
  // now - last_update, when the guest ever sent statistics (never negative).
  std::optional<absl::Duration> age;
};

// Checks `current` (with `previous`, the last statistics read for the same
// VM, or null) for a VM of `max_bytes`. Untrusted when: last_update is
// missing, older than kStaleReportIntervals * `report_interval`, or more
// than one report interval in the future; available or free above total;
// total above max_bytes + kGuestTotalSlackBytes; a cumulative counter
// (swap in/out, major/minor faults, OOM kills) below its previous value.
// Pure: no clock reads.
StatsVerdict ValidateGuestStats(const GuestMemoryStats* previous, const GuestMemoryStats& current,
                                uint64_t max_bytes, absl::Time now, absl::Duration report_interval);

}  // namespace membroker::agent

#pragma once
// The one rule for trusting a guest's memory statistics, applied by the
// agent before it reports and by the broker when a report arrives. Guest
// statistics are untrusted input: a guest can be slow, rebooted, buggy or
// hostile, and the balloon driver forwards whatever it says.
//
// Statistics are untrusted, with the reason, when (all problems found are
// named, joined by "; ", with the proto field names):
//   1. the agent already flagged them (`untrusted`): its reason, or
//      "flagged by agent"; nothing else is checked then;
//   2. their age is missing (the guest never sent any), not a number,
//      negative (from the future), or above kStaleReportIntervals report
//      intervals (intervals below kGuestStatsGranularity count as that, as
//      guests refresh their statistics in whole seconds): "stale";
//   3. total or available is missing, or total is 0;
//   4. available or free is above total;
//   5. total is above the VM's max_bytes + kGuestTotalSlackBytes;
//   6. a cumulative counter (swap in/out, major/minor faults, OOM kills)
//      is below its value in `previous`, the same VM's last statistics.

#include <cstdint>
#include <string>

#include "absl/time/time.h"
#include "membroker/v1/types.pb.h"

namespace membroker {

// Slack above the VM's max that a guest's reported total may have
// (firmware and rounding differences).
inline constexpr uint64_t kGuestTotalSlackBytes = uint64_t{64} << 20;

// Statistics older than this many report intervals are stale.
inline constexpr int kStaleReportIntervals = 3;

// The finest period at which guests refresh their statistics (QEMU's
// guest-stats-polling-interval and libvirt's stats period are whole
// seconds): the staleness limit never uses a shorter interval.
inline constexpr absl::Duration kGuestStatsGranularity = absl::Seconds(1);

// Returns "" when `sample.stats()` may be used for decisions, else a short
// reason for operators naming every problem found (rules in the file
// comment). `sample.max_bytes()` bounds the total; `report_interval` is the
// agent's report interval; `previous` (may be null) is the same VM's
// statistics of the previous report, for the counter checks. Pure: no
// clock reads, never fails.
std::string GuestStatsProblem(const membroker::v1::VmSample& sample, absl::Duration report_interval,
                              const membroker::v1::GuestStats* previous = nullptr);

}  // namespace membroker

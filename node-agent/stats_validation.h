#pragma once
// The agent's side of guest-statistics trust: converts what a backend read
// into the report's GuestStats and applies the shared rule,
// membroker::GuestStatsProblem (common/guest_stats.h), the same function
// the broker applies when the report arrives.

#include <cstdint>
#include <optional>
#include <string>

#include "absl/time/time.h"
#include "common/guest_stats.h"
#include "membroker/v1/types.pb.h"
#include "node-agent/hypervisor/hypervisor.h"

namespace membroker::agent {

// The verdict on one VM's statistics.
struct StatsVerdict {
  // False when the statistics are stale or impossible.
  bool trusted = true;
  // Why they are untrusted ("" when trusted), for operators.
  std::string reason;
  // now - last_update, when the guest ever sent statistics (never negative).
  std::optional<absl::Duration> age;
};

// The report's form of `stats` read at `now`: every field the guest sent,
// and age_seconds = now - last_update when it ever sent statistics (may be
// negative: the rule treats that as untrusted). untrusted is left unset.
membroker::v1::GuestStats ToProtoGuestStats(const GuestMemoryStats& stats, absl::Time now);

// Applies membroker::GuestStatsProblem to `current` (with `previous`, the
// last statistics read for the same VM, or null) for a VM of `max_bytes`
// at `now`. Pure: no clock reads.
StatsVerdict ValidateGuestStats(const GuestMemoryStats* previous, const GuestMemoryStats& current,
                                uint64_t max_bytes, absl::Time now, absl::Duration report_interval);

}  // namespace membroker::agent

#pragma once
// The agent stream's edge: validation of Hello and HostReport, the guest
// statistics' trust verdict (the one rule the agent applies too,
// common/guest_stats.h), and the conversion of a report into the
// plain observation the decision step reads (broker/policy/host_step.h).
// Used by the broker and by the fleet simulator, so both read reports alike.

#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "broker/policy/host_step.h"
#include "membroker/v1/agent.pb.h"

namespace membroker::broker {

// Checks a Hello. INVALID_ARGUMENT naming the field.
absl::Status ValidateHello(const v1::Hello& hello);

// Checks a HostReport's structure (ids, sizes, duplicates). Guest
// statistics are not checked here: they are untrusted input that is
// flagged, not rejected. INVALID_ARGUMENT naming the field.
absl::Status ValidateReport(const v1::HostReport& report);

// Whether the broker may reclaim through the balloon (not stuck, has a
// driver, not excluded).
bool BalloonHealthy(v1::BalloonHealth health);

// Converts a validated report received at `now_seconds` (monotonic) into the
// decision step's observation. `problems`, when not null, gets one entry per
// VM in report order: "" or the reason its statistics were not trusted.
policy::HostObservation ToHostObservation(const v1::HostReport& report, double now_seconds,
                                          absl::Duration interval,
                                          std::vector<std::string>* problems);

}  // namespace membroker::broker

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

// Limits of a legal agent message: the validation below enforces them and
// the gRPC server's receive limit is derived from them (server_limits.h).
inline constexpr int kMaxVmsPerHost = 10000;
inline constexpr size_t kMaxVmIdChars = 128;
inline constexpr size_t kMaxVmNameChars = 256;
inline constexpr size_t kMaxUntrustedReasonChars = 256;
inline constexpr int kMaxPressureReasons = 8;
// VmSample.sizing_mechanism ("virtio-mem+balloon" is the longest the agent
// sends) and VmSample.health_reason.
inline constexpr size_t kMaxSizingMechanismChars = 32;
inline constexpr size_t kMaxHealthReasonChars = 256;
inline constexpr int kMaxAckErrors = kMaxVmsPerHost;
inline constexpr size_t kMaxAckErrorChars = 256;
// Bounds of VmSample.host_working_set_interval_ms (the agent measures every
// 1 s .. 10 min; a missed round can stretch one interval).
inline constexpr uint64_t kMinWorkingSetIntervalMs = 100;
inline constexpr uint64_t kMaxWorkingSetIntervalMs = 3600 * 1000;

// Checks a Hello. INVALID_ARGUMENT naming the field.
absl::Status ValidateHello(const v1::Hello& hello);

// Checks a HostReport's structure (ids, sizes, duplicates). Guest
// statistics are not checked here: they are untrusted input that is
// flagged, not rejected. INVALID_ARGUMENT naming the field.
absl::Status ValidateReport(const v1::HostReport& report);

// Checks a TargetAck's size: at most one error per VM, each bounded.
// INVALID_ARGUMENT naming the limit.
absl::Status ValidateAck(const v1::TargetAck& ack);

// Whether the broker may reclaim through the balloon (not stuck, has a
// driver, not excluded).
bool BalloonHealthy(v1::BalloonHealth health);

// Memory the guest has that is not resident on the host, for a VM whose
// balloon has free page reporting on: max(actual - host RSS, 0). With
// reporting, pages the guest frees go back to the host by themselves, so
// this is free guest memory already reclaimed without the balloon. 0 for
// a VM without reporting or whose RSS the agent does not read.
uint64_t GuestFreeOnHostBytes(const v1::VmSample& sample);

// Converts a validated report received at `now_seconds` (monotonic) into the
// decision step's observation. `problems`, when not null, gets one entry per
// VM in report order: "" or the reason its statistics were not trusted.
policy::HostObservation ToHostObservation(const v1::HostReport& report, double now_seconds,
                                          absl::Duration interval,
                                          std::vector<std::string>* problems);

}  // namespace membroker::broker

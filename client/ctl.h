#pragma once
// membrokerctl as a library: RunCtl runs one command line in-process, so
// tests drive it exactly as an operator would, with their own streams,
// environment, clock and wait function.

#include <atomic>
#include <functional>
#include <map>
#include <ostream>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "client/args.h"
#include "common/clock.h"
#include "membroker/v1/admin.pb.h"

namespace membroker::client {

// Exit codes.
inline constexpr int kExitOk = 0;
inline constexpr int kExitError = 1;
inline constexpr int kExitUsage = 2;
// A failed call exits with kExitRpcBase + its gRPC status code.
inline constexpr int kExitRpcBase = 64;

// What RunCtl needs from its surroundings.
struct CtlEnvironment {
  // Environment variables ($MEMBROKER_SERVER, $MEMBROKER_TLS_CA, ...).
  std::map<std::string, std::string> vars;
  // Whether `out` is a terminal: `top` clears and redraws only then.
  bool out_is_terminal = false;
  // Time source for `top`'s timestamps. Not owned; must outlive RunCtl.
  const Clock* clock = RealClock::Get();
  // Waits `d` between `top` refreshes; returns false when the user asked to
  // stop (Ctrl-C). Empty: sleep uninterrupted.
  std::function<bool(absl::Duration)> wait;
  // Called once when a live view (`top`) starts, before its first refresh:
  // main installs its Ctrl-C handler here. May be empty.
  std::function<void()> enter_live_view;
};

// Runs one membrokerctl command line (`args` excludes argv[0]). Replies go
// to `out`, errors to `err`. Returns the process exit code: 0 ok, 1 error,
// 2 usage (nothing is sent), 64 + gRPC code when a call fails.
int RunCtl(const std::vector<std::string>& args, std::ostream& out, std::ostream& err,
           const CtlEnvironment& env);

// A wait function for CtlEnvironment::wait that sleeps in short slices and
// returns false as soon as `*stop` becomes true. `stop` must outlive it.
std::function<bool(absl::Duration)> InterruptibleWait(const std::atomic<bool>* stop);

// Request builders: check a parsed invocation's flags and operands and
// build the request. INVALID_ARGUMENT naming the flag or operand.
absl::StatusOr<v1::ListVmsRequest> BuildListVmsRequest(const Invocation& inv);
absl::StatusOr<v1::SetVmPolicyRequest> BuildSetVmPolicyRequest(const Invocation& inv);
absl::StatusOr<v1::SetClusterPolicyRequest> BuildSetClusterPolicyRequest(const Invocation& inv);
absl::StatusOr<v1::ReserveRequest> BuildReserveRequest(const Invocation& inv);
absl::StatusOr<v1::PlaceRequest> BuildPlaceRequest(const Invocation& inv);

// Name of a gRPC status code, e.g. "NOT_FOUND".
std::string StatusCodeName(int code);

}  // namespace membroker::client

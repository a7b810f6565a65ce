#pragma once
// Starts the real membroker binary for end-to-end tests and benchmarks:
// loopback, ephemeral ports, state in a directory of the caller's.

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "tests/util/child_process.h"

namespace membroker::testing {

// The ports a broker started on 127.0.0.1:0 chose (from its start-up line).
struct BrokerPorts {
  int grpc = 0;
  int metrics = 0;
};

// Starts `broker_bin` in `broker` with --listen and --metrics-listen on
// 127.0.0.1:0, --state-dir=`state_dir`, --insecure (unless `extra_args`
// has a --tls-* flag) and `extra_args` (e.g. --config=FILE), its output in `log_path`, and waits up
// to `timeout` for the line naming its ports. The errors of ChildProcess::Start and WaitForLog;
// INTERNAL when the line does not parse.
absl::StatusOr<BrokerPorts> StartBroker(ChildProcess& broker, const std::string& broker_bin,
                                        const std::string& state_dir, const std::string& log_path,
                                        absl::Duration timeout,
                                        const std::vector<std::string>& extra_args = {});

}  // namespace membroker::testing

#pragma once
// Starts a real Prometheus (Debian's `prometheus` package) for end-to-end
// tests: loopback only, its TSDB in a directory of the caller's.

#include <string>

#include "absl/status/statusor.h"
#include "tests/util/child_process.h"

namespace membroker::testing {

// The prometheus binary on PATH, or "".
std::string FindPrometheus();

// Starts `prometheus_bin` in `prom` with `config_path`, its TSDB and logs
// under `dir`, listening on a free 127.0.0.1 port, and waits until it is
// ready. Prometheus cannot report a port it picked, so a free port is
// taken and, if something else takes it meanwhile, another (5 attempts).
// Returns the port; UNAVAILABLE when it never became ready.
absl::StatusOr<int> StartPrometheus(ChildProcess& prom, const std::string& prometheus_bin,
                                    const std::string& config_path, const std::string& dir);

}  // namespace membroker::testing

#include "tests/util/broker_process.h"

#include <cstdio>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace membroker::testing {

absl::StatusOr<BrokerPorts> StartBroker(ChildProcess& broker, const std::string& broker_bin,
                                        const std::string& state_dir, const std::string& log_path,
                                        absl::Duration timeout,
                                        const std::vector<std::string>& extra_args) {
  std::vector<std::string> argv = {broker_bin, "--listen=127.0.0.1:0",
                                   "--metrics-listen=127.0.0.1:0", "--state-dir=" + state_dir};
  // Plaintext unless the caller gives TLS files.
  bool tls = false;
  for (const std::string& a : extra_args) tls = tls || a.rfind("--tls-", 0) == 0;
  if (!tls) argv.push_back("--insecure");
  argv.insert(argv.end(), extra_args.begin(), extra_args.end());
  absl::Status started = broker.Start(argv, log_path);
  if (!started.ok()) return started;
  absl::StatusOr<std::string> line =
      broker.WaitForLog("grpc port ([0-9]+, metrics port [0-9]+)", timeout);
  if (!line.ok()) return line.status();
  BrokerPorts ports;
  if (std::sscanf(line->c_str(), "%d, metrics port %d", &ports.grpc, &ports.metrics) != 2) {
    return absl::InternalError(absl::StrCat("membroker's start-up line does not parse: ", *line));
  }
  return ports;
}

}  // namespace membroker::testing

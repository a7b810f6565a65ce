#include "tests/util/prometheus_process.h"

#include <unistd.h>

#include <cstdlib>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "tests/util/http.h"

namespace membroker::testing {

std::string FindPrometheus() {
  const char* path = std::getenv("PATH");
  std::stringstream dirs(path != nullptr ? path : "/usr/bin:/bin");
  std::string dir;
  while (std::getline(dirs, dir, ':')) {
    const std::string candidate = dir + "/prometheus";
    if (::access(candidate.c_str(), X_OK) == 0) return candidate;
  }
  return "";
}

absl::StatusOr<int> StartPrometheus(ChildProcess& prom, const std::string& prometheus_bin,
                                    const std::string& config_path, const std::string& dir) {
  for (int attempt = 0; attempt < 5; ++attempt) {
    const int port = PickFreeLoopbackPort();
    if (port <= 0) return absl::UnavailableError("no free loopback port");
    absl::Status started = prom.Start({prometheus_bin, "--config.file=" + config_path,
                                       "--storage.tsdb.path=" + dir + "/tsdb",
                                       absl::StrCat("--web.listen-address=127.0.0.1:", port)},
                                      absl::StrCat(dir, "/prometheus.", attempt, ".log"));
    if (!started.ok()) return started;
    if (prom.WaitForLog("Server is ready to receive web requests", absl::Seconds(15)).ok()) {
      return port;
    }
    prom.Stop();
  }
  return absl::UnavailableError("prometheus did not become ready in 5 attempts (see its logs)");
}

}  // namespace membroker::testing

// membroker: the central broker. The only code here is flag parsing and
// signal handling; everything else is in the broker library.

#include <csignal>
#include <cstdio>
#include <thread>

#include <spdlog/spdlog.h>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "broker/server.h"
#include "common/flag_names.h"
#include "common/logging.h"
#include "common/textproto.h"

ABSL_FLAG(std::string, listen, "", "gRPC address HOST:PORT (default 127.0.0.1:7070)");
ABSL_FLAG(std::string, metrics_listen, "", "/metrics address HOST:PORT (default 127.0.0.1:9470)");
ABSL_FLAG(std::string, state_dir, "", "directory of the SQLite state store (required)");
ABSL_FLAG(std::string, config, "", "BrokerConfig textproto file; flags override its fields");
ABSL_FLAG(bool, insecure, false, "serve without TLS (required until TLS is supported)");
ABSL_FLAG(std::string, tls_cert, "", "server certificate (PEM)");
ABSL_FLAG(std::string, tls_key, "", "server key (PEM)");
ABSL_FLAG(std::string, tls_ca, "", "CA that signs agent and admin certificates (PEM)");
ABSL_FLAG(std::string, log_level, "info", "trace|debug|info|warn|error|off");

namespace {

int Usage(const std::string& message) {
  std::fprintf(stderr, "membroker: %s\n", message.c_str());
  return 2;
}

std::atomic<bool> g_stop{false};
void OnSignal(int) { g_stop = true; }

}  // namespace

int main(int argc, char** argv) {
  // Debian's Abseil is built with Mutex deadlock detection on, which keeps
  // a lock graph on every Lock (a few % of the report path). Lock order is
  // documented and tested instead.
  absl::SetMutexDeadlockDetectionMode(absl::OnDeadlockCycle::kIgnore);
  absl::SetProgramUsageMessage(
      "membroker --listen=HOST:PORT --metrics-listen=HOST:PORT --state-dir=DIR "
      "[--config=FILE.textproto] --insecure");
  const std::vector<std::string> original(argv, argv + argc);
  if (const std::string unknown = membroker::FindUnknownFlag(original); !unknown.empty()) {
    return Usage(absl::StrCat("unknown flag ", unknown, " (see --help)"));
  }
  std::vector<std::string> args = membroker::DashesToUnderscores(original);
  std::vector<char*> view = membroker::ArgvView(args);
  std::vector<char*> rest = absl::ParseCommandLine(argc, view.data());
  if (rest.size() > 1) return Usage(absl::StrCat("unexpected argument \"", rest[1], "\""));
  if (auto s = membroker::SetLogLevel(absl::GetFlag(FLAGS_log_level)); !s.ok()) {
    return Usage(std::string(s.message()));
  }
  const bool tls = !absl::GetFlag(FLAGS_tls_cert).empty() || !absl::GetFlag(FLAGS_tls_key).empty() ||
                   !absl::GetFlag(FLAGS_tls_ca).empty();
  if (tls) return Usage("--tls-cert/--tls-key/--tls-ca: TLS is not supported yet; use --insecure");
  if (!absl::GetFlag(FLAGS_insecure)) {
    return Usage("--insecure is required (TLS is not supported yet)");
  }

  membroker::v1::BrokerConfig config;
  if (!absl::GetFlag(FLAGS_config).empty()) {
    if (auto s = membroker::LoadTextProto(absl::GetFlag(FLAGS_config), &config); !s.ok()) {
      return Usage(absl::StrCat("--config: ", s.message()));
    }
  }
  membroker::broker::BrokerOptions options;
  if (!config.listen().empty()) options.listen = config.listen();
  if (!config.metrics_listen().empty()) options.metrics_listen = config.metrics_listen();
  options.state_dir = config.state_dir();
  options.cluster_policy = config.cluster_policy();
  options.safety = config.safety();
  if (!absl::GetFlag(FLAGS_listen).empty()) options.listen = absl::GetFlag(FLAGS_listen);
  if (!absl::GetFlag(FLAGS_metrics_listen).empty()) {
    options.metrics_listen = absl::GetFlag(FLAGS_metrics_listen);
  }
  if (!absl::GetFlag(FLAGS_state_dir).empty()) options.state_dir = absl::GetFlag(FLAGS_state_dir);
  if (auto s = membroker::broker::ValidateBrokerOptions(options); !s.ok()) {
    return Usage(std::string(s.message()));
  }

  auto broker = membroker::broker::Broker::Start(options, membroker::RealClock::Get());
  if (!broker.ok()) {
    std::fprintf(stderr, "membroker: %s\n", std::string(broker.status().message()).c_str());
    return 1;
  }
  std::signal(SIGINT, OnSignal);
  std::signal(SIGTERM, OnSignal);
  std::fprintf(stdout, "membroker listening on grpc port %d, metrics port %d\n",
               (*broker)->grpc_port(), (*broker)->metrics_port());
  std::fflush(stdout);
  while (!g_stop) std::this_thread::sleep_for(std::chrono::milliseconds(100));
  spdlog::info("shutting down");
  (*broker)->Shutdown();
  broker->reset();
  return 0;
}

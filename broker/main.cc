// membroker: the central broker. The only code here is flag parsing and
// signal handling; everything else is in the broker library.

#include <spdlog/spdlog.h>

#include <csignal>
#include <cstdio>
#include <thread>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/flags/usage_config.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "broker/server.h"
#include "common/flag_names.h"
#include "common/logging.h"
#include "common/textproto.h"
#include "common/tls.h"
#include "common/units.h"

ABSL_FLAG(std::string, listen, "", "gRPC address HOST:PORT (default 127.0.0.1:7070)");
ABSL_FLAG(std::string, metrics_listen, "", "/metrics address HOST:PORT (default 127.0.0.1:9470)");
ABSL_FLAG(std::string, state_dir, "", "directory of the SQLite state store (required)");
ABSL_FLAG(std::string, config, "", "BrokerConfig textproto file; flags override its fields");
ABSL_FLAG(bool, insecure, false,
          "serve plaintext gRPC without authentication (local demo only; instead of --tls-*)");
ABSL_FLAG(std::string, tls_cert, "", "server certificate (PEM), re-read when it changes");
ABSL_FLAG(std::string, tls_key, "", "server key (PEM), re-read when it changes");
ABSL_FLAG(std::string, tls_ca, "",
          "CA that signs agent and admin certificates (PEM), re-read when it changes");
ABSL_FLAG(std::string, tls_reload_interval, "10s",
          "how often the TLS files are checked for changes (at least 1s)");
ABSL_FLAG(std::string, log_level, "info", "trace|debug|info|warn|error|off");
ABSL_FLAG(std::string, host_expiry, "",
          "forget a host whose agent has been disconnected this long, e.g. 10m (default 10m)");
ABSL_FLAG(int, max_agent_streams, 0, "open agent streams allowed in total (default 20000)");
ABSL_FLAG(int, max_streams_per_peer, 0,
          "open agent (or watch) streams allowed from one address (default 64)");
ABSL_FLAG(std::string, vm_metrics, "",
          "true|false: per-VM series (membroker_vm_*) on /metrics (default true; false keeps "
          "the host and broker series, for fleets too large to scrape per VM)");

namespace {

int Usage(const std::string& message) {
  std::fprintf(stderr, "membroker: %s\n", message.c_str());
  return 2;
}

std::atomic<bool> g_stop{false};
void OnSignal(int) { g_stop = true; }

}  // namespace

int main(int argc, char** argv) {
  // --help lists this file's flags (absl's default looks for a file named
  // after the program, which would list none).
  absl::FlagsUsageConfig usage_config;
  usage_config.contains_help_flags = [](absl::string_view file) {
    return absl::EndsWith(file, "broker/main.cc");
  };
  usage_config.contains_helpshort_flags = usage_config.contains_help_flags;
  absl::SetFlagsUsageConfig(usage_config);
  // Debian's Abseil is built with Mutex deadlock detection on, which keeps
  // a lock graph on every Lock (a few % of the report path). Lock order is
  // documented and tested instead.
  absl::SetMutexDeadlockDetectionMode(absl::OnDeadlockCycle::kIgnore);
  absl::SetProgramUsageMessage(
      "membroker --listen=HOST:PORT --metrics-listen=HOST:PORT --state-dir=DIR "
      "[--config=FILE.textproto] (--tls-cert=PEM --tls-key=PEM --tls-ca=PEM | --insecure)");
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
  auto tls = membroker::PickTransportSecurity(
      absl::GetFlag(FLAGS_insecure),
      {absl::GetFlag(FLAGS_tls_cert), absl::GetFlag(FLAGS_tls_key), absl::GetFlag(FLAGS_tls_ca)});
  if (!tls.ok()) return Usage(std::string(tls.status().message()));
  absl::Duration reload;
  if (!absl::ParseDuration(absl::GetFlag(FLAGS_tls_reload_interval), &reload)) {
    return Usage("--tls-reload-interval: not a duration (e.g. 10s)");
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
  options.security = config.security();
  options.tls = *tls;
  options.tls_reload_interval = reload;
  if (!absl::GetFlag(FLAGS_listen).empty()) options.listen = absl::GetFlag(FLAGS_listen);
  if (!absl::GetFlag(FLAGS_metrics_listen).empty()) {
    options.metrics_listen = absl::GetFlag(FLAGS_metrics_listen);
  }
  if (!absl::GetFlag(FLAGS_state_dir).empty()) options.state_dir = absl::GetFlag(FLAGS_state_dir);
  if (auto s = membroker::broker::MergeLimitsConfig(config.limits(), &options.limits); !s.ok()) {
    return Usage(absl::StrCat("--config: ", s.message()));
  }
  if (!absl::GetFlag(FLAGS_host_expiry).empty()) {
    auto d = membroker::ParseDurationArg(absl::GetFlag(FLAGS_host_expiry));
    if (!d.ok()) return Usage(absl::StrCat("--host-expiry: ", d.status().message()));
    options.limits.host_expiry = *d;
  }
  if (absl::GetFlag(FLAGS_max_agent_streams) != 0) {
    options.limits.max_agent_streams = absl::GetFlag(FLAGS_max_agent_streams);
  }
  if (absl::GetFlag(FLAGS_max_streams_per_peer) != 0) {
    options.limits.max_streams_per_peer = absl::GetFlag(FLAGS_max_streams_per_peer);
  }
  if (config.has_vm_metrics()) options.vm_metrics = config.vm_metrics();
  if (const std::string v = absl::GetFlag(FLAGS_vm_metrics); !v.empty()) {
    if (v != "true" && v != "false") {
      return Usage(absl::StrCat("--vm-metrics: must be true or false, not \"", v, "\""));
    }
    options.vm_metrics = v == "true";
  }
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
  if (!options.tls) {
    std::fprintf(stdout,
                 "membroker: INSECURE MODE (--insecure): plaintext gRPC, no client "
                 "authentication, anyone who reaches the port may report for any host and change "
                 "any policy. For a local demo only; use --tls-cert/--tls-key/--tls-ca "
                 "otherwise.\n");
  }
  std::fprintf(stdout, "membroker listening on grpc port %d, metrics port %d (%s)\n",
               (*broker)->grpc_port(), (*broker)->metrics_port(),
               options.tls ? "mutual TLS" : "insecure");
  std::fflush(stdout);
  while (!g_stop) std::this_thread::sleep_for(std::chrono::milliseconds(100));
  spdlog::info("shutting down");
  (*broker)->Shutdown();
  broker->reset();
  return 0;
}

// membroker-agent: the per-host daemon. Reads every VM's balloon and guest
// statistics and the host's memory, streams them to the broker, and applies
// the broker's balloon targets safely.

#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>
#include <vector>

#include <grpcpp/grpcpp.h>
#include <prometheus/registry.h>
#include <spdlog/spdlog.h>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/reflection.h"
#include "absl/flags/usage.h"
#include "absl/flags/usage_config.h"
#include "absl/strings/match.h"
#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "common/clock.h"
#include "common/logging.h"
#include "common/flag_names.h"
#include "common/metrics_server.h"
#include "node-agent/agent.h"
#include "node-agent/vm_process_probe.h"
#include "node-agent/agent_options.h"
#include "node-agent/host_probe.h"
#include "node-agent/hypervisor/factory.h"

ABSL_FLAG(std::string, broker, "", "Broker address, HOST:PORT.");
ABSL_FLAG(std::string, host_id, "", "This host's name in the fleet ([A-Za-z0-9._-], 1..253).");
ABSL_FLAG(std::string, backend, "", "Hypervisor backend: libvirt, qmp or sim.");
ABSL_FLAG(std::string, libvirt_uri, "", "libvirt URI (default qemu:///system).");
ABSL_FLAG(std::vector<std::string>, qmp_socket, {},
          "QMP socket paths, comma-separated; globs allowed (backend qmp).");
ABSL_FLAG(std::string, qmp_socket_dir, "", "Directory whose sockets are QMP sockets (backend qmp).");
ABSL_FLAG(std::string, sim_config, "", "SimConfig textproto (backend sim).");
ABSL_FLAG(std::string, host_capacity_bytes, "",
          "Memory VMs may have in total, e.g. 48GiB (exclusive with --host-reserve-bytes).");
ABSL_FLAG(std::string, host_reserve_bytes, "",
          "Host memory kept for the hypervisor, e.g. 4GiB (exclusive with "
          "--host-capacity-bytes).");
ABSL_FLAG(std::string, metrics_listen, "", "HOST:PORT serving /metrics.");
ABSL_FLAG(bool, insecure, false,
          "Plaintext, unauthenticated broker stream (local demo only; instead of --tls-*).");
ABSL_FLAG(std::string, tls_cert, "",
          "This host's client certificate (PEM; names the host), re-read when it changes.");
ABSL_FLAG(std::string, tls_key, "", "Its private key (PEM), re-read when it changes.");
ABSL_FLAG(std::string, tls_ca, "", "CA that signs the broker's certificate (PEM).");
ABSL_FLAG(std::string, config, "", "AgentConfig textproto; flags override its values.");
ABSL_FLAG(std::string, log_level, "info", "trace, debug, info, warn, error or off.");
ABSL_FLAG(std::string, rss_interval, "",
          "How often each VM's QEMU process resident memory is read for acute pressure, e.g. "
          "200ms (default); 0 turns the signal off.");
ABSL_FLAG(std::string, working_set_interval, "",
          "How often the memory each VM's guest touched is measured from the host (clear_refs, "
          "then smaps' Referenced of its guest RAM) for VMs without usable guest statistics, "
          "e.g. 10s (default); 0 turns it off. 1s..10m.");
ABSL_FLAG(std::string, working_set_all_vms, "",
          "true or false (default): measure the host-side working set of every VM, not only of "
          "those whose guest statistics are missing, stale or untrusted.");
ABSL_FLAG(std::string, working_set_refault, "",
          "off (default), kvm or all: measure the working set by refault sampling (clear_refs "
          "4, then 1) for VM processes holding a KVM VM, or for every VM process. Off leaves "
          "KVM guests without a host-side working set.");
ABSL_FLAG(std::string, local_grants, "",
          "true (default) or false: deflate a VM under acute pressure from the host's unassigned "
          "budget before the broker answers.");
ABSL_FLAG(std::vector<std::string>, guest_console_logs, {},
          "NAME=PATH[,NAME=PATH...]: where each guest's serial console is logged; the agent "
          "counts the guest kernel's OOM-kill lines there and reports them to the broker.");
ABSL_FLAG(std::string, report_interval, "",
          "Report interval until the broker sets one, e.g. 1s (default 1s).");
ABSL_FLAG(std::string, reconnect_max_backoff, "",
          "Longest wait between attempts to reach the broker, 1s..5m (default: the report "
          "interval, at least 1s; the waits start at 100ms, double and are jittered by 20%).");

namespace {

constexpr int kExitError = 1;
constexpr int kExitUsage = 2;

int Fail(int code, const absl::Status& status) {
  std::fprintf(stderr, "membroker-agent: %s\n", std::string(status.message()).c_str());
  return code;
}

int ExitCodeFor(const absl::Status& status) {
  return absl::IsInvalidArgument(status) || absl::IsNotFound(status) ? kExitUsage : kExitError;
}

}  // namespace

int main(int argc, char** argv) {
  using namespace membroker;        // NOLINT
  using namespace membroker::agent;  // NOLINT

  // Signals are taken by sigwait below; block them before any thread starts.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);

  // The broker stream's calls fail fast while the broker is down, so no
  // thread polls the channel between attempts, and gRPC would see that a
  // reconnection attempt succeeded only at its next background poll (every
  // 5 s by default): a restarted broker would be found seconds late
  // whatever the backoff. Poll every 100 ms instead (before gRPC starts;
  // an operator's own setting wins).
  setenv("GRPC_CLIENT_CHANNEL_BACKUP_POLL_INTERVAL_MS", "100", /*overwrite=*/0);

  absl::FlagsUsageConfig usage_config;
  usage_config.contains_help_flags = [](absl::string_view file) {
    return absl::EndsWith(file, "node-agent/main.cc");
  };
  usage_config.contains_helpshort_flags = usage_config.contains_help_flags;
  absl::SetFlagsUsageConfig(usage_config);
  absl::SetProgramUsageMessage(
      "membroker-agent --broker=HOST:PORT --host-id=NAME --backend=libvirt|qmp|sim "
      "[--libvirt-uri=URI] [--qmp-socket=PATH,...] [--sim-config=FILE] "
      "[--host-capacity-bytes=N | --host-reserve-bytes=N] --metrics-listen=HOST:PORT "
      "(--tls-cert=PEM --tls-key=PEM --tls-ca=PEM | --insecure)");
  // The contract spells flags with dashes and lets --qmp-socket repeat.
  std::vector<std::string> args = NormalizeCommandLine(std::vector<std::string>(argv, argv + argc));
  if (const std::string unknown = FindUnknownFlag(args); !unknown.empty()) {
    return Fail(kExitUsage, absl::InvalidArgumentError(absl::StrCat(
                                "unknown flag \"", unknown, "\" (see --help)")));
  }
  std::vector<char*> arg_ptrs;
  for (std::string& a : args) arg_ptrs.push_back(a.data());
  std::vector<char*> rest = absl::ParseCommandLine(static_cast<int>(arg_ptrs.size()), arg_ptrs.data());
  if (rest.size() > 1) {
    return Fail(kExitUsage,
                absl::InvalidArgumentError(absl::StrCat("unexpected argument \"", rest[1], "\"")));
  }
  if (absl::Status st = SetLogLevel(absl::GetFlag(FLAGS_log_level)); !st.ok()) {
    return Fail(kExitUsage, absl::InvalidArgumentError(absl::StrCat("--log-level: ", st.message())));
  }

  AgentFlags flags;
  flags.broker = absl::GetFlag(FLAGS_broker);
  flags.host_id = absl::GetFlag(FLAGS_host_id);
  flags.backend = absl::GetFlag(FLAGS_backend);
  flags.libvirt_uri = absl::GetFlag(FLAGS_libvirt_uri);
  flags.qmp_sockets = absl::GetFlag(FLAGS_qmp_socket);
  flags.qmp_socket_dir = absl::GetFlag(FLAGS_qmp_socket_dir);
  flags.sim_config = absl::GetFlag(FLAGS_sim_config);
  flags.host_capacity_bytes = absl::GetFlag(FLAGS_host_capacity_bytes);
  flags.host_reserve_bytes = absl::GetFlag(FLAGS_host_reserve_bytes);
  flags.metrics_listen = absl::GetFlag(FLAGS_metrics_listen);
  flags.insecure = absl::GetFlag(FLAGS_insecure);
  flags.tls_cert = absl::GetFlag(FLAGS_tls_cert);
  flags.tls_key = absl::GetFlag(FLAGS_tls_key);
  flags.tls_ca = absl::GetFlag(FLAGS_tls_ca);
  flags.config = absl::GetFlag(FLAGS_config);
  flags.report_interval = absl::GetFlag(FLAGS_report_interval);
  flags.reconnect_max_backoff = absl::GetFlag(FLAGS_reconnect_max_backoff);
  flags.rss_interval = absl::GetFlag(FLAGS_rss_interval);
  flags.local_grants = absl::GetFlag(FLAGS_local_grants);
  flags.guest_console_logs = absl::GetFlag(FLAGS_guest_console_logs);
  flags.working_set_interval = absl::GetFlag(FLAGS_working_set_interval);
  flags.working_set_all_vms = absl::GetFlag(FLAGS_working_set_all_vms);
  flags.working_set_refault = absl::GetFlag(FLAGS_working_set_refault);
  absl::StatusOr<AgentOptions> options = BuildAgentOptions(flags);
  if (!options.ok()) return Fail(kExitUsage, options.status());

  RealClock* clock = RealClock::Get();
  BackendOptions backend;
  backend.backend = options->backend;
  backend.libvirt_uri = options->libvirt_uri;
  backend.qmp_sockets = options->qmp_sockets;
  backend.qmp_socket_dir = options->qmp_socket_dir;
  backend.sim_config = options->sim_config;
  backend.clock = clock;
  absl::StatusOr<std::unique_ptr<Hypervisor>> hypervisor = MakeHypervisor(backend);
  if (!hypervisor.ok()) return Fail(ExitCodeFor(hypervisor.status()), hypervisor.status());

  // The host's real memory bounds the capacity.
  HostSampler sampler;
  uint64_t host_total = 0;
  if (options->backend == "sim") {
    host_total = options->sim_config.host_total_bytes();
    sampler = [host_total](const std::vector<VmStatus>& vms) -> absl::StatusOr<HostMemorySample> {
      return SimHostSample(host_total, vms);
    };
  } else {
    auto probe = std::make_shared<HostProbe>(RealFileReader());
    absl::StatusOr<HostMemorySample> sample = probe->Read();
    if (!sample.ok()) return Fail(kExitError, sample.status());
    host_total = sample->meminfo.mem_total_bytes;
    sampler = [probe](const std::vector<VmStatus>&) { return probe->Read(); };
  }
  absl::StatusOr<uint64_t> capacity =
      ComputeCapacity(host_total, options->host_capacity_bytes, options->host_reserve_bytes);
  if (!capacity.ok()) return Fail(kExitUsage, capacity.status());

  auto registry = std::make_shared<prometheus::Registry>();
  absl::StatusOr<std::unique_ptr<MetricsServer>> metrics =
      MetricsServer::Start(options->metrics_listen, registry);
  if (!metrics.ok()) return Fail(ExitCodeFor(metrics.status()), metrics.status());

  grpc::ChannelArguments channel_args;
  channel_args.SetInt(GRPC_ARG_KEEPALIVE_TIME_MS, 10000);
  channel_args.SetInt(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, 5000);
  channel_args.SetInt(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 1);
  // gRPC's own reconnection follows the link's backoff (its defaults grow
  // to 120 s, so a restarted broker would be found minutes late).
  const BackoffParams reconnect =
      ReconnectBackoff(options->report_interval, options->reconnect_max_backoff);
  channel_args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS,
                      static_cast<int>(absl::ToInt64Milliseconds(reconnect.initial)));
  channel_args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS,
                      static_cast<int>(absl::ToInt64Milliseconds(reconnect.max)));
  if (!options->tls_warning.empty()) spdlog::warn("{}", options->tls_warning);
  if (options->insecure) {
    spdlog::warn(
        "INSECURE MODE (--insecure): plaintext, unauthenticated broker stream; for a "
        "local demo only, use --tls-cert/--tls-key/--tls-ca otherwise");
  }
  std::shared_ptr<grpc::Channel> channel =
      grpc::CreateCustomChannel(options->broker,
                                options->tls ? MutualTlsChannelCredentials(*options->tls)
                                             : grpc::InsecureChannelCredentials(),
                                channel_args);

  AgentParams params;
  params.host_id = options->host_id;
  params.capacity_bytes = *capacity;
  params.host_total_bytes = host_total;
  params.report_interval = options->report_interval;
  params.backoff = reconnect;
  params.backoff_follows_report_interval = options->reconnect_max_backoff == absl::ZeroDuration();
  params.rss_interval = options->rss_interval;
  if (options->rss_interval > absl::ZeroDuration() && options->backend != "sim") {
    params.vm_probe = std::make_shared<ProcVmProcessProbe>();
  }
  params.working_set_interval = options->working_set_interval;
  params.working_set_all_vms = options->working_set_all_vms;
  params.working_set_refault = options->working_set_refault;
  if (options->working_set_interval > absl::ZeroDuration() && options->backend != "sim") {
    params.working_set_probe = std::make_shared<ProcWorkingSetProbe>("/proc", FindCgroupV2Root());
  }
  params.actuator.local_grants = options->local_grants;
  if (!options->guest_console_logs.empty()) {
    params.consoles = std::make_shared<GuestConsoleOomCounter>(options->guest_console_logs);
  }
  Agent agent(params, *std::move(hypervisor), std::move(sampler), clock, channel, registry);
  spdlog::info("membroker-agent {} host {} backend {} capacity {} bytes, broker {}, metrics on "
               "port {}",
               MB_VERSION, options->host_id, options->backend, *capacity, options->broker,
               (*metrics)->port());
  agent.Start();

  int signal_number = 0;
  sigwait(&signals, &signal_number);
  spdlog::info("signal {}: stopping", signal_number);
  agent.Stop();
  return 0;
}

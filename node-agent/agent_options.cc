#include "node-agent/agent_options.h"

#include <dirent.h>
#include <sys/stat.h>

#include <algorithm>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "common/flag_names.h"
#include "common/status.h"
#include "common/textproto.h"
#include "common/units.h"
#include "node-agent/guest_console.h"

namespace membroker::agent {
namespace {

// A value taken from a flag or, when the flag is empty, from the config
// file; `source` names where it came from, for errors.
struct Picked {
  std::string value;
  std::string source;
};

Picked Pick(const std::string& flag_value, const std::string& config_value,
            const std::string& flag_name, const std::string& field_name) {
  if (!flag_value.empty()) return {flag_value, flag_name};
  if (!config_value.empty()) return {config_value, absl::StrCat("--config field ", field_name)};
  return {"", flag_name};
}

absl::Status Prefix(const std::string& source, const absl::Status& status) {
  if (status.ok()) return status;
  return absl::Status(status.code(), absl::StrCat(source, ": ", status.message()));
}

}  // namespace

std::vector<std::string> NormalizeCommandLine(const std::vector<std::string>& args) {
  std::vector<std::string> out;
  std::vector<std::string> qmp_sockets;
  size_t qmp_position = 0;
  bool rest = false;
  for (size_t i = 0; i < args.size(); ++i) {
    std::string arg = args[i];
    if (i > 0 && !rest && arg == "--") rest = true;
    if (i == 0 || rest || arg.size() <= 2 || arg.compare(0, 2, "--") != 0) {
      out.push_back(std::move(arg));
      continue;
    }
    arg = FlagArgToUnderscores(std::move(arg));
    const size_t end = std::min(arg.find('='), arg.size());
    const std::string name = arg.substr(2, end - 2);
    if (name == "qmp_socket") {
      if (qmp_sockets.empty()) qmp_position = out.size();
      if (end < arg.size()) {
        qmp_sockets.push_back(arg.substr(end + 1));
      } else if (i + 1 < args.size()) {
        qmp_sockets.push_back(args[++i]);
      } else {
        out.push_back(std::move(arg));  // the parser reports the missing value
      }
      continue;
    }
    out.push_back(std::move(arg));
  }
  if (!qmp_sockets.empty()) {
    out.insert(out.begin() + static_cast<std::ptrdiff_t>(qmp_position),
               absl::StrCat("--qmp_socket=", absl::StrJoin(qmp_sockets, ",")));
  }
  return out;
}

absl::Status ValidateQmpSockets(const std::vector<std::string>& sockets, const std::string& dir) {
  for (const std::string& entry : sockets) {
    if (entry.empty()) return absl::InvalidArgumentError("--qmp-socket: empty path");
  }
  if (!dir.empty()) {
    struct stat st {};
    if (stat(dir.c_str(), &st) != 0 || !S_ISDIR(st.st_mode)) {
      return absl::InvalidArgumentError(
          absl::StrCat("--qmp-socket-dir: \"", dir, "\" is not a directory"));
    }
    DIR* d = opendir(dir.c_str());
    if (d == nullptr) {
      return absl::InvalidArgumentError(
          absl::StrCat("--qmp-socket-dir: cannot read directory \"", dir, "\""));
    }
    closedir(d);
  }
  return absl::OkStatus();
}

absl::StatusOr<uint64_t> ComputeCapacity(uint64_t host_total_bytes,
                                         std::optional<uint64_t> capacity_bytes,
                                         std::optional<uint64_t> reserve_bytes) {
  if (host_total_bytes == 0) {
    return absl::InvalidArgumentError("host memory is unknown (0 bytes)");
  }
  if (capacity_bytes.has_value() && reserve_bytes.has_value()) {
    return absl::InvalidArgumentError(
        "--host-capacity-bytes and --host-reserve-bytes are mutually exclusive");
  }
  if (capacity_bytes.has_value()) {
    if (*capacity_bytes == 0) {
      return absl::InvalidArgumentError("--host-capacity-bytes must be > 0");
    }
    if (*capacity_bytes > host_total_bytes) {
      return absl::InvalidArgumentError(
          absl::StrCat("--host-capacity-bytes ", FormatBytes(*capacity_bytes),
                       " is above the host's memory ", FormatBytes(host_total_bytes)));
    }
    return *capacity_bytes;
  }
  if (reserve_bytes.has_value()) {
    if (*reserve_bytes >= host_total_bytes) {
      return absl::InvalidArgumentError(
          absl::StrCat("--host-reserve-bytes ", FormatBytes(*reserve_bytes),
                       " leaves nothing of the host's memory ", FormatBytes(host_total_bytes)));
    }
    return host_total_bytes - *reserve_bytes;
  }
  return host_total_bytes;
}

absl::StatusOr<AgentOptions> BuildAgentOptions(const AgentFlags& flags) {
  membroker::v1::AgentConfig config;
  if (!flags.config.empty()) {
    RETURN_IF_ERROR(Prefix("--config", LoadTextProto(flags.config, &config)));
  }
  AgentOptions options;

  const Picked broker = Pick(flags.broker, config.broker(), "--broker", "broker");
  if (broker.value.empty()) return absl::InvalidArgumentError("--broker is required (HOST:PORT)");
  RETURN_IF_ERROR(Prefix(broker.source, ValidateHostPort(broker.value)));
  options.broker = broker.value;

  const Picked host_id = Pick(flags.host_id, config.host_id(), "--host-id", "host_id");
  if (host_id.value.empty()) return absl::InvalidArgumentError("--host-id is required");
  RETURN_IF_ERROR(Prefix(host_id.source, ValidateHostId(host_id.value)));
  options.host_id = host_id.value;

  const Picked backend = Pick(flags.backend, config.backend(), "--backend", "backend");
  if (backend.value.empty()) {
    return absl::InvalidArgumentError("--backend is required (libvirt, qmp or sim)");
  }
  if (backend.value != "libvirt" && backend.value != "qmp" && backend.value != "sim") {
    return absl::InvalidArgumentError(absl::StrCat(backend.source, ": unknown backend \"",
                                                   backend.value, "\" (want libvirt, qmp or sim)"));
  }
  options.backend = backend.value;

  const Picked uri = Pick(flags.libvirt_uri, config.libvirt_uri(), "--libvirt-uri", "libvirt_uri");
  if (!uri.value.empty()) options.libvirt_uri = uri.value;

  std::vector<std::string> sockets = flags.qmp_sockets;
  if (sockets.empty() && flags.qmp_socket_dir.empty()) {
    sockets.assign(config.qmp_sockets().begin(), config.qmp_sockets().end());
  }
  RETURN_IF_ERROR(ValidateQmpSockets(sockets, flags.qmp_socket_dir));
  options.qmp_sockets = std::move(sockets);
  options.qmp_socket_dir = flags.qmp_socket_dir;
  if (options.backend == "qmp" && options.qmp_sockets.empty() && options.qmp_socket_dir.empty()) {
    return absl::InvalidArgumentError(
        "--backend=qmp needs --qmp-socket (comma-separated, globs allowed) or --qmp-socket-dir");
  }

  const Picked sim = Pick(flags.sim_config, config.sim_config(), "--sim-config", "sim_config");
  if (options.backend == "sim") {
    if (sim.value.empty()) {
      return absl::InvalidArgumentError("--backend=sim needs --sim-config=FILE.textproto");
    }
    RETURN_IF_ERROR(Prefix(sim.source, LoadTextProto(sim.value, &options.sim_config)));
    if (options.sim_config.host_total_bytes() == 0) {
      return absl::InvalidArgumentError(
          absl::StrCat(sim.source, ": host_total_bytes must be > 0"));
    }
  }

  // Capacity: flags as a pair override the config's pair.
  if (!flags.host_capacity_bytes.empty() || !flags.host_reserve_bytes.empty()) {
    if (!flags.host_capacity_bytes.empty() && !flags.host_reserve_bytes.empty()) {
      return absl::InvalidArgumentError(
          "--host-capacity-bytes and --host-reserve-bytes are mutually exclusive");
    }
    if (!flags.host_capacity_bytes.empty()) {
      auto bytes = ParseBytes(flags.host_capacity_bytes);
      if (!bytes.ok()) return Prefix("--host-capacity-bytes", bytes.status());
      if (*bytes == 0) return absl::InvalidArgumentError("--host-capacity-bytes must be > 0");
      options.host_capacity_bytes = *bytes;
    } else {
      auto bytes = ParseBytes(flags.host_reserve_bytes);
      if (!bytes.ok()) return Prefix("--host-reserve-bytes", bytes.status());
      options.host_reserve_bytes = *bytes;
    }
  } else {
    if (config.host_capacity_bytes() != 0 && config.host_reserve_bytes() != 0) {
      return absl::InvalidArgumentError(
          "--config: host_capacity_bytes and host_reserve_bytes are mutually exclusive");
    }
    if (config.host_capacity_bytes() != 0) options.host_capacity_bytes = config.host_capacity_bytes();
    if (config.host_reserve_bytes() != 0) options.host_reserve_bytes = config.host_reserve_bytes();
  }

  const Picked metrics =
      Pick(flags.metrics_listen, config.metrics_listen(), "--metrics-listen", "metrics_listen");
  if (metrics.value.empty()) {
    return absl::InvalidArgumentError("--metrics-listen is required (HOST:PORT)");
  }
  RETURN_IF_ERROR(Prefix(metrics.source, ValidateHostPort(metrics.value)));
  options.metrics_listen = metrics.value;

  auto tls = PickTransportSecurity(flags.insecure, {flags.tls_cert, flags.tls_key, flags.tls_ca});
  if (!tls.ok()) return tls.status();
  if (tls->has_value()) RETURN_IF_ERROR(CheckTlsFiles(**tls, &options.tls_warning));
  options.tls = *tls;
  options.insecure = !options.tls.has_value();

  if (!flags.report_interval.empty()) {
    auto interval = ParseDurationArg(flags.report_interval);
    if (!interval.ok()) return Prefix("--report-interval", interval.status());
    if (*interval < absl::Milliseconds(100) || *interval > absl::Hours(1)) {
      return absl::InvalidArgumentError("--report-interval must be between 100ms and 1h");
    }
    options.report_interval = *interval;
  }
  if (!flags.reconnect_max_backoff.empty()) {
    auto cap = ParseDurationArg(flags.reconnect_max_backoff);
    if (!cap.ok()) return Prefix("--reconnect-max-backoff", cap.status());
    // At least 1 s: an agent never retries a broker that is down faster.
    if (*cap < absl::Seconds(1) || *cap > absl::Minutes(5)) {
      return absl::InvalidArgumentError("--reconnect-max-backoff must be between 1s and 5m");
    }
    options.reconnect_max_backoff = *cap;
  }
  if (!flags.rss_interval.empty()) {
    auto interval = ParseDurationArg(flags.rss_interval);
    if (!interval.ok()) return Prefix("--rss-interval", interval.status());
    if (*interval != absl::ZeroDuration() &&
        (*interval < absl::Milliseconds(50) || *interval > absl::Seconds(10))) {
      return absl::InvalidArgumentError("--rss-interval must be 0 (off) or between 50ms and 10s");
    }
    options.rss_interval = *interval;
  }
  if (!flags.guest_console_logs.empty()) {
    absl::StatusOr<std::map<std::string, std::string>> logs =
        ParseConsoleLogs(flags.guest_console_logs);
    if (!logs.ok()) return logs.status();
    options.guest_console_logs = *std::move(logs);
  }
  if (!flags.working_set_interval.empty()) {
    auto interval = ParseDurationArg(flags.working_set_interval);
    if (!interval.ok()) return Prefix("--working-set-interval", interval.status());
    if (*interval != absl::ZeroDuration() &&
        (*interval < absl::Seconds(1) || *interval > absl::Minutes(10))) {
      return absl::InvalidArgumentError(
          "--working-set-interval must be 0 (off) or between 1s and 10m");
    }
    options.working_set_interval = *interval;
  }
  if (!flags.working_set_all_vms.empty()) {
    if (flags.working_set_all_vms == "true") {
      options.working_set_all_vms = true;
    } else if (flags.working_set_all_vms == "false") {
      options.working_set_all_vms = false;
    } else {
      return absl::InvalidArgumentError(absl::StrCat(
          "--working-set-all-vms must be true or false, not \"", flags.working_set_all_vms, "\""));
    }
  }
  if (!flags.working_set_refault.empty()) {
    absl::StatusOr<RefaultMode> mode = ParseRefaultMode(flags.working_set_refault);
    if (!mode.ok()) return Prefix("--working-set-refault", mode.status());
    options.working_set_refault = *mode;
  }
  if (!flags.local_grants.empty()) {
    if (flags.local_grants == "true") {
      options.local_grants = true;
    } else if (flags.local_grants == "false") {
      options.local_grants = false;
    } else {
      return absl::InvalidArgumentError(
          absl::StrCat("--local-grants must be true or false, not \"", flags.local_grants, "\""));
    }
  }
  return options;
}

}  // namespace membroker::agent

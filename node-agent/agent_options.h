#pragma once
// The agent's command line and config file, merged and validated. main.cc
// fills AgentFlags from its flags; everything else lives here so that it
// is tested.

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "common/tls.h"
#include "membroker/v1/config.pb.h"
#include "node-agent/working_set.h"

namespace membroker::agent {

// The raw flag values; an empty string (or list) means "not given".
struct AgentFlags {
  std::string broker;
  std::string host_id;
  std::string backend;
  std::string libvirt_uri;
  std::vector<std::string> qmp_sockets;
  std::string qmp_socket_dir;
  std::string sim_config;
  std::string host_capacity_bytes;
  std::string host_reserve_bytes;
  std::string metrics_listen;
  bool insecure = false;
  std::string tls_cert;
  std::string tls_key;
  std::string tls_ca;
  std::string config;
  std::string report_interval;
  // The reconnect backoff's cap ("": max(1 s, the report interval)).
  std::string reconnect_max_backoff;
  // How often each VM process's resident memory is read ("0": never).
  std::string rss_interval;
  // "true"/"false": grant memory to a VM under acute pressure before the
  // broker answers.
  std::string local_grants;
  // "NAME=PATH" entries: where each guest's serial console is logged.
  std::vector<std::string> guest_console_logs;
  // How often the host-side working set is measured ("0": never).
  std::string working_set_interval;
  // "true"/"false": measure every VM, not only those without usable
  // guest statistics.
  std::string working_set_all_vms;
  // "off", "kvm" or "all": which VM processes are refault-sampled.
  std::string working_set_refault;
};

// Rewrites a command line for Abseil's flag parser: flag names spelled
// with dashes ("--host-id") get underscores ("--host_id"), and repeated
// --qmp-socket flags ("--qmp-socket=a --qmp-socket b") are joined into one
// comma-separated flag. Arguments after "--" are left alone.
std::vector<std::string> NormalizeCommandLine(const std::vector<std::string>& args);

// Validated agent settings.
struct AgentOptions {
  std::string broker;
  std::string host_id;
  std::string backend;
  std::string libvirt_uri = "qemu:///system";
  // --qmp-socket entries as given (socket paths and glob patterns), and
  // --qmp-socket-dir ("" for none). Not expanded here: the QMP backend
  // rescans the globs and the directory on every listing, so VMs started
  // after the agent are found and VMs that exit are dropped.
  std::vector<std::string> qmp_sockets;
  std::string qmp_socket_dir;
  // Loaded from --sim-config (backend "sim").
  membroker::v1::SimConfig sim_config;
  std::optional<uint64_t> host_capacity_bytes;
  std::optional<uint64_t> host_reserve_bytes;
  std::string metrics_listen;
  // Plaintext stream to the broker (--insecure, the local demo).
  bool insecure = false;
  // Mutual TLS files (unset with --insecure); re-read when they change.
  std::optional<TlsFiles> tls;
  // Non-empty when the certificate is expired or not yet valid.
  std::string tls_warning;
  // Until the broker's Welcome says otherwise.
  absl::Duration report_interval = absl::Seconds(1);
  // The cap of the reconnect backoff; zero: max(1 s, the report interval in
  // force), following the broker's Welcome.
  absl::Duration reconnect_max_backoff = absl::ZeroDuration();
  // Period of the host-side RSS signal; zero turns it off.
  absl::Duration rss_interval = absl::Milliseconds(200);
  // Local grants under acute pressure (actuator step 2b).
  bool local_grants = true;
  // VM name -> console log path (--guest-console-logs).
  std::map<std::string, std::string> guest_console_logs;
  // Period of the host-side working-set probe (node-agent/working_set.h);
  // zero turns it off. 1 s .. 10 min.
  absl::Duration working_set_interval = absl::Seconds(10);
  // Measure every VM, not only those whose guest statistics are missing,
  // stale or untrusted.
  bool working_set_all_vms = false;
  // Which VM processes are measured by refault sampling (working_set.h,
  // 6); off by default: it cannot be verified without KVM here, and a low
  // working set lets the broker reclaim a guest into its real use.
  RefaultMode working_set_refault = RefaultMode::kOff;
};

// Merges `flags` over the --config file (flags win) and validates every
// value. INVALID_ARGUMENT naming the flag (or config field) for anything
// wrong; NOT_FOUND when a named file cannot be read.
absl::StatusOr<AgentOptions> BuildAgentOptions(const AgentFlags& flags);

// The capacity for VMs on a host of `host_total_bytes`: the operator's
// budget, or total minus the reserve, or the total when neither is given.
// INVALID_ARGUMENT naming the flag when the budget is zero or above the
// host's memory, or the reserve leaves nothing.
absl::StatusOr<uint64_t> ComputeCapacity(uint64_t host_total_bytes,
                                         std::optional<uint64_t> capacity_bytes,
                                         std::optional<uint64_t> reserve_bytes);

// Checks QMP socket arguments: no entry may be empty, and `dir` (if not
// empty) must be a directory that can be read now. A glob that matches
// nothing yet and a socket path that does not exist yet are accepted: the
// backend keeps looking (and logs a named socket it cannot reach).
// INVALID_ARGUMENT naming the flag otherwise.
absl::Status ValidateQmpSockets(const std::vector<std::string>& sockets, const std::string& dir);

}  // namespace membroker::agent

#pragma once
// Picks the hypervisor backend the agent drives: "libvirt", "qmp" or "sim".

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "common/clock.h"
#include "membroker/v1/config.pb.h"
#include "node-agent/hypervisor/hypervisor.h"

namespace membroker::agent {

// What a backend needs to start. Only the fields of the chosen backend are
// read.
struct BackendOptions {
  // "libvirt", "qmp" or "sim".
  std::string backend;
  // libvirt connection URI.
  std::string libvirt_uri = "qemu:///system";
  // QMP socket paths and glob patterns (--qmp-socket), one socket per VM.
  std::vector<std::string> qmp_sockets;
  // A directory of QMP sockets (--qmp-socket-dir), rescanned by the
  // backend; "" for none.
  std::string qmp_socket_dir;
  // The simulated host (backend "sim").
  membroker::v1::SimConfig sim_config;
  // Time source; not owned, must outlive the backend. Never null.
  Clock* clock = nullptr;
};

// Builds the backend named by `options.backend`. INVALID_ARGUMENT for an
// unknown backend name or a bad backend option; UNIMPLEMENTED when the
// backend was not compiled into this binary; UNAVAILABLE when the
// hypervisor cannot be reached.
absl::StatusOr<std::unique_ptr<Hypervisor>> MakeHypervisor(const BackendOptions& options);

}  // namespace membroker::agent

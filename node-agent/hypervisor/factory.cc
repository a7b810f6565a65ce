#include "node-agent/hypervisor/factory.h"

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

#ifdef MB_HAVE_SIM
#include "node-agent/hypervisor/sim_hypervisor.h"
#endif
#ifdef MB_HAVE_REAL_BACKENDS
#include "node-agent/hypervisor/libvirt_hypervisor.h"
#include "node-agent/hypervisor/qmp_hypervisor.h"
#endif

namespace membroker::agent {

absl::StatusOr<std::unique_ptr<Hypervisor>> MakeHypervisor(const BackendOptions& options) {
  if (options.clock == nullptr) {
    return absl::InvalidArgumentError("backend options: clock is required");
  }
  if (options.backend == "sim") {
#ifdef MB_HAVE_SIM
    auto sim = SimHypervisor::Create(options.sim_config, options.clock);
    if (!sim.ok()) return sim.status();
    return std::unique_ptr<Hypervisor>(std::move(sim).value());
#else
    return absl::UnimplementedError("--backend=sim: this binary was built without the simulator");
#endif
  }
  if (options.backend == "libvirt") {
#ifdef MB_HAVE_REAL_BACKENDS
    return MakeLibvirtHypervisor(options.libvirt_uri, options.clock);
#else
    return absl::UnimplementedError(
        "--backend=libvirt: this binary was built without the libvirt backend");
#endif
  }
  if (options.backend == "qmp") {
    if (options.qmp_sockets.empty() && options.qmp_socket_dir.empty()) {
      return absl::InvalidArgumentError(
          "--backend=qmp needs at least one --qmp-socket or --qmp-socket-dir");
    }
#ifdef MB_HAVE_REAL_BACKENDS
    return MakeQmpHypervisor(options.qmp_sockets, options.qmp_socket_dir, options.clock);
#else
    return absl::UnimplementedError("--backend=qmp: this binary was built without the QMP backend");
#endif
  }
  return absl::InvalidArgumentError(
      absl::StrCat("--backend: unknown backend \"", options.backend,
                   "\" (want libvirt, qmp or sim)"));
}

}  // namespace membroker::agent

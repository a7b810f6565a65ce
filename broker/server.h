#pragma once
// The broker process minus main(): store, fleet, gRPC server (AgentService,
// AdminService, health, reflection) and /metrics. Tests start it in-process
// on port 0.

#include <grpcpp/server.h>

#include <memory>
#include <optional>
#include <string>

#include "absl/status/statusor.h"
#include "broker/admin_service.h"
#include "broker/agent_service.h"
#include "broker/authz.h"
#include "broker/fleet.h"
#include "broker/metrics.h"
#include "broker/planner.h"
#include "broker/reservations.h"
#include "broker/server_limits.h"
#include "broker/store.h"
#include "broker/watch.h"
#include "common/clock.h"
#include "common/metrics_server.h"
#include "common/tls.h"
#include "membroker/v1/config.pb.h"

namespace membroker::broker {

// Validated broker settings (from flags and --config).
struct BrokerOptions {
  std::string listen = "127.0.0.1:7070";
  std::string metrics_listen = "127.0.0.1:9470";
  std::string state_dir;
  v1::ClusterPolicy cluster_policy;  // initial, set fields only
  v1::SafetyParams safety;           // unset fields get defaults
  // Mutual TLS files; nullopt serves plaintext (only main's --insecure
  // chooses that for a daemon).
  std::optional<TlsFiles> tls;
  // How often the TLS files are re-read (rotation without a restart).
  absl::Duration tls_reload_interval = kDefaultTlsReloadInterval;
  // Roles of client certificates (with TLS only).
  v1::SecurityConfig security;
  ServerLimits limits;  // resource bounds (server_limits.h)
  // How often the rebalance plan is recomputed for its metrics (0: never;
  // GetPlan always computes a fresh one).
  absl::Duration plan_interval = kDefaultPlanInterval;
  // WatchVms / WatchHosts: scan period, per-watcher queue limit, batch.
  WatchHub::Options watch;
  // Per-VM series on /metrics (membroker_vm_*); false leaves them out
  // (BrokerMetrics::DisableVmSeries).
  bool vm_metrics = true;
};

// Checks options: addresses, state dir, policy. INVALID_ARGUMENT naming the
// flag or field.
absl::Status ValidateBrokerOptions(const BrokerOptions& options);

// Thread-safe after Start.
class Broker {
 public:
  // Opens the store, loads hard state, starts serving. Errors name the flag.
  static absl::StatusOr<std::unique_ptr<Broker>> Start(const BrokerOptions& options, Clock* clock);
  ~Broker();

  int grpc_port() const { return grpc_port_; }
  int metrics_port() const { return metrics_server_ ? metrics_server_->port() : 0; }
  Fleet& fleet() { return *fleet_; }
  BrokerMetrics& metrics() { return *metrics_; }
  Planner& planner() { return *planner_; }
  Reservations& reservations() { return *reservations_; }
  WatchHub& watch_hub() { return *watch_hub_; }
  // Stops accepting calls and ends open streams (deadline 2 s).
  void Shutdown();
  // Blocks until Shutdown.
  void Wait();

 private:
  Broker() = default;
  std::unique_ptr<Store> store_;
  std::unique_ptr<BrokerMetrics> metrics_;
  std::unique_ptr<MetricsServer> metrics_server_;
  std::unique_ptr<Fleet> fleet_;
  std::unique_ptr<Planner> planner_;  // after fleet_: stopped before it goes
  // After fleet_: its worker calls into the fleet, so it goes first.
  std::unique_ptr<Reservations> reservations_;
  std::unique_ptr<WatchHub> watch_hub_;
  std::unique_ptr<Authorizer> authorizer_;
  std::unique_ptr<AgentServiceImpl> agent_service_;
  std::unique_ptr<AdminServiceImpl> admin_service_;
  std::unique_ptr<grpc::Server> server_;
  std::unique_ptr<HostExpiry> host_expiry_;
  int grpc_port_ = 0;
};

}  // namespace membroker::broker

#include "broker/server.h"

#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/health_check_service_interface.h>
#include <grpcpp/security/server_credentials.h>
#include <grpcpp/server_builder.h>
#include <spdlog/spdlog.h>

#include "absl/strings/str_cat.h"
#include "broker/policy_config.h"
#include "common/proto_time.h"
#include "common/status.h"
#include "common/units.h"

namespace membroker::broker {
namespace {

v1::SafetyParams WithDefaults(v1::SafetyParams s) {
  if (s.max_inflate_step_bytes() == 0) s.set_max_inflate_step_bytes(uint64_t{256} << 20);
  if (!s.has_stuck_timeout()) *s.mutable_stuck_timeout() = ToProtoDuration(absl::Seconds(10));
  if (!s.has_fail_static_grace()) {
    *s.mutable_fail_static_grace() = ToProtoDuration(absl::Seconds(60));
  }
  return s;
}

}  // namespace

absl::Status ValidateBrokerOptions(const BrokerOptions& o) {
  absl::Status s = ValidateHostPort(o.listen);
  if (!s.ok()) return absl::InvalidArgumentError(absl::StrCat("--listen: ", s.message()));
  s = ValidateHostPort(o.metrics_listen);
  if (!s.ok()) return absl::InvalidArgumentError(absl::StrCat("--metrics-listen: ", s.message()));
  if (o.state_dir.empty()) return absl::InvalidArgumentError("--state-dir: required");
  RETURN_IF_ERROR(ValidateClusterPolicy(o.cluster_policy));
  if (o.tls.has_value()) {
    RETURN_IF_ERROR(Authorizer::FromConfig(o.security).status());
    if (o.tls_reload_interval < absl::Seconds(1)) {
      return absl::InvalidArgumentError("--tls-reload-interval: must be at least 1s");
    }
  }
  RETURN_IF_ERROR(ValidateServerLimits(o.limits));
  if (o.watch.period <= absl::ZeroDuration() || o.watch.max_queued == 0 || o.watch.batch == 0) {
    return absl::InvalidArgumentError("watch: period, max_queued and batch must be greater than 0");
  }
  const auto& safety = o.safety;
  for (const auto* d : {&safety.stuck_timeout(), &safety.fail_static_grace()}) {
    if (d->seconds() < 0 || d->nanos() < 0) {
      return absl::InvalidArgumentError("safety: durations must not be negative");
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<Broker>> Broker::Start(const BrokerOptions& options, Clock* clock) {
  RETURN_IF_ERROR(ValidateBrokerOptions(options));
  std::unique_ptr<Broker> b(new Broker());
  ASSIGN_OR_RETURN(b->store_, Store::Open(options.state_dir));
  auto registry = std::make_shared<prometheus::Registry>();
  b->metrics_ = std::make_unique<BrokerMetrics>(registry);
  if (!options.vm_metrics) b->metrics_->DisableVmSeries();
  b->fleet_ = std::make_unique<Fleet>(clock, b->store_.get(), b->metrics_.get(),
                                      WithDefaults(options.safety));
  RETURN_IF_ERROR(b->fleet_->Load(options.cluster_policy));
  b->planner_ = std::make_unique<Planner>(b->fleet_.get(), clock, *registry);
  b->reservations_ = std::make_unique<Reservations>(clock, b->store_.get());
  RETURN_IF_ERROR(b->reservations_->Load());
  b->reservations_->Start(b->fleet_.get());
  b->watch_hub_ = std::make_unique<WatchHub>(
      b->fleet_.get(), clock, options.watch,
      [metrics = b->metrics_.get()] { metrics->ReportRejected("watch_fell_behind"); });
  b->watch_hub_->Start();
  ASSIGN_OR_RETURN(b->metrics_server_,
                   MetricsServer::Start(options.metrics_listen, b->metrics_->collectable()));
  std::shared_ptr<grpc::ServerCredentials> credentials;
  if (options.tls.has_value()) {
    std::string warning;
    RETURN_IF_ERROR(CheckTlsFiles(*options.tls, &warning));
    if (!warning.empty()) spdlog::warn("{}", warning);
    ASSIGN_OR_RETURN(Authorizer authorizer, Authorizer::FromConfig(options.security));
    b->authorizer_ = std::make_unique<Authorizer>(std::move(authorizer));
    credentials = MutualTlsServerCredentials(*options.tls, options.tls_reload_interval);
  } else {
    b->authorizer_ = std::make_unique<Authorizer>(Authorizer::Insecure());
    credentials = grpc::InsecureServerCredentials();
  }
  b->agent_service_ = std::make_unique<AgentServiceImpl>(
      b->fleet_.get(), b->metrics_.get(), b->authorizer_.get(), clock, options.limits);
  b->admin_service_ = std::make_unique<AdminServiceImpl>(
      b->fleet_.get(), b->metrics_.get(), b->store_.get(), b->authorizer_.get(), b->planner_.get(),
      options.limits, b->reservations_.get(), b->watch_hub_.get());

  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  builder.AddListeningPort(options.listen, credentials, &b->grpc_port_);
  builder.RegisterService(b->agent_service_.get());
  builder.RegisterService(b->admin_service_.get());
  ApplyServerLimits(options.limits, &builder);
  b->server_ = builder.BuildAndStart();
  if (!b->server_ || b->grpc_port_ == 0) {
    return absl::UnavailableError(absl::StrCat("--listen=", options.listen, ": cannot listen"));
  }
  b->server_->GetHealthCheckService()->SetServingStatus(true);
  b->host_expiry_ =
      std::make_unique<HostExpiry>(b->fleet_.get(), clock, options.limits.host_expiry);
  if (options.plan_interval > absl::ZeroDuration()) b->planner_->Start(options.plan_interval);
  spdlog::info("broker serving gRPC ({}) on port {} and /metrics on port {}",
               options.tls ? "mutual TLS" : "PLAINTEXT, --insecure", b->grpc_port_,
               b->metrics_server_->port());
  return b;
}

void Broker::Shutdown() {
  if (server_) server_->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(2));
}

void Broker::Wait() {
  if (server_) server_->Wait();
}

Broker::~Broker() {
  Shutdown();
  Wait();
}

}  // namespace membroker::broker

#include "common/metrics_server.h"

#include <exception>

#include <prometheus/gauge.h>

#include "absl/strings/str_cat.h"
#include "common/units.h"

namespace membroker {

absl::StatusOr<std::unique_ptr<MetricsServer>> MetricsServer::Start(
    absl::string_view address, std::shared_ptr<prometheus::Collectable> metrics) {
  absl::Status valid = ValidateHostPort(address);
  if (!valid.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("--metrics-listen: ", valid.message()));
  }
  std::unique_ptr<MetricsServer> server(new MetricsServer());
  try {
    // civetweb takes "HOST:PORT" for IPv4 and "[::1]:PORT" for IPv6.
    server->exposer_ = std::make_unique<prometheus::Exposer>(std::string(address), 2);
  } catch (const std::exception& e) {
    return absl::UnavailableError(absl::StrCat("cannot serve /metrics on ", address, ": ", e.what()));
  }
  server->exposer_->RegisterCollectable(metrics);
  auto ports = server->exposer_->GetListeningPorts();
  server->port_ = ports.empty() ? 0 : ports.front();
  return server;
}

void AddBuildInfo(prometheus::Registry& registry, absl::string_view component) {
  prometheus::BuildGauge()
      .Name("membroker_build_info")
      .Help("Build information; always 1.")
      .Register(registry)
      .Add({{"version", MB_VERSION}, {"component", std::string(component)}})
      .Set(1);
}

}  // namespace membroker

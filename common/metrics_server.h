#pragma once
// /metrics over HTTP: a prometheus-cpp Exposer around one Registry.

#include <memory>
#include <string>

#include <prometheus/collectable.h>
#include <prometheus/exposer.h>
#include <prometheus/registry.h>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace membroker {

// Serves one collectable (a registry, or a registry with series read at
// scrape time) at http://ADDRESS/metrics. Thread-safe.
class MetricsServer {
 public:
  // Starts serving on `address` (HOST:PORT, port 0 picks a free one).
  // INVALID_ARGUMENT for a malformed address, UNAVAILABLE when it cannot bind.
  static absl::StatusOr<std::unique_ptr<MetricsServer>> Start(
      absl::string_view address, std::shared_ptr<prometheus::Collectable> metrics);

  // The port actually bound.
  int port() const { return port_; }

 private:
  MetricsServer() = default;
  std::unique_ptr<prometheus::Exposer> exposer_;
  int port_ = 0;
};

// Adds membroker_build_info{version,component} = 1 to `registry`.
void AddBuildInfo(prometheus::Registry& registry, absl::string_view component);

}  // namespace membroker

#include "tests/util/in_process_broker.h"

#include <grpcpp/create_channel.h>
#include <grpcpp/security/credentials.h>
#include <prometheus/metric_family.h>
#include <prometheus/metric_type.h>
#include <stdlib.h>

#include <cstdint>
#include <filesystem>
#include <system_error>
#include <utility>

#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"

namespace membroker::testing {

InProcessBroker::InProcessBroker(std::string name) : name_(std::move(name)) {}

InProcessBroker::~InProcessBroker() {
  Stop();
  if (!state_dir_.empty()) {
    std::error_code ignored;
    std::filesystem::remove_all(state_dir_, ignored);
  }
}

absl::Status InProcessBroker::Start(broker::BrokerOptions options, Clock* clock) {
  if (running()) return absl::FailedPreconditionError("the in-process broker is running already");
  if (state_dir_.empty()) {
    std::string tmpl =
        (std::filesystem::temp_directory_path() / absl::StrCat(name_, "_XXXXXX")).string();
    if (::mkdtemp(tmpl.data()) == nullptr) {
      return absl::InternalError(absl::StrCat("cannot make a state directory like ", tmpl));
    }
    state_dir_ = tmpl;
  }
  options.listen = "127.0.0.1:0";
  options.metrics_listen = "127.0.0.1:0";
  options.state_dir = state_dir_;
  absl::StatusOr<std::unique_ptr<broker::Broker>> started = broker::Broker::Start(options, clock);
  if (!started.ok()) return started.status();
  broker_ = std::move(*started);
  channel_ = grpc::CreateChannel(target(), grpc::InsecureChannelCredentials());
  admin_ = v1::AdminService::NewStub(channel_);
  agent_ = v1::AgentService::NewStub(channel_);
  return absl::OkStatus();
}

void InProcessBroker::Stop() {
  broker_.reset();
  agent_.reset();
  admin_.reset();
  channel_.reset();
}

std::string InProcessBroker::target() const {
  return absl::StrCat("127.0.0.1:", broker_->grpc_port());
}

v1::ClusterPolicy RoundNumberPolicy() {
  constexpr uint64_t kMiB = uint64_t{1} << 20;
  constexpr uint64_t kGiB = uint64_t{1} << 30;
  v1::ClusterPolicy p;
  p.set_buffer_percent(0);
  p.set_host_free_margin_bytes(0);
  p.set_reclaim_step_bytes(64 * kGiB);
  p.set_hysteresis_bytes(0);
  p.set_hysteresis_percent(0);
  p.set_default_min_bytes(256 * kMiB);
  p.set_protect_margin_percent(0);
  p.set_protect_margin_max_bytes(0);
  p.set_idle_tax_percent(0);
  return p;
}

double MetricValue(broker::BrokerMetrics& metrics, const std::string& name,
                   const std::map<std::string, std::string>& labels) {
  for (const auto& family : metrics.Collect()) {
    if (family.name != name) continue;
    for (const auto& metric : family.metric) {
      bool match = true;
      for (const auto& [k, v] : labels) {
        bool found = false;
        for (const auto& l : metric.label) found |= l.name == k && l.value == v;
        match &= found;
      }
      if (!match) continue;
      if (family.type == prometheus::MetricType::Counter) return metric.counter.value;
      if (family.type == prometheus::MetricType::Gauge) return metric.gauge.value;
      if (family.type == prometheus::MetricType::Histogram) {
        return static_cast<double>(metric.histogram.sample_count);
      }
    }
  }
  return -1;
}

}  // namespace membroker::testing

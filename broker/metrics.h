#pragma once
// The broker's Prometheus metrics. Thread-safe (prometheus-cpp metrics are
// atomic; label-set creation and removal are serialized by this class).

#include <memory>
#include <string>

#include <prometheus/counter.h>
#include <prometheus/family.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"

namespace membroker::broker {

class BrokerMetrics {
 public:
  explicit BrokerMetrics(std::shared_ptr<prometheus::Registry> registry);

  std::shared_ptr<prometheus::Registry> registry() const { return registry_; }

  void SetConnectedAgents(int n) { connected_agents_->Set(n); }
  void ReportReceived(const std::string& host);
  void ReportRejected(const std::string& reason);
  void TargetsPushed(const std::string& host);
  void ObserveDecisionLatency(double seconds) { decision_latency_->Observe(seconds); }
  void AdminRequest(const std::string& method, const std::string& code);

  // Per-VM gauges.
  void SetVm(const std::string& host, const std::string& vm, double target, double actual,
             double demand, double floor, bool healthy);
  void RemoveVm(const std::string& host, const std::string& vm);
  // Per-host gauges.
  void SetHost(const std::string& host, double capacity, double target, bool overcommitted,
               double pressure_some_ratio);

 private:
  std::shared_ptr<prometheus::Registry> registry_;
  prometheus::Gauge* connected_agents_;
  prometheus::Histogram* decision_latency_;
  prometheus::Family<prometheus::Counter>& reports_received_;
  prometheus::Family<prometheus::Counter>& reports_rejected_;
  prometheus::Family<prometheus::Counter>& targets_pushed_;
  prometheus::Family<prometheus::Counter>& admin_requests_;
  prometheus::Family<prometheus::Gauge>& vm_target_;
  prometheus::Family<prometheus::Gauge>& vm_actual_;
  prometheus::Family<prometheus::Gauge>& vm_demand_;
  prometheus::Family<prometheus::Gauge>& vm_floor_;
  prometheus::Family<prometheus::Gauge>& vm_healthy_;
  prometheus::Family<prometheus::Gauge>& host_capacity_;
  prometheus::Family<prometheus::Gauge>& host_target_;
  prometheus::Family<prometheus::Gauge>& host_overcommitted_;
  prometheus::Family<prometheus::Gauge>& host_pressure_;
  absl::Mutex mu_;
};

}  // namespace membroker::broker

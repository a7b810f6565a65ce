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
  void ReportRejected(const std::string& reason);
  void ObserveDecisionLatency(double seconds) { decision_latency_->Observe(seconds); }
  void AdminRequest(const std::string& method, const std::string& code);

  // One VM's gauges. Created once per VM (AddVm), then set without any
  // lock on the report path; valid until RemoveVm of the same labels.
  struct VmGauges {
    prometheus::Gauge* target = nullptr;
    prometheus::Gauge* actual = nullptr;
    prometheus::Gauge* demand = nullptr;
    prometheus::Gauge* floor = nullptr;
    prometheus::Gauge* healthy = nullptr;
  };
  VmGauges AddVm(const std::string& host, const std::string& vm);
  void RemoveVm(const std::string& host, const std::string& vm);

  // One host's series, created once per host (removed when it expires).
  struct HostSeries {
    prometheus::Gauge* capacity = nullptr;
    prometheus::Gauge* target = nullptr;
    prometheus::Gauge* overcommitted = nullptr;
    prometheus::Gauge* pressure = nullptr;
    prometheus::Counter* reports_received = nullptr;
    prometheus::Counter* targets_pushed = nullptr;
    prometheus::Counter* overcommit_episodes = nullptr;
    prometheus::Counter* margin_lent = nullptr;     // sacrifice a
    prometheus::Counter* floors_yielded = nullptr;  // sacrifice b
  };
  HostSeries AddHost(const std::string& host);
  // Removes a host's series (an expired host); its HostSeries pointers
  // become invalid.
  void RemoveHost(const std::string& host);

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
  prometheus::Family<prometheus::Counter>& host_overcommit_episodes_;
  prometheus::Family<prometheus::Counter>& host_sacrifices_;
  absl::Mutex mu_;
};

}  // namespace membroker::broker

#pragma once
// The broker's Prometheus metrics. Thread-safe (prometheus-cpp metrics are
// atomic; label-set creation is serialized by this class).
//
// Per-VM series (membroker_vm_*) are not prometheus-cpp metric objects: a
// fleet of 500 000 VMs would keep 2.5 million of them, and prometheus-cpp
// removes one by a linear search of its family. They are read from the
// fleet at scrape time through a source the Fleet sets (SetVmSeriesSource),
// so adding or removing a VM costs the metrics nothing.

#include <prometheus/collectable.h>
#include <prometheus/counter.h>
#include <prometheus/family.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"

namespace membroker::broker {

class BrokerMetrics {
 public:
  explicit BrokerMetrics(std::shared_ptr<prometheus::Registry> registry);

  std::shared_ptr<prometheus::Registry> registry() const { return registry_; }

  // Adds `delta` (+1 or -1) to the agents with an open stream: an atomic
  // update, no lock, so connecting one agent touches no other host.
  void ConnectedAgentsChanged(int delta) { connected_agents_->Increment(delta); }
  void ReportRejected(const std::string& reason);
  void ObserveDecisionLatency(double seconds) { decision_latency_->Observe(seconds); }
  void AdminRequest(const std::string& method, const std::string& code);

  // One VM's exported numbers (membroker_vm_*).
  struct VmSeries {
    double target_bytes = 0;
    double actual_bytes = 0;
    double demand_bytes = 0;
    double floor_bytes = 0;
    double balloon_healthy = 0;
  };
  // Called once per VM with its labels (host, vm) and numbers.
  using VmSeriesEmit =
      std::function<void(const std::string& host, const std::string& vm, const VmSeries& series)>;
  // Calls `emit` for every VM; must not call back into BrokerMetrics.
  using VmSeriesSource = std::function<void(const VmSeriesEmit& emit)>;
  // Sets (or, with nullptr, clears) where scrapes read the VMs' series.
  // Clearing waits for a scrape in progress, so the source's owner may go
  // away afterwards.
  void SetVmSeriesSource(VmSeriesSource source);

  // Everything /metrics serves: the registry's families, then the VMs'.
  std::vector<prometheus::MetricFamily> Collect() const;
  // The same as a Collectable, for the metrics server. Valid while this
  // object lives.
  std::shared_ptr<prometheus::Collectable> collectable() const { return collectable_; }

  // One host's series, created once per host (never removed).
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

 private:
  std::shared_ptr<prometheus::Registry> registry_;
  prometheus::Gauge* connected_agents_;
  prometheus::Histogram* decision_latency_;
  prometheus::Family<prometheus::Counter>& reports_received_;
  prometheus::Family<prometheus::Counter>& reports_rejected_;
  prometheus::Family<prometheus::Counter>& targets_pushed_;
  prometheus::Family<prometheus::Counter>& admin_requests_;
  prometheus::Family<prometheus::Gauge>& host_capacity_;
  prometheus::Family<prometheus::Gauge>& host_target_;
  prometheus::Family<prometheus::Gauge>& host_overcommitted_;
  prometheus::Family<prometheus::Gauge>& host_pressure_;
  prometheus::Family<prometheus::Counter>& host_overcommit_episodes_;
  prometheus::Family<prometheus::Counter>& host_sacrifices_;
  absl::Mutex mu_;
  // Held while a scrape reads the source (shared) and while it is replaced.
  mutable absl::Mutex source_mu_;
  VmSeriesSource vm_source_ ABSL_GUARDED_BY(source_mu_);
  std::shared_ptr<prometheus::Collectable> collectable_;
};

}  // namespace membroker::broker

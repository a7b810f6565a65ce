#pragma once
// The broker's Prometheus metrics. Thread-safe (prometheus-cpp metrics are
// atomic; label-set creation and removal are serialized by this class).
//
// Per-VM series (membroker_vm_*) are not prometheus-cpp metric objects: a
// fleet of 500 000 VMs would keep millions of them, and prometheus-cpp
// removes one by a linear search of its family. They are read from the
// fleet at scrape time through a source the Fleet sets (SetVmSeriesSource),
// so adding or removing a VM costs the metrics nothing.

#include <prometheus/collectable.h>
#include <prometheus/counter.h>
#include <prometheus/family.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>

#include <array>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "membroker/v1/types.pb.h"

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

  // Number of policy::Reason values (the reason series of a VM).
  static constexpr int kReasonCount = 11;

  // A guest's cumulative counters as the broker exports them: what the
  // guest's own counters grew by since the broker first saw the VM (a value
  // going down means the guest restarted and counts from zero again).
  // Owned by the Fleet per VM; written only under the owning host's lock.
  struct VmCounters {
    double swap_in_bytes = 0;
    double major_faults = 0;
    double oom_kills = 0;
    // The guest's values as last mirrored (UpdateVmCounters).
    uint64_t last_swap_in_bytes = 0;
    uint64_t last_major_faults = 0;
    uint64_t last_oom_kills = 0;
  };
  // Adds to `counters` what the guest's cumulative counters in `sample`
  // grew by. Call under the owning host's lock.
  static void UpdateVmCounters(VmCounters& counters, const v1::VmSample& sample);

  // One VM's exported numbers (membroker_vm_*).
  struct VmSeries {
    double target_bytes = 0;
    double actual_bytes = 0;
    double demand_bytes = 0;
    double floor_bytes = 0;
    double balloon_healthy = 0;
    double max_bytes = 0;        // configured (boot) memory
    double stats_untrusted = 0;  // 1 when the guest statistics are not used
    // The policy::Reason of the current target (membroker_vm_target_reason
    // is 1 for it and 0 for the others); -1 for none.
    int reason = -1;
    VmCounters counters;
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
  // Leaves the per-VM families out of every scrape from now on (the host
  // and broker series stay): for fleets whose VMs are too many to scrape
  // (17 series per VM; 67 MB of text at 50 000 VMs). Thread-safe.
  void DisableVmSeries();

  // Everything /metrics serves: the registry's families, then the VMs'.
  std::vector<prometheus::MetricFamily> Collect() const;
  // The same as a Collectable, for the metrics server. Valid while this
  // object lives.
  std::shared_ptr<prometheus::Collectable> collectable() const { return collectable_; }

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
    prometheus::Counter* guest_oom_reported = nullptr;
    prometheus::Counter* guest_oom_inferred = nullptr;
    prometheus::Gauge* reclaimed = nullptr;
    prometheus::Gauge* guest_free_on_host = nullptr;
    prometheus::Gauge* pressure_full = nullptr;
    prometheus::Gauge* reserved = nullptr;      // sum of the host's reservations
    prometheus::Counter* stall_some = nullptr;  // kind="some"
    prometheus::Counter* stall_full = nullptr;  // kind="full"
    // The host's PSI stall totals as last mirrored (UpdateHost); written
    // only under the host's lock.
    double last_stall_some_seconds = 0;
    double last_stall_full_seconds = 0;
  };
  HostSeries AddHost(const std::string& host);
  // Sets a host's reclaimed memory (sum over its VMs of configured max
  // minus target), the memory free in its guests that free page reporting
  // already gave back (sum of GuestFreeOnHostBytes), PSI "full" and its
  // stall-time counters from `sample`. Call under the host's lock.
  static void UpdateHost(HostSeries& series, const v1::HostSample& sample, uint64_t reclaimed_bytes,
                         uint64_t guest_free_on_host_bytes);
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
  prometheus::Family<prometheus::Gauge>& host_reclaimed_;
  prometheus::Family<prometheus::Gauge>& host_pressure_full_;
  prometheus::Family<prometheus::Gauge>& host_guest_free_on_host_;
  prometheus::Family<prometheus::Counter>& host_stall_;
  prometheus::Family<prometheus::Gauge>& host_capacity_;
  prometheus::Family<prometheus::Gauge>& host_reserved_;
  prometheus::Family<prometheus::Gauge>& host_target_;
  prometheus::Family<prometheus::Gauge>& host_overcommitted_;
  prometheus::Family<prometheus::Gauge>& host_pressure_;
  prometheus::Family<prometheus::Counter>& host_overcommit_episodes_;
  prometheus::Family<prometheus::Counter>& host_sacrifices_;
  prometheus::Family<prometheus::Counter>& host_guest_oom_kills_;
  absl::Mutex mu_;
  // Held while a scrape reads the source (shared) and while it is replaced.
  mutable absl::Mutex source_mu_;
  VmSeriesSource vm_source_ ABSL_GUARDED_BY(source_mu_);
  bool vm_series_ ABSL_GUARDED_BY(source_mu_) = true;
  std::shared_ptr<prometheus::Collectable> collectable_;
};

}  // namespace membroker::broker

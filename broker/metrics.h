#pragma once
// The broker's Prometheus metrics. Thread-safe (prometheus-cpp metrics are
// atomic; label-set creation and removal are serialized by this class).

#include <array>
#include <cstdint>
#include <memory>
#include <string>

#include <prometheus/counter.h>
#include <prometheus/family.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "membroker/v1/types.pb.h"

namespace membroker::broker {

class BrokerMetrics {
 public:
  explicit BrokerMetrics(std::shared_ptr<prometheus::Registry> registry);

  std::shared_ptr<prometheus::Registry> registry() const { return registry_; }

  void SetConnectedAgents(int n) { connected_agents_->Set(n); }
  void ReportRejected(const std::string& reason);
  void ObserveDecisionLatency(double seconds) { decision_latency_->Observe(seconds); }
  void AdminRequest(const std::string& method, const std::string& code);

  // Number of policy::Reason values (the reason series of a VM).
  static constexpr int kReasonCount = 11;

  // One VM's gauges. Created once per VM (AddVm), then set without any
  // lock on the report path; valid until RemoveVm of the same labels.
  struct VmGauges {
    prometheus::Gauge* target = nullptr;
    prometheus::Gauge* actual = nullptr;
    prometheus::Gauge* demand = nullptr;
    prometheus::Gauge* floor = nullptr;
    prometheus::Gauge* healthy = nullptr;
    prometheus::Gauge* max = nullptr;
    prometheus::Gauge* stats_untrusted = nullptr;
    prometheus::Counter* swap_in = nullptr;
    prometheus::Counter* major_faults = nullptr;
    prometheus::Counter* oom_kills = nullptr;
    // membroker_vm_target_reason{reason=...}, indexed by policy::Reason:
    // 1 for the reason of the current target, 0 for the others.
    std::array<prometheus::Gauge*, kReasonCount> reason{};
    // The guest's cumulative counters as last mirrored (UpdateVm); written
    // only under the owning host's lock.
    uint64_t last_swap_in_bytes = 0;
    uint64_t last_major_faults = 0;
    uint64_t last_oom_kills = 0;
  };
  VmGauges AddVm(const std::string& host, const std::string& vm);
  void RemoveVm(const std::string& host, const std::string& vm);
  // Sets a VM's series that come from its report and decision beyond the
  // five above: configured max, trust of its statistics, the reason of its
  // target (`reason`: a policy::Reason value), and the guest's swap-in,
  // major-fault and OOM-kill counters (mirrored from the guest's cumulative
  // values; a value going down means the guest restarted and counts from
  // zero again). Call under the owning host's lock.
  static void UpdateVm(VmGauges& gauges, const v1::VmSample& sample, uint64_t max_bytes,
                       int reason);

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
  prometheus::Family<prometheus::Gauge>& vm_target_;
  prometheus::Family<prometheus::Gauge>& vm_actual_;
  prometheus::Family<prometheus::Gauge>& vm_demand_;
  prometheus::Family<prometheus::Gauge>& vm_floor_;
  prometheus::Family<prometheus::Gauge>& vm_healthy_;
  prometheus::Family<prometheus::Gauge>& vm_max_;
  prometheus::Family<prometheus::Gauge>& vm_stats_untrusted_;
  prometheus::Family<prometheus::Gauge>& vm_reason_;
  prometheus::Family<prometheus::Counter>& vm_swap_in_;
  prometheus::Family<prometheus::Counter>& vm_major_faults_;
  prometheus::Family<prometheus::Counter>& vm_oom_kills_;
  prometheus::Family<prometheus::Gauge>& host_reclaimed_;
  prometheus::Family<prometheus::Gauge>& host_pressure_full_;
  prometheus::Family<prometheus::Gauge>& host_guest_free_on_host_;
  prometheus::Family<prometheus::Counter>& host_stall_;
  prometheus::Family<prometheus::Gauge>& host_capacity_;
  prometheus::Family<prometheus::Gauge>& host_target_;
  prometheus::Family<prometheus::Gauge>& host_overcommitted_;
  prometheus::Family<prometheus::Gauge>& host_pressure_;
  prometheus::Family<prometheus::Counter>& host_overcommit_episodes_;
  prometheus::Family<prometheus::Counter>& host_sacrifices_;
  prometheus::Family<prometheus::Counter>& host_guest_oom_kills_;
  absl::Mutex mu_;
};

}  // namespace membroker::broker

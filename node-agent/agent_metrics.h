#pragma once
// The agent's Prometheus metrics. Names are a contract with the dashboards
// and alert rules in deploy/.

#include <cstdint>
#include <map>
#include <optional>
#include <string>

#include <prometheus/counter.h>
#include <prometheus/family.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"

namespace membroker::agent {

// Registers and updates the agent's metrics in one registry. Thread-safe.
class AgentMetrics {
 public:
  // Registers every agent metric (and membroker_build_info) in `registry`.
  explicit AgentMetrics(prometheus::Registry& registry);

  // membroker_agent_broker_connected: 1 while a broker stream is welcomed.
  void SetBrokerConnected(bool connected);
  // membroker_agent_reports_sent_total += n.
  void AddReportsSent(uint64_t n);
  // membroker_agent_reconnects_total += n.
  void AddReconnects(uint64_t n);
  // membroker_agent_targets_applied_total += n.
  void AddTargetsApplied(uint64_t n);
  // membroker_agent_local_grants_total += n and
  // membroker_agent_local_grant_bytes_total += bytes: memory the agent gave
  // VMs under acute pressure before the broker answered.
  void AddLocalGrants(uint64_t n, uint64_t bytes);
  // One round of the host-side working-set probe over `vms` VMs that took
  // `cpu_seconds` of CPU: membroker_agent_working_set_cpu_seconds_total
  // += cpu_seconds, membroker_agent_working_set_measured_vms = vms and
  // membroker_agent_working_set_cpu_seconds_per_vm = cpu_seconds / vms
  // (0 when none).
  void AddWorkingSetRound(size_t vms, double cpu_seconds);
  // membroker_agent_target_errors_total += n.
  void AddTargetErrors(uint64_t n);
  // membroker_agent_host_capacity_bytes.
  void SetHostCapacity(uint64_t bytes);
  // membroker_agent_host_memory_available_bytes and
  // membroker_agent_host_memory_pressure_some_ratio (avg10 / 100).
  void SetHostMemory(uint64_t available_bytes, double pressure_some_ratio);
  // membroker_agent_hypervisor_calls_hung: hypervisor calls past their
  // deadline that have not returned yet.
  void SetHypervisorCallsHung(int n);
  // membroker_agent_report_duration_seconds: time to build and send one
  // report.
  void ObserveReportDuration(double seconds);

  // One VM's gauges (label vm = the VM's name, or its id when unnamed).
  struct VmValues {
    std::string vm;
    uint64_t actual_bytes = 0;
    std::optional<uint64_t> target_bytes;  // empty: no target yet (0)
    bool stuck = false;                    // stuck or no driver
    // Memory virtio-mem plugged and the balloon holds out of the guest.
    uint64_t virtio_mem_plugged_bytes = 0;
    uint64_t balloon_inflated_bytes = 0;
    // Non-empty: the VM is excluded from resizing, for this kind of reason
    // ("PCI passthrough", "hugepage-backed memory", "locked memory").
    std::string excluded_kind;
    // The VM's balloon has free page reporting on.
    bool free_page_reporting = false;
  };
  // Sets the per-VM gauges for exactly `vms`; series of VMs not listed
  // are removed.
  void SetVms(const std::map<std::string, VmValues>& vms);

 private:
  struct VmSeries {
    prometheus::Gauge* actual;
    prometheus::Gauge* target;
    prometheus::Gauge* stuck;
    prometheus::Gauge* virtio_mem_plugged;
    prometheus::Gauge* balloon_inflated;
    prometheus::Gauge* excluded;  // null while not excluded
    prometheus::Gauge* free_page_reporting;
    std::string vm;
    std::string excluded_kind;
  };

  prometheus::Gauge& broker_connected_;
  prometheus::Counter& reports_sent_;
  prometheus::Counter& reconnects_;
  prometheus::Counter& targets_applied_;
  prometheus::Counter& target_errors_;
  prometheus::Counter& local_grants_;
  prometheus::Counter& local_grant_bytes_;
  prometheus::Counter& working_set_cpu_;
  prometheus::Gauge& working_set_cpu_per_vm_;
  prometheus::Gauge& working_set_vms_;
  prometheus::Gauge& host_capacity_;
  prometheus::Gauge& host_available_;
  prometheus::Gauge& host_pressure_some_;
  prometheus::Gauge& hypervisor_calls_hung_;
  prometheus::Histogram& report_duration_;
  prometheus::Family<prometheus::Gauge>& vm_actual_;
  prometheus::Family<prometheus::Gauge>& vm_target_;
  prometheus::Family<prometheus::Gauge>& vm_stuck_;
  prometheus::Family<prometheus::Gauge>& vm_virtio_mem_plugged_;
  prometheus::Family<prometheus::Gauge>& vm_balloon_inflated_;
  prometheus::Family<prometheus::Gauge>& vm_excluded_;
  prometheus::Family<prometheus::Gauge>& vm_free_page_reporting_;

  absl::Mutex mu_;
  std::map<std::string, VmSeries> vm_series_ ABSL_GUARDED_BY(mu_);
};

}  // namespace membroker::agent

#include "node-agent/agent_metrics.h"

#include <vector>

#include "common/metrics_server.h"

namespace membroker::agent {
namespace {

prometheus::Gauge& NewGauge(prometheus::Registry& registry, const std::string& name,
                            const std::string& help) {
  return prometheus::BuildGauge().Name(name).Help(help).Register(registry).Add({});
}

prometheus::Counter& NewCounter(prometheus::Registry& registry, const std::string& name,
                                const std::string& help) {
  return prometheus::BuildCounter().Name(name).Help(help).Register(registry).Add({});
}

}  // namespace

AgentMetrics::AgentMetrics(prometheus::Registry& registry)
    : broker_connected_(NewGauge(registry, "membroker_agent_broker_connected",
                                 "1 while the agent has a welcomed stream to the broker.")),
      reports_sent_(NewCounter(registry, "membroker_agent_reports_sent_total",
                               "Host reports sent to the broker.")),
      reconnects_(NewCounter(registry, "membroker_agent_reconnects_total",
                             "Attempts to re-establish the broker stream.")),
      targets_applied_(NewCounter(registry, "membroker_agent_targets_applied_total",
                                  "Balloon targets set on the hypervisor.")),
      target_errors_(NewCounter(registry, "membroker_agent_target_errors_total",
                                "Targets refused or failed to apply.")),
      local_grants_(NewCounter(registry, "membroker_agent_local_grants_total",
                               "Balloon deflations the agent granted on its own to VMs under "
                               "acute pressure, before the broker answered.")),
      local_grant_bytes_(NewCounter(registry, "membroker_agent_local_grant_bytes_total",
                                    "Memory granted by those local grants.")),
      working_set_cpu_(NewCounter(registry, "membroker_agent_working_set_cpu_seconds_total",
                                  "CPU seconds spent measuring VMs' host-side working set and "
                                  "cgroup pressure (clear_refs, smaps, memory.pressure).")),
      working_set_cpu_per_vm_(
          NewGauge(registry, "membroker_agent_working_set_cpu_seconds_per_vm",
                   "CPU seconds per VM of the last working-set round (one round per interval).")),
      working_set_vms_(NewGauge(registry, "membroker_agent_working_set_measured_vms",
                                "VMs measured in the last working-set round.")),
      host_capacity_(NewGauge(registry, "membroker_agent_host_capacity_bytes",
                              "Memory the operator allows VMs on this host in total.")),
      host_available_(
          NewGauge(registry, "membroker_agent_host_memory_available_bytes", "Host MemAvailable.")),
      host_pressure_some_(NewGauge(registry, "membroker_agent_host_memory_pressure_some_ratio",
                                   "Host memory PSI some avg10 as a ratio (0..1).")),
      hypervisor_calls_hung_(
          NewGauge(registry, "membroker_agent_hypervisor_calls_hung",
                   "Hypervisor calls past their deadline that have not returned yet.")),
      report_duration_(
          prometheus::BuildHistogram()
              .Name("membroker_agent_report_duration_seconds")
              .Help("Time to build and send one host report.")
              .Register(registry)
              .Add({}, prometheus::Histogram::BucketBoundaries{0.0005, 0.001, 0.0025, 0.005, 0.01,
                                                               0.025, 0.05, 0.1, 0.25, 0.5, 1})),
      vm_actual_(prometheus::BuildGauge()
                     .Name("membroker_agent_vm_actual_bytes")
                     .Help("Balloon actual: memory the VM has now.")
                     .Register(registry)),
      vm_target_(prometheus::BuildGauge()
                     .Name("membroker_agent_vm_target_bytes")
                     .Help("Last balloon target applied (0: none yet).")
                     .Register(registry)),
      vm_stuck_(prometheus::BuildGauge()
                    .Name("membroker_agent_vm_stuck")
                    .Help("1 when the VM's balloon is stuck or has no driver.")
                    .Register(registry)),
      vm_virtio_mem_plugged_(
          prometheus::BuildGauge()
              .Name("membroker_agent_vm_virtio_mem_plugged_bytes")
              .Help("Memory the VM's virtio-mem device has plugged (0 without one).")
              .Register(registry)),
      vm_balloon_inflated_(prometheus::BuildGauge()
                               .Name("membroker_agent_vm_balloon_inflated_bytes")
                               .Help("Memory the VM's balloon holds out of the guest.")
                               .Register(registry)),
      vm_excluded_(prometheus::BuildGauge()
                       .Name("membroker_agent_vm_excluded")
                       .Help("1 for a VM the agent never resizes (PCI passthrough, hugepage "
                             "or locked memory), labelled with the kind of reason.")
                       .Register(registry)),
      vm_free_page_reporting_(
          prometheus::BuildGauge()
              .Name("membroker_agent_vm_free_page_reporting")
              .Help("1 when the VM's balloon has free page reporting on (memory the guest "
                    "frees goes back to the host by itself), else 0.")
              .Register(registry)) {
  AddBuildInfo(registry, "agent");
}

void AgentMetrics::SetBrokerConnected(bool connected) { broker_connected_.Set(connected ? 1 : 0); }
void AgentMetrics::AddReportsSent(uint64_t n) { reports_sent_.Increment(static_cast<double>(n)); }
void AgentMetrics::AddReconnects(uint64_t n) { reconnects_.Increment(static_cast<double>(n)); }
void AgentMetrics::AddTargetsApplied(uint64_t n) {
  targets_applied_.Increment(static_cast<double>(n));
}
void AgentMetrics::AddTargetErrors(uint64_t n) { target_errors_.Increment(static_cast<double>(n)); }
void AgentMetrics::AddLocalGrants(uint64_t n, uint64_t bytes) {
  local_grants_.Increment(static_cast<double>(n));
  local_grant_bytes_.Increment(static_cast<double>(bytes));
}
void AgentMetrics::AddWorkingSetRound(size_t vms, double cpu_seconds) {
  working_set_cpu_.Increment(cpu_seconds);
  working_set_vms_.Set(static_cast<double>(vms));
  working_set_cpu_per_vm_.Set(vms > 0 ? cpu_seconds / static_cast<double>(vms) : 0.0);
}
void AgentMetrics::SetHostCapacity(uint64_t bytes) {
  host_capacity_.Set(static_cast<double>(bytes));
}
void AgentMetrics::SetHypervisorCallsHung(int n) {
  hypervisor_calls_hung_.Set(static_cast<double>(n));
}
void AgentMetrics::SetHostMemory(uint64_t available_bytes, double pressure_some_ratio) {
  host_available_.Set(static_cast<double>(available_bytes));
  host_pressure_some_.Set(pressure_some_ratio);
}
void AgentMetrics::ObserveReportDuration(double seconds) { report_duration_.Observe(seconds); }

void AgentMetrics::SetVms(const std::map<std::string, VmValues>& vms) {
  absl::MutexLock lock(&mu_);
  for (auto it = vm_series_.begin(); it != vm_series_.end();) {
    if (vms.count(it->first) == 0) {
      vm_actual_.Remove(it->second.actual);
      vm_target_.Remove(it->second.target);
      vm_stuck_.Remove(it->second.stuck);
      vm_virtio_mem_plugged_.Remove(it->second.virtio_mem_plugged);
      vm_balloon_inflated_.Remove(it->second.balloon_inflated);
      if (it->second.excluded != nullptr) vm_excluded_.Remove(it->second.excluded);
      vm_free_page_reporting_.Remove(it->second.free_page_reporting);
      it = vm_series_.erase(it);
    } else {
      ++it;
    }
  }
  for (const auto& [key, values] : vms) {
    auto it = vm_series_.find(key);
    if (it == vm_series_.end()) {
      const prometheus::Labels labels{{"vm", values.vm}};
      it = vm_series_
               .emplace(key, VmSeries{&vm_actual_.Add(labels), &vm_target_.Add(labels),
                                      &vm_stuck_.Add(labels), &vm_virtio_mem_plugged_.Add(labels),
                                      &vm_balloon_inflated_.Add(labels), nullptr,
                                      &vm_free_page_reporting_.Add(labels), values.vm, ""})
               .first;
    }
    VmSeries& series = it->second;
    series.virtio_mem_plugged->Set(static_cast<double>(values.virtio_mem_plugged_bytes));
    series.balloon_inflated->Set(static_cast<double>(values.balloon_inflated_bytes));
    series.free_page_reporting->Set(values.free_page_reporting ? 1 : 0);
    if (series.excluded_kind != values.excluded_kind) {
      if (series.excluded != nullptr) vm_excluded_.Remove(series.excluded);
      series.excluded = nullptr;
      series.excluded_kind = values.excluded_kind;
      if (!values.excluded_kind.empty()) {
        series.excluded = &vm_excluded_.Add({{"vm", series.vm}, {"reason", values.excluded_kind}});
        series.excluded->Set(1);
      }
    }
    it->second.actual->Set(static_cast<double>(values.actual_bytes));
    it->second.target->Set(static_cast<double>(values.target_bytes.value_or(0)));
    it->second.stuck->Set(values.stuck ? 1 : 0);
  }
}

}  // namespace membroker::agent

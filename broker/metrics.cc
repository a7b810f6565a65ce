#include "broker/metrics.h"

#include "common/metrics_server.h"

namespace membroker::broker {

BrokerMetrics::BrokerMetrics(std::shared_ptr<prometheus::Registry> registry)
    : registry_(registry),
      reports_received_(prometheus::BuildCounter()
                            .Name("membroker_reports_received_total")
                            .Help("Host reports accepted from agents.")
                            .Register(*registry)),
      reports_rejected_(prometheus::BuildCounter()
                            .Name("membroker_reports_rejected_total")
                            .Help("Agent messages rejected, by reason.")
                            .Register(*registry)),
      targets_pushed_(prometheus::BuildCounter()
                          .Name("membroker_targets_pushed_total")
                          .Help("Target sets pushed to agents.")
                          .Register(*registry)),
      admin_requests_(prometheus::BuildCounter()
                          .Name("membroker_admin_requests_total")
                          .Help("Admin API calls by method and status code.")
                          .Register(*registry)),
      vm_target_(prometheus::BuildGauge()
                     .Name("membroker_vm_target_bytes")
                     .Help("Balloon target the broker set for the VM.")
                     .Register(*registry)),
      vm_actual_(prometheus::BuildGauge()
                     .Name("membroker_vm_actual_bytes")
                     .Help("Memory the VM has now (balloon actual).")
                     .Register(*registry)),
      vm_demand_(prometheus::BuildGauge()
                     .Name("membroker_vm_demand_bytes")
                     .Help("The broker's demand estimate for the VM.")
                     .Register(*registry)),
      vm_floor_(prometheus::BuildGauge()
                    .Name("membroker_vm_floor_bytes")
                    .Help("The VM's floor (max of min and protect).")
                    .Register(*registry)),
      vm_healthy_(prometheus::BuildGauge()
                      .Name("membroker_vm_balloon_healthy")
                      .Help("1 when the VM's balloon follows targets, 0 when stuck or no driver.")
                      .Register(*registry)),
      host_capacity_(prometheus::BuildGauge()
                         .Name("membroker_host_capacity_bytes")
                         .Help("Memory VMs on the host may have in total.")
                         .Register(*registry)),
      host_target_(prometheus::BuildGauge()
                       .Name("membroker_host_target_bytes")
                       .Help("Sum of the host's VM targets.")
                       .Register(*registry)),
      host_overcommitted_(prometheus::BuildGauge()
                              .Name("membroker_host_overcommitted")
                              .Help("1 when the host cannot hold what its VMs need: their floors, or the demand of a "
                                    "guest under acute pressure after every sacrifice.")
                              .Register(*registry)),
      host_pressure_(prometheus::BuildGauge()
                         .Name("membroker_host_memory_pressure_some_ratio")
                         .Help("Host memory PSI 'some' avg10 as a ratio (0..1).")
                         .Register(*registry)),
      host_overcommit_episodes_(
          prometheus::BuildCounter()
              .Name("membroker_host_overcommit_episodes_total")
              .Help("Times the host became overcommitted at its floors (logged with the VMs "
                    "holding it there).")
              .Register(*registry)),
      host_sacrifices_(prometheus::BuildCounter()
                           .Name("membroker_host_sacrifices_total")
                           .Help("Decisions that lent the free margin (kind=margin) or let "
                                 "default floors yield (kind=default_floor) for a guest under "
                                 "acute pressure.")
                           .Register(*registry)) {
  connected_agents_ = &prometheus::BuildGauge()
                           .Name("membroker_connected_agents")
                           .Help("Agents with an open stream.")
                           .Register(*registry)
                           .Add({});
  decision_latency_ =
      &prometheus::BuildHistogram()
           .Name("membroker_decision_latency_seconds")
           .Help("Time from receiving a report to pushing its targets.")
           .Register(*registry)
           .Add({}, prometheus::Histogram::BucketBoundaries{0.0001, 0.00025, 0.0005, 0.001, 0.0025,
                                                            0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                                                            0.5, 1});
  AddBuildInfo(*registry, "broker");
}

void BrokerMetrics::ReportRejected(const std::string& reason) {
  absl::MutexLock lock(&mu_);
  reports_rejected_.Add({{"reason", reason}}).Increment();
}

void BrokerMetrics::AdminRequest(const std::string& method, const std::string& code) {
  absl::MutexLock lock(&mu_);
  admin_requests_.Add({{"method", method}, {"code", code}}).Increment();
}

BrokerMetrics::VmGauges BrokerMetrics::AddVm(const std::string& host, const std::string& vm) {
  absl::MutexLock lock(&mu_);
  const std::map<std::string, std::string> labels{{"host", host}, {"vm", vm}};
  return VmGauges{&vm_target_.Add(labels), &vm_actual_.Add(labels), &vm_demand_.Add(labels),
                  &vm_floor_.Add(labels), &vm_healthy_.Add(labels)};
}

void BrokerMetrics::RemoveVm(const std::string& host, const std::string& vm) {
  absl::MutexLock lock(&mu_);
  const std::map<std::string, std::string> labels{{"host", host}, {"vm", vm}};
  for (auto* family : {&vm_target_, &vm_actual_, &vm_demand_, &vm_floor_, &vm_healthy_}) {
    if (family->Has(labels)) family->Remove(&family->Add(labels));
  }
}

BrokerMetrics::HostSeries BrokerMetrics::AddHost(const std::string& host) {
  absl::MutexLock lock(&mu_);
  const std::map<std::string, std::string> labels{{"host", host}};
  HostSeries series{&host_capacity_.Add(labels),      &host_target_.Add(labels),
                    &host_overcommitted_.Add(labels), &host_pressure_.Add(labels),
                    &reports_received_.Add(labels),   &targets_pushed_.Add(labels)};
  series.overcommit_episodes = &host_overcommit_episodes_.Add(labels);
  series.margin_lent = &host_sacrifices_.Add({{"host", host}, {"kind", "margin"}});
  series.floors_yielded = &host_sacrifices_.Add({{"host", host}, {"kind", "default_floor"}});
  return series;
}

void BrokerMetrics::RemoveHost(const std::string& host) {
  absl::MutexLock lock(&mu_);
  const std::map<std::string, std::string> labels{{"host", host}};
  for (auto* family : {&host_capacity_, &host_target_, &host_overcommitted_, &host_pressure_}) {
    if (family->Has(labels)) family->Remove(&family->Add(labels));
  }
  for (auto* family : {&reports_received_, &targets_pushed_, &host_overcommit_episodes_}) {
    if (family->Has(labels)) family->Remove(&family->Add(labels));
  }
  for (const char* kind : {"margin", "default_floor"}) {
    const std::map<std::string, std::string> l{{"host", host}, {"kind", kind}};
    if (host_sacrifices_.Has(l)) host_sacrifices_.Remove(&host_sacrifices_.Add(l));
  }
}

}  // namespace membroker::broker

#include "broker/metrics.h"

#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "common/metrics_server.h"

namespace membroker::broker {
namespace {

// The per-VM families, in the order they are filled.
struct VmFamilyInfo {
  const char* name;
  const char* help;
};
constexpr VmFamilyInfo kVmFamilies[] = {
    {"membroker_vm_target_bytes", "Balloon target the broker set for the VM."},
    {"membroker_vm_actual_bytes", "Memory the VM has now (balloon actual)."},
    {"membroker_vm_demand_bytes", "The broker's demand estimate for the VM."},
    {"membroker_vm_floor_bytes", "The VM's floor (max of min and protect)."},
    {"membroker_vm_balloon_healthy",
     "1 when the VM's balloon follows targets, 0 when stuck or no driver."},
};

// Serves BrokerMetrics::Collect to the exposer.
class BrokerCollectable final : public prometheus::Collectable {
 public:
  explicit BrokerCollectable(const BrokerMetrics* metrics) : metrics_(metrics) {}
  std::vector<prometheus::MetricFamily> Collect() const override {
    // A scrape of a large fleet is heavy: the exposer's thread, which also
    // serializes the reply, yields the CPU to the report path (nice 10;
    // Linux nices threads one by one; best effort).
    thread_local bool lowered = false;
    if (!lowered) {
      lowered = true;
      setpriority(PRIO_PROCESS, static_cast<id_t>(syscall(SYS_gettid)), 10);
    }
    return metrics_->Collect();
  }

 private:
  const BrokerMetrics* const metrics_;
};

}  // namespace

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
      host_capacity_(prometheus::BuildGauge()
                         .Name("membroker_host_capacity_bytes")
                         .Help("Memory VMs on the host may have in total.")
                         .Register(*registry)),
      host_target_(prometheus::BuildGauge()
                       .Name("membroker_host_target_bytes")
                       .Help("Sum of the host's VM targets.")
                       .Register(*registry)),
      host_overcommitted_(
          prometheus::BuildGauge()
              .Name("membroker_host_overcommitted")
              .Help(
                  "1 when the host cannot hold what its VMs need: their floors, or the demand of a "
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
  decision_latency_ = &prometheus::BuildHistogram()
                           .Name("membroker_decision_latency_seconds")
                           .Help("Time from receiving a report to pushing its targets.")
                           .Register(*registry)
                           .Add({}, prometheus::Histogram::BucketBoundaries{
                                        0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025,
                                        0.05, 0.1, 0.25, 0.5, 1});
  AddBuildInfo(*registry, "broker");
  collectable_ = std::make_shared<BrokerCollectable>(this);
}

void BrokerMetrics::SetVmSeriesSource(VmSeriesSource source) {
  absl::MutexLock lock(&source_mu_);
  vm_source_ = std::move(source);
}

std::vector<prometheus::MetricFamily> BrokerMetrics::Collect() const {
  std::vector<prometheus::MetricFamily> out = registry_->Collect();
  const size_t first = out.size();
  for (const VmFamilyInfo& info : kVmFamilies) {
    prometheus::MetricFamily f;
    f.name = info.name;
    f.help = info.help;
    f.type = prometheus::MetricType::Gauge;
    out.push_back(std::move(f));
  }
  absl::ReaderMutexLock lock(&source_mu_);
  if (!vm_source_) return out;
  vm_source_([&](const std::string& host, const std::string& vm, const VmSeries& s) {
    const double values[] = {s.target_bytes, s.actual_bytes, s.demand_bytes, s.floor_bytes,
                             s.balloon_healthy};
    for (size_t i = 0; i < 5; ++i) {
      prometheus::ClientMetric m;
      m.label = {{"host", host}, {"vm", vm}};
      m.gauge.value = values[i];
      out[first + i].metric.push_back(std::move(m));
    }
  });
  return out;
}

void BrokerMetrics::ReportRejected(const std::string& reason) {
  absl::MutexLock lock(&mu_);
  reports_rejected_.Add({{"reason", reason}}).Increment();
}

void BrokerMetrics::AdminRequest(const std::string& method, const std::string& code) {
  absl::MutexLock lock(&mu_);
  admin_requests_.Add({{"method", method}, {"code", code}}).Increment();
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

}  // namespace membroker::broker

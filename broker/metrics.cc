#include "broker/metrics.h"

#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>

#include "broker/policy/allocator.h"
#include "common/metrics_server.h"

namespace membroker::broker {
namespace {

// The per-VM families, in the order they are filled.
struct VmFamilyInfo {
  const char* name;
  const char* help;
};
// Gauges with one series per VM, in the order of VmSeries' fields.
constexpr VmFamilyInfo kVmFamilies[] = {
    {"membroker_vm_target_bytes", "Balloon target the broker set for the VM."},
    {"membroker_vm_actual_bytes", "Memory the VM has now (balloon actual)."},
    {"membroker_vm_demand_bytes", "The broker's demand estimate for the VM."},
    {"membroker_vm_floor_bytes", "The VM's floor (max of min and protect)."},
    {"membroker_vm_balloon_healthy",
     "1 when the VM's balloon follows targets, 0 when stuck or no driver."},
    {"membroker_vm_max_bytes", "The VM's configured (boot) memory: the most its balloon can give."},
    {"membroker_vm_stats_untrusted",
     "1 when the VM's guest statistics are stale or impossible and not used for decisions."},
};
constexpr int kVmGauges = sizeof(kVmFamilies) / sizeof(kVmFamilies[0]);
// Counters with one series per VM, in the order of VmCounters' fields.
constexpr VmFamilyInfo kVmCounterFamilies[] = {
    {"membroker_vm_swap_in_bytes_total",
     "Bytes the guest swapped in (guest statistics): time it stalled on memory."},
    {"membroker_vm_major_faults_total", "Major page faults in the guest (guest statistics)."},
    {"membroker_vm_oom_kills_total",
     "Processes the guest's OOM killer killed, where the backend knows it."},
};
constexpr int kVmCounters = sizeof(kVmCounterFamilies) / sizeof(kVmCounterFamilies[0]);
constexpr VmFamilyInfo kVmReasonFamily = {
    "membroker_vm_target_reason",
    "1 for the reason of the VM's current target (label reason), 0 for the other reasons."};

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

static_assert(static_cast<int>(policy::Reason::kSurplus) + 1 == BrokerMetrics::kReasonCount,
              "one reason series per policy::Reason");

// Adds to `counter` what a cumulative value from a guest or a host grew by
// since `*last`; a value below `*last` means its source restarted from zero.
template <typename T>
void Mirror(prometheus::Counter* counter, T value, T* last) {
  const T grown = value >= *last ? value - *last : value;
  counter->Increment(static_cast<double>(grown));
  *last = value;
}

// The same for a total kept as a number (the per-VM counters, exported at
// scrape time).
void Mirror(double* total, uint64_t value, uint64_t* last) {
  const uint64_t grown = value >= *last ? value - *last : value;
  *total += static_cast<double>(grown);
  *last = value;
}

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
      host_reclaimed_(prometheus::BuildGauge()
                          .Name("membroker_host_reclaimed_bytes")
                          .Help("Memory taken back from the host's VMs: sum of configured max "
                                "minus target.")
                          .Register(*registry)),
      host_pressure_full_(prometheus::BuildGauge()
                              .Name("membroker_host_memory_pressure_full_ratio")
                              .Help("Host memory PSI 'full' avg10 as a ratio (0..1).")
                              .Register(*registry)),
      host_guest_free_on_host_(
          prometheus::BuildGauge()
              .Name("membroker_host_guest_free_on_host_bytes")
              .Help("Memory the host's VMs with free page reporting have but that is not "
                    "resident on the host (sum of actual minus the QEMU process's RSS, at "
                    "least 0): free in the guests and already back on the host.")
              .Register(*registry)),
      host_stall_(prometheus::BuildCounter()
                      .Name("membroker_host_memory_stall_seconds_total")
                      .Help("Host memory stall time from PSI totals (kind some or full).")
                      .Register(*registry)),
      host_capacity_(prometheus::BuildGauge()
                         .Name("membroker_host_capacity_bytes")
                         .Help("Memory VMs on the host may have in total.")
                         .Register(*registry)),
      host_reserved_(prometheus::BuildGauge()
                         .Name("membroker_host_reserved_bytes")
                         .Help("Memory held free on the host for reservations.")
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
                           .Register(*registry)),
      host_guest_oom_kills_(
          prometheus::BuildCounter()
              .Name("membroker_host_guest_oom_kills_total")
              .Help("Guest OOM kills seen in the host's VMs: source=reported by the guest's own "
                    "counter, source=inferred from its statistics (used memory and page cache "
                    "falling at once).")
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

void BrokerMetrics::DisableVmSeries() {
  absl::MutexLock lock(&source_mu_);
  vm_series_ = false;
}

std::vector<prometheus::MetricFamily> BrokerMetrics::Collect() const {
  std::vector<prometheus::MetricFamily> out = registry_->Collect();
  {
    absl::ReaderMutexLock lock(&source_mu_);
    if (!vm_series_) return out;
  }
  const size_t first = out.size();
  for (const VmFamilyInfo& info : kVmFamilies) {
    prometheus::MetricFamily f;
    f.name = info.name;
    f.help = info.help;
    f.type = prometheus::MetricType::Gauge;
    out.push_back(std::move(f));
  }
  const size_t first_counter = out.size();
  for (const VmFamilyInfo& info : kVmCounterFamilies) {
    prometheus::MetricFamily f;
    f.name = info.name;
    f.help = info.help;
    f.type = prometheus::MetricType::Counter;
    out.push_back(std::move(f));
  }
  const size_t reason_family = out.size();
  {
    prometheus::MetricFamily f;
    f.name = kVmReasonFamily.name;
    f.help = kVmReasonFamily.help;
    f.type = prometheus::MetricType::Gauge;
    out.push_back(std::move(f));
  }
  absl::ReaderMutexLock lock(&source_mu_);
  if (!vm_source_) return out;
  vm_source_([&](const std::string& host, const std::string& vm, const VmSeries& s) {
    const double gauges[kVmGauges] = {s.target_bytes,   s.actual_bytes,    s.demand_bytes,
                                      s.floor_bytes,    s.balloon_healthy, s.max_bytes,
                                      s.stats_untrusted};
    for (int i = 0; i < kVmGauges; ++i) {
      prometheus::ClientMetric m;
      m.label = {{"host", host}, {"vm", vm}};
      m.gauge.value = gauges[i];
      out[first + i].metric.push_back(std::move(m));
    }
    const double counters[kVmCounters] = {s.counters.swap_in_bytes, s.counters.major_faults,
                                          s.counters.oom_kills};
    for (int i = 0; i < kVmCounters; ++i) {
      prometheus::ClientMetric m;
      m.label = {{"host", host}, {"vm", vm}};
      m.counter.value = counters[i];
      out[first_counter + i].metric.push_back(std::move(m));
    }
    for (int r = 0; r < kReasonCount; ++r) {
      prometheus::ClientMetric m;
      m.label = {{"host", host},
                 {"reason", policy::ReasonName(static_cast<policy::Reason>(r))},
                 {"vm", vm}};
      m.gauge.value = r == s.reason ? 1 : 0;
      out[reason_family].metric.push_back(std::move(m));
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

void BrokerMetrics::UpdateVmCounters(VmCounters& counters, const v1::VmSample& sample) {
  const v1::GuestStats& stats = sample.stats();
  if (stats.has_swap_in_bytes_total()) {
    Mirror(&counters.swap_in_bytes, stats.swap_in_bytes_total(), &counters.last_swap_in_bytes);
  }
  if (stats.has_major_faults_total()) {
    Mirror(&counters.major_faults, stats.major_faults_total(), &counters.last_major_faults);
  }
  if (stats.has_oom_kills_total()) {
    Mirror(&counters.oom_kills, stats.oom_kills_total(), &counters.last_oom_kills);
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
  series.guest_oom_reported = &host_guest_oom_kills_.Add({{"host", host}, {"source", "reported"}});
  series.guest_oom_inferred = &host_guest_oom_kills_.Add({{"host", host}, {"source", "inferred"}});
  series.reclaimed = &host_reclaimed_.Add(labels);
  series.guest_free_on_host = &host_guest_free_on_host_.Add(labels);
  series.pressure_full = &host_pressure_full_.Add(labels);
  series.reserved = &host_reserved_.Add(labels);
  series.stall_some = &host_stall_.Add({{"host", host}, {"kind", "some"}});
  series.stall_full = &host_stall_.Add({{"host", host}, {"kind", "full"}});
  return series;
}

void BrokerMetrics::UpdateHost(HostSeries& series, const v1::HostSample& sample,
                               uint64_t reclaimed_bytes, uint64_t guest_free_on_host_bytes) {
  series.reclaimed->Set(static_cast<double>(reclaimed_bytes));
  series.guest_free_on_host->Set(static_cast<double>(guest_free_on_host_bytes));
  series.pressure_full->Set(sample.psi_full_avg10_percent() / 100.0);
  Mirror(series.stall_some, std::max(0.0, sample.psi_some_seconds_total()),
         &series.last_stall_some_seconds);
  Mirror(series.stall_full, std::max(0.0, sample.psi_full_seconds_total()),
         &series.last_stall_full_seconds);
}

void BrokerMetrics::RemoveHost(const std::string& host) {
  absl::MutexLock lock(&mu_);
  const std::map<std::string, std::string> labels{{"host", host}};
  for (auto* family :
       {&host_capacity_, &host_target_, &host_overcommitted_, &host_pressure_, &host_reclaimed_,
        &host_pressure_full_, &host_guest_free_on_host_, &host_reserved_}) {
    if (family->Has(labels)) family->Remove(&family->Add(labels));
  }
  for (auto* family : {&reports_received_, &targets_pushed_, &host_overcommit_episodes_}) {
    if (family->Has(labels)) family->Remove(&family->Add(labels));
  }
  for (const char* kind : {"margin", "default_floor"}) {
    const std::map<std::string, std::string> l{{"host", host}, {"kind", kind}};
    if (host_sacrifices_.Has(l)) host_sacrifices_.Remove(&host_sacrifices_.Add(l));
  }
  for (const char* kind : {"some", "full"}) {
    const std::map<std::string, std::string> l{{"host", host}, {"kind", kind}};
    if (host_stall_.Has(l)) host_stall_.Remove(&host_stall_.Add(l));
  }
  for (const char* source : {"reported", "inferred"}) {
    const std::map<std::string, std::string> l{{"host", host}, {"source", source}};
    if (host_guest_oom_kills_.Has(l)) host_guest_oom_kills_.Remove(&host_guest_oom_kills_.Add(l));
  }
}

}  // namespace membroker::broker

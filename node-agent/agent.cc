#include "node-agent/agent.h"

#include <algorithm>
#include <set>
#include <utility>

#include <spdlog/spdlog.h>

#include "absl/strings/str_cat.h"
#include "common/proto_time.h"

namespace membroker::agent {

using membroker::v1::BalloonHealth;

membroker::v1::VmSample ToVmSample(const VmStatus& vm, const VmActuation* actuation,
                                   const StatsVerdict* verdict) {
  membroker::v1::VmSample out;
  out.set_vm_id(vm.vm_id);
  out.set_name(vm.name);
  out.set_max_bytes(vm.max_bytes);
  out.set_actual_bytes(vm.actual_bytes);
  if (actuation != nullptr) out.set_last_target_bytes(actuation->applied_bytes.value_or(0));
  membroker::v1::GuestStats& stats = *out.mutable_stats();
  const GuestMemoryStats& s = vm.stats;
  if (s.total_bytes) stats.set_total_bytes(*s.total_bytes);
  if (s.available_bytes) stats.set_available_bytes(*s.available_bytes);
  if (s.free_bytes) stats.set_free_bytes(*s.free_bytes);
  if (s.disk_caches_bytes) stats.set_disk_caches_bytes(*s.disk_caches_bytes);
  if (s.swap_in_bytes_total) stats.set_swap_in_bytes_total(*s.swap_in_bytes_total);
  if (s.swap_out_bytes_total) stats.set_swap_out_bytes_total(*s.swap_out_bytes_total);
  if (s.major_faults_total) stats.set_major_faults_total(*s.major_faults_total);
  if (s.minor_faults_total) stats.set_minor_faults_total(*s.minor_faults_total);
  if (s.oom_kills_total) stats.set_oom_kills_total(*s.oom_kills_total);
  BalloonHealth health = membroker::v1::BALLOON_HEALTH_OK;
  if (verdict != nullptr) {
    if (verdict->age) stats.set_age_seconds(absl::ToDoubleSeconds(*verdict->age));
    if (!verdict->trusted) {
      stats.set_untrusted(true);
      stats.set_untrusted_reason(verdict->reason);
      health = membroker::v1::BALLOON_HEALTH_STATS_UNAVAILABLE;
    }
  }
  if (actuation != nullptr) {
    if (actuation->state == BalloonState::kStuck) health = membroker::v1::BALLOON_HEALTH_STUCK;
    if (actuation->state == BalloonState::kNoDriver) {
      health = membroker::v1::BALLOON_HEALTH_NO_DRIVER;
    }
  }
  out.set_health(health);
  return out;
}

membroker::v1::HostSample ToHostSample(const HostMemorySample& sample) {
  membroker::v1::HostSample out;
  out.set_mem_total_bytes(sample.meminfo.mem_total_bytes);
  out.set_mem_available_bytes(sample.meminfo.mem_available_bytes);
  out.set_swap_total_bytes(sample.meminfo.swap_total_bytes);
  out.set_swap_free_bytes(sample.meminfo.swap_free_bytes);
  out.set_psi_some_avg10_percent(sample.pressure.some_avg10_percent);
  out.set_psi_full_avg10_percent(sample.pressure.full_avg10_percent);
  out.set_psi_some_seconds_total(sample.pressure.some_seconds_total);
  out.set_psi_full_seconds_total(sample.pressure.full_seconds_total);
  return out;
}

Agent::Agent(AgentParams params, std::unique_ptr<Hypervisor> hypervisor, HostSampler host_sampler,
             const Clock* clock, std::shared_ptr<grpc::Channel> channel,
             std::shared_ptr<prometheus::Registry> registry)
    : params_(std::move(params)),
      clock_(clock),
      registry_(std::move(registry)),
      metrics_(*registry_),
      host_sampler_(std::move(host_sampler)),
      hypervisor_(std::move(hypervisor)),
      actuator_(hypervisor_.get(), clock, [this] {
        ActuatorParams a = params_.actuator;
        a.capacity_bytes = params_.capacity_bytes;
        return a;
      }()),
      report_interval_(params_.report_interval) {
  metrics_.SetHostCapacity(params_.capacity_bytes);
  metrics_.SetBrokerConnected(false);
  membroker::v1::Hello hello;
  hello.set_host_id(params_.host_id);
  hello.set_agent_version(MB_VERSION);
  {
    absl::MutexLock lock(&mu_);
    hello.set_backend(hypervisor_->backend());
  }
  hello.set_capacity_bytes(params_.capacity_bytes);
  hello.set_host_total_bytes(params_.host_total_bytes);
  BrokerLink::Callbacks callbacks;
  callbacks.on_welcome = [this](const membroker::v1::Welcome& w) { OnWelcome(w); };
  callbacks.on_targets = [this](const membroker::v1::TargetSet& t) { return OnTargets(t); };
  callbacks.on_connection = [this](bool connected) { OnConnection(connected); };
  link_ = std::make_unique<BrokerLink>(std::move(channel), std::move(hello), std::move(callbacks),
                                       clock_, params_.backoff);
}

Agent::~Agent() { Stop(); }

void Agent::Start() {
  {
    absl::MutexLock lock(&mu_);
    if (started_) return;
    started_ = true;
  }
  // Know the VMs before the broker asks about them.
  absl::Status first = Tick();
  if (!first.ok()) spdlog::warn("first VM listing failed: {}", first.ToString());
  link_->Start();
  loop_ = std::thread([this] { Loop(); });
}

void Agent::Stop() {
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
  }
  link_->Stop();
  if (loop_.joinable()) loop_.join();
}

bool Agent::connected() const { return link_->connected(); }

absl::Duration Agent::report_interval() const {
  absl::MutexLock lock(&mu_);
  return report_interval_;
}

absl::Status Agent::Tick() {
  TickOutcome outcome;
  {
    absl::MutexLock lock(&mu_);
    outcome = TickLocked();
    if (outcome.result.pressure_event) report_now_ = pressure_pending_ = true;
  }
  metrics_.AddTargetsApplied(outcome.result.targets_applied);
  metrics_.AddTargetErrors(outcome.result.errors.size());
  return outcome.status;
}

Agent::TickOutcome Agent::TickLocked() {
  TickOutcome outcome;
  absl::StatusOr<std::vector<VmStatus>> vms = hypervisor_->ListVms();
  if (!vms.ok()) {
    // Once per outage at warning level; the rest at debug.
    if (list_failures_++ == 0) {
      spdlog::warn("listing VMs failed: {}", vms.status().ToString());
    } else {
      spdlog::debug("listing VMs failed ({} in a row): {}", list_failures_,
                    vms.status().ToString());
    }
    outcome.status = vms.status();
    return outcome;
  }
  if (list_failures_ > 0) {
    spdlog::info("listing VMs works again after {} failures", list_failures_);
    list_failures_ = 0;
  }
  const absl::Time now = clock_->Now();
  std::map<std::string, StatsVerdict> verdicts;
  std::map<std::string, GuestMemoryStats> previous;
  std::map<std::string, bool> period_set;
  for (const VmStatus& vm : *vms) {
    auto prev = previous_stats_.find(vm.vm_id);
    verdicts[vm.vm_id] =
        ValidateGuestStats(prev == previous_stats_.end() ? nullptr : &prev->second, vm.stats,
                           vm.max_bytes, now, report_interval_);
    previous[vm.vm_id] = vm.stats;
    bool done = stats_period_set_[vm.vm_id];
    if (!done) {
      absl::Status st = hypervisor_->SetStatsPeriod(vm.vm_id, params_.stats_period);
      if (st.ok()) {
        done = true;
      } else {
        spdlog::warn("VM {}: setting the stats period failed: {}", vm.name, st.ToString());
      }
    }
    period_set[vm.vm_id] = done;
  }
  listed_once_ = true;
  verdicts_ = std::move(verdicts);
  previous_stats_ = std::move(previous);
  stats_period_set_ = std::move(period_set);
  vms_ = *std::move(vms);
  outcome.result = actuator_.Tick(vms_);
  UpdateVmMetricsLocked();
  return outcome;
}

void Agent::UpdateVmMetricsLocked() {
  std::map<std::string, int> name_count;
  for (const VmStatus& vm : vms_) ++name_count[vm.name];
  std::map<std::string, VmActuation> actuations;
  for (VmActuation& a : actuator_.Snapshot()) actuations[a.vm_id] = std::move(a);
  std::map<std::string, AgentMetrics::VmValues> values;
  for (const VmStatus& vm : vms_) {
    AgentMetrics::VmValues v;
    // The name is the label people read; the id when the name is missing
    // or shared.
    v.vm = (vm.name.empty() || name_count[vm.name] > 1) ? vm.vm_id : vm.name;
    v.actual_bytes = vm.actual_bytes;
    auto it = actuations.find(vm.vm_id);
    if (it != actuations.end()) {
      v.target_bytes = it->second.applied_bytes;
      v.stuck = it->second.state != BalloonState::kOk;
    }
    values[vm.vm_id] = std::move(v);
  }
  metrics_.SetVms(values);
}

membroker::v1::HostReport Agent::BuildReport(bool pressure_event) {
  std::vector<VmStatus> vms;
  membroker::v1::HostReport report;
  {
    absl::MutexLock lock(&mu_);
    vms = vms_;
    std::map<std::string, VmActuation> actuations;
    for (VmActuation& a : actuator_.Snapshot()) actuations[a.vm_id] = std::move(a);
    for (const VmStatus& vm : vms_) {
      auto a = actuations.find(vm.vm_id);
      auto v = verdicts_.find(vm.vm_id);
      *report.add_vms() = ToVmSample(vm, a == actuations.end() ? nullptr : &a->second,
                                     v == verdicts_.end() ? nullptr : &v->second);
    }
  }
  absl::StatusOr<HostMemorySample> host = host_sampler_(vms);
  if (host.ok()) {
    *report.mutable_host() = ToHostSample(*host);
    metrics_.SetHostMemory(host->meminfo.mem_available_bytes,
                           host->pressure.some_avg10_percent / 100.0);
  } else {
    spdlog::warn("reading the host's memory failed: {}", host.status().ToString());
  }
  *report.mutable_sent_at() = ToProtoTimestamp(clock_->Now());
  report.set_pressure_event(pressure_event);
  report.set_capacity_bytes(params_.capacity_bytes);
  return report;
}

void Agent::SendReport(bool pressure_event) {
  const absl::Time start = clock_->Now();
  {
    absl::MutexLock lock(&mu_);
    if (!listed_once_) {
      spdlog::debug("no report yet: the VMs were never listed");
      return;
    }
  }
  membroker::v1::HostReport report = BuildReport(pressure_event);
  {
    absl::MutexLock lock(&mu_);
    report.set_sequence(++sequence_);
  }
  absl::Status status = link_->SendReport(report);
  if (!status.ok()) {
    spdlog::debug("report {} not sent: {}", report.sequence(), status.ToString());
    return;
  }
  metrics_.ObserveReportDuration(absl::ToDoubleSeconds(clock_->Now() - start));
  SyncLinkCounters();
}

void Agent::SyncLinkCounters() {
  const BrokerLink::Counters now = link_->counters();
  absl::MutexLock lock(&counters_mu_);
  metrics_.AddReportsSent(now.reports_sent - synced_.reports_sent);
  metrics_.AddReconnects(now.reconnects - synced_.reconnects);
  synced_ = now;
}

void Agent::OnWelcome(const membroker::v1::Welcome& welcome) {
  absl::MutexLock lock(&mu_);
  if (welcome.has_report_interval()) {
    const absl::Duration interval = FromProto(welcome.report_interval());
    if (interval >= absl::Milliseconds(100) && interval <= absl::Hours(1)) {
      report_interval_ = interval;
    } else {
      spdlog::warn("Welcome: report_interval {} outside 100ms..1h; keeping {}",
                   absl::FormatDuration(interval), absl::FormatDuration(report_interval_));
    }
  }
  if (welcome.has_safety()) {
    absl::StatusOr<SafetyParams> safety =
        SafetyFromProto(welcome.safety(), params_.actuator.safety);
    if (safety.ok()) {
      actuator_.SetSafety(*safety);
    } else {
      spdlog::warn("Welcome: {}; keeping the current safety parameters",
                   safety.status().ToString());
    }
  }
}

membroker::v1::TargetAck Agent::OnTargets(const membroker::v1::TargetSet& targets) {
  membroker::v1::TargetAck ack;
  std::map<std::string, std::string> errors;
  TickOutcome outcome;
  {
    absl::MutexLock lock(&mu_);
    std::vector<membroker::v1::VmTarget> list(targets.targets().begin(), targets.targets().end());
    errors = actuator_.SetTargets(targets.generation(), list);
    // Apply at once rather than at the next tick.
    outcome = TickLocked();
    if (outcome.result.pressure_event) report_now_ = pressure_pending_ = true;
  }
  std::set<std::string> in_set;
  for (const auto& t : targets.targets()) in_set.insert(t.vm_id());
  for (const auto& [vm, error] : outcome.result.errors) {
    if (in_set.count(vm) != 0 && errors.count(vm) == 0) errors[vm] = error;
  }
  if (!outcome.status.ok()) {
    for (const std::string& vm : in_set) {
      if (errors.count(vm) == 0) {
        errors[vm] = absl::StrCat("hypervisor unavailable: ", outcome.status.message());
      }
    }
  }
  metrics_.AddTargetsApplied(outcome.result.targets_applied);
  // Refusals count here; failed applications of other VMs were counted by
  // the tick.
  uint64_t refused = 0;
  for (const auto& [vm, error] : errors) {
    if (outcome.result.errors.count(vm) == 0) ++refused;
  }
  metrics_.AddTargetErrors(outcome.result.errors.size() + refused);
  for (const auto& [vm, error] : errors) (*ack.mutable_errors())[vm] = error;
  ack.set_generation(targets.generation());
  return ack;
}

void Agent::OnConnection(bool connected) {
  metrics_.SetBrokerConnected(connected);
  absl::MutexLock lock(&mu_);
  actuator_.SetBrokerConnected(connected);
  if (connected) report_now_ = true;  // The broker needs a snapshot at once.
}

void Agent::Loop() {
  absl::Time next_report = clock_->Now();
  while (true) {
    bool report = false;
    bool pressure = false;
    {
      absl::MutexLock lock(&mu_);
      if (stopping_) return;
      pressure = pressure_pending_;
      report = report_now_ || clock_->Now() >= next_report;
      report_now_ = pressure_pending_ = false;
    }
    if (report) {
      SendReport(pressure);
      next_report = clock_->Now() + report_interval();
    }
    SyncLinkCounters();
    const absl::Duration wait = std::min(params_.tick_interval, std::max(absl::ZeroDuration(),
                                                                         next_report - clock_->Now()));
    {
      absl::MutexLock lock(&mu_);
      auto wake = [this]() ABSL_SHARED_LOCKS_REQUIRED(mu_) { return stopping_ || report_now_; };
      mu_.AwaitWithTimeout(absl::Condition(&wake), wait);
      if (stopping_) return;
    }
    Tick().IgnoreError();
  }
}

}  // namespace membroker::agent

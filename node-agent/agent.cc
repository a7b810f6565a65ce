#include "node-agent/agent.h"

#include <algorithm>
#include <utility>

#include <spdlog/spdlog.h>

#include "absl/strings/str_cat.h"
#include "common/log_limit.h"
#include "common/proto_time.h"

namespace membroker::agent {

using membroker::v1::BalloonHealth;

namespace {
// The broker's bound on VmSample.health_reason.
constexpr size_t kMaxHealthReasonBytes = 256;
}  // namespace

membroker::v1::VmSample ToVmSample(const VmStatus& vm, const VmActuation* actuation,
                                   const StatsVerdict* verdict) {
  membroker::v1::VmSample out;
  out.set_vm_id(vm.vm_id);
  out.set_name(vm.name);
  out.set_max_bytes(vm.max_bytes);
  out.set_actual_bytes(vm.actual_bytes);
  if (actuation != nullptr) {
    out.set_last_target_bytes(actuation->applied_bytes.value_or(0));
    out.set_local_grant_bytes(actuation->local_grant_bytes);
  }
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
  const VmSizing& sizing = vm.sizing;
  out.set_sizing_mechanism(SizingMechanism(sizing));
  out.set_virtio_mem_plugged_bytes(sizing.virtio_mem_plugged_bytes);
  out.set_virtio_mem_requested_bytes(sizing.virtio_mem_requested_bytes);
  out.set_balloon_inflated_bytes(sizing.balloon_inflated_bytes);
  out.set_boot_bytes(sizing.boot_bytes);
  out.set_free_page_reporting(vm.free_page_reporting);
  out.set_balloon_driver_ready(vm.balloon_driver_ready);
  if (!sizing.excluded_reason.empty()) {
    // Never reclaimed from, whatever its balloon does.
    health = membroker::v1::BALLOON_HEALTH_EXCLUDED;
    out.set_health_reason(sizing.excluded_reason);
  } else if (!sizing.shortfall_reason.empty()) {
    out.set_health_reason(sizing.shortfall_reason);
  } else if (health == membroker::v1::BALLOON_HEALTH_STATS_UNAVAILABLE && verdict != nullptr) {
    out.set_health_reason(verdict->reason);
  }
  // The broker refuses a report whose reason exceeds 256 bytes; backends'
  // messages (QMP errors, libvirt XML findings) are not bounded.
  if (out.health_reason().size() > kMaxHealthReasonBytes) {
    out.set_health_reason(Truncate(out.health_reason(), kMaxHealthReasonBytes - 3));
  }
  out.set_health(health);
  return out;
}

void SetHostSignals(const WorkingSetSample& sample, uint64_t max_bytes,
                    membroker::v1::VmSample& out) {
  // Only what the broker accepts (broker/report.h): an interval of 100 ms
  // .. 1 h, and at most the VM's memory (a mapping-rule surprise is capped,
  // never a rejected report).
  if (sample.working_set_bytes.has_value() && sample.interval >= absl::Milliseconds(100) &&
      sample.interval <= absl::Hours(1)) {
    out.set_host_working_set_bytes(std::min(*sample.working_set_bytes, max_bytes));
    out.set_host_working_set_interval_ms(
        static_cast<uint64_t>(absl::ToInt64Milliseconds(sample.interval)));
    if (sample.method == kMethodRefault) {
      out.set_host_working_set_method(membroker::v1::HOST_WORKING_SET_METHOD_REFAULT);
    } else if (sample.method == kMethodClearRefs) {
      out.set_host_working_set_method(membroker::v1::HOST_WORKING_SET_METHOD_CLEAR_REFS);
    }
  }
  if (sample.psi_some_avg10_percent.has_value() && *sample.psi_some_avg10_percent >= 0 &&
      *sample.psi_some_avg10_percent <= 100) {
    out.set_host_psi_some_avg10_percent(*sample.psi_some_avg10_percent);
  }
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
      hypervisor_(std::shared_ptr<Hypervisor>(std::move(hypervisor)), clock,
                  params_.hypervisor_calls),
      actuator_(&hypervisor_, clock, [this] {
        ActuatorParams a = params_.actuator;
        a.capacity_bytes = params_.capacity_bytes;
        return a;
      }()),
      report_interval_(params_.report_interval),
      pressure_(params_.pressure),
      working_set_sampler_(params_.working_set_probe, params_.working_set_cpu_seconds,
                           params_.working_set_refault) {
  metrics_.SetHostCapacity(params_.capacity_bytes);
  metrics_.SetBrokerConnected(false);
  membroker::v1::Hello hello;
  hello.set_host_id(params_.host_id);
  hello.set_agent_version(MB_VERSION);
  hello.set_backend(hypervisor_.backend());
  hello.set_capacity_bytes(params_.capacity_bytes);
  hello.set_host_total_bytes(params_.host_total_bytes);
  BrokerLink::Callbacks callbacks;
  callbacks.on_welcome = [this](const membroker::v1::Welcome& w) { OnWelcome(w); };
  callbacks.on_targets = [this](const membroker::v1::TargetSet& t, uint64_t stream) {
    OnTargets(t, stream);
  };
  callbacks.on_connection = [this](bool connected) { OnConnection(connected); };
  link_ = std::make_unique<BrokerLink>(std::move(channel), std::move(hello), std::move(callbacks),
                                       clock_, params_.backoff);
}

Agent::~Agent() { Stop(); }

void Agent::Start() {
  {
    absl::MutexLock lock(&mu_);
    if (started_ || stopping_) return;
    started_ = true;
  }
  // Know the VMs before the broker asks about them.
  absl::Status first = Tick();
  if (!first.ok()) spdlog::warn("first VM listing failed: {}", first.ToString());
  link_->Start();
  apply_thread_ = std::thread([this] { ApplyLoop(); });
  report_thread_ = std::thread([this] { ReportLoop(); });
  if (params_.vm_probe != nullptr && params_.rss_interval > absl::ZeroDuration()) {
    rss_thread_ = std::thread([this] { RssLoop(); });
  }
  if (params_.working_set_probe != nullptr && params_.working_set_interval > absl::ZeroDuration()) {
    working_set_thread_ = std::thread([this] { WorkingSetLoop(); });
  }
}

void Agent::Stop() {
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
  }
  // A step waiting on a hung call returns at once.
  hypervisor_.Shutdown();
  link_->Stop();
  if (apply_thread_.joinable()) apply_thread_.join();
  if (report_thread_.joinable()) report_thread_.join();
  if (rss_thread_.joinable()) rss_thread_.join();
  if (working_set_thread_.joinable()) working_set_thread_.join();
}

bool Agent::connected() const { return link_->connected(); }

absl::Duration Agent::report_interval() const {
  absl::MutexLock lock(&mu_);
  return report_interval_;
}

absl::Status Agent::Tick() {
  absl::MutexLock step(&step_mu_);
  return Step();
}

absl::Status Agent::Step() {
  // 1. Take what the link's reader recorded.
  StepInputs in;
  {
    absl::MutexLock lock(&mu_);
    in.safety = std::move(pending_safety_);
    pending_safety_.reset();
    in.connection_events = std::move(pending_connection_events_);
    pending_connection_events_.clear();
    in.targets = std::move(pending_targets_);
    pending_targets_.reset();
    in.report_interval = report_interval_;
    in.acute.swap(grant_requests_);
  }
  if (in.safety.has_value()) actuator_.SetSafety(*in.safety);
  for (bool connected : in.connection_events) actuator_.SetBrokerConnected(connected);
  std::map<std::string, std::string> refused;
  if (in.targets.has_value()) {
    const auto& list = in.targets->set.targets();
    refused = actuator_.SetTargets(in.targets->set.generation(),
                                   std::vector<membroker::v1::VmTarget>(list.begin(), list.end()));
  }

  // 2. List the VMs (bounded) and validate their statistics.
  absl::Status status;
  TickResult result;
  absl::StatusOr<std::vector<VmStatus>> vms = hypervisor_.ListVms();
  std::optional<std::map<std::string, StatsVerdict>> verdicts;
  if (!vms.ok()) {
    // Once per outage at warning level; the rest at debug.
    if (list_failures_++ == 0) {
      spdlog::warn("listing VMs failed: {}", vms.status().ToString());
    } else {
      spdlog::debug("listing VMs failed ({} in a row): {}", list_failures_,
                    vms.status().ToString());
    }
    status = vms.status();
  } else {
    if (list_failures_ > 0) {
      spdlog::info("listing VMs works again after {} failures", list_failures_);
      list_failures_ = 0;
    }
    const absl::Time now = clock_->Now();  // wall: compared with guest timestamps
    verdicts.emplace();
    std::map<std::string, GuestMemoryStats> previous;
    std::map<std::string, bool> period_set;
    for (const VmStatus& vm : *vms) {
      auto prev = previous_stats_.find(vm.vm_id);
      (*verdicts)[vm.vm_id] =
          ValidateGuestStats(prev == previous_stats_.end() ? nullptr : &prev->second, vm.stats,
                             vm.max_bytes, now, in.report_interval);
      previous[vm.vm_id] = vm.stats;
      bool done = stats_period_set_[vm.vm_id];
      if (!done) {
        absl::Status st = hypervisor_.SetStatsPeriod(vm.vm_id, params_.stats_period);
        if (st.ok()) {
          done = true;
        } else {
          spdlog::warn("VM {}: setting the stats period failed: {}", vm.name, st.ToString());
        }
      }
      period_set[vm.vm_id] = done;
    }
    previous_stats_ = std::move(previous);
    stats_period_set_ = std::move(period_set);
    // 3. Run the actuator (bounded SetBalloonTarget calls).
    result = actuator_.Tick(*vms, in.acute);
  }

  // 4. Publish.
  std::map<std::string, VmActuation> actuations;
  for (VmActuation& a : actuator_.Snapshot()) actuations[a.vm_id] = std::move(a);
  std::map<std::string, std::string> hung = hypervisor_.HungVms();
  std::vector<VmStatus> listed;
  {
    absl::MutexLock lock(&mu_);
    if (vms.ok()) {
      vms_ = *vms;
      verdicts_ = std::move(*verdicts);
      listed_once_ = true;
    }
    actuations_ = actuations;
    for (const auto& [vm, reason] : hung) {
      if (hung_.count(vm) == 0) report_now_ = true;  // the broker must know at once
    }
    hung_ = hung;
    if (result.pressure_event) report_now_ = pressure_pending_ = true;
    // The broker learns of a local grant at once, to reconcile it.
    if (result.local_grants > 0) report_now_ = pressure_pending_ = true;
    if (vms.ok()) {
      // Acute pressure seen in the listing: deflate-on-oom, available near
      // zero. The actuator's own swap-in rule already acted.
      std::set<std::string> present;
      for (const VmStatus& vm : *vms) {
        present.insert(vm.vm_id);
        auto a = actuations.find(vm.vm_id);
        std::optional<uint64_t> applied;
        if (a != actuations.end()) {
          applied = a->second.applied_bytes;
          if (a->second.pressure) {
            pressure_.Record(vm.vm_id, membroker::v1::PRESSURE_REASON_GUEST_SWAP_IN);
          }
        }
        std::vector<membroker::v1::PressureReason> fired = pressure_.ObserveVm(vm, applied);
        for (membroker::v1::PressureReason r : fired) {
          spdlog::info("VM {}: acute pressure ({})", vm.name, PressureReasonName(r));
        }
        if (!fired.empty()) OnAcutePressure(vm.vm_id);
      }
      pressure_.Retain(present);
    }
    listed = vms_;
  }
  UpdateVmMetrics(listed, actuations, hung);
  metrics_.SetHypervisorCallsHung(hypervisor_.hung_calls());
  metrics_.AddTargetsApplied(result.targets_applied);
  metrics_.AddLocalGrants(result.local_grants, result.local_grant_bytes);
  metrics_.AddTargetErrors(result.errors.size());

  // 5. Ack the TargetSet: refusals, failed calls of its VMs, or the whole
  // set when the VMs could not be listed.
  if (in.targets.has_value()) {
    std::map<std::string, std::string> errors = refused;
    for (const auto& t : in.targets->set.targets()) {
      const std::string& vm = t.vm_id();
      if (errors.count(vm) != 0) continue;
      auto failed = result.errors.find(vm);
      if (failed != result.errors.end()) {
        errors[vm] = failed->second;
      } else if (auto h = hung.find(vm); h != hung.end()) {
        errors[vm] = h->second;
      } else if (!status.ok()) {
        errors[vm] = absl::StrCat("hypervisor unavailable: ", status.message());
      }
    }
    // Refusals count here; failed calls were counted above.
    uint64_t refusals = 0;
    for (const auto& [vm, error] : errors) refusals += result.errors.count(vm) == 0 ? 1 : 0;
    metrics_.AddTargetErrors(refusals);
    membroker::v1::TargetAck ack;
    ack.set_generation(in.targets->set.generation());
    for (const auto& [vm, error] : errors) (*ack.mutable_errors())[vm] = error;
    absl::Status sent = link_->SendAck(in.targets->stream, ack);
    if (!sent.ok()) spdlog::info("{}", std::string(sent.message()));
  }
  return status;
}

void Agent::UpdateVmMetrics(const std::vector<VmStatus>& vms,
                            const std::map<std::string, VmActuation>& actuations,
                            const std::map<std::string, std::string>& hung) {
  std::map<std::string, int> name_count;
  for (const VmStatus& vm : vms) ++name_count[vm.name];
  std::map<std::string, AgentMetrics::VmValues> values;
  for (const VmStatus& vm : vms) {
    AgentMetrics::VmValues v;
    // The name is the label people read; the id when the name is missing
    // or shared.
    v.vm = (vm.name.empty() || name_count[vm.name] > 1) ? vm.vm_id : vm.name;
    v.actual_bytes = vm.actual_bytes;
    v.virtio_mem_plugged_bytes = vm.sizing.virtio_mem_plugged_bytes;
    v.balloon_inflated_bytes = vm.sizing.balloon_inflated_bytes;
    v.free_page_reporting = vm.free_page_reporting;
    if (!vm.sizing.excluded_reason.empty()) {
      const size_t colon = vm.sizing.excluded_reason.find(':');
      v.excluded_kind = vm.sizing.excluded_reason.substr(0, colon);
    }
    auto it = actuations.find(vm.vm_id);
    if (it != actuations.end()) {
      v.target_bytes = it->second.applied_bytes;
      v.stuck = it->second.state != BalloonState::kOk;
    }
    if (hung.count(vm.vm_id) != 0) v.stuck = true;
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
    const std::map<std::string, std::set<membroker::v1::PressureReason>> reasons =
        pressure_.TakeReasons();
    const std::map<std::string, uint64_t>& rss = pressure_.rss_bytes();
    for (const VmStatus& vm : vms_) {
      auto a = actuations_.find(vm.vm_id);
      auto v = verdicts_.find(vm.vm_id);
      membroker::v1::VmSample& sample = *report.add_vms();
      sample = ToVmSample(vm, a == actuations_.end() ? nullptr : &a->second,
                          v == verdicts_.end() ? nullptr : &v->second);
      if (auto h = hung_.find(vm.vm_id); h != hung_.end()) {
        // What we know of it is from before the hang: do not trust it, and
        // do not take memory from a balloon nobody can move.
        sample.set_health(membroker::v1::BALLOON_HEALTH_STUCK);
        sample.mutable_stats()->set_untrusted(true);
        sample.mutable_stats()->set_untrusted_reason(h->second);
      }
      if (auto r = rss.find(vm.vm_id); r != rss.end()) sample.set_host_rss_bytes(r->second);
      if (auto w = working_sets_.find(vm.vm_id); w != working_sets_.end()) {
        SetHostSignals(w->second, vm.max_bytes, sample);
      }
      if (auto r = reasons.find(vm.vm_id); r != reasons.end()) {
        for (membroker::v1::PressureReason reason : r->second) sample.add_pressure_reasons(reason);
      }
    }
  }
  if (params_.consoles != nullptr) {
    // Outside the lock: reading a log is file I/O (bounded per poll).
    for (int i = 0; i < report.vms_size() && i < static_cast<int>(vms.size()); ++i) {
      membroker::v1::VmSample& sample = *report.mutable_vms(i);
      if (sample.stats().has_oom_kills_total()) continue;
      if (std::optional<uint64_t> kills = params_.consoles->Poll(vms[i].name)) {
        sample.mutable_stats()->set_oom_kills_total(*kills);
      }
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
  const absl::Time start = clock_->MonotonicNow();
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
  metrics_.ObserveReportDuration(absl::ToDoubleSeconds(clock_->MonotonicNow() - start));
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
  if (params_.backoff_follows_report_interval && welcome.has_report_interval()) {
    const absl::Duration interval = FromProto(welcome.report_interval());
    if (interval >= absl::Milliseconds(100) && interval <= absl::Hours(1)) {
      link_->SetMaxBackoff(ReconnectBackoff(interval).max);
    }
  }
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
      pending_safety_ = *safety;
    } else {
      spdlog::warn("Welcome: {}; keeping the current safety parameters",
                   safety.status().ToString());
    }
  }
}

void Agent::OnTargets(const membroker::v1::TargetSet& targets, uint64_t stream) {
  absl::MutexLock lock(&mu_);
  if (pending_targets_.has_value()) {
    // Not applied yet: the newer full set replaces it, and its ack stands
    // for both (the broker keeps the highest acked generation).
    spdlog::debug("target generation {} replaced by {} before it was applied",
                  pending_targets_->set.generation(), targets.generation());
  }
  pending_targets_ = PendingTargets{targets, stream};
}

void Agent::OnConnection(bool connected) {
  metrics_.SetBrokerConnected(connected);
  absl::MutexLock lock(&mu_);
  pending_connection_events_.push_back(connected);
  // Targets of a stream that is gone are not applied; the next broker
  // stream sends its own.
  pending_targets_.reset();
  if (connected) report_now_ = true;  // The broker needs a snapshot at once.
}

void Agent::ApplyLoop() {
  absl::Time next_tick = clock_->MonotonicNow() + params_.tick_interval;
  while (true) {
    {
      absl::MutexLock lock(&mu_);
      auto wake = [this]() ABSL_SHARED_LOCKS_REQUIRED(mu_) {
        return stopping_ || pending_targets_.has_value() || !grant_requests_.empty();
      };
      clock_->AwaitWithDeadline(&mu_, absl::Condition(&wake), next_tick);
      if (stopping_) return;
    }
    // A TargetSet is applied at once; the tick keeps its own rhythm.
    if (clock_->MonotonicNow() >= next_tick) {
      next_tick = clock_->MonotonicNow() + params_.tick_interval;
    }
    absl::MutexLock step(&step_mu_);
    Step().IgnoreError();
  }
}

void Agent::ReportLoop() {
  absl::Time next_report = clock_->MonotonicNow();
  absl::Time last_early = absl::InfinitePast();
  while (true) {
    bool report = false;
    bool pressure = false;
    bool early = false;
    {
      absl::MutexLock lock(&mu_);
      auto wake = [this]() ABSL_SHARED_LOCKS_REQUIRED(mu_) { return stopping_ || report_now_; };
      clock_->AwaitWithDeadline(&mu_, absl::Condition(&wake), next_report);
      if (stopping_) return;
      const absl::Time not_before = last_early + params_.min_early_report_interval;
      if (report_now_ && clock_->MonotonicNow() < std::min(next_report, not_before)) {
        // Early reports are rate-bounded: wait out the gap (what arrives
        // meanwhile goes in the same report).
        auto stop = [this]() ABSL_SHARED_LOCKS_REQUIRED(mu_) { return stopping_; };
        clock_->AwaitWithDeadline(&mu_, absl::Condition(&stop), std::min(next_report, not_before));
        if (stopping_) return;
      }
      const absl::Time now = clock_->MonotonicNow();
      pressure = pressure_pending_;
      early = report_now_ && now < next_report;
      report = report_now_ || now >= next_report;
      report_now_ = pressure_pending_ = false;
    }
    if (report) {
      if (early) last_early = clock_->MonotonicNow();
      SendReport(pressure);
      next_report = clock_->MonotonicNow() + report_interval();
    }
    SyncLinkCounters();
  }
}

void Agent::OnAcutePressure(const std::string& vm_id) {
  report_now_ = pressure_pending_ = true;
  grant_requests_.insert(vm_id);
}

void Agent::SampleRss() {
  if (params_.vm_probe == nullptr) return;
  struct Watched {
    std::string vm_id;
    std::string name;
    int64_t pid;
    uint64_t actual_bytes;
  };
  std::vector<Watched> watched;
  {
    absl::MutexLock lock(&mu_);
    for (const VmStatus& vm : vms_) {
      if (vm.host_pid.has_value()) {
        watched.push_back({vm.vm_id, vm.name, *vm.host_pid, vm.actual_bytes});
      }
    }
  }
  // /proc reads, outside the lock.
  std::vector<std::pair<const Watched*, uint64_t>> read;
  for (const Watched& w : watched) {
    absl::StatusOr<uint64_t> rss = params_.vm_probe->ResidentBytes(w.pid);
    if (rss.ok()) {
      read.emplace_back(&w, *rss);
    } else {
      spdlog::debug("VM {}: reading process {} failed: {}", w.name, w.pid, rss.status().ToString());
    }
  }
  absl::MutexLock lock(&mu_);
  for (const auto& [w, rss] : read) {
    if (pressure_.ObserveRss(w->vm_id, w->pid, rss, w->actual_bytes)) {
      spdlog::info("VM {}: acute pressure (rss_near_actual: {} bytes resident, actual {} bytes)",
                   w->name, rss, w->actual_bytes);
      OnAcutePressure(w->vm_id);
    }
  }
}

void Agent::SampleWorkingSet() {
  if (params_.working_set_probe == nullptr) return;
  absl::MutexLock round(&working_set_mu_);
  std::vector<WorkingSetTarget> targets;
  std::map<std::string, std::string> names;
  {
    absl::MutexLock lock(&mu_);
    for (const VmStatus& vm : vms_) {
      if (!vm.host_pid.has_value()) continue;
      auto v = verdicts_.find(vm.vm_id);
      const bool statless =
          v == verdicts_.end() || !v->second.trusted || hung_.count(vm.vm_id) != 0;
      if (!statless && !params_.working_set_all_vms) continue;
      targets.push_back({vm.vm_id, *vm.host_pid,
                         vm.sizing.boot_bytes != 0 ? vm.sizing.boot_bytes : vm.max_bytes});
      names[vm.vm_id] = vm.name;
    }
  }
  // /proc reads and writes, outside mu_.
  std::map<std::string, WorkingSetSample> samples =
      working_set_sampler_.Round(targets, clock_->MonotonicNow());
  double cpu_seconds = 0;
  for (const auto& [vm_id, s] : samples) {
    cpu_seconds += s.cpu_seconds;
    if (!s.error.empty()) spdlog::debug("VM {}: working set: {}", names[vm_id], s.error);
    if (s.working_set_bytes.has_value()) {
      spdlog::debug("VM {}: working set {} MiB over {} by {}", names[vm_id],
                    *s.working_set_bytes >> 20, absl::FormatDuration(s.interval), s.method);
    }
  }
  metrics_.AddWorkingSetRound(samples.size(), cpu_seconds);
  absl::MutexLock lock(&mu_);
  working_sets_ = std::move(samples);
}

void Agent::WorkingSetLoop() {
  absl::Time next = clock_->MonotonicNow();  // the first round only clears
  while (true) {
    {
      absl::MutexLock lock(&mu_);
      auto stop = [this]() ABSL_SHARED_LOCKS_REQUIRED(mu_) { return stopping_; };
      clock_->AwaitWithDeadline(&mu_, absl::Condition(&stop), next);
      if (stopping_) return;
    }
    next = clock_->MonotonicNow() + params_.working_set_interval;
    SampleWorkingSet();
  }
}

void Agent::RssLoop() {
  absl::Time next = clock_->MonotonicNow() + params_.rss_interval;
  while (true) {
    {
      absl::MutexLock lock(&mu_);
      auto stop = [this]() ABSL_SHARED_LOCKS_REQUIRED(mu_) { return stopping_; };
      clock_->AwaitWithDeadline(&mu_, absl::Condition(&stop), next);
      if (stopping_) return;
    }
    next = clock_->MonotonicNow() + params_.rss_interval;
    SampleRss();
  }
}

}  // namespace membroker::agent

#include "broker/fleet.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <cctype>

#include "absl/strings/str_cat.h"
#include "broker/policy/explain.h"
#include "broker/policy_config.h"
#include "broker/reservations.h"
#include "common/log_limit.h"
#include "common/proto_time.h"
#include "common/status.h"
#include "common/units.h"

namespace membroker::broker {
namespace {

bool LooksLikeUuid(absl::string_view s) {
  if (s.size() != 36) return false;
  for (size_t i = 0; i < s.size(); ++i) {
    const bool dash = i == 8 || i == 13 || i == 18 || i == 23;
    if (dash ? s[i] != '-' : !std::isxdigit(static_cast<unsigned char>(s[i]))) return false;
  }
  return true;
}

// Monotonic seconds, for the decision step's elapsed times.
double Seconds(absl::Time monotonic) {
  return absl::ToDoubleSeconds(monotonic - absl::UnixEpoch());
}

}  // namespace

Fleet::Fleet(Clock* clock, Store* store, BrokerMetrics* metrics, v1::SafetyParams safety)
    : clock_(clock), metrics_(metrics), safety_(std::move(safety)), policies_(store) {
  metrics_->SetVmSeriesSource(
      [this](const BrokerMetrics::VmSeriesEmit& emit) { CollectVmSeries(emit); });
}

Fleet::~Fleet() { metrics_->SetVmSeriesSource(nullptr); }

void Fleet::CollectVmSeries(const BrokerMetrics::VmSeriesEmit& emit) const {
  for (const auto& h : AllHosts()) {
    absl::ReaderMutexLock lock(&h->mu);
    for (const auto& [id, s] : h->step.vms) {
      auto it = h->vms.find(id);
      if (it == h->vms.end()) continue;
      BrokerMetrics::VmSeries series;
      series.target_bytes = static_cast<double>(s.decision.target_bytes);
      series.actual_bytes = static_cast<double>(s.actual_bytes);
      series.demand_bytes = static_cast<double>(s.demand.demand_bytes);
      series.floor_bytes = static_cast<double>(s.decision.floor_bytes);
      series.balloon_healthy = s.balloon_healthy ? 1 : 0;
      series.max_bytes = static_cast<double>(s.max_bytes);
      series.stats_untrusted = it->second.sample.stats().untrusted() ? 1 : 0;
      series.reason = static_cast<int>(s.decision.reason);
      series.counters = it->second.counters;
      emit(h->host_id, it->second.metric_name, series);
    }
  }
}

absl::Status Fleet::Load(const v1::ClusterPolicy& initial) { return policies_.Load(initial); }

std::shared_ptr<Fleet::HostState> Fleet::FindHost(const std::string& host_id) const {
  absl::ReaderMutexLock lock(&hosts_mu_);
  auto it = hosts_.find(host_id);
  return it == hosts_.end() ? nullptr : it->second;
}

std::vector<std::shared_ptr<Fleet::HostState>> Fleet::AllHosts() const {
  absl::ReaderMutexLock lock(&hosts_mu_);
  std::vector<std::shared_ptr<HostState>> out;
  out.reserve(hosts_.size());
  for (const auto& [id, h] : hosts_) out.push_back(h);
  return out;
}

absl::StatusOr<uint64_t> Fleet::Connect(const v1::Hello& hello, BrokerMessageSink sink,
                                        v1::Welcome* welcome) {
  RETURN_IF_ERROR(ValidateHello(hello));
  std::shared_ptr<HostState> host;
  uint64_t conn;
  std::shared_ptr<const PolicySnapshot> policies = policies_.Snapshot();
  bool was_connected = false;
  // Twice at most: a host expired between the lookup and its lock is
  // replaced by a new one on the second pass.
  for (int pass = 0;; ++pass) {
    {
      absl::MutexLock lock(&hosts_mu_);
      auto& slot = hosts_[hello.host_id()];
      if (!slot || slot->expired.load()) {
        slot = std::make_shared<HostState>();
        slot->host_id = hello.host_id();
        slot->series = metrics_->AddHost(hello.host_id());
      }
      host = slot;
      conn = next_conn_++;
    }
    absl::MutexLock lock(&host->mu);
    if (host->expired.load() && pass == 0) continue;
    was_connected = host->connected;
    if (was_connected) {
      spdlog::warn("host {}: a new stream replaces the open one", hello.host_id());
    }
    host->connected = true;
    host->conn = conn;
    host->hello = hello;
    host->step.capacity_bytes = hello.capacity_bytes();
    if (reservations_) {
      host->step.reserved_bytes = reservations_->ReservedBytes(hello.host_id());
      host->series.reserved->Set(static_cast<double>(host->step.reserved_bytes));
    }
    host->sequence = 0;  // a new agent process starts its sequence again
    host->sink = std::move(sink);
    host->changes.fetch_add(1, std::memory_order_relaxed);
    // Targets of the previous connection are forgotten: the agent reports
    // what it has, and the first decision starts from there.
    policy::ForgetDecisions(host->step);
    if (!was_connected) metrics_->ConnectedAgentsChanged(+1);
    break;
  }
  *welcome->mutable_report_interval() = ToProtoDuration(policies->report_interval);
  *welcome->mutable_safety() = safety_;
  welcome->set_broker_version(MB_VERSION);
  spdlog::info("host {} connected (backend {}, capacity {})", hello.host_id(), hello.backend(),
               FormatBytes(hello.capacity_bytes()));
  return conn;
}

void Fleet::Disconnect(const std::string& host_id, uint64_t conn) {
  std::shared_ptr<HostState> host = FindHost(host_id);
  if (!host) return;
  {
    absl::MutexLock lock(&host->mu);
    if (host->conn != conn || !host->connected) return;
    host->connected = false;
    host->disconnected_at = clock_->MonotonicNow();
    host->sink = nullptr;
    metrics_->ConnectedAgentsChanged(-1);
    host->changes.fetch_add(1, std::memory_order_relaxed);
  }
  spdlog::info("host {} disconnected", host_id);
}

absl::Status Fleet::Report(const std::string& host_id, uint64_t conn,
                           const v1::HostReport& report) {
  const absl::Time received = clock_->Now();
  absl::Status valid = ValidateReport(report);
  if (!valid.ok()) {
    metrics_->ReportRejected("invalid");
    return valid;
  }
  std::shared_ptr<HostState> host = FindHost(host_id);
  if (!host) return absl::FailedPreconditionError("report before hello");
  // One snapshot of every policy for this report and its decision.
  std::shared_ptr<const PolicySnapshot> policies = policies_.Snapshot();
  std::vector<std::string> problems;
  const policy::HostObservation obs = ToHostObservation(report, Seconds(clock_->MonotonicNow()),
                                                        policies->report_interval, &problems);

  absl::ReleasableMutexLock lock(&host->mu);
  if (host->conn != conn || !host->connected) {
    metrics_->ReportRejected("superseded");
    return absl::FailedPreconditionError("this stream was replaced by a newer one for the host");
  }
  if (report.capacity_bytes() != 0 && host->hello.host_total_bytes() != 0 &&
      report.capacity_bytes() > host->hello.host_total_bytes()) {
    metrics_->ReportRejected("invalid");
    return absl::InvalidArgumentError("report.capacity_bytes: above the host's memory");
  }
  if (report.sequence() <= host->sequence) {
    metrics_->ReportRejected("stale_sequence");
    return absl::OkStatus();
  }
  host->sequence = report.sequence();
  host->last_report = received;
  host->sample = report.host();
  host->series.reports_received->Increment();

  const policy::ObserveResult changes = policy::ObserveHost(obs, policies->set.demand, host->step);
  if (reservations_ && !changes.added.empty() && reservations_->HandOver(host_id, changes.added)) {
    // A VM started with its reservation: its memory is now its own.
    host->step.reserved_bytes = reservations_->ReservedBytes(host_id);
    host->series.reserved->Set(static_cast<double>(host->step.reserved_bytes));
  }
  for (const std::string& id : changes.removed) {
    auto it = host->vms.find(id);
    if (it == host->vms.end()) continue;
    host->metric_names.erase(it->second.metric_name);
    host->vms.erase(it);
  }
  for (int i = 0; i < report.vms_size(); ++i) {
    const v1::VmSample& s = report.vms(i);
    auto [it, inserted] = host->vms.try_emplace(s.vm_id());
    VmView& vm = it->second;
    if (inserted) {
      // The VM's label is its name, or its id when the name is empty or
      // already labels another VM of this host.
      vm.metric_name =
          s.name().empty() || host->metric_names.count(s.name()) ? s.vm_id() : s.name();
      host->metric_names.insert(vm.metric_name);
    }
    vm.sample = s;
    if (!problems[i].empty() && !s.stats().untrusted()) {
      vm.sample.mutable_stats()->set_untrusted(true);
      vm.sample.mutable_stats()->set_untrusted_reason(problems[i]);
    }
  }
  // Guest OOM kills this report showed (once per report, not per
  // decision: a policy change decides again without a new report).
  for (const auto& [id, s] : host->step.vms) {
    if (!s.demand.oom) continue;
    auto it = host->vms.find(id);
    const std::string& name =
        it == host->vms.end() || it->second.sample.name().empty() ? id : it->second.sample.name();
    spdlog::warn(
        "VM {} on host {}: guest OOM kill ({}) at {}; demand kept at least {} for the "
        "OOM hold ({:.0f} s)",
        name, host_id, s.demand.oom_inferred ? "inferred" : "reported by the guest",
        FormatBytes(s.demand.oom_size_bytes), FormatBytes(s.demand.oom_demand_bytes),
        policies->set.demand.oom_hold_seconds);
    (s.demand.oom_inferred ? host->series.guest_oom_inferred : host->series.guest_oom_reported)
        ->Increment();
  }
  DecideLocked(*host, *policies, received);
  lock.Release();
  if (reservations_) reservations_->OnReport(host_id);
  return absl::OkStatus();
}

void Fleet::DecideLocked(HostState& host, const PolicySnapshot& policies, absl::Time started) {
  const bool was_overcommitted =
      host.step.decision.overcommitted || !host.step.decision.pressure_unmet.empty();
  const bool changed = policy::DecideStep(policies.set, host.step);
  host.changes.fetch_add(1, std::memory_order_relaxed);
  const policy::HostDecision& now = host.step.decision;
  // Overcommitted as operators see it: the floors do not fit, or a guest
  // under acute pressure is short of its demand after every sacrifice.
  const bool overcommitted = now.overcommitted || !now.pressure_unmet.empty();
  if (overcommitted && !was_overcommitted) {
    // Once per episode: the host cannot hold its VMs' floors. Name the VMs
    // that hold it there, largest floor first.
    std::vector<std::pair<uint64_t, std::string>> holders;
    for (const auto& [id, s] : host.step.vms) {
      auto it = host.vms.find(id);
      const std::string& name =
          it == host.vms.end() || it->second.sample.name().empty() ? id : it->second.sample.name();
      holders.emplace_back(s.decision.floor_bytes,
                           absl::StrCat(name, " ", FormatBytes(s.decision.floor_bytes), " (",
                                        policy::FloorSourceName(s.input, s.decision), ")"));
    }
    std::sort(holders.rbegin(), holders.rend());
    std::string list;
    for (const auto& [bytes, text] : holders)
      absl::StrAppend(&list, list.empty() ? "" : ", ", text);
    std::string unmet;
    for (const std::string& id : now.pressure_unmet)
      absl::StrAppend(&unmet, unmet.empty() ? "" : ", ", id);
    spdlog::warn("host {} overcommitted: floors {} against usable {}{}{}; floors held by {}",
                 host.host_id, FormatBytes(now.floor_bytes), FormatBytes(now.usable_bytes),
                 unmet.empty() ? "" : "; short of demand under acute pressure: ", unmet, list);
    host.series.overcommit_episodes->Increment();
  } else if (!overcommitted && was_overcommitted) {
    spdlog::info("host {}: floors fit again", host.host_id);
  }
  if (now.margin_lent_bytes > 0) host.series.margin_lent->Increment();
  if (now.floors_yielded) host.series.floors_yielded->Increment();
  // The per-VM series are read at scrape time (CollectVmSeries); only the
  // guests' counters accumulate here.
  uint64_t reclaimed_bytes = 0;
  uint64_t guest_free_on_host_bytes = 0;
  for (const auto& [id, s] : host.step.vms) {
    auto it = host.vms.find(id);
    if (it == host.vms.end()) continue;
    VmView& vm = it->second;
    BrokerMetrics::UpdateVmCounters(vm.counters, vm.sample);
    reclaimed_bytes += s.max_bytes - std::min(s.max_bytes, s.decision.target_bytes);
    guest_free_on_host_bytes += GuestFreeOnHostBytes(vm.sample);
  }
  BrokerMetrics::UpdateHost(host.series, host.sample, reclaimed_bytes, guest_free_on_host_bytes);
  const policy::HostDecision& decision = host.step.decision;
  host.series.capacity->Set(static_cast<double>(host.step.capacity_bytes));
  host.series.target->Set(static_cast<double>(decision.target_bytes));
  host.series.overcommitted->Set(overcommitted ? 1 : 0);
  host.series.pressure->Set(host.sample.psi_some_avg10_percent() / 100.0);
  if (!changed) return;
  ++host.generation;
  // The targets are built once, moved to the agent's sink, and copied into
  // a Decision only when someone watches.
  v1::BrokerMessage msg;
  v1::TargetSet* ts = msg.mutable_targets();
  ts->set_generation(host.generation);
  ts->set_report_sequence(host.sequence);
  *ts->mutable_decided_at() = ToProtoTimestamp(clock_->Now());
  ts->mutable_targets()->Reserve(static_cast<int>(host.step.vms.size()));
  for (const auto& [id, s] : host.step.vms) {
    v1::VmTarget* t = ts->add_targets();
    t->set_vm_id(id);
    t->set_target_bytes(s.decision.target_bytes);
    t->set_reason(ToProtoReason(s.decision.reason));
  }
  if (watcher_count_.load(std::memory_order_relaxed) > 0) {
    v1::Decision record;
    record.set_host_id(host.host_id);
    record.set_generation(host.generation);
    *record.mutable_decided_at() = ts->decided_at();
    record.set_overcommitted(overcommitted);
    *record.mutable_targets() = ts->targets();
    absl::MutexLock wlock(&watch_mu_);
    for (const auto& [wid, w] : watchers_) {
      if (w.first.empty() || w.first == host.host_id) w.second(record);
    }
  }
  if (host.connected && host.sink) {
    host.sink(std::move(msg));
    host.series.targets_pushed->Increment();
    metrics_->ObserveDecisionLatency(absl::ToDoubleSeconds(clock_->Now() - started));
  }
}

absl::Status Fleet::Ack(const std::string& host_id, uint64_t conn, const v1::TargetAck& ack) {
  std::shared_ptr<HostState> host = FindHost(host_id);
  if (!host) return absl::FailedPreconditionError("ack before hello");
  absl::MutexLock lock(&host->mu);
  if (host->conn != conn) return absl::FailedPreconditionError("stream replaced");
  if (absl::Status valid = ValidateAck(ack); !valid.ok()) {
    metrics_->ReportRejected("invalid_ack");
    return valid;
  }
  if (ack.generation() > host->generation) {
    return absl::InvalidArgumentError(absl::StrCat(
        "ack.generation: ", ack.generation(), " was never sent (last ", host->generation, ")"));
  }
  if (ack.generation() > host->acked_generation) {
    host->changes.fetch_add(1, std::memory_order_relaxed);
  }
  host->acked_generation = std::max(host->acked_generation, ack.generation());
  if (ack.errors_size() > 0) {
    // One line per ack, naming a few VMs; at most a burst per host.
    uint64_t suppressed = 0;
    if (log_limiter_.Allow(absl::StrCat("ack/", host_id), &suppressed)) {
      std::vector<std::pair<std::string, std::string>> errors(ack.errors().begin(),
                                                              ack.errors().end());
      std::sort(errors.begin(), errors.end());
      spdlog::warn("host {}: generation {}: {} target(s) not applied: {}{}", host_id,
                   ack.generation(), errors.size(), SummarizeItems(errors),
                   suppressed ? absl::StrCat(" (", suppressed, " similar lines suppressed)") : "");
    }
  }
  return absl::OkStatus();
}

size_t Fleet::ExpireHosts(absl::Duration after) {
  const absl::Time now = clock_->MonotonicNow();
  size_t expired = 0;
  for (const std::shared_ptr<HostState>& host : AllHosts()) {
    {
      absl::MutexLock lock(&host->mu);
      // conn == 0: created by a Connect that has not finished yet.
      if (host->connected || host->conn == 0 || host->expired.load() ||
          now - host->disconnected_at < after) {
        continue;
      }
      host->expired.store(true);
    }
    absl::MutexLock lock(&hosts_mu_);
    auto it = hosts_.find(host->host_id);
    if (it == hosts_.end() || it->second != host) continue;  // replaced meanwhile
    hosts_.erase(it);
    metrics_->RemoveHost(host->host_id);
    ++expired;
    spdlog::info("host {}: forgotten after {} disconnected", host->host_id,
                 absl::FormatDuration(after));
  }
  return expired;
}

void Fleet::Redecide(const std::shared_ptr<HostState>& host) {
  std::shared_ptr<const PolicySnapshot> policies = policies_.Snapshot();
  absl::MutexLock lock(&host->mu);
  if (host->step.vms.empty()) return;
  DecideLocked(*host, *policies, clock_->Now());
}

absl::StatusOr<v1::VmPolicy> Fleet::SetVmPolicy(const std::string& vm, const v1::VmPolicy& policy,
                                                bool merge, const std::string& actor) {
  RETURN_IF_ERROR(ValidateVmPolicy(policy));
  std::shared_ptr<HostState> host;
  std::string vm_id;
  auto found = ResolveVm(vm);
  if (found.ok()) {
    host = found->first;
    vm_id = found->second;
  } else if (absl::IsNotFound(found.status()) && LooksLikeUuid(vm)) {
    vm_id = vm;  // not seen yet: the policy waits for it
  } else {
    return found.status();
  }
  ASSIGN_OR_RETURN(v1::VmPolicy stored,
                   policies_.SetVmPolicy(vm_id, policy, merge, {actor, clock_->Now()}));
  if (host) Redecide(host);
  return stored;
}

absl::Status Fleet::ClearVmPolicy(const std::string& vm, const std::string& actor) {
  std::shared_ptr<HostState> host;
  std::string vm_id;
  auto found = ResolveVm(vm);
  if (found.ok()) {
    host = found->first;
    vm_id = found->second;
  } else {
    if (!absl::IsNotFound(found.status()) || policies_.Snapshot()->vm_policies.count(vm) == 0) {
      return found.status();
    }
    vm_id = vm;
  }
  RETURN_IF_ERROR(policies_.ClearVmPolicy(vm_id, {actor, clock_->Now()}));
  if (host) Redecide(host);
  return absl::OkStatus();
}

v1::ClusterPolicy Fleet::GetClusterPolicy() const { return policies_.Snapshot()->cluster; }

absl::StatusOr<v1::ClusterPolicy> Fleet::SetClusterPolicy(const v1::ClusterPolicy& update,
                                                          const std::string& actor) {
  ASSIGN_OR_RETURN(v1::ClusterPolicy next,
                   policies_.SetClusterPolicy(update, {actor, clock_->Now()}));
  for (const auto& h : AllHosts()) Redecide(h);
  return next;
}

void Fleet::AttachReservations(Reservations* reservations) { reservations_ = reservations; }

void Fleet::RefreshReserved(const std::string& host_id) {
  std::shared_ptr<HostState> host = FindHost(host_id);
  if (!host || !reservations_) return;
  std::shared_ptr<const PolicySnapshot> policies = policies_.Snapshot();
  absl::MutexLock lock(&host->mu);
  host->step.reserved_bytes = reservations_->ReservedBytes(host_id);
  host->series.reserved->Set(static_cast<double>(host->step.reserved_bytes));
  if (host->step.vms.empty()) return;
  DecideLocked(*host, *policies, clock_->Now());
}

absl::StatusOr<HostRoom> Fleet::GetRoom(const std::string& host_id) const {
  std::shared_ptr<HostState> host = FindHost(host_id);
  if (!host)
    return absl::NotFoundError(absl::StrCat("host \"", QuoteInput(host_id), "\" is not known"));
  absl::MutexLock lock(&host->mu);
  HostRoom room;
  room.connected = host->connected;
  room.report_sequence = host->sequence;
  room.capacity_bytes = host->step.capacity_bytes;
  room.reserved_bytes = host->step.reserved_bytes;
  for (const auto& [id, s] : host->step.vms) {
    room.actual_bytes += s.actual_bytes;
    auto it = host->vms.find(id);
    const std::string& name =
        it == host->vms.end() || it->second.sample.name().empty() ? id : it->second.sample.name();
    if (!s.decided) continue;
    // A default floor yields under pressure (sacrifice b): only what the
    // guest uses holds then.
    std::string why = policy::FloorSourceName(s.input, s.decision);
    uint64_t held = s.decision.floor_bytes;
    if (why == "default min") {
      why = "protect";
      held = std::min(s.input.protect_bytes, s.input.max_bytes);
    }
    if (held > 0) {
      room.holds.push_back({name, held, why});
      room.held_bytes += held;
    }
    if (s.actual_bytes > s.decision.target_bytes) {
      room.moving.push_back(absl::StrCat(name, " (actual ", FormatBytes(s.actual_bytes),
                                         ", target ", FormatBytes(s.decision.target_bytes),
                                         s.balloon_healthy ? ")" : ", balloon not moving)"));
    }
  }
  std::sort(room.holds.begin(), room.holds.end(),
            [](const HostRoom::Hold& a, const HostRoom::Hold& b) { return a.bytes > b.bytes; });
  return room;
}

uint64_t Fleet::Watch(const std::string& host_filter, DecisionSink sink) {
  absl::MutexLock lock(&watch_mu_);
  const uint64_t id = next_watch_++;
  watchers_[id] = {host_filter, std::move(sink)};
  watcher_count_.store(watchers_.size(), std::memory_order_relaxed);
  return id;
}

void Fleet::Unwatch(uint64_t id) {
  absl::MutexLock lock(&watch_mu_);
  watchers_.erase(id);
  watcher_count_.store(watchers_.size(), std::memory_order_relaxed);
}

size_t Fleet::WatcherCount() const {
  absl::MutexLock lock(&watch_mu_);
  return watchers_.size();
}

}  // namespace membroker::broker

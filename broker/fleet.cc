#include "broker/fleet.h"

#include <algorithm>
#include <cctype>

#include <spdlog/spdlog.h>

#include "absl/strings/str_cat.h"
#include "broker/policy/explain.h"
#include "broker/policy_config.h"
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
    : clock_(clock), metrics_(metrics), safety_(std::move(safety)), policies_(store) {}

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

void Fleet::UpdateConnectedGauge() {
  absl::ReaderMutexLock lock(&hosts_mu_);
  metrics_->SetConnectedAgents(connected_);
}

absl::StatusOr<uint64_t> Fleet::Connect(const v1::Hello& hello, BrokerMessageSink sink,
                                        v1::Welcome* welcome) {
  RETURN_IF_ERROR(ValidateHello(hello));
  std::shared_ptr<HostState> host;
  uint64_t conn;
  {
    absl::MutexLock lock(&hosts_mu_);
    auto& slot = hosts_[hello.host_id()];
    if (!slot) {
      slot = std::make_shared<HostState>();
      slot->host_id = hello.host_id();
      slot->series = metrics_->AddHost(hello.host_id());
    }
    host = slot;
    conn = next_conn_++;
  }
  std::shared_ptr<const PolicySnapshot> policies = policies_.Snapshot();
  bool was_connected;
  {
    absl::MutexLock lock(&host->mu);
    was_connected = host->connected;
    if (was_connected) {
      spdlog::warn("host {}: a new stream replaces the open one", hello.host_id());
    }
    host->connected = true;
    host->conn = conn;
    host->hello = hello;
    host->step.capacity_bytes = hello.capacity_bytes();
    host->sequence = 0;  // a new agent process starts its sequence again
    host->sink = std::move(sink);
    // Targets of the previous connection are forgotten: the agent reports
    // what it has, and the first decision starts from there.
    policy::ForgetDecisions(host->step);
  }
  if (!was_connected) {
    absl::MutexLock lock(&hosts_mu_);
    ++connected_;
  }
  *welcome->mutable_report_interval() = ToProtoDuration(policies->report_interval);
  *welcome->mutable_safety() = safety_;
  welcome->set_broker_version(MB_VERSION);
  UpdateConnectedGauge();
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
    host->sink = nullptr;
  }
  {
    absl::MutexLock lock(&hosts_mu_);
    --connected_;
  }
  UpdateConnectedGauge();
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
  const policy::HostObservation obs =
      ToHostObservation(report, Seconds(clock_->MonotonicNow()), policies->report_interval,
                        &problems);

  absl::MutexLock lock(&host->mu);
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
  for (const std::string& id : changes.removed) {
    auto it = host->vms.find(id);
    if (it == host->vms.end()) continue;
    metrics_->RemoveVm(host_id, it->second.metric_name);
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
      vm.metric_name = s.name().empty() || host->metric_names.count(s.name()) ? s.vm_id() : s.name();
      host->metric_names.insert(vm.metric_name);
      vm.gauges = metrics_->AddVm(host_id, vm.metric_name);
    }
    vm.sample = s;
    if (!problems[i].empty() && !s.stats().untrusted()) {
      vm.sample.mutable_stats()->set_untrusted(true);
      vm.sample.mutable_stats()->set_untrusted_reason(problems[i]);
    }
  }
  DecideLocked(*host, *policies, received);
  return absl::OkStatus();
}

void Fleet::DecideLocked(HostState& host, const PolicySnapshot& policies, absl::Time started) {
  const bool was_overcommitted =
      host.step.decision.overcommitted || !host.step.decision.pressure_unmet.empty();
  const bool changed = policy::DecideStep(policies.set, host.step);
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
      const std::string& name = it == host.vms.end() || it->second.sample.name().empty()
                                    ? id
                                    : it->second.sample.name();
      holders.emplace_back(s.decision.floor_bytes,
                           absl::StrCat(name, " ", FormatBytes(s.decision.floor_bytes), " (",
                                        policy::FloorSourceName(s.input, s.decision), ")"));
    }
    std::sort(holders.rbegin(), holders.rend());
    std::string list;
    for (const auto& [bytes, text] : holders) absl::StrAppend(&list, list.empty() ? "" : ", ", text);
    std::string unmet;
    for (const std::string& id : now.pressure_unmet) absl::StrAppend(&unmet, unmet.empty() ? "" : ", ", id);
    spdlog::warn("host {} overcommitted: floors {} against usable {}{}{}; floors held by {}",
                 host.host_id, FormatBytes(now.floor_bytes), FormatBytes(now.usable_bytes),
                 unmet.empty() ? "" : "; short of demand under acute pressure: ", unmet, list);
    host.series.overcommit_episodes->Increment();
  } else if (!overcommitted && was_overcommitted) {
    spdlog::info("host {}: floors fit again", host.host_id);
  }
  if (now.margin_lent_bytes > 0) host.series.margin_lent->Increment();
  if (now.floors_yielded) host.series.floors_yielded->Increment();
  for (const auto& [id, s] : host.step.vms) {
    auto it = host.vms.find(id);
    if (it == host.vms.end()) continue;
    const VmView& vm = it->second;
    vm.gauges.target->Set(static_cast<double>(s.decision.target_bytes));
    vm.gauges.actual->Set(static_cast<double>(s.actual_bytes));
    vm.gauges.demand->Set(static_cast<double>(s.demand.demand_bytes));
    vm.gauges.floor->Set(static_cast<double>(s.decision.floor_bytes));
    vm.gauges.healthy->Set(s.balloon_healthy ? 1 : 0);
  }
  const policy::HostDecision& decision = host.step.decision;
  host.series.capacity->Set(static_cast<double>(host.step.capacity_bytes));
  host.series.target->Set(static_cast<double>(decision.target_bytes));
  host.series.overcommitted->Set(overcommitted ? 1 : 0);
  host.series.pressure->Set(host.sample.psi_some_avg10_percent() / 100.0);
  if (!changed) return;
  ++host.generation;
  v1::Decision record;
  record.set_host_id(host.host_id);
  record.set_generation(host.generation);
  *record.mutable_decided_at() = ToProtoTimestamp(clock_->Now());
  record.set_overcommitted(overcommitted);
  for (const auto& [id, s] : host.step.vms) {
    v1::VmTarget* t = record.add_targets();
    t->set_vm_id(id);
    t->set_target_bytes(s.decision.target_bytes);
    t->set_reason(ToProtoReason(s.decision.reason));
  }
  if (host.connected && host.sink) {
    v1::BrokerMessage msg;
    v1::TargetSet* ts = msg.mutable_targets();
    ts->set_generation(host.generation);
    *ts->mutable_targets() = record.targets();
    *ts->mutable_decided_at() = record.decided_at();
    host.sink(msg);
    host.series.targets_pushed->Increment();
    metrics_->ObserveDecisionLatency(absl::ToDoubleSeconds(clock_->Now() - started));
  }
  absl::MutexLock wlock(&watch_mu_);
  for (const auto& [wid, w] : watchers_) {
    if (w.first.empty() || w.first == host.host_id) w.second(record);
  }
}

absl::Status Fleet::Ack(const std::string& host_id, uint64_t conn, const v1::TargetAck& ack) {
  std::shared_ptr<HostState> host = FindHost(host_id);
  if (!host) return absl::FailedPreconditionError("ack before hello");
  absl::MutexLock lock(&host->mu);
  if (host->conn != conn) return absl::FailedPreconditionError("stream replaced");
  if (ack.generation() > host->generation) {
    return absl::InvalidArgumentError(absl::StrCat("ack.generation: ", ack.generation(),
                                                   " was never sent (last ", host->generation, ")"));
  }
  host->acked_generation = std::max(host->acked_generation, ack.generation());
  for (const auto& [vm, err] : ack.errors()) {
    spdlog::warn("host {}: target for VM {} not applied: {}", host_id, vm, err.substr(0, 200));
  }
  return absl::OkStatus();
}

void Fleet::Redecide(const std::shared_ptr<HostState>& host) {
  std::shared_ptr<const PolicySnapshot> policies = policies_.Snapshot();
  absl::MutexLock lock(&host->mu);
  if (host->step.vms.empty()) return;
  DecideLocked(*host, *policies, clock_->Now());
}

v1::Host Fleet::HostProtoLocked(const HostState& h) const {
  v1::Host out;
  out.set_host_id(h.host_id);
  out.set_connected(h.connected);
  out.set_backend(h.hello.backend());
  out.set_agent_version(h.hello.agent_version());
  out.set_capacity_bytes(h.step.capacity_bytes);
  *out.mutable_sample() = h.sample;
  out.set_vm_count(static_cast<uint32_t>(h.step.vms.size()));
  uint64_t actual = 0, demand = 0;
  for (const auto& [id, vm] : h.step.vms) {
    actual += vm.actual_bytes;
    demand += vm.demand.demand_bytes;
  }
  out.set_target_bytes(h.step.decision.target_bytes);
  out.set_floor_bytes(h.step.decision.floor_bytes);
  out.set_actual_bytes(actual);
  out.set_demand_bytes(demand);
  out.set_overcommitted(h.step.decision.overcommitted ||
                        !h.step.decision.pressure_unmet.empty());
  out.set_report_sequence(h.sequence);
  if (h.last_report != absl::InfinitePast()) {
    *out.mutable_last_report_time() = ToProtoTimestamp(h.last_report);
  }
  out.set_generation(h.generation);
  out.set_acked_generation(h.acked_generation);
  return out;
}

v1::Vm Fleet::VmProtoLocked(const HostState& h, const std::string& vm_id,
                            const PolicySnapshot& policies) const {
  const VmView& view = h.vms.at(vm_id);
  const policy::VmStepState& s = h.step.vms.at(vm_id);
  v1::Vm out;
  out.set_vm_id(vm_id);
  out.set_host_id(h.host_id);
  out.set_name(view.sample.name());
  out.set_max_bytes(view.sample.max_bytes());
  out.set_actual_bytes(view.sample.actual_bytes());
  out.set_target_bytes(s.decision.target_bytes);
  out.set_demand_bytes(s.demand.demand_bytes);
  out.set_floor_bytes(s.decision.floor_bytes);
  out.set_protect_bytes(s.demand.protect_bytes);
  out.set_health(view.sample.health());
  out.set_reason(ToProtoReason(s.decision.reason));
  *out.mutable_stats() = view.sample.stats();
  out.set_guest_used_bytes(s.demand.used_bytes);
  out.set_swap_in_bytes_per_second(s.demand.swap_in_bytes_per_second);
  out.set_major_faults_per_second(s.demand.major_faults_per_second);
  auto it = policies.vm_policies.find(vm_id);
  if (it != policies.vm_policies.end()) *out.mutable_policy() = it->second;
  return out;
}

std::vector<v1::Host> Fleet::ListHosts() const {
  std::vector<v1::Host> out;
  for (const auto& h : AllHosts()) {
    absl::MutexLock lock(&h->mu);
    out.push_back(HostProtoLocked(*h));
  }
  return out;
}

absl::StatusOr<v1::Host> Fleet::GetHost(const std::string& host_id) const {
  std::shared_ptr<HostState> h = FindHost(host_id);
  if (!h) return absl::NotFoundError(absl::StrCat("host \"", host_id, "\" is not known"));
  absl::MutexLock lock(&h->mu);
  return HostProtoLocked(*h);
}

absl::StatusOr<std::vector<v1::Vm>> Fleet::ListVms(const std::string& host_id) const {
  std::vector<std::shared_ptr<HostState>> hosts;
  if (host_id.empty()) {
    hosts = AllHosts();
  } else {
    std::shared_ptr<HostState> h = FindHost(host_id);
    if (!h) return absl::NotFoundError(absl::StrCat("host \"", host_id, "\" is not known"));
    hosts.push_back(h);
  }
  std::shared_ptr<const PolicySnapshot> policies = policies_.Snapshot();
  std::vector<v1::Vm> out;
  for (const auto& h : hosts) {
    absl::MutexLock lock(&h->mu);
    for (const auto& [id, vm] : h->vms) out.push_back(VmProtoLocked(*h, id, *policies));
  }
  return out;
}

absl::StatusOr<std::pair<std::shared_ptr<Fleet::HostState>, std::string>> Fleet::ResolveVm(
    const std::string& vm) const {
  if (vm.empty()) return absl::InvalidArgumentError("vm: must name a VM (id or name)");
  std::shared_ptr<HostState> by_name;
  std::string name_id;
  int name_matches = 0;
  for (const auto& h : AllHosts()) {
    absl::MutexLock lock(&h->mu);
    if (h->vms.count(vm)) return std::make_pair(h, vm);
    for (const auto& [id, state] : h->vms) {
      if (state.sample.name() == vm) {
        ++name_matches;
        by_name = h;
        name_id = id;
      }
    }
  }
  if (name_matches > 1) {
    return absl::FailedPreconditionError(
        absl::StrCat("VM name \"", vm, "\" is on ", name_matches, " hosts: use its id"));
  }
  if (name_matches == 1) return std::make_pair(by_name, name_id);
  return absl::NotFoundError(absl::StrCat("VM \"", vm, "\" is not known (no id or name matches)"));
}

absl::StatusOr<v1::Vm> Fleet::GetVm(const std::string& vm) const {
  ASSIGN_OR_RETURN(auto found, ResolveVm(vm));
  absl::MutexLock lock(&found.first->mu);
  if (found.first->vms.count(found.second) == 0) {
    return absl::NotFoundError(absl::StrCat("VM \"", vm, "\" left"));
  }
  return VmProtoLocked(*found.first, found.second, *policies_.Snapshot());
}

absl::StatusOr<v1::Explanation> Fleet::ExplainVm(const std::string& vm) const {
  ASSIGN_OR_RETURN(auto found, ResolveVm(vm));
  std::shared_ptr<const PolicySnapshot> policies = policies_.Snapshot();
  HostState& h = *found.first;
  absl::MutexLock lock(&h.mu);
  auto it = h.step.vms.find(found.second);
  if (it == h.step.vms.end() || h.vms.count(found.second) == 0) {
    return absl::NotFoundError(absl::StrCat("VM \"", vm, "\" left"));
  }
  const policy::VmStepState& s = it->second;
  if (!s.decided) {
    return absl::FailedPreconditionError(
        absl::StrCat("VM \"", vm, "\" has no decision yet (its host reconnected)"));
  }
  const policy::VmInput& in = s.input;
  const policy::VmDecision& d = s.decision;
  const v1::VmSample& sample = h.vms.at(found.second).sample;
  v1::Explanation e;
  *e.mutable_vm() = VmProtoLocked(h, found.second, *policies);
  e.set_capacity_bytes(h.step.capacity_bytes);
  e.set_host_floor_bytes(h.step.decision.floor_bytes);
  e.set_host_desired_bytes(h.step.decision.desired_bytes);
  e.set_min_bytes(in.min_bytes);
  e.set_max_bytes(in.max_bytes);
  e.set_protect_bytes(in.protect_bytes);
  e.set_floor_bytes(d.floor_bytes);
  e.set_demand_bytes(in.demand_bytes);
  e.set_desired_bytes(d.desired_bytes);
  e.set_share_bytes(d.share_bytes);
  e.set_target_bytes(d.target_bytes);
  e.set_weight(in.weight);
  e.set_effective_weight(d.effective_weight);
  e.set_reason(ToProtoReason(d.reason));
  policy::StatsNote note;
  note.trusted = !sample.stats().untrusted();
  note.untrusted_reason = sample.stats().untrusted_reason();
  note.total_bytes = sample.stats().total_bytes();
  note.available_bytes = sample.stats().available_bytes();
  note.health = v1::BalloonHealth_Name(sample.health());
  for (std::string& step : policy::ExplainSteps(h.host_id, h.step, s, note)) {
    e.add_steps(std::move(step));
  }
  return e;
}

absl::StatusOr<v1::VmPolicy> Fleet::SetVmPolicy(const std::string& vm,
                                                const v1::VmPolicy& policy, bool merge) {
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
  ASSIGN_OR_RETURN(v1::VmPolicy stored, policies_.SetVmPolicy(vm_id, policy, merge));
  if (host) Redecide(host);
  return stored;
}

absl::Status Fleet::ClearVmPolicy(const std::string& vm) {
  std::shared_ptr<HostState> host;
  std::string vm_id;
  auto found = ResolveVm(vm);
  if (found.ok()) {
    host = found->first;
    vm_id = found->second;
  } else {
    if (!absl::IsNotFound(found.status()) ||
        policies_.Snapshot()->vm_policies.count(vm) == 0) {
      return found.status();
    }
    vm_id = vm;
  }
  RETURN_IF_ERROR(policies_.ClearVmPolicy(vm_id));
  if (host) Redecide(host);
  return absl::OkStatus();
}

v1::ClusterPolicy Fleet::GetClusterPolicy() const { return policies_.Snapshot()->cluster; }

absl::StatusOr<v1::ClusterPolicy> Fleet::SetClusterPolicy(const v1::ClusterPolicy& update) {
  ASSIGN_OR_RETURN(v1::ClusterPolicy next, policies_.SetClusterPolicy(update));
  for (const auto& h : AllHosts()) Redecide(h);
  return next;
}

uint64_t Fleet::Watch(const std::string& host_filter, DecisionSink sink) {
  absl::MutexLock lock(&watch_mu_);
  const uint64_t id = next_watch_++;
  watchers_[id] = {host_filter, std::move(sink)};
  return id;
}

void Fleet::Unwatch(uint64_t id) {
  absl::MutexLock lock(&watch_mu_);
  watchers_.erase(id);
}

size_t Fleet::WatcherCount() const {
  absl::MutexLock lock(&watch_mu_);
  return watchers_.size();
}

}  // namespace membroker::broker

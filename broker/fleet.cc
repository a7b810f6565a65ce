#include "broker/fleet.h"

#include <algorithm>
#include <cctype>
#include <set>

#include <spdlog/spdlog.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "broker/policy_config.h"
#include "common/proto_time.h"
#include "common/status.h"
#include "common/units.h"

namespace membroker::broker {
namespace {

constexpr uint64_t kMiB = uint64_t{1} << 20;
constexpr uint64_t kMaxBytes = uint64_t{1} << 50;
constexpr int kMaxVmsPerHost = 10000;
// Guest statistics may report a little more than the balloon's size.
constexpr uint64_t kStatsSlackBytes = 64 * kMiB;

absl::Status ValidateId(absl::string_view field, absl::string_view id) {
  if (id.empty() || id.size() > 128) {
    return absl::InvalidArgumentError(absl::StrCat(field, ": must be 1..128 characters"));
  }
  for (char c : id) {
    if (!std::isprint(static_cast<unsigned char>(c)) || c == ' ') {
      return absl::InvalidArgumentError(
          absl::StrCat(field, ": must be printable ASCII without spaces"));
    }
  }
  return absl::OkStatus();
}

bool LooksLikeUuid(absl::string_view s) {
  if (s.size() != 36) return false;
  for (size_t i = 0; i < s.size(); ++i) {
    const bool dash = i == 8 || i == 13 || i == 18 || i == 23;
    if (dash ? s[i] != '-' : !std::isxdigit(static_cast<unsigned char>(s[i]))) return false;
  }
  return true;
}

bool Healthy(v1::BalloonHealth h) {
  return h != v1::BALLOON_HEALTH_STUCK && h != v1::BALLOON_HEALTH_NO_DRIVER;
}

// Whether the guest's statistics may be used for a decision, and if not why.
std::string StatsProblem(const v1::VmSample& s, absl::Duration interval) {
  const v1::GuestStats& g = s.stats();
  if (g.untrusted()) return g.untrusted_reason().empty() ? "flagged by agent" : g.untrusted_reason();
  if (!g.has_total_bytes() || !g.has_available_bytes()) return "total or available missing";
  if (g.total_bytes() == 0) return "total is 0";
  if (g.available_bytes() > g.total_bytes()) return "available above total";
  if (g.total_bytes() > s.max_bytes() + kStatsSlackBytes) return "total above the VM's max";
  if (g.has_age_seconds() && (g.age_seconds() < 0 || g.age_seconds() > 10 * absl::ToDoubleSeconds(interval))) {
    return "stale";
  }
  return "";
}

}  // namespace

absl::Status ValidateHello(const v1::Hello& hello) {
  absl::Status id = ValidateHostId(hello.host_id());
  if (!id.ok()) return absl::InvalidArgumentError(absl::StrCat("hello.", id.message()));
  if (hello.capacity_bytes() == 0 || hello.capacity_bytes() > kMaxBytes) {
    return absl::InvalidArgumentError(
        absl::StrCat("hello.capacity_bytes: must be in 1..", kMaxBytes));
  }
  if (hello.host_total_bytes() != 0 && hello.capacity_bytes() > hello.host_total_bytes()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "hello.capacity_bytes (", hello.capacity_bytes(), ") is above hello.host_total_bytes (",
        hello.host_total_bytes(), ")"));
  }
  if (hello.backend().size() > 64 || hello.agent_version().size() > 128) {
    return absl::InvalidArgumentError("hello.backend or hello.agent_version: too long");
  }
  return absl::OkStatus();
}

absl::Status ValidateReport(const v1::HostReport& report) {
  if (report.sequence() == 0) {
    return absl::InvalidArgumentError("report.sequence: must be > 0");
  }
  if (report.vms_size() > kMaxVmsPerHost) {
    return absl::InvalidArgumentError(
        absl::StrCat("report.vms: at most ", kMaxVmsPerHost, " VMs per host"));
  }
  if (report.capacity_bytes() > kMaxBytes) {
    return absl::InvalidArgumentError("report.capacity_bytes: out of range");
  }
  std::set<std::string> seen;
  for (int i = 0; i < report.vms_size(); ++i) {
    const v1::VmSample& vm = report.vms(i);
    const std::string field = absl::StrCat("report.vms[", i, "]");
    RETURN_IF_ERROR(ValidateId(field + ".vm_id", vm.vm_id()));
    if (!seen.insert(vm.vm_id()).second) {
      return absl::InvalidArgumentError(
          absl::StrCat(field, ".vm_id: duplicate id \"", vm.vm_id(), "\""));
    }
    if (vm.name().size() > 256) {
      return absl::InvalidArgumentError(absl::StrCat(field, ".name: at most 256 characters"));
    }
    if (vm.max_bytes() == 0 || vm.max_bytes() > kMaxBytes) {
      return absl::InvalidArgumentError(absl::StrCat(field, ".max_bytes: must be in 1..", kMaxBytes));
    }
    if (vm.actual_bytes() > vm.max_bytes()) {
      return absl::InvalidArgumentError(absl::StrCat(field, ".actual_bytes (", vm.actual_bytes(),
                                                     ") is above max_bytes (", vm.max_bytes(), ")"));
    }
    if (!v1::BalloonHealth_IsValid(vm.health())) {
      return absl::InvalidArgumentError(absl::StrCat(field, ".health: unknown value"));
    }
  }
  const v1::HostSample& h = report.host();
  if (h.mem_available_bytes() > h.mem_total_bytes() && h.mem_total_bytes() != 0) {
    return absl::InvalidArgumentError("report.host.mem_available_bytes: above mem_total_bytes");
  }
  for (double v : {h.psi_some_avg10_percent(), h.psi_full_avg10_percent()}) {
    if (!(v >= 0 && v <= 100)) {
      return absl::InvalidArgumentError("report.host.psi_*_avg10_percent: must be in 0..100");
    }
  }
  return absl::OkStatus();
}

Fleet::Fleet(Clock* clock, Store* store, BrokerMetrics* metrics, v1::SafetyParams safety)
    : clock_(clock), store_(store), metrics_(metrics), safety_(std::move(safety)) {}

absl::Status Fleet::Load(const v1::ClusterPolicy& initial) {
  RETURN_IF_ERROR(ValidateClusterPolicy(initial));
  ASSIGN_OR_RETURN(std::optional<v1::ClusterPolicy> stored, store_->LoadClusterPolicy());
  ASSIGN_OR_RETURN(auto vm_policies, store_->LoadVmPolicies());
  v1::ClusterPolicy policy;
  if (stored.has_value()) {
    policy = MergeClusterPolicy(DefaultClusterPolicy(), *stored);
    RETURN_IF_ERROR(ValidateClusterPolicy(policy));
  } else {
    policy = MergeClusterPolicy(DefaultClusterPolicy(), initial);
    RETURN_IF_ERROR(store_->SaveClusterPolicy(policy));
  }
  absl::MutexLock lock(&policy_mu_);
  cluster_policy_ = policy;
  vm_policies_ = std::move(vm_policies);
  return absl::OkStatus();
}

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
  int n = 0;
  for (const auto& h : AllHosts()) {
    absl::MutexLock lock(&h->mu);
    n += h->connected ? 1 : 0;
  }
  metrics_->SetConnectedAgents(n);
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
  v1::ClusterPolicy policy = GetClusterPolicy();
  {
    absl::MutexLock lock(&host->mu);
    if (host->connected) {
      spdlog::warn("host {}: a new stream replaces the open one", hello.host_id());
    }
    host->connected = true;
    host->conn = conn;
    host->hello = hello;
    host->capacity_bytes = hello.capacity_bytes();
    host->sequence = 0;  // a new agent process starts its sequence again
    host->sink = std::move(sink);
    // Targets of the previous connection are forgotten: the agent reports
    // what it has, and the first decision starts from there.
    for (auto& [id, vm] : host->vms) vm.decided = false;
  }
  *welcome->mutable_report_interval() = ToProtoDuration(ReportInterval(policy));
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
  absl::Duration interval;
  {
    absl::ReaderMutexLock lock(&policy_mu_);
    interval = ReportInterval(cluster_policy_);
  }
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
  if (report.capacity_bytes() != 0) host->capacity_bytes = report.capacity_bytes();
  host->series.reports_received->Increment();

  policy::DemandParams demand_params;
  {
    absl::ReaderMutexLock plock(&policy_mu_);
    demand_params = ToDemandParams(cluster_policy_);
  }
  std::set<std::string> present;
  for (const v1::VmSample& s : report.vms()) {
    present.insert(s.vm_id());
    auto [it, inserted] = host->vms.try_emplace(s.vm_id());
    VmState& vm = it->second;
    const double elapsed =
        inserted ? 0.0 : std::max(0.0, absl::ToDoubleSeconds(received - vm.sample_time));
    vm.sample = s;
    vm.sample_time = received;
    if (inserted) {
      // The VM's label is its name, or its id when the name is empty or
      // already labels another VM of this host.
      vm.metric_name = s.name().empty() ? s.vm_id() : s.name();
      for (const auto& [other_id, other] : host->vms) {
        if (other_id != s.vm_id() && other.metric_name == vm.metric_name) {
          vm.metric_name = s.vm_id();
          break;
        }
      }
      vm.gauges = metrics_->AddVm(host_id, vm.metric_name);
    }
    const std::string problem = StatsProblem(s, interval);
    if (!problem.empty() && !s.stats().untrusted()) {
      vm.sample.mutable_stats()->set_untrusted(true);
      vm.sample.mutable_stats()->set_untrusted_reason(problem);
    }
    policy::GuestObservation obs;
    obs.stats_valid = problem.empty();
    obs.total_bytes = s.stats().total_bytes();
    obs.available_bytes = s.stats().available_bytes();
    obs.swap_in_bytes_total = s.stats().swap_in_bytes_total();
    obs.major_faults_total = s.stats().major_faults_total();
    obs.swap_out_bytes_total = s.stats().swap_out_bytes_total();
    obs.actual_bytes = s.actual_bytes();
    obs.max_bytes = s.max_bytes();
    obs.elapsed_seconds = elapsed;
    policy::UpdateDemand(obs, demand_params, vm.demand);
  }
  for (auto it = host->vms.begin(); it != host->vms.end();) {
    if (present.count(it->first) == 0) {
      metrics_->RemoveVm(host_id, it->second.metric_name);
      it = host->vms.erase(it);
    } else {
      ++it;
    }
  }
  DecideLocked(*host, received);
  return absl::OkStatus();
}

void Fleet::DecideLocked(HostState& host, absl::Time started) {
  policy::HostInput input;
  input.capacity_bytes = host.capacity_bytes;
  {
    absl::ReaderMutexLock plock(&policy_mu_);
    host.params = ToPolicyParams(cluster_policy_);
    for (const auto& [id, vm] : host.vms) {
      policy::VmInput in;
      in.vm_id = id;
      const v1::VmSample& s = vm.sample;
      auto pit = vm_policies_.find(id);
      const v1::VmPolicy* p = pit == vm_policies_.end() ? nullptr : &pit->second;
      in.max_bytes = s.max_bytes();
      if (p && p->has_max_bytes()) in.max_bytes = std::min(in.max_bytes, p->max_bytes());
      in.min_bytes = p && p->has_min_bytes() ? p->min_bytes() : host.params.default_min_bytes;
      in.weight = p && p->has_weight() ? p->weight() : host.params.default_weight;
      in.pinned = p && p->has_pinned() && p->pinned();
      in.balloon_healthy = Healthy(s.health());
      in.actual_bytes = s.actual_bytes();
      // Without a decision of its own yet (new VM, reconnected agent,
      // restarted broker) the VM's current size is the baseline, so memory
      // is still taken back in steps.
      in.previous_target_bytes = vm.decided ? vm.decision.target_bytes : s.actual_bytes();
      policy::SetDemandInputs(vm.demand, in);
      input.vms.push_back(std::move(in));
    }
  }
  policy::HostDecision decision = policy::DecideHost(input, host.params);
  bool changed = false;
  size_t i = 0;
  for (auto& [id, vm] : host.vms) {
    const policy::VmDecision& d = decision.vms[i];
    if (!vm.decided || vm.decision.target_bytes != d.target_bytes) changed = true;
    vm.input = input.vms[i];
    vm.decision = d;
    vm.decided = true;
    vm.gauges.target->Set(static_cast<double>(d.target_bytes));
    vm.gauges.actual->Set(static_cast<double>(vm.sample.actual_bytes()));
    vm.gauges.demand->Set(static_cast<double>(vm.demand.demand_bytes));
    vm.gauges.floor->Set(static_cast<double>(d.floor_bytes));
    vm.gauges.healthy->Set(input.vms[i].balloon_healthy ? 1 : 0);
    ++i;
  }
  host.decision = std::move(decision);
  host.series.capacity->Set(static_cast<double>(host.capacity_bytes));
  host.series.target->Set(static_cast<double>(host.decision.target_bytes));
  host.series.overcommitted->Set(host.decision.overcommitted ? 1 : 0);
  host.series.pressure->Set(host.sample.psi_some_avg10_percent() / 100.0);
  if (!changed) return;
  ++host.generation;
  v1::Decision record;
  record.set_host_id(host.host_id);
  record.set_generation(host.generation);
  *record.mutable_decided_at() = ToProtoTimestamp(clock_->Now());
  record.set_overcommitted(host.decision.overcommitted);
  for (const auto& [id, vm] : host.vms) {
    v1::VmTarget* t = record.add_targets();
    t->set_vm_id(id);
    t->set_target_bytes(vm.decision.target_bytes);
    t->set_reason(ToProtoReason(vm.decision.reason));
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
  absl::MutexLock lock(&host->mu);
  if (host->vms.empty()) return;
  DecideLocked(*host, clock_->Now());
}

v1::Host Fleet::HostProtoLocked(const HostState& h) const {
  v1::Host out;
  out.set_host_id(h.host_id);
  out.set_connected(h.connected);
  out.set_backend(h.hello.backend());
  out.set_agent_version(h.hello.agent_version());
  out.set_capacity_bytes(h.capacity_bytes);
  *out.mutable_sample() = h.sample;
  out.set_vm_count(static_cast<uint32_t>(h.vms.size()));
  uint64_t actual = 0, demand = 0;
  for (const auto& [id, vm] : h.vms) {
    actual += vm.sample.actual_bytes();
    demand += vm.demand.demand_bytes;
  }
  out.set_target_bytes(h.decision.target_bytes);
  out.set_floor_bytes(h.decision.floor_bytes);
  out.set_actual_bytes(actual);
  out.set_demand_bytes(demand);
  out.set_overcommitted(h.decision.overcommitted);
  out.set_report_sequence(h.sequence);
  if (h.last_report != absl::InfinitePast()) {
    *out.mutable_last_report_time() = ToProtoTimestamp(h.last_report);
  }
  out.set_generation(h.generation);
  out.set_acked_generation(h.acked_generation);
  return out;
}

v1::Vm Fleet::VmProtoLocked(const HostState& h, const VmState& vm) const {
  v1::Vm out;
  out.set_vm_id(vm.sample.vm_id());
  out.set_host_id(h.host_id);
  out.set_name(vm.sample.name());
  out.set_max_bytes(vm.sample.max_bytes());
  out.set_actual_bytes(vm.sample.actual_bytes());
  out.set_target_bytes(vm.decision.target_bytes);
  out.set_demand_bytes(vm.demand.demand_bytes);
  out.set_floor_bytes(vm.decision.floor_bytes);
  out.set_protect_bytes(vm.demand.protect_bytes);
  out.set_health(vm.sample.health());
  out.set_reason(ToProtoReason(vm.decision.reason));
  *out.mutable_stats() = vm.sample.stats();
  out.set_guest_used_bytes(vm.demand.used_bytes);
  out.set_swap_in_bytes_per_second(vm.demand.swap_in_bytes_per_second);
  out.set_major_faults_per_second(vm.demand.major_faults_per_second);
  absl::ReaderMutexLock plock(&policy_mu_);
  auto it = vm_policies_.find(vm.sample.vm_id());
  if (it != vm_policies_.end()) *out.mutable_policy() = it->second;
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
  std::vector<v1::Vm> out;
  for (const auto& h : hosts) {
    absl::MutexLock lock(&h->mu);
    for (const auto& [id, vm] : h->vms) out.push_back(VmProtoLocked(*h, vm));
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
  auto it = found.first->vms.find(found.second);
  if (it == found.first->vms.end()) return absl::NotFoundError(absl::StrCat("VM \"", vm, "\" left"));
  return VmProtoLocked(*found.first, it->second);
}

absl::StatusOr<v1::Explanation> Fleet::ExplainVm(const std::string& vm) const {
  ASSIGN_OR_RETURN(auto found, ResolveVm(vm));
  HostState& h = *found.first;
  absl::MutexLock lock(&h.mu);
  auto it = h.vms.find(found.second);
  if (it == h.vms.end()) return absl::NotFoundError(absl::StrCat("VM \"", vm, "\" left"));
  const VmState& s = it->second;
  if (!s.decided) {
    return absl::FailedPreconditionError(
        absl::StrCat("VM \"", vm, "\" has no decision yet (its host reconnected)"));
  }
  const policy::VmInput& in = s.input;
  const policy::VmDecision& d = s.decision;
  const policy::PolicyParams& p = h.params;
  v1::Explanation e;
  *e.mutable_vm() = VmProtoLocked(h, s);
  e.set_capacity_bytes(h.capacity_bytes);
  e.set_host_floor_bytes(h.decision.floor_bytes);
  e.set_host_desired_bytes(h.decision.desired_bytes);
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
  auto B = [](uint64_t b) { return FormatBytes(b); };
  const v1::GuestStats& g = s.sample.stats();
  if (g.untrusted()) {
    e.add_steps(absl::StrCat("0. guest statistics not used: ", g.untrusted_reason(),
                             "; demand kept at ", B(in.demand_bytes)));
  } else {
    e.add_steps(absl::StrCat("0. guest used = total ", B(g.total_bytes()), " - available ",
                             B(g.available_bytes()), " = ", B(s.demand.used_bytes),
                             "; demand estimate ", B(in.demand_bytes),
                             s.demand.pressure ? " (raised: guest is swapping)" : ""));
  }
  if (in.pinned) {
    e.add_steps(absl::StrCat("1. pinned by policy: floor = max = ", B(d.floor_bytes)));
  } else if (!in.balloon_healthy) {
    e.add_steps(absl::StrCat("1. balloon unhealthy (", v1::BalloonHealth_Name(s.sample.health()),
                             "): floor = current size ", B(d.floor_bytes),
                             ", nothing is reclaimed"));
  } else {
    e.add_steps(absl::StrCat("1. floor = clamp(max(min ", B(in.min_bytes), ", protect ",
                             B(in.protect_bytes), "), 0, max ", B(in.max_bytes), ") = ",
                             B(d.floor_bytes)));
  }
  e.add_steps(absl::StrFormat("2. desired = clamp(demand %s x (1 + %.0f%%), floor, max) = %s",
                              B(in.demand_bytes), p.buffer_percent, B(d.desired_bytes)));
  const uint64_t usable = h.capacity_bytes > p.host_free_margin_bytes
                              ? h.capacity_bytes - p.host_free_margin_bytes
                              : 0;
  const std::string host_line = absl::StrCat(
      "host ", h.host_id, ": capacity ", B(h.capacity_bytes), " - free margin ",
      B(p.host_free_margin_bytes), " = ", B(usable), "; sum of desired ",
      B(h.decision.desired_bytes), ", sum of floors ", B(h.decision.floor_bytes));
  if (h.decision.overcommitted) {
    e.add_steps(absl::StrCat("3. ", host_line, ": even the floors do not fit; host overcommitted, "
                             "every VM kept at its floor"));
  } else if (h.decision.desired_bytes <= usable) {
    e.add_steps(absl::StrCat("3. ", host_line, ": everything fits; share = desired + surplus by "
                             "weight = ", B(d.share_bytes)));
  } else {
    e.add_steps(absl::StrFormat(
        "3. %s: memory is short; %s above the floors shared by weight (weight %u, after idle tax "
        "%.0f%%: %.1f) -> share %s",
        host_line, B(usable - h.decision.floor_bytes), in.weight, p.idle_tax_percent,
        d.effective_weight, B(d.share_bytes)));
  }
  std::string smooth;
  if (d.target_bytes == d.share_bytes) {
    smooth = absl::StrCat("target = share = ", B(d.target_bytes));
  } else if (d.reason == policy::Reason::kStepLimit) {
    smooth = absl::StrCat("previous target ", B(in.previous_target_bytes),
                          "; reclaim limited to a step of ", B(p.reclaim_step_bytes),
                          " per interval (or growth waits for it): target ", B(d.target_bytes));
  } else {
    const uint64_t band = policy::HysteresisBand(
        std::min(std::max(in.previous_target_bytes, d.floor_bytes), in.max_bytes), p);
    smooth = absl::StrFormat(
        "change from previous %s inside the hysteresis band %s (max of %s and %.0f%% of the "
        "previous target): target stays %s",
        B(in.previous_target_bytes), B(band), B(p.hysteresis_bytes), p.hysteresis_percent,
        B(d.target_bytes));
  }
  e.add_steps(absl::StrCat("4. ", smooth, " (reason: ", policy::ReasonName(d.reason), ")"));
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
  v1::VmPolicy stored;
  {
    absl::MutexLock admin(&admin_mu_);
    v1::VmPolicy next = policy;
    if (merge) {
      absl::ReaderMutexLock plock(&policy_mu_);
      auto it = vm_policies_.find(vm_id);
      if (it != vm_policies_.end()) next = MergeVmPolicy(it->second, policy);
    }
    RETURN_IF_ERROR(ValidateVmPolicy(next));
    RETURN_IF_ERROR(store_->PutVmPolicy(vm_id, next));
    absl::MutexLock plock(&policy_mu_);
    vm_policies_[vm_id] = next;
    stored = next;
  }
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
    absl::ReaderMutexLock plock(&policy_mu_);
    if (!absl::IsNotFound(found.status()) || vm_policies_.count(vm) == 0) return found.status();
    vm_id = vm;
  }
  {
    absl::MutexLock admin(&admin_mu_);
    RETURN_IF_ERROR(store_->DeleteVmPolicy(vm_id));
    absl::MutexLock plock(&policy_mu_);
    vm_policies_.erase(vm_id);
  }
  if (host) Redecide(host);
  return absl::OkStatus();
}

v1::ClusterPolicy Fleet::GetClusterPolicy() const {
  absl::ReaderMutexLock plock(&policy_mu_);
  return cluster_policy_;
}

absl::StatusOr<v1::ClusterPolicy> Fleet::SetClusterPolicy(const v1::ClusterPolicy& update) {
  RETURN_IF_ERROR(ValidateClusterPolicy(update));
  v1::ClusterPolicy next;
  {
    absl::MutexLock admin(&admin_mu_);
    next = MergeClusterPolicy(GetClusterPolicy(), update);
    RETURN_IF_ERROR(ValidateClusterPolicy(next));
    RETURN_IF_ERROR(store_->SaveClusterPolicy(next));
    absl::MutexLock plock(&policy_mu_);
    cluster_policy_ = next;
  }
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

}  // namespace membroker::broker

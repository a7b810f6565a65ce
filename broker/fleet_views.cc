// The Fleet's admin reads: proto views of hosts and VMs, VM lookup by id
// or name, and explanations. Each holds one host's lock only while it
// copies that host's state.

#include <spdlog/spdlog.h>

#include "absl/strings/str_cat.h"
#include "broker/fleet.h"
#include "broker/policy/explain.h"
#include "broker/policy_config.h"
#include "common/log_limit.h"
#include "common/proto_time.h"
#include "common/status.h"
#include "common/units.h"

namespace membroker::broker {

v1::Host Fleet::HostProtoLocked(const HostState& h) const {
  v1::Host out;
  out.set_host_id(h.host_id);
  out.set_connected(h.connected);
  out.set_backend(h.hello.backend());
  out.set_agent_version(h.hello.agent_version());
  out.set_capacity_bytes(h.step.capacity_bytes);
  out.set_reserved_bytes(h.step.reserved_bytes);
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
  const policy::HostDecision& d = h.step.decision;
  out.set_overcommitted(d.overcommitted || !d.pressure_unmet.empty());
  if (out.overcommitted()) {
    auto name = [&](const std::string& id) {
      auto it = h.vms.find(id);
      return it == h.vms.end() || it->second.sample.name().empty() ? id : it->second.sample.name();
    };
    for (const std::string& id : d.pressure_unmet) {
      out.add_overcommitted_by(absl::StrCat(name(id), ": short of demand under acute pressure"));
    }
    if (d.overcommitted) {
      // Floors an operator or the balloon set (protect floors are what the
      // guests use: they hold the host only together with these).
      for (const auto& [id, vm] : h.step.vms) {
        const std::string source = policy::FloorSourceName(vm.input, vm.decision);
        if (source == "protect") continue;
        out.add_overcommitted_by(absl::StrCat(
            name(id), ": floor ", FormatBytes(vm.decision.floor_bytes), " (", source, ")"));
      }
    }
  }
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
  out.set_guest_oom_kills(s.demand.oom_kills_seen);
  out.set_sizing_mechanism(view.sample.sizing_mechanism());
  out.set_virtio_mem_plugged_bytes(view.sample.virtio_mem_plugged_bytes());
  out.set_balloon_inflated_bytes(view.sample.balloon_inflated_bytes());
  out.set_health_reason(view.sample.health_reason());
  out.set_free_page_reporting(view.sample.free_page_reporting());
  out.set_guest_free_on_host_bytes(GuestFreeOnHostBytes(view.sample));
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

std::vector<std::string> Fleet::HostIds() const {
  absl::ReaderMutexLock lock(&hosts_mu_);
  std::vector<std::string> out;
  out.reserve(hosts_.size());
  for (const auto& [id, h] : hosts_) out.push_back(id);
  return out;
}

absl::StatusOr<v1::Host> Fleet::GetHost(const std::string& host_id) const {
  std::shared_ptr<HostState> h = FindHost(host_id);
  if (!h)
    return absl::NotFoundError(absl::StrCat("host \"", QuoteInput(host_id), "\" is not known"));
  absl::MutexLock lock(&h->mu);
  return HostProtoLocked(*h);
}

absl::StatusOr<std::vector<v1::Vm>> Fleet::ListVms(const std::string& host_id) const {
  std::vector<std::shared_ptr<HostState>> hosts;
  if (host_id.empty()) {
    hosts = AllHosts();
  } else {
    std::shared_ptr<HostState> h = FindHost(host_id);
    if (!h)
      return absl::NotFoundError(absl::StrCat("host \"", QuoteInput(host_id), "\" is not known"));
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
    return absl::FailedPreconditionError(absl::StrCat("VM name \"", QuoteInput(vm), "\" is on ",
                                                      name_matches, " hosts: use its id"));
  }
  if (name_matches == 1) return std::make_pair(by_name, name_id);
  return absl::NotFoundError(
      absl::StrCat("VM \"", QuoteInput(vm), "\" is not known (no id or name matches)"));
}

absl::StatusOr<v1::Vm> Fleet::GetVm(const std::string& vm) const {
  ASSIGN_OR_RETURN(auto found, ResolveVm(vm));
  absl::MutexLock lock(&found.first->mu);
  if (found.first->vms.count(found.second) == 0) {
    return absl::NotFoundError(absl::StrCat("VM \"", QuoteInput(vm), "\" left"));
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
    return absl::NotFoundError(absl::StrCat("VM \"", QuoteInput(vm), "\" left"));
  }
  const policy::VmStepState& s = it->second;
  if (!s.decided) {
    return absl::FailedPreconditionError(
        absl::StrCat("VM \"", QuoteInput(vm), "\" has no decision yet (its host reconnected)"));
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
  if (!sample.health_reason().empty()) note.health += ": " + sample.health_reason();
  for (std::string& step : policy::ExplainSteps(h.host_id, h.step, s, note)) {
    e.add_steps(std::move(step));
  }
  if (!sample.sizing_mechanism().empty()) {
    e.add_steps(absl::StrCat("sizing (agent): ", sample.sizing_mechanism(), "; virtio-mem plugged ",
                             sample.virtio_mem_plugged_bytes(), " B, balloon holds ",
                             sample.balloon_inflated_bytes(), " B out"));
  }
  if (sample.free_page_reporting()) {
    e.add_steps(
        sample.has_host_rss_bytes()
            ? absl::StrCat("free page reporting: on; ", GuestFreeOnHostBytes(sample),
                           " B of the guest's memory is free and already back on the host "
                           "(actual ",
                           sample.actual_bytes(), " B, host RSS ", sample.host_rss_bytes(), " B)")
            : std::string("free page reporting: on (the agent does not read the VM's RSS)"));
  } else {
    e.add_steps(
        "free page reporting: off (memory the guest frees stays with it until the "
        "balloon takes it)");
  }
  return e;
}

}  // namespace membroker::broker

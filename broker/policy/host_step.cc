#include "broker/policy/host_step.h"

#include <algorithm>
#include <set>

namespace membroker::policy {

ObserveResult ObserveHost(const HostObservation& obs, const DemandParams& demand,
                          HostStepState& state) {
  ObserveResult result;
  if (obs.capacity_bytes != 0) state.capacity_bytes = obs.capacity_bytes;
  state.host_available_bytes = obs.host_available_bytes;
  state.host_psi_some_avg10_percent = obs.host_psi_some_avg10_percent;
  // A VM is present when this observation stamped it: no per-report set
  // of ids to build.
  const uint64_t stamp = ++state.observations;
  for (const VmObservation& o : obs.vms) {
    auto [it, inserted] = state.vms.try_emplace(o.vm_id);
    VmStepState& vm = it->second;
    vm.observed_in = stamp;
    if (inserted) result.added.push_back(o.vm_id);
    GuestObservation g = o.guest;
    g.actual_bytes = o.actual_bytes;
    g.max_bytes = o.max_bytes;
    g.elapsed_seconds = inserted ? 0.0 : std::max(0.0, obs.now_seconds - vm.observed_seconds);
    UpdateDemand(g, demand, vm.demand);
    vm.observed_seconds = obs.now_seconds;
    vm.max_bytes = o.max_bytes;
    vm.actual_bytes = o.actual_bytes;
    vm.balloon_healthy = o.balloon_healthy;
  }
  for (auto it = state.vms.begin(); it != state.vms.end();) {
    if (it->second.observed_in != stamp) {
      result.removed.push_back(it->first);
      it = state.vms.erase(it);
    } else {
      ++it;
    }
  }
  return result;
}

VmInput BuildVmInput(const std::string& vm_id, const VmStepState& vm, const PolicySet& policies) {
  const PolicyParams& p = policies.params;
  auto pit = policies.vms.find(vm_id);
  const VmPolicySpec* spec = pit == policies.vms.end() ? nullptr : &pit->second;
  VmInput in;
  in.vm_id = vm_id;
  in.max_bytes = vm.max_bytes;
  if (spec && spec->max_bytes) in.max_bytes = std::min(in.max_bytes, *spec->max_bytes);
  in.min_bytes = spec && spec->min_bytes ? *spec->min_bytes : p.default_min_bytes;
  in.min_is_default = !(spec && spec->min_bytes);
  in.weight = spec && spec->weight ? *spec->weight : p.default_weight;
  in.pinned = spec && spec->pinned;
  in.balloon_healthy = vm.balloon_healthy;
  in.actual_bytes = vm.actual_bytes;
  // Without a decision of its own yet (new VM, reconnected agent, restarted
  // broker) the VM's current size is the baseline, so memory is still taken
  // back in steps.
  in.previous_target_bytes = vm.decided ? vm.decision.target_bytes : vm.actual_bytes;
  SetDemandInputs(vm.demand, in);
  return in;
}

bool DecideStep(const PolicySet& policies, HostStepState& state) {
  HostInput input;
  input.capacity_bytes = state.capacity_bytes - std::min(state.capacity_bytes, state.reserved_bytes);
  if (state.reserved_bytes > 0) {
    // Room for reservations is made in reclaim steps: the capacity shrinks
    // no faster than every VM giving back one step from its last target
    // (the allocator would otherwise reclaim past the step to fit).
    uint64_t stepped = 0;
    for (const auto& [id, vm] : state.vms) {
      const uint64_t prev = vm.decided ? vm.decision.target_bytes : vm.actual_bytes;
      stepped += prev - std::min(prev, policies.params.reclaim_step_bytes);
    }
    input.capacity_bytes =
        std::max(input.capacity_bytes, std::min(state.capacity_bytes, stepped));
  }
  // The host really holds the margin: what it has free covers the margin
  // beyond what the VMs' last targets may still take from it, and it is not
  // itself under memory pressure.
  uint64_t outstanding = 0;
  for (const auto& [id, vm] : state.vms) {
    if (vm.decided && vm.decision.target_bytes > vm.actual_bytes) {
      outstanding += vm.decision.target_bytes - vm.actual_bytes;
    }
  }
  input.host_has_room =
      state.host_available_bytes > 0 &&
      state.host_available_bytes >= policies.params.host_free_margin_bytes + outstanding &&
      state.host_psi_some_avg10_percent < policies.params.lend_margin_max_psi_percent;
  input.vms.reserve(state.vms.size());
  for (const auto& [id, vm] : state.vms) input.vms.push_back(BuildVmInput(id, vm, policies));
  HostDecision decision = DecideHost(input, policies.params);
  bool changed = false;
  size_t i = 0;
  for (auto& [id, vm] : state.vms) {
    VmDecision& d = decision.vms[i];
    if (!vm.decided || vm.decision.target_bytes != d.target_bytes) changed = true;
    vm.input = std::move(input.vms[i]);
    vm.decision = std::move(d);
    // The VM's id is its key: the kept input and decision do not repeat it
    // (a heap string each, per VM, for as long as the VM lives).
    std::string().swap(vm.input.vm_id);
    std::string().swap(vm.decision.vm_id);
    vm.decided = true;
    ++i;
  }
  // Each VM's decision now lives in state.vms: the host keeps its totals
  // only, not a second copy of every VM's.
  std::vector<VmDecision>().swap(decision.vms);
  state.decision = std::move(decision);
  state.params = policies.params;
  return changed;
}

void ForgetDecisions(HostStepState& state) {
  for (auto& [id, vm] : state.vms) vm.decided = false;
}

}  // namespace membroker::policy

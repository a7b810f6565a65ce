// libFuzzer target: the per-host decision with arbitrary fleets.
//
// The input builds a cluster policy (through the broker's own validation:
// an invalid one is replaced by the defaults, as the broker refuses it),
// per-VM policies, and a series of host observations (VMs appearing,
// leaving, growing, with any guest statistics). After every step the
// invariants of DESIGN.md are checked on the decision:
//   - min(max(min, protect), max) <= target <= max for every VM (a default
//     min may yield for a neighbour under pressure, never below protect);
//   - a pinned VM keeps its max; a stuck balloon is never taken below its
//     current size;
//   - sum(targets) <= capacity unless the host is flagged overcommitted;
//   - the same input gives the same output.
// DecideHost is also called directly on arbitrary inputs.

#include <google/protobuf/stubs/logging.h>

#include <algorithm>
#include <cstdint>
#include <map>
#include <string>

#include "broker/policy/allocator.h"
#include "broker/policy/host_step.h"
#include "broker/policy_config.h"
#include "tests/fuzz/fuzz_input.h"

namespace membroker::fuzz {
namespace {

using policy::HostDecision;
using policy::HostInput;
using policy::VmDecision;
using policy::VmInput;

constexpr uint64_t kMiB = uint64_t{1} << 20;
constexpr uint64_t kGiB = uint64_t{1} << 30;

// A size: mostly MiB-aligned values of a realistic range, sometimes any
// 64-bit value up to `hi`.
uint64_t Size(FuzzInput& in, uint64_t hi) {
  if (in.Range(0, 7) == 0) return in.Range(0, hi);
  return std::min(hi, in.Range(0, 64 * 1024) * kMiB);
}

void CheckDecision(const HostInput& in, const HostDecision& d, const char* where) {
  FUZZ_CHECK(d.vms.size() == in.vms.size(), "%s: %zu decisions for %zu VMs", where, d.vms.size(),
             in.vms.size());
  uint64_t sum = 0;
  for (size_t i = 0; i < d.vms.size(); ++i) {
    const VmInput& v = in.vms[i];
    const VmDecision& x = d.vms[i];
    FUZZ_CHECK(x.vm_id == v.vm_id, "%s: decision order", where);
    const bool may_yield = v.min_is_default && !v.under_pressure;
    const uint64_t floor =
        std::min(std::max(may_yield ? 0 : v.min_bytes, v.protect_bytes), v.max_bytes);
    FUZZ_CHECK(x.target_bytes <= v.max_bytes, "%s: vm %zu target %llu above max %llu", where, i,
               (unsigned long long)x.target_bytes, (unsigned long long)v.max_bytes);
    FUZZ_CHECK(x.target_bytes >= floor, "%s: vm %zu target %llu below floor %llu", where, i,
               (unsigned long long)x.target_bytes, (unsigned long long)floor);
    FUZZ_CHECK(x.target_bytes >= x.floor_bytes, "%s: vm %zu target below its decision's floor",
               where, i);
    if (x.floor_yielded) FUZZ_CHECK(may_yield, "%s: vm %zu floor yielded", where, i);
    if (v.pinned) {
      FUZZ_CHECK(x.target_bytes == v.max_bytes, "%s: pinned vm %zu moved", where, i);
    }
    if (!v.balloon_healthy) {
      FUZZ_CHECK(x.target_bytes >= std::min(v.actual_bytes, v.max_bytes),
                 "%s: stuck vm %zu taken below its size", where, i);
    }
    sum += x.target_bytes;
  }
  FUZZ_CHECK(sum == d.target_bytes, "%s: sum of targets", where);
  if (!d.overcommitted) {
    FUZZ_CHECK(sum <= in.capacity_bytes, "%s: sum %llu above capacity %llu, not overcommitted",
               where, (unsigned long long)sum, (unsigned long long)in.capacity_bytes);
  }
}

void CheckSame(const HostDecision& a, const HostDecision& b, const char* where) {
  FUZZ_CHECK(a.vms.size() == b.vms.size(), "%s: not deterministic", where);
  for (size_t i = 0; i < a.vms.size(); ++i) {
    FUZZ_CHECK(a.vms[i].target_bytes == b.vms[i].target_bytes, "%s: not deterministic", where);
    FUZZ_CHECK(a.vms[i].reason == b.vms[i].reason, "%s: not deterministic", where);
  }
}

// The step's last decision as DecideHost returns one, from what the step
// keeps: the host-wide part, and each VM's input and decision (kept
// without their id, which is the VM's key), in id order. Every VM the step
// holds must have been decided.
void StepDecision(const policy::HostStepState& state, HostInput* input, HostDecision* decision,
                  const char* where) {
  *decision = state.decision;
  decision->vms.clear();
  input->vms.clear();
  input->capacity_bytes = state.capacity_bytes;
  for (const auto& [id, vm] : state.vms) {
    FUZZ_CHECK(vm.decided, "%s: VM %s left undecided", where, id.c_str());
    FUZZ_CHECK(vm.input.vm_id.empty() && vm.decision.vm_id.empty(),
               "%s: VM %s keeps a second copy of its id", where, id.c_str());
    input->vms.push_back(vm.input);
    input->vms.back().vm_id = id;
    decision->vms.push_back(vm.decision);
    decision->vms.back().vm_id = id;
  }
}

v1::ClusterPolicy FuzzClusterPolicy(FuzzInput& in) {
  v1::ClusterPolicy p;
  if (in.Bool()) p.set_buffer_percent(in.Real(-10, 1100));
  if (in.Bool()) p.set_host_free_margin_bytes(Size(in, 8 * kGiB));
  if (in.Bool()) p.set_reclaim_step_bytes(Size(in, 8 * kGiB));
  if (in.Bool()) p.set_hysteresis_bytes(Size(in, kGiB));
  if (in.Bool()) p.set_idle_tax_percent(in.Real(-1, 101));
  if (in.Bool()) p.set_default_min_bytes(Size(in, 8 * kGiB));
  if (in.Bool()) p.set_default_weight(static_cast<uint32_t>(in.Range(0, 20000)));
  if (in.Bool()) p.set_protect_margin_percent(in.Real(-1, 200));
  if (in.Bool()) p.set_surplus_percent(in.Real(-1, 101));
  if (in.Bool()) p.set_hysteresis_percent(in.Real(-1, 101));
  if (in.Bool()) p.set_protect_margin_max_bytes(Size(in, 8 * kGiB));
  if (broker::ValidateClusterPolicy(p).ok()) {
    return broker::MergeClusterPolicy(broker::DefaultClusterPolicy(), p);
  }
  return broker::DefaultClusterPolicy();
}

// DecideHost on an arbitrary host.
void FuzzDecideHost(FuzzInput& in, const policy::PolicyParams& params) {
  HostInput host;
  host.capacity_bytes = Size(in, 1ull << 50);
  host.host_has_room = in.Bool();
  const int n = static_cast<int>(in.Range(0, 16));
  for (int i = 0; i < n; ++i) {
    VmInput v;
    v.vm_id = "vm" + std::to_string(i);
    v.max_bytes = std::max<uint64_t>(1, Size(in, 1ull << 48));
    v.min_bytes = Size(in, 1ull << 48);
    v.weight = static_cast<uint32_t>(in.Range(1, 10000));
    v.pinned = in.Range(0, 15) == 0;
    v.balloon_healthy = in.Range(0, 7) != 0;
    v.demand_bytes = Size(in, 1ull << 48);
    v.protect_bytes = Size(in, 1ull << 48);
    v.actual_bytes = std::min(v.max_bytes, Size(in, 1ull << 48));
    v.previous_target_bytes = in.Bool() ? 0 : Size(in, 1ull << 48);
    v.active_fraction = in.Real(0, 1);
    v.under_pressure = in.Range(0, 3) == 0;
    v.min_is_default = in.Bool();
    host.vms.push_back(v);
  }
  const HostDecision d = policy::DecideHost(host, params);
  CheckDecision(host, d, "DecideHost");
  CheckSame(d, policy::DecideHost(host, params), "DecideHost");
}

// A series of reports through ObserveHost + DecideStep, as the broker runs
// them.
void FuzzSteps(FuzzInput& in, const v1::ClusterPolicy& cluster) {
  std::map<std::string, v1::VmPolicy> vm_policies;
  const int npol = static_cast<int>(in.Range(0, 4));
  for (int i = 0; i < npol; ++i) {
    v1::VmPolicy p;
    if (in.Bool()) p.set_min_bytes(Size(in, 32 * kGiB));
    if (in.Bool()) p.set_max_bytes(Size(in, 32 * kGiB));
    if (in.Bool()) p.set_weight(static_cast<uint32_t>(in.Range(0, 20000)));
    if (in.Bool()) p.set_pinned(in.Bool());
    // The broker stores only valid policies.
    if (broker::ValidateVmPolicy(p).ok()) vm_policies["vm" + std::to_string(in.Range(0, 7))] = p;
  }
  const policy::PolicySet policies = broker::ToPolicySet(cluster, vm_policies);
  policy::HostStepState state;
  double now = 0;
  const int steps = static_cast<int>(in.Range(1, 8));
  for (int s = 0; s < steps && !in.empty(); ++s) {
    policy::HostObservation obs;
    now += in.Real(0, 30);
    obs.now_seconds = now;
    obs.capacity_bytes = Size(in, 1ull << 44);
    obs.host_available_bytes = Size(in, 1ull << 44);
    obs.host_psi_some_avg10_percent = in.Real(0, 100);
    const uint64_t present = in.Range(0, 255);  // which of vm0..vm7 report
    for (int i = 0; i < 8; ++i) {
      if (!(present & (1u << i))) continue;
      policy::VmObservation o;
      o.vm_id = "vm" + std::to_string(i);
      o.max_bytes = std::max<uint64_t>(1, Size(in, 1ull << 40));
      o.actual_bytes = std::min(o.max_bytes, Size(in, 1ull << 40));
      o.balloon_healthy = in.Range(0, 7) != 0;
      policy::GuestObservation& g = o.guest;
      g.stats_valid = in.Range(0, 3) != 0;
      g.total_bytes = Size(in, 1ull << 40);
      g.available_bytes = Size(in, g.total_bytes);
      g.swap_in_bytes_total = Size(in, 1ull << 40);
      g.major_faults_total = in.Range(0, 1ull << 30);
      g.swap_out_bytes_total = Size(in, 1ull << 40);
      g.last_target_bytes = Size(in, o.max_bytes);
      g.agent_pressure = in.Range(0, 3) == 0;
      obs.vms.push_back(o);
    }
    policy::ObserveHost(obs, policies.demand, state);
    policy::HostStepState copy = state;
    policy::DecideStep(policies, state);
    HostInput input;
    HostDecision decision;
    StepDecision(state, &input, &decision, "DecideStep");
    CheckDecision(input, decision, "DecideStep");
    policy::DecideStep(policies, copy);
    HostInput copy_input;
    HostDecision copy_decision;
    StepDecision(copy, &copy_input, &copy_decision, "DecideStep (again)");
    CheckSame(decision, copy_decision, "DecideStep");
    if (in.Range(0, 7) == 0) policy::ForgetDecisions(state);
  }
}

}  // namespace
}  // namespace membroker::fuzz

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  // protobuf's own complaints (invalid UTF-8) are expected here: not shown.
  static const bool quiet = (google::protobuf::SetLogHandler(nullptr), true);
  (void)quiet;
  membroker::fuzz::FuzzInput in(data, size);
  const membroker::v1::ClusterPolicy cluster = membroker::fuzz::FuzzClusterPolicy(in);
  if (in.Bool()) {
    membroker::fuzz::FuzzDecideHost(in, membroker::broker::ToPolicyParams(cluster));
  } else {
    membroker::fuzz::FuzzSteps(in, cluster);
  }
  return 0;
}

#pragma once
// The fleet simulator: runs a scenario's hosts in simulated time under one
// memory policy and measures decision quality.
//
// Per tick (0.25 s of simulated time):
//   1. every SimHost advances;
//   2. the figures accumulate from the guests' truth (deficit, OOM kills,
//      memory held, targets set);
//   3. each host's controller decides when its period is due, or at once
//      when it reacts early and a guest shows pressure (swap-in or major
//      faults since its last decision, as the agent's actuator detects
//      them): it sees only what an agent reports (balloon actual, guest
//      statistics), never the truth (except the oracle);
//   4. targets are applied. With free-then-grow ordering a shrink is set at
//      once and a growth only as far as memory already freed on the host
//      allows (retried each tick); otherwise every target is set at once.
//
// Policies: the broker's own (the broker's report edge and its per-host
// step, broker/policy/host_step.h, under the broker's shipped defaults),
// the baselines operators run today, re-implemented from their public
// descriptions (baselines.cc names the source of every rule), and a
// clairvoyant oracle.

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "broker/policy/allocator.h"
#include "broker/policy/demand.h"
#include "broker/policy/host_step.h"
#include "broker/policy/plan.h"
#include "membroker/v1/agent.pb.h"
#include "membroker/v1/scenario.pb.h"
#include "sim/sim_host.h"

namespace membroker::sim {

// The policies the simulator can run.
enum class PolicyKind {
  kNoBallooning,
  kProxmox,
  kMom,
  kSqueezed,
  kBroker,
  kOracle,
};

// Every policy, in table order.
const std::vector<PolicyKind>& AllPolicies();

// "none", "proxmox", "mom", "squeezed", "broker", "oracle".
const char* PolicyName(PolicyKind kind);

// What a host-local controller sees of one running VM (an agent's report).
struct VmView {
  size_t index = 0;  // index in SimHost::vms()
  std::string vm_id;
  uint64_t max_bytes = 0;  // effective max: min(configured, policy max)
  uint64_t configured_max_bytes = 0;  // the VM's configured memory
  uint64_t min_bytes = 0;  // the operator's floor (policy min or default)
  uint32_t weight = 0;     // policy weight or default
  bool balloon_driver = true;
  uint64_t actual_bytes = 0;
  uint64_t target_bytes = 0;  // last target set on the balloon
  // Guest statistics (zero without a balloon driver).
  uint64_t total_bytes = 0;
  uint64_t available_bytes = 0;
  uint64_t free_bytes = 0;
  uint64_t disk_caches_bytes = 0;
  uint64_t swap_in_bytes_total = 0;
  uint64_t major_faults_total = 0;
  uint64_t swap_out_bytes_total = 0;
  // A guest that sends no statistics (SimVm.no_guest_stats): the fields
  // above are zero, and the host sees the memory it touches over the last
  // interval instead (its working set, up to its balloon size).
  bool guest_stats = true;
  uint64_t host_working_set_bytes = 0;
  uint64_t host_working_set_interval_ms = 0;
};

// One host's report to its controller.
struct HostView {
  double now_seconds = 0;
  uint64_t capacity_bytes = 0;
  bool early = false;  // sent early on guest pressure
  std::vector<VmView> vms;
  // The simulator itself: only the oracle may look (future working sets).
  const SimHost* truth = nullptr;
};

// A per-host decision maker. Thread-compatible.
class HostController {
 public:
  virtual ~HostController() = default;
  // Returns one target per view.vms entry (same order); 0 leaves a VM's
  // balloon target unchanged.
  virtual std::vector<uint64_t> Decide(const HostView& view) = 0;
};

// How a policy runs: its period and actuation.
struct PolicyTraits {
  absl::Duration period;          // time between regular decisions
  bool early_on_pressure = false; // decides at once on guest pressure
  bool free_then_grow = false;    // grows only into memory already freed
};

// Tunables of a run. The free-then-grow ordering the simulator applies for
// the broker stands for the agent's actuator, which is separate code.
struct RunOptions {
  // Simulated time to run; zero: the scenario's duration.
  absl::Duration duration = absl::ZeroDuration();
  // Cluster policy fields (set fields only) merged over the broker's
  // shipped defaults and the scenario's own cluster policy, in that order.
  membroker::v1::ClusterPolicy broker_policy;
  // Adjusts estimator or allocator settings that no cluster policy field
  // carries (benchmark experiments only); may be empty.
  std::function<void(policy::PolicySet&)> tune_broker;
  // Called after every tick for every VM (tracing); may be empty.
  std::function<void(double now_seconds, const SimVmState& vm)> observer;
  // When set and the policy is the broker's: filled at the end of the run
  // with every host's last decision inputs in plan form (policy/plan.h),
  // host ids the scenario's host names, in scenario order.
  std::vector<policy::PlanHost>* broker_plan_hosts = nullptr;
};

// The figures of one scenario under one policy.
struct QualityFigures {
  // Integral of working-set deficit in the guests plus memory the host
  // itself would have to swap (touched guest memory above its capacity).
  double stall_gib_seconds = 0;
  double host_overflow_gib_seconds = 0;  // the host part of the stall
  // Guest OOM kills, all VMs.
  uint64_t oom_kills = 0;
  // Deflate-on-oom: times a guest took memory back from its balloon instead
  // of an OOM kill, and the GiB it took (all VMs).
  uint64_t oom_deflations = 0;
  double oom_deflated_gib = 0;
  // Mean memory the hosts got back against no ballooning (running VMs).
  double reclaimed_gib = 0;
  // Deficit episodes (a guest short by more than 64 MiB) and their length
  // until the guest has its working set again.
  uint64_t surges = 0;
  double reaction_seconds_mean = 0;
  double reaction_seconds_max = 0;
  // From the start of a deficit episode to the first target set above the
  // VM's memory (the policy's response, before the balloon moves).
  double response_seconds_mean = 0;
  double response_seconds_max = 0;
  std::string response_max_vm;  // the VM of the longest response
  // Target direction reversals per VM-hour of running time.
  double reversals_per_vm_hour = 0;
  // Targets set below a VM's floor (policy min), counted per decision.
  uint64_t floor_violations = 0;
  // Running time of all VMs, in hours.
  double vm_hours = 0;
  // Each VM's own stall (GiB*s), by VM name, in scenario order.
  std::vector<std::pair<std::string, double>> stall_by_vm;
};

// The traits of `kind` for a scenario whose report interval is `interval`.
PolicyTraits TraitsOf(PolicyKind kind, absl::Duration interval);

// Builds the controller of `kind` for one host.
std::unique_ptr<HostController> MakeController(PolicyKind kind, const RunOptions& options,
                                               const membroker::v1::Scenario& scenario);

// The complete cluster policy the broker runs in a scenario: the shipped
// defaults, then the scenario's cluster policy, then `options.broker_policy`.
membroker::v1::ClusterPolicy BrokerClusterPolicy(const membroker::v1::Scenario& scenario,
                                                 const RunOptions& options);

// Everything the broker's decision reads in a scenario (the cluster policy
// above and the scenario's per-VM policies), as the broker builds it.
policy::PolicySet BrokerPolicySet(const membroker::v1::Scenario& scenario,
                                  const RunOptions& options);

// The report an agent sends for `view` (a guest without a balloon driver
// sends no statistics and NO_DRIVER health).
membroker::v1::HostReport ReportOf(const HostView& view, uint64_t sequence);

// Runs an expanded, valid scenario under `kind`. INVALID_ARGUMENT when the
// scenario does not validate. Deterministic: the same inputs give the same
// figures.
absl::StatusOr<QualityFigures> RunScenario(const membroker::v1::Scenario& scenario, PolicyKind kind,
                                           const RunOptions& options = {});

// Moves VMs between the hosts of an expanded scenario: each move's VM (by
// id: its vm_id, or the id derived from its name) leaves `from_host_id`'s
// VM list, with its workload model and policy, and joins `to_host_id`'s.
// NOT_FOUND naming the move for an unknown host or a VM not on its source.
absl::StatusOr<membroker::v1::Scenario> ApplyMoves(const membroker::v1::Scenario& scenario,
                                                   const std::vector<policy::Move>& moves);

}  // namespace membroker::sim

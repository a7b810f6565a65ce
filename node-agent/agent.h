#pragma once
// The agent: wires the hypervisor backend, the host probe, the actuator and
// the broker link.
//
// Three threads, none of which waits on another's I/O:
//   - the link's reader records a Welcome, a connection change or a
//     TargetSet under the agent's mutex and returns at once;
//   - the apply worker runs the control steps: every tick_interval, and at
//     once when a TargetSet is pending. A step lists the VMs, validates
//     their statistics, hands the pending targets to the actuator, runs
//     it, publishes what it saw, and acks the TargetSet with per-VM errors.
//     Every hypervisor call goes through a DeadlineHypervisor: a call that
//     has not returned by its deadline marks its VM hung (reported with
//     BALLOON_HEALTH_STUCK and the reason, error in the ack) and the step
//     goes on with the other VMs;
//   - the report loop sends a full HostReport every report interval (and
//     at once on guest pressure or a new connection, at most one such
//     early report per min_early_report_interval) from what the last step
//     published, so reports keep flowing while a call hangs;
//   - the RSS watcher (when a VmProcessProbe is given) reads each VM
//     process's resident memory every rss_interval, between the guest's
//     statistics (at most once a second), and feeds the PressureDetector;
//   - the working-set watcher (when a WorkingSetProbe is given) measures,
//     every working_set_interval, the guest memory touched by each VM whose
//     statistics are missing, stale or untrusted (or every VM), and its
//     cgroup's memory.pressure (working_set.h); the next reports carry them.
// Acute pressure (vm_pressure.h: RSS near actual and growing, deflate-on-
// oom, available near zero) sends an early report with the VM's reasons
// and asks the next step for a local grant (actuator step 2b), which the
// apply worker runs at once.
// The agent's mutex is never held across hypervisor I/O. Every interval,
// timeout and wait is on the injected clock.

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include <grpcpp/grpcpp.h>
#include <prometheus/registry.h>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "common/clock.h"
#include "membroker/v1/agent.pb.h"
#include "node-agent/actuator.h"
#include "node-agent/agent_metrics.h"
#include "node-agent/broker_link.h"
#include "node-agent/deadline_hypervisor.h"
#include "node-agent/guest_console.h"
#include "node-agent/host_probe.h"
#include "node-agent/hypervisor/hypervisor.h"
#include "node-agent/stats_validation.h"
#include "node-agent/vm_pressure.h"
#include "node-agent/vm_process_probe.h"
#include "node-agent/working_set.h"

namespace membroker::agent {

// Produces the host's memory sample, given the VMs just listed (the
// simulator derives it from them; real hosts read /proc).
using HostSampler =
    std::function<absl::StatusOr<HostMemorySample>(const std::vector<VmStatus>& vms)>;

// Settings of one agent.
struct AgentParams {
  std::string host_id;
  // Memory VMs may have in total (sent in Hello, enforced on grows).
  uint64_t capacity_bytes = 0;
  // The host's physical memory.
  uint64_t host_total_bytes = 0;
  // Until the broker's Welcome sets it.
  absl::Duration report_interval = absl::Seconds(1);
  // How often the VMs are read and the actuator runs.
  absl::Duration tick_interval = absl::Milliseconds(250);
  // Guest statistics period asked of every VM.
  absl::Duration stats_period = absl::Seconds(1);
  ActuatorParams actuator;
  BackoffParams backoff;
  // When true, a Welcome's report interval also sets the reconnect
  // backoff's cap (ReconnectBackoff: max(1 s, interval)); false when the
  // operator fixed the cap (--reconnect-max-backoff).
  bool backoff_follows_report_interval = false;
  // Deadlines of hypervisor calls.
  HypervisorCallParams hypervisor_calls;
  // Reads VM processes' resident memory (null: no RSS signal).
  std::shared_ptr<const VmProcessProbe> vm_probe;
  // How often the RSS watcher reads it.
  absl::Duration rss_interval = absl::Milliseconds(200);
  // Early (pressure, connection, hung VM) reports are at least this far
  // apart.
  absl::Duration min_early_report_interval = absl::Milliseconds(200);
  // Thresholds of acute pressure.
  PressureParams pressure;
  // Counts guest OOM kills from console logs (null: none configured);
  // reported as a VM's oom_kills_total where its backend has no counter.
  std::shared_ptr<GuestConsoleOomCounter> consoles;
  // Measures VMs' host-side working set and cgroup pressure (null: none).
  std::shared_ptr<const WorkingSetProbe> working_set_probe;
  // How often the working-set watcher measures (zero: never).
  absl::Duration working_set_interval = absl::Seconds(10);
  // Measure every VM with a known process, not only those whose guest
  // statistics are missing, stale or untrusted.
  bool working_set_all_vms = false;
  // Which processes are refault-sampled (working_set.h, 6).
  RefaultMode working_set_refault = RefaultMode::kOff;
  // CPU time of the measuring thread (null: CLOCK_THREAD_CPUTIME_ID).
  std::function<double()> working_set_cpu_seconds;
};

// One host's agent. Thread-safe.
class Agent {
 public:
  // `clock` is not owned and must outlive the agent; `channel` reaches the
  // broker; metrics go to `registry`. `hypervisor` is called only through
  // a DeadlineHypervisor (params.hypervisor_calls).
  Agent(AgentParams params, std::unique_ptr<Hypervisor> hypervisor, HostSampler host_sampler,
        const Clock* clock, std::shared_ptr<grpc::Channel> channel,
        std::shared_ptr<prometheus::Registry> registry);
  ~Agent();

  Agent(const Agent&) = delete;
  Agent& operator=(const Agent&) = delete;

  // Runs one control step, then starts the broker link, the apply worker
  // and the report loop. Call once.
  void Start();

  // Stops all three promptly, even while a hypervisor call hangs (that
  // call finishes on its own thread and keeps the backend alive until it
  // returns). Idempotent.
  void Stop();

  // One control step: list the VMs, apply pending targets and run the
  // actuator. UNAVAILABLE, DEADLINE_EXCEEDED (or the backend's error) when
  // the VMs cannot be listed; the actuator then keeps its state. Serialized
  // with the apply worker's steps.
  absl::Status Tick();

  // The full report as of the last step (sequence not yet assigned). Takes
  // the pressure reasons gathered since the previous report.
  membroker::v1::HostReport BuildReport(bool pressure_event);

  // One round of the RSS watcher: reads the resident memory of every
  // listed VM with a known process and feeds the pressure detector. No-op
  // without a probe. Never calls the hypervisor.
  void SampleRss();

  // One round of the working-set watcher: measures the VMs it should
  // (AgentParams.working_set_all_vms) and keeps the results for the next
  // reports. No-op without a probe. Never calls the hypervisor.
  void SampleWorkingSet() ABSL_LOCKS_EXCLUDED(working_set_mu_, mu_);

  // True while the broker stream is welcomed.
  bool connected() const;

  // The report interval in force.
  absl::Duration report_interval() const;

 private:
  // A TargetSet waiting for the apply worker, with the stream it came on.
  struct PendingTargets {
    membroker::v1::TargetSet set;
    uint64_t stream = 0;
  };

  // What the link's reader recorded for the next step.
  struct StepInputs {
    std::optional<SafetyParams> safety;
    std::vector<bool> connection_events;
    std::optional<PendingTargets> targets;
    absl::Duration report_interval;
    std::set<std::string> acute;
  };

  absl::Status Step() ABSL_EXCLUSIVE_LOCKS_REQUIRED(step_mu_) ABSL_LOCKS_EXCLUDED(mu_);
  void UpdateVmMetrics(const std::vector<VmStatus>& vms,
                       const std::map<std::string, VmActuation>& actuations,
                       const std::map<std::string, std::string>& hung);
  void OnWelcome(const membroker::v1::Welcome& welcome);
  void OnTargets(const membroker::v1::TargetSet& targets, uint64_t stream);
  void OnConnection(bool connected);
  void SendReport(bool pressure_event);
  void SyncLinkCounters();
  void ApplyLoop();
  void ReportLoop();
  void RssLoop();
  void WorkingSetLoop();
  // Marks acute pressure of `vm_id`: early report and a local grant.
  void OnAcutePressure(const std::string& vm_id) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const AgentParams params_;
  const Clock* const clock_;
  std::shared_ptr<prometheus::Registry> registry_;
  AgentMetrics metrics_;
  HostSampler host_sampler_;
  // Thread-safe as far as its lanes allow; only steps call it.
  DeadlineHypervisor hypervisor_;

  // Lock order: step_mu_, then mu_, then counters_mu_; working_set_mu_
  // before mu_.
  //
  // One control step at a time. Held across hypervisor calls, which are
  // bounded by their deadline; never taken by the link's reader or the
  // report loop.
  absl::Mutex step_mu_;
  Actuator actuator_ ABSL_GUARDED_BY(step_mu_);
  std::map<std::string, GuestMemoryStats> previous_stats_ ABSL_GUARDED_BY(step_mu_);
  std::map<std::string, bool> stats_period_set_ ABSL_GUARDED_BY(step_mu_);
  int list_failures_ ABSL_GUARDED_BY(step_mu_) = 0;

  // The agent's state: what the last step published and what the link's
  // reader recorded. Never held across hypervisor I/O.
  mutable absl::Mutex mu_;
  std::vector<VmStatus> vms_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, StatsVerdict> verdicts_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, VmActuation> actuations_ ABSL_GUARDED_BY(mu_);
  // VM id -> why it is hung (a hypervisor call past its deadline).
  std::map<std::string, std::string> hung_ ABSL_GUARDED_BY(mu_);
  absl::Duration report_interval_ ABSL_GUARDED_BY(mu_);
  std::optional<SafetyParams> pending_safety_ ABSL_GUARDED_BY(mu_);
  std::vector<bool> pending_connection_events_ ABSL_GUARDED_BY(mu_);
  std::optional<PendingTargets> pending_targets_ ABSL_GUARDED_BY(mu_);
  uint64_t sequence_ ABSL_GUARDED_BY(mu_) = 0;
  // No report goes out before the VMs were listed once.
  bool listed_once_ ABSL_GUARDED_BY(mu_) = false;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  bool report_now_ ABSL_GUARDED_BY(mu_) = false;
  bool pressure_pending_ ABSL_GUARDED_BY(mu_) = false;
  bool started_ ABSL_GUARDED_BY(mu_) = false;
  PressureDetector pressure_ ABSL_GUARDED_BY(mu_);
  // VMs under acute pressure waiting for the next step's local grant.
  std::set<std::string> grant_requests_ ABSL_GUARDED_BY(mu_);

  // Host-side working set and cgroup pressure per VM from the last round.
  std::map<std::string, WorkingSetSample> working_sets_ ABSL_GUARDED_BY(mu_);

  // One working-set round at a time; taken before mu_.
  absl::Mutex working_set_mu_ ABSL_ACQUIRED_BEFORE(mu_);
  WorkingSetSampler working_set_sampler_ ABSL_GUARDED_BY(working_set_mu_);

  // Link counters already added to the metrics.
  absl::Mutex counters_mu_;
  BrokerLink::Counters synced_ ABSL_GUARDED_BY(counters_mu_);

  std::unique_ptr<BrokerLink> link_;
  std::thread apply_thread_;
  std::thread report_thread_;
  std::thread rss_thread_;
  std::thread working_set_thread_;
};

// Converts one VM (its status, the actuator's view and the statistics
// verdict) into a VmSample.
membroker::v1::VmSample ToVmSample(const VmStatus& vm, const VmActuation* actuation,
                                   const StatsVerdict* verdict);

// Copies one VM's host-side working set and cgroup pressure into `out`,
// within the bounds the broker accepts (the working set capped at
// `max_bytes`; an interval outside 100 ms .. 1 h, or a
// pressure outside 0..100, is left out).
void SetHostSignals(const WorkingSetSample& sample, uint64_t max_bytes,
                    membroker::v1::VmSample& out);

// Converts a host memory sample into a HostSample.
membroker::v1::HostSample ToHostSample(const HostMemorySample& sample);

}  // namespace membroker::agent

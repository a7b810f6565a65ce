#pragma once
// The agent: wires the hypervisor backend, the host probe, the actuator and
// the broker link.
//
// A control loop ticks every tick_interval: list the VMs, validate their
// statistics, run the actuator. Every report interval (and at once on guest
// pressure or a new connection) it sends a full HostReport. TargetSets from
// the broker go to the actuator and are applied at once; the ack carries
// per-VM errors.

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
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
#include "node-agent/host_probe.h"
#include "node-agent/hypervisor/hypervisor.h"
#include "node-agent/stats_validation.h"

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
};

// One host's agent. Thread-safe.
class Agent {
 public:
  // `clock` is not owned and must outlive the agent; `channel` reaches the
  // broker; metrics go to `registry`.
  Agent(AgentParams params, std::unique_ptr<Hypervisor> hypervisor, HostSampler host_sampler,
        const Clock* clock, std::shared_ptr<grpc::Channel> channel,
        std::shared_ptr<prometheus::Registry> registry);
  ~Agent();

  Agent(const Agent&) = delete;
  Agent& operator=(const Agent&) = delete;

  // Starts the broker link and the control loop. Call once.
  void Start();

  // Stops both promptly. Idempotent.
  void Stop();

  // One control step: list the VMs and run the actuator. UNAVAILABLE (or
  // the backend's error) when the VMs cannot be listed; the actuator then
  // keeps its state.
  absl::Status Tick();

  // The full report as of the last tick (sequence not yet assigned).
  membroker::v1::HostReport BuildReport(bool pressure_event);

  // True while the broker stream is welcomed.
  bool connected() const;

  // The report interval in force.
  absl::Duration report_interval() const;

 private:
  struct TickOutcome {
    absl::Status status;
    TickResult result;
  };

  TickOutcome TickLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void UpdateVmMetricsLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void OnWelcome(const membroker::v1::Welcome& welcome);
  membroker::v1::TargetAck OnTargets(const membroker::v1::TargetSet& targets);
  void OnConnection(bool connected);
  void SendReport(bool pressure_event);
  void SyncLinkCounters();
  void Loop();

  const AgentParams params_;
  const Clock* const clock_;
  std::shared_ptr<prometheus::Registry> registry_;
  AgentMetrics metrics_;
  HostSampler host_sampler_;

  mutable absl::Mutex mu_;
  std::unique_ptr<Hypervisor> hypervisor_ ABSL_GUARDED_BY(mu_);
  Actuator actuator_ ABSL_GUARDED_BY(mu_);
  std::vector<VmStatus> vms_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, StatsVerdict> verdicts_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, GuestMemoryStats> previous_stats_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, bool> stats_period_set_ ABSL_GUARDED_BY(mu_);
  absl::Duration report_interval_ ABSL_GUARDED_BY(mu_);
  uint64_t sequence_ ABSL_GUARDED_BY(mu_) = 0;
  int list_failures_ ABSL_GUARDED_BY(mu_) = 0;
  // No report goes out before the VMs were listed once.
  bool listed_once_ ABSL_GUARDED_BY(mu_) = false;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  bool report_now_ ABSL_GUARDED_BY(mu_) = false;
  bool pressure_pending_ ABSL_GUARDED_BY(mu_) = false;
  bool started_ ABSL_GUARDED_BY(mu_) = false;

  // Link counters already added to the metrics.
  absl::Mutex counters_mu_;
  BrokerLink::Counters synced_ ABSL_GUARDED_BY(counters_mu_);

  std::unique_ptr<BrokerLink> link_;
  std::thread loop_;
};

// Converts one VM (its status, the actuator's view and the statistics
// verdict) into a VmSample.
membroker::v1::VmSample ToVmSample(const VmStatus& vm, const VmActuation* actuation,
                                   const StatsVerdict* verdict);

// Converts a host memory sample into a HostSample.
membroker::v1::HostSample ToHostSample(const HostMemorySample& sample);

}  // namespace membroker::agent

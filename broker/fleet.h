#pragma once
// The broker's view of the fleet: one state per host, each with its own
// lock, fed by that host's agent stream (one writer path per host). It
// keeps hosts, report sequencing, generations, the agents' sinks and the
// decision watchers. What it does not do lives beside it: report
// validation and conversion (report.h), the policies (policy_registry.h,
// one immutable snapshot read per report), the decision itself and its
// explanation (policy/host_step.h, policy/explain.h).
//
// A report triggers its own host's decision and nothing else; admin calls
// read per-host state under that host's lock only for the time of a copy.
//
// Lock order: hosts_mu_ is never held while taking a host's mutex; a host's
// mutex may be held while taking watch_mu_ (to publish a decision). The
// policy registry has its own locks, never held across a call into Fleet.

#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "broker/metrics.h"
#include "broker/policy/host_step.h"
#include "broker/policy/plan.h"
#include "broker/policy_registry.h"
#include "broker/report.h"
#include "broker/store.h"
#include "common/clock.h"
#include "common/log_limit.h"
#include "membroker/v1/admin.pb.h"
#include "membroker/v1/agent.pb.h"

namespace membroker::broker {

class Reservations;

// What a host holds and what could be freed, for reservations (GetRoom).
struct HostRoom {
  bool connected = false;
  uint64_t report_sequence = 0;
  uint64_t capacity_bytes = 0;  // the host's, before reservations
  uint64_t actual_bytes = 0;    // sum of the VMs' balloon actuals
  uint64_t reserved_bytes = 0;  // sum of the host's reservations
  // Memory no reclaim can take: per VM, what its policy or balloon holds
  // (pinned: max; stuck balloon: actual; operator min; what the guest
  // actively uses).
  struct Hold {
    std::string vm;  // name, or id when unnamed
    uint64_t bytes = 0;
    std::string why;  // "pinned", "balloon unhealthy", "operator min", "protect"
  };
  std::vector<Hold> holds;  // largest first
  uint64_t held_bytes = 0;  // sum of holds
  // VMs whose balloon is still above its target: name, actual, target.
  std::vector<std::string> moving;
  // Free now: capacity - actual (0 when the VMs hold more).
  uint64_t free_bytes() const {
    return capacity_bytes > actual_bytes ? capacity_bytes - actual_bytes : 0;
  }
};

// What a watch has seen of the fleet (Fleet::CollectChanges): per host a
// change counter and fingerprints of the host and each VM.
struct WatchCursor {
  struct HostSeen {
    uint64_t changes = ~uint64_t{0};  // Fleet's per-host change counter
    uint64_t fingerprint = 0;
    std::map<std::string, uint64_t> vms;  // VM id -> fingerprint
  };
  std::map<std::string, HostSeen> hosts;
};

// What changed since a cursor.
struct FleetChanges {
  std::vector<v1::Vm> vms;          // appeared or changed: new state
  std::vector<v1::Vm> removed_vms;  // vm_id and host_id only
  std::vector<v1::Host> hosts;      // appeared or changed
};

// Delivers a message to a host's agent stream (moved in: the sink may keep
// it). Called with the host's lock held: it must only enqueue, never block
// or call back into the Fleet.
using BrokerMessageSink = std::function<void(v1::BrokerMessage)>;

// Receives every decision (WatchDecisions). Same rules as the sink.
using DecisionSink = std::function<void(const v1::Decision&)>;

// Thread-safe.
class Fleet {
 public:
  // Sets itself as `metrics`' source of per-VM series until destroyed.
  Fleet(Clock* clock, Store* store, BrokerMetrics* metrics, v1::SafetyParams safety);
  ~Fleet();
  Fleet(const Fleet&) = delete;
  Fleet& operator=(const Fleet&) = delete;

  // Loads hard state. The stored cluster policy wins over `initial`, which
  // is merged over the defaults and stored when the store has none.
  absl::Status Load(const v1::ClusterPolicy& initial);

  // --- Agent streams ---

  // Registers a host's stream. Returns the connection id and fills the
  // Welcome to send. A newer connection of the same host replaces an older
  // one, whose later calls fail with FAILED_PRECONDITION.
  absl::StatusOr<uint64_t> Connect(const v1::Hello& hello, BrokerMessageSink sink,
                                   v1::Welcome* welcome);
  // Forgets the stream `conn` of `host_id` (no-op if it was replaced).
  void Disconnect(const std::string& host_id, uint64_t conn);
  // Folds a report into the host's state, decides, and pushes new targets
  // through the sink when they changed. INVALID_ARGUMENT for a malformed
  // report (state unchanged); a report whose sequence is not above the last
  // one is ignored (OK).
  absl::Status Report(const std::string& host_id, uint64_t conn, const v1::HostReport& report);
  // Records that the agent applied a generation. INVALID_ARGUMENT for an
  // oversized ack or a generation never sent. The VMs it failed to apply
  // are logged in one summarising line, rate-limited per host.
  absl::Status Ack(const std::string& host_id, uint64_t conn, const v1::TargetAck& ack);
  // Forgets hosts whose agent has been disconnected for `after` or longer,
  // with their metric series (their VMs' policies stay). Returns how many.
  size_t ExpireHosts(absl::Duration after);

  // --- Admin ---

  std::vector<v1::Host> ListHosts() const;
  // The ids of every known host, in id order.
  std::vector<std::string> HostIds() const;
  // NOT_FOUND for an unknown host.
  absl::StatusOr<v1::Host> GetHost(const std::string& host_id) const;
  // Every VM, or those of one host (NOT_FOUND for an unknown host).
  absl::StatusOr<std::vector<v1::Vm>> ListVms(const std::string& host_id) const;
  // By id or name. NOT_FOUND; FAILED_PRECONDITION when a name is ambiguous.
  absl::StatusOr<v1::Vm> GetVm(const std::string& vm) const;
  absl::StatusOr<v1::Explanation> ExplainVm(const std::string& vm) const;
  // Stores the policy durably, then re-decides the VM's host. A policy may
  // be set by id for a VM not seen yet (ids look like UUIDs). Every change
  // is audited as made by `actor` (now, by the fleet's clock).
  absl::StatusOr<v1::VmPolicy> SetVmPolicy(const std::string& vm, const v1::VmPolicy& policy,
                                           bool merge, const std::string& actor = kInProcessActor);
  absl::Status ClearVmPolicy(const std::string& vm, const std::string& actor = kInProcessActor);
  v1::ClusterPolicy GetClusterPolicy() const;
  // Merges `update` (set fields only), stores it, re-decides every host.
  absl::StatusOr<v1::ClusterPolicy> SetClusterPolicy(const v1::ClusterPolicy& update,
                                                     const std::string& actor = kInProcessActor);

  // Every host's last decision inputs in plan form (policy/plan.h), host
  // by host: each host's lock is held only while its state is converted.
  // Hosts in id order.
  std::vector<policy::PlanHost> PlanSnapshot() const;

  // --- Reservations ---

  // Makes the Fleet consult `reservations` (not owned; outlives the Fleet's
  // use): each host's decision leaves its reserved bytes free, and a
  // reservation for a VM ends when that VM first appears. Call before
  // serving.
  void AttachReservations(Reservations* reservations);
  // Re-reads the host's reserved bytes and re-decides it (no-op for an
  // unknown host).
  void RefreshReserved(const std::string& host_id);
  // NOT_FOUND for an unknown host.
  absl::StatusOr<HostRoom> GetRoom(const std::string& host_id) const;

  // --- Watch (VMs, hosts) ---

  // Fills `out` (when not null) with what changed since `cursor` and moves
  // the cursor. Hosts whose change counter did not move are skipped without
  // taking their lock; for the others, one fingerprint per VM (fields that
  // matter to an operator, not raw guest statistics) is compared, and only
  // changed VMs are copied. With `out` null only the cursor moves.
  void CollectChanges(WatchCursor& cursor, FleetChanges* out) const;

  // Decision watchers.
  uint64_t Watch(const std::string& host_filter, DecisionSink sink);
  void Unwatch(uint64_t id);
  // Decision watchers registered now.
  size_t WatcherCount() const;

 private:
  // What the broker keeps of a VM besides the decision step's state.
  struct VmView {
    v1::VmSample sample;                 // last reported, with the trust verdict set
    std::string metric_name;             // unique on its host
    BrokerMetrics::VmCounters counters;  // the guest's counters as exported
  };
  struct HostState {
    mutable absl::Mutex mu;
    std::string host_id;
    BrokerMetrics::HostSeries series;  // set once at creation
    bool connected ABSL_GUARDED_BY(mu) = false;
    // When the last stream ended (monotonic).
    absl::Time disconnected_at ABSL_GUARDED_BY(mu) = absl::InfinitePast();
    // Set (under mu) by ExpireHosts before the host leaves hosts_; a Connect
    // that finds it set starts over with a new HostState.
    std::atomic<bool> expired{false};
    uint64_t conn ABSL_GUARDED_BY(mu) = 0;
    v1::Hello hello ABSL_GUARDED_BY(mu);
    v1::HostSample sample ABSL_GUARDED_BY(mu);
    uint64_t sequence ABSL_GUARDED_BY(mu) = 0;
    absl::Time last_report ABSL_GUARDED_BY(mu) = absl::InfinitePast();
    policy::HostStepState step ABSL_GUARDED_BY(mu);         // the decision's state
    std::map<std::string, VmView> vms ABSL_GUARDED_BY(mu);  // same keys as step.vms
    std::set<std::string> metric_names ABSL_GUARDED_BY(mu);
    uint64_t generation ABSL_GUARDED_BY(mu) = 0;
    uint64_t acked_generation ABSL_GUARDED_BY(mu) = 0;
    BrokerMessageSink sink ABSL_GUARDED_BY(mu);
    // Bumped (under mu) whenever something a watcher sees may have
    // changed; read without the lock by CollectChanges.
    std::atomic<uint64_t> changes{0};
  };

  std::shared_ptr<HostState> FindHost(const std::string& host_id) const;
  std::vector<std::shared_ptr<HostState>> AllHosts() const;
  // Finds a VM by id or name: its host and id.
  absl::StatusOr<std::pair<std::shared_ptr<HostState>, std::string>> ResolveVm(
      const std::string& vm) const;
  // Decides `host` under `policies`, updates its series and pushes when
  // targets changed.
  void DecideLocked(HostState& host, const PolicySnapshot& policies, absl::Time started)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(host.mu);
  void Redecide(const std::shared_ptr<HostState>& host);
  v1::Host HostProtoLocked(const HostState& host) const ABSL_SHARED_LOCKS_REQUIRED(host.mu);
  v1::Vm VmProtoLocked(const HostState& host, const std::string& vm_id,
                       const PolicySnapshot& policies) const ABSL_SHARED_LOCKS_REQUIRED(host.mu);
  // Emits every VM's series for a scrape (BrokerMetrics' source). Holds
  // one host's lock at a time, only while it reads that host's numbers.
  void CollectVmSeries(const BrokerMetrics::VmSeriesEmit& emit) const;

  Clock* const clock_;
  BrokerMetrics* const metrics_;
  const v1::SafetyParams safety_;
  PolicyRegistry policies_;
  Reservations* reservations_ = nullptr;  // set before serving

  mutable absl::Mutex hosts_mu_;
  std::map<std::string, std::shared_ptr<HostState>> hosts_ ABSL_GUARDED_BY(hosts_mu_);
  uint64_t next_conn_ ABSL_GUARDED_BY(hosts_mu_) = 1;

  // Bounds what agents' messages make the broker log.
  LogLimiter log_limiter_{clock_, 5, absl::Seconds(10)};

  mutable absl::Mutex watch_mu_;
  std::map<uint64_t, std::pair<std::string, DecisionSink>> watchers_ ABSL_GUARDED_BY(watch_mu_);
  uint64_t next_watch_ ABSL_GUARDED_BY(watch_mu_) = 1;
  // watchers_.size(), read without watch_mu_ on the report path so that a
  // decision nobody watches builds no Decision record.
  std::atomic<size_t> watcher_count_{0};
};

}  // namespace membroker::broker

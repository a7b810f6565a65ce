#pragma once
// The broker's hard policy state: the cluster policy and the per-VM
// policies. Every write is stored durably (Store) before memory changes and
// before the call returns OK. Readers take an immutable snapshot, once per
// report, so one decision sees one consistent set of policies and never
// holds a lock while it decides.

#include <map>
#include <memory>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "broker/audit.h"
#include "broker/policy/host_step.h"
#include "broker/store.h"
#include "membroker/v1/types.pb.h"

namespace membroker::broker {

// One consistent version of every policy. Immutable once published.
struct PolicySnapshot {
  v1::ClusterPolicy cluster;                      // complete (defaults merged)
  std::map<std::string, v1::VmPolicy> vm_policies;  // by VM id
  policy::PolicySet set;                          // the decision's plain form
  absl::Duration report_interval;
};

// Thread-safe. Writes are serialized; reads never wait for a store write.
class PolicyRegistry {
 public:
  explicit PolicyRegistry(Store* store);

  // Loads hard state. The stored cluster policy wins over `initial`, which
  // is merged over the defaults and stored when the store has none.
  // INVALID_ARGUMENT for a bad `initial`; the store's errors as they are.
  absl::Status Load(const v1::ClusterPolicy& initial);

  // The current snapshot (never null after construction).
  std::shared_ptr<const PolicySnapshot> Snapshot() const;

  // Every change below is stored with its audit entry (`who`, old -> new)
  // in one transaction, and logged.
  //
  // Stores `policy` for `vm_id` (merged over the stored one when `merge`),
  // then publishes it. Returns what was stored. INVALID_ARGUMENT naming the
  // field; the store's errors.
  absl::StatusOr<v1::VmPolicy> SetVmPolicy(const std::string& vm_id, const v1::VmPolicy& policy,
                                           bool merge, const AuditInfo& who);
  // Removes `vm_id`'s policy (OK also when it had none).
  absl::Status ClearVmPolicy(const std::string& vm_id, const AuditInfo& who);
  // Merges `update` (set fields only) into the cluster policy, stores and
  // publishes it. INVALID_ARGUMENT naming the field.
  absl::StatusOr<v1::ClusterPolicy> SetClusterPolicy(const v1::ClusterPolicy& update,
                                                     const AuditInfo& who);

 private:
  // Publishes a new snapshot of `cluster` and `vms`.
  void PublishLocked(v1::ClusterPolicy cluster, std::map<std::string, v1::VmPolicy> vms)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(write_mu_);

  Store* const store_;
  absl::Mutex write_mu_;  // serializes writers: store, then publish
  mutable absl::Mutex snapshot_mu_;  // guards only the pointer swap
  std::shared_ptr<const PolicySnapshot> snapshot_ ABSL_GUARDED_BY(snapshot_mu_);
};

}  // namespace membroker::broker

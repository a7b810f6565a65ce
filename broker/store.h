#pragma once
// Hard state (per-VM policies, the cluster policy, reservations, the audit
// trail of policy changes) in an embedded SQLite
// database under --state-dir. Every write is durable (synchronous=FULL,
// committed) before it returns OK, so a kill -9 loses nothing acknowledged.

#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "membroker/v1/admin.pb.h"
#include "membroker/v1/types.pb.h"

struct sqlite3;

namespace membroker::broker {

// Thread-safe: one connection, serialized by a mutex.
class Store {
 public:
  // Opens (creating if needed) DIR/membroker.db. INVALID_ARGUMENT when `dir`
  // is empty, FAILED_PRECONDITION when it is not a writable directory or the
  // database is not ours / corrupt.
  static absl::StatusOr<std::unique_ptr<Store>> Open(const std::string& dir);
  ~Store();

  // The stored cluster policy, or nullopt when none was ever stored.
  absl::StatusOr<std::optional<v1::ClusterPolicy>> LoadClusterPolicy();
  // The writes below also append `audit` (when not null) to the audit
  // trail, in the same transaction: a change is stored with its entry or
  // not at all.
  absl::Status SaveClusterPolicy(const v1::ClusterPolicy& policy,
                                 const v1::AuditEntry* audit = nullptr);

  // Every stored VM policy by VM id.
  absl::StatusOr<std::map<std::string, v1::VmPolicy>> LoadVmPolicies();
  absl::Status PutVmPolicy(const std::string& vm_id, const v1::VmPolicy& policy,
                           const v1::AuditEntry* audit = nullptr);
  // OK also when there was none.
  absl::Status DeleteVmPolicy(const std::string& vm_id, const v1::AuditEntry* audit = nullptr);

  // Every stored reservation (the Reservation message, `ready` unset), by id.
  absl::StatusOr<std::vector<v1::Reservation>> LoadReservations();
  // Stores (or replaces) a reservation by its id.
  absl::Status PutReservation(const v1::Reservation& reservation);
  // OK also when there was none.
  absl::Status DeleteReservation(const std::string& id);

  // The newest `limit` audit entries (only those of `target` when it is not
  // empty), oldest first, with their ids.
  absl::StatusOr<std::vector<v1::AuditEntry>> ListAuditEntries(size_t limit,
                                                               const std::string& target);

 private:
  explicit Store(sqlite3* db) : db_(db) {}
  absl::Status Exec(const char* sql) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Runs `write` and appends `audit` in one transaction.
  absl::Status WriteWithAudit(const std::function<absl::Status()>& write,
                              const v1::AuditEntry* audit) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status PutBlobLocked(const char* sql, const std::string& key, const std::string& blob)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  absl::Mutex mu_;
  sqlite3* db_ ABSL_GUARDED_BY(mu_);
};

}  // namespace membroker::broker

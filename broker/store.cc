#include "broker/store.h"

#include <sqlite3.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>

#include "absl/strings/str_cat.h"

namespace membroker::broker {
namespace {

absl::Status SqlError(sqlite3* db, absl::string_view what) {
  return absl::InternalError(absl::StrCat("state store: ", what, ": ", sqlite3_errmsg(db)));
}

// Finalizes a statement on every path.
struct Stmt {
  sqlite3_stmt* s = nullptr;
  ~Stmt() { sqlite3_finalize(s); }
};

}  // namespace

absl::StatusOr<std::unique_ptr<Store>> Store::Open(const std::string& dir) {
  if (dir.empty()) return absl::InvalidArgumentError("--state-dir: must not be empty");
  struct stat st;
  if (stat(dir.c_str(), &st) != 0) {
    if (mkdir(dir.c_str(), 0750) != 0) {
      return absl::FailedPreconditionError(
          absl::StrCat("--state-dir=", dir, ": cannot create directory"));
    }
  } else if (!S_ISDIR(st.st_mode)) {
    return absl::FailedPreconditionError(absl::StrCat("--state-dir=", dir, ": not a directory"));
  }
  if (access(dir.c_str(), W_OK) != 0) {
    return absl::FailedPreconditionError(absl::StrCat("--state-dir=", dir, ": not writable"));
  }
  const std::string path = dir + "/membroker.db";
  sqlite3* db = nullptr;
  if (sqlite3_open_v2(path.c_str(), &db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_FULLMUTEX,
                      nullptr) != SQLITE_OK) {
    absl::Status s = absl::FailedPreconditionError(
        absl::StrCat("--state-dir: cannot open ", path, ": ", db ? sqlite3_errmsg(db) : "out of memory"));
    sqlite3_close(db);
    return s;
  }
  sqlite3_busy_timeout(db, 5000);
  std::unique_ptr<Store> store(new Store(db));
  absl::MutexLock lock(&store->mu_);
  for (const char* sql : {
           "PRAGMA journal_mode=WAL",
           "PRAGMA synchronous=FULL",
           "CREATE TABLE IF NOT EXISTS cluster_policy (id INTEGER PRIMARY KEY CHECK (id = 1), "
           "policy BLOB NOT NULL)",
           "CREATE TABLE IF NOT EXISTS vm_policy (vm_id TEXT PRIMARY KEY, policy BLOB NOT NULL)",
           "CREATE TABLE IF NOT EXISTS reservation (id TEXT PRIMARY KEY, reservation BLOB NOT "
           "NULL)",
           "CREATE TABLE IF NOT EXISTS audit_log (id INTEGER PRIMARY KEY AUTOINCREMENT, "
           "target TEXT NOT NULL, entry BLOB NOT NULL)",
       }) {
    absl::Status s = store->Exec(sql);
    if (!s.ok()) {
      return absl::FailedPreconditionError(
          absl::StrCat("--state-dir: ", path, " is not a usable state store: ", s.message()));
    }
  }
  return store;
}

Store::~Store() {
  absl::MutexLock lock(&mu_);
  sqlite3_close(db_);
}

absl::Status Store::Exec(const char* sql) {
  char* err = nullptr;
  if (sqlite3_exec(db_, sql, nullptr, nullptr, &err) != SQLITE_OK) {
    absl::Status s = absl::InternalError(absl::StrCat("state store: ", err ? err : "error"));
    sqlite3_free(err);
    return s;
  }
  return absl::OkStatus();
}

absl::Status Store::PutBlobLocked(const char* sql, const std::string& key,
                                  const std::string& blob) {
  Stmt st;
  if (sqlite3_prepare_v2(db_, sql, -1, &st.s, nullptr) != SQLITE_OK) return SqlError(db_, "prepare");
  int idx = 1;
  if (!key.empty()) sqlite3_bind_text(st.s, idx++, key.data(), static_cast<int>(key.size()), SQLITE_TRANSIENT);
  sqlite3_bind_blob(st.s, idx, blob.data(), static_cast<int>(blob.size()), SQLITE_TRANSIENT);
  if (sqlite3_step(st.s) != SQLITE_DONE) return SqlError(db_, "write");
  return absl::OkStatus();
}

absl::Status Store::WriteWithAudit(const std::function<absl::Status()>& write,
                                   const v1::AuditEntry* audit) {
  if (audit == nullptr) return write();
  if (absl::Status s = Exec("BEGIN IMMEDIATE"); !s.ok()) return s;
  absl::Status s = write();
  if (s.ok()) {
    s = PutBlobLocked("INSERT INTO audit_log (target, entry) VALUES (?1, ?2)", audit->target(),
                      audit->SerializeAsString());
  }
  if (s.ok()) s = Exec("COMMIT");
  if (!s.ok()) Exec("ROLLBACK").IgnoreError();
  return s;
}

absl::StatusOr<std::optional<v1::ClusterPolicy>> Store::LoadClusterPolicy() {
  absl::MutexLock lock(&mu_);
  Stmt st;
  if (sqlite3_prepare_v2(db_, "SELECT policy FROM cluster_policy WHERE id = 1", -1, &st.s,
                         nullptr) != SQLITE_OK) {
    return SqlError(db_, "prepare");
  }
  const int rc = sqlite3_step(st.s);
  if (rc == SQLITE_DONE) return std::optional<v1::ClusterPolicy>();
  if (rc != SQLITE_ROW) return SqlError(db_, "read cluster policy");
  v1::ClusterPolicy p;
  if (!p.ParseFromArray(sqlite3_column_blob(st.s, 0), sqlite3_column_bytes(st.s, 0))) {
    return absl::DataLossError("state store: stored cluster policy does not parse");
  }
  return std::optional<v1::ClusterPolicy>(p);
}

absl::Status Store::SaveClusterPolicy(const v1::ClusterPolicy& policy,
                                      const v1::AuditEntry* audit) {
  absl::MutexLock lock(&mu_);
  return WriteWithAudit(
      [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
        return PutBlobLocked("INSERT OR REPLACE INTO cluster_policy (id, policy) VALUES (1, ?1)",
                             "", policy.SerializeAsString());
      },
      audit);
}

absl::StatusOr<std::map<std::string, v1::VmPolicy>> Store::LoadVmPolicies() {
  absl::MutexLock lock(&mu_);
  Stmt st;
  if (sqlite3_prepare_v2(db_, "SELECT vm_id, policy FROM vm_policy ORDER BY vm_id", -1, &st.s,
                         nullptr) != SQLITE_OK) {
    return SqlError(db_, "prepare");
  }
  std::map<std::string, v1::VmPolicy> out;
  int rc;
  while ((rc = sqlite3_step(st.s)) == SQLITE_ROW) {
    const char* id = reinterpret_cast<const char*>(sqlite3_column_text(st.s, 0));
    v1::VmPolicy p;
    if (id == nullptr ||
        !p.ParseFromArray(sqlite3_column_blob(st.s, 1), sqlite3_column_bytes(st.s, 1))) {
      return absl::DataLossError("state store: a stored VM policy does not parse");
    }
    out[id] = p;
  }
  if (rc != SQLITE_DONE) return SqlError(db_, "read VM policies");
  return out;
}

absl::Status Store::PutVmPolicy(const std::string& vm_id, const v1::VmPolicy& policy,
                                const v1::AuditEntry* audit) {
  absl::MutexLock lock(&mu_);
  return WriteWithAudit(
      [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
        return PutBlobLocked("INSERT OR REPLACE INTO vm_policy (vm_id, policy) VALUES (?1, ?2)",
                             vm_id, policy.SerializeAsString());
      },
      audit);
}

absl::Status Store::DeleteVmPolicy(const std::string& vm_id, const v1::AuditEntry* audit) {
  absl::MutexLock lock(&mu_);
  return WriteWithAudit(
      [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
        Stmt st;
        if (sqlite3_prepare_v2(db_, "DELETE FROM vm_policy WHERE vm_id = ?1", -1, &st.s, nullptr) !=
            SQLITE_OK) {
          return SqlError(db_, "prepare");
        }
        sqlite3_bind_text(st.s, 1, vm_id.data(), static_cast<int>(vm_id.size()), SQLITE_TRANSIENT);
        if (sqlite3_step(st.s) != SQLITE_DONE) return SqlError(db_, "delete");
        return absl::OkStatus();
      },
      audit);
}

absl::StatusOr<std::vector<v1::Reservation>> Store::LoadReservations() {
  absl::MutexLock lock(&mu_);
  Stmt st;
  if (sqlite3_prepare_v2(db_, "SELECT reservation FROM reservation ORDER BY id", -1, &st.s,
                         nullptr) != SQLITE_OK) {
    return SqlError(db_, "prepare");
  }
  std::vector<v1::Reservation> out;
  int rc;
  while ((rc = sqlite3_step(st.s)) == SQLITE_ROW) {
    v1::Reservation r;
    if (!r.ParseFromArray(sqlite3_column_blob(st.s, 0), sqlite3_column_bytes(st.s, 0))) {
      return absl::DataLossError("state store: a stored reservation does not parse");
    }
    out.push_back(std::move(r));
  }
  if (rc != SQLITE_DONE) return SqlError(db_, "read reservations");
  return out;
}

absl::Status Store::PutReservation(const v1::Reservation& reservation) {
  absl::MutexLock lock(&mu_);
  return PutBlobLocked("INSERT OR REPLACE INTO reservation (id, reservation) VALUES (?1, ?2)",
                       reservation.id(), reservation.SerializeAsString());
}

absl::Status Store::DeleteReservation(const std::string& id) {
  absl::MutexLock lock(&mu_);
  Stmt st;
  if (sqlite3_prepare_v2(db_, "DELETE FROM reservation WHERE id = ?1", -1, &st.s, nullptr) !=
      SQLITE_OK) {
    return SqlError(db_, "prepare");
  }
  sqlite3_bind_text(st.s, 1, id.data(), static_cast<int>(id.size()), SQLITE_TRANSIENT);
  if (sqlite3_step(st.s) != SQLITE_DONE) return SqlError(db_, "delete");
  return absl::OkStatus();
}

absl::StatusOr<std::vector<v1::AuditEntry>> Store::ListAuditEntries(size_t limit,
                                                                    const std::string& target) {
  absl::MutexLock lock(&mu_);
  Stmt st;
  const char* sql = target.empty()
                        ? "SELECT id, entry FROM audit_log ORDER BY id DESC LIMIT ?1"
                        : "SELECT id, entry FROM audit_log WHERE target = ?2 ORDER BY id DESC "
                          "LIMIT ?1";
  if (sqlite3_prepare_v2(db_, sql, -1, &st.s, nullptr) != SQLITE_OK) {
    return SqlError(db_, "prepare");
  }
  sqlite3_bind_int64(st.s, 1, static_cast<sqlite3_int64>(limit));
  if (!target.empty()) {
    sqlite3_bind_text(st.s, 2, target.data(), static_cast<int>(target.size()), SQLITE_TRANSIENT);
  }
  std::vector<v1::AuditEntry> out;
  int rc;
  while ((rc = sqlite3_step(st.s)) == SQLITE_ROW) {
    v1::AuditEntry e;
    if (!e.ParseFromArray(sqlite3_column_blob(st.s, 1), sqlite3_column_bytes(st.s, 1))) {
      return absl::DataLossError("state store: an audit entry does not parse");
    }
    e.set_id(static_cast<uint64_t>(sqlite3_column_int64(st.s, 0)));
    out.push_back(std::move(e));
  }
  if (rc != SQLITE_DONE) return SqlError(db_, "read the audit trail");
  std::reverse(out.begin(), out.end());
  return out;
}

}  // namespace membroker::broker

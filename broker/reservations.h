#pragma once
// Reservations: memory held free on a host for a VM about to start.
//
//   1. Reserve validates the request, refuses at once what can never fit
//      (FAILED_PRECONDITION: the holds of floors, pinned VMs and stuck
//      balloons plus the host's other reservations leave too little),
//      stores the reservation durably and re-decides the host, whose
//      capacity is now net of it (policy::HostStepState::reserved_bytes):
//      the decision reclaims toward it within floors and step limits.
//   2. The reservation is ready when a report shows the room free:
//      capacity - sum of balloon actuals >= the host's reserved bytes.
//      A waiting call completes then, from the worker thread (never on a
//      gRPC callback thread), or at its deadline with FAILED_PRECONDITION
//      (the holds do not leave room; names the VMs) or DEADLINE_EXCEEDED
//      (names the balloons still moving). A failed reservation is removed.
//   3. A reservation ends on Release, at its expiry (wall time, so it
//      survives a restart), or when the VM named by for_vm_id first
//      appears on the host (its memory then counts as that VM's).
//
// Lock order: a host's lock (Fleet) may be held while taking mu_
// (ReservedBytes, HandOver); mu_ is never held while calling into the
// Fleet or the Store.

#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "broker/fleet.h"
#include "broker/store.h"
#include "common/clock.h"
#include "membroker/v1/admin.pb.h"

namespace membroker::broker {

// Default and largest lifetime of a reservation, and the longest wait.
inline constexpr absl::Duration kDefaultReservationTtl = absl::Minutes(10);
inline constexpr absl::Duration kMaxReservationTtl = absl::Hours(24);
inline constexpr absl::Duration kMaxReservationWait = absl::Hours(1);

// Thread-safe.
class Reservations {
 public:
  // Completes one Reserve call (from the worker thread or the caller's).
  using Done = std::function<void(absl::StatusOr<v1::Reservation>)>;

  // None owned; all outlive this object.
  Reservations(Clock* clock, Store* store);
  // Stops the worker; waiting calls complete with UNAVAILABLE.
  ~Reservations();

  // Loads stored reservations, dropping (and deleting) expired ones.
  absl::Status Load();
  // Attaches to `fleet` and starts the worker thread (expiry, waits).
  void Start(Fleet* fleet);

  // --- Bookkeeping (no Fleet calls) ---

  // OK, or INVALID_ARGUMENT naming the field of `request` that is wrong.
  static absl::Status Validate(const v1::ReserveRequest& request);
  // Validates `request` (INVALID_ARGUMENT naming the field), gives it an id
  // and stores it. Does not check the host's room.
  absl::StatusOr<v1::Reservation> Add(const v1::ReserveRequest& request);
  // Ends a reservation. NOT_FOUND for an unknown id.
  absl::Status Remove(const std::string& id);
  // Active reservations (of `host_id` when not empty), oldest first, with
  // `ready` as last computed.
  std::vector<v1::Reservation> List(const std::string& host_id) const;
  // Sum of the host's reservations.
  uint64_t ReservedBytes(const std::string& host_id) const;
  // Ends the reservations of `host_id` made for one of `new_vm_ids`;
  // returns true when any ended. Store deletes happen on the worker.
  bool HandOver(const std::string& host_id, const std::vector<std::string>& new_vm_ids);
  // Ends every reservation whose expiry is at or before the clock's wall
  // time; returns them.
  std::vector<v1::Reservation> ExpireDue();

  // --- Calls ---

  // Steps 1-2 for one Reserve call: `done` runs exactly once, maybe before
  // this returns. Returns a waiter id for Cancel (0: already done).
  uint64_t Reserve(const v1::ReserveRequest& request, Done done);
  // The caller went away: ends the wait and removes its reservation.
  // Returns false when the wait already ended (its `done` ran or is
  // running); true when `done` will never run.
  bool Cancel(uint64_t waiter);
  // A report of `host_id` was decided (called without the host's lock).
  void OnReport(const std::string& host_id);

  // Calls waiting now (for tests).
  size_t WaitingCount() const;

 private:
  struct Waiter {
    std::string reservation_id;
    std::string host_id;
    absl::Time deadline;  // monotonic
    Done done;
  };

  // Whether `room` holds every reservation of its host.
  static bool Ready(const HostRoom& room);
  // Why a reservation of `bytes` cannot be met on `room`; empty when the
  // holds leave room for it.
  static std::string CannotFit(const HostRoom& room, uint64_t bytes);
  bool HasWorkLocked() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Time NextDeadlineLocked() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void Run();
  // Checks the waiters of `host_id` against its room; completes those met.
  void CheckHost(const std::string& host_id);
  void SetReady(const std::string& id, bool ready);

  Clock* const clock_;
  Store* const store_;
  Fleet* fleet_ = nullptr;  // set by Start

  mutable absl::Mutex mu_;
  std::map<std::string, v1::Reservation> by_id_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, uint64_t> reserved_by_host_ ABSL_GUARDED_BY(mu_);
  uint64_t next_id_ ABSL_GUARDED_BY(mu_) = 1;
  std::map<uint64_t, Waiter> waiters_ ABSL_GUARDED_BY(mu_);
  uint64_t next_waiter_ ABSL_GUARDED_BY(mu_) = 1;
  std::set<std::string> dirty_hosts_ ABSL_GUARDED_BY(mu_);
  std::vector<std::string> pending_deletes_ ABSL_GUARDED_BY(mu_);
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  // Waiters registered (read without mu_ on the report path).
  std::atomic<size_t> waiting_{0};
  std::thread worker_;
};

}  // namespace membroker::broker

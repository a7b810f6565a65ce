#pragma once
// Injected time. Code below main never reads the system clock or sleeps
// directly: it takes a Clock, so tests and the simulator can drive time.
//
// A Clock has two halves, as in Envoy's TimeSource:
//   - Now(): wall time, for timestamps that leave the process (reports,
//     decisions, guest statistics ages).
//   - MonotonicNow(): a clock that never jumps, for intervals, timeouts and
//     deadlines. Only differences and comparisons between its values mean
//     anything; the absolute value is arbitrary.
// Waits are clock-driven too: AwaitWithDeadline blocks on an absl::Mutex
// condition until it holds or a monotonic deadline passes. With RealClock
// the deadline is real; with ManualClock it passes only when a test calls
// Advance, which wakes every waiter whose deadline it reaches. A timeout
// test therefore runs in microseconds and never depends on the machine's
// speed.

#include <chrono>
#include <cstddef>
#include <memory>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"

namespace membroker {

// A source of wall and monotonic time and of timed waits. Implementations
// are thread-safe.
class Clock {
 public:
  virtual ~Clock() = default;

  // Returns the current wall time.
  virtual absl::Time Now() const = 0;

  // Returns the current monotonic time (see the file comment: compare or
  // subtract, never print as a date).
  virtual absl::Time MonotonicNow() const = 0;

  // Blocks until `cond` holds or MonotonicNow() reaches `deadline`. `mu`
  // must be held by the caller; it is released while waiting and held
  // again on return, as with absl::Mutex::AwaitWithDeadline. Returns the
  // value of `cond` at return. `cond` must only depend on state guarded by
  // `mu`.
  virtual bool AwaitWithDeadline(absl::Mutex* mu, const absl::Condition& cond,
                                 absl::Time deadline) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) = 0;

  // AwaitWithDeadline with the deadline `timeout` from now.
  bool AwaitWithTimeout(absl::Mutex* mu, const absl::Condition& cond, absl::Duration timeout) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    return AwaitWithDeadline(mu, cond, MonotonicNow() + timeout);
  }

  // Blocks until MonotonicNow() reaches `deadline`.
  void SleepUntil(absl::Time deadline) const {
    absl::Mutex mu;
    const bool never = false;
    absl::MutexLock lock(&mu);
    AwaitWithDeadline(&mu, absl::Condition(&never), deadline);
  }

  // Blocks for `d` of this clock's time.
  void SleepFor(absl::Duration d) const { SleepUntil(MonotonicNow() + d); }
};

// The system's clocks: absl::Now() for wall time, std::chrono::steady_clock
// for monotonic time, real waits.
class RealClock : public Clock {
 public:
  absl::Time Now() const override { return absl::Now(); }

  absl::Time MonotonicNow() const override {
    return absl::UnixEpoch() +
           absl::FromChrono(std::chrono::steady_clock::now().time_since_epoch());
  }

  bool AwaitWithDeadline(absl::Mutex* mu, const absl::Condition& cond, absl::Time deadline) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) override {
    // Re-check against the monotonic clock: absl's own timeout may use a
    // different clock, so wait in slices until our deadline has passed.
    while (true) {
      const absl::Duration left = deadline - MonotonicNow();
      if (left <= absl::ZeroDuration()) return cond.Eval();
      if (mu->AwaitWithTimeout(cond, left)) return true;
    }
  }

  // A process-wide instance (stateless, so sharing it is safe).
  static RealClock* Get() {
    static RealClock clock;
    return &clock;
  }
};

// Simulated time: both clocks move only when told to. Waits end when their
// condition holds or when Advance (or AdvanceTo) moves monotonic time to
// their deadline. Thread-safe.
//
// Lock order: a waiter holds its own mutex, then takes mu_ to register;
// Advance takes mu_, releases it, then takes each due waiter's mutex.
class ManualClock : public Clock {
 public:
  // Wall time starts at `start`; monotonic time starts at an arbitrary
  // point of its own.
  explicit ManualClock(absl::Time start = absl::UnixEpoch() + absl::Hours(24 * 365 * 50));

  absl::Time Now() const override;
  absl::Time MonotonicNow() const override;
  bool AwaitWithDeadline(absl::Mutex* mu, const absl::Condition& cond, absl::Time deadline) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) override;

  // Moves wall and monotonic time forward by `d` and wakes the waiters
  // whose deadline is reached, before returning. A negative `d` moves only
  // the wall clock back (a wall clock jump): monotonic time never goes
  // back.
  void Advance(absl::Duration d);

  // Sets the wall time only (a wall clock jump); monotonic time and waiters
  // are unaffected.
  void Set(absl::Time t);

  // Number of threads blocked in AwaitWithDeadline or SleepUntil with a
  // deadline still ahead. Lets a test wait until the code under test is
  // parked on this clock before it advances time.
  size_t pending_waits() const;

  // The earliest deadline among pending waits (InfiniteFuture: none).
  absl::Time NextWaitDeadline() const;

 private:
  struct Waiter;

  mutable absl::Mutex mu_;
  absl::Time wall_ ABSL_GUARDED_BY(mu_);
  absl::Time monotonic_ ABSL_GUARDED_BY(mu_);
  mutable std::vector<std::shared_ptr<Waiter>> waiters_ ABSL_GUARDED_BY(mu_);
};

}  // namespace membroker

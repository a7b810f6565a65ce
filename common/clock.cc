#include "common/clock.h"

#include <algorithm>
#include <atomic>

namespace membroker {

// One blocked AwaitWithDeadline. `fired` is written and read under `*mu`
// (the waiter's own mutex); `pins` counts Advance calls that took the
// waiter out of the list and have not yet fired it.
struct ManualClock::Waiter {
  absl::Time deadline;
  absl::Mutex* mu = nullptr;
  bool fired = false;
  std::atomic<int> pins{0};
};

ManualClock::ManualClock(absl::Time start)
    : wall_(start), monotonic_(absl::UnixEpoch() + absl::Hours(1)) {}

absl::Time ManualClock::Now() const {
  absl::MutexLock lock(&mu_);
  return wall_;
}

absl::Time ManualClock::MonotonicNow() const {
  absl::MutexLock lock(&mu_);
  return monotonic_;
}

bool ManualClock::AwaitWithDeadline(absl::Mutex* mu, const absl::Condition& cond,
                                    absl::Time deadline) const {
  if (cond.Eval()) return true;
  auto waiter = std::make_shared<Waiter>();
  waiter->deadline = deadline;
  waiter->mu = mu;
  {
    absl::MutexLock lock(&mu_);
    if (monotonic_ >= deadline) return false;
    waiters_.push_back(waiter);
  }
  Waiter* w = waiter.get();
  auto done = [&cond, w]() { return w->fired || cond.Eval(); };
  mu->Await(absl::Condition(&done));
  {
    absl::MutexLock lock(&mu_);
    auto it = std::find(waiters_.begin(), waiters_.end(), waiter);
    if (it != waiters_.end()) waiters_.erase(it);
  }
  // An Advance that already took this waiter out of the list will lock
  // `mu` to fire it: let it finish before the caller may free `mu`.
  auto unpinned = [w]() { return w->pins.load() == 0; };
  mu->Await(absl::Condition(&unpinned));
  return cond.Eval();
}

void ManualClock::Advance(absl::Duration d) {
  std::vector<std::shared_ptr<Waiter>> due;
  {
    absl::MutexLock lock(&mu_);
    wall_ += d;
    if (d <= absl::ZeroDuration()) return;
    monotonic_ += d;
    for (auto it = waiters_.begin(); it != waiters_.end();) {
      if ((*it)->deadline <= monotonic_) {
        (*it)->pins.fetch_add(1);
        due.push_back(*it);
        it = waiters_.erase(it);
      } else {
        ++it;
      }
    }
  }
  for (const std::shared_ptr<Waiter>& w : due) {
    w->mu->Lock();
    w->fired = true;
    w->pins.fetch_sub(1);
    w->mu->Unlock();
  }
}

void ManualClock::Set(absl::Time t) {
  absl::MutexLock lock(&mu_);
  wall_ = t;
}

size_t ManualClock::pending_waits() const {
  absl::MutexLock lock(&mu_);
  return waiters_.size();
}

absl::Time ManualClock::NextWaitDeadline() const {
  absl::MutexLock lock(&mu_);
  absl::Time next = absl::InfiniteFuture();
  for (const auto& w : waiters_) next = std::min(next, w->deadline);
  return next;
}

}  // namespace membroker

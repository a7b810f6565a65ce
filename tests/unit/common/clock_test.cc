#include "common/clock.h"

#include <gtest/gtest.h>

#include <atomic>
#include <thread>

#include "absl/synchronization/mutex.h"

namespace membroker {
namespace {

// Real-time bound for the few real waits below: generous, only a failure
// guard (the tests never assert on how fast something happened).
constexpr absl::Duration kRealBound = absl::Seconds(30);

// Waits (really) until `clock` has `n` pending waits; false at kRealBound.
bool WaitForWaiters(const ManualClock& clock, size_t n) {
  const absl::Time deadline = absl::Now() + kRealBound;
  while (absl::Now() < deadline) {
    if (clock.pending_waits() == n) return true;
    absl::SleepFor(absl::Milliseconds(1));
  }
  return false;
}

TEST(ManualClockTest, WallAndMonotonicMoveTogetherButSetMovesOnlyWall) {
  ManualClock clock(absl::FromUnixSeconds(1000));
  const absl::Time mono = clock.MonotonicNow();
  clock.Advance(absl::Seconds(5));
  EXPECT_EQ(clock.Now(), absl::FromUnixSeconds(1005));
  EXPECT_EQ(clock.MonotonicNow() - mono, absl::Seconds(5));
  clock.Set(absl::FromUnixSeconds(10));  // a wall clock jump backwards
  EXPECT_EQ(clock.Now(), absl::FromUnixSeconds(10));
  EXPECT_EQ(clock.MonotonicNow() - mono, absl::Seconds(5));
  clock.Advance(-absl::Seconds(3));  // wall only
  EXPECT_EQ(clock.Now(), absl::FromUnixSeconds(7));
  EXPECT_EQ(clock.MonotonicNow() - mono, absl::Seconds(5));
}

TEST(ManualClockTest, AWaitEndsOnlyWhenAdvancePassesItsDeadline) {
  ManualClock clock;
  absl::Mutex mu;
  bool flag = false;
  std::atomic<int> result{-1};
  std::thread waiter([&] {
    absl::MutexLock lock(&mu);
    result = clock.AwaitWithTimeout(&mu, absl::Condition(&flag), absl::Seconds(10)) ? 1 : 0;
  });
  ASSERT_TRUE(WaitForWaiters(clock, 1));
  EXPECT_EQ(clock.NextWaitDeadline() - clock.MonotonicNow(), absl::Seconds(10));
  clock.Advance(absl::Seconds(9));
  // Still waiting: one second of simulated time is left.
  EXPECT_EQ(clock.pending_waits(), 1u);
  EXPECT_EQ(result.load(), -1);
  clock.Advance(absl::Seconds(1));
  waiter.join();  // Advance woke it
  EXPECT_EQ(result.load(), 0);
  EXPECT_EQ(clock.pending_waits(), 0u);
}

TEST(ManualClockTest, AWaitEndsWhenItsConditionHolds) {
  ManualClock clock;
  absl::Mutex mu;
  bool flag = false;
  std::atomic<int> result{-1};
  std::thread waiter([&] {
    absl::MutexLock lock(&mu);
    result = clock.AwaitWithTimeout(&mu, absl::Condition(&flag), absl::Hours(1)) ? 1 : 0;
  });
  ASSERT_TRUE(WaitForWaiters(clock, 1));
  {
    absl::MutexLock lock(&mu);
    flag = true;
  }
  waiter.join();
  EXPECT_EQ(result.load(), 1);
  EXPECT_EQ(clock.pending_waits(), 0u);
}

TEST(ManualClockTest, PastDeadlineReturnsAtOnceAndSleepFollowsAdvance) {
  ManualClock clock;
  absl::Mutex mu;
  bool flag = false;
  {
    absl::MutexLock lock(&mu);
    EXPECT_FALSE(clock.AwaitWithDeadline(&mu, absl::Condition(&flag), clock.MonotonicNow()));
  }
  std::atomic<bool> woke{false};
  std::thread sleeper([&] {
    clock.SleepFor(absl::Minutes(5));
    woke = true;
  });
  ASSERT_TRUE(WaitForWaiters(clock, 1));
  clock.Advance(absl::Minutes(4));
  EXPECT_FALSE(woke.load());
  clock.Advance(absl::Minutes(2));
  sleeper.join();
  EXPECT_TRUE(woke.load());
}

TEST(ManualClockTest, ManyWaitersWakeAsTheirDeadlinesPass) {
  ManualClock clock;
  absl::Mutex mu;
  bool never = false;
  std::atomic<int> woke{0};
  std::vector<std::thread> threads;
  for (int i = 1; i <= 4; ++i) {
    threads.emplace_back([&, i] {
      absl::MutexLock lock(&mu);
      clock.AwaitWithTimeout(&mu, absl::Condition(&never), absl::Seconds(i));
      ++woke;
    });
  }
  ASSERT_TRUE(WaitForWaiters(clock, 4));
  clock.Advance(absl::Milliseconds(2500));  // deadlines 1 s and 2 s pass
  ASSERT_TRUE(WaitForWaiters(clock, 2));
  clock.Advance(absl::Seconds(2));
  for (auto& t : threads) t.join();
  EXPECT_EQ(woke.load(), 4);
}

TEST(RealClockTest, MonotonicTimeDoesNotGoBackAndShortWaitsEnd) {
  RealClock* clock = RealClock::Get();
  const absl::Time a = clock->MonotonicNow();
  absl::Mutex mu;
  bool never = false;
  absl::MutexLock lock(&mu);
  EXPECT_FALSE(clock->AwaitWithTimeout(&mu, absl::Condition(&never), absl::Milliseconds(1)));
  EXPECT_GE(clock->MonotonicNow() - a, absl::Milliseconds(1));
}

}  // namespace
}  // namespace membroker

#include <gtest/gtest.h>

#include "node-agent/broker_link.h"

namespace membroker::agent {
namespace {

TEST(BackoffTest, DoublesWithinJitterUpToMax) {
  BackoffParams p;  // 100 ms doubling to 10 s, +-20 %
  Backoff backoff(p, /*seed=*/42);
  double base = 0.1;
  for (int i = 0; i < 12; ++i) {
    const double d = absl::ToDoubleSeconds(backoff.Next());
    EXPECT_GE(d, base * 0.8 - 1e-9) << "attempt " << i;
    EXPECT_LE(d, base * 1.2 + 1e-9) << "attempt " << i;
    base = std::min(10.0, base * 2);
  }
  // Capped: every further delay is within 10 s +- 20 %.
  for (int i = 0; i < 50; ++i) EXPECT_LE(absl::ToDoubleSeconds(backoff.Next()), 12.0 + 1e-9);
}

TEST(BackoffTest, JitterSpreadsDelays) {
  BackoffParams p;
  p.multiplier = 1.0;
  Backoff backoff(p, 7);
  double lo = 1e9, hi = 0;
  for (int i = 0; i < 200; ++i) {
    const double d = absl::ToDoubleSeconds(backoff.Next());
    lo = std::min(lo, d);
    hi = std::max(hi, d);
  }
  // 200 uniform draws in [80, 120] ms span well over half the range.
  EXPECT_LT(lo, 0.095);
  EXPECT_GT(hi, 0.105);
}

TEST(BackoffTest, ResetStartsOver) {
  BackoffParams p;
  p.jitter = 0;
  Backoff backoff(p, 1);
  EXPECT_EQ(backoff.Next(), absl::Milliseconds(100));
  EXPECT_EQ(backoff.Next(), absl::Milliseconds(200));
  EXPECT_EQ(backoff.Next(), absl::Milliseconds(400));
  backoff.Reset();
  EXPECT_EQ(backoff.Next(), absl::Milliseconds(100));
}

}  // namespace
}  // namespace membroker::agent

// The shared backoff (common/backoff.h) used by the broker link and the
// libvirt and QMP backends.

#include "common/backoff.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <vector>

namespace membroker {
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
  for (int i = 0; i < 50; ++i) {
    const double d = absl::ToDoubleSeconds(backoff.Next());
    EXPECT_LE(d, 12.0 + 1e-9);
    EXPECT_GE(d, 8.0 - 1e-9);
  }
}

TEST(BackoffTest, SetMaxCapsLaterDelays) {
  BackoffParams p;  // 100 ms doubling to 10 s, +-20 %
  Backoff backoff(p, /*seed=*/3);
  for (int i = 0; i < 10; ++i) backoff.Next();  // grown to the 10 s cap
  backoff.SetMax(absl::Seconds(1));
  for (int i = 0; i < 20; ++i) {
    const double d = absl::ToDoubleSeconds(backoff.Next());
    EXPECT_LE(d, 1.2 + 1e-9);
    EXPECT_GE(d, 0.8 - 1e-9);
  }
  // Never below the initial delay.
  backoff.SetMax(absl::ZeroDuration());
  backoff.Reset();
  EXPECT_GE(absl::ToDoubleSeconds(backoff.Next()), 0.08 - 1e-9);
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

TEST(BackoffTest, SameSeedSameDelays) {
  BackoffParams p;
  Backoff a(p, 99);
  Backoff b(p, 99);
  Backoff c(p, 100);
  std::vector<absl::Duration> da, db, dc;
  for (int i = 0; i < 10; ++i) {
    da.push_back(a.Next());
    db.push_back(b.Next());
    dc.push_back(c.Next());
  }
  EXPECT_EQ(da, db);
  EXPECT_NE(da, dc);
}

TEST(BackoffTest, ResetStartsOver) {
  BackoffParams p;
  p.jitter = 0;
  Backoff backoff(p, 1);
  EXPECT_EQ(backoff.Next(), absl::Milliseconds(100));
  EXPECT_EQ(backoff.Next(), absl::Milliseconds(200));
  EXPECT_EQ(backoff.Next(), absl::Milliseconds(400));
  EXPECT_EQ(backoff.failures(), 3);
  backoff.Reset();
  EXPECT_EQ(backoff.failures(), 0);
  EXPECT_EQ(backoff.Next(), absl::Milliseconds(100));
}

TEST(BackoffTest, FailSchedulesTheNextAttemptOnTheCallersTime) {
  BackoffParams p;
  p.initial = absl::Seconds(1);
  p.max = absl::Seconds(4);
  p.jitter = 0;
  Backoff backoff(p, 1);
  const absl::Time t0 = absl::FromUnixSeconds(1000);
  EXPECT_TRUE(backoff.Ready(t0));  // nothing failed yet
  EXPECT_EQ(backoff.Fail(t0), absl::Seconds(1));
  EXPECT_FALSE(backoff.Ready(t0 + absl::Milliseconds(999)));
  EXPECT_TRUE(backoff.Ready(t0 + absl::Seconds(1)));
  EXPECT_EQ(backoff.next_attempt(), t0 + absl::Seconds(1));
  // 1, 2, 4, 4: capped at max.
  EXPECT_EQ(backoff.Fail(t0 + absl::Seconds(1)), absl::Seconds(2));
  EXPECT_EQ(backoff.Fail(t0 + absl::Seconds(3)), absl::Seconds(4));
  EXPECT_EQ(backoff.Fail(t0 + absl::Seconds(7)), absl::Seconds(4));
  EXPECT_EQ(backoff.next_attempt(), t0 + absl::Seconds(11));
  backoff.Reset();
  EXPECT_TRUE(backoff.Ready(t0));
  EXPECT_EQ(backoff.Fail(t0), absl::Seconds(1));
}

TEST(BackoffTest, JitteredFailStaysWithinItsBand) {
  BackoffParams p;
  p.initial = absl::Seconds(1);
  p.max = absl::Seconds(30);
  Backoff backoff(p, 5);
  const absl::Time t0 = absl::FromUnixSeconds(1000);
  const absl::Duration d = backoff.Fail(t0);
  EXPECT_GE(d, absl::Milliseconds(800));
  EXPECT_LE(d, absl::Milliseconds(1200));
  EXPECT_FALSE(backoff.Ready(t0 + absl::Milliseconds(799)));
  EXPECT_TRUE(backoff.Ready(t0 + absl::Milliseconds(1200)));
}

TEST(BackoffTest, ValidateNamesTheBadField) {
  EXPECT_TRUE(ValidateBackoffParams(BackoffParams{}).ok());
  struct Case {
    const char* name;
    BackoffParams params;
    const char* field;
  };
  std::vector<Case> cases;
  BackoffParams p;
  p.initial = absl::ZeroDuration();
  cases.push_back({"zero initial", p, "initial"});
  p = {};
  p.max = absl::Milliseconds(50);
  cases.push_back({"max below initial", p, "max"});
  p = {};
  p.multiplier = 0.5;
  cases.push_back({"shrinking", p, "multiplier"});
  p = {};
  p.jitter = 1.5;
  cases.push_back({"jitter above 1", p, "jitter"});
  p = {};
  p.jitter = -0.1;
  cases.push_back({"negative jitter", p, "jitter"});
  p = {};
  p.healthy_after = absl::Seconds(-1);
  cases.push_back({"negative healthy_after", p, "healthy_after"});
  for (const Case& c : cases) {
    absl::Status s = ValidateBackoffParams(c.params, "qmp backoff");
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << c.name;
    EXPECT_NE(s.message().find(c.field), absl::string_view::npos) << c.name << ": " << s;
    EXPECT_NE(s.message().find("qmp backoff"), absl::string_view::npos) << c.name;
  }
}

TEST(BackoffTest, BadParamsAreClampedNotLooped) {
  BackoffParams p;
  p.initial = absl::Seconds(-1);
  p.max = absl::Seconds(-5);
  p.multiplier = -3;
  p.jitter = 7;
  Backoff backoff(p, 3);
  for (int i = 0; i < 10; ++i) EXPECT_GE(backoff.Next(), absl::ZeroDuration());
}

}  // namespace
}  // namespace membroker

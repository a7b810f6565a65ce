// The one rule for trusting guest statistics (common/guest_stats.h), a
// table with one row per rule, at both edges where a rule has an edge.

#include "common/guest_stats.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <limits>
#include <string>
#include <vector>

namespace membroker {
namespace {

using membroker::v1::GuestStats;
using membroker::v1::VmSample;
using ::testing::HasSubstr;

constexpr uint64_t kMiB = uint64_t{1} << 20;
constexpr uint64_t kMax = 4096 * kMiB;
const absl::Duration kInterval = absl::Seconds(1);

// A VM of 4 GiB whose guest sees 4000 MiB, 2000 MiB available, read 0.5 s
// after the guest sent them.
VmSample Good() {
  VmSample s;
  s.set_vm_id("vm-1");
  s.set_max_bytes(kMax);
  GuestStats& g = *s.mutable_stats();
  g.set_total_bytes(4000 * kMiB);
  g.set_available_bytes(2000 * kMiB);
  g.set_free_bytes(1000 * kMiB);
  g.set_swap_in_bytes_total(10);
  g.set_swap_out_bytes_total(20);
  g.set_major_faults_total(30);
  g.set_minor_faults_total(40);
  g.set_oom_kills_total(0);
  g.set_age_seconds(0.5);
  return s;
}

struct Case {
  const char* name;
  std::function<void(VmSample&)> mutate;
  // "" when still trusted, else a part of the reason.
  std::string reason;
  absl::Duration interval = kInterval;
};

TEST(GuestStatsProblemTest, EachRule) {
  const std::vector<Case> cases = {
      {"good", [](VmSample&) {}, ""},
      // 1. The agent's verdict stands, whatever the numbers.
      {"flagged with a reason",
       [](VmSample& s) {
         s.mutable_stats()->set_untrusted(true);
         s.mutable_stats()->set_untrusted_reason("guest rebooted");
       },
       "guest rebooted"},
      {"flagged without a reason", [](VmSample& s) { s.mutable_stats()->set_untrusted(true); },
       "flagged by agent"},
      // 2. Age: missing, NaN, negative, above 3 intervals.
      {"never sent", [](VmSample& s) { s.mutable_stats()->clear_age_seconds(); },
       "never sent"},
      {"age NaN",
       [](VmSample& s) {
         s.mutable_stats()->set_age_seconds(std::numeric_limits<double>::quiet_NaN());
       },
       "not a number"},
      {"from the future", [](VmSample& s) { s.mutable_stats()->set_age_seconds(-0.001); },
       "future"},
      {"age 0 is fresh", [](VmSample& s) { s.mutable_stats()->set_age_seconds(0); }, ""},
      // 3 x 1 s = 3 s: exactly at the limit is fresh, past it stale.
      {"3 intervals old", [](VmSample& s) { s.mutable_stats()->set_age_seconds(3.0); }, ""},
      {"past 3 intervals", [](VmSample& s) { s.mutable_stats()->set_age_seconds(3.001); },
       "stale"},
      // 3 x 5 s = 15 s.
      {"slow reports allow more", [](VmSample& s) { s.mutable_stats()->set_age_seconds(14); },
       "", absl::Seconds(5)},
      {"slow reports, too old", [](VmSample& s) { s.mutable_stats()->set_age_seconds(16); },
       "stale", absl::Seconds(5)},
      // A 100 ms interval counts as 1 s (guests refresh in whole seconds):
      // 3 x 1 s = 3 s, not 0.3 s.
      {"sub-second interval floors at 1 s",
       [](VmSample& s) { s.mutable_stats()->set_age_seconds(2.5); }, "",
       absl::Milliseconds(100)},
      {"sub-second interval, too old",
       [](VmSample& s) { s.mutable_stats()->set_age_seconds(3.5); }, "stale",
       absl::Milliseconds(100)},
      // 3. The numbers decisions need.
      {"total missing", [](VmSample& s) { s.mutable_stats()->clear_total_bytes(); },
       "total_bytes or available_bytes missing"},
      {"available missing", [](VmSample& s) { s.mutable_stats()->clear_available_bytes(); },
       "total_bytes or available_bytes missing"},
      {"total 0",
       [](VmSample& s) {
         s.mutable_stats()->set_total_bytes(0);
         s.mutable_stats()->set_available_bytes(0);
         s.mutable_stats()->set_free_bytes(0);
       },
       "total_bytes is 0"},
      // 4. Parts above the whole: equal is fine, one byte more is not.
      {"available equals total",
       [](VmSample& s) { s.mutable_stats()->set_available_bytes(4000 * kMiB); }, ""},
      {"available above total",
       [](VmSample& s) { s.mutable_stats()->set_available_bytes(4000 * kMiB + 1); },
       "available_bytes"},
      {"free above total",
       [](VmSample& s) { s.mutable_stats()->set_free_bytes(4000 * kMiB + 1); }, "free_bytes"},
      // 5. 4096 MiB max + 64 MiB slack = 4160 MiB is the most a guest may
      // claim.
      {"total at max + slack",
       [](VmSample& s) { s.mutable_stats()->set_total_bytes(kMax + 64 * kMiB); }, ""},
      {"total above max + slack",
       [](VmSample& s) { s.mutable_stats()->set_total_bytes(kMax + 64 * kMiB + 1); },
       "above the VM's max"},
  };
  for (const Case& c : cases) {
    VmSample s = Good();
    c.mutate(s);
    const std::string problem = GuestStatsProblem(s, c.interval);
    if (c.reason.empty()) {
      EXPECT_EQ(problem, "") << c.name;
    } else {
      EXPECT_THAT(problem, HasSubstr(c.reason)) << c.name;
    }
  }
}

TEST(GuestStatsProblemTest, CountersGoingBackwards) {
  struct Counter {
    const char* name;
    std::function<void(GuestStats&)> lower;
  };
  const std::vector<Counter> counters = {
      {"swap_in_bytes_total", [](GuestStats& g) { g.set_swap_in_bytes_total(9); }},
      {"swap_out_bytes_total", [](GuestStats& g) { g.set_swap_out_bytes_total(19); }},
      {"major_faults_total", [](GuestStats& g) { g.set_major_faults_total(29); }},
      {"minor_faults_total", [](GuestStats& g) { g.set_minor_faults_total(39); }},
      {"oom_kills_total",
       [](GuestStats& g) { g.set_oom_kills_total(0); }},  // previous is 1 below
  };
  GuestStats previous = Good().stats();
  previous.set_oom_kills_total(1);
  for (const Counter& c : counters) {
    VmSample s = Good();
    c.lower(*s.mutable_stats());
    EXPECT_THAT(GuestStatsProblem(s, kInterval, &previous), HasSubstr(c.name)) << c.name;
    // Without a previous report there is nothing to compare.
    EXPECT_EQ(GuestStatsProblem(s, kInterval), "") << c.name;
  }
  // Equal and growing counters are fine; a counter the guest stopped
  // sending is not compared.
  VmSample same = Good();
  same.mutable_stats()->set_oom_kills_total(1);
  EXPECT_EQ(GuestStatsProblem(same, kInterval, &previous), "");
  VmSample missing = Good();
  missing.mutable_stats()->clear_swap_in_bytes_total();
  missing.mutable_stats()->set_oom_kills_total(2);
  EXPECT_EQ(GuestStatsProblem(missing, kInterval, &previous), "");
}

TEST(GuestStatsProblemTest, EveryProblemIsNamedButTheAgentsVerdictAlone) {
  VmSample s = Good();
  s.mutable_stats()->clear_age_seconds();
  s.mutable_stats()->set_available_bytes(4000 * kMiB + 1);
  const std::string problem = GuestStatsProblem(s, kInterval);
  EXPECT_THAT(problem, HasSubstr("never sent"));
  EXPECT_THAT(problem, HasSubstr("available_bytes"));
  s.mutable_stats()->set_untrusted(true);
  s.mutable_stats()->set_untrusted_reason("stale: from the agent");
  EXPECT_EQ(GuestStatsProblem(s, kInterval), "stale: from the agent");
}

TEST(GuestStatsProblemTest, HostileNumbersNeverCrash) {
  VmSample s = Good();
  GuestStats& g = *s.mutable_stats();
  g.set_total_bytes(std::numeric_limits<uint64_t>::max());
  g.set_available_bytes(std::numeric_limits<uint64_t>::max());
  g.set_age_seconds(std::numeric_limits<double>::infinity());
  s.set_max_bytes(std::numeric_limits<uint64_t>::max());
  EXPECT_THAT(GuestStatsProblem(s, kInterval), HasSubstr("stale"));
  g.set_age_seconds(-std::numeric_limits<double>::infinity());
  EXPECT_THAT(GuestStatsProblem(s, absl::InfiniteDuration()), HasSubstr("future"));
  s.set_max_bytes(0);
  g.set_age_seconds(0);
  EXPECT_THAT(GuestStatsProblem(s, absl::ZeroDuration()), HasSubstr("above the VM's max"));
}

}  // namespace
}  // namespace membroker

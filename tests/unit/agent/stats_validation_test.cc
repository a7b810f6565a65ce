#include "node-agent/stats_validation.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

namespace membroker::agent {
namespace {

using ::testing::HasSubstr;

constexpr uint64_t kMiB = uint64_t{1} << 20;
constexpr uint64_t kMax = 4096 * kMiB;
const absl::Time kNow = absl::FromUnixSeconds(1'700'000'000);
const absl::Duration kInterval = absl::Seconds(1);

GuestMemoryStats Good() {
  GuestMemoryStats s;
  s.total_bytes = 4000 * kMiB;
  s.available_bytes = 2000 * kMiB;
  s.free_bytes = 1000 * kMiB;
  s.swap_in_bytes_total = 10;
  s.swap_out_bytes_total = 20;
  s.major_faults_total = 30;
  s.minor_faults_total = 40;
  s.last_update = kNow - absl::Milliseconds(500);
  return s;
}

TEST(ValidateGuestStatsTest, GoodStatsAreTrustedWithAge) {
  GuestMemoryStats prev = Good();
  StatsVerdict v = ValidateGuestStats(&prev, Good(), kMax, kNow, kInterval);
  EXPECT_TRUE(v.trusted) << v.reason;
  EXPECT_EQ(v.reason, "");
  ASSERT_TRUE(v.age.has_value());
  EXPECT_EQ(*v.age, absl::Milliseconds(500));
}

TEST(ValidateGuestStatsTest, MissingLastUpdateIsUntrusted) {
  GuestMemoryStats s = Good();
  s.last_update.reset();
  StatsVerdict v = ValidateGuestStats(nullptr, s, kMax, kNow, kInterval);
  EXPECT_FALSE(v.trusted);
  EXPECT_THAT(v.reason, HasSubstr("last_update missing"));
  EXPECT_FALSE(v.age.has_value());
}

TEST(ValidateGuestStatsTest, StaleAfterThreeIntervals) {
  GuestMemoryStats s = Good();
  s.last_update = kNow - absl::Seconds(3);  // exactly 3 intervals: still fresh
  EXPECT_TRUE(ValidateGuestStats(nullptr, s, kMax, kNow, kInterval).trusted);
  s.last_update = kNow - absl::Seconds(3) - absl::Milliseconds(1);
  StatsVerdict v = ValidateGuestStats(nullptr, s, kMax, kNow, kInterval);
  EXPECT_FALSE(v.trusted);
  EXPECT_THAT(v.reason, HasSubstr("stale"));
}

TEST(ValidateGuestStatsTest, FutureLastUpdateIsUntrusted) {
  GuestMemoryStats s = Good();
  s.last_update = kNow + absl::Seconds(5);
  StatsVerdict v = ValidateGuestStats(nullptr, s, kMax, kNow, kInterval);
  EXPECT_FALSE(v.trusted);
  EXPECT_THAT(v.reason, HasSubstr("future"));
  EXPECT_EQ(*v.age, absl::ZeroDuration());
}

TEST(ValidateGuestStatsTest, ImpossibleValues) {
  struct Case {
    void (*mutate)(GuestMemoryStats&);
    const char* expected;
  };
  const Case cases[] = {
      {[](GuestMemoryStats& s) { s.available_bytes = *s.total_bytes + 1; }, "available_bytes"},
      {[](GuestMemoryStats& s) { s.free_bytes = *s.total_bytes + 1; }, "free_bytes"},
      // 4096 MiB max + 64 MiB slack is the most a guest may claim.
      {[](GuestMemoryStats& s) { s.total_bytes = kMax + 65 * kMiB; }, "total_bytes"},
  };
  for (const Case& c : cases) {
    GuestMemoryStats s = Good();
    c.mutate(s);
    StatsVerdict v = ValidateGuestStats(nullptr, s, kMax, kNow, kInterval);
    EXPECT_FALSE(v.trusted) << c.expected;
    EXPECT_THAT(v.reason, HasSubstr(c.expected));
  }
  GuestMemoryStats within_slack = Good();
  within_slack.total_bytes = kMax + 64 * kMiB;
  EXPECT_TRUE(ValidateGuestStats(nullptr, within_slack, kMax, kNow, kInterval).trusted);
}

TEST(ValidateGuestStatsTest, CountersGoingBackwards) {
  struct Case {
    void (*mutate)(GuestMemoryStats&);
    const char* expected;
  };
  const Case cases[] = {
      {[](GuestMemoryStats& s) { s.swap_in_bytes_total = 9; }, "swap_in_bytes_total"},
      {[](GuestMemoryStats& s) { s.swap_out_bytes_total = 19; }, "swap_out_bytes_total"},
      {[](GuestMemoryStats& s) { s.major_faults_total = 29; }, "major_faults_total"},
      {[](GuestMemoryStats& s) { s.minor_faults_total = 39; }, "minor_faults_total"},
  };
  const GuestMemoryStats prev = Good();
  for (const Case& c : cases) {
    GuestMemoryStats s = Good();
    c.mutate(s);
    StatsVerdict v = ValidateGuestStats(&prev, s, kMax, kNow, kInterval);
    EXPECT_FALSE(v.trusted) << c.expected;
    EXPECT_THAT(v.reason, HasSubstr(c.expected));
    // Without a previous sample there is nothing to compare.
    EXPECT_TRUE(ValidateGuestStats(nullptr, s, kMax, kNow, kInterval).trusted);
  }
}

TEST(ValidateGuestStatsTest, SeveralProblemsAreAllNamed) {
  GuestMemoryStats s = Good();
  s.available_bytes = *s.total_bytes + 1;
  s.last_update.reset();
  StatsVerdict v = ValidateGuestStats(nullptr, s, kMax, kNow, kInterval);
  EXPECT_THAT(v.reason, HasSubstr("last_update"));
  EXPECT_THAT(v.reason, HasSubstr("available_bytes"));
}

}  // namespace
}  // namespace membroker::agent

// The agent's side of guest-statistics trust: the conversion into the
// report's GuestStats and the verdict from the shared rule
// (common/guest_stats.h; its rules are tested in guest_stats_test.cc).

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
  s.disk_caches_bytes = 500 * kMiB;
  s.swap_in_bytes_total = 10;
  s.swap_out_bytes_total = 20;
  s.major_faults_total = 30;
  s.minor_faults_total = 40;
  s.last_update = kNow - absl::Milliseconds(500);
  return s;
}

TEST(ToProtoGuestStatsTest, CopiesWhatTheGuestSentAndTheAge) {
  membroker::v1::GuestStats g = ToProtoGuestStats(Good(), kNow);
  EXPECT_EQ(g.total_bytes(), 4000 * kMiB);
  EXPECT_EQ(g.available_bytes(), 2000 * kMiB);
  EXPECT_EQ(g.free_bytes(), 1000 * kMiB);
  EXPECT_EQ(g.disk_caches_bytes(), 500 * kMiB);
  EXPECT_EQ(g.swap_in_bytes_total(), 10u);
  EXPECT_EQ(g.swap_out_bytes_total(), 20u);
  EXPECT_EQ(g.major_faults_total(), 30u);
  EXPECT_EQ(g.minor_faults_total(), 40u);
  EXPECT_FALSE(g.has_oom_kills_total());
  EXPECT_DOUBLE_EQ(g.age_seconds(), 0.5);
  EXPECT_FALSE(g.untrusted());
  // Nothing sent: nothing set.
  membroker::v1::GuestStats empty = ToProtoGuestStats(GuestMemoryStats{}, kNow);
  EXPECT_FALSE(empty.has_total_bytes());
  EXPECT_FALSE(empty.has_age_seconds());
}

TEST(ValidateGuestStatsTest, GoodStatsAreTrustedWithAge) {
  GuestMemoryStats prev = Good();
  StatsVerdict v = ValidateGuestStats(&prev, Good(), kMax, kNow, kInterval);
  EXPECT_TRUE(v.trusted) << v.reason;
  EXPECT_EQ(v.reason, "");
  ASSERT_TRUE(v.age.has_value());
  EXPECT_EQ(*v.age, absl::Milliseconds(500));
}

TEST(ValidateGuestStatsTest, AppliesTheSharedRule) {
  // One case per kind of input the agent has: the timestamp, the numbers
  // and the VM's max, the previous statistics.
  GuestMemoryStats never = Good();
  never.last_update.reset();
  StatsVerdict v = ValidateGuestStats(nullptr, never, kMax, kNow, kInterval);
  EXPECT_FALSE(v.trusted);
  EXPECT_THAT(v.reason, HasSubstr("never sent"));
  EXPECT_FALSE(v.age.has_value());

  GuestMemoryStats stale = Good();
  stale.last_update = kNow - absl::Seconds(3) - absl::Milliseconds(1);
  v = ValidateGuestStats(nullptr, stale, kMax, kNow, kInterval);
  EXPECT_THAT(v.reason, HasSubstr("stale"));

  GuestMemoryStats future = Good();
  future.last_update = kNow + absl::Seconds(5);
  v = ValidateGuestStats(nullptr, future, kMax, kNow, kInterval);
  EXPECT_FALSE(v.trusted);
  EXPECT_THAT(v.reason, HasSubstr("future"));
  EXPECT_EQ(*v.age, absl::ZeroDuration());  // reported age is never negative

  GuestMemoryStats too_big = Good();
  too_big.total_bytes = kMax + 65 * kMiB;
  v = ValidateGuestStats(nullptr, too_big, kMax, kNow, kInterval);
  EXPECT_THAT(v.reason, HasSubstr("above the VM's max"));

  GuestMemoryStats no_total = Good();
  no_total.total_bytes.reset();
  v = ValidateGuestStats(nullptr, no_total, kMax, kNow, kInterval);
  EXPECT_THAT(v.reason, HasSubstr("total_bytes or available_bytes missing"));

  const GuestMemoryStats prev = Good();
  GuestMemoryStats rolled = Good();
  rolled.major_faults_total = 29;
  v = ValidateGuestStats(&prev, rolled, kMax, kNow, kInterval);
  EXPECT_FALSE(v.trusted);
  EXPECT_THAT(v.reason, HasSubstr("major_faults_total went backwards"));
  EXPECT_TRUE(ValidateGuestStats(nullptr, rolled, kMax, kNow, kInterval).trusted);
}

}  // namespace
}  // namespace membroker::agent

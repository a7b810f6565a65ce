// The baselines' rules on small hosts, with the arithmetic of each public
// description in comments (sources are cited in sim/baselines.cc).

#include "sim/baselines.h"

#include <gtest/gtest.h>

#include "common/textproto.h"

namespace membroker::sim {
namespace {

constexpr uint64_t kMiB = uint64_t{1} << 20;
constexpr uint64_t kGiB = uint64_t{1} << 30;

VmView Vm(uint64_t max, uint64_t min, uint64_t actual, uint64_t free) {
  VmView v;
  v.max_bytes = max;
  v.min_bytes = min;
  v.weight = 100;
  v.actual_bytes = actual;
  v.target_bytes = actual;
  v.total_bytes = actual;
  v.free_bytes = free;
  v.available_bytes = free;
  return v;
}

TEST(BaselinesTest, SqueezedPutsEveryVmAtTheSameFraction) {
  // avail = capacity - 9 MiB slush = 10 GiB; mins 1 + 1, ranges 4 + 8:
  // f = (10 - 2) / 12 = 2/3; a = 1 + 4 * 2/3, b = 1 + 8 * 2/3.
  HostView h;
  h.capacity_bytes = 10 * kGiB + 9 * kMiB;
  h.vms = {Vm(5 * kGiB, kGiB, 5 * kGiB, 0), Vm(9 * kGiB, kGiB, 9 * kGiB, 0)};
  auto c = MakeSqueezedController();
  std::vector<uint64_t> t = c->Decide(h);
  EXPECT_NEAR(static_cast<double>(t[0]), (1 + 4 * 2.0 / 3) * kGiB, 2.0);
  EXPECT_NEAR(static_cast<double>(t[1]), (1 + 8 * 2.0 / 3) * kGiB, 2.0);
  // A VM without a driver is left alone and its memory counted as used:
  // with 4 GiB of it, avail = 6 GiB, f = (6 - 2) / 12 = 1/3.
  VmView stuck = Vm(4 * kGiB, kGiB, 4 * kGiB, 0);
  stuck.balloon_driver = false;
  h.vms.push_back(stuck);
  t = c->Decide(h);
  EXPECT_NEAR(static_cast<double>(t[0]), (1 + 4 / 3.0) * kGiB, 2.0);
  EXPECT_EQ(t[2], 0u);
  // Plenty of memory: everyone at max.
  h.capacity_bytes = 100 * kGiB;
  t = c->Decide(h);
  EXPECT_EQ(t[0], 5 * kGiB);
  EXPECT_EQ(t[1], 9 * kGiB);
}

TEST(BaselinesTest, ProxmoxShrinksVmsWithFreeMemoryFirstByAtMost100MiB) {
  // capacity 10 GiB: goal = 10 * 0.8 - 9 = -1 GiB (shrink). a has free
  // memory above 25 % of its 1 GiB min, b has none: only a gives. Its
  // desired size is min + all memory above the mins: 1 + (3.5 - 1) = 3.5 GiB,
  // but one round moves it by at most 100 MiB.
  HostView h;
  h.capacity_bytes = 10 * kGiB;
  h.vms = {Vm(8 * kGiB, kGiB, 4608 * kMiB, 2 * kGiB), Vm(8 * kGiB, kGiB, 4608 * kMiB, 0)};
  auto c = MakeProxmoxController();
  std::vector<uint64_t> t = c->Decide(h);
  EXPECT_EQ(t[0], 4608 * kMiB - 100 * kMiB);
  EXPECT_EQ(t[1], 0u);
  // |goal| under 10 MiB: nothing.
  h.capacity_bytes = static_cast<uint64_t>(9216.0 * kMiB / 0.8) + kMiB;
  t = c->Decide(h);
  EXPECT_EQ(t[0], 0u);
  EXPECT_EQ(t[1], 0u);
}

TEST(BaselinesTest, ProxmoxGrowsVmsUnderPressureFirst) {
  // capacity 20 GiB, used 4 GiB: goal = +12 GiB. b has no free memory (under
  // pressure) and is served first: +100 MiB; a stays.
  HostView h;
  h.capacity_bytes = 20 * kGiB;
  h.vms = {Vm(8 * kGiB, kGiB, 2 * kGiB, kGiB), Vm(8 * kGiB, kGiB, 2 * kGiB, 0)};
  std::vector<uint64_t> t = MakeProxmoxController()->Decide(h);
  EXPECT_EQ(t[0], 0u);
  EXPECT_EQ(t[1], 2 * kGiB + 100 * kMiB);
}

TEST(BaselinesTest, MomGrowsWithoutPressureAndShrinksUnderIt) {
  auto c = MakeMomController();
  // No pressure (host 50 % free): grow by 5 %: 2 GiB -> 2.1 GiB (its 20 %
  // free goal, used 1 + 0.4 = 1.4 GiB, is lower).
  HostView h;
  h.capacity_bytes = 4 * kGiB;
  h.vms = {Vm(4 * kGiB, 512 * kMiB, 2 * kGiB, kGiB)};
  std::vector<uint64_t> t = c->Decide(h);
  EXPECT_NEAR(static_cast<double>(t[0]), 2.1 * kGiB, 2.0);
  // Pressure (10 % free, not critical): the guest's free goal is
  // 0.2 * 0.1 / 0.2 = 10 %; used 2 GiB + 0.1 * 4 GiB = 2.4 GiB; 5 % step
  // from 4 GiB = 3.8 GiB, above 2.4: 3.8 GiB.
  h.capacity_bytes = static_cast<uint64_t>(4.0 * kGiB / 0.9);
  h.vms = {Vm(4 * kGiB, 512 * kMiB, 4 * kGiB, 2 * kGiB)};
  t = c->Decide(h);
  EXPECT_NEAR(static_cast<double>(t[0]), 3.8 * kGiB, 2.0);
  // Never below the guest's min: 3.8 GiB would be, so 3968 MiB.
  h.vms = {Vm(4 * kGiB, 3968 * kMiB, 4 * kGiB, 2 * kGiB)};
  t = c->Decide(h);
  EXPECT_EQ(t[0], 3968 * kMiB);
  // A change under 0.25 % (10.24 MiB of 4 GiB) is skipped: min 4088 MiB.
  h.vms = {Vm(4 * kGiB, 4088 * kMiB, 4 * kGiB, 2 * kGiB)};
  t = c->Decide(h);
  EXPECT_EQ(t[0], 0u);
}

TEST(BaselinesTest, OracleGivesTheComingWorkingSetAhead) {
  v1::SimConfig config;
  ASSERT_TRUE(ParseTextProto(R"(
    host_total_bytes: 17179869184
    vms { name: "a" max_bytes: 8589934592
          workload { step { before_bytes: 1073741824 after_bytes: 3221225472 at { seconds: 5 } } } })",
                             "test", &config)
                  .ok());
  auto host = SimHost::Create(config);
  ASSERT_TRUE(host.ok());
  HostView h;
  h.capacity_bytes = 16 * kGiB;
  h.truth = host->get();
  VmView v = Vm(8 * kGiB, 256 * kMiB, 8 * kGiB, 0);
  v.index = 0;
  h.vms = {v};
  // At t=0 the step at 5 s is within the horizon (1 s + 8 GiB / 512 MiB/s):
  // 3 GiB + 64 MiB kernel + 1 MiB.
  auto c = MakeOracleController(absl::Seconds(1), uint64_t{512} << 20);
  std::vector<uint64_t> t = c->Decide(h);
  EXPECT_EQ(t[0], 3 * kGiB + 65 * kMiB);
}

}  // namespace
}  // namespace membroker::sim

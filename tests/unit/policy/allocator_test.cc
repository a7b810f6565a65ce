#include "broker/policy/allocator.h"

#include <random>

#include <gtest/gtest.h>

namespace membroker::policy {
namespace {

constexpr uint64_t kMiB = uint64_t{1} << 20;
constexpr uint64_t kGiB = uint64_t{1} << 30;

// Params with round numbers so the arithmetic in comments is exact.
PolicyParams Simple() {
  PolicyParams p;
  p.buffer_percent = 0;
  p.host_free_margin_bytes = 0;
  p.reclaim_step_bytes = 1 * kGiB;
  p.hysteresis_bytes = 0;
  p.idle_tax_percent = 0;  // weights as given
  p.default_min_bytes = 0;
  return p;
}

VmInput Vm(const char* id, uint64_t max, uint64_t min, uint64_t demand, uint32_t weight = 100) {
  VmInput v;
  v.vm_id = id;
  v.max_bytes = max;
  v.min_bytes = min;
  v.demand_bytes = demand;
  v.weight = weight;
  v.actual_bytes = max;
  return v;
}

TEST(AllocatorTest, EverythingFitsSurplusGoesBackByWeightUpToMax) {
  // capacity 10 GiB; desired a=2, b=3 (sum 5) -> 5 GiB surplus.
  // Room above desired: a 8-2=6, b 4-3=1. Equal weights: b saturates at 1,
  // a gets the remaining 4. a=6, b=4.
  HostInput in{10 * kGiB, {Vm("a", 8 * kGiB, kGiB, 2 * kGiB), Vm("b", 4 * kGiB, kGiB, 3 * kGiB)}};
  HostDecision d = DecideHost(in, Simple());
  EXPECT_FALSE(d.overcommitted);
  EXPECT_EQ(d.vms[0].target_bytes, 6 * kGiB);
  EXPECT_EQ(d.vms[1].target_bytes, 4 * kGiB);
  EXPECT_EQ(d.vms[1].reason, Reason::kMax);
  EXPECT_EQ(d.vms[0].reason, Reason::kSurplus);
}

TEST(AllocatorTest, BufferIsAddedToDemand) {
  // demand 2 GiB, buffer 20 % -> desired 2 x 1.2 = 2.4 GiB (< max 4). Capacity exactly
  // 2.4 GiB + 1 GiB margin, so no surplus: target = 2.4 GiB.
  PolicyParams p = Simple();
  p.buffer_percent = 20;
  p.host_free_margin_bytes = kGiB;
  const uint64_t desired = 2576980378;  // round(2.4 * 2^30)
  HostInput in{desired + kGiB, {Vm("a", 4 * kGiB, 0, 2 * kGiB)}};
  HostDecision d = DecideHost(in, p);
  EXPECT_EQ(d.vms[0].desired_bytes, desired);
  EXPECT_EQ(d.vms[0].target_bytes, desired);
  EXPECT_EQ(d.vms[0].reason, Reason::kDemand);
}

TEST(AllocatorTest, ShortHostSharesAboveFloorsByWeight) {
  // capacity 6 GiB; floors 1+1 = 2; desired 5+5 = 10 > 6.
  // 4 GiB above floors, weights 300:100 -> a +3, b +1. a=4, b=2.
  HostInput in{6 * kGiB, {Vm("a", 8 * kGiB, kGiB, 5 * kGiB, 300), Vm("b", 8 * kGiB, kGiB, 5 * kGiB, 100)}};
  HostDecision d = DecideHost(in, Simple());
  EXPECT_FALSE(d.overcommitted);
  EXPECT_EQ(d.vms[0].target_bytes, 4 * kGiB);
  EXPECT_EQ(d.vms[1].target_bytes, 2 * kGiB);
  EXPECT_EQ(d.vms[0].reason, Reason::kShare);
}

TEST(AllocatorTest, WaterFillingCapsAtDesiredAndRedistributes) {
  // capacity 6 GiB; floors 1+1; desired a=2, b=8. 4 GiB above floors.
  // Equal weights: fair share 2 each, but a needs only 1 more (2-1) ->
  // a=2 (desired), b gets 4-1=3 more -> b=4.
  HostInput in{6 * kGiB, {Vm("a", 8 * kGiB, kGiB, 2 * kGiB), Vm("b", 8 * kGiB, kGiB, 8 * kGiB)}};
  HostDecision d = DecideHost(in, Simple());
  EXPECT_EQ(d.vms[0].target_bytes, 2 * kGiB);
  EXPECT_EQ(d.vms[0].reason, Reason::kDemand);
  EXPECT_EQ(d.vms[1].target_bytes, 4 * kGiB);
}

TEST(AllocatorTest, IdleTaxFavoursActiveMemory) {
  // tax 75 % -> k = 4. a fully active (f=1): w=100. b idle (f=0): w=100/4=25.
  // capacity 5 GiB, floors 0, desired 5+5: a gets 5*100/125 = 4, b = 1.
  PolicyParams p = Simple();
  p.idle_tax_percent = 75;
  VmInput a = Vm("a", 8 * kGiB, 0, 5 * kGiB);
  VmInput b = Vm("b", 8 * kGiB, 0, 5 * kGiB);
  a.active_fraction = 1.0;
  b.active_fraction = 0.0;
  HostDecision d = DecideHost({5 * kGiB, {a, b}}, p);
  EXPECT_DOUBLE_EQ(d.vms[0].effective_weight, 100.0);
  EXPECT_DOUBLE_EQ(d.vms[1].effective_weight, 25.0);
  EXPECT_EQ(d.vms[0].target_bytes, 4 * kGiB);
  EXPECT_EQ(d.vms[1].target_bytes, 1 * kGiB);
}

TEST(AllocatorTest, FloorsThatDoNotFitFlagTheHost) {
  // capacity 3 GiB; floors 2+2 = 4 > 3: keep floors, flag overcommitted.
  HostInput in{3 * kGiB, {Vm("a", 8 * kGiB, 2 * kGiB, 5 * kGiB), Vm("b", 8 * kGiB, 2 * kGiB, 5 * kGiB)}};
  HostDecision d = DecideHost(in, Simple());
  EXPECT_TRUE(d.overcommitted);
  EXPECT_EQ(d.vms[0].target_bytes, 2 * kGiB);
  EXPECT_EQ(d.vms[1].target_bytes, 2 * kGiB);
  EXPECT_EQ(d.vms[0].reason, Reason::kOvercommitted);
}

TEST(AllocatorTest, ProtectFloorBeatsMin) {
  // min 1 GiB, protect 3 GiB -> floor 3 GiB even on a short host.
  VmInput a = Vm("a", 8 * kGiB, kGiB, 6 * kGiB);
  a.protect_bytes = 3 * kGiB;
  VmInput b = Vm("b", 8 * kGiB, kGiB, 6 * kGiB);
  HostDecision d = DecideHost({4 * kGiB, {a, b}}, Simple());
  EXPECT_EQ(d.vms[0].floor_bytes, 3 * kGiB);
  EXPECT_GE(d.vms[0].target_bytes, 3 * kGiB);
  // 4 - (3+1) = 0 left above floors: both at floor.
  EXPECT_EQ(d.vms[1].target_bytes, 1 * kGiB);
  EXPECT_EQ(d.vms[1].reason, Reason::kFloor);
}

TEST(AllocatorTest, UnhealthyBalloonCannotGiveMemory) {
  // b's balloon is stuck at 6 GiB: its floor is 6 GiB, so a gets the rest.
  VmInput a = Vm("a", 8 * kGiB, kGiB, 6 * kGiB);
  VmInput b = Vm("b", 8 * kGiB, kGiB, 1 * kGiB);
  b.balloon_healthy = false;
  b.actual_bytes = 6 * kGiB;
  HostDecision d = DecideHost({9 * kGiB, {a, b}}, Simple());
  EXPECT_EQ(d.vms[1].floor_bytes, 6 * kGiB);
  EXPECT_EQ(d.vms[1].target_bytes, 6 * kGiB);
  EXPECT_EQ(d.vms[1].reason, Reason::kBalloonUnhealthy);
  EXPECT_EQ(d.vms[0].target_bytes, 3 * kGiB);
}

TEST(AllocatorTest, PinnedVmKeepsMax) {
  VmInput a = Vm("a", 4 * kGiB, 0, 0);
  a.pinned = true;
  HostDecision d = DecideHost({8 * kGiB, {a, Vm("b", 8 * kGiB, 0, 8 * kGiB)}}, Simple());
  EXPECT_EQ(d.vms[0].target_bytes, 4 * kGiB);
  EXPECT_EQ(d.vms[0].reason, Reason::kPinned);
  EXPECT_EQ(d.vms[1].target_bytes, 4 * kGiB);
}

TEST(AllocatorTest, ReclaimIsStepLimitedAndGrowthWaitsForIt) {
  // step 1 GiB. a was at 6, its share is 2 -> it may drop to 5 this round.
  // b was at 2 and wants 6; capacity 8: only 8 - 5 = 3 fits now.
  PolicyParams p = Simple();
  VmInput a = Vm("a", 8 * kGiB, 0, 2 * kGiB);
  a.previous_target_bytes = 6 * kGiB;
  VmInput b = Vm("b", 8 * kGiB, 0, 6 * kGiB);
  b.previous_target_bytes = 2 * kGiB;
  HostDecision d = DecideHost({8 * kGiB, {a, b}}, p);
  EXPECT_EQ(d.vms[0].share_bytes, 2 * kGiB);
  EXPECT_EQ(d.vms[0].target_bytes, 5 * kGiB);
  EXPECT_EQ(d.vms[0].reason, Reason::kStepLimit);
  EXPECT_EQ(d.vms[1].target_bytes, 3 * kGiB);
  EXPECT_LE(d.target_bytes, 8 * kGiB);
}

TEST(AllocatorTest, GrowthIsGivenAtOnce) {
  // b was at 1 GiB and now wants 5; the host has room: 5 at once.
  VmInput b = Vm("b", 8 * kGiB, 0, 5 * kGiB);
  b.previous_target_bytes = 1 * kGiB;
  PolicyParams p = Simple();
  p.reclaim_step_bytes = 128 * kMiB;
  HostDecision d = DecideHost({5 * kGiB, {b}}, p);
  EXPECT_EQ(d.vms[0].target_bytes, 5 * kGiB);
}

TEST(AllocatorTest, SmallChangesInsideHysteresisHold) {
  // previous 4 GiB, share 4 GiB - 4 MiB, band 8 MiB: hold 4 GiB.
  PolicyParams p = Simple();
  p.hysteresis_bytes = 8 * kMiB;
  VmInput a = Vm("a", 8 * kGiB, 0, 4 * kGiB - 4 * kMiB);
  a.previous_target_bytes = 4 * kGiB;
  HostDecision d = DecideHost({4 * kGiB - 4 * kMiB, {a}}, p);
  // Holding would exceed capacity (4 GiB > 4 GiB - 4 MiB): the capacity
  // rule wins, so the share is used.
  EXPECT_EQ(d.vms[0].target_bytes, 4 * kGiB - 4 * kMiB);
  HostDecision roomy = DecideHost({4 * kGiB, {Vm("x", 8 * kGiB, 0, 4 * kGiB - 4 * kMiB)}}, p);
  VmInput x = Vm("x", 4 * kGiB + 4 * kMiB, 0, 4 * kGiB);
  x.previous_target_bytes = 4 * kGiB - 4 * kMiB;
  HostDecision grow = DecideHost({6 * kGiB, {x}}, p);
  // share = max = 4 GiB + 4 MiB is a bound, so it is not held back.
  EXPECT_EQ(grow.vms[0].target_bytes, 4 * kGiB + 4 * kMiB);
  VmInput y = Vm("y", 8 * kGiB, 0, 4 * kGiB);
  y.previous_target_bytes = 4 * kGiB - 4 * kMiB;
  HostDecision hold = DecideHost({4 * kGiB, {y}}, p);
  EXPECT_EQ(hold.vms[0].target_bytes, 4 * kGiB - 4 * kMiB);
  EXPECT_EQ(hold.vms[0].reason, Reason::kHysteresis);
  EXPECT_EQ(roomy.vms[0].target_bytes, 4 * kGiB);
}

TEST(AllocatorTest, HysteresisBandIsTheLargerOfBytesAndPercent) {
  PolicyParams p = Simple();
  p.hysteresis_bytes = 8 * kMiB;
  p.hysteresis_percent = 5;
  // 5 % of 4 GiB = 204.8 MiB > 8 MiB; 5 % of 100 MiB = 5 MiB < 8 MiB.
  EXPECT_EQ(HysteresisBand(4 * kGiB, p), 214748364u);
  EXPECT_EQ(HysteresisBand(100 * kMiB, p), 8 * kMiB);
}

TEST(AllocatorTest, FreeMarginIsLeftUnassigned) {
  PolicyParams p = Simple();
  p.host_free_margin_bytes = kGiB;
  HostDecision d = DecideHost({8 * kGiB, {Vm("a", 16 * kGiB, 0, 16 * kGiB)}}, p);
  EXPECT_EQ(d.vms[0].target_bytes, 7 * kGiB);
}

// The order of sacrifices for a guest under acute pressure (allocator.h):
// capacity 4 GiB, free margin 512 MiB (usable 3.5 GiB). "idle" uses 100 MiB
// under a default floor of 2 GiB; "surge" is under pressure, protect 1 GiB,
// demand 2 GiB (no buffer).
HostInput SacrificeHost(bool host_has_room, bool idle_min_is_default) {
  VmInput idle = Vm("idle", 4 * kGiB, 2 * kGiB, 100 * kMiB);
  idle.protect_bytes = 100 * kMiB;
  idle.min_is_default = idle_min_is_default;
  VmInput surge = Vm("surge", 4 * kGiB, 0, 2 * kGiB);
  surge.protect_bytes = kGiB;
  surge.under_pressure = true;
  surge.min_is_default = true;
  HostInput in{4 * kGiB, {idle, surge}};
  in.host_has_room = host_has_room;
  return in;
}

TEST(AllocatorTest, MarginIsLentFirstThenDefaultFloorsYield) {
  PolicyParams p = Simple();
  p.host_free_margin_bytes = 512 * kMiB;
  // Without room on the host: floors 2 + 1 = 3 GiB, usable 3.5 GiB: surge
  // gets 1.5 GiB < demand 2: the default floor yields to protect 100 MiB:
  // floors 1.1 GiB, desired 0.1 + 2 = 2.1 GiB fits 3.5 GiB: surge gets its
  // 2 GiB (and a share of the 1.4 GiB surplus: idle 0.1 + 0.7, surge 2.7).
  HostDecision d = DecideHost(SacrificeHost(false, true), p);
  EXPECT_EQ(d.margin_lent_bytes, 0u);
  EXPECT_TRUE(d.floors_yielded);
  EXPECT_TRUE(d.vms[0].floor_yielded);
  EXPECT_EQ(d.vms[0].floor_bytes, 100 * kMiB);
  EXPECT_GE(d.vms[1].target_bytes, 2 * kGiB);
  EXPECT_LE(d.vms[0].target_bytes + d.vms[1].target_bytes, 3 * kGiB + 512 * kMiB);
  // With room: desired 2 + 2 = 4 GiB; lending the margin makes usable 4 GiB:
  // enough, so no floor yields and the idle VM keeps its 2 GiB.
  d = DecideHost(SacrificeHost(true, true), p);
  EXPECT_EQ(d.margin_lent_bytes, 512 * kMiB);
  EXPECT_FALSE(d.floors_yielded);
  EXPECT_EQ(d.usable_bytes, 4 * kGiB);
  EXPECT_EQ(d.vms[0].target_bytes, 2 * kGiB);
  EXPECT_EQ(d.vms[1].target_bytes, 2 * kGiB);
}

TEST(AllocatorTest, AnOperatorsMinNeverYields) {
  PolicyParams p = Simple();
  p.host_free_margin_bytes = 512 * kMiB;
  // The idle VM's 2 GiB min is the operator's: surge gets only what is
  // above the floors, 3.5 - 2 - 1 = 0.5 GiB over its 1 GiB protect floor.
  HostDecision d = DecideHost(SacrificeHost(false, false), p);
  EXPECT_FALSE(d.floors_yielded);
  EXPECT_EQ(d.vms[0].floor_bytes, 2 * kGiB);
  EXPECT_EQ(d.vms[1].target_bytes, kGiB + 512 * kMiB);
  // Without pressure nothing is sacrificed either.
  HostInput calm = SacrificeHost(true, true);
  calm.vms[1].under_pressure = false;
  d = DecideHost(calm, p);
  EXPECT_EQ(d.margin_lent_bytes, 0u);
  EXPECT_FALSE(d.floors_yielded);
  EXPECT_EQ(d.vms[1].target_bytes, kGiB + 512 * kMiB);
}

// Random fleets: the invariants of DESIGN.md hold for every decision, and
// the same input gives the same output.
TEST(AllocatorPropertyTest, InvariantsHoldOnRandomFleets) {
  std::mt19937_64 rng(12345);
  auto pick = [&](uint64_t lo, uint64_t hi) {
    return std::uniform_int_distribution<uint64_t>(lo, hi)(rng);
  };
  for (int round = 0; round < 3000; ++round) {
    PolicyParams p;
    p.buffer_percent = static_cast<double>(pick(0, 100));
    p.host_free_margin_bytes = pick(0, 2 * kGiB);
    p.reclaim_step_bytes = pick(1, 4 * kGiB);
    p.hysteresis_bytes = pick(0, 64 * kMiB);
    p.idle_tax_percent = static_cast<double>(pick(0, 95));
    HostInput in;
    in.capacity_bytes = pick(0, 64 * kGiB);
    const int n = static_cast<int>(pick(0, 12));
    for (int i = 0; i < n; ++i) {
      VmInput v;
      v.vm_id = "vm" + std::to_string(i);
      v.max_bytes = pick(kMiB, 16 * kGiB);
      v.min_bytes = pick(0, v.max_bytes + kGiB);  // may exceed max: clamped
      v.protect_bytes = pick(0, v.max_bytes + kGiB);
      v.demand_bytes = pick(0, 20 * kGiB);
      v.weight = static_cast<uint32_t>(pick(1, 10000));
      v.pinned = pick(0, 20) == 0;
      v.balloon_healthy = pick(0, 10) != 0;
      v.actual_bytes = pick(0, v.max_bytes);
      v.previous_target_bytes = pick(0, 3) == 0 ? 0 : pick(0, v.max_bytes + kGiB);
      v.active_fraction = static_cast<double>(pick(0, 100)) / 100.0;
      v.under_pressure = pick(0, 4) == 0;
      v.min_is_default = pick(0, 1) == 0;
      in.vms.push_back(v);
    }
    in.host_has_room = pick(0, 1) == 0;
    const HostDecision d = DecideHost(in, p);
    ASSERT_EQ(d.vms.size(), in.vms.size());
    uint64_t sum = 0;
    for (size_t i = 0; i < d.vms.size(); ++i) {
      const VmInput& v = in.vms[i];
      const VmDecision& x = d.vms[i];
      // An operator's min and the protect floor never yield; a default min
      // may yield for a neighbour under pressure, never below protect.
      const bool may_yield = v.min_is_default && !v.under_pressure;
      const uint64_t floor =
          std::min(std::max(may_yield ? 0 : v.min_bytes, v.protect_bytes), v.max_bytes);
      if (x.floor_yielded) ASSERT_TRUE(may_yield) << "round " << round << " vm " << i;
      ASSERT_LE(x.target_bytes, v.max_bytes) << "round " << round << " vm " << i;
      ASSERT_GE(x.target_bytes, floor) << "round " << round << " vm " << i;
      ASSERT_GE(x.target_bytes, x.floor_bytes) << "round " << round << " vm " << i;
      sum += x.target_bytes;
    }
    if (!d.overcommitted) {
      ASSERT_LE(sum, in.capacity_bytes) << "round " << round;
    } else {
      ASSERT_GT(d.floor_bytes, d.usable_bytes);
    }
    // The margin is lent only to a guest under pressure, on a host with room.
    if (d.margin_lent_bytes > 0) {
      ASSERT_TRUE(in.host_has_room);
      bool pressured = false;
      for (const VmInput& v : in.vms) pressured |= v.under_pressure;
      ASSERT_TRUE(pressured);
    }
    ASSERT_EQ(sum, d.target_bytes);
    const HostDecision again = DecideHost(in, p);
    for (size_t i = 0; i < d.vms.size(); ++i) {
      ASSERT_EQ(again.vms[i].target_bytes, d.vms[i].target_bytes);
      ASSERT_EQ(again.vms[i].reason, d.vms[i].reason);
    }
  }
}

// Repeating a decision with its own output as history converges: the
// targets stop moving (no oscillation) once inputs are steady.
TEST(AllocatorPropertyTest, SteadyInputsConverge) {
  std::mt19937_64 rng(99);
  for (int round = 0; round < 300; ++round) {
    PolicyParams p;
    HostInput in;
    in.capacity_bytes = std::uniform_int_distribution<uint64_t>(4, 32)(rng) * kGiB;
    for (int i = 0; i < 6; ++i) {
      VmInput v = Vm("v", std::uniform_int_distribution<uint64_t>(1, 8)(rng) * kGiB, 256 * kMiB,
                     std::uniform_int_distribution<uint64_t>(0, 8)(rng) * kGiB);
      v.previous_target_bytes = v.max_bytes;
      in.vms.push_back(v);
    }
    HostDecision d;
    for (int step = 0; step < 100; ++step) {
      d = DecideHost(in, p);
      for (size_t i = 0; i < in.vms.size(); ++i) in.vms[i].previous_target_bytes = d.vms[i].target_bytes;
    }
    const HostDecision next = DecideHost(in, p);
    for (size_t i = 0; i < in.vms.size(); ++i) {
      EXPECT_EQ(next.vms[i].target_bytes, d.vms[i].target_bytes) << "round " << round;
    }
  }
}

}  // namespace
}  // namespace membroker::policy

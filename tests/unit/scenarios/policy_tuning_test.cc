// The decision-quality settings of broker/policy that the scenario suite
// runs with: surplus share, relative hysteresis, needs before buffers with
// pressured VMs first, the capped protect margin, and the swap balance as a
// pressure signal. Small fleets with the arithmetic in comments.

#include <cmath>

#include <gtest/gtest.h>

#include "broker/policy/allocator.h"
#include "broker/policy/demand.h"

namespace membroker::policy {
namespace {

constexpr uint64_t kMiB = uint64_t{1} << 20;
constexpr uint64_t kGiB = uint64_t{1} << 30;

PolicyParams Simple() {
  PolicyParams p;
  p.buffer_percent = 0;
  p.host_free_margin_bytes = 0;
  p.reclaim_step_bytes = 1 * kGiB;
  p.hysteresis_bytes = 0;
  p.idle_tax_percent = 0;
  p.default_min_bytes = 0;
  p.needs_before_buffers = false;
  return p;
}

VmInput Vm(const char* id, uint64_t max, uint64_t demand, uint32_t weight = 100) {
  VmInput v;
  v.vm_id = id;
  v.max_bytes = max;
  v.demand_bytes = demand;
  v.weight = weight;
  v.actual_bytes = max;
  return v;
}

TEST(PolicyTuningTest, SurplusPercentKeepsTheRestInTheHost) {
  // capacity 10 GiB; desired a=2, b=3 -> 5 GiB surplus.
  HostInput in{10 * kGiB, {Vm("a", 8 * kGiB, 2 * kGiB), Vm("b", 4 * kGiB, 3 * kGiB)}};
  PolicyParams p = Simple();
  p.surplus_percent = 0;  // nothing handed out
  HostDecision d = DecideHost(in, p);
  EXPECT_EQ(d.vms[0].target_bytes, 2 * kGiB);
  EXPECT_EQ(d.vms[1].target_bytes, 3 * kGiB);
  EXPECT_EQ(d.vms[0].reason, Reason::kDemand);
  // Half of it: 2.5 GiB, equal weights: b's room is 1 GiB (saturates), a
  // gets the other 1.5 GiB -> a = 3.5, b = 4.
  p.surplus_percent = 50;
  d = DecideHost(in, p);
  EXPECT_EQ(d.vms[0].target_bytes, 3 * kGiB + 512 * kMiB);
  EXPECT_EQ(d.vms[1].target_bytes, 4 * kGiB);
}

TEST(PolicyTuningTest, RelativeHysteresisHoldsSmallMoves) {
  // previous target 4 GiB, 5 % band = 204.8 MiB.
  PolicyParams p = Simple();
  p.surplus_percent = 0;
  p.hysteresis_percent = 5;
  VmInput v = Vm("a", 8 * kGiB, 4 * kGiB + 100 * kMiB);
  v.previous_target_bytes = 4 * kGiB;
  HostDecision d = DecideHost({16 * kGiB, {v}}, p);
  EXPECT_EQ(d.vms[0].target_bytes, 4 * kGiB);  // +100 MiB: inside the band
  EXPECT_EQ(d.vms[0].reason, Reason::kHysteresis);
  v.demand_bytes = 4 * kGiB + 300 * kMiB;
  d = DecideHost({16 * kGiB, {v}}, p);
  EXPECT_EQ(d.vms[0].target_bytes, 4 * kGiB + 300 * kMiB);  // outside: moves
  v.demand_bytes = 4 * kGiB - 150 * kMiB;
  d = DecideHost({16 * kGiB, {v}}, p);
  EXPECT_EQ(d.vms[0].target_bytes, 4 * kGiB);  // -150 MiB: inside the band
  p.hysteresis_percent = 0;
  d = DecideHost({16 * kGiB, {v}}, p);
  EXPECT_EQ(d.vms[0].target_bytes, 4 * kGiB - 150 * kMiB);
}

TEST(PolicyTuningTest, NeedsBeforeBuffers) {
  // capacity 6 GiB, buffer 50 %: a demand 4 (desired 6, weight 400),
  // b demand 2 (desired 3, weight 100). Desired 9 > 6: share 6 GiB.
  PolicyParams p = Simple();
  p.buffer_percent = 50;
  HostInput in{6 * kGiB, {Vm("a", 8 * kGiB, 4 * kGiB, 400), Vm("b", 8 * kGiB, 2 * kGiB, 100)}};
  // One tier: 4:1 -> a 4.8, b 1.2 (b below its demand).
  HostDecision d = DecideHost(in, p);
  EXPECT_NEAR(static_cast<double>(d.vms[0].target_bytes), 4.8 * kGiB, 2.0);
  EXPECT_NEAR(static_cast<double>(d.vms[1].target_bytes), 1.2 * kGiB, 2.0);
  // Needs first: a fair 4.8 capped at its demand 4, b gets its 2; nothing
  // left for buffers.
  p.needs_before_buffers = true;
  d = DecideHost(in, p);
  EXPECT_EQ(d.vms[0].target_bytes, 4 * kGiB);
  EXPECT_EQ(d.vms[1].target_bytes, 2 * kGiB);
}

TEST(PolicyTuningTest, VmsUnderPressureAreServedFirst) {
  // capacity 4 GiB; a demand 3 (weight 400), b demand 3 (weight 100) and
  // swapping. By weight alone a gets 3 and b 1; b under pressure gets its
  // 3 first and a the remaining 1.
  PolicyParams p = Simple();
  p.needs_before_buffers = true;
  VmInput a = Vm("a", 8 * kGiB, 3 * kGiB, 400);
  VmInput b = Vm("b", 8 * kGiB, 3 * kGiB, 100);
  HostDecision d = DecideHost({4 * kGiB, {a, b}}, p);
  EXPECT_EQ(d.vms[0].target_bytes, 3 * kGiB);
  EXPECT_EQ(d.vms[1].target_bytes, 1 * kGiB);
  b.under_pressure = true;
  d = DecideHost({4 * kGiB, {a, b}}, p);
  EXPECT_EQ(d.vms[0].target_bytes, 1 * kGiB);
  EXPECT_EQ(d.vms[1].target_bytes, 3 * kGiB);
}

GuestObservation Obs(uint64_t total, uint64_t available) {
  GuestObservation o;
  o.stats_valid = true;
  o.total_bytes = total;
  o.available_bytes = available;
  o.actual_bytes = total;
  o.max_bytes = 16 * kGiB;
  o.elapsed_seconds = 1.0;
  return o;
}

TEST(PolicyTuningTest, ProtectMarginCap) {
  // used 8 GiB: 10 % margin is 819.2 MiB; capped at 32 MiB (the shipped
  // cap), uncapped with 0.
  DemandParams p;
  p.protect_margin_max_bytes = 0;
  DemandState s;
  UpdateDemand(Obs(12 * kGiB, 4 * kGiB), p, s);
  EXPECT_NEAR(static_cast<double>(s.protect_bytes), 8.8 * kGiB, 1.0);
  p.protect_margin_max_bytes = 32 * kMiB;
  DemandState c;
  UpdateDemand(Obs(12 * kGiB, 4 * kGiB), p, c);
  EXPECT_EQ(c.protect_bytes, 8 * kGiB + 32 * kMiB);
}

TEST(PolicyTuningTest, SwapBalanceAsksForTheWholeDeficitAtOnce) {
  // A full 2 GiB guest pushed 512 MiB out and read 64 MiB back in one
  // second: about 448 MiB of it is in swap. Demand = actual + 448 MiB +
  // the 128 MiB pressure step.
  DemandParams p;
  DemandState s;
  GuestObservation o = Obs(2 * kGiB, 0);
  UpdateDemand(o, p, s);
  o.swap_out_bytes_total = 512 * kMiB;
  o.swap_in_bytes_total = 64 * kMiB;
  UpdateDemand(o, p, s);
  EXPECT_TRUE(s.pressure);
  EXPECT_EQ(s.swapped_estimate_bytes, 448.0 * kMiB);
  EXPECT_EQ(s.demand_bytes, 2 * kGiB + 448 * kMiB + 128 * kMiB);
  // Pages being read back are working set: protect covers them.
  // max(used 2 GiB * 1.1, used + 448 MiB) = 2 GiB + 448 MiB.
  EXPECT_EQ(s.protect_bytes, 2 * kGiB + 448 * kMiB);
  // Counters going backwards (guest reboot) clear the balance.
  o.swap_out_bytes_total = 0;
  o.swap_in_bytes_total = 0;
  UpdateDemand(o, p, s);
  EXPECT_EQ(s.swapped_estimate_bytes, 0.0);
}

TEST(PolicyTuningTest, LongerMemoryAfterPressure) {
  // Used 1 GiB after a pressure peak at 3 GiB. Normal half-life 10 s; after
  // pressure 100 s for 60 s. Ten seconds later: 1 + 2 * 0.5^(10/100) GiB.
  DemandParams p;
  p.decay_half_life_seconds = 10;
  p.pressure_decay_half_life_seconds = 100;
  p.pressure_memory_seconds = 60;
  DemandState s;
  GuestObservation o = Obs(3 * kGiB, 0);
  UpdateDemand(o, p, s);
  o.swap_in_bytes_total = 64 * kMiB;  // pressure; estimate = 3 GiB + 64 + 128 MiB
  UpdateDemand(o, p, s);
  ASSERT_TRUE(s.pressure);
  const double peak = s.estimate_bytes;
  GuestObservation calm = Obs(3 * kGiB, 2 * kGiB);  // used 1 GiB
  calm.swap_in_bytes_total = 64 * kMiB;
  calm.elapsed_seconds = 10;
  UpdateDemand(calm, p, s);
  EXPECT_NEAR(s.estimate_bytes, kGiB + (peak - kGiB) * std::pow(0.5, 0.1), 1.0);
  // Past the memory window (another 60 s) the normal half-life is back:
  // one 10 s step halves the distance.
  calm.elapsed_seconds = 60;
  UpdateDemand(calm, p, s);
  const double before = s.estimate_bytes;
  calm.elapsed_seconds = 10;
  UpdateDemand(calm, p, s);
  EXPECT_NEAR(s.estimate_bytes, kGiB + (before - kGiB) * 0.5, 1.0);
}

}  // namespace
}  // namespace membroker::policy

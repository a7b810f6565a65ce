#include "broker/policy/demand.h"

#include <gtest/gtest.h>

#include <optional>

namespace membroker::policy {
namespace {

constexpr uint64_t kMiB = uint64_t{1} << 20;
constexpr uint64_t kGiB = uint64_t{1} << 30;

GuestObservation Obs(uint64_t total, uint64_t available, double elapsed = 1.0) {
  GuestObservation o;
  o.stats_valid = true;
  o.total_bytes = total;
  o.available_bytes = available;
  o.actual_bytes = total;
  o.max_bytes = 8 * kGiB;
  o.elapsed_seconds = elapsed;
  return o;
}

TEST(DemandTest, FirstValidSampleSetsUsedAndProtect) {
  // used = 4 - 3 = 1 GiB; protect = 1 GiB * 1.10 (margin not capped).
  DemandParams p;
  p.protect_margin_max_bytes = 0;
  DemandState s;
  UpdateDemand(Obs(4 * kGiB, 3 * kGiB), p, s);
  EXPECT_EQ(s.used_bytes, kGiB);
  EXPECT_EQ(s.demand_bytes, kGiB);
  EXPECT_NEAR(static_cast<double>(s.protect_bytes), 1.1 * kGiB, 1.0);
  EXPECT_DOUBLE_EQ(s.active_fraction, 0.25);
}

TEST(DemandTest, RisesAtOnceFallsWithHalfLife) {
  // The filter alone: no growth projection.
  DemandParams p;
  p.decay_half_life_seconds = 10;
  p.landing_seconds = 0;
  DemandState s;
  UpdateDemand(Obs(4 * kGiB, 3 * kGiB), p, s);  // used 1 GiB
  UpdateDemand(Obs(4 * kGiB, 1 * kGiB), p, s);  // used 3 GiB: at once
  EXPECT_EQ(s.demand_bytes, 3 * kGiB);
  // used drops to 1 GiB; after one half-life (10 s) the estimate is halfway:
  // 1 + (3 - 1) * 0.5 = 2 GiB.
  UpdateDemand(Obs(4 * kGiB, 3 * kGiB, 10.0), p, s);
  EXPECT_EQ(s.demand_bytes, 2 * kGiB);
}

TEST(DemandTest, SwapInRaisesDemandAboveActual) {
  // Guest full (used == actual = 2 GiB) and swapping in 64 MiB/s: demand =
  // actual + swapped-in (64 MiB) + pressure step (128 MiB).
  DemandParams p;
  DemandState s;
  GuestObservation o = Obs(2 * kGiB, 0);
  UpdateDemand(o, p, s);
  o.swap_in_bytes_total = 64 * kMiB;
  UpdateDemand(o, p, s);
  EXPECT_TRUE(s.pressure);
  EXPECT_EQ(s.demand_bytes, 2 * kGiB + 64 * kMiB + 128 * kMiB);
  EXPECT_DOUBLE_EQ(s.swap_in_bytes_per_second, 64.0 * kMiB);
}

TEST(DemandTest, MajorFaultsAloneAreAPressureSignal) {
  DemandParams p;
  DemandState s;
  GuestObservation o = Obs(2 * kGiB, kGiB);
  UpdateDemand(o, p, s);
  o.major_faults_total = 1000;  // 1000/s > 50/s
  UpdateDemand(o, p, s);
  EXPECT_TRUE(s.pressure);
  EXPECT_GT(s.demand_bytes, 2 * kGiB);
}

TEST(DemandTest, CountersGoingBackwardsAreNotPressure) {
  DemandParams p;
  DemandState s;
  GuestObservation o = Obs(2 * kGiB, kGiB);
  o.swap_in_bytes_total = 10 * kGiB;
  UpdateDemand(o, p, s);
  o.swap_in_bytes_total = 0;  // guest rebooted
  UpdateDemand(o, p, s);
  EXPECT_FALSE(s.pressure);
  EXPECT_EQ(s.demand_bytes, kGiB);
}

TEST(DemandTest, InvalidStatsNeverSeenMeansNoReclaim) {
  DemandParams p;
  DemandState s;
  GuestObservation o;
  o.stats_valid = false;
  o.actual_bytes = 3 * kGiB;
  o.max_bytes = 4 * kGiB;
  UpdateDemand(o, p, s);
  EXPECT_EQ(s.demand_bytes, 3 * kGiB);
  EXPECT_EQ(s.protect_bytes, 3 * kGiB);
}

TEST(DemandTest, InvalidStatsKeepThePreviousEstimate) {
  DemandParams p;
  DemandState s;
  UpdateDemand(Obs(4 * kGiB, 3 * kGiB), p, s);
  GuestObservation bad;
  bad.stats_valid = false;
  bad.actual_bytes = 4 * kGiB;
  bad.max_bytes = 8 * kGiB;
  UpdateDemand(bad, p, s);
  EXPECT_EQ(s.demand_bytes, kGiB);
}

TEST(DemandTest, BalloonSizeTheGuestDoesNotSeeCountsAsUsed) {
  // Balloon 256 MiB; the guest sees 224 MiB (32 MiB kept by its kernel),
  // 32 MiB available. First sample: used = 224 - 32 = 192 MiB. Second,
  // balloon unchanged: the 32 MiB gap is measured -> used = 224 MiB. (The
  // full-guest rule is off here: 32 MiB available would count as full.)
  DemandParams p;
  p.full_available_bytes = 0;
  p.full_available_percent = 0;
  p.landing_seconds = 0;
  DemandState s;
  GuestObservation o = Obs(224 * kMiB, 32 * kMiB);
  o.actual_bytes = 256 * kMiB;
  o.max_bytes = 512 * kMiB;
  UpdateDemand(o, p, s);
  EXPECT_EQ(s.used_bytes, 192 * kMiB);
  UpdateDemand(o, p, s);
  EXPECT_EQ(s.gap_bytes, 32 * kMiB);
  EXPECT_EQ(s.used_bytes, 224 * kMiB);
  EXPECT_EQ(s.demand_bytes, 224 * kMiB);
  // The balloon moved (stats lag): the gap is not re-measured from this
  // sample (it would read 288 - 224 = 64 MiB) but kept at 32 MiB.
  o.actual_bytes = 288 * kMiB;
  UpdateDemand(o, p, s);
  EXPECT_EQ(s.gap_bytes, 32 * kMiB);
  // A guest claiming a tiny total cannot raise its gap above max / 8.
  GuestObservation liar = Obs(16 * kMiB, 0);
  liar.actual_bytes = 288 * kMiB;
  liar.max_bytes = 512 * kMiB;
  UpdateDemand(liar, p, s);
  EXPECT_EQ(s.gap_bytes, 64 * kMiB);
}

TEST(DemandTest, DemandNeverExceedsMax) {
  DemandParams p;
  DemandState s;
  GuestObservation o = Obs(8 * kGiB, 0);
  UpdateDemand(o, p, s);
  o.swap_in_bytes_total = 4 * kGiB;
  UpdateDemand(o, p, s);
  EXPECT_EQ(s.demand_bytes, 8 * kGiB);
  EXPECT_LE(s.protect_bytes, 8 * kGiB);
}

}  // namespace
}  // namespace membroker::policy

namespace membroker::policy {
namespace {

TEST(DemandTest, EstimatorOutputsReachTheAllocationInput) {
  DemandState s;
  s.demand_bytes = 3;
  s.protect_bytes = 2;
  s.active_fraction = 0.5;
  s.acute = true;
  VmInput in;
  SetDemandInputs(s, in);
  EXPECT_EQ(in.demand_bytes, 3u);
  EXPECT_EQ(in.protect_bytes, 2u);
  EXPECT_DOUBLE_EQ(in.active_fraction, 0.5);
  EXPECT_TRUE(in.under_pressure);
}

TEST(DemandTest, AFullGuestIsPressureAndAsksForItsGrowth) {
  // A swapless guest of 1 GiB: used 600 MiB, then 800 MiB one second later
  // (200 MiB/s), then full (available 16 MiB, under the 48 MiB mark).
  DemandParams p;
  p.trend_half_life_seconds = 1;
  p.landing_seconds = 3;
  DemandState s;
  GuestObservation o = Obs(1 * kGiB, 1 * kGiB - 600 * kMiB);
  o.max_bytes = 4 * kGiB;
  UpdateDemand(o, p, s);
  EXPECT_FALSE(s.full);
  EXPECT_FALSE(s.pressure);
  EXPECT_EQ(s.demand_bytes, 600 * kMiB);
  o.available_bytes = 1 * kGiB - 800 * kMiB;
  UpdateDemand(o, p, s);
  // Trend after one second with a 1 s half-life: 200 x (1 - 0.5) = 100 MiB/s;
  // projected over 3 s: demand = 800 + 300 = 1100 MiB before it is full.
  EXPECT_NEAR(s.used_trend_bytes_per_second, 100.0 * kMiB, 1.0);
  EXPECT_EQ(s.demand_bytes, 1100 * kMiB);
  EXPECT_FALSE(s.full);
  o.available_bytes = 16 * kMiB;
  UpdateDemand(o, p, s);
  // Full: censored. used 1008 MiB, rate 208 MiB/s, trend 100 + (208 - 100) /
  // 2 = 154 MiB/s, growth 462 MiB: demand at least actual 1 GiB + 462 MiB.
  EXPECT_TRUE(s.full);
  EXPECT_TRUE(s.pressure);
  EXPECT_NEAR(static_cast<double>(s.demand_bytes), 1024.0 * kMiB + 462.0 * kMiB, 1.0 * kMiB);
  // Growth stopped and the guest got room: the projection goes away, the
  // estimate decays from what it was.
  o.total_bytes = o.actual_bytes = 2 * kGiB;
  o.available_bytes = 2 * kGiB - 1008 * kMiB;
  for (int i = 0; i < 10; ++i) UpdateDemand(o, p, s);
  EXPECT_FALSE(s.full);
  EXPECT_LT(s.used_trend_bytes_per_second, 1.0 * kMiB);
  EXPECT_LT(s.demand_bytes, 1486 * kMiB);
  EXPECT_GT(s.demand_bytes, 1008 * kMiB);
}

TEST(DemandTest, DeflateOnOomIsPressureAndHoldsTheBalloon) {
  // Target 512 MiB applied, balloon at 512 MiB; the guest takes 128 MiB
  // back on its own (deflate-on-oom): actual 640 MiB above the target.
  DemandParams p;
  p.deflate_hold_seconds = 60;
  DemandState s;
  GuestObservation o = Obs(512 * kMiB, 200 * kMiB);
  o.last_target_bytes = 512 * kMiB;
  o.max_bytes = 2 * kGiB;
  UpdateDemand(o, p, s);
  EXPECT_FALSE(s.deflated);
  o.actual_bytes = o.total_bytes = 640 * kMiB;
  o.available_bytes = 100 * kMiB;
  UpdateDemand(o, p, s);
  EXPECT_TRUE(s.deflated);
  EXPECT_TRUE(s.pressure);
  // Protect holds the balloon where the guest took it: never re-inflated.
  EXPECT_GE(s.protect_bytes, 640 * kMiB);
  EXPECT_GE(s.demand_bytes, 640 * kMiB + p.pressure_step_bytes);
  // The guest calms down; the hold lasts 60 s, then protect is use-based.
  o.available_bytes = 400 * kMiB;
  for (int i = 0; i < 30; ++i) UpdateDemand(o, p, s);
  EXPECT_FALSE(s.deflated);
  EXPECT_GE(s.protect_bytes, 640 * kMiB);
  for (int i = 0; i < 40; ++i) UpdateDemand(o, p, s);
  EXPECT_LT(s.protect_bytes, 640 * kMiB);
  // A balloon still deflating toward a higher target is not an event.
  DemandState t;
  GuestObservation g = Obs(512 * kMiB, 200 * kMiB);
  g.max_bytes = 2 * kGiB;
  g.last_target_bytes = 1 * kGiB;
  UpdateDemand(g, p, t);
  g.actual_bytes = g.total_bytes = 700 * kMiB;
  UpdateDemand(g, p, t);
  EXPECT_FALSE(t.deflated);
}

TEST(DemandTest, AgentPressureCountsLikeAFullGuest) {
  // Statistics say 300 MiB of 1 GiB used, but the agent saw the guest touch
  // nearly all of its memory from the host side: pressure, and demand at
  // least actual 1 GiB + the 128 MiB step.
  DemandParams p;
  DemandState s;
  GuestObservation o = Obs(1 * kGiB, 700 * kMiB);
  UpdateDemand(o, p, s);
  EXPECT_FALSE(s.pressure);
  o.agent_pressure = true;
  UpdateDemand(o, p, s);
  EXPECT_TRUE(s.pressure);
  EXPECT_TRUE(s.acute);
  EXPECT_EQ(s.demand_bytes, 1 * kGiB + p.pressure_step_bytes);
}

TEST(DemandTest, InferredOomKillDoublesDemandWithinTheHold) {
  // A 1 GiB guest with 400 MiB of page cache and 400 MiB used, no OOM-kill
  // counter (as from QEMU). Between two samples a surge fills it and the
  // kernel kills it: used falls to 100 MiB and the cache to 20 MiB at once.
  DemandParams p;
  p.oom_hold_seconds = 100;
  DemandState s;
  GuestObservation o = Obs(1 * kGiB, 1 * kGiB - 400 * kMiB);
  o.max_bytes = 8 * kGiB;
  o.disk_caches_bytes = 400 * kMiB;
  UpdateDemand(o, p, s);
  UpdateDemand(o, p, s);
  EXPECT_FALSE(s.oom);
  o.available_bytes = 1 * kGiB - 100 * kMiB;
  o.disk_caches_bytes = 20 * kMiB;
  UpdateDemand(o, p, s);
  EXPECT_TRUE(s.oom);
  EXPECT_TRUE(s.oom_inferred);
  EXPECT_TRUE(s.pressure);
  EXPECT_TRUE(s.acute);
  EXPECT_EQ(s.oom_kills_seen, 1u);
  EXPECT_EQ(s.oom_size_bytes, 1 * kGiB);
  EXPECT_EQ(s.oom_demand_bytes, 2 * kGiB);
  EXPECT_GE(s.demand_bytes, 2 * kGiB);
  // Protect is not raised: a kill does not take floors from neighbours.
  EXPECT_LT(s.protect_bytes, 1 * kGiB);
  // The broker gave it 2 GiB; the same surge kills it again at 2 GiB within
  // the hold: doubled again.
  o.actual_bytes = o.total_bytes = 2 * kGiB;
  o.available_bytes = 2 * kGiB - 100 * kMiB;
  o.disk_caches_bytes = 600 * kMiB;
  for (int i = 0; i < 10; ++i) UpdateDemand(o, p, s);
  o.available_bytes = 2 * kGiB - 1900 * kMiB;  // surge: 1.9 GiB used
  UpdateDemand(o, p, s);
  EXPECT_FALSE(s.oom);
  o.available_bytes = 2 * kGiB - 100 * kMiB;
  o.disk_caches_bytes = 10 * kMiB;
  UpdateDemand(o, p, s);
  EXPECT_TRUE(s.oom);
  EXPECT_EQ(s.oom_kills_seen, 2u);
  EXPECT_EQ(s.oom_demand_bytes, 4 * kGiB);
  EXPECT_GE(s.demand_bytes, 4 * kGiB);
  // After the hold, demand follows use again.
  for (int i = 0; i < 400; ++i) UpdateDemand(o, p, s);
  EXPECT_FALSE(s.oom_hold);
  EXPECT_LT(s.demand_bytes, 1 * kGiB);
}

TEST(DemandTest, AProcessThatExitsIsNotAnOomKill) {
  // Used falls by 600 MiB but the page cache stays and the guest was not
  // full: a process ended, nothing was killed.
  DemandParams p;
  DemandState s;
  GuestObservation o = Obs(2 * kGiB, 2 * kGiB - 1 * kGiB);
  o.max_bytes = 4 * kGiB;
  o.disk_caches_bytes = 500 * kMiB;
  UpdateDemand(o, p, s);
  o.available_bytes = 2 * kGiB - 400 * kMiB;
  UpdateDemand(o, p, s);
  EXPECT_FALSE(s.oom);
  EXPECT_FALSE(s.oom_hold);
  EXPECT_EQ(s.oom_kills_seen, 0u);
  // The same fall from a full guest is a kill.
  DemandState t;
  GuestObservation f = Obs(2 * kGiB, 40 * kMiB);
  f.max_bytes = 4 * kGiB;
  f.disk_caches_bytes = 30 * kMiB;
  UpdateDemand(f, p, t);
  EXPECT_TRUE(t.full);
  f.available_bytes = 2 * kGiB - 400 * kMiB;
  UpdateDemand(f, p, t);
  EXPECT_TRUE(t.oom);
  // A balloon that inflated meanwhile is the broker's own move, not a kill.
  DemandState u;
  GuestObservation g = Obs(2 * kGiB, 40 * kMiB);
  g.max_bytes = 4 * kGiB;
  UpdateDemand(g, p, u);
  g.actual_bytes = g.total_bytes = 1 * kGiB;
  g.available_bytes = 1 * kGiB - 400 * kMiB;
  UpdateDemand(g, p, u);
  EXPECT_FALSE(u.oom);
}

TEST(DemandTest, ReportedOomCounterIsTrustedOverInference) {
  DemandParams p;
  DemandState s;
  GuestObservation o = Obs(1 * kGiB, 500 * kMiB);
  o.max_bytes = 4 * kGiB;
  o.has_oom_kills = true;
  o.oom_kills_total = 3;  // kills before the broker saw it: not events
  UpdateDemand(o, p, s);
  UpdateDemand(o, p, s);
  EXPECT_FALSE(s.oom);
  o.oom_kills_total = 4;
  UpdateDemand(o, p, s);
  EXPECT_TRUE(s.oom);
  EXPECT_FALSE(s.oom_inferred);
  EXPECT_EQ(s.oom_demand_bytes, 2 * kGiB);
  // A counter that went back (guest reboot) restarts the baseline.
  o.oom_kills_total = 0;
  UpdateDemand(o, p, s);
  EXPECT_FALSE(s.oom);
  o.oom_kills_total = 1;
  UpdateDemand(o, p, s);
  EXPECT_TRUE(s.oom);
  EXPECT_EQ(s.oom_kills_seen, 2u);
  // Capped at max.
  DemandState big;
  GuestObservation b = Obs(3 * kGiB, 1 * kGiB);
  b.max_bytes = 4 * kGiB;
  b.has_oom_kills = true;
  UpdateDemand(b, p, big);
  b.oom_kills_total = 1;
  UpdateDemand(b, p, big);
  EXPECT_EQ(big.oom_demand_bytes, 4 * kGiB);
  EXPECT_LE(big.demand_bytes, 4 * kGiB);
}

TEST(DemandTest, OomKillInferredWhenTheStatisticsLag) {
  // As seen on a real QEMU guest: the agent saw acute pressure, the kill
  // came between polls, and used memory fell over two samples (150, 124,
  // 72 MiB): 78 MiB from the peak, within the window.
  DemandParams p;
  DemandState s;
  GuestObservation o = Obs(217 * kMiB, 217 * kMiB - 86 * kMiB);
  o.max_bytes = 448 * kMiB;
  UpdateDemand(o, p, s);
  o.agent_pressure = true;
  UpdateDemand(o, p, s);
  o.agent_pressure = false;
  o.available_bytes = 217 * kMiB - 150 * kMiB;
  UpdateDemand(o, p, s);
  o.available_bytes = 217 * kMiB - 124 * kMiB;
  UpdateDemand(o, p, s);
  EXPECT_FALSE(s.oom);
  o.available_bytes = 217 * kMiB - 72 * kMiB;
  UpdateDemand(o, p, s);
  EXPECT_TRUE(s.oom);
  EXPECT_EQ(s.oom_size_bytes, 217 * kMiB);
  EXPECT_EQ(s.oom_demand_bytes, 434 * kMiB);
  // Counted once: staying low is not another kill.
  UpdateDemand(o, p, s);
  EXPECT_FALSE(s.oom);
  EXPECT_EQ(s.oom_kills_seen, 1u);
  // The same fall long after the squeeze is a process ending, not a kill.
  DemandState late;
  GuestObservation g = Obs(217 * kMiB, 217 * kMiB - 150 * kMiB);
  g.max_bytes = 448 * kMiB;
  UpdateDemand(g, p, late);
  g.agent_pressure = true;
  UpdateDemand(g, p, late);
  g.agent_pressure = false;
  for (int i = 0; i < 8; ++i) UpdateDemand(g, p, late);
  g.available_bytes = 217 * kMiB - 72 * kMiB;
  UpdateDemand(g, p, late);
  EXPECT_FALSE(late.oom);
  EXPECT_EQ(late.oom_kills_seen, 0u);
}

// A guest without usable statistics (a Windows guest without the balloon's
// statistics service), measured from the host.
GuestObservation Statless(uint64_t actual, std::optional<uint64_t> working_set,
                          double elapsed = 10.0) {
  GuestObservation o;
  o.stats_valid = false;
  o.actual_bytes = actual;
  o.max_bytes = 8 * kGiB;
  o.elapsed_seconds = elapsed;
  o.balloon_driver_ready = true;  // its balloon works (rule 9's proof)
  if (working_set) {
    o.has_host_working_set = true;
    o.host_working_set_bytes = *working_set;
    o.host_working_set_interval_seconds = 10;
  }
  return o;
}

TEST(DemandHostSignalsTest, StatlessGuestFollowsItsWorkingSetButNeverBelowIt) {
  // Half-life 10 s, margin 20 %, protect margin 10 % capped at 32 MiB.
  DemandParams p;
  p.decay_half_life_seconds = 10;
  DemandState s;
  // First sight: 6 GiB, touched 1 GiB. The estimate starts at what it has
  // (6 GiB) and decays toward raw = 1 GiB x 1.2 = 1.2 GiB: after one
  // half-life 1.2 + (6 - 1.2) / 2 = 3.6 GiB.
  UpdateDemand(Statless(6 * kGiB, kGiB), p, s);
  EXPECT_TRUE(s.host_sized);
  EXPECT_EQ(s.demand_bytes, 6 * kGiB);
  // protect = 1 GiB + min(10 %, 32 MiB) = 1 GiB + 32 MiB.
  EXPECT_EQ(s.protect_bytes, kGiB + 32 * kMiB);
  UpdateDemand(Statless(6 * kGiB, kGiB), p, s);
  EXPECT_NEAR(static_cast<double>(s.demand_bytes), 3.6 * kGiB, 1.0);
  // Long after: the estimate reaches 1.2 GiB and stays there.
  for (int i = 0; i < 20; ++i) UpdateDemand(Statless(6 * kGiB, kGiB), p, s);
  EXPECT_NEAR(static_cast<double>(s.demand_bytes), 1.2 * kGiB, 1.0 * kMiB);
  EXPECT_GE(s.demand_bytes, kGiB);
  EXPECT_FALSE(s.pressure);
  // The guest touches 3 GiB: demand 3.6 GiB and protect 3 GiB + 32 MiB at
  // once (fast up): it is never reclaimed into what it touched.
  UpdateDemand(Statless(6 * kGiB, 3 * kGiB), p, s);
  EXPECT_NEAR(static_cast<double>(s.demand_bytes), 3.6 * kGiB, 1.0);
  EXPECT_EQ(s.protect_bytes, 3 * kGiB + 32 * kMiB);
  // It goes idle again (100 MiB): the recent working set decays with the
  // half-life, 100 MiB + (3 GiB - 100 MiB) / 2 = 1.5 GiB + 50 MiB, and
  // protect with it.
  UpdateDemand(Statless(6 * kGiB, 100 * kMiB), p, s);
  EXPECT_NEAR(s.host_working_set_recent_bytes, 1.5 * kGiB + 50 * kMiB, 1.0);
  EXPECT_EQ(s.protect_bytes, static_cast<uint64_t>(1.5 * kGiB + 50 * kMiB) + 32 * kMiB);
}

TEST(DemandHostSignalsTest, WithoutProofTheBalloonWorksNothingIsReclaimed) {
  // A guest that never sent statistics, whose driver the backend cannot
  // see and whose balloon never held anything (a guest without the balloon
  // driver looks exactly like this): the working set may raise its demand,
  // never lower it below what it has.
  DemandParams p;
  p.decay_half_life_seconds = 10;
  DemandState s;
  GuestObservation o = Statless(6 * kGiB, kGiB);
  o.balloon_driver_ready = false;
  for (int i = 0; i < 20; ++i) UpdateDemand(o, p, s);
  EXPECT_TRUE(s.host_sized);
  EXPECT_FALSE(s.balloon_proven);
  EXPECT_EQ(s.demand_bytes, 6 * kGiB);
  EXPECT_EQ(s.protect_bytes, 6 * kGiB);
  // The balloon once held memory out of the guest (an operator inflated
  // it): proof enough, and from then on the working set rules.
  o.balloon_inflated_bytes = 512 * kMiB;
  UpdateDemand(o, p, s);
  EXPECT_TRUE(s.balloon_proven);
  EXPECT_EQ(s.protect_bytes, kGiB + 32 * kMiB);
  o.balloon_inflated_bytes = 0;
  for (int i = 0; i < 20; ++i) UpdateDemand(o, p, s);
  EXPECT_NEAR(static_cast<double>(s.demand_bytes), 1.2 * kGiB, 1.0 * kMiB);

  // Statistics seen once are proof too (they come through the driver).
  DemandState t;
  UpdateDemand(Obs(4 * kGiB, 3 * kGiB), p, t);
  GuestObservation stale = Statless(4 * kGiB, kGiB);
  stale.balloon_driver_ready = false;
  UpdateDemand(stale, p, t);
  EXPECT_TRUE(t.balloon_proven);
  EXPECT_EQ(t.protect_bytes, kGiB + 32 * kMiB);
}

TEST(DemandHostSignalsTest, StaleStatisticsHandOverToTheWorkingSet) {
  // Valid statistics said 1 GiB used; they go stale while the host sees the
  // guest touch 2 GiB: demand follows the host (2.4 GiB at once).
  DemandParams p;
  DemandState s;
  UpdateDemand(Obs(4 * kGiB, 3 * kGiB), p, s);
  EXPECT_EQ(s.demand_bytes, kGiB);
  GuestObservation stale = Statless(4 * kGiB, 2 * kGiB);
  UpdateDemand(stale, p, s);
  EXPECT_NEAR(static_cast<double>(s.demand_bytes), 2.4 * kGiB, 1.0);
  EXPECT_EQ(s.protect_bytes, 2 * kGiB + 32 * kMiB);
  // Fresh statistics again: the guest's own figures rule (used 1 GiB,
  // estimate decaying from 2.4 GiB), the host working set is not used.
  UpdateDemand(Obs(4 * kGiB, 3 * kGiB), p, s);
  EXPECT_FALSE(s.host_sized);
  EXPECT_EQ(s.used_bytes, kGiB);
  EXPECT_EQ(s.protect_bytes, kGiB + 32 * kMiB);
}

TEST(DemandHostSignalsTest, CgroupStallIsAcutePressureForAStatlessGuest) {
  // Threshold 10 %: some avg10 = 12 % is a stall; demand = actual 2 GiB +
  // step 128 MiB at once, and the guest is under acute pressure.
  DemandParams p;
  DemandState s;
  GuestObservation o = Statless(2 * kGiB, kGiB);
  o.has_host_psi = true;
  o.host_psi_some_avg10_percent = 3;  // below the threshold: nothing
  UpdateDemand(o, p, s);
  EXPECT_FALSE(s.pressure);
  EXPECT_FALSE(s.host_stall);
  o.host_psi_some_avg10_percent = 12;
  UpdateDemand(o, p, s);
  EXPECT_TRUE(s.host_stall);
  EXPECT_TRUE(s.pressure);
  EXPECT_TRUE(s.acute);
  EXPECT_EQ(s.demand_bytes, 2 * kGiB + 128 * kMiB);
  VmInput in;
  SetDemandInputs(s, in);
  EXPECT_TRUE(in.under_pressure);
}

TEST(DemandHostSignalsTest, StallWithoutAWorkingSetStillGrows) {
  // No working set measured yet (first round), never seen with statistics:
  // demand is its size, and a stall asks a step above it.
  DemandParams p;
  DemandState s;
  GuestObservation o = Statless(2 * kGiB, std::nullopt);
  o.has_host_psi = true;
  o.host_psi_some_avg10_percent = 50;
  UpdateDemand(o, p, s);
  EXPECT_TRUE(s.acute);
  EXPECT_EQ(s.demand_bytes, 2 * kGiB + 128 * kMiB);
  EXPECT_EQ(s.protect_bytes, 2 * kGiB);
}

TEST(DemandHostSignalsTest, CgroupStallCountsAsAgentPressureForATrustedGuest) {
  // The same as AgentPressureCountsLikeAFullGuest: actual + step.
  DemandParams p;
  DemandState s;
  GuestObservation o = Obs(2 * kGiB, kGiB);
  UpdateDemand(o, p, s);
  o.has_host_psi = true;
  o.host_psi_some_avg10_percent = 20;
  UpdateDemand(o, p, s);
  EXPECT_TRUE(s.pressure);
  EXPECT_EQ(s.demand_bytes, 2 * kGiB + 128 * kMiB);
}

TEST(DemandHostSignalsTest, TrustedGuestIgnoresTheWorkingSet) {
  // Every output of a trusted guest's estimate is the same with and without
  // host signals below the stall threshold.
  DemandParams p;
  DemandState plain, with_host;
  const uint64_t available[] = {3 * kGiB, kGiB, 2 * kGiB, 3 * kGiB, 0, 3 * kGiB};
  for (uint64_t a : available) {
    GuestObservation o = Obs(4 * kGiB, a);
    o.swap_in_bytes_total = plain.last_swap_in_bytes_total + (a == 0 ? 64 * kMiB : 0);
    UpdateDemand(o, p, plain);
    o.has_host_working_set = true;
    o.host_working_set_bytes = 7 * kGiB;
    o.host_working_set_interval_seconds = 10;
    o.has_host_psi = true;
    o.host_psi_some_avg10_percent = 5;
    UpdateDemand(o, p, with_host);
    EXPECT_EQ(plain.demand_bytes, with_host.demand_bytes);
    EXPECT_EQ(plain.protect_bytes, with_host.protect_bytes);
    EXPECT_EQ(plain.pressure, with_host.pressure);
    EXPECT_EQ(plain.acute, with_host.acute);
    EXPECT_DOUBLE_EQ(plain.active_fraction, with_host.active_fraction);
    EXPECT_FALSE(with_host.host_sized);
  }
}

TEST(DemandHostSignalsTest, NoHostSignalsKeepsTheOldRule) {
  // Without host signals a statless guest is as before: no reclaim.
  DemandParams p;
  DemandState s;
  UpdateDemand(Statless(3 * kGiB, std::nullopt), p, s);
  UpdateDemand(Statless(3 * kGiB, std::nullopt), p, s);
  EXPECT_EQ(s.demand_bytes, 3 * kGiB);
  EXPECT_EQ(s.protect_bytes, 3 * kGiB);
  EXPECT_FALSE(s.host_sized);
}

}  // namespace
}  // namespace membroker::policy

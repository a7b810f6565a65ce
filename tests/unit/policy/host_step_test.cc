// The per-host step: observations in, decisions out, and what it keeps
// between reports. Arithmetic in comments.

#include "broker/policy/host_step.h"

#include <gtest/gtest.h>

#include "broker/policy/explain.h"

namespace membroker::policy {
namespace {

constexpr uint64_t kMiB = uint64_t{1} << 20;
constexpr uint64_t kGiB = uint64_t{1} << 30;

VmObservation Vm(const std::string& id, uint64_t max, uint64_t actual, uint64_t used) {
  VmObservation o;
  o.vm_id = id;
  o.max_bytes = max;
  o.actual_bytes = actual;
  o.guest.stats_valid = true;
  o.guest.total_bytes = actual;
  o.guest.available_bytes = actual - used;
  return o;
}

// Round numbers: no buffer, margin, hysteresis, protect margin or tax.
PolicySet Plain() {
  PolicySet p;
  p.params.buffer_percent = 0;
  p.params.host_free_margin_bytes = 0;
  p.params.hysteresis_bytes = 0;
  p.params.hysteresis_percent = 0;
  p.params.idle_tax_percent = 0;
  p.params.default_min_bytes = 256 * kMiB;
  p.params.reclaim_step_bytes = 512 * kMiB;
  p.params.surplus_percent = 0;
  p.demand.protect_margin_percent = 0;
  return p;
}

TEST(HostStepTest, FirstDecisionStartsFromCurrentSizeAndStepsReclaim) {
  HostStepState state;
  HostObservation obs;
  obs.capacity_bytes = 8 * kGiB;
  obs.vms = {Vm("a", 4 * kGiB, 4 * kGiB, 1 * kGiB)};
  ObserveHost(obs, Plain().demand, state);
  EXPECT_TRUE(DecideStep(Plain(), state));
  // Share = demand 1 GiB; previous = current size 4 GiB; step 512 MiB:
  // 4 GiB - 512 MiB = 3.5 GiB.
  EXPECT_EQ(state.vms.at("a").decision.target_bytes, 4 * kGiB - 512 * kMiB);
  EXPECT_EQ(state.vms.at("a").decision.smoothing, Smoothing::kStepLimit);
  // The next decision continues from the last target, not the actual size.
  obs.now_seconds = 1;
  ObserveHost(obs, Plain().demand, state);
  EXPECT_TRUE(DecideStep(Plain(), state));
  EXPECT_EQ(state.vms.at("a").decision.target_bytes, 3 * kGiB);
}

TEST(HostStepTest, PoliciesAndUnchangedDecisions) {
  HostStepState state;
  HostObservation obs;
  obs.capacity_bytes = 16 * kGiB;
  obs.vms = {Vm("a", 4 * kGiB, 1 * kGiB, 1 * kGiB - 100 * kMiB),
             Vm("b", 4 * kGiB, 1 * kGiB, 200 * kMiB)};
  PolicySet p = Plain();
  p.vms["a"].pinned = true;
  p.vms["b"].min_bytes = 768 * kMiB;
  p.vms["b"].max_bytes = 2 * kGiB;
  ObserveHost(obs, p.demand, state);
  EXPECT_TRUE(DecideStep(p, state));
  // a is pinned: floor = target = max 4 GiB.
  EXPECT_EQ(state.vms.at("a").decision.target_bytes, 4 * kGiB);
  EXPECT_EQ(state.vms.at("a").decision.reason, Reason::kPinned);
  // b: min 768 MiB above its 200 MiB use; max capped at 2 GiB by policy.
  EXPECT_EQ(state.vms.at("b").input.max_bytes, 2 * kGiB);
  EXPECT_EQ(state.vms.at("b").decision.target_bytes, 768 * kMiB);
  // The same observation again changes nothing.
  obs.now_seconds = 1;
  ObserveHost(obs, p.demand, state);
  EXPECT_FALSE(DecideStep(p, state));
}

TEST(HostStepTest, VmsComeAndGoAndReconnectForgetsDecisions) {
  HostStepState state;
  HostObservation obs;
  obs.capacity_bytes = 8 * kGiB;
  obs.vms = {Vm("a", 2 * kGiB, 2 * kGiB, 1 * kGiB)};
  ObserveResult r = ObserveHost(obs, Plain().demand, state);
  EXPECT_EQ(r.added, std::vector<std::string>{"a"});
  DecideStep(Plain(), state);
  obs.now_seconds = 1;
  obs.vms = {Vm("b", 2 * kGiB, 2 * kGiB, 1 * kGiB)};
  r = ObserveHost(obs, Plain().demand, state);
  EXPECT_EQ(r.added, std::vector<std::string>{"b"});
  EXPECT_EQ(r.removed, std::vector<std::string>{"a"});
  EXPECT_EQ(state.vms.count("a"), 0u);
  DecideStep(Plain(), state);
  EXPECT_TRUE(state.vms.at("b").decided);
  ForgetDecisions(state);
  EXPECT_FALSE(state.vms.at("b").decided);
  // A capacity of 0 in an observation keeps the known one.
  obs.capacity_bytes = 0;
  ObserveHost(obs, Plain().demand, state);
  EXPECT_EQ(state.capacity_bytes, 8 * kGiB);
}

TEST(HostStepTest, ElapsedTimeComesFromTheObservations) {
  // With a 10 s half-life, a drop from 2 GiB to 1 GiB of use decays halfway
  // in 10 s: estimate 1.5 GiB.
  PolicySet p = Plain();
  p.demand.decay_half_life_seconds = 10;
  HostStepState state;
  HostObservation obs;
  obs.capacity_bytes = 8 * kGiB;
  obs.vms = {Vm("a", 4 * kGiB, 3 * kGiB, 2 * kGiB)};
  ObserveHost(obs, p.demand, state);
  obs.now_seconds = 10;
  obs.vms = {Vm("a", 4 * kGiB, 3 * kGiB, 1 * kGiB)};
  ObserveHost(obs, p.demand, state);
  EXPECT_EQ(state.vms.at("a").demand.demand_bytes, 1 * kGiB + 512 * kMiB);
}

TEST(HostStepTest, StatlessGuestIsNotReclaimedBelowItsWorkingSet) {
  // Two VMs on 6 GiB. "w" sends no statistics (a Windows guest without the
  // balloon's statistics service) and touched 3 GiB in the last 10 s; "t"
  // (trusted, 4 GiB used of 4) needs all it has. Memory is short: "w"'s
  // floor is its working set (protect margin 0 here), 3 GiB, not less,
  // whatever "t" wants; "t" gets the rest, 3 GiB.
  PolicySet p = Plain();
  p.params.reclaim_step_bytes = 8 * kGiB;  // no stepping: the share shows
  HostStepState state;
  HostObservation obs;
  obs.capacity_bytes = 6 * kGiB;
  VmObservation w;
  w.vm_id = "w";
  w.max_bytes = 4 * kGiB;
  w.actual_bytes = 4 * kGiB;
  w.guest.has_host_working_set = true;
  w.guest.host_working_set_bytes = 3 * kGiB;
  w.guest.host_working_set_interval_seconds = 10;
  w.guest.host_working_set_method = "refault";
  w.guest.balloon_driver_ready = true;  // the backend sees its driver
  obs.vms = {w, Vm("t", 4 * kGiB, 4 * kGiB, 4 * kGiB)};
  for (int i = 0; i < 30; ++i) {
    obs.now_seconds = 10.0 * i;
    ObserveHost(obs, p.demand, state);
    DecideStep(p, state);
    EXPECT_GE(state.vms.at("w").decision.target_bytes, 3 * kGiB) << "round " << i;
  }
  EXPECT_EQ(state.vms.at("w").input.protect_bytes, 3 * kGiB);
  EXPECT_EQ(state.vms.at("w").decision.target_bytes, 3 * kGiB);
  // explain names the signals: the working set, its interval and method.
  StatsNote note;
  note.trusted = false;
  note.untrusted_reason = "stale";
  const std::string step0 = ExplainSteps("h", state, state.vms.at("w"), note)[0];
  EXPECT_NE(step0.find("sized from host signals; host working set 3 GiB over 10 s by refault ("),
            std::string::npos)
      << step0;

  // Its cgroup stalls (some avg10 = 12 %): acute pressure; demand = actual
  // 4 GiB + step 128 MiB, capped at max = 4 GiB. "t" uses all it has, so
  // its floor holds: "w" is under pressure and keeps at least 3 GiB.
  obs.vms[0].guest.has_host_psi = true;
  obs.vms[0].guest.host_psi_some_avg10_percent = 12;
  obs.now_seconds = 300;
  ObserveHost(obs, p.demand, state);
  DecideStep(p, state);
  EXPECT_TRUE(state.vms.at("w").input.under_pressure);
  EXPECT_EQ(state.vms.at("w").input.demand_bytes, 4 * kGiB);
  const std::string stalled = ExplainSteps("h", state, state.vms.at("w"), note)[0];
  EXPECT_NE(stalled.find("cgroup pressure some=12% (a stall"), std::string::npos) << stalled;
}

TEST(HostStepTest, StalledStatlessGuestGetsMemoryAtOnce) {
  // One statless VM of max 8 GiB at 2 GiB on a roomy host: its working set
  // is 1 GiB, so its target settles low; a cgroup stall asks actual + step
  // at once (no stepping on growth).
  PolicySet p = Plain();
  HostStepState state;
  HostObservation obs;
  obs.capacity_bytes = 16 * kGiB;
  VmObservation w;
  w.vm_id = "w";
  w.max_bytes = 8 * kGiB;
  w.actual_bytes = 2 * kGiB;
  w.guest.has_host_working_set = true;
  w.guest.host_working_set_bytes = 1 * kGiB;
  w.guest.host_working_set_interval_seconds = 10;
  obs.vms = {w};
  ObserveHost(obs, p.demand, state);
  DecideStep(p, state);
  const uint64_t before = state.vms.at("w").decision.target_bytes;
  EXPECT_LE(before, 2 * kGiB);
  obs.vms[0].guest.has_host_psi = true;
  obs.vms[0].guest.host_psi_some_avg10_percent = 40;
  obs.now_seconds = 10;
  ObserveHost(obs, p.demand, state);
  DecideStep(p, state);
  // demand = actual 2 GiB + step 128 MiB; buffer 0: target 2 GiB + 128 MiB.
  EXPECT_EQ(state.vms.at("w").decision.target_bytes, 2 * kGiB + 128 * kMiB);
}

TEST(ExplainTest, StepsFollowTheAllocatorsRecord) {
  PolicySet p = Plain();
  HostStepState state;
  HostObservation obs;
  // Floors (use) 0.5 + 1 = 1.5 GiB fit 2 GiB; desired with a 50 % buffer
  // 0.75 + 1.5 = 2.25 GiB do not: step 4 shares.
  p.params.buffer_percent = 50;
  obs.capacity_bytes = 2 * kGiB;
  obs.vms = {Vm("a", 4 * kGiB, 1 * kGiB, 512 * kMiB), Vm("b", 4 * kGiB, 3 * kGiB, 1 * kGiB)};
  ObserveHost(obs, p.demand, state);
  DecideStep(p, state);
  EXPECT_EQ(state.decision.regime, Regime::kShared);
  StatsNote note;
  note.total_bytes = 3 * kGiB;
  const std::vector<std::string> steps = ExplainSteps("h", state, state.vms.at("b"), note);
  ASSERT_EQ(steps.size(), 5u);
  EXPECT_NE(steps[3].find("memory is short"), std::string::npos) << steps[3];
  // Overcommitted: floors (min 1.5 GiB each) above capacity.
  p.params.default_min_bytes = 1536 * kMiB;
  DecideStep(p, state);
  EXPECT_EQ(state.decision.regime, Regime::kOvercommitted);
  EXPECT_NE(ExplainSteps("h", state, state.vms.at("b"), note)[3].find("overcommitted"),
            std::string::npos);
  // Everything fits.
  state.capacity_bytes = 64 * kGiB;
  DecideStep(p, state);
  EXPECT_EQ(state.decision.regime, Regime::kFits);
  EXPECT_NE(ExplainSteps("h", state, state.vms.at("b"), note)[3].find("everything fits"),
            std::string::npos);
  // Untrusted statistics are named.
  note.trusted = false;
  note.untrusted_reason = "stale";
  EXPECT_NE(ExplainSteps("h", state, state.vms.at("b"), note)[0].find("not used: stale"),
            std::string::npos);
}

TEST(ExplainTest, HysteresisAndStepsAreTheAllocatorsOwn) {
  PolicySet p = Plain();
  p.params.hysteresis_bytes = 64 * kMiB;
  p.params.buffer_percent = 10;
  HostStepState state;
  HostObservation obs;
  obs.capacity_bytes = 16 * kGiB;
  obs.vms = {Vm("a", 4 * kGiB, 2 * kGiB, 1000 * kMiB)};
  ObserveHost(obs, p.demand, state);
  DecideStep(p, state);
  // 2 GiB -> share 1000 MiB x 1.1 = 1100 MiB: a 512 MiB step to 1536 MiB.
  EXPECT_EQ(state.vms.at("a").decision.target_bytes, 1536 * kMiB);
  EXPECT_NE(ExplainSteps("h", state, state.vms.at("a"), {})[4].find("step of 512 MiB"),
            std::string::npos);
  obs.now_seconds = 1;
  ObserveHost(obs, p.demand, state);
  DecideStep(p, state);
  EXPECT_EQ(state.vms.at("a").decision.target_bytes, 1100 * kMiB);
  // Use grows by 20 MiB: share 1122 MiB, 22 MiB above the previous target,
  // inside the 64 MiB band (floor = use 1020 MiB is below the share).
  obs.now_seconds = 2;
  obs.vms = {Vm("a", 4 * kGiB, 2 * kGiB, 1020 * kMiB)};
  ObserveHost(obs, p.demand, state);
  DecideStep(p, state);
  EXPECT_EQ(state.vms.at("a").decision.target_bytes, 1100 * kMiB);
  EXPECT_EQ(state.vms.at("a").decision.smoothing, Smoothing::kHysteresis);
  EXPECT_NE(ExplainSteps("h", state, state.vms.at("a"), {})[4].find("hysteresis band 64 MiB"),
            std::string::npos);
}

}  // namespace
}  // namespace membroker::policy

#include "node-agent/actuator.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <map>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/clock.h"
#include "common/proto_time.h"
#include "tests/unit/agent/fake_hypervisor.h"

namespace membroker::agent {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::IsEmpty;
using ::testing::Not;
using ::testing::Pair;

constexpr uint64_t kMiB = uint64_t{1} << 20;

membroker::v1::VmTarget Target(const std::string& vm, uint64_t bytes) {
  membroker::v1::VmTarget t;
  t.set_vm_id(vm);
  t.set_target_bytes(bytes);
  return t;
}

class ActuatorTest : public ::testing::Test {
 protected:
  ActuatorTest() {
    params_.safety.max_inflate_step_bytes = 256 * kMiB;
    params_.safety.stuck_timeout = absl::Seconds(10);
    params_.safety.fail_static_grace = absl::Seconds(30);
    params_.fail_static_step_bytes = 256 * kMiB;
    params_.fail_static_step_interval = absl::Seconds(1);
    params_.pressure_swap_in_bytes_per_second = 1 * kMiB;
    params_.pressure_deflate_bytes = 512 * kMiB;
  }

  Actuator& Make() {
    actuator_ = std::make_unique<Actuator>(&fake_, &clock_, params_);
    return *actuator_;
  }

  TickResult Tick() {
    absl::StatusOr<std::vector<VmStatus>> vms = fake_.ListVms();
    EXPECT_TRUE(vms.ok());
    return actuator_->Tick(*vms);
  }

  VmActuation View(const std::string& id) {
    for (const VmActuation& v : actuator_->Snapshot()) {
      if (v.vm_id == id) return v;
    }
    ADD_FAILURE() << "no VM " << id;
    return {};
  }

  FakeHypervisor fake_;
  ManualClock clock_;
  ActuatorParams params_;
  std::unique_ptr<Actuator> actuator_;
};

TEST_F(ActuatorTest, InflatesInBoundedSteps) {
  fake_.AddVm("a", 4096 * kMiB, 4096 * kMiB);
  Actuator& act = Make();
  act.SetBrokerConnected(true);
  Tick();
  EXPECT_THAT(act.SetTargets(1, {Target("a", 1024 * kMiB)}), IsEmpty());
  // 4096 -> 1024 MiB in steps of 256 MiB: 12 steps.
  std::vector<uint64_t> applied;
  for (int i = 0; i < 20 && fake_.actual("a") != 1024 * kMiB; ++i) {
    const uint64_t before = fake_.actual("a");
    Tick();
    EXPECT_GE(fake_.target("a") + 256 * kMiB, before) << "step larger than 256 MiB";
    applied.push_back(fake_.target("a") / kMiB);
    fake_.SettleBalloons();
    clock_.Advance(absl::Seconds(1));
  }
  EXPECT_EQ(fake_.actual("a"), 1024 * kMiB);
  EXPECT_EQ(applied.size(), 12u);
  EXPECT_EQ(applied.front(), 3840u);
  EXPECT_EQ(applied.back(), 1024u);
  EXPECT_EQ(View("a").state, BalloonState::kOk);
}

TEST_F(ActuatorTest, StepFollowsTheBalloonNotTheLastTarget) {
  fake_.AddVm("a", 4096 * kMiB, 4096 * kMiB);
  Actuator& act = Make();
  act.SetBrokerConnected(true);
  Tick();
  act.SetTargets(1, {Target("a", 1024 * kMiB)});
  Tick();
  EXPECT_EQ(fake_.target("a"), 3840 * kMiB);
  // The balloon has not moved yet: no deeper target.
  fake_.ClearCalls();
  Tick();
  EXPECT_THAT(fake_.calls(), IsEmpty());
}

TEST_F(ActuatorTest, DeflatesAtOnce) {
  fake_.AddVm("a", 4096 * kMiB, 1024 * kMiB);
  Actuator& act = Make();
  act.SetBrokerConnected(true);
  Tick();
  act.SetTargets(1, {Target("a", 4096 * kMiB)});
  TickResult r = Tick();
  EXPECT_EQ(r.targets_applied, 1);
  EXPECT_EQ(fake_.target("a"), 4096 * kMiB);
}

TEST_F(ActuatorTest, FreesBeforeGrowingAndKeepsCapacity) {
  // Capacity 5 GiB: a shrinks 4 -> 3 GiB, b grows 1 -> 2 GiB.
  params_.capacity_bytes = 5120 * kMiB;
  fake_.AddVm("b", 4096 * kMiB, 1024 * kMiB);  // ids sort b before z
  fake_.AddVm("z", 4096 * kMiB, 4096 * kMiB);
  Actuator& act = Make();
  act.SetBrokerConnected(true);
  Tick();
  act.SetTargets(1, {Target("z", 3072 * kMiB), Target("b", 2048 * kMiB)});
  for (int i = 0; i < 10; ++i) {
    fake_.ClearCalls();
    Tick();
    const auto calls = fake_.calls();
    // Shrinks are issued before grows even though "b" sorts first.
    bool seen_grow = false;
    for (const auto& [vm, target] : calls) {
      if (vm == "b") seen_grow = true;
      if (vm == "z") {
        EXPECT_FALSE(seen_grow) << "shrink after a grow in tick " << i;
      }
    }
    // Never more committed than the capacity.
    const uint64_t committed = std::max(fake_.actual("b"), fake_.target("b")) +
                               std::max(fake_.actual("z"), fake_.target("z"));
    EXPECT_LE(committed, 5120 * kMiB) << "tick " << i;
    fake_.SettleBalloons();
    clock_.Advance(absl::Seconds(1));
  }
  EXPECT_EQ(fake_.actual("z"), 3072 * kMiB);
  EXPECT_EQ(fake_.actual("b"), 2048 * kMiB);
}

TEST_F(ActuatorTest, FrozenBalloonWithoutStatsIsNoDriver) {
  fake_.AddVm("a", 4096 * kMiB, 4096 * kMiB);
  fake_.SetFrozen("a", true);
  Actuator& act = Make();
  act.SetBrokerConnected(true);
  Tick();
  act.SetTargets(1, {Target("a", 1024 * kMiB)});
  Tick();  // Sets 3840 MiB; progress tracking starts.
  EXPECT_EQ(fake_.target("a"), 3840 * kMiB);
  clock_.Advance(absl::Seconds(9));
  Tick();
  EXPECT_EQ(View("a").state, BalloonState::kOk);
  clock_.Advance(absl::Seconds(2));
  Tick();
  EXPECT_EQ(View("a").state, BalloonState::kNoDriver);
  // The pending inflation is cancelled: the target is back at the actual.
  EXPECT_EQ(fake_.target("a"), 4096 * kMiB);
  // And no further inflation while unhealthy, even for a new target.
  fake_.ClearCalls();
  act.SetTargets(2, {Target("a", 512 * kMiB)});
  for (int i = 0; i < 5; ++i) {
    clock_.Advance(absl::Seconds(1));
    Tick();
  }
  EXPECT_THAT(fake_.calls(), IsEmpty());
}

TEST_F(ActuatorTest, FrozenBalloonWithStatsIsStuckAndRecovers) {
  fake_.AddVm("a", 4096 * kMiB, 4096 * kMiB);
  fake_.SetFrozen("a", true);
  GuestMemoryStats stats;
  stats.last_update = clock_.Now();
  fake_.SetStats("a", stats);
  Actuator& act = Make();
  act.SetBrokerConnected(true);
  Tick();
  act.SetTargets(1, {Target("a", 1024 * kMiB)});
  Tick();
  clock_.Advance(absl::Seconds(11));
  Tick();
  EXPECT_EQ(View("a").state, BalloonState::kStuck);
  // The broker asks for more memory: grows are still applied.
  act.SetTargets(2, {Target("a", 4096 * kMiB)});
  Tick();
  // The balloon moves again (the guest loaded its driver): healthy.
  fake_.SetFrozen("a", false);
  act.SetTargets(3, {Target("a", 2048 * kMiB)});
  // Unhealthy balloons get no inflation, so move it by hand: a guest
  // returning memory on its own.
  fake_.RemoveVm("a");
  fake_.AddVm("a", 4096 * kMiB, 4000 * kMiB);
  Tick();
  EXPECT_EQ(View("a").state, BalloonState::kOk);
  Tick();
  EXPECT_EQ(fake_.target("a"), 3744 * kMiB);  // 4000 - 256
}

TEST_F(ActuatorTest, TargetWithinTheDevicesGranularityIsReached) {
  // A virtio-mem VM without a balloon follows to within a block (2 MiB):
  // 1.5 MiB above its target it is done, not stuck. The same distance on a
  // balloon (1 MiB granularity) is a stuck balloon.
  for (const auto& [granularity, want] :
       {std::pair{2 * kMiB, BalloonState::kOk}, std::pair{kMiB, BalloonState::kStuck}}) {
    SCOPED_TRACE(granularity);
    fake_.RemoveVm("a");
    fake_.AddVm("a", 4096 * kMiB, 1024 * kMiB + 3 * kMiB / 2);
    fake_.SetFrozen("a", true);
    fake_.SetGranularity("a", granularity);
    GuestMemoryStats stats;
    stats.last_update = clock_.Now();
    fake_.SetStats("a", stats);
    Actuator& act = Make();
    act.SetBrokerConnected(true);
    Tick();
    act.SetTargets(1, {Target("a", 1024 * kMiB)});
    Tick();
    clock_.Advance(absl::Seconds(11));
    Tick();
    clock_.Advance(absl::Seconds(11));
    Tick();
    EXPECT_EQ(View("a").state, want);
    EXPECT_EQ(View("a").granularity_bytes, granularity);
  }
}

TEST_F(ActuatorTest, SlowProgressIsNotStuck) {
  fake_.AddVm("a", 4096 * kMiB, 4096 * kMiB);
  Actuator& act = Make();
  act.SetBrokerConnected(true);
  Tick();
  act.SetTargets(1, {Target("a", 3840 * kMiB)});
  Tick();
  // 2 MiB every 5 s: slow, but moving by more than 1 MiB per stuck timeout.
  for (int i = 0; i < 20; ++i) {
    clock_.Advance(absl::Seconds(5));
    fake_.MoveBalloons(2 * kMiB);
    Tick();
    ASSERT_EQ(View("a").state, BalloonState::kOk) << "after " << (i + 1) * 5 << " s";
  }
}

TEST_F(ActuatorTest, GuestPressureDeflatesWithoutBroker) {
  fake_.AddVm("a", 4096 * kMiB, 2048 * kMiB);
  GuestMemoryStats stats;
  stats.swap_in_bytes_total = 0;
  stats.major_faults_total = 0;
  stats.last_update = clock_.Now();
  fake_.SetStats("a", stats);
  Actuator& act = Make();  // Never connected to a broker.
  EXPECT_FALSE(Tick().pressure_event);
  // A trickle of swap-in (0.5 MiB/s) is not pressure.
  clock_.Advance(absl::Seconds(1));
  stats.swap_in_bytes_total = kMiB / 2;
  stats.last_update = clock_.Now();
  fake_.SetStats("a", stats);
  EXPECT_FALSE(Tick().pressure_event);
  EXPECT_THAT(fake_.calls(), IsEmpty());
  // 64 MiB in one second is.
  clock_.Advance(absl::Seconds(1));
  stats.swap_in_bytes_total = 64 * kMiB + kMiB / 2;
  stats.last_update = clock_.Now();
  fake_.SetStats("a", stats);
  TickResult r = Tick();
  EXPECT_TRUE(r.pressure_event);
  EXPECT_TRUE(View("a").pressure);
  EXPECT_THAT(fake_.calls(), ElementsAre(Pair("a", 2560 * kMiB)));
  // The same statistics again are no news: no second deflation.
  fake_.ClearCalls();
  EXPECT_FALSE(Tick().pressure_event);
  EXPECT_THAT(fake_.calls(), IsEmpty());
  EXPECT_FALSE(act.walking_back());
}

TEST_F(ActuatorTest, MajorFaultsArePressureToo) {
  fake_.AddVm("a", 4096 * kMiB, 4000 * kMiB);
  GuestMemoryStats stats;
  stats.major_faults_total = 0;
  stats.last_update = clock_.Now();
  fake_.SetStats("a", stats);
  Make();
  Tick();
  clock_.Advance(absl::Seconds(2));
  stats.major_faults_total = 10000;
  stats.last_update = clock_.Now();
  fake_.SetStats("a", stats);
  EXPECT_TRUE(Tick().pressure_event);
  EXPECT_EQ(fake_.target("a"), 4096 * kMiB);  // 4000 + 512 capped at max
}

TEST_F(ActuatorTest, CountersGoingBackwardsAreNotPressure) {
  fake_.AddVm("a", 4096 * kMiB, 2048 * kMiB);
  GuestMemoryStats stats;
  stats.swap_in_bytes_total = 1000 * kMiB;
  stats.last_update = clock_.Now();
  fake_.SetStats("a", stats);
  Make();
  Tick();
  clock_.Advance(absl::Seconds(1));
  stats.swap_in_bytes_total = 0;  // guest rebooted
  stats.last_update = clock_.Now();
  fake_.SetStats("a", stats);
  EXPECT_FALSE(Tick().pressure_event);
}

TEST_F(ActuatorTest, FailStaticHoldsThenWalksBackTowardMax) {
  fake_.AddVm("a", 2048 * kMiB, 2048 * kMiB);
  Actuator& act = Make();
  act.SetBrokerConnected(true);
  Tick();
  act.SetTargets(1, {Target("a", 1024 * kMiB)});
  for (int i = 0; i < 10; ++i) {
    Tick();
    fake_.SettleBalloons();
  }
  ASSERT_EQ(fake_.actual("a"), 1024 * kMiB);
  act.SetBrokerConnected(false);
  fake_.ClearCalls();
  // Within the grace period the last targets hold.
  for (int i = 0; i < 29; ++i) {
    clock_.Advance(absl::Seconds(1));
    Tick();
    fake_.SettleBalloons();
  }
  EXPECT_THAT(fake_.calls(), IsEmpty());
  EXPECT_FALSE(act.walking_back());
  // Then 256 MiB per second back up to max, never down.
  std::vector<uint64_t> targets;
  for (int i = 0; i < 8; ++i) {
    clock_.Advance(absl::Seconds(1));
    Tick();
    fake_.SettleBalloons();
  }
  EXPECT_TRUE(act.walking_back());
  for (const auto& [vm, target] : fake_.calls()) targets.push_back(target / kMiB);
  EXPECT_THAT(targets, ElementsAre(1280, 1536, 1792, 2048));
  // The broker is back with a new decision: the walk stops.
  act.SetBrokerConnected(true);
  EXPECT_FALSE(act.walking_back());
  EXPECT_THAT(act.SetTargets(2, {Target("a", 1792 * kMiB)}), IsEmpty());
  Tick();
  EXPECT_EQ(fake_.target("a"), 1792 * kMiB);
}

TEST_F(ActuatorTest, WalkBackRespectsCapacity) {
  params_.capacity_bytes = 3072 * kMiB;
  fake_.AddVm("a", 2048 * kMiB, 1024 * kMiB);
  fake_.AddVm("b", 2048 * kMiB, 1024 * kMiB);
  Actuator& act = Make();
  for (int i = 0; i < 60; ++i) {
    clock_.Advance(absl::Seconds(1));
    Tick();
    fake_.SettleBalloons();
    ASSERT_LE(fake_.actual("a") + fake_.actual("b"), 3072 * kMiB);
  }
  EXPECT_TRUE(act.walking_back());
  EXPECT_EQ(fake_.actual("a") + fake_.actual("b"), 3072 * kMiB);
}

TEST_F(ActuatorTest, NeverInflatesOnItsOwn) {
  // a is below its max and under guest pressure once; b sits at its max.
  // Over 100 s the broker comes and goes, pressure deflates a, and the
  // fail-static walk back moves a toward its max: many calls, none of them
  // an inflation (a target below the balloon's actual at the time).
  params_.safety.fail_static_grace = absl::Seconds(20);
  fake_.AddVm("a", 4096 * kMiB, 3000 * kMiB);
  fake_.AddVm("b", 4096 * kMiB, 4096 * kMiB);
  GuestMemoryStats stats;
  stats.swap_in_bytes_total = 0;
  stats.last_update = clock_.Now();
  fake_.SetStats("a", stats);
  Actuator& act = Make();
  act.SetBrokerConnected(true);
  for (int i = 0; i < 100; ++i) {
    clock_.Advance(absl::Seconds(1));
    if (i == 10) {
      stats.swap_in_bytes_total = 100 * kMiB;  // ~9 MiB/s over 11 s: above 1 MiB/s
      stats.last_update = clock_.Now();
      fake_.SetStats("a", stats);
    }
    Tick();
    fake_.MoveBalloons(64 * kMiB);
    if (i == 50) act.SetBrokerConnected(false);
  }
  // The actuator acted (pressure deflate, then the walk back to max)...
  EXPECT_FALSE(fake_.calls().empty());
  EXPECT_EQ(fake_.target("a"), 4096 * kMiB);
  EXPECT_TRUE(act.walking_back());
  // ...and never inflated.
  EXPECT_EQ(fake_.inflate_calls(), 0);

  // Positive control: a broker target below the actual is an inflation,
  // and the same count sees it.
  act.SetBrokerConnected(true);
  EXPECT_THAT(act.SetTargets(1, {Target("a", 2048 * kMiB)}), IsEmpty());
  Tick();
  EXPECT_EQ(fake_.inflate_calls(), 1);
}

TEST_F(ActuatorTest, RefusesBadTargetsPerVm) {
  fake_.AddVm("a", 4096 * kMiB, 4096 * kMiB);
  fake_.AddVm("b", 4096 * kMiB, 4096 * kMiB);
  fake_.AddVm("c", 4096 * kMiB, 4096 * kMiB);
  Actuator& act = Make();
  Tick();
  std::map<std::string, std::string> errors =
      act.SetTargets(5, {Target("a", 0), Target("b", 5000 * kMiB), Target("ghost", kMiB),
                         Target("c", 2048 * kMiB), Target("c", 3072 * kMiB)});
  ASSERT_EQ(errors.size(), 4u);
  EXPECT_THAT(errors["a"], HasSubstr("target_bytes must be > 0"));
  EXPECT_THAT(errors["b"], HasSubstr("above max_bytes"));
  EXPECT_THAT(errors["ghost"], HasSubstr("unknown VM"));
  EXPECT_THAT(errors["c"], HasSubstr("duplicate"));
  EXPECT_EQ(act.generation(), 5u);
  Tick();
  EXPECT_THAT(fake_.calls(), IsEmpty());  // nothing valid to apply
  // An old generation changes nothing.
  errors = act.SetTargets(4, {Target("a", 1024 * kMiB)});
  EXPECT_THAT(errors["a"], HasSubstr("not above"));
  Tick();
  EXPECT_THAT(fake_.calls(), IsEmpty());
  // Positive control: the same target in a newer generation is applied at
  // the next tick (a first inflate step of 256 MiB), so the empty call
  // lists above are the refusals' doing.
  EXPECT_THAT(act.SetTargets(6, {Target("a", 1024 * kMiB)}), IsEmpty());
  Tick();
  EXPECT_THAT(fake_.calls(), ElementsAre(Pair("a", 3840 * kMiB)));
}

TEST_F(ActuatorTest, NewConnectionStartsGenerationsOver) {
  fake_.AddVm("a", 4096 * kMiB, 4096 * kMiB);
  Actuator& act = Make();
  act.SetBrokerConnected(true);
  Tick();
  EXPECT_THAT(act.SetTargets(9, {Target("a", 4000 * kMiB)}), IsEmpty());
  EXPECT_THAT(act.SetTargets(9, {Target("a", 3900 * kMiB)}), Not(IsEmpty()));
  act.SetBrokerConnected(false);
  act.SetBrokerConnected(true);  // a restarted broker counts from 1 again
  EXPECT_THAT(act.SetTargets(1, {Target("a", 3800 * kMiB)}), IsEmpty());
  EXPECT_EQ(act.generation(), 1u);
}

TEST_F(ActuatorTest, ReportsHypervisorErrorsAndForgetsGoneVms) {
  fake_.AddVm("a", 4096 * kMiB, 1024 * kMiB);
  fake_.AddVm("b", 4096 * kMiB, 1024 * kMiB);
  fake_.SetFailSet("a", absl::UnavailableError("monitor closed"));
  Actuator& act = Make();
  Tick();
  act.SetTargets(1, {Target("a", 2048 * kMiB), Target("b", 2048 * kMiB)});
  TickResult r = Tick();
  EXPECT_EQ(r.targets_applied, 1);
  ASSERT_EQ(r.errors.count("a"), 1u);
  EXPECT_THAT(r.errors["a"], HasSubstr("monitor closed"));
  EXPECT_EQ(View("a").last_error, "monitor closed");
  EXPECT_FALSE(View("a").applied_bytes.has_value());
  fake_.RemoveVm("b");
  Tick();
  EXPECT_EQ(act.Snapshot().size(), 1u);
}

// Local grants: capacity 3072 MiB, margin 32 MiB, at most 256 MiB a grant.
class LocalGrantTest : public ActuatorTest {
 protected:
  LocalGrantTest() {
    params_.capacity_bytes = 3072 * kMiB;
    params_.local_grant_max_bytes = 256 * kMiB;
    params_.local_grant_margin_bytes = 32 * kMiB;
    params_.local_grant_interval = absl::Milliseconds(500);
  }

  TickResult TickAcute(const std::set<std::string>& acute) {
    absl::StatusOr<std::vector<VmStatus>> vms = fake_.ListVms();
    EXPECT_TRUE(vms.ok());
    return actuator_->Tick(*vms, acute);
  }
};

TEST_F(LocalGrantTest, GrantIsTheFullStepWhenTheBudgetHasRoom) {
  fake_.AddVm("a", 2048 * kMiB, 512 * kMiB);
  fake_.AddVm("b", 2048 * kMiB, 1024 * kMiB);
  Actuator& act = Make();
  act.SetBrokerConnected(true);
  Tick();
  ASSERT_THAT(act.SetTargets(1, {Target("a", 512 * kMiB), Target("b", 1024 * kMiB)}), IsEmpty());
  Tick();
  // Committed 512 + 1024 = 1536; room 3072 - 1536 - 32 = 1504; headroom
  // 2048 - 512 = 1536: the grant is the 256 MiB step, target 768 MiB.
  TickResult r = TickAcute({"a"});
  EXPECT_EQ(r.local_grants, 1);
  EXPECT_EQ(r.local_grant_bytes, 256 * kMiB);
  EXPECT_EQ(fake_.target("a"), 768 * kMiB);
  EXPECT_EQ(View("a").local_grant_bytes, 256 * kMiB);
  EXPECT_EQ(View("b").local_grant_bytes, 0u);
}

TEST_F(LocalGrantTest, GrantIsBoundedByTheBudgetLessTheMargin) {
  fake_.AddVm("a", 2048 * kMiB, 1024 * kMiB);
  fake_.AddVm("b", 2048 * kMiB, 1920 * kMiB);
  Actuator& act = Make();
  act.SetBrokerConnected(true);
  Tick();
  ASSERT_THAT(act.SetTargets(1, {Target("a", 1024 * kMiB), Target("b", 1920 * kMiB)}),
              IsEmpty());
  Tick();
  // Committed 1024 + 1920 = 2944; room 3072 - 2944 - 32 = 96 MiB.
  TickResult r = TickAcute({"a"});
  EXPECT_EQ(r.local_grant_bytes, 96 * kMiB);
  EXPECT_EQ(fake_.target("a"), 1120 * kMiB);
  // The sum of targets stays within capacity minus the margin.
  EXPECT_LE(fake_.target("a") + fake_.target("b"), 3072 * kMiB - 32 * kMiB);
  // No room left: a later acute tick grants nothing.
  fake_.SettleBalloons();
  clock_.Advance(absl::Seconds(1));
  r = TickAcute({"a"});
  EXPECT_EQ(r.local_grants, 0);
  EXPECT_EQ(fake_.target("a"), 1120 * kMiB);
}

TEST_F(LocalGrantTest, GrantIsBoundedByTheVmMax) {
  fake_.AddVm("a", 600 * kMiB, 512 * kMiB);
  Actuator& act = Make();
  act.SetBrokerConnected(true);
  Tick();
  ASSERT_THAT(act.SetTargets(1, {Target("a", 512 * kMiB)}), IsEmpty());
  Tick();
  // Headroom 600 - 512 = 88 MiB < 256 MiB.
  TickResult r = TickAcute({"a"});
  EXPECT_EQ(r.local_grant_bytes, 88 * kMiB);
  EXPECT_EQ(fake_.target("a"), 600 * kMiB);
  fake_.SettleBalloons();
  clock_.Advance(absl::Seconds(1));
  EXPECT_EQ(TickAcute({"a"}).local_grants, 0);  // At max: nothing to grant.
}

TEST_F(LocalGrantTest, NoGrantWhenTheBudgetHasNoRoom) {
  fake_.AddVm("a", 2048 * kMiB, 1536 * kMiB);
  fake_.AddVm("b", 2048 * kMiB, 1520 * kMiB);
  Actuator& act = Make();
  act.SetBrokerConnected(true);
  Tick();
  // Committed 3056 MiB: 16 MiB below capacity, inside the 32 MiB margin.
  TickResult r = TickAcute({"a"});
  EXPECT_EQ(r.local_grants, 0);
  EXPECT_THAT(fake_.calls(), IsEmpty());
  EXPECT_EQ(View("a").local_grant_bytes, 0u);
}

TEST_F(LocalGrantTest, NoGrantWithoutCapacityOrWhenTurnedOff) {
  params_.capacity_bytes = 0;
  fake_.AddVm("a", 2048 * kMiB, 512 * kMiB);
  Make().SetBrokerConnected(true);
  Tick();
  EXPECT_EQ(TickAcute({"a"}).local_grants, 0);
  params_.capacity_bytes = 3072 * kMiB;
  params_.local_grants = false;
  Make().SetBrokerConnected(true);
  Tick();
  EXPECT_EQ(TickAcute({"a"}).local_grants, 0);
  EXPECT_THAT(fake_.calls(), IsEmpty());
}

TEST_F(LocalGrantTest, OneGrantPerIntervalPerVm) {
  fake_.AddVm("a", 4096 * kMiB, 512 * kMiB);
  Make().SetBrokerConnected(true);
  Tick();
  EXPECT_EQ(TickAcute({"a"}).local_grant_bytes, 256 * kMiB);
  fake_.SettleBalloons();
  clock_.Advance(absl::Milliseconds(200));
  EXPECT_EQ(TickAcute({"a"}).local_grants, 0);  // 200 ms < 500 ms.
  clock_.Advance(absl::Milliseconds(300));
  // 768 -> 1024 MiB; grants add up until the broker answers.
  EXPECT_EQ(TickAcute({"a"}).local_grant_bytes, 256 * kMiB);
  EXPECT_EQ(fake_.target("a"), 1024 * kMiB);
  EXPECT_EQ(View("a").local_grant_bytes, 512 * kMiB);
}

TEST_F(LocalGrantTest, NextTargetSetReplacesTheGrant) {
  fake_.AddVm("a", 2048 * kMiB, 512 * kMiB);
  Actuator& act = Make();
  act.SetBrokerConnected(true);
  Tick();
  ASSERT_THAT(act.SetTargets(1, {Target("a", 512 * kMiB)}), IsEmpty());
  Tick();
  TickAcute({"a"});
  fake_.SettleBalloons();
  ASSERT_EQ(fake_.actual("a"), 768 * kMiB);
  // The broker decides 640 MiB: its target stands, the grant is forgotten
  // (the shrink goes in the usual bounded steps once the acute hold, 5 s,
  // has passed).
  ASSERT_THAT(act.SetTargets(2, {Target("a", 640 * kMiB)}), IsEmpty());
  clock_.Advance(absl::Seconds(5));
  Tick();
  EXPECT_EQ(fake_.target("a"), 640 * kMiB);
  EXPECT_EQ(View("a").local_grant_bytes, 0u);
  EXPECT_EQ(View("a").desired_bytes, 640 * kMiB);
}

TEST_F(LocalGrantTest, AcutePressureHoldsTheBalloonUntilTheNextTarget) {
  params_.local_grants = false;
  fake_.AddVm("a", 2048 * kMiB, 1024 * kMiB);
  Actuator& act = Make();
  act.SetBrokerConnected(true);
  Tick();
  ASSERT_THAT(act.SetTargets(1, {Target("a", 768 * kMiB)}), IsEmpty());
  // Under acute pressure before the first step toward 768 MiB: the target
  // holds the balloon where it is.
  TickAcute({"a"});
  Tick();
  EXPECT_EQ(fake_.inflate_calls(), 0);
  EXPECT_EQ(fake_.target("a"), 1024 * kMiB);
  EXPECT_EQ(View("a").desired_bytes, 1024 * kMiB);
  // The broker's next target replaces the hold, but the shrink waits for
  // acute_hold (5 s) after the pressure.
  ASSERT_THAT(act.SetTargets(2, {Target("a", 768 * kMiB)}), IsEmpty());
  Tick();
  EXPECT_EQ(View("a").desired_bytes, 768 * kMiB);
  EXPECT_EQ(fake_.target("a"), 1024 * kMiB);
  clock_.Advance(absl::Seconds(4));
  Tick();
  EXPECT_EQ(fake_.inflate_calls(), 0);
  clock_.Advance(absl::Seconds(1));
  Tick();
  EXPECT_EQ(fake_.target("a"), 768 * kMiB);  // One 256 MiB step.
}

TEST_F(LocalGrantTest, NoGrantToAnUnhealthyBalloon) {
  // Room and headroom for a grant, but the balloon does not move.
  fake_.AddVm("a", 4096 * kMiB, 2048 * kMiB);
  Actuator& act = Make();
  act.SetBrokerConnected(true);
  Tick();
  fake_.SetFrozen("a", true);
  ASSERT_THAT(act.SetTargets(1, {Target("a", 1024 * kMiB)}), IsEmpty());
  for (int i = 0; i < 30 && View("a").state == BalloonState::kOk; ++i) {
    clock_.Advance(absl::Seconds(1));
    Tick();
  }
  ASSERT_NE(View("a").state, BalloonState::kOk);
  fake_.ClearCalls();
  clock_.Advance(absl::Seconds(1));
  EXPECT_EQ(TickAcute({"a"}).local_grants, 0);
}

TEST(SafetyFromProtoTest, KeepsDefaultsAndRejectsNegative) {
  SafetyParams defaults;
  membroker::v1::SafetyParams proto;
  absl::StatusOr<SafetyParams> s = SafetyFromProto(proto, defaults);
  ASSERT_TRUE(s.ok());
  EXPECT_EQ(s->max_inflate_step_bytes, defaults.max_inflate_step_bytes);
  proto.set_max_inflate_step_bytes(kMiB);
  *proto.mutable_stuck_timeout() = ToProtoDuration(absl::Seconds(3));
  s = SafetyFromProto(proto, defaults);
  ASSERT_TRUE(s.ok());
  EXPECT_EQ(s->max_inflate_step_bytes, kMiB);
  EXPECT_EQ(s->stuck_timeout, absl::Seconds(3));
  *proto.mutable_fail_static_grace() = ToProtoDuration(-absl::Seconds(1));
  s = SafetyFromProto(proto, defaults);
  EXPECT_EQ(s.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(s.status().message()), HasSubstr("fail_static_grace"));
}

}  // namespace
}  // namespace membroker::agent

// Holds the line on decision quality: for every scenario the broker's real
// policy (broker/policy) has no guest OOM kills, never sets a target below a
// floor, reacts to a surge within one report interval, and stalls guests
// less than every baseline. Comparisons of simulated figures, never timings.

#include <map>
#include <string>
#include <utility>

#include <gtest/gtest.h>

#include "common/textproto.h"
#include "sim/fleet_sim.h"
#include "sim/scenario.h"

namespace membroker::sim {
namespace {

using membroker::v1::Scenario;

Scenario Load(const std::string& name) {
  auto s = LoadScenario(std::string(MB_SCENARIOS_DIR) + "/" + name + ".textproto");
  EXPECT_TRUE(s.ok()) << s.status();
  return s.ok() ? *s : Scenario();
}

// The mixed 100-host fleet runs 10 simulated minutes here (the bench runs
// the hour); every other scenario runs its full duration.
RunOptions OptionsFor(const std::string& name) {
  RunOptions o;
  if (name == "fleet_100") o.duration = absl::Minutes(10);
  return o;
}

QualityFigures RunPolicy(const Scenario& s, PolicyKind kind, const RunOptions& o) {
  auto f = RunScenario(s, kind, o);
  EXPECT_TRUE(f.ok()) << PolicyName(kind) << ": " << f.status();
  return f.ok() ? *f : QualityFigures();
}

// Runs are deterministic, so the suite runs each (scenario, policy) once
// with the default options and shares the figures between tests.
QualityFigures Cached(const std::string& name, PolicyKind kind) {
  static auto* cache = new std::map<std::pair<std::string, PolicyKind>, QualityFigures>();
  auto it = cache->find({name, kind});
  if (it != cache->end()) return it->second;
  const QualityFigures f = RunPolicy(Load(name), kind, OptionsFor(name));
  cache->emplace(std::make_pair(name, kind), f);
  return f;
}

class ScenarioQualityTest : public ::testing::TestWithParam<const char*> {};

TEST_P(ScenarioQualityTest, BrokerHasNoOomsAndKeepsFloors) {
  const std::string name = GetParam();
  const QualityFigures broker = Cached(name, PolicyKind::kBroker);
  EXPECT_EQ(broker.oom_kills, 0u);
  EXPECT_EQ(broker.floor_violations, 0u);
  EXPECT_GT(broker.vm_hours, 0.0);
}

TEST_P(ScenarioQualityTest, BrokerRespondsWithinOneReportInterval) {
  const std::string name = GetParam();
  const QualityFigures broker = Cached(name, PolicyKind::kBroker);
  // The report interval of every scenario is 1 s.
  EXPECT_LE(broker.response_seconds_max, 1.0) << broker.surges << " surges";
}

TEST_P(ScenarioQualityTest, BrokerStallsLessThanEveryBaseline) {
  const std::string name = GetParam();
  const QualityFigures broker = Cached(name, PolicyKind::kBroker);
  for (PolicyKind kind : {PolicyKind::kNoBallooning, PolicyKind::kProxmox, PolicyKind::kMom,
                          PolicyKind::kSqueezed}) {
    const QualityFigures base = Cached(name, kind);
    // Where a baseline stalls at all the broker must stall strictly less;
    // where the stall is forced on everyone (floors above capacity) it may
    // tie, never exceed.
    EXPECT_LE(broker.stall_gib_seconds, base.stall_gib_seconds * (1 + 1e-9) + 1e-9)
        << PolicyName(kind);
    if (base.stall_gib_seconds > 1.0 && name != "overcommitted") {
      EXPECT_LT(broker.stall_gib_seconds, base.stall_gib_seconds) << PolicyName(kind);
    }
  }
}

// The goals the broker reaches (see the bench for the full table): at least
// 80 % of what the oracle reclaims; where the oracle itself stalls (the host
// is short even with perfect foresight), within 1.2x of its stall.
TEST_P(ScenarioQualityTest, BrokerIsCloseToTheOracle) {
  const std::string name = GetParam();
  const QualityFigures broker = Cached(name, PolicyKind::kBroker);
  const QualityFigures oracle = Cached(name, PolicyKind::kOracle);
  EXPECT_GE(broker.reclaimed_gib, 0.8 * oracle.reclaimed_gib);
  if (oracle.stall_gib_seconds > 1.0) {
    EXPECT_LE(broker.stall_gib_seconds, 1.2 * oracle.stall_gib_seconds);
  }
}

INSTANTIATE_TEST_SUITE_P(Scenarios, ScenarioQualityTest,
                         ::testing::Values("idle_fleet", "noisy_neighbour", "boot_storm",
                                           "diurnal_mix", "slow_leak", "overcommitted",
                                           "heterogeneous", "no_driver", "fleet_100"));

// Stall at most a quarter of the best baseline's. Not for "overcommitted"
// (the floors alone exceed the host: every policy that keeps floors stalls
// the same), "heterogeneous" (a quarter of the best baseline is below even
// the oracle's stall there) and "fleet_100" (a tenth of its hosts are
// overcommitted ones, and their forced stall is most of the broker's).
class QuarterOfBestBaselineTest : public ::testing::TestWithParam<const char*> {};

TEST_P(QuarterOfBestBaselineTest, BrokerStallIsAQuarterOfTheBestBaseline) {
  const std::string name = GetParam();
  const QualityFigures broker = Cached(name, PolicyKind::kBroker);
  double best = -1;
  for (PolicyKind kind : {PolicyKind::kProxmox, PolicyKind::kMom, PolicyKind::kSqueezed}) {
    const double stall = Cached(name, kind).stall_gib_seconds;
    if (best < 0 || stall < best) best = stall;
  }
  EXPECT_LE(broker.stall_gib_seconds, best / 4 + 1e-9) << "best baseline " << best;
}

INSTANTIATE_TEST_SUITE_P(Scenarios, QuarterOfBestBaselineTest,
                         ::testing::Values("idle_fleet", "noisy_neighbour", "boot_storm",
                                           "diurnal_mix", "slow_leak", "no_driver"));


bool SameFigures(const QualityFigures& a, const QualityFigures& b) {
  return a.stall_gib_seconds == b.stall_gib_seconds && a.oom_kills == b.oom_kills &&
         a.reclaimed_gib == b.reclaimed_gib && a.surges == b.surges &&
         a.reaction_seconds_mean == b.reaction_seconds_mean &&
         a.response_seconds_mean == b.response_seconds_mean &&
         a.reversals_per_vm_hour == b.reversals_per_vm_hour &&
         a.host_overflow_gib_seconds == b.host_overflow_gib_seconds;
}

TEST(ScenarioReplayTest, SameSeedGivesIdenticalFigures) {
  const Scenario s = Load("heterogeneous");
  for (PolicyKind kind : AllPolicies()) {
    const QualityFigures a = RunPolicy(s, kind, {});
    const QualityFigures b = RunPolicy(s, kind, {});
    EXPECT_TRUE(SameFigures(a, b)) << PolicyName(kind);
  }
}

TEST(ScenarioReplayTest, AnotherSeedGivesOtherFigures) {
  Scenario s = Load("heterogeneous");
  const QualityFigures a = RunPolicy(s, PolicyKind::kBroker, {});
  s.set_seed(s.seed() + 1);
  const QualityFigures b = RunPolicy(s, PolicyKind::kBroker, {});
  EXPECT_FALSE(SameFigures(a, b));
}

TEST(ScenarioFiguresTest, NoBallooningReclaimsNothingAndNeverResponds) {
  const Scenario s = Load("noisy_neighbour");
  const QualityFigures none = RunPolicy(s, PolicyKind::kNoBallooning, {});
  EXPECT_EQ(none.reclaimed_gib, 0.0);
  EXPECT_EQ(none.reversals_per_vm_hour, 0.0);
  EXPECT_EQ(none.oom_kills, 0u);
  // Every guest eventually caches all of its memory: the host swaps.
  EXPECT_GT(none.host_overflow_gib_seconds, 0.0);
}

TEST(ScenarioFiguresTest, OracleReclaimsAtLeastAsMuchAsAnyBaseline) {
  const Scenario s = Load("idle_fleet");
  const QualityFigures oracle = RunPolicy(s, PolicyKind::kOracle, {});
  EXPECT_EQ(oracle.stall_gib_seconds, 0.0);
  for (PolicyKind kind : {PolicyKind::kProxmox, PolicyKind::kMom, PolicyKind::kSqueezed,
                          PolicyKind::kBroker}) {
    EXPECT_GE(oracle.reclaimed_gib, RunPolicy(s, kind, {}).reclaimed_gib) << PolicyName(kind);
  }
}

TEST(ScenarioFiguresTest, PolicyMaxAndPinnedHoldForEveryPolicy) {
  // "capped" may have at most 2 GiB; "pinned" keeps its 4 GiB. The host is
  // short (16 GiB for 20 GiB of VMs), so every balloon policy wants to take.
  Scenario s;
  ASSERT_TRUE(ParseTextProto(R"(
    name: "caps" duration { seconds: 120 } seed: 1
    hosts { name: "h" capacity_bytes: 17179869184
      vms { vm { name: "capped" max_bytes: 4294967296 page_cache_bytes: 4294967296
                 swap_bytes: 2147483648 workload { constant { working_set_bytes: 536870912 } } }
            policy { max_bytes: 2147483648 } }
      vms { vm { name: "pinned" max_bytes: 4294967296 page_cache_bytes: 4294967296
                 swap_bytes: 2147483648 workload { constant { working_set_bytes: 536870912 } } }
            policy { pinned: true } }
      vms { vm { name: "big" max_bytes: 12884901888 page_cache_bytes: 12884901888
                 swap_bytes: 2147483648 workload { constant { working_set_bytes: 8589934592 } } } }
    })",
                             "caps", &s)
                  .ok());
  for (PolicyKind kind : AllPolicies()) {
    if (kind == PolicyKind::kNoBallooning) continue;
    uint64_t capped_end = 0, pinned_min = UINT64_MAX;
    RunOptions o;
    o.observer = [&](double, const SimVmState& vm) {
      if (vm.name == "capped") capped_end = vm.target_bytes;
      if (vm.name == "pinned") pinned_min = std::min(pinned_min, vm.target_bytes);
    };
    auto f = RunScenario(s, kind, o);
    ASSERT_TRUE(f.ok()) << f.status();
    EXPECT_LE(capped_end, uint64_t{2} << 30) << PolicyName(kind);
    EXPECT_EQ(pinned_min, uint64_t{4} << 30) << PolicyName(kind);
    EXPECT_EQ(f->floor_violations, 0u) << PolicyName(kind);
  }
}

TEST(ScenarioFiguresTest, InvalidScenarioIsRefused) {
  Scenario s;
  EXPECT_EQ(RunScenario(s, PolicyKind::kBroker).status().code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace membroker::sim

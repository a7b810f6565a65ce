// Holds the line on decision quality: for every scenario the broker's real
// policy (broker/policy) has no guest OOM kills, never sets a target below a
// floor, reacts to a surge within one report interval, and stalls guests
// less than every baseline. Comparisons of simulated figures, never timings.
//
// Every scenario also runs in its swapless variants (sim/scenario.h
// SwaplessVariant): the OOM kills of every policy are printed (and recorded
// as test properties); what is asserted there is what holds today: the
// oracle keeps every guest alive where the peak working sets fit, a guest
// at its full size is never killed, floors hold, and deflate-on-oom guests
// are never killed.

#include <gtest/gtest.h>

#include <cstdio>
#include <map>
#include <string>
#include <tuple>
#include <utility>

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

// The variants every scenario runs in.
enum class Variant { kNormal, kSwapless, kSwaplessDeflate };

Scenario LoadVariant(const std::string& name, Variant variant) {
  const Scenario s = Load(name);
  if (variant == Variant::kNormal) return s;
  auto v = SwaplessVariant(s, variant == Variant::kSwaplessDeflate);
  EXPECT_TRUE(v.ok()) << v.status();
  return v.ok() ? *v : Scenario();
}

// Runs are deterministic, so the suite runs each (scenario, variant,
// policy) once with the default options and shares the figures.
QualityFigures Cached(const std::string& name, PolicyKind kind,
                      Variant variant = Variant::kNormal) {
  using Key = std::tuple<std::string, Variant, PolicyKind>;
  static auto* cache = new std::map<Key, QualityFigures>();
  auto it = cache->find({name, variant, kind});
  if (it != cache->end()) return it->second;
  const QualityFigures f = RunPolicy(LoadVariant(name, variant), kind, OptionsFor(name));
  cache->emplace(Key{name, variant, kind}, f);
  return f;
}

// The baselines operators run today (not the oracle, not "none").
constexpr PolicyKind kBaselines[] = {PolicyKind::kProxmox, PolicyKind::kMom, PolicyKind::kSqueezed};

// What the response check can say about one run.
enum class Response { kNoSurge, kWithin, kLate };

// The broker must respond to a surge (a deficit episode) within `limit`
// seconds. A run with no surge has nothing to respond to: kNoSurge, never
// a pass.
Response CheckResponse(const QualityFigures& f, double limit) {
  if (f.surges == 0) return Response::kNoSurge;
  return f.response_seconds_max <= limit ? Response::kWithin : Response::kLate;
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
  switch (CheckResponse(broker, 1.0)) {
    case Response::kNoSurge: {
      uint64_t baseline_surges = 0;
      for (PolicyKind kind : kBaselines) baseline_surges += Cached(name, kind).surges;
      GTEST_SKIP() << name << ": the broker left no guest short by more than 64 MiB (0 surges; "
                   << baseline_surges << " under the baselines), so there is no response to time";
    }
    case Response::kWithin:
      SUCCEED();
      break;
    case Response::kLate:
      ADD_FAILURE() << name << ": " << broker.surges << " surges, longest response "
                    << broker.response_seconds_max << " s (" << broker.response_max_vm << ")";
      break;
  }
}

// The response check fails when it must: a policy that responds late (the
// Proxmox baseline decides every 10 s and moves 100 MiB a round) is caught,
// a run without surges is not taken for a pass, and a prompt response
// passes.
TEST(ScenarioResponseCheckTest, CatchesALateResponseAndNeverPassesWithoutSurges) {
  const QualityFigures proxmox = Cached("noisy_neighbour", PolicyKind::kProxmox);
  EXPECT_GT(proxmox.surges, 0u);
  EXPECT_EQ(CheckResponse(proxmox, 1.0), Response::kLate) << proxmox.response_seconds_max;
  const QualityFigures none = Cached("noisy_neighbour", PolicyKind::kNoBallooning);
  EXPECT_EQ(CheckResponse(none, 1.0), Response::kNoSurge);
  const QualityFigures broker = Cached("noisy_neighbour", PolicyKind::kBroker);
  ASSERT_GT(broker.surges, 0u) << "noisy_neighbour no longer exercises the response check";
  EXPECT_EQ(CheckResponse(broker, broker.response_seconds_max), Response::kWithin);
  // A limit just under the broker's own longest response fails it.
  EXPECT_EQ(CheckResponse(broker, broker.response_seconds_max - 0.25), Response::kLate);
}

TEST_P(ScenarioQualityTest, BrokerStallsLessThanEveryBaseline) {
  const std::string name = GetParam();
  const QualityFigures broker = Cached(name, PolicyKind::kBroker);
  for (PolicyKind kind :
       {PolicyKind::kNoBallooning, PolicyKind::kProxmox, PolicyKind::kMom, PolicyKind::kSqueezed}) {
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

// The goals the broker reaches (see the bench for the full table). Where
// the oracle itself stalls (the host is short even with perfect foresight),
// the broker at its shipped defaults stays within 1.2x of its stall. Its
// reclaim is measured with surplus_percent 0, the setting that keeps what
// no VM needs free on the host: at least 80 % of what the oracle reclaims.
// (At the shipped surplus_percent 100 that memory stays in the guests as
// page cache by design, headroom that keeps swapless guests alive on a
// surge; the bench prints both.)
TEST_P(ScenarioQualityTest, BrokerIsCloseToTheOracle) {
  const std::string name = GetParam();
  const QualityFigures broker = Cached(name, PolicyKind::kBroker);
  const QualityFigures oracle = Cached(name, PolicyKind::kOracle);
  if (oracle.stall_gib_seconds > 1.0) {
    EXPECT_LE(broker.stall_gib_seconds, 1.2 * oracle.stall_gib_seconds);
  }
  RunOptions reclaim = OptionsFor(name);
  reclaim.broker_policy.set_surplus_percent(0);
  const QualityFigures reclaiming = RunPolicy(Load(name), PolicyKind::kBroker, reclaim);
  EXPECT_GE(reclaiming.reclaimed_gib, 0.8 * oracle.reclaimed_gib);
  // The setting does what it says: keeping the surplus on the host reclaims
  // no less than handing it back (the same where floors hold every VM).
  EXPECT_GE(reclaiming.reclaimed_gib, broker.reclaimed_gib);
  std::printf("%s: reclaimed %.2f GiB at the defaults, %.2f with surplus_percent 0, oracle %.2f\n",
              name.c_str(), broker.reclaimed_gib, reclaiming.reclaimed_gib, oracle.reclaimed_gib);
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

// Swapless variants: the figures are printed for every policy. Where the
// peak working sets fit, the oracle keeps every guest alive and the broker
// kills no more guests than the best baseline (it learns from a kill: see
// broker/policy/demand.h; an instant jump larger than a guest's headroom
// still kills it once or twice).
class SwaplessVariantTest : public ::testing::TestWithParam<const char*> {};

TEST_P(SwaplessVariantTest, CountsOomKillsAndTheOracleKeepsGuestsAliveWhereTheyFit) {
  const std::string name = GetParam();
  const Scenario swapless = LoadVariant(name, Variant::kSwapless);
  ASSERT_EQ(swapless.name(), name + "-swapless");
  for (const auto& h : swapless.hosts()) {
    for (const auto& vm : h.vms()) ASSERT_EQ(vm.vm().swap_bytes(), 0u) << vm.vm().name();
  }
  const bool fits = PeakWorkingSetsFit(swapless);
  const QualityFigures broker = Cached(name, PolicyKind::kBroker, Variant::kSwapless);
  const QualityFigures oracle = Cached(name, PolicyKind::kOracle, Variant::kSwapless);
  const QualityFigures none = Cached(name, PolicyKind::kNoBallooning, Variant::kSwapless);
  uint64_t best = UINT64_MAX;
  const char* best_name = "";
  for (PolicyKind kind : kBaselines) {
    const QualityFigures f = Cached(name, kind, Variant::kSwapless);
    if (f.oom_kills < best) {
      best = f.oom_kills;
      best_name = PolicyName(kind);
    }
    EXPECT_GT(f.vm_hours, 0.0) << PolicyName(kind);
  }
  std::printf(
      "[ swapless ] %-16s fits=%-3s OOM kills: broker %llu, best baseline %llu (%s), "
      "oracle %llu, none %llu\n",
      name.c_str(), fits ? "yes" : "no", static_cast<unsigned long long>(broker.oom_kills),
      static_cast<unsigned long long>(best), best_name,
      static_cast<unsigned long long>(oracle.oom_kills),
      static_cast<unsigned long long>(none.oom_kills));
  RecordProperty("broker_oom_kills", static_cast<int>(broker.oom_kills));
  RecordProperty("best_baseline_oom_kills", static_cast<int>(best));
  RecordProperty("oracle_oom_kills", static_cast<int>(oracle.oom_kills));
  // A guest left at its full size has room for its peak: never killed.
  EXPECT_EQ(none.oom_kills, 0u);
  // With foresight every guest lives where the peaks fit the host.
  if (fits) {
    EXPECT_EQ(oracle.oom_kills, 0u);
    EXPECT_LE(broker.oom_kills, best) << "best baseline: " << best_name;
  }
  // Floors hold without swap too.
  EXPECT_EQ(broker.floor_violations, 0u);
  EXPECT_GT(broker.vm_hours, 0.0);
}

TEST_P(SwaplessVariantTest, DeflateOnOomGuestsAreNeverKilled) {
  const std::string name = GetParam();
  const Scenario deflate = LoadVariant(name, Variant::kSwaplessDeflate);
  ASSERT_EQ(deflate.name(), name + "-swapless-deflate");
  ASSERT_TRUE(deflate.deflate_on_oom());
  for (PolicyKind kind : AllPolicies()) {
    const QualityFigures swapless = Cached(name, kind, Variant::kSwapless);
    const QualityFigures f = Cached(name, kind, Variant::kSwaplessDeflate);
    std::printf(
        "[ deflate  ] %-16s %-9s OOM kills %llu (swapless %llu), deflations %llu "
        "(%.1f GiB), host overflow %.1f GiB*s\n",
        name.c_str(), PolicyName(kind), static_cast<unsigned long long>(f.oom_kills),
        static_cast<unsigned long long>(swapless.oom_kills),
        static_cast<unsigned long long>(f.oom_deflations), f.oom_deflated_gib,
        f.host_overflow_gib_seconds);
    // The guest takes back what it needs (its peak is below its max).
    EXPECT_EQ(f.oom_kills, 0u) << PolicyName(kind);
    // Where the guest without the option died, this one took memory back.
    if (swapless.oom_kills > 0) {
      EXPECT_GT(f.oom_deflations, 0u) << PolicyName(kind);
    }
    if (f.oom_deflations == 0) {
      EXPECT_EQ(f.oom_deflated_gib, 0.0) << PolicyName(kind);
    }
  }
  // Where even the oracle had to let swapless guests die, the host was
  // short: the memory deflating guests take back lands above its capacity.
  if (Cached(name, PolicyKind::kOracle, Variant::kSwapless).oom_kills > 0) {
    EXPECT_GT(
        Cached(name, PolicyKind::kOracle, Variant::kSwaplessDeflate).host_overflow_gib_seconds,
        0.0);
  }
}

// swapless_surge and small_and_large are swapless as written and run only
// here: a real user's host (an idle guest, a guest whose load climbs
// 400 MiB in 3 s, a guest without a balloon driver, on an operator's
// budget), and cloud guests from 512 MiB to 24 GiB on one host (where the
// default floor must serve small and large VMs alike).
INSTANTIATE_TEST_SUITE_P(Scenarios, SwaplessVariantTest,
                         ::testing::Values("idle_fleet", "noisy_neighbour", "boot_storm",
                                           "diurnal_mix", "slow_leak", "overcommitted",
                                           "heterogeneous", "no_driver", "fleet_100",
                                           "swapless_surge", "small_and_large"));

TEST(SwaplessVariantTest, InvalidScenarioIsRefused) {
  EXPECT_EQ(SwaplessVariant(Scenario(), false).status().code(), absl::StatusCode::kInvalidArgument);
}

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
  for (PolicyKind kind :
       {PolicyKind::kProxmox, PolicyKind::kMom, PolicyKind::kSqueezed, PolicyKind::kBroker}) {
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

// Guests that send no statistics (no_stats: two of six) are sized from the
// host-side working set: no stall and no OOM kill (swapless too), and with
// surplus_percent 0 (what no VM needs stays free on the host) the host gets
// back more than when the same two guests cannot be reclaimed at all (the
// same scenario with them driverless: what a guest without statistics was
// before, kept at its size).
TEST(ScenarioFiguresTest, GuestsWithoutStatisticsAreSizedFromTheHost) {
  const Scenario statless = Load("no_stats");
  Scenario kept = statless;
  int changed = 0;
  for (auto& host : *kept.mutable_hosts()) {
    for (auto& vm : *host.mutable_vms()) {
      if (!vm.vm().no_guest_stats()) continue;
      vm.mutable_vm()->set_no_guest_stats(false);
      vm.mutable_vm()->set_no_balloon_driver(true);
      ++changed;
    }
  }
  ASSERT_EQ(changed, 2);
  RunOptions reclaim;
  reclaim.broker_policy.set_surplus_percent(0);
  const QualityFigures sized = RunPolicy(statless, PolicyKind::kBroker, reclaim);
  const QualityFigures at_size = RunPolicy(kept, PolicyKind::kBroker, reclaim);
  const QualityFigures swapless =
      RunPolicy(LoadVariant("no_stats", Variant::kSwapless), PolicyKind::kBroker, reclaim);
  std::printf(
      "no_stats, surplus 0: broker reclaimed %.2f GiB (stall %.1f GiB*s), %.2f GiB with "
      "those "
      "guests kept at their size; swapless OOM kills %llu\n",
      sized.reclaimed_gib, sized.stall_gib_seconds, at_size.reclaimed_gib,
      static_cast<unsigned long long>(swapless.oom_kills));
  EXPECT_EQ(sized.oom_kills, 0u);
  EXPECT_EQ(swapless.oom_kills, 0u);
  EXPECT_LE(sized.stall_gib_seconds, 1.0);
  EXPECT_EQ(sized.floor_violations, 0u);
  EXPECT_GT(sized.reclaimed_gib, at_size.reclaimed_gib + 1.0);
}

TEST(ScenarioFiguresTest, InvalidScenarioIsRefused) {
  Scenario s;
  EXPECT_EQ(RunScenario(s, PolicyKind::kBroker).status().code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace membroker::sim

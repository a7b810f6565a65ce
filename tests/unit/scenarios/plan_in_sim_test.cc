// The rebalance plan applied in the fleet simulator: the broker's plan for
// an overcommitted host beside an idle one moves VMs' models to the idle
// host, and the fleet run again has no host short.

#include <gtest/gtest.h>

#include "sim/fleet_sim.h"
#include "sim/scenario.h"

namespace membroker::sim {
namespace {

using membroker::v1::Scenario;

std::string PathOf(const std::string& name) {
  return std::string(MB_SCENARIOS_DIR) + "/" + name + ".textproto";
}

// One overcommitted host (six 4 GiB guests with 3 GiB minimums on 16 GiB:
// 18 GiB of floors) and one idle 24 GiB host.
Scenario OverAndIdle() {
  auto over = LoadScenario(PathOf("overcommitted"));
  auto idle = LoadScenario(PathOf("idle_fleet"));
  EXPECT_TRUE(over.ok() && idle.ok());
  Scenario s = *over;
  s.set_name("over_and_idle");
  for (const auto& h : idle->hosts()) *s.add_hosts() = h;
  return s;
}

std::vector<policy::PlanHost> RunBroker(const Scenario& s) {
  std::vector<policy::PlanHost> hosts;
  RunOptions o;
  o.duration = absl::Seconds(60);
  o.broker_plan_hosts = &hosts;
  auto fig = RunScenario(s, PolicyKind::kBroker, o);
  EXPECT_TRUE(fig.ok()) << fig.status();
  return hosts;
}

TEST(PlanInSimTest, MovesLeaveNoHostShort) {
  const Scenario s = OverAndIdle();
  const std::vector<policy::PlanHost> before = RunBroker(s);
  ASSERT_EQ(before.size(), 2u);
  EXPECT_EQ(before[0].host_id, "over");
  EXPECT_GT(policy::ShortBytes(before[0]), 0u);
  EXPECT_EQ(policy::ShortBytes(before[1]), 0u);

  const policy::RebalancePlan plan = policy::PlanMoves(before);
  EXPECT_EQ(plan.hosts_short_before, 1u);
  EXPECT_EQ(plan.hosts_short_after, 0u);
  ASSERT_FALSE(plan.moves.empty());
  for (const policy::Move& m : plan.moves) {
    EXPECT_EQ(m.from_host_id, "over");
    EXPECT_EQ(m.to_host_id, "idle");
  }

  auto moved = ApplyMoves(s, plan.moves);
  ASSERT_TRUE(moved.ok()) << moved.status();
  EXPECT_EQ(moved->hosts(0).vms_size(),
            s.hosts(0).vms_size() - static_cast<int>(plan.moves.size()));
  EXPECT_EQ(moved->hosts(1).vms_size(),
            s.hosts(1).vms_size() + static_cast<int>(plan.moves.size()));
  const std::vector<policy::PlanHost> after = RunBroker(*moved);
  ASSERT_EQ(after.size(), 2u);
  for (const policy::PlanHost& h : after) {
    EXPECT_EQ(policy::ShortBytes(h), 0u) << h.host_id;
  }
  EXPECT_TRUE(policy::PlanMoves(after).moves.empty());
}

TEST(PlanInSimTest, ApplyMovesRefusesUnknownHostsAndVms) {
  const Scenario s = OverAndIdle();
  policy::Move m;
  m.vm_id = DeriveVmId("floor-0");
  m.from_host_id = "over";
  m.to_host_id = "nowhere";
  auto r = ApplyMoves(s, {m});
  EXPECT_EQ(r.status().code(), absl::StatusCode::kNotFound);
  EXPECT_NE(r.status().message().find("nowhere"), std::string::npos);
  m.to_host_id = "idle";
  m.from_host_id = "idle";  // floor-0 is not there
  r = ApplyMoves(s, {m});
  EXPECT_EQ(r.status().code(), absl::StatusCode::kNotFound);
  m.from_host_id = "over";
  r = ApplyMoves(s, {m});
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->hosts(1).vms(r->hosts(1).vms_size() - 1).vm().name(), "floor-0");
}

TEST(PlanInSimTest, FleetOfAThousandLoads) {
  auto s = LoadScenario(PathOf("fleet_1000"));
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_EQ(s->hosts_size(), 1000);
}

}  // namespace
}  // namespace membroker::sim

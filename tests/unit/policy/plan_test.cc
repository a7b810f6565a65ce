#include "broker/policy/plan.h"

#include <gtest/gtest.h>

#include <map>
#include <random>
#include <set>

namespace membroker::policy {
namespace {

constexpr uint64_t kGiB = uint64_t{1} << 30;

PlanVm Vm(const char* id, uint64_t need, uint64_t floor, uint32_t weight = 100) {
  PlanVm v;
  v.vm_id = id;
  v.need_bytes = need;
  v.floor_bytes = floor;
  v.target_bytes = need;
  v.weight = weight;
  return v;
}

PlanHost Host(const char* id, uint64_t usable, std::vector<PlanVm> vms) {
  PlanHost h;
  h.host_id = id;
  h.connected = true;
  h.usable_bytes = usable;
  h.vms = std::move(vms);
  return h;
}

// Applies the moves and returns each host's sum(need) by id.
std::map<std::string, uint64_t> NeedsAfter(const std::vector<PlanHost>& hosts,
                                           const RebalancePlan& plan) {
  std::map<std::string, uint64_t> need;
  for (const PlanHost& h : hosts) need[h.host_id] = h.NeedBytes();
  for (const Move& m : plan.moves) {
    need[m.from_host_id] -= m.bytes;
    need[m.to_host_id] += m.bytes;
  }
  return need;
}

TEST(PlanTest, EmptyFleetHasNoPlanAndNoPlacement) {
  RebalancePlan plan = PlanMoves({});
  EXPECT_TRUE(plan.moves.empty());
  EXPECT_EQ(plan.hosts_short_before, 0u);
  EXPECT_EQ(plan.hosts_short_after, 0u);
  PlacementResult place = PlaceVms({}, kGiB, 3);
  EXPECT_TRUE(place.options.empty());
  EXPECT_TRUE(place.assignments.empty());
}

TEST(PlanTest, OneShortHostAloneCannotBeRestored) {
  // a: usable 8, needs 6 + 4 = 10: short by 2, nowhere to go.
  std::vector<PlanHost> hosts = {
      Host("a", 8 * kGiB, {Vm("x", 6 * kGiB, kGiB), Vm("y", 4 * kGiB, kGiB)})};
  RebalancePlan plan = PlanMoves(hosts);
  EXPECT_TRUE(plan.moves.empty());
  EXPECT_EQ(plan.hosts_short_before, 1u);
  EXPECT_EQ(plan.hosts_short_after, 1u);
  ASSERT_EQ(plan.unresolved.size(), 1u);
  EXPECT_EQ(plan.unresolved[0].short_bytes, 2 * kGiB);
}

TEST(PlanTest, OneHealthyHostNeedsNoMoves) {
  std::vector<PlanHost> hosts = {Host("a", 8 * kGiB, {Vm("x", 3 * kGiB, kGiB)})};
  RebalancePlan plan = PlanMoves(hosts);
  EXPECT_TRUE(plan.moves.empty());
  EXPECT_EQ(plan.hosts_short_before, 0u);
}

TEST(PlanTest, SmallestCoveringVmOfLowWeightMoves) {
  // a: usable 9, needs 4 + 3 + 2 + 1.5 = 10.5: short by 1.5.
  // Covering VMs (need >= 1.5): big 4 (w100, cost 400), mid 3 (w100, 300),
  // small 2 (w100, 200), tiny 1.5 (w50, cost 75). tiny moves: one move.
  // b: usable 8, needs 2: room 6.
  std::vector<PlanHost> hosts = {
      Host("a", 9 * kGiB,
           {Vm("big", 4 * kGiB, kGiB), Vm("mid", 3 * kGiB, kGiB), Vm("small", 2 * kGiB, kGiB),
            Vm("tiny", 3 * kGiB / 2, kGiB / 2, 50)}),
      Host("b", 8 * kGiB, {Vm("z", 2 * kGiB, kGiB)})};
  RebalancePlan plan = PlanMoves(hosts);
  ASSERT_EQ(plan.moves.size(), 1u);
  EXPECT_EQ(plan.moves[0].vm_id, "tiny");
  EXPECT_EQ(plan.moves[0].from_host_id, "a");
  EXPECT_EQ(plan.moves[0].to_host_id, "b");
  EXPECT_EQ(plan.moves[0].bytes, 3 * kGiB / 2);
  EXPECT_EQ(plan.hosts_short_after, 0u);
  EXPECT_EQ(plan.moved_bytes, 3 * kGiB / 2);
}

TEST(PlanTest, LowWeightPreferredOverSmallWhenCostIsLower) {
  // a short by 1: "hi" 1 GiB weight 400 (cost 400) vs "lo" 2 GiB weight
  // 100 (cost 200): "lo" moves.
  std::vector<PlanHost> hosts = {Host("a", 4 * kGiB,
                                      {Vm("hi", kGiB, kGiB / 2, 400), Vm("lo", 2 * kGiB, kGiB, 100),
                                       Vm("pad", 2 * kGiB, 2 * kGiB)}),
                                 Host("b", 8 * kGiB, {})};
  hosts[0].vms[2].pinned = true;
  RebalancePlan plan = PlanMoves(hosts);
  ASSERT_EQ(plan.moves.size(), 1u);
  EXPECT_EQ(plan.moves[0].vm_id, "lo");
}

TEST(PlanTest, NeverOntoAHostItWouldMakeShort) {
  // a short by 3 (usable 5, need 8): its only movable VM "m" needs 3.
  // b: room 2 (usable 6, need 4); c: room 2.5: neither can take 3.
  std::vector<PlanHost> hosts = {
      Host("a", 5 * kGiB, {Vm("m", 3 * kGiB, kGiB), Vm("p", 5 * kGiB, 5 * kGiB)}),
      Host("b", 6 * kGiB, {Vm("q", 4 * kGiB, kGiB)}),
      Host("c", 5 * kGiB, {Vm("r", 5 * kGiB / 2, kGiB)})};
  hosts[0].vms[1].pinned = true;
  RebalancePlan plan = PlanMoves(hosts);
  EXPECT_TRUE(plan.moves.empty());
  EXPECT_EQ(plan.hosts_short_after, 1u);
  // With 1 GiB more on c, c (room 3.5) takes it.
  hosts[2].usable_bytes += kGiB;
  plan = PlanMoves(hosts);
  ASSERT_EQ(plan.moves.size(), 1u);
  EXPECT_EQ(plan.moves[0].to_host_id, "c");
  EXPECT_EQ(plan.hosts_short_after, 0u);
}

TEST(PlanTest, PinnedVmsStayAndShortHostsAreNoDestination) {
  // a short by 1: its one VM that could cover is pinned. b is short too
  // (by 1) and has room for nothing; c has room 1.5: b's "v" (1 GiB) goes
  // to c; a stays short.
  std::vector<PlanHost> hosts = {
      Host("a", 2 * kGiB, {Vm("pin", 3 * kGiB, 3 * kGiB)}),
      Host("b", 2 * kGiB, {Vm("v", kGiB, kGiB / 2), Vm("w", 2 * kGiB, 2 * kGiB)}),
      Host("c", 3 * kGiB, {Vm("u", 3 * kGiB / 2, kGiB)})};
  hosts[0].vms[0].pinned = true;
  RebalancePlan plan = PlanMoves(hosts);
  ASSERT_EQ(plan.moves.size(), 1u);
  EXPECT_EQ(plan.moves[0].vm_id, "v");
  EXPECT_EQ(plan.moves[0].to_host_id, "c");
  EXPECT_EQ(plan.hosts_short_before, 2u);
  EXPECT_EQ(plan.hosts_short_after, 1u);
  ASSERT_EQ(plan.unresolved.size(), 1u);
  EXPECT_EQ(plan.unresolved[0].host_id, "a");
}

TEST(PlanTest, SeveralMovesTakeLowWeightLargestFirst) {
  // a short by 5 (usable 4, need 9): no single VM covers 5 (each <= 3).
  // Lowest weight first: "l1" (w10, 3) then "l2" (w10, 2): 5 relieved.
  std::vector<PlanHost> hosts = {Host("a", 4 * kGiB,
                                      {Vm("h", 3 * kGiB, kGiB, 200), Vm("l1", 3 * kGiB, kGiB, 10),
                                       Vm("l2", 2 * kGiB, kGiB, 10), Vm("m", kGiB, kGiB, 100)}),
                                 Host("b", 16 * kGiB, {})};
  RebalancePlan plan = PlanMoves(hosts);
  ASSERT_EQ(plan.moves.size(), 2u);
  EXPECT_EQ(plan.moves[0].vm_id, "l1");
  EXPECT_EQ(plan.moves[1].vm_id, "l2");
  EXPECT_EQ(plan.hosts_short_after, 0u);
}

TEST(PlanTest, DisconnectedHostsTakeNothing) {
  // a: usable 2, floors 2: no room even after reclaim; b is gone.
  std::vector<PlanHost> hosts = {Host("a", 2 * kGiB, {Vm("v", 3 * kGiB, 2 * kGiB)}),
                                 Host("b", 16 * kGiB, {})};
  hosts[1].connected = false;
  EXPECT_TRUE(PlanMoves(hosts).moves.empty());
  EXPECT_TRUE(PlaceVms(hosts, kGiB, 1).options.empty());
}

TEST(PlanTest, RandomFleetsNeverMakeADestinationShort) {
  std::mt19937_64 rng(7);
  for (int round = 0; round < 200; ++round) {
    std::vector<PlanHost> hosts;
    const int n = 1 + static_cast<int>(rng() % 12);
    for (int h = 0; h < n; ++h) {
      PlanHost host = Host("", (4 + rng() % 28) * kGiB / 2, {});
      host.host_id = "h" + std::to_string(h);
      const int vms = static_cast<int>(rng() % 8);
      for (int v = 0; v < vms; ++v) {
        PlanVm vm = Vm("", (1 + rng() % 16) * kGiB / 4, 0, 1 + static_cast<uint32_t>(rng() % 400));
        vm.floor_bytes = vm.need_bytes / 2;
        vm.vm_id = host.host_id + "-v" + std::to_string(v);
        vm.pinned = rng() % 10 == 0;
        host.vms.push_back(vm);
      }
      hosts.push_back(host);
    }
    RebalancePlan plan = PlanMoves(hosts);
    std::map<std::string, uint64_t> need = NeedsAfter(hosts, plan);
    std::set<std::string> moved;
    uint32_t short_after = 0;
    for (const PlanHost& h : hosts) {
      const bool was_short = ShortBytes(h) > 0;
      if (need[h.host_id] > h.usable_bytes) ++short_after;
      // A host that was not short stays within its usable memory.
      if (!was_short) {
        EXPECT_LE(need[h.host_id], h.usable_bytes) << "round " << round;
      }
    }
    for (const Move& m : plan.moves) {
      EXPECT_TRUE(moved.insert(m.vm_id).second) << "a VM moved twice";
      EXPECT_NE(m.from_host_id, m.to_host_id);
    }
    EXPECT_EQ(plan.hosts_short_after, short_after) << "round " << round;
  }
}

TEST(PlacementTest, BestFirstWithReclaim) {
  // Placing 2 GiB.
  // a: usable 8, targets 7 (free 1), needs 5, floors 3: reclaim 1, headroom 1.
  // b: usable 8, targets 4 (free 4), needs 4: reclaim 0, headroom 2.
  // c: usable 8, targets 8 (free 0), needs 7.5, floors 5: reclaim 2,
  //    headroom -1.5 (below need, above floors).
  // d: usable 8, floors 7: cannot take 2 even after reclaim.
  std::vector<PlanHost> hosts = {Host("a", 8 * kGiB, {Vm("a1", 5 * kGiB, 3 * kGiB)}),
                                 Host("b", 8 * kGiB, {Vm("b1", 4 * kGiB, 2 * kGiB)}),
                                 Host("c", 8 * kGiB, {Vm("c1", 15 * kGiB / 2, 5 * kGiB)}),
                                 Host("d", 8 * kGiB, {Vm("d1", 7 * kGiB, 7 * kGiB)})};
  hosts[0].vms[0].target_bytes = 7 * kGiB;
  hosts[2].vms[0].target_bytes = 8 * kGiB;
  PlacementResult r = PlaceVms(hosts, 2 * kGiB, 1);
  ASSERT_EQ(r.options.size(), 3u);
  EXPECT_EQ(r.options[0].host_id, "b");
  EXPECT_EQ(r.options[0].reclaim_bytes, 0u);
  EXPECT_EQ(r.options[1].host_id, "a");
  EXPECT_EQ(r.options[1].reclaim_bytes, kGiB);
  EXPECT_EQ(r.options[1].free_bytes, kGiB);
  EXPECT_EQ(r.options[2].host_id, "c");
  EXPECT_FALSE(r.options[2].within_need);
  EXPECT_EQ(r.options[2].headroom_bytes, -static_cast<int64_t>(3 * kGiB / 2));
  EXPECT_EQ(r.assignments, std::vector<std::string>{"b"});
}

TEST(PlacementTest, OperatorMinsAndPinnedHold) {
  // A pinned VM's floor is its max (8 of 10 usable); a VM at an operator min
  // of 9 on another host: neither can take 3 GiB, whatever its demand.
  std::vector<PlanHost> hosts = {Host("pinned", 10 * kGiB, {Vm("p", 8 * kGiB, 8 * kGiB)}),
                                 Host("min", 10 * kGiB, {Vm("m", 9 * kGiB, 9 * kGiB)})};
  hosts[0].vms[0].pinned = true;
  EXPECT_TRUE(PlaceVms(hosts, 3 * kGiB, 1).options.empty());
  // 2 GiB fits on "pinned" (10 - 8) after reclaim, not on "min" (10 - 9).
  PlacementResult r = PlaceVms(hosts, 2 * kGiB, 1);
  ASSERT_EQ(r.options.size(), 1u);
  EXPECT_EQ(r.options[0].host_id, "pinned");
}

TEST(PlacementTest, CountSpreadsAndStopsWhenFull) {
  // Two empty hosts of 5 and 3 GiB; 2 GiB each, 4 of them.
  // 1st: a (headroom 3 > 1). 2nd: a (1) vs b (1): tie -> a by id.
  // 3rd: a's floors 4 leave 1: no; b takes it. 4th: nowhere.
  std::vector<PlanHost> hosts = {Host("a", 5 * kGiB, {}), Host("b", 3 * kGiB, {})};
  PlacementResult r = PlaceVms(hosts, 2 * kGiB, 4);
  EXPECT_EQ(r.assignments, (std::vector<std::string>{"a", "a", "b"}));
  EXPECT_EQ(r.options.size(), 2u);
  EXPECT_TRUE(PlaceVms(hosts, 0, 4).assignments.empty());
  EXPECT_TRUE(PlaceVms(hosts, kGiB, 0).assignments.empty());
}

TEST(PlanHostFromStepTest, FloorsAndNeedsFromTheLastInputs) {
  HostStepState s;
  s.capacity_bytes = 10 * kGiB;
  s.params.host_free_margin_bytes = kGiB;
  VmStepState& a = s.vms["a"];
  a.decided = true;
  a.input.max_bytes = 4 * kGiB;
  a.input.min_bytes = 2 * kGiB;
  a.input.protect_bytes = kGiB;
  a.input.demand_bytes = 6 * kGiB;  // above max: need = max 4
  a.input.weight = 50;
  a.decision.target_bytes = 3 * kGiB;
  VmStepState& b = s.vms["b"];
  b.decided = false;
  b.actual_bytes = 2 * kGiB;
  PlanHost h = PlanHostFromStep("h", true, s);
  EXPECT_EQ(h.usable_bytes, 9 * kGiB);
  ASSERT_EQ(h.vms.size(), 2u);
  EXPECT_EQ(h.vms[0].floor_bytes, 2 * kGiB);  // operator min
  EXPECT_EQ(h.vms[0].need_bytes, 4 * kGiB);
  EXPECT_EQ(h.vms[0].weight, 50u);
  EXPECT_EQ(h.vms[1].need_bytes, 2 * kGiB);  // undecided: its size
  EXPECT_EQ(h.FloorBytes(), 4 * kGiB);
}

}  // namespace
}  // namespace membroker::policy

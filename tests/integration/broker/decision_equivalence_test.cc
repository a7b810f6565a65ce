// The same sequence of reports through the broker's Fleet (in-process, a
// manual clock, no network) and through the fleet simulator's broker
// controller gives identical targets at every step: what the simulator
// measures is the decision that ships. The sequence covers a pinned VM, a VM
// whose statistics are not trusted, a VM without a balloon driver, a VM
// seen for the first time halfway, a VM that leaves, and a guest that swaps.

#include <filesystem>
#include <map>
#include <random>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "broker/fleet.h"
#include "broker/metrics.h"
#include "broker/store.h"
#include "common/clock.h"
#include "sim/fleet_sim.h"

namespace membroker {
namespace {

constexpr uint64_t kMiB = uint64_t{1} << 20;
constexpr uint64_t kGiB = uint64_t{1} << 30;

const char* const kPinned = "00000000-0000-0000-0000-00000000000a";
const char* const kUntrusted = "00000000-0000-0000-0000-00000000000b";
const char* const kIdle = "00000000-0000-0000-0000-00000000000c";
const char* const kGrowing = "00000000-0000-0000-0000-00000000000d";
const char* const kLate = "00000000-0000-0000-0000-00000000000e";
const char* const kNoDriver = "00000000-0000-0000-0000-00000000000f";
const char* const kWeighted = "00000000-0000-0000-0000-000000000010";

// The scenario that carries the per-VM policies to the simulator's broker.
v1::Scenario PolicyScenario() {
  v1::Scenario s;
  s.set_name("equivalence");
  v1::ScenarioHost* h = s.add_hosts();
  h->set_name("host-eq");
  h->set_capacity_bytes(10 * kGiB);
  auto add = [&](const char* id, const v1::VmPolicy& p) {
    v1::ScenarioVm* vm = h->add_vms();
    vm->mutable_vm()->set_name(id);
    vm->mutable_vm()->set_vm_id(id);
    *vm->mutable_policy() = p;
  };
  v1::VmPolicy pinned;
  pinned.set_pinned(true);
  add(kPinned, pinned);
  v1::VmPolicy weighted;
  weighted.set_weight(400);
  weighted.set_min_bytes(512 * kMiB);
  add(kWeighted, weighted);
  return s;
}

// Report `step` (0-based) of the sequence: what an agent would see.
sim::HostView ViewAt(int step, uint64_t capacity) {
  sim::HostView view;
  view.now_seconds = step * 1.0;
  view.capacity_bytes = capacity;
  auto vm = [&](const char* id, uint64_t max, uint64_t actual, uint64_t used) {
    sim::VmView v;
    v.vm_id = id;
    v.max_bytes = max;
    v.configured_max_bytes = max;
    v.actual_bytes = actual;
    v.target_bytes = actual;
    v.total_bytes = actual - 16 * kMiB;  // the guest kernel's reserve
    v.available_bytes = used < v.total_bytes ? v.total_bytes - used : 0;
    v.free_bytes = v.available_bytes / 2;
    return v;
  };
  // Actual sizes move a little each step, as balloons do.
  const uint64_t drift = static_cast<uint64_t>(step % 4) * 32 * kMiB;
  view.vms.push_back(vm(kPinned, 2 * kGiB, 2 * kGiB, 300 * kMiB));
  sim::VmView untrusted = vm(kUntrusted, 3 * kGiB, 3 * kGiB - drift, 1 * kGiB);
  untrusted.available_bytes = untrusted.total_bytes + 100 * kMiB;  // impossible
  view.vms.push_back(untrusted);
  view.vms.push_back(vm(kIdle, 4 * kGiB, 4 * kGiB - drift, 200 * kMiB));
  sim::VmView growing =
      vm(kGrowing, 4 * kGiB, 2 * kGiB, 600 * kMiB + static_cast<uint64_t>(step) * 150 * kMiB);
  if (step >= 6) {
    // Short of memory: it swaps.
    growing.swap_in_bytes_total = static_cast<uint64_t>(step - 5) * 80 * kMiB;
    growing.swap_out_bytes_total = static_cast<uint64_t>(step - 5) * 120 * kMiB;
    growing.major_faults_total = static_cast<uint64_t>(step - 5) * 20000;
  }
  view.vms.push_back(growing);
  if (step >= 5) view.vms.push_back(vm(kLate, 2 * kGiB, 2 * kGiB, 900 * kMiB));
  if (step < 9) {
    sim::VmView nd = vm(kNoDriver, 1 * kGiB, 1 * kGiB, 0);
    nd.balloon_driver = false;
    nd.total_bytes = nd.available_bytes = nd.free_bytes = 0;
    view.vms.push_back(nd);
  }
  view.vms.push_back(vm(kWeighted, 3 * kGiB, 3 * kGiB - drift, 700 * kMiB));
  return view;
}

class DecisionEquivalenceTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::random_device rd;
    dir_ = (std::filesystem::temp_directory_path() /
            ("mb_equiv_" + std::to_string(rd()) + std::to_string(::getpid())))
               .string();
    std::filesystem::create_directories(dir_);
    auto store = broker::Store::Open(dir_);
    ASSERT_TRUE(store.ok()) << store.status();
    store_ = std::move(*store);
    metrics_ = std::make_unique<broker::BrokerMetrics>(std::make_shared<prometheus::Registry>());
    fleet_ = std::make_unique<broker::Fleet>(&clock_, store_.get(), metrics_.get(),
                                             v1::SafetyParams());
  }
  void TearDown() override {
    fleet_.reset();
    store_.reset();
    std::filesystem::remove_all(dir_);
  }

  // Runs the sequence through both and returns how many targets were
  // compared. `overrides` is applied to both as the cluster policy.
  int RunBoth(const v1::ClusterPolicy& overrides, int steps) {
    const v1::Scenario scenario = PolicyScenario();
    sim::RunOptions options;
    options.broker_policy = overrides;
    std::unique_ptr<sim::HostController> controller =
        sim::MakeController(sim::PolicyKind::kBroker, options, scenario);

    EXPECT_TRUE(fleet_->Load(overrides).ok());
    for (const auto& vm : scenario.hosts(0).vms()) {
      auto set = fleet_->SetVmPolicy(vm.vm().vm_id(), vm.policy(), false);
      EXPECT_TRUE(set.ok()) << set.status();
    }
    v1::Hello hello;
    hello.set_host_id("host-eq");
    hello.set_capacity_bytes(scenario.hosts(0).capacity_bytes());
    v1::Welcome welcome;
    auto conn = fleet_->Connect(
        hello, [](const v1::BrokerMessage&) {}, &welcome);
    EXPECT_TRUE(conn.ok()) << conn.status();

    int compared = 0;
    for (int step = 0; step < steps; ++step) {
      // The host is short of memory from step 4 on.
      const uint64_t capacity = step < 4 ? 20 * kGiB : 12 * kGiB;
      const sim::HostView view = ViewAt(step, capacity);
      const std::vector<uint64_t> sim_targets = controller->Decide(view);

      EXPECT_TRUE(fleet_->Report("host-eq", *conn, sim::ReportOf(view, step + 1)).ok());
      auto vms = fleet_->ListVms("host-eq");
      EXPECT_TRUE(vms.ok());
      std::map<std::string, uint64_t> broker_targets;
      for (const v1::Vm& vm : *vms) broker_targets[vm.vm_id()] = vm.target_bytes();
      EXPECT_EQ(broker_targets.size(), view.vms.size()) << "step " << step;
      for (size_t i = 0; i < view.vms.size(); ++i) {
        EXPECT_EQ(sim_targets[i], broker_targets[view.vms[i].vm_id])
            << "step " << step << " VM " << view.vms[i].vm_id;
        ++compared;
      }
      clock_.Advance(absl::Seconds(1));
    }
    return compared;
  }

  std::string dir_;
  ManualClock clock_;
  std::unique_ptr<broker::Store> store_;
  std::unique_ptr<broker::BrokerMetrics> metrics_;
  std::unique_ptr<broker::Fleet> fleet_;
};

TEST_F(DecisionEquivalenceTest, ShippedDefaultsGiveIdenticalTargets) {
  EXPECT_GT(RunBoth(v1::ClusterPolicy(), 12), 60);
}

TEST_F(DecisionEquivalenceTest, EveryClusterPolicyFieldReachesBoth) {
  v1::ClusterPolicy p;
  p.set_surplus_percent(30);
  p.set_hysteresis_percent(2);
  p.set_protect_margin_max_bytes(64 * kMiB);
  p.set_buffer_percent(35);
  p.set_reclaim_step_bytes(128 * kMiB);
  p.set_idle_tax_percent(50);
  p.set_default_min_bytes(384 * kMiB);
  p.set_default_weight(50);
  p.set_protect_margin_percent(20);
  p.set_host_free_margin_bytes(256 * kMiB);
  EXPECT_GT(RunBoth(p, 12), 60);
}

// The comparison itself can fail: a simulator run under a different cluster
// policy than the broker's gives different targets somewhere.
TEST_F(DecisionEquivalenceTest, DifferentPoliciesAreDetected) {
  const v1::Scenario scenario = PolicyScenario();
  sim::RunOptions a, b;
  b.broker_policy.set_surplus_percent(0);
  a.broker_policy.set_surplus_percent(100);
  auto ca = sim::MakeController(sim::PolicyKind::kBroker, a, scenario);
  auto cb = sim::MakeController(sim::PolicyKind::kBroker, b, scenario);
  bool differ = false;
  for (int step = 0; step < 6; ++step) {
    const sim::HostView view = ViewAt(step, 20 * kGiB);
    differ |= ca->Decide(view) != cb->Decide(view);
  }
  EXPECT_TRUE(differ);
}

TEST_F(DecisionEquivalenceTest, SequenceExercisesEveryCase) {
  // The cases the comparison is meant to cover really occur in the broker.
  RunBoth(v1::ClusterPolicy(), 12);
  auto pinned = fleet_->GetVm(kPinned);
  ASSERT_TRUE(pinned.ok());
  EXPECT_EQ(pinned->target_bytes(), 2 * kGiB);
  EXPECT_EQ(pinned->reason(), v1::REASON_PINNED);
  auto untrusted = fleet_->GetVm(kUntrusted);
  ASSERT_TRUE(untrusted.ok());
  EXPECT_TRUE(untrusted->stats().untrusted());
  EXPECT_NE(untrusted->stats().untrusted_reason().find("above total"), std::string::npos)
      << untrusted->stats().untrusted_reason();
  auto late = fleet_->GetVm(kLate);
  ASSERT_TRUE(late.ok());
  EXPECT_GT(late->target_bytes(), 0u);
  EXPECT_FALSE(fleet_->GetVm(kNoDriver).ok());  // left at step 9
  auto growing = fleet_->GetVm(kGrowing);
  ASSERT_TRUE(growing.ok());
  EXPECT_GT(growing->swap_in_bytes_per_second(), 0);
  EXPECT_GT(growing->target_bytes(), growing->actual_bytes());
}

}  // namespace
}  // namespace membroker

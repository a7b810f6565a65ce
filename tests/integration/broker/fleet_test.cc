// The broker's Fleet in-process on a manual clock (no network): what it
// tells operators when a host cannot hold its VMs' floors or a guest's
// acute pressure, counted once per episode.

#include "broker/fleet.h"

#include <filesystem>
#include <random>
#include <string>

#include <gtest/gtest.h>

#include "broker/metrics.h"
#include "broker/store.h"
#include "common/clock.h"

namespace membroker::broker {
namespace {

constexpr uint64_t kMiB = uint64_t{1} << 20;
constexpr uint64_t kGiB = uint64_t{1} << 30;

v1::VmSample Vm(const std::string& id, uint64_t max, uint64_t actual, uint64_t used) {
  v1::VmSample s;
  s.set_vm_id(id);
  s.set_name(id);
  s.set_max_bytes(max);
  s.set_actual_bytes(actual);
  s.set_last_target_bytes(actual);
  s.set_health(v1::BALLOON_HEALTH_OK);
  s.mutable_stats()->set_total_bytes(actual);
  s.mutable_stats()->set_available_bytes(actual - used);
  s.mutable_stats()->set_age_seconds(0);
  return s;
}

double Counter(BrokerMetrics& m, const std::string& name, const std::string& kind = "",
               const std::string& label = "kind") {
  for (const auto& family : m.registry()->Collect()) {
    if (family.name != name) continue;
    for (const auto& metric : family.metric) {
      bool match = kind.empty();
      for (const auto& l : metric.label) match |= l.name == label && l.value == kind;
      if (match) return metric.counter.value;
    }
  }
  return -1;
}

class FleetTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::random_device rd;
    dir_ = (std::filesystem::temp_directory_path() /
            ("mb_fleet_" + std::to_string(rd()) + std::to_string(::getpid())))
               .string();
    std::filesystem::create_directories(dir_);
    store_ = std::move(*Store::Open(dir_));
    metrics_ = std::make_unique<BrokerMetrics>(std::make_shared<prometheus::Registry>());
    fleet_ = std::make_unique<Fleet>(&clock_, store_.get(), metrics_.get(), v1::SafetyParams());
    ASSERT_TRUE(fleet_->Load(v1::ClusterPolicy()).ok());
    v1::Hello hello;
    hello.set_host_id("h1");
    hello.set_capacity_bytes(4 * kGiB);
    v1::Welcome welcome;
    conn_ = *fleet_->Connect(hello, [](const v1::BrokerMessage&) {}, &welcome);
  }
  void TearDown() override {
    fleet_.reset();
    std::filesystem::remove_all(dir_);
  }
  void Report(std::vector<v1::VmSample> vms) {
    v1::HostReport r;
    r.set_sequence(++seq_);
    r.mutable_host()->set_mem_total_bytes(64 * kGiB);
    r.mutable_host()->set_mem_available_bytes(32 * kGiB);
    for (auto& v : vms) *r.add_vms() = v;
    ASSERT_TRUE(fleet_->Report("h1", conn_, r).ok());
    clock_.Advance(absl::Seconds(1));
  }

  std::string dir_;
  ManualClock clock_;
  std::unique_ptr<Store> store_;
  std::unique_ptr<BrokerMetrics> metrics_;
  std::unique_ptr<Fleet> fleet_;
  uint64_t conn_ = 0;
  uint64_t seq_ = 0;
};

TEST_F(FleetTest, OvercommitAtTheFloorsIsCountedOncePerEpisodeAndExplained) {
  // Operator mins 3 + 2 GiB on a 4 GiB host: the floors do not fit.
  v1::VmPolicy a, b;
  a.set_min_bytes(3 * kGiB);
  b.set_min_bytes(2 * kGiB);
  ASSERT_TRUE(fleet_->SetVmPolicy("00000000-0000-0000-0000-00000000000a", a, false).ok());
  ASSERT_TRUE(fleet_->SetVmPolicy("00000000-0000-0000-0000-00000000000b", b, false).ok());
  const auto vms = [&] {
    return std::vector<v1::VmSample>{
        Vm("00000000-0000-0000-0000-00000000000a", 4 * kGiB, 3 * kGiB, 1 * kGiB),
        Vm("00000000-0000-0000-0000-00000000000b", 4 * kGiB, 2 * kGiB, 1 * kGiB)};
  };
  Report(vms());
  Report(vms());
  Report(vms());
  EXPECT_EQ(Counter(*metrics_, "membroker_host_overcommit_episodes_total"), 1);
  auto host = fleet_->GetHost("h1");
  ASSERT_TRUE(host.ok());
  EXPECT_TRUE(host->overcommitted());
  // Exported with what holds it there: both operator mins.
  ASSERT_EQ(host->overcommitted_by_size(), 2) << host->DebugString();
  EXPECT_EQ(host->overcommitted_by(0),
            "00000000-0000-0000-0000-00000000000a: floor 3 GiB (operator min)");
  EXPECT_EQ(host->overcommitted_by(1),
            "00000000-0000-0000-0000-00000000000b: floor 2 GiB (operator min)");
  auto e = fleet_->ExplainVm("00000000-0000-0000-0000-00000000000a");
  ASSERT_TRUE(e.ok()) << e.status();
  EXPECT_NE(e->steps(3).find("operator min"), std::string::npos) << e->steps(3);
  // The floors fit again, then do not: a second episode.
  ASSERT_TRUE(fleet_->ClearVmPolicy("00000000-0000-0000-0000-00000000000a").ok());
  Report(vms());
  EXPECT_FALSE(fleet_->GetHost("h1")->overcommitted());
  EXPECT_EQ(fleet_->GetHost("h1")->overcommitted_by_size(), 0);
  ASSERT_TRUE(fleet_->SetVmPolicy("00000000-0000-0000-0000-00000000000a", a, false).ok());
  Report(vms());
  EXPECT_EQ(Counter(*metrics_, "membroker_host_overcommit_episodes_total"), 2);
}

TEST_F(FleetTest, AFullGuestBorrowsTheMargin) {
  // A swapless guest fills its 2 GiB (available 16 MiB) next to a guest
  // whose operator min is 1.5 GiB (it never yields). Desired sizes exceed
  // usable 4 GiB - 128 MiB; the host has room (32 GiB available): the
  // margin is lent and the full guest gets 4 - 1.5 = 2.5 GiB.
  const std::string full = "00000000-0000-0000-0000-0000000000f1";
  const std::string idle = "00000000-0000-0000-0000-0000000000f2";
  v1::VmPolicy held;
  held.set_min_bytes(1536 * kMiB);
  ASSERT_TRUE(fleet_->SetVmPolicy(idle, held, false).ok());
  Report({Vm(full, 4 * kGiB, 2 * kGiB, 1 * kGiB), Vm(idle, 4 * kGiB, 2 * kGiB, 100 * kMiB)});
  Report({Vm(full, 4 * kGiB, 2 * kGiB, 1536 * kMiB), Vm(idle, 4 * kGiB, 2 * kGiB, 100 * kMiB)});
  Report({Vm(full, 4 * kGiB, 2 * kGiB, 2 * kGiB - 16 * kMiB),
          Vm(idle, 4 * kGiB, 2 * kGiB, 100 * kMiB)});
  auto vm = fleet_->GetVm(full);
  ASSERT_TRUE(vm.ok());
  EXPECT_EQ(vm->target_bytes(), 2 * kGiB + 512 * kMiB);
  EXPECT_GT(Counter(*metrics_, "membroker_host_sacrifices_total", "margin"), 0);
  EXPECT_EQ(Counter(*metrics_, "membroker_host_sacrifices_total", "default_floor"), 0);
  auto e = fleet_->ExplainVm(full);
  ASSERT_TRUE(e.ok());
  EXPECT_NE(e->steps(0).find("full"), std::string::npos) << e->steps(0);
}

TEST_F(FleetTest, GuestOomKillsAreCountedOncePerReportAndRaiseDemand) {
  // A guest whose statistics carry an OOM-kill counter (the agent's count
  // from its console log): one kill between two reports.
  const std::string id = "00000000-0000-0000-0000-0000000000c1";
  auto vm = [&](uint64_t kills, uint64_t used) {
    v1::VmSample s = Vm(id, 4 * kGiB, 1 * kGiB, used);
    s.mutable_stats()->set_oom_kills_total(kills);
    return s;
  };
  Report({vm(2, 900 * kMiB)});  // kills before the broker saw it: no event
  Report({vm(2, 900 * kMiB)});
  EXPECT_EQ(Counter(*metrics_, "membroker_host_guest_oom_kills_total", "reported", "source"), 0);
  Report({vm(3, 100 * kMiB)});
  EXPECT_EQ(Counter(*metrics_, "membroker_host_guest_oom_kills_total", "reported", "source"), 1);
  EXPECT_EQ(Counter(*metrics_, "membroker_host_guest_oom_kills_total", "inferred", "source"), 0);
  auto got = fleet_->GetVm(id);
  ASSERT_TRUE(got.ok());
  EXPECT_EQ(got->guest_oom_kills(), 1u);
  // Demand at least twice the size it died at (1 GiB), and it is offered.
  EXPECT_GE(got->demand_bytes(), 2 * kGiB);
  EXPECT_GE(got->target_bytes(), 2 * kGiB);
  auto e = fleet_->ExplainVm(id);
  ASSERT_TRUE(e.ok());
  EXPECT_NE(e->steps(0).find("OOM kill"), std::string::npos) << e->steps(0);
  // A policy change decides again without a report: not another kill.
  v1::ClusterPolicy p;
  p.set_buffer_percent(30);
  ASSERT_TRUE(fleet_->SetClusterPolicy(p).ok());
  Report({vm(3, 100 * kMiB)});
  EXPECT_EQ(Counter(*metrics_, "membroker_host_guest_oom_kills_total", "reported", "source"), 1);
  EXPECT_EQ(fleet_->GetVm(id)->guest_oom_kills(), 1u);
}

}  // namespace
}  // namespace membroker::broker

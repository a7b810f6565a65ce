// The broker's Fleet in-process on a manual clock (no network): what it
// tells operators when a host cannot hold its VMs' floors or a guest's
// acute pressure, counted once per episode.

#include "broker/fleet.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <map>
#include <random>
#include <set>
#include <string>

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
    conn_ = *fleet_->Connect(
        hello, [](const v1::BrokerMessage&) {}, &welcome);
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

// Counts the series of `name` in `families` and whether their (host, vm)
// label pairs are unique.
size_t SeriesCount(const std::vector<prometheus::MetricFamily>& families, const std::string& name,
                   bool* unique = nullptr) {
  std::set<std::pair<std::string, std::string>> labels;
  size_t n = 0;
  for (const auto& family : families) {
    if (family.name != name) continue;
    for (const auto& metric : family.metric) {
      ++n;
      std::string host, vm;
      for (const auto& l : metric.label) (l.name == "host" ? host : vm) = l.value;
      labels.emplace(host, vm);
    }
  }
  if (unique) *unique = labels.size() == n;
  return n;
}

TEST_F(FleetTest, TenThousandVmsComeAndGoWithoutPerVmMetricObjects) {
  // Regression: adding a VM used to create five prometheus-cpp gauges and
  // removing it called Family::Remove five times, each a linear search of
  // every VM's series in the fleet (a 10 000-VM report cost seconds). The
  // per-VM series are now read at scrape time: the registry holds no
  // per-VM object at all, whatever comes and goes, and the scrape shows
  // exactly the VMs present, with unique labels.
  std::vector<v1::VmSample> vms;
  for (int i = 0; i < 10000; ++i) {
    char id[40];
    std::snprintf(id, sizeof(id), "00000000-0000-0000-0000-%012d", i);
    v1::VmSample s = Vm(id, 64 * kMiB, 64 * kMiB, 16 * kMiB);
    // Every tenth VM shares its name with the VM before it: labelled by id.
    s.set_name(i % 10 == 9 ? "vm-" + std::to_string(i - 1) : "vm-" + std::to_string(i));
    vms.push_back(s);
  }
  Report(vms);
  for (const auto& family : metrics_->registry()->Collect()) {
    if (family.name.rfind("membroker_vm_", 0) == 0) {
      ADD_FAILURE() << family.name << " is kept in the registry (" << family.metric.size()
                    << " series)";
    }
  }
  bool unique = false;
  EXPECT_EQ(SeriesCount(metrics_->Collect(), "membroker_vm_target_bytes", &unique), 10000u);
  EXPECT_TRUE(unique);
  EXPECT_EQ(SeriesCount(metrics_->Collect(), "membroker_vm_balloon_healthy"), 10000u);
  // All but one leave; one new VM takes a departed VM's name.
  v1::VmSample newcomer =
      Vm("00000000-0000-0000-0000-0000000f0000", 64 * kMiB, 64 * kMiB, 16 * kMiB);
  newcomer.set_name("vm-8");
  Report({vms[0], newcomer});
  EXPECT_EQ(SeriesCount(metrics_->Collect(), "membroker_vm_target_bytes", &unique), 2u);
  EXPECT_TRUE(unique);
  double label_found = 0;
  for (const auto& family : metrics_->Collect()) {
    if (family.name != "membroker_vm_actual_bytes") continue;
    for (const auto& metric : family.metric) {
      for (const auto& l : metric.label) {
        if (l.name == "vm" && l.value == "vm-8") label_found = metric.gauge.value;
      }
    }
  }
  EXPECT_EQ(label_found, static_cast<double>(64 * kMiB));
  // Every VM gone: no VM series left.
  Report({});
  EXPECT_EQ(SeriesCount(metrics_->Collect(), "membroker_vm_target_bytes"), 0u);
}

TEST_F(FleetTest, ConnectedAgentsFollowStreamsWithoutAGlobalCount) {
  // The gauge is updated by one atomic step per change (no lock over every
  // host): replacing a stream does not count twice; disconnects count down.
  auto gauge = [&] {
    for (const auto& family : metrics_->Collect()) {
      if (family.name == "membroker_connected_agents") return family.metric.at(0).gauge.value;
    }
    return -1.0;
  };
  EXPECT_EQ(gauge(), 1);
  v1::Hello hello;
  hello.set_host_id("h2");
  hello.set_capacity_bytes(4 * kGiB);
  v1::Welcome welcome;
  const uint64_t first = *fleet_->Connect(
      hello, [](const v1::BrokerMessage&) {}, &welcome);
  EXPECT_EQ(gauge(), 2);
  const uint64_t second = *fleet_->Connect(
      hello, [](const v1::BrokerMessage&) {}, &welcome);
  EXPECT_EQ(gauge(), 2);
  fleet_->Disconnect("h2", first);  // the replaced stream: no change
  EXPECT_EQ(gauge(), 2);
  fleet_->Disconnect("h2", second);
  EXPECT_EQ(gauge(), 1);
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

// The value of the per-VM series `name` (read at scrape time) whose labels
// include all of `labels`; -1 when absent.
double VmSeriesValue(BrokerMetrics& m, const std::string& name,
                     const std::map<std::string, std::string>& labels) {
  for (const auto& family : m.Collect()) {
    if (family.name != name) continue;
    for (const auto& metric : family.metric) {
      size_t matched = 0;
      for (const auto& l : metric.label) {
        auto it = labels.find(l.name);
        matched += it != labels.end() && it->second == l.value;
      }
      if (matched != labels.size()) continue;
      return family.type == prometheus::MetricType::Counter ? metric.counter.value
                                                            : metric.gauge.value;
    }
  }
  return -1;
}

TEST_F(FleetTest, PerVmDashboardSeriesAreProducedAtScrapeTime) {
  // Configured max, untrusted statistics, the target's reason and the
  // guest's counters (mirrored: growth since first seen, a restart counts
  // from zero again) come from the fleet at scrape time like the others.
  const std::string id = "00000000-0000-0000-0000-0000000000d1";
  auto vm = [&](uint64_t swap_in, uint64_t faults, bool untrusted) {
    v1::VmSample s = Vm(id, 4 * kGiB, 2 * kGiB, 1 * kGiB);
    s.set_name("dash");
    s.mutable_stats()->set_swap_in_bytes_total(swap_in);
    s.mutable_stats()->set_major_faults_total(faults);
    s.mutable_stats()->set_untrusted(untrusted);
    if (untrusted) s.mutable_stats()->set_untrusted_reason("test");
    return s;
  };
  const std::map<std::string, std::string> labels{{"host", "h1"}, {"vm", "dash"}};
  Report({vm(100, 7, false)});
  EXPECT_EQ(VmSeriesValue(*metrics_, "membroker_vm_max_bytes", labels), 4.0 * kGiB);
  EXPECT_EQ(VmSeriesValue(*metrics_, "membroker_vm_stats_untrusted", labels), 0);
  EXPECT_EQ(VmSeriesValue(*metrics_, "membroker_vm_swap_in_bytes_total", labels), 100);
  EXPECT_EQ(VmSeriesValue(*metrics_, "membroker_vm_major_faults_total", labels), 7);
  EXPECT_EQ(VmSeriesValue(*metrics_, "membroker_vm_oom_kills_total", labels), 0);
  Report({vm(150, 9, true)});
  EXPECT_EQ(VmSeriesValue(*metrics_, "membroker_vm_stats_untrusted", labels), 1);
  EXPECT_EQ(VmSeriesValue(*metrics_, "membroker_vm_swap_in_bytes_total", labels), 150);
  Report({vm(20, 1, false)});  // the guest restarted: its counters start again
  EXPECT_EQ(VmSeriesValue(*metrics_, "membroker_vm_swap_in_bytes_total", labels), 170);
  EXPECT_EQ(VmSeriesValue(*metrics_, "membroker_vm_major_faults_total", labels), 10);
  // Exactly one reason is 1, and it is the VM's current target reason.
  auto got = fleet_->GetVm(id);
  ASSERT_TRUE(got.ok());
  double ones = 0, zeros = 0;
  for (const auto& family : metrics_->Collect()) {
    if (family.name != "membroker_vm_target_reason") continue;
    for (const auto& metric : family.metric) (metric.gauge.value == 1 ? ones : zeros) += 1;
  }
  EXPECT_EQ(ones, 1);
  EXPECT_EQ(zeros, BrokerMetrics::kReasonCount - 1);
  // Nothing per VM lives in the registry.
  for (const auto& family : metrics_->registry()->Collect()) {
    EXPECT_NE(family.name.rfind("membroker_vm_", 0), 0u) << family.name;
  }
  Report({});
  EXPECT_EQ(VmSeriesValue(*metrics_, "membroker_vm_max_bytes", labels), -1);
}

}  // namespace
}  // namespace membroker::broker

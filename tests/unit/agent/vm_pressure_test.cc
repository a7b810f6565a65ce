// The acute pressure rules and the host-side VM process probe, fed numbers.

#include "node-agent/vm_pressure.h"

#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "absl/strings/str_cat.h"
#include "node-agent/vm_process_probe.h"

namespace membroker::agent {
namespace {

using ::testing::ElementsAre;
using ::testing::IsEmpty;
using ::testing::UnorderedElementsAre;
using membroker::v1::PRESSURE_REASON_AVAILABLE_NEAR_ZERO;
using membroker::v1::PRESSURE_REASON_BALLOON_DEFLATE_ON_OOM;
using membroker::v1::PRESSURE_REASON_GUEST_SWAP_IN;
using membroker::v1::PRESSURE_REASON_RSS_NEAR_ACTUAL;

constexpr uint64_t kMiB = uint64_t{1} << 20;

// near = max(64 MiB, 10 % of actual); growth >= 4 MiB per sample;
// available low = max(8 MiB, 2 % of total).
PressureParams Params() { return PressureParams{}; }

VmStatus Vm(const std::string& id, uint64_t actual) {
  VmStatus vm;
  vm.vm_id = id;
  vm.name = "vm-" + id;
  vm.max_bytes = 2048 * kMiB;
  vm.actual_bytes = actual;
  return vm;
}

TEST(PressureDetectorTest, RssNearActualAndGrowingFires) {
  PressureDetector d(Params());
  // Actual 1024 MiB: near = max(64, 102.4) MiB, so RSS >= 921.6 MiB.
  EXPECT_FALSE(d.ObserveRss("a", 7, 900 * kMiB, 1024 * kMiB));  // First sample: no trend.
  EXPECT_FALSE(d.ObserveRss("a", 7, 920 * kMiB, 1024 * kMiB));  // Growing, 921.6 not reached.
  EXPECT_TRUE(d.ObserveRss("a", 7, 930 * kMiB, 1024 * kMiB));   // Near and +10 MiB.
  EXPECT_FALSE(d.ObserveRss("a", 7, 932 * kMiB, 1024 * kMiB));  // Near, +2 MiB only.
  EXPECT_EQ(d.rss_bytes().at("a"), 932 * kMiB);
  auto reasons = d.TakeReasons();
  EXPECT_THAT(reasons["a"], ElementsAre(PRESSURE_REASON_RSS_NEAR_ACTUAL));
  EXPECT_THAT(d.TakeReasons(), IsEmpty());  // Taken once.
}

TEST(PressureDetectorTest, IdleRssNearActualDoesNotFire) {
  PressureDetector d(Params());
  // A reclaimed idle guest: RSS above actual (QEMU's own memory) but flat.
  for (int i = 0; i < 10; ++i) {
    EXPECT_FALSE(d.ObserveRss("a", 7, 200 * kMiB + i * kMiB, 128 * kMiB));
  }
  // A growing guest far from its actual: it still has untouched memory.
  PressureDetector e(Params());
  for (int i = 0; i < 10; ++i) {
    EXPECT_FALSE(e.ObserveRss("b", 8, (100 + 50 * i) * kMiB, 2048 * kMiB));
  }
  EXPECT_THAT(e.TakeReasons(), IsEmpty());
}

TEST(PressureDetectorTest, NewPidStartsOver) {
  PressureDetector d(Params());
  EXPECT_FALSE(d.ObserveRss("a", 7, 100 * kMiB, 512 * kMiB));
  // QEMU restarted: its first sample has no trend, however large.
  EXPECT_FALSE(d.ObserveRss("a", 9, 500 * kMiB, 512 * kMiB));
  EXPECT_TRUE(d.ObserveRss("a", 9, 510 * kMiB, 512 * kMiB));
}

TEST(PressureDetectorTest, BalloonRisingWithoutATargetIsDeflateOnOom) {
  PressureDetector d(Params());
  EXPECT_THAT(d.ObserveVm(Vm("a", 512 * kMiB), 512 * kMiB), IsEmpty());
  // Actual rises to 600 MiB with the target still 512 MiB.
  EXPECT_THAT(d.ObserveVm(Vm("a", 600 * kMiB), 512 * kMiB),
              ElementsAre(PRESSURE_REASON_BALLOON_DEFLATE_ON_OOM));
  // Rising toward a higher target is the broker's (or a grant's) doing.
  EXPECT_THAT(d.ObserveVm(Vm("a", 700 * kMiB), 1024 * kMiB), IsEmpty());
  // Still rising toward that target after a lower one replaced it is not.
  EXPECT_THAT(d.ObserveVm(Vm("a", 800 * kMiB), 512 * kMiB), IsEmpty());
  // Falling never is.
  EXPECT_THAT(d.ObserveVm(Vm("a", 600 * kMiB), 512 * kMiB), IsEmpty());
  EXPECT_THAT(d.ObserveVm(Vm("a", 600 * kMiB), 512 * kMiB), IsEmpty());
  // Rising with no target at all (none applied yet) is.
  EXPECT_THAT(d.ObserveVm(Vm("a", 650 * kMiB), std::nullopt),
              ElementsAre(PRESSURE_REASON_BALLOON_DEFLATE_ON_OOM));
  // Less than 1 MiB is noise.
  EXPECT_THAT(d.ObserveVm(Vm("a", 650 * kMiB + 4096), 512 * kMiB), IsEmpty());
}

TEST(PressureDetectorTest, AvailableNearZeroOnFreshStatsOnly) {
  PressureDetector d(Params());
  VmStatus vm = Vm("a", 1024 * kMiB);
  vm.stats.total_bytes = 1000 * kMiB;
  vm.stats.available_bytes = 100 * kMiB;
  vm.stats.last_update = absl::FromUnixSeconds(1000);
  EXPECT_THAT(d.ObserveVm(vm, 1024 * kMiB), IsEmpty());
  // 21 MiB is above max(8 MiB, 2 % of 1000 MiB = 20 MiB); 20 MiB is not.
  vm.stats.available_bytes = 21 * kMiB;
  vm.stats.last_update = absl::FromUnixSeconds(1000) + absl::Milliseconds(500);
  EXPECT_THAT(d.ObserveVm(vm, 1024 * kMiB), IsEmpty());
  vm.stats.available_bytes = 20 * kMiB;
  vm.stats.last_update = absl::FromUnixSeconds(1001);
  EXPECT_THAT(d.ObserveVm(vm, 1024 * kMiB), ElementsAre(PRESSURE_REASON_AVAILABLE_NEAR_ZERO));
  // The same statistics again are no news.
  EXPECT_THAT(d.ObserveVm(vm, 1024 * kMiB), IsEmpty());
  // A small guest: 8 MiB; a large one: 2 % of 8000 MiB = 160 MiB.
  vm.stats.total_bytes = 100 * kMiB;
  vm.stats.available_bytes = 9 * kMiB;
  vm.stats.last_update = absl::FromUnixSeconds(1001) + absl::Milliseconds(500);
  EXPECT_THAT(d.ObserveVm(vm, 1024 * kMiB), IsEmpty());
  vm.stats.total_bytes = 8000 * kMiB;
  vm.stats.available_bytes = 150 * kMiB;
  vm.stats.last_update = absl::FromUnixSeconds(1002);
  EXPECT_THAT(d.ObserveVm(vm, 1024 * kMiB), ElementsAre(PRESSURE_REASON_AVAILABLE_NEAR_ZERO));
  // Without a total the rule cannot say.
  vm.stats.total_bytes.reset();
  vm.stats.last_update = absl::FromUnixSeconds(1003);
  EXPECT_THAT(d.ObserveVm(vm, 1024 * kMiB), IsEmpty());
}

TEST(PressureDetectorTest, ReasonsGatherUntilTakenAndGoneVmsAreForgotten) {
  PressureDetector d(Params());
  d.ObserveVm(Vm("a", 512 * kMiB), 512 * kMiB);
  d.ObserveVm(Vm("a", 600 * kMiB), 512 * kMiB);
  d.Record("a", PRESSURE_REASON_GUEST_SWAP_IN);
  d.Record("b", PRESSURE_REASON_GUEST_SWAP_IN);
  d.ObserveRss("b", 3, 10 * kMiB, 512 * kMiB);
  auto reasons = d.TakeReasons();
  EXPECT_THAT(reasons["a"], UnorderedElementsAre(PRESSURE_REASON_BALLOON_DEFLATE_ON_OOM,
                                                 PRESSURE_REASON_GUEST_SWAP_IN));
  EXPECT_THAT(reasons["b"], ElementsAre(PRESSURE_REASON_GUEST_SWAP_IN));
  d.Retain({"a"});
  EXPECT_EQ(d.rss_bytes().count("b"), 0u);
  // "a" keeps its history: no new edge from the same actual.
  EXPECT_THAT(d.ObserveVm(Vm("a", 600 * kMiB), 512 * kMiB), IsEmpty());
}

TEST(VmProcessProbeTest, ParsesVmRss) {
  EXPECT_EQ(*ParseVmRssBytes("Name:\tqemu\nVmPeak:\t 9 kB\nVmRSS:\t  123456 kB\nThreads: 4\n"),
            uint64_t{123456} * 1024);
  EXPECT_TRUE(absl::IsDataLoss(ParseVmRssBytes("Name:\tkthreadd\nThreads: 1\n").status()));
  EXPECT_TRUE(absl::IsDataLoss(ParseVmRssBytes("VmRSS:\tlots kB\n").status()));
  EXPECT_TRUE(absl::IsDataLoss(ParseVmRssBytes("VmRSS:\t12 MB\n").status()));
  EXPECT_TRUE(absl::IsDataLoss(ParseVmRssBytes("VmRSS:\t-5 kB\n").status()));
}

TEST(VmProcessProbeTest, ParsesPidFiles) {
  EXPECT_EQ(*ParsePidFile("4242"), 4242);
  EXPECT_EQ(*ParsePidFile(" 4242\n"), 4242);
  for (const char* bad : {"", "\n", "0", "-3", "42 43", "x42", "4.2", "99999999999999999999"}) {
    EXPECT_TRUE(absl::IsInvalidArgument(ParsePidFile(bad).status())) << bad;
  }
  EXPECT_TRUE(absl::IsNotFound(ReadPidFile("/nonexistent/membroker/vm.pid").status()));
}

class ProcFixture : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/mb_vm_probe_XXXXXX";
    ASSERT_NE(::mkdtemp(tmpl), nullptr);
    root_ = tmpl;
  }
  void TearDown() override { std::filesystem::remove_all(root_); }
  void Write(const std::string& rel, const std::string& text) {
    std::filesystem::create_directories(std::filesystem::path(root_ + "/" + rel).parent_path());
    std::ofstream(root_ + "/" + rel) << text;
  }
  std::string root_;
};

TEST_F(ProcFixture, ReadsResidentMemoryOfAProcess) {
  Write("1234/status", "Name:\tqemu-system-x86\nVmRSS:\t  2048 kB\n");
  Write("77/status", "Name:\tzombie\n");
  ProcVmProcessProbe probe(root_);
  EXPECT_EQ(*probe.ResidentBytes(1234), 2 * kMiB);
  EXPECT_TRUE(absl::IsDataLoss(probe.ResidentBytes(77).status()));
  EXPECT_TRUE(absl::IsNotFound(probe.ResidentBytes(999).status()));
  EXPECT_TRUE(absl::IsInvalidArgument(probe.ResidentBytes(0).status()));
  // The real /proc: this test's own process is resident.
  ProcVmProcessProbe real;
  absl::StatusOr<uint64_t> self = real.ResidentBytes(::getpid());
  ASSERT_TRUE(self.ok()) << self.status();
  EXPECT_GT(*self, 0u);
}

TEST_F(ProcFixture, ReadsPidFiles) {
  Write("qemu/guest.pid", "31337\n");
  Write("qemu/bad.pid", "pid\n");
  EXPECT_EQ(*ReadPidFile(root_ + "/qemu/guest.pid"), 31337);
  EXPECT_TRUE(absl::IsInvalidArgument(ReadPidFile(root_ + "/qemu/bad.pid").status()));
}

}  // namespace
}  // namespace membroker::agent

// How the agent reports a VM's sizing devices and exclusion to the broker.

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "node-agent/actuator.h"
#include "node-agent/agent.h"
#include "node-agent/hypervisor/hypervisor.h"

namespace membroker::agent {
namespace {

using ::testing::HasSubstr;

constexpr uint64_t kMiB = uint64_t{1} << 20;

VmStatus VirtioMemVm() {
  VmStatus vm;
  vm.vm_id = "id-1";
  vm.name = "vmem";
  vm.max_bytes = 1536 * kMiB;
  vm.actual_bytes = 810 * kMiB;
  vm.sizing.balloon = true;
  vm.sizing.virtio_mem = true;
  vm.sizing.boot_bytes = 512 * kMiB;
  vm.sizing.virtio_mem_plugged_bytes = 300 * kMiB;
  vm.sizing.virtio_mem_requested_bytes = 300 * kMiB;
  vm.sizing.balloon_inflated_bytes = 2 * kMiB;
  return vm;
}

TEST(ToVmSampleTest, ReportsWhichMechanismHoldsWhat) {
  const membroker::v1::VmSample s = ToVmSample(VirtioMemVm(), nullptr, nullptr);
  EXPECT_EQ(s.sizing_mechanism(), "virtio-mem+balloon");
  EXPECT_EQ(s.virtio_mem_plugged_bytes(), 300 * kMiB);
  EXPECT_EQ(s.virtio_mem_requested_bytes(), 300 * kMiB);
  EXPECT_EQ(s.balloon_inflated_bytes(), 2 * kMiB);
  EXPECT_EQ(s.boot_bytes(), 512 * kMiB);
  EXPECT_EQ(s.max_bytes(), 1536 * kMiB);
  EXPECT_EQ(s.health(), membroker::v1::BALLOON_HEALTH_OK);
  EXPECT_EQ(s.health_reason(), "");
}

TEST(ToVmSampleTest, CarriesFreePageReporting) {
  VmStatus vm = VirtioMemVm();
  EXPECT_FALSE(ToVmSample(vm, nullptr, nullptr).free_page_reporting());
  vm.free_page_reporting = true;
  EXPECT_TRUE(ToVmSample(vm, nullptr, nullptr).free_page_reporting());
}

TEST(ToVmSampleTest, ExcludedVmIsReportedExcludedWithItsReasonWhateverItsBalloon) {
  VmStatus vm = VirtioMemVm();
  vm.sizing.excluded_reason = "PCI passthrough: VFIO device hostdev0 (vfio-pci) pins guest memory";
  VmActuation stuck;
  stuck.state = BalloonState::kStuck;
  const membroker::v1::VmSample s = ToVmSample(vm, &stuck, nullptr);
  EXPECT_EQ(s.health(), membroker::v1::BALLOON_HEALTH_EXCLUDED);
  EXPECT_THAT(s.health_reason(), HasSubstr("PCI passthrough"));
}

TEST(ToVmSampleTest, StalledUnplugKeepsTheActuatorsHealthAndSaysWhy) {
  VmStatus vm = VirtioMemVm();
  vm.sizing.balloon = false;
  vm.sizing.shortfall_reason = "virtio-mem unplug stalled at 300.0 MiB plugged of 100.0 MiB";
  VmActuation stuck;
  stuck.state = BalloonState::kStuck;
  const membroker::v1::VmSample s = ToVmSample(vm, &stuck, nullptr);
  EXPECT_EQ(s.sizing_mechanism(), "virtio-mem");
  EXPECT_EQ(s.health(), membroker::v1::BALLOON_HEALTH_STUCK);
  EXPECT_THAT(s.health_reason(), HasSubstr("unplug stalled"));
}

TEST(ToVmSampleTest, ALongReasonIsCutToTheBrokersBoundOnACharacterBoundary) {
  VmStatus vm = VirtioMemVm();
  // 300 bytes of two-byte characters: a cut at 253 bytes would split one.
  std::string reason;
  for (int i = 0; i < 150; ++i) reason += "\xc3\xa9";
  vm.sizing.excluded_reason = reason;
  const membroker::v1::VmSample s = ToVmSample(vm, nullptr, nullptr);
  EXPECT_LE(s.health_reason().size(), 256u);
  EXPECT_EQ(s.health_reason().substr(s.health_reason().size() - 3), "...");
  const std::string kept = s.health_reason().substr(0, s.health_reason().size() - 3);
  EXPECT_EQ(kept.size() % 2, 0u) << "a character was split";
  EXPECT_EQ(kept, reason.substr(0, kept.size()));
}

}  // namespace
}  // namespace membroker::agent

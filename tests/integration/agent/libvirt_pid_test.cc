// The libvirt backend finds each domain's QEMU process from libvirtd's pid
// files, here on the libvirt test driver with a fixture pid directory.

#include <stdlib.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <string>

#include <gtest/gtest.h>

#include "common/clock.h"
#include "node-agent/hypervisor/libvirt_hypervisor.h"

namespace membroker::agent {
namespace {

class LibvirtPidTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/mb-libvirt-pid-XXXXXX";
    ASSERT_NE(mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  std::unique_ptr<LibvirtHypervisor> Make(const std::string& pid_dir) {
    LibvirtHypervisorOptions options;
    options.uri = "test:///default";
    options.pid_dir = pid_dir;
    auto hv = LibvirtHypervisor::Create(options, &clock_);
    EXPECT_TRUE(hv.ok()) << hv.status();
    return hv.ok() ? std::move(hv).value() : nullptr;
  }

  // The listed domain "test" (the test driver's default domain).
  std::optional<int64_t> PidOfTest(LibvirtHypervisor& hv) {
    auto vms = hv.ListVms();
    EXPECT_TRUE(vms.ok()) << vms.status();
    if (!vms.ok()) return std::nullopt;
    for (const VmStatus& vm : *vms) {
      if (vm.name == "test") return vm.host_pid;
    }
    ADD_FAILURE() << "domain test not listed";
    return std::nullopt;
  }

  ManualClock clock_;
  std::string dir_;
};

TEST_F(LibvirtPidTest, ReadsTheDomainsPidFile) {
  std::ofstream(dir_ + "/test.pid") << "4321\n";
  auto hv = Make(dir_);
  ASSERT_NE(hv, nullptr);
  EXPECT_EQ(PidOfTest(*hv), std::optional<int64_t>(4321));
}

TEST_F(LibvirtPidTest, MissingOrBadPidFileLeavesThePidEmpty) {
  auto hv = Make(dir_);
  ASSERT_NE(hv, nullptr);
  EXPECT_EQ(PidOfTest(*hv), std::nullopt);
  std::ofstream(dir_ + "/test.pid") << "not a pid\n";
  EXPECT_EQ(PidOfTest(*hv), std::nullopt);
  // No pid directory configured: nothing is read.
  std::ofstream(dir_ + "/test.pid") << "4321\n";
  auto without = Make("");
  ASSERT_NE(without, nullptr);
  EXPECT_EQ(PidOfTest(*without), std::nullopt);
}

}  // namespace
}  // namespace membroker::agent

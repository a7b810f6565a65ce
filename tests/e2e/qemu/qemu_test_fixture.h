#pragma once
// The base fixture of the real-QEMU tests: a directory of the test's own
// (removed after a passing test, kept and named after a failing one), the
// guest kernel directory and busybox from the environment, the
// prerequisite checks (skip outside CI, fail with CI=true), the initramfs,
// and the guests it boots (stopped at the end).
//
// Needs the compile definitions that mb_qemu_e2e_test() in CMakeLists.txt
// gives every QEMU test: MB_DEFAULT_GUEST_KERNEL_DIR, MB_MEMLOAD_PATH,
// MB_BROKER_PATH and MB_AGENT_PATH.

#include <stdlib.h>

#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "gtest/gtest.h"
#include "tests/e2e/qemu/qemu_guest.h"
#include "tests/e2e/qemu/qemu_test_env.h"

namespace membroker::e2e {

// What a test needs besides qemu-system-x86_64, busybox and the guest
// kernel.
struct QemuPrerequisites {
  // The membroker and membroker-agent binaries (checked first).
  bool daemons = false;
  // virtio_mem.ko beside the guest kernel.
  bool virtio_mem = false;
};

// Not thread-safe: gtest's thread only, like any fixture.
class QemuTestBase : public ::testing::Test {
 protected:
  // The test's directory will be /tmp/`dir_prefix`-XXXXXX.
  explicit QemuTestBase(std::string dir_prefix) : dir_prefix_(std::move(dir_prefix)) {}

  // Reads MB_GUEST_KERNEL_DIR and MB_BUSYBOX and makes the test's
  // directory.
  void SetUp() override {
    kernel_dir_ = Env("MB_GUEST_KERNEL_DIR", MB_DEFAULT_GUEST_KERNEL_DIR);
    busybox_ = Env("MB_BUSYBOX", "/bin/busybox");
    std::string tmpl = absl::StrCat("/tmp/", dir_prefix_, "-XXXXXX");
    ASSERT_NE(mkdtemp(tmpl.data()), nullptr);
    dir_ = tmpl;
  }

  // Stops the guests, then removes the test's directory, or keeps it and
  // says where when the test failed.
  void TearDown() override {
    for (auto& g : guests_) g->Stop();
    if (dir_.empty()) return;
    if (HasFailure()) {
      std::printf("kept the test's files for inspection in %s\n", dir_.c_str());
    } else {
      std::string cmd = absl::StrCat("rm -rf '", dir_, "'");
      if (std::system(cmd.c_str()) != 0) std::printf("could not remove %s\n", dir_.c_str());
    }
  }

  // Checks the prerequisites (the daemons first when `needs` says so, then
  // QEMU, busybox and the guest kernel) and builds dir_/initrd.cpio. Sets
  // prepared_; otherwise the test has been skipped (outside CI) or has
  // failed, and the caller returns.
  void Prepare(const QemuPrerequisites& needs) {
    if (needs.daemons) {
      MB_REQUIRE(!std::string(MB_BROKER_PATH).empty() && FileExists(MB_BROKER_PATH),
                 "the membroker binary");
      MB_REQUIRE(!std::string(MB_AGENT_PATH).empty() && FileExists(MB_AGENT_PATH),
                 "the membroker-agent binary");
    }
    MB_REQUIRE(OnPath("qemu-system-x86_64"), "qemu-system-x86_64 (apt: qemu-system-x86)");
    MB_REQUIRE(FileExists(busybox_), "busybox at " + busybox_ + " (apt: busybox-static)");
    const std::string fetch = " (run scripts/fetch-guest-kernel.sh " + kernel_dir_ + ")";
    if (needs.virtio_mem) {
      MB_REQUIRE(FileExists(kernel_dir_ + "/vmlinuz") && FileExists(kernel_dir_ + "/virtio_mem.ko"),
                 "guest kernel and virtio_mem.ko in " + kernel_dir_ + fetch);
    } else {
      MB_REQUIRE(FileExists(kernel_dir_ + "/vmlinuz"), "guest kernel in " + kernel_dir_ + fetch);
    }
    absl::Status built =
        BuildInitramfs(kernel_dir_, busybox_, MB_MEMLOAD_PATH, dir_ + "/initrd.cpio");
    ASSERT_TRUE(built.ok()) << built;
    prepared_ = true;
  }

  // Boots a guest of the test's initramfs as `options` say (a failure to
  // start is a test failure); the fixture stops it at the end.
  QemuGuest* Boot(const std::string& name, const std::string& uuid, const std::string& append,
                  const QemuGuestOptions& options = {}) {
    guests_.push_back(std::make_unique<QemuGuest>(dir_, name, uuid));
    QemuGuest* g = guests_.back().get();
    absl::Status st = g->Start(kernel_dir_ + "/vmlinuz", dir_ + "/initrd.cpio", append, options);
    EXPECT_TRUE(st.ok()) << st;
    return g;
  }

  // Boot with `memory_mib` MiB of memory and the other options' defaults.
  QemuGuest* Boot(const std::string& name, const std::string& uuid, const std::string& append,
                  int memory_mib) {
    QemuGuestOptions options;
    options.memory = absl::StrCat(memory_mib);
    return Boot(name, uuid, append, options);
  }

  // Waits up to `timeout` for the guest's MB-READY (a fatal failure with
  // its console and QEMU's log when it does not come), then expects every
  // module to have loaded.
  void WaitReady(QemuGuest* g, absl::Duration timeout) {
    ASSERT_TRUE(g->WaitForConsole("MB-READY", timeout)) << g->name() << " did not boot; console:\n"
                                                        << g->Console() << "\nqemu:\n"
                                                        << g->QemuLog();
    EXPECT_EQ(g->Console().find("MB-INSMOD-FAILED"), std::string::npos) << g->Console();
  }

  std::string kernel_dir_;
  std::string busybox_;
  std::string dir_;
  bool prepared_ = false;
  std::vector<std::unique_ptr<QemuGuest>> guests_;

 private:
  std::string dir_prefix_;
};

}  // namespace membroker::e2e

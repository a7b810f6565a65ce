#include "node-agent/deadline_hypervisor.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <atomic>
#include <memory>
#include <thread>

#include "common/clock.h"
#include "tests/unit/agent/fake_hypervisor.h"

namespace membroker::agent {
namespace {

using ::testing::HasSubstr;
using ::testing::IsEmpty;

constexpr uint64_t kMiB = uint64_t{1} << 20;
// Real-time bound of the waits below; only ends a test that already failed.
constexpr absl::Duration kBound = absl::Seconds(30);

// Waits (really, up to kBound) until `clock` has `n` pending waits.
bool WaitForWaiters(const ManualClock& clock, size_t n) {
  const absl::Time deadline = absl::Now() + kBound;
  while (absl::Now() < deadline) {
    if (clock.pending_waits() >= n) return true;
    absl::SleepFor(absl::Milliseconds(1));
  }
  return false;
}

class DeadlineHypervisorTest : public ::testing::Test {
 protected:
  void Make(bool concurrent_vms) {
    fake_ = std::make_shared<FakeHypervisor>();
    fake_->AddVm("a", 4096 * kMiB, 4096 * kMiB);
    fake_->AddVm("h", 4096 * kMiB, 4096 * kMiB);
    HypervisorCallParams params;
    params.call_timeout = absl::Seconds(10);
    params.concurrent_vms = concurrent_vms;
    hv_ = std::make_unique<DeadlineHypervisor>(fake_, &clock_, params);
  }

  // Starts SetBalloonTarget(h) on a thread; it hangs in the fake.
  void StartHungCall() {
    fake_->Hang("h");
    caller_ = std::thread([this] { hung_status_ = hv_->SetBalloonTarget("h", 2048 * kMiB); });
    ASSERT_TRUE(fake_->WaitForHangingCalls(1, kBound));
    ASSERT_TRUE(WaitForWaiters(clock_, 1));
  }

  void TearDown() override {
    if (fake_) fake_->Release("h");
    if (caller_.joinable()) caller_.join();
    // An abandoned call's thread logs when it returns late: let it finish
    // before the process exits and tears down the logger under it.
    if (hv_) {
      const absl::Time bound = absl::Now() + kBound;
      while (hv_->hung_calls() != 0 && absl::Now() < bound) absl::SleepFor(absl::Milliseconds(1));
    }
  }

  ManualClock clock_;
  std::shared_ptr<FakeHypervisor> fake_;
  std::unique_ptr<DeadlineHypervisor> hv_;
  std::thread caller_;
  absl::Status hung_status_;
};

TEST_F(DeadlineHypervisorTest, CallsThatReturnPassThrough) {
  Make(false);
  EXPECT_EQ(hv_->backend(), "fake");
  ASSERT_TRUE(hv_->ListVms().ok());
  EXPECT_EQ(hv_->ListVms()->size(), 2u);
  EXPECT_TRUE(hv_->SetBalloonTarget("a", 2048 * kMiB).ok());
  EXPECT_EQ(fake_->target("a"), 2048 * kMiB);
  EXPECT_EQ(hv_->SetBalloonTarget("ghost", kMiB).code(), absl::StatusCode::kNotFound);
  EXPECT_TRUE(hv_->SetStatsPeriod("a", absl::Seconds(1)).ok());
  EXPECT_THAT(hv_->HungVms(), IsEmpty());
  EXPECT_EQ(hv_->hung_calls(), 0);
}

TEST_F(DeadlineHypervisorTest, AHungCallEndsAtItsDeadlineAndMarksItsVm) {
  Make(true);
  StartHungCall();
  clock_.Advance(absl::Seconds(9));
  EXPECT_THAT(hv_->HungVms(), IsEmpty());  // not past its deadline yet
  clock_.Advance(absl::Seconds(1));
  caller_.join();
  EXPECT_EQ(hung_status_.code(), absl::StatusCode::kDeadlineExceeded);
  EXPECT_THAT(hung_status_.message(), HasSubstr("SetBalloonTarget on VM h has not returned"));
  ASSERT_EQ(hv_->HungVms().count("h"), 1u);
  EXPECT_THAT(hv_->HungVms().at("h"), HasSubstr("hypervisor call hung: SetBalloonTarget"));
  EXPECT_EQ(hv_->hung_calls(), 1);
  // Its lane fails fast; other VMs' lanes and ListVms work.
  absl::Status again = hv_->SetBalloonTarget("h", 1024 * kMiB);
  EXPECT_EQ(again.code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(again.message(), HasSubstr("not attempted"));
  EXPECT_TRUE(hv_->SetBalloonTarget("a", 1024 * kMiB).ok());
  EXPECT_TRUE(hv_->ListVms().ok());
  // The late return frees the lane; its result was dropped, a new call works.
  fake_->Release("h");
  const absl::Time bound = absl::Now() + kBound;
  while (hv_->hung_calls() != 0 && absl::Now() < bound) absl::SleepFor(absl::Milliseconds(1));
  EXPECT_EQ(hv_->hung_calls(), 0);
  EXPECT_THAT(hv_->HungVms(), IsEmpty());
  EXPECT_TRUE(hv_->SetBalloonTarget("h", 1024 * kMiB).ok());
  EXPECT_EQ(fake_->target("h"), 1024 * kMiB);
}

TEST_F(DeadlineHypervisorTest, OneLaneForASerialBackend) {
  Make(false);
  StartHungCall();
  clock_.Advance(absl::Seconds(10));
  caller_.join();
  EXPECT_EQ(hung_status_.code(), absl::StatusCode::kDeadlineExceeded);
  // Every other call fails fast while the backend is busy.
  absl::Status other = hv_->SetBalloonTarget("a", 1024 * kMiB);
  EXPECT_EQ(other.code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(other.message(), HasSubstr("SetBalloonTarget on VM h has not returned"));
  EXPECT_EQ(hv_->ListVms().status().code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(fake_->target("a"), 0u);
  EXPECT_EQ(hv_->HungVms().count("h"), 1u);
}

TEST_F(DeadlineHypervisorTest, ShutdownEndsAWaitAtOnceAndRefusesNewCalls) {
  Make(true);
  StartHungCall();
  hv_->Shutdown();
  caller_.join();  // no clock advance needed
  EXPECT_EQ(hung_status_.code(), absl::StatusCode::kCancelled);
  EXPECT_EQ(hv_->SetBalloonTarget("a", 1024 * kMiB).code(), absl::StatusCode::kCancelled);
  // The wrapper can go while the call hangs; the backend stays alive for it.
  hv_.reset();
  std::weak_ptr<FakeHypervisor> weak = fake_;
  FakeHypervisor* raw = fake_.get();
  fake_.reset();
  EXPECT_FALSE(weak.expired());  // held by the hung call's thread
  raw->Release("h");
  const absl::Time bound = absl::Now() + kBound;
  while (!weak.expired() && absl::Now() < bound) absl::SleepFor(absl::Milliseconds(1));
  EXPECT_TRUE(weak.expired());
}

}  // namespace
}  // namespace membroker::agent

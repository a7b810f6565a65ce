#include "node-agent/hypervisor/sim_hypervisor.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "common/clock.h"
#include "common/textproto.h"
#include "node-agent/hypervisor/factory.h"

namespace membroker::agent {
namespace {

using ::testing::HasSubstr;

constexpr uint64_t kMiB = uint64_t{1} << 20;

membroker::v1::SimConfig Config() {
  membroker::v1::SimConfig config;
  EXPECT_TRUE(ParseTextProto(R"pb(
                host_total_bytes: 17179869184
                time_scale: 2
                balloon_rate_bytes_per_second: 104857600
                vms {
                  name: "web"
                  max_bytes: 4294967296
                  workload { constant { working_set_bytes: 1073741824 } }
                }
                vms {
                  name: "legacy"
                  max_bytes: 2147483648
                  no_balloon_driver: true
                  workload { constant { working_set_bytes: 536870912 } }
                }
                vms {
                  name: "late"
                  max_bytes: 2147483648
                  start_after { seconds: 10 }
                  workload { constant { working_set_bytes: 536870912 } }
                }
              )pb",
                             "test", &config)
                  .ok());
  return config;
}

const VmStatus* Find(const std::vector<VmStatus>& vms, const std::string& name) {
  for (const VmStatus& vm : vms) {
    if (vm.name == name) return &vm;
  }
  return nullptr;
}

TEST(SimHypervisorTest, ListsRunningVmsWithStats) {
  ManualClock clock;
  auto hv = SimHypervisor::Create(Config(), &clock);
  ASSERT_TRUE(hv.ok()) << hv.status();
  EXPECT_EQ((*hv)->backend(), "sim");
  EXPECT_EQ((*hv)->host_total_bytes(), 16 * 1024 * kMiB);
  absl::StatusOr<std::vector<VmStatus>> vms = (*hv)->ListVms();
  ASSERT_TRUE(vms.ok());
  ASSERT_EQ(vms->size(), 2u);  // "late" has not started
  const VmStatus* web = Find(*vms, "web");
  ASSERT_NE(web, nullptr);
  EXPECT_EQ(web->max_bytes, 4096 * kMiB);
  EXPECT_EQ(web->actual_bytes, 4096 * kMiB);
  EXPECT_FALSE(web->vm_id.empty());
  ASSERT_TRUE(web->stats.last_update.has_value());
  EXPECT_EQ(*web->stats.last_update, clock.Now());
  EXPECT_TRUE(web->stats.total_bytes.has_value());
  // A guest without a balloon driver sends no statistics.
  const VmStatus* legacy = Find(*vms, "legacy");
  ASSERT_NE(legacy, nullptr);
  EXPECT_FALSE(legacy->stats.last_update.has_value());
  EXPECT_FALSE(legacy->stats.total_bytes.has_value());
}

TEST(SimHypervisorTest, TimeFollowsTheClockScaled) {
  ManualClock clock;
  auto hv = SimHypervisor::Create(Config(), &clock);
  ASSERT_TRUE(hv.ok());
  clock.Advance(absl::Seconds(4));
  ASSERT_TRUE((*hv)->ListVms().ok());
  EXPECT_EQ((*hv)->elapsed(), absl::Seconds(8));  // time_scale 2
  // A clock going backwards does not move simulated time.
  clock.Advance(-absl::Seconds(1));
  ASSERT_TRUE((*hv)->ListVms().ok());
  EXPECT_EQ((*hv)->elapsed(), absl::Seconds(8));
  clock.Advance(absl::Seconds(2));  // back to +5 s: one more second of wall time
  absl::StatusOr<std::vector<VmStatus>> vms = (*hv)->ListVms();
  ASSERT_TRUE(vms.ok());
  EXPECT_EQ((*hv)->elapsed(), absl::Seconds(10));
  EXPECT_NE(Find(*vms, "late"), nullptr);  // started at 10 s
}

TEST(SimHypervisorTest, BalloonMovesAtTheSimulatedRate) {
  ManualClock clock;
  auto hv = SimHypervisor::Create(Config(), &clock);
  ASSERT_TRUE(hv.ok());
  const std::string id = Find(*(*hv)->ListVms(), "web")->vm_id;
  ASSERT_TRUE((*hv)->SetBalloonTarget(id, 3072 * kMiB).ok());
  // 1 s of wall time = 2 s simulated at 100 MiB/s: 200 MiB.
  clock.Advance(absl::Seconds(1));
  EXPECT_EQ(Find(*(*hv)->ListVms(), "web")->actual_bytes, 3896 * kMiB);
  clock.Advance(absl::Seconds(10));
  EXPECT_EQ(Find(*(*hv)->ListVms(), "web")->actual_bytes, 3072 * kMiB);
}

TEST(SimHypervisorTest, BadCallsAreRefused) {
  ManualClock clock;
  auto hv = SimHypervisor::Create(Config(), &clock);
  ASSERT_TRUE(hv.ok());
  const std::string id = Find(*(*hv)->ListVms(), "web")->vm_id;
  EXPECT_EQ((*hv)->SetBalloonTarget("nope", kMiB).code(), absl::StatusCode::kNotFound);
  EXPECT_EQ((*hv)->SetBalloonTarget(id, 0).code(), absl::StatusCode::kInvalidArgument);
  absl::Status above = (*hv)->SetBalloonTarget(id, 4097 * kMiB);
  EXPECT_EQ(above.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(above.message()), HasSubstr("above max_bytes"));
  EXPECT_TRUE((*hv)->SetStatsPeriod(id, absl::Seconds(1)).ok());
  EXPECT_EQ((*hv)->SetStatsPeriod(id, absl::ZeroDuration()).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ((*hv)->SetStatsPeriod("nope", absl::Seconds(1)).code(), absl::StatusCode::kNotFound);
  // The VM that has not started yet is not there.
  const std::string late_id = "late";
  EXPECT_EQ((*hv)->SetBalloonTarget(late_id, kMiB).code(), absl::StatusCode::kNotFound);
}

TEST(SimHypervisorTest, BadConfigIsRefused) {
  ManualClock clock;
  membroker::v1::SimConfig config = Config();
  config.set_time_scale(-1);
  EXPECT_EQ(SimHypervisor::Create(config, &clock).status().code(),
            absl::StatusCode::kInvalidArgument);
  config = Config();
  config.mutable_vms(0)->set_max_bytes(0);
  EXPECT_EQ(SimHypervisor::Create(config, &clock).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(FactoryTest, BuildsSimAndRefusesUnknown) {
  ManualClock clock;
  BackendOptions options;
  options.backend = "sim";
  options.sim_config = Config();
  options.clock = &clock;
  absl::StatusOr<std::unique_ptr<Hypervisor>> hv = MakeHypervisor(options);
  ASSERT_TRUE(hv.ok()) << hv.status();
  EXPECT_EQ((*hv)->backend(), "sim");
  options.backend = "xen";
  hv = MakeHypervisor(options);
  EXPECT_EQ(hv.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(hv.status().message()), HasSubstr("--backend"));
  options.backend = "qmp";
  EXPECT_EQ(MakeHypervisor(options).status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace membroker::agent

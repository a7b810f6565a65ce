// End to end: the real membroker-agent with --backend=qmp and
// --qmp-socket-dir over an empty directory, reporting to the real
// membroker. A QEMU stand-in (the fake QMP server) starts in the directory
// after the agent is up: the broker sees its VM. It exits: the VM leaves.

#include <grpcpp/create_channel.h>
#include <grpcpp/security/credentials.h>
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "membroker/v1/admin.grpc.pb.h"
#include "tests/integration/qmp/fake_qmp_server.h"
#include "tests/util/broker_process.h"
#include "tests/util/child_process.h"
#include "tests/util/wait.h"

namespace {

using ::membroker::agent::testing::FakeQmpServer;
using ::membroker::agent::testing::FakeVmState;
using ::membroker::testing::BrokerPorts;
using ::membroker::testing::ChildProcess;
using ::membroker::testing::StartBroker;
using ::membroker::testing::WaitUntil;

class QmpWatchE2eTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/mb_qmpw_XXXXXX";
    ASSERT_NE(mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
    std::filesystem::create_directories(dir_ + "/qmp");
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  // The broker's VMs (empty when the call fails).
  std::vector<membroker::v1::Vm> BrokerVms(membroker::v1::AdminService::Stub& stub) {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
    membroker::v1::ListVmsResponse vms;
    if (!stub.ListVms(&ctx, {}, &vms).ok()) return {};
    return {vms.vms().begin(), vms.vms().end()};
  }

  std::string dir_;
};

TEST_F(QmpWatchE2eTest, VmStartedAfterTheAgentIsReportedAndLeavesWhenItExits) {
  ChildProcess broker;
  const absl::StatusOr<BrokerPorts> ports =
      StartBroker(broker, MB_BROKER_BIN, dir_ + "/state", dir_ + "/broker.log", absl::Seconds(20));
  ASSERT_TRUE(ports.ok()) << ports.status();
  const std::string server = absl::StrCat("127.0.0.1:", ports->grpc);

  ChildProcess agent;
  ASSERT_TRUE(agent
                  .Start({MB_AGENT_BIN, "--broker=" + server, "--host-id=qmp-host", "--backend=qmp",
                          "--qmp-socket-dir=" + dir_ + "/qmp", "--host-capacity-bytes=256MiB",
                          "--metrics-listen=127.0.0.1:0", "--insecure", "--report-interval=200ms"},
                         dir_ + "/agent.log")
                  .ok());
  ASSERT_TRUE(agent.WaitForLog("metrics on[^0-9]*port ([0-9]+)", absl::Seconds(20)).ok());

  auto stub = membroker::v1::AdminService::NewStub(
      grpc::CreateChannel(server, grpc::InsecureChannelCredentials()));
  // The agent is connected and reporting an empty host.
  ASSERT_TRUE(WaitUntil(
      [&] {
        grpc::ClientContext ctx;
        ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
        membroker::v1::ListHostsResponse hosts;
        return stub->ListHosts(&ctx, {}, &hosts).ok() && hosts.hosts_size() == 1;
      },
      absl::Seconds(30)));
  EXPECT_TRUE(BrokerVms(*stub).empty());

  // A VM starts now, after the agent.
  FakeVmState state;
  state.name = "late-vm";
  auto qemu = std::make_unique<FakeQmpServer>(dir_ + "/qmp/late.sock");
  qemu->set_state(state);
  ASSERT_TRUE(qemu->Start());
  std::vector<membroker::v1::Vm> vms;
  ASSERT_TRUE(WaitUntil(
      [&] {
        vms = BrokerVms(*stub);
        return vms.size() == 1;
      },
      absl::Seconds(30)))
      << "the broker never saw the VM whose socket appeared after the agent started";
  EXPECT_EQ(vms[0].name(), "late-vm");
  EXPECT_EQ(vms[0].vm_id(), state.uuid);
  EXPECT_EQ(vms[0].max_bytes(), state.base_memory);
  EXPECT_GE(qemu->connections(), 1);

  // The VM exits: its socket goes away and the broker forgets it.
  qemu->Stop();
  EXPECT_TRUE(WaitUntil([&] { return BrokerVms(*stub).empty(); }, absl::Seconds(30)))
      << "the VM whose socket disappeared is still reported";
  EXPECT_TRUE(agent.Running());
  const int status = agent.Stop();
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << status;
}

}  // namespace

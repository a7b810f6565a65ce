// End to end: the real membroker, membroker-agent (simulator backend) and
// membrokerctl on loopback, with a simulated host whose capacity is short.
// Checks that the idle VM is ballooned down, that the VM whose working set
// grows gets memory, that every target stays within floor..max and the
// host's sum within capacity, and that the CLI and both /metrics work.

#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include <grpcpp/create_channel.h>
#include <grpcpp/security/credentials.h>
#include <gtest/gtest.h>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "membroker/v1/admin.grpc.pb.h"
#include "tests/util/broker_process.h"
#include "tests/util/child_process.h"
#include "tests/util/http.h"
#include "tests/util/wait.h"

namespace {

using ::membroker::testing::BrokerPorts;
using ::membroker::testing::ChildProcess;
using ::membroker::testing::RunToCompletion;
using ::membroker::testing::StartBroker;
using ::membroker::testing::WaitUntil;

constexpr uint64_t kMiB = uint64_t{1} << 20;
constexpr uint64_t kGiB = uint64_t{1} << 30;

// Runs membrokerctl with `args`; returns its exit code, output in `*out`.
int Ctl(const std::string& server, const std::vector<std::string>& args, std::string* out) {
  std::vector<std::string> argv = {MB_CTL_BIN, "--insecure", "--server=" + server};
  argv.insert(argv.end(), args.begin(), args.end());
  return RunToCompletion(argv, out, absl::Seconds(60));
}

// The body of GET http://127.0.0.1:port/path ("" on failure).
std::string HttpBody(int port, const std::string& path) {
  absl::StatusOr<membroker::testing::HttpReply> reply = membroker::testing::HttpGet(port, path);
  return reply.ok() ? reply->body : "";
}

class ClusterE2eTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/mb_e2e_XXXXXX";
    ASSERT_NE(mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
  }
  // Each ChildProcess prints its own log when the test failed.
  void TearDown() override { std::filesystem::remove_all(dir_); }
  std::filesystem::path dir_;
};

TEST_F(ClusterE2eTest, ShortHostMovesMemoryFromIdleToGrowingVm) {
  // Host: 8 GiB, VMs may use 5 GiB. Two 4 GiB VMs: "idle" uses 256 MiB;
  // "grower" uses 512 MiB and steps to 3 GiB at t = 12 s.
  const std::string sim = (dir_ / "sim.textproto").string();
  {
    std::ofstream f(sim);
    f << "host_total_bytes: " << 8 * kGiB << "\n"
      << "seed: 7\ntime_scale: 1\nballoon_rate_bytes_per_second: " << 1024 * kMiB << "\n"
      << "vms { name: \"idle\" max_bytes: " << 4 * kGiB
      << " workload { constant { working_set_bytes: " << 256 * kMiB << " } }"
      << " page_cache_bytes: " << kGiB << " swap_bytes: " << 2 * kGiB << " }\n"
      << "vms { name: \"grower\" max_bytes: " << 4 * kGiB
      << " workload { step { before_bytes: " << 512 * kMiB << " after_bytes: " << 3 * kGiB
      << " at { seconds: 12 } } }"
      << " page_cache_bytes: " << 512 * kMiB << " swap_bytes: " << 2 * kGiB << " }\n";
  }
  ChildProcess broker;
  const absl::StatusOr<BrokerPorts> ports =
      StartBroker(broker, MB_BROKER_BIN, (dir_ / "state").string(), (dir_ / "broker.log").string(),
                  absl::Seconds(20));
  ASSERT_TRUE(ports.ok()) << ports.status();
  const int grpc_port = ports->grpc, broker_metrics = ports->metrics;
  const std::string server = "127.0.0.1:" + std::to_string(grpc_port);

  ChildProcess agent;
  ASSERT_TRUE(agent
                  .Start({MB_AGENT_BIN, "--broker=" + server, "--host-id=e2e-host", "--backend=sim",
                          "--sim-config=" + sim, "--host-capacity-bytes=5GiB",
                          "--metrics-listen=127.0.0.1:0", "--insecure"},
                         (dir_ / "agent.log").string())
                  .ok());
  const absl::StatusOr<std::string> agent_metrics_s =
      agent.WaitForLog("metrics on[^0-9]*port ([0-9]+)", absl::Seconds(20));
  ASSERT_TRUE(agent_metrics_s.ok()) << agent_metrics_s.status();
  const int agent_metrics = std::stoi(*agent_metrics_s);

  auto stub = membroker::v1::AdminService::NewStub(
      grpc::CreateChannel(server, grpc::InsecureChannelCredentials()));
  bool idle_ballooned = false, grower_served = false;
  uint64_t idle_min_actual = UINT64_MAX, grower_final_actual = 0, grower_final_target = 0;
  int polls = 0;
  bool agent_died = false;
  WaitUntil(
      [&] {
        if (!agent.Running()) {
          agent_died = true;
          return true;
        }
        grpc::ClientContext ctx;
        ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
        membroker::v1::ListVmsResponse vms;
        if (!stub->ListVms(&ctx, {}, &vms).ok() || vms.vms_size() != 2) return false;
        ++polls;
        uint64_t sum = 0;
        for (const auto& vm : vms.vms()) {
          if (vm.target_bytes() == 0) continue;  // not decided yet
          sum += vm.target_bytes();
          EXPECT_LE(vm.floor_bytes(), vm.target_bytes()) << vm.name();
          EXPECT_LE(vm.target_bytes(), vm.max_bytes()) << vm.name();
          EXPECT_EQ(vm.stats().oom_kills_total(), 0u) << vm.name();
          if (vm.name() == "idle") {
            idle_min_actual = std::min(idle_min_actual, vm.actual_bytes());
            // Ballooned well below its 4 GiB.
            if (vm.actual_bytes() <= 2560 * kMiB) idle_ballooned = true;
          } else {
            grower_final_actual = vm.actual_bytes();
            grower_final_target = vm.target_bytes();
            // After the step the guest needs 3 GiB plus its kernel.
            if (vm.actual_bytes() >= 3 * kGiB + 64 * kMiB &&
                vm.stats().total_bytes() >= 3 * kGiB + 64 * kMiB &&
                vm.guest_used_bytes() >= 3 * kGiB) {
              grower_served = true;
            }
          }
        }
        EXPECT_LE(sum, 5 * kGiB);
        return idle_ballooned && grower_served;
      },
      absl::Seconds(90), absl::Milliseconds(250));
  ASSERT_FALSE(agent_died) << "membroker-agent exited";
  EXPECT_GT(polls, 0);
  EXPECT_TRUE(idle_ballooned) << "idle VM's lowest actual: " << idle_min_actual;
  EXPECT_TRUE(grower_served) << "growing VM: actual " << grower_final_actual << ", target "
                             << grower_final_target;

  // The CLI against the running cluster.
  std::string out;
  ASSERT_EQ(Ctl(server, {"get", "vms", "-o", "json"}, &out), 0) << out;
  EXPECT_NE(out.find("\"vms\""), std::string::npos) << out;
  EXPECT_NE(out.find("\"max_bytes\""), std::string::npos) << out;
  EXPECT_NE(out.find("\"host_id\": \"e2e-host\""), std::string::npos) << out;
  ASSERT_EQ(Ctl(server, {"get", "hosts"}, &out), 0) << out;
  EXPECT_NE(out.find("e2e-host"), std::string::npos) << out;
  ASSERT_EQ(Ctl(server, {"explain", "vm", "grower"}, &out), 0) << out;
  EXPECT_NE(out.find("floor"), std::string::npos) << out;
  // A bad input: a usage error (2) or INVALID_ARGUMENT from the broker (64+3).
  const int bad = Ctl(server, {"set", "vm", "idle", "--weight=0"}, &out);
  EXPECT_TRUE(bad == 2 || bad == 67) << bad << " " << out;
  EXPECT_EQ(Ctl(server, {"describe", "vm", "no-such-vm"}, &out), 64 + 5) << out;
  // Raise the idle VM's floor: its target follows.
  ASSERT_EQ(Ctl(server, {"set", "vm", "idle", "--min=1536MiB"}, &out), 0) << out;
  const bool floor_applied = WaitUntil(
      [&] {
        grpc::ClientContext ctx;
        membroker::v1::GetVmRequest req;
        req.set_vm("idle");
        membroker::v1::Vm vm;
        return stub->GetVm(&ctx, req, &vm).ok() && vm.target_bytes() >= 1536 * kMiB &&
               vm.floor_bytes() >= 1536 * kMiB;
      },
      absl::Seconds(10), absl::Milliseconds(250));
  EXPECT_TRUE(floor_applied);

  // Both /metrics endpoints.
  const std::string bm = HttpBody(broker_metrics, "/metrics");
  EXPECT_NE(bm.find("membroker_vm_target_bytes{host=\"e2e-host\",vm=\"idle\"}"), std::string::npos)
      << bm.substr(0, 2000);
  EXPECT_NE(bm.find("membroker_connected_agents 1"), std::string::npos);
  EXPECT_NE(bm.find("membroker_decision_latency_seconds_bucket"), std::string::npos);
  const std::string am = HttpBody(agent_metrics, "/metrics");
  EXPECT_NE(am.find("membroker_agent_reports_sent_total"), std::string::npos) << am.substr(0, 2000);
  EXPECT_NE(am.find("membroker_agent_broker_connected 1"), std::string::npos);

  // kill -9 the broker: the acknowledged policy survives. A new broker on
  // the same address and state dir gets the agent back and still applies
  // idle's 1.5 GiB floor.
  broker.Kill();
  ChildProcess broker2;
  ASSERT_TRUE(broker2
                  .Start({MB_BROKER_BIN, "--listen=" + server, "--metrics-listen=127.0.0.1:0",
                          "--state-dir=" + (dir_ / "state").string(), "--insecure"},
                         (dir_ / "broker2.log").string())
                  .ok());
  const absl::StatusOr<std::string> port2 =
      broker2.WaitForLog("grpc port ([0-9]+)", absl::Seconds(20));
  ASSERT_TRUE(port2.ok()) << port2.status();
  const bool policy_survived = WaitUntil(
      [&] {
        grpc::ClientContext ctx;
        membroker::v1::GetVmRequest req;
        req.set_vm("idle");
        membroker::v1::Vm vm;
        return stub->GetVm(&ctx, req, &vm).ok() && vm.policy().min_bytes() == 1536 * kMiB &&
               vm.floor_bytes() >= 1536 * kMiB && vm.target_bytes() >= 1536 * kMiB;
      },
      absl::Seconds(30), absl::Milliseconds(250));
  EXPECT_TRUE(policy_survived);

  // Both daemons stop cleanly on SIGTERM.
  const int agent_status = agent.Stop();
  EXPECT_TRUE(WIFEXITED(agent_status) && WEXITSTATUS(agent_status) == 0) << agent_status;
  const int broker_status = broker2.Stop();
  EXPECT_TRUE(WIFEXITED(broker_status) && WEXITSTATUS(broker_status) == 0) << broker_status;
}

}  // namespace

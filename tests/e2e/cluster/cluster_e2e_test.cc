// End to end: the real membroker, membroker-agent (simulator backend) and
// membrokerctl on loopback, with a simulated host whose capacity is short.
// Checks that the idle VM is ballooned down, that the VM whose working set
// grows gets memory, that every target stays within floor..max and the
// host's sum within capacity, and that the CLI and both /metrics work.

#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <random>
#include <regex>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <grpcpp/create_channel.h>
#include <grpcpp/security/credentials.h>
#include <gtest/gtest.h>

#include "membroker/v1/admin.grpc.pb.h"

namespace {

constexpr uint64_t kMiB = uint64_t{1} << 20;
constexpr uint64_t kGiB = uint64_t{1} << 30;
using Clock = std::chrono::steady_clock;

// A child process whose output goes to a log file; stopped on destruction.
class Process {
 public:
  Process(const std::vector<std::string>& argv, const std::string& log) : log_(log) {
    pid_ = fork();
    if (pid_ == 0) {
      FILE* f = std::fopen(log.c_str(), "w");
      if (f) {
        dup2(fileno(f), 1);
        dup2(fileno(f), 2);
      }
      std::vector<char*> args;
      for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
      args.push_back(nullptr);
      execv(args[0], args.data());
      _exit(127);
    }
  }
  ~Process() { Stop(); }
  bool Running() {
    if (pid_ <= 0) return false;
    int status;
    return waitpid(pid_, &status, WNOHANG) == 0;
  }
  // SIGKILL at once (a crash).
  void Kill() {
    if (pid_ <= 0) return;
    kill(pid_, SIGKILL);
    int status;
    waitpid(pid_, &status, 0);
    pid_ = -1;
  }
  // SIGTERM, then SIGKILL after 5 s. Returns the exit status (or -1).
  int Stop() {
    if (pid_ <= 0) return -1;
    kill(pid_, SIGTERM);
    int status = -1;
    const auto deadline = Clock::now() + std::chrono::seconds(5);
    while (Clock::now() < deadline) {
      if (waitpid(pid_, &status, WNOHANG) == pid_) {
        pid_ = -1;
        return status;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    kill(pid_, SIGKILL);
    waitpid(pid_, &status, 0);
    pid_ = -1;
    return -1;
  }
  std::string Log() const {
    std::ifstream in(log_);
    std::stringstream ss;
    ss << in.rdbuf();
    return ss.str();
  }
  // Waits until the log matches `pattern`; returns group 1 ("" on timeout).
  std::string WaitForLog(const std::string& pattern, std::chrono::seconds timeout) {
    const std::regex re(pattern);
    const auto deadline = Clock::now() + timeout;
    while (Clock::now() < deadline) {
      std::smatch m;
      const std::string log = Log();
      if (std::regex_search(log, m, re)) return m.size() > 1 ? m[1].str() : m[0].str();
      if (!Running()) return "";
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    return "";
  }

 private:
  pid_t pid_ = -1;
  std::string log_;
};

// Runs a command, returns its exit code and stdout (stderr appended).
int RunCommand(const std::string& cmd, std::string* out) {
  FILE* p = popen((cmd + " 2>&1").c_str(), "r");
  if (!p) return -1;
  char buf[4096];
  size_t n;
  out->clear();
  while ((n = fread(buf, 1, sizeof buf, p)) > 0) out->append(buf, n);
  const int status = pclose(p);
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

// GET http://127.0.0.1:port/path, body and headers ("" on failure).
std::string HttpGet(int port, const std::string& path) {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return "";
  timeval tv{5, 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  std::string out;
  if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0) {
    const std::string req = "GET " + path + " HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n";
    if (write(fd, req.data(), req.size()) == static_cast<ssize_t>(req.size())) {
      char buf[8192];
      ssize_t n;
      while ((n = read(fd, buf, sizeof buf)) > 0) out.append(buf, static_cast<size_t>(n));
    }
  }
  close(fd);
  return out;
}

class ClusterE2eTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::random_device rd;
    dir_ = std::filesystem::temp_directory_path() /
           ("mb_e2e_" + std::to_string(getpid()) + "_" + std::to_string(rd()));
    std::filesystem::create_directories(dir_);
  }
  void TearDown() override {
    if (HasFailure()) {
      for (const char* f : {"broker.log", "broker2.log", "agent.log"}) {
        std::ifstream in(dir_ / f);
        std::stringstream ss;
        ss << in.rdbuf();
        std::string s = ss.str();
        if (s.size() > 6000) s = s.substr(s.size() - 6000);
        std::printf("---- %s (tail) ----\n%s\n", f, s.c_str());
      }
    }
    std::filesystem::remove_all(dir_);
  }
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
  Process broker({MB_BROKER_BIN, "--listen=127.0.0.1:0", "--metrics-listen=127.0.0.1:0",
                  "--state-dir=" + (dir_ / "state").string(), "--insecure"},
                 (dir_ / "broker.log").string());
  const std::string ports =
      broker.WaitForLog("grpc port ([0-9]+, metrics port [0-9]+)", std::chrono::seconds(20));
  ASSERT_FALSE(ports.empty()) << broker.Log();
  int grpc_port = 0, broker_metrics = 0;
  ASSERT_EQ(std::sscanf(ports.c_str(), "%d, metrics port %d", &grpc_port, &broker_metrics), 2);
  const std::string server = "127.0.0.1:" + std::to_string(grpc_port);

  Process agent({MB_AGENT_BIN, "--broker=" + server, "--host-id=e2e-host", "--backend=sim",
                 "--sim-config=" + sim, "--host-capacity-bytes=5GiB",
                 "--metrics-listen=127.0.0.1:0", "--insecure"},
                (dir_ / "agent.log").string());
  const std::string agent_metrics_s =
      agent.WaitForLog("metrics on[^0-9]*port ([0-9]+)", std::chrono::seconds(20));
  ASSERT_FALSE(agent_metrics_s.empty()) << agent.Log();
  const int agent_metrics = std::stoi(agent_metrics_s);

  auto stub = membroker::v1::AdminService::NewStub(
      grpc::CreateChannel(server, grpc::InsecureChannelCredentials()));
  bool idle_ballooned = false, grower_served = false;
  uint64_t idle_min_actual = UINT64_MAX, grower_final_actual = 0, grower_final_target = 0;
  int polls = 0;
  const auto deadline = Clock::now() + std::chrono::seconds(90);
  while (Clock::now() < deadline && !(idle_ballooned && grower_served)) {
    std::this_thread::sleep_for(std::chrono::milliseconds(250));
    ASSERT_TRUE(agent.Running()) << agent.Log();
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
    membroker::v1::ListVmsResponse vms;
    if (!stub->ListVms(&ctx, {}, &vms).ok() || vms.vms_size() != 2) continue;
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
            vm.stats().total_bytes() >= 3 * kGiB + 64 * kMiB && vm.guest_used_bytes() >= 3 * kGiB) {
          grower_served = true;
        }
      }
    }
    EXPECT_LE(sum, 5 * kGiB);
  }
  EXPECT_GT(polls, 0);
  EXPECT_TRUE(idle_ballooned) << "idle VM's lowest actual: " << idle_min_actual;
  EXPECT_TRUE(grower_served) << "growing VM: actual " << grower_final_actual << ", target "
                             << grower_final_target;

  // The CLI against the running cluster.
  const std::string ctl = std::string(MB_CTL_BIN) + " --insecure --server=" + server;
  std::string out;
  ASSERT_EQ(RunCommand(ctl + " get vms -o json", &out), 0) << out;
  EXPECT_NE(out.find("\"vms\""), std::string::npos) << out;
  EXPECT_NE(out.find("\"max_bytes\""), std::string::npos) << out;
  EXPECT_NE(out.find("\"host_id\": \"e2e-host\""), std::string::npos) << out;
  ASSERT_EQ(RunCommand(ctl + " get hosts", &out), 0) << out;
  EXPECT_NE(out.find("e2e-host"), std::string::npos) << out;
  ASSERT_EQ(RunCommand(ctl + " explain vm grower", &out), 0) << out;
  EXPECT_NE(out.find("floor"), std::string::npos) << out;
  // A bad input: a usage error (2) or INVALID_ARGUMENT from the broker (64+3).
  const int bad = RunCommand(ctl + " set vm idle --weight=0", &out);
  EXPECT_TRUE(bad == 2 || bad == 67) << bad << " " << out;
  EXPECT_EQ(RunCommand(ctl + " describe vm no-such-vm", &out), 64 + 5) << out;
  // Raise the idle VM's floor: its target follows.
  ASSERT_EQ(RunCommand(ctl + " set vm idle --min=1536MiB", &out), 0) << out;
  bool floor_applied = false;
  for (int i = 0; i < 40 && !floor_applied; ++i) {
    grpc::ClientContext ctx;
    membroker::v1::GetVmRequest req;
    req.set_vm("idle");
    membroker::v1::Vm vm;
    if (stub->GetVm(&ctx, req, &vm).ok() && vm.target_bytes() >= 1536 * kMiB &&
        vm.floor_bytes() >= 1536 * kMiB) {
      floor_applied = true;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(250));
  }
  EXPECT_TRUE(floor_applied);

  // Both /metrics endpoints.
  const std::string bm = HttpGet(broker_metrics, "/metrics");
  EXPECT_NE(bm.find("membroker_vm_target_bytes{host=\"e2e-host\",vm=\"idle\"}"), std::string::npos)
      << bm.substr(0, 2000);
  EXPECT_NE(bm.find("membroker_connected_agents 1"), std::string::npos);
  EXPECT_NE(bm.find("membroker_decision_latency_seconds_bucket"), std::string::npos);
  const std::string am = HttpGet(agent_metrics, "/metrics");
  EXPECT_NE(am.find("membroker_agent_reports_sent_total"), std::string::npos) << am.substr(0, 2000);
  EXPECT_NE(am.find("membroker_agent_broker_connected 1"), std::string::npos);

  // kill -9 the broker: the acknowledged policy survives. A new broker on
  // the same address and state dir gets the agent back and still applies
  // idle's 1.5 GiB floor.
  broker.Kill();
  Process broker2({MB_BROKER_BIN, "--listen=" + server, "--metrics-listen=127.0.0.1:0",
                   "--state-dir=" + (dir_ / "state").string(), "--insecure"},
                  (dir_ / "broker2.log").string());
  ASSERT_FALSE(broker2.WaitForLog("grpc port ([0-9]+)", std::chrono::seconds(20)).empty())
      << broker2.Log();
  bool policy_survived = false;
  for (int i = 0; i < 120 && !policy_survived; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(250));
    grpc::ClientContext ctx;
    membroker::v1::GetVmRequest req;
    req.set_vm("idle");
    membroker::v1::Vm vm;
    if (stub->GetVm(&ctx, req, &vm).ok() && vm.policy().min_bytes() == 1536 * kMiB &&
        vm.floor_bytes() >= 1536 * kMiB && vm.target_bytes() >= 1536 * kMiB) {
      policy_survived = true;
    }
  }
  EXPECT_TRUE(policy_survived) << broker2.Log();

  // Both daemons stop cleanly on SIGTERM.
  const int agent_status = agent.Stop();
  EXPECT_TRUE(WIFEXITED(agent_status) && WEXITSTATUS(agent_status) == 0) << agent_status;
  const int broker_status = broker2.Stop();
  EXPECT_TRUE(WIFEXITED(broker_status) && WEXITSTATUS(broker_status) == 0) << broker_status;
}

}  // namespace

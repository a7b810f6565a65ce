// The broker's memory under clients that hold streams and never read: the
// real membroker binary on loopback, and this process playing
//   A. N agent streams that never send a Hello (ended by the hello timeout),
//   B. N agents that say Hello, send reports of V VMs and never read the
//      targets the broker pushes,
//   C. W WatchDecisions streams that never read, while the agents of B
//      keep reporting changing numbers (so decisions keep coming).
// Prints the broker's VmRSS after each phase. A figure, never pass/fail.
//
//   build/bench/broker_limits [--streams=1000] [--watchers=200] [--vms=10]
//                             [--seconds=20]

#include <grpcpp/create_channel.h>
#include <grpcpp/security/credentials.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <memory>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "membroker/v1/admin.grpc.pb.h"
#include "membroker/v1/agent.grpc.pb.h"
#include "tests/util/broker_process.h"
#include "tests/util/child_process.h"
#include "tests/util/http.h"

ABSL_FLAG(int, streams, 1000, "agent streams (phases A and B)");
ABSL_FLAG(int, watchers, 200, "WatchDecisions streams that never read (phase C)");
ABSL_FLAG(int, vms, 10, "VMs per agent report (phase B)");
ABSL_FLAG(int, seconds, 20, "how long phase C drives decisions");

namespace {

constexpr uint64_t kGiB = uint64_t{1} << 30;
constexpr int kStreamsPerChannel = 50;  // below the broker's 100 per connection

// Channels of their own connection each, kStreamsPerChannel streams apiece.
class Channels {
 public:
  explicit Channels(int port) : port_(port) {}
  std::shared_ptr<grpc::Channel> Next() {
    if (channels_.empty() || used_ % kStreamsPerChannel == 0) {
      grpc::ChannelArguments args;
      args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
      args.SetInt("mb.bench.channel", static_cast<int>(channels_.size()));
      channels_.push_back(grpc::CreateCustomChannel(absl::StrCat("127.0.0.1:", port_),
                                                    grpc::InsecureChannelCredentials(), args));
    }
    ++used_;
    return channels_.back();
  }

 private:
  const int port_;
  std::vector<std::shared_ptr<grpc::Channel>> channels_;
  int used_ = 0;
};

// An agent stream held open by this process; it never reads.
struct AgentStream {
  std::unique_ptr<grpc::ClientContext> ctx;
  std::unique_ptr<membroker::v1::AgentService::Stub> stub;
  std::unique_ptr<
      grpc::ClientReaderWriter<membroker::v1::AgentMessage, membroker::v1::BrokerMessage>>
      rw;
  bool alive = true;
};

AgentStream OpenAgent(Channels& channels) {
  AgentStream s;
  s.ctx = std::make_unique<grpc::ClientContext>();
  s.stub = membroker::v1::AgentService::NewStub(channels.Next());
  s.rw = s.stub->Connect(s.ctx.get());
  return s;
}

void Close(std::vector<AgentStream>& streams) {
  for (auto& s : streams) s.ctx->TryCancel();
  streams.clear();
}

// A counter of the broker's /metrics ("" labels: the first series).
double BrokerCounter(int port, const std::string& series) {
  auto reply = membroker::testing::HttpGet(port, "/metrics");
  if (!reply.ok()) return -1;
  const size_t at = reply->body.find(series + " ");
  if (at == std::string::npos) return 0;
  return std::stod(reply->body.substr(at + series.size() + 1));
}

double RssMiB(pid_t pid) {
  std::ifstream f("/proc/" + std::to_string(pid) + "/status");
  std::string line;
  while (std::getline(f, line)) {
    if (line.rfind("VmRSS:", 0) == 0) return std::stod(line.substr(6)) / 1024.0;
  }
  return -1;
}

membroker::v1::AgentMessage Report(int host, uint64_t seq, int vms, int round) {
  membroker::v1::AgentMessage m;
  auto* r = m.mutable_report();
  r->set_sequence(seq);
  for (int i = 0; i < vms; ++i) {
    auto* v = r->add_vms();
    v->set_vm_id(absl::StrCat("bench-", host, "-", i));
    v->set_name(absl::StrCat("vm-", i));
    v->set_max_bytes(4 * kGiB);
    v->set_actual_bytes(4 * kGiB);
    v->set_health(membroker::v1::BALLOON_HEALTH_OK);
    auto* g = v->mutable_stats();
    g->set_total_bytes(4 * kGiB);
    // Usage moves every round, so every report changes the decision.
    const uint64_t used = (1 + (i + round) % 3) * kGiB / 2;
    g->set_available_bytes(4 * kGiB - used);
    g->set_age_seconds(0);
    g->set_swap_in_bytes_total(0);
    g->set_major_faults_total(0);
  }
  return m;
}

}  // namespace

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  std::setvbuf(stdout, nullptr, _IOLBF, 0);
  const int n = absl::GetFlag(FLAGS_streams), w = absl::GetFlag(FLAGS_watchers),
            vms = absl::GetFlag(FLAGS_vms), seconds = absl::GetFlag(FLAGS_seconds);
  char tmpl[] = "/tmp/mb_bench_limits_XXXXXX";
  if (!mkdtemp(tmpl)) return 1;
  const std::filesystem::path dir = tmpl;
  membroker::testing::ChildProcess broker;
  auto ports = membroker::testing::StartBroker(
      broker, MB_BROKER_BIN, (dir / "state").string(), (dir / "broker.log").string(),
      absl::Seconds(30),
      {absl::StrCat("--max-streams-per-peer=", 2 * n + w + 10), "--log-level=warn"});
  if (!ports.ok()) {
    std::fprintf(stderr, "broker: %s\n", std::string(ports.status().message()).c_str());
    return 1;
  }
  const pid_t pid = broker.pid();
  std::this_thread::sleep_for(std::chrono::seconds(1));
  std::printf("%-58s %8s\n", "broker state", "VmRSS");
  std::printf("%-58s %6.1f MiB\n", "idle", RssMiB(pid));

  Channels channels(ports->grpc);
  {
    std::vector<AgentStream> stalled;
    for (int i = 0; i < n; ++i) stalled.push_back(OpenAgent(channels));
    std::this_thread::sleep_for(std::chrono::seconds(3));
    std::printf("%-58s %6.1f MiB\n", absl::StrCat("A: ", n, " streams open, no hello").c_str(),
                RssMiB(pid));
    std::this_thread::sleep_for(std::chrono::seconds(10));
    std::printf("%-58s %6.1f MiB  (%g ended by the broker)\n", "A: after the hello timeout (10 s)",
                RssMiB(pid),
                BrokerCounter(ports->metrics,
                              "membroker_reports_rejected_total{reason=\"hello_timeout\"}"));
    Close(stalled);
  }
  std::this_thread::sleep_for(std::chrono::seconds(2));
  std::printf("%-58s %6.1f MiB\n", "A: streams closed", RssMiB(pid));

  std::vector<AgentStream> agents;
  std::vector<uint64_t> seq(n, 0);
  for (int i = 0; i < n; ++i) {
    agents.push_back(OpenAgent(channels));
    membroker::v1::AgentMessage hello;
    hello.mutable_hello()->set_host_id(absl::StrCat("bench-host-", i));
    hello.mutable_hello()->set_capacity_bytes(static_cast<uint64_t>(vms) * 2 * kGiB);
    hello.mutable_hello()->set_backend("bench");
    agents.back().alive = agents.back().rw->Write(hello);
  }
  // Each report is a full snapshot with moving numbers: a new decision,
  // pushed to an agent that never reads it.
  auto report_all = [&](int round) {
    for (int i = 0; i < n; ++i) {
      if (agents[i].alive) agents[i].alive = agents[i].rw->Write(Report(i, ++seq[i], vms, round));
    }
  };
  report_all(0);
  std::this_thread::sleep_for(std::chrono::seconds(3));
  int alive = 0;
  for (const auto& a : agents) alive += a.alive ? 1 : 0;
  std::printf("%-58s %6.1f MiB  (%d streams up)\n",
              absl::StrCat("B: ", n, " agents (", vms, " VMs each) that never read").c_str(),
              RssMiB(pid), alive);

  struct Watcher {
    std::unique_ptr<grpc::ClientContext> ctx;
    std::unique_ptr<membroker::v1::AdminService::Stub> stub;
    std::unique_ptr<grpc::ClientReader<membroker::v1::Decision>> reader;
  };
  std::vector<Watcher> watchers;
  for (int i = 0; i < w; ++i) {
    Watcher x;
    x.ctx = std::make_unique<grpc::ClientContext>();
    x.stub = membroker::v1::AdminService::NewStub(channels.Next());
    x.reader = x.stub->WatchDecisions(x.ctx.get(), membroker::v1::WatchDecisionsRequest());
    watchers.push_back(std::move(x));
  }
  for (int s = 1; s <= seconds; ++s) {
    const absl::Time round_start = absl::Now();
    report_all(s);
    const absl::Duration left = absl::Seconds(1) - (absl::Now() - round_start);
    if (left > absl::ZeroDuration()) std::this_thread::sleep_for(absl::ToChronoMicroseconds(left));
    if (s % 5 == 0 || s == seconds) {
      std::printf(
          "%-58s %6.1f MiB  (%g ended as fallen behind)\n",
          absl::StrCat("C: + ", w, " watchers that never read, ", s, " rounds of reports").c_str(),
          RssMiB(pid),
          BrokerCounter(ports->metrics,
                        "membroker_reports_rejected_total{reason=\"watch_fell_behind\"}"));
    }
  }
  for (auto& x : watchers) x.ctx->TryCancel();
  Close(agents);
  std::fflush(stdout);
  broker.Stop();
  std::filesystem::remove_all(dir);
  return 0;
}

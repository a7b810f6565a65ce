// WatchVms / WatchHosts through the real AdminService in-process on
// 127.0.0.1:0: a snapshot, then only what changed, removals, and a slow
// watcher dropped with RESOURCE_EXHAUSTED while a fast one keeps going.
// The hub's period is an hour: the test steps it with ScanNow, so what
// each scan sends is known. Waits are bounded.

#include <grpcpp/create_channel.h>
#include <grpcpp/security/credentials.h>
#include <gtest/gtest.h>

#include <list>
#include <memory>
#include <set>
#include <thread>

#include "broker/server.h"
#include "membroker/v1/admin.grpc.pb.h"
#include "membroker/v1/agent.grpc.pb.h"
#include "tests/util/in_process_broker.h"

namespace membroker::broker {
namespace {

using ::membroker::testing::InProcessBroker;

constexpr uint64_t kMiB = uint64_t{1} << 20;
constexpr uint64_t kGiB = uint64_t{1} << 30;

v1::VmSample Vm(const std::string& id, uint64_t actual, uint64_t used, uint64_t free = 0) {
  v1::VmSample s;
  s.set_vm_id(id);
  s.set_name("name-" + id);
  s.set_max_bytes(4 * kGiB);
  s.set_actual_bytes(actual);
  s.set_health(v1::BALLOON_HEALTH_OK);
  s.mutable_stats()->set_total_bytes(actual);
  s.mutable_stats()->set_available_bytes(actual - used);
  s.mutable_stats()->set_free_bytes(free == 0 ? actual - used : free);
  s.mutable_stats()->set_age_seconds(0);
  s.mutable_stats()->set_swap_in_bytes_total(0);
  s.mutable_stats()->set_major_faults_total(0);
  return s;
}

std::chrono::system_clock::time_point In(int seconds) {
  return std::chrono::system_clock::now() + std::chrono::seconds(seconds);
}

class WatchServiceTest : public ::testing::Test {
 protected:
  void TearDown() override {
    for (auto& s : streams_) {
      s.ctx->TryCancel();
      s.rw->Finish().IgnoreError();
    }
    streams_.clear();
    server_.Stop();
  }
  void StartBroker(size_t max_queued, size_t batch) {
    BrokerOptions o;
    o.watch.period = absl::Hours(1);
    o.watch.max_queued = max_queued;
    o.watch.batch = batch;
    const absl::Status started = server_.Start(o);
    ASSERT_TRUE(started.ok()) << started;
  }

  struct Agent {
    std::unique_ptr<grpc::ClientContext> ctx;
    std::unique_ptr<grpc::ClientReaderWriter<v1::AgentMessage, v1::BrokerMessage>> rw;
    std::string host;
    uint64_t sequence = 0;
  };
  // Connects a host of 64 GiB (every VM fits at its max).
  Agent* Connect(const std::string& host) {
    Agent& a = streams_.emplace_back();
    a.host = host;
    a.ctx = std::make_unique<grpc::ClientContext>();
    a.ctx->set_deadline(In(60));
    a.rw = server_.agent()->Connect(a.ctx.get());
    v1::AgentMessage hello;
    hello.mutable_hello()->set_host_id(host);
    hello.mutable_hello()->set_capacity_bytes(64 * kGiB);
    hello.mutable_hello()->set_host_total_bytes(64 * kGiB);
    hello.mutable_hello()->set_backend("sim");
    EXPECT_TRUE(a.rw->Write(hello));
    v1::BrokerMessage m;
    EXPECT_TRUE(a.rw->Read(&m));
    return &a;
  }
  // Reports `vms` and waits until the broker has folded the report in.
  void Report(Agent* a, const std::vector<v1::VmSample>& vms) {
    v1::AgentMessage r;
    r.mutable_report()->set_sequence(++a->sequence);
    for (const auto& v : vms) *r.mutable_report()->add_vms() = v;
    ASSERT_TRUE(a->rw->Write(r));
    for (auto until = In(20); std::chrono::system_clock::now() < until;) {
      grpc::ClientContext ctx;
      v1::GetHostRequest req;
      req.set_host_id(a->host);
      v1::Host h;
      if (server_.admin()->GetHost(&ctx, req, &h).ok() && h.report_sequence() == a->sequence)
        return;
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    FAIL() << "report " << a->sequence << " of " << a->host << " not seen";
  }
  // Waits until the hub knows `n` watchers.
  void AwaitWatchers(size_t n) {
    for (auto until = In(20); std::chrono::system_clock::now() < until;) {
      if (server_.broker().watch_hub().WatcherCount() == n) return;
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    FAIL() << "watchers: " << server_.broker().watch_hub().WatcherCount() << ", expected " << n;
  }
  static std::set<std::string> Ids(const google::protobuf::RepeatedPtrField<v1::Vm>& vms) {
    std::set<std::string> out;
    for (const auto& v : vms) out.insert(v.vm_id());
    return out;
  }

  InProcessBroker server_{"mb_watch_test"};
  std::list<Agent> streams_;
};

TEST_F(WatchServiceTest, VmsSnapshotThenChangesOnlyAndRemovals) {
  StartBroker(/*max_queued=*/1024, /*batch=*/500);
  Agent* h1 = Connect("h1");
  Agent* h2 = Connect("h2");
  Report(h1, {Vm("a", 4 * kGiB, kGiB), Vm("b", 4 * kGiB, kGiB)});
  Report(h2, {Vm("c", 4 * kGiB, kGiB)});
  grpc::ClientContext ctx;
  ctx.set_deadline(In(60));
  v1::WatchVmsRequest req;
  req.set_host_id("h1");
  auto reader = server_.admin()->WatchVms(&ctx, req);
  AwaitWatchers(1);
  server_.broker().watch_hub().ScanNow();
  v1::VmEvent e;
  ASSERT_TRUE(reader->Read(&e));
  EXPECT_EQ(e.type(), v1::VmEvent::TYPE_SNAPSHOT);
  EXPECT_EQ(Ids(e.vms()), (std::set<std::string>{"a", "b"}));  // h1 only
  ASSERT_TRUE(reader->Read(&e));
  EXPECT_EQ(e.type(), v1::VmEvent::TYPE_SNAPSHOT_END);

  // b's guest statistics move (free memory) but nothing an operator
  // watches; a's balloon moves: only a is sent. h2's change is filtered.
  Report(h1, {Vm("a", 3 * kGiB, kGiB), Vm("b", 4 * kGiB, kGiB, 2 * kGiB)});
  Report(h2, {Vm("c", 3 * kGiB, kGiB)});
  server_.broker().watch_hub().ScanNow();
  ASSERT_TRUE(reader->Read(&e));
  EXPECT_EQ(e.type(), v1::VmEvent::TYPE_CHANGES);
  ASSERT_EQ(Ids(e.vms()), (std::set<std::string>{"a"}));
  EXPECT_EQ(e.vms(0).actual_bytes(), 3 * kGiB);
  EXPECT_EQ(e.removed_size(), 0);

  // A scan with nothing changed sends nothing: the next event is b's removal.
  server_.broker().watch_hub().ScanNow();
  Report(h1, {Vm("a", 3 * kGiB, kGiB)});
  server_.broker().watch_hub().ScanNow();
  ASSERT_TRUE(reader->Read(&e));
  EXPECT_EQ(e.type(), v1::VmEvent::TYPE_CHANGES);
  EXPECT_EQ(e.vms_size(), 0);
  ASSERT_EQ(e.removed_size(), 1);
  EXPECT_EQ(e.removed(0).vm_id(), "b");
  EXPECT_EQ(e.removed(0).host_id(), "h1");

  // A policy change is a change of the VM.
  grpc::ClientContext pctx;
  v1::SetVmPolicyRequest pol;
  pol.set_vm("a");
  pol.mutable_policy()->set_weight(300);
  v1::VmPolicy stored;
  ASSERT_TRUE(server_.admin()->SetVmPolicy(&pctx, pol, &stored).ok());
  server_.broker().watch_hub().ScanNow();
  ASSERT_TRUE(reader->Read(&e));
  ASSERT_EQ(Ids(e.vms()), (std::set<std::string>{"a"}));
  EXPECT_EQ(e.vms(0).policy().weight(), 300u);
}

TEST_F(WatchServiceTest, HostsSnapshotThenChanges) {
  StartBroker(1024, 500);
  Agent* h1 = Connect("h1");
  Report(h1, {Vm("a", 4 * kGiB, kGiB)});
  grpc::ClientContext ctx;
  ctx.set_deadline(In(60));
  auto reader = server_.admin()->WatchHosts(&ctx, v1::WatchHostsRequest());
  AwaitWatchers(1);
  server_.broker().watch_hub().ScanNow();
  v1::HostEvent e;
  ASSERT_TRUE(reader->Read(&e));
  EXPECT_EQ(e.type(), v1::HostEvent::TYPE_SNAPSHOT);
  ASSERT_EQ(e.hosts_size(), 1);
  EXPECT_EQ(e.hosts(0).host_id(), "h1");
  ASSERT_TRUE(reader->Read(&e));
  EXPECT_EQ(e.type(), v1::HostEvent::TYPE_SNAPSHOT_END);
  // The same numbers again (a new sequence only): no change. Then a new
  // host: only it is sent.
  Report(h1, {Vm("a", 4 * kGiB, kGiB)});
  Agent* h2 = Connect("h2");
  Report(h2, {Vm("c", 2 * kGiB, kGiB)});
  server_.broker().watch_hub().ScanNow();
  ASSERT_TRUE(reader->Read(&e));
  EXPECT_EQ(e.type(), v1::HostEvent::TYPE_CHANGES);
  ASSERT_EQ(e.hosts_size(), 1);
  EXPECT_EQ(e.hosts(0).host_id(), "h2");
  EXPECT_EQ(e.hosts(0).actual_bytes(), 2 * kGiB);
}

TEST_F(WatchServiceTest, SlowWatcherIsDroppedFastOneKeepsGoing) {
  // One VM per event, at most 64 unsent events per watcher.
  StartBroker(/*max_queued=*/64, /*batch=*/1);
  Agent* h1 = Connect("h1");
  constexpr int kVms = 20;
  // Long names (200 characters, near the 256 allowed) make each event
  // about half a KiB, so a reader that stops reading fills the stream's
  // flow-control window within a few rounds.
  auto vms = [&](int round) {
    std::vector<v1::VmSample> out;
    for (int i = 0; i < kVms; ++i) {
      v1::VmSample v = Vm("vm-" + std::to_string(i), 4 * kGiB - (round % 2) * 64 * kMiB, kGiB);
      v.set_name(std::string(200, static_cast<char>('a' + i)));
      out.push_back(v);
    }
    return out;
  };
  Report(h1, vms(0));
  // The slow watcher never reads; its channel keeps a small window.
  grpc::ChannelArguments args;
  args.SetInt(GRPC_ARG_HTTP2_BDP_PROBE, 0);
  args.SetInt(GRPC_ARG_HTTP2_STREAM_LOOKAHEAD_BYTES, 8192);
  auto slow_channel =
      grpc::CreateCustomChannel(server_.target(), grpc::InsecureChannelCredentials(), args);
  auto slow_stub = v1::AdminService::NewStub(slow_channel);
  grpc::ClientContext slow_ctx;
  slow_ctx.set_deadline(In(120));
  auto slow = slow_stub->WatchVms(&slow_ctx, v1::WatchVmsRequest());
  grpc::ClientContext fast_ctx;
  fast_ctx.set_deadline(In(120));
  auto fast = server_.admin()->WatchVms(&fast_ctx, v1::WatchVmsRequest());
  AwaitWatchers(2);
  server_.broker().watch_hub().ScanNow();  // both snapshots: 20 events and the end
  v1::VmEvent e;
  while (fast->Read(&e) && e.type() != v1::VmEvent::TYPE_SNAPSHOT_END) {
  }
  ASSERT_EQ(e.type(), v1::VmEvent::TYPE_SNAPSHOT_END);
  // Each round changes every VM: 20 one-VM events per watcher. The fast
  // watcher reads them all; the slow one falls behind and is dropped.
  auto read_round = [&]() {
    for (int i = 0; i < kVms; ++i) {
      if (!fast->Read(&e)) return false;
      if (e.type() != v1::VmEvent::TYPE_CHANGES || e.vms_size() != 1) return false;
    }
    return true;
  };
  int round = 1;
  for (; round <= 300 && server_.broker().watch_hub().DroppedCount() == 0; ++round) {
    Report(h1, vms(round));
    server_.broker().watch_hub().ScanNow();
    ASSERT_TRUE(read_round()) << "round " << round;
  }
  ASSERT_EQ(server_.broker().watch_hub().DroppedCount(), 1u);
  // The fast one keeps getting changes after the drop.
  Report(h1, vms(round));
  server_.broker().watch_hub().ScanNow();
  EXPECT_TRUE(read_round());
  // The slow one: what was sent, then RESOURCE_EXHAUSTED naming the limit.
  while (slow->Read(&e)) {
  }
  grpc::Status s = slow->Finish();
  EXPECT_EQ(s.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << s.error_message();
  EXPECT_NE(s.error_message().find("more than 64 events"), std::string::npos) << s.error_message();
  AwaitWatchers(1);
  fast_ctx.TryCancel();
  while (fast->Read(&e)) {
  }
  fast->Finish().IgnoreError();
}

}  // namespace
}  // namespace membroker::broker

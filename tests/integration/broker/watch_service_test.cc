// WatchVms / WatchHosts through the real AdminService in-process on
// 127.0.0.1:0: a snapshot, then only what changed, removals, and a slow
// watcher dropped with RESOURCE_EXHAUSTED while a fast one keeps going.
// The hub's period is an hour: the test steps it with ScanNow, so what
// each scan sends is known. Waits are bounded.

#include <grpcpp/create_channel.h>
#include <grpcpp/security/credentials.h>
#include <gtest/gtest.h>

#include <list>
#include <map>
#include <memory>
#include <set>
#include <thread>

#include "absl/strings/str_cat.h"
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
  void StartBroker(size_t max_queued, size_t batch, size_t max_queued_bytes = size_t{16} << 20,
                   size_t max_total_bytes = size_t{256} << 20) {
    BrokerOptions o;
    o.watch.period = absl::Hours(1);
    o.watch.max_queued = max_queued;
    o.watch.batch = batch;
    o.watch.max_queued_bytes = max_queued_bytes;
    o.watch.max_total_bytes = max_total_bytes;
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
  // A channel whose watcher reads only when the test reads: no BDP probe
  // and a small stream window, so the broker cannot send far ahead.
  std::unique_ptr<v1::AdminService::Stub> SmallWindowStub() {
    grpc::ChannelArguments args;
    args.SetInt(GRPC_ARG_HTTP2_BDP_PROBE, 0);
    args.SetInt(GRPC_ARG_HTTP2_STREAM_LOOKAHEAD_BYTES, 8192);
    small_window_channels_.push_back(
        grpc::CreateCustomChannel(server_.target(), grpc::InsecureChannelCredentials(), args));
    return v1::AdminService::NewStub(small_window_channels_.back());
  }
  // `n` VMs named "<host>-vm-<i>" with 200-character names (each about a
  // KiB in the broker's events).
  static std::vector<v1::VmSample> BigVms(const std::string& host, int n, uint64_t actual) {
    std::vector<v1::VmSample> out;
    for (int i = 0; i < n; ++i) {
      v1::VmSample v = Vm(host + "-vm-" + std::to_string(i), actual, kGiB);
      v.set_name(host + std::string(200 - host.size(), static_cast<char>('a' + i % 26)) +
                 std::to_string(i));
      out.push_back(v);
    }
    return out;
  }
  static std::set<std::string> Ids(const google::protobuf::RepeatedPtrField<v1::Vm>& vms) {
    std::set<std::string> out;
    for (const auto& v : vms) out.insert(v.vm_id());
    return out;
  }

  InProcessBroker server_{"mb_watch_test"};
  std::list<Agent> streams_;
  std::vector<std::shared_ptr<grpc::Channel>> small_window_channels_;
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

TEST_F(WatchServiceTest, WatchOfAnUnknownHostIsNotFoundAndNotCountedAsBehind) {
  StartBroker(/*max_queued=*/1024, /*batch=*/500);
  Report(Connect("h1"), {Vm("a", 4 * kGiB, kGiB)});
  grpc::ClientContext ctx;
  ctx.set_deadline(In(60));
  v1::WatchVmsRequest req;
  req.set_host_id("nope");
  auto reader = server_.admin()->WatchVms(&ctx, req);
  v1::VmEvent e;
  EXPECT_FALSE(reader->Read(&e));
  grpc::Status s = reader->Finish();
  EXPECT_EQ(s.error_code(), grpc::StatusCode::NOT_FOUND) << s.error_message();
  EXPECT_NE(s.error_message().find("\"nope\" is not known"), std::string::npos)
      << s.error_message();
  AwaitWatchers(0);
  EXPECT_EQ(server_.broker().watch_hub().DroppedCount(), 0u);
  EXPECT_EQ(::membroker::testing::MetricValue(server_.broker().metrics(),
                                              "membroker_reports_rejected_total",
                                              {{"reason", "watch_fell_behind"}}),
            -1);
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

TEST_F(WatchServiceTest, BigSnapshotIsReadHostByHostAsTheWatcherDrains) {
  // 20 hosts x 30 VMs of about a KiB each: some 600 KiB of snapshot, ten
  // times what one watcher may hold unsent (64 KiB).
  constexpr size_t kBudget = 64 << 10;
  StartBroker(/*max_queued=*/1024, /*batch=*/10, kBudget);
  constexpr int kHosts = 20;
  constexpr int kVmsPerHost = 30;
  for (int h = 0; h < kHosts; ++h) {
    const std::string host = absl::StrCat("h", h < 10 ? "0" : "", h);
    Report(Connect(host), BigVms(host, kVmsPerHost, 4 * kGiB));
  }
  auto stub = SmallWindowStub();
  grpc::ClientContext ctx;
  ctx.set_deadline(In(120));
  auto reader = stub->WatchVms(&ctx, v1::WatchVmsRequest());
  // Nothing read yet: the snapshot pauses at the budget instead of being
  // queued whole (or the watcher being dropped for it). The hub's period
  // is an hour: from here on only the watcher's reading drives it.
  AwaitWatchers(1);
  for (int i = 0; i < 20; ++i) {
    EXPECT_LE(server_.broker().watch_hub().QueuedBytes(), kBudget);
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  EXPECT_GT(server_.broker().watch_hub().QueuedBytes(), 0u);
  EXPECT_EQ(server_.broker().watch_hub().DroppedCount(), 0u);
  // Reading drains it: every VM once, then SNAPSHOT_END.
  std::set<std::string> seen;
  v1::VmEvent e;
  while (reader->Read(&e) && e.type() == v1::VmEvent::TYPE_SNAPSHOT) {
    for (const auto& vm : e.vms()) EXPECT_TRUE(seen.insert(vm.vm_id()).second) << vm.vm_id();
    EXPECT_LE(server_.broker().watch_hub().QueuedBytes(), kBudget);
  }
  ASSERT_EQ(e.type(), v1::VmEvent::TYPE_SNAPSHOT_END);
  EXPECT_EQ(seen.size(), static_cast<size_t>(kHosts * kVmsPerHost));
  EXPECT_EQ(server_.broker().watch_hub().DroppedCount(), 0u);
  // Then changes.
  Report(&*std::next(streams_.begin(), 3), BigVms("h03", 1, 2 * kGiB));
  server_.broker().watch_hub().ScanNow();
  // One VM changed and the others went, in events of at most 10.
  int changed = 0;
  int removed = 0;
  while (changed + removed < kVmsPerHost && reader->Read(&e)) {
    EXPECT_EQ(e.type(), v1::VmEvent::TYPE_CHANGES);
    changed += e.vms_size();
    removed += e.removed_size();
  }
  EXPECT_EQ(changed, 1);
  EXPECT_EQ(removed, kVmsPerHost - 1);
  ctx.TryCancel();
  while (reader->Read(&e)) {
  }
  reader->Finish().IgnoreError();
}

TEST_F(WatchServiceTest, ChangesDuringASnapshotLeaveTheWatcherWithTheFleetsState) {
  // The snapshot (some 600 KiB) pauses at half of 256 KiB; the changes
  // below fit in what is left.
  StartBroker(/*max_queued=*/1024, /*batch=*/10, /*max_queued_bytes=*/256 << 10);
  constexpr int kHosts = 20;
  for (int h = 0; h < kHosts; ++h) {
    const std::string host = absl::StrCat("h", h < 10 ? "0" : "", h);
    Report(Connect(host), BigVms(host, 30, 4 * kGiB));
  }
  auto stub = SmallWindowStub();
  grpc::ClientContext ctx;
  ctx.set_deadline(In(120));
  auto reader = stub->WatchVms(&ctx, v1::WatchVmsRequest());
  AwaitWatchers(1);
  // Wait until the snapshot has paused part-way (the watcher reads
  // nothing yet), then change hosts it has read and hosts it has not:
  // balloons move, VMs go, and a host that was not there arrives.
  for (auto until = In(20); server_.broker().watch_hub().QueuedBytes() == 0 &&
                            std::chrono::system_clock::now() < until;) {
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  ASSERT_GT(server_.broker().watch_hub().QueuedBytes(), 0u);
  auto host = [&](int h) { return &*std::next(streams_.begin(), h); };
  for (int h : {0, 1, 10, 19}) {
    std::vector<v1::VmSample> vms = BigVms(host(h)->host, 30, 3 * kGiB);
    vms.resize(20);  // ten VMs go
    Report(host(h), vms);
  }
  Agent* late = Connect("h99");
  Report(late, BigVms("h99", 5, 2 * kGiB));
  server_.broker().watch_hub().ScanNow();
  // One more change after everything else, to know when the watcher has
  // caught up.
  Report(late, BigVms("h99", 6, 2 * kGiB));
  server_.broker().watch_hub().ScanNow();

  // The watcher's view: snapshot, then changes applied in order.
  std::map<std::string, uint64_t> view;  // vm_id -> actual_bytes
  v1::VmEvent e;
  // The last change may come before the rest of the snapshot (changes of
  // hosts read are sent at once): read until both were seen.
  bool caught_up = false;
  bool snapshot_ended = false;
  while (!(caught_up && snapshot_ended) && reader->Read(&e)) {
    if (e.type() == v1::VmEvent::TYPE_SNAPSHOT_END) snapshot_ended = true;
    for (const auto& vm : e.vms()) {
      view[vm.vm_id()] = vm.actual_bytes();
      if (vm.vm_id() == "h99-vm-5") caught_up = true;
    }
    for (const auto& vm : e.removed()) view.erase(vm.vm_id());
  }
  ASSERT_TRUE(caught_up && snapshot_ended) << reader->Finish().error_message();
  EXPECT_EQ(server_.broker().watch_hub().DroppedCount(), 0u);
  grpc::ClientContext lctx;
  v1::ListVmsRequest lreq;
  v1::ListVmsResponse fleet;
  ASSERT_TRUE(server_.admin()->ListVms(&lctx, lreq, &fleet).ok());
  std::map<std::string, uint64_t> truth;
  for (const auto& vm : fleet.vms()) truth[vm.vm_id()] = vm.actual_bytes();
  EXPECT_EQ(truth.size(), static_cast<size_t>(16 * 30 + 4 * 20 + 6));
  EXPECT_EQ(view, truth);
  ctx.TryCancel();
  while (reader->Read(&e)) {
  }
  reader->Finish().IgnoreError();
}

TEST_F(WatchServiceTest, WatcherOverItsByteBudgetIsEndedNamingIt) {
  // The count bound is far away: only the bytes can end it.
  constexpr size_t kBudget = 32 << 10;
  StartBroker(/*max_queued=*/100000, /*batch=*/1, kBudget);
  Agent* h1 = Connect("h1");
  Report(h1, BigVms("h1", 20, 4 * kGiB));
  auto stub = SmallWindowStub();
  grpc::ClientContext ctx;
  ctx.set_deadline(In(120));
  auto reader = stub->WatchVms(&ctx, v1::WatchVmsRequest());
  AwaitWatchers(1);
  // Every round moves every balloon: 20 one-VM events the watcher never
  // reads. It holds at most its budget, then is ended.
  for (int round = 1; round <= 300 && server_.broker().watch_hub().DroppedCount() == 0; ++round) {
    Report(h1, BigVms("h1", 20, 4 * kGiB - (round % 2) * 64 * kMiB));
    server_.broker().watch_hub().ScanNow();
    EXPECT_LE(server_.broker().watch_hub().QueuedBytes(), kBudget);
  }
  ASSERT_EQ(server_.broker().watch_hub().DroppedCount(), 1u);
  EXPECT_EQ(server_.broker().watch_hub().QueuedBytes(), 0u);
  EXPECT_EQ(::membroker::testing::MetricValue(server_.broker().metrics(),
                                              "membroker_reports_rejected_total",
                                              {{"reason", "watch_fell_behind"}}),
            1);
  v1::VmEvent e;
  while (reader->Read(&e)) {
  }
  grpc::Status s = reader->Finish();
  EXPECT_EQ(s.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << s.error_message();
  EXPECT_NE(s.error_message().find("above the per-watcher budget of 32768 bytes"),
            std::string::npos)
      << s.error_message();
  AwaitWatchers(0);
}

}  // namespace
}  // namespace membroker::broker

// The broker's edge under bad and excessive input, in-process on
// 127.0.0.1:0: garbage bytes and invalid UTF-8 on the agent stream end it
// with INVALID_ARGUMENT (counted, no state change); an ack with thousands
// of errors logs one line; oversized messages and reports are refused
// naming the limit; stream caps (per peer, watchers) and the hello timeout
// hold; disconnected hosts expire with their metric series.

#include <grpcpp/create_channel.h>
#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/security/credentials.h>
#include <gtest/gtest.h>
#include <spdlog/sinks/ostream_sink.h>
#include <spdlog/spdlog.h>

#include <atomic>
#include <chrono>
#include <functional>
#include <memory>
#include <sstream>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "broker/report.h"
#include "broker/server.h"
#include "broker/server_limits.h"
#include "membroker/v1/admin.grpc.pb.h"
#include "membroker/v1/agent.grpc.pb.h"
#include "tests/util/in_process_broker.h"

namespace membroker::broker {
namespace {

using ::membroker::testing::InProcessBroker;
using ::membroker::testing::MetricValue;

constexpr uint64_t kMiB = uint64_t{1} << 20;
constexpr uint64_t kGiB = uint64_t{1} << 30;

std::chrono::system_clock::time_point Deadline(int seconds = 20) {
  return std::chrono::system_clock::now() + std::chrono::seconds(seconds);
}

// Polls `done` every 10 ms for at most `seconds`.
bool WaitFor(const std::function<bool()>& done, int seconds = 30) {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(seconds);
  while (std::chrono::steady_clock::now() < deadline) {
    if (done()) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return done();
}

v1::VmSample Vm(const std::string& id, uint64_t max) {
  v1::VmSample s;
  s.set_vm_id(id);
  s.set_name(id);
  s.set_max_bytes(max);
  s.set_actual_bytes(max);
  s.set_health(v1::BALLOON_HEALTH_OK);
  s.mutable_stats()->set_total_bytes(max);
  s.mutable_stats()->set_available_bytes(max / 2);
  s.mutable_stats()->set_age_seconds(0);
  s.mutable_stats()->set_swap_in_bytes_total(0);
  s.mutable_stats()->set_major_faults_total(0);
  return s;
}

v1::AgentMessage Hello(const std::string& host) {
  v1::AgentMessage m;
  m.mutable_hello()->set_host_id(host);
  m.mutable_hello()->set_capacity_bytes(8 * kGiB);
  m.mutable_hello()->set_backend("sim");
  return m;
}

v1::AgentMessage Report(uint64_t seq, std::vector<v1::VmSample> vms) {
  v1::AgentMessage m;
  m.mutable_report()->set_sequence(seq);
  for (auto& v : vms) *m.mutable_report()->add_vms() = v;
  return m;
}

// A protobuf length-delimited field (tag, length, bytes); lengths < 128.
std::string Field(int number, const std::string& bytes) {
  std::string out;
  out.push_back(static_cast<char>(number << 3 | 2));
  out.push_back(static_cast<char>(bytes.size()));
  return out + bytes;
}

class BrokerLimitsTest : public ::testing::Test {
 protected:
  void TearDown() override { server_.Stop(); }

  void Start(ServerLimits limits = {}, Clock* clock = RealClock::Get()) {
    BrokerOptions o;
    o.limits = limits;
    const absl::Status started = server_.Start(o, clock);
    ASSERT_TRUE(started.ok()) << started;
  }

  struct Stream {
    std::unique_ptr<grpc::ClientContext> ctx;
    std::unique_ptr<grpc::ClientReaderWriter<v1::AgentMessage, v1::BrokerMessage>> rw;
  };
  Stream Open() {
    Stream s;
    s.ctx = std::make_unique<grpc::ClientContext>();
    s.ctx->set_deadline(Deadline());
    s.rw = server_.agent()->Connect(s.ctx.get());
    return s;
  }
  // Opens a stream and says Hello; the Welcome has arrived on return.
  Stream Connected(const std::string& host) {
    Stream s = Open();
    EXPECT_TRUE(s.rw->Write(Hello(host)));
    v1::BrokerMessage m;
    EXPECT_TRUE(s.rw->Read(&m));
    EXPECT_TRUE(m.has_welcome());
    return s;
  }

  // Sends `bytes` raw as one message on a new agent stream (after `before`,
  // serialized messages sent first) and returns how the stream ended.
  grpc::Status SendRaw(const std::vector<std::string>& before, const std::string& bytes) {
    grpc::GenericStub stub(server_.channel());
    grpc::ClientContext ctx;
    ctx.set_deadline(Deadline());
    grpc::CompletionQueue cq;
    auto call = stub.PrepareCall(&ctx, "/membroker.v1.AgentService/Connect", &cq);
    void* tag;
    bool ok;
    call->StartCall(reinterpret_cast<void*>(1));
    cq.Next(&tag, &ok);
    auto send = [&](const std::string& b) {
      grpc::Slice slice(b);
      grpc::ByteBuffer buffer(&slice, 1);
      call->Write(buffer, reinterpret_cast<void*>(2));
      cq.Next(&tag, &ok);
    };
    for (const std::string& b : before) send(b);
    send(bytes);
    // Read until the stream ends.
    grpc::ByteBuffer in;
    for (int i = 0; i < 10; ++i) {
      call->Read(&in, reinterpret_cast<void*>(3));
      cq.Next(&tag, &ok);
      if (!ok) break;
    }
    grpc::Status status;
    call->Finish(&status, reinterpret_cast<void*>(4));
    cq.Next(&tag, &ok);
    call.reset();
    cq.Shutdown();
    while (cq.Next(&tag, &ok)) {
    }
    return status;
  }

  int HostCount() {
    grpc::ClientContext ctx;
    v1::ListHostsResponse hosts;
    EXPECT_TRUE(server_.admin()->ListHosts(&ctx, {}, &hosts).ok());
    return hosts.hosts_size();
  }

  ManualClock manual_clock_;  // outlives the broker that may use it
  InProcessBroker server_{"mb_limits_test"};
};

TEST_F(BrokerLimitsTest, GarbageBytesEndTheStreamWithInvalidArgumentAndAreCounted) {
  Start();
  grpc::Status st = SendRaw({}, std::string("\xff\xff\xff\xff\xff\x01garbage", 13));
  EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << st.error_message();
  EXPECT_NE(st.error_message().find("not a valid membroker.v1.AgentMessage"), std::string::npos)
      << st.error_message();
  EXPECT_EQ(MetricValue(server_.broker().metrics(), "membroker_reports_rejected_total",
                        {{"reason", "malformed"}}),
            1);
  EXPECT_EQ(HostCount(), 0);
}

TEST_F(BrokerLimitsTest, InvalidUtf8IsInvalidArgumentAndChangesNothing) {
  Start();
  // A Hello whose host_id is the bytes C3 28 (not UTF-8).
  const std::string bad_hello = Field(1, Field(1, "\xc3\x28"));
  grpc::Status st = SendRaw({}, bad_hello);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << st.error_message();
  EXPECT_EQ(HostCount(), 0);

  // After a good Hello, a report whose only VM id is not UTF-8.
  std::string hello;
  ASSERT_TRUE(Hello("h1").SerializeToString(&hello));
  v1::AgentMessage good = Report(1, {Vm("vm-a", kGiB)});
  std::string report;
  ASSERT_TRUE(good.SerializeToString(&report));
  const size_t at = report.find("vm-a");
  ASSERT_NE(at, std::string::npos);
  report[at] = '\xc3';
  report[at + 1] = '\x28';
  st = SendRaw({hello}, report);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << st.error_message();
  EXPECT_EQ(MetricValue(server_.broker().metrics(), "membroker_reports_rejected_total",
                        {{"reason", "malformed"}}),
            2);
  // The host said hello but no VM was taken from the bad report.
  grpc::ClientContext ctx;
  v1::ListVmsResponse vms;
  ASSERT_TRUE(server_.admin()->ListVms(&ctx, {}, &vms).ok());
  EXPECT_EQ(vms.vms_size(), 0);
}

TEST_F(BrokerLimitsTest, UnknownFieldsAreNotStored) {
  Start();
  v1::AgentMessage report = Report(1, {Vm("vm-a", kGiB)});
  // An unknown field (number 999) of 1000 bytes inside the VM sample.
  v1::VmSample* vm = report.mutable_report()->mutable_vms(0);
  vm->GetReflection()->MutableUnknownFields(vm)->AddLengthDelimited(999, std::string(1000, 'u'));
  // And one in its guest statistics, a message inside the sample.
  v1::GuestStats* stats = vm->mutable_stats();
  stats->GetReflection()->MutableUnknownFields(stats)->AddLengthDelimited(998,
                                                                          std::string(1000, 's'));
  Stream s = Connected("h1");
  ASSERT_TRUE(s.rw->Write(report));
  v1::BrokerMessage m;
  ASSERT_TRUE(s.rw->Read(&m));
  ASSERT_TRUE(m.has_targets());
  grpc::ClientContext ctx;
  v1::ListVmsResponse vms;
  ASSERT_TRUE(server_.admin()->ListVms(&ctx, {}, &vms).ok());
  ASSERT_EQ(vms.vms_size(), 1);
  std::string out;
  ASSERT_TRUE(vms.vms(0).SerializeToString(&out));
  EXPECT_EQ(out.find(std::string(1000, 'u')), std::string::npos) << "unknown field echoed";
  EXPECT_EQ(out.find(std::string(1000, 's')), std::string::npos)
      << "unknown field of the guest statistics echoed";
  s.ctx->TryCancel();
}

TEST_F(BrokerLimitsTest, AckWithTenThousandErrorsLogsOneLine) {
  Start();
  std::ostringstream log;
  auto previous = spdlog::default_logger();
  auto logger = std::make_shared<spdlog::logger>(
      "capture", std::make_shared<spdlog::sinks::ostream_sink_mt>(log));
  spdlog::set_default_logger(logger);
  Stream s = Connected("h1");
  ASSERT_TRUE(s.rw->Write(Report(1, {Vm("vm-a", kGiB)})));
  v1::BrokerMessage m;
  ASSERT_TRUE(s.rw->Read(&m));
  ASSERT_TRUE(m.has_targets());
  v1::AgentMessage ack;
  ack.mutable_ack()->set_generation(m.targets().generation());
  for (int i = 0; i < kMaxAckErrors; ++i) {
    (*ack.mutable_ack()->mutable_errors())["vm-" + std::to_string(i)] = "balloon stuck";
  }
  // Twenty such acks: one line each at most, and at most the limiter's
  // burst (5 per 10 s per host) in all.
  for (int i = 0; i < 20; ++i) ASSERT_TRUE(s.rw->Write(ack));
  // One more message whose effect proves the acks were handled: a host
  // listing after a report with a new sequence.
  ASSERT_TRUE(s.rw->Write(Report(2, {Vm("vm-a", kGiB), Vm("vm-b", kGiB)})));
  ASSERT_TRUE(s.rw->Read(&m));
  spdlog::set_default_logger(previous);
  const std::string text = log.str();
  size_t lines = 0;
  for (size_t pos = 0; (pos = text.find("not applied", pos)) != std::string::npos; ++pos) ++lines;
  EXPECT_GE(lines, 1u);
  EXPECT_LE(lines, 5u) << text.substr(0, 2000);
  EXPECT_NE(text.find("(+9995 more)"), std::string::npos) << text.substr(0, 2000);
  EXPECT_LT(text.size(), 8000u);

  // One error more than there are VMs allowed on a host: refused.
  (*ack.mutable_ack()->mutable_errors())["one-too-many"] = "x";
  ASSERT_TRUE(s.rw->Write(ack));
  s.rw->WritesDone();
  while (s.rw->Read(&m)) {
  }
  grpc::Status st = s.rw->Finish();
  EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(st.error_message().find("at most 10000"), std::string::npos) << st.error_message();
  EXPECT_EQ(MetricValue(server_.broker().metrics(), "membroker_reports_rejected_total",
                        {{"reason", "invalid_ack"}}),
            1);
}

TEST_F(BrokerLimitsTest, TooManyVmsIsRefusedNamingTheLimit) {
  Start();
  Stream s = Connected("h1");
  std::vector<v1::VmSample> vms;
  for (int i = 0; i <= kMaxVmsPerHost; ++i) vms.push_back(Vm("vm-" + std::to_string(i), kGiB));
  ASSERT_TRUE(s.rw->Write(Report(1, vms)));
  s.rw->WritesDone();
  v1::BrokerMessage m;
  while (s.rw->Read(&m)) EXPECT_FALSE(m.has_targets());
  grpc::Status st = s.rw->Finish();
  EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(st.error_message().find("at most 10000 VMs"), std::string::npos) << st.error_message();
}

TEST_F(BrokerLimitsTest, MessageAboveTheLargestLegalReportIsResourceExhausted) {
  Start();
  EXPECT_GT(LargestLegalAgentMessageBytes(), 4u << 20);  // 10 000 full VM samples
  EXPECT_LT(LargestLegalAgentMessageBytes(), 64u << 20);
  Stream s = Connected("h1");
  v1::AgentMessage big = Report(1, {Vm("vm-a", kGiB)});
  big.mutable_report()->mutable_vms(0)->set_name(
      std::string(LargestLegalAgentMessageBytes() + 1, 'n'));
  s.rw->Write(big);
  v1::BrokerMessage m;
  while (s.rw->Read(&m)) {
  }
  grpc::Status st = s.rw->Finish();
  EXPECT_EQ(st.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << st.error_message();
}

// A 10 000-character name in any admin call is refused with
// INVALID_ARGUMENT naming the limit, in an error far below a client's
// metadata limit (8 KiB by default: above it the client sees
// RESOURCE_EXHAUSTED and its connection is torn down); the same channel
// then serves an ordinary call. A name within the limit that matches
// nothing is quoted only by a short prefix.
TEST_F(BrokerLimitsTest, OverlongNamesInAdminCallsAreRefusedWithShortErrors) {
  Start();
  Stream s = Connected("h1");
  ASSERT_TRUE(s.rw->Write(Report(1, {Vm("vm-a", kGiB)})));
  const std::string huge(10000, 'n');
  std::vector<std::pair<std::string, std::function<grpc::Status(grpc::ClientContext*)>>> calls;
  calls.emplace_back("GetHost", [&](grpc::ClientContext* ctx) {
    v1::GetHostRequest req;
    req.set_host_id(huge);
    v1::Host resp;
    return server_.admin()->GetHost(ctx, req, &resp);
  });
  calls.emplace_back("ListVms", [&](grpc::ClientContext* ctx) {
    v1::ListVmsRequest req;
    req.set_host_id(huge);
    v1::ListVmsResponse resp;
    return server_.admin()->ListVms(ctx, req, &resp);
  });
  calls.emplace_back("GetVm", [&](grpc::ClientContext* ctx) {
    v1::GetVmRequest req;
    req.set_vm(huge);
    v1::Vm resp;
    return server_.admin()->GetVm(ctx, req, &resp);
  });
  calls.emplace_back("ExplainVm", [&](grpc::ClientContext* ctx) {
    v1::ExplainVmRequest req;
    req.set_vm(huge);
    v1::Explanation resp;
    return server_.admin()->ExplainVm(ctx, req, &resp);
  });
  calls.emplace_back("SetVmPolicy", [&](grpc::ClientContext* ctx) {
    v1::SetVmPolicyRequest req;
    req.set_vm(huge);
    req.mutable_policy()->set_pinned(true);
    v1::VmPolicy resp;
    return server_.admin()->SetVmPolicy(ctx, req, &resp);
  });
  calls.emplace_back("ClearVmPolicy", [&](grpc::ClientContext* ctx) {
    v1::ClearVmPolicyRequest req;
    req.set_vm(huge);
    v1::ClearVmPolicyResponse resp;
    return server_.admin()->ClearVmPolicy(ctx, req, &resp);
  });
  calls.emplace_back("Reserve", [&](grpc::ClientContext* ctx) {
    v1::ReserveRequest req;
    req.set_host_id(huge);
    v1::Reservation resp;
    return server_.admin()->Reserve(ctx, req, &resp);
  });
  calls.emplace_back("Release", [&](grpc::ClientContext* ctx) {
    v1::ReleaseRequest req;
    req.set_id(huge);
    v1::ReleaseResponse resp;
    return server_.admin()->Release(ctx, req, &resp);
  });
  calls.emplace_back("ListAuditEntries", [&](grpc::ClientContext* ctx) {
    v1::ListAuditEntriesRequest req;
    req.set_target(huge);
    v1::ListAuditEntriesResponse resp;
    return server_.admin()->ListAuditEntries(ctx, req, &resp);
  });
  calls.emplace_back("WatchDecisions", [&](grpc::ClientContext* ctx) {
    v1::WatchDecisionsRequest req;
    req.set_host_id(huge);
    auto reader = server_.admin()->WatchDecisions(ctx, req);
    v1::Decision d;
    while (reader->Read(&d)) {
    }
    return reader->Finish();
  });
  for (const auto& [method, call] : calls) {
    grpc::ClientContext ctx;
    ctx.set_deadline(Deadline());
    const grpc::Status st = call(&ctx);
    EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT)
        << method << ": " << st.error_message().substr(0, 200);
    EXPECT_LT(st.error_message().size(), 512u) << method;
    EXPECT_NE(st.error_message().find("at most"), std::string::npos)
        << method << ": " << st.error_message().substr(0, 200);
    // The connection is still good: an ordinary call on it succeeds.
    grpc::ClientContext next;
    next.set_deadline(Deadline());
    v1::ListHostsResponse hosts;
    const grpc::Status after = server_.admin()->ListHosts(&next, {}, &hosts);
    EXPECT_TRUE(after.ok()) << "after " << method << ": " << after.error_message();
    EXPECT_EQ(hosts.hosts_size(), 1) << "after " << method;
  }
  // A name within the limit that matches nothing: NOT_FOUND quoting a
  // short prefix and the name's size.
  grpc::ClientContext ctx;
  ctx.set_deadline(Deadline());
  v1::GetVmRequest req;
  req.set_vm(std::string(250, 'v'));
  v1::Vm vm;
  const grpc::Status st = server_.admin()->GetVm(&ctx, req, &vm);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::NOT_FOUND) << st.error_message();
  EXPECT_NE(st.error_message().find("(250 bytes)"), std::string::npos) << st.error_message();
  EXPECT_EQ(st.error_message().find(std::string(65, 'v')), std::string::npos) << st.error_message();
  s.ctx->TryCancel();
}

TEST_F(BrokerLimitsTest, StreamsPerPeerAreCapped) {
  ServerLimits limits;
  limits.max_streams_per_peer = 2;
  Start(limits);
  Stream a = Connected("h1");
  Stream b = Connected("h2");
  Stream c = Open();
  c.rw->Write(Hello("h3"));
  v1::BrokerMessage m;
  EXPECT_FALSE(c.rw->Read(&m));
  grpc::Status st = c.rw->Finish();
  EXPECT_EQ(st.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_NE(st.error_message().find("max_streams_per_peer"), std::string::npos)
      << st.error_message();
  EXPECT_EQ(MetricValue(server_.broker().metrics(), "membroker_reports_rejected_total",
                        {{"reason", "agent_streams_limit"}}),
            1);
  // Closing one makes room again.
  a.ctx->TryCancel();
  a.rw->Finish();
  bool admitted = false;
  for (int i = 0; i < 200 && !admitted; ++i) {
    Stream d = Open();
    d.rw->Write(Hello("h4"));
    admitted = d.rw->Read(&m) && m.has_welcome();
    d.ctx->TryCancel();
    d.rw->Finish();
    if (!admitted) std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  EXPECT_TRUE(admitted);
  b.ctx->TryCancel();
}

TEST_F(BrokerLimitsTest, WatchersAreCapped) {
  ServerLimits limits;
  limits.max_watch_streams = 1;
  Start(limits);
  grpc::ClientContext first;
  first.set_deadline(Deadline());
  auto w1 = server_.admin()->WatchDecisions(&first, {});
  // The first watcher is registered once a decision reaches it.
  Stream s = Connected("h1");
  ASSERT_TRUE(s.rw->Write(Report(1, {Vm("vm-a", kGiB)})));
  v1::Decision d;
  ASSERT_TRUE(w1->Read(&d));
  grpc::ClientContext second;
  second.set_deadline(Deadline());
  auto w2 = server_.admin()->WatchDecisions(&second, {});
  EXPECT_FALSE(w2->Read(&d));
  grpc::Status st = w2->Finish();
  EXPECT_EQ(st.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_NE(st.error_message().find("max_watch_streams"), std::string::npos) << st.error_message();
  first.TryCancel();
  s.ctx->TryCancel();
}

// A watcher that never reads holds at most its byte budget of decisions:
// once it falls behind it is ended with RESOURCE_EXHAUSTED saying so,
// counted, and unregistered; a watcher that reads stays.
TEST_F(BrokerLimitsTest, WatcherThatFallsBehindIsEndedAndCounted) {
  ServerLimits limits;
  limits.watch_buffer_bytes = 64 << 10;
  Start(limits);
  // The stalled watcher has a connection of its own. It is the only
  // watcher while decisions pile up, so the one ended is this one.
  grpc::ChannelArguments args;
  args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
  auto stalled_channel =
      grpc::CreateCustomChannel(server_.target(), grpc::InsecureChannelCredentials(), args);
  auto stalled_admin = v1::AdminService::NewStub(stalled_channel);
  grpc::ClientContext stalled_ctx;
  stalled_ctx.set_deadline(Deadline(120));
  auto stalled = stalled_admin->WatchDecisions(&stalled_ctx, {});
  ASSERT_TRUE(WaitFor([&] { return server_.broker().fleet().WatcherCount() == 1; }));

  // Large decisions (200 VMs whose numbers move every report) until the
  // broker gives up on the stalled watcher; bounded.
  Stream s = Connected("h1");
  auto dropped = [&] {
    return MetricValue(server_.broker().metrics(), "membroker_reports_rejected_total",
                       {{"reason", "watch_fell_behind"}});
  };
  uint64_t seq = 0;
  auto report = [&](int round) {
    std::vector<v1::VmSample> vms;
    for (int i = 0; i < 200; ++i) {
      v1::VmSample v = Vm("vm-" + std::to_string(i) + std::string(60, 'x'), 4 * kGiB);
      v.mutable_stats()->set_available_bytes((1 + (i + round) % 3) * kGiB);
      vms.push_back(std::move(v));
    }
    return s.rw->Write(Report(++seq, vms));
  };
  int round = 0;
  for (; round < 5000 && dropped() < 1; ++round) {
    ASSERT_TRUE(report(round));
    if (round % 50 == 49) std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  ASSERT_EQ(dropped(), 1) << "the stalled watcher was never ended";
  // It gets what was already on its way, then the status.
  v1::Decision d;
  while (stalled->Read(&d)) {
  }
  const grpc::Status st = stalled->Finish();
  EXPECT_EQ(st.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << st.error_message();
  EXPECT_NE(st.error_message().find("fell behind"), std::string::npos) << st.error_message();
  EXPECT_NE(st.error_message().find(std::to_string(64 << 10)), std::string::npos)
      << st.error_message();
  EXPECT_TRUE(WaitFor([&] { return server_.broker().fleet().WatcherCount() == 0; }));

  // A watcher that keeps up is served under the same budget: each report
  // waits (bounded) until the watcher has read its decision.
  grpc::ClientContext reading_ctx;
  reading_ctx.set_deadline(Deadline(120));
  auto reading = server_.admin()->WatchDecisions(&reading_ctx, {});
  ASSERT_TRUE(WaitFor([&] { return server_.broker().fleet().WatcherCount() == 1; }));
  std::atomic<int> read{0};
  std::thread reader([&] {
    v1::Decision r;
    while (reading->Read(&r)) ++read;
  });
  for (int i = 0; i < 20; ++i) {
    const int before = read.load();
    if (!report(++round)) break;
    // A report that changes no target has no decision to wait for.
    WaitFor([&] { return read.load() > before; }, 3);
  }
  EXPECT_GT(read.load(), 0);
  EXPECT_EQ(dropped(), 1) << "a watcher that reads was ended";
  EXPECT_EQ(server_.broker().fleet().WatcherCount(), 1u);
  reading_ctx.TryCancel();
  reader.join();
  s.ctx->TryCancel();
}

TEST_F(BrokerLimitsTest, StreamWithoutHelloIsEndedAtTheHelloTimeout) {
  ServerLimits limits;
  limits.hello_timeout = absl::Milliseconds(200);
  Start(limits);
  Stream s = Open();
  v1::BrokerMessage m;
  EXPECT_FALSE(s.rw->Read(&m));  // ends at the hello timeout, well before the 20 s deadline
  grpc::Status st = s.rw->Finish();
  EXPECT_EQ(st.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED) << st.error_message();
  EXPECT_NE(st.error_message().find("no hello"), std::string::npos) << st.error_message();
  EXPECT_EQ(MetricValue(server_.broker().metrics(), "membroker_reports_rejected_total",
                        {{"reason", "hello_timeout"}}),
            1);
  // A stream that says hello in time is not ended by it.
  Stream ok = Connected("h1");
  std::this_thread::sleep_for(std::chrono::milliseconds(400));
  ASSERT_TRUE(ok.rw->Write(Report(1, {Vm("vm-a", kGiB)})));
  ASSERT_TRUE(ok.rw->Read(&m));
  EXPECT_TRUE(m.has_targets());
  ok.ctx->TryCancel();
}

TEST_F(BrokerLimitsTest, DisconnectedHostsExpireWithTheirSeries) {
  ManualClock& clock = manual_clock_;
  ServerLimits limits;
  limits.host_expiry = absl::Minutes(10);
  Start(limits, &clock);
  {
    Stream s = Connected("h1");
    ASSERT_TRUE(s.rw->Write(Report(1, {Vm("vm-a", kGiB)})));
    v1::BrokerMessage m;
    ASSERT_TRUE(s.rw->Read(&m));
    s.rw->WritesDone();
    while (s.rw->Read(&m)) {
    }
    s.rw->Finish();
  }
  Stream other = Connected("h2");  // connected: never expires
  // Wait (bounded) until the broker has seen h1's stream end.
  for (int i = 0;
       i < 500 && MetricValue(server_.broker().metrics(), "membroker_connected_agents") != 1; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  ASSERT_EQ(MetricValue(server_.broker().metrics(), "membroker_connected_agents"), 1);
  EXPECT_EQ(HostCount(), 2);
  EXPECT_GE(MetricValue(server_.broker().metrics(), "membroker_vm_target_bytes", {{"host", "h1"}}),
            0);
  clock.Advance(absl::Minutes(9));
  EXPECT_EQ(server_.broker().fleet().ExpireHosts(limits.host_expiry), 0u);
  EXPECT_EQ(HostCount(), 2);
  clock.Advance(absl::Minutes(2));
  // The broker's own sweep runs on the clock's time; wait for it.
  for (int i = 0; i < 500 && HostCount() != 1; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  EXPECT_EQ(HostCount(), 1);
  EXPECT_EQ(MetricValue(server_.broker().metrics(), "membroker_vm_target_bytes", {{"host", "h1"}}),
            -1);
  EXPECT_EQ(
      MetricValue(server_.broker().metrics(), "membroker_host_capacity_bytes", {{"host", "h1"}}),
      -1);
  EXPECT_GE(
      MetricValue(server_.broker().metrics(), "membroker_host_capacity_bytes", {{"host", "h2"}}),
      0);
  // The host comes back as new.
  Stream again = Connected("h1");
  EXPECT_EQ(HostCount(), 2);
  again.ctx->TryCancel();
  other.ctx->TryCancel();
}

TEST(ServerLimitsTest, PeerAddressDropsThePort) {
  EXPECT_EQ(PeerAddress("ipv4:10.0.0.5:4242"), "ipv4:10.0.0.5");
  EXPECT_EQ(PeerAddress("ipv6:[::1]:4242"), "ipv6:[::1]");
  EXPECT_EQ(PeerAddress("unix:/run/x.sock"), "unix:/run/x.sock");
}

TEST(ServerLimitsTest, ConfigIsValidated) {
  ServerLimits l;
  v1::BrokerLimits c;
  c.set_max_agent_streams(5);
  c.mutable_host_expiry()->set_seconds(30);
  ASSERT_TRUE(MergeLimitsConfig(c, &l).ok());
  EXPECT_EQ(l.max_agent_streams, 5);
  EXPECT_EQ(l.host_expiry, absl::Seconds(30));
  c.set_max_agent_streams(0);
  EXPECT_EQ(MergeLimitsConfig(c, &l).code(), absl::StatusCode::kInvalidArgument);
  c.set_max_agent_streams(5);
  c.mutable_host_expiry()->set_seconds(-1);
  EXPECT_EQ(MergeLimitsConfig(c, &l).code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace membroker::broker

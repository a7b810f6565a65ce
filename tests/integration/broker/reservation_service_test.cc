// Reservations through the real AdminService in-process on 127.0.0.1:0:
// one that is met when the host's report shows the room free, one that
// cannot be met (FAILED_PRECONDITION naming the floors), one whose wait
// ends with DEADLINE_EXCEEDED naming the balloon still moving, one that
// expires, one handed to the VM it was made for, and one that survives a
// broker restart. Waits are bounded by deadlines.

#include <gtest/gtest.h>

#include <future>
#include <memory>
#include <thread>

#include "broker/server.h"
#include "membroker/v1/admin.grpc.pb.h"
#include "membroker/v1/agent.grpc.pb.h"
#include "tests/util/in_process_broker.h"

namespace membroker::broker {
namespace {

using ::membroker::testing::InProcessBroker;
using ::membroker::testing::RoundNumberPolicy;

constexpr uint64_t kMiB = uint64_t{1} << 20;
constexpr uint64_t kGiB = uint64_t{1} << 30;
constexpr char kNewVm[] = "7d1c0a2e-5555-4b4b-8e8e-00000000000a";

v1::VmSample Vm(const std::string& id, const std::string& name, uint64_t max, uint64_t actual,
                uint64_t used) {
  v1::VmSample s;
  s.set_vm_id(id);
  s.set_name(name);
  s.set_max_bytes(max);
  s.set_actual_bytes(actual);
  s.set_health(v1::BALLOON_HEALTH_OK);
  s.mutable_stats()->set_total_bytes(actual);
  s.mutable_stats()->set_available_bytes(actual - used);
  s.mutable_stats()->set_free_bytes(actual - used);
  s.mutable_stats()->set_age_seconds(0);
  s.mutable_stats()->set_swap_in_bytes_total(0);
  s.mutable_stats()->set_major_faults_total(0);
  return s;
}

double Gauge(BrokerMetrics& m, const std::string& name, const std::string& host) {
  for (const auto& family : m.registry()->Collect()) {
    if (family.name != name) continue;
    for (const auto& metric : family.metric) {
      for (const auto& l : metric.label) {
        if (l.name == "host" && l.value == host) return metric.gauge.value;
      }
    }
  }
  return -1;
}

std::chrono::system_clock::time_point In(int seconds) {
  return std::chrono::system_clock::now() + std::chrono::seconds(seconds);
}

class ReservationServiceTest : public ::testing::Test {
 protected:
  void SetUp() override { StartBroker(); }
  void TearDown() override {
    if (stream_.rw) {
      stream_.ctx->TryCancel();
      stream_.rw->Finish().IgnoreError();
    }
    server_.Stop();
  }
  void StartBroker() {
    BrokerOptions o;
    o.cluster_policy = RoundNumberPolicy();
    const absl::Status started = server_.Start(o);
    ASSERT_TRUE(started.ok()) << started;
  }

  // Connects host `host` (capacity 8 GiB) and reports `vms` as sequence 1;
  // returns the first targets.
  std::map<std::string, uint64_t> Connect(const std::string& host,
                                          const std::vector<v1::VmSample>& vms) {
    stream_.ctx = std::make_unique<grpc::ClientContext>();
    stream_.ctx->set_deadline(In(30));
    stream_.rw = server_.agent()->Connect(stream_.ctx.get());
    v1::AgentMessage hello;
    hello.mutable_hello()->set_host_id(host);
    hello.mutable_hello()->set_capacity_bytes(8 * kGiB);
    hello.mutable_hello()->set_host_total_bytes(16 * kGiB);
    hello.mutable_hello()->set_backend("sim");
    EXPECT_TRUE(stream_.rw->Write(hello));
    v1::BrokerMessage m;
    EXPECT_TRUE(stream_.rw->Read(&m));
    EXPECT_TRUE(m.has_welcome());
    SendReport(vms);
    return NextTargets();
  }
  void SendReport(const std::vector<v1::VmSample>& vms) {
    v1::AgentMessage r;
    r.mutable_report()->set_sequence(++sequence_);
    for (const auto& v : vms) *r.mutable_report()->add_vms() = v;
    ASSERT_TRUE(stream_.rw->Write(r));
  }
  std::map<std::string, uint64_t> NextTargets() {
    v1::BrokerMessage m;
    std::map<std::string, uint64_t> out;
    if (!stream_.rw->Read(&m) || !m.has_targets()) return out;
    for (const auto& t : m.targets().targets()) out[t.vm_id()] = t.target_bytes();
    return out;
  }
  grpc::Status Reserve(const v1::ReserveRequest& req, v1::Reservation* out) {
    grpc::ClientContext ctx;
    ctx.set_deadline(In(30));
    return server_.admin()->Reserve(&ctx, req, out);
  }
  std::vector<v1::Reservation> List() {
    grpc::ClientContext ctx;
    v1::ListReservationsResponse resp;
    EXPECT_TRUE(server_.admin()->ListReservations(&ctx, {}, &resp).ok());
    return {resp.reservations().begin(), resp.reservations().end()};
  }
  v1::Host GetHost(const std::string& id) {
    grpc::ClientContext ctx;
    v1::GetHostRequest req;
    req.set_host_id(id);
    v1::Host h;
    EXPECT_TRUE(server_.admin()->GetHost(&ctx, req, &h).ok());
    return h;
  }
  static v1::ReserveRequest Request(const std::string& host, uint64_t bytes, int wait_seconds) {
    v1::ReserveRequest r;
    r.set_host_id(host);
    r.set_bytes(bytes);
    r.mutable_wait()->set_seconds(wait_seconds);
    return r;
  }

  struct {
    std::unique_ptr<grpc::ClientContext> ctx;
    std::unique_ptr<grpc::ClientReaderWriter<v1::AgentMessage, v1::BrokerMessage>> rw;
  } stream_;
  uint64_t sequence_ = 0;
  InProcessBroker server_{"mb_reservation_test"};
};

TEST_F(ReservationServiceTest, MetWhenTheReportShowsTheRoomFree) {
  // web-1: max 6 GiB, at 6 GiB, uses 1 GiB; capacity 8 GiB: it keeps 6.
  auto t = Connect("h1", {Vm("vm-web", "web-1", 6 * kGiB, 6 * kGiB, 1 * kGiB)});
  ASSERT_EQ(t["vm-web"], 6 * kGiB);
  // 4 GiB reserved: capacity for the decision 8 - 4 = 4 GiB, web-1 -> 4.
  auto call = std::async(std::launch::async, [&] {
    v1::Reservation r;
    grpc::Status s = Reserve(Request("h1", 4 * kGiB, 20), &r);
    return std::make_pair(s, r);
  });
  t = NextTargets();
  ASSERT_EQ(t["vm-web"], 4 * kGiB);
  EXPECT_EQ(Gauge(server_.broker().metrics(), "membroker_host_reserved_bytes", "h1"),
            static_cast<double>(4 * kGiB));
  // Only when the balloon has moved (8 - 4 = 4 GiB free) is the call met.
  SendReport({Vm("vm-web", "web-1", 6 * kGiB, 4 * kGiB, 1 * kGiB)});
  ASSERT_EQ(call.wait_for(std::chrono::seconds(25)), std::future_status::ready);
  auto [status, reservation] = call.get();
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_TRUE(reservation.ready());
  EXPECT_EQ(reservation.bytes(), 4 * kGiB);
  EXPECT_EQ(GetHost("h1").reserved_bytes(), 4 * kGiB);
  ASSERT_EQ(List().size(), 1u);
  EXPECT_TRUE(List()[0].ready());
  // Released: the room goes back to the VM.
  grpc::ClientContext ctx;
  v1::ReleaseRequest rel;
  rel.set_id(reservation.id());
  v1::ReleaseResponse rr;
  ASSERT_TRUE(server_.admin()->Release(&ctx, rel, &rr).ok());
  EXPECT_EQ(NextTargets()["vm-web"], 6 * kGiB);
  EXPECT_TRUE(List().empty());
  grpc::ClientContext again;
  EXPECT_EQ(server_.admin()->Release(&again, rel, &rr).error_code(), grpc::StatusCode::NOT_FOUND);
}

TEST_F(ReservationServiceTest, CannotFitNamesTheFloors) {
  Connect("h1", {Vm("vm-db", "db-1", 6 * kGiB, 6 * kGiB, 1 * kGiB),
                 Vm("vm-web", "web-1", 2 * kGiB, 2 * kGiB, 1 * kGiB)});
  grpc::ClientContext pctx;
  v1::SetVmPolicyRequest pol;
  pol.set_vm("db-1");
  pol.mutable_policy()->set_min_bytes(5 * kGiB);
  v1::VmPolicy stored;
  ASSERT_TRUE(server_.admin()->SetVmPolicy(&pctx, pol, &stored).ok());
  // Floors: db-1 5 GiB (operator min), web-1 1 GiB (used): 6 of 8 GiB;
  // 3 GiB more cannot fit.
  v1::Reservation r;
  grpc::Status s = Reserve(Request("h1", 3 * kGiB, 5), &r);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::FAILED_PRECONDITION) << s.error_message();
  EXPECT_NE(s.error_message().find("db-1 5 GiB (operator min)"), std::string::npos)
      << s.error_message();
  EXPECT_NE(s.error_message().find("web-1"), std::string::npos) << s.error_message();
  EXPECT_TRUE(List().empty());
  EXPECT_EQ(GetHost("h1").reserved_bytes(), 0u);
  // An unknown host, a bad size: clear errors, nothing stored.
  EXPECT_EQ(Reserve(Request("nope", kGiB, 0), &r).error_code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_EQ(Reserve(Request("h1", 0, 0), &r).error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_TRUE(List().empty());
}

TEST_F(ReservationServiceTest, DeadlineNamesTheBalloonStillMoving) {
  Connect("h1", {Vm("vm-web", "web-1", 6 * kGiB, 6 * kGiB, 1 * kGiB)});
  // The agent never reports the balloon at its new target.
  v1::Reservation r;
  grpc::Status s = Reserve(Request("h1", 4 * kGiB, 1), &r);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED) << s.error_message();
  EXPECT_NE(s.error_message().find("web-1 (actual 6 GiB, target 4 GiB)"), std::string::npos)
      << s.error_message();
  // A failed reservation is gone and its room given back.
  EXPECT_TRUE(List().empty());
  EXPECT_EQ(GetHost("h1").reserved_bytes(), 0u);
}

TEST_F(ReservationServiceTest, ACallerThatGoesAwayLeavesNoReservation) {
  Connect("h1", {Vm("vm-web", "web-1", 6 * kGiB, 6 * kGiB, 1 * kGiB)});
  // The room is never reported free; the caller gives up after 1 s of a
  // 60 s wait (its own deadline), so the broker sees the call cancelled.
  grpc::ClientContext ctx;
  ctx.set_deadline(In(1));
  v1::Reservation r;
  grpc::Status s = server_.admin()->Reserve(&ctx, Request("h1", 4 * kGiB, 60), &r);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED) << s.error_message();
  // Bounded wait for the broker to end the wait and give the room back.
  const absl::Time bound = absl::Now() + absl::Seconds(30);
  while ((!List().empty() || GetHost("h1").reserved_bytes() != 0) && absl::Now() < bound) {
    absl::SleepFor(absl::Milliseconds(20));
  }
  EXPECT_TRUE(List().empty());
  EXPECT_EQ(GetHost("h1").reserved_bytes(), 0u);
}

TEST_F(ReservationServiceTest, ExpiresAtItsTtl) {
  Connect("h1", {Vm("vm-web", "web-1", 2 * kGiB, 2 * kGiB, 1 * kGiB)});
  v1::ReserveRequest req = Request("h1", 2 * kGiB, 0);
  req.mutable_ttl()->set_seconds(1);
  v1::Reservation r;
  ASSERT_TRUE(Reserve(req, &r).ok());
  EXPECT_TRUE(r.ready());  // 8 - 2 = 6 GiB free already
  EXPECT_EQ(List().size(), 1u);
  bool gone = false;
  for (auto until = In(20); !gone && std::chrono::system_clock::now() < until;) {
    gone = List().empty();
    if (!gone) std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  EXPECT_TRUE(gone);
  EXPECT_EQ(GetHost("h1").reserved_bytes(), 0u);
  EXPECT_EQ(Gauge(server_.broker().metrics(), "membroker_host_reserved_bytes", "h1"), 0);
}

TEST_F(ReservationServiceTest, HandedToTheVmThatStartsWithIt) {
  Connect("h1", {Vm("vm-web", "web-1", 2 * kGiB, 2 * kGiB, 1 * kGiB)});
  v1::ReserveRequest req = Request("h1", 3 * kGiB, 0);
  req.set_for_vm_id(kNewVm);
  v1::Reservation r;
  ASSERT_TRUE(Reserve(req, &r).ok());
  EXPECT_EQ(r.for_vm_id(), kNewVm);
  EXPECT_EQ(GetHost("h1").reserved_bytes(), 3 * kGiB);
  // Another VM starting takes nothing.
  SendReport({Vm("vm-web", "web-1", 2 * kGiB, 2 * kGiB, 1 * kGiB),
              Vm("7d1c0a2e-5555-4b4b-8e8e-00000000000b", "other", kGiB, kGiB, 512 * kMiB)});
  NextTargets();
  EXPECT_EQ(List().size(), 1u);
  // The VM it was made for starts: the reservation ends, its memory is the VM's.
  SendReport({Vm("vm-web", "web-1", 2 * kGiB, 2 * kGiB, 1 * kGiB),
              Vm(kNewVm, "new-1", 3 * kGiB, 3 * kGiB, 1 * kGiB)});
  NextTargets();
  EXPECT_TRUE(List().empty());
  EXPECT_EQ(GetHost("h1").reserved_bytes(), 0u);
  EXPECT_EQ(Gauge(server_.broker().metrics(), "membroker_host_reserved_bytes", "h1"), 0);
}

TEST_F(ReservationServiceTest, SurvivesABrokerRestart) {
  Connect("h1", {Vm("vm-web", "web-1", 2 * kGiB, 2 * kGiB, 1 * kGiB)});
  v1::Reservation r;
  ASSERT_TRUE(Reserve(Request("h1", 2 * kGiB, 0), &r).ok());
  stream_.ctx->TryCancel();
  stream_.rw->Finish().IgnoreError();
  stream_.rw.reset();
  server_.Stop();
  StartBroker();
  auto list = List();
  ASSERT_EQ(list.size(), 1u);
  EXPECT_EQ(list[0].id(), r.id());
  EXPECT_EQ(list[0].bytes(), 2 * kGiB);
  // The host reconnects: its capacity is net of the reservation again.
  sequence_ = 0;
  Connect("h1", {Vm("vm-web", "web-1", 8 * kGiB, 8 * kGiB, 1 * kGiB)});
  EXPECT_EQ(GetHost("h1").reserved_bytes(), 2 * kGiB);
}

}  // namespace
}  // namespace membroker::broker

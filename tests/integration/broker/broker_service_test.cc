// The broker's gRPC services, in-process on 127.0.0.1:0: status codes,
// validation that changes no state, targets pushed on change, durable
// policies, explain, health checking, and metrics.

#include <grpcpp/generic/generic_stub.h>
#include <gtest/gtest.h>

#include <condition_variable>
#include <memory>
#include <mutex>
#include <thread>

#include "broker/server.h"
#include "membroker/v1/admin.grpc.pb.h"
#include "membroker/v1/agent.grpc.pb.h"
#include "tests/util/in_process_broker.h"

namespace membroker::broker {
namespace {

using ::membroker::testing::InProcessBroker;
using ::membroker::testing::MetricValue;
using ::membroker::testing::RoundNumberPolicy;

constexpr uint64_t kMiB = uint64_t{1} << 20;
constexpr uint64_t kGiB = uint64_t{1} << 30;

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
  s.mutable_stats()->set_age_seconds(0);
  s.mutable_stats()->set_free_bytes(actual - used);
  s.mutable_stats()->set_swap_in_bytes_total(0);
  s.mutable_stats()->set_major_faults_total(0);
  return s;
}

class BrokerServiceTest : public ::testing::Test {
 protected:
  void SetUp() override { StartBroker(); }
  void TearDown() override { server_.Stop(); }
  void StartBroker() {
    BrokerOptions o;
    // Round numbers: no buffer, no margin, big steps.
    o.cluster_policy = RoundNumberPolicy();
    const absl::Status started = server_.Start(o);
    ASSERT_TRUE(started.ok()) << started;
  }

  struct Stream {
    std::unique_ptr<grpc::ClientContext> ctx;
    std::unique_ptr<grpc::ClientReaderWriter<v1::AgentMessage, v1::BrokerMessage>> rw;
  };
  Stream Open() {
    Stream s;
    s.ctx = std::make_unique<grpc::ClientContext>();
    s.ctx->set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(20));
    s.rw = server_.agent()->Connect(s.ctx.get());
    return s;
  }
  static v1::AgentMessage Hello(const std::string& host, uint64_t capacity) {
    v1::AgentMessage m;
    m.mutable_hello()->set_host_id(host);
    m.mutable_hello()->set_capacity_bytes(capacity);
    m.mutable_hello()->set_host_total_bytes(capacity * 2);
    m.mutable_hello()->set_backend("sim");
    return m;
  }
  static v1::AgentMessage Report(uint64_t seq, std::vector<v1::VmSample> vms) {
    v1::AgentMessage m;
    m.mutable_report()->set_sequence(seq);
    for (auto& v : vms) *m.mutable_report()->add_vms() = v;
    return m;
  }

  InProcessBroker server_{"mb_broker_test"};
};

TEST_F(BrokerServiceTest, FirstMessageMustBeHello) {
  Stream s = Open();
  ASSERT_TRUE(s.rw->Write(Report(1, {})));
  s.rw->WritesDone();
  v1::BrokerMessage m;
  EXPECT_FALSE(s.rw->Read(&m));
  grpc::Status st = s.rw->Finish();
  EXPECT_EQ(st.error_code(), grpc::StatusCode::FAILED_PRECONDITION) << st.error_message();
}

TEST_F(BrokerServiceTest, BadHelloIsRejectedAndChangesNothing) {
  Stream s = Open();
  ASSERT_TRUE(s.rw->Write(Hello("bad host!", 8 * kGiB)));
  v1::BrokerMessage m;
  EXPECT_FALSE(s.rw->Read(&m));
  grpc::Status st = s.rw->Finish();
  EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(st.error_message().find("host_id"), std::string::npos) << st.error_message();
  grpc::ClientContext ctx;
  v1::ListHostsResponse hosts;
  ASSERT_TRUE(server_.admin()->ListHosts(&ctx, {}, &hosts).ok());
  EXPECT_EQ(hosts.hosts_size(), 0);
}

TEST_F(BrokerServiceTest, ReportGetsTargetsAtOnceWithinCapacityAndFloors) {
  Stream s = Open();
  ASSERT_TRUE(s.rw->Write(Hello("h1", 5 * kGiB)));
  v1::BrokerMessage m;
  ASSERT_TRUE(s.rw->Read(&m));
  ASSERT_TRUE(m.has_welcome());
  EXPECT_EQ(m.welcome().report_interval().seconds(), 1);
  // idle: max 4 GiB, uses 0.5 GiB. busy: max 4 GiB, uses 2 GiB. Capacity
  // 5 GiB: desired 0.5 + 2 = 2.5 GiB fits; the 2.5 GiB left goes back by
  // weight up to max: rooms 3.5 and 2, equal weights -> +1.25 each:
  // idle 1.75 GiB, busy 3.25 GiB.
  ASSERT_TRUE(s.rw->Write(Report(1, {Vm("vm-idle", "idle", 4 * kGiB, 4 * kGiB, 512 * kMiB),
                                     Vm("vm-busy", "busy", 4 * kGiB, 4 * kGiB, 2 * kGiB)})));
  ASSERT_TRUE(s.rw->Read(&m));
  ASSERT_TRUE(m.has_targets());
  EXPECT_EQ(m.targets().generation(), 1u);
  std::map<std::string, uint64_t> t;
  uint64_t sum = 0;
  for (const auto& x : m.targets().targets()) {
    t[x.vm_id()] = x.target_bytes();
    sum += x.target_bytes();
  }
  EXPECT_EQ(t["vm-idle"], 1792 * kMiB);
  EXPECT_EQ(t["vm-busy"], 3328 * kMiB);
  EXPECT_LE(sum, 5 * kGiB);

  // The same report again (next sequence) changes nothing: no new generation.
  ASSERT_TRUE(s.rw->Write(Report(2, {Vm("vm-idle", "idle", 4 * kGiB, 4 * kGiB, 512 * kMiB),
                                     Vm("vm-busy", "busy", 4 * kGiB, 4 * kGiB, 2 * kGiB)})));
  // An ack for generation 1, then check through the admin API.
  v1::AgentMessage ack;
  ack.mutable_ack()->set_generation(1);
  ASSERT_TRUE(s.rw->Write(ack));
  v1::Host host;
  for (int i = 0; i < 100; ++i) {
    grpc::ClientContext ctx;
    v1::GetHostRequest req;
    req.set_host_id("h1");
    ASSERT_TRUE(server_.admin()->GetHost(&ctx, req, &host).ok());
    if (host.acked_generation() == 1 && host.report_sequence() == 2) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  EXPECT_EQ(host.report_sequence(), 2u);
  EXPECT_EQ(host.generation(), 1u);
  EXPECT_EQ(host.acked_generation(), 1u);
  EXPECT_TRUE(host.connected());
  EXPECT_EQ(host.capacity_bytes(), 5 * kGiB);
  EXPECT_EQ(
      MetricValue(server_.broker().metrics(), "membroker_reports_received_total", {{"host", "h1"}}),
      2);
  EXPECT_EQ(
      MetricValue(server_.broker().metrics(), "membroker_targets_pushed_total", {{"host", "h1"}}),
      1);
  EXPECT_EQ(MetricValue(server_.broker().metrics(), "membroker_connected_agents"), 1);
  EXPECT_EQ(MetricValue(server_.broker().metrics(), "membroker_vm_target_bytes", {{"vm", "idle"}}),
            static_cast<double>(1792 * kMiB));
  EXPECT_EQ(MetricValue(server_.broker().metrics(), "membroker_decision_latency_seconds"), 1);

  // busy now has its 3.25 GiB and uses all of it, and swapped in 512 MiB
  // since the last report: demand = 3.25 + 0.5 + 0.125 (pressure step) =
  // 3.875 GiB. idle (at 1.75 GiB) still uses 0.5. Desired 3.875 + 0.5 =
  // 4.375 GiB; 0.625 GiB surplus: busy's room 0.125 fills, idle +0.5.
  // -> busy 4 GiB, idle 1 GiB, pushed at once.
  v1::VmSample busy = Vm("vm-busy", "busy", 4 * kGiB, 3328 * kMiB, 3328 * kMiB);
  busy.mutable_stats()->set_swap_in_bytes_total(512 * kMiB);
  ASSERT_TRUE(
      s.rw->Write(Report(3, {Vm("vm-idle", "idle", 4 * kGiB, 1792 * kMiB, 512 * kMiB), busy})));
  ASSERT_TRUE(s.rw->Read(&m));
  ASSERT_TRUE(m.has_targets());
  EXPECT_EQ(m.targets().generation(), 2u);
  t.clear();
  for (const auto& x : m.targets().targets()) t[x.vm_id()] = x.target_bytes();
  EXPECT_EQ(t["vm-busy"], 4 * kGiB);
  EXPECT_EQ(t["vm-idle"], 1 * kGiB);
  s.rw->WritesDone();
  s.ctx->TryCancel();
  s.rw->Finish();
}

TEST_F(BrokerServiceTest, MalformedReportIsRejectedAndStateIsUnchanged) {
  Stream s = Open();
  ASSERT_TRUE(s.rw->Write(Hello("h1", 8 * kGiB)));
  v1::BrokerMessage m;
  ASSERT_TRUE(s.rw->Read(&m));
  ASSERT_TRUE(s.rw->Write(Report(1, {Vm("a", "a", 4 * kGiB, 4 * kGiB, kGiB)})));
  ASSERT_TRUE(s.rw->Read(&m));
  // Duplicate VM ids: INVALID_ARGUMENT naming the field; the stream ends.
  ASSERT_TRUE(s.rw->Write(
      Report(2, {Vm("b", "b", 4 * kGiB, 4 * kGiB, kGiB), Vm("b", "b", 4 * kGiB, 4 * kGiB, kGiB)})));
  EXPECT_FALSE(s.rw->Read(&m));
  grpc::Status st = s.rw->Finish();
  EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(st.error_message().find("report.vms[1].vm_id"), std::string::npos)
      << st.error_message();
  grpc::ClientContext ctx;
  v1::ListVmsResponse vms;
  ASSERT_TRUE(server_.admin()->ListVms(&ctx, {}, &vms).ok());
  ASSERT_EQ(vms.vms_size(), 1);
  EXPECT_EQ(vms.vms(0).vm_id(), "a");
  EXPECT_EQ(MetricValue(server_.broker().metrics(), "membroker_reports_rejected_total",
                        {{"reason", "invalid"}}),
            1);
}

TEST_F(BrokerServiceTest, ImpossibleGuestStatsAreFlaggedNotUsed) {
  Stream s = Open();
  ASSERT_TRUE(s.rw->Write(Hello("h1", 8 * kGiB)));
  v1::BrokerMessage m;
  ASSERT_TRUE(s.rw->Read(&m));
  v1::VmSample lying = Vm("a", "a", 4 * kGiB, 4 * kGiB, kGiB);
  lying.mutable_stats()->set_available_bytes(16 * kGiB);  // above total
  ASSERT_TRUE(s.rw->Write(Report(1, {lying})));
  ASSERT_TRUE(s.rw->Read(&m));
  // Never seen with valid stats: demand = what it has, so nothing is taken.
  EXPECT_EQ(m.targets().targets(0).target_bytes(), 4 * kGiB);
  grpc::ClientContext ctx;
  v1::GetVmRequest req;
  req.set_vm("a");
  v1::Vm vm;
  ASSERT_TRUE(server_.admin()->GetVm(&ctx, req, &vm).ok());
  EXPECT_TRUE(vm.stats().untrusted());
  EXPECT_NE(vm.stats().untrusted_reason().find("available_bytes"), std::string::npos)
      << vm.stats().untrusted_reason();
  s.ctx->TryCancel();
  s.rw->Finish();
}

TEST_F(BrokerServiceTest, AdminValidationAndNotFound) {
  grpc::ClientContext c1;
  v1::GetVmRequest get;
  get.set_vm("nope");
  v1::Vm vm;
  EXPECT_EQ(server_.admin()->GetVm(&c1, get, &vm).error_code(), grpc::StatusCode::NOT_FOUND);

  grpc::ClientContext c2;
  v1::SetVmPolicyRequest set;
  set.set_vm("123e4567-e89b-12d3-a456-426614174000");
  set.mutable_policy()->set_weight(0);
  v1::VmPolicy out;
  grpc::Status st = server_.admin()->SetVmPolicy(&c2, set, &out);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(st.error_message().find("policy.weight"), std::string::npos);

  grpc::ClientContext c3;
  set.mutable_policy()->set_weight(100);
  set.mutable_policy()->set_min_bytes(8 * kGiB);
  set.mutable_policy()->set_max_bytes(4 * kGiB);
  st = server_.admin()->SetVmPolicy(&c3, set, &out);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(st.error_message().find("min_bytes"), std::string::npos);

  grpc::ClientContext c4;
  v1::SetClusterPolicyRequest cp;
  cp.mutable_policy()->set_idle_tax_percent(100);
  v1::ClusterPolicy cpo;
  st = server_.admin()->SetClusterPolicy(&c4, cp, &cpo);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(st.error_message().find("idle_tax_percent"), std::string::npos);
  grpc::ClientContext c4b;
  cp.mutable_policy()->clear_idle_tax_percent();
  cp.mutable_policy()->set_surplus_percent(101);
  st = server_.admin()->SetClusterPolicy(&c4b, cp, &cpo);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(st.error_message().find("surplus_percent"), std::string::npos);
  grpc::ClientContext c5;
  ASSERT_TRUE(server_.admin()->GetClusterPolicy(&c5, {}, &cpo).ok());
  EXPECT_EQ(cpo.surplus_percent(), 100);  // unchanged default
  EXPECT_EQ(cpo.idle_tax_percent(), 0);   // unchanged (the test's own setting)

  grpc::ClientContext c6;
  v1::ReserveRequest rr;
  v1::Reservation res;
  st = server_.admin()->Reserve(&c6, rr, &res);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(st.error_message().find("host_id"), std::string::npos) << st.error_message();
  EXPECT_EQ(MetricValue(server_.broker().metrics(), "membroker_admin_requests_total",
                        {{"method", "GetVm"}, {"code", "NOT_FOUND"}}),
            1);
}

TEST_F(BrokerServiceTest, VmPolicyRaisesTargetPushesAtOnceAndSurvivesRestart) {
  Stream s = Open();
  ASSERT_TRUE(s.rw->Write(Hello("h1", 4 * kGiB)));
  v1::BrokerMessage m;
  ASSERT_TRUE(s.rw->Read(&m));
  // Two idle VMs of 4 GiB using 256 MiB each on 4 GiB: surplus split evenly.
  ASSERT_TRUE(s.rw->Write(Report(1, {Vm("a", "alpha", 4 * kGiB, 2 * kGiB, 256 * kMiB),
                                     Vm("b", "beta", 4 * kGiB, 2 * kGiB, 256 * kMiB)})));
  ASSERT_TRUE(s.rw->Read(&m));
  ASSERT_EQ(m.targets().targets_size(), 2);
  EXPECT_EQ(m.targets().targets(0).target_bytes(), 2 * kGiB);

  // alpha's min 3 GiB: floor 3 GiB; desired 3 + 0.25 = 3.25 GiB; the
  // 0.75 GiB surplus is split evenly (rooms 1 and 3.75 GiB): alpha 3.375,
  // beta 0.625 GiB.
  grpc::ClientContext ctx;
  v1::SetVmPolicyRequest set;
  set.set_vm("alpha");
  set.mutable_policy()->set_min_bytes(3 * kGiB);
  v1::VmPolicy out;
  ASSERT_TRUE(server_.admin()->SetVmPolicy(&ctx, set, &out).ok());
  EXPECT_EQ(out.min_bytes(), 3 * kGiB);
  ASSERT_TRUE(s.rw->Read(&m));
  ASSERT_TRUE(m.has_targets());
  EXPECT_EQ(m.targets().targets(0).vm_id(), "a");
  EXPECT_EQ(m.targets().targets(0).target_bytes(), 3456 * kMiB);
  EXPECT_EQ(m.targets().targets(1).target_bytes(), 640 * kMiB);

  grpc::ClientContext ectx;
  v1::ExplainVmRequest ereq;
  ereq.set_vm("alpha");
  v1::Explanation e;
  ASSERT_TRUE(server_.admin()->ExplainVm(&ectx, ereq, &e).ok());
  EXPECT_EQ(e.floor_bytes(), 3 * kGiB);
  EXPECT_EQ(e.min_bytes(), 3 * kGiB);
  EXPECT_EQ(e.target_bytes(), 3456 * kMiB);
  EXPECT_EQ(e.reason(), v1::REASON_SURPLUS);
  ASSERT_GE(e.steps_size(), 4);
  EXPECT_NE(e.steps(1).find("floor = clamp(max(min 3 GiB"), std::string::npos) << e.steps(1);

  grpc::ClientContext pctx;
  v1::SetClusterPolicyRequest cp;
  cp.mutable_policy()->set_buffer_percent(35);
  v1::ClusterPolicy cpo;
  ASSERT_TRUE(server_.admin()->SetClusterPolicy(&pctx, cp, &cpo).ok());
  EXPECT_EQ(cpo.buffer_percent(), 35);
  EXPECT_EQ(cpo.default_min_bytes(), 256 * kMiB);  // others kept

  s.ctx->TryCancel();
  s.rw->Finish();
  server_.Stop();
  StartBroker();  // same state dir
  grpc::ClientContext g1;
  ASSERT_TRUE(server_.admin()->GetClusterPolicy(&g1, {}, &cpo).ok());
  EXPECT_EQ(cpo.buffer_percent(), 35);
  // The VM policy is back too: a new stream's decision honours it.
  Stream s2 = Open();
  ASSERT_TRUE(s2.rw->Write(Hello("h1", 4 * kGiB)));
  ASSERT_TRUE(s2.rw->Read(&m));
  ASSERT_TRUE(s2.rw->Write(Report(1, {Vm("a", "alpha", 4 * kGiB, 2 * kGiB, 256 * kMiB),
                                      Vm("b", "beta", 4 * kGiB, 2 * kGiB, 256 * kMiB)})));
  ASSERT_TRUE(s2.rw->Read(&m));
  // Now with buffer 35 %: beta desired = round(256 MiB x 1.35) = 362387866;
  // surplus = 4 GiB - 3 GiB - 362387866 = 711353958, half each:
  // alpha = 3 GiB + 355676979 = 3576902451.
  EXPECT_EQ(m.targets().targets(0).target_bytes(), 3576902451u);
  s2.ctx->TryCancel();
  s2.rw->Finish();
}

TEST_F(BrokerServiceTest, FirstDecisionTakesMemoryBackInSteps) {
  grpc::ClientContext pctx;
  v1::SetClusterPolicyRequest cp;
  cp.mutable_policy()->set_reclaim_step_bytes(kGiB);
  cp.mutable_policy()->set_surplus_percent(0);
  v1::ClusterPolicy cpo;
  ASSERT_TRUE(server_.admin()->SetClusterPolicy(&pctx, cp, &cpo).ok());
  Stream s = Open();
  ASSERT_TRUE(s.rw->Write(Hello("h1", 8 * kGiB)));
  v1::BrokerMessage m;
  ASSERT_TRUE(s.rw->Read(&m));
  // A new 4 GiB VM using 512 MiB: its share is 512 MiB (no surplus), but
  // its current size (4 GiB) is the baseline: 1 GiB per decision -> 3 GiB,
  // then 2 GiB, then 1 GiB, then 512 MiB.
  uint64_t expected[] = {3 * kGiB, 2 * kGiB, 1 * kGiB, 512 * kMiB};
  uint64_t actual = 4 * kGiB;
  for (int i = 0; i < 4; ++i) {
    ASSERT_TRUE(s.rw->Write(Report(i + 1, {Vm("a", "a", 4 * kGiB, actual, 512 * kMiB)})));
    ASSERT_TRUE(s.rw->Read(&m));
    ASSERT_TRUE(m.has_targets());
    EXPECT_EQ(m.targets().targets(0).target_bytes(), expected[i]) << "decision " << i;
    actual = m.targets().targets(0).target_bytes();
  }
  s.ctx->TryCancel();
  s.rw->Finish();
}

TEST_F(BrokerServiceTest, VmMetricsAreLabelledUniquelyAndRemovedWithTheVm) {
  Stream s = Open();
  ASSERT_TRUE(s.rw->Write(Hello("h1", 8 * kGiB)));
  v1::BrokerMessage m;
  ASSERT_TRUE(s.rw->Read(&m));
  // Two VMs named "dup": the first keeps the name as its label, the second
  // is labelled by its id.
  ASSERT_TRUE(s.rw->Write(Report(1, {Vm("id-1", "dup", 2 * kGiB, 2 * kGiB, kGiB),
                                     Vm("id-2", "dup", 2 * kGiB, 2 * kGiB, kGiB)})));
  ASSERT_TRUE(s.rw->Read(&m));
  EXPECT_EQ(MetricValue(server_.broker().metrics(), "membroker_vm_actual_bytes", {{"vm", "dup"}}),
            static_cast<double>(2 * kGiB));
  EXPECT_EQ(MetricValue(server_.broker().metrics(), "membroker_vm_actual_bytes", {{"vm", "id-2"}}),
            static_cast<double>(2 * kGiB));
  // id-1 leaves: its series goes, id-2's stays.
  ASSERT_TRUE(s.rw->Write(Report(2, {Vm("id-2", "dup", 2 * kGiB, 2 * kGiB, kGiB)})));
  // id-2's target does not change, so nothing is pushed: wait for the
  // report to be taken.
  for (int i = 0; i < 200; ++i) {
    grpc::ClientContext ctx;
    v1::GetHostRequest req;
    req.set_host_id("h1");
    v1::Host host;
    ASSERT_TRUE(server_.admin()->GetHost(&ctx, req, &host).ok());
    if (host.report_sequence() == 2) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  EXPECT_EQ(MetricValue(server_.broker().metrics(), "membroker_vm_actual_bytes", {{"vm", "dup"}}),
            -1);
  EXPECT_EQ(MetricValue(server_.broker().metrics(), "membroker_vm_actual_bytes", {{"vm", "id-2"}}),
            static_cast<double>(2 * kGiB));
  s.ctx->TryCancel();
  s.rw->Finish();
}

TEST_F(BrokerServiceTest, VmMetricsCanBeLeftOffTheScrape) {
  server_.Stop();
  BrokerOptions o;
  o.cluster_policy = RoundNumberPolicy();
  o.vm_metrics = false;
  const absl::Status started = server_.Start(o);
  ASSERT_TRUE(started.ok()) << started;
  Stream s = Open();
  ASSERT_TRUE(s.rw->Write(Hello("h1", 8 * kGiB)));
  v1::BrokerMessage m;
  ASSERT_TRUE(s.rw->Read(&m));
  ASSERT_TRUE(s.rw->Write(Report(1, {Vm("id-1", "web", 2 * kGiB, 2 * kGiB, kGiB)})));
  ASSERT_TRUE(s.rw->Read(&m));
  // The VM is known and decided; its series are not scraped, the host's are.
  EXPECT_EQ(MetricValue(server_.broker().metrics(), "membroker_vm_actual_bytes"), -1);
  EXPECT_EQ(MetricValue(server_.broker().metrics(), "membroker_vm_target_bytes"), -1);
  EXPECT_EQ(
      MetricValue(server_.broker().metrics(), "membroker_host_capacity_bytes", {{"host", "h1"}}),
      static_cast<double>(8 * kGiB));
  s.ctx->TryCancel();
  s.rw->Finish();
}

TEST_F(BrokerServiceTest, FreeInGuestsBackOnTheHostCountsOnlyReportingVmsWithRss) {
  Stream s = Open();
  ASSERT_TRUE(s.rw->Write(Hello("h1", 8 * kGiB)));
  v1::BrokerMessage m;
  ASSERT_TRUE(s.rw->Read(&m));
  // reporting: 2 GiB actual, 1.5 GiB resident: 512 MiB free and back.
  v1::VmSample reporting = Vm("id-1", "reporting", 2 * kGiB, 2 * kGiB, kGiB);
  reporting.set_free_page_reporting(true);
  reporting.set_host_rss_bytes(1536 * kMiB);
  // over: resident above its actual (QEMU's own memory): 0, not negative.
  v1::VmSample over = Vm("id-2", "over", 2 * kGiB, kGiB, 512 * kMiB);
  over.set_free_page_reporting(true);
  over.set_host_rss_bytes(kGiB + 100 * kMiB);
  // no-rss: reporting on but the agent cannot see its process: 0.
  v1::VmSample no_rss = Vm("id-3", "no-rss", 2 * kGiB, 2 * kGiB, kGiB);
  no_rss.set_free_page_reporting(true);
  // off: not resident, but without reporting the guest still holds it: 0.
  v1::VmSample off = Vm("id-4", "off", 2 * kGiB, 2 * kGiB, kGiB);
  off.set_host_rss_bytes(kGiB);
  ASSERT_TRUE(s.rw->Write(Report(1, {reporting, over, no_rss, off})));
  ASSERT_TRUE(s.rw->Read(&m));
  EXPECT_EQ(MetricValue(server_.broker().metrics(), "membroker_host_guest_free_on_host_bytes",
                        {{"host", "h1"}}),
            static_cast<double>(512 * kMiB));
  grpc::ClientContext ctx;
  v1::ListVmsResponse listed;
  ASSERT_TRUE(server_.admin()->ListVms(&ctx, {}, &listed).ok());
  std::map<std::string, v1::Vm> by_name;
  for (const v1::Vm& vm : listed.vms()) by_name[vm.name()] = vm;
  ASSERT_EQ(by_name.size(), 4u);
  EXPECT_TRUE(by_name["reporting"].free_page_reporting());
  EXPECT_EQ(by_name["reporting"].guest_free_on_host_bytes(), 512 * kMiB);
  EXPECT_EQ(by_name["over"].guest_free_on_host_bytes(), 0u);
  EXPECT_EQ(by_name["no-rss"].guest_free_on_host_bytes(), 0u);
  EXPECT_FALSE(by_name["off"].free_page_reporting());
  EXPECT_EQ(by_name["off"].guest_free_on_host_bytes(), 0u);
  // explain says it.
  grpc::ClientContext ectx;
  v1::ExplainVmRequest req;
  req.set_vm("reporting");
  v1::Explanation e;
  ASSERT_TRUE(server_.admin()->ExplainVm(&ectx, req, &e).ok());
  bool said = false;
  for (const std::string& step : e.steps()) {
    said |= step.find("free page reporting: on; 536870912 B") != std::string::npos;
  }
  EXPECT_TRUE(said);
  s.ctx->TryCancel();
  s.rw->Finish();
}

TEST_F(BrokerServiceTest, NewerStreamReplacesOlder) {
  Stream a = Open();
  ASSERT_TRUE(a.rw->Write(Hello("h1", 4 * kGiB)));
  v1::BrokerMessage m;
  ASSERT_TRUE(a.rw->Read(&m));
  Stream b = Open();
  ASSERT_TRUE(b.rw->Write(Hello("h1", 4 * kGiB)));
  ASSERT_TRUE(b.rw->Read(&m));
  ASSERT_TRUE(a.rw->Write(Report(1, {Vm("x", "x", 2 * kGiB, 2 * kGiB, kGiB)})));
  EXPECT_FALSE(a.rw->Read(&m));
  EXPECT_EQ(a.rw->Finish().error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  ASSERT_TRUE(b.rw->Write(Report(1, {Vm("x", "x", 2 * kGiB, 2 * kGiB, kGiB)})));
  ASSERT_TRUE(b.rw->Read(&m));
  EXPECT_TRUE(m.has_targets());
  b.ctx->TryCancel();
  b.rw->Finish();
}

TEST_F(BrokerServiceTest, HealthCheckingServes) {
  grpc::GenericStub stub(server_.channel());
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
  grpc::Slice empty("", 0);  // HealthCheckRequest{service: ""} encodes as empty
  grpc::ByteBuffer request(&empty, 1);
  grpc::ByteBuffer response;
  std::mutex mu;
  std::condition_variable cv;
  bool done = false;
  grpc::Status status;
  stub.UnaryCall(&ctx, "/grpc.health.v1.Health/Check", grpc::StubOptions(), &request, &response,
                 [&](grpc::Status s) {
                   std::lock_guard<std::mutex> l(mu);
                   status = s;
                   done = true;
                   cv.notify_all();
                 });
  std::unique_lock<std::mutex> l(mu);
  ASSERT_TRUE(cv.wait_for(l, std::chrono::seconds(5), [&] { return done; }));
  ASSERT_TRUE(status.ok()) << status.error_message();
  std::vector<grpc::Slice> slices;
  ASSERT_TRUE(response.Dump(&slices).ok());
  std::string bytes;
  for (auto& s : slices) bytes.append(reinterpret_cast<const char*>(s.begin()), s.size());
  EXPECT_EQ(bytes, std::string("\x08\x01", 2));  // status: SERVING
}

TEST_F(BrokerServiceTest, WatchDecisionsStreamsEachNewGenerationOfTheWatchedHost) {
  // One watcher of every host, one of h2 only.
  grpc::ClientContext all_ctx, h2_ctx;
  all_ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(20));
  h2_ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(20));
  v1::WatchDecisionsRequest all_req, h2_req;
  h2_req.set_host_id("h2");
  auto all = server_.admin()->WatchDecisions(&all_ctx, all_req);
  auto h2_only = server_.admin()->WatchDecisions(&h2_ctx, h2_req);
  // A decision made before a watch is registered is not sent to it: wait
  // (bounded) until the broker holds both.
  for (int i = 0; i < 500 && server_.broker().fleet().WatcherCount() < 2; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  ASSERT_EQ(server_.broker().fleet().WatcherCount(), 2u);

  Stream s1 = Open();
  ASSERT_TRUE(s1.rw->Write(Hello("h1", 8 * kGiB)));
  v1::BrokerMessage m;
  ASSERT_TRUE(s1.rw->Read(&m));
  ASSERT_TRUE(s1.rw->Write(Report(1, {Vm("vm-a", "a", 4 * kGiB, 4 * kGiB, 1 * kGiB)})));
  ASSERT_TRUE(s1.rw->Read(&m));
  ASSERT_TRUE(m.has_targets());

  v1::Decision d;
  ASSERT_TRUE(all->Read(&d));
  EXPECT_EQ(d.host_id(), "h1");
  EXPECT_EQ(d.generation(), m.targets().generation());
  ASSERT_EQ(d.targets_size(), 1);
  EXPECT_EQ(d.targets(0).vm_id(), "vm-a");
  EXPECT_EQ(d.targets(0).target_bytes(), m.targets().targets(0).target_bytes());
  EXPECT_TRUE(d.has_decided_at());

  Stream s2 = Open();
  ASSERT_TRUE(s2.rw->Write(Hello("h2", 8 * kGiB)));
  ASSERT_TRUE(s2.rw->Read(&m));
  ASSERT_TRUE(s2.rw->Write(Report(1, {Vm("vm-b", "b", 2 * kGiB, 2 * kGiB, 1 * kGiB)})));
  ASSERT_TRUE(s2.rw->Read(&m));
  // The filtered watcher's first decision is h2's: h1's was not sent to it.
  ASSERT_TRUE(h2_only->Read(&d));
  EXPECT_EQ(d.host_id(), "h2");
  EXPECT_EQ(d.targets(0).vm_id(), "vm-b");
  ASSERT_TRUE(all->Read(&d));
  EXPECT_EQ(d.host_id(), "h2");

  // Cancelling a watcher ends its stream; the broker forgets it.
  all_ctx.TryCancel();
  while (all->Read(&d)) {
  }
  EXPECT_EQ(all->Finish().error_code(), grpc::StatusCode::CANCELLED);
  h2_ctx.TryCancel();
  while (h2_only->Read(&d)) {
  }
  h2_only->Finish();
  for (int i = 0; i < 500 && server_.broker().fleet().WatcherCount() > 0; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  EXPECT_EQ(server_.broker().fleet().WatcherCount(), 0u);
  s1.rw->WritesDone();
  s2.rw->WritesDone();
  s1.rw->Finish();
  s2.rw->Finish();
}

TEST(BrokerOptionsTest, BadOptionsNameTheFlag) {
  BrokerOptions o;
  o.state_dir = "/tmp/x";
  o.listen = "nope";
  EXPECT_NE(ValidateBrokerOptions(o).message().find("--listen"), std::string::npos);
  o.listen = "127.0.0.1:0";
  o.metrics_listen = "127.0.0.1:99999";
  EXPECT_NE(ValidateBrokerOptions(o).message().find("--metrics-listen"), std::string::npos);
  o.metrics_listen = "127.0.0.1:0";
  o.state_dir = "";
  EXPECT_NE(ValidateBrokerOptions(o).message().find("--state-dir"), std::string::npos);
  o.state_dir = "/proc/version";  // a file, not a directory
  auto b = Broker::Start(o, RealClock::Get());
  EXPECT_EQ(b.status().code(), absl::StatusCode::kFailedPrecondition);
}

}  // namespace
}  // namespace membroker::broker

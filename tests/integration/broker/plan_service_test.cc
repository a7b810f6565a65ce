// Placement and the rebalance plan through the real AdminService,
// in-process on 127.0.0.1:0: one short host and one with room.

#include <gtest/gtest.h>

#include <map>
#include <memory>

#include "broker/server.h"
#include "membroker/v1/admin.grpc.pb.h"
#include "membroker/v1/agent.grpc.pb.h"
#include "tests/util/in_process_broker.h"

namespace membroker::broker {
namespace {

using ::membroker::testing::InProcessBroker;
using ::membroker::testing::RoundNumberPolicy;

constexpr uint64_t kGiB = uint64_t{1} << 30;

v1::VmSample Vm(const std::string& id, uint64_t max, uint64_t used) {
  v1::VmSample s;
  s.set_vm_id(id);
  s.set_name(id);
  s.set_max_bytes(max);
  s.set_actual_bytes(max);
  s.set_health(v1::BALLOON_HEALTH_OK);
  s.mutable_stats()->set_total_bytes(max);
  s.mutable_stats()->set_available_bytes(max - used);
  s.mutable_stats()->set_free_bytes(max - used);
  s.mutable_stats()->set_age_seconds(0);  // fresh statistics
  s.mutable_stats()->set_swap_in_bytes_total(0);
  s.mutable_stats()->set_major_faults_total(0);
  return s;
}

double Gauge(BrokerMetrics& m, const std::string& name) {
  for (const auto& family : m.registry()->Collect()) {
    if (family.name == name && !family.metric.empty()) return family.metric[0].gauge.value;
  }
  return -1;
}

class PlanServiceTest : public ::testing::Test {
 protected:
  void SetUp() override {
    BrokerOptions o;
    // Round numbers: no buffer, no margins; floors are what guests use.
    o.cluster_policy = RoundNumberPolicy();
    const absl::Status started = server_.Start(o);
    ASSERT_TRUE(started.ok()) << started;
  }
  void TearDown() override {
    streams_.clear();
    server_.Stop();
  }

  // Connects `host` and sends one report; returns once its targets came.
  void Host(const std::string& host, uint64_t capacity, std::vector<v1::VmSample> vms) {
    Stream s;
    s.ctx = std::make_unique<grpc::ClientContext>();
    s.ctx->set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
    s.rw = server_.agent()->Connect(s.ctx.get());
    v1::AgentMessage hello;
    hello.mutable_hello()->set_host_id(host);
    hello.mutable_hello()->set_capacity_bytes(capacity);
    hello.mutable_hello()->set_host_total_bytes(capacity * 2);
    hello.mutable_hello()->set_backend("sim");
    ASSERT_TRUE(s.rw->Write(hello));
    v1::BrokerMessage m;
    ASSERT_TRUE(s.rw->Read(&m));
    ASSERT_TRUE(m.has_welcome());
    v1::AgentMessage report;
    report.mutable_report()->set_sequence(1);
    for (auto& v : vms) *report.mutable_report()->add_vms() = v;
    ASSERT_TRUE(s.rw->Write(report));
    ASSERT_TRUE(s.rw->Read(&m));
    ASSERT_TRUE(m.has_targets());
    streams_.push_back(std::move(s));
  }

  struct Stream {
    std::unique_ptr<grpc::ClientContext> ctx;
    std::unique_ptr<grpc::ClientReaderWriter<v1::AgentMessage, v1::BrokerMessage>> rw;
    ~Stream() {
      if (ctx) ctx->TryCancel();
    }
    Stream() = default;
    Stream(Stream&&) = default;
  };

  InProcessBroker server_{"mb_plan_test"};
  std::vector<Stream> streams_;
};

TEST_F(PlanServiceTest, EmptyFleetHasAnEmptyPlanAndNoPlace) {
  grpc::ClientContext c1;
  v1::Plan plan;
  ASSERT_TRUE(server_.admin()->GetPlan(&c1, {}, &plan).ok());
  EXPECT_EQ(plan.moves_size(), 0);
  EXPECT_EQ(plan.hosts_short_before(), 0u);
  grpc::ClientContext c2;
  v1::PlaceRequest req;
  req.set_bytes(kGiB);
  v1::PlaceResponse resp;
  ASSERT_TRUE(server_.admin()->Place(&c2, req, &resp).ok());
  EXPECT_EQ(resp.options_size(), 0);
  EXPECT_EQ(resp.assignments_size(), 0);
  EXPECT_EQ(resp.requested(), 1u);
}

TEST_F(PlanServiceTest, ShortHostGetsAMoveAndPlaceAvoidsIt) {
  // full: 4 GiB; big uses 3, small uses 2: needs 5, short by 1.
  // roomy: 8 GiB; c uses 1.
  Host("full", 4 * kGiB, {Vm("big", 4 * kGiB, 3 * kGiB), Vm("small", 2 * kGiB, 2 * kGiB)});
  Host("roomy", 8 * kGiB, {Vm("c", 4 * kGiB, 1 * kGiB)});

  // Both cover the 1 GiB: small costs 2 x 100, big 3 x 100: small moves.
  grpc::ClientContext c1;
  v1::Plan plan;
  ASSERT_TRUE(server_.admin()->GetPlan(&c1, {}, &plan).ok());
  ASSERT_EQ(plan.moves_size(), 1) << plan.DebugString();
  EXPECT_EQ(plan.moves(0).vm_id(), "small");
  EXPECT_EQ(plan.moves(0).vm_name(), "small");
  EXPECT_EQ(plan.moves(0).from_host_id(), "full");
  EXPECT_EQ(plan.moves(0).to_host_id(), "roomy");
  EXPECT_EQ(plan.moves(0).bytes(), 2 * kGiB);
  EXPECT_EQ(plan.hosts_short_before(), 1u);
  EXPECT_EQ(plan.hosts_short_after(), 0u);
  EXPECT_TRUE(plan.has_computed_at());
  EXPECT_EQ(Gauge(server_.broker().metrics(), "membroker_plan_moves"), 1);
  EXPECT_EQ(Gauge(server_.broker().metrics(), "membroker_plan_hosts_short"), 1);
  EXPECT_EQ(Gauge(server_.broker().metrics(), "membroker_plan_hosts_short_after"), 0);
  EXPECT_EQ(Gauge(server_.broker().metrics(), "membroker_plan_moved_bytes"), 2.0 * kGiB);

  // An operator weight of 10 makes big the cheaper move (3 x 10 < 2 x 100).
  grpc::ClientContext c2;
  v1::SetVmPolicyRequest set;
  set.set_vm("big");
  set.mutable_policy()->set_weight(10);
  v1::VmPolicy stored;
  ASSERT_TRUE(server_.admin()->SetVmPolicy(&c2, set, &stored).ok());
  grpc::ClientContext c3;
  ASSERT_TRUE(server_.admin()->GetPlan(&c3, {}, &plan).ok());
  ASSERT_EQ(plan.moves_size(), 1);
  EXPECT_EQ(plan.moves(0).vm_id(), "big");

  // Place 2 GiB x 4: full's floors (5) exceed it; roomy's floors are 1 of
  // 8: three fit (1 + 3 x 2 = 7), the fourth does not (9 > 8).
  grpc::ClientContext c4;
  v1::PlaceRequest req;
  req.set_bytes(2 * kGiB);
  req.set_count(4);
  v1::PlaceResponse resp;
  ASSERT_TRUE(server_.admin()->Place(&c4, req, &resp).ok());
  ASSERT_EQ(resp.options_size(), 1) << resp.DebugString();
  EXPECT_EQ(resp.options(0).host_id(), "roomy");
  EXPECT_EQ(resp.options(0).headroom_bytes(), static_cast<int64_t>(5 * kGiB));
  EXPECT_EQ(resp.assignments_size(), 3);
  EXPECT_EQ(resp.requested(), 4u);
}

TEST_F(PlanServiceTest, BadPlaceRequestsAreRefused) {
  v1::PlaceResponse resp;
  grpc::ClientContext c1;
  grpc::Status st = server_.admin()->Place(&c1, v1::PlaceRequest(), &resp);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(st.error_message().find("bytes"), std::string::npos) << st.error_message();
  grpc::ClientContext c2;
  v1::PlaceRequest req;
  req.set_bytes(kGiB);
  req.set_count(kMaxPlaceCount + 1);
  st = server_.admin()->Place(&c2, req, &resp);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(st.error_message().find("count"), std::string::npos) << st.error_message();
}

}  // namespace
}  // namespace membroker::broker

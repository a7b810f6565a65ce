// The agent against an in-process fake AgentService on 127.0.0.1, on
// simulated time: the agent's ticks, report intervals, reconnect delays and
// hypervisor call deadlines all run on a ManualClock that the test advances.
// What stays real: the loopback gRPC stream and gRPC's own channel
// reconnect backoff (ReconnectsAfterTheBrokerRestarts), and kWait, the
// bound of every wait, which only ends a test that has already failed.

#include <chrono>
#include <cmath>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include <grpcpp/grpcpp.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <prometheus/registry.h>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "common/clock.h"
#include "common/proto_time.h"
#include "membroker/v1/agent.grpc.pb.h"
#include "common/textproto.h"
#include "node-agent/agent.h"
#include "node-agent/vm_process_probe.h"
#ifdef MB_HAVE_SIM
#include "node-agent/hypervisor/sim_hypervisor.h"
#endif
#include "tests/unit/agent/fake_hypervisor.h"

namespace membroker::agent {
namespace {

using membroker::v1::AgentMessage;
using membroker::v1::BrokerMessage;
using ::testing::HasSubstr;

constexpr uint64_t kMiB = uint64_t{1} << 20;
// Real-time bound of every wait (a failure guard, never a pass condition).
constexpr absl::Duration kWait = absl::Seconds(15);
// Simulated time added each time a wait finds nothing new.
constexpr absl::Duration kPumpStep = absl::Milliseconds(10);

// Moves `clock` on by kPumpStep once the agent's apply worker and report
// loop are both parked on it, so simulated time never runs ahead of them.
void Pump(ManualClock* clock) {
  if (clock != nullptr && clock->pending_waits() >= 2) clock->Advance(kPumpStep);
}

// A broker that records what agents send and lets the test push messages.
class FakeAgentService final : public membroker::v1::AgentService::Service {
 public:
  grpc::Status Connect(
      grpc::ServerContext* context,
      grpc::ServerReaderWriter<BrokerMessage, AgentMessage>* stream) override {
    (void)context;
    {
      absl::MutexLock lock(&write_mu_);
      stream_ = stream;
    }
    {
      absl::MutexLock lock(&mu_);
      ++streams_;
    }
    AgentMessage message;
    bool first = true;
    while (stream->Read(&message)) {
      {
        absl::MutexLock lock(&mu_);
        received_.push_back(message);
        if (first && !message.has_hello()) first_was_not_hello_ = true;
      }
      if (first && message.has_hello()) {
        BrokerMessage welcome;
        *welcome.mutable_welcome()->mutable_report_interval() =
            ToProtoDuration(report_interval_);
        welcome.mutable_welcome()->mutable_safety()->set_max_inflate_step_bytes(128 * kMiB);
        Send(welcome);
      }
      first = false;
    }
    absl::MutexLock lock(&write_mu_);
    stream_ = nullptr;
    return grpc::Status::OK;
  }

  // Writes to the current stream; false when there is none.
  bool Send(const BrokerMessage& message) {
    absl::MutexLock lock(&write_mu_);
    return stream_ != nullptr && stream_->Write(message);
  }

  // Waits until `pred(received, streams)` holds or `kWait` (real time)
  // passes. With a clock set, simulated time moves on (Pump) each time a
  // short real wait finds the predicate still false.
  bool WaitFor(std::function<bool(const std::vector<AgentMessage>&, int)> pred) {
    const absl::Time deadline = absl::Now() + kWait;
    while (true) {
      {
        absl::MutexLock lock(&mu_);
        auto cond = [&]() ABSL_SHARED_LOCKS_REQUIRED(mu_) { return pred(received_, streams_); };
        if (mu_.AwaitWithTimeout(absl::Condition(&cond), absl::Milliseconds(2))) return true;
      }
      if (absl::Now() >= deadline) return false;
      Pump(clock_);
    }
  }

  // The simulated clock WaitFor advances (nullptr: none).
  void set_clock(ManualClock* clock) { clock_ = clock; }

  std::vector<AgentMessage> received() {
    absl::MutexLock lock(&mu_);
    return received_;
  }
  bool first_was_not_hello() {
    absl::MutexLock lock(&mu_);
    return first_was_not_hello_;
  }
  void set_report_interval(absl::Duration d) { report_interval_ = d; }

 private:
  absl::Duration report_interval_ = absl::Milliseconds(100);
  ManualClock* clock_ = nullptr;
  absl::Mutex mu_;
  std::vector<AgentMessage> received_ ABSL_GUARDED_BY(mu_);
  int streams_ ABSL_GUARDED_BY(mu_) = 0;
  bool first_was_not_hello_ ABSL_GUARDED_BY(mu_) = false;
  absl::Mutex write_mu_;
  grpc::ServerReaderWriter<BrokerMessage, AgentMessage>* stream_ ABSL_GUARDED_BY(write_mu_) =
      nullptr;
};

// A server around a FakeAgentService on 127.0.0.1 (port 0 the first time).
struct Broker {
  FakeAgentService service;
  std::unique_ptr<grpc::Server> server;
  int port = 0;

  bool Start(int want_port) {
    grpc::ServerBuilder builder;
    builder.AddListeningPort(absl::StrCat("127.0.0.1:", want_port),
                             grpc::InsecureServerCredentials(), &port);
    builder.RegisterService(&service);
    server = builder.BuildAndStart();
    return server != nullptr && port != 0;
  }
  void Stop() {
    if (server == nullptr) return;
    server->Shutdown(std::chrono::system_clock::now() + std::chrono::milliseconds(200));
    server->Wait();
    server.reset();
  }
  ~Broker() { Stop(); }
};

int CountReports(const std::vector<AgentMessage>& messages) {
  int n = 0;
  for (const auto& m : messages) n += m.has_report() ? 1 : 0;
  return n;
}

int CountHellos(const std::vector<AgentMessage>& messages) {
  int n = 0;
  for (const auto& m : messages) n += m.has_hello() ? 1 : 0;
  return n;
}

// The value of `name`{vm="<vm>"}; -1 when absent.
double VmMetricValue(prometheus::Registry& registry, const std::string& name,
                     const std::string& vm) {
  for (const auto& family : registry.Collect()) {
    if (family.name != name) continue;
    for (const auto& m : family.metric) {
      for (const auto& label : m.label) {
        if (label.name == "vm" && label.value == vm) return m.gauge.value;
      }
    }
  }
  return -1;
}

double MetricValue(prometheus::Registry& registry, const std::string& name) {
  for (const auto& family : registry.Collect()) {
    if (family.name != name || family.metric.empty()) continue;
    const auto& m = family.metric.front();
    if (family.type == prometheus::MetricType::Counter) return m.counter.value;
    if (family.type == prometheus::MetricType::Gauge) return m.gauge.value;
  }
  return -1;
}

// Polls `pred` until it holds or kWait (real) passes; pumps `clock` (if
// any) between polls.
bool WaitUntil(const std::function<bool()>& pred, ManualClock* clock = nullptr) {
  const absl::Time deadline = absl::Now() + kWait;
  while (absl::Now() < deadline) {
    if (pred()) return true;
    absl::SleepFor(absl::Milliseconds(2));
    Pump(clock);
  }
  return pred();
}

// Polls `pred` in real time (bounded by kWait) without moving any clock.
bool WaitUntilReal(const std::function<bool()>& pred) { return WaitUntil(pred, nullptr); }

// The last ack of `generation` received, if any.
std::optional<membroker::v1::TargetAck> FindAck(const std::vector<AgentMessage>& messages,
                                                uint64_t generation) {
  std::optional<membroker::v1::TargetAck> out;
  for (const auto& m : messages) {
    if (m.has_ack() && m.ack().generation() == generation) out = m.ack();
  }
  return out;
}

BrokerMessage Targets(uint64_t generation,
                      const std::vector<std::pair<std::string, uint64_t>>& targets) {
  BrokerMessage message;
  message.mutable_targets()->set_generation(generation);
  for (const auto& [vm, bytes] : targets) {
    auto* t = message.mutable_targets()->add_targets();
    t->set_vm_id(vm);
    t->set_target_bytes(bytes);
  }
  return message;
}

class AgentLinkTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_TRUE(broker_.Start(0));
    broker_.service.set_clock(&clock_);
    fake_ = new FakeHypervisor();
    fake_->AddVm("a", 4096 * kMiB, 1024 * kMiB);
    fake_->AddVm("b", 2048 * kMiB, 2048 * kMiB);
    GuestMemoryStats stats;
    stats.total_bytes = 1000 * kMiB;
    stats.available_bytes = 500 * kMiB;
    stats.swap_in_bytes_total = 0;
    stats.last_update = clock_.Now();
    fake_->SetStats("a", stats);
  }

  void MakeAgent(HypervisorCallParams calls = {},
                 const std::function<void(AgentParams&)>& tweak = nullptr) {
    AgentParams params;
    params.host_id = "host-1";
    params.capacity_bytes = 8192 * kMiB;
    params.host_total_bytes = 16384 * kMiB;
    params.tick_interval = absl::Milliseconds(20);
    params.backoff.initial = absl::Milliseconds(20);
    params.backoff.max = absl::Milliseconds(200);
    params.hypervisor_calls = calls;
    if (tweak) tweak(params);
    registry_ = std::make_shared<prometheus::Registry>();
    auto channel = grpc::CreateChannel(absl::StrCat("127.0.0.1:", broker_.port),
                                       grpc::InsecureChannelCredentials());
    HostSampler sampler = [](const std::vector<VmStatus>& vms) {
      return absl::StatusOr<HostMemorySample>(SimHostSample(16384 * kMiB, vms));
    };
    agent_ = std::make_unique<Agent>(params, std::unique_ptr<Hypervisor>(fake_), sampler,
                                     &clock_, channel, registry_);
  }

  bool WaitUntil(const std::function<bool()>& pred) {
    return ::membroker::agent::WaitUntil(pred, &clock_);
  }

  void TearDown() override {
    if (agent_) agent_->Stop();
  }

  ManualClock clock_;
  Broker broker_;
  FakeHypervisor* fake_ = nullptr;  // owned by the agent
  std::shared_ptr<prometheus::Registry> registry_;
  std::unique_ptr<Agent> agent_;
};

TEST_F(AgentLinkTest, HelloFirstThenReportsFlow) {
  MakeAgent();
  agent_->Start();
  ASSERT_TRUE(broker_.service.WaitFor(
      [](const std::vector<AgentMessage>& m, int) { return CountReports(m) >= 3; }));
  const std::vector<AgentMessage> messages = broker_.service.received();
  EXPECT_FALSE(broker_.service.first_was_not_hello());
  ASSERT_TRUE(messages.front().has_hello());
  const auto& hello = messages.front().hello();
  EXPECT_EQ(hello.host_id(), "host-1");
  EXPECT_EQ(hello.backend(), "fake");
  EXPECT_EQ(hello.capacity_bytes(), 8192 * kMiB);
  EXPECT_EQ(hello.host_total_bytes(), 16384 * kMiB);
  uint64_t last_sequence = 0;
  for (const auto& m : messages) {
    if (!m.has_report()) continue;
    const auto& r = m.report();
    EXPECT_GT(r.sequence(), last_sequence);
    last_sequence = r.sequence();
    ASSERT_EQ(r.vms_size(), 2);
    EXPECT_EQ(r.host().mem_total_bytes(), 16384 * kMiB);
    EXPECT_EQ(r.host().mem_available_bytes(), (16384 - 3072) * kMiB);
    EXPECT_EQ(r.capacity_bytes(), 8192 * kMiB);
  }
  // The Welcome's report interval is in force.
  EXPECT_EQ(agent_->report_interval(), absl::Milliseconds(100));
  EXPECT_TRUE(agent_->connected());
  EXPECT_TRUE(WaitUntil([&] {
    return MetricValue(*registry_, "membroker_agent_reports_sent_total") >= 3;
  }));
  EXPECT_EQ(MetricValue(*registry_, "membroker_agent_broker_connected"), 1);
  EXPECT_EQ(MetricValue(*registry_, "membroker_agent_host_capacity_bytes"), 8192.0 * kMiB);
}

TEST_F(AgentLinkTest, TargetsReachTheHypervisorAndAreAcked) {
  MakeAgent();
  agent_->Start();
  ASSERT_TRUE(broker_.service.WaitFor(
      [](const std::vector<AgentMessage>& m, int) { return CountReports(m) >= 1; }));
  BrokerMessage targets;
  targets.mutable_targets()->set_generation(7);
  auto* t = targets.mutable_targets()->add_targets();
  t->set_vm_id("a");
  t->set_target_bytes(3072 * kMiB);  // a grow: applied at once
  t = targets.mutable_targets()->add_targets();
  t->set_vm_id("ghost");
  t->set_target_bytes(kMiB);
  ASSERT_TRUE(broker_.service.Send(targets));
  ASSERT_TRUE(broker_.service.WaitFor([](const std::vector<AgentMessage>& m, int) {
    for (const auto& x : m) {
      if (x.has_ack()) return true;
    }
    return false;
  }));
  membroker::v1::TargetAck ack;
  for (const auto& x : broker_.service.received()) {
    if (x.has_ack()) ack = x.ack();
  }
  EXPECT_EQ(ack.generation(), 7u);
  ASSERT_EQ(ack.errors().count("ghost"), 1u);
  EXPECT_THAT(ack.errors().at("ghost"), HasSubstr("unknown VM"));
  EXPECT_EQ(ack.errors().count("a"), 0u) << ack.DebugString();
  EXPECT_EQ(fake_->target("a"), 3072 * kMiB);
  // The next reports carry the applied target.
  fake_->SettleBalloons();
  ASSERT_TRUE(broker_.service.WaitFor([](const std::vector<AgentMessage>& m, int) {
    for (const auto& x : m) {
      if (!x.has_report()) continue;
      for (const auto& vm : x.report().vms()) {
        if (vm.vm_id() == "a" && vm.last_target_bytes() == 3072 * kMiB &&
            vm.actual_bytes() == 3072 * kMiB) {
          return true;
        }
      }
    }
    return false;
  }));
  EXPECT_TRUE(WaitUntil([&] {
    return MetricValue(*registry_, "membroker_agent_targets_applied_total") >= 1 &&
           MetricValue(*registry_, "membroker_agent_target_errors_total") >= 1;
  }));
  EXPECT_TRUE(WaitUntil([&] {
    return VmMetricValue(*registry_, "membroker_agent_vm_target_bytes", "vm-a") ==
               3072.0 * kMiB &&
           VmMetricValue(*registry_, "membroker_agent_vm_actual_bytes", "vm-a") == 3072.0 * kMiB;
  }));
  EXPECT_EQ(VmMetricValue(*registry_, "membroker_agent_vm_stuck", "vm-a"), 0);
  EXPECT_EQ(VmMetricValue(*registry_, "membroker_agent_vm_target_bytes", "vm-b"), 0);
}

TEST_F(AgentLinkTest, ReconnectsAfterTheBrokerRestarts) {
  MakeAgent();
  agent_->Start();
  ASSERT_TRUE(broker_.service.WaitFor(
      [](const std::vector<AgentMessage>& m, int) { return CountReports(m) >= 1; }));
  const int port = broker_.port;
  broker_.Stop();
  // The gauge follows the link's state a moment later: wait for both.
  ASSERT_TRUE(WaitUntil([&] {
    return !agent_->connected() &&
           MetricValue(*registry_, "membroker_agent_broker_connected") == 0;
  }));
  EXPECT_EQ(MetricValue(*registry_, "membroker_agent_broker_connected"), 0);
  // A new broker on the same port (bounded retries while the port frees).
  auto second = std::make_unique<Broker>();
  bool started = false;
  for (int i = 0; i < 50 && !started; ++i) {
    started = second->Start(port);
    if (!started) {
      second = std::make_unique<Broker>();
      absl::SleepFor(absl::Milliseconds(50));
    }
  }
  ASSERT_TRUE(started) << "cannot listen again on 127.0.0.1:" << port;
  second->service.set_clock(&clock_);
  ASSERT_TRUE(second->service.WaitFor([](const std::vector<AgentMessage>& m, int) {
    return CountHellos(m) == 1 && CountReports(m) >= 1;
  }));
  EXPECT_TRUE(second->service.received().front().has_hello());
  EXPECT_TRUE(WaitUntil([&] { return agent_->connected(); }));
  EXPECT_TRUE(WaitUntil(
      [&] { return MetricValue(*registry_, "membroker_agent_reconnects_total") >= 1; }));
  agent_->Stop();
  second->Stop();
}

TEST_F(AgentLinkTest, GuestPressureSendsAReportAtOnce) {
  broker_.service.set_report_interval(absl::Minutes(10));
  MakeAgent();
  agent_->Start();
  // The first report goes out at connection time.
  ASSERT_TRUE(broker_.service.WaitFor(
      [](const std::vector<AgentMessage>& m, int) { return CountReports(m) >= 1; }));
  GuestMemoryStats stats;
  stats.total_bytes = 1000 * kMiB;
  stats.available_bytes = 10 * kMiB;
  stats.swap_in_bytes_total = 500 * kMiB;
  stats.last_update = clock_.Now() + absl::Milliseconds(500);
  fake_->SetStats("a", stats);
  // The next periodic report is ten minutes away: only pressure sends one.
  ASSERT_TRUE(broker_.service.WaitFor([](const std::vector<AgentMessage>& m, int) {
    for (const auto& x : m) {
      if (x.has_report() && x.report().pressure_event()) return true;
    }
    return false;
  }));
  // And the guest was deflated without waiting for the broker.
  EXPECT_GT(fake_->target("a"), 1024 * kMiB);
}

// A VmProcessProbe fed by the test: every read of a pid returns its base
// plus `step` times the number of reads so far.
class FakeVmProcessProbe : public VmProcessProbe {
 public:
  absl::StatusOr<uint64_t> ResidentBytes(int64_t pid) const override {
    absl::MutexLock lock(&mu_);
    auto it = rss_.find(pid);
    if (it == rss_.end()) return absl::NotFoundError("no such process");
    ++reads_;
    return it->second + step_ * reads_;
  }
  void Set(int64_t pid, uint64_t bytes, uint64_t step = 0) {
    absl::MutexLock lock(&mu_);
    rss_[pid] = bytes;
    step_ = step;
    reads_ = 0;
  }

 private:
  mutable absl::Mutex mu_;
  std::map<int64_t, uint64_t> rss_ ABSL_GUARDED_BY(mu_);
  uint64_t step_ ABSL_GUARDED_BY(mu_) = 0;
  mutable uint64_t reads_ ABSL_GUARDED_BY(mu_) = 0;
};

bool HasReason(const membroker::v1::VmSample& vm, membroker::v1::PressureReason reason) {
  for (int r : vm.pressure_reasons()) {
    if (r == reason) return true;
  }
  return false;
}

// The sample of `vm_id` in `report`, or nullptr.
const membroker::v1::VmSample* FindVm(const membroker::v1::HostReport& report,
                                      const std::string& vm_id) {
  for (const auto& vm : report.vms()) {
    if (vm.vm_id() == vm_id) return &vm;
  }
  return nullptr;
}

class AgentPressureTest : public AgentLinkTest {
 protected:
  void MakePressureAgent(absl::Duration rss_interval) {
    probe_ = std::make_shared<FakeVmProcessProbe>();
    probe_->Set(100, 900 * kMiB);
    fake_->SetPid("a", 100);
    MakeAgent({}, [&](AgentParams& p) {
      p.vm_probe = probe_;
      p.rss_interval = rss_interval;
      p.min_early_report_interval = absl::Milliseconds(200);
      p.tick_interval = absl::Milliseconds(20);
    });
  }

  // Waits (real time, bounded) until the agent's three loops are parked on
  // the clock, so that an Advance is seen by all of them.
  bool Parked() {
    return WaitUntilReal([&] { return clock_.pending_waits() >= 3; });
  }

  // Index of the first report after the `n` messages already received
  // that satisfies `pred`, waiting in real time only (the clock stays).
  bool WaitForReportReal(size_t n, const std::function<bool(const membroker::v1::HostReport&)>& pred) {
    return WaitUntilReal([&] {
      const std::vector<AgentMessage> m = broker_.service.received();
      for (size_t i = n; i < m.size(); ++i) {
        if (m[i].has_report() && pred(m[i].report())) return true;
      }
      return false;
    });
  }

  std::shared_ptr<FakeVmProcessProbe> probe_;
};

TEST_F(AgentPressureTest, RssGrowthSendsAReportWithinTheClockStepAndGrantsLocally) {
  broker_.service.set_report_interval(absl::Minutes(10));
  MakePressureAgent(absl::Milliseconds(200));
  agent_->Start();
  ASSERT_TRUE(broker_.service.WaitFor(
      [](const std::vector<AgentMessage>& m, int) { return CountReports(m) >= 1; }));
  // A flat RSS (900 MiB of an actual of 1024 MiB) is no pressure.
  for (int i = 0; i < 3; ++i) {
    ASSERT_TRUE(Parked());
    clock_.Advance(absl::Milliseconds(200));
  }
  ASSERT_TRUE(Parked());
  const size_t before = broker_.service.received().size();
  EXPECT_EQ(fake_->target("a"), 0u);
  // RSS grows by 100 MiB to 1000 MiB: within max(64, 102.4) MiB of actual.
  probe_->Set(100, 1000 * kMiB);
  clock_.Advance(absl::Milliseconds(200));
  // The early report goes out without any further simulated time.
  ASSERT_TRUE(WaitForReportReal(before, [](const membroker::v1::HostReport& r) {
    const membroker::v1::VmSample* a = FindVm(r, "a");
    return r.pressure_event() && a != nullptr && a->host_rss_bytes() == 1000 * kMiB &&
           HasReason(*a, membroker::v1::PRESSURE_REASON_RSS_NEAR_ACTUAL);
  }));
  // And the agent deflated the guest by a bounded grant before the broker
  // answered: 1024 + min(256, 8192 - (1024 + 2048) - 32) = 1280 MiB.
  ASSERT_TRUE(WaitUntilReal([&] { return fake_->target("a") == 1280 * kMiB; }));
  EXPECT_EQ(fake_->target("b"), 0u);
  ASSERT_TRUE(WaitUntilReal(
      [&] { return MetricValue(*registry_, "membroker_agent_local_grants_total") == 1; }));
  EXPECT_EQ(MetricValue(*registry_, "membroker_agent_local_grant_bytes_total"),
            static_cast<double>(256 * kMiB));
  // The grant is reported (after the rate bound) for the broker to reconcile.
  ASSERT_TRUE(Parked());
  clock_.Advance(absl::Milliseconds(200));
  ASSERT_TRUE(WaitForReportReal(before, [](const membroker::v1::HostReport& r) {
    const membroker::v1::VmSample* a = FindVm(r, "a");
    return a != nullptr && a->local_grant_bytes() == 256 * kMiB &&
           a->last_target_bytes() == 1280 * kMiB;
  }));
  // The broker's next decision replaces the grant.
  ASSERT_TRUE(broker_.service.Send(Targets(1, {{"a", 1100 * kMiB}, {"b", 2048 * kMiB}})));
  ASSERT_TRUE(WaitUntil([&] { return FindAck(broker_.service.received(), 1).has_value(); }));
  EXPECT_EQ(fake_->target("a"), 1100 * kMiB);
  const membroker::v1::HostReport report = agent_->BuildReport(false);
  const membroker::v1::VmSample* a = FindVm(report, "a");
  ASSERT_NE(a, nullptr);
  EXPECT_EQ(a->last_target_bytes(), 1100 * kMiB);
  EXPECT_EQ(a->local_grant_bytes(), 0u);
}

TEST_F(AgentPressureTest, EarlyReportsAreRateBounded) {
  broker_.service.set_report_interval(absl::Minutes(10));
  // RSS grows by 8 MiB at every 50 ms read: pressure at every read.
  MakePressureAgent(absl::Milliseconds(50));
  probe_->Set(100, 1000 * kMiB, 8 * kMiB);
  agent_->Start();
  ASSERT_TRUE(broker_.service.WaitFor(
      [](const std::vector<AgentMessage>& m, int) { return CountReports(m) >= 1; }));
  // Two simulated seconds in 10 ms steps, each seen by every loop.
  for (int i = 0; i < 200; ++i) {
    ASSERT_TRUE(Parked());
    clock_.Advance(absl::Milliseconds(10));
  }
  ASSERT_TRUE(Parked());
  std::vector<absl::Time> sent;
  for (const auto& m : broker_.service.received()) {
    if (m.has_report() && m.report().pressure_event()) sent.push_back(FromProto(m.report().sent_at()));
  }
  // Pressure was seen 40 times; reports went out every 200 ms at most.
  EXPECT_GE(sent.size(), 5u);
  EXPECT_LE(sent.size(), 11u);
  for (size_t i = 1; i < sent.size(); ++i) {
    EXPECT_GE(sent[i] - sent[i - 1], absl::Milliseconds(200)) << i;
  }
}

TEST_F(AgentPressureTest, DeflateOnOomIsReportedAtOnce) {
  broker_.service.set_report_interval(absl::Minutes(10));
  MakePressureAgent(absl::Milliseconds(200));
  agent_->Start();
  ASSERT_TRUE(broker_.service.WaitFor(
      [](const std::vector<AgentMessage>& m, int) { return CountReports(m) >= 1; }));
  ASSERT_TRUE(broker_.service.Send(Targets(1, {{"a", 1024 * kMiB}, {"b", 2048 * kMiB}})));
  ASSERT_TRUE(WaitUntil([&] { return FindAck(broker_.service.received(), 1).has_value(); }));
  for (int i = 0; i < 2; ++i) {
    ASSERT_TRUE(Parked());
    clock_.Advance(absl::Milliseconds(200));
  }
  ASSERT_TRUE(Parked());
  const size_t before = broker_.service.received().size();
  // The guest takes 100 MiB back from its balloon, with no target asking.
  fake_->SetActual("a", 1124 * kMiB);
  clock_.Advance(absl::Milliseconds(20));  // One tick: the VMs are listed.
  ASSERT_TRUE(WaitForReportReal(before, [](const membroker::v1::HostReport& r) {
    const membroker::v1::VmSample* a = FindVm(r, "a");
    return r.pressure_event() && a != nullptr &&
           HasReason(*a, membroker::v1::PRESSURE_REASON_BALLOON_DEFLATE_ON_OOM);
  }));
}

TEST_F(AgentLinkTest, StopsWithoutABroker) {
  broker_.Stop();
  MakeAgent();
  agent_->Start();
  ASSERT_TRUE(WaitUntil(
      [&] { return MetricValue(*registry_, "membroker_agent_reconnects_total") >= 2; }));
  EXPECT_FALSE(agent_->connected());
  agent_->Stop();  // returns promptly: the link is between attempts or failing fast
}

TEST_F(AgentLinkTest, ReportCarriesHealthAndUntrustedStats) {
  GuestMemoryStats bad;
  bad.total_bytes = 100 * kMiB;
  bad.available_bytes = 200 * kMiB;  // impossible
  bad.last_update = clock_.Now();
  fake_->SetStats("b", bad);
  MakeAgent();
  ASSERT_TRUE(agent_->Tick().ok());
  membroker::v1::HostReport report = agent_->BuildReport(false);
  ASSERT_EQ(report.vms_size(), 2);
  for (const auto& vm : report.vms()) {
    if (vm.vm_id() == "a") {
      EXPECT_EQ(vm.health(), membroker::v1::BALLOON_HEALTH_OK);
      EXPECT_FALSE(vm.stats().untrusted());
      EXPECT_EQ(vm.stats().total_bytes(), 1000 * kMiB);
      EXPECT_TRUE(vm.stats().has_age_seconds());
      EXPECT_EQ(vm.max_bytes(), 4096 * kMiB);
    } else {
      EXPECT_EQ(vm.health(), membroker::v1::BALLOON_HEALTH_STATS_UNAVAILABLE);
      EXPECT_TRUE(vm.stats().untrusted());
      EXPECT_THAT(vm.stats().untrusted_reason(), HasSubstr("available_bytes"));
      EXPECT_FALSE(vm.stats().has_swap_in_bytes_total());
    }
  }
  // A hypervisor that cannot be reached is an error, not a crash.
  fake_->SetListError(absl::UnavailableError("libvirtd is down"));
  EXPECT_EQ(agent_->Tick().code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(agent_->BuildReport(false).vms_size(), 2);  // the last known VMs
}

// A WorkingSetProbe fed by the test: every process touched `referenced`
// bytes, its cgroup stalls at `psi` percent.
class FakeWorkingSetProbe : public WorkingSetProbe {
 public:
  absl::Status ClearReferenced(int64_t /*pid*/) const override { return absl::OkStatus(); }
  absl::StatusOr<GuestRamReferenced> ReadReferenced(int64_t /*pid*/,
                                                    uint64_t boot_bytes) const override {
    GuestRamReferenced r;
    r.referenced_bytes = referenced;
    r.mapping_bytes = boot_bytes;
    r.mappings = 1;
    return r;
  }
  absl::StatusOr<double> CgroupPressureSomeAvg10(int64_t /*pid*/) const override { return psi; }
  absl::StatusOr<bool> RunsKvmGuest(int64_t /*pid*/) const override { return false; }
  uint64_t referenced = 0;
  double psi = 0;
};

TEST_F(AgentLinkTest, WorkingSetOfAVmWithoutUsableStatisticsIsReported) {
  GuestMemoryStats bad;
  bad.total_bytes = 100 * kMiB;
  bad.available_bytes = 200 * kMiB;  // impossible: "b" is not trusted
  bad.last_update = clock_.Now();
  fake_->SetStats("b", bad);
  fake_->SetPid("a", 100);
  fake_->SetPid("b", 200);
  auto probe = std::make_shared<FakeWorkingSetProbe>();
  probe->referenced = 300 * kMiB;
  probe->psi = 12.5;
  double cpu = 0;
  MakeAgent({}, [&](AgentParams& p) {
    p.working_set_probe = probe;
    p.working_set_cpu_seconds = [&cpu] { return cpu += 0.001; };
  });
  ASSERT_TRUE(agent_->Tick().ok());
  agent_->SampleWorkingSet();  // clears only: no working set yet
  const membroker::v1::VmSample* b0 = FindVm(agent_->BuildReport(false), "b");
  ASSERT_NE(b0, nullptr);
  EXPECT_FALSE(b0->has_host_working_set_bytes());
  clock_.Advance(absl::Seconds(10));
  agent_->SampleWorkingSet();
  const membroker::v1::HostReport report = agent_->BuildReport(false);
  const membroker::v1::VmSample* a = FindVm(report, "a");
  const membroker::v1::VmSample* b = FindVm(report, "b");
  ASSERT_NE(a, nullptr);
  ASSERT_NE(b, nullptr);
  // Only the VM without usable statistics is measured.
  EXPECT_FALSE(a->has_host_working_set_bytes());
  EXPECT_FALSE(a->has_host_psi_some_avg10_percent());
  EXPECT_EQ(b->host_working_set_bytes(), 300 * kMiB);
  EXPECT_EQ(b->host_working_set_interval_ms(), 10000u);
  EXPECT_DOUBLE_EQ(b->host_psi_some_avg10_percent(), 12.5);
  EXPECT_EQ(MetricValue(*registry_, "membroker_agent_working_set_measured_vms"), 1);
  EXPECT_GT(MetricValue(*registry_, "membroker_agent_working_set_cpu_seconds_total"), 0);
  EXPECT_GT(MetricValue(*registry_, "membroker_agent_working_set_cpu_seconds_per_vm"), 0);
}

TEST(SetHostSignalsTest, KeepsToWhatTheBrokerAccepts) {
  WorkingSetSample s;
  s.working_set_bytes = 5000 * kMiB;
  s.interval = absl::Seconds(10);
  s.psi_some_avg10_percent = 3;
  membroker::v1::VmSample out;
  SetHostSignals(s, 4096 * kMiB, out);
  EXPECT_EQ(out.host_working_set_bytes(), 4096 * kMiB);  // capped at max
  EXPECT_EQ(out.host_working_set_interval_ms(), 10000u);
  EXPECT_EQ(out.host_working_set_method(), membroker::v1::HOST_WORKING_SET_METHOD_UNSPECIFIED);
  EXPECT_DOUBLE_EQ(out.host_psi_some_avg10_percent(), 3);
  s.method = "refault";
  membroker::v1::VmSample refault;
  SetHostSignals(s, 4096 * kMiB, refault);
  EXPECT_EQ(refault.host_working_set_method(), membroker::v1::HOST_WORKING_SET_METHOD_REFAULT);
  s.method = "clear_refs";
  SetHostSignals(s, 4096 * kMiB, refault);
  EXPECT_EQ(refault.host_working_set_method(), membroker::v1::HOST_WORKING_SET_METHOD_CLEAR_REFS);
  s.interval = absl::Milliseconds(10);  // too short: left out
  s.psi_some_avg10_percent = std::nan("");
  membroker::v1::VmSample none;
  SetHostSignals(s, 4096 * kMiB, none);
  EXPECT_FALSE(none.has_host_working_set_bytes());
  EXPECT_EQ(none.host_working_set_interval_ms(), 0u);
  EXPECT_EQ(none.host_working_set_method(), membroker::v1::HOST_WORKING_SET_METHOD_UNSPECIFIED);
  EXPECT_FALSE(none.has_host_psi_some_avg10_percent());
}

// A VM whose hypervisor calls hang forever: the agent keeps reporting,
// keeps applying the other VMs' targets, reports the VM as hung, acks its
// target with the reason, and stops while the call still hangs.
TEST_F(AgentLinkTest, AHungVmDoesNotStallReportsOrTheOtherVms) {
  fake_->AddVm("h", 2048 * kMiB, 2048 * kMiB);
  HypervisorCallParams calls;
  calls.call_timeout = absl::Seconds(5);
  calls.concurrent_vms = true;  // the fake is thread-safe
  MakeAgent(calls);
  agent_->Start();
  ASSERT_TRUE(broker_.service.WaitFor(
      [](const std::vector<AgentMessage>& m, int) { return CountReports(m) >= 1; }));
  fake_->Hang("h");
  // b shrinks (one 128 MiB step), h shrinks (hangs), a grows: the actuator
  // issues them in that order.
  ASSERT_TRUE(broker_.service.Send(
      Targets(1, {{"a", 3072 * kMiB}, {"b", 1024 * kMiB}, {"h", 1024 * kMiB}})));
  ASSERT_TRUE(fake_->WaitForHangingCalls(1, kWait));
  EXPECT_EQ(fake_->target("b"), 1920 * kMiB);

  // While the call hangs (its 5 s deadline not reached), reports go on
  // with every VM.
  const int before = CountReports(broker_.service.received());
  for (int i = 0; i < 3; ++i) {
    // The hung call's wait and the report loop are parked on the clock.
    ASSERT_TRUE(WaitUntilReal([&] { return clock_.pending_waits() >= 2; }));
    clock_.Advance(absl::Milliseconds(100));  // one report interval
    const int want = before + i + 1;
    ASSERT_TRUE(WaitUntilReal([&] { return CountReports(broker_.service.received()) >= want; }));
  }
  EXPECT_FALSE(FindAck(broker_.service.received(), 1).has_value());  // h not done yet

  // The deadline passes: h is given up, a is applied, the ack names h.
  clock_.Advance(absl::Seconds(5));
  ASSERT_TRUE(broker_.service.WaitFor([](const std::vector<AgentMessage>& m, int) {
    return FindAck(m, 1).has_value();
  }));
  membroker::v1::TargetAck ack = *FindAck(broker_.service.received(), 1);
  ASSERT_EQ(ack.errors().size(), 1u);
  ASSERT_EQ(ack.errors().count("h"), 1u);
  EXPECT_THAT(ack.errors().at("h"), HasSubstr("has not returned after 5s"));
  EXPECT_EQ(fake_->target("a"), 3072 * kMiB);

  // Reports show h hung and the others with their applied targets.
  ASSERT_TRUE(broker_.service.WaitFor([](const std::vector<AgentMessage>& m, int) {
    for (auto it = m.rbegin(); it != m.rend(); ++it) {
      if (!it->has_report()) continue;
      bool hung = false;
      bool a_applied = false;
      for (const auto& vm : it->report().vms()) {
        if (vm.vm_id() == "h") {
          hung = vm.health() == membroker::v1::BALLOON_HEALTH_STUCK && vm.stats().untrusted() &&
                 vm.stats().untrusted_reason().find("hypervisor call hung") != std::string::npos;
        }
        if (vm.vm_id() == "a") a_applied = vm.last_target_bytes() == 3072 * kMiB;
      }
      return hung && a_applied && it->report().vms_size() == 3;
    }
    return false;
  }));
  // The step updates its metrics right after publishing.
  EXPECT_TRUE(WaitUntilReal([&] {
    return VmMetricValue(*registry_, "membroker_agent_vm_stuck", "vm-h") == 1 &&
           MetricValue(*registry_, "membroker_agent_hypervisor_calls_hung") == 1;
  }));

  // A new TargetSet while h still hangs: a and b are applied; h fails at
  // once instead of waiting behind its hung call.
  fake_->SettleBalloons();
  ASSERT_TRUE(broker_.service.Send(
      Targets(2, {{"a", 3584 * kMiB}, {"b", 2048 * kMiB}, {"h", 1024 * kMiB}})));
  ASSERT_TRUE(broker_.service.WaitFor([](const std::vector<AgentMessage>& m, int) {
    return FindAck(m, 2).has_value();
  }));
  ack = *FindAck(broker_.service.received(), 2);
  ASSERT_EQ(ack.errors().size(), 1u);
  EXPECT_THAT(ack.errors().at("h"), HasSubstr("not attempted"));
  EXPECT_EQ(fake_->target("a"), 3584 * kMiB);
  EXPECT_EQ(fake_->target("b"), 2048 * kMiB);
  EXPECT_EQ(fake_->hanging_calls(), 1);  // h's first call, still in the backend

  // The hung call returns late: its result is dropped, its lane is free
  // again, and a later step applies h's target (first step: 2048 - 128)
  // and reports it healthy.
  fake_->Release("h");
  ASSERT_TRUE(WaitUntilReal([&] { return fake_->released_calls() == 1; }));
  ASSERT_TRUE(broker_.service.WaitFor([](const std::vector<AgentMessage>& m, int) {
    for (auto it = m.rbegin(); it != m.rend(); ++it) {
      if (!it->has_report()) continue;
      for (const auto& vm : it->report().vms()) {
        if (vm.vm_id() != "h") continue;
        return vm.health() != membroker::v1::BALLOON_HEALTH_STUCK &&
               vm.last_target_bytes() == 1920 * kMiB &&
               vm.stats().untrusted_reason().find("hung") == std::string::npos;
      }
      return false;
    }
    return false;
  }));
  EXPECT_TRUE(WaitUntilReal([&] {
    return VmMetricValue(*registry_, "membroker_agent_vm_stuck", "vm-h") == 0 &&
           MetricValue(*registry_, "membroker_agent_hypervisor_calls_hung") == 0;
  }));
  agent_->Stop();
}

// With a thread-compatible backend (one call at a time, the default), a
// hung call makes the other VMs' calls fail fast; reports keep flowing.
TEST_F(AgentLinkTest, AHungCallOnASerialBackendFailsTheOthersFast) {
  fake_->AddVm("h", 4096 * kMiB, 4096 * kMiB);
  HypervisorCallParams calls;
  calls.call_timeout = absl::Seconds(5);
  MakeAgent(calls);
  agent_->Start();
  ASSERT_TRUE(broker_.service.WaitFor(
      [](const std::vector<AgentMessage>& m, int) { return CountReports(m) >= 1; }));
  fake_->Hang("h");
  ASSERT_TRUE(broker_.service.Send(Targets(1, {{"h", 2048 * kMiB}})));
  ASSERT_TRUE(fake_->WaitForHangingCalls(1, kWait));
  clock_.Advance(absl::Seconds(5));
  ASSERT_TRUE(broker_.service.WaitFor([](const std::vector<AgentMessage>& m, int) {
    return FindAck(m, 1).has_value();
  }));
  ASSERT_TRUE(broker_.service.Send(Targets(2, {{"a", 3072 * kMiB}})));
  ASSERT_TRUE(broker_.service.WaitFor([](const std::vector<AgentMessage>& m, int) {
    return FindAck(m, 2).has_value();
  }));
  membroker::v1::TargetAck ack = *FindAck(broker_.service.received(), 2);
  ASSERT_EQ(ack.errors().count("a"), 1u);
  EXPECT_THAT(ack.errors().at("a"), HasSubstr("not attempted: SetBalloonTarget on VM h"));
  EXPECT_EQ(fake_->target("a"), 0u);
  // Reports keep coming, from the last listing, with h marked hung.
  const int before = CountReports(broker_.service.received());
  ASSERT_TRUE(broker_.service.WaitFor([before](const std::vector<AgentMessage>& m, int) {
    if (CountReports(m) < before + 2) return false;
    // The newest report decides.
    for (auto it = m.rbegin(); it != m.rend(); ++it) {
      if (!it->has_report()) continue;
      for (const auto& vm : it->report().vms()) {
        if (vm.vm_id() == "h") return vm.health() == membroker::v1::BALLOON_HEALTH_STUCK;
      }
      return false;
    }
    return false;
  }));
  // The agent stops while the call hangs (Stop returns); the call returns
  // later, on its own thread, with the backend still alive.
  agent_->Stop();
  EXPECT_EQ(fake_->hanging_calls(), 1);
  fake_->Release("h");
  ASSERT_TRUE(WaitUntilReal([&] { return fake_->released_calls() == 1; }));
  agent_.reset();
}

#ifdef MB_HAVE_SIM
// The whole path with the simulator: a target from the broker moves a
// simulated balloon, and the reports show it.
TEST(AgentSimTest, BrokerTargetsMoveASimulatedBalloon) {
  ManualClock clock;
  Broker broker;
  ASSERT_TRUE(broker.Start(0));
  broker.service.set_clock(&clock);
  membroker::v1::SimConfig config;
  ASSERT_TRUE(ParseTextProto(R"pb(
                host_total_bytes: 17179869184
                time_scale: 1
                balloon_rate_bytes_per_second: 2147483648
                vms {
                  name: "web"
                  max_bytes: 4294967296
                  workload { constant { working_set_bytes: 1073741824 } }
                }
              )pb",
                             "test", &config)
                  .ok());
  auto sim = SimHypervisor::Create(config, &clock);
  ASSERT_TRUE(sim.ok()) << sim.status();
  AgentParams params;
  params.host_id = "sim-host";
  params.capacity_bytes = config.host_total_bytes();
  params.host_total_bytes = config.host_total_bytes();
  params.tick_interval = absl::Milliseconds(20);
  auto registry = std::make_shared<prometheus::Registry>();
  const uint64_t total = config.host_total_bytes();
  Agent agent(
      params, *std::move(sim),
      [total](const std::vector<VmStatus>& vms) {
        return absl::StatusOr<HostMemorySample>(SimHostSample(total, vms));
      },
      &clock,
      grpc::CreateChannel(absl::StrCat("127.0.0.1:", broker.port),
                          grpc::InsecureChannelCredentials()),
      registry);
  agent.Start();
  ASSERT_TRUE(broker.service.WaitFor(
      [](const std::vector<AgentMessage>& m, int) { return CountReports(m) >= 1; }));
  std::string vm_id;
  for (const auto& m : broker.service.received()) {
    if (m.has_report() && m.report().vms_size() == 1) vm_id = m.report().vms(0).vm_id();
  }
  ASSERT_FALSE(vm_id.empty());
  EXPECT_EQ(broker.service.received().front().hello().backend(), "sim");
  BrokerMessage targets;
  targets.mutable_targets()->set_generation(1);
  auto* t = targets.mutable_targets()->add_targets();
  t->set_vm_id(vm_id);
  t->set_target_bytes(3072 * kMiB);
  ASSERT_TRUE(broker.service.Send(targets));
  ASSERT_TRUE(broker.service.WaitFor([&](const std::vector<AgentMessage>& m, int) {
    for (const auto& x : m) {
      if (!x.has_report() || x.report().vms_size() != 1) continue;
      const auto& vm = x.report().vms(0);
      if (vm.last_target_bytes() == 3072 * kMiB && vm.actual_bytes() == 3072 * kMiB &&
          vm.health() == membroker::v1::BALLOON_HEALTH_OK) {
        return true;
      }
    }
    return false;
  }));
  // Reclaim went in steps: in every report (one step's snapshot), the
  // target in force is at most one step (128 MiB from the Welcome) below
  // the balloon's actual. A target set in one go would be 1 GiB below.
  int reports_with_target = 0;
  for (const auto& m : broker.service.received()) {
    if (!m.has_report() || m.report().vms_size() != 1) continue;
    const auto& vm = m.report().vms(0);
    if (vm.last_target_bytes() == 0) continue;
    ++reports_with_target;
    EXPECT_GE(vm.last_target_bytes() + 128 * kMiB, vm.actual_bytes()) << vm.DebugString();
  }
  EXPECT_GT(reports_with_target, 1);
  agent.Stop();
}
#endif  // MB_HAVE_SIM

}  // namespace
}  // namespace membroker::agent

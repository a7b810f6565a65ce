// membrokerctl against the real broker, in-process on 127.0.0.1:0, with one
// agent stream feeding it a host of three VMs (one with a name full of
// characters that need escaping): the client's requests and the broker's
// replies agree on the wire contract, and json and yaml read back.

#include <gmock/gmock.h>
#include <google/protobuf/util/json_util.h>
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>
#include <unistd.h>
#include <yaml-cpp/yaml.h>

#include <chrono>
#include <filesystem>
#include <memory>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "broker/server.h"
#include "client/ctl.h"
#include "membroker/v1/agent.grpc.pb.h"

namespace membroker::client {
namespace {

using ::testing::HasSubstr;

constexpr uint64_t kMiB = uint64_t{1} << 20;
constexpr uint64_t kGiB = uint64_t{1} << 30;
// A VM name with a character outside the BMP, a quote, a newline and a colon.
constexpr char kOddName[] = "caf\xC3\xA9 \xF0\x9F\x98\x80 \"q\"\nkey: value";

v1::VmSample Sample(const std::string& id, const std::string& name, uint64_t max, uint64_t used) {
  v1::VmSample s;
  s.set_vm_id(id);
  s.set_name(name);
  s.set_max_bytes(max);
  s.set_actual_bytes(max);
  s.set_health(v1::BALLOON_HEALTH_OK);
  s.mutable_stats()->set_total_bytes(max);
  s.mutable_stats()->set_available_bytes(max - used);
  s.mutable_stats()->set_age_seconds(0);
  s.mutable_stats()->set_free_bytes(max - used);
  s.mutable_stats()->set_swap_in_bytes_total(0);
  s.mutable_stats()->set_major_faults_total(0);
  return s;
}

struct Result {
  int code;
  std::string out;
  std::string err;
};

class CtlBrokerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::random_device rd;
    state_dir_ = (std::filesystem::temp_directory_path() /
                  absl::StrCat("mb_ctl_broker_test_", rd(), "_", ::getpid()))
                     .string();
    std::filesystem::create_directories(state_dir_);
    broker::BrokerOptions o;
    o.listen = "127.0.0.1:0";
    o.metrics_listen = "127.0.0.1:0";
    o.state_dir = state_dir_;
    auto b = broker::Broker::Start(o, RealClock::Get());
    ASSERT_TRUE(b.ok()) << b.status();
    broker_ = std::move(*b);
    address_ = absl::StrCat("127.0.0.1:", broker_->grpc_port());

    // One agent: Hello, then a report of two VMs.
    channel_ = grpc::CreateChannel(address_, grpc::InsecureChannelCredentials());
    agent_ = v1::AgentService::NewStub(channel_);
    stream_context_ = std::make_unique<grpc::ClientContext>();
    stream_context_->set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
    stream_ = agent_->Connect(stream_context_.get());
    v1::AgentMessage hello;
    hello.mutable_hello()->set_host_id("h1");
    hello.mutable_hello()->set_backend("sim");
    hello.mutable_hello()->set_capacity_bytes(16 * kGiB);
    hello.mutable_hello()->set_host_total_bytes(32 * kGiB);
    ASSERT_TRUE(stream_->Write(hello));
    v1::AgentMessage report;
    report.mutable_report()->set_sequence(1);
    report.mutable_report()->mutable_host()->set_mem_total_bytes(32 * kGiB);
    report.mutable_report()->mutable_host()->set_mem_available_bytes(8 * kGiB);
    *report.mutable_report()->add_vms() = Sample("vm-web", "web", 8 * kGiB, 2 * kGiB);
    *report.mutable_report()->add_vms() = Sample("vm-db", "db", 8 * kGiB, 6 * kGiB);
    *report.mutable_report()->add_vms() = Sample("vm-odd", kOddName, 2 * kGiB, 1 * kGiB);
    ASSERT_TRUE(stream_->Write(report));

    // Wait, bounded by count and deadline, until the broker lists both VMs.
    const absl::Time deadline = absl::Now() + absl::Seconds(10);
    bool ready = false;
    for (int i = 0; i < 100 && absl::Now() < deadline && !ready; ++i) {
      Result r = Ctl({"get", "vms", "-o", "json"});
      ready = r.code == 0 && r.out.find("\"vm-web\"") != std::string::npos &&
              r.out.find("\"vm-db\"") != std::string::npos &&
              r.out.find("\"vm-odd\"") != std::string::npos;
      if (!ready) absl::SleepFor(absl::Milliseconds(100));
    }
    ASSERT_TRUE(ready) << "the broker never listed the reported VMs";
  }

  void TearDown() override {
    if (stream_) {
      // Close the agent's side and drain: the broker then ends the stream
      // (bounded by the stream's deadline).
      stream_->WritesDone();
      v1::BrokerMessage ignored;
      for (int i = 0; i < 1000 && stream_->Read(&ignored); ++i) {
      }
      stream_->Finish();
      stream_.reset();
    }
    if (broker_) broker_->Shutdown();
    broker_.reset();
    std::filesystem::remove_all(state_dir_);
  }

  Result Ctl(std::vector<std::string> args) {
    args.insert(args.begin(), {"--insecure", "--server=" + address_});
    std::ostringstream out, err;
    CtlEnvironment env;
    int code = RunCtl(args, out, err, env);
    return {code, out.str(), err.str()};
  }

  std::string state_dir_;
  std::unique_ptr<broker::Broker> broker_;
  std::string address_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::AgentService::Stub> agent_;
  std::unique_ptr<grpc::ClientContext> stream_context_;
  std::unique_ptr<grpc::ClientReaderWriter<v1::AgentMessage, v1::BrokerMessage>> stream_;
};

TEST_F(CtlBrokerTest, ListsDescribesAndExplains) {
  Result r = Ctl({"get", "hosts"});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_THAT(r.out, HasSubstr("h1"));
  EXPECT_THAT(r.out, HasSubstr("16 GiB"));

  r = Ctl({"get", "vms", "--host=h1"});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_THAT(r.out, HasSubstr("web"));
  EXPECT_THAT(r.out, HasSubstr("8 GiB"));

  r = Ctl({"describe", "host", "h1", "-o", "yaml"});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_THAT(r.out, HasSubstr("host_id: h1\n"));
  EXPECT_THAT(r.out, HasSubstr("capacity_bytes: \"17179869184\"\n"));

  r = Ctl({"describe", "vm", "web"});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_THAT(r.out, HasSubstr("vm-web"));

  r = Ctl({"explain", "vm", "vm-db"});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_THAT(r.out, HasSubstr("VM db (vm-db) on host h1"));
  // At least one step line follows the heading.
  const size_t steps = r.out.find("Steps:\n");
  ASSERT_NE(steps, std::string::npos);
  EXPECT_GT(r.out.size(), steps + 10);
  EXPECT_EQ(r.out.substr(steps + 7, 2), "  ");
}

TEST_F(CtlBrokerTest, JsonAndYamlReadBackToTheBrokersValues) {
  Result r = Ctl({"describe", "vm", "vm-odd", "-o", "json"});
  ASSERT_EQ(r.code, 0) << r.err;
  v1::Vm vm;
  ASSERT_TRUE(google::protobuf::util::JsonStringToMessage(r.out, &vm).ok()) << r.out;
  EXPECT_EQ(vm.vm_id(), "vm-odd");
  EXPECT_EQ(vm.name(), kOddName);
  EXPECT_EQ(vm.max_bytes(), 2 * kGiB);
  EXPECT_EQ(vm.host_id(), "h1");

  r = Ctl({"get", "vms", "-o", "yaml"});
  ASSERT_EQ(r.code, 0) << r.err;
  YAML::Node doc = YAML::Load(r.out);
  ASSERT_TRUE(doc["vms"].IsSequence()) << r.out;
  ASSERT_EQ(doc["vms"].size(), 3u) << r.out;
  bool found = false;
  for (const YAML::Node& item : doc["vms"]) {
    if (item["vm_id"].as<std::string>() != "vm-odd") continue;
    found = true;
    EXPECT_EQ(item["name"].as<std::string>(), kOddName) << r.out;
    EXPECT_EQ(item["max_bytes"].as<uint64_t>(), 2 * kGiB);
    // 64-bit sizes stay strings, as in the JSON mapping.
    EXPECT_EQ(item["max_bytes"].Tag(), "!");
    EXPECT_EQ(item["health"].as<std::string>(), "BALLOON_HEALTH_OK");
    // Fields without presence print even when zero.
    EXPECT_TRUE(item["protect_bytes"].IsScalar()) << r.out;
  }
  EXPECT_TRUE(found) << r.out;
}

TEST_F(CtlBrokerTest, VmPolicyMergesGivenFields) {
  Result r = Ctl({"set", "vm", "web", "--min=1GiB"});
  ASSERT_EQ(r.code, 0) << r.err;
  r = Ctl({"set", "vm", "web", "--weight=300"});
  ASSERT_EQ(r.code, 0) << r.err;
  // The second call sent only the weight: the min set before is kept.
  EXPECT_THAT(r.out, HasSubstr("min=1 GiB"));
  EXPECT_THAT(r.out, HasSubstr("weight=300"));

  r = Ctl({"describe", "vm", "web", "-o", "json"});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_THAT(r.out, HasSubstr("\"weight\": 300"));

  r = Ctl({"unset", "vm", "web"});
  ASSERT_EQ(r.code, 0) << r.err;
  r = Ctl({"describe", "vm", "web", "-o", "json"});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_THAT(r.out, ::testing::Not(HasSubstr("\"weight\": 300")));
}

TEST_F(CtlBrokerTest, ClusterPolicyRoundTrip) {
  Result r = Ctl({"policy", "set", "--buffer-percent=30", "--reclaim-step=128MiB"});
  ASSERT_EQ(r.code, 0) << r.err;
  r = Ctl({"policy", "get", "-o", "json"});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_THAT(r.out, HasSubstr("\"buffer_percent\": 30"));
  EXPECT_THAT(r.out, HasSubstr(absl::StrCat("\"reclaim_step_bytes\": \"", 128 * kMiB, "\"")));
  r = Ctl({"policy", "get"});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_THAT(r.out, HasSubstr("128 MiB"));
}

TEST_F(CtlBrokerTest, UnknownNamesExitWithNotFound) {
  Result r = Ctl({"describe", "vm", "no-such-vm"});
  EXPECT_EQ(r.code, 64 + 5) << r.err;
  EXPECT_THAT(r.err, HasSubstr("NOT_FOUND"));
  r = Ctl({"describe", "host", "no-such-host"});
  EXPECT_EQ(r.code, 64 + 5) << r.err;
  r = Ctl({"explain", "vm", "no-such-vm"});
  EXPECT_EQ(r.code, 64 + 5) << r.err;
}

TEST_F(CtlBrokerTest, PlaceAndPlanAgainstTheRealBroker) {
  // h1: 16 GiB holding guests that use 2 + 6 + 1 GiB: not short, no moves.
  Result r = Ctl({"plan"});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(r.out, "No moves planned.\n");
  r = Ctl({"plan", "-o", "json"});
  ASSERT_EQ(r.code, 0) << r.err;
  v1::Plan plan;
  ASSERT_TRUE(google::protobuf::util::JsonStringToMessage(r.out, &plan).ok()) << r.out;
  EXPECT_EQ(plan.moves_size(), 0);
  EXPECT_EQ(plan.hosts_short_before(), 0u);

  // A 2 GiB VM fits on h1; a 64 GiB one fits nowhere, even after reclaim.
  r = Ctl({"place", "--bytes=2GiB", "--count=2"});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_THAT(r.out, HasSubstr("HOST  FREE"));
  EXPECT_THAT(r.out, HasSubstr("2 of 2 VMs placed: h1 x2"));
  r = Ctl({"place", "--bytes=2GiB", "-o", "yaml"});
  ASSERT_EQ(r.code, 0) << r.err;
  YAML::Node doc = YAML::Load(r.out);
  EXPECT_EQ(doc["options"][0]["host_id"].as<std::string>(), "h1") << r.out;
  EXPECT_EQ(doc["assignments"][0].as<std::string>(), "h1") << r.out;
  r = Ctl({"place", "--bytes=64GiB"});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(r.out, "No host can take such a VM, even after reclaim.\n");
}

}  // namespace
}  // namespace membroker::client

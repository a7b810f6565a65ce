// membrokerctl end to end in-process: RunCtl against a fake AdminService on
// 127.0.0.1:0 with canned data. Checks the request fields each command
// sends, the table/json/yaml output and the exit codes.

#include <gmock/gmock.h>
#include <google/protobuf/util/json_util.h>
#include <google/protobuf/util/message_differencer.h>
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>
#include <yaml-cpp/yaml.h>

#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "client/ctl.h"
#include "common/proto_time.h"
#include "membroker/v1/admin.grpc.pb.h"

namespace membroker::client {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

// Canned replies; records the last request of every method.
class FakeAdminService final : public v1::AdminService::Service {
 public:
  FakeAdminService() {
    v1::Host* h = hosts_.add_hosts();
    h->set_host_id("kvm-01");
    h->set_connected(true);
    h->set_backend("sim");
    h->set_vm_count(2);
    h->set_capacity_bytes(64ull << 30);
    h->set_target_bytes(40ull << 30);
    h->set_overcommitted(false);
    h->mutable_sample()->set_psi_some_avg10_percent(1.5);
    v1::Host* h2 = hosts_.add_hosts();
    h2->set_host_id("kvm-02");
    h2->set_connected(false);
    h2->set_overcommitted(true);

    for (int i = 0; i < 2; ++i) {
      v1::Vm* vm = vms_.add_vms();
      vm->set_vm_id(absl::StrCat("uuid-", i));
      vm->set_host_id(i == 0 ? "kvm-01" : "kvm-02");
      vm->set_name(absl::StrCat("web-", i));
      vm->set_max_bytes(8ull << 30);
      vm->set_actual_bytes(6ull << 30);
      vm->set_target_bytes(5ull << 30);
      vm->set_health(v1::BALLOON_HEALTH_OK);
      vm->set_reason(v1::REASON_SHARE);
    }

    // Outside the BMP, a quote, a newline, a colon, a backslash; a host id
    // and a reason YAML would read as other types if printed plain.
    odd_vm_.set_vm_id("uuid-odd");
    odd_vm_.set_host_id("123");
    odd_vm_.set_name("caf\xC3\xA9 \xF0\x9F\x98\x80 \"q\"\nkey: value \\ end");
    odd_vm_.set_max_bytes(2ull << 30);
    odd_vm_.mutable_policy()->set_weight(7);
    odd_vm_.mutable_policy()->set_pinned(false);
    odd_vm_.mutable_stats()->set_untrusted(true);
    odd_vm_.mutable_stats()->set_untrusted_reason("true");
  }

  // The canned replies.
  const v1::ListHostsResponse& hosts() const { return hosts_; }
  const v1::Vm& odd_vm() const { return odd_vm_; }

  grpc::Status ListHosts(grpc::ServerContext*, const v1::ListHostsRequest*,
                         v1::ListHostsResponse* reply) override {
    Count("ListHosts");
    *reply = hosts_;
    return grpc::Status::OK;
  }
  grpc::Status GetHost(grpc::ServerContext*, const v1::GetHostRequest* req,
                       v1::Host* reply) override {
    Record("GetHost", *req);
    for (const v1::Host& h : hosts_.hosts()) {
      if (h.host_id() == req->host_id()) {
        *reply = h;
        return grpc::Status::OK;
      }
    }
    return grpc::Status(grpc::StatusCode::NOT_FOUND, "host \"" + req->host_id() + "\" not found");
  }
  grpc::Status ListVms(grpc::ServerContext*, const v1::ListVmsRequest* req,
                       v1::ListVmsResponse* reply) override {
    Record("ListVms", *req);
    for (const v1::Vm& vm : vms_.vms()) {
      if (req->host_id().empty() || vm.host_id() == req->host_id()) *reply->add_vms() = vm;
    }
    return grpc::Status::OK;
  }
  grpc::Status GetVm(grpc::ServerContext*, const v1::GetVmRequest* req, v1::Vm* reply) override {
    Record("GetVm", *req);
    if (req->vm() == odd_vm_.vm_id()) {
      *reply = odd_vm_;
      return grpc::Status::OK;
    }
    for (const v1::Vm& vm : vms_.vms()) {
      if (vm.name() == req->vm() || vm.vm_id() == req->vm()) {
        *reply = vm;
        return grpc::Status::OK;
      }
    }
    return grpc::Status(grpc::StatusCode::NOT_FOUND, "vm \"" + req->vm() + "\" not found");
  }
  grpc::Status SetVmPolicy(grpc::ServerContext*, const v1::SetVmPolicyRequest* req,
                           v1::VmPolicy* reply) override {
    Record("SetVmPolicy", *req);
    if (req->policy().has_weight() && req->policy().weight() == 9999) {
      return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "weight 9999 is refused here");
    }
    *reply = req->policy();
    return grpc::Status::OK;
  }
  grpc::Status ClearVmPolicy(grpc::ServerContext*, const v1::ClearVmPolicyRequest* req,
                             v1::ClearVmPolicyResponse*) override {
    Record("ClearVmPolicy", *req);
    return grpc::Status::OK;
  }
  grpc::Status GetClusterPolicy(grpc::ServerContext*, const v1::GetClusterPolicyRequest*,
                                v1::ClusterPolicy* reply) override {
    Count("GetClusterPolicy");
    reply->set_buffer_percent(20);
    reply->set_host_free_margin_bytes(1ull << 30);
    reply->set_default_weight(100);
    *reply->mutable_report_interval() = ToProtoDuration(absl::Seconds(1));
    return grpc::Status::OK;
  }
  grpc::Status SetClusterPolicy(grpc::ServerContext*, const v1::SetClusterPolicyRequest* req,
                                v1::ClusterPolicy* reply) override {
    Record("SetClusterPolicy", *req);
    *reply = req->policy();
    return grpc::Status::OK;
  }
  grpc::Status ExplainVm(grpc::ServerContext*, const v1::ExplainVmRequest* req,
                         v1::Explanation* reply) override {
    Record("ExplainVm", *req);
    *reply->mutable_vm() = vms_.vms(0);
    reply->set_capacity_bytes(64ull << 30);
    reply->set_target_bytes(5ull << 30);
    reply->set_reason(v1::REASON_SHARE);
    reply->add_steps("floor = 2 GiB");
    reply->add_steps("weighted share = 5 GiB");
    return grpc::Status::OK;
  }
  grpc::Status Reserve(grpc::ServerContext*, const v1::ReserveRequest* req,
                       v1::Reservation* reply) override {
    Record("Reserve", *req);
    reply->set_id("r-1");
    reply->set_host_id(req->host_id());
    reply->set_bytes(req->bytes());
    return grpc::Status::OK;
  }
  grpc::Status Release(grpc::ServerContext*, const v1::ReleaseRequest* req,
                       v1::ReleaseResponse*) override {
    Record("Release", *req);
    if (req->id() != "r-1") {
      return grpc::Status(grpc::StatusCode::NOT_FOUND, "reservation " + req->id() + " not found");
    }
    return grpc::Status::OK;
  }
  grpc::Status Place(grpc::ServerContext*, const v1::PlaceRequest* req,
                     v1::PlaceResponse* reply) override {
    Record("Place", *req);
    v1::PlacementOption* o = reply->add_options();
    o->set_host_id("kvm-01");
    o->set_free_bytes(6ull << 30);
    o->set_headroom_bytes(2ll << 30);
    for (uint32_t i = 0; i < req->count(); ++i) reply->add_assignments("kvm-01");
    reply->set_requested(req->count());
    return grpc::Status::OK;
  }
  grpc::Status ListReservations(grpc::ServerContext*, const v1::ListReservationsRequest* req,
                                v1::ListReservationsResponse* reply) override {
    Record("ListReservations", *req);
    v1::Reservation* r = reply->add_reservations();
    r->set_id("r-1");
    r->set_host_id("kvm-01");
    r->set_bytes(4ull << 30);
    r->set_ready(true);
    r->set_for_vm_id("6f1c2a7e-0d3b-4c55-9a1e-2b7d4f8e9c10");
    return grpc::Status::OK;
  }
  // A snapshot of both VMs, one change and one removal, then the status a
  // broker gives a watcher that fell behind.
  grpc::Status WatchVms(grpc::ServerContext*, const v1::WatchVmsRequest* req,
                        grpc::ServerWriter<v1::VmEvent>* writer) override {
    Record("WatchVms", *req);
    v1::VmEvent e;
    e.set_type(v1::VmEvent::TYPE_SNAPSHOT);
    *e.mutable_vms() = vms_.vms();
    writer->Write(e);
    e.Clear();
    e.set_type(v1::VmEvent::TYPE_SNAPSHOT_END);
    writer->Write(e);
    e.Clear();
    e.set_type(v1::VmEvent::TYPE_CHANGES);
    v1::Vm changed = vms_.vms(0);
    changed.set_name("web-0-changed");
    *e.add_vms() = changed;
    v1::Vm* gone = e.add_removed();
    gone->set_vm_id("uuid-1");
    gone->set_host_id("kvm-02");
    writer->Write(e);
    return grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED, "watch fell behind: more than 1024 events unsent");
  }
  grpc::Status GetPlan(grpc::ServerContext*, const v1::GetPlanRequest*, v1::Plan* reply) override {
    Count("GetPlan");
    v1::PlannedMove* m = reply->add_moves();
    m->set_vm_id("uuid-1");
    m->set_from_host_id("kvm-02");
    m->set_to_host_id("kvm-01");
    m->set_bytes(4ull << 30);
    m->set_reason("floors exceed capacity");
    return grpc::Status::OK;
  }

  // The last request `method` received, as text ("" if none).
  std::string Last(const std::string& method) {
    absl::MutexLock lock(&mu_);
    auto it = last_.find(method);
    return it == last_.end() ? "" : it->second;
  }
  // How many calls `method` received.
  int Calls(const std::string& method) {
    absl::MutexLock lock(&mu_);
    return calls_[method];
  }
  // The last request of a method, parsed back.
  template <typename T>
  T LastAs(const std::string& method) {
    T msg;
    absl::MutexLock lock(&mu_);
    msg.ParseFromString(raw_[method]);
    return msg;
  }

 private:
  void Count(const std::string& method) {
    absl::MutexLock lock(&mu_);
    ++calls_[method];
  }
  void Record(const std::string& method, const google::protobuf::Message& req) {
    absl::MutexLock lock(&mu_);
    ++calls_[method];
    last_[method] = req.ShortDebugString();
    raw_[method] = req.SerializeAsString();
  }

  v1::ListHostsResponse hosts_;
  v1::ListVmsResponse vms_;
  v1::Vm odd_vm_;  // only reachable by GetVm
  absl::Mutex mu_;
  std::map<std::string, std::string> last_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, std::string> raw_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, int> calls_ ABSL_GUARDED_BY(mu_);
};

struct Result {
  int code;
  std::string out;
  std::string err;
};

class CtlIntegrationTest : public ::testing::Test {
 protected:
  void SetUp() override {
    grpc::ServerBuilder builder;
    builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port_);
    builder.RegisterService(&service_);
    server_ = builder.BuildAndStart();
    ASSERT_NE(server_, nullptr);
    ASSERT_GT(port_, 0);
  }
  void TearDown() override {
    if (server_) server_->Shutdown();
  }

  std::string Address() const { return absl::StrCat("127.0.0.1:", port_); }

  // Runs membrokerctl against the fake with --insecure and the server in
  // the environment, as an operator's shell would.
  Result Ctl(std::vector<std::string> args, CtlEnvironment env = {}) {
    env.vars["MEMBROKER_SERVER"] = Address();
    args.insert(args.begin(), "--insecure");
    std::ostringstream out, err;
    int code = RunCtl(args, out, err, env);
    return {code, out.str(), err.str()};
  }

  FakeAdminService service_;
  std::unique_ptr<grpc::Server> server_;
  int port_ = 0;
};

TEST_F(CtlIntegrationTest, GetHostsTableJsonYaml) {
  Result r = Ctl({"get", "hosts"});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_THAT(r.out, HasSubstr("HOST    CONNECTED  VMS  CAPACITY"));
  EXPECT_THAT(r.out, HasSubstr("kvm-01  true       2    64 GiB"));
  EXPECT_THAT(r.out, HasSubstr("PRESSURE  OVERCOMMITTED"));
  EXPECT_EQ(service_.Calls("ListHosts"), 1);

  r = Ctl({"get", "hosts", "-o", "json"});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_THAT(r.out, HasSubstr("\"hosts\": ["));
  EXPECT_THAT(r.out, HasSubstr("\"capacity_bytes\": \"68719476736\""));
  EXPECT_THAT(r.out, HasSubstr("\"host_id\": \"kvm-02\""));
  // Zero values print too (fields without presence), as the contract says.
  EXPECT_THAT(r.out, HasSubstr("\"vm_count\": 0"));
  v1::ListHostsResponse parsed;
  ASSERT_TRUE(google::protobuf::util::JsonStringToMessage(r.out, &parsed).ok()) << r.out;
  EXPECT_TRUE(google::protobuf::util::MessageDifferencer::Equals(parsed, service_.hosts()))
      << parsed.DebugString();

  r = Ctl({"get", "hosts", "-o", "yaml"});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_THAT(r.out, HasSubstr("hosts:\n  - host_id: kvm-01\n    connected: true\n"));
  EXPECT_THAT(r.out, HasSubstr("    capacity_bytes: \"68719476736\"\n"));
  YAML::Node doc = YAML::Load(r.out);
  ASSERT_EQ(doc["hosts"].size(), 2u) << r.out;
  EXPECT_EQ(doc["hosts"][1]["host_id"].as<std::string>(), "kvm-02");
  EXPECT_TRUE(doc["hosts"][1]["overcommitted"].as<bool>());
  EXPECT_EQ(doc["hosts"][0]["capacity_bytes"].as<uint64_t>(), 64ull << 30);
  EXPECT_DOUBLE_EQ(doc["hosts"][0]["sample"]["psi_some_avg10_percent"].as<double>(), 1.5);
}

TEST_F(CtlIntegrationTest, OddNamesReadBackFromJsonAndYaml) {
  Result r = Ctl({"describe", "vm", "uuid-odd", "-o", "json"});
  ASSERT_EQ(r.code, 0) << r.err;
  v1::Vm vm;
  ASSERT_TRUE(google::protobuf::util::JsonStringToMessage(r.out, &vm).ok()) << r.out;
  EXPECT_TRUE(google::protobuf::util::MessageDifferencer::Equals(vm, service_.odd_vm()))
      << vm.DebugString();

  r = Ctl({"describe", "vm", "uuid-odd", "-o", "yaml"});
  ASSERT_EQ(r.code, 0) << r.err;
  YAML::Node doc = YAML::Load(r.out);
  EXPECT_EQ(doc["name"].as<std::string>(), service_.odd_vm().name()) << r.out;
  // Strings that read as a number or a boolean when plain are quoted.
  EXPECT_EQ(doc["host_id"].as<std::string>(), service_.odd_vm().host_id()) << r.out;
  EXPECT_EQ(doc["host_id"].Tag(), "!") << r.out;
  EXPECT_EQ(doc["stats"]["untrusted_reason"].Tag(), "!") << r.out;
  EXPECT_EQ(doc["policy"]["weight"].as<uint32_t>(), 7u);
  EXPECT_FALSE(doc["policy"]["pinned"].as<bool>());
  EXPECT_FALSE(doc["policy"]["min_bytes"]) << "unset optional fields are omitted";
  EXPECT_EQ(doc["stats"]["untrusted_reason"].as<std::string>(), "true") << r.out;

  // People get the name as it is.
  r = Ctl({"describe", "vm", "uuid-odd"});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_THAT(r.out, HasSubstr(service_.odd_vm().name()));
}

TEST_F(CtlIntegrationTest, GetVmsSendsHostFilter) {
  Result r = Ctl({"get", "vms", "--host=kvm-02", "-o", "wide"});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(service_.Last("ListVms"), "host_id: \"kvm-02\"");
  EXPECT_THAT(r.out, HasSubstr("web-1"));
  EXPECT_THAT(r.out, Not(HasSubstr("web-0")));
  EXPECT_THAT(r.out, HasSubstr("VM_ID"));
  EXPECT_THAT(r.out, HasSubstr("uuid-1"));
  EXPECT_THAT(r.out, HasSubstr("8 GiB"));
  EXPECT_THAT(r.out, HasSubstr("share"));

  r = Ctl({"get", "vms", "-o", "json"});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(service_.Last("ListVms"), "");
  EXPECT_THAT(r.out, HasSubstr("\"vms\": ["));
  EXPECT_THAT(r.out, HasSubstr("\"max_bytes\": \"8589934592\""));
}

TEST_F(CtlIntegrationTest, DescribeAndExplain) {
  Result r = Ctl({"describe", "host", "kvm-01"});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(service_.Last("GetHost"), "host_id: \"kvm-01\"");
  EXPECT_THAT(r.out, HasSubstr("Capacity:"));
  EXPECT_THAT(r.out, HasSubstr("64 GiB"));

  r = Ctl({"describe", "vm", "web-0", "-o", "json"});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(service_.Last("GetVm"), "vm: \"web-0\"");
  EXPECT_THAT(r.out, HasSubstr("\"vm_id\": \"uuid-0\""));

  r = Ctl({"explain", "vm", "uuid-0"});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(service_.Last("ExplainVm"), "vm: \"uuid-0\"");
  EXPECT_THAT(r.out, HasSubstr("5 GiB (5368709120)"));
  EXPECT_THAT(r.out, HasSubstr("Steps:\n  floor = 2 GiB\n  weighted share = 5 GiB\n"));
}

TEST_F(CtlIntegrationTest, SetVmSendsOnlyGivenFieldsWithMerge) {
  Result r = Ctl({"set", "vm", "web-0", "--min=1GiB", "--pinned=true"});
  ASSERT_EQ(r.code, 0) << r.err;
  auto req = service_.LastAs<v1::SetVmPolicyRequest>("SetVmPolicy");
  EXPECT_EQ(req.vm(), "web-0");
  EXPECT_TRUE(req.merge());
  EXPECT_EQ(req.policy().min_bytes(), 1ull << 30);
  EXPECT_TRUE(req.policy().pinned());
  EXPECT_FALSE(req.policy().has_max_bytes());
  EXPECT_FALSE(req.policy().has_weight());
  EXPECT_THAT(r.out, HasSubstr("vm web-0 policy: min=1 GiB max=- weight=- pinned=true"));

  r = Ctl({"unset", "vm", "web-0", "-o", "json"});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(service_.Last("ClearVmPolicy"), "vm: \"web-0\"");
  EXPECT_EQ(r.out, "{}\n");
}

TEST_F(CtlIntegrationTest, PolicyGetAndSet) {
  Result r = Ctl({"policy", "get"});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_THAT(r.out, HasSubstr("buffer-percent:"));
  EXPECT_THAT(r.out, HasSubstr("host-free-margin:"));
  EXPECT_THAT(r.out, HasSubstr("1 GiB"));
  EXPECT_THAT(r.out, HasSubstr("report-interval:"));

  r = Ctl({"policy", "set", "--reclaim-step=128MiB", "--idle-tax-percent=50", "-o", "yaml"});
  ASSERT_EQ(r.code, 0) << r.err;
  auto req = service_.LastAs<v1::SetClusterPolicyRequest>("SetClusterPolicy");
  EXPECT_EQ(req.policy().reclaim_step_bytes(), 128ull << 20);
  EXPECT_EQ(req.policy().idle_tax_percent(), 50);
  EXPECT_FALSE(req.policy().has_buffer_percent());
  EXPECT_FALSE(req.policy().has_default_weight());
  EXPECT_THAT(r.out, HasSubstr("reclaim_step_bytes: \"134217728\"\n"));
  EXPECT_THAT(r.out, HasSubstr("idle_tax_percent: 50\n"));
}

TEST_F(CtlIntegrationTest, ReserveReleaseAndPlan) {
  Result r = Ctl({"reserve", "--host=kvm-01", "--bytes=4GiB", "--wait=2s"});
  ASSERT_EQ(r.code, 0) << r.err;
  auto req = service_.LastAs<v1::ReserveRequest>("Reserve");
  EXPECT_EQ(req.host_id(), "kvm-01");
  EXPECT_EQ(req.bytes(), 4ull << 30);
  EXPECT_EQ(FromProto(req.wait()), absl::Seconds(2));
  EXPECT_THAT(r.out, HasSubstr("reservation r-1: 4 GiB on host kvm-01"));

  r = Ctl({"release", "r-1"});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(service_.Last("Release"), "id: \"r-1\"");

  r = Ctl({"plan"});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_THAT(r.out, HasSubstr("uuid-1  kvm-02  kvm-01  4 GiB  floors exceed capacity"));
}

TEST_F(CtlIntegrationTest, PlaceTableJsonYaml) {
  Result r = Ctl({"place", "--bytes=4GiB", "--count=2"});
  ASSERT_EQ(r.code, 0) << r.err;
  auto req = service_.LastAs<v1::PlaceRequest>("Place");
  EXPECT_EQ(req.bytes(), 4ull << 30);
  EXPECT_EQ(req.count(), 2u);
  EXPECT_THAT(r.out, HasSubstr("HOST    FREE   RECLAIM  HEADROOM"));
  EXPECT_THAT(r.out, HasSubstr("kvm-01  6 GiB  0 B      2 GiB"));
  EXPECT_THAT(r.out, HasSubstr("2 of 2 VMs placed: kvm-01 x2"));

  r = Ctl({"place", "--bytes=4GiB", "-o", "json"});
  ASSERT_EQ(r.code, 0) << r.err;
  v1::PlaceResponse parsed;
  ASSERT_TRUE(google::protobuf::util::JsonStringToMessage(r.out, &parsed).ok()) << r.out;
  ASSERT_EQ(parsed.options_size(), 1);
  EXPECT_EQ(parsed.options(0).headroom_bytes(), 2ll << 30);
  EXPECT_EQ(parsed.assignments_size(), 1);

  r = Ctl({"place", "--bytes=4GiB", "-o", "yaml"});
  ASSERT_EQ(r.code, 0) << r.err;
  YAML::Node doc = YAML::Load(r.out);
  EXPECT_EQ(doc["options"][0]["host_id"].as<std::string>(), "kvm-01") << r.out;
  EXPECT_EQ(doc["requested"].as<uint32_t>(), 1u);

  r = Ctl({"place"});
  EXPECT_EQ(r.code, 2);
  EXPECT_THAT(r.err, HasSubstr("needs --bytes"));

  r = Ctl({"plan", "-o", "yaml"});
  ASSERT_EQ(r.code, 0) << r.err;
  doc = YAML::Load(r.out);
  EXPECT_EQ(doc["moves"][0]["to_host_id"].as<std::string>(), "kvm-01") << r.out;
}

TEST_F(CtlIntegrationTest, ReserveWithTtlAndForVmAndListReservations) {
  Result r = Ctl({"reserve", "--host=kvm-01", "--bytes=4GiB", "--ttl=90s",
                  "--for-vm=6f1c2a7e-0d3b-4c55-9a1e-2b7d4f8e9c10"});
  ASSERT_EQ(r.code, 0) << r.err;
  auto req = service_.LastAs<v1::ReserveRequest>("Reserve");
  EXPECT_EQ(FromProto(req.ttl()), absl::Seconds(90));
  EXPECT_FALSE(req.has_wait());
  EXPECT_EQ(req.for_vm_id(), "6f1c2a7e-0d3b-4c55-9a1e-2b7d4f8e9c10");

  r = Ctl({"get", "reservations", "--host=kvm-01"});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(service_.Last("ListReservations"), "host_id: \"kvm-01\"");
  EXPECT_THAT(r.out, HasSubstr("ID   HOST    SIZE   READY  FOR_VM"));
  EXPECT_THAT(r.out, HasSubstr("r-1  kvm-01  4 GiB  true   6f1c2a7e-0d3b-4c55-9a1e-2b7d4f8e9c10"));
  r = Ctl({"get", "reservation", "-o", "json"});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_THAT(r.out, HasSubstr("\"for_vm_id\": \"6f1c2a7e-0d3b-4c55-9a1e-2b7d4f8e9c10\""));
  r = Ctl({"reserve", "--host=kvm-01", "--bytes=1GiB", "--ttl=0s"});
  EXPECT_EQ(r.code, 2);
  EXPECT_THAT(r.err, HasSubstr("--ttl"));
}

TEST_F(CtlIntegrationTest, WatchVmsPrintsSnapshotThenChangesAndTheEndStatus) {
  Result r = Ctl({"get", "vms", "--watch", "--host=kvm-01"});
  EXPECT_EQ(r.code, 64 + 8) << r.err;
  EXPECT_EQ(service_.Last("WatchVms"), "host_id: \"kvm-01\"");
  EXPECT_THAT(r.out, HasSubstr("--- vms "));
  EXPECT_THAT(r.out, HasSubstr("web-1"));
  EXPECT_THAT(r.out, HasSubstr("--- changed "));
  EXPECT_THAT(r.out, HasSubstr("web-0-changed"));
  EXPECT_THAT(r.out, HasSubstr("removed vm uuid-1 (host kvm-02)"));
  EXPECT_THAT(r.err, HasSubstr("RESOURCE_EXHAUSTED: watch fell behind: more than 1024 events"));
  r = Ctl({"get", "vms", "--watch", "-o", "json"});
  EXPECT_EQ(r.code, 64 + 8) << r.err;
  EXPECT_THAT(r.out, HasSubstr("\"type\": \"TYPE_SNAPSHOT\""));
  EXPECT_THAT(r.out, HasSubstr("\"type\": \"TYPE_CHANGES\""));
  r = Ctl({"get", "vms", "--watch=maybe"});
  EXPECT_EQ(r.code, 2);
  EXPECT_THAT(r.err, HasSubstr("--watch"));
}

TEST_F(CtlIntegrationTest, FailedCallsExitWith64PlusCode) {
  Result r = Ctl({"describe", "vm", "nope"});
  EXPECT_EQ(r.code, 64 + 5);
  EXPECT_THAT(r.err, HasSubstr("NOT_FOUND: vm \"nope\" not found"));
  EXPECT_TRUE(r.out.empty());

  r = Ctl({"release", "r-404"});
  EXPECT_EQ(r.code, 64 + 5);

  r = Ctl({"set", "vm", "web-0", "--weight=9999"});
  EXPECT_EQ(r.code, 64 + 3);
  EXPECT_THAT(r.err, HasSubstr("INVALID_ARGUMENT: weight 9999 is refused here"));
}

TEST_F(CtlIntegrationTest, UsageErrorsSendNothing) {
  Result r = Ctl({"set", "vm", "web-0", "--weight=many"});
  EXPECT_EQ(r.code, 2);
  EXPECT_THAT(r.err, HasSubstr("--weight"));
  r = Ctl({"reserve", "--host=kvm-01", "--bytes=4 gigs"});
  EXPECT_EQ(r.code, 2);
  EXPECT_THAT(r.err, HasSubstr("--bytes"));
  r = Ctl({"get", "vms", "--colour=blue"});
  EXPECT_EQ(r.code, 2);
  EXPECT_THAT(r.err, HasSubstr("unknown flag --colour"));
  EXPECT_EQ(service_.Calls("SetVmPolicy"), 0);
  EXPECT_EQ(service_.Calls("Reserve"), 0);
  EXPECT_EQ(service_.Calls("ListVms"), 0);
}

TEST_F(CtlIntegrationTest, ServerDownExits78) {
  const std::string address = Address();
  server_->Shutdown();
  server_.reset();
  std::ostringstream out, err;
  CtlEnvironment env;
  int code = RunCtl({"--insecure", "--server=" + address, "get", "hosts"}, out, err, env);
  EXPECT_EQ(code, 64 + 14);
  EXPECT_THAT(err.str(), HasSubstr("UNAVAILABLE"));
  EXPECT_THAT(err.str(), HasSubstr(address));
}

TEST_F(CtlIntegrationTest, TopPrintsTimestampedTablesWhenNotATerminal) {
  ManualClock clock(absl::FromUnixSeconds(1800000000));  // 2027-01-15T08:00:00Z
  CtlEnvironment env;
  env.clock = &clock;
  std::vector<absl::Duration> waits;
  env.wait = [&](absl::Duration d) {
    waits.push_back(d);
    clock.Advance(d);
    return true;
  };
  Result r = Ctl({"top", "--iterations=3", "--interval=2s", "--host=kvm-01"}, env);
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(waits, (std::vector<absl::Duration>{absl::Seconds(2), absl::Seconds(2)}));
  EXPECT_EQ(service_.Calls("ListHosts"), 3);
  EXPECT_EQ(service_.Calls("ListVms"), 3);
  EXPECT_EQ(service_.Last("ListVms"), "host_id: \"kvm-01\"");
  EXPECT_THAT(r.out, HasSubstr("--- 2027-01-15T08:00:00Z ---\nHOST"));
  EXPECT_THAT(r.out, HasSubstr("--- 2027-01-15T08:00:04Z ---\n"));
  EXPECT_THAT(r.out, Not(HasSubstr("\x1b[")));
  EXPECT_THAT(r.out, Not(HasSubstr("kvm-02  false")));
}

TEST_F(CtlIntegrationTest, TopClearsTheScreenOnATerminalAndStopsOnInterrupt) {
  CtlEnvironment env;
  env.out_is_terminal = true;
  int live_views = 0;
  env.enter_live_view = [&] { ++live_views; };
  int waits = 0;
  env.wait = [&](absl::Duration) { return ++waits < 2; };  // "Ctrl-C" during the 2nd wait
  Result r = Ctl({"top"}, env);
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(live_views, 1);
  EXPECT_EQ(waits, 2);
  EXPECT_EQ(service_.Calls("ListHosts"), 2);
  EXPECT_EQ(r.out.rfind("\x1b[H\x1b[2J", 0), 0u);
  EXPECT_THAT(r.out, HasSubstr("Ctrl-C to stop"));
  EXPECT_THAT(r.out, HasSubstr("HOSTS  # targets  + demand above targets  | capacity\n"));
  EXPECT_THAT(r.out, HasSubstr("VMS by pressure"));
}

TEST_F(CtlIntegrationTest, TopOnADumbTerminalPrintsPlainTables) {
  CtlEnvironment env;
  env.out_is_terminal = true;
  env.vars["TERM"] = "dumb";
  env.wait = [](absl::Duration) { return true; };
  Result r = Ctl({"top", "--iterations=1"}, env);
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_THAT(r.out, Not(HasSubstr("\x1b[")));
  EXPECT_THAT(r.out, Not(HasSubstr("HOSTS  #")));
  EXPECT_THAT(r.out, HasSubstr("short of demand: "));
}

TEST_F(CtlIntegrationTest, TopReportsFailuresAndExitsWithTheLastCode) {
  server_->Shutdown();
  CtlEnvironment env;
  env.wait = [](absl::Duration) { return true; };
  Result r = Ctl({"top", "--iterations=2", "--interval=10ms"}, env);
  EXPECT_EQ(r.code, 64 + 14);
  EXPECT_THAT(r.err, HasSubstr("UNAVAILABLE"));
}

}  // namespace
}  // namespace membroker::client

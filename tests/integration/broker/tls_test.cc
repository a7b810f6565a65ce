// The broker with mutual TLS, in-process on 127.0.0.1:0, with certificates
// from scripts/dev-ca.sh: per-host authorization of agent streams, roles on
// AdminService, handshakes that must fail, the audit trail through
// membrokerctl, and certificate rotation without a restart.

#include "common/tls.h"

#include <gmock/gmock.h>
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <memory>
#include <random>
#include <sstream>
#include <string>

#include "absl/strings/str_cat.h"
#include "broker/server.h"
#include "client/ctl.h"
#include "membroker/v1/admin.grpc.pb.h"
#include "membroker/v1/agent.grpc.pb.h"
#include "tests/util/http.h"
#include "tests/util/wait.h"

namespace membroker::broker {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;

constexpr uint64_t kGiB = uint64_t{1} << 30;
constexpr char kVmId[] = "00000000-0000-0000-0000-0000000000a1";

std::string TempDir(const std::string& tag) {
  std::random_device rd;
  fs::path dir =
      fs::temp_directory_path() / absl::StrCat("mb_tls_test_", tag, "_", rd(), "_", ::getpid());
  fs::create_directories(dir);
  return dir.string();
}

// Runs scripts/dev-ca.sh into `dir`.
void MakePki(const std::string& dir) {
  const std::string cmd =
      absl::StrCat(MB_SOURCE_DIR, "/scripts/dev-ca.sh ", dir, " kvm-01 kvm-02 > /dev/null");
  ASSERT_EQ(std::system(cmd.c_str()), 0) << cmd;
}

// Copies `name`.pem and its key, and ca.pem, from `from` into `to`, each
// through a rename so that a watcher never sees half a file.
void Install(const std::string& from, const std::string& to) {
  for (const char* f : {"ca.pem", "broker.pem", "broker-key.pem"}) {
    const fs::path tmp = fs::path(to) / absl::StrCat(".", f, ".tmp");
    fs::copy_file(fs::path(from) / f, tmp, fs::copy_options::overwrite_existing);
    fs::rename(tmp, fs::path(to) / f);
  }
}

class TlsBrokerTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    pki_ = new std::string(TempDir("pki"));
    MakePki(*pki_);
  }
  static void TearDownTestSuite() {
    fs::remove_all(*pki_);
    delete pki_;
  }

  void SetUp() override {
    state_dir_ = TempDir("state");
    live_ = TempDir("live");
    Install(*pki_, live_);
    BrokerOptions o;
    o.listen = "127.0.0.1:0";
    o.metrics_listen = "127.0.0.1:0";
    o.state_dir = state_dir_;
    o.tls = TlsFiles{live_ + "/broker.pem", live_ + "/broker-key.pem", live_ + "/ca.pem"};
    o.tls_reload_interval = absl::Seconds(1);
    auto b = Broker::Start(o, RealClock::Get());
    ASSERT_TRUE(b.ok()) << b.status();
    broker_ = std::move(*b);
    target_ = absl::StrCat("127.0.0.1:", broker_->grpc_port());
  }
  void TearDown() override {
    broker_.reset();
    fs::remove_all(state_dir_);
    fs::remove_all(live_);
  }

  // The files of dev-ca.sh's certificate `name` in `pki`, trusting its CA.
  static TlsFiles Files(const std::string& name, const std::string& pki = *pki_) {
    return {absl::StrCat(pki, "/", name, ".pem"), absl::StrCat(pki, "/", name, "-key.pem"),
            pki + "/ca.pem"};
  }
  std::shared_ptr<grpc::Channel> Channel(std::shared_ptr<grpc::ChannelCredentials> creds) {
    // A channel of its own per call: every test sees a fresh handshake.
    grpc::ChannelArguments args;
    args.SetInt("membroker.test.unique", unique_++);
    return grpc::CreateCustomChannel(target_, creds, args);
  }
  std::unique_ptr<v1::AdminService::Stub> Admin(const std::string& cert) {
    return v1::AdminService::NewStub(Channel(MutualTlsChannelCredentials(Files(cert))));
  }
  static std::unique_ptr<grpc::ClientContext> Ctx() {
    auto ctx = std::make_unique<grpc::ClientContext>();
    ctx->set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
    return ctx;
  }
  static grpc::Status ListHosts(v1::AdminService::Stub& stub) {
    v1::ListHostsResponse r;
    return stub.ListHosts(Ctx().get(), v1::ListHostsRequest(), &r);
  }
  static grpc::Status SetBuffer(v1::AdminService::Stub& stub, double percent) {
    v1::SetClusterPolicyRequest req;
    req.mutable_policy()->set_buffer_percent(percent);
    v1::ClusterPolicy r;
    return stub.SetClusterPolicy(Ctx().get(), req, &r);
  }
  // Opens an agent stream with `cert` and says Hello for `host`; returns
  // the first reply's status (OK with a Welcome, or how the stream ended).
  grpc::Status Hello(const std::string& cert, const std::string& host) {
    auto stub = v1::AgentService::NewStub(Channel(MutualTlsChannelCredentials(Files(cert))));
    auto ctx = Ctx();
    auto rw = stub->Connect(ctx.get());
    v1::AgentMessage m;
    m.mutable_hello()->set_host_id(host);
    m.mutable_hello()->set_capacity_bytes(8 * kGiB);
    m.mutable_hello()->set_host_total_bytes(16 * kGiB);
    m.mutable_hello()->set_backend("sim");
    rw->Write(m);
    v1::BrokerMessage reply;
    if (rw->Read(&reply) && reply.has_welcome()) {
      rw->WritesDone();
      ctx->TryCancel();
      rw->Finish().IgnoreError();
      return grpc::Status::OK;
    }
    return rw->Finish();
  }
  std::string Metrics() {
    auto reply = testing::HttpGet(broker_->metrics_port(), "/metrics");
    return reply.ok() ? reply->body : "";
  }

  static std::string* pki_;
  std::string state_dir_;
  std::string live_;
  std::string target_;
  int unique_ = 0;
  std::unique_ptr<Broker> broker_;
};
std::string* TlsBrokerTest::pki_ = nullptr;

TEST_F(TlsBrokerTest, AgentMayReportOnlyForTheHostItsCertificateNames) {
  EXPECT_TRUE(Hello("host-kvm-01", "kvm-01").ok());
  grpc::Status other = Hello("host-kvm-01", "kvm-02");
  EXPECT_EQ(other.error_code(), grpc::StatusCode::PERMISSION_DENIED);
  EXPECT_THAT(other.error_message(), HasSubstr("CN=kvm-01"));
  EXPECT_THAT(other.error_message(), HasSubstr("kvm-02"));
  EXPECT_THAT(Metrics(),
              HasSubstr("membroker_reports_rejected_total{reason=\"host_not_in_certificate\"} 1"));
  // kvm-02 was never admitted.
  auto admin = Admin("admin");
  v1::GetHostRequest req;
  req.set_host_id("kvm-02");
  v1::Host host;
  EXPECT_EQ(admin->GetHost(Ctx().get(), req, &host).error_code(), grpc::StatusCode::NOT_FOUND);
  // Admin and read-only certificates are not agents.
  EXPECT_EQ(Hello("admin", "admin").error_code(), grpc::StatusCode::PERMISSION_DENIED);
  EXPECT_EQ(Hello("read-only", "read-only").error_code(), grpc::StatusCode::PERMISSION_DENIED);
}

TEST_F(TlsBrokerTest, RolesOnAdminService) {
  auto admin = Admin("admin");
  auto reader = Admin("read-only");
  auto agent = Admin("host-kvm-01");
  EXPECT_TRUE(ListHosts(*admin).ok());
  EXPECT_TRUE(SetBuffer(*admin, 30).ok());
  EXPECT_TRUE(ListHosts(*reader).ok());
  grpc::Status denied = SetBuffer(*reader, 40);
  EXPECT_EQ(denied.error_code(), grpc::StatusCode::PERMISSION_DENIED);
  EXPECT_THAT(denied.error_message(), HasSubstr("read-only"));
  EXPECT_EQ(ListHosts(*agent).error_code(), grpc::StatusCode::PERMISSION_DENIED);
  EXPECT_EQ(SetBuffer(*agent, 40).error_code(), grpc::StatusCode::PERMISSION_DENIED);
  // The refused changes changed nothing.
  v1::ClusterPolicy policy;
  ASSERT_TRUE(reader->GetClusterPolicy(Ctx().get(), v1::GetClusterPolicyRequest(), &policy).ok());
  EXPECT_EQ(policy.buffer_percent(), 30);
  // A watch: read-only may, an agent may not.
  v1::WatchDecisionsRequest watch;
  auto ctx = Ctx();
  auto stream = agent->WatchDecisions(ctx.get(), watch);
  v1::Decision d;
  EXPECT_FALSE(stream->Read(&d));
  EXPECT_EQ(stream->Finish().error_code(), grpc::StatusCode::PERMISSION_DENIED);
  EXPECT_THAT(Metrics(), HasSubstr("code=\"PERMISSION_DENIED\""));
}

TEST_F(TlsBrokerTest, HandshakesThatMustFail) {
  // The same call succeeds with a good certificate, so each failure below
  // is the credentials' doing.
  ASSERT_TRUE(ListHosts(*Admin("admin")).ok());
  auto plaintext = v1::AdminService::NewStub(Channel(grpc::InsecureChannelCredentials()));
  EXPECT_EQ(ListHosts(*plaintext).error_code(), grpc::StatusCode::UNAVAILABLE);
  // TLS that trusts the broker but shows no client certificate.
  std::ifstream ca(*pki_ + "/ca.pem");
  std::stringstream ca_pem;
  ca_pem << ca.rdbuf();
  grpc::SslCredentialsOptions no_cert;
  no_cert.pem_root_certs = ca_pem.str();
  auto anonymous = v1::AdminService::NewStub(Channel(grpc::SslCredentials(no_cert)));
  EXPECT_EQ(ListHosts(*anonymous).error_code(), grpc::StatusCode::UNAVAILABLE);
  EXPECT_EQ(ListHosts(*Admin("expired")).error_code(), grpc::StatusCode::UNAVAILABLE);
  EXPECT_EQ(ListHosts(*Admin("foreign-admin")).error_code(), grpc::StatusCode::UNAVAILABLE);
  EXPECT_EQ(Hello("foreign-host", "kvm-01").error_code(), grpc::StatusCode::UNAVAILABLE);
  EXPECT_EQ(Hello("expired", "kvm-01").error_code(), grpc::StatusCode::UNAVAILABLE);
}

TEST_F(TlsBrokerTest, AuditTrailThroughMembrokerctl) {
  auto ctl = [&](const std::string& cert, std::vector<std::string> args, std::string* out) {
    std::ostringstream o, e;
    client::CtlEnvironment env;
    env.vars = {{"MEMBROKER_TLS_CA", *pki_ + "/ca.pem"},
                {"MEMBROKER_TLS_CERT", absl::StrCat(*pki_, "/", cert, ".pem")},
                {"MEMBROKER_TLS_KEY", absl::StrCat(*pki_, "/", cert, "-key.pem")},
                {"MEMBROKER_SERVER", target_}};
    const int code = client::RunCtl(args, o, e, env);
    *out = o.str() + e.str();
    return code;
  };
  std::string out;
  ASSERT_EQ(ctl("admin", {"set", "vm", kVmId, "--min=1GiB"}, &out), 0) << out;
  ASSERT_EQ(ctl("admin", {"set", "vm", kVmId, "--min=2GiB", "--weight=300"}, &out), 0) << out;
  // Read-only may not change anything: 64 + PERMISSION_DENIED (7).
  EXPECT_EQ(ctl("read-only", {"unset", "vm", kVmId}, &out), 71) << out;
  EXPECT_THAT(out, HasSubstr("PERMISSION_DENIED"));
  ASSERT_EQ(ctl("admin", {"policy", "set", "--buffer-percent=25"}, &out), 0) << out;
  ASSERT_EQ(ctl("admin", {"unset", "vm", kVmId}, &out), 0) << out;

  // Read-only may read the trail.
  ASSERT_EQ(ctl("read-only", {"history"}, &out), 0) << out;
  EXPECT_THAT(out, HasSubstr("CN=admin,OU=membroker-admin"));
  EXPECT_THAT(out, HasSubstr("min_bytes: unset -> 1073741824"));
  EXPECT_THAT(out, HasSubstr("min_bytes: 1073741824 -> 2147483648; weight: unset -> 300"));
  EXPECT_THAT(out, ::testing::ContainsRegex("buffer_percent: [0-9.]+ -> 25"));
  EXPECT_THAT(out, HasSubstr("ClearVmPolicy"));

  auto stub = Admin("read-only");
  v1::ListAuditEntriesRequest req;
  req.set_target(kVmId);
  v1::ListAuditEntriesResponse resp;
  ASSERT_TRUE(stub->ListAuditEntries(Ctx().get(), req, &resp).ok());
  ASSERT_EQ(resp.entries_size(), 3);  // two sets and the clear; the refused one is absent
  EXPECT_EQ(resp.entries(0).action(), "SetVmPolicy");
  EXPECT_EQ(resp.entries(2).action(), "ClearVmPolicy");
  EXPECT_EQ(resp.entries(2).old_vm_policy().weight(), 300u);
  for (const auto& e : resp.entries()) EXPECT_EQ(e.actor(), "CN=admin,OU=membroker-admin");

  ASSERT_EQ(ctl("admin", {"history", "--vm=cluster", "-o", "json"}, &out), 0) << out;
  EXPECT_THAT(out, HasSubstr("\"action\": \"SetClusterPolicy\""));
  EXPECT_EQ(ctl("host-kvm-01", {"history"}, &out), 71) << out;
}

TEST_F(TlsBrokerTest, RotatedCertificatesAndCaAreUsedWithoutARestart) {
  const std::string next = TempDir("next");
  MakePki(next);
  auto old_admin = [&] { return ListHosts(*Admin("admin")); };
  auto new_admin = [&] {
    return ListHosts(
        *v1::AdminService::NewStub(Channel(MutualTlsChannelCredentials(Files("admin", next)))));
  };
  ASSERT_TRUE(old_admin().ok());
  ASSERT_EQ(new_admin().error_code(), grpc::StatusCode::UNAVAILABLE);
  Install(next, live_);
  // The broker re-reads its files every second; the bound is generous.
  EXPECT_TRUE(testing::WaitUntil([&] { return new_admin().ok(); }, absl::Seconds(60),
                                 absl::Milliseconds(200)));
  EXPECT_EQ(old_admin().error_code(), grpc::StatusCode::UNAVAILABLE);
  fs::remove_all(next);
}

TEST(TlsOptionsTest, BadFilesStopTheBrokerWithTheirName) {
  const std::string dir = TempDir("bad");
  std::ofstream(dir + "/junk.pem") << "not a certificate\n";
  BrokerOptions o;
  o.listen = "127.0.0.1:0";
  o.metrics_listen = "127.0.0.1:0";
  o.state_dir = dir + "/state";
  o.tls = TlsFiles{dir + "/junk.pem", dir + "/junk.pem", dir + "/junk.pem"};
  auto b = Broker::Start(o, RealClock::Get());
  EXPECT_EQ(b.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(b.status().message(), HasSubstr("--tls-cert=" + dir + "/junk.pem"));
  fs::remove_all(dir);
}

TEST(TlsOptionsTest, InsecureBrokerAuditsChangesAsInsecure) {
  const std::string dir = TempDir("insecure");
  BrokerOptions o;
  o.listen = "127.0.0.1:0";
  o.metrics_listen = "127.0.0.1:0";
  o.state_dir = dir;
  auto b = Broker::Start(o, RealClock::Get());
  ASSERT_TRUE(b.ok()) << b.status();
  auto stub = v1::AdminService::NewStub(grpc::CreateChannel(
      absl::StrCat("127.0.0.1:", (*b)->grpc_port()), grpc::InsecureChannelCredentials()));
  grpc::ClientContext set_ctx;
  v1::SetClusterPolicyRequest req;
  req.mutable_policy()->set_reclaim_step_bytes(uint64_t{1} << 28);
  v1::ClusterPolicy out;
  ASSERT_TRUE(stub->SetClusterPolicy(&set_ctx, req, &out).ok());
  grpc::ClientContext list_ctx;
  v1::ListAuditEntriesResponse trail;
  ASSERT_TRUE(stub->ListAuditEntries(&list_ctx, v1::ListAuditEntriesRequest(), &trail).ok());
  ASSERT_EQ(trail.entries_size(), 1);
  EXPECT_EQ(trail.entries(0).actor(), "insecure");
  EXPECT_EQ(trail.entries(0).target(), "cluster");
  // A limit beyond the cap is refused, naming the field.
  grpc::ClientContext big_ctx;
  v1::ListAuditEntriesRequest big;
  big.set_limit(1000000);
  grpc::Status s = stub->ListAuditEntries(&big_ctx, big, &trail);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(s.error_message(), HasSubstr("limit"));
  b->reset();
  fs::remove_all(dir);
}

}  // namespace
}  // namespace membroker::broker

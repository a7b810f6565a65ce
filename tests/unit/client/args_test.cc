// Parsing of membrokerctl command lines and the request builders: every bad
// input is a usage error naming the flag, and only given fields are sent.

#include "client/args.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <sstream>

#include "client/ctl.h"
#include "common/proto_time.h"

namespace membroker::client {
namespace {

using ::testing::HasSubstr;

absl::StatusOr<Invocation> Parse(std::vector<std::string> args,
                                 std::map<std::string, std::string> env = {}) {
  return ParseArgs(args, env);
}

std::string CommandOf(const Invocation& inv) {
  std::string s;
  for (const auto& w : inv.command->path) s += (s.empty() ? "" : " ") + w;
  return s;
}

TEST(ParseArgsTest, GlobalFlagsBeforeAndAfterTheCommand) {
  auto a = Parse({"--server=10.0.0.1:7000", "--insecure", "get", "vms", "-o", "json"});
  ASSERT_TRUE(a.ok()) << a.status();
  EXPECT_EQ(CommandOf(*a), "get vms");
  EXPECT_EQ(a->global.server, "10.0.0.1:7000");
  EXPECT_TRUE(a->global.insecure);
  EXPECT_EQ(a->global.output, OutputFormat::kJson);

  auto b = Parse({"get", "vms", "--insecure", "--server", "broker:1", "--timeout=250ms", "-oyaml"});
  ASSERT_TRUE(b.ok()) << b.status();
  EXPECT_EQ(b->global.server, "broker:1");
  EXPECT_EQ(b->global.timeout, absl::Milliseconds(250));
  EXPECT_EQ(b->global.output, OutputFormat::kYaml);

  auto c = Parse({"--output=wide", "get", "hosts", "--insecure"});
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->global.output, OutputFormat::kWide);
  auto d = Parse({"-o=table", "get", "hosts"});
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_EQ(d->global.output, OutputFormat::kTable);
}

TEST(ParseArgsTest, ServerDefaultsFromEnvironmentThenBuiltIn) {
  auto a = Parse({"get", "hosts"});
  ASSERT_TRUE(a.ok());
  EXPECT_EQ(a->global.server, "127.0.0.1:7070");
  EXPECT_EQ(a->global.timeout, absl::Seconds(5));
  auto b = Parse({"get", "hosts"}, {{"MEMBROKER_SERVER", "envhost:9000"}});
  ASSERT_TRUE(b.ok());
  EXPECT_EQ(b->global.server, "envhost:9000");
  auto c = Parse({"get", "hosts", "--server=flag:1"}, {{"MEMBROKER_SERVER", "envhost:9000"}});
  ASSERT_TRUE(c.ok());
  EXPECT_EQ(c->global.server, "flag:1");
  auto bad_env = Parse({"get", "hosts"}, {{"MEMBROKER_SERVER", "no-port"}});
  ASSERT_FALSE(bad_env.ok());
  EXPECT_THAT(bad_env.status().message(), HasSubstr("$MEMBROKER_SERVER"));
}

TEST(ParseArgsTest, TlsFilesComeFromFlagsOrEnvironment) {
  auto a = Parse({"get", "hosts"}, {{"MEMBROKER_TLS_CA", "/ca.pem"}});
  ASSERT_TRUE(a.ok());
  EXPECT_EQ(a->global.tls_ca, "/ca.pem");
  // An explicit --insecure wins over TLS files from the environment.
  auto b = Parse({"get", "hosts", "--insecure"}, {{"MEMBROKER_TLS_CA", "/ca.pem"}});
  ASSERT_TRUE(b.ok());
  EXPECT_TRUE(b->global.tls_ca.empty());
  auto c = Parse({"get", "hosts", "--insecure", "--tls-cert=/c.pem"});
  ASSERT_FALSE(c.ok());
  EXPECT_THAT(c.status().message(), HasSubstr("--insecure conflicts"));
}

TEST(ParseArgsTest, ResourceWordsAcceptSingularAndPlural) {
  auto a = Parse({"get", "vm"});
  ASSERT_TRUE(a.ok());
  EXPECT_EQ(CommandOf(*a), "get vms");
  auto b = Parse({"describe", "vms", "web-1"});
  ASSERT_TRUE(b.ok());
  EXPECT_EQ(CommandOf(*b), "describe vm");
  EXPECT_EQ(b->operands, std::vector<std::string>{"web-1"});
}

TEST(ParseArgsTest, CommandFlagsTakeValuesInBothForms) {
  auto a = Parse({"set", "vm", "web-1", "--min", "1GiB", "--weight=200"});
  ASSERT_TRUE(a.ok()) << a.status();
  EXPECT_EQ(a->flags.at("min"), "1GiB");
  EXPECT_EQ(a->flags.at("weight"), "200");
}

TEST(ParseArgsTest, DoubleDashEndsFlags) {
  auto a = Parse({"describe", "vm", "--", "-odd-name"});
  ASSERT_TRUE(a.ok()) << a.status();
  EXPECT_EQ(a->operands, std::vector<std::string>{"-odd-name"});
}

struct BadArgs {
  std::vector<std::string> args;
  std::string message_part;
};

class ParseArgsErrorTest : public ::testing::TestWithParam<BadArgs> {};

TEST_P(ParseArgsErrorTest, IsUsageErrorNamingTheCulprit) {
  auto a = Parse(GetParam().args);
  ASSERT_FALSE(a.ok());
  EXPECT_EQ(a.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(a.status().message(), HasSubstr(GetParam().message_part));
}

INSTANTIATE_TEST_SUITE_P(
    All, ParseArgsErrorTest,
    ::testing::Values(BadArgs{{}, "no command"}, BadArgs{{"frobnicate"}, "unknown command"},
                      BadArgs{{"get"}, "needs a resource"},
                      BadArgs{{"get", "pods"}, "unknown resource \"pods\""},
                      BadArgs{{"get", "vms", "--hots=a"}, "unknown flag --hots"},
                      BadArgs{{"get", "hosts", "--host=a"}, "unknown flag --host"},
                      BadArgs{{"get", "vms", "-x"}, "unknown flag -x"},
                      BadArgs{{"describe", "vm"}, "needs VM"},
                      BadArgs{{"release", "a", "b"}, "unexpected argument \"b\""},
                      BadArgs{{"set", "vm", "v", "--min=1G", "--min=2G"}, "--min given twice"},
                      BadArgs{{"set", "vm", "v", "--min"}, "--min needs a value"},
                      BadArgs{{"get", "vms", "-o"}, "-o needs a value"},
                      BadArgs{{"get", "vms", "-o", "xml"}, "-o: unknown output format"},
                      BadArgs{{"get", "vms", "--timeout=soon"}, "--timeout"},
                      BadArgs{{"get", "vms", "--timeout=0s"}, "--timeout must be greater"},
                      BadArgs{{"get", "vms", "--server=nocolon"}, "--server"},
                      BadArgs{{"get", "vms", "--insecure=maybe"}, "--insecure"},
                      BadArgs{{"get", "vms", "--tls-ca="}, "--tls-ca is empty"}));

TEST(ParseArgsTest, HelpAtEveryLevel) {
  auto top = Parse({"--help"});
  ASSERT_TRUE(top.ok());
  EXPECT_TRUE(top->help);
  EXPECT_TRUE(top->help_path.empty());
  auto group = Parse({"get", "-h"});
  ASSERT_TRUE(group.ok());
  EXPECT_EQ(group->help_path, std::vector<std::string>{"get"});
  auto cmd = Parse({"set", "vm", "--help"});
  ASSERT_TRUE(cmd.ok());
  EXPECT_EQ(cmd->help_path, (std::vector<std::string>{"set", "vm"}));
  auto word = Parse({"help", "policy", "set"});
  ASSERT_TRUE(word.ok());
  EXPECT_EQ(word->help_path, (std::vector<std::string>{"policy", "set"}));

  EXPECT_THAT(HelpText({}), HasSubstr("explain vm VM"));
  EXPECT_THAT(HelpText({"get"}), HasSubstr("get vms"));
  EXPECT_THAT(HelpText({"get"}), ::testing::Not(HasSubstr("policy set")));
  EXPECT_THAT(HelpText({"policy", "set"}), HasSubstr("--idle-tax-percent=P"));
  EXPECT_THAT(HelpText({"reserve"}), HasSubstr("--wait=DURATION"));
  EXPECT_THAT(HelpText({"reserve"}), HasSubstr("--for-vm=VM_ID"));
  EXPECT_THAT(HelpText({"get"}), HasSubstr("get reservations"));
  EXPECT_THAT(HelpText({"get", "vms"}), HasSubstr("--watch"));
  // --watch alone means true; reservation is the singular of reservations.
  auto watch = Parse({"get", "vms", "--watch", "--host=h"});
  ASSERT_TRUE(watch.ok()) << watch.status();
  EXPECT_EQ(watch->flags.at("watch"), "true");
  EXPECT_EQ(watch->flags.at("host"), "h");
  auto singular = Parse({"get", "reservation"});
  ASSERT_TRUE(singular.ok()) << singular.status();
  EXPECT_EQ(singular->command->path, (std::vector<std::string>{"get", "reservations"}));
}

// Every command documents every flag it accepts.
TEST(ParseArgsTest, EveryCommandHelpListsItsFlags) {
  for (const CommandSpec& c : Commands()) {
    std::string help = HelpText(c.path);
    EXPECT_THAT(help, HasSubstr("Usage: membrokerctl")) << c.path[0];
    for (const FlagSpec& f : c.flags) EXPECT_THAT(help, HasSubstr("--" + f.name)) << c.path[0];
  }
}

TEST(FlagTest, SizesAcceptUnitsAndNameTheFlagOnError) {
  auto inv = Parse({"set", "vm", "v", "--min=512MiB", "--max=4GiB"});
  ASSERT_TRUE(inv.ok());
  bool present = false;
  auto min = FlagBytes(*inv, "min", &present);
  ASSERT_TRUE(min.ok());
  EXPECT_TRUE(present);
  EXPECT_EQ(*min, 512ull << 20);
  auto max = FlagBytes(*inv, "max", &present);
  ASSERT_TRUE(max.ok());
  EXPECT_EQ(*max, 4ull << 30);
  auto weight = FlagBytes(*inv, "weight", &present);
  ASSERT_TRUE(weight.ok());
  EXPECT_FALSE(present);

  auto bad = Parse({"set", "vm", "v", "--min=12parsecs"});
  ASSERT_TRUE(bad.ok());
  auto err = FlagBytes(*bad, "min", &present);
  ASSERT_FALSE(err.ok());
  EXPECT_THAT(err.status().message(), HasSubstr("--min"));
  EXPECT_THAT(err.status().message(), HasSubstr("unknown unit"));
}

TEST(BuildRequestTest, SetVmSendsOnlyGivenFieldsWithMerge) {
  auto inv = Parse({"set", "vm", "web-1", "--weight=300"});
  ASSERT_TRUE(inv.ok());
  auto req = BuildSetVmPolicyRequest(*inv);
  ASSERT_TRUE(req.ok()) << req.status();
  EXPECT_EQ(req->vm(), "web-1");
  EXPECT_TRUE(req->merge());
  EXPECT_TRUE(req->policy().has_weight());
  EXPECT_EQ(req->policy().weight(), 300u);
  EXPECT_FALSE(req->policy().has_min_bytes());
  EXPECT_FALSE(req->policy().has_max_bytes());
  EXPECT_FALSE(req->policy().has_pinned());

  auto all = Parse({"set", "vm", "v", "--min=1GiB", "--max=2GiB", "--pinned=false"});
  ASSERT_TRUE(all.ok());
  auto req2 = BuildSetVmPolicyRequest(*all);
  ASSERT_TRUE(req2.ok()) << req2.status();
  EXPECT_EQ(req2->policy().min_bytes(), 1ull << 30);
  EXPECT_EQ(req2->policy().max_bytes(), 2ull << 30);
  ASSERT_TRUE(req2->policy().has_pinned());
  EXPECT_FALSE(req2->policy().pinned());
}

TEST(BuildRequestTest, SetVmRejectsBadValues) {
  const std::vector<std::pair<std::vector<std::string>, std::string>> cases = {
      {{"set", "vm", "v"}, "at least one of"},
      {{"set", "vm", "v", "--weight=0"}, "--weight"},
      {{"set", "vm", "v", "--weight=10001"}, "--weight"},
      {{"set", "vm", "v", "--weight=abc"}, "--weight"},
      {{"set", "vm", "v", "--pinned=yes"}, "--pinned"},
      {{"set", "vm", "v", "--max=0"}, "--max must be greater than 0"},
      {{"set", "vm", "v", "--min=3GiB", "--max=2GiB"}, "--min (3 GiB) is greater than --max"},
      {{"set", "vm", "v", "--min=-1"}, "--min"},
  };
  for (const auto& [args, part] : cases) {
    auto inv = Parse(args);
    ASSERT_TRUE(inv.ok()) << inv.status();
    auto req = BuildSetVmPolicyRequest(*inv);
    ASSERT_FALSE(req.ok()) << part;
    EXPECT_THAT(req.status().message(), HasSubstr(part));
  }
}

TEST(BuildRequestTest, PolicySetMapsEveryFlag) {
  auto inv = Parse({"policy", "set", "--buffer-percent=25", "--host-free-margin=1GiB",
                    "--reclaim-step=256MiB", "--hysteresis=64MiB", "--idle-tax-percent=75",
                    "--default-min=512MiB", "--default-weight=100", "--protect-margin-percent=10",
                    "--report-interval=2s", "--surplus-percent=0", "--hysteresis-percent=5",
                    "--protect-margin-max=32MiB"});
  ASSERT_TRUE(inv.ok()) << inv.status();
  auto req = BuildSetClusterPolicyRequest(*inv);
  ASSERT_TRUE(req.ok()) << req.status();
  const v1::ClusterPolicy& p = req->policy();
  EXPECT_EQ(p.buffer_percent(), 25);
  EXPECT_EQ(p.host_free_margin_bytes(), 1ull << 30);
  EXPECT_EQ(p.reclaim_step_bytes(), 256ull << 20);
  EXPECT_EQ(p.hysteresis_bytes(), 64ull << 20);
  EXPECT_EQ(p.idle_tax_percent(), 75);
  EXPECT_EQ(p.default_min_bytes(), 512ull << 20);
  EXPECT_EQ(p.default_weight(), 100u);
  EXPECT_EQ(p.protect_margin_percent(), 10);
  EXPECT_EQ(FromProto(p.report_interval()), absl::Seconds(2));
  ASSERT_TRUE(p.has_surplus_percent());
  EXPECT_EQ(p.surplus_percent(), 0);
  EXPECT_EQ(p.hysteresis_percent(), 5);
  EXPECT_EQ(p.protect_margin_max_bytes(), 32ull << 20);

  auto one = Parse({"policy", "set", "--hysteresis=1MiB"});
  ASSERT_TRUE(one.ok());
  auto req1 = BuildSetClusterPolicyRequest(*one);
  ASSERT_TRUE(req1.ok());
  EXPECT_TRUE(req1->policy().has_hysteresis_bytes());
  EXPECT_FALSE(req1->policy().has_buffer_percent());
  EXPECT_FALSE(req1->policy().has_report_interval());
  EXPECT_FALSE(req1->policy().has_default_weight());
}

TEST(BuildRequestTest, PolicySetRejectsOutOfRange) {
  for (const auto& [flag, part] : std::vector<std::pair<std::string, std::string>>{
           {"--idle-tax-percent=100", "--idle-tax-percent"},
           {"--buffer-percent=-1", "--buffer-percent"},
           {"--surplus-percent=101", "--surplus-percent"},
           {"--hysteresis-percent=51", "--hysteresis-percent"},
           {"--buffer-percent=nan", "--buffer-percent"},
           {"--default-weight=0", "--default-weight"},
           {"--report-interval=0s", "--report-interval must be greater than 0"},
           {"--reclaim-step=lots", "--reclaim-step"}}) {
    auto inv = Parse({"policy", "set", flag});
    ASSERT_TRUE(inv.ok());
    auto req = BuildSetClusterPolicyRequest(*inv);
    ASSERT_FALSE(req.ok()) << flag;
    EXPECT_THAT(req.status().message(), HasSubstr(part));
  }
  auto none = Parse({"policy", "set"});
  ASSERT_TRUE(none.ok());
  EXPECT_FALSE(BuildSetClusterPolicyRequest(*none).ok());
}

TEST(BuildRequestTest, ReserveNeedsHostAndBytes) {
  auto inv = Parse({"reserve", "--host=kvm-1", "--bytes=4GiB", "--wait=30s"});
  ASSERT_TRUE(inv.ok());
  auto req = BuildReserveRequest(*inv);
  ASSERT_TRUE(req.ok()) << req.status();
  EXPECT_EQ(req->host_id(), "kvm-1");
  EXPECT_EQ(req->bytes(), 4ull << 30);
  EXPECT_EQ(FromProto(req->wait()), absl::Seconds(30));
  auto no_wait = BuildReserveRequest(*Parse({"reserve", "--host=h", "--bytes=1"}));
  ASSERT_TRUE(no_wait.ok());
  EXPECT_FALSE(no_wait->has_wait());

  for (const auto& [args, part] : std::vector<std::pair<std::vector<std::string>, std::string>>{
           {{"reserve", "--bytes=1G"}, "needs --host"},
           {{"reserve", "--host=h"}, "needs --bytes"},
           {{"reserve", "--host=h", "--bytes=0"}, "--bytes must be greater than 0"},
           {{"reserve", "--host=bad host", "--bytes=1G"}, "--host"},
           {{"reserve", "--host=h", "--bytes=1G", "--wait=-1s"}, "--wait"},
           {{"reserve", "--host=h", "--bytes=1G", "--ttl=0s"}, "--ttl"},
           {{"reserve", "--host=h", "--bytes=1G", "--for-vm="}, "--for-vm"}}) {
    auto bad = Parse(args);
    ASSERT_TRUE(bad.ok());
    auto r = BuildReserveRequest(*bad);
    ASSERT_FALSE(r.ok()) << part;
    EXPECT_THAT(r.status().message(), HasSubstr(part));
  }
}

TEST(BuildRequestTest, PlaceNeedsBytesAndTakesACount) {
  auto req = BuildPlaceRequest(*Parse({"place", "--bytes=8GiB", "--count=3"}));
  ASSERT_TRUE(req.ok()) << req.status();
  EXPECT_EQ(req->bytes(), 8ull << 30);
  EXPECT_EQ(req->count(), 3u);
  auto one = BuildPlaceRequest(*Parse({"place", "--bytes=1GiB"}));
  ASSERT_TRUE(one.ok());
  EXPECT_EQ(one->count(), 1u);
  for (const auto& [args, part] : std::vector<std::pair<std::vector<std::string>, std::string>>{
           {{"place"}, "needs --bytes"},
           {{"place", "--bytes=0"}, "--bytes must be greater than 0"},
           {{"place", "--bytes=lots"}, "--bytes"},
           {{"place", "--bytes=1G", "--count=0"}, "--count"},
           {{"place", "--bytes=1G", "--count=10001"}, "--count"}}) {
    auto bad = Parse(args);
    ASSERT_TRUE(bad.ok());
    auto r = BuildPlaceRequest(*bad);
    ASSERT_FALSE(r.ok()) << part;
    EXPECT_THAT(r.status().message(), HasSubstr(part));
  }
}

// RunCtl without a server: usage errors exit 2 before any connection.
struct CtlResult {
  int code;
  std::string out;
  std::string err;
};

CtlResult Ctl(std::vector<std::string> args, std::map<std::string, std::string> env = {}) {
  std::ostringstream out, err;
  CtlEnvironment e;
  e.vars = std::move(env);
  int code = RunCtl(args, out, err, e);
  return {code, out.str(), err.str()};
}

TEST(RunCtlTest, UsageErrorsExitTwo) {
  // The server address points at a port nobody listens on: a usage error
  // must be reported before anything is sent.
  const std::string server = "--server=127.0.0.1:1";
  auto r = Ctl({"get", "hosts", server});
  EXPECT_EQ(r.code, 2);
  EXPECT_THAT(r.err, HasSubstr("refusing to run without transport security"));
  r = Ctl({"get", "hosts", server, "--tls-ca=/ca.pem"});
  EXPECT_EQ(r.code, 2);
  EXPECT_THAT(r.err, HasSubstr("--tls-cert, --tls-key missing"));
  r = Ctl({"get", "hosts", server}, {{"MEMBROKER_TLS_CERT", "/c.pem"}});
  EXPECT_EQ(r.code, 2);
  EXPECT_THAT(r.err, HasSubstr("--tls-key, --tls-ca missing"));
  r = Ctl({"get", "hosts", server}, {{"MEMBROKER_TLS_CERT", "/nonexistent/c.pem"},
                                     {"MEMBROKER_TLS_KEY", "/nonexistent/k.pem"},
                                     {"MEMBROKER_TLS_CA", "/nonexistent/ca.pem"}});
  EXPECT_EQ(r.code, 2);
  EXPECT_THAT(r.err, HasSubstr("--tls-cert=/nonexistent/c.pem: cannot read the file"));
  r = Ctl({"--insecure", server, "set", "vm", "v", "--max=4XB"});
  EXPECT_EQ(r.code, 2);
  EXPECT_THAT(r.err, HasSubstr("--max"));
  r = Ctl({"--insecure", server, "bogus"});
  EXPECT_EQ(r.code, 2);
  EXPECT_THAT(r.err, HasSubstr("unknown command \"bogus\""));
  r = Ctl({"--insecure", server, "top", "-o", "json"});
  EXPECT_EQ(r.code, 2);
  EXPECT_THAT(r.err, HasSubstr("-o"));
  r = Ctl({"--insecure", server, "top", "--iterations=0"});
  EXPECT_EQ(r.code, 2);
  EXPECT_THAT(r.err, HasSubstr("--iterations"));
  r = Ctl({"--insecure", server, "describe", "host", "bad/host"});
  EXPECT_EQ(r.code, 2);
  EXPECT_THAT(r.err, HasSubstr("HOST"));
  EXPECT_TRUE(r.out.empty());
}

TEST(RunCtlTest, HelpAndVersionExitZero) {
  auto r = Ctl({"--help"});
  EXPECT_EQ(r.code, 0);
  EXPECT_THAT(r.out, HasSubstr("Exit codes"));
  r = Ctl({"top", "--help"});
  EXPECT_EQ(r.code, 0);
  EXPECT_THAT(r.out, HasSubstr("--iterations=N"));
  r = Ctl({"version"});
  EXPECT_EQ(r.code, 0);
  EXPECT_THAT(r.out, HasSubstr("membrokerctl "));
}

TEST(InterruptibleWaitTest, ReturnsFalseOnceStopped) {
  std::atomic<bool> stop{false};
  auto wait = InterruptibleWait(&stop);
  EXPECT_TRUE(wait(absl::ZeroDuration()));
  stop.store(true);
  // Stopped: returns at once however long the wait would be.
  EXPECT_FALSE(wait(absl::Hours(1)));
}

TEST(StatusCodeNameTest, NamesCodes) {
  EXPECT_EQ(StatusCodeName(5), "NOT_FOUND");
  EXPECT_EQ(StatusCodeName(14), "UNAVAILABLE");
  EXPECT_EQ(StatusCodeName(99), "CODE_99");
}

}  // namespace
}  // namespace membroker::client

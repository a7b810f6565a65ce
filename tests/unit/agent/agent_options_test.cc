#include "node-agent/agent_options.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/backoff.h"
#include "node-agent/broker_link.h"

namespace membroker::agent {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

constexpr uint64_t kGiB = uint64_t{1} << 30;

std::string TempDir() {
  const char* t = std::getenv("TEST_TMPDIR");
  std::string base = t != nullptr ? t : "/tmp";
  std::string dir = absl::StrCat(base, "/agent_options_test.XXXXXX");
  EXPECT_NE(mkdtemp(dir.data()), nullptr);
  return dir;
}

std::string WriteFile(const std::string& dir, const std::string& name, const std::string& text) {
  const std::string path = absl::StrCat(dir, "/", name);
  std::ofstream(path) << text;
  return path;
}

class AgentOptionsTest : public ::testing::Test {
 protected:
  AgentOptionsTest() : dir_(TempDir()) {
    sim_path_ = WriteFile(dir_, "sim.textproto",
                          "host_total_bytes: 17179869184\n"
                          "vms { name: \"a\" max_bytes: 4294967296 "
                          "workload { constant { working_set_bytes: 1073741824 } } }\n");
    flags_.broker = "127.0.0.1:7070";
    flags_.host_id = "host-1";
    flags_.backend = "sim";
    flags_.sim_config = sim_path_;
    flags_.metrics_listen = "127.0.0.1:0";
    flags_.insecure = true;
  }

  void ExpectError(const std::string& needle) {
    absl::StatusOr<AgentOptions> o = BuildAgentOptions(flags_);
    ASSERT_FALSE(o.ok()) << "expected an error mentioning " << needle;
    EXPECT_THAT(std::string(o.status().message()), HasSubstr(needle));
  }

  std::string dir_;
  std::string sim_path_;
  AgentFlags flags_;
};

TEST_F(AgentOptionsTest, ValidFlags) {
  flags_.host_capacity_bytes = "8GiB";
  flags_.report_interval = "500ms";
  absl::StatusOr<AgentOptions> o = BuildAgentOptions(flags_);
  ASSERT_TRUE(o.ok()) << o.status();
  EXPECT_EQ(o->host_id, "host-1");
  EXPECT_EQ(o->sim_config.host_total_bytes(), 16 * kGiB);
  EXPECT_EQ(o->host_capacity_bytes, 8 * kGiB);
  EXPECT_FALSE(o->host_reserve_bytes.has_value());
  EXPECT_EQ(o->report_interval, absl::Milliseconds(500));
  EXPECT_EQ(o->libvirt_uri, "qemu:///system");
  // The fast signals are on by default.
  EXPECT_EQ(o->rss_interval, absl::Milliseconds(200));
  EXPECT_TRUE(o->local_grants);
  // The working-set probe measures statless VMs every 10 s by default.
  EXPECT_EQ(o->working_set_interval, absl::Seconds(10));
  EXPECT_FALSE(o->working_set_all_vms);
  // Refault sampling is off by default.
  EXPECT_EQ(o->working_set_refault, RefaultMode::kOff);
}

TEST_F(AgentOptionsTest, WorkingSetRefault) {
  for (const auto& [text, mode] : std::vector<std::pair<std::string, RefaultMode>>{
           {"kvm", RefaultMode::kKvm}, {"all", RefaultMode::kAll}, {"off", RefaultMode::kOff}}) {
    flags_.working_set_refault = text;
    absl::StatusOr<AgentOptions> o = BuildAgentOptions(flags_);
    ASSERT_TRUE(o.ok()) << o.status();
    EXPECT_EQ(o->working_set_refault, mode) << text;
  }
}

TEST_F(AgentOptionsTest, WorkingSetIntervalAndAllVms) {
  flags_.working_set_interval = "0";
  flags_.working_set_all_vms = "true";
  absl::StatusOr<AgentOptions> o = BuildAgentOptions(flags_);
  ASSERT_TRUE(o.ok()) << o.status();
  EXPECT_EQ(o->working_set_interval, absl::ZeroDuration());
  EXPECT_TRUE(o->working_set_all_vms);
  flags_.working_set_interval = "30s";
  flags_.working_set_all_vms = "false";
  o = BuildAgentOptions(flags_);
  ASSERT_TRUE(o.ok()) << o.status();
  EXPECT_EQ(o->working_set_interval, absl::Seconds(30));
  EXPECT_FALSE(o->working_set_all_vms);
}

TEST_F(AgentOptionsTest, RssIntervalAndLocalGrants) {
  flags_.rss_interval = "0";
  flags_.local_grants = "false";
  absl::StatusOr<AgentOptions> o = BuildAgentOptions(flags_);
  ASSERT_TRUE(o.ok()) << o.status();
  EXPECT_EQ(o->rss_interval, absl::ZeroDuration());
  EXPECT_FALSE(o->local_grants);
  flags_.rss_interval = "100ms";
  flags_.local_grants = "true";
  o = BuildAgentOptions(flags_);
  ASSERT_TRUE(o.ok()) << o.status();
  EXPECT_EQ(o->rss_interval, absl::Milliseconds(100));
  EXPECT_TRUE(o->local_grants);
}

TEST_F(AgentOptionsTest, ReconnectMaxBackoff) {
  absl::StatusOr<AgentOptions> o = BuildAgentOptions(flags_);
  ASSERT_TRUE(o.ok()) << o.status();
  EXPECT_EQ(o->reconnect_max_backoff, absl::ZeroDuration());  // follows the interval
  flags_.reconnect_max_backoff = "3s";
  o = BuildAgentOptions(flags_);
  ASSERT_TRUE(o.ok()) << o.status();
  EXPECT_EQ(o->reconnect_max_backoff, absl::Seconds(3));
}

// The reconnect schedule: exponential from 100 ms, jittered, capped at the
// report interval but never below 1 s (or at the operator's cap).
TEST(ReconnectBackoffTest, CapFollowsTheReportIntervalButNotBelowOneSecond) {
  EXPECT_EQ(ReconnectBackoff(absl::Seconds(1)).max, absl::Seconds(1));
  EXPECT_EQ(ReconnectBackoff(absl::Seconds(5)).max, absl::Seconds(5));
  EXPECT_EQ(ReconnectBackoff(absl::Milliseconds(100)).max, absl::Seconds(1));
  EXPECT_EQ(ReconnectBackoff(absl::Seconds(1), absl::Seconds(30)).max, absl::Seconds(30));
  EXPECT_EQ(ReconnectBackoff(absl::Seconds(1)).initial, absl::Milliseconds(100));
  EXPECT_TRUE(ValidateBackoffParams(ReconnectBackoff(absl::Seconds(1))).ok());
}

TEST(ReconnectBackoffTest, ScheduleIsExponentialJitteredAndCapped) {
  for (absl::Duration interval : {absl::Milliseconds(200), absl::Seconds(1), absl::Seconds(4)}) {
    const BackoffParams p = ReconnectBackoff(interval);
    const double cap = absl::ToDoubleSeconds(p.max);
    ASSERT_GE(cap, 1.0);
    Backoff backoff(p, /*seed=*/7);
    double base = 0.1, waited = 0;
    int attempts_until_cap = 0;
    for (int i = 0; i < 40; ++i) {
      const double d = absl::ToDoubleSeconds(backoff.Next());
      EXPECT_GE(d, base * 0.8 - 1e-9) << "attempt " << i;
      EXPECT_LE(d, base * 1.2 + 1e-9) << "attempt " << i;
      // Never hammered: once at the cap, at most one attempt per 0.8 s.
      if (base >= cap) {
        EXPECT_GE(d, 0.8 - 1e-9);
      }
      if (base < cap) {
        waited += d;
        ++attempts_until_cap;
      }
      base = std::min(cap, base * 2);
    }
    // Exponential: the cap is reached within a few attempts and about
    // two caps of waiting, so a broker back after any outage is retried
    // within about one cap (= one report interval, at least 1 s).
    EXPECT_LE(attempts_until_cap, 6) << absl::FormatDuration(interval);
    EXPECT_LE(waited, 2 * 1.2 * cap) << absl::FormatDuration(interval);
  }
  // Jittered: agents that lost the broker together do not retry in step.
  Backoff a(ReconnectBackoff(absl::Seconds(1)), 1), b(ReconnectBackoff(absl::Seconds(1)), 2);
  int different = 0;
  for (int i = 0; i < 20; ++i) different += a.Next() != b.Next() ? 1 : 0;
  EXPECT_GE(different, 15);
}

TEST_F(AgentOptionsTest, GuestConsoleLogs) {
  flags_.guest_console_logs = {"web-1=/var/log/web-1.log", "db=/x/db.log"};
  absl::StatusOr<AgentOptions> o = BuildAgentOptions(flags_);
  ASSERT_TRUE(o.ok()) << o.status();
  EXPECT_EQ(o->guest_console_logs.size(), 2u);
  EXPECT_EQ(o->guest_console_logs.at("db"), "/x/db.log");
  flags_.guest_console_logs = {"web-1"};
  o = BuildAgentOptions(flags_);
  EXPECT_EQ(o.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(o.status().message()), HasSubstr("--guest-console-logs"));
}

TEST_F(AgentOptionsTest, EachBadFlagIsNamed) {
  struct Case {
    void (*mutate)(AgentFlags&);
    const char* needle;
  };
  const Case cases[] = {
      {[](AgentFlags& f) { f.broker = ""; }, "--broker is required"},
      {[](AgentFlags& f) { f.broker = "nohost"; }, "--broker"},
      {[](AgentFlags& f) { f.host_id = ""; }, "--host-id is required"},
      {[](AgentFlags& f) { f.host_id = "bad host!"; }, "--host-id"},
      {[](AgentFlags& f) { f.backend = "xen"; }, "--backend"},
      {[](AgentFlags& f) { f.backend = ""; }, "--backend is required"},
      {[](AgentFlags& f) { f.sim_config = ""; }, "--sim-config"},
      {[](AgentFlags& f) { f.sim_config = "/nonexistent/sim.textproto"; }, "--sim-config"},
      {[](AgentFlags& f) { f.host_capacity_bytes = "lots"; }, "--host-capacity-bytes"},
      {[](AgentFlags& f) { f.host_capacity_bytes = "0"; }, "--host-capacity-bytes"},
      {[](AgentFlags& f) { f.host_reserve_bytes = "-1GiB"; }, "--host-reserve-bytes"},
      {[](AgentFlags& f) {
         f.host_capacity_bytes = "1GiB";
         f.host_reserve_bytes = "1GiB";
       },
       "mutually exclusive"},
      {[](AgentFlags& f) { f.metrics_listen = ""; }, "--metrics-listen is required"},
      {[](AgentFlags& f) { f.metrics_listen = "127.0.0.1:99999"; }, "--metrics-listen"},
      {[](AgentFlags& f) { f.insecure = false; }, "refusing to run without transport security"},
      {[](AgentFlags& f) { f.tls_cert = "/x.pem"; }, "--insecure conflicts with --tls-cert"},
      {[](AgentFlags& f) {
         f.insecure = false;
         f.tls_cert = "/x.pem";
       },
       "--tls-key, --tls-ca missing"},
      {[](AgentFlags& f) {
         f.insecure = false;
         f.tls_cert = "/nonexistent/c.pem";
         f.tls_key = "/nonexistent/k.pem";
         f.tls_ca = "/nonexistent/ca.pem";
       },
       "--tls-cert=/nonexistent/c.pem: cannot read"},
      {[](AgentFlags& f) { f.report_interval = "fast"; }, "--report-interval"},
      {[](AgentFlags& f) { f.report_interval = "1ms"; }, "--report-interval"},
      {[](AgentFlags& f) { f.reconnect_max_backoff = "500ms"; }, "--reconnect-max-backoff"},
      {[](AgentFlags& f) { f.reconnect_max_backoff = "1h"; }, "--reconnect-max-backoff"},
      {[](AgentFlags& f) { f.reconnect_max_backoff = "soon"; }, "--reconnect-max-backoff"},
      {[](AgentFlags& f) { f.rss_interval = "10ms"; }, "--rss-interval"},
      {[](AgentFlags& f) { f.rss_interval = "1m"; }, "--rss-interval"},
      {[](AgentFlags& f) { f.rss_interval = "often"; }, "--rss-interval"},
      {[](AgentFlags& f) { f.local_grants = "yes"; }, "--local-grants"},
      {[](AgentFlags& f) { f.working_set_interval = "500ms"; }, "--working-set-interval"},
      {[](AgentFlags& f) { f.working_set_interval = "1h"; }, "--working-set-interval"},
      {[](AgentFlags& f) { f.working_set_interval = "sometimes"; }, "--working-set-interval"},
      {[](AgentFlags& f) { f.working_set_all_vms = "yes"; }, "--working-set-all-vms"},
      {[](AgentFlags& f) { f.working_set_refault = "on"; },
       "--working-set-refault: refault mode must be off, kvm or all, not \"on\""},
      {[](AgentFlags& f) { f.working_set_refault = "KVM"; }, "--working-set-refault"},
      {[](AgentFlags& f) {
         f.backend = "qmp";
         f.qmp_sockets.clear();
       },
       "--qmp-socket"},
      {[](AgentFlags& f) {
         f.qmp_sockets = {"/run/a.sock", ""};
       },
       "--qmp-socket: empty"},
      {[](AgentFlags& f) { f.qmp_socket_dir = "/nonexistent-dir"; }, "--qmp-socket-dir"},
      {[](AgentFlags& f) { f.qmp_socket_dir = "/etc/hostname"; }, "is not a directory"},
      {[](AgentFlags& f) { f.config = "/nonexistent/agent.textproto"; }, "--config"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.needle);
    AgentFlags saved = flags_;
    c.mutate(flags_);
    ExpectError(c.needle);
    flags_ = saved;
  }
}

TEST_F(AgentOptionsTest, ConfigFileFillsGapsAndFlagsWin) {
  flags_.broker = "";
  flags_.host_id = "from-flag";
  flags_.config = WriteFile(dir_, "agent.textproto",
                            absl::StrCat("broker: \"10.0.0.1:7070\"\nhost_id: \"from-file\"\n"
                                         "host_reserve_bytes: 1073741824\n"));
  absl::StatusOr<AgentOptions> o = BuildAgentOptions(flags_);
  ASSERT_TRUE(o.ok()) << o.status();
  EXPECT_EQ(o->broker, "10.0.0.1:7070");
  EXPECT_EQ(o->host_id, "from-flag");
  EXPECT_EQ(o->host_reserve_bytes, kGiB);
  // A capacity flag replaces the file's reserve.
  flags_.host_capacity_bytes = "2GiB";
  o = BuildAgentOptions(flags_);
  ASSERT_TRUE(o.ok()) << o.status();
  EXPECT_EQ(o->host_capacity_bytes, 2 * kGiB);
  EXPECT_FALSE(o->host_reserve_bytes.has_value());
}

TEST_F(AgentOptionsTest, BadConfigFileIsNamed) {
  flags_.config = WriteFile(dir_, "bad.textproto", "brokr: \"x\"\n");
  ExpectError("--config");
  flags_.config = WriteFile(dir_, "bad2.textproto", "broker: \"nohost\"\n");
  flags_.broker = "";
  ExpectError("--config field broker");
}

TEST_F(AgentOptionsTest, QmpSocketEntriesAndDirectoryArePassedOnForRescanning) {
  const std::string sockdir = absl::StrCat(dir_, "/qmp");
  ASSERT_EQ(mkdir(sockdir.c_str(), 0700), 0);
  for (const char* name : {"vm1.sock", "vm2.sock"}) {
    int fd = socket(AF_UNIX, SOCK_STREAM, 0);
    ASSERT_GE(fd, 0);
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    const std::string path = absl::StrCat(sockdir, "/", name);
    ASSERT_LT(path.size(), sizeof(addr.sun_path));
    std::snprintf(addr.sun_path, sizeof(addr.sun_path), "%s", path.c_str());
    ASSERT_EQ(bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
    close(fd);
  }
  WriteFile(sockdir, "notes.txt", "not a socket");
  EXPECT_TRUE(ValidateQmpSockets({}, sockdir).ok());
  // Not there yet is fine: the backend keeps looking.
  EXPECT_TRUE(ValidateQmpSockets({sockdir + "/later*.sock", "/run/explicit.sock"}, "").ok());

  // The entries reach the backend as given, not expanded: it rescans them.
  flags_.backend = "qmp";
  flags_.qmp_sockets = {sockdir + "/vm2*", "/run/explicit.sock"};
  flags_.qmp_socket_dir = sockdir;
  absl::StatusOr<AgentOptions> o = BuildAgentOptions(flags_);
  ASSERT_TRUE(o.ok()) << o.status();
  EXPECT_THAT(o->qmp_sockets, ElementsAre(sockdir + "/vm2*", "/run/explicit.sock"));
  EXPECT_EQ(o->qmp_socket_dir, sockdir);

  // A directory alone is enough for --backend=qmp, even while it is empty.
  const std::string empty_dir = absl::StrCat(dir_, "/empty");
  ASSERT_EQ(mkdir(empty_dir.c_str(), 0700), 0);
  flags_.qmp_sockets.clear();
  flags_.qmp_socket_dir = empty_dir;
  o = BuildAgentOptions(flags_);
  ASSERT_TRUE(o.ok()) << o.status();
  EXPECT_TRUE(o->qmp_sockets.empty());
  EXPECT_EQ(o->qmp_socket_dir, empty_dir);
}

TEST(NormalizeCommandLineTest, DashesBecomeUnderscoresInNamesOnly) {
  EXPECT_THAT(NormalizeCommandLine({"membroker-agent", "--host-id=web-1", "--host-capacity-bytes",
                                    "8GiB", "--insecure", "-x", "--", "--keep-me"}),
              ElementsAre("membroker-agent", "--host_id=web-1", "--host_capacity_bytes", "8GiB",
                          "--insecure", "-x", "--", "--keep-me"));
}

TEST(NormalizeCommandLineTest, RepeatedQmpSocketsAreJoined) {
  EXPECT_THAT(NormalizeCommandLine({"a", "--backend=qmp", "--qmp-socket=/run/1.sock",
                                    "--broker=b:1", "--qmp-socket", "/run/2.sock",
                                    "--qmp_socket=/run/3.sock,/run/4.sock"}),
              ElementsAre("a", "--backend=qmp",
                          "--qmp_socket=/run/1.sock,/run/2.sock,/run/3.sock,/run/4.sock",
                          "--broker=b:1"));
}

TEST(ComputeCapacityTest, BudgetReserveOrTotal) {
  EXPECT_EQ(*ComputeCapacity(16 * kGiB, std::nullopt, std::nullopt), 16 * kGiB);
  EXPECT_EQ(*ComputeCapacity(16 * kGiB, 8 * kGiB, std::nullopt), 8 * kGiB);
  EXPECT_EQ(*ComputeCapacity(16 * kGiB, std::nullopt, 2 * kGiB), 14 * kGiB);
  EXPECT_EQ(*ComputeCapacity(16 * kGiB, 16 * kGiB, std::nullopt), 16 * kGiB);
}

TEST(ComputeCapacityTest, NeverMoreThanTheHost) {
  absl::StatusOr<uint64_t> c = ComputeCapacity(16 * kGiB, 17 * kGiB, std::nullopt);
  EXPECT_EQ(c.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(c.status().message()), HasSubstr("--host-capacity-bytes"));
  c = ComputeCapacity(16 * kGiB, std::nullopt, 16 * kGiB);
  EXPECT_THAT(std::string(c.status().message()), HasSubstr("--host-reserve-bytes"));
  c = ComputeCapacity(16 * kGiB, kGiB, kGiB);
  EXPECT_THAT(std::string(c.status().message()), HasSubstr("mutually exclusive"));
  EXPECT_FALSE(ComputeCapacity(0, std::nullopt, std::nullopt).ok());
}

}  // namespace
}  // namespace membroker::agent

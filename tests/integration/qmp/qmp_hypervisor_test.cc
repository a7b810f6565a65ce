// The QMP backend against fake QMP peers on unix sockets in a temp dir.

#include "node-agent/hypervisor/qmp_hypervisor.h"

#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/integration/qmp/fake_qmp_server.h"

namespace membroker::agent {
namespace {

using ::membroker::agent::testing::FakeQmpServer;
using ::membroker::agent::testing::FakeVmState;
using ::testing::HasSubstr;

constexpr uint64_t kMiB = 1ULL << 20;

constexpr char kStats[] = R"({"stats": {
    "stat-swap-out": 4096, "stat-available-memory": 300000000,
    "stat-free-memory": 200000000, "stat-minor-faults": 1234,
    "stat-major-faults": 56, "stat-total-memory": 480000000,
    "stat-swap-in": 8192, "stat-disk-caches": 50000000,
    "stat-htlb-pgalloc": 0, "stat-htlb-pgfail": 0},
  "last-update": 1700000000})";

class QmpHypervisorTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/mb-qmp-hv-XXXXXX";
    ASSERT_NE(mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
  }
  void TearDown() override {
    servers_.clear();
    ::rmdir(dir_.c_str());
  }

  FakeQmpServer* AddServer(const std::string& file, FakeVmState state) {
    auto server = std::make_unique<FakeQmpServer>(dir_ + "/" + file);
    server->set_state(std::move(state));
    EXPECT_TRUE(server->Start());
    servers_.push_back(std::move(server));
    return servers_.back().get();
  }

  // A backend over `entries` (and `socket_dir`), with reproducible jitter
  // of `jitter` (the shipped 0.2 unless a test needs exact waits).
  std::unique_ptr<QmpHypervisor> Make(std::vector<std::string> entries,
                                      const std::string& socket_dir = "", double jitter = 0.2) {
    QmpHypervisorOptions options;
    options.sockets_or_globs = std::move(entries);
    options.socket_dir = socket_dir;
    options.backoff_jitter = jitter;
    options.backoff_seed = 17;
    options.client.io_timeout = absl::Seconds(2);
    auto hv = QmpHypervisor::Create(std::move(options), &clock_);
    EXPECT_TRUE(hv.ok()) << hv.status();
    return hv.ok() ? std::move(hv).value() : nullptr;
  }

  ManualClock clock_;
  std::string dir_;
  std::vector<std::unique_ptr<FakeQmpServer>> servers_;
};

TEST_F(QmpHypervisorTest, ReadsIdentityBalloonAndGuestStats) {
  FakeVmState state;
  state.guest_stats_json = kStats;
  state.actual = 400 * kMiB;
  FakeQmpServer* server = AddServer("a.sock", state);
  auto hv = Make({server->path()});
  ASSERT_NE(hv, nullptr);
  EXPECT_EQ(hv->backend(), "qmp");
  auto vms = hv->ListVms();
  ASSERT_TRUE(vms.ok()) << vms.status();
  ASSERT_EQ(vms->size(), 1u);
  const VmStatus& vm = (*vms)[0];
  EXPECT_EQ(vm.vm_id, state.uuid);
  EXPECT_EQ(vm.name, "guest-a");
  EXPECT_EQ(vm.max_bytes, 512 * kMiB);
  EXPECT_EQ(vm.actual_bytes, 400 * kMiB);
  EXPECT_EQ(vm.stats.total_bytes, 480000000u);
  EXPECT_EQ(vm.stats.available_bytes, 300000000u);
  EXPECT_EQ(vm.stats.free_bytes, 200000000u);
  EXPECT_EQ(vm.stats.disk_caches_bytes, 50000000u);
  EXPECT_EQ(vm.stats.swap_in_bytes_total, 8192u);
  EXPECT_EQ(vm.stats.swap_out_bytes_total, 4096u);
  EXPECT_EQ(vm.stats.major_faults_total, 56u);
  EXPECT_EQ(vm.stats.minor_faults_total, 1234u);
  EXPECT_EQ(vm.stats.last_update, absl::FromUnixSeconds(1700000000));
  EXPECT_FALSE(vm.stats.oom_kills_total.has_value());
}

TEST_F(QmpHypervisorTest, LearnsThePidOfTheProcessBehindTheSocket) {
  // SO_PEERCRED names the process that serves the socket: here the fake
  // server's thread, in this test's own process.
  FakeQmpServer* server = AddServer("a.sock", FakeVmState{});
  auto hv = Make({server->path()});
  ASSERT_NE(hv, nullptr);
  auto vms = hv->ListVms();
  ASSERT_TRUE(vms.ok()) << vms.status();
  ASSERT_EQ(vms->size(), 1u);
  ASSERT_TRUE((*vms)[0].host_pid.has_value());
  EXPECT_EQ(*(*vms)[0].host_pid, static_cast<int64_t>(::getpid()));
}

TEST_F(QmpHypervisorTest, SetsTheBalloonInBytesAndValidatesTheTarget) {
  FakeQmpServer* server = AddServer("a.sock", FakeVmState{});
  auto hv = Make({server->path()});
  auto vms = hv->ListVms();
  ASSERT_TRUE(vms.ok());
  ASSERT_EQ(vms->size(), 1u);
  const std::string id = (*vms)[0].vm_id;

  ASSERT_TRUE(hv->SetBalloonTarget(id, 256 * kMiB).ok());
  EXPECT_EQ(server->state().actual, 256 * kMiB);
  auto again = hv->ListVms();
  ASSERT_TRUE(again.ok());
  ASSERT_EQ(again->size(), 1u);
  EXPECT_EQ((*again)[0].actual_bytes, 256 * kMiB);

  EXPECT_EQ(hv->SetBalloonTarget(id, 0).code(), absl::StatusCode::kInvalidArgument);
  absl::Status above = hv->SetBalloonTarget(id, 513 * kMiB);
  EXPECT_EQ(above.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(above.message()), HasSubstr("target_bytes"));
  EXPECT_EQ(hv->SetBalloonTarget("no-such-vm", kMiB).code(), absl::StatusCode::kNotFound);
  // Refused targets changed nothing.
  EXPECT_EQ(server->state().actual, 256 * kMiB);
}

TEST_F(QmpHypervisorTest, ZeroUuidAndNoNameGiveStableFallbacks) {
  FakeVmState state;
  state.uuid = "00000000-0000-0000-0000-000000000000";
  state.name.reset();
  FakeQmpServer* server = AddServer("vm7.sock", state);
  auto hv = Make({server->path()});
  auto vms = hv->ListVms();
  ASSERT_TRUE(vms.ok());
  ASSERT_EQ(vms->size(), 1u);
  EXPECT_EQ((*vms)[0].vm_id, QmpIdFromPath(server->path()));
  EXPECT_EQ((*vms)[0].name, "vm7.sock");
  // Stable across backends (an agent restart) and distinct per path.
  hv.reset();  // the fake serves one connection at a time
  auto hv2 = Make({server->path()});
  auto vms2 = hv2->ListVms();
  ASSERT_TRUE(vms2.ok());
  ASSERT_EQ(vms2->size(), 1u);
  EXPECT_EQ((*vms2)[0].vm_id, (*vms)[0].vm_id);
  EXPECT_NE(QmpIdFromPath("/a"), QmpIdFromPath("/b"));
  EXPECT_EQ(QmpIdFromPath("/a").size(), 36u);
}

TEST_F(QmpHypervisorTest, FindsABalloonOutsideTheDefaultPath) {
  FakeVmState state;
  state.balloon_path = "/machine/peripheral-anon/device[3]";
  state.guest_stats_json = kStats;
  FakeQmpServer* server = AddServer("a.sock", state);
  auto hv = Make({server->path()});
  auto vms = hv->ListVms();
  ASSERT_TRUE(vms.ok());
  ASSERT_EQ(vms->size(), 1u);
  EXPECT_EQ((*vms)[0].stats.total_bytes, 480000000u);
  ASSERT_TRUE(hv->SetStatsPeriod((*vms)[0].vm_id, absl::Seconds(2)).ok());
  EXPECT_EQ(server->state().polling_interval, 2);
}

TEST_F(QmpHypervisorTest, VmWithoutBalloonReportsFullMemoryAndRefusesTargets) {
  FakeVmState state;
  state.balloon_path.clear();
  FakeQmpServer* server = AddServer("a.sock", state);
  auto hv = Make({server->path()});
  auto vms = hv->ListVms();
  ASSERT_TRUE(vms.ok());
  ASSERT_EQ(vms->size(), 1u);
  EXPECT_EQ((*vms)[0].actual_bytes, (*vms)[0].max_bytes);
  EXPECT_FALSE((*vms)[0].stats.last_update.has_value());
  EXPECT_EQ(hv->SetBalloonTarget((*vms)[0].vm_id, 100 * kMiB).code(),
            absl::StatusCode::kFailedPrecondition);
}

TEST_F(QmpHypervisorTest, GuestThatSentNoStatsYetHasEmptyStats) {
  FakeQmpServer* server = AddServer("a.sock", FakeVmState{});
  auto hv = Make({server->path()});
  auto vms = hv->ListVms();
  ASSERT_TRUE(vms.ok());
  ASSERT_EQ(vms->size(), 1u);
  EXPECT_FALSE((*vms)[0].stats.total_bytes.has_value());
  EXPECT_FALSE((*vms)[0].stats.last_update.has_value());
}

TEST_F(QmpHypervisorTest, StatsPeriodIsSetAndAppliedToVmsFoundLater) {
  FakeQmpServer* a = AddServer("a.sock", FakeVmState{});
  auto hv = Make({dir_ + "/*.sock"});
  auto vms = hv->ListVms();
  ASSERT_TRUE(vms.ok());
  ASSERT_EQ(vms->size(), 1u);
  EXPECT_EQ(hv->SetStatsPeriod((*vms)[0].vm_id, absl::Seconds(-1)).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(hv->SetStatsPeriod("nope", absl::Seconds(1)).code(), absl::StatusCode::kNotFound);
  // 1.5 s rounds up to whole seconds.
  ASSERT_TRUE(hv->SetStatsPeriod((*vms)[0].vm_id, absl::Milliseconds(1500)).ok());
  EXPECT_EQ(a->state().polling_interval, 2);

  FakeVmState other;
  other.uuid = "11111111-2222-3333-4444-555555555555";
  FakeQmpServer* b = AddServer("b.sock", other);
  auto both = hv->ListVms();
  ASSERT_TRUE(both.ok());
  EXPECT_EQ(both->size(), 2u);
  EXPECT_EQ(b->state().polling_interval, 2);
}

TEST_F(QmpHypervisorTest, GlobAndDirectoryFollowSocketsThatComeAndGo) {
  FakeQmpServer* a = AddServer("a.sock", FakeVmState{});
  for (const std::string& entry : {dir_ + "/*.sock", dir_}) {
    auto hv = Make({entry});
    auto vms = hv->ListVms();
    ASSERT_TRUE(vms.ok());
    EXPECT_EQ(vms->size(), 1u) << entry;

    FakeVmState other;
    other.uuid = "11111111-2222-3333-4444-555555555555";
    other.name = "guest-b";
    FakeQmpServer* b = AddServer("b.sock", other);
    vms = hv->ListVms();
    ASSERT_TRUE(vms.ok());
    ASSERT_EQ(vms->size(), 2u) << entry;

    b->Stop();  // the VM exits: its socket file goes away
    vms = hv->ListVms();
    ASSERT_TRUE(vms.ok());
    ASSERT_EQ(vms->size(), 1u) << entry;
    EXPECT_EQ((*vms)[0].name, "guest-a");
    EXPECT_EQ(hv->SetBalloonTarget(other.uuid, kMiB).code(), absl::StatusCode::kNotFound);
    servers_.pop_back();
  }
  EXPECT_GE(a->connections(), 2);
}

TEST_F(QmpHypervisorTest, SocketDirectoryIsWatchedForVmsThatStartAndExitLater) {
  // The backend starts over an empty directory.
  const std::string qmp_dir = dir_ + "/run";
  ASSERT_EQ(::mkdir(qmp_dir.c_str(), 0700), 0);
  auto hv = Make({}, qmp_dir);
  ASSERT_NE(hv, nullptr);
  auto vms = hv->ListVms();
  ASSERT_TRUE(vms.ok());
  EXPECT_TRUE(vms->empty());
  // What is not a socket is ignored.
  { std::ofstream(qmp_dir + "/notes.txt") << "not a socket"; }
  ASSERT_EQ(::mkdir((qmp_dir + "/sub.sock").c_str(), 0700), 0);
  vms = hv->ListVms();
  ASSERT_TRUE(vms.ok());
  EXPECT_TRUE(vms->empty());

  // A VM starts after the backend: listed at the next call, with no wait
  // (a new socket has no backoff to serve).
  auto a = std::make_unique<FakeQmpServer>(qmp_dir + "/a.sock");
  ASSERT_TRUE(a->Start());
  vms = hv->ListVms();
  ASSERT_TRUE(vms.ok());
  ASSERT_EQ(vms->size(), 1u);
  EXPECT_EQ((*vms)[0].name, "guest-a");
  const std::string id = (*vms)[0].vm_id;
  EXPECT_TRUE(hv->SetBalloonTarget(id, 256 * kMiB).ok());
  EXPECT_EQ(a->state().actual, 256 * kMiB);

  // A second one joins.
  FakeVmState other;
  other.uuid = "11111111-2222-3333-4444-555555555555";
  other.name = "guest-b";
  auto b = std::make_unique<FakeQmpServer>(qmp_dir + "/b.sock");
  b->set_state(other);
  ASSERT_TRUE(b->Start());
  vms = hv->ListVms();
  ASSERT_TRUE(vms.ok());
  EXPECT_EQ(vms->size(), 2u);

  // The first exits (connection closed, socket file removed): it leaves
  // the listing and is unknown from then on.
  a->Stop();
  vms = hv->ListVms();
  ASSERT_TRUE(vms.ok());
  ASSERT_EQ(vms->size(), 1u);
  EXPECT_EQ((*vms)[0].name, "guest-b");
  EXPECT_EQ(hv->SetBalloonTarget(id, 256 * kMiB).code(), absl::StatusCode::kNotFound);
  b->Stop();
  ::unlink((qmp_dir + "/notes.txt").c_str());
  ::rmdir((qmp_dir + "/sub.sock").c_str());
  ::rmdir(qmp_dir.c_str());
}

TEST_F(QmpHypervisorTest, SocketFileRemovedUnderALiveConnectionKeepsTheVm) {
  FakeQmpServer* a = AddServer("a.sock", FakeVmState{});
  auto hv = Make({}, dir_);
  auto vms = hv->ListVms();
  ASSERT_TRUE(vms.ok());
  ASSERT_EQ(vms->size(), 1u);
  // Someone removes the file; QEMU still runs and its connection is open.
  ASSERT_EQ(::unlink(a->path().c_str()), 0);
  vms = hv->ListVms();
  ASSERT_TRUE(vms.ok());
  ASSERT_EQ(vms->size(), 1u);
  EXPECT_TRUE(hv->SetBalloonTarget((*vms)[0].vm_id, 300 * kMiB).ok());
  // QEMU exits: now it is gone.
  a->Stop();
  vms = hv->ListVms();
  ASSERT_TRUE(vms.ok());
  EXPECT_TRUE(vms->empty());
}

TEST_F(QmpHypervisorTest, ExplicitSocketThatGoesAwayStaysKnownAndUnavailable) {
  FakeQmpServer* a = AddServer("a.sock", FakeVmState{});
  auto hv = Make({a->path()});
  auto vms = hv->ListVms();
  ASSERT_TRUE(vms.ok());
  ASSERT_EQ(vms->size(), 1u);
  const std::string id = (*vms)[0].vm_id;
  a->Stop();  // the socket file is gone too
  vms = hv->ListVms();
  ASSERT_TRUE(vms.ok());
  EXPECT_TRUE(vms->empty());
  // Named by the operator: retry later, not "gone".
  EXPECT_EQ(hv->SetBalloonTarget(id, 300 * kMiB).code(), absl::StatusCode::kUnavailable);
  // QEMU comes back on the same path: found again after the backoff.
  FakeQmpServer* again = AddServer("a.sock", FakeVmState{});
  for (int i = 0; i < 40 && again->connections() == 0; ++i) {
    clock_.Advance(absl::Seconds(1));
    ASSERT_TRUE(hv->ListVms().ok());
  }
  vms = hv->ListVms();
  ASSERT_TRUE(vms.ok());
  ASSERT_EQ(vms->size(), 1u);
  EXPECT_EQ((*vms)[0].vm_id, id);
}

TEST_F(QmpHypervisorTest, MissingSocketIsRetriedWithBackoff) {
  const std::string path = dir_ + "/late.sock";
  auto hv = Make({path});
  auto vms = hv->ListVms();
  ASSERT_TRUE(vms.ok());
  EXPECT_TRUE(vms->empty());

  FakeQmpServer* server = AddServer("late.sock", FakeVmState{});
  // The first retry waits the minimum backoff (1 s +- 20 % jitter on the
  // injected clock).
  vms = hv->ListVms();
  ASSERT_TRUE(vms.ok());
  EXPECT_TRUE(vms->empty());
  clock_.Advance(absl::Milliseconds(799));
  vms = hv->ListVms();
  ASSERT_TRUE(vms.ok());
  EXPECT_TRUE(vms->empty());
  EXPECT_EQ(server->connections(), 0);
  clock_.Advance(absl::Milliseconds(401));
  vms = hv->ListVms();
  ASSERT_TRUE(vms.ok());
  EXPECT_EQ(vms->size(), 1u);
  EXPECT_EQ(server->connections(), 1);
}

TEST_F(QmpHypervisorTest, BackoffDoublesUpToTheMaximum) {
  auto hv = Make({dir_ + "/never.sock"}, "", /*jitter=*/0);
  // Failed attempts at t=0, 1, 3, 7, 15, 31, 61 (waits 1, 2, 4, 8, 16, 30,
  // 30 s): the next one is at t=91.
  FakeQmpServer* server = nullptr;
  for (int second = 0; second <= 91; ++second) {
    ASSERT_TRUE(hv->ListVms().ok());
    if (second == 61) server = AddServer("never.sock", FakeVmState{});
    if (second == 90) {
      ASSERT_NE(server, nullptr);
      EXPECT_EQ(server->connections(), 0) << "retried before the backoff elapsed";
    }
    if (second < 91) clock_.Advance(absl::Seconds(1));
  }
  ASSERT_NE(server, nullptr);
  EXPECT_EQ(server->connections(), 1);
  auto vms = hv->ListVms();
  ASSERT_TRUE(vms.ok());
  EXPECT_EQ(vms->size(), 1u);
}

TEST_F(QmpHypervisorTest, ABrokenVmDoesNotHideTheOthers) {
  FakeQmpServer* good = AddServer("a.sock", FakeVmState{});
  FakeVmState bad_state;
  bad_state.uuid = "11111111-2222-3333-4444-555555555555";
  FakeQmpServer* bad = AddServer("b.sock", bad_state);
  bad->set_override([](const std::string& cmd, const google::protobuf::Struct&)
                        -> std::optional<std::vector<std::string>> {
    if (cmd == "query-balloon") return std::vector<std::string>{"{not json"};
    return std::nullopt;
  });
  auto hv = Make({dir_});
  auto vms = hv->ListVms();
  ASSERT_TRUE(vms.ok());
  ASSERT_EQ(vms->size(), 1u);
  EXPECT_EQ((*vms)[0].vm_id, good->state().uuid);

  // A reply of the right JSON but the wrong type is as bad.
  bad->set_override([](const std::string& cmd, const google::protobuf::Struct&)
                        -> std::optional<std::vector<std::string>> {
    if (cmd == "query-balloon") {
      return std::vector<std::string>{R"({"return": {"actual": "lots"}, "id": "$ID"})"};
    }
    return std::nullopt;
  });
  clock_.Advance(absl::Seconds(5));
  vms = hv->ListVms();
  ASSERT_TRUE(vms.ok());
  EXPECT_EQ(vms->size(), 1u);

  // Healed: listed again after the backoff.
  bad->set_override(nullptr);
  clock_.Advance(absl::Seconds(30));
  vms = hv->ListVms();
  ASSERT_TRUE(vms.ok());
  EXPECT_EQ(vms->size(), 2u);
}

TEST_F(QmpHypervisorTest, DroppedConnectionIsReconnectedAfterTheBackoff) {
  FakeQmpServer* server = AddServer("a.sock", FakeVmState{});
  auto hv = Make({server->path()});
  auto vms = hv->ListVms();
  ASSERT_TRUE(vms.ok());
  ASSERT_EQ(vms->size(), 1u);
  const std::string id = (*vms)[0].vm_id;
  // QEMU goes away in the middle of a read.
  server->set_override([](const std::string& cmd, const google::protobuf::Struct&)
                           -> std::optional<std::vector<std::string>> {
    if (cmd == "query-balloon") return std::vector<std::string>{testing::kDropConnection};
    return std::nullopt;
  });
  vms = hv->ListVms();
  ASSERT_TRUE(vms.ok());
  EXPECT_TRUE(vms->empty());
  // Known but unreachable: retry later, not "gone".
  EXPECT_EQ(hv->SetBalloonTarget(id, 100 * kMiB).code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(hv->SetStatsPeriod(id, absl::Seconds(1)).code(), absl::StatusCode::kUnavailable);
  server->set_override(nullptr);
  vms = hv->ListVms();  // still backing off
  ASSERT_TRUE(vms.ok());
  EXPECT_TRUE(vms->empty());
  EXPECT_EQ(server->connections(), 1);
  clock_.Advance(absl::Milliseconds(1200));  // the longest jittered first wait
  vms = hv->ListVms();
  ASSERT_TRUE(vms.ok());
  ASSERT_EQ(vms->size(), 1u);
  EXPECT_EQ((*vms)[0].vm_id, id);
  EXPECT_EQ(server->connections(), 2);
  EXPECT_TRUE(hv->SetBalloonTarget(id, 100 * kMiB).ok());
}

TEST_F(QmpHypervisorTest, DuplicateUuidIsListedOnce) {
  AddServer("a.sock", FakeVmState{});
  AddServer("b.sock", FakeVmState{});  // same UUID: a second monitor of one VM
  auto hv = Make({dir_});
  auto vms = hv->ListVms();
  ASSERT_TRUE(vms.ok());
  EXPECT_EQ(vms->size(), 1u);
}

TEST_F(QmpHypervisorTest, BalloonChangeEventsKeepActualWhenQueryBalloonFails) {
  FakeQmpServer* server = AddServer("a.sock", FakeVmState{});
  auto hv = Make({server->path()});
  auto vms = hv->ListVms();
  ASSERT_TRUE(vms.ok());
  ASSERT_EQ(vms->size(), 1u);
  // query-balloon now fails softly; the BALLOON_CHANGE event sent with the
  // balloon command carries the new actual.
  server->set_override([](const std::string& cmd, const google::protobuf::Struct&)
                           -> std::optional<std::vector<std::string>> {
    if (cmd == "query-balloon") {
      return std::vector<std::string>{
          R"({"error": {"class": "GenericError", "desc": "busy"}, "id": "$ID"})"};
    }
    return std::nullopt;
  });
  ASSERT_TRUE(hv->SetBalloonTarget((*vms)[0].vm_id, 300 * kMiB).ok());
  vms = hv->ListVms();
  ASSERT_TRUE(vms.ok());
  ASSERT_EQ(vms->size(), 1u);
  EXPECT_EQ((*vms)[0].actual_bytes, 300 * kMiB);
}

TEST_F(QmpHypervisorTest, CreateRejectsBadOptions) {
  QmpHypervisorOptions empty;
  EXPECT_EQ(QmpHypervisor::Create(empty, &clock_).status().code(),
            absl::StatusCode::kInvalidArgument);
  QmpHypervisorOptions blank;
  blank.sockets_or_globs = {""};
  EXPECT_EQ(QmpHypervisor::Create(blank, &clock_).status().code(),
            absl::StatusCode::kInvalidArgument);
  QmpHypervisorOptions backoff;
  backoff.sockets_or_globs = {"/x"};
  backoff.min_backoff = absl::ZeroDuration();
  EXPECT_EQ(QmpHypervisor::Create(backoff, &clock_).status().code(),
            absl::StatusCode::kInvalidArgument);
  backoff.min_backoff = absl::Seconds(1);
  EXPECT_EQ(QmpHypervisor::Create(backoff, nullptr).status().code(),
            absl::StatusCode::kInvalidArgument);
  backoff.backoff_jitter = 1.5;
  absl::Status jitter = QmpHypervisor::Create(backoff, &clock_).status();
  EXPECT_EQ(jitter.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(jitter.message()), HasSubstr("jitter"));
  EXPECT_TRUE(MakeQmpHypervisor({"/x"}, "", &clock_).ok());
  EXPECT_TRUE(MakeQmpHypervisor({}, dir_, &clock_).ok());
  EXPECT_FALSE(MakeQmpHypervisor({}, "", &clock_).ok());
}

// Guest statistics are untrusted input.
google::protobuf::Value Parse(const std::string& json) {
  auto s = ParseQmpJson(absl::StrCat("{\"v\": ", json, "}"));
  EXPECT_TRUE(s.ok()) << json;
  return s.ok() ? s->fields().at("v") : google::protobuf::Value();
}

TEST(ParseQmpGuestStatsTest, UnsetAndHostileFieldsAreEmpty) {
  auto stats = ParseQmpGuestStats(Parse(R"({"stats": {
      "stat-total-memory": -1, "stat-available-memory": "12",
      "stat-free-memory": 1.5, "stat-disk-caches": -2,
      "stat-swap-in": 1e300, "stat-swap-out": null,
      "stat-major-faults": [1], "stat-minor-faults": 9007199254740992},
    "last-update": 0})"));
  ASSERT_TRUE(stats.ok());
  EXPECT_FALSE(stats->total_bytes.has_value());
  EXPECT_FALSE(stats->available_bytes.has_value());
  EXPECT_FALSE(stats->free_bytes.has_value());
  EXPECT_FALSE(stats->disk_caches_bytes.has_value());
  EXPECT_FALSE(stats->swap_in_bytes_total.has_value());
  EXPECT_FALSE(stats->swap_out_bytes_total.has_value());
  EXPECT_FALSE(stats->major_faults_total.has_value());
  EXPECT_EQ(stats->minor_faults_total, 9007199254740992u);  // 2^53 is exact
  EXPECT_FALSE(stats->last_update.has_value());
}

TEST(ParseQmpGuestStatsTest, MissingOrMistypedPartsAreNotACrash) {
  EXPECT_FALSE(ParseQmpGuestStats(Parse("[]")).ok());
  EXPECT_FALSE(ParseQmpGuestStats(Parse("3")).ok());
  for (const char* json : {"{}", R"({"stats": 5})", R"({"stats": [], "last-update": "x"})",
                           R"({"last-update": -1})", R"({"stats": {}, "last-update": 1.25})"}) {
    auto stats = ParseQmpGuestStats(Parse(json));
    ASSERT_TRUE(stats.ok()) << json;
    EXPECT_FALSE(stats->total_bytes.has_value()) << json;
    EXPECT_FALSE(stats->last_update.has_value()) << json;
  }
}

// free-page-reporting of the balloon, as QEMU 5.1+ answers qom-get.
constexpr char kReportingProp[] = "/machine/peripheral/balloon0|free-page-reporting";

// Whether a QMP request (the whole message) asks for free-page-reporting.
bool AsksFreePageReporting(const google::protobuf::Struct& request) {
  auto args = request.fields().find("arguments");
  if (args == request.fields().end()) return false;
  auto prop = args->second.struct_value().fields().find("property");
  return prop != args->second.struct_value().fields().end() &&
         prop->second.string_value() == "free-page-reporting";
}

TEST_F(QmpHypervisorTest, FreePageReportingIsReadOncePerConnection) {
  FakeVmState on;
  on.object_props[kReportingProp] = "true";
  FakeQmpServer* a = AddServer("a.sock", on);
  FakeVmState off;
  off.uuid = "6f0a2c1e-9d3b-4c5a-8e7f-000000000002";
  off.name = "guest-b";
  off.object_props[kReportingProp] = "false";
  FakeQmpServer* b = AddServer("b.sock", off);
  auto hv = Make({a->path(), b->path()});
  ASSERT_NE(hv, nullptr);
  for (int round = 0; round < 2; ++round) {
    auto vms = hv->ListVms();
    ASSERT_TRUE(vms.ok()) << vms.status();
    ASSERT_EQ(vms->size(), 2u);
    for (const VmStatus& vm : *vms) {
      EXPECT_EQ(vm.free_page_reporting, vm.name == "guest-a") << vm.name;
    }
  }
  // Read when the VM is identified, not every round.
  int asked = 0;
  for (const std::string& line : a->requests()) {
    if (line.find("free-page-reporting") != std::string::npos) ++asked;
  }
  EXPECT_EQ(asked, 1);
}

TEST_F(QmpHypervisorTest, HostileOrMissingFreePageReportingReadsAsOffAndChangesNothingElse) {
  // Each case: the raw reply lines for the qom-get (empty: the fake's own
  // "Property not found" error, as from a QEMU without the property).
  const std::vector<std::vector<std::string>> cases = {
      {},
      {R"({"error": {"class": "GenericError", "desc": "Property 'free-page-reporting' not found"}, "id": "$ID"})"},
      {R"({"error": {"class": "DeviceNotFound", "desc": "no such device"}, "id": "$ID"})"},
      {R"({"return": "on", "id": "$ID"})"},
      {R"({"return": 1, "id": "$ID"})"},
      {R"({"return": null, "id": "$ID"})"},
      {R"({"return": {"value": true}, "id": "$ID"})"},
      {R"({"return": [true], "id": "$ID"})"},
  };
  int index = 0;
  for (const std::vector<std::string>& reply : cases) {
    SCOPED_TRACE(index);
    FakeVmState state;
    state.actual = 300 * kMiB;
    state.guest_stats_json = kStats;
    FakeQmpServer* server = AddServer(absl::StrCat("h", index++, ".sock"), state);
    if (!reply.empty()) {
      server->set_override([reply](const std::string& cmd, const google::protobuf::Struct& request)
                               -> std::optional<std::vector<std::string>> {
        if (cmd != "qom-get" || !AsksFreePageReporting(request)) return std::nullopt;
        return reply;
      });
    }
    auto hv = Make({server->path()});
    ASSERT_NE(hv, nullptr);
    auto vms = hv->ListVms();
    ASSERT_TRUE(vms.ok()) << vms.status();
    ASSERT_EQ(vms->size(), 1u);
    const VmStatus& vm = (*vms)[0];
    EXPECT_FALSE(vm.free_page_reporting);
    // The property was asked for once (and answered with this case's reply).
    int asked = 0;
    for (const std::string& line : server->requests()) {
      if (line.find("free-page-reporting") != std::string::npos) ++asked;
    }
    EXPECT_EQ(asked, 1);
    // The rest of the VM is read as usual, and it can be sized.
    EXPECT_EQ(vm.actual_bytes, 300 * kMiB);
    EXPECT_TRUE(vm.sizing.balloon);
    EXPECT_EQ(vm.stats.total_bytes, 480000000u);
    EXPECT_TRUE(hv->SetBalloonTarget(vm.vm_id, 256 * kMiB).ok());
  }
}

TEST_F(QmpHypervisorTest, ConnectionLostOnFreePageReportingIsRetried) {
  FakeVmState state;
  state.object_props[kReportingProp] = "true";
  FakeQmpServer* server = AddServer("a.sock", state);
  server->set_override(
      [](const std::string& cmd,
         const google::protobuf::Struct& request) -> std::optional<std::vector<std::string>> {
        if (cmd == "qom-get" && AsksFreePageReporting(request)) {
          return std::vector<std::string>{testing::kDropConnection};
        }
        return std::nullopt;
      });
  auto hv = Make({server->path()}, "", /*jitter=*/0);
  ASSERT_NE(hv, nullptr);
  // Not identified: no VM this round, and no crash.
  auto vms = hv->ListVms();
  ASSERT_TRUE(vms.ok()) << vms.status();
  EXPECT_TRUE(vms->empty());
  // QEMU answers again: after the backoff the VM is found, reporting on.
  server->set_override(nullptr);
  clock_.Advance(absl::Minutes(2));
  vms = hv->ListVms();
  ASSERT_TRUE(vms.ok()) << vms.status();
  ASSERT_EQ(vms->size(), 1u);
  EXPECT_TRUE((*vms)[0].free_page_reporting);
}

}  // namespace
}  // namespace membroker::agent

// End to end with a real swapless QEMU guest under TCG whose balloon works
// but whose statistics stop arriving (a Windows guest without the balloon's
// statistics service, a guest whose statistics went stale): the broker
// sizes it from the host-side signals the agent measures (its QEMU
// process's referenced guest RAM, --working-set-interval=2s). The agent
// runs with --working-set-refault=all, so every round also writes "4" to
// the QEMU process's clear_refs (refault sampling; under TCG it must not
// change what is measured, and must not disturb QEMU or the guest).
//
// The guest (512 MiB, no swap) holds 16 MiB for kHoldSeconds, then its load
// grows by 32 MiB a second to 224 MiB and keeps touching all of it. From
// the start the test turns the balloon's statistics polling off on its own
// QMP socket every second (qom-set guest-stats-polling-interval 0; the
// agent asks for 1 s once, at its first listing), so the guest's last
// statistics age and the agent flags them stale within a few seconds.
// The broker runs with surplus_percent 0 (what the guest does not need is
// taken back), a 64 MiB free margin and otherwise the shipped defaults; the
// agent has a 512 MiB budget.
//
// Checked:
//   1. the statistics are flagged (health STATS_UNAVAILABLE) and explain
//      says the VM is "sized from host signals" with a "host working set";
//   2. idle, the guest is reclaimed (its target goes below 3/4 of its
//      size): sizing from the host does not pin it at its size;
//   3. its load reaches 224 MiB with no OOM kill (swapless: a target below
//      what it touches would kill it), and from then on its target stays
//      at or above the load: it is not reclaimed into its working set and
//      got memory when its load rose, with no guest statistics at all;
//   4. the working set was measured by refault sampling (explain says
//      "host working set … by refault"; never "by clear_refs") and QEMU is
//      still running at the end.
// Before host-side signals the broker kept such a guest's last estimate
// (its idle size) and ignored the agent's acute pressure for it.
//
// The test prints a timeline, one line a second: the broker's target, the
// balloon's actual size, the health, and the last line of the console.

#include <grpcpp/create_channel.h>
#include <grpcpp/security/credentials.h>
#include <stdlib.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "common/clock.h"
#include "gtest/gtest.h"
#include "membroker/v1/admin.grpc.pb.h"
#include "node-agent/hypervisor/qmp_client.h"
#include "tests/e2e/qemu/qemu_guest.h"
#include "tests/e2e/qemu/qemu_test_env.h"
#include "tests/e2e/qemu/qemu_test_fixture.h"
#include "tests/util/broker_process.h"

namespace membroker::e2e {
namespace {

using agent::QmpClient;

constexpr uint64_t kMiB = 1ULL << 20;
constexpr int kGuestMib = 512;
constexpr int kLoadMaxMib = 224;
// Long enough for the statistics to go stale, a few working-set rounds and
// the idle reclaim before the load grows.
constexpr int kHoldSeconds = 40;

// Turns the balloon's statistics polling off through the test's socket.
bool StopStatsPolling(QmpClient& client, const std::string& socket) {
  if (!client.connected() && !client.Connect(socket).ok()) return false;
  google::protobuf::Struct args;
  (*args.mutable_fields())["path"].set_string_value("/machine/peripheral/balloon0");
  (*args.mutable_fields())["property"].set_string_value("guest-stats-polling-interval");
  (*args.mutable_fields())["value"].set_number_value(0);
  return client.Execute("qom-set", &args).ok();
}

class QemuHostSignalsTest : public QemuTestBase {
 protected:
  QemuHostSignalsTest() : QemuTestBase("mb-qemu-hs") {}
};

TEST_F(QemuHostSignalsTest, GuestWithoutStatisticsIsSizedFromItsHostWorkingSet) {
  Prepare({/*daemons=*/true});
  if (!prepared_) return;

  QemuGuest guest(dir_, "hs-guest", "e0000000-0000-4000-8000-000000000021");
  ASSERT_TRUE(
      guest
          .Start(kernel_dir_ + "/vmlinuz", dir_ + "/initrd.cpio",
                 absl::StrFormat("mb_role=load mb_load=16,32,1,%d,%d", kLoadMaxMib, kHoldSeconds),
                 kGuestMib)
          .ok());
  QmpClient watch(RealClock::Get());
  ASSERT_TRUE(guest.WaitForConsole("MB-READY", absl::Minutes(3)))
      << "the guest did not boot; console:\n"
      << guest.Console() << "\nqemu:\n"
      << guest.QemuLog();
  EXPECT_NE(guest.Console().find("MB-SWAP 0 1"), std::string::npos) << guest.Console();
  StopStatsPolling(watch, guest.watch_socket());

  ASSERT_EQ(::mkdir((dir_ + "/state").c_str(), 0755), 0);
  std::ofstream(dir_ + "/broker.textproto")
      << "cluster_policy { host_free_margin_bytes: " << 64 * kMiB << " surplus_percent: 0 }\n";
  ChildProcess broker;
  const absl::StatusOr<::membroker::testing::BrokerPorts> ports = ::membroker::testing::StartBroker(
      broker, MB_BROKER_PATH, dir_ + "/state", dir_ + "/broker.log", absl::Seconds(30),
      {"--config=" + dir_ + "/broker.textproto"});
  ASSERT_TRUE(ports.ok()) << ports.status();
  ChildProcess agent_process;
  ASSERT_TRUE(
      agent_process
          .Start({MB_AGENT_PATH, absl::StrCat("--broker=127.0.0.1:", ports->grpc), "--host-id=h1",
                  "--backend=qmp", "--qmp-socket=" + guest.agent_socket(),
                  absl::StrCat("--host-capacity-bytes=", kGuestMib * kMiB),
                  "--working-set-interval=2s", "--working-set-refault=all",
                  "--metrics-listen=127.0.0.1:0", "--insecure"},
                 dir_ + "/agent.log")
          .ok());
  auto stub = v1::AdminService::NewStub(grpc::CreateChannel(absl::StrCat("127.0.0.1:", ports->grpc),
                                                            grpc::InsecureChannelCredentials()));

  bool flagged = false, host_sized = false, reached = false;
  bool by_refault = false, by_clear_refs = false;
  uint64_t min_target_idle = UINT64_MAX, min_target_after_reached = UINT64_MAX;
  uint64_t last_target = 0;
  std::string explain_sample, timeline = "t(s)  target/actual MiB health | console\n";
  const absl::Time started = absl::Now();
  const absl::Time deadline = started + absl::Seconds(kHoldSeconds + 90);
  absl::Time end_after = absl::InfiniteFuture();
  while (absl::Now() < deadline && absl::Now() < end_after) {
    const absl::Time tick = absl::Now();
    StopStatsPolling(watch, guest.watch_socket());
    const uint64_t actual = WatchActual(watch, guest.watch_socket());
    v1::Vm vm;
    {
      grpc::ClientContext ctx;
      ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(2));
      v1::ListVmsResponse listed;
      if (stub->ListVms(&ctx, {}, &listed).ok() && listed.vms_size() == 1) vm = listed.vms(0);
    }
    if (vm.health() == v1::BALLOON_HEALTH_STATS_UNAVAILABLE) flagged = true;
    {
      grpc::ClientContext ctx;
      ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(2));
      v1::ExplainVmRequest req;
      req.set_vm("hs-guest");
      v1::Explanation explanation;
      if (stub->ExplainVm(&ctx, req, &explanation).ok() && explanation.steps_size() > 0) {
        const std::string& step0 = explanation.steps(0);
        if (absl::StrContains(step0, "by refault")) by_refault = true;
        if (absl::StrContains(step0, "by clear_refs")) by_clear_refs = true;
        if (absl::StrContains(step0, "sized from host signals") &&
            absl::StrContains(step0, "host working set")) {
          host_sized = true;
          explain_sample = absl::StrJoin(explanation.steps(), "\n");
        }
      }
    }
    const std::string console = guest.Console();
    const bool growing = console.find("memload: growing") != std::string::npos;
    if (console.find("memload: reached") != std::string::npos) reached = true;
    if (vm.target_bytes() > 0) {
      last_target = vm.target_bytes();
      if (host_sized && !growing) min_target_idle = std::min(min_target_idle, vm.target_bytes());
      if (reached) min_target_after_reached = std::min(min_target_after_reached, vm.target_bytes());
    }
    absl::StrAppend(
        &timeline, absl::StrFormat("%5.1f %4d/%4d %s | %s\n", absl::ToDoubleSeconds(tick - started),
                                   vm.target_bytes() / kMiB, actual / kMiB,
                                   v1::BalloonHealth_Name(vm.health()), LastLine(console)));
    if (end_after == absl::InfiniteFuture() && (reached || OomKills(console) > 0)) {
      end_after = absl::Now() + absl::Seconds(15);
    }
    if (!broker.Running() || !agent_process.Running()) break;
    const absl::Duration left = absl::Seconds(1) - (absl::Now() - tick);
    if (left > absl::ZeroDuration()) absl::SleepFor(left);
  }
  std::printf("--- timeline:\n%s\n--- explain (last sized from host signals):\n%s\n",
              timeline.c_str(), explain_sample.c_str());
  std::printf(
      "lowest idle target %llu MiB, lowest target after the load reached %d MiB: %llu MiB\n",
      static_cast<unsigned long long>(min_target_idle == UINT64_MAX ? 0 : min_target_idle / kMiB),
      kLoadMaxMib,
      static_cast<unsigned long long>(
          min_target_after_reached == UINT64_MAX ? 0 : min_target_after_reached / kMiB));

  EXPECT_TRUE(broker.Running()) << "membroker exited";
  EXPECT_TRUE(agent_process.Running()) << "membroker-agent exited";
  EXPECT_TRUE(flagged) << "the guest's statistics were never flagged";
  EXPECT_TRUE(host_sized) << "explain never said the guest was sized from host signals";
  EXPECT_LE(min_target_idle, kGuestMib * kMiB * 3 / 4)
      << "the idle guest was not reclaimed while sized from host signals";
  EXPECT_EQ(OomKills(guest.Console()), 0) << "the guest was OOM-killed:\n" << guest.Console();
  EXPECT_TRUE(reached) << "the guest's load never reached " << kLoadMaxMib << " MiB";
  if (reached) {
    EXPECT_GE(min_target_after_reached, kLoadMaxMib * kMiB)
        << "reclaimed into its working set after the load reached it";
  }
  EXPECT_GT(last_target, 0u);
  EXPECT_TRUE(guest.Running()) << "QEMU exited";
  EXPECT_TRUE(by_refault) << "explain never said the working set was measured by refault";
  EXPECT_FALSE(by_clear_refs) << "a working set was measured by clear_refs alone";
  guest.Stop();
}

}  // namespace
}  // namespace membroker::e2e

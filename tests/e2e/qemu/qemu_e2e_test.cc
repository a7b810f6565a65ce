// End to end with real QEMU guests under TCG.
//
// Needs (installed by the set-up script, never at test time):
// qemu-system-x86, busybox-static, and the guest kernel and virtio modules
// that scripts/fetch-guest-kernel.sh puts in $MB_GUEST_KERNEL_DIR (default:
// guest-kernel/ under the build dir). Outside CI a missing piece skips with
// the reason; with CI=true it fails.
//
// 1. QmpBackendDrivesRealBalloons: two guests; the QMP backend lists them,
//    inflates one balloon (query-balloon actual drops, seen also on the
//    test's own QMP socket), sets the stats period, receives guest stats,
//    and deflates again.
// 2. BrokerGivesMemoryBackBeforeOom: the real membroker and membroker-agent
//    (--backend=qmp) with a host budget below the guests' total: the idle
//    guest's balloon inflates, and when the other guest's working set grows
//    the broker gives it memory back before it runs out (no OOM in its
//    console).

#include <stdlib.h>
#include <unistd.h>

#include <cstdlib>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/clock.h"
#include "gtest/gtest.h"
#include "node-agent/hypervisor/qmp_client.h"
#include "node-agent/hypervisor/qmp_hypervisor.h"
#include "tests/e2e/qemu/qemu_guest.h"
#include "tests/e2e/qemu/qemu_test_env.h"
#include "tests/e2e/qemu/qemu_test_fixture.h"
#include "tests/util/broker_process.h"

namespace membroker::e2e {
namespace {

using agent::QmpClient;
using agent::QmpHypervisor;
using agent::QmpHypervisorOptions;
using agent::VmStatus;
using ::membroker::testing::WaitUntil;

constexpr uint64_t kMiB = 1ULL << 20;

class QemuE2eTest : public QemuTestBase {
 protected:
  QemuE2eTest() : QemuTestBase("mb-qemu") {}

  // WaitReady of the base with 3 minutes; once booted, the QMP sockets
  // exist (QEMU runs).
  void WaitReady(QemuGuest* g) {
    QemuTestBase::WaitReady(g, absl::Minutes(3));
    if (g->Console().find("MB-READY") == std::string::npos) return;  // failed above
    EXPECT_TRUE(FileExists(g->agent_socket()));
  }
};

TEST_F(QemuE2eTest, QmpBackendDrivesRealBalloons) {
  Prepare({});
  if (!prepared_) return;
  QemuGuest* a = Boot("mb-a", "a0000000-0000-4000-8000-000000000001", "mb_role=idle");
  QemuGuest* b = Boot("mb-b", "b0000000-0000-4000-8000-000000000002", "mb_role=idle");
  WaitReady(a);
  WaitReady(b);
  if (HasFatalFailure()) return;

  QmpHypervisorOptions options;
  options.sockets_or_globs = {a->agent_socket(), b->agent_socket()};
  auto hv = QmpHypervisor::Create(options, RealClock::Get());
  ASSERT_TRUE(hv.ok()) << hv.status();
  QmpHypervisor& qmp = **hv;

  // Both VMs, with the identity QEMU was started with.
  std::vector<VmStatus> vms;
  WaitUntil(
      [&] {
        auto listed = qmp.ListVms();
        EXPECT_TRUE(listed.ok()) << listed.status();
        if (listed.ok()) vms = *listed;
        return vms.size() == 2;
      },
      absl::Seconds(60), absl::Milliseconds(100));
  ASSERT_EQ(vms.size(), 2u);
  const VmStatus* va = vms[0].name == "mb-a" ? &vms[0] : &vms[1];
  const VmStatus* vb = vms[0].name == "mb-a" ? &vms[1] : &vms[0];
  EXPECT_EQ(va->name, "mb-a");
  EXPECT_EQ(va->vm_id, a->uuid());
  EXPECT_EQ(vb->vm_id, b->uuid());
  EXPECT_EQ(va->max_bytes, 512 * kMiB);
  EXPECT_EQ(va->actual_bytes, 512 * kMiB);
  const std::string id_a = va->vm_id;
  const std::string id_b = vb->vm_id;

  ASSERT_TRUE(qmp.SetStatsPeriod(id_a, absl::Seconds(1)).ok());
  ASSERT_TRUE(qmp.SetStatsPeriod(id_b, absl::Seconds(1)).ok());

  // Inflate a's balloon: the guest gives 256 MiB back.
  ASSERT_TRUE(qmp.SetBalloonTarget(id_a, 256 * kMiB).ok());
  uint64_t actual_a = 0;
  uint64_t actual_b = 0;
  WaitUntil(
      [&] {
        auto listed = qmp.ListVms();
        EXPECT_TRUE(listed.ok()) << listed.status();
        if (!listed.ok()) return false;
        for (const VmStatus& vm : *listed) {
          if (vm.vm_id == id_a) actual_a = vm.actual_bytes;
          if (vm.vm_id == id_b) actual_b = vm.actual_bytes;
        }
        return actual_a != 0 && actual_a <= 256 * kMiB;
      },
      absl::Seconds(90), absl::Milliseconds(100));
  EXPECT_EQ(actual_a, 256 * kMiB);
  EXPECT_EQ(actual_b, 512 * kMiB);
  // The test's own monitor sees the same.
  QmpClient watch(RealClock::Get());
  EXPECT_EQ(WatchActual(watch, a->watch_socket()), 256 * kMiB);

  // Guest statistics arrive (the driver polls every second now).
  agent::GuestMemoryStats stats;
  WaitUntil(
      [&] {
        auto listed = qmp.ListVms();
        EXPECT_TRUE(listed.ok()) << listed.status();
        if (!listed.ok()) return false;
        for (const VmStatus& vm : *listed) {
          if (vm.vm_id == id_a) stats = vm.stats;
        }
        // The first statistics may predate the inflation: wait for fresh ones.
        return stats.last_update.has_value() && stats.total_bytes.has_value() &&
               *stats.total_bytes <= 256 * kMiB;
      },
      absl::Seconds(60), absl::Milliseconds(200));
  ASSERT_TRUE(stats.last_update.has_value());
  ASSERT_TRUE(stats.total_bytes.has_value());
  ASSERT_TRUE(stats.available_bytes.has_value());
  // The guest sees its memory minus the balloon.
  EXPECT_LE(*stats.total_bytes, 256 * kMiB);
  EXPECT_GT(*stats.total_bytes, 128 * kMiB);
  EXPECT_LE(*stats.available_bytes, *stats.total_bytes);
  EXPECT_LT(absl::Now() - *stats.last_update, absl::Minutes(5));

  // Deflate again.
  ASSERT_TRUE(qmp.SetBalloonTarget(id_a, 512 * kMiB).ok());
  WaitUntil([&] { return WatchActual(watch, a->watch_socket()) == 512 * kMiB; }, absl::Seconds(90),
            absl::Milliseconds(100));
  EXPECT_EQ(WatchActual(watch, a->watch_socket()), 512 * kMiB);
  EXPECT_EQ(a->Console().find("Out of memory"), std::string::npos) << a->Console();
}

TEST_F(QemuE2eTest, BrokerGivesMemoryBackBeforeOom) {
  const std::string broker_bin = MB_BROKER_PATH;
  const std::string agent_bin = MB_AGENT_PATH;
  Prepare({/*daemons=*/true});
  if (!prepared_) return;

  // The load guest holds 48 MiB for 40 s, then grows by 16 MiB every 2 s
  // to 352 MiB, touching all of it all the time.
  QemuGuest* idle = Boot("mb-idle", "c0000000-0000-4000-8000-000000000001", "mb_role=idle");
  QemuGuest* load = Boot("mb-load", "d0000000-0000-4000-8000-000000000002",
                         "mb_role=load mb_load=48,16,2,352,40");
  WaitReady(idle);
  WaitReady(load);
  if (HasFatalFailure()) return;

  ASSERT_EQ(::mkdir((dir_ + "/state").c_str(), 0755), 0);
  // These guests are small: the default floor (256 MiB) would keep half of
  // the host's 640 MiB on the idle guest, and the load guest needs ~400 MiB
  // at its peak. A 64 MiB default floor and a 64 MiB free margin leave room.
  {
    std::ofstream config(dir_ + "/broker.textproto");
    config << "cluster_policy { default_min_bytes: " << 64 * kMiB
           << " host_free_margin_bytes: " << 64 * kMiB << " }\n";
  }
  ChildProcess broker;
  const absl::StatusOr<::membroker::testing::BrokerPorts> ports = ::membroker::testing::StartBroker(
      broker, broker_bin, dir_ + "/state", dir_ + "/broker.log", absl::Seconds(30),
      {"--config=" + dir_ + "/broker.textproto"});
  ASSERT_TRUE(ports.ok()) << ports.status();
  // The guests' total is 1 GiB; the host allows 640 MiB.
  ChildProcess agent_process;
  ASSERT_TRUE(agent_process
                  .Start({agent_bin, absl::StrCat("--broker=127.0.0.1:", ports->grpc),
                          "--host-id=h1", "--backend=qmp",
                          "--qmp-socket=" + idle->agent_socket() + "," + load->agent_socket(),
                          absl::StrCat("--host-capacity-bytes=", 640 * kMiB),
                          "--metrics-listen=127.0.0.1:0", "--insecure"},
                         dir_ + "/agent.log")
                  .ok());

  QmpClient watch_idle(RealClock::Get());
  QmpClient watch_load(RealClock::Get());
  uint64_t idle_min = 512 * kMiB;
  uint64_t load_min = 512 * kMiB;
  bool reached = false;
  // Bounded: the load reaches its maximum ~80 s after boot; allow 4 min.
  const absl::Time started = absl::Now();
  std::string timeline;
  int polls = 0;
  WaitUntil(
      [&] {
        uint64_t ai = WatchActual(watch_idle, idle->watch_socket());
        uint64_t al = WatchActual(watch_load, load->watch_socket());
        if (ai > 0) idle_min = std::min(idle_min, ai);
        if (al > 0) load_min = std::min(load_min, al);
        std::string console = load->Console();
        if (polls++ % 20 == 0) {  // every ~2 s: the balloons and the load's last line
          size_t end = console.find_last_not_of("\r\n");
          size_t begin = end == std::string::npos ? 0 : console.find_last_of('\n', end);
          begin = begin == std::string::npos ? 0 : begin + 1;
          absl::StrAppend(&timeline, absl::FormatDuration(absl::Now() - started), ": idle ",
                          ai / kMiB, " MiB, load ", al / kMiB, " MiB | ",
                          end == std::string::npos ? "" : console.substr(begin, end + 1 - begin),
                          "\n");
        }
        if (console.find("Out of memory") != std::string::npos) return true;
        if (console.find("memload: reached") != std::string::npos) {
          reached = true;
          return true;
        }
        return !broker.Running() || !agent_process.Running();
      },
      absl::Minutes(4), absl::Milliseconds(100));
  // The daemons' logs are printed by their ChildProcess when the test fails.
  const std::string logs = absl::StrCat("\n--- balloons (actual) over time:\n", timeline,
                                        "\n--- load console:\n", load->Console());
  EXPECT_TRUE(broker.Running()) << "membroker exited";
  EXPECT_TRUE(agent_process.Running()) << "membroker-agent exited";
  // The idle guest gave memory back.
  EXPECT_LT(idle_min, 480 * kMiB) << "the idle guest's balloon never inflated";
  // The load guest got its working set without running out.
  EXPECT_TRUE(reached) << "the load never reached its working set";
  EXPECT_EQ(load->Console().find("Out of memory"), std::string::npos)
      << "the load guest ran out of memory";
  EXPECT_EQ(load->Console().find("MB-MEMLOAD-EXITED"), std::string::npos)
      << "the load program died";
  uint64_t final_load = WatchActual(watch_load, load->watch_socket());
  EXPECT_GE(final_load, 352 * kMiB) << "the load guest's balloon was not deflated enough";
  if (HasFailure()) std::printf("%s\n", logs.c_str());
  std::printf("idle guest balloon low: %llu MiB; load guest low: %llu MiB, final: %llu MiB\n",
              static_cast<unsigned long long>(idle_min / kMiB),
              static_cast<unsigned long long>(load_min / kMiB),
              static_cast<unsigned long long>(final_load / kMiB));
}

}  // namespace
}  // namespace membroker::e2e

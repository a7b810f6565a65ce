// End to end with real QEMU guests under TCG: virtio-mem sizing and VMs
// that must not be resized, under the real membroker and membroker-agent
// (--backend=qmp).
//
// Needs what qemu_e2e_test needs, plus virtio_mem.ko in the guest kernel
// directory (scripts/fetch-guest-kernel.sh fetches it).
//
// 1. VirtioMemGuestGrowsAndShrinks: one guest with 512 MiB of boot memory
//    and a 1 GiB virtio-mem device that starts empty (requested-size=0),
//    plus a balloon with free page reporting. Its load holds 32 MiB for
//    kHoldSeconds, then grows by kStepMib every 2 s to kLoadMaxMib (more
//    than its boot memory); the test then tells it (on its second serial
//    port) to stop, which frees the load at once. The broker (surplus 0:
//    memory nobody needs stays on the host) must plug virtio-mem as the
//    load grows (QMP query-memory-devices on the test's own socket: size
//    and requested-size up; the guest's MemTotal, printed on its console
//    and reported in its balloon statistics, up by as much) with no guest
//    OOM, and unplug it again once the load is gone. It prints the
//    timeline (requested vs plugged over time).
// 2. LockedGuestIsExcludedAndLeftAlone: a guest started with -overcommit
//    mem-lock=on (QEMU mlocks all its memory; TCG accepts it) on a host
//    budget below its size. The agent flags it EXCLUDED with the reason
//    (locked memory, from the QEMU process's VmLck), the broker shows it,
//    and its balloon never moves although the budget is short.

#include <grpcpp/create_channel.h>
#include <grpcpp/security/credentials.h>
#include <stdlib.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <fstream>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "common/clock.h"
#include "gtest/gtest.h"
#include "membroker/v1/admin.grpc.pb.h"
#include "node-agent/hypervisor/qmp_client.h"
#include "node-agent/hypervisor/qmp_hypervisor.h"
#include "tests/e2e/qemu/qemu_guest.h"
#include "tests/e2e/qemu/qemu_test_env.h"
#include "tests/e2e/qemu/qemu_test_fixture.h"
#include "tests/util/broker_process.h"

namespace membroker::e2e {
namespace {

using agent::QmpClient;
using agent::VirtioMemDevice;

constexpr uint64_t kMiB = 1ULL << 20;
constexpr uint64_t kBootMib = 512;
// The load: 32 MiB held for kHoldSeconds (time for the broker to see the
// guest), then kStepMib more every 2 s up to kLoadMaxMib.
constexpr int kHoldSeconds = 20;
constexpr int kStepMib = 48;
constexpr int kLoadMaxMib = 704;

std::string Mib(uint64_t bytes) { return absl::StrCat(bytes / kMiB); }

// The guest's last "MB-MEM <MemTotal kB> <MemAvailable kB>" line, in
// bytes; nullopt before the first.
std::optional<std::pair<uint64_t, uint64_t>> LastMemReport(const std::string& console) {
  size_t at = console.rfind("MB-MEM ");
  if (at == std::string::npos) return std::nullopt;
  size_t end = console.find('\n', at);
  if (end == std::string::npos) return std::nullopt;  // not complete yet
  std::vector<std::string> parts =
      absl::StrSplit(absl::StripAsciiWhitespace(console.substr(at + 7, end - at - 7)), ' ');
  uint64_t total_kb = 0;
  uint64_t avail_kb = 0;
  if (parts.size() != 2 || !absl::SimpleAtoi(parts[0], &total_kb) ||
      !absl::SimpleAtoi(parts[1], &avail_kb)) {
    return std::nullopt;
  }
  return std::make_pair(total_kb * 1024, avail_kb * 1024);
}

// The virtio-mem device `id` from query-memory-devices on the test's own
// socket; nullopt on any error.
std::optional<VirtioMemDevice> WatchVirtioMem(QmpClient& client, const std::string& socket,
                                              const std::string& id) {
  if (!client.connected() && !client.Connect(socket).ok()) return std::nullopt;
  auto reply = client.Execute("query-memory-devices");
  if (!reply.ok()) return std::nullopt;
  auto devices = agent::ParseQmpVirtioMemDevices(*reply, nullptr);
  if (!devices.ok()) return std::nullopt;
  for (const VirtioMemDevice& d : *devices) {
    if (d.id == id) return d;
  }
  return std::nullopt;
}

std::string LastLoadLine(const std::string& console) {
  size_t at = console.rfind("memload:");
  if (at == std::string::npos) return "";
  size_t end = console.find('\n', at);
  return console.substr(at, end == std::string::npos ? std::string::npos : end - at);
}

class QemuVirtioMemTest : public QemuTestBase {
 protected:
  QemuVirtioMemTest() : QemuTestBase("mb-qemu-vm") {}

  // Prepare of the base: the daemons and virtio_mem.ko too.
  void Prepare() { QemuTestBase::Prepare({/*daemons=*/true, /*virtio_mem=*/true}); }

  // WaitReady of the base with 2 minutes.
  void WaitReady(QemuGuest* g) { QemuTestBase::WaitReady(g, absl::Minutes(2)); }

  // Starts the broker with `config` (a textproto) and the agent on
  // `sockets` with the host budget; false (with a failure) when either
  // cannot start.
  bool StartDaemons(const std::string& config, const std::string& sockets,
                    uint64_t capacity_bytes) {
    EXPECT_EQ(::mkdir((dir_ + "/state").c_str(), 0755), 0);
    std::ofstream(dir_ + "/broker.textproto") << config;
    auto ports = ::membroker::testing::StartBroker(broker_, MB_BROKER_PATH, dir_ + "/state",
                                                   dir_ + "/broker.log", absl::Seconds(30),
                                                   {"--config=" + dir_ + "/broker.textproto"});
    EXPECT_TRUE(ports.ok()) << ports.status();
    if (!ports.ok()) return false;
    const absl::Status started =
        agent_.Start({MB_AGENT_PATH, absl::StrCat("--broker=127.0.0.1:", ports->grpc),
                      "--host-id=h1", "--backend=qmp", "--qmp-socket=" + sockets,
                      absl::StrCat("--host-capacity-bytes=", capacity_bytes),
                      "--metrics-listen=127.0.0.1:0", "--insecure"},
                     dir_ + "/agent.log");
    EXPECT_TRUE(started.ok()) << started;
    stub_ = v1::AdminService::NewStub(grpc::CreateChannel(absl::StrCat("127.0.0.1:", ports->grpc),
                                                          grpc::InsecureChannelCredentials()));
    return started.ok();
  }

  // The broker's view of the VM named `name`; nullopt when it has none.
  std::optional<v1::Vm> BrokerVm(const std::string& name) {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(2));
    v1::ListVmsResponse listed;
    if (!stub_->ListVms(&ctx, {}, &listed).ok()) return std::nullopt;
    for (const v1::Vm& vm : listed.vms()) {
      if (vm.name() == name) return vm;
    }
    return std::nullopt;
  }

  ChildProcess broker_;
  ChildProcess agent_;
  std::unique_ptr<v1::AdminService::Stub> stub_;
};

TEST_F(QemuVirtioMemTest, VirtioMemGuestGrowsAndShrinks) {
  Prepare();
  if (!prepared_) return;
  QemuGuestOptions options;
  options.memory = absl::StrCat(kBootMib, "M,maxmem=2G,slots=2");
  options.balloon_device = "virtio-balloon-pci,id=balloon0,free-page-reporting=on";
  options.extra_args = {"-object", "memory-backend-ram,id=vmem0,size=1G", "-device",
                        "virtio-mem-pci,id=vm0,memdev=vmem0,requested-size=0,block-size=2M"};
  options.control_port = true;
  QemuGuest* g = Boot("vm-grow", "f0000000-0000-4000-8000-000000000001",
                      absl::StrFormat("memhp_default_state=online_movable mb_role=load mb_ctl=on "
                                      "mb_memreport=on mb_load=32,%d,2,%d,%d",
                                      kStepMib, kLoadMaxMib, kHoldSeconds),
                      options);
  WaitReady(g);
  if (HasFatalFailure()) return;

  // surplus 0: what the guest does not need stays on the host, so the
  // guest is sized by its load alone. Floors: 256 MiB. A 50 % buffer keeps
  // a step of the load (48 MiB) ahead of the guest once it uses ~100 MiB:
  // this test is about the mechanism, not the reaction time.
  const std::string config = absl::StrCat(
      "cluster_policy { surplus_percent: 0 buffer_percent: 50 default_min_bytes: ", 256 * kMiB,
      " host_free_margin_bytes: ", 64 * kMiB, " }\n");
  ASSERT_TRUE(StartDaemons(config, g->agent_socket(), 2048 * kMiB));

  QmpClient watch(RealClock::Get());
  const absl::Time started = absl::Now();
  std::string timeline =
      "t(s)  vmem requested/plugged MiB | balloon actual | guest MemTotal/avail (console) | "
      "broker target/actual/plugged, stats total, mechanism, reporting | load\n";
  uint64_t first_total = 0;  // guest MemTotal before any plug
  uint64_t peak_plugged = 0;
  uint64_t peak_total = 0;
  uint64_t peak_stats_total = 0;  // the guest's balloon statistics, via the broker
  uint64_t plugged_at_stop = 0;
  uint64_t total_at_stop = 0;
  uint64_t low_plugged_after_stop = UINT64_MAX;
  uint64_t low_total_after_stop = UINT64_MAX;
  uint64_t low_stats_total_after_stop = UINT64_MAX;
  uint64_t low_plugged_at_max_load = UINT64_MAX;
  uint64_t low_total_at_max_load = UINT64_MAX;
  bool requested_not_block_multiple = false;
  bool reporting_seen = false;
  std::string mechanism_seen;
  std::optional<absl::Time> stop_sent;
  bool stopped = false;
  // When the device's plugged size last changed: the load is stopped only
  // once the VM has settled (see the stop below).
  uint64_t last_plugged = 0;
  absl::Time plug_changed_at = started;
  // Phase 1 ends when the load has reached its maximum and held it 6 s;
  // phase 2 when the device is back below kBootMib/4 plugged. Bounded: the
  // load's growth takes ~30 s after the hold and the broker's demand
  // estimate decays with a 30 s half-life; allow the whole run 200 s.
  const absl::Time deadline = started + absl::Seconds(200);
  std::optional<absl::Time> reached_at;
  while (absl::Now() < deadline) {
    const absl::Time tick = absl::Now();
    const std::string console = g->Console();
    auto dev = WatchVirtioMem(watch, g->watch_socket(), "vm0");
    const uint64_t balloon = WatchActual(watch, g->watch_socket());
    auto mem = LastMemReport(console);
    auto vm = BrokerVm("vm-grow");
    std::string line = absl::StrFormat("%5.1f ", absl::ToDoubleSeconds(tick - started));
    if (dev.has_value()) {
      absl::StrAppend(&line, Mib(dev->requested_size), "/", Mib(dev->size));
      if (dev->requested_size % dev->block_size != 0) requested_not_block_multiple = true;
      peak_plugged = std::max(peak_plugged, dev->size);
      if (stopped) low_plugged_after_stop = std::min(low_plugged_after_stop, dev->size);
      if (dev->size != last_plugged) {
        last_plugged = dev->size;
        plug_changed_at = tick;
      }
    } else {
      absl::StrAppend(&line, "?/?");
    }
    absl::StrAppend(&line, " | ", Mib(balloon), " | ");
    if (mem.has_value()) {
      absl::StrAppend(&line, Mib(mem->first), "/", Mib(mem->second));
      if (first_total == 0) first_total = mem->first;
      peak_total = std::max(peak_total, mem->first);
      if (stopped) low_total_after_stop = std::min(low_total_after_stop, mem->first);
    } else {
      absl::StrAppend(&line, "-");
    }
    if (vm.has_value()) {
      const uint64_t stats_total = vm->stats().total_bytes();
      absl::StrAppend(&line, " | ", Mib(vm->target_bytes()), "/", Mib(vm->actual_bytes()), "/",
                      Mib(vm->virtio_mem_plugged_bytes()), ", ", Mib(stats_total), ", ",
                      vm->sizing_mechanism(), ", ",
                      vm->free_page_reporting() ? absl::StrCat("reporting, free on host ",
                                                               Mib(vm->guest_free_on_host_bytes()))
                                                : "no-reporting");
      if (!vm->sizing_mechanism().empty()) mechanism_seen = vm->sizing_mechanism();
      if (vm->free_page_reporting()) reporting_seen = true;
      peak_stats_total = std::max(peak_stats_total, stats_total);
      if (stopped && stats_total > 0) {
        low_stats_total_after_stop = std::min(low_stats_total_after_stop, stats_total);
      }
    } else {
      absl::StrAppend(&line, " | -");
    }
    absl::StrAppend(&line, " | ", LastLoadLine(console), "\n");
    timeline += line;

    if (OomKills(console) > 0 || !broker_.Running() || !agent_.Running()) break;
    if (console.find("MB-MEMLOAD-EXITED") != std::string::npos) break;
    if (!reached_at.has_value() && console.find("memload: reached") != std::string::npos) {
      reached_at = tick;
    }
    // While the load holds its maximum (its last 6 s before the stop).
    if (reached_at.has_value() && !stopped && dev.has_value() && mem.has_value()) {
      low_plugged_at_max_load = std::min(low_plugged_at_max_load, dev->size);
      low_total_at_max_load = std::min(low_total_at_max_load, mem->first);
    }
    if (!stopped) {
      if (console.find("MB-LOAD-STOPPED") != std::string::npos) {
        stopped = true;
        plugged_at_stop = dev.has_value() ? dev->size : 0;
        total_at_stop = mem.has_value() ? mem->first : 0;
        absl::StrAppend(&timeline, "      (load stopped)\n");
      } else if (reached_at.has_value() && tick - *reached_at >= absl::Seconds(6) &&
                 tick - plug_changed_at >= absl::Seconds(8)) {
        // Stopped only once nothing was plugged for 8 s. A guest still
        // growing into its memory may hit a moment of acute pressure (its
        // balloon deflating on OOM while new blocks are onlined); a load
        // killed within the broker's 5 s squeeze window after that looks
        // exactly like a guest OOM kill, which the broker answers by
        // holding the VM's size for the OOM hold, as it should.
        // Retried every tick until the guest says it stopped.
        if (!stop_sent.has_value()) stop_sent = tick;
        (void)g->SendControl("stop");
      }
    } else if (dev.has_value() && dev->size < kBootMib / 4 * kMiB && mem.has_value() &&
               mem->first < total_at_stop) {
      break;
    }
    const absl::Duration left = absl::Seconds(1) - (absl::Now() - tick);
    if (left > absl::ZeroDuration()) absl::SleepFor(left);
  }
  const std::string console = g->Console();
  std::printf("--- timeline (one line a second):\n%s\n", timeline.c_str());

  EXPECT_TRUE(broker_.Running()) << "membroker exited";
  EXPECT_TRUE(agent_.Running()) << "membroker-agent exited";
  EXPECT_EQ(OomKills(console), 0) << "the guest was OOM-killed; console:\n" << console;
  EXPECT_EQ(console.find("MB-MEMLOAD-EXITED"), std::string::npos) << "the load died; console:\n"
                                                                  << console;
  EXPECT_TRUE(reached_at.has_value()) << "the load never reached " << kLoadMaxMib << " MiB";
  EXPECT_EQ(mechanism_seen, "virtio-mem+balloon");
  EXPECT_FALSE(requested_not_block_multiple) << "a requested-size was not a multiple of the block";
  // Grown: the load needs more than the boot memory, so virtio-mem was
  // plugged (at least the load above boot memory), and the guest saw it:
  // its MemTotal (console and balloon statistics) rose above boot memory.
  const uint64_t above_boot = (kLoadMaxMib - kBootMib) * kMiB;
  EXPECT_GE(peak_plugged, above_boot) << "virtio-mem never plugged the load's memory";
  ASSERT_GT(first_total, 0u) << "the guest never reported its MemTotal";
  EXPECT_GE(peak_total, first_total + above_boot)
      << "the guest's MemTotal did not grow by the plugged memory";
  EXPECT_GE(peak_stats_total, kBootMib * kMiB + above_boot / 2)
      << "the guest's statistics never showed the plugged memory";
  // And it held while the load held its maximum: the guest saw more than
  // the load, out of plugged memory (boot memory alone is less than it).
  EXPECT_NE(low_total_at_max_load, UINT64_MAX) << "no sample while the load held its maximum";
  if (low_total_at_max_load != UINT64_MAX) {
    EXPECT_GT(low_total_at_max_load, kLoadMaxMib * kMiB);
    EXPECT_GE(low_plugged_at_max_load + first_total, kLoadMaxMib * kMiB)
        << "the load was held without virtio-mem's memory?";
  }
  // Shrunk: once the load stopped, the device was unplugged and the guest
  // lost that memory again.
  EXPECT_TRUE(stopped) << "the load was never stopped";
  EXPECT_LT(low_plugged_after_stop, kBootMib / 4 * kMiB)
      << "virtio-mem was not unplugged after the load fell (plugged " << Mib(plugged_at_stop)
      << " MiB at the stop)";
  EXPECT_LE(low_total_after_stop + above_boot / 2, total_at_stop)
      << "the guest's MemTotal did not shrink";
  EXPECT_LT(low_stats_total_after_stop, peak_stats_total)
      << "the guest's statistics never showed the unplug";
  // The balloon was started with free-page-reporting=on.
  EXPECT_TRUE(reporting_seen) << "the broker never showed free page reporting on";
  std::printf(
      "peak plugged %s MiB (at least %s MiB while the load held %d MiB), MemTotal %s -> peak %s "
      "-> %s MiB after the stop\n",
      Mib(peak_plugged).c_str(), Mib(low_plugged_at_max_load).c_str(), kLoadMaxMib,
      Mib(first_total).c_str(), Mib(peak_total).c_str(), Mib(low_total_after_stop).c_str());
  if (HasFailure()) {
    std::printf("--- console:\n%s\n", console.c_str());
  }
}

TEST_F(QemuVirtioMemTest, LockedGuestIsExcludedAndLeftAlone) {
  Prepare();
  if (!prepared_) return;
  // A small translation cache: mem-lock=on locks it too (1 GiB by default).
  QemuGuestOptions options;
  options.memory = "384";
  options.accel = "tcg,tb-size=64";
  options.extra_args = {"-overcommit", "mem-lock=on"};
  QemuGuest* locked =
      Boot("vm-locked", "f0000000-0000-4000-8000-000000000002", "mb_role=idle", options);
  ASSERT_TRUE(locked->WaitForConsole("MB-READY", absl::Minutes(2)))
      << "the locked guest did not boot (mlockall needs CAP_IPC_LOCK or a large enough "
         "RLIMIT_MEMLOCK); console:\n"
      << locked->Console() << "\nqemu:\n"
      << locked->QemuLog();

  // A budget of 256 MiB for a 384 MiB guest that uses ~70 MiB: any other
  // guest would be ballooned down.
  const std::string config =
      absl::StrCat("cluster_policy { surplus_percent: 0 default_min_bytes: ", 64 * kMiB,
                   " host_free_margin_bytes: ", 32 * kMiB, " }\n");
  ASSERT_TRUE(StartDaemons(config, locked->agent_socket(), 256 * kMiB));

  QmpClient watch(RealClock::Get());
  uint64_t min_actual = UINT64_MAX;
  std::optional<v1::Vm> seen;
  std::string timeline;
  const absl::Time started = absl::Now();
  // Bounded: the agent reports within a second of connecting; watch 20 s
  // after it is flagged so that a move would show.
  std::optional<absl::Time> flagged_at;
  while (absl::Now() < started + absl::Seconds(60)) {
    const absl::Time tick = absl::Now();
    const uint64_t actual = WatchActual(watch, locked->watch_socket());
    if (actual > 0) min_actual = std::min(min_actual, actual);
    auto vm = BrokerVm("vm-locked");
    absl::StrAppend(&timeline, absl::StrFormat("%5.1f ", absl::ToDoubleSeconds(tick - started)),
                    "actual ", Mib(actual));
    if (vm.has_value()) {
      absl::StrAppend(&timeline, " target ", Mib(vm->target_bytes()), " health ",
                      v1::BalloonHealth_Name(vm->health()), " reason \"", vm->health_reason(),
                      "\"");
      if (vm->health() == v1::BALLOON_HEALTH_EXCLUDED) {
        seen = vm;
        if (!flagged_at.has_value()) flagged_at = tick;
      }
    }
    timeline += "\n";
    if (flagged_at.has_value() && tick - *flagged_at >= absl::Seconds(20)) break;
    if (!broker_.Running() || !agent_.Running()) break;
    const absl::Duration left = absl::Seconds(1) - (absl::Now() - tick);
    if (left > absl::ZeroDuration()) absl::SleepFor(left);
  }
  std::printf("--- timeline:\n%s\n", timeline.c_str());
  EXPECT_TRUE(broker_.Running()) << "membroker exited";
  EXPECT_TRUE(agent_.Running()) << "membroker-agent exited";
  ASSERT_TRUE(seen.has_value()) << "the broker never showed the locked guest EXCLUDED";
  EXPECT_TRUE(absl::StrContains(seen->health_reason(), "locked memory")) << seen->health_reason();
  EXPECT_FALSE(seen->free_page_reporting());
  // Left alone: the balloon never moved from the guest's full size.
  EXPECT_EQ(min_actual, 384 * kMiB) << "the locked guest's balloon moved";
  EXPECT_EQ(locked->Console().find("Out of memory"), std::string::npos);
}

}  // namespace
}  // namespace membroker::e2e

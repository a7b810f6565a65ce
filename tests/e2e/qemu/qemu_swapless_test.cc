// End to end with real swapless QEMU guests under TCG on an operator's
// host budget, the broker and agent at their shipped defaults (no policy
// overrides; only --host-capacity-bytes).
//
// Three guests, none with swap (no swap device, nothing runs swapon; each
// guest prints its SwapTotal and the test checks it is 0):
//   sw-idle   384 MiB, idle (~70-80 MiB used by the kernel and busybox);
//   sw-surge  448 MiB, holds 16 MiB for kHoldSeconds after boot, then its
//             load grows by 64 MiB a second to 272 MiB (256 MiB in 4 s)
//             and keeps touching all of it;
//   sw-nodrv  320 MiB, booted without the virtio_balloon driver: its
//             balloon never moves whatever target it is given.
//
// 1. WorkingSetsFitNoGuestOoms (test A): the budget (960 MiB) holds every
//    guest's working set (idle ~80 + surge ~330 + the driverless guest's
//    full 320 = ~730 MiB, plus the default 128 MiB free margin) but not
//    every configured size (1152 MiB). No guest may OOM, the driverless
//    guest is flagged (any health but OK) and its target never goes below
//    its size, the idle guest is reclaimed, the surge completes.
// 2. SurgeCannotFitBrokerSaysSo (test B): the budget (640 MiB) is below
//    the surge's working set plus the driverless guest's size, so no
//    sacrifice can make room. The broker must say so: the host is
//    overcommitted in ListHosts, membroker_host_overcommitted is 1 on the
//    broker's /metrics, and ExplainVm of the surging guest names it.
//
// Guest OOM kills: QEMU 7.2's virtio-balloon statistics have no OOM
// counter. The broker counts a kill the agent reports, read from the
// guest's console log (--guest-console-logs, test B), and otherwise infers
// one from the statistics (used memory falling at once after the guest
// was squeezed; broker/policy/demand.h), in
// membroker_host_guest_oom_kills_total and Vm.guest_oom_kills. The tests
// count the real kills from each guest's serial console (the kernel's
// "Killed process" lines) and check the product's count against them: in
// test B every kill the console shows is counted; in both, a guest whose
// console shows no kill is never counted (test A runs on inference alone,
// so it checks inference makes up no kill). Inference alone cannot see a
// kill the statistics never show: a guest whose load fills it between two
// polls dies with its used memory looking unchanged.
//
// Each test prints a timeline (on failure and on success), one line a
// second: per guest the broker's target, the balloon's actual size (seen
// on the test's own QMP socket), guest used memory and balloon health as
// the broker reports them, and whether the host is overcommitted.

#include <grpcpp/create_channel.h>
#include <grpcpp/security/credentials.h>
#include <stdlib.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "common/clock.h"
#include "gtest/gtest.h"
#include "membroker/v1/admin.grpc.pb.h"
#include "node-agent/hypervisor/qmp_client.h"
#include "tests/e2e/qemu/qemu_guest.h"
#include "tests/e2e/qemu/qemu_test_env.h"
#include "tests/e2e/qemu/qemu_test_fixture.h"
#include "tests/util/broker_process.h"
#include "tests/util/http.h"

namespace membroker::e2e {
namespace {

using agent::QmpClient;
using ::membroker::testing::HttpGet;

constexpr uint64_t kMiB = 1ULL << 20;

// The surge's shape (memload arguments): START,STEP,STEP_SECONDS,MAX,HOLD.
constexpr int kSurgeStartMib = 16;
constexpr int kSurgeStepMib = 64;
constexpr int kSurgeMaxMib = 272;
// Long enough after boot for the broker to see every guest and reclaim the
// idle one before the surge (the agent's stuck timeout is 30 s).
constexpr int kHoldSeconds = 45;

constexpr int kIdleMib = 384;
constexpr int kSurgeMib = 448;
constexpr int kNoDriverMib = 320;

std::string Mib(uint64_t bytes) { return absl::StrCat(bytes / kMiB); }

std::string HealthName(v1::BalloonHealth h) {
  std::string name = v1::BalloonHealth_Name(h);
  const std::string prefix = "BALLOON_HEALTH_";
  return name.rfind(prefix, 0) == 0 ? name.substr(prefix.size()) : name;
}

// What one run saw, per guest and for the host.
struct GuestSeen {
  uint64_t size_bytes = 0;
  uint64_t min_actual = UINT64_MAX;  // on the test's QMP socket
  uint64_t min_target = UINT64_MAX;  // the broker's, once it decided one
  uint64_t last_target = 0;
  bool flagged_unhealthy = false;  // health not OK (no stats, no driver, stuck)
  std::string flagged_as;
  uint64_t oom_kills_counted = 0;  // the broker's Vm.guest_oom_kills, last seen
};

struct RunResult {
  std::map<std::string, GuestSeen> guests;
  bool surge_reached = false;
  bool surge_started = false;               // memload printed its first growth
  bool host_overcommitted_seen = false;     // ListHosts, after the surge began
  bool metrics_overcommitted_seen = false;  // /metrics, after the surge began
  bool explain_overcommitted_seen = false;  // ExplainVm sw-surge, after the surge began
  double metrics_guest_oom_kills = 0;       // membroker_host_guest_oom_kills_total{host="h1"}
  std::string explain_sample;               // one ExplainVm of sw-surge
  std::string timeline;
  bool daemons_alive = true;
};

class QemuSwaplessTest : public QemuTestBase {
 public:
  // The broker's OOM count against the consoles: every guest with a kill
  // on its console is counted at least once; a guest without one never is.
  void ExpectOomsCountedAsSeen(const RunResult& r) {
    uint64_t counted = 0;
    for (QemuGuest* g : {idle_, surge_, nodrv_}) {
      const GuestSeen& seen = r.guests.at(g->name());
      counted += seen.oom_kills_counted;
      if (OomKills(g->Console()) > 0) {
        EXPECT_GE(seen.oom_kills_counted, 1u)
            << g->name() << " was OOM-killed (console) but the broker did not count it";
      } else {
        EXPECT_EQ(seen.oom_kills_counted, 0u)
            << g->name() << " counted as OOM-killed, but its console shows no kill";
      }
    }
    // Sampled a moment apart: the metric may be one report ahead.
    if (counted == 0) {
      EXPECT_EQ(r.metrics_guest_oom_kills, 0) << "membroker_host_guest_oom_kills_total counted a kill";
    } else {
      EXPECT_GE(r.metrics_guest_oom_kills, 1) << "membroker_host_guest_oom_kills_total missed the kill";
    }
  }

 protected:
  QemuSwaplessTest() : QemuTestBase("mb-qemu-sw") {}

  // Checks the prerequisites, builds the initramfs and boots the three
  // guests; sets ready_ or fails or skips the test.
  void BootGuests() {
    Prepare({/*daemons=*/true});
    if (!prepared_) return;

    idle_ = Boot("sw-idle", "e0000000-0000-4000-8000-000000000001", "mb_role=idle", kIdleMib);
    surge_ = Boot("sw-surge", "e0000000-0000-4000-8000-000000000002",
                  absl::StrFormat("mb_role=load mb_load=%d,%d,1,%d,%d", kSurgeStartMib,
                                  kSurgeStepMib, kSurgeMaxMib, kHoldSeconds),
                  kSurgeMib);
    nodrv_ = Boot("sw-nodrv", "e0000000-0000-4000-8000-000000000003", "mb_role=idle mb_balloon=off",
                  kNoDriverMib);
    for (QemuGuest* g : {idle_, surge_, nodrv_}) {
      WaitReady(g, absl::Minutes(3));
      if (HasFatalFailure()) return;
      const std::string console = g->Console();
      // Swapless: no swap configured (SwapTotal 0 kB, /proc/swaps only has
      // its header line).
      EXPECT_NE(console.find("MB-SWAP 0 1"), std::string::npos)
          << g->name() << " has swap; console:\n"
          << console;
    }
    EXPECT_NE(nodrv_->Console().find("MB-NO-BALLOON-DRIVER"), std::string::npos);
    EXPECT_EQ(idle_->Console().find("MB-NO-BALLOON-DRIVER"), std::string::npos);
    if (HasFatalFailure()) return;
    ready_ = true;
  }

  // Starts the broker (no config: the shipped defaults) and the agent with
  // the host budget, then samples once a second until the surge has held
  // its maximum for 10 s, a guest OOMs (plus 10 s more), a daemon exits, or
  // the deadline.
  // With `console_logs` the agent is told where each guest's console is
  // logged (--guest-console-logs) and reports the kills it counts there;
  // without, the broker has only the statistics to infer kills from.
  RunResult Run(uint64_t capacity_bytes, bool console_logs) {
    RunResult r;
    EXPECT_EQ(::mkdir((dir_ + "/state").c_str(), 0755), 0);
    ChildProcess broker;
    const absl::StatusOr<::membroker::testing::BrokerPorts> ports =
        ::membroker::testing::StartBroker(broker, MB_BROKER_PATH, dir_ + "/state",
                                          dir_ + "/broker.log", absl::Seconds(30));
    EXPECT_TRUE(ports.ok()) << ports.status();
    if (!ports.ok()) {
      r.daemons_alive = false;
      return r;
    }
    const std::string port = std::to_string(ports->grpc);
    const int metrics = ports->metrics;
    std::vector<std::string> agent_args = {
        MB_AGENT_PATH,
        absl::StrCat("--broker=127.0.0.1:", port),
        "--host-id=h1",
        "--backend=qmp",
        absl::StrCat("--qmp-socket=", idle_->agent_socket(), ",", surge_->agent_socket(), ",",
                     nodrv_->agent_socket()),
        absl::StrCat("--host-capacity-bytes=", capacity_bytes),
        "--metrics-listen=127.0.0.1:0",
        "--insecure"};
    if (console_logs) {
      agent_args.push_back(absl::StrCat("--guest-console-logs=", idle_->name(), "=",
                                        idle_->console_path(), ",", surge_->name(), "=",
                                        surge_->console_path(), ",", nodrv_->name(), "=",
                                        nodrv_->console_path()));
    }
    ChildProcess agent_process;
    EXPECT_TRUE(agent_process.Start(agent_args, dir_ + "/agent.log").ok());
    auto stub = v1::AdminService::NewStub(
        grpc::CreateChannel(absl::StrCat("127.0.0.1:", port), grpc::InsecureChannelCredentials()));

    std::map<std::string, std::unique_ptr<QmpClient>> watch;
    for (QemuGuest* g : {idle_, surge_, nodrv_}) {
      watch[g->name()] = std::make_unique<QmpClient>(RealClock::Get());
    }
    r.guests["sw-idle"].size_bytes = kIdleMib * kMiB;
    r.guests["sw-surge"].size_bytes = kSurgeMib * kMiB;
    r.guests["sw-nodrv"].size_bytes = kNoDriverMib * kMiB;

    const absl::Time started = absl::Now();
    // The surge begins ~kHoldSeconds after boot; allow it 100 s more, so a
    // test stays under ~3 minutes with the boot.
    const absl::Time deadline = started + absl::Seconds(kHoldSeconds + 100);
    absl::Time end_after = absl::InfiniteFuture();
    absl::StrAppend(&r.timeline,
                    "t(s)  per guest: target/actual/used MiB health | host | surge console\n");
    while (absl::Now() < deadline && absl::Now() < end_after) {
      const absl::Time tick = absl::Now();
      // The broker's view.
      std::map<std::string, v1::Vm> vms;
      {
        grpc::ClientContext ctx;
        ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(2));
        v1::ListVmsResponse listed;
        if (stub->ListVms(&ctx, {}, &listed).ok()) {
          for (const v1::Vm& vm : listed.vms()) vms[vm.name()] = vm;
        }
      }
      bool overcommitted = false;
      uint64_t host_target = 0;
      {
        grpc::ClientContext ctx;
        ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(2));
        v1::ListHostsResponse hosts;
        if (stub->ListHosts(&ctx, {}, &hosts).ok()) {
          for (const v1::Host& h : hosts.hosts()) {
            overcommitted = overcommitted || h.overcommitted();
            host_target += h.target_bytes();
          }
        }
      }
      const std::string surge_console = surge_->Console();
      if (surge_console.find("memload: growing") != std::string::npos) r.surge_started = true;
      if (surge_console.find("memload: reached") != std::string::npos) r.surge_reached = true;

      std::string line = absl::StrFormat("%5.1f ", absl::ToDoubleSeconds(tick - started));
      for (QemuGuest* g : {idle_, surge_, nodrv_}) {
        GuestSeen& seen = r.guests[g->name()];
        const uint64_t actual = WatchActual(*watch[g->name()], g->watch_socket());
        if (actual > 0) seen.min_actual = std::min(seen.min_actual, actual);
        auto it = vms.find(g->name());
        if (it == vms.end()) {
          absl::StrAppend(&line, " ", g->name(), " -/", Mib(actual), "/- ?");
          continue;
        }
        const v1::Vm& vm = it->second;
        seen.oom_kills_counted = vm.guest_oom_kills();
        if (vm.target_bytes() > 0) {
          seen.min_target = std::min(seen.min_target, vm.target_bytes());
          seen.last_target = vm.target_bytes();
        }
        // Any health but OK flags it: a guest without the driver sends no
        // statistics (STATS_UNAVAILABLE) until it is asked to move, when
        // its balloon is seen not to (NO_DRIVER / STUCK).
        if (vm.health() != v1::BALLOON_HEALTH_OK && vm.health() != v1::BALLOON_HEALTH_UNSPECIFIED) {
          if (!seen.flagged_unhealthy) {
            seen.flagged_as = absl::StrFormat("%s at %.0f s", HealthName(vm.health()),
                                              absl::ToDoubleSeconds(tick - started));
          }
          seen.flagged_unhealthy = true;
        }
        absl::StrAppend(&line, " ", g->name(), " ", Mib(vm.target_bytes()), "/", Mib(actual), "/",
                        Mib(vm.guest_used_bytes()), " ", HealthName(vm.health()));
      }
      absl::StrAppend(&line, " | host target ", Mib(host_target),
                      overcommitted ? " OVERCOMMITTED" : "", " | ", LastLine(surge_console));

      if (r.surge_started) {
        if (overcommitted) r.host_overcommitted_seen = true;
        auto reply = HttpGet(metrics, "/metrics", absl::Seconds(2));
        if (reply.ok()) {
          for (absl::string_view l : absl::StrSplit(reply->body, '\n')) {
            if (absl::StartsWith(l, "membroker_host_overcommitted{") &&
                absl::StrContains(l, "host=\"h1\"") && absl::EndsWith(l, " 1")) {
              r.metrics_overcommitted_seen = true;
            }
          }
          double ooms = 0;
          for (absl::string_view l : absl::StrSplit(reply->body, '\n')) {
            double v = 0;
            if (absl::StartsWith(l, "membroker_host_guest_oom_kills_total{") &&
                absl::StrContains(l, "host=\"h1\"") &&
                absl::SimpleAtod(l.substr(l.rfind(' ') + 1), &v)) {
              ooms += v;
            }
          }
          r.metrics_guest_oom_kills = ooms;
        }
        grpc::ClientContext ctx;
        ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(2));
        v1::ExplainVmRequest req;
        req.set_vm("sw-surge");
        v1::Explanation explanation;
        if (stub->ExplainVm(&ctx, req, &explanation).ok()) {
          const std::string steps = absl::StrJoin(explanation.steps(), "\n");
          if (absl::StrContains(steps, "overcommitted")) {
            r.explain_overcommitted_seen = true;
            r.explain_sample = steps;
          } else if (r.explain_sample.empty()) {
            r.explain_sample = steps;
          }
        }
      }
      int kills = 0;
      for (QemuGuest* g : {idle_, surge_, nodrv_}) kills += OomKills(g->Console());
      if (kills > 0) absl::StrAppend(&line, " [OOM kills so far: ", kills, "]");
      absl::StrAppend(&r.timeline, line, "\n");

      if (end_after == absl::InfiniteFuture() && (r.surge_reached || kills > 0)) {
        end_after = absl::Now() + absl::Seconds(10);
      }
      if (!broker.Running() || !agent_process.Running()) {
        r.daemons_alive = false;
        break;
      }
      const absl::Duration left = absl::Seconds(1) - (absl::Now() - tick);
      if (left > absl::ZeroDuration()) absl::SleepFor(left);
    }
    EXPECT_TRUE(broker.Running()) << "membroker exited";
    EXPECT_TRUE(agent_process.Running()) << "membroker-agent exited";
    return r;
  }

  // Prints what a run saw (always: these figures are the point of the test).
  void PrintSummary(const RunResult& r) {
    for (QemuGuest* g : {idle_, surge_, nodrv_}) {
      const GuestSeen& s = r.guests.at(g->name());
      std::printf(
          "%s: size %s MiB, lowest actual %s MiB, lowest target %s MiB, flagged %s, "
          "OOM kills in console %d, counted by the broker %llu\n",
          g->name().c_str(), Mib(s.size_bytes).c_str(),
          s.min_actual == UINT64_MAX ? "-" : Mib(s.min_actual).c_str(),
          s.min_target == UINT64_MAX ? "-" : Mib(s.min_target).c_str(),
          s.flagged_unhealthy ? s.flagged_as.c_str() : "no", OomKills(g->Console()),
          static_cast<unsigned long long>(s.oom_kills_counted));
    }
    std::printf("membroker_host_guest_oom_kills_total{host=\"h1\"} (sum): %.0f\n",
                r.metrics_guest_oom_kills);
    std::printf("surge reached its working set: %s\n", r.surge_reached ? "yes" : "no");
  }

  // Prints the run's timeline and the surging guest's console.
  void PrintTimeline(const RunResult& r) {
    std::printf("\n--- timeline (one line a second):\n%s\n--- sw-surge console:\n%s\n",
                r.timeline.c_str(), surge_->Console().c_str());
  }

  bool ready_ = false;
  QemuGuest* idle_ = nullptr;
  QemuGuest* surge_ = nullptr;
  QemuGuest* nodrv_ = nullptr;
};

// Before the policy of the swapless issue (default floor 256 MiB, no
// censored demand, no sacrifices) this failed at the shipped defaults: the
// surge was OOM-killed at 208 MiB of load with its target still 256 MiB,
// and the idle guest was held at the 256 MiB default floor.
TEST_F(QemuSwaplessTest, WorkingSetsFitNoGuestOoms) {
  BootGuests();
  if (!ready_) return;
  const RunResult r = Run(960 * kMiB, /*console_logs=*/false);
  PrintSummary(r);

  // No guest OOM anywhere: the budget holds every working set; and the
  // broker counts none (no kill inferred from a guest that was not killed).
  for (QemuGuest* g : {idle_, surge_, nodrv_}) {
    EXPECT_EQ(OomKills(g->Console()), 0) << g->name() << " was OOM-killed";
  }
  ExpectOomsCountedAsSeen(r);
  // The surge completed and is still running.
  EXPECT_TRUE(r.surge_reached) << "the surging guest's load never reached its working set";
  EXPECT_EQ(surge_->Console().find("MB-MEMLOAD-EXITED"), std::string::npos)
      << "the surging guest's load died";
  // The driverless guest is flagged, and never counted as reclaimable: the
  // broker never gives it a target below its size.
  const GuestSeen& nodrv = r.guests.at("sw-nodrv");
  EXPECT_TRUE(nodrv.flagged_unhealthy) << "the driverless guest was never flagged";
  EXPECT_NE(nodrv.min_target, UINT64_MAX) << "the broker never decided the driverless guest";
  if (nodrv.min_target != UINT64_MAX) {
    EXPECT_GE(nodrv.min_target, nodrv.size_bytes)
        << "the driverless guest was counted as reclaimable: target " << Mib(nodrv.min_target)
        << " MiB below its size";
  }
  // The idle guest (~80 MiB used) is reclaimed for the surge: the broker
  // takes it below half its 384 MiB (the shipped surplus_percent 100 hands
  // memory nobody needs back to it as cache, so its balloon follows only
  // as far as the surge needs), and the balloon really gives a third.
  const GuestSeen& idle = r.guests.at("sw-idle");
  EXPECT_LE(idle.min_target, idle.size_bytes / 2)
      << "the idle guest was not reclaimed: lowest target " << Mib(idle.min_target) << " MiB";
  EXPECT_LE(idle.min_actual, idle.size_bytes * 2 / 3)
      << "the idle guest's balloon never gave: lowest actual " << Mib(idle.min_actual) << " MiB";
  EXPECT_TRUE(r.daemons_alive);
  PrintTimeline(r);
}

TEST_F(QemuSwaplessTest, SurgeCannotFitBrokerSaysSo) {
  BootGuests();
  if (!ready_) return;
  // The surge's working set (~330 MiB) plus the driverless guest's 320 MiB
  // is more than 640 MiB, whatever the idle guest gives. Observed at the
  // shipped defaults on 2026-11-30: the host is flagged overcommitted from
  // the first decision on, before the surge (the floors alone, 256 + 256 +
  // 320 MiB, exceed 640 - 128 MiB; host target 832 MiB), and the surge is
  // OOM-killed at 208 MiB of load with its target at 256 MiB. The checks
  // below hold for that reason today; once floors yield, only the surge
  // will make the host overcommitted, and the checks still apply.
  const RunResult r = Run(640 * kMiB, /*console_logs=*/true);
  PrintSummary(r);

  EXPECT_TRUE(r.surge_started) << "the surge never began";
  EXPECT_TRUE(r.host_overcommitted_seen)
      << "ListHosts never flagged the host overcommitted after the surge began";
  EXPECT_TRUE(r.metrics_overcommitted_seen)
      << "membroker_host_overcommitted{host=\"h1\"} was never 1 after the surge began";
  EXPECT_TRUE(r.explain_overcommitted_seen)
      << "ExplainVm sw-surge never named the overcommitment; it said:\n"
      << r.explain_sample;
  // The OOM, if any, is counted by the product: a kill the surging guest's
  // console shows is in Vm.guest_oom_kills and the broker's metric.
  int kills = 0;
  for (QemuGuest* g : {idle_, surge_, nodrv_}) kills += OomKills(g->Console());
  std::printf("guest OOM kills seen on the consoles: %d\n", kills);
  ExpectOomsCountedAsSeen(r);
  // Nothing but the surge may die for it: the idle and driverless guests
  // hold their working sets.
  EXPECT_EQ(OomKills(idle_->Console()), 0) << "the idle guest was OOM-killed";
  EXPECT_EQ(OomKills(nodrv_->Console()), 0) << "the driverless guest was OOM-killed";
  EXPECT_TRUE(r.daemons_alive);
  PrintTimeline(r);
}

}  // namespace
}  // namespace membroker::e2e

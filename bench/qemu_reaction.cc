// Reaction of the broker and agent to a surging real QEMU guest.
//
// Per run: boots a swapless busybox guest (512 MiB) under TCG with the
// Debian cloud kernel (scripts/fetch-guest-kernel.sh), starts the real
// membroker and membroker-agent (--backend=qmp) on loopback with an
// operator budget (--host-capacity-bytes) and a policy that reclaims idle
// memory (surplus_percent 0, a 160 MiB default floor), lets the idle guest be
// reclaimed, and then the guest's memload grows its working set by a few
// hundred MiB over a few seconds. Reaction = the console's first "memload:
// growing" line -> the balloon's actual rising by >= 1 MiB above its
// lowest value, seen on a second QMP socket the bench watches
// (BALLOON_CHANGE events, query-balloon as a fallback).
//
// Each mode (the agent with its RSS signal; with --rss-interval=0) runs
// --runs times; the bench prints every run, then the median and worst per
// mode. Bounded: every wait has a deadline. It never fails on a figure; it
// exits 1 only when it could not run at all (a missing binary or kernel).

#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "common/clock.h"
#include "node-agent/hypervisor/qmp_client.h"
#include "node-agent/hypervisor/qmp_hypervisor.h"
#include "tests/e2e/qemu/qemu_guest.h"
#include "tests/util/broker_process.h"

ABSL_FLAG(int, runs, 5, "Runs per mode (1..20).");
ABSL_FLAG(std::string, modes, "rss,no-rss",
          "Comma-separated modes: rss (the agent's defaults), no-rss (--rss-interval=0), "
          "no-local-grants (--local-grants=false).");
ABSL_FLAG(std::string, kernel_dir, MB_DEFAULT_GUEST_KERNEL_DIR,
          "Directory of vmlinuz and the virtio modules (scripts/fetch-guest-kernel.sh).");
ABSL_FLAG(std::string, busybox, "/bin/busybox", "A static busybox for the initramfs.");
ABSL_FLAG(int, capacity_mib, 512, "The agent's --host-capacity-bytes, in MiB.");
ABSL_FLAG(int, floor_mib, 160,
          "The broker's default floor (default_min_bytes) in MiB: where the idle guest is "
          "reclaimed to.");
ABSL_FLAG(int, hold_seconds, 20, "Idle time before the load starts (reclaim happens meanwhile).");
ABSL_FLAG(std::string, load, "16,96,1,304",
          "memload START_MIB,STEP_MIB,STEP_SECONDS,MAX_MIB after the hold.");
ABSL_FLAG(bool, keep, false, "Keep the runs' logs (guest console, broker, agent) in the temp dir.");
ABSL_FLAG(int, reaction_timeout_seconds, 30, "A run without a deflation by then counts as none.");

namespace membroker::bench {
namespace {

using agent::QmpClient;
using agent::QmpUint;
using e2e::QemuGuest;
using ::membroker::testing::ChildProcess;

constexpr uint64_t kMiB = uint64_t{1} << 20;

bool Exists(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0;
}

// The balloon's actual as the bench's own QMP socket sees it: events as
// they come, query-balloon when asked.
class BalloonWatch {
 public:
  explicit BalloonWatch(std::string socket)
      : socket_(std::move(socket)), client_(RealClock::Get()) {
    client_.set_event_handler([this](const google::protobuf::Struct& event) {
      auto name = event.fields().find("event");
      if (name == event.fields().end() || name->second.string_value() != "BALLOON_CHANGE") return;
      auto data = event.fields().find("data");
      if (data == event.fields().end() ||
          data->second.kind_case() != google::protobuf::Value::kStructValue) {
        return;
      }
      std::optional<uint64_t> actual = QmpUint(data->second.struct_value(), "actual");
      if (actual.has_value()) Saw(*actual);
    });
  }

  // Reads pending events; with `query`, also query-balloon. False when the
  // socket cannot be used.
  bool Poll(bool query) {
    if (!client_.connected() && !client_.Connect(socket_).ok()) return false;
    if (!client_.PollEvents().ok()) return false;
    if (!query) return true;
    auto reply = client_.Execute("query-balloon");
    if (!reply.ok() || reply->kind_case() != google::protobuf::Value::kStructValue) return false;
    std::optional<uint64_t> actual = QmpUint(reply->struct_value(), "actual");
    if (actual.has_value()) Saw(*actual);
    return true;
  }

  uint64_t actual() const { return actual_; }
  uint64_t lowest() const { return lowest_; }
  // When the balloon first rose >= 1 MiB above its actual when `ArmRise`
  // was called (InfinitePast: not yet).
  absl::Time rose_at() const { return rose_at_; }
  void ArmRise() {
    armed_ = true;
    base_ = actual_;
  }
  // Every value seen, with when.
  const std::string& timeline() const { return timeline_; }

 private:
  void Saw(uint64_t actual) {
    if (actual != actual_) {
      absl::StrAppend(&timeline_, absl::FormatTime("%H:%M:%E3S", absl::Now(), absl::UTCTimeZone()),
                      " actual ", actual / kMiB, " MiB\n");
    }
    actual_ = actual;
    if (!armed_) {
      lowest_ = std::min(lowest_, actual);
    } else if (rose_at_ == absl::InfinitePast() && actual >= base_ + kMiB) {
      rose_at_ = absl::Now();
    }
  }

  std::string socket_;
  QmpClient client_;
  uint64_t actual_ = 0;
  uint64_t lowest_ = UINT64_MAX;
  bool armed_ = false;
  uint64_t base_ = 0;
  std::string timeline_;
  absl::Time rose_at_ = absl::InfinitePast();
};

struct RunResult {
  bool ran = false;
  uint64_t reclaimed_to = 0;   // the balloon's lowest before the load
  uint64_t at_load_start = 0;  // its actual when the load started
  std::optional<absl::Duration> reaction;
  bool oom = false;
  std::string note;
};

class Bench {
 public:
  Bench(std::string dir) : dir_(std::move(dir)) {}

  RunResult Run(const std::string& mode, int index) {
    RunResult result;
    const std::string run_dir = absl::StrCat(dir_, "/", mode, "-", index);
    ::mkdir(run_dir.c_str(), 0755);
    ::mkdir((run_dir + "/state").c_str(), 0755);
    {
      std::ofstream config(run_dir + "/broker.textproto");
      config << "cluster_policy { default_min_bytes: "
             << uint64_t(absl::GetFlag(FLAGS_floor_mib)) * kMiB
             << " host_free_margin_bytes: " << 64 * kMiB << " surplus_percent: 0 }\n";
    }
    QemuGuest guest(run_dir, "mb-surge", "e0000000-0000-4000-8000-00000000000a");
    const std::string load =
        absl::StrCat(absl::GetFlag(FLAGS_load), ",", absl::GetFlag(FLAGS_hold_seconds));
    absl::Status booted =
        guest.Start(absl::GetFlag(FLAGS_kernel_dir) + "/vmlinuz", dir_ + "/initrd.cpio",
                    absl::StrCat("mb_role=load mb_load=", load));
    if (!booted.ok()) {
      result.note = absl::StrCat("qemu: ", booted.ToString());
      return result;
    }
    ChildProcess broker;
    const absl::StatusOr<membroker::testing::BrokerPorts> ports = membroker::testing::StartBroker(
        broker, MB_BROKER_PATH, run_dir + "/state", run_dir + "/broker.log", absl::Seconds(30),
        {"--config=" + run_dir + "/broker.textproto"});
    if (!ports.ok()) {
      result.note = absl::StrCat("membroker: ", ports.status().ToString());
      return result;
    }
    std::vector<std::string> agent_argv = {
        MB_AGENT_PATH,
        absl::StrCat("--broker=127.0.0.1:", ports->grpc),
        "--host-id=h1",
        "--backend=qmp",
        "--qmp-socket=" + guest.agent_socket(),
        absl::StrCat("--host-capacity-bytes=", uint64_t(absl::GetFlag(FLAGS_capacity_mib)) * kMiB),
        "--metrics-listen=127.0.0.1:0",
        "--insecure"};
    if (absl::GetFlag(FLAGS_keep)) agent_argv.push_back("--log-level=debug");
    if (mode == "no-rss") agent_argv.push_back("--rss-interval=0");
    if (mode == "no-local-grants") agent_argv.push_back("--local-grants=false");
    ChildProcess agent_process;
    if (!agent_process.Start(agent_argv, run_dir + "/agent.log").ok()) {
      result.note = "membroker-agent did not start";
      return result;
    }
    result.ran = true;

    BalloonWatch watch(guest.watch_socket());
    // Wait for the load to start (bounded by the hold, boot and slack),
    // polling the console and the balloon every 5 ms.
    const absl::Time deadline = absl::Now() + absl::Seconds(absl::GetFlag(FLAGS_hold_seconds) + 60);
    absl::Time last_query = absl::InfinitePast();
    std::optional<absl::Time> load_start;
    while (absl::Now() < deadline && guest.Running()) {
      const bool query = absl::Now() - last_query >= absl::Milliseconds(100);
      if (query) last_query = absl::Now();
      watch.Poll(query);
      if (guest.Console().find("memload: growing") != std::string::npos) {
        load_start = absl::Now();
        break;
      }
      absl::SleepFor(absl::Milliseconds(5));
    }
    if (!load_start.has_value()) {
      result.note = "the load never started";
      return result;
    }
    result.reclaimed_to = watch.lowest();
    watch.Poll(true);
    result.at_load_start = watch.actual();
    watch.ArmRise();
    const absl::Time react_deadline =
        *load_start + absl::Seconds(absl::GetFlag(FLAGS_reaction_timeout_seconds));
    while (absl::Now() < react_deadline && guest.Running()) {
      const bool query = absl::Now() - last_query >= absl::Milliseconds(50);
      if (query) last_query = absl::Now();
      watch.Poll(query);
      if (watch.rose_at() != absl::InfinitePast()) break;
      if (guest.Console().find("Out of memory") != std::string::npos) break;
      absl::SleepFor(absl::Milliseconds(5));
    }
    if (watch.rose_at() != absl::InfinitePast()) result.reaction = watch.rose_at() - *load_start;
    // Let the load finish (or die) to see whether the guest survived.
    membroker::testing::WaitUntil(
        [&] {
          const std::string c = guest.Console();
          return c.find("memload: reached") != std::string::npos ||
                 c.find("Out of memory") != std::string::npos;
        },
        absl::Seconds(20), absl::Milliseconds(100));
    result.oom = guest.Console().find("Out of memory") != std::string::npos;
    std::ofstream(run_dir + "/timeline.txt")
        << "load start " << absl::FormatTime("%H:%M:%E3S", *load_start, absl::UTCTimeZone()) << "\n"
        << watch.timeline();
    guest.Stop();
    agent_process.Stop();
    broker.Stop();
    return result;
  }

 private:
  std::string dir_;
};

std::string Ms(absl::Duration d) { return absl::StrCat(absl::ToInt64Milliseconds(d), " ms"); }

int Main() {
  const std::string kernel_dir = absl::GetFlag(FLAGS_kernel_dir);
  const std::string broker = MB_BROKER_PATH;
  const std::string agent = MB_AGENT_PATH;
  for (const auto& [path, what] : std::vector<std::pair<std::string, std::string>>{
           {kernel_dir + "/vmlinuz",
            "guest kernel (scripts/fetch-guest-kernel.sh " + kernel_dir + ")"},
           {absl::GetFlag(FLAGS_busybox), "busybox (apt: busybox-static)"},
           {broker, "membroker binary"},
           {agent, "membroker-agent binary"},
           {MB_MEMLOAD_PATH, "mb_memload"}}) {
    if (path.empty() || !Exists(path)) {
      std::fprintf(stderr, "qemu_reaction: missing %s at %s\n", what.c_str(), path.c_str());
      return 1;
    }
  }
  const int runs = absl::GetFlag(FLAGS_runs);
  if (runs < 1 || runs > 20) {
    std::fprintf(stderr, "qemu_reaction: --runs must be in 1..20\n");
    return 1;
  }
  char tmpl[] = "/tmp/mb-qemu-reaction-XXXXXX";
  if (::mkdtemp(tmpl) == nullptr) return 1;
  const std::string dir = tmpl;
  absl::Status initrd = e2e::BuildInitramfs(kernel_dir, absl::GetFlag(FLAGS_busybox),
                                            MB_MEMLOAD_PATH, dir + "/initrd.cpio");
  if (!initrd.ok()) {
    std::fprintf(stderr, "qemu_reaction: %s\n", initrd.ToString().c_str());
    return 1;
  }
  std::printf(
      "guest 512 MiB, no swap, TCG; capacity %d MiB; floor %d MiB; load %s after %d s idle; "
      "%d runs\n",
      absl::GetFlag(FLAGS_capacity_mib), absl::GetFlag(FLAGS_floor_mib),
      absl::GetFlag(FLAGS_load).c_str(), absl::GetFlag(FLAGS_hold_seconds), runs);
  Bench bench(dir);
  std::vector<std::string> summary;
  for (const std::string& mode :
       std::vector<std::string>(absl::StrSplit(absl::GetFlag(FLAGS_modes), ','))) {
    if (mode != "rss" && mode != "no-rss" && mode != "no-local-grants") {
      std::fprintf(stderr, "qemu_reaction: unknown mode %s\n", mode.c_str());
      return 1;
    }
    std::vector<absl::Duration> reactions;
    int none = 0;
    int ooms = 0;
    for (int i = 0; i < runs; ++i) {
      RunResult r = bench.Run(mode, i);
      if (!r.ran) {
        std::printf("%-16s run %d: did not run: %s\n", mode.c_str(), i, r.note.c_str());
        continue;
      }
      if (r.reaction.has_value()) {
        reactions.push_back(*r.reaction);
      } else {
        ++none;
      }
      ooms += r.oom ? 1 : 0;
      std::printf(
          "%-16s run %d: reclaimed to %llu MiB, %llu MiB at load start, reaction %s%s%s\n",
          mode.c_str(), i,
          static_cast<unsigned long long>(r.reclaimed_to == UINT64_MAX ? 0 : r.reclaimed_to / kMiB),
          static_cast<unsigned long long>(r.at_load_start / kMiB),
          r.reaction.has_value() ? Ms(*r.reaction).c_str() : "none", r.oom ? ", guest OOM" : "",
          r.note.empty() ? "" : (", " + r.note).c_str());
      std::fflush(stdout);
    }
    std::sort(reactions.begin(), reactions.end());
    std::string line = absl::StrCat(mode, ": ", reactions.size(), " runs reacted");
    if (!reactions.empty()) {
      absl::StrAppend(&line, ", median ", Ms(reactions[reactions.size() / 2]), ", worst ",
                      Ms(reactions.back()));
    }
    absl::StrAppend(&line, ", no reaction ", none, ", guest OOMs ", ooms);
    summary.push_back(line);
  }
  std::printf("\n");
  for (const std::string& line : summary) std::printf("%s\n", line.c_str());
  if (absl::GetFlag(FLAGS_keep)) {
    std::printf("logs kept in %s\n", dir.c_str());
    return 0;
  }
  std::string cmd = absl::StrCat("rm -rf '", dir, "'");
  if (std::system(cmd.c_str()) != 0) std::printf("could not remove %s\n", dir.c_str());
  return 0;
}

}  // namespace
}  // namespace membroker::bench

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  return membroker::bench::Main();
}

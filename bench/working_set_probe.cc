// The agent's host-side working-set measurement (node-agent/working_set.h)
// run by hand against one VM process, so that an operator can see a method
// work on a host before turning it on in the agent. Every round prints the
// referenced MiB of the process's guest RAM (what the agent would report),
// the guest-RAM mapping MiB, and the measuring thread's CPU time. It uses
// the agent's own WorkingSetSampler and ProcWorkingSetProbe.
//
// usage: working_set_probe --pid=PID [--interval=10s] [--rounds=6]
//            [--method=clear_refs|refault] [--boot-mib=N]
//
// --method=refault writes "4" then "1" to /proc/PID/clear_refs each round
// (the agent's --working-set-refault); clear_refs writes "1" only and, as
// the agent, refuses a process that holds a KVM VM. Run as a user that may
// write the process's clear_refs (its owner or root). Never fails on time.

#include <unistd.h>

#include <cstdio>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "node-agent/working_set.h"

ABSL_FLAG(int64_t, pid, 0, "The VM's QEMU process.");
ABSL_FLAG(std::string, interval, "10s", "Time between rounds, 1s..10m.");
ABSL_FLAG(int, rounds, 6, "Rounds that report a working set (1..10000).");
ABSL_FLAG(std::string, method, "refault", "clear_refs or refault.");
ABSL_FLAG(int64_t, boot_mib, 0,
          "The VM's boot memory in MiB for the guest-RAM mapping rule (0: the largest mapping).");

namespace {

using membroker::agent::GuestRamReferenced;
using membroker::agent::ProcWorkingSetProbe;

constexpr double kMiB = 1024.0 * 1024.0;

// The agent's probe, keeping what the last ReadReferenced found so that the
// mapping size can be printed next to the sampler's result.
class RecordingProbe : public ProcWorkingSetProbe {
 public:
  absl::StatusOr<GuestRamReferenced> ReadReferenced(int64_t pid,
                                                    uint64_t boot_bytes) const override {
    absl::StatusOr<GuestRamReferenced> r = ProcWorkingSetProbe::ReadReferenced(pid, boot_bytes);
    last = r.ok() ? std::optional<GuestRamReferenced>(*r) : std::nullopt;
    return r;
  }
  // Single-threaded tool: the sampler and main run on one thread.
  mutable std::optional<GuestRamReferenced> last;
};

int Fail(const std::string& why) {
  std::fprintf(stderr, "working_set_probe: %s\n", why.c_str());
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  const int64_t pid = absl::GetFlag(FLAGS_pid);
  if (pid <= 0) return Fail("--pid must name the VM's QEMU process");
  absl::Duration interval;
  if (!absl::ParseDuration(absl::GetFlag(FLAGS_interval), &interval) ||
      interval < absl::Seconds(1) || interval > absl::Minutes(10)) {
    return Fail("--interval must be a duration between 1s and 10m");
  }
  const int rounds = absl::GetFlag(FLAGS_rounds);
  if (rounds < 1 || rounds > 10000) return Fail("--rounds must be 1..10000");
  const std::string method = absl::GetFlag(FLAGS_method);
  membroker::agent::RefaultMode mode;
  if (method == "clear_refs") {
    mode = membroker::agent::RefaultMode::kOff;
  } else if (method == "refault") {
    mode = membroker::agent::RefaultMode::kAll;
  } else {
    return Fail("--method must be clear_refs or refault, not \"" + method + "\"");
  }
  const int64_t boot_mib = absl::GetFlag(FLAGS_boot_mib);
  if (boot_mib < 0 || boot_mib > (int64_t{1} << 30)) return Fail("--boot-mib out of range");

  auto probe = std::make_shared<RecordingProbe>();
  absl::StatusOr<bool> kvm = probe->RunsKvmGuest(pid);
  if (!kvm.ok()) return Fail(kvm.status().ToString());
  absl::StatusOr<bool> lru_gen = probe->LruGenEnabled();
  std::printf("pid %lld: %s; MGLRU %s; method %s every %s\n", static_cast<long long>(pid),
              *kvm ? "holds a KVM VM" : "no KVM VM (TCG)",
              lru_gen.ok() ? (*lru_gen ? "on" : "off") : lru_gen.status().ToString().c_str(),
              method.c_str(), absl::FormatDuration(interval).c_str());
  std::printf("%6s %14s %12s %10s  %s\n", "round", "referenced_mib", "mapping_mib", "cpu_ms",
              "note");

  membroker::agent::WorkingSetSampler sampler(probe, nullptr, mode);
  const std::vector<membroker::agent::WorkingSetTarget> target = {
      {"vm", pid, static_cast<uint64_t>(boot_mib) << 20}};
  // Round 0 only clears.
  for (int round = 0; round <= rounds; ++round) {
    if (round > 0) absl::SleepFor(interval);
    probe->last.reset();
    auto samples = sampler.Round(target, absl::Now());
    const membroker::agent::WorkingSetSample& s = samples["vm"];
    std::string note = s.error;
    if (note.empty() && s.working_set_bytes.has_value()) {
      note = absl::StrFormat("%s over %.1f s", s.method, absl::ToDoubleSeconds(s.interval));
    }
    if (note.empty() && round == 0) note = "cleared";
    std::printf(
        "%6d %14s %12s %10.2f  %s\n", round,
        s.working_set_bytes.has_value()
            ? absl::StrFormat("%.1f", static_cast<double>(*s.working_set_bytes) / kMiB).c_str()
            : "-",
        probe->last.has_value()
            ? absl::StrFormat("%.1f", static_cast<double>(probe->last->mapping_bytes) / kMiB)
                  .c_str()
            : "-",
        s.cpu_seconds * 1000.0, note.c_str());
    std::fflush(stdout);
  }
  return 0;
}

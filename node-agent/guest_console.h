#pragma once
// Guest OOM kills counted from the guests' serial-console logs.
//
// QEMU's and libvirt's balloon statistics carry no OOM-kill counter, but a
// guest whose kernel logs to its serial console (console=ttyS0, as cloud
// images do) prints one line per kill ("Out of memory: Killed process N
// (name) ..."; memory cgroups print "Memory cgroup out of memory: Killed
// process ..."; older kernels a separate "Killed process N" line). When
// the operator gives the agent where each guest's console is logged
// (QEMU `-serial file:PATH` or `-chardev ...,logfile=PATH`, libvirt
// `<serial><log file='PATH'/></serial>`), the agent counts those lines and
// reports the count as the guest's oom_kills_total: the broker then sees
// every kill exactly instead of inferring it from the statistics.
//
// Each poll reads what was appended since the previous one (at most
// max_read_bytes, so a huge log costs a bounded amount per report; the
// rest is read by later polls). A log that shrank or was replaced
// (another inode) is read again from its start and its kills are added
// to the count, so the count never goes back while the agent runs.

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"

namespace membroker::agent {

// Number of OOM-killer lines ("Killed process " followed by a digit) in
// `text`, which holds whole lines.
uint64_t CountOomKillLines(absl::string_view text);

// Parses "NAME=PATH" entries (--guest-console-logs) into a map by VM name.
// INVALID_ARGUMENT for an empty name or path, or a name given twice.
absl::StatusOr<std::map<std::string, std::string>> ParseConsoleLogs(
    const std::vector<std::string>& entries);

// Counts each configured VM's OOM kills from its console log. Thread-safe.
class GuestConsoleOomCounter {
 public:
  // `logs`: VM name -> console log path.
  explicit GuestConsoleOomCounter(std::map<std::string, std::string> logs,
                                  uint64_t max_read_bytes = uint64_t{1} << 20);

  // Reads what VM `name`'s log gained since the last call and returns the
  // kills counted so far; nullopt when no log is configured for `name` or
  // it has never been readable (a missing log is not zero kills).
  std::optional<uint64_t> Poll(const std::string& name);

 private:
  struct LogState {
    std::string path;
    bool readable = false;  // read at least once
    uint64_t inode = 0;
    uint64_t offset = 0;    // bytes of the current file consumed
    uint64_t kills = 0;
    std::string partial;    // an unfinished last line (at most 4 KiB kept)
  };
  const uint64_t max_read_bytes_;
  absl::Mutex mu_;
  std::map<std::string, LogState> logs_ ABSL_GUARDED_BY(mu_);
};

}  // namespace membroker::agent

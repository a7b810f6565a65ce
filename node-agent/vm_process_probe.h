#pragma once
// The host-side view of a VM: the resident memory of its hypervisor process.
//
// QEMU's guest statistics arrive at most once a second; the resident set of
// the QEMU process (VmRSS in /proc/PID/status) is cheap to read every few
// hundred milliseconds and grows as soon as the guest touches memory it
// never touched before. The agent takes the probe as an injected interface
// so tests feed it numbers.

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace membroker::agent {

// Reads a VM process's resident memory. Implementations are thread-safe.
class VmProcessProbe {
 public:
  virtual ~VmProcessProbe() = default;

  // The resident memory of process `pid` in bytes. NOT_FOUND when the
  // process is gone; INVALID_ARGUMENT for a pid <= 0; DATA_LOSS when its
  // status cannot be parsed.
  virtual absl::StatusOr<uint64_t> ResidentBytes(int64_t pid) const = 0;
};

// Reads VmRSS from `<proc_root>/<pid>/status`. Thread-safe (no state).
class ProcVmProcessProbe : public VmProcessProbe {
 public:
  // `proc_root` is "/proc" on a real host; tests point it at fixtures.
  explicit ProcVmProcessProbe(std::string proc_root = "/proc");

  absl::StatusOr<uint64_t> ResidentBytes(int64_t pid) const override;

 private:
  const std::string proc_root_;
};

// Parses the "VmRSS:  123 kB" line of a /proc/PID/status text into bytes.
// DATA_LOSS when the line is missing or malformed (a kernel thread or a
// zombie has none).
absl::StatusOr<uint64_t> ParseVmRssBytes(absl::string_view status_text);

// Parses a pid file (libvirt's /run/libvirt/qemu/<name>.pid): one decimal
// pid, optional surrounding whitespace. INVALID_ARGUMENT otherwise.
absl::StatusOr<int64_t> ParsePidFile(absl::string_view text);

// Reads and parses the pid file at `path`. NOT_FOUND when it is missing;
// INVALID_ARGUMENT as ParsePidFile.
absl::StatusOr<int64_t> ReadPidFile(const std::string& path);

}  // namespace membroker::agent

#pragma once
// The host's own memory: /proc/meminfo and /proc/pressure/memory, read
// through an injected file reader so tests can feed text.

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "node-agent/hypervisor/hypervisor.h"

namespace membroker::agent {

// Reads a whole file. NOT_FOUND when it does not exist; other codes for
// other failures.
using FileReader = std::function<absl::StatusOr<std::string>(const std::string& path)>;

// Returns a FileReader over the real file system.
FileReader RealFileReader();

// The fields of /proc/meminfo the agent uses, in bytes.
struct MemInfo {
  uint64_t mem_total_bytes = 0;
  uint64_t mem_available_bytes = 0;
  uint64_t swap_total_bytes = 0;
  uint64_t swap_free_bytes = 0;
};

// Pressure stall information for memory (/proc/pressure/memory).
struct MemoryPressure {
  // avg10 of the "some" and "full" lines, in percent (0..100).
  double some_avg10_percent = 0;
  double full_avg10_percent = 0;
  // Cumulative stall time from "total=" (microseconds in the file).
  double some_seconds_total = 0;
  double full_seconds_total = 0;
};

// One sample of the host's memory.
struct HostMemorySample {
  MemInfo meminfo;
  MemoryPressure pressure;
  // False when the kernel has no PSI (the pressure fields are zero).
  bool pressure_available = false;
};

// Parses /proc/meminfo text. MemTotal and MemAvailable are required;
// SwapTotal and SwapFree default to 0. INVALID_ARGUMENT naming the field for
// a missing required field, a malformed value or unit, an overflow, or
// MemAvailable above MemTotal. Unknown lines are ignored.
absl::StatusOr<MemInfo> ParseMemInfo(absl::string_view text);

// Parses /proc/pressure/memory text. The "some" line is required, "full"
// is optional (zeros). INVALID_ARGUMENT naming the line and field for
// anything malformed (avg outside 0..100, total not an integer).
absl::StatusOr<MemoryPressure> ParseMemoryPressure(absl::string_view text);

// Reads the host's memory through a FileReader. Thread-compatible.
class HostProbe {
 public:
  // `reader` is called for "/proc/meminfo" and "/proc/pressure/memory"
  // (paths under `proc_root`, default "/proc").
  explicit HostProbe(FileReader reader, std::string proc_root = "/proc");

  // Reads one sample. A missing or unreadable pressure file is fine
  // (pressure_available false); an unreadable or malformed meminfo, or a
  // malformed pressure file, is an error (INVALID_ARGUMENT for bad text,
  // the reader's code otherwise).
  absl::StatusOr<HostMemorySample> Read() const;

 private:
  FileReader reader_;
  std::string proc_root_;
};

// The host sample of a simulated host: total is the simulated physical
// memory, available is total minus what the VMs have (never below 0); no
// swap and no pressure information.
HostMemorySample SimHostSample(uint64_t host_total_bytes, const std::vector<VmStatus>& vms);

}  // namespace membroker::agent

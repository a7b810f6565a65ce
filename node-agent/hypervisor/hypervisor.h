#pragma once
// One interface over the hypervisors the agent can drive: libvirt, QEMU's
// QMP socket, and the simulator. The actuator, the safety rules and the
// broker link only see this interface.

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace membroker::agent {

// A guest's statistics as the balloon driver reported them. A field the
// guest did not send (QEMU: -1) is empty. Untrusted input: see
// ValidateGuestStats in stats_validation.h.
struct GuestMemoryStats {
  std::optional<uint64_t> total_bytes;
  std::optional<uint64_t> available_bytes;
  std::optional<uint64_t> free_bytes;      // "unused"
  std::optional<uint64_t> usable_bytes;    // libvirt's "usable"
  std::optional<uint64_t> disk_caches_bytes;
  std::optional<uint64_t> swap_in_bytes_total;
  std::optional<uint64_t> swap_out_bytes_total;
  std::optional<uint64_t> major_faults_total;
  std::optional<uint64_t> minor_faults_total;
  std::optional<uint64_t> oom_kills_total;  // simulator only
  // When the guest last sent statistics (empty: never).
  std::optional<absl::Time> last_update;
};

// One VM as a backend sees it.
struct VmStatus {
  std::string vm_id;       // hypervisor UUID
  std::string name;
  uint64_t max_bytes = 0;  // configured memory
  uint64_t actual_bytes = 0;  // balloon actual
  GuestMemoryStats stats;
  // The VM's process on the host (QEMU), where the backend knows it: the
  // agent reads its resident memory between guest statistics.
  std::optional<int64_t> host_pid;
};

// A hypervisor backend. Implementations are thread-compatible: the agent
// calls them from one thread.
class Hypervisor {
 public:
  virtual ~Hypervisor() = default;

  // "libvirt", "qmp" or "sim".
  virtual std::string backend() const = 0;

  // Every running VM with its balloon and guest statistics. UNAVAILABLE when
  // the hypervisor cannot be reached (retry later). A VM that fails alone is
  // left out and reported in its own entry of `errors` if given.
  virtual absl::StatusOr<std::vector<VmStatus>> ListVms() = 0;

  // Asks the balloon to give the guest `target_bytes`. NOT_FOUND when the
  // VM is gone; INVALID_ARGUMENT above its max or zero; UNAVAILABLE on a
  // lost connection.
  virtual absl::Status SetBalloonTarget(const std::string& vm_id, uint64_t target_bytes) = 0;

  // Asks the guest to send statistics every `period`.
  virtual absl::Status SetStatsPeriod(const std::string& vm_id, absl::Duration period) = 0;
};

}  // namespace membroker::agent

#pragma once
// One interface over the hypervisors the agent can drive: libvirt, QEMU's
// QMP socket, and the simulator. The actuator, the safety rules and the
// broker link only see this interface.

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
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
  std::optional<uint64_t> free_bytes;    // "unused"
  std::optional<uint64_t> usable_bytes;  // libvirt's "usable"
  std::optional<uint64_t> disk_caches_bytes;
  std::optional<uint64_t> swap_in_bytes_total;
  std::optional<uint64_t> swap_out_bytes_total;
  std::optional<uint64_t> major_faults_total;
  std::optional<uint64_t> minor_faults_total;
  std::optional<uint64_t> oom_kills_total;  // simulator only
  // When the guest last sent statistics (empty: never).
  std::optional<absl::Time> last_update;
};

// How a VM's memory is sized: which devices it has and what each moved.
// A backend without virtio-mem fills only `balloon`.
struct VmSizing {
  // The VM has a virtio-balloon device the backend drives.
  bool balloon = false;
  // Memory the balloon holds out of the guest now (inflated), in bytes.
  uint64_t balloon_inflated_bytes = 0;
  // The VM has a virtio-mem device the backend drives.
  bool virtio_mem = false;
  // Boot memory (and hot-plugged DIMMs): what virtio-mem adds to.
  uint64_t boot_bytes = 0;
  // virtio-mem: plugged now, requested, most it can plug, block size.
  uint64_t virtio_mem_plugged_bytes = 0;
  uint64_t virtio_mem_requested_bytes = 0;
  uint64_t virtio_mem_max_bytes = 0;
  uint64_t virtio_mem_block_bytes = 0;
  // Why sizing falls short of the last target (a virtio-mem unplug that
  // stalled, a target below what the devices can reach); empty when not.
  std::string shortfall_reason;
  // Non-empty: the VM must not be ballooned or resized (PCI passthrough,
  // hugepage or locked memory), and why. The backend refuses to shrink it.
  std::string excluded_reason;
  // The finest step the devices can follow: a target within this of the
  // actual size is reached (1 MiB for a balloon, the block size of a
  // virtio-mem VM without a balloon).
  uint64_t granularity_bytes = uint64_t{1} << 20;
};

// "balloon", "virtio-mem", "virtio-mem+balloon" or "none".
// The reason a VM with neither a balloon nor virtio-mem is reported
// excluded (its kind is the text before the colon).
inline constexpr std::string_view kNoSizingDeviceReason =
    "no balloon or virtio-mem device: its memory cannot be moved";

inline std::string SizingMechanism(const VmSizing& sizing) {
  if (sizing.virtio_mem) return sizing.balloon ? "virtio-mem+balloon" : "virtio-mem";
  return sizing.balloon ? "balloon" : "none";
}

// Marks a VM with neither a balloon nor virtio-mem excluded
// (kNoSizingDeviceReason), unless it is excluded already: nothing can
// move its memory, so the broker must not count on it.
inline void ExcludeIfNothingSizes(VmSizing& sizing) {
  if (!sizing.balloon && !sizing.virtio_mem && sizing.excluded_reason.empty()) {
    sizing.excluded_reason = std::string(kNoSizingDeviceReason);
  }
}

// One VM as a backend sees it.
struct VmStatus {
  std::string vm_id;  // hypervisor UUID
  std::string name;
  uint64_t max_bytes = 0;     // configured memory
  uint64_t actual_bytes = 0;  // balloon actual
  GuestMemoryStats stats;
  // The VM's process on the host (QEMU), where the backend knows it: the
  // agent reads its resident memory between guest statistics.
  std::optional<int64_t> host_pid;
  // The devices that size it. Backends without virtio-mem set `balloon`
  // (and leave the rest).
  VmSizing sizing;
  // The balloon has free page reporting on: pages the guest frees go back
  // to the host by themselves. False without a balloon, when it is off, or
  // when the backend cannot tell.
  bool free_page_reporting = false;
  // The backend knows the guest's balloon driver is loaded (VmSample
  // field of the same name); false when it cannot tell.
  bool balloon_driver_ready = false;
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

  // Asks the VM's sizing devices (balloon, virtio-mem, or both: the
  // backend picks) to give the guest `target_bytes`. NOT_FOUND when the
  // VM is gone; INVALID_ARGUMENT above its max or zero; UNAVAILABLE on a
  // lost connection.
  virtual absl::Status SetBalloonTarget(const std::string& vm_id, uint64_t target_bytes) = 0;

  // Asks the guest to send statistics every `period`.
  virtual absl::Status SetStatsPeriod(const std::string& vm_id, absl::Duration period) = 0;
};

}  // namespace membroker::agent

#pragma once
// The QMP backend: drives QEMU guests through their QMP unix sockets, with
// no libvirt in between.
//
// Per socket (one VM each):
//   1. connect, greet, negotiate capabilities; learn the VM's identity once:
//      query-uuid (an all-zero UUID gives an id derived from the socket
//      path), query-name (fallback: the socket's basename),
//      query-memory-size-summary base-memory (max), and the balloon's QOM
//      path (/machine/peripheral/balloon0, else the first virtio-balloon-pci
//      child found by qom-list under /machine/peripheral and
//      /machine/peripheral-anon);
//      its virtio-mem device (query-memory-devices; the first virtio-mem
//      entry with an id), and whether it must not be resized at all (see
//      "Excluded VMs" below);
//   2. every ListVms: query-balloon (actual), query-memory-devices (the
//      virtio-mem device's size and request) and qom-get guest-stats;
//      BALLOON_CHANGE and MEMORY_DEVICE_SIZE_CHANGE events seen meanwhile
//      update actual and the plugged size too;
//   3. a failed connection is retried with the shared jittered exponential
//      backoff (membroker::Backoff: 1 s doubling up to 30 s, +-20 %, on
//      the injected clock); a VM whose socket fails is left out of the list
//      until it answers again.
// Sizing with virtio-mem (the broker's target is the same; the backend
// picks the devices):
//   - boot memory is base-memory plus hot-plugged memory other than
//     virtio-mem; size = boot + plugged; max = boot + the device's max-size;
//   - a target asks virtio-mem for target - boot rounded up to its block
//     size (qom-set /machine/peripheral/<id> requested-size), and the
//     balloon, where there is one, for what is below a block (or below boot
//     memory); without a balloon the VM follows to within a block. QEMU
//     7.2's balloon works against boot memory only (its actual leaves
//     virtio-mem out), so size = balloon actual + plugged;
//   - a request the device does not move toward for virtio_mem_stall_timeout
//     (an unplug held by unmovable guest pages, a guest without the driver)
//     has stalled: an unplug is cancelled at the size reached and the
//     balloon takes the remainder; without a balloon the shortfall is
//     reported (VmSizing::shortfall_reason) and the actuator sees a stuck VM.
// Excluded VMs (found once per connection, never resized, reported with the
// reason in VmSizing::excluded_reason): a VFIO device among the peripherals
// (qom-list types child<vfio-...>: it pins all guest memory), a memory
// backend on hugetlbfs (qom-get /objects/<id> of each query-memdev entry:
// hugetlb true, or a mem-path under a hugetlbfs mount), or a QEMU process
// that locks its memory (VmLck above zero in /proc/PID/status, or
// mem-lock=on / mlock=on on its command line). Shrinking one is refused.
// Where the sockets come from is rescanned on every ListVms (a rescan per
// report interval is cheap: one readdir or glob, and it needs no inotify
// descriptor, thread or event queue, and cannot miss an event):
//   - an explicit socket path is always tried: while it is missing or
//     refuses, each attempt fails, is logged (once per distinct error) and
//     retried after the backoff, so an operator's typo stays visible;
//   - every socket in `socket_dir`, and every socket a glob matches, is
//     added when it appears (anything that is not a socket is ignored);
//   - a VM whose socket disappeared from the directory or glob is dropped
//     as soon as its connection is closed too (QEMU exited): it leaves the
//     listing. While the connection is still open (the file was removed
//     under a running QEMU) it stays.

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <google/protobuf/struct.pb.h>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "common/backoff.h"
#include "common/clock.h"
#include "node-agent/hypervisor/hypervisor.h"
#include "node-agent/hypervisor/qmp_client.h"

namespace membroker::agent {

// Settings of the QMP backend.
struct QmpHypervisorOptions {
  // Socket paths, directories (every socket inside) or glob patterns
  // (--qmp-socket).
  std::vector<std::string> sockets_or_globs;
  // A directory whose sockets are QMP sockets, rescanned on every ListVms
  // (--qmp-socket-dir); empty for none.
  std::string socket_dir;
  // Limits of each QMP connection.
  QmpClientOptions client;
  // Backoff between reconnection attempts of one socket: the first wait,
  // and the most a wait grows to (before jitter).
  absl::Duration min_backoff = absl::Seconds(1);
  absl::Duration max_backoff = absl::Seconds(30);
  // Each wait is scaled by a uniform factor in [1 - jitter, 1 + jitter].
  double backoff_jitter = 0.2;
  // Seeds the jitter (0: from the system); tests pass a fixed one.
  uint64_t backoff_seed = 0;
  // A virtio-mem request the device does not move toward for this long
  // has stalled (measured on the clock's monotonic time).
  absl::Duration virtio_mem_stall_timeout = absl::Seconds(20);
  // Where the QEMU processes' /proc entries are (tests use fixtures).
  std::string proc_root = "/proc";
};

// One virtio-mem device as query-memory-devices describes it.
struct VirtioMemDevice {
  std::string id;
  std::string memdev;
  uint64_t size = 0;
  uint64_t requested_size = 0;
  uint64_t max_size = 0;
  uint64_t block_size = 0;
};

// The virtio-mem entries of a query-memory-devices reply. Untrusted: an
// entry with a missing, mistyped or negative field, no id, block-size 0 or
// not a power of two, or size or requested-size above max-size is left
// out and described in `problems` (if given); entries of other types are
// skipped. INVALID_ARGUMENT only when `value` is not a list.
absl::StatusOr<std::vector<VirtioMemDevice>> ParseQmpVirtioMemDevices(
    const google::protobuf::Value& value, std::vector<std::string>* problems = nullptr);

// Drives QEMU guests over QMP. Thread-compatible (one caller at a time).
class QmpHypervisor : public Hypervisor {
 public:
  // Validates `options` (at least one non-empty socket entry or a socket
  // directory, sane backoff): INVALID_ARGUMENT naming the field otherwise.
  // Does not connect or scan yet: ListVms does, so sockets that are not
  // there yet are found later.
  static absl::StatusOr<std::unique_ptr<QmpHypervisor>> Create(QmpHypervisorOptions options,
                                                               Clock* clock);
  ~QmpHypervisor() override;

  // "qmp".
  std::string backend() const override { return "qmp"; }

  // Rescans the directory and globs, then lists every VM whose socket
  // answers. A socket that fails is logged, left out and retried after its
  // backoff; the call itself does not fail.
  absl::StatusOr<std::vector<VmStatus>> ListVms() override;

  // Sizes the VM to `target_bytes`: `balloon` with the value in bytes, or
  // virtio-mem's requested-size and the balloon for the rest (see above).
  // NOT_FOUND for an unknown VM (never seen, or its socket is gone),
  // INVALID_ARGUMENT for zero or above max, FAILED_PRECONDITION when the VM
  // has neither device or is excluded and the target is below its size,
  // UNAVAILABLE while its connection is down.
  absl::Status SetBalloonTarget(const std::string& vm_id, uint64_t target_bytes) override;

  // Sets guest-stats-polling-interval on the balloon device (whole seconds,
  // at least 1; zero turns polling off). The period is also applied to VMs
  // found later. INVALID_ARGUMENT for a negative period or over a day.
  absl::Status SetStatsPeriod(const std::string& vm_id, absl::Duration period) override;

 private:
  struct Vm;
  QmpHypervisor(QmpHypervisorOptions options, Clock* clock);

  // Finds the socket paths the configured entries name now, each with
  // whether it was named explicitly.
  std::map<std::string, bool> ScanSockets() const;
  // Connects `vm` if needed and allowed by its backoff; learns identity.
  absl::Status EnsureConnected(Vm& vm);
  // Learns a freshly connected VM's id, name, max and balloon device.
  absl::Status Identify(Vm& vm);
  // Reads one VM's status.
  absl::StatusOr<VmStatus> ReadVm(Vm& vm);
  // Finds why `vm` must not be resized (empty: it may be).
  absl::StatusOr<std::string> FindExclusion(Vm& vm);
  // Refreshes the virtio-mem device of `vm` and detects a stalled request.
  absl::Status RefreshVirtioMem(Vm& vm);
  // Sends the balloon the value that holds `inflate_bytes` out of the guest
  // once virtio-mem has its request.
  absl::Status SetBalloonInflation(Vm& vm, uint64_t inflate_bytes);
  // Records a failure of `vm` and schedules its next attempt.
  void RecordFailure(Vm& vm, const absl::Status& status);
  // The VM with `vm_id` among connected ones, or nullptr.
  Vm* FindVm(const std::string& vm_id);

  QmpHypervisorOptions options_;
  Clock* clock_;
  // By socket path.
  std::map<std::string, std::unique_ptr<Vm>> vms_;
  // The period last asked for with SetStatsPeriod, applied to new VMs.
  std::optional<absl::Duration> stats_period_;
};

// Maps the value of `qom-get guest-stats` ({"stats": {...}, "last-update":
// N}) into GuestMemoryStats. Untrusted: -1, a missing field, a field of the
// wrong type or out of range leaves that field empty; last-update 0 is
// "never". INVALID_ARGUMENT only when `value` is not an object.
absl::StatusOr<GuestMemoryStats> ParseQmpGuestStats(const google::protobuf::Value& value);

// Reads a non-negative integral JSON number that fits in 2^53 (exact in a
// double). Empty for anything else (missing, -1, negative, fractional,
// string, too large).
std::optional<uint64_t> QmpUint(const google::protobuf::Struct& object, const std::string& key);

// A stable VM id derived from a socket path, formatted as a UUID.
std::string QmpIdFromPath(const std::string& path);

// Builds the QMP backend for the agent's --backend=qmp from --qmp-socket
// entries and --qmp-socket-dir (may be empty). INVALID_ARGUMENT as Create.
absl::StatusOr<std::unique_ptr<Hypervisor>> MakeQmpHypervisor(
    const std::vector<std::string>& sockets_or_globs, const std::string& socket_dir, Clock* clock);

}  // namespace membroker::agent

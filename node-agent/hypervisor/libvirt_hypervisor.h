#pragma once
// The libvirt backend: production KVM/QEMU hosts (qemu:///system).
//
// Every ListVms:
//   1. (re)connects when there is no live connection, at most once per
//      backoff step (membroker::Backoff: 1 s doubling up to 30 s, +-20 %
//      jitter, on the injected clock);
//   2. lists the active domains (so domains that start, stop or migrate
//      away are followed without events; a domain paused for an incoming or
//      outgoing migration is left out);
//   3. reads each domain's max and current memory (virDomainGetInfo) and
//      balloon statistics (virDomainMemoryStats). libvirt counts memory in
//      KiB; this backend speaks bytes.
// virtio-mem (`<devices><memory model='virtio-mem'>` in the domain XML, read
// on every ListVms for a domain that has one):
//   - boot memory is libvirt's total memory less the devices' sizes; size =
//     min(balloon actual, boot) + the devices' <current>; max = boot + the
//     devices' <size> (libvirt's total). As in the QMP backend, the balloon
//     is taken to work against boot memory only (QEMU 7.2).
//   - a target asks the devices (in XML order) for target - boot rounded up
//     to each one's block and clamped to its size, through
//     virDomainUpdateDeviceFlags(LIVE) with the device's XML and a new
//     <requested>; the balloon takes what that overshoots (below a block, or
//     below boot memory). See SplitLibvirtVirtioMemTarget.
//   - a request the devices do not move toward for virtio_mem_stall_timeout
//     (on the clock's monotonic time) has stalled: a stalled unplug is
//     cancelled at the size reached (each device's <requested> set to its
//     <current>) and the balloon takes the remainder; a stalled plug is
//     reported. Either way VmSizing::shortfall_reason says so, and the
//     request is not repeated until the target changes;
//   - a device XML that cannot be read (missing or garbage sizes) is logged
//     and the domain is sized by its balloon alone.
// A domain that fails alone (gone meanwhile, no balloon) is left out or
// reported without statistics; a lost connection makes the call UNAVAILABLE
// and the next one reconnects. libvirt's default error printer is replaced
// by a silent one: errors reach the log through this backend's statuses.

#include <libvirt/libvirt.h>

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "common/backoff.h"
#include "common/clock.h"
#include "node-agent/hypervisor/hypervisor.h"

namespace membroker::agent {

// One virtio-mem device of a libvirt domain, from its XML (bytes).
struct LibvirtVirtioMem {
  // The <memory model='virtio-mem'>...</memory> element as written in the
  // domain XML (with its alias and address), to send back updated.
  std::string xml;
  uint64_t size_bytes = 0;       // <target><size>: the most it can plug
  uint64_t block_bytes = 0;      // <target><block>
  uint64_t requested_bytes = 0;  // <target><requested>
  uint64_t current_bytes = 0;    // <target><current> (live XML); else requested
};

// Settings of the libvirt backend.
struct LibvirtHypervisorOptions {
  // The libvirt connection URI, e.g. qemu:///system or test:///default.
  std::string uri = "qemu:///system";
  // Backoff between reconnection attempts: the first wait, and the most a
  // wait grows to (before jitter).
  absl::Duration min_backoff = absl::Seconds(1);
  absl::Duration max_backoff = absl::Seconds(30);
  // Each wait is scaled by a uniform factor in [1 - jitter, 1 + jitter].
  double backoff_jitter = 0.2;
  // Seeds the jitter (0: from the system); tests pass a fixed one.
  uint64_t backoff_seed = 0;
  // Where libvirtd's QEMU driver writes `<domain name>.pid`, read on every
  // ListVms to find each VM's QEMU process (VmStatus::host_pid); empty: not
  // read. A missing or malformed file leaves host_pid empty.
  std::string pid_dir;
  // A virtio-mem request the devices do not move toward for this long has
  // stalled.
  absl::Duration virtio_mem_stall_timeout = absl::Seconds(20);
};

// Drives domains through libvirt. Thread-compatible (one caller at a time).
class LibvirtHypervisor : public Hypervisor {
 public:
  // Validates `options` (INVALID_ARGUMENT naming the field: min_backoff
  // positive and at most max_backoff, jitter in [0, 1]) and installs the
  // silent error handler. Does not connect yet: ListVms does, so an agent
  // started before libvirtd keeps retrying.
  static absl::StatusOr<std::unique_ptr<LibvirtHypervisor>> Create(LibvirtHypervisorOptions options,
                                                                   Clock* clock);
  ~LibvirtHypervisor() override;

  // "libvirt".
  std::string backend() const override { return "libvirt"; }

  // Every active domain. UNAVAILABLE when libvirt cannot be reached or the
  // connection broke (retried after the backoff).
  absl::StatusOr<std::vector<VmStatus>> ListVms() override;

  // virDomainSetMemoryFlags(LIVE) with the target in KiB (rounded down).
  // NOT_FOUND when the domain is gone or not running, INVALID_ARGUMENT for
  // zero (or under 1 KiB) or above max, UNAVAILABLE on a lost connection.
  absl::Status SetBalloonTarget(const std::string& vm_id, uint64_t target_bytes) override;

  // virDomainSetMemoryStatsPeriod(LIVE) in whole seconds (rounded up; zero
  // turns polling off). The period is also applied to domains found later.
  // INVALID_ARGUMENT for a negative period or over a day; NOT_FOUND or
  // UNAVAILABLE as SetBalloonTarget.
  absl::Status SetStatsPeriod(const std::string& vm_id, absl::Duration period) override;

  // True while a connection is open (for tests and metrics).
  bool connected() const { return conn_ != nullptr; }

 private:
  LibvirtHypervisor(LibvirtHypervisorOptions options, Clock* clock);

  // Opens the connection if needed and allowed by the backoff.
  absl::Status EnsureConnected();
  // Turns libvirt's last error into a status (closing a dead connection).
  absl::Status LastError(const std::string& what);
  // Closes the connection.
  void Disconnect();
  // Looks a running domain up by UUID. The caller frees it.
  absl::StatusOr<virDomainPtr> LookupDomain(const std::string& vm_id);
  // Fills `vm`'s sizing from its virtio-mem devices and handles a stalled
  // request (see the top of this file). UNAVAILABLE only when the
  // connection is lost.
  absl::Status SizeVirtioMem(virDomainPtr dom, const std::vector<LibvirtVirtioMem>& devices,
                             VmStatus* vm);
  // Applies `period` to `dom`.
  absl::Status ApplyStatsPeriod(virDomainPtr dom, const std::string& vm_id, absl::Duration period);

  LibvirtHypervisorOptions options_;
  Clock* clock_;
  virConnectPtr conn_ = nullptr;
  membroker::Backoff backoff_;
  std::string last_error_;
  // The period last asked for with SetStatsPeriod, applied to new domains.
  std::optional<absl::Duration> stats_period_;
  // Domains seen in the last ListVms, with the stats period applied to each.
  std::map<std::string, std::optional<absl::Duration>> known_;
  // Why a domain must not be resized (from its XML, read once while it is
  // known; empty: it may be), by UUID.
  std::map<std::string, std::string> exclusions_;
  // Whether a domain's balloon has free page reporting (from the same
  // read of its XML), by UUID.
  std::map<std::string, bool> free_page_reporting_;
  // Domains without a balloon (<memballoon model='none'>), from the same
  // read of their XML, by UUID: sized by virtio-mem alone, or not at all.
  std::map<std::string, bool> no_balloon_;
  // Domains with a virtio-mem device (their XML is read on every ListVms),
  // by UUID; and the last error reading their devices, logged once.
  std::map<std::string, bool> has_virtio_mem_;
  std::map<std::string, std::string> virtio_mem_errors_;
  // Progress of a domain's virtio-mem request, by UUID.
  struct VirtioMemProgress {
    uint64_t plugged = 0;            // plugged when last seen moving
    absl::Time since;                // when (monotonic)
    bool stalled = false;            // detected; not retried for this target
    std::optional<uint64_t> target;  // the last SetBalloonTarget
    std::string reason;              // the shortfall while stalled
  };
  std::map<std::string, VirtioMemProgress> vmem_progress_;
};

// The virtio-mem devices in a domain XML's <devices>, in order (empty when
// none). Comments are ignored. Untrusted: a device with a missing or
// malformed size, block or requested (or current), a zero block, a request
// above its size or a value that overflows is INVALID_ARGUMENT naming the
// device and field; the caller then sizes the domain by its balloon alone.
absl::StatusOr<std::vector<LibvirtVirtioMem>> LibvirtVirtioMemDevices(
    const std::string& domain_xml);

// How a target splits between virtio-mem devices and the balloon.
struct LibvirtVirtioMemSplit {
  // The <requested> for each device, in the order given.
  std::vector<uint64_t> requested_bytes;
  // What the balloon holds out of boot memory (so boot + requests -
  // inflate = target, when the devices reach that far).
  uint64_t inflate_bytes = 0;
};

// Splits `target_bytes` of a domain with `boot_bytes` of boot memory: the
// part above boot goes to the devices in order, each rounded up to its
// block and clamped to its size; the balloon inflates by what the requests
// overshoot the target (less than a block, or all of what is asked below
// boot memory), at most boot memory.
LibvirtVirtioMemSplit SplitLibvirtVirtioMemTarget(uint64_t target_bytes, uint64_t boot_bytes,
                                                  const std::vector<LibvirtVirtioMem>& devices);

// `device.xml` with its <requested> set to `requested_bytes` (written in
// KiB, the unit libvirt writes).
std::string LibvirtVirtioMemWithRequest(const LibvirtVirtioMem& device, uint64_t requested_bytes);

// Why a libvirt domain must not be ballooned, from its XML (empty: it may
// be): a <hostdev> (PCI passthrough pins guest memory), or
// <memoryBacking> with <hugepages/> or <locked/>. Comments are ignored.
// Untrusted: malformed XML finds nothing rather than failing.
std::string LibvirtExclusionReason(const std::string& domain_xml);

// Whether a libvirt domain's balloon has free page reporting, from its XML:
// `<memballoon ... freePageReporting='on'>` inside <devices>. Comments are
// ignored; malformed XML reads as off.
bool LibvirtFreePageReporting(const std::string& domain_xml);

// Whether a libvirt domain has a balloon: false only for an explicit
// `<memballoon model='none'>` inside <devices> (libvirt adds a virtio
// balloon to a QEMU domain unless told not to). Comments are ignored;
// malformed XML reads as having one (its resizes then fail and are
// reported, as before).
bool LibvirtHasBalloon(const std::string& domain_xml);

// Maps virDomainMemoryStats output into GuestMemoryStats (bytes). Sets
// `*actual_bytes` from ACTUAL_BALLOON when present. Untrusted: a value of
// all ones (-1), one that overflows when scaled from KiB, or an unknown tag
// is ignored; LAST_UPDATE 0 means never. libvirt's AVAILABLE is the
// guest's total memory and USABLE its MemAvailable.
GuestMemoryStats LibvirtGuestStats(const virDomainMemoryStatStruct* stats, int count,
                                   std::optional<uint64_t>* actual_bytes);

// Builds the libvirt backend for the agent's --backend=libvirt.
absl::StatusOr<std::unique_ptr<Hypervisor>> MakeLibvirtHypervisor(const std::string& uri,
                                                                  Clock* clock);

}  // namespace membroker::agent

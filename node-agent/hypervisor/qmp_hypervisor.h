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
//   2. every ListVms: query-balloon (actual) and qom-get guest-stats;
//      BALLOON_CHANGE events seen meanwhile update actual too;
//   3. a failed connection is retried with exponential backoff (1 s up to
//      30 s, on the injected clock); a VM whose socket fails is left out of
//      the list until it answers again.
// Entries that are directories or glob patterns are rescanned on every
// ListVms, so sockets of VMs that start later are picked up and sockets
// that disappear are dropped.

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
#include "common/clock.h"
#include "node-agent/hypervisor/hypervisor.h"
#include "node-agent/hypervisor/qmp_client.h"

namespace membroker::agent {

// Settings of the QMP backend.
struct QmpHypervisorOptions {
  // Socket paths, directories (every socket inside) or glob patterns.
  std::vector<std::string> sockets_or_globs;
  // Limits of each QMP connection.
  QmpClientOptions client;
  // Backoff between reconnection attempts of one socket.
  absl::Duration min_backoff = absl::Seconds(1);
  absl::Duration max_backoff = absl::Seconds(30);
};

// Drives QEMU guests over QMP. Thread-compatible (one caller at a time).
class QmpHypervisor : public Hypervisor {
 public:
  // Validates `options` (at least one non-empty entry, sane backoff):
  // INVALID_ARGUMENT naming the field otherwise. Does not connect yet: a
  // socket that is not there is retried by ListVms.
  static absl::StatusOr<std::unique_ptr<QmpHypervisor>> Create(QmpHypervisorOptions options,
                                                               Clock* clock);
  ~QmpHypervisor() override;

  // "qmp".
  std::string backend() const override { return "qmp"; }

  // Every VM whose socket answers. A socket that fails is logged, left out
  // and retried after its backoff; the call itself does not fail.
  absl::StatusOr<std::vector<VmStatus>> ListVms() override;

  // Sends `balloon` with the value in bytes. NOT_FOUND for an unknown VM
  // (never seen, or its socket is gone), INVALID_ARGUMENT for zero or above
  // max, FAILED_PRECONDITION when the VM has no balloon device, UNAVAILABLE
  // while its connection is down.
  absl::Status SetBalloonTarget(const std::string& vm_id, uint64_t target_bytes) override;

  // Sets guest-stats-polling-interval on the balloon device (whole seconds,
  // at least 1; zero turns polling off). The period is also applied to VMs
  // found later. INVALID_ARGUMENT for a negative period or over a day.
  absl::Status SetStatsPeriod(const std::string& vm_id, absl::Duration period) override;

 private:
  struct Vm;
  QmpHypervisor(QmpHypervisorOptions options, Clock* clock);

  // Finds the socket paths the configured entries name now.
  std::vector<std::string> ScanSockets() const;
  // Connects `vm` if needed and allowed by its backoff; learns identity.
  absl::Status EnsureConnected(Vm& vm);
  // Learns a freshly connected VM's id, name, max and balloon device.
  absl::Status Identify(Vm& vm);
  // Reads one VM's status.
  absl::StatusOr<VmStatus> ReadVm(Vm& vm);
  // Records a failure of `vm` and schedules its next attempt.
  void Backoff(Vm& vm, const absl::Status& status);
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

// Builds the QMP backend for the agent's --backend=qmp.
absl::StatusOr<std::unique_ptr<Hypervisor>> MakeQmpHypervisor(
    const std::vector<std::string>& sockets_or_globs, Clock* clock);

}  // namespace membroker::agent

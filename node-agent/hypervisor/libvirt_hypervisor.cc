#include "node-agent/hypervisor/libvirt_hypervisor.h"

#include <libvirt/virterror.h>

#include <algorithm>
#include <cstdlib>
#include <iterator>
#include <limits>
#include <mutex>
#include <optional>
#include <set>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/logging.h"
#include "common/status.h"
#include "node-agent/vm_process_probe.h"

namespace membroker::agent {
namespace {

// libvirt prints every error to stderr unless a handler is set; ours stays
// silent because each error is returned as a status.
void SilentErrorHandler(void* /*user_data*/, virErrorPtr /*error*/) {}

void InstallSilentErrorHandler() {
  static std::once_flag once;
  std::call_once(once, [] { virSetErrorFunc(nullptr, SilentErrorHandler); });
}

// Error codes after which the connection is useless.
bool IsConnectionLost(int code) {
  switch (code) {
    case VIR_ERR_SYSTEM_ERROR:
    case VIR_ERR_RPC:
    case VIR_ERR_NO_CONNECT:
    case VIR_ERR_INVALID_CONN:
    case VIR_ERR_AUTH_FAILED:
    case VIR_ERR_AUTH_CANCELLED:
      return true;
    default:
      return false;
  }
}

absl::StatusCode CodeFor(int code) {
  switch (code) {
    case VIR_ERR_NO_DOMAIN:
    case VIR_ERR_OPERATION_INVALID:  // e.g. "domain is not running"
      return absl::StatusCode::kNotFound;
    case VIR_ERR_INVALID_ARG:
      return absl::StatusCode::kInvalidArgument;
    case VIR_ERR_NO_SUPPORT:
    case VIR_ERR_OPERATION_UNSUPPORTED:
      return absl::StatusCode::kUnimplemented;
    case VIR_ERR_AUTH_FAILED:
    case VIR_ERR_AUTH_CANCELLED:
    case VIR_ERR_ACCESS_DENIED:
      return absl::StatusCode::kPermissionDenied;
    default:
      return absl::StatusCode::kUnavailable;
  }
}

// Frees a domain handle on scope exit.
struct DomainDeleter {
  void operator()(virDomain* dom) const {
    if (dom != nullptr) virDomainFree(dom);
  }
};
using DomainHandle = std::unique_ptr<virDomain, DomainDeleter>;

// KiB -> bytes, empty on overflow or libvirt's "unset".
std::optional<uint64_t> KibToBytes(unsigned long long kib) {
  if (kib == std::numeric_limits<unsigned long long>::max()) return std::nullopt;
  if (kib > std::numeric_limits<uint64_t>::max() / 1024) return std::nullopt;
  return static_cast<uint64_t>(kib) * 1024;
}

std::optional<uint64_t> Count(unsigned long long n) {
  if (n == std::numeric_limits<unsigned long long>::max()) return std::nullopt;
  return static_cast<uint64_t>(n);
}

}  // namespace

GuestMemoryStats LibvirtGuestStats(const virDomainMemoryStatStruct* stats, int count,
                                   std::optional<uint64_t>* actual_bytes) {
  GuestMemoryStats out;
  if (actual_bytes != nullptr) actual_bytes->reset();
  if (stats == nullptr || count <= 0) return out;
  for (int i = 0; i < count; ++i) {
    const unsigned long long v = stats[i].val;
    switch (stats[i].tag) {
      case VIR_DOMAIN_MEMORY_STAT_ACTUAL_BALLOON:
        if (actual_bytes != nullptr) *actual_bytes = KibToBytes(v);
        break;
      case VIR_DOMAIN_MEMORY_STAT_AVAILABLE:
        out.total_bytes = KibToBytes(v);
        break;
      case VIR_DOMAIN_MEMORY_STAT_USABLE:
        out.usable_bytes = KibToBytes(v);
        out.available_bytes = out.usable_bytes;
        break;
      case VIR_DOMAIN_MEMORY_STAT_UNUSED:
        out.free_bytes = KibToBytes(v);
        break;
      case VIR_DOMAIN_MEMORY_STAT_DISK_CACHES:
        out.disk_caches_bytes = KibToBytes(v);
        break;
      case VIR_DOMAIN_MEMORY_STAT_SWAP_IN:
        out.swap_in_bytes_total = KibToBytes(v);
        break;
      case VIR_DOMAIN_MEMORY_STAT_SWAP_OUT:
        out.swap_out_bytes_total = KibToBytes(v);
        break;
      case VIR_DOMAIN_MEMORY_STAT_MAJOR_FAULT:
        out.major_faults_total = Count(v);
        break;
      case VIR_DOMAIN_MEMORY_STAT_MINOR_FAULT:
        out.minor_faults_total = Count(v);
        break;
      case VIR_DOMAIN_MEMORY_STAT_LAST_UPDATE:
        if (v > 0 && v <= static_cast<unsigned long long>(std::numeric_limits<int64_t>::max())) {
          out.last_update = absl::FromUnixSeconds(static_cast<int64_t>(v));
        }
        break;
      default:
        break;  // RSS, hugetlb counters and tags newer than this code
    }
  }
  return out;
}

namespace {

// Sizes of a domain's virtio-mem devices summed.
struct VirtioMemTotals {
  uint64_t size = 0;
  uint64_t current = 0;
  uint64_t requested = 0;
  uint64_t block = 0;  // the largest
};

// a + b, at most the largest uint64_t (hostile sizes do not wrap).
uint64_t SaturatingAdd(uint64_t a, uint64_t b) {
  return a > std::numeric_limits<uint64_t>::max() - b ? std::numeric_limits<uint64_t>::max()
                                                      : a + b;
}

VirtioMemTotals SumVirtioMem(const std::vector<LibvirtVirtioMem>& devices) {
  VirtioMemTotals t;
  for (const LibvirtVirtioMem& d : devices) {
    t.size = SaturatingAdd(t.size, d.size_bytes);
    t.current = SaturatingAdd(t.current, d.current_bytes);
    t.requested = SaturatingAdd(t.requested, d.requested_bytes);
    t.block = std::max(t.block, d.block_bytes);
  }
  return t;
}

// Fills `vm`'s sizing from its virtio-mem devices; `vm` holds libvirt's
// total memory as max and the balloon's actual. False (and `vm` left
// balloon-only) when the devices are larger than the total (an XML that
// does not add up).
bool FillVirtioMemSizing(const std::vector<LibvirtVirtioMem>& devices, VmStatus* vm) {
  const VirtioMemTotals t = SumVirtioMem(devices);
  if (t.size >= vm->max_bytes || t.current > t.size || t.requested > t.size) {
    spdlog::warn(
        "libvirt: domain {}: virtio-mem sizes do not fit its {} bytes of memory; "
        "sized by its balloon alone",
        vm->name, vm->max_bytes);
    return false;
  }
  VmSizing& sizing = vm->sizing;
  sizing.boot_bytes = vm->max_bytes - t.size;
  const uint64_t balloon_actual = std::min(vm->actual_bytes, sizing.boot_bytes);
  sizing.balloon_inflated_bytes = sizing.boot_bytes - balloon_actual;
  vm->actual_bytes = balloon_actual + t.current;
  sizing.virtio_mem = true;
  sizing.virtio_mem_plugged_bytes = t.current;
  sizing.virtio_mem_requested_bytes = t.requested;
  sizing.virtio_mem_max_bytes = t.size;
  sizing.virtio_mem_block_bytes = t.block;
  return true;
}

std::string Mib(uint64_t bytes) { return absl::StrCat(bytes / (uint64_t{1} << 20), " MiB"); }

membroker::BackoffParams LibvirtBackoffParams(const LibvirtHypervisorOptions& options) {
  return membroker::DoublingBackoff(options.min_backoff, options.max_backoff,
                                    options.backoff_jitter);
}

}  // namespace

LibvirtHypervisor::LibvirtHypervisor(LibvirtHypervisorOptions options, Clock* clock)
    : options_(std::move(options)),
      clock_(clock),
      backoff_(LibvirtBackoffParams(options_), options_.backoff_seed) {}

LibvirtHypervisor::~LibvirtHypervisor() { Disconnect(); }

absl::StatusOr<std::unique_ptr<LibvirtHypervisor>> LibvirtHypervisor::Create(
    LibvirtHypervisorOptions options, Clock* clock) {
  if (clock == nullptr) return absl::InvalidArgumentError("libvirt backend needs a clock");
  if (options.uri.empty()) return absl::InvalidArgumentError("--libvirt-uri: empty");
  if (options.min_backoff <= absl::ZeroDuration() || options.max_backoff < options.min_backoff) {
    return absl::InvalidArgumentError(
        "libvirt backoff: min_backoff must be positive and at most max_backoff");
  }
  RETURN_IF_ERROR(ValidateBackoffParams(LibvirtBackoffParams(options), "libvirt backoff"));
  InstallSilentErrorHandler();
  return std::unique_ptr<LibvirtHypervisor>(new LibvirtHypervisor(std::move(options), clock));
}

void LibvirtHypervisor::Disconnect() {
  if (conn_ != nullptr) virConnectClose(conn_);
  conn_ = nullptr;
}

absl::Status LibvirtHypervisor::LastError(const std::string& what) {
  virErrorPtr err = virGetLastError();
  int code = err != nullptr ? err->code : VIR_ERR_INTERNAL_ERROR;
  std::string message =
      err != nullptr && err->message != nullptr ? err->message : "unknown libvirt error";
  virResetLastError();
  bool lost = IsConnectionLost(code) || (conn_ != nullptr && virConnectIsAlive(conn_) == 0);
  if (lost) {
    spdlog::warn("libvirt {}: connection lost ({}); reconnecting", options_.uri, message);
    Disconnect();
    return absl::UnavailableError(absl::StrCat(what, ": ", message));
  }
  return absl::Status(CodeFor(code), absl::StrCat(what, ": ", message));
}

absl::Status LibvirtHypervisor::EnsureConnected() {
  if (conn_ != nullptr) {
    if (virConnectIsAlive(conn_) == 1) return absl::OkStatus();
    spdlog::warn("libvirt {}: connection is dead; reconnecting", options_.uri);
    Disconnect();
  }
  absl::Time now = clock_->Now();
  if (!backoff_.Ready(now)) {
    return absl::UnavailableError(
        absl::StrCat("libvirt ", options_.uri, " unreachable (", last_error_, "); next attempt in ",
                     absl::FormatDuration(backoff_.next_attempt() - now)));
  }
  conn_ = virConnectOpen(options_.uri.c_str());
  if (conn_ == nullptr) {
    virErrorPtr err = virGetLastError();
    std::string message =
        err != nullptr && err->message != nullptr ? err->message : "unknown libvirt error";
    virResetLastError();
    const absl::Duration wait = backoff_.Fail(now);
    if (message != last_error_) {
      spdlog::warn("libvirt {}: cannot connect: {} (retrying in {})", options_.uri, message,
                   absl::FormatDuration(wait));
    }
    last_error_ = message;
    return absl::UnavailableError(
        absl::StrCat("cannot connect to libvirt ", options_.uri, ": ", message));
  }
  if (backoff_.failures() > 0) spdlog::info("libvirt {}: connected", options_.uri);
  backoff_.Reset();
  last_error_.clear();
  known_.clear();  // a new connection: re-apply stats periods
  return absl::OkStatus();
}

absl::StatusOr<std::vector<VmStatus>> LibvirtHypervisor::ListVms() {
  RETURN_IF_ERROR(EnsureConnected());
  virDomainPtr* domains = nullptr;
  int n = virConnectListAllDomains(conn_, &domains, VIR_CONNECT_LIST_DOMAINS_ACTIVE);
  if (n < 0) return LastError(absl::StrCat("libvirt ", options_.uri, ": listing domains"));
  std::vector<DomainHandle> handles;
  handles.reserve(static_cast<size_t>(n));
  for (int i = 0; i < n; ++i) handles.emplace_back(domains[i]);
  free(domains);

  std::vector<VmStatus> out;
  out.reserve(handles.size());
  std::map<std::string, std::optional<absl::Duration>> seen;
  for (const DomainHandle& dom : handles) {
    char uuid[VIR_UUID_STRING_BUFLEN] = {};
    if (virDomainGetUUIDString(dom.get(), uuid) != 0) {
      virResetLastError();
      continue;  // gone meanwhile
    }
    const char* name = virDomainGetName(dom.get());
    int state = 0;
    int reason = 0;
    if (virDomainGetState(dom.get(), &state, &reason, 0) != 0) {
      absl::Status st = LastError(absl::StrCat("domain ", uuid, ": state"));
      if (absl::IsUnavailable(st) && conn_ == nullptr) return st;
      continue;
    }
    if (state == VIR_DOMAIN_PAUSED &&
        (reason == VIR_DOMAIN_PAUSED_MIGRATION || reason == VIR_DOMAIN_PAUSED_POSTCOPY ||
         reason == VIR_DOMAIN_PAUSED_POSTCOPY_FAILED)) {
      spdlog::debug("libvirt: domain {} is migrating; leaving it out", uuid);
      continue;
    }
    if (state == VIR_DOMAIN_SHUTOFF || state == VIR_DOMAIN_CRASHED) continue;
    virDomainInfo info{};
    if (virDomainGetInfo(dom.get(), &info) != 0) {
      absl::Status st = LastError(absl::StrCat("domain ", uuid, ": info"));
      if (absl::IsUnavailable(st) && conn_ == nullptr) return st;
      continue;
    }
    VmStatus vm;
    vm.vm_id = uuid;
    vm.name = name != nullptr ? name : uuid;
    vm.max_bytes = KibToBytes(info.maxMem).value_or(0);
    vm.actual_bytes = KibToBytes(info.memory).value_or(0);
    vm.sizing.balloon = true;
    vm.sizing.boot_bytes = vm.max_bytes;
    vm.sizing.balloon_inflated_bytes =
        vm.max_bytes > vm.actual_bytes ? vm.max_bytes - vm.actual_bytes : 0;
    // Passthrough, hugepage or locked memory: read once per domain; the
    // XML of a domain with virtio-mem is read on every round (its devices
    // plug and unplug).
    const bool first_read = exclusions_.count(vm.vm_id) == 0;
    auto vmem_known = has_virtio_mem_.find(vm.vm_id);
    std::optional<std::string> domain_xml;
    if (first_read || vmem_known == has_virtio_mem_.end() || vmem_known->second) {
      char* xml = virDomainGetXMLDesc(dom.get(), 0);
      if (xml != nullptr) {
        domain_xml = xml;
        free(xml);
      } else {
        virResetLastError();
      }
    }
    if (first_read && domain_xml.has_value()) {
      const std::string reason = LibvirtExclusionReason(*domain_xml);
      exclusions_[vm.vm_id] = reason;
      free_page_reporting_[vm.vm_id] = LibvirtFreePageReporting(*domain_xml);
      no_balloon_[vm.vm_id] = !LibvirtHasBalloon(*domain_xml);
      if (!reason.empty()) spdlog::warn("libvirt: domain {} is not resized: {}", vm.name, reason);
    }
    std::vector<LibvirtVirtioMem> vmem_devices;
    if (domain_xml.has_value()) {
      absl::StatusOr<std::vector<LibvirtVirtioMem>> devs = LibvirtVirtioMemDevices(*domain_xml);
      if (devs.ok()) {
        vmem_devices = std::move(devs).value();
        has_virtio_mem_[vm.vm_id] = !vmem_devices.empty();
        virtio_mem_errors_.erase(vm.vm_id);
      } else {
        has_virtio_mem_[vm.vm_id] = true;  // read again next round
        std::string& logged = virtio_mem_errors_[vm.vm_id];
        if (logged != devs.status().message()) {
          logged = std::string(devs.status().message());
          spdlog::warn("libvirt: domain {}: {}; sized by its balloon alone", vm.name, logged);
        }
      }
    }
    auto excluded = exclusions_.find(vm.vm_id);
    if (excluded != exclusions_.end()) vm.sizing.excluded_reason = excluded->second;
    if (auto fpr = free_page_reporting_.find(vm.vm_id); fpr != free_page_reporting_.end()) {
      vm.free_page_reporting = fpr->second;
    }
    if (!options_.pid_dir.empty() && name != nullptr &&
        std::string(name).find('/') == std::string::npos) {
      absl::StatusOr<int64_t> pid = ReadPidFile(absl::StrCat(options_.pid_dir, "/", name, ".pid"));
      if (pid.ok()) vm.host_pid = *pid;
    }

    virDomainMemoryStatStruct stats[VIR_DOMAIN_MEMORY_STAT_NR];
    int count = virDomainMemoryStats(dom.get(), stats, VIR_DOMAIN_MEMORY_STAT_NR, 0);
    if (count < 0) {
      absl::Status st = LastError(absl::StrCat("domain ", vm.name, ": memory stats"));
      if (absl::IsUnavailable(st) && conn_ == nullptr) return st;
      spdlog::debug("libvirt: {}", std::string(st.message()));
    } else {
      std::optional<uint64_t> actual;
      vm.stats = LibvirtGuestStats(stats, std::min(count, int{VIR_DOMAIN_MEMORY_STAT_NR}), &actual);
      if (actual.has_value()) vm.actual_bytes = *actual;
    }

    if (!vmem_devices.empty()) {
      absl::Status st = SizeVirtioMem(dom.get(), vmem_devices, &vm);
      if (!st.ok()) {
        if (absl::IsUnavailable(st) && conn_ == nullptr) return st;
        spdlog::warn("libvirt: {}", std::string(st.message()));
      }
    } else {
      vmem_progress_.erase(vm.vm_id);
    }
    if (auto none = no_balloon_.find(vm.vm_id); none != no_balloon_.end() && none->second) {
      // No balloon: the domain has its boot memory and what virtio-mem
      // plugged; without virtio-mem either, nothing can resize it (the
      // agent reports it excluded).
      vm.sizing.balloon = false;
      vm.sizing.balloon_inflated_bytes = 0;
      vm.actual_bytes =
          std::min(vm.max_bytes, vm.sizing.boot_bytes + vm.sizing.virtio_mem_plugged_bytes);
      ExcludeIfNothingSizes(vm.sizing);
    }

    // A domain seen for the first time gets the stats period asked for.
    std::optional<absl::Duration> applied;
    auto known = known_.find(vm.vm_id);
    if (known != known_.end()) applied = known->second;
    if (stats_period_.has_value() && applied != stats_period_) {
      absl::Status st = ApplyStatsPeriod(dom.get(), vm.vm_id, *stats_period_);
      if (!st.ok()) {
        if (absl::IsUnavailable(st) && conn_ == nullptr) return st;
        spdlog::warn("libvirt: {}", std::string(st.message()));
      }
      applied = stats_period_;  // do not retry a refused period every round
    }
    seen[vm.vm_id] = applied;
    out.push_back(std::move(vm));
  }
  for (auto it = exclusions_.begin(); it != exclusions_.end();) {
    it = seen.count(it->first) == 0 ? exclusions_.erase(it) : std::next(it);
  }
  for (auto it = free_page_reporting_.begin(); it != free_page_reporting_.end();) {
    it = seen.count(it->first) == 0 ? free_page_reporting_.erase(it) : std::next(it);
  }
  for (auto it = no_balloon_.begin(); it != no_balloon_.end();) {
    it = seen.count(it->first) == 0 ? no_balloon_.erase(it) : std::next(it);
  }
  for (auto it = has_virtio_mem_.begin(); it != has_virtio_mem_.end();) {
    it = seen.count(it->first) == 0 ? has_virtio_mem_.erase(it) : std::next(it);
  }
  for (auto it = vmem_progress_.begin(); it != vmem_progress_.end();) {
    it = seen.count(it->first) == 0 ? vmem_progress_.erase(it) : std::next(it);
  }
  for (auto it = virtio_mem_errors_.begin(); it != virtio_mem_errors_.end();) {
    it = seen.count(it->first) == 0 ? virtio_mem_errors_.erase(it) : std::next(it);
  }
  known_ = std::move(seen);
  return out;
}

absl::Status LibvirtHypervisor::SizeVirtioMem(virDomainPtr dom,
                                              const std::vector<LibvirtVirtioMem>& devices,
                                              VmStatus* vm) {
  if (!FillVirtioMemSizing(devices, vm)) return absl::OkStatus();
  VmSizing& sizing = vm->sizing;
  const absl::Time now = clock_->MonotonicNow();
  auto [it, added] = vmem_progress_.try_emplace(vm->vm_id);
  VirtioMemProgress& p = it->second;
  if (added || p.plugged != sizing.virtio_mem_plugged_bytes ||
      sizing.virtio_mem_plugged_bytes == sizing.virtio_mem_requested_bytes) {
    p.plugged = sizing.virtio_mem_plugged_bytes;
    p.since = now;
  }
  if (p.stalled || sizing.virtio_mem_plugged_bytes == sizing.virtio_mem_requested_bytes ||
      now - p.since < options_.virtio_mem_stall_timeout) {
    sizing.shortfall_reason = p.stalled ? p.reason : "";
    return absl::OkStatus();
  }
  p.stalled = true;
  const uint64_t plugged = sizing.virtio_mem_plugged_bytes;
  const uint64_t requested = sizing.virtio_mem_requested_bytes;
  if (plugged < requested) {
    p.reason =
        absl::StrCat("virtio-mem plug stalled at ", Mib(plugged), " plugged of ", Mib(requested),
                     " requested (virtio_mem driver missing or memory not onlined in "
                     "the guest)");
  } else {
    p.reason = absl::StrCat("virtio-mem unplug stalled at ", Mib(plugged), " plugged of ",
                            Mib(requested), " requested (unmovable guest pages)");
    // Stop asking: what the devices keep is now the balloon's to take.
    for (size_t i = 0; i < devices.size(); ++i) {
      const LibvirtVirtioMem& d = devices[i];
      if (d.current_bytes <= d.requested_bytes) continue;
      const std::string update = LibvirtVirtioMemWithRequest(d, d.current_bytes);
      if (virDomainUpdateDeviceFlags(dom, update.c_str(), VIR_DOMAIN_AFFECT_LIVE) != 0) {
        absl::Status st = LastError(
            absl::StrCat("domain ", vm->vm_id, ": cancelling the unplug of virtio-mem device ", i));
        if (absl::IsUnavailable(st) && conn_ == nullptr) return st;
        absl::StrAppend(&p.reason, "; ", st.message());
      }
    }
    const uint64_t target = p.target.value_or(sizing.boot_bytes + plugged);
    const uint64_t sized = sizing.boot_bytes + plugged;
    const uint64_t remainder = std::min(sized > target ? sized - target : 0, sizing.boot_bytes);
    if (remainder > 0) {
      absl::StrAppend(&p.reason, "; the balloon takes the remaining ", Mib(remainder));
      const uint64_t balloon_kib = std::max<uint64_t>((sizing.boot_bytes - remainder) / 1024, 1);
      if (virDomainSetMemoryFlags(dom, static_cast<unsigned long>(balloon_kib),
                                  VIR_DOMAIN_AFFECT_LIVE) != 0) {
        absl::Status st = LastError(absl::StrCat("domain ", vm->vm_id, ": setting the balloon"));
        if (absl::IsUnavailable(st) && conn_ == nullptr) return st;
        absl::StrAppend(&p.reason, "; ", st.message());
      }
    }
  }
  spdlog::warn("libvirt: domain {}: {}", vm->name, p.reason);
  sizing.shortfall_reason = p.reason;
  return absl::OkStatus();
}

absl::StatusOr<virDomainPtr> LibvirtHypervisor::LookupDomain(const std::string& vm_id) {
  RETURN_IF_ERROR(EnsureConnected());
  virDomainPtr dom = virDomainLookupByUUIDString(conn_, vm_id.c_str());
  if (dom == nullptr) {
    absl::Status st = LastError(absl::StrCat("domain ", vm_id));
    if (absl::IsInvalidArgument(st)) {
      return absl::NotFoundError(absl::StrCat("domain ", vm_id, ": not a valid UUID"));
    }
    return st;
  }
  int active = virDomainIsActive(dom);
  if (active != 1) {
    absl::Status st = active < 0
                          ? LastError(absl::StrCat("domain ", vm_id))
                          : absl::NotFoundError(absl::StrCat("domain ", vm_id, " is not running"));
    virDomainFree(dom);
    return st;
  }
  return dom;
}

absl::Status LibvirtHypervisor::SetBalloonTarget(const std::string& vm_id, uint64_t target_bytes) {
  uint64_t target_kib = target_bytes / 1024;
  if (target_kib == 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("target_bytes: ", target_bytes, " for domain ", vm_id, " is below 1 KiB"));
  }
  ASSIGN_OR_RETURN(virDomainPtr raw, LookupDomain(vm_id));
  DomainHandle dom(raw);
  virDomainInfo info{};
  if (virDomainGetInfo(dom.get(), &info) != 0) {
    return LastError(absl::StrCat("domain ", vm_id, ": info"));
  }
  if (target_kib > info.maxMem) {
    return absl::InvalidArgumentError(absl::StrCat("target_bytes: ", target_bytes,
                                                   " is above domain ", vm_id, "'s max of ",
                                                   KibToBytes(info.maxMem).value_or(0)));
  }
  auto excluded = exclusions_.find(vm_id);
  if (excluded != exclusions_.end() && !excluded->second.empty()) {
    if (target_kib < info.memory) {
      return absl::FailedPreconditionError(
          absl::StrCat("domain ", vm_id, " is not resized: ", excluded->second));
    }
    return absl::OkStatus();  // Left alone: it already has at least that.
  }
  // virtio-mem for whole blocks above boot memory, the balloon for the rest.
  const auto none = no_balloon_.find(vm_id);
  const bool no_balloon = none != no_balloon_.end() && none->second;
  char* xml = virDomainGetXMLDesc(dom.get(), 0);
  if (xml == nullptr) return LastError(absl::StrCat("domain ", vm_id, ": XML"));
  absl::StatusOr<std::vector<LibvirtVirtioMem>> devices = LibvirtVirtioMemDevices(xml);
  free(xml);
  const uint64_t total_bytes = KibToBytes(info.maxMem).value_or(0);
  if (!devices.ok()) {
    spdlog::warn("libvirt: domain {}: {}; sizing it by its balloon alone", vm_id,
                 std::string(devices.status().message()));
  } else if (!devices->empty() && SumVirtioMem(*devices).size < total_bytes) {
    const uint64_t boot_bytes = total_bytes - SumVirtioMem(*devices).size;
    LibvirtVirtioMemSplit split = SplitLibvirtVirtioMemTarget(target_bytes, boot_bytes, *devices);
    VirtioMemProgress& p = vmem_progress_[vm_id];
    const bool same_target = p.target == target_bytes;
    if (same_target && p.stalled) {
      // Do not retry the stall: the devices keep their request and the
      // balloon takes what they hold above the target.
      uint64_t sized = boot_bytes;
      for (size_t i = 0; i < devices->size(); ++i) {
        split.requested_bytes[i] = (*devices)[i].requested_bytes;
        sized += std::max((*devices)[i].requested_bytes, (*devices)[i].current_bytes);
      }
      split.inflate_bytes = std::min(sized > target_bytes ? sized - target_bytes : 0, boot_bytes);
    } else if (!same_target) {
      // The stall timer starts over from the size now.
      p.stalled = false;
      p.reason.clear();
      p.plugged = SumVirtioMem(*devices).current;
      p.since = clock_->MonotonicNow();
    }
    p.target = target_bytes;
    for (size_t i = 0; i < devices->size(); ++i) {
      const LibvirtVirtioMem& d = (*devices)[i];
      if (split.requested_bytes[i] == d.requested_bytes) continue;
      const std::string update = LibvirtVirtioMemWithRequest(d, split.requested_bytes[i]);
      if (virDomainUpdateDeviceFlags(dom.get(), update.c_str(), VIR_DOMAIN_AFFECT_LIVE) != 0) {
        return LastError(absl::StrCat("domain ", vm_id, ": requesting ",
                                      split.requested_bytes[i] / 1024, " KiB of virtio-mem device ",
                                      i));
      }
    }
    target_kib = (boot_bytes - split.inflate_bytes) / 1024;
    if (target_kib == 0) target_kib = 1;
    if (no_balloon) return absl::OkStatus();  // virtio-mem alone, to its blocks
  }
  if (no_balloon) {
    return absl::FailedPreconditionError(absl::StrCat(
        "domain ", vm_id, " has no balloon (<memballoon model='none'>) and no virtio-mem device"));
  }
  if (virDomainSetMemoryFlags(dom.get(), static_cast<unsigned long>(target_kib),
                              VIR_DOMAIN_AFFECT_LIVE) != 0) {
    return LastError(
        absl::StrCat("domain ", vm_id, ": setting the balloon to ", target_kib, " KiB"));
  }
  return absl::OkStatus();
}

absl::Status LibvirtHypervisor::ApplyStatsPeriod(virDomainPtr dom, const std::string& vm_id,
                                                 absl::Duration period) {
  int seconds = static_cast<int>(absl::ToInt64Seconds(period));
  if (virDomainSetMemoryStatsPeriod(dom, seconds, VIR_DOMAIN_AFFECT_LIVE) != 0) {
    return LastError(
        absl::StrCat("domain ", vm_id, ": setting the stats period to ", seconds, " s"));
  }
  return absl::OkStatus();
}

absl::Status LibvirtHypervisor::SetStatsPeriod(const std::string& vm_id, absl::Duration period) {
  if (period < absl::ZeroDuration() || period > absl::Hours(24)) {
    return absl::InvalidArgumentError(
        absl::StrCat("stats period: ", absl::FormatDuration(period), " is not within [0, 24h]"));
  }
  absl::Duration rounded = absl::Ceil(period, absl::Seconds(1));
  ASSIGN_OR_RETURN(virDomainPtr raw, LookupDomain(vm_id));
  DomainHandle dom(raw);
  RETURN_IF_ERROR(ApplyStatsPeriod(dom.get(), vm_id, rounded));
  known_[vm_id] = rounded;
  stats_period_ = rounded;
  return absl::OkStatus();
}

namespace {

// The XML without its comments (an unterminated comment ends it).
std::string StripXmlComments(const std::string& domain_xml) {
  std::string xml;
  xml.reserve(domain_xml.size());
  for (size_t i = 0; i < domain_xml.size();) {
    if (domain_xml.compare(i, 4, "<!--") == 0) {
      size_t end = domain_xml.find("-->", i + 4);
      if (end == std::string::npos) break;
      i = end + 3;
    } else {
      xml.push_back(domain_xml[i++]);
    }
  }
  return xml;
}

// The position of the element start "<name" followed by a delimiter (not
// "<hostdevX") in [from, to) of `xml`; npos when none.
size_t FindTag(const std::string& xml, const std::string& name, size_t from, size_t to) {
  const std::string open = "<" + name;
  for (size_t at = xml.find(open, from); at != std::string::npos && at < to;
       at = xml.find(open, at + 1)) {
    const size_t after = at + open.size();
    if (after < xml.size() && std::string(" \t\r\n/>").find(xml[after]) != std::string::npos) {
      return at;
    }
  }
  return std::string::npos;
}

}  // namespace

std::string LibvirtExclusionReason(const std::string& domain_xml) {
  const std::string xml = StripXmlComments(domain_xml);
  const size_t devices = FindTag(xml, "devices", 0, xml.size());
  if (devices != std::string::npos) {
    const size_t end = xml.find("</devices>", devices);
    const size_t hostdev =
        FindTag(xml, "hostdev", devices, end == std::string::npos ? xml.size() : end);
    if (hostdev != std::string::npos) {
      return "PCI passthrough: the domain has a <hostdev> (VFIO pins guest memory)";
    }
  }
  const size_t backing = FindTag(xml, "memoryBacking", 0, xml.size());
  if (backing != std::string::npos) {
    size_t end = xml.find("</memoryBacking>", backing);
    if (end == std::string::npos) end = backing;  // <memoryBacking/>: empty
    if (FindTag(xml, "hugepages", backing, end) != std::string::npos) {
      return "hugepage-backed memory: <memoryBacking><hugepages/>";
    }
    if (FindTag(xml, "locked", backing, end) != std::string::npos) {
      return "locked memory: <memoryBacking><locked/>";
    }
  }
  return "";
}

namespace {

// The value of attribute `attr` in a start tag's text (name = 'value' or
// "value"); empty when absent or unterminated.
std::optional<std::string> AttributeValue(const std::string& tag, const std::string& attr) {
  for (size_t at = tag.find(attr); at != std::string::npos; at = tag.find(attr, at + 1)) {
    if (at == 0 || std::string(" \t\r\n").find(tag[at - 1]) == std::string::npos) continue;
    size_t i = at + attr.size();
    while (i < tag.size() && std::string(" \t\r\n").find(tag[i]) != std::string::npos) ++i;
    if (i >= tag.size() || tag[i] != '=') continue;
    ++i;
    while (i < tag.size() && std::string(" \t\r\n").find(tag[i]) != std::string::npos) ++i;
    if (i >= tag.size() || (tag[i] != '\'' && tag[i] != '"')) continue;
    const char quote = tag[i];
    const size_t close = tag.find(quote, i + 1);
    if (close == std::string::npos) return std::nullopt;
    return tag.substr(i + 1, close - i - 1);
  }
  return std::nullopt;
}

// Bytes per unit of libvirt's memory `unit` attribute (KiB when absent);
// 0 for an unknown unit.
uint64_t UnitScale(const std::optional<std::string>& unit) {
  if (!unit.has_value()) return 1024;
  static const std::map<std::string, uint64_t>* const kUnits = new std::map<std::string, uint64_t>{
      {"b", 1},
      {"bytes", 1},
      {"KB", 1000},
      {"k", 1024},
      {"KiB", 1024},
      {"MB", 1000 * 1000},
      {"M", uint64_t{1} << 20},
      {"MiB", uint64_t{1} << 20},
      {"GB", 1000 * 1000 * 1000},
      {"G", uint64_t{1} << 30},
      {"GiB", uint64_t{1} << 30},
      {"TB", uint64_t{1000} * 1000 * 1000 * 1000},
      {"T", uint64_t{1} << 40},
      {"TiB", uint64_t{1} << 40},
  };
  auto it = kUnits->find(*unit);
  return it == kUnits->end() ? 0 : it->second;
}

// The value of element `name` in [from, to) of `xml`, in bytes. NOT_FOUND
// when absent, INVALID_ARGUMENT when malformed or overflowing.
absl::StatusOr<uint64_t> ElementBytes(const std::string& xml, const std::string& name, size_t from,
                                      size_t to) {
  const size_t at = FindTag(xml, name, from, to);
  if (at == std::string::npos) return absl::NotFoundError(absl::StrCat("no <", name, ">"));
  const size_t tag_end = xml.find('>', at);
  if (tag_end == std::string::npos || tag_end >= to || xml[tag_end - 1] == '/') {
    return absl::InvalidArgumentError(absl::StrCat("<", name, "> has no value"));
  }
  const size_t close = xml.find("</" + name + ">", tag_end);
  if (close == std::string::npos || close > to) {
    return absl::InvalidArgumentError(absl::StrCat("<", name, "> is not closed"));
  }
  const uint64_t scale = UnitScale(AttributeValue(xml.substr(at, tag_end - at), "unit"));
  if (scale == 0) return absl::InvalidArgumentError(absl::StrCat("<", name, ">: unknown unit"));
  std::string text = xml.substr(tag_end + 1, close - tag_end - 1);
  const size_t first = text.find_first_not_of(" \t\r\n");
  const size_t last = text.find_last_not_of(" \t\r\n");
  text = first == std::string::npos ? "" : text.substr(first, last - first + 1);
  if (text.empty() || text.find_first_not_of("0123456789") != std::string::npos) {
    return absl::InvalidArgumentError(
        absl::StrCat("<", name, ">: '", text.substr(0, 32), "' is not a whole number"));
  }
  uint64_t value = 0;
  for (char c : text) {
    const uint64_t digit = static_cast<uint64_t>(c - '0');
    if (value > (std::numeric_limits<uint64_t>::max() - digit) / 10) {
      return absl::InvalidArgumentError(absl::StrCat("<", name, ">: too large"));
    }
    value = value * 10 + digit;
  }
  if (value > std::numeric_limits<uint64_t>::max() / scale) {
    return absl::InvalidArgumentError(absl::StrCat("<", name, ">: too large"));
  }
  return value * scale;
}

}  // namespace

namespace {

// The opening tag of the domain's <memballoon> inside <devices> (comments
// removed), or nullopt when there is none or it is not closed.
std::optional<std::string> MemballoonTag(const std::string& domain_xml) {
  const std::string xml = StripXmlComments(domain_xml);
  const size_t devices = FindTag(xml, "devices", 0, xml.size());
  if (devices == std::string::npos) return std::nullopt;
  size_t end = xml.find("</devices>", devices);
  if (end == std::string::npos) end = xml.size();
  const size_t balloon = FindTag(xml, "memballoon", devices, end);
  if (balloon == std::string::npos) return std::nullopt;
  const size_t tag_end = xml.find('>', balloon);
  if (tag_end == std::string::npos) return std::nullopt;
  return xml.substr(balloon, tag_end - balloon);
}

}  // namespace

bool LibvirtFreePageReporting(const std::string& domain_xml) {
  const std::optional<std::string> tag = MemballoonTag(domain_xml);
  return tag.has_value() && AttributeValue(*tag, "freePageReporting") == "on";
}

bool LibvirtHasBalloon(const std::string& domain_xml) {
  const std::optional<std::string> tag = MemballoonTag(domain_xml);
  return !tag.has_value() || AttributeValue(*tag, "model") != "none";
}

absl::StatusOr<std::vector<LibvirtVirtioMem>> LibvirtVirtioMemDevices(
    const std::string& domain_xml) {
  std::vector<LibvirtVirtioMem> out;
  const std::string xml = StripXmlComments(domain_xml);
  const size_t devices = FindTag(xml, "devices", 0, xml.size());
  if (devices == std::string::npos) return out;
  size_t end = xml.find("</devices>", devices);
  if (end == std::string::npos) end = xml.size();
  for (size_t at = FindTag(xml, "memory", devices, end); at != std::string::npos;
       at = FindTag(xml, "memory", at + 1, end)) {
    const size_t tag_end = xml.find('>', at);
    if (tag_end == std::string::npos || tag_end >= end) break;
    if (AttributeValue(xml.substr(at, tag_end - at), "model") != "virtio-mem") continue;
    const std::string which = absl::StrCat("virtio-mem device ", out.size());
    if (xml[tag_end - 1] == '/') {
      return absl::InvalidArgumentError(absl::StrCat(which, ": empty <memory/>"));
    }
    const size_t close = xml.find("</memory>", tag_end);
    if (close == std::string::npos || close > end) {
      return absl::InvalidArgumentError(absl::StrCat(which, ": <memory> is not closed"));
    }
    LibvirtVirtioMem dev;
    dev.xml = xml.substr(at, close + std::string("</memory>").size() - at);
    struct Field {
      const char* name;
      uint64_t* value;
      bool required;
    };
    bool has_current = true;
    for (const Field& f :
         {Field{"size", &dev.size_bytes, true}, Field{"block", &dev.block_bytes, true},
          Field{"requested", &dev.requested_bytes, true},
          Field{"current", &dev.current_bytes, false}}) {
      absl::StatusOr<uint64_t> v = ElementBytes(xml, f.name, tag_end, close);
      if (!v.ok() && absl::IsNotFound(v.status()) && !f.required) {
        has_current = false;
        continue;
      }
      if (!v.ok()) {
        return absl::InvalidArgumentError(absl::StrCat(which, ": ", v.status().message()));
      }
      *f.value = *v;
    }
    if (!has_current) dev.current_bytes = dev.requested_bytes;
    if (dev.block_bytes == 0) {
      return absl::InvalidArgumentError(absl::StrCat(which, ": <block> is zero"));
    }
    if (dev.requested_bytes > dev.size_bytes || dev.current_bytes > dev.size_bytes) {
      return absl::InvalidArgumentError(
          absl::StrCat(which, ": <requested> or <current> is above <size>"));
    }
    out.push_back(std::move(dev));
  }
  return out;
}

LibvirtVirtioMemSplit SplitLibvirtVirtioMemTarget(uint64_t target_bytes, uint64_t boot_bytes,
                                                  const std::vector<LibvirtVirtioMem>& devices) {
  LibvirtVirtioMemSplit split;
  uint64_t left = target_bytes > boot_bytes ? target_bytes - boot_bytes : 0;
  uint64_t sized = boot_bytes;
  for (const LibvirtVirtioMem& dev : devices) {
    uint64_t request = 0;
    if (left > 0 && dev.block_bytes > 0) {
      const uint64_t blocks = left / dev.block_bytes + (left % dev.block_bytes != 0 ? 1 : 0);
      const uint64_t max_blocks = dev.size_bytes / dev.block_bytes;
      request = std::min(blocks, max_blocks) * dev.block_bytes;
    }
    split.requested_bytes.push_back(request);
    left -= std::min(left, request);
    sized += request;
  }
  const uint64_t over = sized > target_bytes ? sized - target_bytes : 0;
  split.inflate_bytes = std::min(over, boot_bytes);
  return split;
}

std::string LibvirtVirtioMemWithRequest(const LibvirtVirtioMem& device, uint64_t requested_bytes) {
  const std::string& xml = device.xml;
  const std::string element =
      absl::StrCat("<requested unit='KiB'>", requested_bytes / 1024, "</requested>");
  const size_t at = FindTag(xml, "requested", 0, xml.size());
  const size_t close = at == std::string::npos ? std::string::npos : xml.find("</requested>", at);
  if (close == std::string::npos) return xml;  // parsed devices always have one
  return absl::StrCat(xml.substr(0, at), element,
                      xml.substr(close + std::string("</requested>").size()));
}

absl::StatusOr<std::unique_ptr<Hypervisor>> MakeLibvirtHypervisor(const std::string& uri,
                                                                  Clock* clock) {
  LibvirtHypervisorOptions options;
  if (!uri.empty()) options.uri = uri;
  // Only libvirt's QEMU driver writes pid files there.
  if (absl::StartsWith(options.uri, "qemu")) options.pid_dir = "/run/libvirt/qemu";
  ASSIGN_OR_RETURN(std::unique_ptr<LibvirtHypervisor> libvirt,
                   LibvirtHypervisor::Create(std::move(options), clock));
  return std::unique_ptr<Hypervisor>(std::move(libvirt));
}

}  // namespace membroker::agent

#include "node-agent/hypervisor/qmp_hypervisor.h"

#include <dirent.h>
#include <glob.h>
#include <sys/stat.h>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <set>
#include <sstream>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/logging.h"
#include "common/status.h"

namespace membroker::agent {
namespace {

using google::protobuf::Struct;
using google::protobuf::Value;

constexpr char kDefaultBalloonPath[] = "/machine/peripheral/balloon0";
constexpr double kMaxExactDouble = 9007199254740992.0;  // 2^53

bool IsGlob(const std::string& s) { return s.find_first_of("*?[") != std::string::npos; }

bool IsSocket(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0 && S_ISSOCK(st.st_mode);
}

bool IsDirectory(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

std::string Basename(const std::string& path) {
  size_t slash = path.find_last_of('/');
  return slash == std::string::npos ? path : path.substr(slash + 1);
}

// True for errors after which the connection is gone.
bool IsConnectionError(const absl::Status& status) {
  return absl::IsUnavailable(status) || absl::IsDataLoss(status);
}

Struct Args(std::initializer_list<std::pair<const char*, Value>> fields) {
  Struct s;
  for (const auto& [k, v] : fields) (*s.mutable_fields())[k] = v;
  return s;
}

Value StringValue(const std::string& s) {
  Value v;
  v.set_string_value(s);
  return v;
}

// A device under /machine/peripheral or /machine/peripheral-anon.
struct Peripheral {
  std::string path;  // its QOM path
  std::string name;
  std::string type;  // "child<TYPE>"
};

// The first peripheral whose QOM type starts with `type_prefix` (e.g.
// "child<virtio-balloon"); nullopt when none. A connection error is
// returned; any other failed or malformed listing is skipped.
absl::StatusOr<std::optional<Peripheral>> FindPeripheral(QmpClient& client,
                                                         absl::string_view type_prefix) {
  for (const char* parent : {"/machine/peripheral", "/machine/peripheral-anon"}) {
    Struct list_args = Args({{"path", StringValue(parent)}});
    auto children = client.Execute("qom-list", &list_args);
    if (!children.ok()) {
      if (IsConnectionError(children.status())) return children.status();
      continue;
    }
    if (children->kind_case() != Value::kListValue) continue;
    for (const Value& child : children->list_value().values()) {
      if (child.kind_case() != Value::kStructValue) continue;
      const auto& f = child.struct_value().fields();
      auto n = f.find("name");
      auto t = f.find("type");
      if (n == f.end() || t == f.end() || n->second.kind_case() != Value::kStringValue ||
          t->second.kind_case() != Value::kStringValue) {
        continue;
      }
      if (absl::StartsWith(t->second.string_value(), type_prefix)) {
        return Peripheral{absl::StrCat(parent, "/", n->second.string_value()),
                          n->second.string_value(), t->second.string_value()};
      }
    }
  }
  return std::nullopt;
}

Value NumberValue(double d) {
  Value v;
  v.set_number_value(d);
  return v;
}

uint64_t Fnv1a64(const std::string& s, uint64_t basis) {
  uint64_t h = basis;
  for (unsigned char c : s) {
    h ^= c;
    h *= 1099511628211ULL;
  }
  return h;
}

constexpr uint64_t kMiB = uint64_t{1} << 20;

std::string Mib(uint64_t bytes) { return absl::StrFormat("%.1f MiB", bytes / 1048576.0); }

uint64_t RoundUpTo(uint64_t value, uint64_t block) {
  if (block == 0) return value;
  const uint64_t r = value % block;
  return r == 0 ? value : value + (block - r);
}

// Reads a whole small file (at most 1 MiB); empty when it cannot.
std::string ReadSmallFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return "";
  std::string out(1 << 20, '\0');
  in.read(out.data(), static_cast<std::streamsize>(out.size()));
  out.resize(static_cast<size_t>(in.gcount()));
  return out;
}

// The balloon's free-page-reporting property (QEMU 5.1 and later). A
// connection error is returned; a QEMU without the property, an error
// reply or a value that is not a boolean reads as off.
absl::StatusOr<bool> ReadFreePageReporting(QmpClient& client, const std::string& balloon_path,
                                           const std::string& socket_path) {
  Struct args =
      Args({{"path", StringValue(balloon_path)}, {"property", StringValue("free-page-reporting")}});
  auto reply = client.Execute("qom-get", &args);
  if (!reply.ok()) {
    if (IsConnectionError(reply.status())) return reply.status();
    spdlog::debug("qmp {}: free-page-reporting: {}; taken as off", socket_path,
                  std::string(reply.status().message()));
    return false;
  }
  if (reply->kind_case() != Value::kBoolValue) {
    spdlog::warn("qmp {}: free-page-reporting of {} is not a boolean; taken as off", socket_path,
                 balloon_path);
    return false;
  }
  return reply->bool_value();
}

}  // namespace

std::optional<uint64_t> QmpUint(const Struct& object, const std::string& key) {
  auto it = object.fields().find(key);
  if (it == object.fields().end() || it->second.kind_case() != Value::kNumberValue) {
    return std::nullopt;
  }
  double d = it->second.number_value();
  if (!std::isfinite(d) || d < 0 || d > kMaxExactDouble || std::floor(d) != d) {
    return std::nullopt;
  }
  return static_cast<uint64_t>(d);
}

absl::StatusOr<std::vector<VirtioMemDevice>> ParseQmpVirtioMemDevices(
    const Value& value, std::vector<std::string>* problems) {
  if (value.kind_case() != Value::kListValue) {
    return absl::InvalidArgumentError("query-memory-devices reply is not a list");
  }
  std::vector<VirtioMemDevice> out;
  auto problem = [problems](std::string text) {
    if (problems != nullptr) problems->push_back(std::move(text));
  };
  int index = -1;
  for (const Value& entry : value.list_value().values()) {
    ++index;
    if (entry.kind_case() != Value::kStructValue) {
      problem(absl::StrCat("memory device ", index, ": not an object"));
      continue;
    }
    const auto& f = entry.struct_value().fields();
    auto type = f.find("type");
    if (type == f.end() || type->second.kind_case() != Value::kStringValue) {
      problem(absl::StrCat("memory device ", index, ": no type"));
      continue;
    }
    if (type->second.string_value() != "virtio-mem") continue;
    auto data = f.find("data");
    if (data == f.end() || data->second.kind_case() != Value::kStructValue) {
      problem(absl::StrCat("virtio-mem device ", index, ": no data object"));
      continue;
    }
    const Struct& d = data->second.struct_value();
    auto id = d.fields().find("id");
    if (id == d.fields().end() || id->second.kind_case() != Value::kStringValue ||
        id->second.string_value().empty() || id->second.string_value().size() > 128 ||
        id->second.string_value().find('/') != std::string::npos) {
      problem(absl::StrCat("virtio-mem device ", index,
                           ": no usable id (give the device an id= to let the agent drive it)"));
      continue;
    }
    VirtioMemDevice dev;
    dev.id = id->second.string_value();
    auto memdev = d.fields().find("memdev");
    if (memdev != d.fields().end() && memdev->second.kind_case() == Value::kStringValue) {
      dev.memdev = memdev->second.string_value();
    }
    std::optional<uint64_t> size = QmpUint(d, "size");
    std::optional<uint64_t> requested = QmpUint(d, "requested-size");
    std::optional<uint64_t> max_size = QmpUint(d, "max-size");
    std::optional<uint64_t> block = QmpUint(d, "block-size");
    if (!size || !requested || !max_size || !block) {
      problem(absl::StrCat("virtio-mem device ", dev.id,
                           ": size, requested-size, max-size and block-size must be "
                           "non-negative integers"));
      continue;
    }
    if (*block == 0 || (*block & (*block - 1)) != 0) {
      problem(absl::StrCat("virtio-mem device ", dev.id, ": block-size ", *block,
                           " is not a positive power of two"));
      continue;
    }
    if (*size > *max_size || *requested > *max_size) {
      problem(absl::StrCat("virtio-mem device ", dev.id, ": size ", *size, " or requested-size ",
                           *requested, " above max-size ", *max_size));
      continue;
    }
    dev.size = *size;
    dev.requested_size = *requested;
    dev.max_size = *max_size;
    dev.block_size = *block;
    out.push_back(std::move(dev));
  }
  return out;
}

absl::StatusOr<GuestMemoryStats> ParseQmpGuestStats(const Value& value) {
  if (value.kind_case() != Value::kStructValue) {
    return absl::InvalidArgumentError("guest-stats is not a JSON object");
  }
  const Struct& top = value.struct_value();
  GuestMemoryStats out;
  std::optional<uint64_t> last_update = QmpUint(top, "last-update");
  if (last_update.has_value() && *last_update > 0) {
    out.last_update = absl::FromUnixSeconds(static_cast<int64_t>(*last_update));
  }
  auto stats_it = top.fields().find("stats");
  if (stats_it == top.fields().end() || stats_it->second.kind_case() != Value::kStructValue) {
    return out;
  }
  const Struct& stats = stats_it->second.struct_value();
  out.total_bytes = QmpUint(stats, "stat-total-memory");
  out.available_bytes = QmpUint(stats, "stat-available-memory");
  // The guest's MemAvailable is what libvirt calls "usable".
  out.usable_bytes = out.available_bytes;
  out.free_bytes = QmpUint(stats, "stat-free-memory");
  out.disk_caches_bytes = QmpUint(stats, "stat-disk-caches");
  out.swap_in_bytes_total = QmpUint(stats, "stat-swap-in");
  out.swap_out_bytes_total = QmpUint(stats, "stat-swap-out");
  out.major_faults_total = QmpUint(stats, "stat-major-faults");
  out.minor_faults_total = QmpUint(stats, "stat-minor-faults");
  return out;
}

std::string QmpIdFromPath(const std::string& path) {
  uint64_t hi = Fnv1a64(path, 14695981039346656037ULL);
  uint64_t lo = Fnv1a64(absl::StrCat("membroker-qmp:", path), 0x6c62272e07bb0142ULL);
  // Mark it as a version 8 (custom) UUID of the RFC 4122 variant.
  hi = (hi & ~0xF000ULL) | 0x8000ULL;
  lo = (lo & 0x3FFFFFFFFFFFFFFFULL) | 0x8000000000000000ULL;
  return absl::StrFormat("%08x-%04x-%04x-%04x-%012x", hi >> 32, (hi >> 16) & 0xFFFF, hi & 0xFFFF,
                         lo >> 48, lo & 0xFFFFFFFFFFFFULL);
}

// One QEMU process behind one socket.
struct QmpHypervisor::Vm {
  Vm(std::string socket_path, const membroker::BackoffParams& params, uint64_t seed)
      : path(std::move(socket_path)), backoff(params, seed) {}

  std::string path;
  std::unique_ptr<QmpClient> client;
  // Identity, learned once per connection.
  bool identified = false;
  std::string vm_id;
  std::string name;
  uint64_t max_bytes = 0;
  std::string balloon_path;  // empty: no balloon device
  // The balloon's free-page-reporting property, read once per connection.
  bool free_page_reporting = false;
  // Boot memory (base plus non-virtio-mem hot-plugged memory).
  uint64_t boot_bytes = 0;
  // The virtio-mem device driven (empty id: none) as last read.
  VirtioMemDevice vmem;
  // Stall tracking of the device's request: the size and monotonic time
  // of its last progress; set once the request has stalled.
  uint64_t vmem_ref_size = 0;
  absl::Time vmem_ref_time;
  bool vmem_stalled = false;
  // The last target asked for, and what the balloon is to hold out of it.
  std::optional<uint64_t> target;
  uint64_t balloon_inflate = 0;
  // Why sizing falls short of the target, and why the VM is excluded.
  std::string shortfall_reason;
  std::string excluded_reason;
  // QEMU's pid (SO_PEERCRED of the connection), learned per connection.
  std::optional<int64_t> pid;
  // Balloon actual from the last query-balloon or BALLOON_CHANGE event.
  std::optional<uint64_t> actual_bytes;
  // Stats period asked for this VM, and the one applied on this connection.
  std::optional<absl::Duration> wanted_period;
  std::optional<absl::Duration> applied_period;
  // Reconnection attempts.
  membroker::Backoff backoff;
  std::string last_error;
};

namespace {

membroker::BackoffParams QmpBackoffParams(const QmpHypervisorOptions& options) {
  return membroker::DoublingBackoff(options.min_backoff, options.max_backoff,
                                    options.backoff_jitter);
}

}  // namespace

QmpHypervisor::QmpHypervisor(QmpHypervisorOptions options, Clock* clock)
    : options_(std::move(options)), clock_(clock) {}

QmpHypervisor::~QmpHypervisor() = default;

absl::StatusOr<std::unique_ptr<QmpHypervisor>> QmpHypervisor::Create(QmpHypervisorOptions options,
                                                                     Clock* clock) {
  if (clock == nullptr) return absl::InvalidArgumentError("qmp backend needs a clock");
  if (options.sockets_or_globs.empty() && options.socket_dir.empty()) {
    return absl::InvalidArgumentError(
        "--qmp-socket or --qmp-socket-dir: at least one socket, directory or glob");
  }
  for (const std::string& entry : options.sockets_or_globs) {
    if (entry.empty()) return absl::InvalidArgumentError("--qmp-socket: empty entry");
  }
  if (options.min_backoff <= absl::ZeroDuration() || options.max_backoff < options.min_backoff) {
    return absl::InvalidArgumentError(
        "qmp backoff: min_backoff must be positive and at most max_backoff");
  }
  RETURN_IF_ERROR(ValidateBackoffParams(QmpBackoffParams(options), "qmp backoff"));
  if (options.client.max_message_bytes < 1024 ||
      options.client.io_timeout <= absl::ZeroDuration() ||
      options.client.max_events_per_reply < 1) {
    return absl::InvalidArgumentError(
        "qmp client limits: max_message_bytes >= 1024, io_timeout > 0, "
        "max_events_per_reply >= 1");
  }
  return std::unique_ptr<QmpHypervisor>(new QmpHypervisor(std::move(options), clock));
}

std::map<std::string, bool> QmpHypervisor::ScanSockets() const {
  // Path -> named explicitly.
  std::map<std::string, bool> found;
  auto add_sockets_in = [&found](const std::string& dir) {
    DIR* d = ::opendir(dir.c_str());
    if (d == nullptr) return;
    // Bounded: a directory has finitely many entries; cap it anyway.
    for (int i = 0; i < 100000; ++i) {
      dirent* de = ::readdir(d);
      if (de == nullptr) break;
      std::string p = absl::StrCat(dir, dir.back() == '/' ? "" : "/", de->d_name);
      if (IsSocket(p)) found.emplace(p, false);
    }
    ::closedir(d);
  };
  for (const std::string& entry : options_.sockets_or_globs) {
    if (IsGlob(entry)) {
      glob_t g{};
      if (::glob(entry.c_str(), 0, nullptr, &g) == 0) {
        for (size_t i = 0; i < g.gl_pathc; ++i) {
          if (IsSocket(g.gl_pathv[i])) found.emplace(g.gl_pathv[i], false);
        }
      }
      ::globfree(&g);
    } else if (IsDirectory(entry)) {
      add_sockets_in(entry);
    }
  }
  if (!options_.socket_dir.empty()) add_sockets_in(options_.socket_dir);
  // A named socket is kept even while it is missing: it is retried, and
  // its failures stay in the log.
  for (const std::string& entry : options_.sockets_or_globs) {
    if (!IsGlob(entry) && !IsDirectory(entry)) found[entry] = true;
  }
  return found;
}

void QmpHypervisor::RecordFailure(Vm& vm, const absl::Status& status) {
  const absl::Duration wait = vm.backoff.Fail(clock_->Now());
  std::string error(status.message());
  if (error != vm.last_error) {
    // Most errors already name the socket.
    std::string where = absl::StrCat("qmp ", vm.path);
    if (absl::StartsWith(error, where)) {
      spdlog::warn("{} (retrying in {})", error, absl::FormatDuration(wait));
    } else {
      spdlog::warn("{}: {} (retrying in {})", where, error, absl::FormatDuration(wait));
    }
    vm.last_error = error;
  }
  if (vm.client != nullptr && IsConnectionError(status)) vm.client->Close();
}

absl::Status QmpHypervisor::EnsureConnected(Vm& vm) {
  if (vm.client != nullptr && vm.client->connected() && vm.identified) return absl::OkStatus();
  if (!vm.backoff.Ready(clock_->Now())) {
    return absl::UnavailableError(
        absl::StrCat("qmp ", vm.path, ": waiting to retry (", vm.last_error, ")"));
  }
  if (vm.client == nullptr) vm.client = std::make_unique<QmpClient>(clock_, options_.client);
  // A VM keeps its last identity while disconnected, so that calls for it
  // are UNAVAILABLE (retry) rather than NOT_FOUND.
  vm.applied_period.reset();
  vm.actual_bytes.reset();
  Vm* self = &vm;
  vm.client->set_event_handler([self](const Struct& event) {
    auto name = event.fields().find("event");
    if (name == event.fields().end()) return;
    auto data = event.fields().find("data");
    if (data == event.fields().end() || data->second.kind_case() != Value::kStructValue) return;
    const Struct& d = data->second.struct_value();
    if (name->second.string_value() == "BALLOON_CHANGE") {
      std::optional<uint64_t> actual = QmpUint(d, "actual");
      if (actual.has_value()) self->actual_bytes = actual;
    } else if (name->second.string_value() == "MEMORY_DEVICE_SIZE_CHANGE") {
      auto id = d.fields().find("id");
      std::optional<uint64_t> size = QmpUint(d, "size");
      if (id != d.fields().end() && id->second.kind_case() == Value::kStringValue &&
          !self->vmem.id.empty() && id->second.string_value() == self->vmem.id &&
          size.has_value() && *size <= self->vmem.max_size) {
        self->vmem.size = *size;
      }
    }
  });
  RETURN_IF_ERROR(vm.client->Connect(vm.path));
  absl::Status identified = Identify(vm);
  if (!identified.ok()) vm.client->Close();
  return identified;
}

absl::Status QmpHypervisor::Identify(Vm& vm) {
  // query-uuid: an all-zero UUID means QEMU was started without -uuid.
  ASSIGN_OR_RETURN(Value uuid, vm.client->Execute("query-uuid"));
  std::string id;
  if (uuid.kind_case() == Value::kStructValue) {
    auto it = uuid.struct_value().fields().find("UUID");
    if (it != uuid.struct_value().fields().end() && it->second.kind_case() == Value::kStringValue) {
      id = it->second.string_value();
    }
  }
  bool valid_uuid =
      id.size() == 36 && id.find_first_not_of("0123456789abcdefABCDEF-") == std::string::npos;
  if (!valid_uuid || id == "00000000-0000-0000-0000-000000000000") id = QmpIdFromPath(vm.path);

  // query-name: optional (absent without -name).
  std::string name;
  auto name_reply = vm.client->Execute("query-name");
  if (!name_reply.ok() && IsConnectionError(name_reply.status())) return name_reply.status();
  if (name_reply.ok() && name_reply->kind_case() == Value::kStructValue) {
    auto it = name_reply->struct_value().fields().find("name");
    if (it != name_reply->struct_value().fields().end() &&
        it->second.kind_case() == Value::kStringValue && !it->second.string_value().empty() &&
        it->second.string_value().size() <= 256) {
      name = it->second.string_value();
    }
  }
  if (name.empty()) name = Basename(vm.path);

  ASSIGN_OR_RETURN(Value summary, vm.client->Execute("query-memory-size-summary"));
  std::optional<uint64_t> base;
  std::optional<uint64_t> plugged;
  if (summary.kind_case() == Value::kStructValue) {
    base = QmpUint(summary.struct_value(), "base-memory");
    plugged = QmpUint(summary.struct_value(), "plugged-memory");
  }
  if (!base.has_value() || *base == 0) {
    return absl::DataLossError(
        absl::StrCat("qmp ", vm.path, ": query-memory-size-summary has no valid base-memory"));
  }
  // virtio-mem devices (none on a QEMU without the command).
  VirtioMemDevice vmem;
  auto devices = vm.client->Execute("query-memory-devices");
  if (devices.ok()) {
    std::vector<std::string> problems;
    auto parsed = ParseQmpVirtioMemDevices(*devices, &problems);
    for (const std::string& p : problems) spdlog::warn("qmp {}: {}; not driven", vm.path, p);
    if (parsed.ok()) {
      if (!parsed->empty()) vmem = parsed->front();
      if (parsed->size() > 1) {
        spdlog::warn("qmp {}: {} virtio-mem devices; only {} is driven", vm.path, parsed->size(),
                     vmem.id);
      }
    } else {
      spdlog::warn("qmp {}: {}", vm.path, std::string(parsed.status().message()));
    }
  } else if (IsConnectionError(devices.status())) {
    return devices.status();
  }
  // Hot-plugged DIMMs (and virtio-mem devices not driven) count as boot
  // memory: the memory the balloon works against besides the driven device.
  const uint64_t other_plugged =
      plugged.value_or(0) > vmem.size ? plugged.value_or(0) - vmem.size : 0;
  const uint64_t boot_bytes = *base + other_plugged;
  uint64_t max_bytes = boot_bytes + vmem.max_size;
  if (vmem.id.empty()) max_bytes = *base + plugged.value_or(0);

  // The balloon device: the conventional id first, then a scan.
  std::string balloon;
  Struct probe = Args({{"path", StringValue(kDefaultBalloonPath)},
                       {"property", StringValue("guest-stats-polling-interval")}});
  auto probed = vm.client->Execute("qom-get", &probe);
  if (probed.ok()) {
    balloon = kDefaultBalloonPath;
  } else if (IsConnectionError(probed.status())) {
    return probed.status();
  } else {
    ASSIGN_OR_RETURN(std::optional<Peripheral> found,
                     FindPeripheral(*vm.client, "child<virtio-balloon"));
    if (found.has_value()) balloon = found->path;
  }
  if (balloon.empty() && vmem.id.empty()) {
    spdlog::warn("qmp {}: no virtio-balloon or virtio-mem device found; its memory cannot be moved",
                 vm.path);
  }
  bool reporting = false;
  if (!balloon.empty()) {
    ASSIGN_OR_RETURN(reporting, ReadFreePageReporting(*vm.client, balloon, vm.path));
  }

  vm.vm_id = id;
  vm.name = name;
  vm.max_bytes = max_bytes;
  vm.balloon_path = balloon;
  vm.free_page_reporting = reporting;
  vm.pid = vm.client->PeerPid();
  vm.boot_bytes = boot_bytes;
  vm.vmem = vmem;
  vm.vmem_ref_size = vmem.size;
  vm.vmem_ref_time = clock_->MonotonicNow();
  vm.vmem_stalled = false;
  vm.target.reset();
  vm.shortfall_reason.clear();
  ASSIGN_OR_RETURN(vm.excluded_reason, FindExclusion(vm));
  if (!vm.excluded_reason.empty()) {
    spdlog::warn("qmp {}: VM {} is not resized: {}", vm.path, name, vm.excluded_reason);
  }
  vm.identified = true;
  if (vm.backoff.failures() > 0 || !vm.last_error.empty()) {
    spdlog::info("qmp {}: connected to VM {} ({})", vm.path, name, id);
  }
  vm.backoff.Reset();
  vm.last_error.clear();
  return absl::OkStatus();
}

absl::StatusOr<VmStatus> QmpHypervisor::ReadVm(Vm& vm) {
  RETURN_IF_ERROR(vm.client->PollEvents());
  if (!vm.vmem.id.empty()) RETURN_IF_ERROR(RefreshVirtioMem(vm));
  VmStatus status;
  status.vm_id = vm.vm_id;
  status.name = vm.name;
  status.max_bytes = vm.max_bytes;
  status.host_pid = vm.pid;
  status.free_page_reporting = vm.free_page_reporting;

  auto balloon = vm.client->Execute("query-balloon");
  if (balloon.ok()) {
    std::optional<uint64_t> actual;
    if (balloon->kind_case() == Value::kStructValue) {
      actual = QmpUint(balloon->struct_value(), "actual");
    }
    if (!actual.has_value()) {
      return absl::DataLossError(
          absl::StrCat("qmp ", vm.path, ": query-balloon reply has no valid 'actual'"));
    }
    vm.actual_bytes = actual;
  } else if (IsConnectionError(balloon.status())) {
    return balloon.status();
  } else if (absl::IsFailedPrecondition(balloon.status()) || vm.balloon_path.empty()) {
    // No balloon device: the guest has its boot memory and what virtio-mem
    // plugged.
    vm.actual_bytes = vm.boot_bytes + vm.vmem.size;
  } else if (!vm.actual_bytes.has_value()) {
    return balloon.status();
  }
  VmSizing& sizing = status.sizing;
  sizing.balloon = !vm.balloon_path.empty();
  sizing.boot_bytes = vm.boot_bytes;
  if (sizing.balloon) {
    // QEMU 7.2's balloon works against boot memory (-m and DIMMs) only: its
    // actual leaves virtio-mem's plugged memory out.
    const uint64_t balloon_actual = std::min(*vm.actual_bytes, vm.boot_bytes);
    sizing.balloon_inflated_bytes = vm.boot_bytes - balloon_actual;
    status.actual_bytes = std::min(balloon_actual + vm.vmem.size, vm.max_bytes);
  } else {
    status.actual_bytes = std::min(*vm.actual_bytes, vm.max_bytes);
  }
  if (!vm.vmem.id.empty()) {
    sizing.virtio_mem = true;
    sizing.virtio_mem_plugged_bytes = vm.vmem.size;
    sizing.virtio_mem_requested_bytes = vm.vmem.requested_size;
    sizing.virtio_mem_max_bytes = vm.vmem.max_size;
    sizing.virtio_mem_block_bytes = vm.vmem.block_size;
    if (!sizing.balloon) {
      sizing.granularity_bytes = std::max(sizing.granularity_bytes, vm.vmem.block_size);
    }
  }
  sizing.shortfall_reason = vm.shortfall_reason;
  sizing.excluded_reason = vm.excluded_reason;
  ExcludeIfNothingSizes(sizing);

  if (!vm.balloon_path.empty()) {
    if (vm.wanted_period.has_value() && vm.applied_period != vm.wanted_period) {
      int64_t seconds = absl::ToInt64Seconds(*vm.wanted_period);
      Struct args = Args({{"path", StringValue(vm.balloon_path)},
                          {"property", StringValue("guest-stats-polling-interval")},
                          {"value", NumberValue(static_cast<double>(seconds))}});
      auto set = vm.client->Execute("qom-set", &args);
      if (set.ok()) {
        vm.applied_period = vm.wanted_period;
      } else if (IsConnectionError(set.status())) {
        return set.status();
      } else {
        spdlog::warn("qmp {}: cannot set the stats period: {}", vm.path,
                     std::string(set.status().message()));
        vm.applied_period = vm.wanted_period;  // do not retry every round
      }
    }
    Struct args =
        Args({{"path", StringValue(vm.balloon_path)}, {"property", StringValue("guest-stats")}});
    auto stats = vm.client->Execute("qom-get", &args);
    if (stats.ok()) {
      auto parsed = ParseQmpGuestStats(*stats);
      if (parsed.ok()) {
        status.stats = *parsed;
      } else {
        spdlog::debug("qmp {}: {}", vm.path, std::string(parsed.status().message()));
      }
    } else if (IsConnectionError(stats.status())) {
      return stats.status();
    } else {
      // QEMU refuses guest-stats until the guest has sent some.
      spdlog::debug("qmp {}: no guest stats: {}", vm.path, std::string(stats.status().message()));
    }
  }
  return status;
}

absl::StatusOr<std::string> QmpHypervisor::FindExclusion(Vm& vm) {
  // VFIO devices pin every page of guest memory for DMA.
  ASSIGN_OR_RETURN(std::optional<Peripheral> vfio, FindPeripheral(*vm.client, "child<vfio"));
  if (vfio.has_value()) {
    return absl::StrCat("PCI passthrough: VFIO device ", vfio->name, " (",
                        vfio->type.substr(6, vfio->type.size() - 7), ") pins guest memory");
  }
  // Memory backends on hugetlbfs: the balloon cannot free their pages.
  auto memdevs = vm.client->Execute("query-memdev");
  if (!memdevs.ok()) {
    if (IsConnectionError(memdevs.status())) return memdevs.status();
  } else if (memdevs->kind_case() == Value::kListValue) {
    for (const Value& entry : memdevs->list_value().values()) {
      if (entry.kind_case() != Value::kStructValue) continue;
      const auto& f = entry.struct_value().fields();
      auto id = f.find("id");
      if (id == f.end() || id->second.kind_case() != Value::kStringValue ||
          id->second.string_value().empty() ||
          id->second.string_value().find('/') != std::string::npos) {
        continue;
      }
      const std::string object = absl::StrCat("/objects/", id->second.string_value());
      Struct hugetlb_args =
          Args({{"path", StringValue(object)}, {"property", StringValue("hugetlb")}});
      auto hugetlb = vm.client->Execute("qom-get", &hugetlb_args);
      if (!hugetlb.ok() && IsConnectionError(hugetlb.status())) return hugetlb.status();
      if (hugetlb.ok() && hugetlb->kind_case() == Value::kBoolValue && hugetlb->bool_value()) {
        return absl::StrCat("hugepage-backed memory: backend ", id->second.string_value(),
                            " has hugetlb=on");
      }
      Struct path_args =
          Args({{"path", StringValue(object)}, {"property", StringValue("mem-path")}});
      auto mem_path = vm.client->Execute("qom-get", &path_args);
      if (!mem_path.ok() && IsConnectionError(mem_path.status())) return mem_path.status();
      if (mem_path.ok() && mem_path->kind_case() == Value::kStringValue &&
          (absl::StrContains(mem_path->string_value(), "hugepages") ||
           absl::StrContains(mem_path->string_value(), "hugetlb"))) {
        return absl::StrCat("hugepage-backed memory: backend ", id->second.string_value(), " maps ",
                            mem_path->string_value());
      }
    }
  }
  // Locked memory (-overcommit mem-lock=on, -realtime mlock=on): QMP does
  // not report the option's value, the process does.
  if (vm.pid.has_value() && *vm.pid > 0) {
    const std::string dir = absl::StrCat(options_.proc_root, "/", *vm.pid);
    std::istringstream status(ReadSmallFile(dir + "/status"));
    std::string line;
    while (std::getline(status, line)) {
      if (!absl::StartsWith(line, "VmLck:")) continue;
      std::istringstream fields(line.substr(6));
      uint64_t kib = 0;
      if (fields >> kib && kib > 0) {
        return absl::StrCat("locked memory: the QEMU process has ", kib,
                            " KiB locked (VmLck; mem-lock=on)");
      }
    }
    std::string cmdline = ReadSmallFile(dir + "/cmdline");
    std::replace(cmdline.begin(), cmdline.end(), '\0', ' ');
    if (absl::StrContains(cmdline, "mem-lock=on") || absl::StrContains(cmdline, "mlock=on")) {
      return std::string("locked memory: the QEMU command line has mem-lock=on");
    }
  }
  return std::string();
}

absl::Status QmpHypervisor::RefreshVirtioMem(Vm& vm) {
  auto reply = vm.client->Execute("query-memory-devices");
  if (!reply.ok()) {
    if (IsConnectionError(reply.status())) return reply.status();
    spdlog::debug("qmp {}: query-memory-devices: {}", vm.path,
                  std::string(reply.status().message()));
  } else {
    std::vector<std::string> problems;
    auto parsed = ParseQmpVirtioMemDevices(*reply, &problems);
    bool found = false;
    if (parsed.ok()) {
      for (const VirtioMemDevice& d : *parsed) {
        if (d.id != vm.vmem.id) continue;
        // max-size and block-size are fixed for the device's life.
        if (d.max_size == vm.vmem.max_size && d.block_size == vm.vmem.block_size) {
          vm.vmem.size = d.size;
          vm.vmem.requested_size = d.requested_size;
          found = true;
        }
      }
    }
    if (!found) {
      spdlog::debug(
          "qmp {}: virtio-mem device {} not in a valid query-memory-devices reply; "
          "keeping its last values",
          vm.path, vm.vmem.id);
    }
  }
  const absl::Time now = clock_->MonotonicNow();
  const VirtioMemDevice& d = vm.vmem;
  if (d.size == d.requested_size || d.size != vm.vmem_ref_size) {
    vm.vmem_ref_size = d.size;
    vm.vmem_ref_time = now;
    return absl::OkStatus();
  }
  if (vm.vmem_stalled || now - vm.vmem_ref_time < options_.virtio_mem_stall_timeout) {
    return absl::OkStatus();
  }
  vm.vmem_stalled = true;
  if (d.size > d.requested_size) {
    vm.shortfall_reason = absl::StrCat("virtio-mem unplug stalled at ", Mib(d.size), " plugged of ",
                                       Mib(d.requested_size), " requested (unmovable guest pages)");
    // Stop asking: what the device keeps is now the balloon's to take.
    Struct args = Args({{"path", StringValue(absl::StrCat("/machine/peripheral/", d.id))},
                        {"property", StringValue("requested-size")},
                        {"value", NumberValue(static_cast<double>(d.size))}});
    auto set = vm.client->Execute("qom-set", &args);
    if (!set.ok() && IsConnectionError(set.status())) return set.status();
    if (set.ok()) vm.vmem.requested_size = d.size;
    const uint64_t target = vm.target.value_or(vm.boot_bytes + d.size);
    const uint64_t remainder =
        vm.boot_bytes + d.size > target ? vm.boot_bytes + d.size - target : 0;
    if (!vm.balloon_path.empty() && remainder > 0) {
      absl::StrAppend(&vm.shortfall_reason, "; the balloon takes the remaining ", Mib(remainder));
      RETURN_IF_ERROR(SetBalloonInflation(vm, remainder));
    } else if (remainder > 0) {
      absl::StrAppend(&vm.shortfall_reason, "; no balloon to take the remaining ", Mib(remainder));
    }
  } else {
    vm.shortfall_reason = absl::StrCat(
        "virtio-mem plug stalled at ", Mib(d.size), " plugged of ", Mib(d.requested_size),
        " requested (virtio_mem driver missing or memory not onlined in the guest)");
  }
  spdlog::warn("qmp {}: VM {}: {}", vm.path, vm.name, vm.shortfall_reason);
  return absl::OkStatus();
}

absl::Status QmpHypervisor::SetBalloonInflation(Vm& vm, uint64_t inflate_bytes) {
  if (vm.balloon_path.empty()) return absl::OkStatus();
  // QEMU 7.2 sizes the balloon against boot memory (-m and DIMMs), not
  // virtio-mem's: the value is boot memory less what is to stay out, and
  // virtio-mem's moves do not change it.
  const uint64_t value =
      vm.boot_bytes > inflate_bytes + kMiB ? vm.boot_bytes - inflate_bytes : kMiB;
  Struct args = Args({{"value", NumberValue(static_cast<double>(value))}});
  auto reply = vm.client->Execute("balloon", &args);
  if (!reply.ok()) return reply.status();
  vm.balloon_inflate = inflate_bytes;
  return absl::OkStatus();
}

absl::StatusOr<std::vector<VmStatus>> QmpHypervisor::ListVms() {
  const std::map<std::string, bool> present = ScanSockets();
  for (auto it = vms_.begin(); it != vms_.end();) {
    Vm& vm = *it->second;
    bool connected = vm.client != nullptr && vm.client->connected();
    if (present.count(it->first) == 0 && connected) {
      // The file is gone; is QEMU? A closed peer shows as end of file on a
      // read that does not block.
      if (!vm.client->PollEvents().ok()) {
        vm.client->Close();
        connected = false;
      }
    }
    if (present.count(it->first) == 0 && !connected) {
      spdlog::info("qmp {}: socket gone{}, forgetting it", it->first,
                   vm.identified ? absl::StrCat(" (VM ", vm.name, ", ", vm.vm_id, ")") : "");
      it = vms_.erase(it);
    } else {
      ++it;
    }
  }
  const membroker::BackoffParams params = QmpBackoffParams(options_);
  for (const auto& [p, named] : present) {
    auto& slot = vms_[p];
    if (slot == nullptr) {
      const uint64_t seed = options_.backoff_seed == 0 ? 0 : Fnv1a64(p, options_.backoff_seed) | 1;
      slot = std::make_unique<Vm>(p, params, seed);
      if (!named) spdlog::info("qmp {}: new socket", p);
    }
  }

  std::vector<VmStatus> out;
  std::set<std::string> seen_ids;
  for (auto& [path, vm] : vms_) {
    absl::Status connected = EnsureConnected(*vm);
    if (!connected.ok()) {
      if (vm->backoff.Ready(clock_->Now())) RecordFailure(*vm, connected);
      if (vm->client != nullptr) vm->client->Close();
      continue;
    }
    if (!vm->wanted_period.has_value() && stats_period_.has_value()) {
      vm->wanted_period = stats_period_;
    }
    auto status = ReadVm(*vm);
    if (!status.ok()) {
      RecordFailure(*vm, status.status());
      continue;
    }
    if (!seen_ids.insert(status->vm_id).second) {
      spdlog::warn("qmp {}: VM id {} is also behind another socket; leaving this one out", path,
                   status->vm_id);
      continue;
    }
    out.push_back(std::move(*status));
  }
  return out;
}

QmpHypervisor::Vm* QmpHypervisor::FindVm(const std::string& vm_id) {
  for (auto& [path, vm] : vms_) {
    if (vm->identified && vm->vm_id == vm_id) return vm.get();
  }
  return nullptr;
}

absl::Status QmpHypervisor::SetBalloonTarget(const std::string& vm_id, uint64_t target_bytes) {
  Vm* vm = FindVm(vm_id);
  if (vm == nullptr) return absl::NotFoundError(absl::StrCat("no QMP VM with id ", vm_id));
  if (target_bytes == 0) {
    return absl::InvalidArgumentError(absl::StrCat("target_bytes: 0 for VM ", vm_id));
  }
  if (target_bytes > vm->max_bytes) {
    return absl::InvalidArgumentError(absl::StrCat("target_bytes: ", target_bytes, " is above VM ",
                                                   vm_id, "'s max of ", vm->max_bytes));
  }
  if (vm->balloon_path.empty() && vm->vmem.id.empty()) {
    return absl::FailedPreconditionError(
        absl::StrCat("VM ", vm_id, " has no balloon or virtio-mem device"));
  }
  if (vm->client == nullptr || !vm->client->connected()) {
    return absl::UnavailableError(absl::StrCat("qmp connection to VM ", vm_id, " is down"));
  }
  if (!vm->excluded_reason.empty()) {
    const uint64_t now = vm->actual_bytes.value_or(vm->boot_bytes + vm->vmem.size);
    if (target_bytes < now) {
      return absl::FailedPreconditionError(
          absl::StrCat("VM ", vm_id, " is not resized: ", vm->excluded_reason));
    }
    return absl::OkStatus();  // Left alone: it already has at least that.
  }
  auto fail = [this, vm](const absl::Status& status) {
    if (IsConnectionError(status)) RecordFailure(*vm, status);
    return status;
  };
  if (vm->vmem.id.empty()) {
    Struct args = Args({{"value", NumberValue(static_cast<double>(target_bytes))}});
    auto reply = vm->client->Execute("balloon", &args);
    if (!reply.ok()) return fail(reply.status());
    vm->target = target_bytes;
    return absl::OkStatus();
  }

  // virtio-mem for whole blocks above boot memory, the balloon for the rest.
  const VirtioMemDevice& d = vm->vmem;
  const uint64_t above_boot = target_bytes > vm->boot_bytes ? target_bytes - vm->boot_bytes : 0;
  uint64_t request = std::min(RoundUpTo(above_boot, d.block_size), d.max_size);
  const bool same_target = vm->target == target_bytes;
  if (same_target && vm->vmem_stalled) request = d.requested_size;  // Do not retry the stall.
  if (request != d.requested_size) {
    Struct args = Args({{"path", StringValue(absl::StrCat("/machine/peripheral/", d.id))},
                        {"property", StringValue("requested-size")},
                        {"value", NumberValue(static_cast<double>(request))}});
    auto reply = vm->client->Execute("qom-set", &args);
    if (!reply.ok()) return fail(reply.status());
    vm->vmem.requested_size = request;
  }
  if (!same_target) {
    // The stall timer starts over from the size now (size-change events
    // that came with the reply included).
    vm->vmem_stalled = false;
    vm->shortfall_reason.clear();
    vm->vmem_ref_size = d.size;
    vm->vmem_ref_time = clock_->MonotonicNow();
  }
  vm->target = target_bytes;
  const uint64_t sized = vm->boot_bytes + request;
  const uint64_t inflate = sized > target_bytes ? sized - target_bytes : 0;
  if (!vm->balloon_path.empty()) {
    if (inflate != vm->balloon_inflate || !same_target) {
      absl::Status set = SetBalloonInflation(*vm, inflate);
      if (!set.ok()) return fail(set);
    }
  } else if (target_bytes < vm->boot_bytes) {
    vm->shortfall_reason =
        absl::StrCat("target ", Mib(target_bytes), " is below boot memory (", Mib(vm->boot_bytes),
                     "): virtio-mem cannot go lower and there is no balloon");
  }
  return absl::OkStatus();
}

absl::Status QmpHypervisor::SetStatsPeriod(const std::string& vm_id, absl::Duration period) {
  if (period < absl::ZeroDuration() || period > absl::Hours(24)) {
    return absl::InvalidArgumentError(
        absl::StrCat("stats period: ", absl::FormatDuration(period), " is not within [0, 24h]"));
  }
  // Whole seconds, at least one unless polling is turned off.
  absl::Duration rounded =
      absl::Seconds(absl::ToInt64Seconds(absl::Ceil(period, absl::Seconds(1))));
  Vm* vm = FindVm(vm_id);
  if (vm == nullptr) return absl::NotFoundError(absl::StrCat("no QMP VM with id ", vm_id));
  if (vm->balloon_path.empty()) {
    return absl::FailedPreconditionError(absl::StrCat("VM ", vm_id, " has no balloon device"));
  }
  if (vm->client == nullptr || !vm->client->connected()) {
    return absl::UnavailableError(absl::StrCat("qmp connection to VM ", vm_id, " is down"));
  }
  Struct args = Args({{"path", StringValue(vm->balloon_path)},
                      {"property", StringValue("guest-stats-polling-interval")},
                      {"value", NumberValue(static_cast<double>(absl::ToInt64Seconds(rounded)))}});
  auto reply = vm->client->Execute("qom-set", &args);
  if (!reply.ok()) {
    if (IsConnectionError(reply.status())) {
      RecordFailure(*vm, reply.status());
    }
    return reply.status();
  }
  vm->wanted_period = rounded;
  vm->applied_period = rounded;
  stats_period_ = rounded;
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<Hypervisor>> MakeQmpHypervisor(
    const std::vector<std::string>& sockets_or_globs, const std::string& socket_dir, Clock* clock) {
  QmpHypervisorOptions options;
  options.sockets_or_globs = sockets_or_globs;
  options.socket_dir = socket_dir;
  ASSIGN_OR_RETURN(std::unique_ptr<QmpHypervisor> qmp,
                   QmpHypervisor::Create(std::move(options), clock));
  return std::unique_ptr<Hypervisor>(std::move(qmp));
}

}  // namespace membroker::agent

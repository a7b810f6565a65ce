#include "sim/sim_host.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <set>

#include "absl/strings/str_cat.h"
#include "common/proto_time.h"
#include "common/status.h"
#include "sim/rng.h"
#include "sim/workload.h"

namespace membroker::sim {
namespace {

using membroker::v1::SimConfig;
using membroker::v1::SimVm;
using membroker::v1::Workload;

constexpr uint64_t kMiB = uint64_t{1} << 20;
// Largest size accepted anywhere in a SimConfig (16 TiB): keeps arithmetic
// far from overflow.
constexpr uint64_t kMaxSizeBytes = uint64_t{16} << 40;
constexpr int kMaxVms = 10000;
constexpr size_t kMaxNameLength = 253;
// Minor faults per second per GiB of working set (page touches that hit).
constexpr double kMinorFaultsPerGiBSecond = 1000.0;

uint64_t Fnv1a(const std::string& s, uint64_t basis) {
  uint64_t h = basis;
  for (unsigned char c : s) {
    h ^= c;
    h *= 0x100000001b3ULL;
  }
  return h;
}

uint64_t EffectiveKernel(const SimVm& vm) {
  return vm.kernel_bytes() == 0 ? kDefaultKernelBytes : vm.kernel_bytes();
}

std::string EffectiveId(const SimVm& vm) {
  return vm.vm_id().empty() ? DeriveVmId(vm.name()) : vm.vm_id();
}

absl::Status CheckSize(uint64_t v, const std::string& field) {
  if (v > kMaxSizeBytes) {
    return absl::InvalidArgumentError(absl::StrCat(field, ": ", v, " bytes is above 16 TiB"));
  }
  return absl::OkStatus();
}

absl::Status ValidateVm(const SimVm& vm, int i) {
  const std::string f = absl::StrCat("vms[", i, "]");
  if (vm.name().empty()) return absl::InvalidArgumentError(absl::StrCat(f, ".name: must not be empty"));
  if (vm.name().size() > kMaxNameLength) {
    return absl::InvalidArgumentError(absl::StrCat(f, ".name: longer than 253 characters"));
  }
  if (vm.vm_id().size() > kMaxNameLength) {
    return absl::InvalidArgumentError(absl::StrCat(f, ".vm_id: longer than 253 characters"));
  }
  if (vm.max_bytes() == 0) return absl::InvalidArgumentError(absl::StrCat(f, ".max_bytes: must be positive"));
  RETURN_IF_ERROR(CheckSize(vm.max_bytes(), f + ".max_bytes"));
  RETURN_IF_ERROR(CheckSize(vm.page_cache_bytes(), f + ".page_cache_bytes"));
  RETURN_IF_ERROR(CheckSize(vm.swap_bytes(), f + ".swap_bytes"));
  RETURN_IF_ERROR(CheckSize(vm.kernel_bytes(), f + ".kernel_bytes"));
  const uint64_t kernel = EffectiveKernel(vm);
  if (kernel >= vm.max_bytes()) {
    return absl::InvalidArgumentError(absl::StrCat(f, ".kernel_bytes: ", kernel,
                                                   " must be below max_bytes ", vm.max_bytes()));
  }
  RETURN_IF_ERROR(ValidateWorkload(vm.workload(), f + ".workload"));
  const uint64_t peak = WorkloadPeakBytes(vm.workload());
  if (peak > vm.max_bytes() - kernel) {
    return absl::InvalidArgumentError(absl::StrCat(
        f, ".workload: peak working set ", peak, " plus kernel ", kernel, " exceeds max_bytes ",
        vm.max_bytes()));
  }
  const auto& d = vm.start_after();
  if (d.seconds() < 0 || d.nanos() < 0 || d.nanos() >= 1000000000 ||
      d.seconds() > int64_t{100} * 365 * 24 * 3600) {
    return absl::InvalidArgumentError(
        absl::StrCat(f, ".start_after: must be a non-negative duration under 100 years"));
  }
  return absl::OkStatus();
}

}  // namespace

std::string DeriveVmId(const std::string& name) {
  const uint64_t a = Mix64(Fnv1a(name, 0xcbf29ce484222325ULL));
  const uint64_t b = Mix64(Fnv1a(name, 0x84222325cbf29ce4ULL) ^ a);
  char buf[40];
  std::snprintf(buf, sizeof(buf), "%08x-%04x-%04x-%04x-%012llx", static_cast<unsigned>(a >> 32),
                static_cast<unsigned>((a >> 16) & 0xffff),
                static_cast<unsigned>(0x4000 | (a & 0x0fff)),
                static_cast<unsigned>(0x8000 | ((b >> 48) & 0x3fff)),
                static_cast<unsigned long long>(b & 0xffffffffffffULL));
  return buf;
}

absl::Status ValidateSimConfig(const SimConfig& config) {
  if (config.host_total_bytes() == 0) {
    return absl::InvalidArgumentError("host_total_bytes: must be positive");
  }
  RETURN_IF_ERROR(CheckSize(config.host_total_bytes(), "host_total_bytes"));
  if (!std::isfinite(config.time_scale()) || config.time_scale() < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("time_scale: must be a finite number >= 0, got ", config.time_scale()));
  }
  RETURN_IF_ERROR(CheckSize(config.balloon_rate_bytes_per_second(), "balloon_rate_bytes_per_second"));
  if (config.vms_size() > kMaxVms) {
    return absl::InvalidArgumentError(absl::StrCat("vms: more than ", kMaxVms, " VMs"));
  }
  std::set<std::string> names;
  std::set<std::string> ids;
  for (int i = 0; i < config.vms_size(); ++i) {
    const SimVm& vm = config.vms(i);
    RETURN_IF_ERROR(ValidateVm(vm, i));
    if (!names.insert(vm.name()).second) {
      return absl::InvalidArgumentError(
          absl::StrCat("vms[", i, "].name: duplicate name \"", vm.name(), "\""));
    }
    if (!ids.insert(EffectiveId(vm)).second) {
      return absl::InvalidArgumentError(
          absl::StrCat("vms[", i, "].vm_id: duplicate id \"", EffectiveId(vm), "\""));
    }
  }
  return absl::OkStatus();
}

// One guest's model state beside its reported SimVmState.
struct GuestModel {
  SimVm config;
  uint64_t kernel = 0;
  double start_seconds = 0;
  double restart_at = -1;      // workload absent until then (after an OOM kill)
  double origin = 0;           // the workload clock's zero (moves on restart)
  double cache = 0;
  double swapped = 0;
  double swap_in = 0;
  double swap_out = 0;
  double major = 0;
  double refaults = 0;
  double minor = 0;
  // The balloon driver works toward the target (set by SetTarget and at
  // boot, cleared when it gets there).
  bool balloon_busy = false;
};

struct SimHost::Impl {
  SimConfig config;
  uint64_t seed = 0;
  double rate = 0;
  double now = 0;  // seconds
  std::vector<GuestModel> models;
  std::vector<SimVmState> vms;

  // The workload's working set (no kernel) of guest `i` at `t`.
  double WorkloadAt(size_t i, double t) const {
    const GuestModel& m = models[i];
    if (t < m.start_seconds) return 0;
    if (m.restart_at >= 0 && t < m.restart_at) return 0;
    const double since = t - m.origin;
    double ws = WorkloadBytes(m.config.workload(), since) *
                NoiseFactor(seed, i, m.config.workload().noise_fraction(), t);
    const double cap = static_cast<double>(m.config.max_bytes() - m.kernel);
    return std::clamp(ws, 0.0, cap);
  }

  void Step(double dt) {
    const double t = now + dt;
    for (size_t i = 0; i < models.size(); ++i) StepVm(i, t, dt);
    now = t;
  }

  void StepVm(size_t i, double t, double dt) {
    GuestModel& m = models[i];
    SimVmState& s = vms[i];
    if (!s.running) {
      if (t < m.start_seconds) return;
      // The guest boots with all of its memory; the balloon driver then
      // moves toward the target.
      s.running = true;
      s.actual_bytes = s.max_bytes;
      m.balloon_busy = true;
      dt = std::min(dt, t - m.start_seconds);
    }
    const double swap = static_cast<double>(m.config.swap_bytes());
    double ws = WorkloadAt(i, t);
    double need = static_cast<double>(m.kernel) + ws;
    m.swapped = std::min(m.swapped, ws);
    // Balloon.
    if (s.balloon_driver && m.balloon_busy) {
      const uint64_t goal = std::clamp(s.target_bytes, m.kernel, s.max_bytes);
      const double step = rate * dt;
      const double actual = static_cast<double>(s.actual_bytes);
      if (s.actual_bytes < goal) {
        s.actual_bytes = static_cast<uint64_t>(std::min(static_cast<double>(goal), actual + step));
      } else if (s.actual_bytes > goal) {
        // Inflating takes free memory, page cache and what the guest can
        // swap out, never the rest of its working set.
        const double floor = std::max(static_cast<double>(goal), need - swap);
        if (actual > floor) {
          s.actual_bytes = static_cast<uint64_t>(std::ceil(std::max(floor, actual - step)));
        }
      }
      if (s.actual_bytes == goal) m.balloon_busy = false;
    }
    double actual = static_cast<double>(s.actual_bytes);
    double deficit = std::max(0.0, need - actual);
    if (deficit > m.swapped) {
      // Pages go out to swap at the device's speed, while there is swap.
      const double out =
          std::min({deficit - m.swapped, static_cast<double>(kSwapOutRateBytesPerSecond) * dt,
                    std::max(0.0, swap - m.swapped)});
      m.swap_out += out;
      m.swapped += out;
    }
    if (deficit > 0 && deficit > swap && m.swapped >= swap) {
      // Out of memory and swap.
      if (s.deflate_on_oom && s.balloon_driver && s.actual_bytes < s.max_bytes) {
        // The balloon driver's OOM notifier gives pages back, a step at a
        // time, until the allocation succeeds: no kill. The target stays.
        const double step = static_cast<double>(kOomDeflateStepBytes);
        const double give = std::min(std::ceil((deficit - swap) / step) * step,
                                     static_cast<double>(s.max_bytes - s.actual_bytes));
        s.actual_bytes += static_cast<uint64_t>(give);
        ++s.oom_deflations_total;
        s.oom_deflated_bytes_total += static_cast<uint64_t>(give);
        actual = static_cast<double>(s.actual_bytes);
        deficit = std::max(0.0, need - actual);
      }
      if (deficit > swap) {
        // The kernel kills the workload; it starts again later from its
        // base.
        ++s.oom_kills_total;
        // The kernel kills only after reclaim failed: the page cache went
        // first.
        m.cache = 0;
        m.restart_at = t + kOomRestartSeconds;
        if (m.config.workload().model_case() == Workload::kLeak) m.origin = m.restart_at;
        m.swapped = 0;
        ws = 0;
        need = static_cast<double>(m.kernel);
        deficit = std::max(0.0, need - actual);
      }
    }
    if (deficit > 0) {
      // Thrashing: the working set is touched, pages come in and others go.
      const double in = std::min(deficit, static_cast<double>(kSwapInRateBytesPerSecond)) * dt;
      m.swap_in += in;
      m.swap_out += in;
      m.major += in / kPageBytes;
      s.stall_byte_seconds += deficit * dt;
    } else if (m.swapped > 0) {
      // Room again: swapped pages come back as they are touched.
      const double in = std::min(m.swapped, static_cast<double>(kSwapInRateBytesPerSecond) * dt);
      m.swapped -= in;
      m.swap_in += in;
      m.major += in / kPageBytes;
    }
    m.minor += ws / static_cast<double>(uint64_t{1} << 30) * kMinorFaultsPerGiBSecond * dt;
    // What is neither resident nor swapped waits in direct reclaim.
    const double anon = std::min(actual, need - m.swapped);
    const double room = std::max(0.0, actual - anon);
    if (m.cache > room) {
      m.cache = room;  // page cache is given up first
    } else {
      m.cache = std::min({room, static_cast<double>(m.config.page_cache_bytes()),
                          m.cache + static_cast<double>(kCacheFillBytesPerSecond) * dt});
      m.cache = std::max(m.cache, 0.0);
    }
    // Refaults: pressure left less room than the mapped hot files.
    const double hot = static_cast<double>(std::min(m.config.page_cache_bytes(), kMappedFileBytes));
    if (room < hot) {
      const double bytes = std::min((hot - room) * kRefaultFractionPerSecond,
                                    static_cast<double>(kMaxRefaultBytesPerSecond)) *
                           dt;
      m.refaults += bytes / kPageBytes;
      m.major += bytes / kPageBytes;
    }
    const double free = std::max(0.0, actual - anon - m.cache);

    s.working_set_bytes = static_cast<uint64_t>(need);
    s.deficit_bytes = static_cast<uint64_t>(deficit);
    s.swapped_bytes = static_cast<uint64_t>(m.swapped);
    s.resident_bytes = static_cast<uint64_t>(anon + m.cache);
    s.refault_major_faults_total = static_cast<uint64_t>(m.refaults);
    if (s.balloon_driver && s.guest_stats) {
      s.total_bytes = s.actual_bytes;
      s.free_bytes = static_cast<uint64_t>(free);
      s.disk_caches_bytes = static_cast<uint64_t>(m.cache);
      s.available_bytes = std::min(s.total_bytes, static_cast<uint64_t>(free + m.cache));
      s.swap_in_bytes_total = static_cast<uint64_t>(m.swap_in);
      s.swap_out_bytes_total = static_cast<uint64_t>(m.swap_out);
      s.major_faults_total = static_cast<uint64_t>(m.major);
      s.minor_faults_total = static_cast<uint64_t>(m.minor);
    }
  }
};

SimHost::SimHost() : impl_(std::make_unique<Impl>()) {}
SimHost::~SimHost() = default;

absl::StatusOr<std::unique_ptr<SimHost>> SimHost::Create(const SimConfig& config) {
  RETURN_IF_ERROR(ValidateSimConfig(config));
  std::unique_ptr<SimHost> host(new SimHost());
  Impl& impl = *host->impl_;
  impl.config = config;
  impl.seed = config.seed();
  impl.rate = static_cast<double>(config.balloon_rate_bytes_per_second() == 0
                                      ? kDefaultBalloonRateBytesPerSecond
                                      : config.balloon_rate_bytes_per_second());
  for (const SimVm& vm : config.vms()) {
    GuestModel m;
    m.config = vm;
    m.kernel = EffectiveKernel(vm);
    m.start_seconds = absl::ToDoubleSeconds(FromProto(vm.start_after()));
    m.origin = m.start_seconds;
    impl.models.push_back(std::move(m));
    SimVmState s;
    s.vm_id = EffectiveId(vm);
    s.name = vm.name();
    s.balloon_driver = !vm.no_balloon_driver();
    s.guest_stats = !vm.no_guest_stats();
    s.deflate_on_oom = vm.deflate_on_oom();
    s.max_bytes = vm.max_bytes();
    s.target_bytes = vm.max_bytes();
    impl.vms.push_back(std::move(s));
  }
  // Bring VMs that start at time 0 up at once.
  impl.Step(0);
  return host;
}

void SimHost::Advance(absl::Duration dt) {
  double left = absl::ToDoubleSeconds(dt);
  // Bounded by count: ceil(left / step) iterations.
  while (left > 1e-9) {
    const double step = std::min(left, kMaxStepSeconds);
    impl_->Step(step);
    left -= step;
  }
}

absl::Duration SimHost::elapsed() const { return absl::Seconds(impl_->now); }

uint64_t SimHost::host_total_bytes() const { return impl_->config.host_total_bytes(); }

uint64_t SimHost::host_used_bytes() const {
  uint64_t sum = 0;
  for (const SimVmState& s : impl_->vms) {
    if (s.running) sum += s.actual_bytes;
  }
  return sum;
}

const std::vector<SimVmState>& SimHost::vms() const { return impl_->vms; }

absl::Status SimHost::SetTarget(const std::string& vm_id, uint64_t target_bytes) {
  for (SimVmState& s : impl_->vms) {
    if (s.vm_id == vm_id) {
      s.target_bytes = std::clamp(target_bytes, std::min(kMiB, s.max_bytes), s.max_bytes);
      impl_->models[static_cast<size_t>(&s - impl_->vms.data())].balloon_busy = true;
      return absl::OkStatus();
    }
  }
  return absl::NotFoundError(absl::StrCat("vm_id: no simulated VM \"", vm_id, "\""));
}

absl::StatusOr<uint64_t> SimHost::WorkingSetAt(const std::string& vm_id, absl::Duration at) const {
  for (size_t i = 0; i < impl_->vms.size(); ++i) {
    if (impl_->vms[i].vm_id == vm_id) return WorkingSetOf(i, absl::ToDoubleSeconds(at));
  }
  return absl::NotFoundError(absl::StrCat("vm_id: no simulated VM \"", vm_id, "\""));
}

uint64_t SimHost::WorkingSetOf(size_t index, double t) const {
  if (index >= impl_->models.size()) return 0;
  if (t < impl_->models[index].start_seconds) return 0;
  return static_cast<uint64_t>(static_cast<double>(impl_->models[index].kernel) +
                               impl_->WorkloadAt(index, t));
}

}  // namespace membroker::sim

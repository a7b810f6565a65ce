#include "node-agent/hypervisor/sim_hypervisor.h"

#include <cmath>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "common/status.h"

namespace membroker::agent {

absl::StatusOr<std::unique_ptr<SimHypervisor>> SimHypervisor::Create(
    const membroker::v1::SimConfig& config, const Clock* clock) {
  if (clock == nullptr) return absl::InvalidArgumentError("sim backend: clock is required");
  if (!std::isfinite(config.time_scale()) || config.time_scale() < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("sim config: time_scale must be a finite number >= 0 (0 means 1), got ",
                     config.time_scale()));
  }
  ASSIGN_OR_RETURN(std::unique_ptr<sim::SimHost> host, sim::SimHost::Create(config));
  const double scale = config.time_scale() == 0 ? 1.0 : config.time_scale();
  return std::unique_ptr<SimHypervisor>(new SimHypervisor(std::move(host), clock, scale));
}

SimHypervisor::SimHypervisor(std::unique_ptr<sim::SimHost> host, const Clock* clock,
                             double time_scale)
    : clock_(clock), time_scale_(time_scale), host_(std::move(host)), last_advance_(clock->Now()) {}

void SimHypervisor::AdvanceLocked() {
  const absl::Time now = clock_->Now();
  if (now <= last_advance_) return;  // A clock going backwards is ignored.
  const absl::Duration wall = now - last_advance_;
  last_advance_ = now;
  host_->Advance(wall * time_scale_);
}

absl::StatusOr<const sim::SimVmState*> SimHypervisor::FindRunningLocked(
    const std::string& vm_id) const {
  for (const sim::SimVmState& vm : host_->vms()) {
    if (vm.vm_id == vm_id) {
      if (!vm.running) return absl::NotFoundError(absl::StrCat("VM ", vm_id, " is not running"));
      return &vm;
    }
  }
  return absl::NotFoundError(absl::StrCat("no VM with id ", vm_id));
}

absl::StatusOr<std::vector<VmStatus>> SimHypervisor::ListVms() {
  absl::MutexLock lock(&mu_);
  AdvanceLocked();
  const absl::Time now = clock_->Now();
  std::vector<VmStatus> out;
  for (const sim::SimVmState& vm : host_->vms()) {
    if (!vm.running) continue;
    VmStatus status;
    status.vm_id = vm.vm_id;
    status.name = vm.name;
    status.max_bytes = vm.max_bytes;
    status.actual_bytes = vm.actual_bytes;
    status.sizing.balloon = true;
    status.balloon_driver_ready = vm.balloon_driver;  // the simulator knows
    status.sizing.boot_bytes = vm.max_bytes;
    status.sizing.balloon_inflated_bytes =
        vm.max_bytes > vm.actual_bytes ? vm.max_bytes - vm.actual_bytes : 0;
    if (vm.balloon_driver && vm.guest_stats) {
      GuestMemoryStats& s = status.stats;
      s.total_bytes = vm.total_bytes;
      s.available_bytes = vm.available_bytes;
      s.free_bytes = vm.free_bytes;
      s.disk_caches_bytes = vm.disk_caches_bytes;
      s.swap_in_bytes_total = vm.swap_in_bytes_total;
      s.swap_out_bytes_total = vm.swap_out_bytes_total;
      s.major_faults_total = vm.major_faults_total;
      s.minor_faults_total = vm.minor_faults_total;
      s.oom_kills_total = vm.oom_kills_total;
      s.last_update = now;
    }
    out.push_back(std::move(status));
  }
  return out;
}

absl::Status SimHypervisor::SetBalloonTarget(const std::string& vm_id, uint64_t target_bytes) {
  absl::MutexLock lock(&mu_);
  AdvanceLocked();
  ASSIGN_OR_RETURN(const sim::SimVmState* vm, FindRunningLocked(vm_id));
  if (target_bytes == 0) {
    return absl::InvalidArgumentError(absl::StrCat("VM ", vm_id, ": target_bytes must be > 0"));
  }
  if (target_bytes > vm->max_bytes) {
    return absl::InvalidArgumentError(absl::StrCat("VM ", vm_id, ": target_bytes ", target_bytes,
                                                   " is above max_bytes ", vm->max_bytes));
  }
  return host_->SetTarget(vm_id, target_bytes);
}

absl::Status SimHypervisor::SetStatsPeriod(const std::string& vm_id, absl::Duration period) {
  absl::MutexLock lock(&mu_);
  AdvanceLocked();
  ASSIGN_OR_RETURN(const sim::SimVmState* vm, FindRunningLocked(vm_id));
  (void)vm;
  if (period <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError(absl::StrCat("VM ", vm_id, ": stats period must be > 0"));
  }
  return absl::OkStatus();
}

uint64_t SimHypervisor::host_total_bytes() const {
  absl::MutexLock lock(&mu_);
  return host_->host_total_bytes();
}

absl::Duration SimHypervisor::elapsed() const {
  absl::MutexLock lock(&mu_);
  return host_->elapsed();
}

}  // namespace membroker::agent

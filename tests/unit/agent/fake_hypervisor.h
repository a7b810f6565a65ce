#pragma once
// A Hypervisor test double: VMs held in memory; balloons move only when the
// test says so; a VM can be made to hang every call about it until the test
// releases it.

#include <cstdint>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "node-agent/hypervisor/hypervisor.h"

namespace membroker::agent {

// In-memory VMs. Thread-safe.
class FakeHypervisor : public Hypervisor {
 public:
  // One VM of the fake.
  struct Vm {
    VmStatus status;
    uint64_t target = 0;   // last target set (0: none)
    bool frozen = false;   // balloon never moves
    absl::Status fail_set;  // error SetBalloonTarget returns
    bool hang = false;     // calls about this VM block until released
  };

  std::string backend() const override { return "fake"; }

  absl::StatusOr<std::vector<VmStatus>> ListVms() override {
    absl::MutexLock lock(&mu_);
    if (!list_error_.ok()) return list_error_;
    std::vector<VmStatus> out;
    for (const auto& [id, vm] : vms_) out.push_back(vm.status);
    return out;
  }

  absl::Status SetBalloonTarget(const std::string& vm_id, uint64_t target_bytes) override {
    absl::MutexLock lock(&mu_);
    HangWhileAsked(vm_id);
    auto it = vms_.find(vm_id);
    if (it == vms_.end()) return absl::NotFoundError(absl::StrCat("no VM ", vm_id));
    if (!it->second.fail_set.ok()) return it->second.fail_set;
    if (target_bytes == 0 || target_bytes > it->second.status.max_bytes) {
      return absl::InvalidArgumentError("target out of range");
    }
    if (target_bytes < it->second.status.actual_bytes) ++inflate_calls_;
    it->second.target = target_bytes;
    calls_.emplace_back(vm_id, target_bytes);
    return absl::OkStatus();
  }

  absl::Status SetStatsPeriod(const std::string& vm_id, absl::Duration) override {
    absl::MutexLock lock(&mu_);
    HangWhileAsked(vm_id);
    if (vms_.count(vm_id) == 0) return absl::NotFoundError(absl::StrCat("no VM ", vm_id));
    ++stats_period_calls_;
    return absl::OkStatus();
  }

  // Adds a VM of `max` bytes with `actual` bytes.
  void AddVm(const std::string& id, uint64_t max, uint64_t actual) {
    absl::MutexLock lock(&mu_);
    Vm vm;
    vm.status.vm_id = id;
    vm.status.name = "vm-" + id;
    vm.status.max_bytes = max;
    vm.status.actual_bytes = actual;
    vms_[id] = vm;
  }

  void RemoveVm(const std::string& id) {
    absl::MutexLock lock(&mu_);
    vms_.erase(id);
  }

  // Moves every balloon toward its target by at most `bytes`.
  void MoveBalloons(uint64_t bytes) {
    absl::MutexLock lock(&mu_);
    for (auto& [id, vm] : vms_) {
      if (vm.frozen || vm.target == 0) continue;
      uint64_t& actual = vm.status.actual_bytes;
      if (actual < vm.target) actual += std::min(bytes, vm.target - actual);
      else actual -= std::min(bytes, actual - vm.target);
    }
  }

  // Balloons reach their targets at once.
  void SettleBalloons() { MoveBalloons(UINT64_MAX); }

  // Sets the finest step the VM's devices follow (VmSizing).
  void SetGranularity(const std::string& id, uint64_t bytes) {
    absl::MutexLock lock(&mu_);
    vms_[id].status.sizing.granularity_bytes = bytes;
  }
  void SetFrozen(const std::string& id, bool frozen) {
    absl::MutexLock lock(&mu_);
    vms_[id].frozen = frozen;
  }
  void SetFailSet(const std::string& id, absl::Status status) {
    absl::MutexLock lock(&mu_);
    vms_[id].fail_set = std::move(status);
  }
  void SetStats(const std::string& id, const GuestMemoryStats& stats) {
    absl::MutexLock lock(&mu_);
    vms_[id].status.stats = stats;
  }
  // Sets the VM's balloon actual (the guest moved it on its own).
  void SetActual(const std::string& id, uint64_t bytes) {
    absl::MutexLock lock(&mu_);
    vms_[id].status.actual_bytes = bytes;
  }
  // Sets the pid of the VM's process on the host.
  void SetPid(const std::string& id, int64_t pid) {
    absl::MutexLock lock(&mu_);
    vms_[id].status.host_pid = pid;
  }
  void SetListError(absl::Status status) {
    absl::MutexLock lock(&mu_);
    list_error_ = std::move(status);
  }
  uint64_t actual(const std::string& id) {
    absl::MutexLock lock(&mu_);
    return vms_[id].status.actual_bytes;
  }
  uint64_t target(const std::string& id) {
    absl::MutexLock lock(&mu_);
    return vms_[id].target;
  }
  // Every successful SetBalloonTarget call, in order.
  std::vector<std::pair<std::string, uint64_t>> calls() {
    absl::MutexLock lock(&mu_);
    return calls_;
  }
  void ClearCalls() {
    absl::MutexLock lock(&mu_);
    calls_.clear();
  }
  int stats_period_calls() {
    absl::MutexLock lock(&mu_);
    return stats_period_calls_;
  }
  // Successful SetBalloonTarget calls below the VM's actual (inflations).
  int inflate_calls() {
    absl::MutexLock lock(&mu_);
    return inflate_calls_;
  }

  // From now on every call about `id` blocks (forever) until Release(id).
  void Hang(const std::string& id) {
    absl::MutexLock lock(&mu_);
    vms_[id].hang = true;
  }
  // Lets the calls about `id` go on.
  void Release(const std::string& id) {
    absl::MutexLock lock(&mu_);
    vms_[id].hang = false;
  }
  // Calls blocked in Hang right now.
  int hanging_calls() {
    absl::MutexLock lock(&mu_);
    return hanging_calls_;
  }
  // Waits (really, up to `bound`) until `n` calls are blocked in Hang.
  bool WaitForHangingCalls(int n, absl::Duration bound) {
    absl::MutexLock lock(&mu_);
    auto reached = [&]() ABSL_SHARED_LOCKS_REQUIRED(mu_) { return hanging_calls_ == n; };
    return mu_.AwaitWithTimeout(absl::Condition(&reached), bound);
  }
  // Calls that were blocked in Hang and have returned.
  int released_calls() {
    absl::MutexLock lock(&mu_);
    return released_calls_;
  }

 private:
  void HangWhileAsked(const std::string& id) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    auto it = vms_.find(id);
    if (it == vms_.end() || !it->second.hang) return;
    ++hanging_calls_;
    auto released = [this, &id]() ABSL_SHARED_LOCKS_REQUIRED(mu_) {
      auto vm = vms_.find(id);
      return vm == vms_.end() || !vm->second.hang;
    };
    mu_.Await(absl::Condition(&released));
    --hanging_calls_;
    ++released_calls_;
  }

  absl::Mutex mu_;
  std::map<std::string, Vm> vms_ ABSL_GUARDED_BY(mu_);
  std::vector<std::pair<std::string, uint64_t>> calls_ ABSL_GUARDED_BY(mu_);
  absl::Status list_error_ ABSL_GUARDED_BY(mu_);
  int stats_period_calls_ ABSL_GUARDED_BY(mu_) = 0;
  int inflate_calls_ ABSL_GUARDED_BY(mu_) = 0;
  int hanging_calls_ ABSL_GUARDED_BY(mu_) = 0;
  int released_calls_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace membroker::agent

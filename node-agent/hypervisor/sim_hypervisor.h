#pragma once
// The "sim" backend: a Hypervisor over the simulator's SimHost. Simulated
// time follows the injected clock: every call first advances the simulator
// by (now - last call) * time_scale.

#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "common/clock.h"
#include "membroker/v1/config.pb.h"
#include "node-agent/hypervisor/hypervisor.h"
#include "sim/sim_host.h"

namespace membroker::agent {

// Simulated VMs as a Hypervisor. Thread-safe (one mutex around the host).
class SimHypervisor : public Hypervisor {
 public:
  // Builds the simulated host from `config`. INVALID_ARGUMENT naming the
  // field for a bad config (including a negative or non-finite
  // time_scale). `clock` is not owned and must outlive this object.
  static absl::StatusOr<std::unique_ptr<SimHypervisor>> Create(
      const membroker::v1::SimConfig& config, const Clock* clock);

  // Returns "sim".
  std::string backend() const override { return "sim"; }

  // Every running simulated VM. Guests without a balloon driver report no
  // statistics; the others report them as of now.
  absl::StatusOr<std::vector<VmStatus>> ListVms() override;

  // NOT_FOUND for an unknown or not yet started VM; INVALID_ARGUMENT for
  // zero or above the VM's max.
  absl::Status SetBalloonTarget(const std::string& vm_id, uint64_t target_bytes) override;

  // NOT_FOUND for an unknown or not yet started VM; INVALID_ARGUMENT for a
  // period that is not positive. The simulator always reports, so the
  // period is only recorded.
  absl::Status SetStatsPeriod(const std::string& vm_id, absl::Duration period) override;

  // The simulated host's physical memory.
  uint64_t host_total_bytes() const;

  // Simulated time since the start.
  absl::Duration elapsed() const;

 private:
  SimHypervisor(std::unique_ptr<sim::SimHost> host, const Clock* clock, double time_scale);

  // Advances the simulator to the clock's now.
  void AdvanceLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // The running VM with `vm_id`, or NOT_FOUND.
  absl::StatusOr<const sim::SimVmState*> FindRunningLocked(const std::string& vm_id) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const Clock* const clock_;
  const double time_scale_;
  mutable absl::Mutex mu_;
  std::unique_ptr<sim::SimHost> host_ ABSL_GUARDED_BY(mu_);
  absl::Time last_advance_ ABSL_GUARDED_BY(mu_);
};

}  // namespace membroker::agent

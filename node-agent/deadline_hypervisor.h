#pragma once
// Every hypervisor call with a deadline, so a hung libvirt or QMP call
// cannot stall the agent.
//
// DeadlineHypervisor wraps a backend. Each call runs on a thread of its
// own; the caller waits for it on the injected clock until the call
// timeout. A call that has not returned by then is abandoned: the caller
// gets DEADLINE_EXCEEDED, the VM it was about is reported as hung (HungVms),
// and its lane stays busy until the call returns. While a lane is busy, a
// further call on it fails at once with UNAVAILABLE instead of queueing
// behind the hung one. A late return frees the lane and is logged; its
// result is dropped (the actuator re-issues a target it did not see
// applied, and setting the same target again is harmless).
//
// Lanes: with `concurrent_vms`, each VM has its own lane and ListVms has
// one, so a hung VM does not stop calls for the others. Without it (the
// default) there is one lane for the whole backend, because libvirt and
// QMP backends are thread-compatible (one call at a time): then a hung call
// makes every other call fail fast until it returns, and the agent keeps
// reporting the VMs as last listed.

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "common/clock.h"
#include "node-agent/hypervisor/hypervisor.h"

namespace membroker::agent {

// How hypervisor calls are bounded.
struct HypervisorCallParams {
  // A call that has not returned this long after it started is abandoned.
  absl::Duration call_timeout = absl::Seconds(10);
  // Calls for different VMs may run at the same time. Only for a backend
  // that is safe for that (the sim backend, test doubles); the libvirt and
  // QMP backends are thread-compatible and need false.
  bool concurrent_vms = false;
};

// A Hypervisor whose calls end by their deadline. Thread-safe as far as
// the lanes allow: with concurrent_vms, calls for different VMs may come
// from different threads; otherwise callers serialize.
class DeadlineHypervisor : public Hypervisor {
 public:
  // `clock` is not owned and must outlive this object. `backend` is shared
  // with the call threads, so an abandoned call keeps it alive until it
  // returns.
  DeadlineHypervisor(std::shared_ptr<Hypervisor> backend, const Clock* clock,
                     HypervisorCallParams params);
  ~DeadlineHypervisor() override;

  // The backend's name (no I/O, not bounded).
  std::string backend() const override;

  // The backend's ListVms, bounded. DEADLINE_EXCEEDED when it has not
  // returned in time; UNAVAILABLE while an earlier call on its lane is hung.
  absl::StatusOr<std::vector<VmStatus>> ListVms() override;

  // The backend's SetBalloonTarget, bounded as ListVms; other errors are
  // the backend's.
  absl::Status SetBalloonTarget(const std::string& vm_id, uint64_t target_bytes) override;

  // The backend's SetStatsPeriod, bounded as ListVms.
  absl::Status SetStatsPeriod(const std::string& vm_id, absl::Duration period) override;

  // VMs with an abandoned call that has not returned yet: VM id -> reason
  // (which call, for how long).
  std::map<std::string, std::string> HungVms() const;

  // Abandoned calls that have not returned yet (any lane).
  int hung_calls() const;

  // Ends every wait at once (the callers get CANCELLED) and makes later
  // calls fail with CANCELLED, so the agent can stop while a call hangs.
  // Calls still in the backend finish on their own threads. Idempotent.
  void Shutdown();

 private:
  struct Shared;

  // Runs `fn` on a call thread in the lane of `vm_id` ("" for ListVms).
  absl::Status Call(const std::string& vm_id, const std::string& what,
                    std::function<absl::Status(Hypervisor&)> fn);

  std::shared_ptr<Hypervisor> backend_;
  const Clock* const clock_;
  const HypervisorCallParams params_;
  std::shared_ptr<Shared> shared_;
};

}  // namespace membroker::agent

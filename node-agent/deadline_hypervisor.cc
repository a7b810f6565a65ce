#include "node-agent/deadline_hypervisor.h"

#include <spdlog/spdlog.h>

#include <functional>
#include <set>
#include <thread>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"

namespace membroker::agent {

// State the call threads share with the wrapper; outlives both.
struct DeadlineHypervisor::Shared {
  // One lane: at most one call in flight.
  struct Lane {
    bool busy = false;
    // The call in flight ("SetBalloonTarget", ...) and its VM.
    std::string what;
    std::string vm_id;
    absl::Time started;
    // The caller gave up on it.
    bool abandoned = false;
  };

  // The result of one call, shared by the caller and the call thread.
  struct CallState {
    absl::Mutex mu;
    bool done ABSL_GUARDED_BY(mu) = false;
    // Shutdown ended the wait.
    bool cancelled ABSL_GUARDED_BY(mu) = false;
    absl::Status status ABSL_GUARDED_BY(mu);
  };

  // Lock order: mu, then a CallState's mu.
  mutable absl::Mutex mu;
  std::map<std::string, Lane> lanes ABSL_GUARDED_BY(mu);
  // Calls whose caller may still be waiting.
  std::set<std::shared_ptr<CallState>> waiting ABSL_GUARDED_BY(mu);
  bool shut_down ABSL_GUARDED_BY(mu) = false;
};

DeadlineHypervisor::DeadlineHypervisor(std::shared_ptr<Hypervisor> backend, const Clock* clock,
                                       HypervisorCallParams params)
    : backend_(std::move(backend)),
      clock_(clock),
      params_(params),
      shared_(std::make_shared<Shared>()) {}

DeadlineHypervisor::~DeadlineHypervisor() = default;

std::string DeadlineHypervisor::backend() const { return backend_->backend(); }

absl::Status DeadlineHypervisor::Call(const std::string& vm_id, const std::string& what,
                                      std::function<absl::Status(Hypervisor&)> fn) {
  const std::string lane_key = params_.concurrent_vms ? vm_id : std::string();
  const std::string subject = vm_id.empty() ? what : absl::StrCat(what, " on VM ", vm_id);
  auto call = std::make_shared<Shared::CallState>();
  {
    absl::MutexLock lock(&shared_->mu);
    if (shared_->shut_down) {
      return absl::CancelledError(absl::StrCat(subject, " not attempted: the agent is stopping"));
    }
    Shared::Lane& lane = shared_->lanes[lane_key];
    if (lane.busy) {
      const std::string busy =
          lane.vm_id.empty() ? lane.what : absl::StrCat(lane.what, " on VM ", lane.vm_id);
      return absl::UnavailableError(
          absl::StrCat(subject, " not attempted: ", busy, " has not returned for ",
                       absl::FormatDuration(absl::Trunc(clock_->MonotonicNow() - lane.started,
                                                        absl::Milliseconds(1)))));
    }
    lane.busy = true;
    lane.what = what;
    lane.vm_id = vm_id;
    lane.started = clock_->MonotonicNow();
    lane.abandoned = false;
    shared_->waiting.insert(call);
  }
  std::thread([shared = shared_, backend = backend_, call, fn = std::move(fn), lane_key,
               subject]() {
    absl::Status status = fn(*backend);
    {
      // Free the lane first: the caller may make its next call as soon as
      // it sees this one done.
      absl::MutexLock lock(&shared->mu);
      Shared::Lane& lane = shared->lanes[lane_key];
      if (lane.abandoned) {
        // No clock here: this thread may outlive the wrapper and its clock.
        spdlog::warn("{} returned after its deadline (abandoned; result {} dropped)", subject,
                     status.ToString());
      }
      lane = Shared::Lane();
    }
    absl::MutexLock lock(&call->mu);
    call->done = true;
    call->status = status;
  }).detach();

  bool returned = false;
  bool cancelled = false;
  absl::Status status;
  {
    absl::MutexLock lock(&call->mu);
    auto done = [&call]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(call->mu) {
      return call->done || call->cancelled;
    };
    clock_->AwaitWithTimeout(&call->mu, absl::Condition(&done), params_.call_timeout);
    returned = call->done;
    cancelled = call->cancelled;
    status = call->status;
  }
  {
    absl::MutexLock shared_lock(&shared_->mu);
    shared_->waiting.erase(call);
    if (!returned) {
      Shared::Lane& lane = shared_->lanes[lane_key];
      if (lane.busy) lane.abandoned = true;
    }
  }
  if (returned) return status;
  if (cancelled) {
    return absl::CancelledError(absl::StrCat(subject, ": abandoned, the agent is stopping"));
  }
  spdlog::warn("{} has not returned after {}: abandoned{}", subject,
               absl::FormatDuration(params_.call_timeout),
               vm_id.empty() ? "" : "; the VM is reported hung");
  return absl::DeadlineExceededError(absl::StrCat(subject, " has not returned after ",
                                                  absl::FormatDuration(params_.call_timeout),
                                                  vm_id.empty() ? "" : "; VM marked hung"));
}

absl::StatusOr<std::vector<VmStatus>> DeadlineHypervisor::ListVms() {
  // The call thread may outlive this frame: the result travels through a
  // shared slot.
  auto result = std::make_shared<absl::StatusOr<std::vector<VmStatus>>>();
  absl::Status status = Call("", "ListVms", [result](Hypervisor& hv) {
    *result = hv.ListVms();
    return result->status();
  });
  if (!status.ok()) return status;
  return std::move(*result);
}

absl::Status DeadlineHypervisor::SetBalloonTarget(const std::string& vm_id, uint64_t target_bytes) {
  return Call(vm_id, "SetBalloonTarget", [vm_id, target_bytes](Hypervisor& hv) {
    return hv.SetBalloonTarget(vm_id, target_bytes);
  });
}

absl::Status DeadlineHypervisor::SetStatsPeriod(const std::string& vm_id, absl::Duration period) {
  return Call(vm_id, "SetStatsPeriod",
              [vm_id, period](Hypervisor& hv) { return hv.SetStatsPeriod(vm_id, period); });
}

std::map<std::string, std::string> DeadlineHypervisor::HungVms() const {
  std::map<std::string, std::string> out;
  absl::MutexLock lock(&shared_->mu);
  const absl::Time now = clock_->MonotonicNow();
  for (const auto& [key, lane] : shared_->lanes) {
    if (!lane.busy || !lane.abandoned || lane.vm_id.empty()) continue;
    out[lane.vm_id] =
        absl::StrCat("hypervisor call hung: ", lane.what, " has not returned for ",
                     absl::FormatDuration(absl::Trunc(now - lane.started, absl::Milliseconds(1))));
  }
  return out;
}

int DeadlineHypervisor::hung_calls() const {
  int n = 0;
  absl::MutexLock lock(&shared_->mu);
  for (const auto& [key, lane] : shared_->lanes) n += (lane.busy && lane.abandoned) ? 1 : 0;
  return n;
}

}  // namespace membroker::agent

namespace membroker::agent {

void DeadlineHypervisor::Shutdown() {
  absl::MutexLock lock(&shared_->mu);
  shared_->shut_down = true;
  for (const std::shared_ptr<Shared::CallState>& call : shared_->waiting) {
    absl::MutexLock call_lock(&call->mu);
    call->cancelled = true;
  }
}

}  // namespace membroker::agent

#pragma once
// The broker's fleet-wide advice: placement (AdminService.Place) and the
// rebalance plan (AdminService.GetPlan, the membroker_plan_* metrics). Each
// call takes one snapshot of the fleet (Fleet::PlanSnapshot: one host lock
// at a time, for the time of a copy) and computes on it with no lock held
// (policy/plan.h), so reports are never blocked by the computation. A
// background loop recomputes the plan every interval so that the metrics
// follow the fleet without anyone asking.

#include <prometheus/gauge.h>
#include <prometheus/registry.h>

#include <cstdint>
#include <memory>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "broker/fleet.h"
#include "common/clock.h"
#include "membroker/v1/admin.pb.h"

namespace membroker::broker {

// How often the background loop recomputes the plan by default.
inline constexpr absl::Duration kDefaultPlanInterval = absl::Seconds(15);

// Largest PlaceRequest.count.
inline constexpr uint32_t kMaxPlaceCount = 10000;

// Converts a plan to its proto, stamped `computed_at`.
v1::Plan PlanToProto(const policy::RebalancePlan& plan, absl::Time computed_at);

// Checks a PlaceRequest: INVALID_ARGUMENT naming the field.
absl::Status ValidatePlaceRequest(const v1::PlaceRequest& request);

// Thread-safe.
class Planner {
 public:
  // None owned; all must outlive the Planner. Registers the membroker_plan_*
  // gauges in `registry`.
  Planner(const Fleet* fleet, const Clock* clock, prometheus::Registry& registry);
  // Stops the loop.
  ~Planner();

  // Computes the plan now and sets the gauges from it.
  v1::Plan ComputePlan();

  // Placement of `request.count` VMs of `request.bytes`. INVALID_ARGUMENT
  // for a bad request.
  absl::StatusOr<v1::PlaceResponse> Place(const v1::PlaceRequest& request) const;

  // Starts the loop that calls ComputePlan every `interval` (> 0), the
  // first one at once. Call at most once.
  void Start(absl::Duration interval);
  // Stops the loop and joins it (no-op when not started).
  void Stop();

 private:
  void Loop(absl::Duration interval);

  const Fleet* const fleet_;
  const Clock* const clock_;
  prometheus::Gauge* moves_;
  prometheus::Gauge* hosts_short_;
  prometheus::Gauge* hosts_short_after_;
  prometheus::Gauge* moved_bytes_;

  absl::Mutex mu_;
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  std::thread thread_;
};

}  // namespace membroker::broker

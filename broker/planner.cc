#include "broker/planner.h"

#include <malloc.h>
#include <prometheus/family.h>

#include "absl/strings/str_cat.h"
#include "common/proto_time.h"

namespace membroker::broker {
namespace {

prometheus::Gauge* NewGauge(prometheus::Registry& registry, const std::string& name,
                            const std::string& help) {
  return &prometheus::BuildGauge().Name(name).Help(help).Register(registry).Add({});
}

}  // namespace

v1::Plan PlanToProto(const policy::RebalancePlan& plan, absl::Time computed_at) {
  v1::Plan out;
  for (const policy::Move& m : plan.moves) {
    v1::PlannedMove* p = out.add_moves();
    p->set_vm_id(m.vm_id);
    p->set_vm_name(m.vm_name);
    p->set_from_host_id(m.from_host_id);
    p->set_to_host_id(m.to_host_id);
    p->set_bytes(m.bytes);
    p->set_reason(m.reason);
  }
  out.set_hosts_short_before(plan.hosts_short_before);
  out.set_hosts_short_after(plan.hosts_short_after);
  out.set_moved_bytes(plan.moved_bytes);
  for (const policy::UnresolvedHost& u : plan.unresolved) {
    v1::ShortHost* s = out.add_unresolved();
    s->set_host_id(u.host_id);
    s->set_short_bytes(u.short_bytes);
  }
  *out.mutable_computed_at() = ToProtoTimestamp(computed_at);
  return out;
}

absl::Status ValidatePlaceRequest(const v1::PlaceRequest& request) {
  if (request.bytes() == 0) return absl::InvalidArgumentError("bytes: must be > 0");
  if (request.bytes() > (uint64_t{1} << 62)) {
    return absl::InvalidArgumentError("bytes: at most 2^62");
  }
  if (request.count() > kMaxPlaceCount) {
    return absl::InvalidArgumentError(absl::StrCat("count: at most ", kMaxPlaceCount));
  }
  return absl::OkStatus();
}

Planner::Planner(const Fleet* fleet, const Clock* clock, prometheus::Registry& registry)
    : fleet_(fleet),
      clock_(clock),
      moves_(NewGauge(registry, "membroker_plan_moves", "VM moves in the current rebalance plan.")),
      hosts_short_(NewGauge(registry, "membroker_plan_hosts_short",
                            "Hosts whose VMs need more than capacity - free margin.")),
      hosts_short_after_(NewGauge(registry, "membroker_plan_hosts_short_after",
                                  "Hosts still short after the rebalance plan's moves.")),
      moved_bytes_(NewGauge(registry, "membroker_plan_moved_bytes",
                            "Memory the rebalance plan's moves relieve.")) {}

Planner::~Planner() { Stop(); }

v1::Plan Planner::ComputePlan() {
  const std::vector<policy::PlanHost> hosts = fleet_->PlanSnapshot();
  const policy::RebalancePlan plan = policy::PlanMoves(hosts);
  moves_->Set(static_cast<double>(plan.moves.size()));
  hosts_short_->Set(plan.hosts_short_before);
  hosts_short_after_->Set(plan.hosts_short_after);
  moved_bytes_->Set(static_cast<double>(plan.moved_bytes));
  return PlanToProto(plan, clock_->Now());
}

absl::StatusOr<v1::PlaceResponse> Planner::Place(const v1::PlaceRequest& request) const {
  if (absl::Status s = ValidatePlaceRequest(request); !s.ok()) return s;
  const uint32_t count = request.count() == 0 ? 1 : request.count();
  const policy::PlacementResult r =
      policy::PlaceVms(fleet_->PlanSnapshot(), request.bytes(), count);
  v1::PlaceResponse out;
  for (const policy::PlacementOption& o : r.options) {
    v1::PlacementOption* p = out.add_options();
    p->set_host_id(o.host_id);
    p->set_free_bytes(o.free_bytes);
    p->set_reclaim_bytes(o.reclaim_bytes);
    p->set_headroom_bytes(o.headroom_bytes);
  }
  for (const std::string& h : r.assignments) out.add_assignments(h);
  out.set_requested(count);
  return out;
}

void Planner::Start(absl::Duration interval) {
  thread_ = std::thread([this, interval] { Loop(interval); });
}

void Planner::Stop() {
  {
    absl::MutexLock lock(&mu_);
    stop_ = true;
  }
  if (thread_.joinable()) thread_.join();
}

void Planner::Loop(absl::Duration interval) {
  while (true) {
    ComputePlan();
    // The snapshot (every VM of the fleet, copied: about 200 bytes per VM)
    // was allocated in this thread's malloc arena and is freed now; glibc
    // keeps such pages resident until they are reused. Give them, and any
    // other free pages, back every plan interval.
#ifdef __GLIBC__
    malloc_trim(0);
#endif
    absl::MutexLock lock(&mu_);
    if (clock_->AwaitWithTimeout(&mu_, absl::Condition(&stop_), interval)) return;
  }
}

}  // namespace membroker::broker

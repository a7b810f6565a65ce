#include "broker/policy/plan.h"

#include <algorithm>
#include <cstdio>
#include <map>
#include <set>

#include "broker/policy/allocator.h"

namespace membroker::policy {
namespace {

std::string GiB(uint64_t bytes) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.2f GiB", static_cast<double>(bytes) / (1 << 30));
  return buf;
}

// A host's running sums while placing or planning.
struct Tally {
  const PlanHost* host = nullptr;
  uint64_t floor = 0;
  uint64_t need = 0;
  uint64_t target = 0;
  uint64_t Short() const { return need > host->usable_bytes ? need - host->usable_bytes : 0; }
  // usable - need (negative when short).
  int64_t Room() const {
    return static_cast<int64_t>(host->usable_bytes) - static_cast<int64_t>(need);
  }
};

Tally TallyOf(const PlanHost& h) {
  return Tally{&h, h.FloorBytes(), h.NeedBytes(), h.TargetBytes()};
}

// Step 1 of placement for one host; false when it cannot take `bytes`.
bool Option(const Tally& t, uint64_t bytes, PlacementOption* out) {
  if (!t.host->connected) return false;
  if (t.floor > t.host->usable_bytes || t.host->usable_bytes - t.floor < bytes) return false;
  out->host_id = t.host->host_id;
  out->free_bytes = t.target < t.host->usable_bytes ? t.host->usable_bytes - t.target : 0;
  out->reclaim_bytes = bytes > out->free_bytes ? bytes - out->free_bytes : 0;
  out->headroom_bytes = t.Room() - static_cast<int64_t>(bytes);
  out->within_need = out->headroom_bytes >= 0;
  return true;
}

// Step 2 of placement: true when `a` is better than `b`.
bool Better(const PlacementOption& a, const PlacementOption& b) {
  if (a.within_need != b.within_need) return a.within_need;
  if (a.reclaim_bytes != b.reclaim_bytes) return a.reclaim_bytes < b.reclaim_bytes;
  if (a.headroom_bytes != b.headroom_bytes) return a.headroom_bytes > b.headroom_bytes;
  return a.host_id < b.host_id;
}

}  // namespace

uint64_t PlanHost::FloorBytes() const {
  uint64_t sum = 0;
  for (const PlanVm& vm : vms) sum += vm.floor_bytes;
  return sum;
}

uint64_t PlanHost::NeedBytes() const {
  uint64_t sum = 0;
  for (const PlanVm& vm : vms) sum += vm.need_bytes;
  return sum;
}

uint64_t PlanHost::TargetBytes() const {
  uint64_t sum = 0;
  for (const PlanVm& vm : vms) sum += vm.target_bytes;
  return sum;
}

uint64_t ShortBytes(const PlanHost& host) { return TallyOf(host).Short(); }

PlanHost PlanHostFromStep(const std::string& host_id, bool connected, const HostStepState& state) {
  PlanHost out;
  out.host_id = host_id;
  out.connected = connected;
  // Room promised to reservations is as taken as the free margin.
  const uint64_t held = state.params.host_free_margin_bytes + state.reserved_bytes;
  out.usable_bytes = state.capacity_bytes > held ? state.capacity_bytes - held : 0;
  out.vms.reserve(state.vms.size());
  for (const auto& [id, s] : state.vms) {
    PlanVm vm;
    vm.vm_id = id;
    if (s.decided) {
      const VmInput& in = s.input;
      vm.floor_bytes = FloorBytes(in);
      vm.need_bytes = std::max(vm.floor_bytes, std::min(in.demand_bytes, in.max_bytes));
      vm.target_bytes = s.decision.target_bytes;
      vm.weight = std::max<uint32_t>(1, in.weight);
      vm.pinned = in.pinned;
    } else {
      // No decision yet: all that is known is its current size.
      vm.floor_bytes = vm.need_bytes = vm.target_bytes = s.actual_bytes;
    }
    out.vms.push_back(std::move(vm));
  }
  return out;
}

PlacementResult PlaceVms(const std::vector<PlanHost>& hosts, uint64_t bytes, uint32_t count) {
  PlacementResult out;
  if (bytes == 0 || count == 0) return out;
  std::vector<Tally> tallies;
  tallies.reserve(hosts.size());
  for (const PlanHost& h : hosts) tallies.push_back(TallyOf(h));
  for (const Tally& t : tallies) {
    PlacementOption o;
    if (Option(t, bytes, &o)) out.options.push_back(std::move(o));
  }
  std::sort(out.options.begin(), out.options.end(), Better);
  // Step 3: one by one. Only hosts of the first list can ever take one.
  std::vector<Tally*> usable;
  std::map<std::string, Tally*> by_id;
  for (Tally& t : tallies) by_id[t.host->host_id] = &t;
  for (const PlacementOption& o : out.options) usable.push_back(by_id[o.host_id]);
  for (uint32_t k = 0; k < count; ++k) {
    Tally* best = nullptr;
    PlacementOption best_option;
    for (Tally* t : usable) {
      PlacementOption o;
      if (!Option(*t, bytes, &o)) continue;
      if (best == nullptr || Better(o, best_option)) {
        best = t;
        best_option = std::move(o);
      }
    }
    if (best == nullptr) break;
    best->floor += bytes;
    best->need += bytes;
    best->target += bytes;
    out.assignments.push_back(best->host->host_id);
  }
  return out;
}

RebalancePlan PlanMoves(const std::vector<PlanHost>& hosts) {
  RebalancePlan plan;
  std::vector<Tally> tallies;
  tallies.reserve(hosts.size());
  for (const PlanHost& h : hosts) tallies.push_back(TallyOf(h));
  std::vector<Tally*> sources;
  std::set<const PlanHost*> short_hosts;
  for (Tally& t : tallies) {
    if (t.Short() > 0) {
      sources.push_back(&t);
      short_hosts.insert(t.host);
    }
  }
  plan.hosts_short_before = static_cast<uint32_t>(sources.size());
  // Step 1.
  std::sort(sources.begin(), sources.end(), [](const Tally* a, const Tally* b) {
    if (a->Short() != b->Short()) return a->Short() > b->Short();
    return a->host->host_id < b->host->host_id;
  });
  // Step 2: the eligible destinations, most room first (then host id); the
  // destination of a VM needing `need` is the first one if it has the room,
  // else there is none.
  auto by_room = [](const Tally* a, const Tally* b) {
    if (a->Room() != b->Room()) return a->Room() > b->Room();
    return a->host->host_id < b->host->host_id;
  };
  std::set<Tally*, decltype(by_room)> destinations(by_room);
  for (Tally& t : tallies) {
    if (t.host->connected && short_hosts.count(t.host) == 0) destinations.insert(&t);
  }
  auto destination = [&](uint64_t need) -> Tally* {
    if (destinations.empty()) return nullptr;
    Tally* best = *destinations.begin();
    return best->Room() >= static_cast<int64_t>(need) ? best : nullptr;
  };
  for (Tally* src : sources) {
    const uint64_t short_at_start = src->Short();
    std::vector<bool> moved(src->host->vms.size(), false);
    while (src->Short() > 0) {
      const uint64_t deficit = src->Short();
      // Step 3: the VM to move and its destination.
      int pick = -1;
      Tally* pick_to = nullptr;
      bool pick_covers = false;
      for (size_t i = 0; i < src->host->vms.size(); ++i) {
        const PlanVm& vm = src->host->vms[i];
        if (moved[i] || vm.pinned || vm.need_bytes == 0) continue;
        Tally* to = destination(vm.need_bytes);
        if (to == nullptr) continue;
        const bool covers = vm.need_bytes >= deficit;
        bool better = false;
        if (pick < 0) {
          better = true;
        } else {
          const PlanVm& cur = src->host->vms[pick];
          if (covers != pick_covers) {
            better = covers;
          } else if (covers) {
            const double cost = static_cast<double>(vm.need_bytes) * vm.weight;
            const double cur_cost = static_cast<double>(cur.need_bytes) * cur.weight;
            better = cost != cur_cost          ? cost < cur_cost
                     : vm.weight != cur.weight ? vm.weight < cur.weight
                                               : vm.vm_id < cur.vm_id;
          } else {
            better = vm.weight != cur.weight           ? vm.weight < cur.weight
                     : vm.need_bytes != cur.need_bytes ? vm.need_bytes > cur.need_bytes
                                                       : vm.vm_id < cur.vm_id;
          }
        }
        if (better) {
          pick = static_cast<int>(i);
          pick_to = to;
          pick_covers = covers;
        }
      }
      if (pick < 0) break;
      const PlanVm& vm = src->host->vms[pick];
      moved[pick] = true;
      src->floor -= vm.floor_bytes;
      src->need -= vm.need_bytes;
      src->target -= std::min(src->target, vm.target_bytes);
      destinations.erase(pick_to);  // its room changes: re-sort it
      pick_to->floor += vm.floor_bytes;
      pick_to->need += vm.need_bytes;
      pick_to->target += vm.need_bytes;
      destinations.insert(pick_to);
      Move m;
      m.vm_id = vm.vm_id;
      m.vm_name = vm.name;
      m.from_host_id = src->host->host_id;
      m.to_host_id = pick_to->host->host_id;
      m.bytes = vm.need_bytes;
      m.reason = "host " + src->host->host_id + " short by " + GiB(short_at_start);
      plan.moved_bytes += m.bytes;
      plan.moves.push_back(std::move(m));
    }
    if (src->Short() > 0) {
      plan.unresolved.push_back(UnresolvedHost{src->host->host_id, src->Short()});
    }
  }
  plan.hosts_short_after = static_cast<uint32_t>(plan.unresolved.size());
  return plan;
}

}  // namespace membroker::policy

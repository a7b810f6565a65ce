// The Fleet's snapshot for placement and the rebalance plan.

#include "broker/fleet.h"

namespace membroker::broker {

std::vector<policy::PlanHost> Fleet::PlanSnapshot() const {
  std::vector<policy::PlanHost> out;
  for (const auto& h : AllHosts()) {
    absl::MutexLock lock(&h->mu);
    policy::PlanHost host = policy::PlanHostFromStep(h->host_id, h->connected, h->step);
    for (policy::PlanVm& vm : host.vms) {
      auto it = h->vms.find(vm.vm_id);
      if (it != h->vms.end()) vm.name = it->second.sample.name();
    }
    out.push_back(std::move(host));
  }
  return out;
}

}  // namespace membroker::broker

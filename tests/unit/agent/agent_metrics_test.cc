// The agent's per-VM gauges: set for the VMs listed, removed with them.

#include "node-agent/agent_metrics.h"

#include <map>
#include <string>

#include <prometheus/registry.h>

#include "gtest/gtest.h"

namespace membroker::agent {
namespace {

// The gauge `name` with label vm=`vm`; -1 when there is no such series.
double Gauge(prometheus::Registry& registry, const std::string& name, const std::string& vm) {
  for (const auto& family : registry.Collect()) {
    if (family.name != name) continue;
    for (const auto& metric : family.metric) {
      for (const auto& label : metric.label) {
        if (label.name == "vm" && label.value == vm) return metric.gauge.value;
      }
    }
  }
  return -1;
}

TEST(AgentMetricsTest, FreePageReportingGaugeFollowsEachVm) {
  prometheus::Registry registry;
  AgentMetrics metrics(registry);
  std::map<std::string, AgentMetrics::VmValues> vms;
  vms["id-1"].vm = "reporting";
  vms["id-1"].free_page_reporting = true;
  vms["id-2"].vm = "plain";
  metrics.SetVms(vms);
  EXPECT_EQ(Gauge(registry, "membroker_agent_vm_free_page_reporting", "reporting"), 1);
  EXPECT_EQ(Gauge(registry, "membroker_agent_vm_free_page_reporting", "plain"), 0);
  // Turned off (a restarted VM), and a VM that left loses its series.
  vms["id-1"].free_page_reporting = false;
  vms.erase("id-2");
  metrics.SetVms(vms);
  EXPECT_EQ(Gauge(registry, "membroker_agent_vm_free_page_reporting", "reporting"), 0);
  EXPECT_EQ(Gauge(registry, "membroker_agent_vm_free_page_reporting", "plain"), -1);
}

}  // namespace
}  // namespace membroker::agent

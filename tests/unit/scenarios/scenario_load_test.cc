#include <gtest/gtest.h>

#include <cstdio>
#include <fstream>
#include <string>

#include "common/textproto.h"
#include "sim/scenario.h"

namespace membroker::sim {
namespace {

using membroker::v1::Scenario;

const char* const kScenarios[] = {"idle_fleet", "noisy_neighbour", "boot_storm",    "diurnal_mix",
                                  "slow_leak",  "overcommitted",   "heterogeneous", "no_driver",
                                  "fleet_100",  "swapless_surge", "small_and_large", "no_stats"};

std::string PathOf(const std::string& name) {
  return std::string(MB_SCENARIOS_DIR) + "/" + name + ".textproto";
}

TEST(ScenarioLoadTest, EveryScenarioLoadsAndValidates) {
  for (const char* name : kScenarios) {
    auto s = LoadScenario(PathOf(name));
    ASSERT_TRUE(s.ok()) << name << ": " << s.status();
    EXPECT_EQ(s->name(), name);
    EXPECT_GT(s->hosts_size(), 0);
  }
}

TEST(ScenarioLoadTest, FleetHasOneHundredHostsWithUniqueNames) {
  auto s = LoadScenario(PathOf("fleet_100"));
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_EQ(s->hosts_size(), 100);
  EXPECT_EQ(s->hosts(0).name(), "idle-c0");
  // Copies differ in their noise: the per-host seeds differ.
  EXPECT_NE(HostSimConfig(*s, 0).seed(), HostSimConfig(*s, 1).seed());
}

TEST(ScenarioLoadTest, MissingFileIsNotFound) {
  EXPECT_EQ(LoadScenario("/nonexistent/x.textproto").status().code(), absl::StatusCode::kNotFound);
}

TEST(ScenarioLoadTest, IncludeOfAMissingFileFails) {
  const std::string path = ::testing::TempDir() + "/inc.textproto";
  {
    std::ofstream f(path);
    f << "name: 'x' duration { seconds: 10 } includes { file: 'nope.textproto' }\n";
  }
  EXPECT_EQ(LoadScenario(path).status().code(), absl::StatusCode::kNotFound);
  std::remove(path.c_str());
}

TEST(ScenarioLoadTest, ValidationNamesTheField) {
  const std::string vm = "vm { name: 'a' max_bytes: 1073741824 workload { constant {} } }";
  struct Case {
    std::string text;
    const char* field;
  } cases[] = {
      {"duration { seconds: 10 } hosts { name: 'h' capacity_bytes: 1 }", "name"},
      {"name: 'x' hosts { name: 'h' capacity_bytes: 1 }", "duration"},
      {"name: 'x' duration { seconds: 10 } report_interval { nanos: 1000 } "
       "hosts { name: 'h' capacity_bytes: 1 }",
       "report_interval"},
      {"name: 'x' duration { seconds: 10 }", "hosts"},
      {"name: 'x' duration { seconds: 10 } hosts { capacity_bytes: 1 }", "hosts[0].name"},
      {"name: 'x' duration { seconds: 10 } hosts { name: 'h' }", "hosts[0].capacity_bytes"},
      {"name: 'x' duration { seconds: 10 } hosts { name: 'h' capacity_bytes: 1 } "
       "hosts { name: 'h' capacity_bytes: 1 }",
       "hosts[1].name"},
      {"name: 'x' duration { seconds: 10 } hosts { name: 'h' capacity_bytes: 1 vms { " + vm +
           " } vms { " + vm + " } }",
       "hosts[0].vms[1].vm.name"},
      {"name: 'x' duration { seconds: 10 } hosts { name: 'h' capacity_bytes: 1 vms { " + vm +
           " } } hosts { name: 'g' capacity_bytes: 1 vms { " + vm + " } }",
       "hosts[1].vms[0].vm.name"},
      {"name: 'x' duration { seconds: 10 } hosts { name: 'h' capacity_bytes: 1 vms { " + vm +
           " policy { min_bytes: 2147483648 } } }",
       "hosts[0].vms[0].policy.min_bytes"},
      {"name: 'x' duration { seconds: 10 } hosts { name: 'h' capacity_bytes: 1 vms { " + vm +
           " policy { weight: 0 } } }",
       "hosts[0].vms[0].policy.weight"},
      {"name: 'x' duration { seconds: 10 } hosts { name: 'h' capacity_bytes: 1 vms { "
       "vm { name: 'a' max_bytes: 1073741824 } } }",
       "hosts[0].vms[0].vm.workload"},
  };
  for (const Case& c : cases) {
    Scenario s;
    ASSERT_TRUE(ParseTextProto(c.text, "test", &s).ok()) << c.text;
    absl::Status st = ValidateScenario(s);
    EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument) << c.text;
    EXPECT_NE(st.message().find(c.field), std::string::npos) << c.text << " -> " << st;
  }
}

}  // namespace
}  // namespace membroker::sim

// Rendering of replies: tables with human sizes, proto3 JSON with proto
// field names, and YAML of the same structure.

#include "client/output.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

namespace membroker::client {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

v1::ListVmsResponse SampleVms() {
  v1::ListVmsResponse r;
  v1::Vm* vm = r.add_vms();
  vm->set_vm_id("3f6c-uuid");
  vm->set_host_id("kvm-01");
  vm->set_name("web-1");
  vm->set_max_bytes(4ull << 30);
  vm->set_actual_bytes(3ull << 30);
  vm->set_target_bytes(2560ull << 20);
  vm->set_demand_bytes(2ull << 30);
  vm->set_floor_bytes(1ull << 30);
  vm->set_health(v1::BALLOON_HEALTH_OK);
  vm->set_reason(v1::REASON_STEP_LIMIT);
  vm->mutable_policy()->set_weight(250);
  vm->set_guest_used_bytes(1800ull << 20);
  vm->set_swap_in_bytes_per_second(2048);
  return r;
}

TEST(TableTest, AlignsColumns) {
  Table t({"A", "LONGER"});
  t.AddRow({"xxxx", "1"});
  t.AddRow({"y"});
  EXPECT_EQ(t.Render(), "A     LONGER\nxxxx  1\ny     \n");
  EXPECT_EQ(t.rows(), 2u);
}

TEST(RenderTest, VmsTableHasContractColumnsAndHumanSizes) {
  std::string table = RenderVmsTable(SampleVms(), /*wide=*/false);
  EXPECT_THAT(table, HasSubstr("HOST"));
  for (const char* col :
       {"NAME", "MAX", "ACTUAL", "TARGET", "DEMAND", "FLOOR", "HEALTH", "REASON"}) {
    EXPECT_THAT(table, HasSubstr(col));
  }
  EXPECT_THAT(table, HasSubstr("4 GiB"));
  EXPECT_THAT(table, HasSubstr("2.50 GiB"));
  EXPECT_THAT(table, HasSubstr("step-limit"));
  EXPECT_THAT(table, Not(HasSubstr("VM_ID")));
  std::string wide = RenderVmsTable(SampleVms(), /*wide=*/true);
  for (const char* col : {"VM_ID", "WEIGHT", "GUEST_USED", "SWAP_IN/s"}) {
    EXPECT_THAT(wide, HasSubstr(col));
  }
  EXPECT_THAT(wide, HasSubstr("3f6c-uuid"));
  EXPECT_THAT(wide, HasSubstr("250"));
  EXPECT_THAT(wide, HasSubstr("2 KiB/s"));
}

TEST(RenderTest, HostsTableHasContractColumns) {
  v1::ListHostsResponse r;
  v1::Host* h = r.add_hosts();
  h->set_host_id("kvm-02");
  h->set_connected(true);
  h->set_vm_count(7);
  h->set_capacity_bytes(64ull << 30);
  h->set_overcommitted(true);
  h->mutable_sample()->set_psi_some_avg10_percent(12.34);
  std::string table = RenderHostsTable(r, false);
  EXPECT_EQ(table.substr(0, table.find('\n')),
            "HOST    CONNECTED  VMS  CAPACITY  TARGET  ACTUAL  FLOOR  DEMAND  PRESSURE  "
            "OVERCOMMITTED");
  EXPECT_THAT(table, HasSubstr("64 GiB"));
  EXPECT_THAT(table, HasSubstr("12.3%"));
  EXPECT_THAT(RenderHostsTable(r, true), HasSubstr("BACKEND"));
}

TEST(RenderTest, JsonUsesProtoFieldNamesAndStringUint64) {
  std::string json = RenderMessage(SampleVms(), OutputFormat::kJson);
  EXPECT_THAT(json, HasSubstr("\"vms\""));
  EXPECT_THAT(json, HasSubstr("\"host_id\": \"kvm-01\""));
  EXPECT_THAT(json, HasSubstr("\"max_bytes\": \"4294967296\""));
  EXPECT_THAT(json, HasSubstr("\"health\": \"BALLOON_HEALTH_OK\""));
  EXPECT_THAT(json, Not(HasSubstr("hostId")));
}

TEST(RenderTest, YamlRendersTheSameStructure) {
  std::string yaml = RenderMessage(SampleVms(), OutputFormat::kYaml);
  EXPECT_THAT(yaml, HasSubstr("vms:\n- vm_id: \"3f6c-uuid\"\n  host_id: kvm-01\n  name: web-1\n"));
  EXPECT_THAT(yaml, HasSubstr("  max_bytes: \"4294967296\"\n"));
  EXPECT_THAT(yaml, HasSubstr("  policy:\n    weight: 250\n"));
  EXPECT_THAT(yaml, HasSubstr("  swap_in_bytes_per_second: 2048\n"));
}

TEST(JsonToYamlTest, Shapes) {
  auto y = JsonToYaml(R"({"a": 1, "b": "x y", "c": [1, "2", {"d": true, "e": []}], "f": {},
                          "g": [[1, 2]], "h": "true", "i": "", "j": "a:b", "k": null})");
  ASSERT_TRUE(y.ok()) << y.status();
  EXPECT_EQ(*y,
            "a: 1\n"
            "b: x y\n"
            "c:\n"
            "- 1\n"
            "- \"2\"\n"
            "- d: true\n"
            "  e: []\n"
            "f: {}\n"
            "g:\n"
            "-\n"
            "  - 1\n"
            "  - 2\n"
            "h: \"true\"\n"
            "i: \"\"\n"
            "j: \"a:b\"\n"
            "k: null\n");
  auto esc = JsonToYaml(R"({"s": "line\nnext \"q\" \u00e9"})");
  ASSERT_TRUE(esc.ok());
  EXPECT_EQ(*esc, "s: \"line\\nnext \\\"q\\\" \xc3\xa9\"\n");
  EXPECT_EQ(*JsonToYaml("{}"), "{}\n");
}

TEST(JsonToYamlTest, RejectsMalformedJson) {
  for (const char* bad :
       {"", "{", "{\"a\" 1}", "[1,]", "{\"a\": 1} x", "\"unterminated", "{\"a\": \"\\q\"}"}) {
    EXPECT_FALSE(JsonToYaml(bad).ok()) << bad;
  }
  std::string deep(500, '[');
  EXPECT_FALSE(JsonToYaml(deep).ok());
}

TEST(NamesTest, HealthAndReason) {
  EXPECT_EQ(HealthName(v1::BALLOON_HEALTH_NO_DRIVER), "no-driver");
  EXPECT_EQ(HealthName(v1::BALLOON_HEALTH_UNSPECIFIED), "unknown");
  EXPECT_EQ(ReasonName(v1::REASON_BALLOON_UNHEALTHY), "balloon-unhealthy");
  EXPECT_EQ(ReasonName(v1::REASON_UNSPECIFIED), "-");
  EXPECT_EQ(ReasonName(static_cast<v1::ReasonCode>(99)), "reason-99");
}

TEST(RenderTest, ExplanationPrintsNumbersAndSteps) {
  v1::Explanation e;
  e.mutable_vm()->set_name("db-1");
  e.mutable_vm()->set_vm_id("id-9");
  e.mutable_vm()->set_host_id("kvm-03");
  e.set_target_bytes(3ull << 30);
  e.set_floor_bytes(1ull << 30);
  e.set_weight(100);
  e.set_effective_weight(40.5);
  e.set_reason(v1::REASON_SHARE);
  e.add_steps("floor = max(min 1 GiB, protect 900 MiB) = 1 GiB");
  e.add_steps("share between floor and desired by weight");
  std::string text = DescribeExplanation(e);
  EXPECT_THAT(text, HasSubstr("VM db-1 (id-9) on host kvm-03"));
  EXPECT_THAT(text, HasSubstr("3 GiB (3221225472)"));
  EXPECT_THAT(text, HasSubstr("reason: share"));
  EXPECT_THAT(text, HasSubstr("100 (40.50 after idle tax)"));
  EXPECT_THAT(text, HasSubstr("Steps:\n  floor = max(min 1 GiB, protect 900 MiB) = 1 GiB\n"
                              "  share between floor and desired by weight\n"));
}

TEST(RenderTest, PlanTable) {
  v1::Plan plan;
  EXPECT_EQ(RenderPlanTable(plan), "No moves planned.\n");
  v1::PlannedMove* m = plan.add_moves();
  m->set_vm_id("vm-1");
  m->set_from_host_id("a");
  m->set_to_host_id("b");
  m->set_bytes(8ull << 30);
  m->set_reason("floors exceed capacity");
  EXPECT_THAT(RenderPlanTable(plan), HasSubstr("8 GiB"));
  EXPECT_THAT(RenderPlanTable(plan), HasSubstr("floors exceed capacity"));
}

}  // namespace
}  // namespace membroker::client

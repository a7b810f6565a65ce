// Rendering of replies: tables with human sizes, proto3 JSON with proto
// field names, and YAML of the same structure that reads back to the same
// values.

#include "client/output.h"

#include <gmock/gmock.h>
#include <google/protobuf/timestamp.pb.h>
#include <google/protobuf/util/json_util.h>
#include <google/protobuf/util/message_differencer.h>
#include <google/protobuf/wrappers.pb.h>
#include <gtest/gtest.h>
#include <yaml-cpp/yaml.h>

#include <cmath>
#include <limits>
#include <map>
#include <string>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "membroker/v1/agent.pb.h"

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

TEST(RenderTest, WideVmsTableSaysWhichMechanismMovedWhat) {
  v1::ListVmsResponse r;
  v1::Vm* vmem = r.add_vms();
  vmem->set_host_id("kvm-01");
  vmem->set_name("vmem-guest");
  vmem->set_health(v1::BALLOON_HEALTH_OK);
  vmem->set_sizing_mechanism("virtio-mem+balloon");
  vmem->set_virtio_mem_plugged_bytes(302ull << 20);
  vmem->set_balloon_inflated_bytes(3ull << 20);
  v1::Vm* excluded = r.add_vms();
  excluded->set_host_id("kvm-01");
  excluded->set_name("passthrough");
  excluded->set_health(v1::BALLOON_HEALTH_EXCLUDED);
  excluded->set_health_reason("PCI passthrough: VFIO device hostdev0");
  v1::Vm* old_agent = r.add_vms();
  old_agent->set_host_id("kvm-02");
  old_agent->set_name("from-an-older-agent");
  const std::string narrow = RenderVmsTable(r, /*wide=*/false);
  EXPECT_THAT(narrow, HasSubstr("excluded"));
  EXPECT_THAT(narrow, Not(HasSubstr("SIZING")));
  const std::string wide = RenderVmsTable(r, /*wide=*/true);
  for (const char* col : {"SIZING", "VMEM_PLUGGED", "BALLOONED", "HEALTH_REASON"}) {
    EXPECT_THAT(wide, HasSubstr(col));
  }
  EXPECT_THAT(wide, HasSubstr("virtio-mem+balloon"));
  EXPECT_THAT(wide, HasSubstr("302 MiB"));
  EXPECT_THAT(wide, HasSubstr("3 MiB"));
  EXPECT_THAT(wide, HasSubstr("PCI passthrough: VFIO device hostdev0"));
  // No mechanism from an older agent: the balloon, as it was.
  const std::string last = wide.substr(wide.find("from-an-older-agent"));
  EXPECT_THAT(last, HasSubstr("balloon"));
}

TEST(RenderTest, WideVmsTableShowsFreePageReporting) {
  v1::ListVmsResponse r;
  v1::Vm* on = r.add_vms();
  on->set_host_id("kvm-01");
  on->set_name("reporting");
  on->set_free_page_reporting(true);
  on->set_guest_free_on_host_bytes(123ull << 20);
  v1::Vm* off = r.add_vms();
  off->set_host_id("kvm-01");
  off->set_name("not-reporting");
  off->set_guest_free_on_host_bytes(77ull << 20);  // ignored: reporting is off
  EXPECT_THAT(RenderVmsTable(r, /*wide=*/false), Not(HasSubstr("FREE_PAGE_REPORTING")));
  const std::string wide = RenderVmsTable(r, /*wide=*/true);
  EXPECT_THAT(wide, HasSubstr("FREE_PAGE_REPORTING"));
  EXPECT_THAT(wide, HasSubstr("FREE_ON_HOST"));
  std::string on_row;
  std::string off_row;
  for (absl::string_view line : absl::StrSplit(wide, '\n')) {
    if (absl::StrContains(line, "not-reporting")) {
      off_row = std::string(line);
    } else if (absl::StrContains(line, "reporting")) {
      on_row = std::string(line);
    }
  }
  EXPECT_THAT(on_row, HasSubstr(" on "));
  EXPECT_THAT(on_row, HasSubstr("123 MiB"));
  EXPECT_THAT(off_row, HasSubstr(" off "));
  EXPECT_THAT(off_row, Not(HasSubstr("77 MiB")));
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
  absl::StatusOr<std::string> json = RenderMessage(SampleVms(), OutputFormat::kJson);
  ASSERT_TRUE(json.ok()) << json.status();
  EXPECT_THAT(*json, HasSubstr("\"vms\""));
  EXPECT_THAT(*json, HasSubstr("\"host_id\": \"kvm-01\""));
  EXPECT_THAT(*json, HasSubstr("\"max_bytes\": \"4294967296\""));
  EXPECT_THAT(*json, HasSubstr("\"health\": \"BALLOON_HEALTH_OK\""));
  // Fields without presence print even at zero; unset messages do not.
  EXPECT_THAT(*json, HasSubstr("\"protect_bytes\": \"0\""));
  EXPECT_THAT(*json, Not(HasSubstr("\"stats\"")));
  EXPECT_THAT(*json, Not(HasSubstr("hostId")));
  EXPECT_EQ(json->back(), '\n');
}

TEST(RenderTest, YamlRendersTheSameStructure) {
  absl::StatusOr<std::string> yaml = RenderMessage(SampleVms(), OutputFormat::kYaml);
  ASSERT_TRUE(yaml.ok()) << yaml.status();
  EXPECT_EQ(*yaml,
            "vms:\n"
            "  - vm_id: \"3f6c-uuid\"\n"
            "    host_id: kvm-01\n"
            "    name: web-1\n"
            "    max_bytes: \"4294967296\"\n"
            "    actual_bytes: \"3221225472\"\n"
            "    target_bytes: \"2684354560\"\n"
            "    demand_bytes: \"2147483648\"\n"
            "    floor_bytes: \"1073741824\"\n"
            "    protect_bytes: \"0\"\n"
            "    health: BALLOON_HEALTH_OK\n"
            "    reason: REASON_STEP_LIMIT\n"
            "    policy:\n"
            "      weight: 250\n"
            "    guest_used_bytes: \"1887436800\"\n"
            "    swap_in_bytes_per_second: 2048\n"
            "    major_faults_per_second: 0\n"
            "    guest_oom_kills: \"0\"\n"
            "    sizing_mechanism: \"\"\n"
            "    virtio_mem_plugged_bytes: \"0\"\n"
            "    balloon_inflated_bytes: \"0\"\n"
            "    health_reason: \"\"\n"
            "    free_page_reporting: false\n"
            "    guest_free_on_host_bytes: \"0\"\n");
  absl::StatusOr<std::string> empty = RenderMessage(v1::ListVmsResponse(), OutputFormat::kYaml);
  ASSERT_TRUE(empty.ok());
  EXPECT_EQ(*empty, "vms: []\n");
  empty = RenderMessage(v1::ClusterPolicy(), OutputFormat::kYaml);
  ASSERT_TRUE(empty.ok());
  EXPECT_EQ(*empty, "{}\n");
}

// A name with characters outside the BMP (a surrogate pair in UTF-16 and
// in JSON \u escapes), a quote, a newline, a colon and a backslash.
const char kHardName[] = "caf\xC3\xA9 \xF0\x9F\x98\x80 \"q\"\nnext: line \\ end";

TEST(RoundTripTest, JsonAndYamlGiveBackTheSameStrings) {
  v1::ListVmsResponse reply = SampleVms();
  reply.mutable_vms(0)->set_name(kHardName);
  reply.mutable_vms(0)->set_vm_id("\xF0\x9F\x90\xA7");  // a lone non-BMP character

  absl::StatusOr<std::string> json = RenderMessage(reply, OutputFormat::kJson);
  ASSERT_TRUE(json.ok()) << json.status();
  v1::ListVmsResponse parsed;
  ASSERT_TRUE(google::protobuf::util::JsonStringToMessage(*json, &parsed).ok()) << *json;
  EXPECT_TRUE(google::protobuf::util::MessageDifferencer::Equals(reply, parsed))
      << parsed.DebugString();

  absl::StatusOr<std::string> yaml = RenderMessage(reply, OutputFormat::kYaml);
  ASSERT_TRUE(yaml.ok()) << yaml.status();
  YAML::Node doc = YAML::Load(*yaml);
  EXPECT_EQ(doc["vms"][0]["name"].as<std::string>(), kHardName) << *yaml;
  EXPECT_EQ(doc["vms"][0]["vm_id"].as<std::string>(), "\xF0\x9F\x90\xA7") << *yaml;
  EXPECT_EQ(doc["vms"][0]["max_bytes"].as<uint64_t>(), 4ull << 30);
  // The characters are written as UTF-8, not escaped.
  EXPECT_THAT(*yaml, HasSubstr("\xF0\x9F\x98\x80"));
}

// Reduces a loaded document to text that keeps each scalar's type as a
// YAML 1.2 reader would see it: s:string, n:number, b:bool, ~ for null;
// maps sorted by key. JSON loads through the same YAML reader (JSON is
// YAML), so the two outputs can be compared.
std::string Canonical(const YAML::Node& node) {
  if (node.IsNull()) return "~";
  if (node.IsSequence()) {
    std::string out = "[";
    for (const YAML::Node& item : node) absl::StrAppend(&out, Canonical(item), ",");
    return out + "]";
  }
  if (node.IsMap()) {
    std::map<std::string, std::string> members;
    for (const auto& kv : node) members[kv.first.Scalar()] = Canonical(kv.second);
    std::string out = "{";
    for (const auto& [k, v] : members) absl::StrAppend(&out, k, "=", v, ",");
    return out + "}";
  }
  const std::string& text = node.Scalar();
  if (node.Tag() == "!") return "s:" + text;  // quoted: always a string
  if (text == "true" || text == "false") return "b:" + text;
  if (text == "null" || text == "~") return "~";
  double number = 0;
  if (!text.empty() && (absl::ascii_isdigit(text[0]) || text[0] == '-' || text[0] == '.') &&
      absl::SimpleAtod(text, &number)) {
    return "n:" + text;
  }
  return "s:" + text;
}

void ExpectSameStructure(const google::protobuf::Message& message) {
  absl::StatusOr<std::string> json = RenderMessage(message, OutputFormat::kJson);
  absl::StatusOr<std::string> yaml = RenderMessage(message, OutputFormat::kYaml);
  ASSERT_TRUE(json.ok() && yaml.ok());
  EXPECT_EQ(Canonical(YAML::Load(*yaml)), Canonical(YAML::Load(*json))) << "json:\n"
                                                                        << *json << "yaml:\n"
                                                                        << *yaml;
}

TEST(RoundTripTest, YamlHasTheStructureAndTypesOfJson) {
  ExpectSameStructure(SampleVms());
  ExpectSameStructure(v1::ListVmsResponse());

  v1::ListVmsResponse vms = SampleVms();
  v1::Vm* vm = vms.add_vms();
  vm->set_name("db-1");
  vm->mutable_stats()->set_total_bytes(8ull << 30);
  vm->mutable_stats()->set_age_seconds(0.1);
  vm->mutable_stats()->set_untrusted(true);
  vm->set_major_faults_per_second(-1.5e-7);
  vm->set_swap_in_bytes_per_second(1e21);
  vm->mutable_policy()->set_pinned(false);
  vm->mutable_policy()->set_max_bytes(0);
  vm->set_reason(static_cast<v1::ReasonCode>(99));  // unknown: a number
  ExpectSameStructure(vms);

  v1::Host host;
  host.set_host_id("kvm-9");
  host.mutable_last_report_time()->set_seconds(1764000000);
  host.mutable_last_report_time()->set_nanos(250000000);
  host.mutable_sample()->set_psi_some_avg10_percent(12.5);
  ExpectSameStructure(host);

  v1::ClusterPolicy policy;
  policy.mutable_report_interval()->set_seconds(1);
  policy.mutable_report_interval()->set_nanos(500000000);
  policy.set_buffer_percent(20);
  policy.set_reclaim_step_bytes(256ull << 20);
  ExpectSameStructure(policy);

  // Strings YAML would read as something else unless quoted.
  v1::Explanation explanation;
  for (const char* step :
       {"true", "False",   "yes",  "No",          "on",     "null",       "~",   "",
        "123",  "-1",      "1e3",  "0x1f",        ".5",     ".inf",       "nan", "- item",
        "a: b", "#note",   "key:", " lead",       "trail ", "2026-01-02", "[1]", "{a}",
        "*ref", "&anchor", "!tag", "|",           ">",      "'s'",        "@x",  "`x`",
        "%x",   "?",       "y",    "plain words", "web-1",  "a/b.c_d"}) {
    explanation.add_steps(step);
  }
  ExpectSameStructure(explanation);

  // Well-known types whose JSON is a scalar; bytes are base64.
  google::protobuf::BytesValue bytes;
  bytes.set_value(std::string("\x00\xff\x10", 3));
  ExpectSameStructure(bytes);
  google::protobuf::UInt64Value u64;
  u64.set_value(18446744073709551615ull);
  ExpectSameStructure(u64);
  google::protobuf::Int32Value i32;
  i32.set_value(-7);
  ExpectSameStructure(i32);
  google::protobuf::Timestamp timestamp;
  timestamp.set_seconds(1);
  ExpectSameStructure(timestamp);

  // A oneof member and a map (sorted by key in YAML).
  v1::AgentMessage message;
  (*message.mutable_ack()->mutable_errors())["vm-b"] = "balloon: stuck";
  (*message.mutable_ack()->mutable_errors())["vm-a"] = "no driver";
  (*message.mutable_ack()->mutable_errors())["123"] = "";
  ExpectSameStructure(message);
  absl::StatusOr<std::string> yaml = RenderMessage(message, OutputFormat::kYaml);
  ASSERT_TRUE(yaml.ok());
  EXPECT_THAT(*yaml, HasSubstr("    \"123\": \"\"\n    vm-a: no driver\n"
                               "    vm-b: \"balloon: stuck\"\n"));
}

TEST(RoundTripTest, NonFiniteDoublesUseYamlNames) {
  v1::Vm vm;
  vm.set_swap_in_bytes_per_second(std::numeric_limits<double>::infinity());
  vm.set_major_faults_per_second(std::nan(""));
  absl::StatusOr<std::string> yaml = RenderMessage(vm, OutputFormat::kYaml);
  ASSERT_TRUE(yaml.ok());
  YAML::Node doc = YAML::Load(*yaml);
  EXPECT_TRUE(std::isinf(doc["swap_in_bytes_per_second"].as<double>())) << *yaml;
  EXPECT_TRUE(std::isnan(doc["major_faults_per_second"].as<double>())) << *yaml;
}

// Bytes that are not UTF-8 cannot come from the broker (proto3 parsing
// rejects them), but the printers still write valid documents: protobuf
// drops the bad bytes, the YAML emitter writes U+FFFD for them.
TEST(RoundTripTest, InvalidUtf8StillGivesValidDocuments) {
  v1::Vm vm;
  vm.set_name("bad \xC3\x28 \xFF end");
  absl::StatusOr<std::string> json = RenderMessage(vm, OutputFormat::kJson);
  ASSERT_TRUE(json.ok()) << json.status();
  v1::Vm parsed;
  ASSERT_TRUE(google::protobuf::util::JsonStringToMessage(*json, &parsed).ok()) << *json;
  EXPECT_THAT(parsed.name(), ::testing::StartsWith("bad "));
  EXPECT_THAT(parsed.name(), ::testing::EndsWith(" end"));

  absl::StatusOr<std::string> yaml = RenderMessage(vm, OutputFormat::kYaml);
  ASSERT_TRUE(yaml.ok()) << yaml.status();
  EXPECT_EQ(YAML::Load(*yaml)["name"].as<std::string>(), "bad \xEF\xBF\xBD( \xEF\xBF\xBD end");
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
  EXPECT_THAT(RenderPlanTable(plan), HasSubstr("vm-1"));
  // The VM's name when known; its id in wide output; what stays short.
  m->set_vm_name("web-1");
  plan.set_hosts_short_before(2);
  plan.set_hosts_short_after(1);
  plan.set_moved_bytes(8ull << 30);
  v1::ShortHost* s = plan.add_unresolved();
  s->set_host_id("c");
  s->set_short_bytes(1ull << 30);
  const std::string text = RenderPlanTable(plan);
  EXPECT_THAT(text, HasSubstr("web-1"));
  EXPECT_THAT(text, Not(HasSubstr("vm-1")));
  EXPECT_THAT(RenderPlanTable(plan, /*wide=*/true), HasSubstr("vm-1"));
  EXPECT_THAT(text, HasSubstr("Hosts short: 2 now, 1 after 1 move(s) of 8 GiB."));
  EXPECT_THAT(text, HasSubstr("c stays short by 1 GiB"));
}

TEST(RenderTest, PlaceTable) {
  v1::PlaceResponse reply;
  EXPECT_THAT(RenderPlaceTable(reply), HasSubstr("No host can take"));
  v1::PlacementOption* a = reply.add_options();
  a->set_host_id("a");
  a->set_free_bytes(4ull << 30);
  a->set_headroom_bytes(2ll << 30);
  v1::PlacementOption* b = reply.add_options();
  b->set_host_id("b");
  b->set_reclaim_bytes(1ull << 30);
  b->set_headroom_bytes(-(1ll << 29));
  reply.add_assignments("a");
  reply.add_assignments("a");
  reply.add_assignments("b");
  reply.set_requested(4);
  const std::string text = RenderPlaceTable(reply);
  EXPECT_THAT(text, HasSubstr("HOST  FREE   RECLAIM  HEADROOM"));
  EXPECT_THAT(text, HasSubstr("-512 MiB (below demand)"));
  EXPECT_THAT(text, HasSubstr("3 of 4 VMs placed: a x2 b x1"));
}

}  // namespace
}  // namespace membroker::client

// Checks of the deploy/ files that need no running service: every metric
// the Grafana dashboards and the Prometheus files use is one the daemons
// export (deploy/metrics.txt), and the simulator configs of the demo stack
// parse as SimConfig.

#include <gmock/gmock.h>
#include <google/protobuf/struct.pb.h>
#include <google/protobuf/util/json_util.h>
#include <gtest/gtest.h>
#include <yaml-cpp/yaml.h>

#include <cctype>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "common/textproto.h"
#include "membroker/v1/config.pb.h"

#ifndef MB_SOURCE_DIR
#error "MB_SOURCE_DIR must name the source tree"
#endif

namespace membroker {
namespace {

namespace fs = std::filesystem;

const fs::path kDeploy = fs::path(MB_SOURCE_DIR) / "deploy";

std::string ReadFile(const fs::path& path) {
  std::ifstream in(path);
  std::stringstream buffer;
  buffer << in.rdbuf();
  return buffer.str();
}

// Files under `dir` (recursively) whose name ends in one of `suffixes`.
std::vector<fs::path> FilesUnder(const fs::path& dir, std::vector<std::string> suffixes) {
  std::vector<fs::path> out;
  if (!fs::exists(dir)) return out;
  for (const auto& entry : fs::recursive_directory_iterator(dir)) {
    if (!entry.is_regular_file()) continue;
    for (const std::string& s : suffixes) {
      if (absl::EndsWith(entry.path().filename().string(), s)) out.push_back(entry.path());
    }
  }
  std::sort(out.begin(), out.end());
  return out;
}

// name -> type from deploy/metrics.txt ("NAME TYPE [LABELS]" lines).
std::map<std::string, std::string> LoadMetricList() {
  std::map<std::string, std::string> out;
  for (absl::string_view line : absl::StrSplit(ReadFile(kDeploy / "metrics.txt"), '\n')) {
    line = absl::StripAsciiWhitespace(line);
    if (line.empty() || line[0] == '#') continue;
    std::vector<std::string> fields = absl::StrSplit(line, ' ', absl::SkipEmpty());
    if (fields.size() >= 2) out[fields[0]] = fields[1];
  }
  return out;
}

size_t SkipQuoted(absl::string_view s, size_t i) {
  const char quote = s[i++];
  while (i < s.size() && s[i] != quote) i += s[i] == '\\' ? 2 : 1;
  return i + 1;
}

// Skips from an opening bracket to just past its match, ignoring brackets
// inside strings.
size_t SkipGroup(absl::string_view s, size_t i, char open, char close) {
  int depth = 0;
  while (i < s.size()) {
    char c = s[i];
    if (c == '"' || c == '\'' || c == '`') {
      i = SkipQuoted(s, i);
      continue;
    }
    if (c == open) ++depth;
    if (c == close && --depth == 0) return i + 1;
    ++i;
  }
  return i;
}

bool IsIdentStart(char c) {
  return std::isalpha(static_cast<unsigned char>(c)) || c == '_' || c == ':';
}
bool IsIdent(char c) { return IsIdentStart(c) || std::isdigit(static_cast<unsigned char>(c)); }

// The metric names a PromQL expression selects: identifiers that are not
// functions or aggregations (followed by '('), keywords, label names (in
// {...}, by (...), without (...), on (...), ignoring (...), group_*(...)),
// strings, numbers or range/offset durations.
std::set<std::string> ExtractMetricNames(absl::string_view expr) {
  static const std::set<std::string> kLabelListKeywords = {"by",       "without",    "on",
                                                           "ignoring", "group_left", "group_right"};
  // Keywords, and aggregations (which may be followed by `by (...)` before
  // their parenthesis: `sum by (le) (...)`).
  static const std::set<std::string> kKeywords = {
      "and",    "or",    "unless",       "bool",    "offset", "inf",     "nan",
      "atan2",  "sum",   "min",          "max",     "avg",    "group",   "stddev",
      "stdvar", "count", "count_values", "bottomk", "topk",   "quantile"};
  std::set<std::string> names;
  size_t i = 0;
  while (i < expr.size()) {
    char c = expr[i];
    if (c == '"' || c == '\'' || c == '`') {
      i = SkipQuoted(expr, i);
    } else if (c == '{') {
      i = SkipGroup(expr, i, '{', '}');
    } else if (c == '[') {
      i = SkipGroup(expr, i, '[', ']');
    } else if (c == '#') {
      while (i < expr.size() && expr[i] != '\n') ++i;
    } else if (std::isdigit(static_cast<unsigned char>(c)) || c == '.') {
      while (i < expr.size() && (IsIdent(expr[i]) || expr[i] == '.')) ++i;
    } else if (IsIdentStart(c)) {
      size_t start = i;
      while (i < expr.size() && IsIdent(expr[i])) ++i;
      std::string ident(expr.substr(start, i - start));
      size_t j = i;
      while (j < expr.size() && std::isspace(static_cast<unsigned char>(expr[j]))) ++j;
      const bool call = j < expr.size() && expr[j] == '(';
      const std::string lower = absl::AsciiStrToLower(ident);
      if (kLabelListKeywords.count(lower)) {
        if (call) i = SkipGroup(expr, j, '(', ')');
      } else if (kKeywords.count(lower) || call) {
        // operator, keyword, function or aggregation
      } else {
        names.insert(ident);
      }
    } else if (c == '$') {
      // A Grafana variable outside braces ($__rate_interval in a range is
      // skipped with its brackets): skip its name.
      ++i;
      while (i < expr.size() && IsIdent(expr[i])) ++i;
    } else {
      ++i;
    }
  }
  return names;
}

// A Grafana template query: label_values(METRIC, LABEL) selects METRIC;
// label_values(LABEL) selects nothing; anything else is PromQL.
std::set<std::string> ExtractTemplateQueryNames(absl::string_view query) {
  absl::string_view q = absl::StripAsciiWhitespace(query);
  if (absl::ConsumePrefix(&q, "label_values(")) {
    size_t comma = q.find(',');
    if (comma == absl::string_view::npos) return {};
    return ExtractMetricNames(q.substr(0, comma));
  }
  return ExtractMetricNames(q);
}

// Whether `name` is an exported series: a listed gauge or counter, or a
// listed histogram's _bucket/_sum/_count.
bool IsExported(const std::string& name, const std::map<std::string, std::string>& metrics) {
  auto it = metrics.find(name);
  if (it != metrics.end()) return it->second != "histogram";
  for (const char* suffix : {"_bucket", "_sum", "_count"}) {
    if (absl::EndsWith(name, suffix)) {
      auto base = metrics.find(name.substr(0, name.size() - strlen(suffix)));
      if (base != metrics.end() && base->second == "histogram") return true;
    }
  }
  return false;
}

// PromQL of a Grafana dashboard: every "expr", and the queries of template
// variables of type "query".
void CollectGrafanaQueries(const google::protobuf::Value& v, std::vector<std::string>* exprs,
                           std::vector<std::string>* template_queries) {
  if (v.has_list_value()) {
    for (const auto& item : v.list_value().values())
      CollectGrafanaQueries(item, exprs, template_queries);
    return;
  }
  if (!v.has_struct_value()) return;
  const auto& fields = v.struct_value().fields();
  auto type = fields.find("type");
  const bool query_variable =
      type != fields.end() && type->second.string_value() == "query" && fields.count("name");
  for (const auto& [key, value] : fields) {
    if (key == "expr" && value.has_string_value()) exprs->push_back(value.string_value());
    if (query_variable && (key == "query" || key == "definition")) {
      if (value.has_string_value()) template_queries->push_back(value.string_value());
      if (value.has_struct_value()) {
        auto inner = value.struct_value().fields().find("query");
        if (inner != value.struct_value().fields().end()) {
          template_queries->push_back(inner->second.string_value());
        }
      }
    }
    CollectGrafanaQueries(value, exprs, template_queries);
  }
}

// PromQL in a Prometheus YAML file: `expr:` values (plain, quoted or block
// scalars) and the metric of `series:` lines in rule tests.
std::vector<std::string> CollectYamlExprs(const std::string& text) {
  std::vector<std::string> out;
  std::vector<std::string> lines = absl::StrSplit(text, '\n');
  for (size_t i = 0; i < lines.size(); ++i) {
    absl::string_view line = lines[i];
    size_t indent = line.find_first_not_of(' ');
    if (indent == absl::string_view::npos) continue;
    absl::string_view body = line.substr(indent);
    absl::ConsumePrefix(&body, "- ");
    std::string key;
    if (absl::ConsumePrefix(&body, "expr:"))
      key = "expr";
    else if (absl::ConsumePrefix(&body, "series:"))
      key = "series";
    else
      continue;
    body = absl::StripAsciiWhitespace(body);
    if (body == "|" || body == ">" || body == "|-" || body == ">-") {
      std::string block;
      while (i + 1 < lines.size()) {
        size_t next_indent = lines[i + 1].find_first_not_of(' ');
        if (next_indent != std::string::npos && next_indent <= indent) break;
        block += lines[++i] + "\n";
      }
      out.push_back(block);
      continue;
    }
    if (body.size() >= 2 && (body.front() == '\'' || body.front() == '"') &&
        body.back() == body.front()) {
      body = body.substr(1, body.size() - 2);
    }
    out.push_back(std::string(body));
  }
  return out;
}

TEST(ExtractMetricNamesTest, FindsOnlyMetricNames) {
  EXPECT_EQ(ExtractMetricNames(
                "histogram_quantile(0.99, sum by (le) (rate(membroker_x_bucket[5m]))) > 0.1"),
            std::set<std::string>{"membroker_x_bucket"});
  EXPECT_EQ(ExtractMetricNames("sum(a_total{host=~\"$host\", vm!=\"x\"}) by (host) / on (host) "
                               "group_left b_bytes offset 5m"),
            (std::set<std::string>{"a_total", "b_bytes"}));
  EXPECT_EQ(ExtractMetricNames("absent(up{job=\"x\"}) or vector(0) and bool 1e3"),
            std::set<std::string>{"up"});
  EXPECT_EQ(ExtractMetricNames("rate(c_total[$__rate_interval])"),
            std::set<std::string>{"c_total"});
  EXPECT_EQ(ExtractMetricNames("node_memory_MemAvailable_bytes"),
            std::set<std::string>{"node_memory_MemAvailable_bytes"});
  EXPECT_EQ(ExtractTemplateQueryNames("label_values(m_bytes, host)"),
            std::set<std::string>{"m_bytes"});
  EXPECT_TRUE(ExtractTemplateQueryNames("label_values(host)").empty());
}

TEST(ExtractMetricNamesTest, HistogramsOnlyThroughTheirSeries) {
  const std::map<std::string, std::string> m = {{"h_seconds", "histogram"}, {"g_bytes", "gauge"}};
  EXPECT_TRUE(IsExported("g_bytes", m));
  EXPECT_TRUE(IsExported("h_seconds_bucket", m));
  EXPECT_TRUE(IsExported("h_seconds_sum", m));
  EXPECT_TRUE(IsExported("h_seconds_count", m));
  EXPECT_FALSE(IsExported("h_seconds", m));
  EXPECT_FALSE(IsExported("g_bytes_sum", m));
  EXPECT_FALSE(IsExported("other", m));
}

TEST(ExtractMetricNamesTest, YamlExprForms) {
  auto exprs = CollectYamlExprs(
      "      - alert: A\n        expr: a_total > 0\n      - alert: B\n        expr: 'b_total'\n"
      "      - alert: C\n        expr: |\n          sum(c_total)\n            / 2\n        for: "
      "1m\n"
      "      - series: 'd_bytes{x=\"1\"}'\n");
  ASSERT_EQ(exprs.size(), 4u);
  EXPECT_EQ(exprs[0], "a_total > 0");
  EXPECT_EQ(exprs[1], "b_total");
  EXPECT_THAT(exprs[2], ::testing::HasSubstr("sum(c_total)"));
  EXPECT_THAT(exprs[2], ::testing::Not(::testing::HasSubstr("for:")));
  EXPECT_EQ(exprs[3], "d_bytes{x=\"1\"}");
}

TEST(DeployMetricsTest, MetricListIsComplete) {
  auto metrics = LoadMetricList();
  EXPECT_EQ(metrics.size(), 56u);
  EXPECT_EQ(metrics["membroker_decision_latency_seconds"], "histogram");
  EXPECT_EQ(metrics["membroker_agent_vm_virtio_mem_plugged_bytes"], "gauge");
  EXPECT_EQ(metrics["membroker_agent_vm_balloon_inflated_bytes"], "gauge");
  EXPECT_EQ(metrics["membroker_agent_vm_excluded"], "gauge");
  EXPECT_EQ(metrics["membroker_agent_vm_free_page_reporting"], "gauge");
  EXPECT_EQ(metrics["membroker_host_guest_free_on_host_bytes"], "gauge");
  EXPECT_EQ(metrics["membroker_plan_moves"], "gauge");
  EXPECT_EQ(metrics["membroker_plan_hosts_short"], "gauge");
  EXPECT_EQ(metrics["membroker_agent_report_duration_seconds"], "histogram");
  for (const auto& [name, type] : metrics) {
    EXPECT_TRUE(type == "gauge" || type == "counter" || type == "histogram") << name;
    EXPECT_TRUE(absl::StartsWith(name, "membroker_")) << name;
  }
}

TEST(DeployMetricsTest, GrafanaUsesOnlyExportedMetricsAndShowsThemAll) {
  const auto metrics = LoadMetricList();
  const auto files = FilesUnder(kDeploy / "grafana", {".json"});
  ASSERT_FALSE(files.empty());
  std::set<std::string> used;
  size_t total_exprs = 0;
  for (const fs::path& file : files) {
    google::protobuf::Value doc;
    auto status = google::protobuf::util::JsonStringToMessage(ReadFile(file), &doc);
    ASSERT_TRUE(status.ok()) << file << ": " << status.ToString();
    std::vector<std::string> exprs, template_queries;
    CollectGrafanaQueries(doc, &exprs, &template_queries);
    total_exprs += exprs.size();
    for (const std::string& e : exprs) {
      std::set<std::string> names = ExtractMetricNames(e);
      EXPECT_FALSE(names.empty()) << file << ": no metric in " << e;
      for (const std::string& n : names) {
        EXPECT_TRUE(IsExported(n, metrics)) << file << ": unknown metric " << n << " in " << e;
        used.insert(n);
      }
    }
    for (const std::string& q : template_queries) {
      for (const std::string& n : ExtractTemplateQueryNames(q)) {
        EXPECT_TRUE(IsExported(n, metrics)) << file << ": unknown metric " << n << " in " << q;
      }
    }
  }
  EXPECT_GE(total_exprs, 20u);
  // Every exported metric appears on a dashboard.
  for (const auto& [name, type] : metrics) {
    bool shown = used.count(name) > 0;
    for (const char* suffix : {"_bucket", "_sum", "_count"}) shown |= used.count(name + suffix) > 0;
    EXPECT_TRUE(shown) << name << " is on no dashboard";
  }
}

TEST(DeployMetricsTest, PrometheusFilesUseOnlyExportedMetrics) {
  const auto metrics = LoadMetricList();
  const auto files = FilesUnder(kDeploy / "prometheus", {".yml", ".yaml"});
  ASSERT_FALSE(files.empty());
  size_t total_exprs = 0;
  for (const fs::path& file : files) {
    for (const std::string& e : CollectYamlExprs(ReadFile(file))) {
      ++total_exprs;
      std::set<std::string> names = ExtractMetricNames(e);
      EXPECT_FALSE(names.empty()) << file << ": no metric in " << e;
      for (const std::string& n : names) {
        EXPECT_TRUE(IsExported(n, metrics)) << file << ": unknown metric " << n << " in " << e;
      }
    }
  }
  EXPECT_GE(total_exprs, 10u);
}

// The Grafana service (docker-compose.grafana.yml) and its provisioning
// agree: the provisioning and dashboard directories are mounted where
// Grafana and the dashboard provider read them, the home dashboard exists,
// and the datasource URL names the compose Prometheus service and port.
TEST(DeployConfigTest, GrafanaServiceAndProvisioningAgree) {
  YAML::Node base = YAML::LoadFile((kDeploy / "docker-compose.yml").string());
  YAML::Node over = YAML::LoadFile((kDeploy / "docker-compose.grafana.yml").string());
  ASSERT_TRUE(base["services"]["prometheus"]) << "no prometheus service";
  EXPECT_FALSE(base["services"]["grafana"]) << "Grafana needs a registry: keep it out of the base";
  YAML::Node grafana = over["services"]["grafana"];
  ASSERT_TRUE(grafana);
  bool depends = false;
  for (const YAML::Node& d : grafana["depends_on"]) depends |= d.as<std::string>() == "prometheus";
  EXPECT_TRUE(depends);

  std::map<std::string, fs::path> mounts;  // container path -> host path
  for (const YAML::Node& v : grafana["volumes"]) {
    std::vector<std::string> parts = absl::StrSplit(v.as<std::string>(), ':');
    ASSERT_GE(parts.size(), 2u) << v;
    const fs::path host = kDeploy / parts[0];
    EXPECT_TRUE(fs::is_directory(host)) << host;
    mounts[parts[1]] = host;
  }
  ASSERT_EQ(mounts.count("/etc/grafana/provisioning"), 1u);
  const fs::path provisioning = mounts["/etc/grafana/provisioning"];

  // Dashboard provider: a file provider reading a mounted directory.
  YAML::Node providers =
      YAML::LoadFile((provisioning / "dashboards" / "membroker.yml").string())["providers"];
  ASSERT_EQ(providers.size(), 1u);
  EXPECT_EQ(providers[0]["type"].as<std::string>(), "file");
  const std::string dashboards_path = providers[0]["options"]["path"].as<std::string>();
  ASSERT_EQ(mounts.count(dashboards_path), 1u) << dashboards_path << " is not mounted";
  const fs::path dashboards = mounts[dashboards_path];
  EXPECT_EQ(FilesUnder(dashboards, {".json"}).size(), 3u);

  // Home dashboard: a file in that mounted directory.
  const std::string home =
      grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"].as<std::string>();
  ASSERT_TRUE(absl::StartsWith(home, dashboards_path + "/")) << home;
  EXPECT_TRUE(fs::exists(dashboards / home.substr(dashboards_path.size() + 1))) << home;

  // Datasource: Prometheus at the compose service name and its port.
  YAML::Node ds =
      YAML::LoadFile((provisioning / "datasources" / "prometheus.yml").string())["datasources"];
  ASSERT_EQ(ds.size(), 1u);
  EXPECT_EQ(ds[0]["type"].as<std::string>(), "prometheus");
  EXPECT_EQ(ds[0]["access"].as<std::string>(), "proxy");
  EXPECT_TRUE(ds[0]["isDefault"].as<bool>());
  EXPECT_EQ(ds[0]["url"].as<std::string>(), "http://prometheus:9090");
  bool port = false;
  for (const YAML::Node& p : base["services"]["prometheus"]["ports"]) {
    port |= absl::EndsWith(p.as<std::string>(), ":9090");
  }
  EXPECT_TRUE(port) << "the prometheus service does not serve 9090";
  EXPECT_THAT(ReadFile(kDeploy / "prometheus" / "Dockerfile"),
              ::testing::HasSubstr("--web.listen-address=0.0.0.0:9090"));
}

TEST(DeployConfigTest, SimConfigsParse) {
  const auto files = FilesUnder(kDeploy / "sim", {".textproto"});
  ASSERT_FALSE(files.empty());
  for (const fs::path& file : files) {
    v1::SimConfig config;
    auto status = LoadTextProto(file.string(), &config);
    ASSERT_TRUE(status.ok()) << status;
    EXPECT_GT(config.host_total_bytes(), 0u) << file;
    EXPECT_FALSE(config.vms().empty()) << file;
    uint64_t max_total = 0;
    for (const auto& vm : config.vms()) {
      EXPECT_FALSE(vm.name().empty()) << file;
      EXPECT_TRUE(vm.has_workload()) << file << " " << vm.name();
      max_total += vm.max_bytes();
    }
    // The demo hosts are overcommitted on purpose: VMs' max exceeds memory.
    EXPECT_GT(max_total, config.host_total_bytes()) << file;
  }
}

}  // namespace
}  // namespace membroker

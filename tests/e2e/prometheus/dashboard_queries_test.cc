// End to end: every query of every Grafana dashboard in
// deploy/grafana/dashboards returns data from a real Prometheus (Debian's
// `prometheus` package) scraping a running simulated cluster: the broker
// and the three simulated hosts of the demo stack (deploy/sim), each agent
// labelled with its host id as deploy/prometheus/prometheus.yml does.
// Dashboard variables are replaced by a real host and VM, Grafana's
// interval variables by short ranges. A query fails when it has no sample
// with a number (NaN does not count) before the deadline.

#include <google/protobuf/struct.pb.h>
#include <google/protobuf/util/json_util.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "tests/util/broker_process.h"
#include "tests/util/child_process.h"
#include "tests/util/http.h"
#include "tests/util/prometheus_process.h"
#include "tests/util/wait.h"

namespace {

namespace fs = std::filesystem;
using ::google::protobuf::Value;
using ::membroker::testing::BrokerPorts;
using ::membroker::testing::ChildProcess;
using ::membroker::testing::HttpGet;
using ::membroker::testing::HttpReply;
using ::membroker::testing::FindPrometheus;
using ::membroker::testing::RunToCompletion;
using ::membroker::testing::StartBroker;
using ::membroker::testing::StartPrometheus;
using ::membroker::testing::UrlEncode;

const fs::path kDeploy = fs::path(MB_SOURCE_DIR) / "deploy";
// The host and VM the host and VM dashboards are evaluated for.
constexpr char kHost[] = "sim-1";
constexpr char kVm[] = "web-1";

std::string ReadFile(const fs::path& path) {
  std::ifstream in(path);
  std::stringstream buffer;
  buffer << in.rdbuf();
  return buffer.str();
}

// One query of a dashboard: where it comes from and its PromQL.
struct PanelQuery {
  std::string where;  // "file: panel title [refId]"
  std::string expr;
};

// A dashboard's panel queries and its template variables (name -> query).
struct Dashboard {
  std::vector<PanelQuery> queries;
  std::map<std::string, std::string> variables;
};

Dashboard LoadDashboard(const fs::path& file, std::string* error) {
  Dashboard out;
  Value doc;
  auto status = google::protobuf::util::JsonStringToMessage(ReadFile(file), &doc);
  if (!status.ok()) {
    *error = absl::StrCat(file.string(), ": ", status.ToString());
    return out;
  }
  const auto& root = doc.struct_value().fields();
  if (auto t = root.find("templating"); t != root.end()) {
    for (const Value& v : t->second.struct_value().fields().at("list").list_value().values()) {
      const auto& f = v.struct_value().fields();
      if (f.count("type") == 0 || f.at("type").string_value() != "query") continue;
      out.variables[f.at("name").string_value()] = f.at("definition").string_value();
    }
  }
  if (auto p = root.find("panels"); p != root.end()) {
    for (const Value& panel : p->second.list_value().values()) {
      const auto& f = panel.struct_value().fields();
      auto targets = f.find("targets");
      if (targets == f.end()) continue;
      for (const Value& target : targets->second.list_value().values()) {
        const auto& tf = target.struct_value().fields();
        if (tf.count("expr") == 0) continue;
        out.queries.push_back(
            {absl::StrCat(file.filename().string(), ": ", f.at("title").string_value(), " [",
                          tf.at("refId").string_value(), "]"),
             tf.at("expr").string_value()});
      }
    }
  }
  return out;
}

// `expr` with the dashboard variables and Grafana's interval variables
// replaced.
std::string Substitute(const std::string& expr) {
  return absl::StrReplaceAll(expr, {{"$__rate_interval", "30s"},
                                    {"$__interval", "5s"},
                                    {"$__range", "5m"},
                                    {"$host", kHost},
                                    {"$vm", kVm}});
}

// The numeric samples of an instant query, as "labels=value" strings;
// NaN samples are left out. Empty when the query fails or has none;
// `*answer` gets the raw answer or the error.
std::vector<std::string> Samples(int prom_port, const std::string& q, std::string* answer) {
  absl::StatusOr<HttpReply> reply =
      HttpGet(prom_port, absl::StrCat("/api/v1/query?query=", UrlEncode(q)));
  if (!reply.ok()) {
    *answer = std::string(reply.status().message());
    return {};
  }
  *answer = reply->body.substr(0, 600);
  Value doc;
  if (reply->status != 200 ||
      !google::protobuf::util::JsonStringToMessage(reply->body, &doc).ok()) {
    return {};
  }
  std::vector<std::string> out;
  const auto& data = doc.struct_value().fields().at("data").struct_value().fields();
  for (const Value& r : data.at("result").list_value().values()) {
    const auto& rf = r.struct_value().fields();
    const std::string& value = rf.at("value").list_value().values(1).string_value();
    if (std::isnan(std::strtod(value.c_str(), nullptr))) continue;
    std::string labels;
    for (const auto& [k, v] : rf.at("metric").struct_value().fields()) {
      absl::StrAppend(&labels, k, "=", v.string_value(), ",");
    }
    out.push_back(absl::StrCat(labels, "=", value));
  }
  return out;
}

class DashboardQueriesTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/mb-dash-e2e-XXXXXX";
    ASSERT_NE(mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
  }
  void TearDown() override { fs::remove_all(dir_); }

  std::string dir_;
};

TEST_F(DashboardQueriesTest, EveryPanelQueryReturnsDataFromASimulatedCluster) {
  // CI installs it (scripts/deps.sh test): missing is a failure, not a skip.
  const std::string prometheus = FindPrometheus();
  ASSERT_FALSE(prometheus.empty()) << "prometheus is not installed (scripts/deps.sh test)";

  std::map<std::string, Dashboard> dashboards;
  for (const auto& entry : fs::directory_iterator(kDeploy / "grafana" / "dashboards")) {
    if (entry.path().extension() != ".json") continue;
    std::string error;
    dashboards[entry.path().filename().string()] = LoadDashboard(entry.path(), &error);
    ASSERT_TRUE(error.empty()) << error;
  }
  // The three dashboards an operator opens first, with their pickers.
  ASSERT_EQ(dashboards.count("membroker-fleet.json"), 1u);
  ASSERT_EQ(dashboards.count("membroker-host.json"), 1u);
  ASSERT_EQ(dashboards.count("membroker-vm.json"), 1u);
  EXPECT_EQ(dashboards["membroker-fleet.json"].variables.count("host"), 1u);
  EXPECT_EQ(dashboards["membroker-host.json"].variables.count("host"), 1u);
  EXPECT_EQ(dashboards["membroker-vm.json"].variables.count("host"), 1u);
  EXPECT_EQ(dashboards["membroker-vm.json"].variables.count("vm"), 1u);

  ChildProcess broker;
  const absl::StatusOr<BrokerPorts> ports =
      StartBroker(broker, MB_BROKER_BIN, dir_ + "/state", dir_ + "/broker.log", absl::Seconds(20));
  ASSERT_TRUE(ports.ok()) << ports.status();

  // The demo stack's three simulated hosts.
  std::vector<std::unique_ptr<ChildProcess>> agents;
  std::string agent_jobs;
  for (int n = 1; n <= 3; ++n) {
    auto agent = std::make_unique<ChildProcess>();
    const std::string host_id = absl::StrCat("sim-", n);
    ASSERT_TRUE(
        agent
            ->Start({MB_AGENT_BIN, absl::StrCat("--broker=127.0.0.1:", ports->grpc),
                     "--host-id=" + host_id, "--backend=sim",
                     absl::StrCat("--sim-config=", (kDeploy / "sim").string(), "/host-", n,
                                  ".textproto"),
                     "--host-reserve-bytes=2GiB", "--metrics-listen=127.0.0.1:0", "--insecure"},
                    absl::StrCat(dir_, "/agent-", n, ".log"))
            .ok());
    const absl::StatusOr<std::string> port =
        agent->WaitForLog("metrics on[^0-9]*port ([0-9]+)", absl::Seconds(20));
    ASSERT_TRUE(port.ok()) << port.status();
    absl::StrAppend(&agent_jobs, "      - targets: ['127.0.0.1:", *port, "']\n",
                    "        labels: {host: ", host_id, "}\n");
    agents.push_back(std::move(agent));
  }
  {
    std::ofstream config(dir_ + "/prometheus.yml");
    config << "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
           << "scrape_configs:\n"
           << "  - job_name: membroker\n    static_configs:\n"
           << "      - targets: ['127.0.0.1:" << ports->metrics << "']\n"
           << "  - job_name: membroker-agent\n    static_configs:\n"
           << agent_jobs;
  }
  ChildProcess prom;
  const absl::StatusOr<int> started =
      StartPrometheus(prom, prometheus, dir_ + "/prometheus.yml", dir_);
  ASSERT_TRUE(started.ok()) << started.status();
  const int prom_port = *started;

  // An operator's call, so that the admin request panels have data.
  std::string ctl_output;
  ASSERT_EQ(RunToCompletion({MB_CTL_BIN, absl::StrCat("--server=127.0.0.1:", ports->grpc),
                             "--insecure", "get", "vms"},
                            &ctl_output, absl::Seconds(30)),
            0)
      << ctl_output;

  // Variables first: the pickers offer the host and VM used below.
  std::string answer;
  const std::string hosts_query = "membroker_host_capacity_bytes";
  const std::string vms_query = absl::StrCat("membroker_vm_target_bytes{host=\"", kHost, "\"}");
  EXPECT_TRUE(membroker::testing::WaitUntil(
      [&] {
        std::set<std::string> hosts, vms;
        for (const std::string& s : Samples(prom_port, hosts_query, &answer)) hosts.insert(s);
        for (const std::string& s : Samples(prom_port, vms_query, &answer)) vms.insert(s);
        auto has = [](const std::set<std::string>& set, const std::string& label) {
          for (const std::string& s : set) {
            if (s.find(label) != std::string::npos) return true;
          }
          return false;
        };
        return has(hosts, "host=sim-1,") && has(hosts, "host=sim-2,") &&
               has(hosts, "host=sim-3,") && has(vms, absl::StrCat("vm=", kVm, ","));
      },
      absl::Seconds(60), absl::Seconds(1)))
      << "the host and VM variables would not offer " << kHost << " and " << kVm
      << " (last answer: " << answer << ")";

  // Then every panel query, until each has data or the deadline passes.
  std::vector<PanelQuery> pending;
  for (const auto& [name, d] : dashboards) {
    for (const PanelQuery& q : d.queries) pending.push_back({q.where, Substitute(q.expr)});
  }
  const size_t total = pending.size();
  EXPECT_GE(total, 60u);
  std::map<std::string, std::string> last_answer;
  const absl::Time deadline = absl::Now() + absl::Seconds(120);
  while (!pending.empty() && absl::Now() < deadline) {
    std::vector<PanelQuery> still;
    for (const PanelQuery& q : pending) {
      if (Samples(prom_port, q.expr, &last_answer[q.where]).empty()) still.push_back(q);
    }
    pending = std::move(still);
    if (!pending.empty()) absl::SleepFor(absl::Seconds(2));
  }
  for (const PanelQuery& q : pending) {
    ADD_FAILURE() << q.where << ": no data for " << q.expr
                  << "\n  last answer: " << last_answer[q.where];
  }
  std::cout << (total - pending.size()) << " of " << total << " dashboard queries returned data\n";
}

}  // namespace

// End to end: a real Prometheus (Debian's `prometheus` package) scrapes
// the broker and a simulated agent on loopback; the test queries its HTTP
// API until both daemons' series arrive: per-VM targets from the broker,
// reports sent from the agent, and the decision latency histogram.

#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "tests/util/broker_process.h"
#include "tests/util/child_process.h"
#include "tests/util/http.h"
#include "tests/util/prometheus_process.h"
#include "tests/util/wait.h"

namespace {

using ::membroker::testing::BrokerPorts;
using ::membroker::testing::ChildProcess;
using ::membroker::testing::HttpGet;
using ::membroker::testing::HttpReply;
using ::membroker::testing::FindPrometheus;
using ::membroker::testing::StartBroker;
using ::membroker::testing::StartPrometheus;
using ::membroker::testing::UrlEncode;
using ::membroker::testing::WaitUntil;

class PrometheusScrapeTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/mb-prom-e2e-XXXXXX";
    ASSERT_NE(mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  // True when the instant query `q` returns at least one sample.
  bool HasSamples(int prom_port, const std::string& q, std::string* last) {
    absl::StatusOr<HttpReply> reply =
        HttpGet(prom_port, absl::StrCat("/api/v1/query?query=", UrlEncode(q)));
    if (!reply.ok()) {
      *last = std::string(reply.status().message());
      return false;
    }
    *last = reply->body;
    return reply->status == 200 &&
           reply->body.find("\"status\":\"success\"") != std::string::npos &&
           reply->body.find("\"result\":[{") != std::string::npos;
  }

  std::string dir_;
};

TEST_F(PrometheusScrapeTest, BothDaemonsSeriesArrive) {
  // CI installs it (scripts/deps.sh test): missing is a failure, not a skip.
  const std::string prometheus = FindPrometheus();
  ASSERT_FALSE(prometheus.empty()) << "prometheus is not installed (scripts/deps.sh test)";

  ChildProcess broker;
  const absl::StatusOr<BrokerPorts> ports =
      StartBroker(broker, MB_BROKER_BIN, dir_ + "/state", dir_ + "/broker.log", absl::Seconds(20));
  ASSERT_TRUE(ports.ok()) << ports.status();
  const int grpc_port = ports->grpc, broker_metrics = ports->metrics;

  ChildProcess agent;
  ASSERT_TRUE(
      agent
          .Start(
              {MB_AGENT_BIN, absl::StrCat("--broker=127.0.0.1:", grpc_port), "--host-id=prom-host",
               "--backend=sim", std::string("--sim-config=") + MB_SIM_CONFIG,
               "--host-capacity-bytes=8GiB", "--metrics-listen=127.0.0.1:0", "--insecure"},
              dir_ + "/agent.log")
          .ok());
  const absl::StatusOr<std::string> agent_metrics =
      agent.WaitForLog("metrics on[^0-9]*port ([0-9]+)", absl::Seconds(20));
  ASSERT_TRUE(agent_metrics.ok()) << agent_metrics.status();

  {
    std::ofstream config(dir_ + "/prometheus.yml");
    config << "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
           << "scrape_configs:\n"
           << "  - job_name: membroker\n    static_configs:\n"
           << "      - targets: ['127.0.0.1:" << broker_metrics << "']\n"
           << "  - job_name: membroker-agent\n    static_configs:\n"
           << "      - targets: ['127.0.0.1:" << *agent_metrics << "']\n";
  }
  ChildProcess prom;
  const absl::StatusOr<int> started =
      StartPrometheus(prom, prometheus, dir_ + "/prometheus.yml", dir_);
  ASSERT_TRUE(started.ok()) << started.status();
  const int prom_port = *started;

  for (const char* q : {
           "membroker_vm_target_bytes{host=\"prom-host\",vm=\"etl-step\"}",
           "membroker_host_capacity_bytes{host=\"prom-host\"} == 8589934592",
           "up{job=\"membroker-agent\"} == 1",
           "membroker_agent_reports_sent_total > 0",
           "membroker_decision_latency_seconds_count > 0",
           "sum(membroker_vm_target_bytes{host=\"prom-host\"}) <= 8589934592",
       }) {
    std::string last;
    EXPECT_TRUE(WaitUntil([&] { return HasSamples(prom_port, q, &last); }, absl::Seconds(60),
                          absl::Seconds(1)))
        << "no samples for " << q << " (last answer: " << last << ")";
  }
}

}  // namespace

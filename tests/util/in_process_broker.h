#pragma once
// Runs the real broker (broker::Broker) inside the test process for service
// tests: gRPC and metrics on 127.0.0.1 port 0, its state in a fresh
// directory of its own, and a plaintext channel with the admin and agent
// stubs. The broker can be stopped and started again on the same state
// directory, as a restarted broker would be.

#include <grpcpp/channel.h>

#include <map>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "broker/metrics.h"
#include "broker/server.h"
#include "common/clock.h"
#include "membroker/v1/admin.grpc.pb.h"
#include "membroker/v1/agent.grpc.pb.h"

namespace membroker::testing {

// One in-process broker and a channel to it.
//
// Not thread-safe: Start, Stop and the destructor belong to the test's
// thread. What it hands out (the broker, the channel, the stubs) is as
// thread-safe as broker::Broker and gRPC make it, and stays valid until the
// next Start or Stop.
class InProcessBroker {
 public:
  // A broker not started yet. `name` prefixes its state directory (made by
  // the first Start, under the system's temporary directory).
  explicit InProcessBroker(std::string name = "mb_in_process_broker");
  // Stops the broker and removes its state directory.
  ~InProcessBroker();
  InProcessBroker(const InProcessBroker&) = delete;
  InProcessBroker& operator=(const InProcessBroker&) = delete;

  // Starts the broker on `clock` with `options`, whose listen and
  // metrics_listen are replaced by 127.0.0.1:0 and state_dir by this
  // helper's directory (all else is kept), then opens a channel and the
  // stubs. `clock` must outlive the broker (until Stop or the destructor).
  // FAILED_PRECONDITION when it is running already; INTERNAL when the state
  // directory cannot be made; otherwise the errors of broker::Broker::Start.
  absl::Status Start(broker::BrokerOptions options, Clock* clock = RealClock::Get());

  // Shuts the broker down (its open streams end), then drops the stubs and
  // the channel. The state directory stays for the next Start. Nothing
  // happens when it is not running.
  void Stop();

  // Whether Start succeeded and Stop has not been called since.
  bool running() const { return broker_ != nullptr; }

  // The running broker (its fleet, metrics, watch hub). Only while running.
  broker::Broker& broker() { return *broker_; }

  // The state directory; empty before the first Start.
  const std::string& state_dir() const { return state_dir_; }

  // The broker's gRPC address, "127.0.0.1:PORT". Only while running.
  std::string target() const;

  // A plaintext channel to the broker. Only while running.
  const std::shared_ptr<grpc::Channel>& channel() const { return channel_; }

  // Stubs on channel(). Only while running.
  v1::AdminService::Stub* admin() const { return admin_.get(); }
  v1::AgentService::Stub* agent() const { return agent_.get(); }

 private:
  std::string name_;
  std::string state_dir_;
  std::unique_ptr<broker::Broker> broker_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::AdminService::Stub> admin_;
  std::unique_ptr<v1::AgentService::Stub> agent_;
};

// A cluster policy whose targets are plain arithmetic: no buffer, free
// margin, hysteresis, protect margin or idle tax; a 64 GiB reclaim step (a
// whole reclaim in one step) and a 256 MiB default floor.
v1::ClusterPolicy RoundNumberPolicy();

// The value of the first series of the metric family `name` in `metrics`
// whose labels include `labels`: a counter's or a gauge's value, a
// histogram's sample count. -1 when there is no such series.
double MetricValue(broker::BrokerMetrics& metrics, const std::string& name,
                   const std::map<std::string, std::string>& labels = {});

}  // namespace membroker::testing

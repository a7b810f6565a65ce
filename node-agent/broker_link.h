#pragma once
// The agent's end of AgentService.Connect: one long-lived bidirectional
// stream to the broker, re-established with jittered exponential backoff.
//
// Per stream: send Hello; the broker answers Welcome (the link is then
// "connected"); TargetSet messages are handed to a callback that only
// records them (the reader never waits for a hypervisor); the caller
// applies them elsewhere and sends the TargetAck through SendAck, and
// reports through SendReport. One reader thread; writes are serialized by
// a mutex. Reconnect delays and stream health are timed on the injected
// clock (monotonic time, clock-driven waits); the gRPC stream itself has no
// deadline.

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <thread>

#include <grpcpp/grpcpp.h>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "common/backoff.h"
#include "common/clock.h"
#include "membroker/v1/agent.grpc.pb.h"

namespace membroker::agent {

// The reconnect backoff of an agent that reports every `report_interval`:
// from 100 ms, doubling, with +-20 % jitter, capped at `max_override` when
// it is not zero, else at max(1 s, report_interval). A restarted broker is
// then found within about one report interval (targets converge within
// three), while a broker that stays down gets at most about one attempt
// per second from each agent.
BackoffParams ReconnectBackoff(absl::Duration report_interval,
                               absl::Duration max_override = absl::ZeroDuration());

// Streams to the broker. Thread-safe.
class BrokerLink {
 public:
  // What the link calls. Callbacks run on the reader thread, one at a time.
  struct Callbacks {
    // A Welcome arrived (the stream is now connected).
    std::function<void(const membroker::v1::Welcome&)> on_welcome;
    // A TargetSet arrived on stream `stream`. Must return promptly (record
    // it; apply elsewhere); the ack goes back through SendAck(stream, ...).
    std::function<void(const membroker::v1::TargetSet&, uint64_t stream)> on_targets;
    // The connection state changed (true after Welcome, false when lost).
    std::function<void(bool connected)> on_connection;
  };

  // Counters for metrics (monotonic).
  struct Counters {
    uint64_t reports_sent = 0;
    uint64_t reconnects = 0;
  };

  // `channel` reaches the broker; `hello` is sent first on every stream.
  // `clock` (not owned) times stream health and the reconnect delays.
  BrokerLink(std::shared_ptr<grpc::Channel> channel, membroker::v1::Hello hello,
             Callbacks callbacks, const Clock* clock, BackoffParams backoff = {});
  ~BrokerLink();

  BrokerLink(const BrokerLink&) = delete;
  BrokerLink& operator=(const BrokerLink&) = delete;

  // Starts the reader thread. Call once.
  void Start();

  // Cancels the stream, stops reconnecting and joins the thread. Prompt:
  // the stream is cancelled, no wait for the broker. Idempotent.
  void Stop();

  // Sends a report on the current stream. FAILED_PRECONDITION when not
  // connected (no Welcome yet); UNAVAILABLE when the write fails (the
  // stream is then being re-established).
  absl::Status SendReport(const membroker::v1::HostReport& report);

  // Sends the ack of a TargetSet that arrived on stream `stream`.
  // FAILED_PRECONDITION when that stream is no longer the current welcomed
  // one (the new broker stream sends its own targets); UNAVAILABLE when the
  // write fails.
  absl::Status SendAck(uint64_t stream, const membroker::v1::TargetAck& ack);

  // Caps the reconnect delays from the next one on at `max` (e.g. when
  // the broker's Welcome changes the report interval).
  void SetMaxBackoff(absl::Duration max);

  // True between a Welcome and the loss of its stream.
  bool connected() const;

  // Snapshot of the counters.
  Counters counters() const;

 private:
  void Run();
  // Runs one stream to its end. Returns true when it was healthy.
  bool RunStream();
  bool Write(const membroker::v1::AgentMessage& message);
  void SetConnected(bool connected);

  std::unique_ptr<membroker::v1::AgentService::Stub> stub_;
  const membroker::v1::Hello hello_;
  const Callbacks callbacks_;
  const Clock* const clock_;
  const BackoffParams backoff_params_;
  std::thread thread_;
  // Unhealthy streams in a row (reader thread only).
  int failed_attempts_ = 0;

  mutable absl::Mutex mu_;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  bool started_ ABSL_GUARDED_BY(mu_) = false;
  bool connected_ ABSL_GUARDED_BY(mu_) = false;
  // Number of the current stream (counts from 1; 0: none yet).
  uint64_t stream_id_ ABSL_GUARDED_BY(mu_) = 0;
  grpc::ClientContext* context_ ABSL_GUARDED_BY(mu_) = nullptr;
  Counters counters_ ABSL_GUARDED_BY(mu_);
  // The reconnect backoff's cap (SetMaxBackoff).
  absl::Duration max_backoff_ ABSL_GUARDED_BY(mu_);

  // Serializes writes; held while writing (lock order: write_mu_ then mu_).
  absl::Mutex write_mu_;
  grpc::ClientReaderWriter<membroker::v1::AgentMessage, membroker::v1::BrokerMessage>* stream_
      ABSL_GUARDED_BY(write_mu_) = nullptr;
  // The stream id `stream_` belongs to.
  uint64_t stream_id_of_writer_ ABSL_GUARDED_BY(write_mu_) = 0;
};

}  // namespace membroker::agent

#pragma once
// The broker's resource bounds, in one place: what one client may send and
// hold open, so that slow, hung or hostile agents and watchers cannot grow
// the broker's memory without bound.
//   - the largest message a client may send, derived from the largest
//     legal agent message (report.h's limits): anything larger is refused
//     by gRPC with RESOURCE_EXHAUSTED before it is parsed;
//   - keepalive pings on idle connections (a dead agent is noticed in
//     keepalive_time + keepalive_timeout), idle connections without calls
//     closed, a cap on streams per HTTP/2 connection;
//   - a grpc::ResourceQuota on the server's buffers;
//   - caps on open agent streams and decision watchers, in total and per
//     peer address (StreamLimiter), and a deadline for an agent stream's
//     Hello (AgentServiceImpl).

#include <grpcpp/server_builder.h>

#include <cstddef>
#include <cstdint>
#include <map>
#include <string>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "broker/fleet.h"
#include "broker/metrics.h"
#include "common/clock.h"
#include "membroker/v1/config.pb.h"

namespace membroker::broker {

// The server's bounds. The initializers are the shipped defaults.
struct ServerLimits {
  // Largest message a client may send; 0: LargestLegalAgentMessageBytes().
  size_t max_receive_message_bytes = 0;
  // Open agent streams (one per host; 10 000 hosts is the design's scale).
  int max_agent_streams = 20000;
  // Open WatchDecisions streams.
  int max_watch_streams = 1000;
  // Bytes of decisions one WatchDecisions stream may hold unsent (its
  // reader is slower than the decisions): a watcher above it has fallen
  // behind and is ended with RESOURCE_EXHAUSTED.
  size_t watch_buffer_bytes = size_t{256} << 10;
  // The same, over all watchers together.
  size_t watch_buffer_total_bytes = size_t{32} << 20;
  // Open streams of one kind (agent, watch) from one peer address.
  int max_streams_per_peer = 64;
  // An agent stream that sends no Hello within this is ended
  // (DEADLINE_EXCEEDED).
  absl::Duration hello_timeout = absl::Seconds(10);
  // Pings on a connection idle this long; dead after keepalive_timeout
  // without an answer.
  absl::Duration keepalive_time = absl::Seconds(10);
  absl::Duration keepalive_timeout = absl::Seconds(5);
  // A connection with no call for this long is closed.
  absl::Duration max_connection_idle = absl::Minutes(5);
  // HTTP/2 streams one connection may have open at once.
  int max_concurrent_streams_per_connection = 100;
  // The gRPC server's memory quota (buffers of all connections).
  size_t memory_quota_bytes = size_t{1} << 30;
  // A host whose agent has been disconnected this long is forgotten, with
  // its metric series.
  absl::Duration host_expiry = absl::Minutes(10);
};

// Checks the bounds. INVALID_ARGUMENT naming the field.
absl::Status ValidateServerLimits(const ServerLimits& limits);

// Sets the fields `config` sets over `limits`. INVALID_ARGUMENT for a
// malformed duration.
absl::Status MergeLimitsConfig(const v1::BrokerLimits& config, ServerLimits* limits);

// The serialized size of the largest AgentMessage that validation accepts
// (a report of kMaxVmsPerHost VMs with every field at its limit), plus a
// margin for fields added later.
size_t LargestLegalAgentMessageBytes();

// Applies the message size, keepalive, idle, per-connection and quota
// bounds to `builder`.
void ApplyServerLimits(const ServerLimits& limits, grpc::ServerBuilder* builder);

// The address part of a gRPC peer string ("ipv4:10.0.0.5:4242" ->
// "ipv4:10.0.0.5"; "ipv6:[::1]:4242" -> "ipv6:[::1]").
std::string PeerAddress(const std::string& peer);

// Counts open streams of one kind, in total and per peer address.
// Thread-safe.
class StreamLimiter {
 public:
  // `kind` names the streams in errors and in the rejected-messages metric
  // ("agent", "watch"). `metrics` may be null.
  StreamLimiter(std::string kind, int max_total, int max_per_peer, BrokerMetrics* metrics);

  // Admits one more stream from `peer` (a gRPC peer string), or
  // RESOURCE_EXHAUSTED naming the limit (counted as
  // membroker_reports_rejected_total{reason="KIND_streams_limit"}).
  absl::Status Acquire(const std::string& peer);
  // Ends a stream admitted by Acquire.
  void Release(const std::string& peer);
  // Streams open now.
  int open() const;

 private:
  const std::string kind_;
  const int max_total_;
  const int max_per_peer_;
  BrokerMetrics* const metrics_;
  mutable absl::Mutex mu_;
  int total_ ABSL_GUARDED_BY(mu_) = 0;
  std::map<std::string, int> per_peer_ ABSL_GUARDED_BY(mu_);
};

// Forgets hosts disconnected for longer than `after` (Fleet::ExpireHosts),
// checking every quarter of `after` (at most every 30 s) of `clock`'s time.
// Thread-safe; the destructor stops the thread.
class HostExpiry {
 public:
  HostExpiry(Fleet* fleet, const Clock* clock, absl::Duration after);
  ~HostExpiry();

 private:
  void Run();
  Fleet* const fleet_;
  const Clock* const clock_;
  const absl::Duration after_;
  absl::Mutex mu_;
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  std::thread thread_;
};

}  // namespace membroker::broker

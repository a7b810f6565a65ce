#pragma once
// The gRPC binding of AgentService: one ServerBidiReactor per agent stream.
// Thin: parse, validate, hand to the Fleet, write what the Fleet sends. At
// most one write is outstanding per stream; a newer TargetSet replaces a
// queued, unsent one (they are full snapshots). With TLS, a stream serves
// only a host the caller's certificate names (Authorizer::AuthorizeHost).
//
// The stream is served raw (bytes in, bytes out) so that the broker parses
// each message itself: a message that is not a valid AgentMessage (garbage
// bytes, invalid UTF-8 in a string field) ends the stream with
// INVALID_ARGUMENT and is counted, where gRPC's own parser would end it
// like a normal close. Unknown fields are dropped, never stored. Streams
// are admitted by a StreamLimiter (total and per peer), and a stream that
// sends no Hello within the hello timeout is ended with DEADLINE_EXCEEDED.

#include <grpcpp/support/byte_buffer.h>

#include "absl/time/time.h"
#include "broker/authz.h"
#include "broker/fleet.h"
#include "broker/metrics.h"
#include "broker/server_limits.h"
#include "common/clock.h"
#include "common/log_limit.h"
#include "membroker/v1/agent.grpc.pb.h"

namespace membroker::broker {

// Thread-safe (gRPC calls Connect from its threads).
class AgentServiceImpl final
    : public v1::AgentService::WithRawCallbackMethod_Connect<v1::AgentService::Service> {
 public:
  // None owned; all must outlive the service. `clock` paces the log
  // limit; `limits` gives the stream caps and the hello timeout.
  AgentServiceImpl(Fleet* fleet, BrokerMetrics* metrics, const Authorizer* authorizer,
                   const Clock* clock, const ServerLimits& limits = {});

  grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer>* Connect(
      grpc::CallbackServerContext* context) override;

  // Agent streams open now.
  int open_streams() const { return limiter_.open(); }

 private:
  Fleet* const fleet_;
  BrokerMetrics* const metrics_;
  const Authorizer* const authorizer_;
  const absl::Duration hello_timeout_;
  StreamLimiter limiter_;
  // Bounds the log lines bad streams cause.
  LogLimiter log_limiter_;
};

}  // namespace membroker::broker

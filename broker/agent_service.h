#pragma once
// The gRPC binding of AgentService: one ServerBidiReactor per agent stream.
// Thin: validate, hand to the Fleet, write what the Fleet sends. At most one
// write is outstanding per stream; a newer TargetSet replaces a queued,
// unsent one (they are full snapshots). With TLS, a stream serves only a
// host the caller's certificate names (Authorizer::AuthorizeHost).

#include "broker/authz.h"
#include "broker/fleet.h"
#include "broker/metrics.h"
#include "membroker/v1/agent.grpc.pb.h"

namespace membroker::broker {

class AgentServiceImpl final : public v1::AgentService::CallbackService {
 public:
  // None owned; all must outlive the service.
  AgentServiceImpl(Fleet* fleet, BrokerMetrics* metrics, const Authorizer* authorizer)
      : fleet_(fleet), metrics_(metrics), authorizer_(authorizer) {}

  grpc::ServerBidiReactor<v1::AgentMessage, v1::BrokerMessage>* Connect(
      grpc::CallbackServerContext* context) override;

 private:
  Fleet* const fleet_;
  BrokerMetrics* const metrics_;
  const Authorizer* const authorizer_;
};

}  // namespace membroker::broker

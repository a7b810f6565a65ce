#pragma once
// The gRPC binding of AgentService: one ServerBidiReactor per agent stream.
// Thin: validate, hand to the Fleet, write what the Fleet sends. At most one
// write is outstanding per stream; a newer TargetSet replaces a queued,
// unsent one (they are full snapshots).

#include "broker/fleet.h"
#include "broker/metrics.h"
#include "membroker/v1/agent.grpc.pb.h"

namespace membroker::broker {

class AgentServiceImpl final : public v1::AgentService::CallbackService {
 public:
  AgentServiceImpl(Fleet* fleet, BrokerMetrics* metrics) : fleet_(fleet), metrics_(metrics) {}

  grpc::ServerBidiReactor<v1::AgentMessage, v1::BrokerMessage>* Connect(
      grpc::CallbackServerContext* context) override;

 private:
  Fleet* const fleet_;
  BrokerMetrics* const metrics_;
};

}  // namespace membroker::broker

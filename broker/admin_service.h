#pragma once
// The gRPC binding of AdminService (callback API). Each handler is thin:
// validate, one Fleet call, convert, map the status. Every handler first
// asks the Authorizer whether the caller's certificate may call it; policy
// changes are audited under the caller's identity.

#include "broker/authz.h"
#include "broker/fleet.h"
#include "broker/metrics.h"
#include "broker/planner.h"
#include "broker/server_limits.h"
#include "broker/stream_writer.h"
#include "membroker/v1/admin.grpc.pb.h"

namespace membroker::broker {

class AdminServiceImpl final : public v1::AdminService::CallbackService {
 public:
  // None owned; all must outlive the service. `limits` caps the open
  // WatchDecisions streams (in total and per peer) and the bytes of
  // decisions they hold unsent (per watcher and in total).
  AdminServiceImpl(Fleet* fleet, BrokerMetrics* metrics, Store* store, const Authorizer* authorizer,
                   Planner* planner, const ServerLimits& limits = {})
      : fleet_(fleet),
        metrics_(metrics),
        store_(store),
        authorizer_(authorizer),
        planner_(planner),
        watch_limiter_("watch", limits.max_watch_streams, limits.max_streams_per_peer, metrics),
        watch_buffer_bytes_(limits.watch_buffer_bytes),
        watch_budget_(limits.watch_buffer_total_bytes) {}

  grpc::ServerUnaryReactor* ListHosts(grpc::CallbackServerContext* ctx,
                                      const v1::ListHostsRequest* req,
                                      v1::ListHostsResponse* resp) override;
  grpc::ServerUnaryReactor* GetHost(grpc::CallbackServerContext* ctx,
                                    const v1::GetHostRequest* req, v1::Host* resp) override;
  grpc::ServerUnaryReactor* ListVms(grpc::CallbackServerContext* ctx,
                                    const v1::ListVmsRequest* req,
                                    v1::ListVmsResponse* resp) override;
  grpc::ServerUnaryReactor* GetVm(grpc::CallbackServerContext* ctx, const v1::GetVmRequest* req,
                                  v1::Vm* resp) override;
  grpc::ServerUnaryReactor* SetVmPolicy(grpc::CallbackServerContext* ctx,
                                        const v1::SetVmPolicyRequest* req,
                                        v1::VmPolicy* resp) override;
  grpc::ServerUnaryReactor* ClearVmPolicy(grpc::CallbackServerContext* ctx,
                                          const v1::ClearVmPolicyRequest* req,
                                          v1::ClearVmPolicyResponse* resp) override;
  grpc::ServerUnaryReactor* GetClusterPolicy(grpc::CallbackServerContext* ctx,
                                             const v1::GetClusterPolicyRequest* req,
                                             v1::ClusterPolicy* resp) override;
  grpc::ServerUnaryReactor* SetClusterPolicy(grpc::CallbackServerContext* ctx,
                                             const v1::SetClusterPolicyRequest* req,
                                             v1::ClusterPolicy* resp) override;
  grpc::ServerUnaryReactor* ExplainVm(grpc::CallbackServerContext* ctx,
                                      const v1::ExplainVmRequest* req,
                                      v1::Explanation* resp) override;
  grpc::ServerUnaryReactor* Reserve(grpc::CallbackServerContext* ctx,
                                    const v1::ReserveRequest* req,
                                    v1::Reservation* resp) override;
  grpc::ServerUnaryReactor* Release(grpc::CallbackServerContext* ctx,
                                    const v1::ReleaseRequest* req,
                                    v1::ReleaseResponse* resp) override;
  grpc::ServerUnaryReactor* GetPlan(grpc::CallbackServerContext* ctx, const v1::GetPlanRequest* req,
                                    v1::Plan* resp) override;
  grpc::ServerUnaryReactor* Place(grpc::CallbackServerContext* ctx, const v1::PlaceRequest* req,
                                  v1::PlaceResponse* resp) override;
  grpc::ServerWriteReactor<v1::Decision>* WatchDecisions(
      grpc::CallbackServerContext* ctx, const v1::WatchDecisionsRequest* req) override;
  grpc::ServerUnaryReactor* ListAuditEntries(grpc::CallbackServerContext* ctx,
                                             const v1::ListAuditEntriesRequest* req,
                                             v1::ListAuditEntriesResponse* resp) override;

 private:
  grpc::ServerUnaryReactor* Done(grpc::CallbackServerContext* ctx, const char* method,
                                 const absl::Status& status);
  // OK when the caller may call `method`; else the status to reply with
  // (logged with the caller's identity).
  absl::Status Authorize(grpc::CallbackServerContext* ctx, const char* method);
  Fleet* const fleet_;
  BrokerMetrics* const metrics_;
  Store* const store_;
  const Authorizer* const authorizer_;
  Planner* const planner_;
  StreamLimiter watch_limiter_;
  const size_t watch_buffer_bytes_;
  // Unsent decision bytes of all watchers.
  SharedByteBudget watch_budget_;
};

}  // namespace membroker::broker

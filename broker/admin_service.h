#pragma once
// The gRPC binding of AdminService (callback API). Each handler is thin:
// validate, one Fleet call, convert, map the status. Every handler first
// asks the Authorizer whether the caller's certificate may call it; policy
// changes are audited under the caller's identity.
//
// Calls that take a host's lock (which a decision holds) or write the
// store run on the service's own worker threads, never on a gRPC callback
// thread: a long decision on one host delays only the admin calls that
// need that host, and never the callback threads every agent stream and
// every other call share.

#include <memory>

#include "broker/authz.h"
#include "broker/fleet.h"
#include "broker/metrics.h"
#include "broker/planner.h"
#include "broker/reservations.h"
#include "broker/server_limits.h"
#include "broker/stream_writer.h"
#include "broker/watch.h"
#include "membroker/v1/admin.grpc.pb.h"

namespace membroker::broker {

class AdminServiceImpl final : public v1::AdminService::CallbackService {
 public:
  // None owned; all must outlive the service. `limits` caps the open
  // watch streams (WatchDecisions, WatchVms, WatchHosts; in total and per
  // peer) and the bytes of decisions WatchDecisions streams hold unsent
  // (per watcher and in total). Without `reservations`, Reserve / Release /
  // ListReservations answer UNIMPLEMENTED; without `watch_hub`, WatchVms /
  // WatchHosts do. Starts the worker threads; the destructor finishes
  // queued calls and joins them.
  AdminServiceImpl(Fleet* fleet, BrokerMetrics* metrics, Store* store, const Authorizer* authorizer,
                   Planner* planner, const ServerLimits& limits = {},
                   Reservations* reservations = nullptr, WatchHub* watch_hub = nullptr);
  ~AdminServiceImpl() override;

  grpc::ServerUnaryReactor* ListHosts(grpc::CallbackServerContext* ctx,
                                      const v1::ListHostsRequest* req,
                                      v1::ListHostsResponse* resp) override;
  grpc::ServerUnaryReactor* GetHost(grpc::CallbackServerContext* ctx, const v1::GetHostRequest* req,
                                    v1::Host* resp) override;
  grpc::ServerUnaryReactor* ListVms(grpc::CallbackServerContext* ctx, const v1::ListVmsRequest* req,
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
  grpc::ServerUnaryReactor* Reserve(grpc::CallbackServerContext* ctx, const v1::ReserveRequest* req,
                                    v1::Reservation* resp) override;
  grpc::ServerUnaryReactor* Release(grpc::CallbackServerContext* ctx, const v1::ReleaseRequest* req,
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
  grpc::ServerUnaryReactor* ListReservations(grpc::CallbackServerContext* ctx,
                                             const v1::ListReservationsRequest* req,
                                             v1::ListReservationsResponse* resp) override;
  grpc::ServerWriteReactor<v1::VmEvent>* WatchVms(grpc::CallbackServerContext* ctx,
                                                  const v1::WatchVmsRequest* req) override;
  grpc::ServerWriteReactor<v1::HostEvent>* WatchHosts(grpc::CallbackServerContext* ctx,
                                                      const v1::WatchHostsRequest* req) override;

 private:
  class Workers;
  grpc::ServerUnaryReactor* Done(grpc::CallbackServerContext* ctx, const char* method,
                                 const absl::Status& status);
  // Runs `work` on a worker thread and finishes the call with its status.
  // The request and response stay valid until then (gRPC keeps them until
  // Finish). RESOURCE_EXHAUSTED at once when too many calls are queued.
  grpc::ServerUnaryReactor* Offload(grpc::CallbackServerContext* ctx, const char* method,
                                    std::function<absl::Status()> work);
  // OK when the caller may call `method`; else the status to reply with
  // (logged with the caller's identity).
  absl::Status Authorize(grpc::CallbackServerContext* ctx, const char* method);
  Fleet* const fleet_;
  BrokerMetrics* const metrics_;
  Store* const store_;
  const Authorizer* const authorizer_;
  Planner* const planner_;
  Reservations* const reservations_;
  WatchHub* const watch_hub_;
  StreamLimiter watch_limiter_;
  const size_t watch_buffer_bytes_;
  // Unsent decision bytes of all watchers.
  SharedByteBudget watch_budget_;
  // Last member: destroyed (joined) first, while what calls use still lives.
  std::unique_ptr<Workers> workers_;
};

}  // namespace membroker::broker

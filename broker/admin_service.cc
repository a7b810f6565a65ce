#include "broker/admin_service.h"

#include "absl/strings/str_cat.h"
#include "broker/stream_writer.h"
#include "common/status.h"

namespace membroker::broker {
namespace {

const char* CodeName(absl::StatusCode code) {
  switch (code) {
    case absl::StatusCode::kOk: return "OK";
    case absl::StatusCode::kCancelled: return "CANCELLED";
    case absl::StatusCode::kInvalidArgument: return "INVALID_ARGUMENT";
    case absl::StatusCode::kDeadlineExceeded: return "DEADLINE_EXCEEDED";
    case absl::StatusCode::kNotFound: return "NOT_FOUND";
    case absl::StatusCode::kAlreadyExists: return "ALREADY_EXISTS";
    case absl::StatusCode::kPermissionDenied: return "PERMISSION_DENIED";
    case absl::StatusCode::kResourceExhausted: return "RESOURCE_EXHAUSTED";
    case absl::StatusCode::kFailedPrecondition: return "FAILED_PRECONDITION";
    case absl::StatusCode::kAborted: return "ABORTED";
    case absl::StatusCode::kOutOfRange: return "OUT_OF_RANGE";
    case absl::StatusCode::kUnimplemented: return "UNIMPLEMENTED";
    case absl::StatusCode::kInternal: return "INTERNAL";
    case absl::StatusCode::kUnavailable: return "UNAVAILABLE";
    case absl::StatusCode::kDataLoss: return "DATA_LOSS";
    case absl::StatusCode::kUnauthenticated: return "UNAUTHENTICATED";
    default: return "UNKNOWN";
  }
}

// Streams decisions to one watcher; drops the oldest when the watcher is
// slow (at most kMaxQueued pending), so a slow watcher never blocks reports.
class DecisionWriter final : public grpc::ServerWriteReactor<v1::Decision> {
 public:
  static constexpr size_t kMaxQueued = 1024;

  // `limiter` admitted the stream from `peer`; released when it ends.
  DecisionWriter(Fleet* fleet, const std::string& host, StreamLimiter* limiter, std::string peer)
      : fleet_(fleet),
        limiter_(limiter),
        peer_(std::move(peer)),
        writer_({[this](const v1::Decision* d) { StartWrite(d); },
                 [this](const grpc::Status& s) { Finish(s); }, nullptr},
                kMaxQueued) {
    id_ = fleet_->Watch(host, [this](const v1::Decision& d) { writer_.Enqueue(d); });
  }

  void OnWriteDone(bool ok) override {
    writer_.OnWriteDone(ok);
    if (!ok) writer_.FinishOnce(grpc::Status::CANCELLED);
  }
  void OnCancel() override { writer_.FinishOnce(grpc::Status::CANCELLED); }
  void OnDone() override {
    fleet_->Unwatch(id_);
    limiter_->Release(peer_);
    delete this;
  }

 private:
  Fleet* const fleet_;
  StreamLimiter* const limiter_;
  const std::string peer_;
  QueuedStreamWriter<v1::Decision> writer_;
  uint64_t id_ = 0;
};

}  // namespace

grpc::ServerUnaryReactor* AdminServiceImpl::Done(grpc::CallbackServerContext* ctx,
                                                 const char* method, const absl::Status& status) {
  metrics_->AdminRequest(method, CodeName(status.code()));
  grpc::ServerUnaryReactor* reactor = ctx->DefaultReactor();
  reactor->Finish(ToGrpcStatus(status));
  return reactor;
}

grpc::ServerUnaryReactor* AdminServiceImpl::ListHosts(grpc::CallbackServerContext* ctx,
                                                      const v1::ListHostsRequest*,
                                                      v1::ListHostsResponse* resp) {
  for (v1::Host& h : fleet_->ListHosts()) *resp->add_hosts() = std::move(h);
  return Done(ctx, "ListHosts", absl::OkStatus());
}

grpc::ServerUnaryReactor* AdminServiceImpl::GetHost(grpc::CallbackServerContext* ctx,
                                                    const v1::GetHostRequest* req,
                                                    v1::Host* resp) {
  if (req->host_id().empty()) {
    return Done(ctx, "GetHost", absl::InvalidArgumentError("host_id: must not be empty"));
  }
  auto host = fleet_->GetHost(req->host_id());
  if (host.ok()) *resp = std::move(*host);
  return Done(ctx, "GetHost", host.status());
}

grpc::ServerUnaryReactor* AdminServiceImpl::ListVms(grpc::CallbackServerContext* ctx,
                                                    const v1::ListVmsRequest* req,
                                                    v1::ListVmsResponse* resp) {
  auto vms = fleet_->ListVms(req->host_id());
  if (vms.ok()) {
    for (v1::Vm& v : *vms) *resp->add_vms() = std::move(v);
  }
  return Done(ctx, "ListVms", vms.status());
}

grpc::ServerUnaryReactor* AdminServiceImpl::GetVm(grpc::CallbackServerContext* ctx,
                                                  const v1::GetVmRequest* req, v1::Vm* resp) {
  auto vm = fleet_->GetVm(req->vm());
  if (vm.ok()) *resp = std::move(*vm);
  return Done(ctx, "GetVm", vm.status());
}

grpc::ServerUnaryReactor* AdminServiceImpl::SetVmPolicy(grpc::CallbackServerContext* ctx,
                                                        const v1::SetVmPolicyRequest* req,
                                                        v1::VmPolicy* resp) {
  auto policy = fleet_->SetVmPolicy(req->vm(), req->policy(), req->merge());
  if (policy.ok()) *resp = std::move(*policy);
  return Done(ctx, "SetVmPolicy", policy.status());
}

grpc::ServerUnaryReactor* AdminServiceImpl::ClearVmPolicy(grpc::CallbackServerContext* ctx,
                                                          const v1::ClearVmPolicyRequest* req,
                                                          v1::ClearVmPolicyResponse*) {
  return Done(ctx, "ClearVmPolicy", fleet_->ClearVmPolicy(req->vm()));
}

grpc::ServerUnaryReactor* AdminServiceImpl::GetClusterPolicy(grpc::CallbackServerContext* ctx,
                                                             const v1::GetClusterPolicyRequest*,
                                                             v1::ClusterPolicy* resp) {
  *resp = fleet_->GetClusterPolicy();
  return Done(ctx, "GetClusterPolicy", absl::OkStatus());
}

grpc::ServerUnaryReactor* AdminServiceImpl::SetClusterPolicy(
    grpc::CallbackServerContext* ctx, const v1::SetClusterPolicyRequest* req,
    v1::ClusterPolicy* resp) {
  auto policy = fleet_->SetClusterPolicy(req->policy());
  if (policy.ok()) *resp = std::move(*policy);
  return Done(ctx, "SetClusterPolicy", policy.status());
}

grpc::ServerUnaryReactor* AdminServiceImpl::ExplainVm(grpc::CallbackServerContext* ctx,
                                                      const v1::ExplainVmRequest* req,
                                                      v1::Explanation* resp) {
  auto e = fleet_->ExplainVm(req->vm());
  if (e.ok()) *resp = std::move(*e);
  return Done(ctx, "ExplainVm", e.status());
}

grpc::ServerUnaryReactor* AdminServiceImpl::Reserve(grpc::CallbackServerContext* ctx,
                                                    const v1::ReserveRequest*,
                                                    v1::Reservation*) {
  return Done(ctx, "Reserve",
              absl::UnimplementedError("reservations are not implemented in this version"));
}

grpc::ServerUnaryReactor* AdminServiceImpl::Release(grpc::CallbackServerContext* ctx,
                                                    const v1::ReleaseRequest*,
                                                    v1::ReleaseResponse*) {
  return Done(ctx, "Release",
              absl::UnimplementedError("reservations are not implemented in this version"));
}

grpc::ServerUnaryReactor* AdminServiceImpl::GetPlan(grpc::CallbackServerContext* ctx,
                                                    const v1::GetPlanRequest*, v1::Plan*) {
  return Done(ctx, "GetPlan",
              absl::UnimplementedError("the rebalance plan is not implemented in this version"));
}

grpc::ServerWriteReactor<v1::Decision>* AdminServiceImpl::WatchDecisions(
    grpc::CallbackServerContext* ctx, const v1::WatchDecisionsRequest* req) {
  if (absl::Status admitted = watch_limiter_.Acquire(ctx->peer()); !admitted.ok()) {
    metrics_->AdminRequest("WatchDecisions", CodeName(admitted.code()));
    // A reactor that ends the call at once.
    class Refused final : public grpc::ServerWriteReactor<v1::Decision> {
     public:
      explicit Refused(const grpc::Status& s) { Finish(s); }
      void OnDone() override { delete this; }
    };
    return new Refused(ToGrpcStatus(admitted));
  }
  metrics_->AdminRequest("WatchDecisions", "OK");
  return new DecisionWriter(fleet_, req->host_id(), &watch_limiter_, ctx->peer());
}

}  // namespace membroker::broker

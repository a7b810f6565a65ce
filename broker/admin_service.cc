#include "broker/admin_service.h"

#include <spdlog/spdlog.h>

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "broker/peer_identity.h"
#include "broker/report.h"
#include "broker/stream_writer.h"
#include "common/status.h"
#include "common/units.h"

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

// Roughly what a queued Decision holds in memory: the message, its
// targets and their strings, with allocator overhead. Several times its
// wire size (ByteSizeLong), which would understate a watcher's footprint.
// Linear in the targets, no reflection: it runs for every watcher on every
// decision.
size_t DecisionMemoryBytes(const v1::Decision& d) {
  constexpr size_t kAllocOverhead = 16;
  auto string_bytes = [](const std::string& s) -> size_t {
    if (s.empty()) return 0;  // the shared default
    return sizeof(std::string) + kAllocOverhead +
           (s.capacity() > 15 ? s.capacity() + 1 + kAllocOverhead : 0);
  };
  size_t bytes = sizeof(v1::Decision) + string_bytes(d.host_id());
  if (d.has_decided_at()) bytes += sizeof(google::protobuf::Timestamp) + kAllocOverhead;
  bytes += (d.targets_size() + 1) * sizeof(void*) + kAllocOverhead;  // the pointer array
  for (const v1::VmTarget& t : d.targets()) {
    bytes += sizeof(v1::VmTarget) + kAllocOverhead + string_bytes(t.vm_id());
  }
  return bytes;
}

// Streams decisions to one watcher; drops the oldest when the watcher is
// slow (at most kMaxQueued pending), so a slow watcher never blocks
// reports. A watcher whose unsent decisions would hold more than
// `max_bytes`, or take the watchers' shared budget over its maximum, has
// fallen behind: it is ended with RESOURCE_EXHAUSTED, counted as
// membroker_reports_rejected_total{reason="watch_fell_behind"}.
class DecisionWriter final : public grpc::ServerWriteReactor<v1::Decision> {
 public:
  static constexpr size_t kMaxQueued = 1024;

  // `limiter` admitted the stream from `peer`; released when it ends.
  // `shared` (not owned) is the budget of all watchers' unsent bytes.
  DecisionWriter(Fleet* fleet, BrokerMetrics* metrics, const std::string& host,
                 StreamLimiter* limiter, std::string peer, size_t max_bytes,
                 SharedByteBudget* shared)
      : fleet_(fleet),
        limiter_(limiter),
        peer_(std::move(peer)),
        writer_({[this](const v1::Decision* d) { StartWrite(d); },
                 [this](const grpc::Status& s) { Finish(s); }, nullptr, DecisionMemoryBytes,
                 [metrics, max_bytes, shared](size_t queued, bool all) {
                   metrics->ReportRejected("watch_fell_behind");
                   return ToGrpcStatus(absl::ResourceExhaustedError(
                       all ? absl::StrCat("the watcher fell behind: the decisions unsent to all "
                                          "watchers reached their budget of ",
                                          shared->max(), " bytes")
                           : absl::StrCat("the watcher fell behind: ", queued,
                                          " bytes of decisions unsent, above its budget of ",
                                          max_bytes, " bytes")));
                 }},
                kMaxQueued, max_bytes, shared) {
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

// A watch the caller may not open: ends at once with `status`.
class RefusedWatch final : public grpc::ServerWriteReactor<v1::Decision> {
 public:
  explicit RefusedWatch(const grpc::Status& status) { Finish(status); }
  void OnDone() override { delete this; }
};

// The longest string each request field may carry: a host id as agents
// may send it (ValidateHostId), a VM id or name as reports may carry it
// (report.h). Longer ones are refused before any lookup, so no error quotes
// them and no client gets an error larger than its metadata limit.
constexpr size_t kMaxRequestHostIdChars = kMaxHostIdChars;
constexpr size_t kMaxRequestVmChars = std::max(kMaxVmIdChars, kMaxVmNameChars);
constexpr size_t kMaxRequestIdChars = kMaxVmIdChars;

// INVALID_ARGUMENT naming `field` and the limit when `value` is longer
// than `max` bytes.
absl::Status CheckLength(const char* field, const std::string& value, size_t max) {
  if (value.size() <= max) return absl::OkStatus();
  return absl::InvalidArgumentError(
      absl::StrCat(field, ": at most ", max, " characters, got ", value.size()));
}

// Default and largest number of audit entries one ListAuditEntries returns.
constexpr uint32_t kDefaultAuditLimit = 100;
constexpr uint32_t kMaxAuditLimit = 10000;
constexpr size_t kMaxAuditTarget = 256;

}  // namespace

absl::Status AdminServiceImpl::Authorize(grpc::CallbackServerContext* ctx, const char* method) {
  if (authorizer_->insecure()) return absl::OkStatus();
  absl::Status s = authorizer_->AuthorizeAdmin(IdentityOf(*ctx), method);
  if (!s.ok()) spdlog::warn("admin call {} refused: {}", method, std::string(s.message()));
  return s;
}

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
  if (auto denied = Authorize(ctx, "ListHosts"); !denied.ok()) {
    return Done(ctx, "ListHosts", denied);
  }
  for (v1::Host& h : fleet_->ListHosts()) *resp->add_hosts() = std::move(h);
  return Done(ctx, "ListHosts", absl::OkStatus());
}

grpc::ServerUnaryReactor* AdminServiceImpl::GetHost(grpc::CallbackServerContext* ctx,
                                                    const v1::GetHostRequest* req,
                                                    v1::Host* resp) {
  if (auto denied = Authorize(ctx, "GetHost"); !denied.ok()) {
    return Done(ctx, "GetHost", denied);
  }
  if (auto bad = CheckLength("host_id", req->host_id(), kMaxRequestHostIdChars); !bad.ok()) {
    return Done(ctx, "GetHost", bad);
  }
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
  if (auto denied = Authorize(ctx, "ListVms"); !denied.ok()) {
    return Done(ctx, "ListVms", denied);
  }
  if (auto bad = CheckLength("host_id", req->host_id(), kMaxRequestHostIdChars); !bad.ok()) {
    return Done(ctx, "ListVms", bad);
  }
  auto vms = fleet_->ListVms(req->host_id());
  if (vms.ok()) {
    for (v1::Vm& v : *vms) *resp->add_vms() = std::move(v);
  }
  return Done(ctx, "ListVms", vms.status());
}

grpc::ServerUnaryReactor* AdminServiceImpl::GetVm(grpc::CallbackServerContext* ctx,
                                                  const v1::GetVmRequest* req, v1::Vm* resp) {
  if (auto denied = Authorize(ctx, "GetVm"); !denied.ok()) {
    return Done(ctx, "GetVm", denied);
  }
  if (auto bad = CheckLength("vm", req->vm(), kMaxRequestVmChars); !bad.ok()) {
    return Done(ctx, "GetVm", bad);
  }
  auto vm = fleet_->GetVm(req->vm());
  if (vm.ok()) *resp = std::move(*vm);
  return Done(ctx, "GetVm", vm.status());
}

grpc::ServerUnaryReactor* AdminServiceImpl::SetVmPolicy(grpc::CallbackServerContext* ctx,
                                                        const v1::SetVmPolicyRequest* req,
                                                        v1::VmPolicy* resp) {
  if (auto denied = Authorize(ctx, "SetVmPolicy"); !denied.ok()) {
    return Done(ctx, "SetVmPolicy", denied);
  }
  if (auto bad = CheckLength("vm", req->vm(), kMaxRequestVmChars); !bad.ok()) {
    return Done(ctx, "SetVmPolicy", bad);
  }
  auto policy =
      fleet_->SetVmPolicy(req->vm(), req->policy(), req->merge(), IdentityOf(*ctx).Display());
  if (policy.ok()) *resp = std::move(*policy);
  return Done(ctx, "SetVmPolicy", policy.status());
}

grpc::ServerUnaryReactor* AdminServiceImpl::ClearVmPolicy(grpc::CallbackServerContext* ctx,
                                                          const v1::ClearVmPolicyRequest* req,
                                                          v1::ClearVmPolicyResponse*) {
  if (auto denied = Authorize(ctx, "ClearVmPolicy"); !denied.ok()) {
    return Done(ctx, "ClearVmPolicy", denied);
  }
  if (auto bad = CheckLength("vm", req->vm(), kMaxRequestVmChars); !bad.ok()) {
    return Done(ctx, "ClearVmPolicy", bad);
  }
  return Done(ctx, "ClearVmPolicy", fleet_->ClearVmPolicy(req->vm(), IdentityOf(*ctx).Display()));
}

grpc::ServerUnaryReactor* AdminServiceImpl::GetClusterPolicy(grpc::CallbackServerContext* ctx,
                                                             const v1::GetClusterPolicyRequest*,
                                                             v1::ClusterPolicy* resp) {
  if (auto denied = Authorize(ctx, "GetClusterPolicy"); !denied.ok()) {
    return Done(ctx, "GetClusterPolicy", denied);
  }
  *resp = fleet_->GetClusterPolicy();
  return Done(ctx, "GetClusterPolicy", absl::OkStatus());
}

grpc::ServerUnaryReactor* AdminServiceImpl::SetClusterPolicy(
    grpc::CallbackServerContext* ctx, const v1::SetClusterPolicyRequest* req,
    v1::ClusterPolicy* resp) {
  if (auto denied = Authorize(ctx, "SetClusterPolicy"); !denied.ok()) {
    return Done(ctx, "SetClusterPolicy", denied);
  }
  auto policy = fleet_->SetClusterPolicy(req->policy(), IdentityOf(*ctx).Display());
  if (policy.ok()) *resp = std::move(*policy);
  return Done(ctx, "SetClusterPolicy", policy.status());
}

grpc::ServerUnaryReactor* AdminServiceImpl::ExplainVm(grpc::CallbackServerContext* ctx,
                                                      const v1::ExplainVmRequest* req,
                                                      v1::Explanation* resp) {
  if (auto denied = Authorize(ctx, "ExplainVm"); !denied.ok()) {
    return Done(ctx, "ExplainVm", denied);
  }
  if (auto bad = CheckLength("vm", req->vm(), kMaxRequestVmChars); !bad.ok()) {
    return Done(ctx, "ExplainVm", bad);
  }
  auto e = fleet_->ExplainVm(req->vm());
  if (e.ok()) *resp = std::move(*e);
  return Done(ctx, "ExplainVm", e.status());
}

grpc::ServerUnaryReactor* AdminServiceImpl::Reserve(grpc::CallbackServerContext* ctx,
                                                    const v1::ReserveRequest* req,
                                                    v1::Reservation*) {
  if (auto denied = Authorize(ctx, "Reserve"); !denied.ok()) {
    return Done(ctx, "Reserve", denied);
  }
  if (auto bad = CheckLength("host_id", req->host_id(), kMaxRequestHostIdChars); !bad.ok()) {
    return Done(ctx, "Reserve", bad);
  }
  return Done(ctx, "Reserve",
              absl::UnimplementedError("reservations are not implemented in this version"));
}

grpc::ServerUnaryReactor* AdminServiceImpl::Release(grpc::CallbackServerContext* ctx,
                                                    const v1::ReleaseRequest* req,
                                                    v1::ReleaseResponse*) {
  if (auto denied = Authorize(ctx, "Release"); !denied.ok()) {
    return Done(ctx, "Release", denied);
  }
  if (auto bad = CheckLength("id", req->id(), kMaxRequestIdChars); !bad.ok()) {
    return Done(ctx, "Release", bad);
  }
  return Done(ctx, "Release",
              absl::UnimplementedError("reservations are not implemented in this version"));
}

grpc::ServerUnaryReactor* AdminServiceImpl::GetPlan(grpc::CallbackServerContext* ctx,
                                                    const v1::GetPlanRequest*, v1::Plan* resp) {
  if (auto denied = Authorize(ctx, "GetPlan"); !denied.ok()) {
    return Done(ctx, "GetPlan", denied);
  }
  *resp = planner_->ComputePlan();
  return Done(ctx, "GetPlan", absl::OkStatus());
}

grpc::ServerUnaryReactor* AdminServiceImpl::Place(grpc::CallbackServerContext* ctx,
                                                  const v1::PlaceRequest* req,
                                                  v1::PlaceResponse* resp) {
  if (auto denied = Authorize(ctx, "Place"); !denied.ok()) {
    return Done(ctx, "Place", denied);
  }
  auto placed = planner_->Place(*req);
  if (placed.ok()) *resp = std::move(*placed);
  return Done(ctx, "Place", placed.status());
}

grpc::ServerWriteReactor<v1::Decision>* AdminServiceImpl::WatchDecisions(
    grpc::CallbackServerContext* ctx, const v1::WatchDecisionsRequest* req) {
  if (absl::Status denied = Authorize(ctx, "WatchDecisions"); !denied.ok()) {
    metrics_->AdminRequest("WatchDecisions", CodeName(denied.code()));
    return new RefusedWatch(ToGrpcStatus(denied));
  }
  if (absl::Status bad = CheckLength("host_id", req->host_id(), kMaxRequestHostIdChars);
      !bad.ok()) {
    metrics_->AdminRequest("WatchDecisions", CodeName(bad.code()));
    return new RefusedWatch(ToGrpcStatus(bad));
  }
  if (absl::Status admitted = watch_limiter_.Acquire(ctx->peer()); !admitted.ok()) {
    metrics_->AdminRequest("WatchDecisions", CodeName(admitted.code()));
    return new RefusedWatch(ToGrpcStatus(admitted));
  }
  metrics_->AdminRequest("WatchDecisions", "OK");
  return new DecisionWriter(fleet_, metrics_, req->host_id(), &watch_limiter_, ctx->peer(),
                            watch_buffer_bytes_, &watch_budget_);
}

grpc::ServerUnaryReactor* AdminServiceImpl::ListAuditEntries(grpc::CallbackServerContext* ctx,
                                                             const v1::ListAuditEntriesRequest* req,
                                                             v1::ListAuditEntriesResponse* resp) {
  if (auto denied = Authorize(ctx, "ListAuditEntries"); !denied.ok()) {
    return Done(ctx, "ListAuditEntries", denied);
  }
  if (req->limit() > kMaxAuditLimit) {
    return Done(ctx, "ListAuditEntries",
                absl::InvalidArgumentError(absl::StrCat("limit: at most ", kMaxAuditLimit)));
  }
  if (req->target().size() > kMaxAuditTarget) {
    return Done(ctx, "ListAuditEntries",
                absl::InvalidArgumentError(
                    absl::StrCat("target: at most ", kMaxAuditTarget, " characters")));
  }
  // A VM may be named; the trail is kept by VM id.
  std::string target = req->target();
  if (!target.empty() && target != "cluster") {
    if (auto vm = fleet_->GetVm(target); vm.ok()) target = vm->vm_id();
  }
  auto entries =
      store_->ListAuditEntries(req->limit() == 0 ? kDefaultAuditLimit : req->limit(), target);
  if (entries.ok()) {
    for (v1::AuditEntry& e : *entries) *resp->add_entries() = std::move(e);
  }
  return Done(ctx, "ListAuditEntries", entries.status());
}

}  // namespace membroker::broker

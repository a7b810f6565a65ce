#include "broker/admin_service.h"

#include <spdlog/spdlog.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <deque>
#include <functional>
#include <optional>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "broker/peer_identity.h"
#include "broker/report.h"
#include "broker/stream_writer.h"
#include "common/status.h"
#include "common/units.h"

namespace membroker::broker {
namespace {

const char* CodeName(absl::StatusCode code) {
  switch (code) {
    case absl::StatusCode::kOk:
      return "OK";
    case absl::StatusCode::kCancelled:
      return "CANCELLED";
    case absl::StatusCode::kInvalidArgument:
      return "INVALID_ARGUMENT";
    case absl::StatusCode::kDeadlineExceeded:
      return "DEADLINE_EXCEEDED";
    case absl::StatusCode::kNotFound:
      return "NOT_FOUND";
    case absl::StatusCode::kAlreadyExists:
      return "ALREADY_EXISTS";
    case absl::StatusCode::kPermissionDenied:
      return "PERMISSION_DENIED";
    case absl::StatusCode::kResourceExhausted:
      return "RESOURCE_EXHAUSTED";
    case absl::StatusCode::kFailedPrecondition:
      return "FAILED_PRECONDITION";
    case absl::StatusCode::kAborted:
      return "ABORTED";
    case absl::StatusCode::kOutOfRange:
      return "OUT_OF_RANGE";
    case absl::StatusCode::kUnimplemented:
      return "UNIMPLEMENTED";
    case absl::StatusCode::kInternal:
      return "INTERNAL";
    case absl::StatusCode::kUnavailable:
      return "UNAVAILABLE";
    case absl::StatusCode::kDataLoss:
      return "DATA_LOSS";
    case absl::StatusCode::kUnauthenticated:
      return "UNAUTHENTICATED";
    default:
      return "UNKNOWN";
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

constexpr int kWorkerThreads = 2;

// Lowers the calling thread's CPU priority (nice 10; Linux nices threads
// one by one). Best effort: a failure leaves the priority as it was.
void LowerThisThreadsPriority() {
  setpriority(PRIO_PROCESS, static_cast<id_t>(syscall(SYS_gettid)), 10);
}
constexpr size_t kMaxQueuedCalls = 256;

// One Reserve call: completes when Reservations calls back (maybe at once,
// maybe later from its worker); a cancelled call ends its wait.
class ReserveCall final : public grpc::ServerUnaryReactor {
 public:
  ReserveCall(Reservations* reservations, BrokerMetrics* metrics, v1::Reservation* resp)
      : reservations_(reservations), metrics_(metrics), resp_(resp) {}

  // Runs on an admin worker thread (it may take the host's lock). A call
  // cancelled before it ran reserves nothing. The reactor may be deleted as
  // soon as Finish is called, so nothing here touches it after that: an
  // answer that comes while Reserve is still running is kept and finished
  // here, after the last use of a member.
  void Start(const v1::ReserveRequest& req) {
    bool start;
    {
      absl::MutexLock lock(&mu_);
      start = !cancelled_;
      starting_ = start;
    }
    if (!start) {
      FinishWith(absl::CancelledError("the caller went away before the reservation was made"));
      return;
    }
    const uint64_t waiter = reservations_->Reserve(
        req, [this](absl::StatusOr<v1::Reservation> r) { Complete(std::move(r)); });
    std::optional<absl::StatusOr<v1::Reservation>> early;
    bool cancelled;
    {
      absl::MutexLock lock(&mu_);
      starting_ = false;
      waiter_ = waiter;
      early.swap(early_);
      cancelled = cancelled_;
    }
    if (early.has_value()) {
      FinishWith(*std::move(early));
    } else if (cancelled && waiter != 0 && reservations_->Cancel(waiter)) {
      // Cancelled while Reserve ran: OnCancel saw no wait to end.
      FinishWith(absl::CancelledError("the caller went away; the reservation was removed"));
    }
  }

  // Ends the call with `status` (the request was not started).
  void Fail(const absl::Status& status) { FinishWith(status); }

  void OnCancel() override {
    uint64_t waiter;
    {
      absl::MutexLock lock(&mu_);
      cancelled_ = true;
      waiter = waiter_;
    }
    // Only when the wait was still pending: else its completion finishes.
    if (waiter != 0 && reservations_->Cancel(waiter)) {
      Complete(absl::CancelledError("the caller went away; the reservation was removed"));
    }
  }
  void OnDone() override { delete this; }

 private:
  // The answer (exactly once per call): kept while Start runs, else the
  // call ends with it.
  void Complete(absl::StatusOr<v1::Reservation> r) {
    {
      absl::MutexLock lock(&mu_);
      if (starting_) {
        early_ = std::move(r);
        return;
      }
    }
    FinishWith(std::move(r));
  }
  // The last thing done with this reactor.
  void FinishWith(absl::StatusOr<v1::Reservation> r) {
    metrics_->AdminRequest("Reserve", CodeName(r.status().code()));
    if (r.ok()) *resp_ = *std::move(r);
    Finish(ToGrpcStatus(r.status()));
  }

  Reservations* const reservations_;
  BrokerMetrics* const metrics_;
  v1::Reservation* const resp_;
  absl::Mutex mu_;
  uint64_t waiter_ ABSL_GUARDED_BY(mu_) = 0;
  bool cancelled_ ABSL_GUARDED_BY(mu_) = false;
  bool starting_ ABSL_GUARDED_BY(mu_) = false;
  std::optional<absl::StatusOr<v1::Reservation>> early_ ABSL_GUARDED_BY(mu_);
};

// A watch the caller may not open: ends at once with `status`.
template <typename Event = v1::Decision>
class RefusedWatch final : public grpc::ServerWriteReactor<Event> {
 public:
  explicit RefusedWatch(const grpc::Status& status) { this->Finish(status); }
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

// A fixed pool of threads running queued admin calls in order. Thread-safe.
class AdminServiceImpl::Workers {
 public:
  Workers() {
    for (int i = 0; i < kWorkerThreads; ++i) threads_.emplace_back([this] { Run(); });
  }
  // Runs what is queued, then joins.
  ~Workers() {
    {
      absl::MutexLock lock(&mu_);
      stopping_ = true;
    }
    for (std::thread& t : threads_) t.join();
  }
  // Queues `task`; false when kMaxQueuedCalls are already waiting.
  bool Submit(std::function<void()> task) {
    absl::MutexLock lock(&mu_);
    if (queue_.size() >= kMaxQueuedCalls) return false;
    queue_.push_back(std::move(task));
    return true;
  }

 private:
  void Run() {
    // Admin work yields the CPU to the report path: listings of the whole
    // fleet are large and may wait, decisions should not.
    LowerThisThreadsPriority();
    while (true) {
      std::function<void()> task;
      {
        absl::MutexLock lock(&mu_);
        mu_.Await(absl::Condition(
            +[](Workers* w) ABSL_EXCLUSIVE_LOCKS_REQUIRED(w->mu_) {
              return w->stopping_ || !w->queue_.empty();
            },
            this));
        if (queue_.empty()) return;  // stopping, nothing left
        task = std::move(queue_.front());
        queue_.pop_front();
      }
      task();
    }
  }

  absl::Mutex mu_;
  std::deque<std::function<void()>> queue_ ABSL_GUARDED_BY(mu_);
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::vector<std::thread> threads_;
};

AdminServiceImpl::AdminServiceImpl(Fleet* fleet, BrokerMetrics* metrics, Store* store,
                                   const Authorizer* authorizer, Planner* planner,
                                   const ServerLimits& limits, Reservations* reservations,
                                   WatchHub* watch_hub)
    : fleet_(fleet),
      metrics_(metrics),
      store_(store),
      authorizer_(authorizer),
      planner_(planner),
      reservations_(reservations),
      watch_hub_(watch_hub),
      watch_limiter_("watch", limits.max_watch_streams, limits.max_streams_per_peer, metrics),
      watch_buffer_bytes_(limits.watch_buffer_bytes),
      watch_budget_(limits.watch_buffer_total_bytes),
      workers_(std::make_unique<Workers>()) {}

AdminServiceImpl::~AdminServiceImpl() = default;

grpc::ServerUnaryReactor* AdminServiceImpl::Offload(grpc::CallbackServerContext* ctx,
                                                    const char* method,
                                                    std::function<absl::Status()> work) {
  grpc::ServerUnaryReactor* reactor = ctx->DefaultReactor();
  const bool queued = workers_->Submit([this, reactor, method, work = std::move(work)] {
    const absl::Status status = work();
    metrics_->AdminRequest(method, CodeName(status.code()));
    reactor->Finish(ToGrpcStatus(status));
  });
  if (!queued) {
    const absl::Status busy =
        absl::ResourceExhaustedError("too many admin calls in progress; retry later");
    metrics_->AdminRequest(method, CodeName(busy.code()));
    reactor->Finish(ToGrpcStatus(busy));
  }
  return reactor;
}

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
  return Offload(ctx, "ListHosts", [this, resp] {
    for (v1::Host& h : fleet_->ListHosts()) *resp->add_hosts() = std::move(h);
    return absl::OkStatus();
  });
}

grpc::ServerUnaryReactor* AdminServiceImpl::GetHost(grpc::CallbackServerContext* ctx,
                                                    const v1::GetHostRequest* req, v1::Host* resp) {
  if (auto denied = Authorize(ctx, "GetHost"); !denied.ok()) {
    return Done(ctx, "GetHost", denied);
  }
  if (auto bad = CheckLength("host_id", req->host_id(), kMaxRequestHostIdChars); !bad.ok()) {
    return Done(ctx, "GetHost", bad);
  }
  if (req->host_id().empty()) {
    return Done(ctx, "GetHost", absl::InvalidArgumentError("host_id: must not be empty"));
  }
  return Offload(ctx, "GetHost", [this, req, resp] {
    auto host = fleet_->GetHost(req->host_id());
    if (host.ok()) *resp = std::move(*host);
    return host.status();
  });
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
  return Offload(ctx, "ListVms", [this, req, resp] {
    auto vms = fleet_->ListVms(req->host_id());
    if (vms.ok()) {
      resp->mutable_vms()->Reserve(static_cast<int>(vms->size()));
      for (v1::Vm& v : *vms) *resp->add_vms() = std::move(v);
    }
    return vms.status();
  });
}

grpc::ServerUnaryReactor* AdminServiceImpl::GetVm(grpc::CallbackServerContext* ctx,
                                                  const v1::GetVmRequest* req, v1::Vm* resp) {
  if (auto denied = Authorize(ctx, "GetVm"); !denied.ok()) {
    return Done(ctx, "GetVm", denied);
  }
  if (auto bad = CheckLength("vm", req->vm(), kMaxRequestVmChars); !bad.ok()) {
    return Done(ctx, "GetVm", bad);
  }
  return Offload(ctx, "GetVm", [this, req, resp] {
    auto vm = fleet_->GetVm(req->vm());
    if (vm.ok()) *resp = std::move(*vm);
    return vm.status();
  });
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
  return Offload(ctx, "SetVmPolicy", [this, req, resp, actor = IdentityOf(*ctx).Display()] {
    auto policy = fleet_->SetVmPolicy(req->vm(), req->policy(), req->merge(), actor);
    if (policy.ok()) *resp = std::move(*policy);
    return policy.status();
  });
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
  return Offload(ctx, "ClearVmPolicy", [this, req, actor = IdentityOf(*ctx).Display()] {
    return fleet_->ClearVmPolicy(req->vm(), actor);
  });
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

grpc::ServerUnaryReactor* AdminServiceImpl::SetClusterPolicy(grpc::CallbackServerContext* ctx,
                                                             const v1::SetClusterPolicyRequest* req,
                                                             v1::ClusterPolicy* resp) {
  if (auto denied = Authorize(ctx, "SetClusterPolicy"); !denied.ok()) {
    return Done(ctx, "SetClusterPolicy", denied);
  }
  return Offload(ctx, "SetClusterPolicy", [this, req, resp, actor = IdentityOf(*ctx).Display()] {
    auto policy = fleet_->SetClusterPolicy(req->policy(), actor);
    if (policy.ok()) *resp = std::move(*policy);
    return policy.status();
  });
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
  return Offload(ctx, "ExplainVm", [this, req, resp] {
    auto e = fleet_->ExplainVm(req->vm());
    if (e.ok()) *resp = std::move(*e);
    return e.status();
  });
}

grpc::ServerUnaryReactor* AdminServiceImpl::Reserve(grpc::CallbackServerContext* ctx,
                                                    const v1::ReserveRequest* req,
                                                    v1::Reservation* resp) {
  if (auto denied = Authorize(ctx, "Reserve"); !denied.ok()) {
    return Done(ctx, "Reserve", denied);
  }
  if (auto bad = CheckLength("host_id", req->host_id(), kMaxRequestHostIdChars); !bad.ok()) {
    return Done(ctx, "Reserve", bad);
  }
  if (reservations_ == nullptr) {
    return Done(ctx, "Reserve", absl::UnimplementedError("reservations are not enabled"));
  }
  // Answers from the reservations' worker when the room is free, so the
  // wait holds no callback thread.
  auto* call = new ReserveCall(reservations_, metrics_, resp);
  if (!workers_->Submit([call, req] { call->Start(*req); })) {
    call->Fail(absl::ResourceExhaustedError("too many admin calls in progress; retry later"));
  }
  return call;
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
  if (reservations_ == nullptr) {
    return Done(ctx, "Release", absl::UnimplementedError("reservations are not enabled"));
  }
  if (req->id().empty()) return Done(ctx, "Release", absl::InvalidArgumentError("id: empty"));
  // Removing re-decides the host (its lock): off the callback threads.
  return Offload(ctx, "Release", [this, req] { return reservations_->Remove(req->id()); });
}

grpc::ServerUnaryReactor* AdminServiceImpl::ListReservations(grpc::CallbackServerContext* ctx,
                                                             const v1::ListReservationsRequest* req,
                                                             v1::ListReservationsResponse* resp) {
  if (auto denied = Authorize(ctx, "ListReservations"); !denied.ok()) {
    return Done(ctx, "ListReservations", denied);
  }
  if (reservations_ == nullptr) {
    return Done(ctx, "ListReservations", absl::UnimplementedError("reservations are not enabled"));
  }
  if (auto bad = CheckLength("host_id", req->host_id(), kMaxRequestHostIdChars); !bad.ok()) {
    return Done(ctx, "ListReservations", bad);
  }
  for (v1::Reservation& r : reservations_->List(req->host_id())) {
    *resp->add_reservations() = std::move(r);
  }
  return Done(ctx, "ListReservations", absl::OkStatus());
}

grpc::ServerUnaryReactor* AdminServiceImpl::GetPlan(grpc::CallbackServerContext* ctx,
                                                    const v1::GetPlanRequest*, v1::Plan* resp) {
  if (auto denied = Authorize(ctx, "GetPlan"); !denied.ok()) {
    return Done(ctx, "GetPlan", denied);
  }
  // The plan reads every host's snapshot: off the callback threads.
  return Offload(ctx, "GetPlan", [this, resp] {
    *resp = planner_->ComputePlan();
    return absl::OkStatus();
  });
}

grpc::ServerUnaryReactor* AdminServiceImpl::Place(grpc::CallbackServerContext* ctx,
                                                  const v1::PlaceRequest* req,
                                                  v1::PlaceResponse* resp) {
  if (auto denied = Authorize(ctx, "Place"); !denied.ok()) {
    return Done(ctx, "Place", denied);
  }
  return Offload(ctx, "Place", [this, req, resp] {
    auto placed = planner_->Place(*req);
    if (placed.ok()) *resp = std::move(*placed);
    return placed.status();
  });
}

grpc::ServerWriteReactor<v1::Decision>* AdminServiceImpl::WatchDecisions(
    grpc::CallbackServerContext* ctx, const v1::WatchDecisionsRequest* req) {
  if (absl::Status denied = Authorize(ctx, "WatchDecisions"); !denied.ok()) {
    metrics_->AdminRequest("WatchDecisions", CodeName(denied.code()));
    return new RefusedWatch<>(ToGrpcStatus(denied));
  }
  if (absl::Status bad = CheckLength("host_id", req->host_id(), kMaxRequestHostIdChars);
      !bad.ok()) {
    metrics_->AdminRequest("WatchDecisions", CodeName(bad.code()));
    return new RefusedWatch(ToGrpcStatus(bad));
  }
  if (absl::Status admitted = watch_limiter_.Acquire(ctx->peer()); !admitted.ok()) {
    metrics_->AdminRequest("WatchDecisions", CodeName(admitted.code()));
    return new RefusedWatch<>(ToGrpcStatus(admitted));
  }
  metrics_->AdminRequest("WatchDecisions", "OK");
  return new DecisionWriter(fleet_, metrics_, req->host_id(), &watch_limiter_, ctx->peer(),
                            watch_buffer_bytes_, &watch_budget_);
}

grpc::ServerWriteReactor<v1::VmEvent>* AdminServiceImpl::WatchVms(grpc::CallbackServerContext* ctx,
                                                                  const v1::WatchVmsRequest* req) {
  absl::Status refused = Authorize(ctx, "WatchVms");
  if (refused.ok() && watch_hub_ == nullptr) {
    refused = absl::UnimplementedError("watches are not enabled");
  }
  if (refused.ok()) refused = CheckLength("host_id", req->host_id(), kMaxRequestHostIdChars);
  // An unknown host is refused by the snapshot (NOT_FOUND), off this thread.
  if (refused.ok()) refused = watch_limiter_.Acquire(ctx->peer());
  metrics_->AdminRequest("WatchVms", CodeName(refused.code()));
  if (!refused.ok()) return new RefusedWatch<v1::VmEvent>(ToGrpcStatus(refused));
  return watch_hub_->WatchVms(req->host_id(),
                              [this, peer = ctx->peer()] { watch_limiter_.Release(peer); });
}

grpc::ServerWriteReactor<v1::HostEvent>* AdminServiceImpl::WatchHosts(
    grpc::CallbackServerContext* ctx, const v1::WatchHostsRequest*) {
  absl::Status refused = Authorize(ctx, "WatchHosts");
  if (refused.ok() && watch_hub_ == nullptr) {
    refused = absl::UnimplementedError("watches are not enabled");
  }
  if (refused.ok()) refused = watch_limiter_.Acquire(ctx->peer());
  metrics_->AdminRequest("WatchHosts", CodeName(refused.code()));
  if (!refused.ok()) return new RefusedWatch<v1::HostEvent>(ToGrpcStatus(refused));
  return watch_hub_->WatchHosts([this, peer = ctx->peer()] { watch_limiter_.Release(peer); });
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

#include "broker/agent_service.h"

#include <deque>
#include <memory>

#include <spdlog/spdlog.h>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "common/status.h"

namespace membroker::broker {
namespace {

class AgentStream final : public grpc::ServerBidiReactor<v1::AgentMessage, v1::BrokerMessage> {
 public:
  AgentStream(Fleet* fleet, BrokerMetrics* metrics) : fleet_(fleet), metrics_(metrics) {
    StartRead(&in_);
  }

  void OnReadDone(bool ok) override {
    if (!ok) {
      // The agent closed its side or the call was cancelled.
      FinishOnce(grpc::Status::OK);
      return;
    }
    absl::Status status = Handle(in_);
    if (!status.ok()) {
      spdlog::warn("agent stream{}{}: {}", host_id_.empty() ? "" : " of host ", host_id_,
                   status.ToString());
      FinishOnce(ToGrpcStatus(status));
      return;
    }
    StartRead(&in_);
  }

  void OnWriteDone(bool ok) override {
    absl::MutexLock lock(&mu_);
    writing_ = false;
    if (!ok) {
      queue_.clear();
      return;  // the read side sees the broken stream and finishes
    }
    WriteNextLocked();
  }

  void OnCancel() override { FinishOnce(grpc::Status::CANCELLED); }

  void OnDone() override {
    if (!host_id_.empty()) fleet_->Disconnect(host_id_, conn_);
    delete this;
  }

 private:
  absl::Status Handle(const v1::AgentMessage& msg) {
    if (host_id_.empty()) {
      if (!msg.has_hello()) {
        metrics_->ReportRejected("no_hello");
        return absl::FailedPreconditionError("the first message on the stream must be a hello");
      }
      v1::Welcome welcome;
      ASSIGN_OR_RETURN(conn_, fleet_->Connect(
                                  msg.hello(),
                                  [this](const v1::BrokerMessage& m) { Enqueue(m); }, &welcome));
      host_id_ = msg.hello().host_id();
      v1::BrokerMessage out;
      *out.mutable_welcome() = welcome;
      // The Welcome goes first: put it ahead of anything queued meanwhile.
      absl::MutexLock lock(&mu_);
      queue_.push_front(std::move(out));
      WriteNextLocked();
      return absl::OkStatus();
    }
    switch (msg.msg_case()) {
      case v1::AgentMessage::kHello:
        metrics_->ReportRejected("duplicate_hello");
        return absl::FailedPreconditionError("hello may only be sent once per stream");
      case v1::AgentMessage::kReport:
        return fleet_->Report(host_id_, conn_, msg.report());
      case v1::AgentMessage::kAck:
        return fleet_->Ack(host_id_, conn_, msg.ack());
      default:
        metrics_->ReportRejected("empty");
        return absl::InvalidArgumentError("agent message: no hello, report or ack set");
    }
  }

  // Called by the Fleet with the host's lock held: only queues.
  void Enqueue(const v1::BrokerMessage& msg) {
    absl::MutexLock lock(&mu_);
    if (finished_ || finish_pending_) return;
    // A queued (unsent) TargetSet is superseded by a newer full snapshot.
    if (msg.has_targets() && !queue_.empty() && queue_.back().has_targets()) {
      queue_.back() = msg;
    } else {
      queue_.push_back(msg);
    }
    WriteNextLocked();
  }

  void WriteNextLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (writing_ || queue_.empty() || finished_) {
      if (!writing_ && finish_pending_ && !finished_) {
        finished_ = true;
        Finish(finish_status_);
      }
      return;
    }
    current_ = std::move(queue_.front());
    queue_.pop_front();
    writing_ = true;
    StartWrite(&current_);
  }

  // Finishes once, after any outstanding write completes.
  void FinishOnce(const grpc::Status& status) {
    absl::MutexLock lock(&mu_);
    if (finished_ || finish_pending_) return;
    finish_pending_ = true;
    finish_status_ = status;
    queue_.clear();
    if (!writing_) {
      finished_ = true;
      Finish(finish_status_);
    }
  }

  Fleet* const fleet_;
  BrokerMetrics* const metrics_;
  v1::AgentMessage in_;  // only touched by the read chain
  std::string host_id_;  // set once, by the read chain
  uint64_t conn_ = 0;

  absl::Mutex mu_;
  std::deque<v1::BrokerMessage> queue_ ABSL_GUARDED_BY(mu_);
  v1::BrokerMessage current_ ABSL_GUARDED_BY(mu_);
  bool writing_ ABSL_GUARDED_BY(mu_) = false;
  bool finish_pending_ ABSL_GUARDED_BY(mu_) = false;
  bool finished_ ABSL_GUARDED_BY(mu_) = false;
  grpc::Status finish_status_ ABSL_GUARDED_BY(mu_);
};

}  // namespace

grpc::ServerBidiReactor<v1::AgentMessage, v1::BrokerMessage>* AgentServiceImpl::Connect(
    grpc::CallbackServerContext*) {
  return new AgentStream(fleet_, metrics_);
}

}  // namespace membroker::broker

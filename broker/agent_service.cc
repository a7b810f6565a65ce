#include "broker/agent_service.h"

#include <google/protobuf/arena.h>
#include <spdlog/spdlog.h>

#include <memory>

#include "broker/stream_writer.h"
#include "common/status.h"

namespace membroker::broker {
namespace {

// Unsent messages kept per agent stream. TargetSets supersede each other,
// so the queue holds at most a Welcome and one TargetSet in practice.
constexpr size_t kMaxQueuedPerAgent = 16;

class AgentStream final : public grpc::ServerBidiReactor<v1::AgentMessage, v1::BrokerMessage> {
 public:
  AgentStream(Fleet* fleet, BrokerMetrics* metrics)
      : fleet_(fleet),
        metrics_(metrics),
        writer_({[this](const v1::BrokerMessage* m) { StartWrite(m); },
                 [this](const grpc::Status& s) { Finish(s); },
                 // A queued (unsent) TargetSet is superseded by a newer full
                 // snapshot.
                 [](const v1::BrokerMessage& last, const v1::BrokerMessage& incoming) {
                   return last.has_targets() && incoming.has_targets();
                 }},
                kMaxQueuedPerAgent) {
    in_ = google::protobuf::Arena::CreateMessage<v1::AgentMessage>(&arena_);
    StartRead(in_);
  }

  void OnReadDone(bool ok) override {
    if (!ok) {
      // The agent closed its side or the call was cancelled.
      writer_.FinishOnce(grpc::Status::OK);
      return;
    }
    absl::Status status = Handle(*in_);
    // The next message is parsed into a fresh arena: a report's hundreds of
    // small objects cost a few block allocations instead of one malloc and
    // free each (a oneof submessage is freed on every parse otherwise).
    arena_.Reset();
    in_ = google::protobuf::Arena::CreateMessage<v1::AgentMessage>(&arena_);
    if (!status.ok()) {
      spdlog::warn("agent stream{}{}: {}", host_id_.empty() ? "" : " of host ", host_id_,
                   status.ToString());
      writer_.FinishOnce(ToGrpcStatus(status));
      return;
    }
    StartRead(in_);
  }

  // A failed write leaves the read side to see the broken stream and finish.
  void OnWriteDone(bool ok) override { writer_.OnWriteDone(ok); }

  void OnCancel() override { writer_.FinishOnce(grpc::Status::CANCELLED); }

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
      ASSIGN_OR_RETURN(
          conn_, fleet_->Connect(
                     msg.hello(), [this](v1::BrokerMessage m) { writer_.Enqueue(std::move(m)); },
                     &welcome));
      host_id_ = msg.hello().host_id();
      v1::BrokerMessage out;
      *out.mutable_welcome() = welcome;
      // The Welcome goes first: put it ahead of anything queued meanwhile.
      writer_.EnqueueFront(std::move(out));
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

  Fleet* const fleet_;
  BrokerMetrics* const metrics_;
  QueuedStreamWriter<v1::BrokerMessage> writer_;
  google::protobuf::Arena arena_;   // holds in_; only touched by the read chain
  v1::AgentMessage* in_ = nullptr;  // only touched by the read chain
  std::string host_id_;             // set once, by the read chain
  uint64_t conn_ = 0;
};

}  // namespace

grpc::ServerBidiReactor<v1::AgentMessage, v1::BrokerMessage>* AgentServiceImpl::Connect(
    grpc::CallbackServerContext*) {
  return new AgentStream(fleet_, metrics_);
}

}  // namespace membroker::broker

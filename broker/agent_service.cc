#include "broker/agent_service.h"

#include <google/protobuf/arena.h>
#include <google/protobuf/stubs/logging.h>
#include <grpcpp/alarm.h>
#include <grpcpp/support/proto_buffer_reader.h>
#include <grpcpp/support/proto_buffer_writer.h>
#include <spdlog/spdlog.h>

#include <chrono>
#include <memory>
#include <mutex>
#include <vector>

#include "absl/strings/str_cat.h"
#include "broker/peer_identity.h"
#include "broker/stream_writer.h"
#include "common/status.h"

namespace membroker::broker {
namespace {

// protobuf logs a line of its own for every string field that is not
// UTF-8; a client sending such messages in a loop would flood the log.
// Its lines go through spdlog instead, a few per 10 s. (The handler is
// process-wide, as protobuf's logging is; so is its limiter, on the real
// clock.)
void ProtobufLogToSpdlog(google::protobuf::LogLevel level, const char* file, int line,
                         const std::string& message) {
  static LogLimiter* const limiter = new LogLimiter(RealClock::Get(), 5, absl::Seconds(10));
  uint64_t suppressed = 0;
  if (level < google::protobuf::LOGLEVEL_FATAL && !limiter->Allow("protobuf", &suppressed)) return;
  spdlog::warn("protobuf {}:{}: {}{}", file, line, Truncate(message, 300),
               suppressed ? absl::StrCat(" (", suppressed, " similar lines suppressed)") : "");
}

// Unsent messages kept per agent stream. TargetSets supersede each other,
// so the queue holds at most a Welcome and one TargetSet in practice.
constexpr size_t kMaxQueuedPerAgent = 16;

// Drops every unknown field of `m` and its submessages, like
// Message::DiscardUnknownFields, but touches only the messages that have
// some: DiscardUnknownFields gives every message an empty unknown-field
// set, which each copy of the message then carries (the Fleet keeps a copy
// of every VM's sample: one heap allocation per message, per VM).
void DropUnknownFields(google::protobuf::Message* m) {
  using google::protobuf::FieldDescriptor;
  const google::protobuf::Reflection* r = m->GetReflection();
  if (!r->GetUnknownFields(*m).empty()) r->MutableUnknownFields(m)->Clear();
  std::vector<const FieldDescriptor*> fields;
  r->ListFields(*m, &fields);
  for (const FieldDescriptor* f : fields) {
    if (f->cpp_type() != FieldDescriptor::CPPTYPE_MESSAGE) continue;
    if (f->is_map() &&
        f->message_type()->map_value()->cpp_type() != FieldDescriptor::CPPTYPE_MESSAGE) {
      continue;  // scalar keys and values: nothing unknown inside
    }
    if (f->is_repeated()) {
      const int n = r->FieldSize(*m, f);
      for (int i = 0; i < n; ++i) DropUnknownFields(r->MutableRepeatedMessage(m, f, i));
    } else {
      DropUnknownFields(r->MutableMessage(m, f));
    }
  }
}

class AgentStream final : public grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer> {
 public:
  // `admitted` is the stream limiter's verdict: a refused stream finishes
  // at once with it. `identity` is the caller's certificate (TLS).
  AgentStream(Fleet* fleet, BrokerMetrics* metrics, const Authorizer* authorizer,
              PeerIdentity identity, StreamLimiter* limiter, LogLimiter* log, std::string peer,
              absl::Status admitted, absl::Duration hello_timeout)
      : fleet_(fleet),
        metrics_(metrics),
        authorizer_(authorizer),
        identity_(std::move(identity)),
        limiter_(limiter),
        log_(log),
        peer_(std::move(peer)),
        admitted_(admitted.ok()),
        writer_({[this](const v1::BrokerMessage* m) { StartWrite(Serialize(*m)); },
                 [this](const grpc::Status& s) { Finish(s); },
                 // A queued (unsent) TargetSet is superseded by a newer full
                 // snapshot.
                 [](const v1::BrokerMessage& last, const v1::BrokerMessage& incoming) {
                   return last.has_targets() && incoming.has_targets();
                 },
                 nullptr, nullptr},
                kMaxQueuedPerAgent) {
    if (!admitted_) {
      alarm_pending_ = false;
      writer_.FinishOnce(ToGrpcStatus(admitted));
      return;
    }
    hello_alarm_.Set(std::chrono::system_clock::now() + absl::ToChronoNanoseconds(hello_timeout),
                     [this, hello_timeout](bool fired) { OnHelloDeadline(fired, hello_timeout); });
    StartRead(&in_buffer_);
  }

  void OnReadDone(bool ok) override {
    if (!ok) {
      // The agent closed its side, the call was cancelled, or gRPC refused
      // the message (larger than the receive limit: RESOURCE_EXHAUSTED
      // already sent).
      writer_.FinishOnce(grpc::Status::OK);
      return;
    }
    absl::Status status = Parse();
    if (status.ok()) status = Handle(*in_);
    // Nothing keeps the parsed message once handled (the Fleet copies what
    // it keeps): give the arena's blocks back now rather than holding the
    // last report of every idle stream until its next one.
    ReleaseParsed();
    if (!status.ok()) {
      uint64_t suppressed = 0;
      if (log_->Allow("agent_stream", &suppressed)) {
        spdlog::warn(
            "agent stream from {} ({}){}{}: {}{}", Truncate(peer_), Truncate(identity_.Display()),
            host_id_.empty() ? "" : " of host ", host_id_,
            Truncate(absl::StrCat(absl::StatusCodeToString(status.code()), ": ", status.message()),
                     200),
            suppressed ? absl::StrCat(" (", suppressed, " similar lines suppressed)") : "");
      }
      writer_.FinishOnce(ToGrpcStatus(status));
      return;
    }
    StartRead(&in_buffer_);
  }

  // A failed write leaves the read side to see the broken stream and finish.
  void OnWriteDone(bool ok) override {
    // The written bytes are gRPC's no longer; do not hold them until the
    // next write.
    out_buffer_.Clear();
    writer_.OnWriteDone(ok);
  }

  void OnCancel() override { writer_.FinishOnce(grpc::Status::CANCELLED); }

  void OnDone() override {
    if (!host_id_.empty()) fleet_->Disconnect(host_id_, conn_);
    if (admitted_) limiter_->Release(peer_);
    bool pending;
    {
      absl::MutexLock lock(&mu_);
      done_ = true;
      pending = alarm_pending_;
    }
    // The alarm's callback deletes the stream when it is still to run.
    if (pending) {
      hello_alarm_.Cancel();
    } else {
      delete this;
    }
  }

 private:
  // Parses the raw message into in_, dropping unknown fields.
  absl::Status Parse() {
    arena_.Reset();  // the previous message is handled and gone
    in_ = google::protobuf::Arena::CreateMessage<v1::AgentMessage>(&arena_);
    grpc::Status s = grpc::SerializationTraits<v1::AgentMessage>::Deserialize(&in_buffer_, in_);
    if (!s.ok()) {
      metrics_->ReportRejected("malformed");
      return absl::InvalidArgumentError(
          "agent message: not a valid membroker.v1.AgentMessage (malformed protobuf, or a "
          "string field that is not UTF-8)");
    }
    DropUnknownFields(in_);
    return absl::OkStatus();
  }

  void ReleaseParsed() {
    in_ = nullptr;
    arena_.Reset();
  }

  const grpc::ByteBuffer* Serialize(const v1::BrokerMessage& m) {
    bool own = false;
    out_buffer_.Clear();
    grpc::SerializationTraits<v1::BrokerMessage>::Serialize(m, &out_buffer_, &own);
    return &out_buffer_;
  }

  void OnHelloDeadline(bool fired, absl::Duration timeout) {
    {
      absl::MutexLock lock(&mu_);
      alarm_pending_ = false;
      if (!done_) {
        if (fired && !hello_seen_) {
          metrics_->ReportRejected("hello_timeout");
          // Finishing under mu_ keeps OnDone (which takes mu_) from
          // deleting the stream meanwhile.
          writer_.FinishOnce(ToGrpcStatus(absl::DeadlineExceededError(absl::StrCat(
              "no hello within ", absl::FormatDuration(timeout), " of opening the stream"))));
        }
        return;
      }
    }
    delete this;  // OnDone ran first and left the deletion to us
  }

  absl::Status Handle(const v1::AgentMessage& msg) {
    if (host_id_.empty()) {
      if (!msg.has_hello()) {
        metrics_->ReportRejected("no_hello");
        return absl::FailedPreconditionError("the first message on the stream must be a hello");
      }
      if (absl::Status allowed = authorizer_->AuthorizeHost(identity_, msg.hello().host_id());
          !allowed.ok()) {
        metrics_->ReportRejected(absl::IsUnauthenticated(allowed) ? "unauthenticated"
                                                                  : "host_not_in_certificate");
        return allowed;
      }
      {
        absl::MutexLock lock(&mu_);
        hello_seen_ = true;
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
  const Authorizer* const authorizer_;
  const PeerIdentity identity_;  // from the TLS handshake
  StreamLimiter* const limiter_;
  LogLimiter* const log_;
  const std::string peer_;  // the peer's address (stream caps, logs)
  const bool admitted_;
  QueuedStreamWriter<v1::BrokerMessage> writer_;
  // The message being handled, parsed into a fresh arena each time: a
  // report's hundreds of small objects cost a few block allocations
  // instead of one malloc and free each.
  google::protobuf::Arena arena_;   // holds in_; only touched by the read chain
  grpc::ByteBuffer in_buffer_;      // only touched by the read chain
  v1::AgentMessage* in_ = nullptr;  // only touched by the read chain
  grpc::ByteBuffer out_buffer_;     // the write in flight (one at a time)
  std::string host_id_;             // set once, by the read chain
  uint64_t conn_ = 0;
  grpc::Alarm hello_alarm_;
  absl::Mutex mu_;
  bool hello_seen_ ABSL_GUARDED_BY(mu_) = false;
  bool done_ ABSL_GUARDED_BY(mu_) = false;
  bool alarm_pending_ ABSL_GUARDED_BY(mu_) = true;
};

}  // namespace

AgentServiceImpl::AgentServiceImpl(Fleet* fleet, BrokerMetrics* metrics,
                                   const Authorizer* authorizer, const Clock* clock,
                                   const ServerLimits& limits)
    : fleet_(fleet),
      metrics_(metrics),
      authorizer_(authorizer),
      hello_timeout_(limits.hello_timeout),
      limiter_("agent", limits.max_agent_streams, limits.max_streams_per_peer, metrics),
      log_limiter_(clock, 10, absl::Seconds(10)) {
  static std::once_flag once;
  std::call_once(once, [] { google::protobuf::SetLogHandler(&ProtobufLogToSpdlog); });
}

grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer>* AgentServiceImpl::Connect(
    grpc::CallbackServerContext* context) {
  std::string peer = context->peer();
  absl::Status admitted = limiter_.Acquire(peer);
  return new AgentStream(fleet_, metrics_, authorizer_, IdentityOf(*context), &limiter_,
                         &log_limiter_, std::move(peer), std::move(admitted), hello_timeout_);
}

}  // namespace membroker::broker

#include "node-agent/broker_link.h"

#include <algorithm>
#include <utility>

#include <spdlog/spdlog.h>

#include "absl/strings/str_cat.h"

namespace membroker::agent {

using membroker::v1::AgentMessage;
using membroker::v1::BrokerMessage;

BrokerLink::BrokerLink(std::shared_ptr<grpc::Channel> channel, membroker::v1::Hello hello,
                       Callbacks callbacks, const Clock* clock, BackoffParams backoff)
    : stub_(membroker::v1::AgentService::NewStub(channel)),
      hello_(std::move(hello)),
      callbacks_(std::move(callbacks)),
      clock_(clock),
      backoff_params_(backoff),
      max_backoff_(backoff.max) {}

BackoffParams ReconnectBackoff(absl::Duration report_interval, absl::Duration max_override) {
  BackoffParams params;
  params.initial = absl::Milliseconds(100);
  params.multiplier = 2.0;
  params.jitter = 0.2;
  params.max = max_override > absl::ZeroDuration() ? max_override
                                                   : std::max(absl::Seconds(1), report_interval);
  return params;
}

void BrokerLink::SetMaxBackoff(absl::Duration max) {
  absl::MutexLock lock(&mu_);
  max_backoff_ = max;
}

BrokerLink::~BrokerLink() { Stop(); }

void BrokerLink::Start() {
  absl::MutexLock lock(&mu_);
  if (started_) return;
  started_ = true;
  thread_ = std::thread([this] { Run(); });
}

void BrokerLink::Stop() {
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
    if (context_ != nullptr) context_->TryCancel();
  }
  if (thread_.joinable()) thread_.join();
}

bool BrokerLink::connected() const {
  absl::MutexLock lock(&mu_);
  return connected_;
}

BrokerLink::Counters BrokerLink::counters() const {
  absl::MutexLock lock(&mu_);
  return counters_;
}

void BrokerLink::SetConnected(bool connected) {
  {
    absl::MutexLock lock(&mu_);
    if (connected_ == connected) return;
    connected_ = connected;
  }
  if (callbacks_.on_connection) callbacks_.on_connection(connected);
}

bool BrokerLink::Write(const AgentMessage& message) {
  absl::MutexLock lock(&write_mu_);
  if (stream_ == nullptr) return false;
  return stream_->Write(message);
}

absl::Status BrokerLink::SendAck(uint64_t stream, const membroker::v1::TargetAck& ack) {
  AgentMessage message;
  *message.mutable_ack() = ack;
  // Checked under write_mu_ so the ack cannot land on a newer stream.
  absl::MutexLock write_lock(&write_mu_);
  bool current = false;
  {
    absl::MutexLock lock(&mu_);
    current = connected_ && stream == stream_id_;
  }
  if (!current || stream_ == nullptr || stream_id_of_writer_ != stream) {
    return absl::FailedPreconditionError(absl::StrCat(
        "ack of generation ", ack.generation(), " not sent: its stream ", stream, " is gone"));
  }
  if (!stream_->Write(message)) return absl::UnavailableError("ack write failed: stream lost");
  return absl::OkStatus();
}

absl::Status BrokerLink::SendReport(const membroker::v1::HostReport& report) {
  if (!connected()) return absl::FailedPreconditionError("not connected to the broker");
  AgentMessage message;
  *message.mutable_report() = report;
  if (!Write(message)) return absl::UnavailableError("report write failed: stream lost");
  absl::MutexLock lock(&mu_);
  ++counters_.reports_sent;
  return absl::OkStatus();
}

void BrokerLink::Run() {
  Backoff backoff(backoff_params_);
  bool first = true;
  while (true) {
    {
      absl::MutexLock lock(&mu_);
      if (stopping_) return;
      if (!first) ++counters_.reconnects;
    }
    first = false;
    const bool healthy = RunStream();
    if (healthy) backoff.Reset();
    {
      absl::MutexLock lock(&mu_);
      backoff.SetMax(max_backoff_);
    }
    const absl::Duration delay = backoff.Next();
    // Once per outage at info level; the retries at debug.
    if (healthy || failed_attempts_ == 0) {
      spdlog::info("broker stream ended; reconnecting in {}", absl::FormatDuration(delay));
    } else {
      spdlog::debug("broker unreachable ({} attempts); next in {}", failed_attempts_ + 1,
                    absl::FormatDuration(delay));
    }
    failed_attempts_ = healthy ? 0 : failed_attempts_ + 1;
    absl::MutexLock lock(&mu_);
    auto stopping = [this]() ABSL_SHARED_LOCKS_REQUIRED(mu_) { return stopping_; };
    clock_->AwaitWithTimeout(&mu_, absl::Condition(&stopping), delay);
    if (stopping_) return;
  }
}

bool BrokerLink::RunStream() {
  grpc::ClientContext context;
  uint64_t stream_id = 0;
  {
    absl::MutexLock lock(&mu_);
    if (stopping_) return false;
    context_ = &context;
    stream_id = ++stream_id_;
  }
  std::unique_ptr<grpc::ClientReaderWriter<AgentMessage, BrokerMessage>> stream =
      stub_->Connect(&context);
  {
    absl::MutexLock lock(&write_mu_);
    stream_ = stream.get();
    stream_id_of_writer_ = stream_id;
  }
  absl::Time welcomed_at = absl::InfiniteFuture();
  AgentMessage hello;
  *hello.mutable_hello() = hello_;
  if (Write(hello)) {
    BrokerMessage message;
    while (stream->Read(&message)) {
      switch (message.msg_case()) {
        case BrokerMessage::kWelcome:
          if (welcomed_at == absl::InfiniteFuture()) welcomed_at = clock_->MonotonicNow();
          spdlog::info("broker welcomed host {} (report interval {}s)", hello_.host_id(),
                       message.welcome().report_interval().seconds());
          if (callbacks_.on_welcome) callbacks_.on_welcome(message.welcome());
          SetConnected(true);
          break;
        case BrokerMessage::kTargets: {
          if (welcomed_at == absl::InfiniteFuture()) {
            spdlog::warn("broker sent targets before Welcome; ignored");
            break;
          }
          if (callbacks_.on_targets) callbacks_.on_targets(message.targets(), stream_id);
          break;
        }
        default:
          spdlog::warn("broker sent an empty or unknown message; ignored");
          break;
      }
    }
  }
  SetConnected(false);
  {
    absl::MutexLock lock(&write_mu_);
    stream_ = nullptr;
  }
  // Ends the writes and collects the status; cancels first so a half-open
  // stream cannot block Finish.
  context.TryCancel();
  grpc::Status status = stream->Finish();
  {
    absl::MutexLock lock(&mu_);
    context_ = nullptr;
  }
  if (!status.ok() && status.error_code() != grpc::StatusCode::CANCELLED &&
      failed_attempts_ == 0) {
    spdlog::warn("broker stream failed: {} ({})", status.error_message(),
                 static_cast<int>(status.error_code()));
  }
  return welcomed_at != absl::InfiniteFuture() &&
         clock_->MonotonicNow() - welcomed_at >= backoff_params_.healthy_after;
}

}  // namespace membroker::agent

#include "node-agent/hypervisor/qmp_client.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <utility>

#include <google/protobuf/util/json_util.h>

#include "absl/strings/str_cat.h"
#include "common/status.h"

namespace membroker::agent {
namespace {

using google::protobuf::Struct;
using google::protobuf::Value;

// Milliseconds left until `deadline`, for poll(2), at least 0.
int PollTimeoutMs(Clock* clock, absl::Time deadline) {
  absl::Duration left = deadline - clock->Now();
  if (left <= absl::ZeroDuration()) return 0;
  int64_t ms = absl::ToInt64Milliseconds(left) + 1;
  return static_cast<int>(std::min<int64_t>(ms, 60 * 1000));
}

// Maps QMP's error class to the status code that tells the caller what to do.
absl::StatusCode CodeForQmpClass(absl::string_view error_class) {
  if (error_class == "DeviceNotFound") return absl::StatusCode::kNotFound;
  if (error_class == "DeviceNotActive") return absl::StatusCode::kFailedPrecondition;
  if (error_class == "CommandNotFound") return absl::StatusCode::kUnimplemented;
  return absl::StatusCode::kInvalidArgument;
}

std::string Truncated(absl::string_view s, size_t n = 200) {
  if (s.size() <= n) return std::string(s);
  return absl::StrCat(s.substr(0, n), "...");
}

}  // namespace

absl::StatusOr<Struct> ParseQmpJson(absl::string_view text) {
  Struct message;
  google::protobuf::util::JsonParseOptions options;
  options.ignore_unknown_fields = true;
  auto status = google::protobuf::util::JsonStringToMessage(
      google::protobuf::StringPiece(text.data(), text.size()), &message, options);
  if (!status.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("QMP message is not a JSON object (",
                                                   status.message().as_string(), "): ",
                                                   Truncated(text)));
  }
  return message;
}

absl::StatusOr<std::string> SerializeQmpJson(const Struct& message) {
  std::string out;
  auto status = google::protobuf::util::MessageToJsonString(message, &out);
  if (!status.ok()) {
    return absl::InternalError(
        absl::StrCat("cannot serialize a QMP command: ", status.message().as_string()));
  }
  return out;
}

QmpClient::QmpClient(Clock* clock, QmpClientOptions options)
    : clock_(clock), options_(options) {}

QmpClient::~QmpClient() { Close(); }

void QmpClient::Close() {
  if (fd_ >= 0) ::close(fd_);
  fd_ = -1;
  buffer_.clear();
}

absl::Status QmpClient::Fail(absl::Status status) {
  Close();
  return status;
}

std::optional<int64_t> QmpClient::PeerPid() const {
  if (fd_ < 0) return std::nullopt;
  struct ucred cred {};
  socklen_t len = sizeof(cred);
  if (::getsockopt(fd_, SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0 || len != sizeof(cred) ||
      cred.pid <= 0) {
    return std::nullopt;
  }
  return static_cast<int64_t>(cred.pid);
}

absl::Status QmpClient::Connect(const std::string& path) {
  Close();
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (path.empty() || path.size() >= sizeof(addr.sun_path)) {
    return absl::InvalidArgumentError(
        absl::StrCat("qmp socket path '", path, "' is empty or longer than ",
                     sizeof(addr.sun_path) - 1, " bytes"));
  }
  memcpy(addr.sun_path, path.data(), path.size());
  int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (fd < 0) {
    return absl::UnavailableError(absl::StrCat("socket(): ", strerror(errno)));
  }
  fd_ = fd;
  if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    // A unix socket connect completes at once or fails (EAGAIN: backlog
    // full, retry later).
    return Fail(absl::UnavailableError(
        absl::StrCat("cannot connect to qmp socket ", path, ": ", strerror(errno))));
  }
  absl::Time deadline = clock_->Now() + options_.io_timeout;
  // Greeting.
  auto greeting = ReadMessage(deadline, /*block=*/true);
  if (!greeting.ok()) return Fail(greeting.status());
  if (!greeting->fields().contains("QMP")) {
    return Fail(absl::DataLossError(
        absl::StrCat("peer at ", path, " did not send a QMP greeting")));
  }
  auto caps = Execute("qmp_capabilities");
  if (!caps.ok()) {
    return Fail(absl::UnavailableError(absl::StrCat("qmp_capabilities on ", path,
                                                    " failed: ", caps.status().message())));
  }
  return absl::OkStatus();
}

bool QmpClient::TakeLine(std::string* line) {
  size_t nl = buffer_.find('\n');
  if (nl == std::string::npos) return false;
  line->assign(buffer_, 0, nl);
  buffer_.erase(0, nl + 1);
  if (!line->empty() && line->back() == '\r') line->pop_back();
  return true;
}

absl::StatusOr<Struct> QmpClient::ReadMessage(absl::Time deadline, bool block) {
  if (fd_ < 0) return absl::UnavailableError("qmp connection is closed");
  std::string line;
  // Each pass reads at least one byte or ends with an error or a timeout,
  // so the pass count is bounded by the message size limit.
  const size_t max_passes = options_.max_message_bytes + 16;
  for (size_t pass = 0; pass < max_passes; ++pass) {
    while (TakeLine(&line)) {
      // Blank lines (keep-alives, stray CRLF) carry nothing.
      if (line.find_first_not_of(" \t") == std::string::npos) continue;
      auto message = ParseQmpJson(line);
      if (!message.ok()) return Fail(absl::DataLossError(message.status().message()));
      return message;
    }
    if (buffer_.size() > options_.max_message_bytes) {
      return Fail(absl::DataLossError(absl::StrCat("qmp message exceeds ",
                                                   options_.max_message_bytes, " bytes")));
    }
    if (block && pass > 0 && clock_->Now() > deadline) {
      return Fail(absl::UnavailableError(absl::StrCat(
          "qmp peer sent no complete message within ", absl::FormatDuration(options_.io_timeout))));
    }
    pollfd p{fd_, POLLIN, 0};
    int timeout_ms = block ? PollTimeoutMs(clock_, deadline) : 0;
    int n = ::poll(&p, 1, timeout_ms);
    if (n < 0) {
      if (errno == EINTR) continue;
      return Fail(absl::UnavailableError(absl::StrCat("poll(): ", strerror(errno))));
    }
    if (n == 0) {
      if (!block) return absl::NotFoundError("no qmp message waiting");
      return Fail(absl::UnavailableError(absl::StrCat(
          "qmp peer sent no complete message within ", absl::FormatDuration(options_.io_timeout))));
    }
    char chunk[64 * 1024];
    size_t room = options_.max_message_bytes + 2 - std::min(buffer_.size(),
                                                            options_.max_message_bytes + 1);
    ssize_t got = ::recv(fd_, chunk, std::min(sizeof(chunk), room), 0);
    if (got < 0) {
      if (errno == EINTR || errno == EAGAIN || errno == EWOULDBLOCK) continue;
      return Fail(absl::UnavailableError(absl::StrCat("qmp read: ", strerror(errno))));
    }
    if (got == 0) return Fail(absl::UnavailableError("qmp peer closed the connection"));
    buffer_.append(chunk, static_cast<size_t>(got));
  }
  return Fail(absl::DataLossError("qmp message framing error"));
}

absl::Status QmpClient::WriteAll(absl::string_view data, absl::Time deadline) {
  size_t sent = 0;
  // Each pass sends at least one byte or waits for room until the deadline.
  for (size_t pass = 0; sent < data.size() && pass < data.size() + 16; ++pass) {
    ssize_t n = ::send(fd_, data.data() + sent, data.size() - sent, MSG_NOSIGNAL);
    if (n > 0) {
      sent += static_cast<size_t>(n);
      continue;
    }
    if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
      return Fail(absl::UnavailableError(absl::StrCat("qmp write: ", strerror(errno))));
    }
    pollfd p{fd_, POLLOUT, 0};
    int r = ::poll(&p, 1, PollTimeoutMs(clock_, deadline));
    if (r == 0) return Fail(absl::UnavailableError("qmp write timed out"));
  }
  if (sent < data.size()) return Fail(absl::UnavailableError("qmp write did not complete"));
  return absl::OkStatus();
}

absl::StatusOr<Value> QmpClient::Execute(absl::string_view command, const Struct* arguments) {
  if (fd_ < 0) return absl::UnavailableError("qmp connection is closed");
  const std::string id = absl::StrCat("mb-", next_id_++);
  Struct request;
  (*request.mutable_fields())["execute"].set_string_value(std::string(command));
  (*request.mutable_fields())["id"].set_string_value(id);
  if (arguments != nullptr) {
    *(*request.mutable_fields())["arguments"].mutable_struct_value() = *arguments;
  }
  ASSIGN_OR_RETURN(std::string text, SerializeQmpJson(request));
  text.push_back('\n');
  absl::Time deadline = clock_->Now() + options_.io_timeout;
  RETURN_IF_ERROR(WriteAll(text, deadline));

  for (int skipped = 0; skipped <= options_.max_events_per_reply; ++skipped) {
    ASSIGN_OR_RETURN(Struct message, ReadMessage(deadline, /*block=*/true));
    const auto& fields = message.fields();
    if (fields.contains("event")) {
      if (event_handler_) event_handler_(message);
      continue;
    }
    auto id_it = fields.find("id");
    if (id_it != fields.end() &&
        (id_it->second.kind_case() != Value::kStringValue || id_it->second.string_value() != id)) {
      // A late reply to an earlier command that timed out: not ours.
      continue;
    }
    auto ret = fields.find("return");
    if (ret != fields.end()) return ret->second;
    auto err = fields.find("error");
    if (err != fields.end()) {
      std::string error_class = "unknown";
      std::string desc = "(no description)";
      if (err->second.kind_case() == Value::kStructValue) {
        const auto& ef = err->second.struct_value().fields();
        auto c = ef.find("class");
        if (c != ef.end() && c->second.kind_case() == Value::kStringValue) {
          error_class = c->second.string_value();
        }
        auto d = ef.find("desc");
        if (d != ef.end() && d->second.kind_case() == Value::kStringValue) {
          desc = Truncated(d->second.string_value(), 500);
        }
      }
      return absl::Status(CodeForQmpClass(error_class),
                          absl::StrCat("qmp ", command, " failed: ", error_class, ": ", desc));
    }
    return Fail(absl::DataLossError(
        absl::StrCat("qmp reply to ", command, " has neither return nor error")));
  }
  return Fail(absl::DataLossError(absl::StrCat("too many qmp events while waiting for ", command)));
}

absl::Status QmpClient::PollEvents() {
  if (fd_ < 0) return absl::UnavailableError("qmp connection is closed");
  for (int i = 0; i < options_.max_events_per_reply; ++i) {
    auto message = ReadMessage(clock_->Now(), /*block=*/false);
    if (absl::IsNotFound(message.status())) return absl::OkStatus();
    if (!message.ok()) return message.status();
    if (message->fields().contains("event") && event_handler_) event_handler_(*message);
  }
  return absl::OkStatus();
}

}  // namespace membroker::agent

#pragma once
// A small client of QEMU's QMP protocol over a unix socket.
//
// Protocol, as this client speaks it:
//   1. on connect QEMU sends a greeting {"QMP": {...}};
//   2. the client sends {"execute": "qmp_capabilities"} and waits for
//      {"return": {}};
//   3. each command carries an "id"; the reply echoes it with "return" or
//      "error". Events ({"event": ...}) may arrive at any time, also between
//      a command and its reply: they are handed to the event handler and
//      skipped.
//
// Every message is one line of JSON. The peer is untrusted: a line longer
// than the size limit, a malformed line, a reply of the wrong shape or a
// peer that is too slow is an error; after an I/O, framing or timeout error
// the connection is closed and every later call returns UNAVAILABLE until
// Connect() is called again.

#include <cstddef>
#include <functional>
#include <memory>
#include <optional>
#include <string>

#include <google/protobuf/struct.pb.h>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "common/clock.h"

namespace membroker::agent {

// Limits of one QMP connection.
struct QmpClientOptions {
  // Longest accepted message (one JSON line), in bytes.
  size_t max_message_bytes = 1 << 20;
  // Longest wait for the greeting or for one reply.
  absl::Duration io_timeout = absl::Seconds(5);
  // Most events skipped while waiting for one reply.
  int max_events_per_reply = 10000;
};

// One QMP connection. Thread-compatible: one caller at a time.
class QmpClient {
 public:
  // Called with each event message ({"event": NAME, "data": {...}, ...}).
  using EventHandler = std::function<void(const google::protobuf::Struct& event)>;

  // `clock` measures the I/O deadlines and must outlive the client.
  QmpClient(Clock* clock, QmpClientOptions options = {});
  ~QmpClient();
  QmpClient(const QmpClient&) = delete;
  QmpClient& operator=(const QmpClient&) = delete;

  // Connects to the unix socket at `path`, reads the greeting and
  // negotiates capabilities. UNAVAILABLE when the socket cannot be reached
  // or the peer fails or times out; INVALID_ARGUMENT for a path that does
  // not fit a unix socket address; DATA_LOSS for a greeting that is not
  // QMP's. Closes any previous connection first.
  absl::Status Connect(const std::string& path);

  // True while the connection is usable.
  bool connected() const { return fd_ >= 0; }

  // Closes the connection (no-op when closed).
  void Close();

  // The pid of the process at the other end of the connection
  // (getsockopt SO_PEERCRED: QEMU itself). Empty when not connected or the
  // kernel does not say.
  std::optional<int64_t> PeerPid() const;

  // Sets the handler for events read from now on (may be empty).
  void set_event_handler(EventHandler handler) { event_handler_ = std::move(handler); }

  // Runs `command` with `arguments` (may be null for none) and returns the
  // "return" value. A QMP error reply becomes a status whose message holds
  // QEMU's class and description (NOT_FOUND for DeviceNotFound,
  // FAILED_PRECONDITION for DeviceNotActive, INVALID_ARGUMENT for
  // GenericError and others); the connection stays open. UNAVAILABLE on a
  // lost or timed-out connection, DATA_LOSS on a malformed or oversized
  // reply (both close the connection).
  absl::StatusOr<google::protobuf::Value> Execute(
      absl::string_view command, const google::protobuf::Struct* arguments = nullptr);

  // Reads the events already waiting on the socket without blocking and
  // hands them to the event handler. UNAVAILABLE or DATA_LOSS as Execute.
  absl::Status PollEvents();

 private:
  // Reads one message before `deadline` (blocking when `block`). Returns
  // NOT_FOUND when !block and nothing complete is waiting.
  absl::StatusOr<google::protobuf::Struct> ReadMessage(absl::Time deadline, bool block);
  // Extracts one complete line from the buffer, if any.
  bool TakeLine(std::string* line);
  absl::Status WriteAll(absl::string_view data, absl::Time deadline);
  // Closes the connection and returns `status`.
  absl::Status Fail(absl::Status status);

  Clock* clock_;
  QmpClientOptions options_;
  int fd_ = -1;
  std::string buffer_;
  uint64_t next_id_ = 1;
  EventHandler event_handler_;
};

// Parses one JSON object. INVALID_ARGUMENT for anything else.
absl::StatusOr<google::protobuf::Struct> ParseQmpJson(absl::string_view text);

// Serializes a Struct as one line of JSON (no newline).
absl::StatusOr<std::string> SerializeQmpJson(const google::protobuf::Struct& message);

}  // namespace membroker::agent

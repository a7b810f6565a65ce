#pragma once
// The one queued writer for the broker's server streams (the agent stream
// and WatchDecisions): gRPC's callback API allows one outstanding write per
// stream, so messages wait in a bounded queue and the next write starts
// when the previous one is done. Finish is sent once, after the write in
// flight completes. Producers only enqueue: they never block on the
// network, so they may call it with their own locks held.

#include <cstddef>
#include <deque>
#include <functional>
#include <utility>

#include <grpcpp/support/status.h>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"

namespace membroker::broker {

// Thread-safe. `Msg` is the stream's outgoing message type.
template <typename Msg>
class QueuedStreamWriter {
 public:
  struct Hooks {
    // Starts one write of `msg` (ServerBidiReactor / ServerWriteReactor
    // StartWrite). `msg` stays valid until OnWriteDone.
    std::function<void(const Msg* msg)> start_write;
    // Ends the call (the reactor's Finish).
    std::function<void(const grpc::Status& status)> finish;
    // Whether `incoming` replaces `last`, the newest unsent message (a full
    // snapshot superseding an older one). May be empty: never.
    std::function<bool(const Msg& last, const Msg& incoming)> supersedes;
  };

  // At most `max_queued` unsent messages are kept; beyond that the oldest
  // unsent one is dropped (counted in dropped()).
  QueuedStreamWriter(Hooks hooks, size_t max_queued)
      : hooks_(std::move(hooks)), max_queued_(max_queued) {}

  // Queues `msg` at the back (or replaces the newest unsent message when it
  // supersedes it) and starts a write if none is in flight. Returns false
  // when the stream is finishing (the message is dropped).
  bool Enqueue(Msg msg) {
    absl::MutexLock lock(&mu_);
    if (finishing_) return false;
    if (hooks_.supersedes && !queue_.empty() && hooks_.supersedes(queue_.back(), msg)) {
      queue_.back() = std::move(msg);
    } else {
      if (queue_.size() >= max_queued_) {
        queue_.pop_front();
        ++dropped_;
      }
      queue_.push_back(std::move(msg));
    }
    NextLocked();
    return true;
  }

  // Queues `msg` ahead of everything unsent (a stream's first message).
  bool EnqueueFront(Msg msg) {
    absl::MutexLock lock(&mu_);
    if (finishing_) return false;
    queue_.push_front(std::move(msg));
    NextLocked();
    return true;
  }

  // The reactor's OnWriteDone. A failed write drops what is queued; the
  // caller decides whether to finish.
  void OnWriteDone(bool ok) {
    absl::MutexLock lock(&mu_);
    writing_ = false;
    if (!ok) queue_.clear();
    NextLocked();
  }

  // Finishes the call once with `status`: at once when no write is in
  // flight, else after it completes. Unsent messages are dropped.
  void FinishOnce(const grpc::Status& status) {
    absl::MutexLock lock(&mu_);
    if (finishing_) return;
    finishing_ = true;
    status_ = status;
    queue_.clear();
    NextLocked();
  }

  // Messages dropped because the queue was full.
  size_t dropped() const {
    absl::MutexLock lock(&mu_);
    return dropped_;
  }

 private:
  void NextLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (writing_ || finished_) return;
    if (finishing_) {
      finished_ = true;
      hooks_.finish(status_);
      return;
    }
    if (queue_.empty()) return;
    current_ = std::move(queue_.front());
    queue_.pop_front();
    writing_ = true;
    hooks_.start_write(&current_);
  }

  const Hooks hooks_;
  const size_t max_queued_;
  mutable absl::Mutex mu_;
  std::deque<Msg> queue_ ABSL_GUARDED_BY(mu_);
  Msg current_ ABSL_GUARDED_BY(mu_);
  bool writing_ ABSL_GUARDED_BY(mu_) = false;
  bool finishing_ ABSL_GUARDED_BY(mu_) = false;
  bool finished_ ABSL_GUARDED_BY(mu_) = false;
  grpc::Status status_ ABSL_GUARDED_BY(mu_);
  size_t dropped_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace membroker::broker

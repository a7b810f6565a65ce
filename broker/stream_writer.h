#pragma once
// The one queued writer for the broker's server streams (the agent stream
// and WatchDecisions): gRPC's callback API allows one outstanding write per
// stream, so messages wait in a bounded queue and the next write starts
// when the previous one is done. Finish is sent once, after the write in
// flight completes. Producers only enqueue: they never block on the
// network, so they may call it with their own locks held.
//
// The queue may also be bounded in bytes (Hooks::byte_size), per stream and
// in a SharedByteBudget across streams: a stream whose unsent messages
// would go over either budget has fallen behind and is finished with the
// status Hooks::overflow gives (its unsent messages dropped), rather than
// holding memory for a reader that does not read.

#include <grpcpp/support/status.h>

#include <atomic>
#include <cstddef>
#include <deque>
#include <functional>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"

namespace membroker::broker {

// Bytes of unsent messages held across several streams, up to a maximum.
// Thread-safe (lock-free).
class SharedByteBudget {
 public:
  explicit SharedByteBudget(size_t max_bytes) : max_(max_bytes) {}

  // Takes `bytes` from the budget; false (nothing taken) when that would
  // go over the maximum.
  bool TryCharge(size_t bytes) {
    size_t used = used_.load(std::memory_order_relaxed);
    do {
      if (bytes > max_ || used > max_ - bytes) return false;
    } while (!used_.compare_exchange_weak(used, used + bytes, std::memory_order_relaxed));
    return true;
  }
  // Gives back bytes taken by TryCharge.
  void Release(size_t bytes) { used_.fetch_sub(bytes, std::memory_order_relaxed); }
  // Bytes taken now.
  size_t used() const { return used_.load(std::memory_order_relaxed); }
  // The maximum.
  size_t max() const { return max_; }

 private:
  const size_t max_;
  std::atomic<size_t> used_{0};
};

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
    // The bytes a message holds while queued. Empty: bytes are not
    // counted (only the count bound applies).
    std::function<size_t(const Msg& msg)> byte_size;
    // The status a stream is finished with when its unsent bytes would go
    // over `max_queued_bytes` (`shared` false) or the shared budget
    // (`shared` true); `queued_bytes` is what it held. Called with the
    // writer's lock held: it must not call back into the writer. Needed
    // when byte_size is set.
    std::function<grpc::Status(size_t queued_bytes, bool shared)> overflow;
  };

  // At most `max_queued` unsent messages are kept; beyond that the oldest
  // unsent one is dropped (counted in dropped()). With Hooks::byte_size
  // set, at most `max_queued_bytes` of unsent messages (0: no per-stream
  // bound) and what `shared` (may be null; not owned, outlives the writer)
  // allows are kept; a message that does not fit finishes the stream
  // (Hooks::overflow).
  QueuedStreamWriter(Hooks hooks, size_t max_queued, size_t max_queued_bytes = 0,
                     SharedByteBudget* shared = nullptr)
      : hooks_(std::move(hooks)),
        max_queued_(max_queued),
        max_queued_bytes_(max_queued_bytes),
        shared_(shared) {}

  ~QueuedStreamWriter() {
    absl::MutexLock lock(&mu_);
    ReleaseAllLocked();
  }

  // Queues `msg` at the back (or replaces the newest unsent message when it
  // supersedes it) and starts a write if none is in flight. Returns false
  // when the stream is finishing (the message is dropped).
  bool Enqueue(Msg msg) {
    absl::MutexLock lock(&mu_);
    if (finishing_) return false;
    const size_t bytes = hooks_.byte_size ? hooks_.byte_size(msg) : 0;
    if (hooks_.supersedes && !queue_.empty() && hooks_.supersedes(queue_.back(), msg)) {
      if (!ChargeLocked(bytes)) return false;
      UnchargeLocked(sizes_.back());
      queue_.back() = std::move(msg);
      sizes_.back() = bytes;
    } else {
      if (queue_.size() >= max_queued_) {
        queue_.pop_front();
        UnchargeLocked(sizes_.front());
        sizes_.pop_front();
        ++dropped_;
      }
      if (!ChargeLocked(bytes)) return false;
      queue_.push_back(std::move(msg));
      sizes_.push_back(bytes);
    }
    NextLocked();
    return true;
  }

  // Queues `msg` ahead of everything unsent (a stream's first message).
  bool EnqueueFront(Msg msg) {
    absl::MutexLock lock(&mu_);
    if (finishing_) return false;
    const size_t bytes = hooks_.byte_size ? hooks_.byte_size(msg) : 0;
    if (!ChargeLocked(bytes)) return false;
    queue_.push_front(std::move(msg));
    sizes_.push_front(bytes);
    NextLocked();
    return true;
  }

  // The reactor's OnWriteDone. A failed write drops what is queued; the
  // caller decides whether to finish.
  void OnWriteDone(bool ok) {
    absl::MutexLock lock(&mu_);
    writing_ = false;
    if (!ok) ReleaseAllLocked();
    NextLocked();
  }

  // Finishes the call once with `status`: at once when no write is in
  // flight, else after it completes. Unsent messages are dropped.
  void FinishOnce(const grpc::Status& status) {
    absl::MutexLock lock(&mu_);
    if (finishing_) return;
    finishing_ = true;
    status_ = status;
    ReleaseAllLocked();
    NextLocked();
  }

  // Messages dropped because the queue was full.
  size_t dropped() const {
    absl::MutexLock lock(&mu_);
    return dropped_;
  }

  // Bytes of unsent messages held now (0 without Hooks::byte_size).
  size_t queued_bytes() const {
    absl::MutexLock lock(&mu_);
    return queued_bytes_;
  }

 private:
  // Counts `bytes` more unsent against both budgets; when either is
  // exceeded, finishes the stream with Hooks::overflow's status instead
  // and returns false.
  bool ChargeLocked(size_t bytes) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (!hooks_.byte_size) return true;
    bool shared_full = false;
    if (max_queued_bytes_ == 0 || queued_bytes_ + bytes <= max_queued_bytes_) {
      if (shared_ == nullptr || shared_->TryCharge(bytes)) {
        queued_bytes_ += bytes;
        return true;
      }
      shared_full = true;
    }
    const grpc::Status status = hooks_.overflow(queued_bytes_ + bytes, shared_full);
    finishing_ = true;
    status_ = status;
    ReleaseAllLocked();
    NextLocked();
    return false;
  }
  void UnchargeLocked(size_t bytes) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    queued_bytes_ -= bytes;
    if (shared_ != nullptr) shared_->Release(bytes);
  }
  // Drops every unsent message and gives back its bytes.
  void ReleaseAllLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    queue_.clear();
    sizes_.clear();
    if (shared_ != nullptr) shared_->Release(queued_bytes_);
    queued_bytes_ = 0;
  }

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
    // The message in flight is gRPC's to hold now.
    UnchargeLocked(sizes_.front());
    sizes_.pop_front();
    writing_ = true;
    hooks_.start_write(&current_);
  }

  const Hooks hooks_;
  const size_t max_queued_;
  const size_t max_queued_bytes_;
  SharedByteBudget* const shared_;
  mutable absl::Mutex mu_;
  std::deque<Msg> queue_ ABSL_GUARDED_BY(mu_);
  // The byte size of each message in queue_ (0 when not counted).
  std::deque<size_t> sizes_ ABSL_GUARDED_BY(mu_);
  size_t queued_bytes_ ABSL_GUARDED_BY(mu_) = 0;
  Msg current_ ABSL_GUARDED_BY(mu_);
  bool writing_ ABSL_GUARDED_BY(mu_) = false;
  bool finishing_ ABSL_GUARDED_BY(mu_) = false;
  bool finished_ ABSL_GUARDED_BY(mu_) = false;
  grpc::Status status_ ABSL_GUARDED_BY(mu_);
  size_t dropped_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace membroker::broker

#pragma once
// Bounds what input from the network can make a daemon log. A message from
// an agent or a client may be wrong in many places at once (an ack with
// 10 000 errors, a stream of garbage reopened in a loop): each such event
// logs at most one line, the line names a few items and counts the rest
// (SummarizeItems), and a LogLimiter lets at most `burst` lines per key
// through in each `window`, telling in the next line it allows how many it
// held back.

#include <cstddef>
#include <cstdint>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "common/clock.h"

namespace membroker {

// At most `max_chars` bytes of `text` (cut back to a UTF-8 character
// boundary), with "..." when it was cut: how untrusted strings are quoted
// in logs and error messages.
std::string Truncate(absl::string_view text, size_t max_chars = 64);

// How a client's string is quoted in an error message it gets back: the
// text whole when it has at most `max_chars` bytes, else its first
// `max_chars` bytes (cut back to a UTF-8 character boundary) and
// "...(N bytes)". Control characters become '?'. An error that quotes a
// request field therefore stays far below a client's metadata limit,
// whatever the client sent.
std::string QuoteInput(absl::string_view text, size_t max_chars = 64);

// "k1: v1; k2: v2; ... (+N more)": at most `max_items` items, each key and
// value cut with Truncate to `max_chars`.
std::string SummarizeItems(const std::vector<std::pair<std::string, std::string>>& items,
                           size_t max_items = 5, size_t max_chars = 64);

// Per-key rate limit of log lines. Thread-safe.
class LogLimiter {
 public:
  // At most `burst` lines per key in each `window` of `clock`'s monotonic
  // time. At most `max_keys` keys are tracked; further keys share one.
  LogLimiter(const Clock* clock, int burst, absl::Duration window, size_t max_keys = 1024);

  // Whether a line for `key` may be logged now. When it may, `*suppressed`
  // (if not null) gets the number of lines refused for the key since the
  // last one allowed, for the caller to mention.
  bool Allow(absl::string_view key, uint64_t* suppressed = nullptr);

  // Lines refused so far, over all keys.
  uint64_t suppressed_total() const;

 private:
  struct Window {
    absl::Time start = absl::InfinitePast();
    int lines = 0;
    uint64_t suppressed = 0;
  };
  const Clock* const clock_;
  const int burst_;
  const absl::Duration window_;
  const size_t max_keys_;
  mutable absl::Mutex mu_;
  std::map<std::string, Window, std::less<>> windows_ ABSL_GUARDED_BY(mu_);
  uint64_t suppressed_total_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace membroker

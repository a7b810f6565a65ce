#include "tests/util/wait.h"

#include <algorithm>

#include "absl/time/clock.h"

namespace membroker::testing {

bool WaitUntil(const std::function<bool()>& predicate, absl::Duration timeout,
               absl::Duration interval) {
  if (interval <= absl::ZeroDuration()) interval = absl::Milliseconds(1);
  const absl::Time deadline = absl::Now() + timeout;
  // Bounded twice: by the deadline and by a step count that the deadline
  // would reach first (in case the clock misbehaves).
  const int64_t max_steps = std::max<int64_t>(1, timeout / interval + 2);
  for (int64_t i = 0; i < max_steps && absl::Now() < deadline; ++i) {
    if (predicate()) return true;
    absl::SleepFor(std::min(interval, std::max(absl::ZeroDuration(), deadline - absl::Now())));
  }
  return predicate();
}

}  // namespace membroker::testing

#pragma once
// A bounded wait for tests that drive real threads or processes: poll a
// predicate until it holds or a deadline passes. Never an unbounded loop.

#include <functional>

#include "absl/time/time.h"

namespace membroker::testing {

// Calls `predicate` every `interval` until it returns true or `timeout`
// has passed on the real clock; the predicate is called once more at the
// deadline. Returns whether it held. `timeout` is a bound, not an
// expectation: callers pass a generous one and tests never fail because a
// wait was merely slow.
bool WaitUntil(const std::function<bool()>& predicate, absl::Duration timeout,
               absl::Duration interval = absl::Milliseconds(20));

}  // namespace membroker::testing

#pragma once
// Jittered exponential backoff, shared by everything that retries: the
// agent's broker link and the libvirt and QMP backends.
//
//   1. the first delay is `initial`; each later one is the previous times
//      `multiplier`, capped at `max`;
//   2. each delay handed out is scaled by a uniform factor in
//      [1 - jitter, 1 + jitter], so hosts that lost the same peer do not
//      retry in step;
//   3. Reset() starts over at `initial`.
// Backoff reads no clock: callers pass the time from the Clock they were
// given (Fail/Ready), or wait for Next() themselves.

#include <cstdint>
#include <random>

#include "absl/status/status.h"
#include "absl/time/time.h"

namespace membroker {

// Timing of a backoff.
struct BackoffParams {
  // The first delay.
  absl::Duration initial = absl::Milliseconds(100);
  // No base delay grows beyond this (jitter may add up to `jitter` of it).
  absl::Duration max = absl::Seconds(10);
  // Growth of the base delay per failure (>= 1).
  double multiplier = 2.0;
  // Each delay is scaled by a uniform factor in [1 - jitter, 1 + jitter];
  // 0 makes the delays exact. In [0, 1].
  double jitter = 0.2;
  // For callers that hold a connection: one that lasted this long counts
  // as healthy and resets the backoff. Backoff itself does not read it.
  absl::Duration healthy_after = absl::Seconds(5);
};

// A doubling backoff from `initial` to `max` with `jitter`: what the
// hypervisor backends use between reconnection attempts.
inline BackoffParams DoublingBackoff(absl::Duration initial, absl::Duration max, double jitter) {
  BackoffParams params;
  params.initial = initial;
  params.max = max;
  params.multiplier = 2.0;
  params.jitter = jitter;
  return params;
}

// INVALID_ARGUMENT naming the field when `params` cannot make a backoff:
// initial not positive, max below initial, multiplier below 1, jitter
// outside [0, 1], healthy_after negative. `what` prefixes the message
// (e.g. "qmp backoff").
absl::Status ValidateBackoffParams(const BackoffParams& params, const char* what = "backoff");

// Exponential backoff with jitter. Thread-compatible (one caller at a time).
class Backoff {
 public:
  // `seed` makes the jitter reproducible (0: seeded from the system).
  // Values outside the ranges ValidateBackoffParams states are clamped.
  explicit Backoff(BackoffParams params, uint64_t seed = 0);

  // The delay before the next attempt; grows for the one after.
  absl::Duration Next();

  // Starts over at the initial delay; Ready() is true again at once.
  void Reset();

  // Caps later delays at `max` (at least the initial delay); the delay
  // growing now is cut back to it when above.
  void SetMax(absl::Duration max);

  // Records a failed attempt at `now`: the next attempt is allowed from
  // now + Next(). Returns that delay.
  absl::Duration Fail(absl::Time now);

  // True when an attempt is allowed at `now`: no failure since the last
  // Reset, or the delay of the last one has passed.
  bool Ready(absl::Time now) const { return now >= next_attempt_; }

  // When the next attempt is allowed (InfinitePast after Reset).
  absl::Time next_attempt() const { return next_attempt_; }

  // Failures recorded with Fail (or delays handed out by Next) since the
  // last Reset.
  int failures() const { return failures_; }

 private:
  BackoffParams params_;
  absl::Duration current_;
  int failures_ = 0;
  absl::Time next_attempt_ = absl::InfinitePast();
  std::mt19937_64 rng_;
};

}  // namespace membroker

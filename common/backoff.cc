#include "common/backoff.h"

#include <algorithm>
#include <limits>

#include "absl/strings/str_cat.h"

namespace membroker {

absl::Status ValidateBackoffParams(const BackoffParams& params, const char* what) {
  if (params.initial <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError(absl::StrCat(what, ": initial delay must be positive"));
  }
  if (params.max < params.initial) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, ": max delay must be at least the initial delay"));
  }
  if (!(params.multiplier >= 1.0) || params.multiplier > 1000.0) {
    return absl::InvalidArgumentError(absl::StrCat(what, ": multiplier must be in [1, 1000]"));
  }
  if (!(params.jitter >= 0.0 && params.jitter <= 1.0)) {
    return absl::InvalidArgumentError(absl::StrCat(what, ": jitter must be in [0, 1]"));
  }
  if (params.healthy_after < absl::ZeroDuration()) {
    return absl::InvalidArgumentError(absl::StrCat(what, ": healthy_after must not be negative"));
  }
  return absl::OkStatus();
}

Backoff::Backoff(BackoffParams params, uint64_t seed)
    : params_(params), rng_(seed != 0 ? seed : std::random_device{}()) {
  // Clamp what Validate would refuse, so that a bad value never loops or
  // returns a negative delay.
  if (params_.initial <= absl::ZeroDuration()) params_.initial = absl::Milliseconds(1);
  if (params_.max < params_.initial) params_.max = params_.initial;
  if (!(params_.multiplier >= 1.0)) params_.multiplier = 1.0;
  params_.jitter = params_.jitter >= 0.0 ? std::min(params_.jitter, 1.0) : 0.0;
  current_ = params_.initial;
}

absl::Duration Backoff::Next() {
  const absl::Duration base = current_;
  current_ = std::min(params_.max, current_ * params_.multiplier);
  if (failures_ < std::numeric_limits<int>::max()) ++failures_;
  if (params_.jitter == 0.0) return base;
  const double factor =
      std::uniform_real_distribution<double>(1.0 - params_.jitter, 1.0 + params_.jitter)(rng_);
  return base * factor;
}

void Backoff::SetMax(absl::Duration max) {
  params_.max = std::max(max, params_.initial);
  current_ = std::min(current_, params_.max);
}

void Backoff::Reset() {
  current_ = params_.initial;
  failures_ = 0;
  next_attempt_ = absl::InfinitePast();
}

absl::Duration Backoff::Fail(absl::Time now) {
  const absl::Duration delay = Next();
  next_attempt_ = now + delay;
  return delay;
}

}  // namespace membroker

#include "sim/workload.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/str_cat.h"
#include "common/proto_time.h"
#include "sim/rng.h"

namespace membroker::sim {
namespace {

using membroker::v1::Workload;

constexpr double kPi = 3.14159265358979323846;
constexpr double kNoiseKnotSeconds = 10.0;
// Durations longer than this (100 years) are refused as nonsense.
constexpr int64_t kMaxDurationSeconds = int64_t{100} * 365 * 24 * 3600;

double Seconds(const google::protobuf::Duration& d) {
  return absl::ToDoubleSeconds(FromProto(d));
}

absl::Status CheckDuration(const google::protobuf::Duration& d, absl::string_view field,
                           bool must_be_positive) {
  if (d.seconds() < 0 || d.nanos() < 0 || d.nanos() >= 1000000000) {
    return absl::InvalidArgumentError(absl::StrCat(field, ": must be a non-negative duration"));
  }
  if (d.seconds() > kMaxDurationSeconds) {
    return absl::InvalidArgumentError(absl::StrCat(field, ": longer than 100 years"));
  }
  if (must_be_positive && d.seconds() == 0 && d.nanos() == 0) {
    return absl::InvalidArgumentError(absl::StrCat(field, ": must be positive"));
  }
  return absl::OkStatus();
}

}  // namespace

double WorkloadBytes(const Workload& w, double t) {
  if (t < 0) t = 0;
  switch (w.model_case()) {
    case Workload::kConstant:
      return static_cast<double>(w.constant().working_set_bytes());
    case Workload::kDiurnal: {
      const auto& d = w.diurnal();
      const double period = Seconds(d.period());
      if (period <= 0) return static_cast<double>(d.base_bytes());
      const double phase = Seconds(d.phase());
      return static_cast<double>(d.base_bytes()) +
             static_cast<double>(d.amplitude_bytes()) *
                 (1.0 + std::sin(2.0 * kPi * (t + phase) / period)) / 2.0;
    }
    case Workload::kSpike: {
      const auto& s = w.spike();
      const double start = Seconds(s.start());
      const double duration = Seconds(s.duration());
      const double every = Seconds(s.every());
      const double rise = Seconds(s.rise());
      if (t < start) return static_cast<double>(s.base_bytes());
      const double since = every > 0 ? std::fmod(t - start, every) : t - start;
      if (since >= duration) return static_cast<double>(s.base_bytes());
      const double base = static_cast<double>(s.base_bytes());
      const double peak = static_cast<double>(s.peak_bytes());
      if (rise > 0 && since < rise) return base + (peak - base) * since / rise;
      return peak;
    }
    case Workload::kStep: {
      const auto& s = w.step();
      return static_cast<double>(t < Seconds(s.at()) ? s.before_bytes() : s.after_bytes());
    }
    case Workload::kLeak: {
      const auto& l = w.leak();
      const double v = static_cast<double>(l.start_bytes()) +
                       static_cast<double>(l.rate_bytes_per_second()) * t;
      return std::min(v, static_cast<double>(l.cap_bytes()));
    }
    case Workload::MODEL_NOT_SET:
      break;
  }
  return 0;
}

uint64_t WorkloadPeakBytes(const Workload& w) {
  switch (w.model_case()) {
    case Workload::kConstant:
      return w.constant().working_set_bytes();
    case Workload::kDiurnal:
      return w.diurnal().base_bytes() + w.diurnal().amplitude_bytes();
    case Workload::kSpike:
      return std::max(w.spike().base_bytes(), w.spike().peak_bytes());
    case Workload::kStep:
      return std::max(w.step().before_bytes(), w.step().after_bytes());
    case Workload::kLeak:
      return std::max(w.leak().start_bytes(), w.leak().cap_bytes());
    case Workload::MODEL_NOT_SET:
      break;
  }
  return 0;
}

double NoiseFactor(uint64_t seed, uint64_t stream, double f, double t) {
  if (f <= 0) return 1.0;
  if (t < 0) t = 0;
  const double k = std::floor(t / kNoiseKnotSeconds);
  const double frac = t / kNoiseKnotSeconds - k;
  const uint64_t i = static_cast<uint64_t>(k);
  const double a = 2.0 * ToUnit(Hash64(seed, stream, i)) - 1.0;
  const double b = 2.0 * ToUnit(Hash64(seed, stream, i + 1)) - 1.0;
  return 1.0 + f * (a + (b - a) * frac);
}

absl::Status ValidateWorkload(const Workload& w, absl::string_view field) {
  if (!(w.noise_fraction() >= 0.0 && w.noise_fraction() <= 0.5)) {
    return absl::InvalidArgumentError(
        absl::StrCat(field, ".noise_fraction: must be within [0, 0.5], got ", w.noise_fraction()));
  }
  switch (w.model_case()) {
    case Workload::kConstant:
      return absl::OkStatus();
    case Workload::kDiurnal: {
      const std::string f = absl::StrCat(field, ".diurnal");
      if (absl::Status s = CheckDuration(w.diurnal().period(), absl::StrCat(f, ".period"), true);
          !s.ok()) {
        return s;
      }
      return CheckDuration(w.diurnal().phase(), absl::StrCat(f, ".phase"), false);
    }
    case Workload::kSpike: {
      const std::string f = absl::StrCat(field, ".spike");
      const auto& s = w.spike();
      if (absl::Status st = CheckDuration(s.start(), absl::StrCat(f, ".start"), false); !st.ok()) {
        return st;
      }
      if (absl::Status st = CheckDuration(s.duration(), absl::StrCat(f, ".duration"), true);
          !st.ok()) {
        return st;
      }
      if (absl::Status st = CheckDuration(s.every(), absl::StrCat(f, ".every"), false); !st.ok()) {
        return st;
      }
      if (absl::Status st = CheckDuration(s.rise(), absl::StrCat(f, ".rise"), false); !st.ok()) {
        return st;
      }
      if (Seconds(s.rise()) > Seconds(s.duration())) {
        return absl::InvalidArgumentError(absl::StrCat(f, ".rise: must be at most the duration"));
      }
      if (Seconds(s.every()) > 0 && Seconds(s.every()) < Seconds(s.duration())) {
        return absl::InvalidArgumentError(
            absl::StrCat(f, ".every: must be 0 (once) or at least the duration"));
      }
      return absl::OkStatus();
    }
    case Workload::kStep:
      return CheckDuration(w.step().at(), absl::StrCat(field, ".step.at"), false);
    case Workload::kLeak:
      if (w.leak().cap_bytes() < w.leak().start_bytes()) {
        return absl::InvalidArgumentError(
            absl::StrCat(field, ".leak.cap_bytes: must be at least start_bytes"));
      }
      return absl::OkStatus();
    case Workload::MODEL_NOT_SET:
      break;
  }
  return absl::InvalidArgumentError(absl::StrCat(
      field, ": no model set (one of constant, diurnal, spike, step, leak is required)"));
}

}  // namespace membroker::sim

#include "sim/workload.h"

#include <gtest/gtest.h>

#include "common/textproto.h"
#include "sim/rng.h"

namespace membroker::sim {
namespace {

using membroker::v1::Workload;

constexpr double kMiB = 1024.0 * 1024.0;

Workload Parse(const std::string& text) {
  Workload w;
  absl::Status s = ParseTextProto(text, "test", &w);
  EXPECT_TRUE(s.ok()) << s;
  return w;
}

TEST(WorkloadTest, ConstantIsFlat) {
  Workload w = Parse("constant { working_set_bytes: 1048576 }");
  EXPECT_DOUBLE_EQ(WorkloadBytes(w, 0), kMiB);
  EXPECT_DOUBLE_EQ(WorkloadBytes(w, 12345), kMiB);
  EXPECT_EQ(WorkloadPeakBytes(w), 1048576u);
}

TEST(WorkloadTest, DiurnalFollowsTheSine) {
  // base 100 MiB, amplitude 200 MiB, period 400 s, no phase:
  // t=0 -> 100 + 200*(1+0)/2 = 200; t=100 -> 100 + 200 = 300 (peak);
  // t=300 -> 100 (trough).
  Workload w = Parse(
      "diurnal { base_bytes: 104857600 amplitude_bytes: 209715200 period { seconds: 400 } }");
  EXPECT_NEAR(WorkloadBytes(w, 0), 200 * kMiB, 1);
  EXPECT_NEAR(WorkloadBytes(w, 100), 300 * kMiB, 1);
  EXPECT_NEAR(WorkloadBytes(w, 300), 100 * kMiB, 1);
  // A phase of 100 s moves the peak to t=0.
  Workload shifted = Parse(
      "diurnal { base_bytes: 104857600 amplitude_bytes: 209715200 period { seconds: 400 } "
      "phase { seconds: 100 } }");
  EXPECT_NEAR(WorkloadBytes(shifted, 0), 300 * kMiB, 1);
  EXPECT_EQ(WorkloadPeakBytes(w), 300u << 20);
}

TEST(WorkloadTest, SpikeOnceAndRepeating) {
  Workload once = Parse(
      "spike { base_bytes: 1 peak_bytes: 9 start { seconds: 10 } duration { seconds: 5 } }");
  EXPECT_EQ(WorkloadBytes(once, 9.9), 1);
  EXPECT_EQ(WorkloadBytes(once, 10), 9);
  EXPECT_EQ(WorkloadBytes(once, 14.9), 9);
  EXPECT_EQ(WorkloadBytes(once, 15), 1);
  EXPECT_EQ(WorkloadBytes(once, 1000), 1);
  Workload every = Parse(
      "spike { base_bytes: 1 peak_bytes: 9 start { seconds: 10 } duration { seconds: 5 } "
      "every { seconds: 60 } }");
  EXPECT_EQ(WorkloadBytes(every, 71), 9);   // 10 + 60 + 1
  EXPECT_EQ(WorkloadBytes(every, 76), 1);   // past the 5 s peak
  EXPECT_EQ(WorkloadBytes(every, 130), 9);  // 10 + 120
}

TEST(WorkloadTest, SpikeRisesOverItsRiseTime) {
  // base 100 MiB, peak 500 MiB, rising over 4 s from t=10 (and again at
  // t=70): t=11 -> 100 + 400 / 4 = 200 MiB; t=13 -> 400 MiB; t=14 -> peak.
  Workload w = Parse(
      "spike { base_bytes: 104857600 peak_bytes: 524288000 start { seconds: 10 } "
      "duration { seconds: 20 } every { seconds: 60 } rise { seconds: 4 } }");
  EXPECT_NEAR(WorkloadBytes(w, 9.9), 100 * kMiB, 1);
  EXPECT_NEAR(WorkloadBytes(w, 11), 200 * kMiB, 1);
  EXPECT_NEAR(WorkloadBytes(w, 13), 400 * kMiB, 1);
  EXPECT_NEAR(WorkloadBytes(w, 14), 500 * kMiB, 1);
  EXPECT_NEAR(WorkloadBytes(w, 29.9), 500 * kMiB, 1);
  EXPECT_NEAR(WorkloadBytes(w, 30), 100 * kMiB, 1);
  EXPECT_NEAR(WorkloadBytes(w, 72), 300 * kMiB, 1);
  EXPECT_EQ(WorkloadPeakBytes(w), 500u << 20);
}

TEST(WorkloadTest, StepSwitchesAtItsTime) {
  Workload w = Parse("step { before_bytes: 5 after_bytes: 7 at { seconds: 30 } }");
  EXPECT_EQ(WorkloadBytes(w, 29.99), 5);
  EXPECT_EQ(WorkloadBytes(w, 30), 7);
  EXPECT_EQ(WorkloadPeakBytes(w), 7u);
}

TEST(WorkloadTest, LeakGrowsToItsCap) {
  // 100 + 10/s, cap 200: t=5 -> 150; t=10 -> 200; t=100 -> 200.
  Workload w = Parse("leak { start_bytes: 100 rate_bytes_per_second: 10 cap_bytes: 200 }");
  EXPECT_DOUBLE_EQ(WorkloadBytes(w, 5), 150);
  EXPECT_DOUBLE_EQ(WorkloadBytes(w, 10), 200);
  EXPECT_DOUBLE_EQ(WorkloadBytes(w, 100), 200);
  EXPECT_DOUBLE_EQ(WorkloadBytes(w, -3), 100);
}

TEST(WorkloadTest, NoiseIsBoundedSmoothAndSeeded) {
  bool any_different = false;
  for (int i = 0; i < 1000; ++i) {
    const double t = i * 0.7;
    const double f = NoiseFactor(42, 3, 0.2, t);
    EXPECT_GE(f, 0.8);
    EXPECT_LE(f, 1.2);
    EXPECT_EQ(f, NoiseFactor(42, 3, 0.2, t));
    if (f != NoiseFactor(43, 3, 0.2, t)) any_different = true;
    // Smooth: 0.7 s moves it by at most 0.07 * 2f.
    EXPECT_LE(std::abs(NoiseFactor(42, 3, 0.2, t + 0.7) - f), 0.2 * 2 * 0.07 + 1e-9);
  }
  EXPECT_TRUE(any_different);
  EXPECT_EQ(NoiseFactor(42, 3, 0.0, 5), 1.0);
}

TEST(WorkloadTest, ValidationNamesTheField) {
  struct Case {
    const char* text;
    const char* field;
  } cases[] = {
      {"", "w: no model set"},
      {"constant {} noise_fraction: 0.6", "w.noise_fraction"},
      {"constant {} noise_fraction: -0.1", "w.noise_fraction"},
      {"diurnal { period { seconds: 0 } }", "w.diurnal.period"},
      {"diurnal { period { seconds: 10 } phase { seconds: -1 } }", "w.diurnal.phase"},
      {"spike { duration { seconds: 0 } }", "w.spike.duration"},
      {"spike { duration { seconds: 10 } every { seconds: 5 } }", "w.spike.every"},
      {"spike { duration { seconds: 10 } start { seconds: -5 } }", "w.spike.start"},
      {"spike { duration { seconds: 10 } rise { seconds: 11 } }", "w.spike.rise"},
      {"spike { duration { seconds: 10 } rise { seconds: -1 } }", "w.spike.rise"},
      {"step { at { seconds: -1 } }", "w.step.at"},
      {"leak { start_bytes: 10 cap_bytes: 5 }", "w.leak.cap_bytes"},
  };
  for (const Case& c : cases) {
    Workload w = Parse(c.text);
    absl::Status s = ValidateWorkload(w, "w");
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << c.text;
    EXPECT_NE(s.message().find(c.field), std::string::npos) << c.text << " -> " << s;
  }
  EXPECT_TRUE(ValidateWorkload(Parse("constant { working_set_bytes: 1 }"), "w").ok());
}

TEST(RngTest, SameSeedSameSequence) {
  Rng a(7), b(7), c(8);
  bool differs = false;
  for (int i = 0; i < 100; ++i) {
    const uint64_t x = a.Next();
    EXPECT_EQ(x, b.Next());
    if (x != c.Next()) differs = true;
  }
  EXPECT_TRUE(differs);
  Rng r(1);
  for (int i = 0; i < 1000; ++i) {
    const double u = r.Uniform();
    EXPECT_GE(u, 0.0);
    EXPECT_LT(u, 1.0);
    EXPECT_LT(r.Below(10), 10u);
  }
}

}  // namespace
}  // namespace membroker::sim

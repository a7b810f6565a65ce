#pragma once
// Workload models: a guest's working set as a function of time since the
// VM started (membroker.v1.Workload). Pure functions.

#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "membroker/v1/config.pb.h"

namespace membroker::sim {

// The workload's working set (bytes, without kernel and noise) at `t_seconds`
// after the VM started (negative times count as 0).
double WorkloadBytes(const membroker::v1::Workload& workload, double t_seconds);

// The largest working set the model can reach (without noise).
uint64_t WorkloadPeakBytes(const membroker::v1::Workload& workload);

// The multiplicative noise factor in [1 - f, 1 + f] at `t_seconds` for the
// stream `stream` under `seed`: seeded knots every 10 s, linearly
// interpolated, so the curve is smooth and can be evaluated at any time.
double NoiseFactor(uint64_t seed, uint64_t stream, double noise_fraction, double t_seconds);

// Checks `workload`; `field` names it in errors (e.g. "vms[2].workload").
// INVALID_ARGUMENT naming the bad field: no model set, a zero period or
// duration, cap below start, noise outside [0, 0.5], negative durations.
absl::Status ValidateWorkload(const membroker::v1::Workload& workload, absl::string_view field);

}  // namespace membroker::sim

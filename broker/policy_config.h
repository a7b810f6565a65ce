#pragma once
// Validation and conversion of the policy messages at the broker's edge:
// membroker.v1.ClusterPolicy / VmPolicy <-> policy::PolicyParams.

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "broker/policy/allocator.h"
#include "broker/policy/demand.h"
#include "membroker/v1/types.pb.h"

namespace membroker::broker {

// The cluster policy a new broker starts with: every field set.
v1::ClusterPolicy DefaultClusterPolicy();

// Checks the fields that are set. INVALID_ARGUMENT naming the first bad
// field, e.g. "policy.buffer_percent: must be in 0..1000, got 2000".
absl::Status ValidateClusterPolicy(const v1::ClusterPolicy& policy);

// Returns `base` with every field set in `update` replaced.
v1::ClusterPolicy MergeClusterPolicy(const v1::ClusterPolicy& base,
                                     const v1::ClusterPolicy& update);

// Checks a per-VM policy: weight 1..10000, min <= max when both are set,
// max > 0. INVALID_ARGUMENT naming the field.
absl::Status ValidateVmPolicy(const v1::VmPolicy& policy);

// Returns `base` with every field set in `update` replaced.
v1::VmPolicy MergeVmPolicy(const v1::VmPolicy& base, const v1::VmPolicy& update);

// Converts a complete (merged with defaults) cluster policy.
policy::PolicyParams ToPolicyParams(const v1::ClusterPolicy& policy);

// The demand estimator's settings of a complete cluster policy.
policy::DemandParams ToDemandParams(const v1::ClusterPolicy& policy);

// The report interval of a complete cluster policy.
absl::Duration ReportInterval(const v1::ClusterPolicy& policy);

// Maps the policy library's reason to the wire's.
v1::ReasonCode ToProtoReason(policy::Reason reason);

}  // namespace membroker::broker

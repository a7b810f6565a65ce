#pragma once
// Validation and conversion of the policy messages at the broker's edge:
// membroker.v1.ClusterPolicy / VmPolicy <-> policy::PolicyParams.

#include <map>
#include <string>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "broker/policy/allocator.h"
#include "broker/policy/demand.h"
#include "broker/policy/host_step.h"
#include "membroker/v1/types.pb.h"

namespace membroker::broker {

// The agents' report interval unless the cluster policy sets one.
inline constexpr absl::Duration kDefaultReportInterval = absl::Seconds(1);

// The cluster policy a new broker starts with: every field set, each from
// the one place its default is defined (policy::PolicyParams and
// policy::DemandParams initializers, kDefaultReportInterval).
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

// The per-VM policy in the decision's plain form.
policy::VmPolicySpec ToVmPolicySpec(const v1::VmPolicy& policy);

// Everything a decision reads, from a complete cluster policy and the
// per-VM policies by VM id.
policy::PolicySet ToPolicySet(const v1::ClusterPolicy& cluster,
                              const std::map<std::string, v1::VmPolicy>& vm_policies);

// The report interval of a complete cluster policy.
absl::Duration ReportInterval(const v1::ClusterPolicy& policy);

// Maps the policy library's reason to the wire's.
v1::ReasonCode ToProtoReason(policy::Reason reason);

}  // namespace membroker::broker

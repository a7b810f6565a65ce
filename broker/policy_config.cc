#include "broker/policy_config.h"

#include <cmath>

#include "absl/strings/str_cat.h"
#include "common/proto_time.h"
#include "common/status.h"

namespace membroker::broker {
namespace {

constexpr uint64_t kMiB = uint64_t{1} << 20;
constexpr uint64_t kMaxBytes = uint64_t{1} << 50;  // 1 PiB: no host is larger

absl::Status Range(const char* field, double v, double lo, double hi) {
  if (!std::isfinite(v) || v < lo || v > hi) {
    return absl::InvalidArgumentError(
        absl::StrCat("policy.", field, ": must be in ", lo, "..", hi, ", got ", v));
  }
  return absl::OkStatus();
}

absl::Status Bytes(const char* field, uint64_t v, uint64_t lo) {
  if (v < lo || v > kMaxBytes) {
    return absl::InvalidArgumentError(
        absl::StrCat("policy.", field, ": must be in ", lo, "..", kMaxBytes, " bytes, got ", v));
  }
  return absl::OkStatus();
}

}  // namespace

v1::ClusterPolicy DefaultClusterPolicy() {
  const policy::PolicyParams d;
  const policy::DemandParams dd;
  v1::ClusterPolicy p;
  p.set_buffer_percent(d.buffer_percent);
  p.set_host_free_margin_bytes(d.host_free_margin_bytes);
  p.set_reclaim_step_bytes(d.reclaim_step_bytes);
  p.set_hysteresis_bytes(d.hysteresis_bytes);
  p.set_idle_tax_percent(d.idle_tax_percent);
  p.set_default_min_bytes(d.default_min_bytes);
  p.set_default_weight(d.default_weight);
  p.set_protect_margin_percent(dd.protect_margin_percent);
  *p.mutable_report_interval() = ToProtoDuration(kDefaultReportInterval);
  p.set_surplus_percent(d.surplus_percent);
  p.set_hysteresis_percent(d.hysteresis_percent);
  p.set_protect_margin_max_bytes(dd.protect_margin_max_bytes);
  return p;
}

absl::Status ValidateClusterPolicy(const v1::ClusterPolicy& p) {
  if (p.has_buffer_percent()) RETURN_IF_ERROR(Range("buffer_percent", p.buffer_percent(), 0, 1000));
  if (p.has_idle_tax_percent())
    RETURN_IF_ERROR(Range("idle_tax_percent", p.idle_tax_percent(), 0, 99));
  if (p.has_protect_margin_percent())
    RETURN_IF_ERROR(Range("protect_margin_percent", p.protect_margin_percent(), 0, 1000));
  if (p.has_surplus_percent())
    RETURN_IF_ERROR(Range("surplus_percent", p.surplus_percent(), 0, 100));
  if (p.has_hysteresis_percent())
    RETURN_IF_ERROR(Range("hysteresis_percent", p.hysteresis_percent(), 0, 50));
  if (p.has_protect_margin_max_bytes())
    RETURN_IF_ERROR(Bytes("protect_margin_max_bytes", p.protect_margin_max_bytes(), 0));
  if (p.has_default_weight())
    RETURN_IF_ERROR(Range("default_weight", p.default_weight(), 1, 10000));
  if (p.has_host_free_margin_bytes())
    RETURN_IF_ERROR(Bytes("host_free_margin_bytes", p.host_free_margin_bytes(), 0));
  if (p.has_reclaim_step_bytes())
    RETURN_IF_ERROR(Bytes("reclaim_step_bytes", p.reclaim_step_bytes(), kMiB));
  if (p.has_hysteresis_bytes())
    RETURN_IF_ERROR(Bytes("hysteresis_bytes", p.hysteresis_bytes(), 0));
  if (p.has_default_min_bytes())
    RETURN_IF_ERROR(Bytes("default_min_bytes", p.default_min_bytes(), 0));
  if (p.has_report_interval()) {
    const auto& d = p.report_interval();
    if (d.seconds() < 0 || d.nanos() < 0 || d.nanos() >= 1000000000) {
      return absl::InvalidArgumentError("policy.report_interval: malformed duration");
    }
    const absl::Duration v = FromProto(d);
    if (v < absl::Milliseconds(100) || v > absl::Seconds(60)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "policy.report_interval: must be in 100ms..60s, got ", absl::FormatDuration(v)));
    }
  }
  return absl::OkStatus();
}

v1::ClusterPolicy MergeClusterPolicy(const v1::ClusterPolicy& base,
                                     const v1::ClusterPolicy& update) {
  v1::ClusterPolicy out = base;
  // proto3 `optional` fields merge as "set in update wins".
  out.MergeFrom(update);
  return out;
}

absl::Status ValidateVmPolicy(const v1::VmPolicy& p) {
  if (p.has_weight() && (p.weight() < 1 || p.weight() > 10000)) {
    return absl::InvalidArgumentError(
        absl::StrCat("policy.weight: must be in 1..10000, got ", p.weight()));
  }
  if (p.has_max_bytes() && (p.max_bytes() == 0 || p.max_bytes() > kMaxBytes)) {
    return absl::InvalidArgumentError(
        absl::StrCat("policy.max_bytes: must be in 1..", kMaxBytes, ", got ", p.max_bytes()));
  }
  if (p.has_min_bytes() && p.min_bytes() > kMaxBytes) {
    return absl::InvalidArgumentError(
        absl::StrCat("policy.min_bytes: must be at most ", kMaxBytes, ", got ", p.min_bytes()));
  }
  if (p.has_min_bytes() && p.has_max_bytes() && p.min_bytes() > p.max_bytes()) {
    return absl::InvalidArgumentError(absl::StrCat("policy.min_bytes (", p.min_bytes(),
                                                   ") is above policy.max_bytes (",
                                                   p.max_bytes(), ")"));
  }
  return absl::OkStatus();
}

v1::VmPolicy MergeVmPolicy(const v1::VmPolicy& base, const v1::VmPolicy& update) {
  v1::VmPolicy out = base;
  out.MergeFrom(update);
  return out;
}

policy::PolicyParams ToPolicyParams(const v1::ClusterPolicy& p) {
  policy::PolicyParams out;
  out.buffer_percent = p.buffer_percent();
  out.host_free_margin_bytes = p.host_free_margin_bytes();
  out.reclaim_step_bytes = p.reclaim_step_bytes();
  out.hysteresis_bytes = p.hysteresis_bytes();
  out.idle_tax_percent = p.idle_tax_percent();
  out.default_min_bytes = p.default_min_bytes();
  out.default_weight = p.default_weight();
  out.surplus_percent = p.surplus_percent();
  out.hysteresis_percent = p.hysteresis_percent();
  return out;
}

policy::DemandParams ToDemandParams(const v1::ClusterPolicy& p) {
  policy::DemandParams out;
  out.protect_margin_percent = p.protect_margin_percent();
  out.protect_margin_max_bytes = p.protect_margin_max_bytes();
  return out;
}

absl::Duration ReportInterval(const v1::ClusterPolicy& p) {
  return p.has_report_interval() ? FromProto(p.report_interval()) : kDefaultReportInterval;
}

policy::VmPolicySpec ToVmPolicySpec(const v1::VmPolicy& p) {
  policy::VmPolicySpec out;
  if (p.has_min_bytes()) out.min_bytes = p.min_bytes();
  if (p.has_max_bytes()) out.max_bytes = p.max_bytes();
  if (p.has_weight()) out.weight = p.weight();
  out.pinned = p.has_pinned() && p.pinned();
  return out;
}

policy::PolicySet ToPolicySet(const v1::ClusterPolicy& cluster,
                              const std::map<std::string, v1::VmPolicy>& vm_policies) {
  policy::PolicySet out;
  out.params = ToPolicyParams(cluster);
  out.demand = ToDemandParams(cluster);
  for (const auto& [id, p] : vm_policies) out.vms.emplace(id, ToVmPolicySpec(p));
  return out;
}

v1::ReasonCode ToProtoReason(policy::Reason reason) {
  // The enums share their numbering (see allocator.h).
  return static_cast<v1::ReasonCode>(static_cast<int>(reason));
}

}  // namespace membroker::broker

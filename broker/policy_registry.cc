#include "broker/policy_registry.h"

#include <spdlog/spdlog.h>

#include "absl/strings/str_join.h"
#include "broker/policy_config.h"
#include "common/status.h"

namespace membroker::broker {
namespace {

void LogAudit(const v1::AuditEntry& e) {
  spdlog::info("audit: {} by {}: {} {}", e.action(), e.actor(), e.target(),
               absl::StrJoin(e.changes(), "; "));
}

}  // namespace

PolicyRegistry::PolicyRegistry(Store* store) : store_(store) {
  absl::MutexLock lock(&write_mu_);
  PublishLocked(DefaultClusterPolicy(), {});
}

void PolicyRegistry::PublishLocked(v1::ClusterPolicy cluster,
                                   std::map<std::string, v1::VmPolicy> vms) {
  auto next = std::make_shared<PolicySnapshot>();
  next->set = ToPolicySet(cluster, vms);
  next->report_interval = ReportInterval(cluster);
  next->cluster = std::move(cluster);
  next->vm_policies = std::move(vms);
  absl::MutexLock lock(&snapshot_mu_);
  snapshot_ = std::move(next);
}

std::shared_ptr<const PolicySnapshot> PolicyRegistry::Snapshot() const {
  absl::MutexLock lock(&snapshot_mu_);
  return snapshot_;
}

absl::Status PolicyRegistry::Load(const v1::ClusterPolicy& initial) {
  RETURN_IF_ERROR(ValidateClusterPolicy(initial));
  absl::MutexLock lock(&write_mu_);
  ASSIGN_OR_RETURN(std::optional<v1::ClusterPolicy> stored, store_->LoadClusterPolicy());
  ASSIGN_OR_RETURN(auto vm_policies, store_->LoadVmPolicies());
  v1::ClusterPolicy policy;
  if (stored.has_value()) {
    policy = MergeClusterPolicy(DefaultClusterPolicy(), *stored);
    RETURN_IF_ERROR(ValidateClusterPolicy(policy));
  } else {
    policy = MergeClusterPolicy(DefaultClusterPolicy(), initial);
    RETURN_IF_ERROR(store_->SaveClusterPolicy(policy));
  }
  PublishLocked(std::move(policy), std::move(vm_policies));
  return absl::OkStatus();
}

absl::StatusOr<v1::VmPolicy> PolicyRegistry::SetVmPolicy(const std::string& vm_id,
                                                         const v1::VmPolicy& policy, bool merge,
                                                         const AuditInfo& who) {
  RETURN_IF_ERROR(ValidateVmPolicy(policy));
  absl::MutexLock lock(&write_mu_);
  std::shared_ptr<const PolicySnapshot> now = Snapshot();
  v1::VmPolicy next = policy;
  auto it = now->vm_policies.find(vm_id);
  if (merge && it != now->vm_policies.end()) next = MergeVmPolicy(it->second, policy);
  RETURN_IF_ERROR(ValidateVmPolicy(next));
  const v1::AuditEntry audit = VmPolicyAuditEntry(
      who, "SetVmPolicy", vm_id, it == now->vm_policies.end() ? nullptr : &it->second, &next);
  RETURN_IF_ERROR(store_->PutVmPolicy(vm_id, next, &audit));
  LogAudit(audit);
  std::map<std::string, v1::VmPolicy> vms = now->vm_policies;
  vms[vm_id] = next;
  PublishLocked(now->cluster, std::move(vms));
  return next;
}

absl::Status PolicyRegistry::ClearVmPolicy(const std::string& vm_id, const AuditInfo& who) {
  absl::MutexLock lock(&write_mu_);
  std::shared_ptr<const PolicySnapshot> now = Snapshot();
  auto it = now->vm_policies.find(vm_id);
  const v1::AuditEntry audit = VmPolicyAuditEntry(
      who, "ClearVmPolicy", vm_id, it == now->vm_policies.end() ? nullptr : &it->second, nullptr);
  RETURN_IF_ERROR(store_->DeleteVmPolicy(vm_id, &audit));
  LogAudit(audit);
  std::map<std::string, v1::VmPolicy> vms = now->vm_policies;
  vms.erase(vm_id);
  PublishLocked(now->cluster, std::move(vms));
  return absl::OkStatus();
}

absl::StatusOr<v1::ClusterPolicy> PolicyRegistry::SetClusterPolicy(const v1::ClusterPolicy& update,
                                                                   const AuditInfo& who) {
  RETURN_IF_ERROR(ValidateClusterPolicy(update));
  absl::MutexLock lock(&write_mu_);
  std::shared_ptr<const PolicySnapshot> now = Snapshot();
  v1::ClusterPolicy next = MergeClusterPolicy(now->cluster, update);
  RETURN_IF_ERROR(ValidateClusterPolicy(next));
  const v1::AuditEntry audit = ClusterPolicyAuditEntry(who, now->cluster, next);
  RETURN_IF_ERROR(store_->SaveClusterPolicy(next, &audit));
  LogAudit(audit);
  PublishLocked(next, now->vm_policies);
  return next;
}

}  // namespace membroker::broker

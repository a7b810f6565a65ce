#pragma once
// The audit trail's entries: who changed which policy, from what to what,
// when. Pure (protobuf reflection only); the Store keeps the entries.

#include <google/protobuf/message.h>

#include <string>
#include <vector>

#include "absl/time/time.h"
#include "membroker/v1/admin.pb.h"

namespace membroker::broker {

// Who asks for a change, and when it is accepted.
struct AuditInfo {
  // The caller's certificate identity, or "insecure" without TLS.
  std::string actor;
  absl::Time time;
};

// Actor of changes made in-process (tests, tools), not through the API.
inline constexpr char kInProcessActor[] = "in-process";

// One line per field that differs between `before` and `after` (two
// messages of one type): "NAME: OLD -> NEW", "unset" for an absent field;
// a single "no change" line when they are equal.
std::vector<std::string> DiffFields(const google::protobuf::Message& before,
                                    const google::protobuf::Message& after);

// An entry for a VM policy change; null `before`/`after`: none stored.
v1::AuditEntry VmPolicyAuditEntry(const AuditInfo& who, const std::string& action,
                                  const std::string& vm_id, const v1::VmPolicy* before,
                                  const v1::VmPolicy* after);

// An entry for a cluster policy change (target "cluster").
v1::AuditEntry ClusterPolicyAuditEntry(const AuditInfo& who, const v1::ClusterPolicy& before,
                                       const v1::ClusterPolicy& after);

}  // namespace membroker::broker

#include "broker/audit.h"

#include <google/protobuf/text_format.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/proto_time.h"

namespace membroker::broker {
namespace {

using google::protobuf::FieldDescriptor;
using google::protobuf::Message;

std::string FieldText(const Message& m, const FieldDescriptor* f) {
  const google::protobuf::Reflection* r = m.GetReflection();
  google::protobuf::TextFormat::Printer printer;
  printer.SetSingleLineMode(true);
  if (f->is_repeated()) {
    const int n = r->FieldSize(m, f);
    if (n == 0) return "unset";
    std::vector<std::string> items(n);
    for (int i = 0; i < n; ++i) printer.PrintFieldValueToString(m, f, i, &items[i]);
    return absl::StrCat("[", absl::StrJoin(items, ", "), "]");
  }
  if (f->has_presence() && !r->HasField(m, f)) return "unset";
  std::string out;
  printer.PrintFieldValueToString(m, f, -1, &out);
  return out;
}

}  // namespace

std::vector<std::string> DiffFields(const Message& before, const Message& after) {
  std::vector<std::string> lines;
  const google::protobuf::Descriptor* d = before.GetDescriptor();
  if (after.GetDescriptor() != d) return {"(different message types)"};
  for (int i = 0; i < d->field_count(); ++i) {
    const FieldDescriptor* f = d->field(i);
    const std::string was = FieldText(before, f);
    const std::string now = FieldText(after, f);
    if (was != now) lines.push_back(absl::StrCat(f->name(), ": ", was, " -> ", now));
  }
  if (lines.empty()) lines.push_back("no change");
  return lines;
}

v1::AuditEntry VmPolicyAuditEntry(const AuditInfo& who, const std::string& action,
                                  const std::string& vm_id, const v1::VmPolicy* before,
                                  const v1::VmPolicy* after) {
  v1::AuditEntry e;
  *e.mutable_time() = ToProtoTimestamp(who.time);
  e.set_actor(who.actor);
  e.set_action(action);
  e.set_target(vm_id);
  if (before != nullptr) *e.mutable_old_vm_policy() = *before;
  if (after != nullptr) *e.mutable_new_vm_policy() = *after;
  if (before == nullptr && after == nullptr) {
    e.add_changes("no change (no policy was stored)");
  } else {
    const v1::VmPolicy empty;
    for (std::string& line : DiffFields(before ? *before : empty, after ? *after : empty)) {
      e.add_changes(std::move(line));
    }
  }
  return e;
}

v1::AuditEntry ClusterPolicyAuditEntry(const AuditInfo& who, const v1::ClusterPolicy& before,
                                       const v1::ClusterPolicy& after) {
  v1::AuditEntry e;
  *e.mutable_time() = ToProtoTimestamp(who.time);
  e.set_actor(who.actor);
  e.set_action("SetClusterPolicy");
  e.set_target("cluster");
  *e.mutable_old_cluster_policy() = before;
  *e.mutable_new_cluster_policy() = after;
  for (std::string& line : DiffFields(before, after)) e.add_changes(std::move(line));
  return e;
}

}  // namespace membroker::broker

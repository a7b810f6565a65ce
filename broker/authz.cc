#include "broker/authz.h"

#include <algorithm>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace membroker::broker {
namespace {

constexpr char kDefaultAdminOu[] = "membroker-admin";
constexpr char kDefaultReadOnlyOu[] = "membroker-read-only";
// Longest identity string quoted in a log line or an error.
constexpr size_t kMaxShown = 128;

// Printable ASCII only, at most kMaxShown characters: certificate fields are
// the caller's input.
std::string Printable(absl::string_view s) {
  std::string out;
  for (char c : s.substr(0, kMaxShown)) {
    out.push_back(c >= 0x20 && c < 0x7f ? c : '?');
  }
  if (s.size() > kMaxShown) out += "...";
  return out;
}

void AddUnique(std::vector<std::string>& to, const std::string& value) {
  if (value.empty()) return;
  if (std::find(to.begin(), to.end(), value) == to.end()) to.push_back(value);
}

bool Contains(const std::vector<std::string>& list, absl::string_view value) {
  return std::find(list.begin(), list.end(), value) != list.end();
}

absl::Status CheckEntries(const google::protobuf::RepeatedPtrField<std::string>& list,
                          const char* field) {
  for (const std::string& entry : list) {
    if (entry.empty()) {
      return absl::InvalidArgumentError(absl::StrCat("security.", field, ": empty entry"));
    }
  }
  return absl::OkStatus();
}

}  // namespace

std::string PeerIdentity::Display() const {
  if (!authenticated) return "insecure";
  std::string name;
  if (!common_name.empty()) {
    name = absl::StrCat("CN=", Printable(common_name));
  } else if (!dns_names.empty()) {
    name = absl::StrCat("DNS:", Printable(dns_names.front()));
  } else if (!uris.empty()) {
    name = absl::StrCat("URI:", Printable(uris.front()));
  } else {
    name = "(no name)";
  }
  for (const std::string& ou : organizational_units) absl::StrAppend(&name, ",OU=", Printable(ou));
  return name;
}

std::vector<std::string> SubjectOus(absl::string_view subject) {
  // Split into attribute=value pairs at unescaped ',' and '+', unescaping.
  std::vector<std::string> ous;
  std::string current;
  auto flush = [&] {
    if (absl::StartsWithIgnoreCase(current, "OU=")) AddUnique(ous, current.substr(3));
    current.clear();
  };
  for (size_t i = 0; i < subject.size(); ++i) {
    const char c = subject[i];
    if (c == '\\' && i + 1 < subject.size()) {
      current.push_back(subject[++i]);
    } else if (c == ',' || c == '+') {
      flush();
    } else {
      current.push_back(c);
    }
  }
  flush();
  return ous;
}

PeerIdentity IdentityFromProperties(bool authenticated, const PropertyLookup& find) {
  PeerIdentity id;
  id.authenticated = authenticated;
  for (const std::string& cn : find("x509_common_name")) {
    if (id.common_name.empty()) id.common_name = cn;
  }
  for (const std::string& dns : find("peer_dns")) AddUnique(id.dns_names, dns);
  for (const std::string& uri : find("peer_uri")) AddUnique(id.uris, uri);
  // Older gRPC releases give only the mixed SAN list: a value with a scheme
  // is a URI; IP addresses and e-mail addresses are not names we match.
  for (const std::string& san : find("x509_subject_alternative_name")) {
    if (absl::StrContains(san, "://")) {
      AddUnique(id.uris, san);
    } else if (!absl::StrContains(san, "@") && !absl::StrContains(san, ":") &&
               !std::all_of(san.begin(), san.end(),
                            [](char c) { return (c >= '0' && c <= '9') || c == '.'; })) {
      AddUnique(id.dns_names, san);
    }
  }
  for (const std::string& subject : find("x509_subject")) {
    for (const std::string& ou : SubjectOus(subject)) AddUnique(id.organizational_units, ou);
  }
  return id;
}

const char* RoleName(Role role) {
  switch (role) {
    case Role::kAgent:
      return "agent";
    case Role::kReadOnly:
      return "read-only";
    case Role::kAdmin:
      return "admin";
    case Role::kNone:
      break;
  }
  return "none";
}

AdminAccess AccessOf(absl::string_view method) {
  static const char* const kReads[] = {
      "ListHosts",        "GetHost",          "ListVms",  "GetVm",      "GetClusterPolicy",
      "ExplainVm",        "GetPlan",          "Place",    "WatchDecisions", "ListAuditEntries",
      "ListReservations", "WatchVms",         "WatchHosts"};
  for (const char* read : kReads) {
    if (method == read) return AdminAccess::kRead;
  }
  return AdminAccess::kWrite;
}

Authorizer Authorizer::Insecure() {
  Authorizer a;
  a.insecure_ = true;
  return a;
}

absl::StatusOr<Authorizer> Authorizer::FromConfig(const v1::SecurityConfig& config) {
  if (auto s = CheckEntries(config.admin_identities(), "admin_identities"); !s.ok()) return s;
  if (auto s = CheckEntries(config.admin_ous(), "admin_ous"); !s.ok()) return s;
  if (auto s = CheckEntries(config.read_only_identities(), "read_only_identities"); !s.ok()) {
    return s;
  }
  if (auto s = CheckEntries(config.read_only_ous(), "read_only_ous"); !s.ok()) return s;
  if (auto s = CheckEntries(config.agent_ous(), "agent_ous"); !s.ok()) return s;
  Authorizer a;
  a.admin_identities_.assign(config.admin_identities().begin(), config.admin_identities().end());
  a.admin_ous_.assign(config.admin_ous().begin(), config.admin_ous().end());
  a.read_only_identities_.assign(config.read_only_identities().begin(),
                                 config.read_only_identities().end());
  a.read_only_ous_.assign(config.read_only_ous().begin(), config.read_only_ous().end());
  a.agent_ous_.assign(config.agent_ous().begin(), config.agent_ous().end());
  if (a.admin_identities_.empty() && a.admin_ous_.empty() && a.read_only_identities_.empty() &&
      a.read_only_ous_.empty() && a.agent_ous_.empty()) {
    a.admin_ous_ = {kDefaultAdminOu};
    a.read_only_ous_ = {kDefaultReadOnlyOu};
  }
  return a;
}

bool Authorizer::Matches(const PeerIdentity& peer, const std::vector<std::string>& identities,
                         const std::vector<std::string>& ous) {
  if (!peer.common_name.empty() && Contains(identities, peer.common_name)) return true;
  for (const std::string& dns : peer.dns_names) {
    if (Contains(identities, dns)) return true;
  }
  for (const std::string& uri : peer.uris) {
    if (Contains(identities, uri)) return true;
  }
  for (const std::string& ou : peer.organizational_units) {
    if (Contains(ous, ou)) return true;
  }
  return false;
}

Role Authorizer::RoleOf(const PeerIdentity& peer) const {
  if (insecure_) return Role::kAdmin;
  if (!peer.authenticated) return Role::kNone;
  if (Matches(peer, admin_identities_, admin_ous_)) return Role::kAdmin;
  if (Matches(peer, read_only_identities_, read_only_ous_)) return Role::kReadOnly;
  if (agent_ous_.empty() || Matches(peer, {}, agent_ous_)) return Role::kAgent;
  return Role::kNone;
}

absl::Status Authorizer::AuthorizeAdmin(const PeerIdentity& peer, absl::string_view method) const {
  if (insecure_) return absl::OkStatus();
  if (!peer.authenticated) {
    return absl::UnauthenticatedError("a client certificate signed by the broker's CA is required");
  }
  const Role role = RoleOf(peer);
  const bool write = AccessOf(method) == AdminAccess::kWrite;
  if (role == Role::kAdmin || (role == Role::kReadOnly && !write)) return absl::OkStatus();
  return absl::PermissionDeniedError(absl::StrCat(
      peer.Display(), " (role ", RoleName(role), ") may not call ", Printable(method),
      role == Role::kReadOnly ? ": the read-only role may not change anything"
                              : ": AdminService needs an admin or read-only identity"));
}

absl::Status Authorizer::AuthorizeHost(const PeerIdentity& peer, absl::string_view host_id) const {
  if (insecure_) return absl::OkStatus();
  if (!peer.authenticated) {
    return absl::UnauthenticatedError("a client certificate signed by the broker's CA is required");
  }
  const Role role = RoleOf(peer);
  if (role != Role::kAgent) {
    return absl::PermissionDeniedError(
        absl::StrCat(peer.Display(), " (role ", RoleName(role),
                     ") is not an agent certificate and may not report for a host"));
  }
  bool named = !host_id.empty() && peer.common_name == host_id;
  for (const std::string& dns : peer.dns_names)
    named = named || (!host_id.empty() && dns == host_id);
  const std::string suffix = absl::StrCat("/host/", host_id);
  for (const std::string& uri : peer.uris) {
    named = named || (!host_id.empty() && absl::EndsWith(uri, suffix));
  }
  if (named) return absl::OkStatus();
  return absl::PermissionDeniedError(absl::StrCat("certificate ", peer.Display(),
                                                  " does not name host \"", Printable(host_id),
                                                  "\"; an agent may report only for its own host"));
}

}  // namespace membroker::broker

#pragma once
// Who may do what on the broker: a pure function of the caller's
// certificate identity and the broker's SecurityConfig. No gRPC, no I/O.
//
// 1. Without TLS (--insecure) every caller is "insecure" and may do
//    everything, as in the local demo.
// 2. With TLS, a caller's role comes from its certificate: admin when its CN,
//    a DNS or URI SAN is in admin_identities or one of its OUs is in
//    admin_ous; else read-only likewise; else agent (when agent_ous is set,
//    only with one of those OUs; otherwise no role).
// 3. AdminService: reads (list, get, explain, watch, history) need admin or
//    read-only; changes need admin. Agents get PERMISSION_DENIED.
// 4. AgentService: only an agent may open a stream, and only for a host its
//    certificate names (CN, a DNS SAN, or a URI SAN ending in "/host/NAME").

#include <functional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "membroker/v1/config.pb.h"

namespace membroker::broker {

// A caller as its TLS handshake showed it. Plain value.
struct PeerIdentity {
  // False for a plaintext (insecure) connection or no verified certificate.
  bool authenticated = false;
  std::string common_name;
  std::vector<std::string> dns_names;
  std::vector<std::string> uris;
  std::vector<std::string> organizational_units;

  // A short name for logs and the audit trail: "insecure" when not
  // authenticated, else "CN=NAME" or the first SAN, plus ",OU=..." if any.
  std::string Display() const;
};

// Looks up one auth-context property by name: all its values.
using PropertyLookup = std::function<std::vector<std::string>(absl::string_view name)>;

// Builds a PeerIdentity from gRPC auth-context properties
// (x509_common_name, x509_subject, x509_subject_alternative_name, peer_dns,
// peer_uri). `authenticated` is the context's IsPeerAuthenticated().
PeerIdentity IdentityFromProperties(bool authenticated, const PropertyLookup& find);

// The OU values of an RFC 2253 subject such as "CN=a,OU=b+OU=c,O=d"
// (escaped commas and pluses are honoured; values are unescaped).
std::vector<std::string> SubjectOus(absl::string_view subject);

// What a caller may do.
enum class Role { kNone, kAgent, kReadOnly, kAdmin };

// "none", "agent", "read-only", "admin".
const char* RoleName(Role role);

// Whether an AdminService method reads or changes state.
enum class AdminAccess { kRead, kWrite };

// kRead for ListHosts, GetHost, ListVms, GetVm, GetClusterPolicy, ExplainVm,
// GetPlan, WatchDecisions and ListAuditEntries; kWrite for everything else
// (an unknown method is treated as a change).
AdminAccess AccessOf(absl::string_view method);

// Immutable after construction; thread-safe.
class Authorizer {
 public:
  // Everyone may do everything (the --insecure demo).
  static Authorizer Insecure();
  // Rules from `config` (see SecurityConfig; all lists empty: the default
  // OUs). INVALID_ARGUMENT naming the field for an empty entry.
  static absl::StatusOr<Authorizer> FromConfig(const v1::SecurityConfig& config);

  bool insecure() const { return insecure_; }

  // The caller's role (kAdmin for everyone when insecure).
  Role RoleOf(const PeerIdentity& peer) const;

  // OK when `peer` may call AdminService `method`; UNAUTHENTICATED without
  // a certificate, PERMISSION_DENIED naming the identity, role and method
  // otherwise.
  absl::Status AuthorizeAdmin(const PeerIdentity& peer, absl::string_view method) const;

  // OK when `peer` may open the agent stream of `host_id`; UNAUTHENTICATED
  // without a certificate, PERMISSION_DENIED naming the identity and host.
  absl::Status AuthorizeHost(const PeerIdentity& peer, absl::string_view host_id) const;

 private:
  Authorizer() = default;
  static bool Matches(const PeerIdentity& peer, const std::vector<std::string>& identities,
                      const std::vector<std::string>& ous);

  bool insecure_ = false;
  std::vector<std::string> admin_identities_;
  std::vector<std::string> admin_ous_;
  std::vector<std::string> read_only_identities_;
  std::vector<std::string> read_only_ous_;
  std::vector<std::string> agent_ous_;
};

}  // namespace membroker::broker

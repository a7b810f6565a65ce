// The authorizer and identity extraction: pure tables, no TLS.

#include "broker/authz.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <map>

#include "absl/strings/str_cat.h"

namespace membroker::broker {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::IsEmpty;

// What gRPC 1.51 puts in the auth context of a verified dev-ca.sh host cert.
PropertyLookup Props(std::multimap<std::string, std::string> props) {
  return [props](absl::string_view name) {
    std::vector<std::string> out;
    auto range = props.equal_range(std::string(name));
    for (auto it = range.first; it != range.second; ++it) out.push_back(it->second);
    return out;
  };
}

PeerIdentity Host(const std::string& cn, std::vector<std::string> dns = {},
                  std::vector<std::string> uris = {}, std::vector<std::string> ous = {}) {
  PeerIdentity p;
  p.authenticated = true;
  p.common_name = cn;
  p.dns_names = std::move(dns);
  p.uris = std::move(uris);
  p.organizational_units = std::move(ous);
  return p;
}

Authorizer Default() {
  auto a = Authorizer::FromConfig(v1::SecurityConfig());
  EXPECT_TRUE(a.ok());
  return *a;
}

TEST(IdentityTest, FromPropertiesSplitsSansAndReadsOus) {
  PeerIdentity id = IdentityFromProperties(
      true, Props({{"x509_common_name", "kvm-01"},
                   {"x509_subject", "CN=kvm-01,OU=membroker-agent,O=MemBroker dev"},
                   {"x509_subject_alternative_name", "kvm-01"},
                   {"x509_subject_alternative_name", "spiffe://membroker/host/kvm-01"},
                   {"x509_subject_alternative_name", "127.0.0.1"},
                   {"peer_dns", "kvm-01"},
                   {"peer_uri", "spiffe://membroker/host/kvm-01"}}));
  EXPECT_TRUE(id.authenticated);
  EXPECT_EQ(id.common_name, "kvm-01");
  // Each name once, the IP address dropped.
  EXPECT_THAT(id.dns_names, ElementsAre("kvm-01"));
  EXPECT_THAT(id.uris, ElementsAre("spiffe://membroker/host/kvm-01"));
  EXPECT_THAT(id.organizational_units, ElementsAre("membroker-agent"));
  EXPECT_EQ(id.Display(), "CN=kvm-01,OU=membroker-agent");
}

TEST(IdentityTest, PlaintextIsInsecure) {
  PeerIdentity id = IdentityFromProperties(false, Props({}));
  EXPECT_FALSE(id.authenticated);
  EXPECT_EQ(id.Display(), "insecure");
}

TEST(IdentityTest, DisplayWithoutCnAndHostileCharacters) {
  PeerIdentity id = Host("", {"a\nb"});
  EXPECT_EQ(id.Display(), "DNS:a?b");
  PeerIdentity long_cn = Host(std::string(500, 'x'));
  // Bounded: "CN=" + 128 characters + "...".
  EXPECT_EQ(long_cn.Display().size(), 3u + 128u + 3u);
}

TEST(SubjectOusTest, Rfc2253Forms) {
  EXPECT_THAT(SubjectOus("CN=a,OU=one,O=x"), ElementsAre("one"));
  EXPECT_THAT(SubjectOus("CN=a+OU=one,OU=two"), ElementsAre("one", "two"));
  EXPECT_THAT(SubjectOus("OU=with\\,comma,CN=b"), ElementsAre("with,comma"));
  EXPECT_THAT(SubjectOus("ou=lower"), ElementsAre("lower"));
  EXPECT_THAT(SubjectOus("CN=OU=not-an-ou"), IsEmpty());
  EXPECT_THAT(SubjectOus(""), IsEmpty());
}

TEST(AuthorizerTest, DefaultRolesByOu) {
  Authorizer a = Default();
  EXPECT_EQ(a.RoleOf(Host("admin", {}, {}, {"membroker-admin"})), Role::kAdmin);
  EXPECT_EQ(a.RoleOf(Host("read-only", {}, {}, {"membroker-read-only"})), Role::kReadOnly);
  EXPECT_EQ(a.RoleOf(Host("kvm-01", {"kvm-01"}, {}, {"membroker-agent"})), Role::kAgent);
  EXPECT_EQ(a.RoleOf(PeerIdentity()), Role::kNone);
}

TEST(AuthorizerTest, AdminMethodsByRole) {
  Authorizer a = Default();
  const PeerIdentity admin = Host("admin", {}, {}, {"membroker-admin"});
  const PeerIdentity reader = Host("read-only", {}, {}, {"membroker-read-only"});
  const PeerIdentity agent = Host("kvm-01", {"kvm-01"}, {}, {"membroker-agent"});
  struct Row {
    const char* method;
    bool reader_may;
  };
  for (const Row& row :
       {Row{"ListHosts", true}, Row{"GetHost", true}, Row{"ListVms", true}, Row{"GetVm", true},
        Row{"GetClusterPolicy", true}, Row{"ExplainVm", true}, Row{"GetPlan", true},
        Row{"Place", true},
        Row{"WatchDecisions", true}, Row{"ListAuditEntries", true}, Row{"SetVmPolicy", false},
        Row{"ClearVmPolicy", false}, Row{"SetClusterPolicy", false}, Row{"Reserve", false},
        Row{"Release", false}, Row{"ListReservations", true}, Row{"WatchVms", true},
        Row{"WatchHosts", true}, Row{"SomeFutureMethod", false}}) {
    SCOPED_TRACE(row.method);
    EXPECT_TRUE(a.AuthorizeAdmin(admin, row.method).ok());
    absl::Status r = a.AuthorizeAdmin(reader, row.method);
    EXPECT_EQ(r.ok(), row.reader_may);
    if (!row.reader_may) {
      EXPECT_EQ(r.code(), absl::StatusCode::kPermissionDenied);
      EXPECT_THAT(r.message(), HasSubstr("read-only role may not change"));
    }
    absl::Status g = a.AuthorizeAdmin(agent, row.method);
    EXPECT_EQ(g.code(), absl::StatusCode::kPermissionDenied);
    EXPECT_THAT(g.message(), HasSubstr("CN=kvm-01"));
    EXPECT_THAT(g.message(), HasSubstr("role agent"));
    EXPECT_EQ(a.AuthorizeAdmin(PeerIdentity(), row.method).code(),
              absl::StatusCode::kUnauthenticated);
  }
}

TEST(AuthorizerTest, ConfiguredIdentitiesAndOus) {
  v1::SecurityConfig c;
  c.add_admin_identities("ops@example");          // matched as a CN
  c.add_admin_identities("spiffe://corp/admin");  // matched as a URI SAN
  c.add_read_only_ous("sre");
  c.add_agent_ous("hypervisors");
  auto a = Authorizer::FromConfig(c);
  ASSERT_TRUE(a.ok());
  EXPECT_EQ(a->RoleOf(Host("ops@example")), Role::kAdmin);
  EXPECT_EQ(a->RoleOf(Host("x", {}, {"spiffe://corp/admin"})), Role::kAdmin);
  EXPECT_EQ(a->RoleOf(Host("dash", {}, {}, {"sre"})), Role::kReadOnly);
  EXPECT_EQ(a->RoleOf(Host("kvm-01", {}, {}, {"hypervisors"})), Role::kAgent);
  // With agent_ous set, a certificate with none of them has no role; the
  // default OUs no longer apply once anything is configured.
  EXPECT_EQ(a->RoleOf(Host("kvm-01")), Role::kNone);
  EXPECT_EQ(a->RoleOf(Host("admin", {}, {}, {"membroker-admin"})), Role::kNone);
  EXPECT_FALSE(a->AuthorizeHost(Host("kvm-01"), "kvm-01").ok());
}

TEST(AuthorizerTest, EmptyConfigEntryIsRefused) {
  v1::SecurityConfig c;
  c.add_admin_ous("");
  auto a = Authorizer::FromConfig(c);
  EXPECT_EQ(a.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(a.status().message(), HasSubstr("security.admin_ous"));
}

TEST(AuthorizerTest, AgentOnlyForItsOwnHost) {
  Authorizer a = Default();
  EXPECT_TRUE(a.AuthorizeHost(Host("kvm-01"), "kvm-01").ok());         // CN
  EXPECT_TRUE(a.AuthorizeHost(Host("x", {"kvm-02"}), "kvm-02").ok());  // DNS SAN
  EXPECT_TRUE(a.AuthorizeHost(Host("x", {}, {"spiffe://m/host/kvm-03"}), "kvm-03").ok());  // URI
  absl::Status other = a.AuthorizeHost(Host("kvm-01", {"kvm-01"}), "kvm-02");
  EXPECT_EQ(other.code(), absl::StatusCode::kPermissionDenied);
  EXPECT_THAT(other.message(), HasSubstr("CN=kvm-01"));
  EXPECT_THAT(other.message(), HasSubstr("\"kvm-02\""));
  // A URI must end in /host/NAME exactly; a prefix of a name is not a name.
  EXPECT_FALSE(a.AuthorizeHost(Host("x", {}, {"spiffe://m/host/kvm-030"}), "kvm-03").ok());
  EXPECT_FALSE(a.AuthorizeHost(Host("x", {"kvm-01.example"}), "kvm-01").ok());
  EXPECT_FALSE(a.AuthorizeHost(Host(""), "").ok());
  // Admin and read-only certificates are not agents, whatever they name.
  EXPECT_EQ(a.AuthorizeHost(Host("kvm-01", {}, {}, {"membroker-admin"}), "kvm-01").code(),
            absl::StatusCode::kPermissionDenied);
  EXPECT_EQ(a.AuthorizeHost(PeerIdentity(), "kvm-01").code(), absl::StatusCode::kUnauthenticated);
}

TEST(AuthorizerTest, InsecureAllowsEverything) {
  Authorizer a = Authorizer::Insecure();
  EXPECT_TRUE(a.insecure());
  EXPECT_TRUE(a.AuthorizeHost(PeerIdentity(), "any-host").ok());
  EXPECT_TRUE(a.AuthorizeAdmin(PeerIdentity(), "SetClusterPolicy").ok());
  EXPECT_EQ(a.RoleOf(PeerIdentity()), Role::kAdmin);
}

TEST(AccessTest, UnknownMethodIsAWrite) {
  EXPECT_EQ(AccessOf("ListVms"), AdminAccess::kRead);
  EXPECT_EQ(AccessOf("SetVmPolicy"), AdminAccess::kWrite);
  EXPECT_EQ(AccessOf("listvms"), AdminAccess::kWrite);
  EXPECT_EQ(AccessOf(""), AdminAccess::kWrite);
}

}  // namespace
}  // namespace membroker::broker

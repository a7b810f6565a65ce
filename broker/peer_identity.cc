#include "broker/peer_identity.h"

#include <grpcpp/security/auth_context.h>

namespace membroker::broker {

PeerIdentity IdentityOf(const grpc::ServerContextBase& context) {
  std::shared_ptr<const grpc::AuthContext> auth = context.auth_context();
  if (!auth) return PeerIdentity();
  return IdentityFromProperties(auth->IsPeerAuthenticated(), [&auth](absl::string_view name) {
    std::vector<std::string> values;
    for (const grpc::string_ref& v : auth->FindPropertyValues(std::string(name))) {
      values.emplace_back(v.data(), v.size());
    }
    return values;
  });
}

}  // namespace membroker::broker

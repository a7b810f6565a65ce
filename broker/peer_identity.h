#pragma once
// The caller's certificate identity from a gRPC call (the glue between
// grpc::AuthContext and the pure Authorizer).

#include <grpcpp/server_context.h>

#include "broker/authz.h"

namespace membroker::broker {

// The identity the TLS handshake of `context`'s connection verified; not
// authenticated on a plaintext connection. Thread-safe.
PeerIdentity IdentityOf(const grpc::ServerContextBase& context);

}  // namespace membroker::broker

#pragma once
// Transport security shared by the three binaries: the --insecure / --tls-*
// choice, checks of the PEM files, and gRPC credentials that re-read the
// files when they change (certificate rotation without a restart).

#include <grpcpp/security/credentials.h>
#include <grpcpp/security/server_credentials.h>

#include <memory>
#include <optional>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace membroker {

// The PEM files of one side of mutual TLS.
struct TlsFiles {
  std::string cert;  // --tls-cert: this side's certificate (chain)
  std::string key;   // --tls-key: its private key
  std::string ca;    // --tls-ca: the CA that signs the other side
};

// How often the credentials look for changed files by default.
inline constexpr absl::Duration kDefaultTlsReloadInterval = absl::Seconds(10);

// The one rule of all three binaries: either all three TLS files, or
// --insecure, never both, never neither. Returns the files, or nullopt for
// --insecure. INVALID_ARGUMENT naming the flags otherwise (the message says
// how to start).
absl::StatusOr<std::optional<TlsFiles>> PickTransportSecurity(bool insecure, const TlsFiles& files);

// Reads and checks the files now, so that a daemon refuses to start with a
// clear message instead of failing every handshake: the certificate and CA
// must parse as PEM X.509, the key must parse and match the certificate.
// INVALID_ARGUMENT naming the flag and file. An expired or not yet valid
// certificate is reported through `warning` (it may be rotated soon).
absl::Status CheckTlsFiles(const TlsFiles& files, std::string* warning);

// Server credentials that require a client certificate signed by `files.ca`
// and re-read all three files every `reload_interval` (at least 1 s).
std::shared_ptr<grpc::ServerCredentials> MutualTlsServerCredentials(
    const TlsFiles& files, absl::Duration reload_interval = kDefaultTlsReloadInterval);

// Channel credentials that present `files.cert`, verify the server against
// `files.ca` (and its name against the target's host), and re-read the
// files every `reload_interval` (at least 1 s).
std::shared_ptr<grpc::ChannelCredentials> MutualTlsChannelCredentials(
    const TlsFiles& files, absl::Duration reload_interval = kDefaultTlsReloadInterval);

}  // namespace membroker

#include "common/tls.h"

#include <grpcpp/security/tls_certificate_provider.h>
#include <grpcpp/security/tls_credentials_options.h>
#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include <algorithm>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace membroker {
namespace {

struct BioCloser {
  void operator()(BIO* b) const { BIO_free(b); }
};
struct X509Closer {
  void operator()(X509* x) const { X509_free(x); }
};
struct KeyCloser {
  void operator()(EVP_PKEY* k) const { EVP_PKEY_free(k); }
};
using BioPtr = std::unique_ptr<BIO, BioCloser>;
using X509Ptr = std::unique_ptr<X509, X509Closer>;
using KeyPtr = std::unique_ptr<EVP_PKEY, KeyCloser>;

absl::Status FileError(const char* flag, const std::string& path, absl::string_view what) {
  ERR_clear_error();
  return absl::InvalidArgumentError(absl::StrCat(flag, "=", path, ": ", what));
}

absl::StatusOr<BioPtr> Open(const char* flag, const std::string& path) {
  BioPtr bio(BIO_new_file(path.c_str(), "r"));
  if (!bio) return FileError(flag, path, "cannot read the file");
  return bio;
}

// Every certificate in a PEM file (at least one).
absl::StatusOr<std::vector<X509Ptr>> ReadCerts(const char* flag, const std::string& path) {
  auto bio = Open(flag, path);
  if (!bio.ok()) return bio.status();
  std::vector<X509Ptr> certs;
  while (X509* x = PEM_read_bio_X509(bio->get(), nullptr, nullptr, nullptr)) certs.emplace_back(x);
  ERR_clear_error();  // the loop ends on "no start line"
  if (certs.empty()) return FileError(flag, path, "no PEM certificate in the file");
  return certs;
}

int ReloadSeconds(absl::Duration interval) {
  return static_cast<int>(std::max<int64_t>(1, absl::ToInt64Seconds(interval)));
}

// One provider watching all three files; gRPC reloads them every interval
// and keeps the last good pair when a file is half written.
std::shared_ptr<grpc::experimental::FileWatcherCertificateProvider> Provider(
    const TlsFiles& files, absl::Duration interval) {
  return std::make_shared<grpc::experimental::FileWatcherCertificateProvider>(
      files.key, files.cert, files.ca, ReloadSeconds(interval));
}

}  // namespace

absl::StatusOr<std::optional<TlsFiles>> PickTransportSecurity(bool insecure,
                                                              const TlsFiles& files) {
  std::vector<std::string> given, missing;
  (files.cert.empty() ? missing : given).push_back("--tls-cert");
  (files.key.empty() ? missing : given).push_back("--tls-key");
  (files.ca.empty() ? missing : given).push_back("--tls-ca");
  if (insecure) {
    if (!given.empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat("--insecure conflicts with ", absl::StrJoin(given, ", "),
                       ": choose mutual TLS or the plaintext demo mode"));
    }
    return std::optional<TlsFiles>();
  }
  if (given.empty()) {
    return absl::InvalidArgumentError(
        "refusing to run without transport security: give --tls-cert, --tls-key and --tls-ca "
        "(mutual TLS; scripts/dev-ca.sh makes development certificates), or --insecure for a "
        "plaintext local demo");
  }
  if (!missing.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(absl::StrJoin(given, ", "), " given but ",
                                                   absl::StrJoin(missing, ", "),
                                                   " missing: mutual TLS needs all three"));
  }
  return std::optional<TlsFiles>(files);
}

absl::Status CheckTlsFiles(const TlsFiles& files, std::string* warning) {
  auto certs = ReadCerts("--tls-cert", files.cert);
  if (!certs.ok()) return certs.status();
  auto cas = ReadCerts("--tls-ca", files.ca);
  if (!cas.ok()) return cas.status();
  auto key_bio = Open("--tls-key", files.key);
  if (!key_bio.ok()) return key_bio.status();
  KeyPtr key(PEM_read_bio_PrivateKey(key_bio->get(), nullptr, nullptr, nullptr));
  if (!key) return FileError("--tls-key", files.key, "no PEM private key in the file");
  X509* leaf = certs->front().get();
  if (X509_check_private_key(leaf, key.get()) != 1) {
    return FileError("--tls-key", files.key,
                     absl::StrCat("does not match the certificate in ", files.cert));
  }
  if (warning != nullptr) {
    warning->clear();
    if (X509_cmp_current_time(X509_get0_notAfter(leaf)) < 0) {
      *warning = absl::StrCat("--tls-cert=", files.cert,
                              ": the certificate has expired; handshakes will fail until it is "
                              "replaced");
    } else if (X509_cmp_current_time(X509_get0_notBefore(leaf)) > 0) {
      *warning = absl::StrCat("--tls-cert=", files.cert, ": the certificate is not valid yet");
    }
  }
  ERR_clear_error();
  return absl::OkStatus();
}

std::shared_ptr<grpc::ServerCredentials> MutualTlsServerCredentials(const TlsFiles& files,
                                                                    absl::Duration reload) {
  grpc::experimental::TlsServerCredentialsOptions options(Provider(files, reload));
  options.watch_root_certs();
  options.watch_identity_key_cert_pairs();
  options.set_cert_request_type(GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY);
  return grpc::experimental::TlsServerCredentials(options);
}

std::shared_ptr<grpc::ChannelCredentials> MutualTlsChannelCredentials(const TlsFiles& files,
                                                                      absl::Duration reload) {
  grpc::experimental::TlsChannelCredentialsOptions options;
  options.set_certificate_provider(Provider(files, reload));
  options.watch_root_certs();
  options.watch_identity_key_cert_pairs();
  options.set_verify_server_certs(true);
  return grpc::experimental::TlsCredentials(options);
}

}  // namespace membroker

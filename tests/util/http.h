#pragma once
// A minimal HTTP/1.0 GET against a loopback port, for end-to-end tests that
// read /metrics or a Prometheus API without a client library.

#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace membroker::testing {

// The reply to GET http://127.0.0.1:`port``target` (target starts with
// "/", query included). `status` is the HTTP status code; `body` what
// follows the headers.
struct HttpReply {
  int status = 0;
  std::string body;
};

// Sends the request and reads the reply until the server closes, each
// socket operation bounded by `timeout`. UNAVAILABLE when nothing answers;
// DATA_LOSS for a reply that is not HTTP.
absl::StatusOr<HttpReply> HttpGet(int port, const std::string& target,
                                  absl::Duration timeout = absl::Seconds(5));

// Percent-encodes `s` for a URL query value (RFC 3986 unreserved kept).
std::string UrlEncode(const std::string& s);

}  // namespace membroker::testing

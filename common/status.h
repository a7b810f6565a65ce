#pragma once
// Status helpers: the RETURN_IF_ERROR / ASSIGN_OR_RETURN macros (Debian's
// Abseil has none) and the one conversion between absl::Status and
// grpc::Status.

#include <grpcpp/support/status.h>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

#define MB_CONCAT_INNER_(a, b) a##b
#define MB_CONCAT_(a, b) MB_CONCAT_INNER_(a, b)

// Returns from the enclosing function if `expr` yields a non-OK status.
#define RETURN_IF_ERROR(expr)                \
  do {                                       \
    ::absl::Status mb_status_ = (expr);      \
    if (!mb_status_.ok()) return mb_status_; \
  } while (0)

#define MB_ASSIGN_OR_RETURN_IMPL_(tmp, lhs, expr) \
  auto tmp = (expr);                              \
  if (!tmp.ok()) return tmp.status();             \
  lhs = std::move(tmp).value()

// `ASSIGN_OR_RETURN(auto x, StatusOrFn());` assigns the value or returns the
// error status.
#define ASSIGN_OR_RETURN(lhs, expr) \
  MB_ASSIGN_OR_RETURN_IMPL_(MB_CONCAT_(mb_statusor_, __LINE__), lhs, expr)

namespace membroker {

// Maps an absl::Status to a grpc::Status with the same code and message.
grpc::Status ToGrpcStatus(const absl::Status& status);

// Maps a grpc::Status to an absl::Status with the same code and message.
absl::Status FromGrpcStatus(const grpc::Status& status);

}  // namespace membroker

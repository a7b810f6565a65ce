#pragma once
// Sizes and durations as operators write them: "512MiB", "4GiB", "1.5G",
// "1048576". Binary suffixes (KiB, MiB, GiB, TiB, PiB) are powers of 1024;
// decimal ones (K/KB, M/MB, G/GB, T/TB, P/PB) powers of 1000. What
// FormatBytes prints parses back.

#include <cstddef>
#include <cstdint>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"

namespace membroker {

// Parses a size with an optional unit. INVALID_ARGUMENT for anything else:
// negative, empty, unknown unit, or more than 2^63 bytes.
absl::StatusOr<uint64_t> ParseBytes(absl::string_view text);

// Formats bytes for people: "1.50 GiB", "512 MiB", "0 B".
std::string FormatBytes(uint64_t bytes);

// Parses a duration ("1s", "250ms", "2m"). INVALID_ARGUMENT when malformed
// or negative.
absl::StatusOr<absl::Duration> ParseDurationArg(absl::string_view text);

// Checks "HOST:PORT" (IPv4, [IPv6], or a name; port 0..65535).
absl::Status ValidateHostPort(absl::string_view address);

// The longest host id (a DNS name's limit).
inline constexpr size_t kMaxHostIdChars = 253;

// Checks a host id: 1..kMaxHostIdChars characters of [A-Za-z0-9._-].
// Errors quote at most the id's first 64 characters.
absl::Status ValidateHostId(absl::string_view host_id);

}  // namespace membroker

#pragma once
// Logging goes through spdlog (Debian's Abseil has no absl/log).

#include <spdlog/spdlog.h>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"

namespace membroker {

// Sets the global log level from "trace|debug|info|warn|error|off".
// INVALID_ARGUMENT for any other word.
absl::Status SetLogLevel(absl::string_view level);

}  // namespace membroker

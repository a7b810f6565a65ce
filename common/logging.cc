#include "common/logging.h"

#include <string>

#include "absl/strings/str_cat.h"

namespace membroker {

absl::Status SetLogLevel(absl::string_view level) {
  const std::string l(level);
  if (l == "trace") spdlog::set_level(spdlog::level::trace);
  else if (l == "debug") spdlog::set_level(spdlog::level::debug);
  else if (l == "info") spdlog::set_level(spdlog::level::info);
  else if (l == "warn") spdlog::set_level(spdlog::level::warn);
  else if (l == "error") spdlog::set_level(spdlog::level::err);
  else if (l == "off") spdlog::set_level(spdlog::level::off);
  else
    return absl::InvalidArgumentError(
        absl::StrCat("--log-level=", level, ": use trace, debug, info, warn, error or off"));
  return absl::OkStatus();
}

}  // namespace membroker

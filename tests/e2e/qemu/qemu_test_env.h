#pragma once
// What every real-QEMU test needs besides a guest: CI detection, the
// environment, prerequisites that skip outside CI and fail in it, the
// balloon's size read through a QMP socket of the test's own, and what a
// guest's console says (OOM kills, its last line).

#include <unistd.h>

#include <cstdint>
#include <cstdlib>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "node-agent/hypervisor/qmp_client.h"

namespace membroker::e2e {

// True when the CI variable is "true": missing prerequisites then fail.
inline bool InCi() {
  const char* ci = std::getenv("CI");
  return ci != nullptr && std::string(ci) == "true";
}

// The environment variable `name`, or `fallback` when unset or empty.
inline std::string Env(const char* name, const std::string& fallback) {
  const char* v = std::getenv(name);
  return v != nullptr && *v != '\0' ? v : fallback;
}

// Whether `program` is an executable in a directory of $PATH.
inline bool OnPath(const std::string& program) {
  for (absl::string_view dir : absl::StrSplit(Env("PATH", "/usr/bin:/bin"), ':')) {
    if (access(absl::StrCat(dir, "/", program).c_str(), X_OK) == 0) return true;
  }
  return false;
}

// query-balloon's actual through the test's own QMP socket (0 on error).
inline uint64_t WatchActual(agent::QmpClient& client, const std::string& socket) {
  if (!client.connected() && !client.Connect(socket).ok()) return 0;
  auto reply = client.Execute("query-balloon");
  if (!reply.ok() || reply->kind_case() != google::protobuf::Value::kStructValue) return 0;
  auto it = reply->struct_value().fields().find("actual");
  if (it == reply->struct_value().fields().end()) return 0;
  return static_cast<uint64_t>(it->second.number_value());
}

// The kernel's OOM-killer lines in a console: each kill prints one
// "Killed process" line (and "Out of memory" on most kernels).
inline int OomKills(const std::string& console) {
  int kills = 0;
  for (size_t at = console.find("Killed process"); at != std::string::npos;
       at = console.find("Killed process", at + 1)) {
    ++kills;
  }
  if (kills == 0 && console.find("Out of memory") != std::string::npos) kills = 1;
  return kills;
}

// The last non-empty line of a console.
inline std::string LastLine(const std::string& console) {
  size_t end = console.find_last_not_of("\r\n");
  if (end == std::string::npos) return "";
  size_t begin = console.find_last_of('\n', end);
  begin = begin == std::string::npos ? 0 : begin + 1;
  return console.substr(begin, end + 1 - begin);
}

}  // namespace membroker::e2e

// Skips (outside CI) or fails (in CI) the test when a prerequisite is
// missing.
#define MB_REQUIRE(cond, what)                                                   \
  do {                                                                           \
    if (!(cond)) {                                                               \
      if (::membroker::e2e::InCi()) FAIL() << "missing in CI: " << (what);       \
      GTEST_SKIP() << "skipped: " << (what) << " (set CI=true to make it fail)"; \
    }                                                                            \
  } while (0)

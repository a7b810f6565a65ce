#include "node-agent/guest_console.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <vector>

#include "absl/strings/str_cat.h"
#include "spdlog/spdlog.h"

namespace membroker::agent {
namespace {

constexpr absl::string_view kKilled = "Killed process ";
// Longer unfinished lines are cut: a kill line is far shorter.
constexpr size_t kMaxPartialBytes = 4096;

}  // namespace

uint64_t CountOomKillLines(absl::string_view text) {
  uint64_t kills = 0;
  for (size_t at = text.find(kKilled); at != absl::string_view::npos;
       at = text.find(kKilled, at + kKilled.size())) {
    const size_t digit = at + kKilled.size();
    if (digit < text.size() && std::isdigit(static_cast<unsigned char>(text[digit]))) ++kills;
  }
  return kills;
}

absl::StatusOr<std::map<std::string, std::string>> ParseConsoleLogs(
    const std::vector<std::string>& entries) {
  std::map<std::string, std::string> out;
  for (const std::string& e : entries) {
    const size_t eq = e.find('=');
    if (eq == std::string::npos || eq == 0 || eq + 1 == e.size()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "--guest-console-logs: \"", e, "\" is not NAME=PATH (a VM name and its console log)"));
    }
    const std::string name = e.substr(0, eq);
    if (!out.emplace(name, e.substr(eq + 1)).second) {
      return absl::InvalidArgumentError(
          absl::StrCat("--guest-console-logs: VM \"", name, "\" is given twice"));
    }
  }
  return out;
}

GuestConsoleOomCounter::GuestConsoleOomCounter(std::map<std::string, std::string> logs,
                                               uint64_t max_read_bytes)
    : max_read_bytes_(max_read_bytes) {
  for (auto& [name, path] : logs) logs_[name].path = std::move(path);
}

std::optional<uint64_t> GuestConsoleOomCounter::Poll(const std::string& name) {
  absl::MutexLock lock(&mu_);
  auto it = logs_.find(name);
  if (it == logs_.end()) return std::nullopt;
  LogState& log = it->second;
  const int fd = ::open(log.path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  if (fd < 0) return log.readable ? std::optional<uint64_t>(log.kills) : std::nullopt;
  struct stat st {};
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    return log.readable ? std::optional<uint64_t>(log.kills) : std::nullopt;
  }
  const uint64_t size = static_cast<uint64_t>(st.st_size);
  if (log.readable && (static_cast<uint64_t>(st.st_ino) != log.inode || size < log.offset)) {
    // Rotated or truncated: a new log, read from its start; the kills
    // already counted stay counted.
    spdlog::info("VM {}: console log {} was replaced or truncated; reading it from the start",
                 name, log.path);
    log.offset = 0;
    log.partial.clear();
  }
  log.inode = static_cast<uint64_t>(st.st_ino);
  log.readable = true;
  const uint64_t want = std::min(size - std::min(size, log.offset), max_read_bytes_);
  std::vector<char> buf(static_cast<size_t>(want));
  size_t got = 0;
  while (got < buf.size()) {
    const ssize_t n = ::pread(fd, buf.data() + got, buf.size() - got,
                              static_cast<off_t>(log.offset + got));
    if (n <= 0) break;
    got += static_cast<size_t>(n);
  }
  ::close(fd);
  log.offset += got;
  std::string text = log.partial;
  text.append(buf.data(), got);
  const size_t last_newline = text.rfind('\n');
  if (last_newline == std::string::npos) {
    log.partial = text.size() > kMaxPartialBytes ? text.substr(text.size() - kMaxPartialBytes) : text;
    return log.kills;
  }
  log.kills += CountOomKillLines(absl::string_view(text).substr(0, last_newline + 1));
  log.partial = text.substr(last_newline + 1);
  if (log.partial.size() > kMaxPartialBytes) {
    log.partial = log.partial.substr(log.partial.size() - kMaxPartialBytes);
  }
  return log.kills;
}

}  // namespace membroker::agent

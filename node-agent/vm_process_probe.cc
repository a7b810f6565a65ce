#include "node-agent/vm_process_probe.h"

#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"

namespace membroker::agent {
namespace {

// Reads at most `limit` bytes of `path`. NOT_FOUND when it cannot be opened.
absl::StatusOr<std::string> ReadSmallFile(const std::string& path, size_t limit) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat(path, ": ", std::strerror(errno)));
  std::string text(limit, '\0');
  in.read(text.data(), static_cast<std::streamsize>(limit));
  text.resize(static_cast<size_t>(in.gcount()));
  return text;
}

}  // namespace

ProcVmProcessProbe::ProcVmProcessProbe(std::string proc_root) : proc_root_(std::move(proc_root)) {}

absl::StatusOr<uint64_t> ProcVmProcessProbe::ResidentBytes(int64_t pid) const {
  if (pid <= 0) return absl::InvalidArgumentError(absl::StrCat("pid ", pid, " is not valid"));
  // /proc/PID/status is a few KiB.
  absl::StatusOr<std::string> text =
      ReadSmallFile(absl::StrCat(proc_root_, "/", pid, "/status"), 64 * 1024);
  if (!text.ok()) return text.status();
  return ParseVmRssBytes(*text);
}

absl::StatusOr<uint64_t> ParseVmRssBytes(absl::string_view status_text) {
  for (absl::string_view line : absl::StrSplit(status_text, '\n')) {
    if (!absl::ConsumePrefix(&line, "VmRSS:")) continue;
    line = absl::StripAsciiWhitespace(line);
    if (!absl::ConsumeSuffix(&line, "kB")) {
      return absl::DataLossError("VmRSS: no kB unit");
    }
    uint64_t kib = 0;
    if (!absl::SimpleAtoi(absl::StripAsciiWhitespace(line), &kib) || kib > (UINT64_MAX >> 10)) {
      return absl::DataLossError("VmRSS: not a number of kB");
    }
    return kib << 10;
  }
  return absl::DataLossError("no VmRSS line");
}

absl::StatusOr<int64_t> ParsePidFile(absl::string_view text) {
  absl::string_view trimmed = absl::StripAsciiWhitespace(text);
  int64_t pid = 0;
  if (trimmed.empty() || !absl::SimpleAtoi(trimmed, &pid) || pid <= 0 ||
      trimmed.find_first_not_of("0123456789") != absl::string_view::npos) {
    return absl::InvalidArgumentError("pid file: not one positive decimal pid");
  }
  return pid;
}

absl::StatusOr<int64_t> ReadPidFile(const std::string& path) {
  absl::StatusOr<std::string> text = ReadSmallFile(path, 64);
  if (!text.ok()) return text.status();
  absl::StatusOr<int64_t> pid = ParsePidFile(*text);
  if (!pid.ok()) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": ", pid.status().message()));
  }
  return pid;
}

}  // namespace membroker::agent

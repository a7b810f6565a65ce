#include "node-agent/host_probe.h"

#include <cerrno>
#include <cmath>
#include <fstream>
#include <limits>
#include <sstream>
#include <utility>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "common/status.h"

namespace membroker::agent {
namespace {

constexpr uint64_t kMax = std::numeric_limits<uint64_t>::max();

absl::StatusOr<uint64_t> ParseMemInfoValue(absl::string_view field, absl::string_view rest) {
  std::vector<absl::string_view> parts =
      absl::StrSplit(absl::StripAsciiWhitespace(rest), ' ', absl::SkipEmpty());
  if (parts.empty() || parts.size() > 2) {
    return absl::InvalidArgumentError(
        absl::StrCat("/proc/meminfo: ", field, ": malformed value \"", rest, "\""));
  }
  uint64_t value = 0;
  if (!absl::SimpleAtoi(parts[0], &value)) {
    return absl::InvalidArgumentError(
        absl::StrCat("/proc/meminfo: ", field, ": not a number: \"", parts[0], "\""));
  }
  uint64_t scale = 1;
  if (parts.size() == 2) {
    if (parts[1] != "kB") {
      return absl::InvalidArgumentError(
          absl::StrCat("/proc/meminfo: ", field, ": unknown unit \"", parts[1], "\""));
    }
    scale = 1024;
  }
  if (value > kMax / scale) {
    return absl::InvalidArgumentError(absl::StrCat("/proc/meminfo: ", field, ": value overflows"));
  }
  return value * scale;
}

// Parses "avg10=0.00 avg60=0.00 avg300=0.00 total=123" after the line's kind.
absl::Status ParsePressureLine(absl::string_view kind, absl::string_view rest, double* avg10,
                               double* seconds_total) {
  bool have_avg10 = false;
  bool have_total = false;
  for (absl::string_view token : absl::StrSplit(rest, ' ', absl::SkipEmpty())) {
    std::pair<absl::string_view, absl::string_view> kv = absl::StrSplit(token, absl::MaxSplits('=', 1));
    if (kv.first.empty() || kv.second.empty()) {
      return absl::InvalidArgumentError(absl::StrCat("/proc/pressure/memory: ", kind,
                                                     ": malformed field \"", token, "\""));
    }
    if (absl::StartsWith(kv.first, "avg")) {
      double value = 0;
      if (!absl::SimpleAtod(kv.second, &value) || !std::isfinite(value) || value < 0 ||
          value > 100) {
        return absl::InvalidArgumentError(absl::StrCat("/proc/pressure/memory: ", kind, " ",
                                                       kv.first, ": not a percentage: \"",
                                                       kv.second, "\""));
      }
      if (kv.first == "avg10") {
        *avg10 = value;
        have_avg10 = true;
      }
    } else if (kv.first == "total") {
      uint64_t micros = 0;
      if (!absl::SimpleAtoi(kv.second, &micros)) {
        return absl::InvalidArgumentError(absl::StrCat(
            "/proc/pressure/memory: ", kind, " total: not an integer: \"", kv.second, "\""));
      }
      *seconds_total = static_cast<double>(micros) / 1e6;
      have_total = true;
    }
  }
  if (!have_avg10) {
    return absl::InvalidArgumentError(
        absl::StrCat("/proc/pressure/memory: ", kind, ": avg10 missing"));
  }
  if (!have_total) {
    return absl::InvalidArgumentError(
        absl::StrCat("/proc/pressure/memory: ", kind, ": total missing"));
  }
  return absl::OkStatus();
}

}  // namespace

FileReader RealFileReader() {
  return [](const std::string& path) -> absl::StatusOr<std::string> {
    std::ifstream in(path);
    if (!in) {
      if (errno == ENOENT) return absl::NotFoundError(absl::StrCat(path, ": no such file"));
      return absl::UnavailableError(absl::StrCat(path, ": cannot open"));
    }
    std::ostringstream buffer;
    buffer << in.rdbuf();
    if (in.bad()) return absl::UnavailableError(absl::StrCat(path, ": read error"));
    return buffer.str();
  };
}

absl::StatusOr<MemInfo> ParseMemInfo(absl::string_view text) {
  absl::flat_hash_map<std::string, uint64_t*> wanted;
  MemInfo info;
  wanted["MemTotal"] = &info.mem_total_bytes;
  wanted["MemAvailable"] = &info.mem_available_bytes;
  wanted["SwapTotal"] = &info.swap_total_bytes;
  wanted["SwapFree"] = &info.swap_free_bytes;
  absl::flat_hash_map<std::string, bool> seen;
  for (absl::string_view line : absl::StrSplit(text, '\n', absl::SkipWhitespace())) {
    const size_t colon = line.find(':');
    if (colon == absl::string_view::npos) continue;  // Not a field line.
    const std::string field(absl::StripAsciiWhitespace(line.substr(0, colon)));
    auto it = wanted.find(field);
    if (it == wanted.end()) continue;
    if (seen[field]) {
      return absl::InvalidArgumentError(absl::StrCat("/proc/meminfo: ", field, ": appears twice"));
    }
    seen[field] = true;
    ASSIGN_OR_RETURN(*it->second, ParseMemInfoValue(field, line.substr(colon + 1)));
  }
  for (const char* required : {"MemTotal", "MemAvailable"}) {
    if (!seen[required]) {
      return absl::InvalidArgumentError(absl::StrCat("/proc/meminfo: ", required, " missing"));
    }
  }
  if (info.mem_total_bytes == 0) {
    return absl::InvalidArgumentError("/proc/meminfo: MemTotal is 0");
  }
  if (info.mem_available_bytes > info.mem_total_bytes) {
    return absl::InvalidArgumentError("/proc/meminfo: MemAvailable is above MemTotal");
  }
  if (info.swap_free_bytes > info.swap_total_bytes) {
    return absl::InvalidArgumentError("/proc/meminfo: SwapFree is above SwapTotal");
  }
  return info;
}

absl::StatusOr<MemoryPressure> ParseMemoryPressure(absl::string_view text) {
  MemoryPressure pressure;
  bool have_some = false;
  bool have_full = false;
  for (absl::string_view line : absl::StrSplit(text, '\n', absl::SkipWhitespace())) {
    std::pair<absl::string_view, absl::string_view> kind_rest =
        absl::StrSplit(absl::StripAsciiWhitespace(line), absl::MaxSplits(' ', 1));
    if (kind_rest.first == "some") {
      if (have_some) return absl::InvalidArgumentError("/proc/pressure/memory: some appears twice");
      RETURN_IF_ERROR(ParsePressureLine("some", kind_rest.second, &pressure.some_avg10_percent,
                                        &pressure.some_seconds_total));
      have_some = true;
    } else if (kind_rest.first == "full") {
      if (have_full) return absl::InvalidArgumentError("/proc/pressure/memory: full appears twice");
      RETURN_IF_ERROR(ParsePressureLine("full", kind_rest.second, &pressure.full_avg10_percent,
                                        &pressure.full_seconds_total));
      have_full = true;
    } else {
      return absl::InvalidArgumentError(absl::StrCat(
          "/proc/pressure/memory: unexpected line \"", line, "\" (want some/full)"));
    }
  }
  if (!have_some) return absl::InvalidArgumentError("/proc/pressure/memory: some line missing");
  return pressure;
}

HostProbe::HostProbe(FileReader reader, std::string proc_root)
    : reader_(std::move(reader)), proc_root_(std::move(proc_root)) {}

absl::StatusOr<HostMemorySample> HostProbe::Read() const {
  HostMemorySample sample;
  ASSIGN_OR_RETURN(std::string meminfo, reader_(proc_root_ + "/meminfo"));
  ASSIGN_OR_RETURN(sample.meminfo, ParseMemInfo(meminfo));
  absl::StatusOr<std::string> psi = reader_(proc_root_ + "/pressure/memory");
  // A kernel without PSI has no file, or one that cannot be read
  // (psi=0 on the command line): the sample simply has no pressure.
  if (!psi.ok()) return sample;
  ASSIGN_OR_RETURN(sample.pressure, ParseMemoryPressure(*psi));
  sample.pressure_available = true;
  return sample;
}

HostMemorySample SimHostSample(uint64_t host_total_bytes, const std::vector<VmStatus>& vms) {
  HostMemorySample sample;
  uint64_t used = 0;
  for (const VmStatus& vm : vms) {
    used = vm.actual_bytes > kMax - used ? kMax : used + vm.actual_bytes;
  }
  sample.meminfo.mem_total_bytes = host_total_bytes;
  sample.meminfo.mem_available_bytes = used >= host_total_bytes ? 0 : host_total_bytes - used;
  return sample;
}

}  // namespace membroker::agent

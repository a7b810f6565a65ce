#include "common/units.h"

#include <cctype>
#include <cmath>
#include <limits>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace membroker {

absl::StatusOr<uint64_t> ParseBytes(absl::string_view text) {
  absl::string_view s = absl::StripAsciiWhitespace(text);
  if (s.empty()) return absl::InvalidArgumentError("empty size");
  size_t i = 0;
  while (i < s.size() && (std::isdigit(static_cast<unsigned char>(s[i])) || s[i] == '.')) ++i;
  absl::string_view number = s.substr(0, i);
  std::string unit = absl::AsciiStrToLower(absl::StripAsciiWhitespace(s.substr(i)));
  if (number.empty()) {
    return absl::InvalidArgumentError(absl::StrCat("size \"", text, "\" does not start with a number"));
  }
  double multiplier = 0;
  if (unit.empty() || unit == "b") multiplier = 1;
  else if (unit == "k" || unit == "kb") multiplier = 1e3;
  else if (unit == "m" || unit == "mb") multiplier = 1e6;
  else if (unit == "g" || unit == "gb") multiplier = 1e9;
  else if (unit == "t" || unit == "tb") multiplier = 1e12;
  else if (unit == "kib" || unit == "ki") multiplier = 1024.0;
  else if (unit == "mib" || unit == "mi") multiplier = 1024.0 * 1024;
  else if (unit == "gib" || unit == "gi") multiplier = 1024.0 * 1024 * 1024;
  else if (unit == "tib" || unit == "ti") multiplier = 1024.0 * 1024 * 1024 * 1024;
  else if (unit == "p" || unit == "pb") multiplier = 1e15;
  else if (unit == "pib" || unit == "pi") multiplier = 1024.0 * 1024 * 1024 * 1024 * 1024;
  else {
    return absl::InvalidArgumentError(absl::StrCat(
        "size \"", text, "\" has unknown unit \"", unit,
        "\" (use B, KiB, MiB, GiB, TiB, PiB, or K, M, G, T, P)"));
  }
  if (number.find('.') == absl::string_view::npos && multiplier == 1) {
    uint64_t v = 0;
    if (!absl::SimpleAtoi(number, &v) || v > (uint64_t{1} << 63)) {
      return absl::InvalidArgumentError(absl::StrCat("size \"", text, "\" is out of range"));
    }
    return v;
  }
  double v = 0;
  if (!absl::SimpleAtod(number, &v) || !std::isfinite(v)) {
    return absl::InvalidArgumentError(absl::StrCat("size \"", text, "\" is not a number"));
  }
  double bytes = std::round(v * multiplier);
  if (bytes < 0 || bytes > 9.2e18) {
    return absl::InvalidArgumentError(absl::StrCat("size \"", text, "\" is out of range"));
  }
  return static_cast<uint64_t>(bytes);
}

std::string FormatBytes(uint64_t bytes) {
  static const char* kUnits[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB"};
  double v = static_cast<double>(bytes);
  int u = 0;
  while (v >= 1024.0 && u < 5) {
    v /= 1024.0;
    ++u;
  }
  if (u == 0) return absl::StrCat(bytes, " B");
  if (v == std::floor(v)) return absl::StrFormat("%.0f %s", v, kUnits[u]);
  return absl::StrFormat("%.2f %s", v, kUnits[u]);
}

absl::StatusOr<absl::Duration> ParseDurationArg(absl::string_view text) {
  absl::Duration d;
  std::string s(absl::StripAsciiWhitespace(text));
  if (s.empty() || !absl::ParseDuration(s, &d) || d == absl::InfiniteDuration()) {
    return absl::InvalidArgumentError(
        absl::StrCat("duration \"", text, "\" is malformed (use e.g. 500ms, 2s, 1m)"));
  }
  if (d < absl::ZeroDuration()) {
    return absl::InvalidArgumentError(absl::StrCat("duration \"", text, "\" is negative"));
  }
  return d;
}

absl::Status ValidateHostPort(absl::string_view address) {
  size_t colon = address.rfind(':');
  if (address.empty() || colon == absl::string_view::npos || colon == 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("address \"", address, "\" is not HOST:PORT"));
  }
  absl::string_view host = address.substr(0, colon);
  absl::string_view port = address.substr(colon + 1);
  int p = -1;
  if (port.empty() || !absl::SimpleAtoi(port, &p) || p < 0 || p > 65535) {
    return absl::InvalidArgumentError(
        absl::StrCat("address \"", address, "\" has a bad port (0..65535)"));
  }
  if (host.front() == '[') {
    if (host.back() != ']' || host.size() < 3) {
      return absl::InvalidArgumentError(absl::StrCat("address \"", address, "\" has a bad IPv6 host"));
    }
    return absl::OkStatus();
  }
  for (char c : host) {
    if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '-' || c == '_')) {
      return absl::InvalidArgumentError(
          absl::StrCat("address \"", address, "\" has a bad host name"));
    }
  }
  return absl::OkStatus();
}

absl::Status ValidateHostId(absl::string_view host_id) {
  if (host_id.empty() || host_id.size() > kMaxHostIdChars) {
    return absl::InvalidArgumentError(
        absl::StrCat("host_id must be 1..", kMaxHostIdChars, " characters"));
  }
  for (char c : host_id) {
    if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '-' || c == '_')) {
      // The id is the caller's input: quote a short prefix, printable only.
      std::string shown;
      for (char q : host_id.substr(0, 64)) shown.push_back(q >= 0x20 && q < 0x7f ? q : '?');
      return absl::InvalidArgumentError(
          absl::StrCat("host_id \"", shown, host_id.size() > 64 ? "..." : "",
                       "\" may only contain letters, digits, '.', '-' and '_'"));
    }
  }
  return absl::OkStatus();
}

}  // namespace membroker

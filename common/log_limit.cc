#include "common/log_limit.h"

#include "absl/strings/str_cat.h"

namespace membroker {

std::string Truncate(absl::string_view text, size_t max_chars) {
  if (text.size() <= max_chars) return std::string(text);
  size_t cut = max_chars;
  // Do not split a multi-byte UTF-8 character (continuation bytes are
  // 10xxxxxx): the result may go into a protobuf string.
  while (cut > 0 && (static_cast<unsigned char>(text[cut]) & 0xC0) == 0x80) --cut;
  return absl::StrCat(text.substr(0, cut), "...");
}

std::string QuoteInput(absl::string_view text, size_t max_chars) {
  absl::string_view shown = text;
  if (text.size() > max_chars) {
    size_t cut = max_chars;
    // Do not split a multi-byte UTF-8 character (continuation bytes are
    // 10xxxxxx).
    while (cut > 0 && (static_cast<unsigned char>(text[cut]) & 0xC0) == 0x80) --cut;
    shown = text.substr(0, cut);
  }
  std::string out;
  out.reserve(shown.size() + 24);
  for (char c : shown) {
    const auto u = static_cast<unsigned char>(c);
    out.push_back(u < 0x20 || u == 0x7f ? '?' : c);
  }
  if (shown.size() < text.size()) absl::StrAppend(&out, "...(", text.size(), " bytes)");
  return out;
}

std::string SummarizeItems(const std::vector<std::pair<std::string, std::string>>& items,
                           size_t max_items, size_t max_chars) {
  std::string out;
  size_t shown = 0;
  for (const auto& [key, value] : items) {
    if (shown == max_items) break;
    absl::StrAppend(&out, shown == 0 ? "" : "; ", Truncate(key, max_chars), ": ",
                    Truncate(value, max_chars));
    ++shown;
  }
  if (items.size() > shown) absl::StrAppend(&out, " (+", items.size() - shown, " more)");
  return out;
}

LogLimiter::LogLimiter(const Clock* clock, int burst, absl::Duration window, size_t max_keys)
    : clock_(clock), burst_(burst), window_(window), max_keys_(max_keys) {}

bool LogLimiter::Allow(absl::string_view key, uint64_t* suppressed) {
  const absl::Time now = clock_->MonotonicNow();
  absl::MutexLock lock(&mu_);
  auto it = windows_.find(key);
  if (it == windows_.end()) {
    // Too many distinct keys (e.g. one per untrusted name): share one.
    if (windows_.size() >= max_keys_) key = "";
    it = windows_.try_emplace(std::string(key)).first;
  }
  Window& w = it->second;
  if (now - w.start >= window_) {
    w.start = now;
    w.lines = 0;
  }
  if (w.lines >= burst_) {
    ++w.suppressed;
    ++suppressed_total_;
    return false;
  }
  ++w.lines;
  if (suppressed) *suppressed = w.suppressed;
  w.suppressed = 0;
  return true;
}

uint64_t LogLimiter::suppressed_total() const {
  absl::MutexLock lock(&mu_);
  return suppressed_total_;
}

}  // namespace membroker

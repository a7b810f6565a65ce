#pragma once
// Helpers shared by the libFuzzer targets in this directory: a reader that
// turns the fuzzer's bytes into bounded numbers and strings (so one target
// builds with gcc for the corpus replay test and with clang for libFuzzer),
// and FUZZ_CHECK, which reports a broken invariant and aborts (libFuzzer
// saves the input as a crash).

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "absl/strings/string_view.h"

// Aborts with the failed condition and a message when `cond` is false.
#define FUZZ_CHECK(cond, ...)                                                           \
  do {                                                                                  \
    if (!(cond)) {                                                                      \
      std::fprintf(stderr, "%s:%d: invariant broken: %s: ", __FILE__, __LINE__, #cond); \
      std::fprintf(stderr, __VA_ARGS__);                                                \
      std::fprintf(stderr, "\n");                                                       \
      std::abort();                                                                     \
    }                                                                                   \
  } while (0)

namespace membroker::fuzz {

// Reads bounded values from the front of a byte string; past its end every
// value is the lowest allowed. Not thread-safe (one per input).
class FuzzInput {
 public:
  FuzzInput(const uint8_t* data, size_t size) : data_(data), size_(size) {}

  // A value in [lo, hi] (lo <= hi) from up to 8 bytes.
  uint64_t Range(uint64_t lo, uint64_t hi) {
    const uint64_t span = hi - lo;
    uint64_t v = 0;
    for (uint64_t s = span; s != 0 && pos_ < size_; s >>= 8) v = (v << 8) | data_[pos_++];
    if (span == UINT64_MAX) return v;
    return lo + v % (span + 1);
  }

  bool Bool() { return Range(0, 1) == 1; }

  // A double in [lo, hi] in 1/1000 steps of the span.
  double Real(double lo, double hi) {
    return lo + (hi - lo) * static_cast<double>(Range(0, 1000)) / 1000.0;
  }

  // A string of up to `max_size` bytes: a length byte, then the bytes.
  std::string String(size_t max_size) {
    size_t n = Range(0, max_size);
    if (n > size_ - pos_) n = size_ - pos_;
    std::string s(reinterpret_cast<const char*>(data_ + pos_), n);
    pos_ += n;
    return s;
  }

  // What is left, consumed.
  absl::string_view Rest() {
    absl::string_view s(reinterpret_cast<const char*>(data_ + pos_), size_ - pos_);
    pos_ = size_;
    return s;
  }

  bool empty() const { return pos_ >= size_; }

 private:
  const uint8_t* data_;
  size_t size_;
  size_t pos_ = 0;
};

}  // namespace membroker::fuzz

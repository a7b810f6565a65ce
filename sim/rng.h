#pragma once
// Deterministic pseudo-random numbers for the simulator. No global state:
// every generator is an object seeded by its owner, and Hash64 gives
// stateless values keyed by (seed, stream, index) so that any point of a
// noise curve can be computed at any time (the oracle needs that).

#include <cstdint>

namespace membroker::sim {

// Mixes one 64-bit word (SplitMix64's finalizer). Pure.
inline uint64_t Mix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

// A stateless hash of three words; the same inputs give the same output.
inline uint64_t Hash64(uint64_t seed, uint64_t stream, uint64_t index) {
  return Mix64(Mix64(Mix64(seed) ^ stream) ^ index);
}

// Maps a 64-bit value to a double in [0, 1).
inline double ToUnit(uint64_t x) { return static_cast<double>(x >> 11) * (1.0 / 9007199254740992.0); }

// A seeded SplitMix64 generator. Thread-compatible (one owner).
class Rng {
 public:
  // Starts the sequence for `seed`; equal seeds give equal sequences.
  explicit Rng(uint64_t seed) : state_(seed) {}

  // Returns the next 64-bit value.
  uint64_t Next() {
    state_ += 0x9e3779b97f4a7c15ULL;
    uint64_t z = state_;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
  }

  // Returns a double uniform in [0, 1).
  double Uniform() { return ToUnit(Next()); }

  // Returns a double uniform in [lo, hi).
  double Uniform(double lo, double hi) { return lo + (hi - lo) * Uniform(); }

  // Returns an integer uniform in [0, n); 0 when n is 0.
  uint64_t Below(uint64_t n) { return n == 0 ? 0 : Next() % n; }

 private:
  uint64_t state_;
};

}  // namespace membroker::sim

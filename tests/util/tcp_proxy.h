#pragma once
// A TCP proxy for fault tests: listens on 127.0.0.1:0 and forwards every
// connection to 127.0.0.1:`target_port`, byte for byte, unless a test
// turns on faults: a delay before each forwarded chunk, a black hole
// (chunks are dropped, the connection stays open), duplicated chunks (the
// same bytes forwarded twice, which breaks the HTTP/2 framing as a buggy
// middlebox would), and cutting every open connection at once. Faults
// apply to both directions and to connections already open.

#include <atomic>
#include <memory>
#include <random>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

namespace membroker::testing {

// Thread-safe.
class TcpProxy {
 public:
  struct Faults {
    absl::Duration delay = absl::ZeroDuration();  // before each chunk
    bool black_hole = false;                      // drop every chunk
    double duplicate_probability = 0;             // per chunk, 0..1
  };

  explicit TcpProxy(int target_port) : target_port_(target_port) {}
  ~TcpProxy();
  TcpProxy(const TcpProxy&) = delete;
  TcpProxy& operator=(const TcpProxy&) = delete;

  // Listens on 127.0.0.1:0 and starts accepting. INTERNAL when the socket
  // cannot be set up.
  absl::Status Start();
  // The port it listens on (after Start).
  int port() const { return port_; }
  // Forwards new connections to 127.0.0.1:`port` (a restarted peer).
  void SetTarget(int port) { target_port_ = port; }
  // Replaces the faults (none: a plain proxy).
  void SetFaults(const Faults& faults);
  // Closes every open connection (both sides); new ones are accepted.
  void CutAll();
  // Connections accepted so far.
  int accepted() const { return accepted_.load(); }
  // Chunks dropped and duplicated so far.
  int dropped() const { return dropped_.load(); }
  int duplicated() const { return duplicated_.load(); }

 private:
  struct Connection {
    int client_fd = -1;
    int server_fd = -1;
    std::thread up, down;
  };
  void Accept();
  void Pump(int from, int to);
  Faults faults() const;

  std::atomic<int> target_port_;
  int listen_fd_ = -1;
  int port_ = 0;
  std::atomic<bool> stop_{false};
  std::atomic<int> accepted_{0};
  std::atomic<int> dropped_{0};
  std::atomic<int> duplicated_{0};
  std::thread acceptor_;
  mutable absl::Mutex mu_;
  Faults faults_ ABSL_GUARDED_BY(mu_);
  std::mt19937 rng_ ABSL_GUARDED_BY(mu_){42};
  std::vector<std::unique_ptr<Connection>> connections_ ABSL_GUARDED_BY(mu_);
};

}  // namespace membroker::testing

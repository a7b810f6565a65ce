#include "tests/util/tcp_proxy.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>

namespace membroker::testing {
namespace {

bool SendAll(int fd, const char* data, size_t size) {
  size_t sent = 0;
  while (sent < size) {
    ssize_t n = ::send(fd, data + sent, size - sent, MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    sent += static_cast<size_t>(n);
  }
  return true;
}

}  // namespace

TcpProxy::~TcpProxy() {
  stop_ = true;
  if (listen_fd_ >= 0) ::shutdown(listen_fd_, SHUT_RDWR);
  if (acceptor_.joinable()) acceptor_.join();
  if (listen_fd_ >= 0) ::close(listen_fd_);
  CutAll();
  std::vector<std::unique_ptr<Connection>> all;
  {
    absl::MutexLock lock(&mu_);
    all.swap(connections_);
  }
  for (auto& c : all) {
    if (c->up.joinable()) c->up.join();
    if (c->down.joinable()) c->down.join();
    ::close(c->client_fd);
    ::close(c->server_fd);
  }
}

absl::Status TcpProxy::Start() {
  listen_fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (listen_fd_ < 0) return absl::InternalError("socket()");
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = 0;
  if (::bind(listen_fd_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0 ||
      ::listen(listen_fd_, 64) != 0) {
    return absl::InternalError("bind/listen on 127.0.0.1:0");
  }
  socklen_t len = sizeof(addr);
  ::getsockname(listen_fd_, reinterpret_cast<sockaddr*>(&addr), &len);
  port_ = ntohs(addr.sin_port);
  acceptor_ = std::thread([this] { Accept(); });
  return absl::OkStatus();
}

void TcpProxy::SetFaults(const Faults& faults) {
  absl::MutexLock lock(&mu_);
  faults_ = faults;
}

TcpProxy::Faults TcpProxy::faults() const {
  absl::MutexLock lock(&mu_);
  return faults_;
}

void TcpProxy::CutAll() {
  absl::MutexLock lock(&mu_);
  for (auto& c : connections_) {
    ::shutdown(c->client_fd, SHUT_RDWR);
    ::shutdown(c->server_fd, SHUT_RDWR);
  }
}

void TcpProxy::Accept() {
  while (!stop_) {
    pollfd p{listen_fd_, POLLIN, 0};
    if (::poll(&p, 1, 100) <= 0) continue;
    int client = ::accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
    if (client < 0) continue;
    int server = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    addr.sin_port = htons(static_cast<uint16_t>(target_port_.load()));
    if (server < 0 || ::connect(server, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
      ::close(client);
      if (server >= 0) ::close(server);
      continue;
    }
    ++accepted_;
    auto c = std::make_unique<Connection>();
    c->client_fd = client;
    c->server_fd = server;
    c->up = std::thread([this, client, server] { Pump(client, server); });
    c->down = std::thread([this, client, server] { Pump(server, client); });
    absl::MutexLock lock(&mu_);
    connections_.push_back(std::move(c));
  }
}

void TcpProxy::Pump(int from, int to) {
  char buffer[16384];
  while (!stop_) {
    pollfd p{from, POLLIN, 0};
    int r = ::poll(&p, 1, 100);
    if (r < 0 && errno != EINTR) break;
    if (r <= 0) continue;
    ssize_t n = ::recv(from, buffer, sizeof(buffer), 0);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    const Faults f = faults();
    if (f.delay > absl::ZeroDuration()) {
      std::this_thread::sleep_for(absl::ToChronoMicroseconds(f.delay));
    }
    if (f.black_hole) {
      ++dropped_;
      continue;
    }
    bool twice = false;
    if (f.duplicate_probability > 0) {
      absl::MutexLock lock(&mu_);
      twice = std::uniform_real_distribution<double>(0, 1)(rng_) < f.duplicate_probability;
    }
    if (!SendAll(to, buffer, static_cast<size_t>(n))) break;
    if (twice) {
      ++duplicated_;
      if (!SendAll(to, buffer, static_cast<size_t>(n))) break;
    }
  }
  // One side is gone: end both.
  ::shutdown(from, SHUT_RDWR);
  ::shutdown(to, SHUT_RDWR);
}

}  // namespace membroker::testing

// The shared test helpers themselves, against /bin/sh children.

#include <arpa/inet.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <string>
#include <thread>

#include "tests/util/child_process.h"
#include "tests/util/http.h"
#include "tests/util/tcp_proxy.h"
#include "tests/util/wait.h"

namespace membroker::testing {
namespace {

using ::testing::HasSubstr;

class ChildProcessTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/mb-util-XXXXXX";
    ASSERT_NE(mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
  }
  void TearDown() override {
    const std::string cmd = "rm -rf '" + dir_ + "'";
    if (std::system(cmd.c_str()) != 0) std::printf("could not remove %s\n", dir_.c_str());
  }
  std::string dir_;
};

TEST(WaitUntilTest, TrueWhenThePredicateHoldsFalseAtTheDeadline) {
  int calls = 0;
  EXPECT_TRUE(WaitUntil([&] { return ++calls == 3; }, absl::Seconds(10), absl::Milliseconds(1)));
  EXPECT_EQ(calls, 3);
  calls = 0;
  EXPECT_FALSE(
      WaitUntil([&] { return ++calls < 0; }, absl::Milliseconds(30), absl::Milliseconds(5)));
  EXPECT_GE(calls, 2);  // polled, and once more at the deadline
}

TEST_F(ChildProcessTest, WaitsForALogLineAndStopsWithSigterm) {
  ChildProcess child;
  ASSERT_TRUE(
      child.Start({"/bin/sh", "-c", "echo listening on port 4242; exec sleep 30"}, dir_ + "/a.log")
          .ok());
  absl::StatusOr<std::string> port = child.WaitForLog("port ([0-9]+)", absl::Seconds(20));
  ASSERT_TRUE(port.ok()) << port.status();
  EXPECT_EQ(*port, "4242");
  EXPECT_TRUE(child.Running());
  EXPECT_EQ(child.WaitForLog("never printed", absl::Milliseconds(50)).status().code(),
            absl::StatusCode::kDeadlineExceeded);
  const int status = child.Stop();
  EXPECT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGTERM) << status;
  EXPECT_FALSE(child.Running());
  EXPECT_EQ(child.Stop(), -1);  // idempotent
}

TEST_F(ChildProcessTest, ChildThatIgnoresSigtermIsKilled) {
  ChildProcess child;
  ASSERT_TRUE(child
                  .Start({"/bin/sh", "-c", "trap '' TERM; echo ready; while :; do sleep 1; done"},
                         dir_ + "/b.log")
                  .ok());
  ASSERT_TRUE(child.WaitForLog("ready", absl::Seconds(20)).ok());
  EXPECT_EQ(child.Stop(absl::Milliseconds(100)), -1);
  EXPECT_FALSE(child.Running());
}

TEST_F(ChildProcessTest, ExitBeforeTheLineIsAborted) {
  ChildProcess child;
  ASSERT_TRUE(child.Start({"/bin/sh", "-c", "echo bye; exit 3"}, dir_ + "/c.log").ok());
  absl::StatusOr<std::string> line = child.WaitForLog("never", absl::Seconds(20));
  EXPECT_EQ(line.status().code(), absl::StatusCode::kAborted);
  EXPECT_THAT(child.Log(), HasSubstr("bye"));
  ChildProcess missing;
  EXPECT_EQ(missing.Start({dir_ + "/no-such-binary"}, dir_ + "/d.log").code(),
            absl::StatusCode::kInternal);
  EXPECT_EQ(missing.Start({}, dir_ + "/e.log").code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(ChildProcessTest, PrintsItsLogOnce) {
  ChildProcess child;
  ASSERT_TRUE(child.Start({"/bin/sh", "-c", "echo the-log-line"}, dir_ + "/f.log").ok());
  ASSERT_TRUE(child.WaitForLog("the-log-line", absl::Seconds(20)).ok());
  ::testing::internal::CaptureStdout();
  child.PrintLogOnce();
  child.PrintLogOnce();
  const std::string out = ::testing::internal::GetCapturedStdout();
  EXPECT_THAT(out, HasSubstr("the-log-line"));
  EXPECT_EQ(out.find("the-log-line"), out.rfind("the-log-line")) << out;
}

TEST_F(ChildProcessTest, WaitForPortSeesAListener) {
  ChildProcess child;
  ASSERT_TRUE(child.Start({"/bin/sh", "-c", "exec sleep 30"}, dir_ + "/g.log").ok());
  // A listener of the test's own on a loopback port 0.
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  ASSERT_GE(fd, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof(addr);
  ASSERT_EQ(::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
  ASSERT_EQ(::listen(fd, 4), 0);
  ASSERT_EQ(::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len), 0);
  const int port = ntohs(addr.sin_port);
  EXPECT_TRUE(child.WaitForPort(port, absl::Seconds(20)).ok());
  ::close(fd);
  // Nothing listens there any more.
  EXPECT_EQ(child.WaitForPort(port, absl::Milliseconds(50)).code(),
            absl::StatusCode::kDeadlineExceeded);
  EXPECT_EQ(HttpGet(port, "/").status().code(), absl::StatusCode::kUnavailable);
}

TEST(RunToCompletionTest, ExitCodeAndOutput) {
  std::string out;
  EXPECT_EQ(RunToCompletion({"/bin/sh", "-c", "echo out; echo err >&2; exit 7"}, &out), 7);
  EXPECT_THAT(out, HasSubstr("out"));
  EXPECT_THAT(out, HasSubstr("err"));
  // Bounded: a child that outlives the timeout is killed.
  EXPECT_EQ(RunToCompletion({"/bin/sh", "-c", "exec sleep 30"}, &out, absl::Milliseconds(100)),
            128 + SIGKILL);
  EXPECT_EQ(RunToCompletion({"/no/such/binary"}, &out), -1);
  EXPECT_THAT(out, HasSubstr("cannot start"));
}

TEST(UrlEncodeTest, KeepsUnreservedAndEncodesTheRest) {
  EXPECT_EQ(UrlEncode("up{job=\"a b\"} == 1"), "up%7Bjob%3D%22a%20b%22%7D%20%3D%3D%201");
  EXPECT_EQ(UrlEncode("Az09-_.~"), "Az09-_.~");
}

}  // namespace
}  // namespace membroker::testing

namespace membroker::testing {
namespace {

// A loopback echo server on port 0 for one connection at a time.
class EchoServer {
 public:
  EchoServer() {
    fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ::bind(fd_, reinterpret_cast<sockaddr*>(&a), sizeof(a));
    ::listen(fd_, 8);
    socklen_t len = sizeof(a);
    ::getsockname(fd_, reinterpret_cast<sockaddr*>(&a), &len);
    port_ = ntohs(a.sin_port);
    thread_ = std::thread([this] {
      while (true) {
        int c = ::accept(fd_, nullptr, nullptr);
        if (c < 0) return;
        char buf[4096];
        ssize_t n;
        while ((n = ::recv(c, buf, sizeof(buf), 0)) > 0) ::send(c, buf, n, MSG_NOSIGNAL);
        ::close(c);
      }
    });
  }
  ~EchoServer() {
    ::shutdown(fd_, SHUT_RDWR);
    ::close(fd_);
    thread_.join();
  }
  int port() const { return port_; }

 private:
  int fd_ = -1;
  int port_ = 0;
  std::thread thread_;
};

int Connect(int port) {
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = htons(static_cast<uint16_t>(port));
  timeval tv{5, 0};  // every read below is bounded
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  if (::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) != 0) return -1;
  return fd;
}

// Reads up to `n` bytes (fewer at a timeout or close).
std::string ReadSome(int fd, size_t n) {
  std::string out;
  char buf[256];
  while (out.size() < n) {
    ssize_t got = ::recv(fd, buf, std::min(sizeof(buf), n - out.size()), 0);
    if (got <= 0) break;
    out.append(buf, static_cast<size_t>(got));
  }
  return out;
}

TEST(TcpProxyTest, ForwardsDuplicatesBlackHolesAndCuts) {
  EchoServer echo;
  TcpProxy proxy(echo.port());
  ASSERT_TRUE(proxy.Start().ok());
  int fd = Connect(proxy.port());
  ASSERT_GE(fd, 0);
  ::send(fd, "ping", 4, MSG_NOSIGNAL);
  EXPECT_EQ(ReadSome(fd, 4), "ping");

  TcpProxy::Faults f;
  f.duplicate_probability = 1;  // every chunk twice, each way: 4x
  proxy.SetFaults(f);
  ::send(fd, "ab", 2, MSG_NOSIGNAL);
  EXPECT_EQ(ReadSome(fd, 8), "abababab");
  EXPECT_GE(proxy.duplicated(), 2);

  f = {};
  f.black_hole = true;
  proxy.SetFaults(f);
  timeval short_tv{0, 300000};
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &short_tv, sizeof(short_tv));
  ::send(fd, "lost", 4, MSG_NOSIGNAL);
  EXPECT_EQ(ReadSome(fd, 4), "");
  EXPECT_GE(proxy.dropped(), 1);

  proxy.SetFaults({});
  proxy.CutAll();
  timeval tv{5, 0};
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  char c;
  EXPECT_EQ(::recv(fd, &c, 1, 0), 0);  // closed by the proxy
  ::close(fd);
  EXPECT_EQ(proxy.accepted(), 1);
}

}  // namespace
}  // namespace membroker::testing

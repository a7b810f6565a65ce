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

#include "tests/util/child_process.h"
#include "tests/util/http.h"
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

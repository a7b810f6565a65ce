#include "tests/util/child_process.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <regex>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "tests/util/wait.h"

extern char** environ;

namespace membroker::testing {
namespace {

constexpr absl::Duration kPollInterval = absl::Milliseconds(20);

std::vector<char*> CArgs(const std::vector<std::string>& argv) {
  std::vector<char*> args;
  args.reserve(argv.size() + 1);
  for (const std::string& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  return args;
}

// Spawns `argv` with stdin from /dev/null and stdout and stderr to
// `out_fd` (dup'ed) or to `log_path` (opened for writing).
absl::StatusOr<pid_t> Spawn(const std::vector<std::string>& argv, const std::string& log_path,
                            int out_fd) {
  if (argv.empty() || argv[0].empty()) {
    return absl::InvalidArgumentError("child process: empty argv");
  }
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0);
  if (out_fd >= 0) {
    posix_spawn_file_actions_adddup2(&actions, out_fd, 1);
    posix_spawn_file_actions_addclose(&actions, out_fd);
  } else {
    posix_spawn_file_actions_addopen(&actions, 1, log_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC,
                                     0644);
  }
  posix_spawn_file_actions_adddup2(&actions, 1, 2);
  std::vector<char*> args = CArgs(argv);
  pid_t pid = -1;
  const int rc = posix_spawnp(&pid, args[0], &actions, nullptr, args.data(), environ);
  posix_spawn_file_actions_destroy(&actions);
  if (rc != 0) {
    return absl::InternalError(absl::StrCat("cannot start ", argv[0], ": ", std::strerror(rc)));
  }
  return pid;
}

bool PortAccepts(int port) {
  const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return false;
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  const bool ok = ::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0;
  ::close(fd);
  return ok;
}

}  // namespace

std::string ReadWholeFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

ChildProcess::~ChildProcess() {
  Stop();
  if (::testing::Test::HasFailure()) PrintLogOnce();
}

absl::Status ChildProcess::Start(const std::vector<std::string>& argv,
                                 const std::string& log_path) {
  if (pid_ > 0) return absl::FailedPreconditionError("child process: already started");
  absl::StatusOr<pid_t> pid = Spawn(argv, log_path, -1);
  if (!pid.ok()) return pid.status();
  pid_ = *pid;
  name_ = argv[0];
  log_path_ = log_path;
  log_printed_ = false;
  return absl::OkStatus();
}

bool ChildProcess::Running() {
  if (pid_ <= 0) return false;
  int status = 0;
  if (::waitpid(pid_, &status, WNOHANG) == pid_) {
    pid_ = -1;
    return false;
  }
  return true;
}

absl::StatusOr<std::string> ChildProcess::WaitForLog(const std::string& pattern,
                                                     absl::Duration timeout) {
  const std::regex re(pattern);
  std::string found;
  bool exited = false;
  const bool matched = WaitUntil(
      [&] {
        // Read the log before checking the process, so that a line written
        // just before exiting still counts.
        const std::string log = Log();
        std::smatch m;
        if (std::regex_search(log, m, re)) {
          found = m.size() > 1 ? m[1].str() : m[0].str();
          return true;
        }
        exited = !Running();
        return exited;
      },
      timeout, kPollInterval);
  if (matched && !exited) return found;
  if (exited) {
    return absl::AbortedError(
        absl::StrCat(name_, " exited before its log matched \"", pattern, "\""));
  }
  return absl::DeadlineExceededError(absl::StrCat(name_, ": no log line matched \"", pattern,
                                                  "\" within ", absl::FormatDuration(timeout)));
}

absl::Status ChildProcess::WaitForPort(int port, absl::Duration timeout) {
  bool exited = false;
  const bool up = WaitUntil(
      [&] {
        if (PortAccepts(port)) return true;
        exited = !Running();
        return exited;
      },
      timeout, kPollInterval);
  if (up && !exited) return absl::OkStatus();
  if (exited) {
    return absl::AbortedError(absl::StrCat(name_, " exited before port ", port, " accepted"));
  }
  return absl::DeadlineExceededError(absl::StrCat(name_, ": port ", port, " did not accept within ",
                                                  absl::FormatDuration(timeout)));
}

int ChildProcess::Stop(absl::Duration grace) {
  if (pid_ <= 0) return -1;
  ::kill(pid_, SIGTERM);
  int status = -1;
  bool reaped = false;
  WaitUntil(
      [&] {
        reaped = ::waitpid(pid_, &status, WNOHANG) == pid_;
        return reaped;
      },
      grace, kPollInterval);
  if (reaped) {
    pid_ = -1;
    return status;
  }
  Kill();
  return -1;
}

void ChildProcess::Kill() {
  if (pid_ <= 0) return;
  ::kill(pid_, SIGKILL);
  int status = 0;
  ::waitpid(pid_, &status, 0);
  pid_ = -1;
}

std::string ChildProcess::Log() const { return ReadWholeFile(log_path_); }

void ChildProcess::PrintLogOnce(size_t max_bytes) {
  if (log_printed_ || log_path_.empty()) return;
  log_printed_ = true;
  std::string log = Log();
  const bool cut = log.size() > max_bytes;
  if (cut) log = log.substr(log.size() - max_bytes);
  std::printf("---- %s log (%s%s) ----\n%s\n---- end of %s log ----\n", name_.c_str(),
              log_path_.c_str(), cut ? ", tail" : "", log.c_str(), name_.c_str());
  std::fflush(stdout);
}

int RunToCompletion(const std::vector<std::string>& argv, std::string* output,
                    absl::Duration timeout) {
  output->clear();
  int fds[2];
  if (::pipe2(fds, O_CLOEXEC) != 0) return -1;
  absl::StatusOr<pid_t> pid = Spawn(argv, "", fds[1]);
  ::close(fds[1]);
  if (!pid.ok()) {
    ::close(fds[0]);
    *output = std::string(pid.status().message());
    return -1;
  }
  // Read until end of file or the deadline.
  const absl::Time deadline = absl::Now() + timeout;
  char buf[4096];
  for (int i = 0; i < 1000000 && absl::Now() < deadline; ++i) {
    pollfd p{fds[0], POLLIN, 0};
    const int ms = static_cast<int>(
        std::min<int64_t>(100, absl::ToInt64Milliseconds(deadline - absl::Now()) + 1));
    const int r = ::poll(&p, 1, ms);
    if (r < 0 && errno != EINTR) break;
    if (r <= 0) continue;
    const ssize_t n = ::read(fds[0], buf, sizeof(buf));
    if (n <= 0) break;
    output->append(buf, static_cast<size_t>(n));
  }
  ::close(fds[0]);
  int status = 0;
  if (::waitpid(*pid, &status, WNOHANG) != *pid) {
    // Still running at the deadline (or closed its output early): give it
    // what is left of the deadline, then kill it.
    bool reaped = WaitUntil([&] { return ::waitpid(*pid, &status, WNOHANG) == *pid; },
                            std::max(absl::ZeroDuration(), deadline - absl::Now()), kPollInterval);
    if (!reaped) {
      ::kill(*pid, SIGKILL);
      ::waitpid(*pid, &status, 0);
    }
  }
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  if (WIFSIGNALED(status)) return 128 + WTERMSIG(status);
  return -1;
}

int PickFreeLoopbackPort() {
  const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return -1;
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = 0;
  socklen_t len = sizeof(addr);
  int port = -1;
  if (::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0 &&
      ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) == 0) {
    port = ntohs(addr.sin_port);
  }
  ::close(fd);
  return port;
}

}  // namespace membroker::testing

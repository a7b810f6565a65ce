#pragma once
// A child process for end-to-end tests: a real binary started with its
// arguments, its stdout and stderr captured in a log file, waited on with
// deadlines (a log line, a TCP port), stopped with SIGTERM then SIGKILL,
// and its log printed once when the test failed.

#include <sys/types.h>

#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace membroker::testing {

// One child process. Thread-compatible. Stopped when destroyed; if the
// current test has failed by then, its log is printed (once).
class ChildProcess {
 public:
  ChildProcess() = default;
  ~ChildProcess();
  ChildProcess(const ChildProcess&) = delete;
  ChildProcess& operator=(const ChildProcess&) = delete;

  // Starts `argv` (argv[0] is looked up in PATH when it has no slash) with
  // stdin from /dev/null and stdout and stderr to `log_path` (truncated).
  // FAILED_PRECONDITION when already started; INVALID_ARGUMENT for an empty
  // argv; INTERNAL when the process cannot be spawned.
  absl::Status Start(const std::vector<std::string>& argv, const std::string& log_path);

  // True while the child has not exited (reaps it when it has).
  bool Running();

  // Waits until the log matches the ECMAScript regular expression
  // `pattern` and returns its first group (the whole match when it has
  // none). DEADLINE_EXCEEDED after `timeout`; ABORTED when the child
  // exited first; both messages name the pattern and the binary.
  absl::StatusOr<std::string> WaitForLog(const std::string& pattern, absl::Duration timeout);

  // Waits until 127.0.0.1:`port` accepts a TCP connection.
  // DEADLINE_EXCEEDED after `timeout`; ABORTED when the child exited first.
  absl::Status WaitForPort(int port, absl::Duration timeout);

  // Sends SIGTERM, waits up to `grace` for the child to exit, then sends
  // SIGKILL. Returns the wait status of a child that exited within the
  // grace period, -1 otherwise (killed, or not running). Idempotent.
  int Stop(absl::Duration grace = absl::Seconds(5));

  // SIGKILL at once (a crash), then reaps the child.
  void Kill();

  // The whole log so far ("" when it cannot be read).
  std::string Log() const;

  // Prints the last `max_bytes` of the log to stdout under a header naming
  // the binary, the first time it is called; later calls do nothing.
  void PrintLogOnce(size_t max_bytes = 16000);

  // The child's pid while it runs, else -1.
  pid_t pid() const { return pid_; }
  // The binary's name as given in argv[0].
  const std::string& name() const { return name_; }
  const std::string& log_path() const { return log_path_; }

 private:
  pid_t pid_ = -1;
  std::string name_;
  std::string log_path_;
  bool log_printed_ = false;
};

// Runs `argv` to completion (bounded by `timeout`: killed after it) with
// stdout and stderr captured into `*output`. Returns the exit code, 128 +
// the signal when it was killed by one, or -1 when it could not start.
int RunToCompletion(const std::vector<std::string>& argv, std::string* output,
                    absl::Duration timeout = absl::Seconds(60));

// A loopback TCP port that was free a moment ago (bound to port 0, then
// released), or -1. Only for daemons that cannot bind port 0 and tell the
// port they got (Prometheus): another process may take it meanwhile, so
// callers retry with a new one. Our own daemons bind port 0 and log it.
int PickFreeLoopbackPort();

// Reads a whole file ("" when it cannot be read).
std::string ReadWholeFile(const std::string& path);

}  // namespace membroker::testing

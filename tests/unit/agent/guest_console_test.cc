#include "node-agent/guest_console.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <string>

namespace membroker::agent {
namespace {

// A kernel 6.1 OOM kill as a serial console shows it (one kill).
constexpr char kKill61[] =
    "[   47.101010] memload invoked oom-killer: gfp_mask=0x140cca(GFP_HIGHUSER_MOVABLE|__GFP_COMP), "
    "order=0, oom_score_adj=0\n"
    "[   47.120000] Mem-Info:\n"
    "[   47.130000] oom-kill:constraint=CONSTRAINT_NONE,nodemask=(null),task=memload,pid=95,uid=0\n"
    "[   47.140000] Out of memory: Killed process 95 (memload) total-vm:280000kB, "
    "anon-rss:270000kB, file-rss:4kB, shmem-rss:0kB, UID:0 pgtables:600kB oom_score_adj:0\n";

class TempDir {
 public:
  TempDir() {
    char tmpl[] = "/tmp/mb_console_test_XXXXXX";
    path_ = mkdtemp(tmpl);
  }
  ~TempDir() { std::system(("rm -rf " + path_).c_str()); }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

void Append(const std::string& path, const std::string& text) {
  std::ofstream out(path, std::ios::app | std::ios::binary);
  out << text;
}

TEST(GuestConsoleTest, CountsKillLinesOfEveryKernelFormat) {
  EXPECT_EQ(CountOomKillLines(kKill61), 1u);
  // Older kernels: "Out of memory: Kill process" then "Killed process".
  EXPECT_EQ(CountOomKillLines("Out of memory: Kill process 12 (x) score 900 or sacrifice child\n"
                              "Killed process 12 (x) total-vm:100kB\n"),
            1u);
  EXPECT_EQ(CountOomKillLines("Memory cgroup out of memory: Killed process 7 (y) total-vm:1kB\n"),
            1u);
  // Not a kill: a program printing the words, no pid after them.
  EXPECT_EQ(CountOomKillLines("echo Killed process manager\nKilled process \n"), 0u);
  EXPECT_EQ(CountOomKillLines(""), 0u);
}

TEST(GuestConsoleTest, ParsesNameEqualsPathEntries) {
  auto logs = ParseConsoleLogs({"web-1=/var/log/web-1.log", "db=/x/db.log"});
  ASSERT_TRUE(logs.ok()) << logs.status();
  EXPECT_EQ(logs->at("web-1"), "/var/log/web-1.log");
  EXPECT_EQ(logs->at("db"), "/x/db.log");
  for (const char* bad : {"web-1", "=/x", "web-1=", ""}) {
    auto r = ParseConsoleLogs({bad});
    EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument) << bad;
  }
  auto twice = ParseConsoleLogs({"a=/1", "a=/2"});
  EXPECT_EQ(twice.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(twice.status().message().find("twice"), std::string::npos);
}

TEST(GuestConsoleTest, PollReadsOnlyWhatWasAppended) {
  TempDir dir;
  const std::string log = dir.path() + "/vm.log";
  GuestConsoleOomCounter counter({{"vm", log}}, /*max_read_bytes=*/64);
  // Unknown VM, and a log that does not exist yet: no count at all.
  EXPECT_EQ(counter.Poll("other"), std::nullopt);
  EXPECT_EQ(counter.Poll("vm"), std::nullopt);
  Append(log, "[    0.000000] Linux version 6.1.0\n");
  EXPECT_EQ(counter.Poll("vm"), 0u);
  // A kill written in two halves: counted once the line is complete. The
  // 64-byte read limit makes the counter take several polls for it.
  const std::string kill = kKill61;
  Append(log, kill.substr(0, 150));
  for (int i = 0; i < 10; ++i) EXPECT_EQ(counter.Poll("vm"), 0u);
  Append(log, kill.substr(150));
  uint64_t seen = 0;
  for (int i = 0; i < 20; ++i) seen = *counter.Poll("vm");
  EXPECT_EQ(seen, 1u);
  Append(log, kill);
  Append(log, kill);
  for (int i = 0; i < 40; ++i) seen = *counter.Poll("vm");
  EXPECT_EQ(seen, 3u);
  // Nothing new: the count stays.
  EXPECT_EQ(counter.Poll("vm"), 3u);
}

TEST(GuestConsoleTest, RotatedLogIsReadFromItsStartAndTheCountNeverGoesBack) {
  TempDir dir;
  const std::string log = dir.path() + "/vm.log";
  Append(log, kKill61);
  GuestConsoleOomCounter counter({{"vm", log}});
  EXPECT_EQ(counter.Poll("vm"), 1u);
  // Rotated: the old file moved away, a new one with one more kill.
  ASSERT_EQ(std::rename(log.c_str(), (log + ".1").c_str()), 0);
  Append(log, kKill61);
  EXPECT_EQ(counter.Poll("vm"), 2u);
  // Truncated in place: read again from the start.
  { std::ofstream truncate(log, std::ios::trunc); }
  EXPECT_EQ(counter.Poll("vm"), 2u);
  Append(log, kKill61);
  EXPECT_EQ(counter.Poll("vm"), 3u);
  // Gone: the count so far stays.
  ASSERT_EQ(std::remove(log.c_str()), 0);
  EXPECT_EQ(counter.Poll("vm"), 3u);
}

}  // namespace
}  // namespace membroker::agent

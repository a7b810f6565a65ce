// The host-side working-set probe: smaps, cgroup and memory.pressure
// parsers on fixture text, the /proc reader on a fixture tree, and the
// sampler's rounds with a fake probe and a fake CPU clock.

#include "node-agent/working_set.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>

#include "absl/strings/str_cat.h"

namespace membroker::agent {
namespace {

constexpr uint64_t kMiB = uint64_t{1} << 20;

// One smaps entry: a header and the fields the parser reads, among others.
std::string Entry(const std::string& range, const std::string& path, uint64_t size_kib,
                  uint64_t referenced_kib) {
  return absl::StrCat(
      range, " rw-p 00000000 00:00 0 ", path, "\n", "Size:           ", size_kib,
      " kB\nKernelPageSize:        4 kB\nRss:            ", referenced_kib,
      " kB\nReferenced:     ", referenced_kib,
      " kB\nAnonymous:      0 kB\nTHPeligible:    0\nVmFlags: rd wr mr mw me ac sd\n");
}

// A QEMU of 512 MiB boot memory: its binary, a heap, guest RAM (512 MiB,
// 60 MiB touched) and a stack.
std::string QemuSmaps() {
  return Entry("55d0a0000000-55d0a0400000", "/usr/bin/qemu-system-x86_64", 4096, 4000) +
         Entry("55d0a2000000-55d0a4000000", "[heap]", 32768, 20000) +
         Entry("7f3a00000000-7f3a20000000", "", 524288, 61440) +
         Entry("7ffc00000000-7ffc00021000", "[stack]", 132, 40);
}

TEST(GuestRamReferencedTest, SumsMappingsOfAtLeastHalfTheBootMemory) {
  // Boot 512 MiB: mappings >= 256 MiB count; only guest RAM is that large.
  auto r = ParseGuestRamReferenced(QemuSmaps(), 512 * kMiB);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->referenced_bytes, 60 * kMiB);
  EXPECT_EQ(r->mapping_bytes, 512 * kMiB);
  EXPECT_EQ(r->mappings, 1);

  // A virtio-mem backend of 1 GiB (300 MiB touched) beside it counts too.
  auto both = ParseGuestRamReferenced(
      QemuSmaps() + Entry("7f4000000000-7f4040000000", "", 1048576, 307200), 512 * kMiB);
  ASSERT_TRUE(both.ok()) << both.status();
  EXPECT_EQ(both->referenced_bytes, 360 * kMiB);
  EXPECT_EQ(both->mappings, 2);
}

TEST(GuestRamReferencedTest, UnknownOrTooSmallBootMemoryTakesTheLargestMapping) {
  auto unknown = ParseGuestRamReferenced(QemuSmaps(), 0);
  ASSERT_TRUE(unknown.ok()) << unknown.status();
  EXPECT_EQ(unknown->referenced_bytes, 60 * kMiB);
  EXPECT_EQ(unknown->mappings, 1);
  // Boot memory claims 4 GiB but no mapping reaches 2 GiB: the largest.
  auto larger = ParseGuestRamReferenced(QemuSmaps(), 4096 * kMiB);
  ASSERT_TRUE(larger.ok());
  EXPECT_EQ(larger->referenced_bytes, 60 * kMiB);
}

TEST(GuestRamReferencedTest, RejectsMalformedText) {
  const std::string good = Entry("7f3a00000000-7f3a20000000", "", 524288, 61440);
  struct Case {
    std::string text;
    std::string want;  // in the message
  } cases[] = {
      {"", "no mapping"},
      {"Size: 4 kB\n", "before any mapping"},
      {"zz-7f rw-p 0 00:00 0\nSize: 4 kB\nReferenced: 0 kB\n", "neither"},
      {"7f00-7f10 rw-p 0 00:00 0\nSize: 4 kB\n", "no Referenced"},
      {"7f00-7f10 rw-p 0 00:00 0\nReferenced: 4 kB\n", "no Size"},
      {"7f00-7f10 rw-p 0 00:00 0\nSize: four kB\nReferenced: 0 kB\n", "Size: not a number"},
      {"7f00-7f10 rw-p 0 00:00 0\nSize: 4 MB\nReferenced: 0 kB\n", "Size: not a number"},
      {"7f00-7f10 rw-p 0 00:00 0\nSize: -4 kB\nReferenced: 0 kB\n", "Size: not a number"},
      {"7f00-7f10 rw-p 0 00:00 0\nSize: 4 kB\nReferenced: 8 kB\n", "above its Size"},
      {"7f00-7f10 rw-p 0 00:00 0\nSize: 4 kB\nSize: 4 kB\nReferenced: 0 kB\n", "twice"},
      {"7f00-7f10 rw-p 0 00:00 0\nSize: 99999999999999999999 kB\nReferenced: 0 kB\n",
       "not a number"},
      {good + "7f00-7f10 rw-p 0 00:00 0\nSize: 4 kB\n", "no Size: or no Referenced"},
  };
  for (const Case& c : cases) {
    auto r = ParseGuestRamReferenced(c.text, 512 * kMiB);
    ASSERT_FALSE(r.ok()) << c.text;
    EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument) << c.text;
    EXPECT_NE(r.status().message().find(c.want), std::string::npos)
        << r.status().message() << " vs " << c.want;
  }
}

TEST(CgroupPathTest, FindsTheV2PathAndTheLibvirtScope) {
  EXPECT_EQ(*ParseCgroupV2Path("0::/machine.slice/vm1.scope\n"), "/machine.slice/vm1.scope");
  // Hybrid host: v1 lines first.
  EXPECT_EQ(*ParseCgroupV2Path("12:memory:/machine/vm1\n1:name=systemd:/x\n0::/vm1\n"), "/vm1");
  // libvirt: threads in …/libvirt/emulator and …/libvirt/vcpu0; the scope.
  EXPECT_EQ(
      *ParseCgroupV2Path("0::/machine.slice/machine-qemu\\x2d1\\x2dguest.scope/libvirt/emulator\n"),
      "/machine.slice/machine-qemu\\x2d1\\x2dguest.scope");
  EXPECT_EQ(ParseCgroupV2Path("12:memory:/x\n").status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(ParseCgroupV2Path("0::/\n").status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(ParseCgroupV2Path("0::relative\n").status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ParseCgroupV2Path("0::/a/../../etc\n").status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(CgroupPressureTest, ParsesSomeAvg10AndRejectsGarbage) {
  auto p = ParseCgroupPressureSomeAvg10(
      "some avg10=12.50 avg60=3.00 avg300=0.50 total=123456\n"
      "full avg10=2.00 avg60=0.00 avg300=0.00 total=2000\n");
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_DOUBLE_EQ(*p, 12.5);
  for (const char* bad : {"", "some avg10=abc avg60=0 avg300=0 total=0\n",
                          "some avg10=150.00 avg60=0.00 avg300=0.00 total=0\n", "nonsense\n"}) {
    auto r = ParseCgroupPressureSomeAvg10(bad);
    ASSERT_FALSE(r.ok()) << bad;
    EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument) << bad;
    EXPECT_NE(r.status().message().find("memory.pressure"), std::string::npos);
  }
}

class FixtureTree {
 public:
  FixtureTree() {
    std::string dir = (std::filesystem::temp_directory_path() / "ws_test_XXXXXX").string();
    EXPECT_NE(mkdtemp(dir.data()), nullptr);
    root_ = dir;
  }
  ~FixtureTree() { std::filesystem::remove_all(root_); }
  void Write(const std::string& rel, const std::string& text) {
    std::filesystem::path p = root_ / rel;
    std::filesystem::create_directories(p.parent_path());
    std::ofstream(p) << text;
  }
  std::string Read(const std::string& rel) {
    std::ifstream in(root_ / rel);
    return std::string(std::istreambuf_iterator<char>(in), {});
  }
  std::string path(const std::string& rel) const { return (root_ / rel).string(); }

 private:
  std::filesystem::path root_;
};

TEST(ProcWorkingSetProbeTest, ReadsFixtureFiles) {
  FixtureTree t;
  t.Write("proc/42/smaps", QemuSmaps());
  t.Write("proc/42/clear_refs", "");
  t.Write("proc/42/cgroup", "0::/machine.slice/vm.scope/libvirt/vcpu0\n");
  t.Write("cg/machine.slice/vm.scope/memory.pressure",
          "some avg10=7.25 avg60=1.00 avg300=0.20 total=99\nfull avg10=1.00 avg60=0.00 "
          "avg300=0.00 total=9\n");
  ProcWorkingSetProbe probe(t.path("proc"), t.path("cg"));
  ASSERT_TRUE(probe.ClearReferenced(42).ok());
  EXPECT_EQ(t.Read("proc/42/clear_refs"), "1\n");
  auto ref = probe.ReadReferenced(42, 512 * kMiB);
  ASSERT_TRUE(ref.ok()) << ref.status();
  EXPECT_EQ(ref->referenced_bytes, 60 * kMiB);
  auto psi = probe.CgroupPressureSomeAvg10(42);
  ASSERT_TRUE(psi.ok()) << psi.status();
  EXPECT_DOUBLE_EQ(*psi, 7.25);

  // A missing process, a bad pid, no cgroup v2 mount, a v1-only process.
  EXPECT_EQ(probe.ClearReferenced(43).code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(probe.ReadReferenced(43, 0).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(probe.ReadReferenced(0, 0).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ProcWorkingSetProbe(t.path("proc"), "").CgroupPressureSomeAvg10(42).status().code(),
            absl::StatusCode::kNotFound);
  t.Write("proc/44/cgroup", "4:memory:/x\n");
  EXPECT_EQ(probe.CgroupPressureSomeAvg10(44).status().code(), absl::StatusCode::kNotFound);
  // Malformed smaps: a clear error, not a number.
  t.Write("proc/45/smaps", "7f00-7f10 rw-p 0 00:00 0\nSize: x kB\nReferenced: 0 kB\n");
  EXPECT_EQ(probe.ReadReferenced(45, 0).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(ProcWorkingSetProbeTest, FindsTheCgroupV2Mount) {
  FixtureTree t;
  EXPECT_EQ(FindCgroupV2Root(t.path("cg")), "");
  t.Write("cg/unified/cgroup.controllers", "");
  EXPECT_EQ(FindCgroupV2Root(t.path("cg")), t.path("cg") + "/unified");
  t.Write("cg/cgroup.controllers", "memory\n");
  EXPECT_EQ(FindCgroupV2Root(t.path("cg")), t.path("cg"));
}

// Counts calls; referenced bytes and pressure per pid are set by the test.
class FakeProbe : public WorkingSetProbe {
 public:
  absl::Status ClearReferenced(int64_t pid) const override {
    ++clears;
    if (pid == gone_pid) return absl::NotFoundError("gone");
    return absl::OkStatus();
  }
  absl::StatusOr<GuestRamReferenced> ReadReferenced(int64_t pid, uint64_t boot) const override {
    ++reads;
    last_boot = boot;
    if (pid == gone_pid) return absl::NotFoundError("gone");
    GuestRamReferenced r;
    r.referenced_bytes = referenced;
    r.mappings = 1;
    return r;
  }
  absl::StatusOr<double> CgroupPressureSomeAvg10(int64_t /*pid*/) const override {
    if (psi < 0) return absl::NotFoundError("cgroup v1");
    return psi;
  }
  absl::StatusOr<bool> RunsKvmGuest(int64_t pid) const override {
    ++kvm_checks;
    if (pid == unreadable_pid) return absl::PermissionDeniedError("fd: permission denied");
    return pid == kvm_pid;
  }
  mutable int clears = 0;
  mutable int reads = 0;
  mutable int kvm_checks = 0;
  int64_t kvm_pid = -1;
  int64_t unreadable_pid = -1;
  mutable uint64_t last_boot = 0;
  uint64_t referenced = 0;
  double psi = -1;
  int64_t gone_pid = -1;
};

TEST(WorkingSetSamplerTest, ClearsThenReadsTheNextRoundAndCountsCpu) {
  auto probe = std::make_shared<FakeProbe>();
  double cpu = 0;
  // Each probe call costs 0.01 CPU s on the fake clock.
  WorkingSetSampler sampler(probe, [&cpu] { return cpu += 0.01; });
  const absl::Time t0 = absl::FromUnixSeconds(1000);
  const std::vector<WorkingSetTarget> vms = {{"a", 10, 512 * kMiB}};

  auto first = sampler.Round(vms, t0);
  EXPECT_FALSE(first["a"].working_set_bytes.has_value());  // only cleared
  EXPECT_EQ(probe->clears, 1);
  EXPECT_EQ(probe->reads, 0);
  EXPECT_FALSE(first["a"].psi_some_avg10_percent.has_value());
  EXPECT_TRUE(first["a"].error.empty()) << first["a"].error;  // no cgroup v2 is fine
  EXPECT_NEAR(first["a"].cpu_seconds, 0.01, 1e-9);

  probe->referenced = 300 * kMiB;
  probe->psi = 12;
  auto second = sampler.Round(vms, t0 + absl::Seconds(10));
  ASSERT_TRUE(second["a"].working_set_bytes.has_value());
  EXPECT_EQ(*second["a"].working_set_bytes, 300 * kMiB);
  EXPECT_EQ(second["a"].interval, absl::Seconds(10));
  EXPECT_EQ(probe->last_boot, 512 * kMiB);
  EXPECT_DOUBLE_EQ(*second["a"].psi_some_avg10_percent, 12);
  EXPECT_GT(second["a"].cpu_seconds, 0);

  // A new pid (the VM restarted) starts over: cleared, not read.
  auto restarted = sampler.Round({{"a", 11, 512 * kMiB}}, t0 + absl::Seconds(20));
  EXPECT_FALSE(restarted["a"].working_set_bytes.has_value());
  EXPECT_EQ(probe->reads, 1);
}

TEST(WorkingSetSamplerTest, AGoneProcessReportsAnErrorAndIsForgotten) {
  auto probe = std::make_shared<FakeProbe>();
  WorkingSetSampler sampler(probe, [] { return 0.0; });
  const absl::Time t0 = absl::FromUnixSeconds(1000);
  sampler.Round({{"a", 10, 0}}, t0);
  probe->gone_pid = 10;
  auto r = sampler.Round({{"a", 10, 0}}, t0 + absl::Seconds(10));
  EXPECT_FALSE(r["a"].working_set_bytes.has_value());
  EXPECT_NE(r["a"].error.find("gone"), std::string::npos);
  probe->gone_pid = -1;
  // Its clear failed, so the next round only clears again.
  auto next = sampler.Round({{"a", 10, 0}}, t0 + absl::Seconds(20));
  EXPECT_FALSE(next["a"].working_set_bytes.has_value());
  EXPECT_TRUE(next["a"].error.empty());
  // A VM no longer listed is forgotten.
  EXPECT_TRUE(sampler.Round({}, t0 + absl::Seconds(30)).empty());
}

TEST(WorkingSetSamplerTest, AKvmGuestIsNeverMeasuredButItsPressureIsRead) {
  auto probe = std::make_shared<FakeProbe>();
  probe->kvm_pid = 10;
  probe->unreadable_pid = 20;
  probe->referenced = 300 * kMiB;
  probe->psi = 7;
  WorkingSetSampler sampler(probe, [] { return 0.0; });
  const absl::Time t0 = absl::FromUnixSeconds(1000);
  const std::vector<WorkingSetTarget> vms = {{"kvm", 10, 0}, {"unknown", 20, 0}, {"tcg", 30, 0}};
  sampler.Round(vms, t0);
  auto r = sampler.Round(vms, t0 + absl::Seconds(10));
  // Neither the KVM guest nor the one whose fds could not be read is
  // cleared or read: a working set from them could be an understatement.
  EXPECT_FALSE(r["kvm"].working_set_bytes.has_value());
  EXPECT_NE(r["kvm"].error.find("KVM"), std::string::npos) << r["kvm"].error;
  EXPECT_DOUBLE_EQ(*r["kvm"].psi_some_avg10_percent, 7);
  EXPECT_FALSE(r["unknown"].working_set_bytes.has_value());
  ASSERT_TRUE(r["tcg"].working_set_bytes.has_value());
  EXPECT_EQ(*r["tcg"].working_set_bytes, 300 * kMiB);
  EXPECT_EQ(probe->clears, 2);  // "tcg", once per round
  EXPECT_EQ(probe->reads, 1);
  // Checked once per process, not every round.
  EXPECT_EQ(probe->kvm_checks, 3);
}

TEST(ProcWorkingSetProbeTest, FindsTheKvmVmFdAmongTheProcessFds) {
  FixtureTree t;
  t.Write("proc/42/smaps", QemuSmaps());
  t.Write("proc/43/smaps", QemuSmaps());
  std::filesystem::create_directories(t.path("proc/42/fd"));
  std::filesystem::create_directories(t.path("proc/43/fd"));
  // /proc/PID/fd entries are links; readlink gives these names.
  std::filesystem::create_symlink("/dev/null", t.path("proc/42/fd/0"));
  std::filesystem::create_symlink("/dev/kvm", t.path("proc/42/fd/9"));
  std::filesystem::create_symlink("anon_inode:kvm-vm", t.path("proc/42/fd/10"));
  std::filesystem::create_symlink("/dev/null", t.path("proc/43/fd/0"));
  std::filesystem::create_symlink("socket:[1234]", t.path("proc/43/fd/3"));
  ProcWorkingSetProbe probe(t.path("proc"), "");
  ASSERT_TRUE(probe.RunsKvmGuest(42).ok());
  EXPECT_TRUE(*probe.RunsKvmGuest(42));
  ASSERT_TRUE(probe.RunsKvmGuest(43).ok());
  EXPECT_FALSE(*probe.RunsKvmGuest(43));
  EXPECT_EQ(probe.RunsKvmGuest(44).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(probe.RunsKvmGuest(0).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(WorkingSetSamplerTest, RealProcessOfThisTest) {
  // The probe on this very process: its smaps parses and clear_refs is
  // writable by its owner (skipped where /proc forbids it).
  ProcWorkingSetProbe probe("/proc", "");
  absl::Status clear = probe.ClearReferenced(getpid());
  if (!clear.ok()) GTEST_SKIP() << "clear_refs not writable here: " << clear;
  auto ref = probe.ReadReferenced(getpid(), 0);
  ASSERT_TRUE(ref.ok()) << ref.status();
  // This process holds no KVM VM.
  auto kvm = probe.RunsKvmGuest(getpid());
  ASSERT_TRUE(kvm.ok()) << kvm.status();
  EXPECT_FALSE(*kvm);
  EXPECT_EQ(ref->mappings, 1);
  EXPECT_LE(ref->referenced_bytes, ref->mapping_bytes);
}

}  // namespace
}  // namespace membroker::agent

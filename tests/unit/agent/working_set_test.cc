// The host-side working-set probe: smaps, cgroup and memory.pressure
// parsers on fixture text, the /proc reader on a fixture tree, and the
// sampler's rounds with a fake probe and a fake CPU clock.

#include "node-agent/working_set.h"

#include <gtest/gtest.h>
#include <poll.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

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
    ops.push_back(absl::StrCat("1:", pid));
    if (pid == gone_pid) return absl::NotFoundError("gone");
    return absl::OkStatus();
  }
  absl::Status ClearSoftDirty(int64_t pid) const override {
    ops.push_back(absl::StrCat("4:", pid));
    if (pid == gone_pid) return absl::NotFoundError("gone");
    return absl::OkStatus();
  }
  absl::StatusOr<GuestRamReferenced> ReadReferenced(int64_t pid, uint64_t boot) const override {
    ++reads;
    ops.push_back(absl::StrCat("read:", pid));
    last_boot = boot;
    if (pid == gone_pid) return absl::NotFoundError("gone");
    GuestRamReferenced r;
    r.referenced_bytes = referenced;
    r.locked_bytes = locked;
    r.hugetlb_bytes = hugetlb;
    r.mappings = 1;
    return r;
  }
  absl::StatusOr<bool> LruGenEnabled() const override {
    ++lru_gen_reads;
    return lru_gen;
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
  mutable std::vector<std::string> ops;  // "1:PID", "4:PID", "read:PID" in order
  mutable int lru_gen_reads = 0;
  absl::StatusOr<bool> lru_gen = false;
  uint64_t locked = 0;
  uint64_t hugetlb = 0;
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
  // Without refault mode nothing writes "4", and "tcg" is measured by
  // clear_refs.
  EXPECT_EQ(absl::StrJoin(probe->ops, " "), "1:30 read:30 1:30");
  EXPECT_EQ(r["tcg"].method, "clear_refs");
  EXPECT_EQ(r["kvm"].method, "");
}

TEST(WorkingSetSamplerTest, RefaultModeKvmClearsSoftDirtyThenReadsThenClearsReferenced) {
  auto probe = std::make_shared<FakeProbe>();
  probe->kvm_pid = 10;
  probe->referenced = 300 * kMiB;
  WorkingSetSampler sampler(
      probe, [] { return 0.0; }, RefaultMode::kKvm);
  const absl::Time t0 = absl::FromUnixSeconds(1000);
  const std::vector<WorkingSetTarget> vms = {{"kvm", 10, 512 * kMiB}, {"tcg", 30, 512 * kMiB}};
  auto first = sampler.Round(vms, t0);
  EXPECT_FALSE(first["kvm"].working_set_bytes.has_value());
  EXPECT_TRUE(first["kvm"].error.empty()) << first["kvm"].error;
  auto second = sampler.Round(vms, t0 + absl::Seconds(10));
  ASSERT_TRUE(second["kvm"].working_set_bytes.has_value()) << second["kvm"].error;
  EXPECT_EQ(*second["kvm"].working_set_bytes, 300 * kMiB);
  EXPECT_EQ(second["kvm"].interval, absl::Seconds(10));
  EXPECT_EQ(second["kvm"].method, "refault");
  // The TCG process keeps clear_refs: "kvm" mode refault-samples KVM only.
  ASSERT_TRUE(second["tcg"].working_set_bytes.has_value());
  EXPECT_EQ(second["tcg"].method, "clear_refs");
  // "4" before the read, "1" after it; no "4" for the TCG process.
  EXPECT_EQ(absl::StrJoin(probe->ops, " "), "4:10 1:10 1:30 4:10 read:10 1:10 read:30 1:30");
  // No mapping is locked: the LRU mode does not matter and is not read.
  EXPECT_EQ(probe->lru_gen_reads, 0);
}

TEST(WorkingSetSamplerTest, RefaultModeAllCoversTcgAndAFailedSoftDirtyClearSkipsTheRound) {
  auto probe = std::make_shared<FakeProbe>();
  probe->referenced = 64 * kMiB;
  WorkingSetSampler sampler(
      probe, [] { return 0.0; }, RefaultMode::kAll);
  const absl::Time t0 = absl::FromUnixSeconds(1000);
  sampler.Round({{"tcg", 30, 0}}, t0);
  auto r = sampler.Round({{"tcg", 30, 0}}, t0 + absl::Seconds(10));
  ASSERT_TRUE(r["tcg"].working_set_bytes.has_value()) << r["tcg"].error;
  EXPECT_EQ(r["tcg"].method, "refault");
  EXPECT_EQ(absl::StrJoin(probe->ops, " "), "4:30 1:30 4:30 read:30 1:30");
  // "4" fails (the process went away): no read, no "1", an error.
  probe->gone_pid = 30;
  probe->ops.clear();
  auto gone = sampler.Round({{"tcg", 30, 0}}, t0 + absl::Seconds(20));
  EXPECT_FALSE(gone["tcg"].working_set_bytes.has_value());
  EXPECT_NE(gone["tcg"].error.find("gone"), std::string::npos);
  EXPECT_EQ(absl::StrJoin(probe->ops, " "), "4:30");
  // Back: it starts over (clears only).
  probe->gone_pid = -1;
  auto back = sampler.Round({{"tcg", 30, 0}}, t0 + absl::Seconds(30));
  EXPECT_FALSE(back["tcg"].working_set_bytes.has_value());
}

TEST(WorkingSetSamplerTest, MlockedGuestRamUnderMglruIsNotRefaultSampled) {
  auto probe = std::make_shared<FakeProbe>();
  probe->kvm_pid = 10;
  probe->referenced = 300 * kMiB;
  probe->locked = 512 * kMiB;
  probe->lru_gen = true;
  WorkingSetSampler sampler(
      probe, [] { return 0.0; }, RefaultMode::kAll);
  const absl::Time t0 = absl::FromUnixSeconds(1000);
  const std::vector<WorkingSetTarget> vms = {{"kvm", 10, 0}, {"tcg", 30, 0}};
  sampler.Round(vms, t0);
  auto r = sampler.Round(vms, t0 + absl::Seconds(10));
  for (const char* vm : {"kvm", "tcg"}) {
    EXPECT_FALSE(r[vm].working_set_bytes.has_value()) << vm;
    EXPECT_NE(r[vm].error.find("mlocked"), std::string::npos) << r[vm].error;
    EXPECT_EQ(r[vm].method, "");
  }
  EXPECT_EQ(probe->lru_gen_reads, 1);  // once per round
  // An LRU state that cannot be read counts as on.
  probe->lru_gen = absl::PermissionDeniedError("lru_gen/enabled: denied");
  r = sampler.Round(vms, t0 + absl::Seconds(20));
  EXPECT_FALSE(r["kvm"].working_set_bytes.has_value());
  EXPECT_NE(r["kvm"].error.find("denied"), std::string::npos) << r["kvm"].error;
  // With MGLRU off the kernel marks mlocked pages: measured.
  probe->lru_gen = false;
  r = sampler.Round(vms, t0 + absl::Seconds(30));
  ASSERT_TRUE(r["kvm"].working_set_bytes.has_value()) << r["kvm"].error;
  EXPECT_EQ(r["kvm"].method, "refault");
  // Nor does clear_refs mode care: only refault relies on the marks.
  auto plain_probe = std::make_shared<FakeProbe>();
  plain_probe->locked = 512 * kMiB;
  plain_probe->lru_gen = true;
  WorkingSetSampler plain(plain_probe, [] { return 0.0; });
  plain.Round({{"tcg", 30, 0}}, t0);
  auto p = plain.Round({{"tcg", 30, 0}}, t0 + absl::Seconds(10));
  EXPECT_TRUE(p["tcg"].working_set_bytes.has_value()) << p["tcg"].error;
  EXPECT_EQ(plain_probe->lru_gen_reads, 0);
}

TEST(WorkingSetSamplerTest, HugetlbGuestRamIsNeverMeasured) {
  for (RefaultMode mode : {RefaultMode::kOff, RefaultMode::kAll}) {
    auto probe = std::make_shared<FakeProbe>();
    probe->referenced = 0;
    probe->hugetlb = 512 * kMiB;
    WorkingSetSampler sampler(
        probe, [] { return 0.0; }, mode);
    const absl::Time t0 = absl::FromUnixSeconds(1000);
    sampler.Round({{"tcg", 30, 0}}, t0);
    auto r = sampler.Round({{"tcg", 30, 0}}, t0 + absl::Seconds(10));
    EXPECT_FALSE(r["tcg"].working_set_bytes.has_value()) << RefaultModeName(mode);
    EXPECT_NE(r["tcg"].error.find("hugetlbfs"), std::string::npos) << r["tcg"].error;
  }
}

TEST(RefaultModeTest, ParsesTheThreeNamesAndRejectsOthers) {
  for (RefaultMode m : {RefaultMode::kOff, RefaultMode::kKvm, RefaultMode::kAll}) {
    auto parsed = ParseRefaultMode(RefaultModeName(m));
    ASSERT_TRUE(parsed.ok()) << parsed.status();
    EXPECT_EQ(*parsed, m);
  }
  for (const char* bad : {"", "on", "KVM", "true", "all ", "4"}) {
    auto parsed = ParseRefaultMode(bad);
    ASSERT_FALSE(parsed.ok()) << bad;
    EXPECT_EQ(parsed.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_NE(parsed.status().message().find("off, kvm or all"), std::string::npos);
  }
}

TEST(GuestRamReferencedTest, SumsLockedAndHugetlbOfTheGuestRam) {
  const std::string smaps =
      Entry("55d0a0000000-55d0a0400000", "/usr/bin/qemu-system-x86_64", 4096, 4000) +
      "Locked:         4096 kB\n" +
      Entry("7f3a00000000-7f3a20000000", "/dev/hugepages/qemu_back_mem", 524288, 0) +
      "Shared_Hugetlb:  2048 kB\nPrivate_Hugetlb: 522240 kB\nLocked:       524288 kB\n";
  auto r = ParseGuestRamReferenced(smaps, 512 * kMiB);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->mappings, 1);
  EXPECT_EQ(r->hugetlb_bytes, 512 * kMiB);
  EXPECT_EQ(r->locked_bytes, 512 * kMiB);  // the binary's Locked is not guest RAM
  auto plain = ParseGuestRamReferenced(QemuSmaps(), 512 * kMiB);
  ASSERT_TRUE(plain.ok());
  EXPECT_EQ(plain->hugetlb_bytes, 0u);
  EXPECT_EQ(plain->locked_bytes, 0u);
  auto bad = ParseGuestRamReferenced(Entry("7f00-7f10", "", 4, 0) + "Locked: many kB\n", 0);
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(ProcWorkingSetProbeTest, WritesFourForSoftDirtyAndReadsTheLruGenSwitch) {
  FixtureTree t;
  t.Write("proc/42/clear_refs", "");
  ProcWorkingSetProbe probe(t.path("proc"), "", t.path("mm"));
  ASSERT_TRUE(probe.ClearSoftDirty(42).ok());
  EXPECT_EQ(t.Read("proc/42/clear_refs"), "4\n");
  EXPECT_EQ(probe.ClearSoftDirty(43).code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(probe.ClearSoftDirty(-1).code(), absl::StatusCode::kInvalidArgument);
  // No lru_gen directory: a kernel without MGLRU.
  auto none = probe.LruGenEnabled();
  ASSERT_TRUE(none.ok()) << none.status();
  EXPECT_FALSE(*none);
  t.Write("mm/lru_gen/enabled", "0x0000\n");
  EXPECT_FALSE(*probe.LruGenEnabled());
  t.Write("mm/lru_gen/enabled", "0x0007\n");
  EXPECT_TRUE(*probe.LruGenEnabled());
  t.Write("mm/lru_gen/enabled", "0x0006\n");  // features, but not MGLRU itself
  EXPECT_FALSE(*probe.LruGenEnabled());
  t.Write("mm/lru_gen/enabled", "yes\n");
  EXPECT_EQ(probe.LruGenEnabled().status().code(), absl::StatusCode::kInvalidArgument);
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

// A child process on this real kernel: 256 MiB anonymous, all touched, then
// after the round's clears ("4", then "1") only the first 64 MiB. The next
// refault round ("4", read, "1") must count about 64 MiB of that mapping.
TEST(WorkingSetSamplerTest, RefaultRoundOnARealChildProcessCountsWhatItTouchedAfterTheClear) {
  constexpr size_t kMapped = 256 * kMiB;
  constexpr size_t kTouched = 64 * kMiB;
  int to_child[2];
  int to_parent[2];
  ASSERT_EQ(pipe(to_child), 0);
  ASSERT_EQ(pipe(to_parent), 0);
  const pid_t child = fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    close(to_child[1]);
    close(to_parent[0]);
    void* mem = mmap(nullptr, kMapped, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (mem == MAP_FAILED) _exit(2);
    auto* bytes = static_cast<volatile char*>(mem);
    for (size_t i = 0; i < kMapped; i += 4096) bytes[i] = 1;
    char c = 'r';
    if (write(to_parent[1], &c, 1) != 1) _exit(3);  // all touched
    if (read(to_child[0], &c, 1) != 1) _exit(4);    // cleared: touch 64 MiB
    for (size_t i = 0; i < kTouched; i += 4096) bytes[i] = static_cast<char>(bytes[i] + 1);
    if (write(to_parent[1], &c, 1) != 1) _exit(5);
    // Wait for the parent to close the pipe (or kill us).
    while (read(to_child[0], &c, 1) > 0) {
    }
    _exit(0);
  }
  close(to_child[0]);
  close(to_parent[1]);
  auto reap = [&] {
    close(to_child[1]);
    kill(child, SIGKILL);
    waitpid(child, nullptr, 0);
    close(to_parent[0]);
  };
  // Bounded waits (a child that dies closes its end of the pipe).
  auto wait_child = [&]() -> bool {
    pollfd p{to_parent[0], POLLIN, 0};
    if (poll(&p, 1, 120 * 1000) != 1) return false;
    char c;
    return read(to_parent[0], &c, 1) == 1;
  };
  if (!wait_child()) {
    reap();
    FAIL() << "the child did not map and touch its memory";
  }
  auto probe = std::make_shared<ProcWorkingSetProbe>("/proc", "");
  absl::Status writable = probe->ClearSoftDirty(child);
  if (!writable.ok()) {
    reap();
    GTEST_SKIP() << "clear_refs not writable here: " << writable;
  }
  WorkingSetSampler sampler(probe, nullptr, RefaultMode::kAll);
  const absl::Time t0 = absl::FromUnixSeconds(1000);
  const std::vector<WorkingSetTarget> vm = {{"child", child, kMapped}};
  auto first = sampler.Round(vm, t0);
  EXPECT_TRUE(first["child"].error.empty()) << first["child"].error;
  char go = 'g';
  ASSERT_EQ(write(to_child[1], &go, 1), 1);
  const bool touched = wait_child();
  auto second = sampler.Round(vm, t0 + absl::Seconds(10));
  auto direct = probe->ReadReferenced(child, kMapped);
  reap();
  ASSERT_TRUE(touched) << "the child died before touching";
  ASSERT_TRUE(second["child"].working_set_bytes.has_value()) << second["child"].error;
  EXPECT_EQ(second["child"].method, "refault");
  const uint64_t ws = *second["child"].working_set_bytes;
  // 64 MiB touched; THP may round each end up to 2 MiB, and the clear may
  // race a few pages. Not near 0, not near the 256 MiB touched before.
  EXPECT_GE(ws, 56 * kMiB) << ws / kMiB << " MiB";
  EXPECT_LE(ws, 96 * kMiB) << ws / kMiB << " MiB";
  std::printf("referenced after touching 64 of 256 MiB: %.1f MiB\n",
              static_cast<double>(ws) / kMiB);
  // The round wrote "1" after its read: nothing is referenced any more.
  ASSERT_TRUE(direct.ok()) << direct.status();
  EXPECT_EQ(direct->mapping_bytes, kMapped);
  EXPECT_LT(direct->referenced_bytes, 8 * kMiB);
}

}  // namespace
}  // namespace membroker::agent

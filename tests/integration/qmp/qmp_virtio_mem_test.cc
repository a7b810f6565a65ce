// The QMP backend's virtio-mem sizing and its exclusion of VMs that must not
// be resized, against fake QMP peers (hostile and partial replies included).

#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "node-agent/hypervisor/qmp_client.h"
#include "node-agent/hypervisor/qmp_hypervisor.h"
#include "tests/integration/qmp/fake_qmp_server.h"

namespace membroker::agent {
namespace {

using ::membroker::agent::testing::FakeQmpServer;
using ::membroker::agent::testing::FakeVmState;
using ::testing::Contains;
using ::testing::HasSubstr;
using ::testing::IsEmpty;
using ::testing::Not;

constexpr uint64_t kMiB = 1ULL << 20;

// A /proc/PID/cmdline: arguments each ended by a NUL.
std::string NulJoined(const std::vector<std::string>& args) {
  std::string out;
  for (const std::string& a : args) {
    out += a;
    out.push_back('\0');
  }
  return out;
}

// A guest of 512 MiB boot memory with a virtio-mem device of up to 1 GiB
// (2 MiB blocks) of which `plugged` is plugged, and a balloon when asked.
FakeVmState VmemGuest(uint64_t plugged, bool balloon) {
  FakeVmState s;
  s.base_memory = 512 * kMiB;
  s.actual = 512 * kMiB;
  s.vmem_id = "vm0";
  s.vmem_size = plugged;
  s.vmem_requested = plugged;
  s.vmem_max = 1024 * kMiB;
  s.vmem_block = 2 * kMiB;
  if (!balloon) s.balloon_path.clear();
  return s;
}

class QmpVirtioMemTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/mb-qmp-vmem-XXXXXX";
    ASSERT_NE(mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
  }
  void TearDown() override {
    servers_.clear();
    ASSERT_EQ(std::system(absl::StrCat("rm -rf '", dir_, "'").c_str()), 0);
  }

  FakeQmpServer* AddServer(FakeVmState state) {
    auto server = std::make_unique<FakeQmpServer>(dir_ + "/vm.sock");
    server->set_state(std::move(state));
    EXPECT_TRUE(server->Start());
    servers_.push_back(std::move(server));
    return servers_.back().get();
  }

  std::unique_ptr<QmpHypervisor> Make(const std::string& path,
                                      const std::string& proc_root = "/nonexistent-proc") {
    QmpHypervisorOptions options;
    options.sockets_or_globs = {path};
    options.backoff_seed = 17;
    options.client.io_timeout = absl::Seconds(2);
    options.virtio_mem_stall_timeout = absl::Seconds(20);
    options.proc_root = proc_root;
    auto hv = QmpHypervisor::Create(std::move(options), &clock_);
    EXPECT_TRUE(hv.ok()) << hv.status();
    return hv.ok() ? std::move(hv).value() : nullptr;
  }

  // Lists the one VM.
  VmStatus ListOne(QmpHypervisor& hv) {
    auto vms = hv.ListVms();
    EXPECT_TRUE(vms.ok()) << vms.status();
    EXPECT_EQ(vms.ok() ? vms->size() : 0u, 1u);
    return vms.ok() && vms->size() == 1 ? (*vms)[0] : VmStatus{};
  }

  // Counts requests whose raw line contains `text`.
  static int CountRequests(FakeQmpServer& server, const std::string& text) {
    const std::vector<std::string> r = server.requests();
    return static_cast<int>(std::count_if(r.begin(), r.end(), [&](const std::string& line) {
      return line.find(text) != std::string::npos;
    }));
  }

  ManualClock clock_;
  std::string dir_;
  std::vector<std::unique_ptr<FakeQmpServer>> servers_;
};

TEST_F(QmpVirtioMemTest, SizeIsBootPlusPluggedAndMaxIsBootPlusMaxSize) {
  FakeQmpServer* server = AddServer(VmemGuest(256 * kMiB, /*balloon=*/true));
  auto hv = Make(server->path());
  ASSERT_NE(hv, nullptr);
  const VmStatus vm = ListOne(*hv);
  EXPECT_EQ(vm.max_bytes, 1536 * kMiB);
  EXPECT_EQ(vm.actual_bytes, 768 * kMiB);
  EXPECT_TRUE(vm.sizing.virtio_mem);
  EXPECT_TRUE(vm.sizing.balloon);
  EXPECT_EQ(SizingMechanism(vm.sizing), "virtio-mem+balloon");
  EXPECT_EQ(vm.sizing.boot_bytes, 512 * kMiB);
  EXPECT_EQ(vm.sizing.virtio_mem_plugged_bytes, 256 * kMiB);
  EXPECT_EQ(vm.sizing.virtio_mem_max_bytes, 1024 * kMiB);
  EXPECT_EQ(vm.sizing.virtio_mem_block_bytes, 2 * kMiB);
  EXPECT_EQ(vm.sizing.balloon_inflated_bytes, 0u);
  EXPECT_EQ(vm.sizing.granularity_bytes, kMiB);  // the balloon covers sub-block sizes
  EXPECT_THAT(vm.sizing.excluded_reason, IsEmpty());
}

TEST_F(QmpVirtioMemTest, GrowthPlugsWholeBlocksAndTheBalloonTakesTheRest) {
  FakeQmpServer* server = AddServer(VmemGuest(0, /*balloon=*/true));
  auto hv = Make(server->path());
  const std::string id = ListOne(*hv).vm_id;
  const uint64_t target = 512 * kMiB + 300 * kMiB + 4096;
  ASSERT_TRUE(hv->SetBalloonTarget(id, target).ok());
  // 300 MiB + 4 KiB above boot: 151 blocks of 2 MiB, the balloon holds the
  // 2 MiB - 4 KiB beyond the target.
  EXPECT_EQ(server->state().vmem_requested, 302 * kMiB);
  EXPECT_EQ(server->state().vmem_size, 302 * kMiB);
  const VmStatus vm = ListOne(*hv);
  EXPECT_EQ(vm.actual_bytes, target);
  EXPECT_EQ(vm.sizing.virtio_mem_plugged_bytes, 302 * kMiB);
  EXPECT_EQ(vm.sizing.balloon_inflated_bytes, 2 * kMiB - 4096);
}

TEST_F(QmpVirtioMemTest, ShrinkUnplugsAndBelowBootTheBalloonInflates) {
  FakeQmpServer* server = AddServer(VmemGuest(512 * kMiB, /*balloon=*/true));
  auto hv = Make(server->path());
  const std::string id = ListOne(*hv).vm_id;
  ASSERT_TRUE(hv->SetBalloonTarget(id, 600 * kMiB).ok());
  EXPECT_EQ(server->state().vmem_size, 88 * kMiB);
  EXPECT_EQ(ListOne(*hv).actual_bytes, 600 * kMiB);
  ASSERT_TRUE(hv->SetBalloonTarget(id, 400 * kMiB).ok());
  EXPECT_EQ(server->state().vmem_size, 0u);
  const VmStatus vm = ListOne(*hv);
  EXPECT_EQ(vm.actual_bytes, 400 * kMiB);
  EXPECT_EQ(vm.sizing.balloon_inflated_bytes, 112 * kMiB);
  // Growing again gives the balloon's memory back first.
  ASSERT_TRUE(hv->SetBalloonTarget(id, 700 * kMiB).ok());
  const VmStatus grown = ListOne(*hv);
  EXPECT_EQ(grown.actual_bytes, 700 * kMiB);
  EXPECT_EQ(grown.sizing.balloon_inflated_bytes, 0u);
  EXPECT_EQ(grown.sizing.virtio_mem_plugged_bytes, 188 * kMiB);
}

TEST_F(QmpVirtioMemTest, WithoutABalloonTargetsRoundUpToABlock) {
  FakeQmpServer* server = AddServer(VmemGuest(512 * kMiB, /*balloon=*/false));
  auto hv = Make(server->path());
  const VmStatus before = ListOne(*hv);
  EXPECT_EQ(SizingMechanism(before.sizing), "virtio-mem");
  EXPECT_EQ(before.sizing.granularity_bytes, 2 * kMiB);
  ASSERT_TRUE(hv->SetBalloonTarget(before.vm_id, 600 * kMiB + kMiB).ok());
  EXPECT_EQ(server->state().vmem_requested, 90 * kMiB);
  EXPECT_EQ(ListOne(*hv).actual_bytes, 602 * kMiB);
  EXPECT_EQ(CountRequests(*server, "\"balloon\""), 0);
  // Below boot memory it cannot go: everything is unplugged and the
  // shortfall is said.
  ASSERT_TRUE(hv->SetBalloonTarget(before.vm_id, 300 * kMiB).ok());
  const VmStatus low = ListOne(*hv);
  EXPECT_EQ(low.actual_bytes, 512 * kMiB);
  EXPECT_THAT(low.sizing.shortfall_reason, HasSubstr("below boot memory"));
  EXPECT_EQ(hv->SetBalloonTarget(before.vm_id, 1537 * kMiB).code(),
            absl::StatusCode::kInvalidArgument);
}

TEST_F(QmpVirtioMemTest, StalledUnplugIsCancelledAndTheBalloonTakesTheRemainder) {
  FakeVmState state = VmemGuest(512 * kMiB, /*balloon=*/true);
  state.vmem_unplug_floor = 200 * kMiB;  // unmovable pages below this
  FakeQmpServer* server = AddServer(state);
  auto hv = Make(server->path());
  const std::string id = ListOne(*hv).vm_id;
  ASSERT_TRUE(hv->SetBalloonTarget(id, 612 * kMiB).ok());
  EXPECT_EQ(server->state().vmem_requested, 100 * kMiB);
  EXPECT_EQ(server->state().vmem_size, 200 * kMiB);
  // Not yet stalled: only the timeout makes it so.
  clock_.Advance(absl::Seconds(19));
  VmStatus vm = ListOne(*hv);
  EXPECT_EQ(vm.actual_bytes, 712 * kMiB);
  EXPECT_THAT(vm.sizing.shortfall_reason, IsEmpty());
  clock_.Advance(absl::Seconds(2));
  vm = ListOne(*hv);
  EXPECT_THAT(vm.sizing.shortfall_reason, HasSubstr("unplug stalled"));
  EXPECT_THAT(vm.sizing.shortfall_reason, HasSubstr("balloon takes the remaining 100.0 MiB"));
  // The request was withdrawn to what the device holds.
  EXPECT_EQ(server->state().vmem_requested, 200 * kMiB);
  vm = ListOne(*hv);
  EXPECT_EQ(vm.actual_bytes, 612 * kMiB);
  EXPECT_EQ(vm.sizing.balloon_inflated_bytes, 100 * kMiB);
  // The same target again does not retry the stalled unplug.
  const int unplugs = CountRequests(*server, "requested-size");
  ASSERT_TRUE(hv->SetBalloonTarget(id, 612 * kMiB).ok());
  EXPECT_EQ(CountRequests(*server, "requested-size"), unplugs);
  EXPECT_EQ(ListOne(*hv).actual_bytes, 612 * kMiB);
}

TEST_F(QmpVirtioMemTest, StalledUnplugWithoutABalloonIsReportedAndLeftShort) {
  FakeVmState state = VmemGuest(512 * kMiB, /*balloon=*/false);
  state.vmem_unplug_floor = 300 * kMiB;
  FakeQmpServer* server = AddServer(state);
  auto hv = Make(server->path());
  const std::string id = ListOne(*hv).vm_id;
  ASSERT_TRUE(hv->SetBalloonTarget(id, 612 * kMiB).ok());
  clock_.Advance(absl::Seconds(25));
  ListOne(*hv);  // the stall is found here
  const VmStatus vm = ListOne(*hv);
  EXPECT_EQ(vm.actual_bytes, 812 * kMiB);
  EXPECT_THAT(vm.sizing.shortfall_reason, HasSubstr("unplug stalled"));
  EXPECT_THAT(vm.sizing.shortfall_reason, HasSubstr("no balloon"));
  EXPECT_EQ(server->state().vmem_requested, 300 * kMiB);
}

TEST_F(QmpVirtioMemTest, DeviceThatNeverReachesItsPlugRequestIsReported) {
  FakeVmState state = VmemGuest(0, /*balloon=*/false);
  state.vmem_plug_limit = 0;  // no driver in the guest
  FakeQmpServer* server = AddServer(state);
  auto hv = Make(server->path());
  const std::string id = ListOne(*hv).vm_id;
  ASSERT_TRUE(hv->SetBalloonTarget(id, 1024 * kMiB).ok());
  EXPECT_EQ(server->state().vmem_requested, 512 * kMiB);
  clock_.Advance(absl::Seconds(10));
  EXPECT_THAT(ListOne(*hv).sizing.shortfall_reason, IsEmpty());
  clock_.Advance(absl::Seconds(11));
  const VmStatus vm = ListOne(*hv);
  EXPECT_EQ(vm.actual_bytes, 512 * kMiB);
  EXPECT_THAT(vm.sizing.shortfall_reason, HasSubstr("plug stalled"));
  // The plug request stays (harmless); a new target clears the report.
  EXPECT_EQ(server->state().vmem_requested, 512 * kMiB);
  ASSERT_TRUE(hv->SetBalloonTarget(id, 800 * kMiB).ok());
  EXPECT_THAT(ListOne(*hv).sizing.shortfall_reason, IsEmpty());
}

TEST_F(QmpVirtioMemTest, SizeChangeEventsKeepTheSizeWhenPollingFails) {
  FakeQmpServer* server = AddServer(VmemGuest(0, /*balloon=*/false));
  auto hv = Make(server->path());
  const std::string id = ListOne(*hv).vm_id;
  server->set_override(
      [](const std::string& command,
         const google::protobuf::Struct&) -> std::optional<std::vector<std::string>> {
        if (command != "query-memory-devices") return std::nullopt;
        return std::vector<std::string>{
            R"({"error": {"class": "GenericError", "desc": "busy"}, "id": "$ID"})"};
      });
  ASSERT_TRUE(hv->SetBalloonTarget(id, 768 * kMiB).ok());
  const VmStatus vm = ListOne(*hv);
  EXPECT_EQ(vm.sizing.virtio_mem_plugged_bytes, 256 * kMiB);
  EXPECT_EQ(vm.actual_bytes, 768 * kMiB);
}

TEST_F(QmpVirtioMemTest, HostileDeviceListsLeaveABalloonOnlyVm) {
  for (const char* reply : {
           R"("not a list")",
           R"([{"type": "virtio-mem", "data": {"id": "vm0", "size": -1, "requested-size": 0,
                "max-size": 1073741824, "block-size": 2097152}}])",
           R"([{"type": "virtio-mem", "data": {"id": "vm0", "size": 0, "requested-size": 0,
                "max-size": 1073741824, "block-size": 0}}])",
           R"([{"type": "virtio-mem", "data": {"id": "vm0", "size": "0", "requested-size": 0,
                "max-size": 1073741824, "block-size": 2097152}}])",
           R"([{"type": "virtio-mem"}, 7, {"data": {}}])",
       }) {
    SCOPED_TRACE(reply);
    FakeVmState state = VmemGuest(0, /*balloon=*/true);
    std::string one_line = reply;
    std::replace(one_line.begin(), one_line.end(), '\n', ' ');
    state.memory_devices_json = one_line;
    servers_.clear();
    FakeQmpServer* server = AddServer(state);
    auto hv = Make(server->path());
    const VmStatus vm = ListOne(*hv);
    EXPECT_FALSE(vm.sizing.virtio_mem);
    EXPECT_EQ(SizingMechanism(vm.sizing), "balloon");
    EXPECT_EQ(vm.max_bytes, 512 * kMiB);
    ASSERT_TRUE(hv->SetBalloonTarget(vm.vm_id, 256 * kMiB).ok());
    EXPECT_EQ(CountRequests(*server, "requested-size"), 0);
  }
}

TEST(ParseQmpVirtioMemDevicesTest, KeepsValidEntriesAndSaysWhyOthersAreLeftOut) {
  auto parsed_json = ParseQmpJson(R"({"return": [
      {"type": "dimm", "data": {"id": "d0", "size": 1073741824}},
      {"type": "virtio-mem", "data": {"id": "good", "memdev": "/objects/m", "size": 4194304,
       "requested-size": 4194304, "max-size": 8388608, "block-size": 2097152}},
      {"type": "virtio-mem", "data": {"size": 0, "requested-size": 0, "max-size": 8388608,
       "block-size": 2097152}},
      {"type": "virtio-mem", "data": {"id": "neg", "size": -4096, "requested-size": 0,
       "max-size": 8388608, "block-size": 2097152}},
      {"type": "virtio-mem", "data": {"id": "zero", "size": 0, "requested-size": 0,
       "max-size": 8388608, "block-size": 0}},
      {"type": "virtio-mem", "data": {"id": "odd", "size": 0, "requested-size": 0,
       "max-size": 8388608, "block-size": 3000000}},
      {"type": "virtio-mem", "data": {"id": "big", "size": 16777216, "requested-size": 0,
       "max-size": 8388608, "block-size": 2097152}},
      {"type": "virtio-mem", "data": {"id": "frac", "size": 0.5, "requested-size": 0,
       "max-size": 8388608, "block-size": 2097152}},
      {"type": "virtio-mem", "data": {"id": "a/b", "size": 0, "requested-size": 0,
       "max-size": 8388608, "block-size": 2097152}},
      {"type": "virtio-mem", "data": "nope"},
      "string", {"data": {}}]})");
  ASSERT_TRUE(parsed_json.ok()) << parsed_json.status();
  std::vector<std::string> problems;
  auto devices = ParseQmpVirtioMemDevices(parsed_json->fields().at("return"), &problems);
  ASSERT_TRUE(devices.ok()) << devices.status();
  ASSERT_EQ(devices->size(), 1u);
  EXPECT_EQ((*devices)[0].id, "good");
  EXPECT_EQ((*devices)[0].memdev, "/objects/m");
  EXPECT_EQ((*devices)[0].size, 4194304u);
  EXPECT_EQ((*devices)[0].max_size, 8388608u);
  EXPECT_EQ((*devices)[0].block_size, 2097152u);
  EXPECT_EQ(problems.size(), 10u);
  EXPECT_THAT(problems, Contains(HasSubstr("no usable id")));
  EXPECT_THAT(problems, Contains(HasSubstr("not a positive power of two")));
  EXPECT_THAT(problems, Contains(HasSubstr("above max-size")));
  EXPECT_THAT(problems, Contains(HasSubstr("non-negative integers")));

  google::protobuf::Value not_list;
  not_list.set_string_value("x");
  EXPECT_EQ(ParseQmpVirtioMemDevices(not_list).status().code(), absl::StatusCode::kInvalidArgument);
}

// --- VMs that must not be resized ---

TEST_F(QmpVirtioMemTest, VmWithNeitherDeviceIsExcludedAndNothingIsSent) {
  FakeVmState state;
  state.balloon_path.clear();  // no virtio-balloon, no virtio-mem
  FakeQmpServer* server = AddServer(state);
  auto hv = Make(server->path());
  const VmStatus vm = ListOne(*hv);
  EXPECT_EQ(SizingMechanism(vm.sizing), "none");
  EXPECT_THAT(vm.sizing.excluded_reason, HasSubstr("no balloon or virtio-mem device"));
  EXPECT_FALSE(hv->SetBalloonTarget(vm.vm_id, 256 * kMiB).ok());
  EXPECT_EQ(CountRequests(*server, "\"balloon\""), 0);
}

TEST_F(QmpVirtioMemTest, VfioDeviceExcludesTheVmAndShrinkIsRefused) {
  FakeVmState state;
  state.extra_peripherals = {{"hostdev0", "child<vfio-pci>"}};
  FakeQmpServer* server = AddServer(state);
  auto hv = Make(server->path());
  const VmStatus vm = ListOne(*hv);
  EXPECT_THAT(vm.sizing.excluded_reason, HasSubstr("PCI passthrough"));
  EXPECT_THAT(vm.sizing.excluded_reason, HasSubstr("hostdev0"));
  absl::Status shrink = hv->SetBalloonTarget(vm.vm_id, 256 * kMiB);
  EXPECT_EQ(shrink.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(shrink.message()), HasSubstr("PCI passthrough"));
  // Its own size is accepted and sends nothing.
  EXPECT_TRUE(hv->SetBalloonTarget(vm.vm_id, 512 * kMiB).ok());
  EXPECT_EQ(CountRequests(*server, "\"balloon\""), 0);
  EXPECT_EQ(server->state().actual, 512 * kMiB);
}

TEST_F(QmpVirtioMemTest, HugetlbBackendsExcludeTheVm) {
  {
    FakeVmState state;
    state.memdev_json = R"([{"id": "ram0", "size": 536870912, "merge": true, "dump": true,
        "prealloc": true, "share": false, "host-nodes": [], "policy": "default"}])";
    std::replace(state.memdev_json.begin(), state.memdev_json.end(), '\n', ' ');
    state.object_props["/objects/ram0|hugetlb"] = "true";
    FakeQmpServer* server = AddServer(state);
    auto hv = Make(server->path());
    EXPECT_THAT(ListOne(*hv).sizing.excluded_reason, HasSubstr("hugetlb=on"));
  }
  servers_.clear();
  {
    FakeVmState state;
    state.memdev_json = R"([{"id": "ram1", "size": 536870912}])";
    state.object_props["/objects/ram1|mem-path"] = R"("/dev/hugepages/qemu")";
    FakeQmpServer* server = AddServer(state);
    auto hv = Make(server->path());
    EXPECT_THAT(ListOne(*hv).sizing.excluded_reason, HasSubstr("/dev/hugepages"));
  }
}

TEST_F(QmpVirtioMemTest, OrdinaryOrHostileMemdevRepliesDoNotExclude) {
  for (const char* memdev : {
           R"([{"id": "ram0", "size": 536870912, "prealloc": false}])",
           R"({"id": "ram0"})",
           R"([{"size": 1}, 5, {"id": 7}, {"id": "../x"}])",
           R"([])",
       }) {
    SCOPED_TRACE(memdev);
    FakeVmState state;
    state.memdev_json = memdev;
    // A string where a bool belongs, and a mem-path that is not hugetlbfs.
    state.object_props["/objects/ram0|hugetlb"] = R"("yes")";
    state.object_props["/objects/ram0|mem-path"] = R"("/var/lib/qemu/ram")";
    servers_.clear();
    FakeQmpServer* server = AddServer(state);
    auto hv = Make(server->path());
    const VmStatus vm = ListOne(*hv);
    EXPECT_THAT(vm.sizing.excluded_reason, IsEmpty());
    EXPECT_TRUE(hv->SetBalloonTarget(vm.vm_id, 256 * kMiB).ok());
  }
}

TEST_F(QmpVirtioMemTest, LockedMemoryOfTheQemuProcessExcludesTheVm) {
  // The fake peer runs in this process: its pid is ours, its /proc a fixture.
  const std::string proc = dir_ + "/proc";
  const std::string pid_dir = absl::StrCat(proc, "/", ::getpid());
  ASSERT_EQ(::mkdir(proc.c_str(), 0700), 0);
  ASSERT_EQ(::mkdir(pid_dir.c_str(), 0700), 0);
  {
    std::ofstream(pid_dir + "/status") << "Name:\tqemu-system-x86\nVmLck:\t  524288 kB\n";
    FakeQmpServer* server = AddServer(FakeVmState{});
    auto hv = Make(server->path(), proc);
    EXPECT_THAT(ListOne(*hv).sizing.excluded_reason, HasSubstr("524288 KiB locked"));
  }
  servers_.clear();
  {
    std::ofstream(pid_dir + "/status") << "Name:\tqemu-system-x86\nVmLck:\t       0 kB\n";
    std::ofstream(pid_dir + "/cmdline")
        << NulJoined({"qemu-system-x86_64", "-overcommit", "mem-lock=on"});
    FakeQmpServer* server = AddServer(FakeVmState{});
    auto hv = Make(server->path(), proc);
    EXPECT_THAT(ListOne(*hv).sizing.excluded_reason, HasSubstr("mem-lock=on"));
  }
  servers_.clear();
  {
    std::ofstream(pid_dir + "/status") << "VmLck:\tgarbage kB\n";
    std::ofstream(pid_dir + "/cmdline") << NulJoined({"qemu-system-x86_64", "-m", "512"});
    FakeQmpServer* server = AddServer(FakeVmState{});
    auto hv = Make(server->path(), proc);
    EXPECT_THAT(ListOne(*hv).sizing.excluded_reason, IsEmpty());
  }
}

}  // namespace
}  // namespace membroker::agent

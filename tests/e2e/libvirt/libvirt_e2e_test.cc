// End to end with a real libvirtd (qemu:///system) and one QEMU guest under
// TCG: the libvirt backend (LibvirtHypervisor, driven directly) resizes the
// guest's virtio-mem device through virDomainUpdateDeviceFlags.
//
// The guest is a transient domain (virDomainCreateXML) with 512 MiB of boot
// memory in one NUMA cell, a virtio balloon with statistics every second,
// and a 1 GiB virtio-mem device (2 MiB blocks) that starts empty; its
// kernel onlines hot-plugged memory as movable
// (memhp_default_state=online_movable) so that it can be unplugged again.
// VirtioMemPlugsAndUnplugs:
//   - ListVms shows it sized by virtio-mem (boot 512 MiB, max 1.5 GiB);
//   - SetBalloonTarget(1024 MiB) requests 512 MiB of the device and the
//     live XML's <current> reaches it (the guest's MemTotal grows by as
//     much); SetBalloonTarget(600 MiB) unplugs back to 88 MiB (and the
//     guest's MemTotal falls again);
//   - the guest's console shows no OOM kill.
//
// Needs libvirt-daemon, libvirt-daemon-driver-qemu, libvirt-clients,
// qemu-system-x86, busybox-static and the guest kernel with virtio_mem.ko
// (scripts/fetch-guest-kernel.sh). Skips outside CI when one is missing and
// fails in CI (CI=true). When libvirtd cannot be reached and the test runs
// as root, it prepares the directories and /etc/libvirt/qemu.conf (user and
// group root, no security driver; the libvirt-qemu user libvirt resolves
// before reading it) and starts virtlogd and libvirtd in the
// foreground as its own children, stopping them at the end.

#include <libvirt/libvirt.h>
#include <libvirt/virterror.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "common/clock.h"
#include "gtest/gtest.h"
#include "node-agent/hypervisor/libvirt_hypervisor.h"
#include "tests/e2e/qemu/qemu_guest.h"
#include "tests/e2e/qemu/qemu_test_env.h"
#include "tests/util/child_process.h"
#include "tests/util/wait.h"

namespace membroker::e2e {
namespace {

using agent::LibvirtHypervisor;
using agent::LibvirtHypervisorOptions;
using agent::VmStatus;

constexpr uint64_t kMiB = 1ULL << 20;
constexpr char kUri[] = "qemu:///system";

void SilentLibvirtErrors(void* /*data*/, virErrorPtr /*error*/) {}

// libvirt's last error message, or "unknown error".
std::string LibvirtMessage() {
  virErrorPtr e = virGetLastError();
  return e != nullptr && e->message != nullptr ? e->message : "unknown error";
}

// Whether qemu:///system answers.
bool LibvirtReachable() {
  virConnectPtr c = virConnectOpen(kUri);
  if (c == nullptr) return false;
  virConnectClose(c);
  return true;
}

// Whether something accepts connections on the unix socket at `path` (a
// socket file left by a daemon that died does not).
bool UnixSocketAnswers(const std::string& path) {
  sockaddr_un addr{};
  if (path.size() >= sizeof(addr.sun_path)) return false;
  int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return false;
  addr.sun_family = AF_UNIX;
  std::memcpy(addr.sun_path, path.c_str(), path.size() + 1);
  const bool ok = ::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0;
  ::close(fd);
  return ok;
}

std::string ExecutableIn(const std::vector<std::string>& dirs, const std::string& name) {
  for (const std::string& d : dirs) {
    std::string path = absl::StrCat(d, "/", name);
    if (access(path.c_str(), X_OK) == 0) return path;
  }
  return "";
}

// Sets `key = "value"` in a libvirt config file unless an uncommented line
// already sets the key (the operator's value is kept).
void EnsureConfigKey(const std::string& path, const std::string& key, const std::string& value) {
  for (absl::string_view line : absl::StrSplit(ReadWholeFile(path), '\n')) {
    line = absl::StripLeadingAsciiWhitespace(line);
    if (absl::ConsumePrefix(&line, key) &&
        absl::StartsWith(absl::StripLeadingAsciiWhitespace(line), "=")) {
      return;
    }
  }
  std::ofstream(path, std::ios::app) << key << " = \"" << value << "\"\n";
}

// The guest's last "MB-MEM <MemTotal kB> <MemAvailable kB>" MemTotal in
// bytes; 0 before the first.
uint64_t LastMemTotal(const std::string& console) {
  size_t at = console.rfind("MB-MEM ");
  if (at == std::string::npos) return 0;
  size_t end = console.find('\n', at);
  if (end == std::string::npos) at = console.rfind("MB-MEM ", at == 0 ? 0 : at - 1);
  if (at == std::string::npos) return 0;
  end = console.find('\n', at);
  if (end == std::string::npos) return 0;
  std::vector<std::string> parts =
      absl::StrSplit(absl::StripAsciiWhitespace(console.substr(at + 7, end - at - 7)), ' ');
  uint64_t kb = 0;
  if (parts.empty() || !absl::SimpleAtoi(parts[0], &kb)) return 0;
  return kb * 1024;
}

class LibvirtE2eTest : public ::testing::Test {
 protected:
  void SetUp() override {
    virSetErrorFunc(nullptr, SilentLibvirtErrors);
    kernel_dir_ = Env("MB_GUEST_KERNEL_DIR", MB_DEFAULT_GUEST_KERNEL_DIR);
    busybox_ = Env("MB_BUSYBOX", "/bin/busybox");
    const std::vector<std::string> sbin = {"/usr/sbin", "/sbin", "/usr/bin", "/bin"};
    libvirtd_ = ExecutableIn(sbin, "libvirtd");
    virtlogd_ = ExecutableIn(sbin, "virtlogd");
    MB_REQUIRE(!libvirtd_.empty() && !virtlogd_.empty(),
               "libvirtd and virtlogd (apt: libvirt-daemon libvirt-daemon-driver-qemu)");
    MB_REQUIRE(OnPath("virsh"), "virsh (apt: libvirt-clients)");
    MB_REQUIRE(OnPath("qemu-system-x86_64"), "qemu-system-x86_64 (apt: qemu-system-x86)");
    MB_REQUIRE(FileExists(busybox_), "busybox at " + busybox_ + " (apt: busybox-static)");
    MB_REQUIRE(FileExists(kernel_dir_ + "/vmlinuz") && FileExists(kernel_dir_ + "/virtio_mem.ko"),
               "guest kernel and virtio_mem.ko in " + kernel_dir_ +
                   " (run scripts/fetch-guest-kernel.sh " + kernel_dir_ + ")");
    MB_REQUIRE(!std::string(MB_MEMLOAD_PATH).empty(), "mb_memload (tests/e2e/qemu)");
    char tmpl[] = "/tmp/mb-libvirt-e2e-XXXXXX";
    ASSERT_NE(mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
    ::chmod(dir_.c_str(), 0755);
    if (!LibvirtReachable()) {
      MB_REQUIRE(geteuid() == 0, "a running libvirtd at qemu:///system (or root to start one)");
      StartDaemons();
      if (HasFatalFailure()) return;
    }
    conn_ = virConnectOpen(kUri);
    ASSERT_NE(conn_, nullptr) << "qemu:///system: " << LibvirtMessage();
    absl::Status st = BuildInitramfs(kernel_dir_, busybox_, MB_MEMLOAD_PATH, dir_ + "/initrd.cpio");
    ASSERT_TRUE(st.ok()) << st;
  }

  void TearDown() override {
    if (dom_ != nullptr) {
      if (virDomainDestroy(dom_) != 0) {
        ADD_FAILURE() << "destroying " << name_ << ": " << LibvirtMessage();
      }
      virDomainFree(dom_);
      dom_ = nullptr;
    }
    if (conn_ != nullptr) virConnectClose(conn_);
    conn_ = nullptr;
    // Only what this test started, by its own handles.
    libvirtd_proc_.Stop();
    virtlogd_proc_.Stop();
    if (!HasFailure() && !dir_.empty()) {
      std::system(absl::StrCat("rm -rf '", dir_, "'").c_str());
    } else if (!dir_.empty()) {
      std::printf("kept %s (console, libvirtd log)\n", dir_.c_str());
    }
  }

  // As ENVIRONMENT.md describes a libvirtd without systemd.
  void StartDaemons() {
    for (const char* d : {"/var/log/libvirt", "/var/run/libvirt", "/var/lib/libvirt",
                          "/var/lib/libvirt/qemu", "/etc/libvirt"}) {
      ::mkdir(d, 0755);
    }
    // The QEMU driver resolves its built-in default user (Debian's
    // libvirt-qemu, made by libvirt-daemon-system, not installed here)
    // before it reads qemu.conf: it must exist even though qemu.conf says
    // root.
    if (std::system("getent passwd libvirt-qemu >/dev/null") != 0) {
      ASSERT_EQ(std::system("getent group libvirt-qemu >/dev/null || groupadd --system "
                            "libvirt-qemu; useradd --system --gid libvirt-qemu --no-create-home "
                            "--home-dir /var/lib/libvirt --shell /usr/sbin/nologin libvirt-qemu"),
                0)
          << "cannot create the libvirt-qemu user";
    }
    const std::string conf = "/etc/libvirt/qemu.conf";
    EnsureConfigKey(conf, "user", "root");
    EnsureConfigKey(conf, "group", "root");
    EnsureConfigKey(conf, "security_driver", "none");
    if (!UnixSocketAnswers("/var/run/libvirt/virtlogd-sock")) {
      ASSERT_TRUE(virtlogd_proc_.Start({virtlogd_}, dir_ + "/virtlogd.log").ok());
    }
    ASSERT_TRUE(libvirtd_proc_.Start({libvirtd_}, dir_ + "/libvirtd.log").ok());
    bool up = membroker::testing::WaitUntil(
        [&] { return LibvirtReachable() || !libvirtd_proc_.Running(); }, absl::Seconds(30),
        absl::Milliseconds(200));
    ASSERT_TRUE(up && libvirtd_proc_.Running())
        << "libvirtd did not come up: " << ReadWholeFile(dir_ + "/libvirtd.log");
  }

  std::string DomainXml(const std::string& append) const {
    return absl::StrCat(
        "<domain type='qemu'>\n"
        "  <name>",
        name_,
        "</name>\n"
        "  <maxMemory slots='2' unit='MiB'>2560</maxMemory>\n"
        "  <memory unit='MiB'>1536</memory>\n"
        "  <currentMemory unit='MiB'>512</currentMemory>\n"
        "  <vcpu>1</vcpu>\n"
        "  <os>\n"
        "    <type arch='x86_64' machine='pc'>hvm</type>\n"
        "    <kernel>",
        kernel_dir_, "/vmlinuz</kernel>\n    <initrd>", dir_,
        "/initrd.cpio</initrd>\n"
        "    <cmdline>console=ttyS0 panic=-1 loglevel=4 ",
        append,
        "</cmdline>\n"
        "  </os>\n"
        "  <cpu><numa><cell id='0' cpus='0' memory='512' unit='MiB'/></numa></cpu>\n"
        "  <on_poweroff>destroy</on_poweroff>\n"
        "  <on_reboot>destroy</on_reboot>\n"
        "  <on_crash>destroy</on_crash>\n"
        "  <devices>\n"
        "    <serial type='file'><source path='",
        console_path(),
        "'/><target port='0'/></serial>\n"
        "    <console type='file'><source path='",
        console_path(),
        "'/><target type='serial' port='0'/></console>\n"
        "    <memballoon model='virtio'><stats period='1'/></memballoon>\n"
        "    <memory model='virtio-mem'>\n"
        "      <target>\n"
        "        <size unit='MiB'>1024</size>\n"
        "        <node>0</node>\n"
        "        <block unit='KiB'>2048</block>\n"
        "        <requested unit='MiB'>0</requested>\n"
        "      </target>\n"
        "    </memory>\n"
        "  </devices>\n"
        "</domain>\n");
  }

  std::string console_path() const { return dir_ + "/console.log"; }
  std::string Console() const { return ReadWholeFile(console_path()); }

  // The <memory model='virtio-mem'> element of the live XML, for messages.
  std::string VirtioMemXml() const {
    char* xml = virDomainGetXMLDesc(dom_, 0);
    if (xml == nullptr) return "(no XML: " + LibvirtMessage() + ")";
    std::string s = xml;
    free(xml);
    auto devices = agent::LibvirtVirtioMemDevices(s);
    if (!devices.ok()) return std::string(devices.status().message());
    return devices->empty() ? "(no virtio-mem device)" : devices->front().xml;
  }

  // This domain in ListVms; nullopt when missing or on error.
  std::optional<VmStatus> Find(LibvirtHypervisor& hv) {
    auto vms = hv.ListVms();
    if (!vms.ok()) return std::nullopt;
    for (const VmStatus& vm : *vms) {
      if (vm.vm_id == uuid_) return vm;
    }
    return std::nullopt;
  }

  // Polls ListVms until `done` holds for this domain (bounded); the last
  // status seen is left in `*last`.
  bool WaitForSizing(LibvirtHypervisor& hv, const std::function<bool(const VmStatus&)>& done,
                     absl::Duration timeout, std::optional<VmStatus>* last) {
    return membroker::testing::WaitUntil(
        [&] {
          *last = Find(hv);
          return last->has_value() && done(**last);
        },
        timeout, absl::Milliseconds(500));
  }

  std::string kernel_dir_;
  std::string busybox_;
  std::string libvirtd_;
  std::string virtlogd_;
  std::string dir_;
  std::string name_ = absl::StrCat("mb-e2e-", getpid());
  std::string uuid_;
  membroker::testing::ChildProcess virtlogd_proc_;
  membroker::testing::ChildProcess libvirtd_proc_;
  virConnectPtr conn_ = nullptr;
  virDomainPtr dom_ = nullptr;
};

TEST_F(LibvirtE2eTest, VirtioMemPlugsAndUnplugs) {
  const auto t0 = std::chrono::steady_clock::now();
  auto secs = [&] {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  };
  const std::string xml =
      DomainXml("memhp_default_state=online_movable mb_role=idle mb_memreport=on");
  dom_ = virDomainCreateXML(conn_, xml.c_str(), 0);
  ASSERT_NE(dom_, nullptr) << "virDomainCreateXML: " << LibvirtMessage() << "\n" << xml;
  char uuid[VIR_UUID_STRING_BUFLEN];
  ASSERT_EQ(virDomainGetUUIDString(dom_, uuid), 0);
  uuid_ = uuid;
  ASSERT_TRUE(
      membroker::testing::WaitUntil([&] { return Console().find("MB-READY") != std::string::npos; },
                                    absl::Seconds(90), absl::Milliseconds(200)))
      << "the guest did not boot; console:\n"
      << Console();
  ASSERT_EQ(Console().find("MB-INSMOD-FAILED"), std::string::npos) << Console();
  std::printf("[%5.1fs] guest up; virtio-mem XML:\n%s\n", secs(), VirtioMemXml().c_str());

  LibvirtHypervisorOptions options;
  options.uri = kUri;
  auto hv = LibvirtHypervisor::Create(options, RealClock::Get());
  ASSERT_TRUE(hv.ok()) << hv.status();

  // Sized by virtio-mem: 512 MiB boot, 1 GiB device, nothing plugged.
  std::optional<VmStatus> vm = Find(**hv);
  ASSERT_TRUE(vm.has_value()) << "ListVms does not show " << name_;
  EXPECT_EQ(vm->name, name_);
  EXPECT_TRUE(vm->sizing.virtio_mem);
  EXPECT_TRUE(vm->sizing.balloon);
  EXPECT_EQ(vm->sizing.boot_bytes, 512 * kMiB);
  EXPECT_EQ(vm->max_bytes, 1536 * kMiB);
  EXPECT_EQ(vm->sizing.virtio_mem_max_bytes, 1024 * kMiB);
  EXPECT_EQ(vm->sizing.virtio_mem_block_bytes, 2 * kMiB);
  EXPECT_EQ(vm->sizing.virtio_mem_plugged_bytes, 0u);
  // The guest prints its first MemTotal (MB-MEM) a moment after MB-READY.
  EXPECT_TRUE(membroker::testing::WaitUntil([&] { return LastMemTotal(Console()) > 0; },
                                            absl::Seconds(20), absl::Milliseconds(100)))
      << Console();
  const uint64_t boot_total = LastMemTotal(Console());

  // Grow: 512 MiB above boot memory, through UpdateDeviceFlags.
  absl::Status st = (*hv)->SetBalloonTarget(uuid_, 1024 * kMiB);
  ASSERT_TRUE(st.ok()) << st << "\nvirtio-mem XML:\n" << VirtioMemXml();
  const double plug_from = secs();
  std::optional<VmStatus> last;
  bool plugged = WaitForSizing(
      **hv, [](const VmStatus& v) { return v.sizing.virtio_mem_plugged_bytes >= 512 * kMiB; },
      absl::Seconds(60), &last);
  ASSERT_TRUE(plugged) << "plugged " << (last ? last->sizing.virtio_mem_plugged_bytes / kMiB : 0)
                       << " MiB of 512 requested; XML:\n"
                       << VirtioMemXml() << "\nconsole:\n"
                       << Console();
  std::printf("[%5.1fs] plugged %llu MiB (requested %llu) in %.1f s; XML:\n%s\n", secs(),
              static_cast<unsigned long long>(last->sizing.virtio_mem_plugged_bytes / kMiB),
              static_cast<unsigned long long>(last->sizing.virtio_mem_requested_bytes / kMiB),
              secs() - plug_from, VirtioMemXml().c_str());
  EXPECT_EQ(last->sizing.virtio_mem_requested_bytes, 512 * kMiB);
  EXPECT_EQ(last->sizing.virtio_mem_plugged_bytes, 512 * kMiB);
  // The guest sees it: its MemTotal grows by about the plugged size.
  ASSERT_GT(boot_total, 0u) << Console();
  EXPECT_TRUE(membroker::testing::WaitUntil(
      [&] { return LastMemTotal(Console()) >= boot_total + 500 * kMiB; }, absl::Seconds(20),
      absl::Milliseconds(500)))
      << "guest MemTotal " << LastMemTotal(Console()) / kMiB << " MiB, at boot "
      << boot_total / kMiB;

  // Shrink: 600 MiB is 88 MiB above boot memory (a whole number of blocks).
  st = (*hv)->SetBalloonTarget(uuid_, 600 * kMiB);
  ASSERT_TRUE(st.ok()) << st << "\nvirtio-mem XML:\n" << VirtioMemXml();
  const double unplug_from = secs();
  bool unplugged = WaitForSizing(
      **hv, [](const VmStatus& v) { return v.sizing.virtio_mem_plugged_bytes <= 88 * kMiB; },
      absl::Seconds(60), &last);
  ASSERT_TRUE(unplugged) << "plugged still "
                         << (last ? last->sizing.virtio_mem_plugged_bytes / kMiB : 0)
                         << " MiB, 88 requested; shortfall: "
                         << (last ? last->sizing.shortfall_reason : "") << "\nXML:\n"
                         << VirtioMemXml() << "\nconsole:\n"
                         << Console();
  std::printf("[%5.1fs] unplugged to %llu MiB (requested %llu) in %.1f s; XML:\n%s\n", secs(),
              static_cast<unsigned long long>(last->sizing.virtio_mem_plugged_bytes / kMiB),
              static_cast<unsigned long long>(last->sizing.virtio_mem_requested_bytes / kMiB),
              secs() - unplug_from, VirtioMemXml().c_str());
  EXPECT_EQ(last->sizing.virtio_mem_requested_bytes, 88 * kMiB);
  EXPECT_EQ(last->sizing.virtio_mem_plugged_bytes, 88 * kMiB);
  EXPECT_TRUE(last->sizing.shortfall_reason.empty()) << last->sizing.shortfall_reason;
  // The guest gives it back: its MemTotal falls to about boot + 88 MiB.
  EXPECT_TRUE(membroker::testing::WaitUntil(
      [&] { return LastMemTotal(Console()) <= boot_total + 100 * kMiB; }, absl::Seconds(20),
      absl::Milliseconds(500)))
      << "guest MemTotal " << LastMemTotal(Console()) / kMiB << " MiB, at boot "
      << boot_total / kMiB;

  const std::string console = Console();
  EXPECT_EQ(OomKills(console), 0) << console;
  std::printf("[%5.1fs] guest's last line: %s\n", secs(), LastLine(console).c_str());
}

}  // namespace
}  // namespace membroker::e2e

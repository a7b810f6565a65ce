#pragma once
// Helpers of the QEMU end-to-end test: an initramfs writer (newc cpio, no
// external tool), and a QEMU guest booted under TCG with a virtio balloon
// and two QMP sockets (one for the agent, one for the test to watch). The
// QEMU process is a tests/util ChildProcess.

#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/time.h"
#include "tests/util/child_process.h"
#include "tests/util/wait.h"

namespace membroker::e2e {

using ::membroker::testing::ChildProcess;
using ::membroker::testing::ReadWholeFile;

inline bool FileExists(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0;
}

// Writes a newc ("070701") cpio archive, the format of a Linux initramfs.
class CpioWriter {
 public:
  void Directory(const std::string& name) { Entry(name, 040755, "", 0, 0); }
  void File(const std::string& name, const std::string& data, uint32_t mode = 0644) {
    Entry(name, 0100000 | mode, data, 0, 0);
  }
  void Symlink(const std::string& name, const std::string& target) {
    Entry(name, 0120777, target, 0, 0);
  }
  void CharDevice(const std::string& name, uint32_t major, uint32_t minor) {
    Entry(name, 020600, "", major, minor);
  }
  // The archive with its trailer.
  std::string Finish() {
    Entry("TRAILER!!!", 0, "", 0, 0);
    return out_;
  }

 private:
  void Pad() {
    while (out_.size() % 4 != 0) out_.push_back('\0');
  }
  void Entry(const std::string& name, uint32_t mode, const std::string& data, uint32_t rmaj,
             uint32_t rmin) {
    absl::StrAppend(&out_, absl::StrFormat(
                               "070701%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X",
                               ++ino_, mode, 0, 0, 1, 0, data.size(), 0, 0, rmaj, rmin,
                               name.size() + 1, 0));
    out_ += name;
    out_.push_back('\0');
    Pad();
    out_ += data;
    Pad();
  }
  std::string out_;
  uint32_t ino_ = 0;
};

// The guest's /init: loads the balloon driver stack (all but
// virtio_balloon when the kernel command line has mb_balloon=off: a
// driverless guest whose balloon never moves) and virtio_mem when the
// initramfs has it, prints the guest's swap
// ("MB-SWAP <SwapTotal in kB> <lines of /proc/swaps>"; the guest never
// enables swap: no swap device exists and nothing runs swapon), says
// MB-READY, then runs the role given on the kernel command line
// (mb_role=idle|load, mb_load=START,STEP,SECONDS,MAX,HOLD for memload).
// With mb_memreport=on it prints "MB-MEM <MemTotal kB> <MemAvailable kB>"
// every 2 s. With mb_ctl=on the load runs in the background and the guest
// reads commands from its second serial port (/dev/ttyS1): "stop" kills
// the load (its memory is freed at once) and prints MB-LOAD-STOPPED.
inline constexpr char kGuestInit[] = R"INIT(#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev 2>/dev/null
for m in virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci virtio_balloon; do
  if [ "$m" = virtio_balloon ] && [ "$mb_balloon" = off ]; then
    echo "MB-NO-BALLOON-DRIVER"
    continue
  fi
  insmod /lib/modules/$m.ko || echo "MB-INSMOD-FAILED $m"
done
if [ -f /lib/modules/virtio_mem.ko ]; then
  insmod /lib/modules/virtio_mem.ko || echo "MB-INSMOD-FAILED virtio_mem"
fi
echo "MB-SWAP $(awk '/^SwapTotal:/ {print $2}' /proc/meminfo) $(wc -l < /proc/swaps)"
if [ "$mb_memreport" = on ]; then
  while true; do
    echo "MB-MEM $(awk '/^MemTotal:/ {t=$2} /^MemAvailable:/ {a=$2} END {print t, a}' /proc/meminfo)"
    sleep 2
  done &
fi
echo "MB-READY role=$mb_role"
if [ "$mb_role" = load ] && [ "$mb_ctl" = on ]; then
  set -- $(echo "$mb_load" | tr , ' ')
  /memload "$@" &
  load=$!
  while read -r cmd; do
    if [ "$cmd" = stop ] && [ -n "$load" ]; then
      kill -9 "$load"
      wait "$load"
      load=
      echo "MB-LOAD-STOPPED"
    fi
  done < /dev/ttyS1
elif [ "$mb_role" = load ]; then
  set -- $(echo "$mb_load" | tr , ' ')
  /memload "$@"
  echo "MB-MEMLOAD-EXITED $?"
fi
while true; do sleep 3600; done
)INIT";

// Builds the initramfs of the test guests.
inline absl::Status BuildInitramfs(const std::string& kernel_dir, const std::string& busybox,
                                   const std::string& memload, const std::string& out_path) {
  static const char* kModules[] = {"virtio_ring",           "virtio",     "virtio_pci_modern_dev",
                                   "virtio_pci_legacy_dev", "virtio_pci", "virtio_balloon"};
  CpioWriter cpio;
  for (const char* d : {"bin", "dev", "proc", "sys", "lib", "lib/modules", "tmp"}) {
    cpio.Directory(d);
  }
  cpio.CharDevice("dev/console", 5, 1);
  cpio.CharDevice("dev/null", 1, 3);
  std::string bb = ReadWholeFile(busybox);
  if (bb.empty()) return absl::NotFoundError(absl::StrCat("busybox not readable at ", busybox));
  cpio.File("bin/busybox", bb, 0755);
  cpio.Symlink("bin/sh", "busybox");
  std::string load = ReadWholeFile(memload);
  if (load.empty()) return absl::NotFoundError(absl::StrCat("memload not readable at ", memload));
  cpio.File("memload", load, 0755);
  for (const char* m : kModules) {
    std::string ko = ReadWholeFile(absl::StrCat(kernel_dir, "/", m, ".ko"));
    if (ko.empty()) {
      return absl::NotFoundError(absl::StrCat("module ", m, ".ko missing in ", kernel_dir));
    }
    cpio.File(absl::StrCat("lib/modules/", m, ".ko"), ko);
  }
  // Optional: only the virtio-mem tests need it (they check it is there).
  std::string vmem = ReadWholeFile(absl::StrCat(kernel_dir, "/virtio_mem.ko"));
  if (!vmem.empty()) cpio.File("lib/modules/virtio_mem.ko", vmem);
  cpio.File("init", kGuestInit, 0755);
  std::ofstream(out_path, std::ios::binary) << cpio.Finish();
  if (!FileExists(out_path)) return absl::InternalError("cannot write the initramfs");
  return absl::OkStatus();
}

// How a guest is booted beyond its kernel command line.
struct QemuGuestOptions {
  // The -m argument ("512", "512M,maxmem=2G,slots=2").
  std::string memory = "512";
  // The balloon's -device argument; empty: no balloon device.
  std::string balloon_device = "virtio-balloon-pci,id=balloon0";
  // The -accel argument.
  std::string accel = "tcg";
  // More QEMU arguments (memory backends, virtio-mem, -overcommit).
  std::vector<std::string> extra_args;
  // A second serial port on a unix socket (control_socket()) that the
  // guest reads commands from (mb_ctl=on).
  bool control_port = false;
};

// One QEMU guest under TCG with a virtio balloon and two QMP sockets.
class QemuGuest {
 public:
  QemuGuest(std::string dir, std::string name, std::string uuid)
      : dir_(std::move(dir)), name_(std::move(name)), uuid_(std::move(uuid)) {}

  // Boots the guest; `append` is added to the kernel command line.
  absl::Status Start(const std::string& kernel, const std::string& initrd,
                     const std::string& append, int memory_mib = 512) {
    QemuGuestOptions options;
    options.memory = absl::StrCat(memory_mib);
    return Start(kernel, initrd, append, options);
  }

  // Boots the guest as `options` say.
  absl::Status Start(const std::string& kernel, const std::string& initrd,
                     const std::string& append, const QemuGuestOptions& options) {
    std::vector<std::string> argv = {"qemu-system-x86_64",
                                     "-accel",
                                     options.accel,
                                     "-m",
                                     options.memory,
                                     "-smp",
                                     "1",
                                     "-nodefaults",
                                     "-display",
                                     "none",
                                     "-no-reboot",
                                     "-name",
                                     name_,
                                     "-uuid",
                                     uuid_,
                                     "-kernel",
                                     kernel,
                                     "-initrd",
                                     initrd,
                                     "-append",
                                     absl::StrCat("console=ttyS0 panic=-1 loglevel=4 ", append),
                                     "-serial",
                                     absl::StrCat("file:", console_path()),
                                     "-qmp",
                                     absl::StrCat("unix:", agent_socket(), ",server=on,wait=off"),
                                     "-qmp",
                                     absl::StrCat("unix:", watch_socket(), ",server=on,wait=off")};
    if (options.control_port) {
      argv.push_back("-serial");
      argv.push_back(absl::StrCat("unix:", control_socket(), ",server=on,wait=off"));
    }
    if (!options.balloon_device.empty()) {
      argv.push_back("-device");
      argv.push_back(options.balloon_device);
    }
    argv.insert(argv.end(), options.extra_args.begin(), options.extra_args.end());
    return process_.Start(argv, absl::StrCat(dir_, "/", name_, ".qemu.log"));
  }

  // Writes `line` and a newline to the guest's control port (its
  // /dev/ttyS1). A fresh connection per call; the guest reads it only
  // while it listens, so callers retry until the guest shows it acted.
  absl::Status SendControl(const std::string& line) {
    int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return absl::InternalError("socket() failed");
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    const std::string path = control_socket();
    if (path.size() >= sizeof(addr.sun_path)) {
      ::close(fd);
      return absl::InvalidArgumentError("control socket path too long");
    }
    std::memcpy(addr.sun_path, path.c_str(), path.size() + 1);
    if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
      ::close(fd);
      return absl::UnavailableError(absl::StrCat("cannot connect to ", path));
    }
    const std::string data = line + "\n";
    const bool ok = ::write(fd, data.data(), data.size()) == static_cast<ssize_t>(data.size());
    ::close(fd);
    return ok ? absl::OkStatus() : absl::UnavailableError("short write to the control port");
  }

  // Waits until the console shows `text`; false at the deadline or if QEMU
  // exited. Polls every 100 ms.
  bool WaitForConsole(const std::string& text, absl::Duration timeout) {
    membroker::testing::WaitUntil(
        [&] { return Console().find(text) != std::string::npos || !process_.Running(); },
        timeout, absl::Milliseconds(100));
    return Console().find(text) != std::string::npos;
  }

  std::string Console() const { return ReadWholeFile(console_path()); }
  std::string QemuLog() const { return process_.Log(); }
  std::string agent_socket() const { return absl::StrCat(dir_, "/", name_, ".agent.sock"); }
  std::string watch_socket() const { return absl::StrCat(dir_, "/", name_, ".watch.sock"); }
  std::string console_path() const { return absl::StrCat(dir_, "/", name_, ".console.log"); }
  std::string control_socket() const { return absl::StrCat(dir_, "/", name_, ".ctl.sock"); }
  const std::string& name() const { return name_; }
  const std::string& uuid() const { return uuid_; }
  bool Running() { return process_.Running(); }
  void Stop() { process_.Stop(); }

 private:
  std::string dir_;
  std::string name_;
  std::string uuid_;
  ChildProcess process_;
};

}  // namespace membroker::e2e

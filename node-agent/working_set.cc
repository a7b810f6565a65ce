#include "node-agent/working_set.h"

#include <dirent.h>
#include <fcntl.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "node-agent/host_probe.h"

namespace membroker::agent {
namespace {

// A mapping of smaps as parsed so far.
struct Mapping {
  int line = 0;  // of its header, 1-based
  std::optional<uint64_t> size_kib;
  std::optional<uint64_t> referenced_kib;
  std::optional<uint64_t> locked_kib;
  std::optional<uint64_t> shared_hugetlb_kib;
  std::optional<uint64_t> private_hugetlb_kib;
};

bool IsHex(absl::string_view s) {
  return !s.empty() && s.find_first_not_of("0123456789abcdefABCDEF") == absl::string_view::npos;
}

// "7f00-7f10 rw-p 00000000 00:00 0 [path]": the header of a mapping.
bool IsMappingHeader(absl::string_view line) {
  const size_t space = line.find(' ');
  absl::string_view range = line.substr(0, space);
  const size_t dash = range.find('-');
  return dash != absl::string_view::npos && IsHex(range.substr(0, dash)) &&
         IsHex(range.substr(dash + 1));
}

// "  1234 kB" -> 1234. Empty when malformed.
std::optional<uint64_t> ParseKib(absl::string_view value) {
  value = absl::StripAsciiWhitespace(value);
  if (!absl::ConsumeSuffix(&value, "kB")) return std::nullopt;
  value = absl::StripAsciiWhitespace(value);
  uint64_t kib = 0;
  if (value.empty() || value.find_first_not_of("0123456789") != absl::string_view::npos ||
      !absl::SimpleAtoi(value, &kib) || kib > (UINT64_MAX >> 10)) {
    return std::nullopt;
  }
  return kib;
}

absl::Status CheckMapping(const Mapping& m) {
  if (!m.size_kib || !m.referenced_kib) {
    return absl::InvalidArgumentError(absl::StrCat("smaps: the mapping at line ", m.line,
                                                   " has no Size: or no Referenced: field"));
  }
  if (*m.referenced_kib > *m.size_kib) {
    return absl::InvalidArgumentError(absl::StrCat("smaps: the mapping at line ", m.line,
                                                   " has Referenced: ", *m.referenced_kib,
                                                   " kB above its Size: ", *m.size_kib, " kB"));
  }
  return absl::OkStatus();
}

// Reads `path` up to `limit` bytes. NOT_FOUND when it cannot be opened;
// RESOURCE_EXHAUSTED when it is longer.
absl::StatusOr<std::string> ReadBounded(const std::string& path, size_t limit) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat(path, ": ", std::strerror(errno)));
  std::string text;
  char buf[64 * 1024];
  while (in) {
    in.read(buf, sizeof(buf));
    const size_t n = static_cast<size_t>(in.gcount());
    if (text.size() + n > limit) {
      return absl::ResourceExhaustedError(absl::StrCat(path, ": longer than ", limit, " bytes"));
    }
    text.append(buf, n);
  }
  if (in.bad()) return absl::DataLossError(absl::StrCat(path, ": read failed"));
  return text;
}

absl::Status CheckPid(int64_t pid) {
  if (pid <= 0) return absl::InvalidArgumentError(absl::StrCat("pid ", pid, " is not valid"));
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<RefaultMode> ParseRefaultMode(absl::string_view text) {
  if (text == "off") return RefaultMode::kOff;
  if (text == "kvm") return RefaultMode::kKvm;
  if (text == "all") return RefaultMode::kAll;
  return absl::InvalidArgumentError(
      absl::StrCat("refault mode must be off, kvm or all, not \"", text, "\""));
}

absl::string_view RefaultModeName(RefaultMode mode) {
  switch (mode) {
    case RefaultMode::kOff:
      return "off";
    case RefaultMode::kKvm:
      return "kvm";
    case RefaultMode::kAll:
      return "all";
  }
  return "off";
}

absl::Status WorkingSetProbe::ClearSoftDirty(int64_t /*pid*/) const {
  return absl::UnimplementedError("this probe cannot clear soft-dirty bits");
}

absl::StatusOr<bool> WorkingSetProbe::LruGenEnabled() const { return false; }

absl::StatusOr<GuestRamReferenced> ParseGuestRamReferenced(absl::string_view smaps_text,
                                                           uint64_t boot_bytes) {
  std::vector<Mapping> mappings;
  int number = 0;
  for (absl::string_view line : absl::StrSplit(smaps_text, '\n')) {
    ++number;
    if (absl::StripAsciiWhitespace(line).empty()) continue;
    if (IsMappingHeader(line)) {
      if (!mappings.empty()) {
        absl::Status ok = CheckMapping(mappings.back());
        if (!ok.ok()) return ok;
      }
      mappings.push_back(Mapping{});
      mappings.back().line = number;
      continue;
    }
    const size_t colon = line.find(':');
    if (colon == absl::string_view::npos || colon == 0 ||
        line.substr(0, colon).find_first_of(" \t") != absl::string_view::npos) {
      return absl::InvalidArgumentError(
          absl::StrCat("smaps line ", number, ": neither a mapping header nor \"Key: value\""));
    }
    if (mappings.empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat("smaps line ", number, ": a field before any mapping header"));
    }
    const absl::string_view key = line.substr(0, colon);
    const absl::string_view value = line.substr(colon + 1);
    std::optional<uint64_t>* field = nullptr;
    if (key == "Size") field = &mappings.back().size_kib;
    if (key == "Referenced") field = &mappings.back().referenced_kib;
    if (key == "Locked") field = &mappings.back().locked_kib;
    if (key == "Shared_Hugetlb") field = &mappings.back().shared_hugetlb_kib;
    if (key == "Private_Hugetlb") field = &mappings.back().private_hugetlb_kib;
    if (field == nullptr) continue;  // other fields are not used
    if (field->has_value()) {
      return absl::InvalidArgumentError(
          absl::StrCat("smaps line ", number, ": ", key, ": appears twice in one mapping"));
    }
    *field = ParseKib(value);
    if (!field->has_value()) {
      return absl::InvalidArgumentError(
          absl::StrCat("smaps line ", number, ": ", key, ": not a number of kB"));
    }
  }
  if (mappings.empty()) return absl::InvalidArgumentError("smaps: no mapping");
  absl::Status last = CheckMapping(mappings.back());
  if (!last.ok()) return last;

  GuestRamReferenced out;
  auto add = [&out](const Mapping& m) {
    out.referenced_bytes += *m.referenced_kib << 10;
    out.mapping_bytes += *m.size_kib << 10;
    out.locked_bytes += m.locked_kib.value_or(0) << 10;
    out.hugetlb_bytes += (m.shared_hugetlb_kib.value_or(0) + m.private_hugetlb_kib.value_or(0))
                         << 10;
    ++out.mappings;
  };
  const uint64_t half_boot_kib = (boot_bytes >> 10) / 2;
  if (half_boot_kib > 0) {
    for (const Mapping& m : mappings) {
      if (*m.size_kib >= half_boot_kib) add(m);
    }
  }
  if (out.mappings == 0) {
    add(*std::max_element(mappings.begin(), mappings.end(), [](const Mapping& a, const Mapping& b) {
      return *a.size_kib < *b.size_kib;
    }));
  }
  return out;
}

absl::StatusOr<std::string> ParseCgroupV2Path(absl::string_view proc_cgroup_text) {
  for (absl::string_view line : absl::StrSplit(proc_cgroup_text, '\n', absl::SkipWhitespace())) {
    line = absl::StripTrailingAsciiWhitespace(line);
    if (!absl::ConsumePrefix(&line, "0::")) continue;
    if (line.empty() || line[0] != '/') {
      return absl::InvalidArgumentError(
          absl::StrCat("/proc/PID/cgroup: the cgroup v2 path \"", line, "\" is not absolute"));
    }
    std::vector<absl::string_view> parts = absl::StrSplit(line.substr(1), '/', absl::SkipEmpty());
    for (absl::string_view p : parts) {
      if (p == ".." || p == ".") {
        return absl::InvalidArgumentError(
            absl::StrCat("/proc/PID/cgroup: the cgroup v2 path \"", line, "\" has a . or .."));
      }
    }
    // libvirt puts the emulator and each vCPU in sub-cgroups of
    // <scope>/libvirt/: the scope holds every thread of the VM.
    for (size_t i = 0; i < parts.size(); ++i) {
      if (parts[i] == "libvirt" && i > 0) {
        parts.resize(i);
        break;
      }
    }
    if (parts.empty()) return absl::NotFoundError("/proc/PID/cgroup: in the root cgroup v2");
    return absl::StrCat("/", absl::StrJoin(parts, "/"));
  }
  return absl::NotFoundError("/proc/PID/cgroup: no cgroup v2 (0::) line");
}

absl::StatusOr<double> ParseCgroupPressureSomeAvg10(absl::string_view text) {
  absl::StatusOr<MemoryPressure> p = ParseMemoryPressure(text);
  if (!p.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("memory.pressure (cgroup): ", p.status().message()));
  }
  return p->some_avg10_percent;
}

ProcWorkingSetProbe::ProcWorkingSetProbe(std::string proc_root, std::string cgroup_root,
                                         std::string sys_kernel_mm)
    : proc_root_(std::move(proc_root)),
      cgroup_root_(std::move(cgroup_root)),
      sys_kernel_mm_(std::move(sys_kernel_mm)) {}

absl::Status ProcWorkingSetProbe::ClearReferenced(int64_t pid) const {
  return WriteClearRefs(pid, "1");
}

absl::Status ProcWorkingSetProbe::ClearSoftDirty(int64_t pid) const {
  return WriteClearRefs(pid, "4");
}

absl::StatusOr<bool> ProcWorkingSetProbe::LruGenEnabled() const {
  const std::string path = absl::StrCat(sys_kernel_mm_, "/lru_gen/enabled");
  absl::StatusOr<std::string> text = ReadBounded(path, 64);
  if (absl::IsNotFound(text.status())) return false;  // a kernel without MGLRU
  if (!text.ok()) return text.status();
  // "0x0007": a bit mask of the enabled features; bit 0 is MGLRU itself.
  absl::string_view v = absl::StripAsciiWhitespace(*text);
  uint64_t bits = 0;
  if (!absl::ConsumePrefix(&v, "0x") || !IsHex(v) || v.size() > 16 ||
      !absl::SimpleHexAtoi(v, &bits)) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": \"", absl::StripAsciiWhitespace(*text), "\" is not a hex mask"));
  }
  return (bits & 1) != 0;
}

absl::Status ProcWorkingSetProbe::WriteClearRefs(int64_t pid, absl::string_view command) const {
  absl::Status valid = CheckPid(pid);
  if (!valid.ok()) return valid;
  const std::string path = absl::StrCat(proc_root_, "/", pid, "/clear_refs");
  // Write-only (the file is mode 0200) and never created.
  const int fd = open(path.c_str(), O_WRONLY | O_CLOEXEC);
  if (fd < 0) {
    const int err = errno;
    const std::string why = absl::StrCat(path, ": ", std::strerror(err));
    if (err == EACCES || err == EPERM) return absl::PermissionDeniedError(why);
    return absl::NotFoundError(why);
  }
  const std::string line = absl::StrCat(command, "\n");
  const ssize_t written = write(fd, line.data(), line.size());
  const int err = errno;
  close(fd);
  if (written != static_cast<ssize_t>(line.size())) {
    return absl::UnavailableError(absl::StrCat(path, ": write failed: ", std::strerror(err)));
  }
  return absl::OkStatus();
}

absl::StatusOr<GuestRamReferenced> ProcWorkingSetProbe::ReadReferenced(int64_t pid,
                                                                       uint64_t boot_bytes) const {
  absl::Status valid = CheckPid(pid);
  if (!valid.ok()) return valid;
  absl::StatusOr<std::string> text =
      ReadBounded(absl::StrCat(proc_root_, "/", pid, "/smaps"), kMaxSmapsBytes);
  if (!text.ok()) return text.status();
  return ParseGuestRamReferenced(*text, boot_bytes);
}

absl::StatusOr<double> ProcWorkingSetProbe::CgroupPressureSomeAvg10(int64_t pid) const {
  absl::Status valid = CheckPid(pid);
  if (!valid.ok()) return valid;
  if (cgroup_root_.empty()) return absl::NotFoundError("no cgroup v2 mount");
  absl::StatusOr<std::string> cgroup =
      ReadBounded(absl::StrCat(proc_root_, "/", pid, "/cgroup"), 64 * 1024);
  if (!cgroup.ok()) return cgroup.status();
  absl::StatusOr<std::string> path = ParseCgroupV2Path(*cgroup);
  if (!path.ok()) return path.status();
  absl::StatusOr<std::string> pressure =
      ReadBounded(absl::StrCat(cgroup_root_, *path, "/memory.pressure"), 4096);
  if (!pressure.ok()) return pressure.status();
  return ParseCgroupPressureSomeAvg10(*pressure);
}

absl::StatusOr<bool> ProcWorkingSetProbe::RunsKvmGuest(int64_t pid) const {
  absl::Status valid = CheckPid(pid);
  if (!valid.ok()) return valid;
  const std::string dir = absl::StrCat(proc_root_, "/", pid, "/fd");
  DIR* d = opendir(dir.c_str());
  if (d == nullptr) {
    const int err = errno;
    const std::string why = absl::StrCat(dir, ": ", std::strerror(err));
    if (err == EACCES || err == EPERM) return absl::PermissionDeniedError(why);
    return absl::NotFoundError(why);
  }
  bool kvm = false;
  // QEMU holds a few hundred fds at most; bound the scan all the same.
  int scanned = 0;
  while (dirent* e = readdir(d)) {
    if (++scanned > 65536) break;
    if (e->d_name[0] == '.') continue;
    char target[256];
    const std::string link = absl::StrCat(dir, "/", e->d_name);
    const ssize_t n = readlink(link.c_str(), target, sizeof(target) - 1);
    if (n <= 0) continue;
    if (absl::string_view(target, static_cast<size_t>(n)) == "anon_inode:kvm-vm") {
      kvm = true;
      break;
    }
  }
  closedir(d);
  return kvm;
}

std::string FindCgroupV2Root(const std::string& sys_fs_cgroup) {
  for (const std::string& dir : {sys_fs_cgroup, sys_fs_cgroup + "/unified"}) {
    std::ifstream probe(dir + "/cgroup.controllers");
    if (probe) return dir;
  }
  return "";
}

double ThreadCpuSeconds() {
  timespec ts{};
  if (clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts) != 0) return 0;
  return static_cast<double>(ts.tv_sec) + static_cast<double>(ts.tv_nsec) * 1e-9;
}

WorkingSetSampler::WorkingSetSampler(std::shared_ptr<const WorkingSetProbe> probe,
                                     std::function<double()> cpu_seconds, RefaultMode refault)
    : probe_(std::move(probe)),
      cpu_seconds_(cpu_seconds ? std::move(cpu_seconds)
                               : std::function<double()>(ThreadCpuSeconds)),
      refault_(refault) {}

std::map<std::string, WorkingSetSample> WorkingSetSampler::Round(
    const std::vector<WorkingSetTarget>& targets, absl::Time now) {
  std::map<std::string, WorkingSetSample> out;
  std::map<std::string, Cleared> cleared;
  std::map<std::string, Kvm> kvm;
  // Read at most once per round, and only when a locked mapping asks.
  std::optional<absl::StatusOr<bool>> lru_gen;
  for (const WorkingSetTarget& t : targets) {
    WorkingSetSample& sample = out[t.vm_id];
    const double cpu_start = cpu_seconds_();
    auto known = kvm_.find(t.vm_id);
    std::string kvm_error;
    if (known == kvm_.end() || known->second.pid != t.pid) {
      absl::StatusOr<bool> kvm = probe_->RunsKvmGuest(t.pid);
      // Unknown (its fds unreadable) counts as KVM: never a working set
      // that might be an understatement.
      known = kvm_.insert_or_assign(t.vm_id, Kvm{t.pid, !kvm.ok() || *kvm}).first;
      if (!kvm.ok()) kvm_error = kvm.status().ToString();
    }
    kvm[t.vm_id] = known->second;
    const bool is_kvm = known->second.kvm;
    const bool refault = refault_ == RefaultMode::kAll || (refault_ == RefaultMode::kKvm && is_kvm);
    if (is_kvm && !refault) {
      sample.error = !kvm_error.empty()
                         ? kvm_error
                         : "not measured: a KVM guest (its accessed bits are in KVM's page "
                           "tables, which clear_refs and smaps do not reach; see "
                           "--working-set-refault)";
    } else {
      // Refault mode: "4" first, so that KVM drops its mappings and marks
      // the pages it used since the last round before Referenced is read
      // (working_set.h, 6).
      absl::Status soft_dirty = refault ? probe_->ClearSoftDirty(t.pid) : absl::OkStatus();
      if (!soft_dirty.ok()) {
        sample.error = soft_dirty.ToString();
      } else {
        if (auto previous = cleared_.find(t.vm_id); previous != cleared_.end() &&
                                                    previous->second.pid == t.pid &&
                                                    now > previous->second.at) {
          absl::StatusOr<GuestRamReferenced> ref = probe_->ReadReferenced(t.pid, t.boot_bytes);
          if (!ref.ok()) {
            sample.error = ref.status().ToString();
          } else if (ref->hugetlb_bytes > 0) {
            sample.error =
                "not measured: guest RAM on hugetlbfs (the kernel keeps no referenced bit for "
                "it)";
          } else {
            if (refault && ref->locked_bytes > 0 && !lru_gen.has_value()) {
              lru_gen = probe_->LruGenEnabled();
            }
            if (refault && ref->locked_bytes > 0 && (!lru_gen->ok() || **lru_gen)) {
              sample.error = absl::StrCat(
                  "not measured by refault: guest RAM is mlocked and the multi-generational "
                  "LRU, which does not mark mlocked pages accessed, ",
                  lru_gen->ok() ? std::string("is on")
                                : absl::StrCat("may be on (", lru_gen->status().ToString(), ")"));
            } else {
              sample.working_set_bytes = ref->referenced_bytes;
              sample.interval = now - previous->second.at;
              sample.method = std::string(refault ? kMethodRefault : kMethodClearRefs);
            }
          }
        }
        absl::Status clear = probe_->ClearReferenced(t.pid);
        if (clear.ok()) {
          cleared[t.vm_id] = Cleared{t.pid, now};
        } else if (sample.error.empty()) {
          sample.error = clear.ToString();
        }
      }
    }
    absl::StatusOr<double> psi = probe_->CgroupPressureSomeAvg10(t.pid);
    if (psi.ok()) {
      sample.psi_some_avg10_percent = *psi;
    } else if (!absl::IsNotFound(psi.status()) && sample.error.empty()) {
      sample.error = psi.status().ToString();  // no cgroup v2 is not an error
    }
    sample.cpu_seconds = std::max(cpu_seconds_() - cpu_start, 0.0);
  }
  cleared_ = std::move(cleared);
  kvm_ = std::move(kvm);
  return out;
}

}  // namespace membroker::agent

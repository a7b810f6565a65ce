#pragma once
// Host-side working set of a VM, for guests whose own statistics are
// missing, stale or untrusted (a Windows guest without the balloon's
// statistics service, a FreeBSD guest), measured from the QEMU process:
//
//   1. Every round, for each VM process: if the previous round cleared its
//      referenced bits (same pid), sum `Referenced:` over the smaps entries
//      of its guest-RAM mapping(s): the guest memory touched since then
//      (the host-side form of ESX's sampled working set). Then write "1" to
//      /proc/PID/clear_refs to start the next interval.
//   2. Guest-RAM mappings (GuestRamMappingRule): every mapping of the
//      process whose Size is at least half the VM's boot memory; when none
//      is that large (or boot memory is unknown), the single largest
//      mapping. QEMU maps guest RAM (memory-backend-ram, -file, -memfd) as
//      one mapping per backend, far larger than anything else it maps; a
//      virtio-mem backend of at least half the boot memory counts too.
//   3. Where the process is in a cgroup v2 hierarchy, its cgroup's
//      `memory.pressure` "some avg10" is a per-VM stall signal. The cgroup
//      is the process's own ("0::PATH" in /proc/PID/cgroup), or, in
//      libvirt's layout (…/libvirt/emulator, …/libvirt/vcpuN), the VM's
//      scope above the `libvirt` directory, which holds all its threads.
//   4. A process that holds a KVM VM (an fd on "anon_inode:kvm-vm") is
//      measured only in refault mode (6). Under KVM the guest reaches its
//      memory through KVM's second-level page tables, whose accessed bits
//      "1" does not clear and smaps does not read, so Referenced would count
//      little more than QEMU's own accesses; a working set that low would
//      let the broker reclaim the guest into what it really uses. Without
//      refault mode such a guest keeps the rule without host signals (its
//      last estimate, or its size); its cgroup pressure is still read.
//   5. The cost is measured: CPU seconds of the measuring thread spent per
//      VM per round (clearing and reading walk the process's page tables,
//      so the cost grows with resident guest memory). smaps is read up to
//      kMaxSmapsBytes; a larger file is an error, not a partial sum.
//   6. Refault mode (RefaultMode, the agent's --working-set-refault): each
//      round first writes "4" (clear soft-dirty) to clear_refs, then reads
//      Referenced, then writes "1". Facts this rests on, read in Debian 12's
//      Linux 6.1 (6.1.192) sources:
//      - fs/proc/task_mmu.c, clear_refs_write: for "4" it brackets the page
//        walk with mmu_notifier_invalidate_range_start/_end over the whole
//        address space (event MMU_NOTIFY_SOFT_DIRTY); for "1" it calls no
//        notifier. The "4" walk (clear_soft_dirty) write-protects every
//        present PTE (not DMA-pinned ones) and keeps its young bit; the "1"
//        walk (clear_refs_pte_range) clears the PTE/PMD young bit, the idle
//        flag's young and PG_referenced. Hugetlb mappings are walked by
//        neither (the walk has no hugetlb handler).
//      - virt/kvm/kvm_main.c, kvm_mmu_notifier_invalidate_range_start: no
//        filter on the event; it runs kvm_unmap_gfn_range on every memslot
//        in the range, i.e. zaps all of the guest's secondary mappings.
//      - arch/x86/kvm/mmu: zapping an SPTE whose accessed bit is set calls
//        kvm_set_pfn_accessed (mmu_spte_clear_track_bits in mmu.c,
//        handle_changed_spte_acc_track in tdp_mmu.c); a new SPTE is made
//        accessed (make_spte, unless prefetched); a fault ends with
//        kvm_release_pfn_clean, which marks the page accessed too.
//      - kvm_main.c, hva_to_pfn: the fast path (hva_to_pfn_fast) asks
//        GUP-fast for a writable page, which a PTE write-protected by "4"
//        refuses; the slow path (get_user_pages_unlocked) adds FOLL_TOUCH,
//        and mm/gup.c follow_page_pte then calls mark_page_accessed (it does
//        not make the PTE young; a guest write faults in the host through
//        do_wp_page, which does). kvm_set_page_accessed calls
//        mark_page_accessed for ordinary pages.
//      - mm/swap.c, folio_mark_accessed: with MGLRU off it sets
//        PG_referenced on an unreferenced folio; a second mark on an
//        inactive, referenced folio activates it and clears PG_referenced.
//        With MGLRU on (lru_gen_enabled(), bit 0 of
//        /sys/kernel/mm/lru_gen/enabled) folio_inc_refs sets PG_referenced
//        on the first mark, but does nothing at all for an unevictable
//        (mlocked) folio.
//      - fs/proc/task_mmu.c, smaps_account: Referenced counts a page whose
//        PTE is young, whose idle-tracking young flag is set, or which has
//        PG_referenced; hugetlb pages are counted under *_Hugetlb only.
//      So the "4" of round N zaps every SPTE the guest used since round
//      N-1's "4" and marks its page accessed; reading Referenced right
//      after it counts those pages, and the refaults in between (slow GUP,
//      then KVM's own mark, or a write fault) are counted too. The "4"
//      must come before the read: a page refaulted between a "4" and the
//      following "1" would otherwise be missed for a round (its SPTE stays,
//      its marks were cleared). Known gaps: a page that the "4" zap marks a
//      second time while inactive and referenced (one reached by GUP-fast:
//      DMA-pinned pages) loses PG_referenced; host reclaim clears the same
//      bits (both modes); guest RAM on hugetlbfs is never counted (the
//      sampler refuses such a mapping in every mode); with MGLRU on,
//      mlocked guest RAM is not marked (the sampler refuses refault mode
//      when the mapping has Locked memory and lru_gen is enabled). The cost
//      for the guest, not counted in 5: every page it uses faults into KVM
//      once per round, its first write per round takes a host write fault,
//      and vCPU faults wait while "4" walks the page tables. Writing "4"
//      also resets soft-dirty tracking for anything else using it on QEMU.
//
// Paths are under injectable roots (proc_root, cgroup_root) so tests use
// fixture files. Parsers reject malformed text with INVALID_ARGUMENT.

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"

namespace membroker::agent {

// The largest /proc/PID/smaps the probe reads (QEMU has a few hundred
// mappings, ~1 KiB of text each).
inline constexpr size_t kMaxSmapsBytes = size_t{32} << 20;

// Referenced memory of a process's guest-RAM mapping(s).
struct GuestRamReferenced {
  uint64_t referenced_bytes = 0;  // sum of Referenced: over the mappings
  uint64_t mapping_bytes = 0;     // sum of their Size:
  int mappings = 0;               // how many mappings were counted
  // Sum of their Shared_Hugetlb: and Private_Hugetlb: (hugetlbfs pages,
  // which Referenced never counts; file comment, 6).
  uint64_t hugetlb_bytes = 0;
  // Sum of their Locked: (mlocked memory).
  uint64_t locked_bytes = 0;
};

// Which processes refault sampling (file comment, 6) measures.
enum class RefaultMode {
  kOff,  // none: KVM processes are not measured
  kKvm,  // processes holding a KVM VM
  kAll,  // every VM process (works under TCG too)
};

// "off", "kvm" or "all"; INVALID_ARGUMENT naming the value otherwise.
absl::StatusOr<RefaultMode> ParseRefaultMode(absl::string_view text);

// The name ParseRefaultMode accepts for `mode`.
absl::string_view RefaultModeName(RefaultMode mode);

// How a working set was measured (WorkingSetSample.method).
inline constexpr absl::string_view kMethodClearRefs = "clear_refs";
inline constexpr absl::string_view kMethodRefault = "refault";

// Parses /proc/PID/smaps text and applies the guest-RAM mapping rule (file
// comment, 2) with `boot_bytes` the VM's boot memory (0: unknown). Every
// mapping needs a well-formed header line and numeric `Size:` and
// `Referenced:` fields in kB, with Referenced at most Size; `Locked:`,
// `Shared_Hugetlb:` and `Private_Hugetlb:` are optional (0). INVALID_ARGUMENT
// naming the line for anything malformed or for text with no mapping.
absl::StatusOr<GuestRamReferenced> ParseGuestRamReferenced(absl::string_view smaps_text,
                                                           uint64_t boot_bytes);

// Parses /proc/PID/cgroup text and returns the cgroup v2 path ("0::PATH")
// to read memory.pressure from (libvirt's per-thread sub-cgroups mapped to
// the VM scope, file comment 3). NOT_FOUND when there is no "0::" line or
// it is the root ("/": a cgroup v1 host); INVALID_ARGUMENT for malformed
// text (a path not starting with '/', a ".." component).
absl::StatusOr<std::string> ParseCgroupV2Path(absl::string_view proc_cgroup_text);

// Parses a cgroup's memory.pressure text ("some avg10=… avg60=… avg300=…
// total=…", optional "full" line) and returns some avg10 in percent.
// INVALID_ARGUMENT as ParseMemoryPressure (host_probe.h).
absl::StatusOr<double> ParseCgroupPressureSomeAvg10(absl::string_view text);

// Measures a VM process from the host. Implementations are thread-safe.
class WorkingSetProbe {
 public:
  virtual ~WorkingSetProbe() = default;

  // Clears the referenced bits of every page of process `pid` (writes "1"
  // to its clear_refs). NOT_FOUND when the process is gone;
  // PERMISSION_DENIED when the agent may not write it; INVALID_ARGUMENT for
  // a pid <= 0.
  virtual absl::Status ClearReferenced(int64_t pid) const = 0;

  // Clears the soft-dirty bits of process `pid` (writes "4" to its
  // clear_refs), which also makes KVM drop its mappings of the guest's
  // memory (file comment, 6). Errors as ClearReferenced. This default
  // answers UNIMPLEMENTED (a probe that cannot refault-sample).
  virtual absl::Status ClearSoftDirty(int64_t pid) const;

  // Referenced memory of the guest-RAM mapping(s) of `pid` since its last
  // clear. NOT_FOUND when the process is gone; RESOURCE_EXHAUSTED when its
  // smaps exceeds kMaxSmapsBytes; INVALID_ARGUMENT when it is malformed.
  virtual absl::StatusOr<GuestRamReferenced> ReadReferenced(int64_t pid,
                                                            uint64_t boot_bytes) const = 0;

  // "some avg10" of the memory.pressure of `pid`'s cgroup v2, in percent.
  // NOT_FOUND when the process or its cgroup v2 file is missing (a cgroup
  // v1 host); INVALID_ARGUMENT for malformed text.
  virtual absl::StatusOr<double> CgroupPressureSomeAvg10(int64_t pid) const = 0;
  // Whether process `pid` holds a KVM VM (file comment, 4). NOT_FOUND when
  // the process is gone; PERMISSION_DENIED when its fds may not be read.
  virtual absl::StatusOr<bool> RunsKvmGuest(int64_t pid) const = 0;

  // Whether the host kernel runs the multi-generational LRU (bit 0 of
  // /sys/kernel/mm/lru_gen/enabled). False where the file is missing (a
  // kernel without it); this default answers false.
  virtual absl::StatusOr<bool> LruGenEnabled() const;
};

// Reads `<proc_root>/PID/{clear_refs,smaps,cgroup}`,
// `<cgroup_root>/<path>/memory.pressure` and `<sys_kernel_mm>/lru_gen/enabled`.
// Thread-safe (no state).
class ProcWorkingSetProbe : public WorkingSetProbe {
 public:
  // `proc_root` is "/proc" on a real host; `cgroup_root` the cgroup v2
  // mount (empty: no cgroup signal); `sys_kernel_mm` is /sys/kernel/mm.
  // Tests point them at fixtures.
  explicit ProcWorkingSetProbe(std::string proc_root = "/proc",
                               std::string cgroup_root = "/sys/fs/cgroup",
                               std::string sys_kernel_mm = "/sys/kernel/mm");

  absl::Status ClearReferenced(int64_t pid) const override;
  absl::Status ClearSoftDirty(int64_t pid) const override;
  absl::StatusOr<GuestRamReferenced> ReadReferenced(int64_t pid,
                                                    uint64_t boot_bytes) const override;
  absl::StatusOr<double> CgroupPressureSomeAvg10(int64_t pid) const override;
  // Reads the links in `<proc_root>/PID/fd`.
  absl::StatusOr<bool> RunsKvmGuest(int64_t pid) const override;
  // INVALID_ARGUMENT when the file is not a number.
  absl::StatusOr<bool> LruGenEnabled() const override;

 private:
  // Writes `command` ("1" or "4") to `pid`'s clear_refs.
  absl::Status WriteClearRefs(int64_t pid, absl::string_view command) const;

  const std::string proc_root_;
  const std::string cgroup_root_;
  const std::string sys_kernel_mm_;
};

// The cgroup v2 mount under `sys_fs_cgroup` ("/sys/fs/cgroup" on a real
// host): itself on a unified host, its `unified` directory on a hybrid one,
// empty when neither has cgroup.controllers.
std::string FindCgroupV2Root(const std::string& sys_fs_cgroup = "/sys/fs/cgroup");

// One VM to measure in a round.
struct WorkingSetTarget {
  std::string vm_id;
  int64_t pid = 0;
  uint64_t boot_bytes = 0;  // boot memory (0: unknown)
};

// What one round measured for one VM.
struct WorkingSetSample {
  // Guest memory touched since the previous round's clear (empty on the
  // first round for a process, or when reading failed).
  std::optional<uint64_t> working_set_bytes;
  absl::Duration interval;  // the interval it covers
  // Its cgroup's memory.pressure some avg10, percent (empty: none).
  std::optional<double> psi_some_avg10_percent;
  // CPU seconds the measuring thread spent on this VM in this round.
  double cpu_seconds = 0;
  // Why a measurement failed ("" when none did).
  std::string error;
  // How working_set_bytes was measured: kMethodClearRefs or kMethodRefault
  // ("" when it is empty).
  std::string method;
};

// Runs the rounds (file comment, 1): remembers, per VM, the pid it cleared
// and when. Thread-compatible (one measuring thread).
class WorkingSetSampler {
 public:
  // `cpu_seconds` returns the calling thread's CPU time (tests inject a
  // fake); null uses CLOCK_THREAD_CPUTIME_ID. `refault` picks the processes
  // measured by refault sampling (file comment, 6).
  WorkingSetSampler(std::shared_ptr<const WorkingSetProbe> probe,
                    std::function<double()> cpu_seconds = nullptr,
                    RefaultMode refault = RefaultMode::kOff);

  // Measures every target at monotonic time `now` and clears it for the
  // next round; forgets VMs not among `targets`. Returns one sample per
  // target. Never fails: errors are in each sample.
  std::map<std::string, WorkingSetSample> Round(const std::vector<WorkingSetTarget>& targets,
                                                absl::Time now);

 private:
  struct Cleared {
    int64_t pid = 0;
    absl::Time at;
  };
  // Whether a VM's process (by VM id; the pid it was read for) runs a KVM
  // guest, read once per process.
  struct Kvm {
    int64_t pid = 0;
    bool kvm = false;
  };

  std::shared_ptr<const WorkingSetProbe> probe_;
  std::function<double()> cpu_seconds_;
  RefaultMode refault_;
  std::map<std::string, Cleared> cleared_;
  std::map<std::string, Kvm> kvm_;
};

// CPU time of the calling thread in seconds.
double ThreadCpuSeconds();

}  // namespace membroker::agent

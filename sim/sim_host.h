#pragma once
// A simulated hypervisor host: guests driven by workload models, advanced in
// simulated time. Shared by the agent's sim backend, the scenario tests and
// the benchmarks.
//
// Guest model, per VM and per Advance(dt):
//   1. working set ws(t) from the workload model (plus seeded noise); the
//      guest needs kernel + ws of anonymous memory and fills a page cache
//      when it has room;
//   2. the balloon moves toward its target at a bounded rate, never if the
//      guest has no balloon driver. Like virtio_balloon (pages allocated
//      with __GFP_NORETRY: light reclaim, never the OOM killer), inflating
//      takes only free memory, page cache, and anonymous memory the guest
//      can push to its swap: it stops at kernel + ws - swap_bytes (at the
//      working set for a swapless guest), leaving `actual` above the target,
//      and retries as the working set shrinks. The driver works toward a
//      target until it reaches it; SetTarget() starts it again (a config
//      change), nothing else does;
//   3. page cache shrinks first when actual < kernel + ws + cache;
//   4. if actual < kernel + ws (the working set grew past what the guest
//      holds, or a swapping guest was squeezed), the deficit is swapped out
//      (at most kSwapOutRateBytesPerSecond; the rest waits in direct
//      reclaim): swap-in and major-fault counters grow with the deficit,
//      stall accrues (deficit bytes x seconds);
//   5. if the deficit exceeds the guest's swap once swap is full (at once
//      for a guest without swap: swap_bytes 0), the guest is out of memory:
//      - with deflate-on-oom (SimVm.deflate_on_oom) its balloon driver gives
//        back what the guest needs (in 1 MiB steps, the driver's OOM
//        notifier, up to max) and nothing is killed; `actual` then sits
//        above the target and the balloon does not inflate again until the
//        next SetTarget(); the host must find that memory (the fleet
//        simulator counts touched memory above capacity as host overflow);
//      - otherwise the kernel OOM-kills the workload: its page cache is
//        gone (reclaim dropped it before the killer ran), the working set
//        drops back, the OOM counter increments, and the workload starts again
//        from its base kOomRestartSeconds later. A swapless guest shows no
//        swap-in before it dies;
//   6. page-cache refaults: when memory pressure leaves less page cache than
//      the guest's mapped hot files (program text and libraries, at most
//      kMappedFileBytes of its page cache), the evicted part is read back
//      as it is touched. Those are major faults (kRefaultFractionPerSecond
//      of the shortfall per second, at most kMaxRefaultBytesPerSecond);
//      read() misses of plain file data are not page faults and are not
//      counted. This is the only major-fault signal a swapless guest gives
//      before an OOM kill, and it only appears once its cache is squeezed
//      below that hot set; it adds no stall.

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "membroker/v1/config.pb.h"

namespace membroker::sim {

// Defaults and constants of the guest model.
inline constexpr uint64_t kDefaultKernelBytes = uint64_t{64} << 20;
inline constexpr uint64_t kDefaultBalloonRateBytesPerSecond = uint64_t{512} << 20;
// The fastest a thrashing guest pages in from swap (random 4 KiB reads).
inline constexpr uint64_t kSwapInRateBytesPerSecond = uint64_t{64} << 20;
// The fastest a guest pushes pages out to swap.
inline constexpr uint64_t kSwapOutRateBytesPerSecond = uint64_t{256} << 20;
// How fast a guest with room fills its page cache.
inline constexpr uint64_t kCacheFillBytesPerSecond = uint64_t{64} << 20;
// After an OOM kill the workload is gone this long, then starts again.
inline constexpr double kOomRestartSeconds = 30.0;
// Mapped hot files (program text, libraries) a guest keeps in its page
// cache, at most; squeezed below it the guest refaults them.
inline constexpr uint64_t kMappedFileBytes = uint64_t{32} << 20;
// Part of the missing hot files read back (as major faults) per second.
inline constexpr double kRefaultFractionPerSecond = 0.25;
// The fastest a guest refaults file pages.
inline constexpr uint64_t kMaxRefaultBytesPerSecond = uint64_t{16} << 20;
// What virtio_balloon's OOM notifier gives back per call (256 pages).
inline constexpr uint64_t kOomDeflateStepBytes = uint64_t{1} << 20;
// Page size for fault counters.
inline constexpr uint64_t kPageBytes = 4096;
// Advance() moves time in steps of at most this much.
inline constexpr double kMaxStepSeconds = 0.25;

// A stable UUID-shaped id derived from a VM's name (the same name always
// gives the same id).
std::string DeriveVmId(const std::string& name);

// What a virtio balloon reports for one guest, plus the simulator's truth.
// A guest without a balloon driver reports no statistics: its guest
// statistics stay 0 and `balloon_driver` is false.
struct SimVmState {
  std::string vm_id;
  std::string name;
  bool running = false;            // false before start_after
  bool balloon_driver = true;
  bool guest_stats = true;         // false: the guest sends no statistics
  bool deflate_on_oom = false;     // the balloon gives pages back before an OOM kill
  uint64_t max_bytes = 0;
  uint64_t actual_bytes = 0;       // memory the guest has now (may sit above
                                   // the target: see the model, 2 and 5)
  uint64_t target_bytes = 0;       // last balloon target set
  // Guest statistics (as the balloon driver reports them).
  uint64_t total_bytes = 0;
  uint64_t available_bytes = 0;
  uint64_t free_bytes = 0;
  uint64_t disk_caches_bytes = 0;
  uint64_t swap_in_bytes_total = 0;
  uint64_t swap_out_bytes_total = 0;
  uint64_t major_faults_total = 0;
  uint64_t minor_faults_total = 0;
  // Truth the guest does not report (for quality figures).
  uint64_t working_set_bytes = 0;  // kernel + workload working set now
  uint64_t deficit_bytes = 0;      // max(0, working set - actual)
  double stall_byte_seconds = 0;   // integral of deficit over time
  uint64_t oom_kills_total = 0;
  // Deflate-on-oom: times the balloon gave pages back instead of a kill,
  // and the bytes it gave back.
  uint64_t oom_deflations_total = 0;
  uint64_t oom_deflated_bytes_total = 0;
  // Major faults that were page-cache refaults (part of major_faults_total).
  uint64_t refault_major_faults_total = 0;
  uint64_t swapped_bytes = 0;      // anonymous memory now in the guest's swap
  uint64_t resident_bytes = 0;     // memory the guest has touched (anon + cache)
};

// A set of simulated guests on one host. Not thread-safe: callers serialize
// (the agent's sim backend wraps it in a mutex).
class SimHost {
 public:
  // Builds the host from `config`. INVALID_ARGUMENT naming the field for a
  // bad config (zero max, working set above max, duplicate names, ...).
  static absl::StatusOr<std::unique_ptr<SimHost>> Create(const membroker::v1::SimConfig& config);

  // Moves simulated time forward by `dt` (any size; internally stepped).
  void Advance(absl::Duration dt);

  // Simulated time since the start.
  absl::Duration elapsed() const;

  // The host's physical memory.
  uint64_t host_total_bytes() const;

  // Memory the running guests hold now (sum of actual).
  uint64_t host_used_bytes() const;

  // Every VM (running or not yet started), in config order.
  const std::vector<SimVmState>& vms() const;

  // Sets the balloon target of `vm_id` (clamped to [1 MiB, max]) and starts
  // the balloon driver toward it (even at the same value, as QEMU's
  // `balloon` command does). NOT_FOUND for an unknown VM.
  absl::Status SetTarget(const std::string& vm_id, uint64_t target_bytes);

  // The working set of `vm_id` at simulated time `at` (the oracle's view).
  absl::StatusOr<uint64_t> WorkingSetAt(const std::string& vm_id, absl::Duration at) const;

  // The same for the VM at `index` in vms() (0 for an index out of range),
  // at `at_seconds` of simulated time: the fast path for the oracle.
  uint64_t WorkingSetOf(size_t index, double at_seconds) const;

  ~SimHost();

 private:
  SimHost();
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// Checks a SimConfig without building it.
absl::Status ValidateSimConfig(const membroker::v1::SimConfig& config);

}  // namespace membroker::sim

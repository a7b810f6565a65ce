#pragma once
// The actuator applies the broker's balloon targets safely.
//
// Every Tick(vms), with the VMs as just read from the hypervisor:
//   1. Forget VMs that are gone; note each VM's balloon actual.
//   2. Guest pressure: a VM whose swap-in or major-fault rate since its
//      previous statistics is above the threshold is deflated at once by
//      pressure_deflate_bytes (toward its max), with or without a broker.
//   2b. Local grants: a VM the agent found under acute pressure (the
//      `acute` argument, see vm_pressure.h) is held at its actual if its
//      target was below (no inflation into a guest under acute pressure
//      until the broker's next target), and deflated at once by
//      min(local_grant_max_bytes, capacity - sum over VMs of max(actual,
//      applied, desired) - local_grant_margin_bytes, max - that sum's term
//      for this VM), at most once per local_grant_interval per VM, and
//      only with a capacity set and a healthy balloon. The grant is kept in
//      local_grant_bytes until the broker's next target for the VM
//      replaces it.
//   3. Fail-static: while the broker is gone the last targets hold for
//      fail_static_grace; after that every VM walks back toward its max by
//      fail_static_step_bytes every fail_static_step_interval.
//   4. Stuck balloons: a VM whose actual does not move toward its applied
//      target by >= 1 MiB within stuck_timeout is STUCK (NO_DRIVER when it
//      never moved and its guest never sent statistics). Its pending
//      inflation is cancelled and it is not inflated again until its
//      balloon moves.
//   5. Apply: shrinks (inflate) go in steps of at most
//      max_inflate_step_bytes below the current actual, and not at all
//      within acute_hold of the VM's last acute pressure (the balloon is
//      held at its actual); grows (deflate) go at once. All shrinks are issued before any grow, and grows are
//      limited to the host capacity left by max(actual, target) of every
//      VM (free, then grow).
// The actuator never inflates on its own: a VM only shrinks toward a target
// the broker sent.

#include <cstdint>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "common/clock.h"
#include "membroker/v1/agent.pb.h"
#include "node-agent/hypervisor/hypervisor.h"

namespace membroker::agent {

// The smallest balloon movement that counts as progress.
inline constexpr uint64_t kBalloonProgressBytes = uint64_t{1} << 20;

// Safety parameters (membroker.v1.SafetyParams in plain types).
struct SafetyParams {
  // Largest inflate (reclaim) step applied per tick.
  uint64_t max_inflate_step_bytes = uint64_t{256} << 20;
  // A balloon that does not move toward its target this long is stuck.
  absl::Duration stuck_timeout = absl::Seconds(30);
  // Without a broker, the last targets hold this long.
  absl::Duration fail_static_grace = absl::Seconds(60);
};

// Converts the wire's SafetyParams; unset fields keep `defaults`.
// INVALID_ARGUMENT naming the field for a negative duration.
absl::StatusOr<SafetyParams> SafetyFromProto(const membroker::v1::SafetyParams& proto,
                                             const SafetyParams& defaults);

// Tunables of the actuator.
struct ActuatorParams {
  SafetyParams safety;
  // Memory the operator allows VMs to have in total; grows never take the
  // sum of max(actual, target) above it. 0: no limit.
  uint64_t capacity_bytes = 0;
  // Guest pressure: swap-in above this many bytes per second...
  uint64_t pressure_swap_in_bytes_per_second = uint64_t{1} << 20;
  // ...or more major faults than this per second (0: not used).
  double pressure_major_faults_per_second = 256;
  // How much a VM under pressure is deflated by at once.
  uint64_t pressure_deflate_bytes = uint64_t{512} << 20;
  // Fail-static walk back: this much every interval.
  uint64_t fail_static_step_bytes = uint64_t{256} << 20;
  absl::Duration fail_static_step_interval = absl::Seconds(1);
  // Local grants (step 2b): off when false.
  bool local_grants = true;
  // The most one grant adds to a VM.
  uint64_t local_grant_max_bytes = uint64_t{256} << 20;
  // Left unassigned below the capacity by grants.
  uint64_t local_grant_margin_bytes = uint64_t{32} << 20;
  // At most one grant per VM this often.
  absl::Duration local_grant_interval = absl::Milliseconds(500);
  // A VM is not inflated (reclaimed) until this long after its last acute
  // pressure, whatever its target: the shrink waits, the target stands.
  absl::Duration acute_hold = absl::Seconds(5);
};

// A balloon's health as the actuator sees it.
enum class BalloonState { kOk, kStuck, kNoDriver };

// What the actuator knows about one VM.
struct VmActuation {
  std::string vm_id;
  std::string name;
  uint64_t max_bytes = 0;
  uint64_t actual_bytes = 0;
  // A target within this of actual is reached (VmSizing::granularity_bytes,
  // at least kBalloonProgressBytes).
  uint64_t granularity_bytes = kBalloonProgressBytes;
  // Last target set on the hypervisor (empty: none yet).
  std::optional<uint64_t> applied_bytes;
  // The target the actuator works toward (broker target, raised by guest
  // pressure or the fail-static walk; empty: none).
  std::optional<uint64_t> desired_bytes;
  BalloonState state = BalloonState::kOk;
  // The guest showed pressure in the last tick.
  bool pressure = false;
  // Memory granted by the agent on its own (step 2b) since the broker's
  // last target for this VM; included in desired_bytes.
  uint64_t local_grant_bytes = 0;
  // The last error of the hypervisor for this VM ("" when the last call
  // succeeded).
  std::string last_error;
};

// What one tick did.
struct TickResult {
  // Some VM showed pressure in this tick.
  bool pressure_event = false;
  // Number of targets set successfully.
  int targets_applied = 0;
  // Local grants made in this tick (step 2b) and the bytes they added.
  int local_grants = 0;
  uint64_t local_grant_bytes = 0;
  // VM id -> error of the SetBalloonTarget calls that failed.
  std::map<std::string, std::string> errors;
};

// Applies targets through a Hypervisor. Thread-compatible: the caller
// serializes calls (and all use of the hypervisor). Every interval (stuck
// timeout, fail-static grace and steps) is measured on the clock's
// monotonic time; the actuator never sleeps or waits.
class Actuator {
 public:
  // `hypervisor` and `clock` are not owned and must outlive the actuator.
  Actuator(Hypervisor* hypervisor, const Clock* clock, ActuatorParams params);

  // Replaces the safety parameters (from the broker's Welcome).
  void SetSafety(const SafetyParams& safety);

  // Replaces the host capacity (0: no limit).
  void SetCapacity(uint64_t capacity_bytes);

  // Records whether the broker is connected; fail-static timing starts at
  // the first call with false (and at construction). A new connection
  // starts the generation count over (a restarted broker counts from 1).
  void SetBrokerConnected(bool connected);

  // Takes a new target set. Targets for unknown VMs (not in the last tick),
  // zero, above the VM's max, or repeated are refused with an error per VM;
  // the others replace the VMs' targets and take effect at the next Tick.
  // A generation not above the last accepted one is refused for every VM.
  // Returns VM id -> error.
  std::map<std::string, std::string> SetTargets(uint64_t generation,
                                                const std::vector<membroker::v1::VmTarget>& targets);

  // One control step over `vms` (as just read from the hypervisor); VMs
  // in `acute` are under acute pressure and may get a local grant.
  TickResult Tick(const std::vector<VmStatus>& vms, const std::set<std::string>& acute = {});

  // Every known VM, ordered by id.
  std::vector<VmActuation> Snapshot() const;

  // The last accepted generation (0: none).
  uint64_t generation() const { return generation_; }

  // True while the fail-static walk back is active.
  bool walking_back() const { return walking_back_; }

 private:
  struct VmRecord {
    VmActuation view;
    uint64_t first_actual = 0;
    bool ever_moved = false;
    bool ever_stats = false;
    // Progress tracking toward the applied target.
    bool tracking = false;
    uint64_t ref_actual = 0;
    absl::Time ref_time;  // monotonic
    // The actual when the balloon was declared unhealthy.
    uint64_t unhealthy_actual = 0;
    // Previous guest counters, for pressure rates.
    std::optional<absl::Time> prev_stats_time;
    std::optional<uint64_t> prev_swap_in;
    std::optional<uint64_t> prev_major_faults;
    // Monotonic times of the last local grant and the last acute pressure.
    absl::Time last_grant = absl::InfinitePast();
    absl::Time last_acute = absl::InfinitePast();
  };

  void GrantLocal(const std::set<std::string>& acute, absl::Time now, TickResult& result);

  bool DetectPressure(VmRecord& rec, const GuestMemoryStats& stats);
  void TrackProgress(VmRecord& rec, absl::Time now);
  bool Apply(VmRecord& rec, uint64_t target, TickResult& result);

  Hypervisor* const hypervisor_;
  const Clock* const clock_;
  ActuatorParams params_;
  std::map<std::string, VmRecord> vms_;
  uint64_t generation_ = 0;
  bool broker_connected_ = false;
  // Monotonic times (Clock::MonotonicNow).
  absl::Time disconnected_since_;
  bool walking_back_ = false;
  absl::Time last_walk_step_ = absl::InfinitePast();
};

// Returns "ok", "stuck" or "no_driver".
const char* BalloonStateName(BalloonState state);

}  // namespace membroker::agent

#include "node-agent/actuator.h"

#include <algorithm>
#include <utility>

#include <spdlog/spdlog.h>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"
#include "common/proto_time.h"

namespace membroker::agent {
namespace {

uint64_t Distance(uint64_t a, uint64_t b) { return a > b ? a - b : b - a; }

uint64_t SaturatingAdd(uint64_t a, uint64_t b) {
  return a > UINT64_MAX - b ? UINT64_MAX : a + b;
}

}  // namespace

const char* BalloonStateName(BalloonState state) {
  switch (state) {
    case BalloonState::kOk:
      return "ok";
    case BalloonState::kStuck:
      return "stuck";
    case BalloonState::kNoDriver:
      return "no_driver";
  }
  return "ok";
}

absl::StatusOr<SafetyParams> SafetyFromProto(const membroker::v1::SafetyParams& proto,
                                             const SafetyParams& defaults) {
  SafetyParams out = defaults;
  if (proto.max_inflate_step_bytes() != 0) out.max_inflate_step_bytes = proto.max_inflate_step_bytes();
  if (proto.has_stuck_timeout()) {
    const absl::Duration d = FromProto(proto.stuck_timeout());
    if (d <= absl::ZeroDuration()) {
      return absl::InvalidArgumentError("safety.stuck_timeout must be > 0");
    }
    out.stuck_timeout = d;
  }
  if (proto.has_fail_static_grace()) {
    const absl::Duration d = FromProto(proto.fail_static_grace());
    if (d < absl::ZeroDuration()) {
      return absl::InvalidArgumentError("safety.fail_static_grace must be >= 0");
    }
    out.fail_static_grace = d;
  }
  return out;
}

Actuator::Actuator(Hypervisor* hypervisor, const Clock* clock, ActuatorParams params)
    : hypervisor_(hypervisor),
      clock_(clock),
      params_(std::move(params)),
      disconnected_since_(clock->MonotonicNow()) {}

void Actuator::SetSafety(const SafetyParams& safety) { params_.safety = safety; }

void Actuator::SetCapacity(uint64_t capacity_bytes) { params_.capacity_bytes = capacity_bytes; }

void Actuator::SetBrokerConnected(bool connected) {
  if (connected == broker_connected_) return;
  broker_connected_ = connected;
  if (!connected) {
    disconnected_since_ = clock_->MonotonicNow();
    return;
  }
  // Generations count per broker stream: a restarted broker starts over.
  generation_ = 0;
  if (walking_back_) {
    spdlog::info("broker is back: fail-static walk back stops");
    walking_back_ = false;
  }
}

std::map<std::string, std::string> Actuator::SetTargets(
    uint64_t generation, const std::vector<membroker::v1::VmTarget>& targets) {
  std::map<std::string, std::string> errors;
  if (generation <= generation_) {
    const std::string error = absl::StrCat("generation ", generation,
                                           " is not above the last applied ", generation_);
    for (const auto& t : targets) errors[t.vm_id()] = error;
    return errors;
  }
  // Validate the whole set first, then take the valid part.
  absl::flat_hash_set<std::string> seen;
  std::vector<std::pair<VmRecord*, uint64_t>> accepted;
  for (const auto& t : targets) {
    if (!seen.insert(t.vm_id()).second) {
      errors[t.vm_id()] = "duplicate target for this VM in the set";
      continue;
    }
    auto it = vms_.find(t.vm_id());
    if (it == vms_.end()) {
      errors[t.vm_id()] = "unknown VM";
      continue;
    }
    if (t.target_bytes() == 0) {
      errors[t.vm_id()] = "target_bytes must be > 0";
      continue;
    }
    if (t.target_bytes() > it->second.view.max_bytes) {
      errors[t.vm_id()] = absl::StrCat("target_bytes ", t.target_bytes(), " is above max_bytes ",
                                       it->second.view.max_bytes);
      continue;
    }
    accepted.emplace_back(&it->second, t.target_bytes());
  }
  // A duplicate invalidates the first occurrence too.
  for (auto& [rec, target] : accepted) {
    if (errors.count(rec->view.vm_id) != 0) continue;
    rec->view.desired_bytes = target;
    // The broker's decision replaces any grant the agent made meanwhile.
    rec->view.local_grant_bytes = 0;
  }
  generation_ = generation;
  walking_back_ = false;
  return errors;
}

bool Actuator::DetectPressure(VmRecord& rec, const GuestMemoryStats& stats) {
  bool pressure = false;
  if (!stats.last_update.has_value()) return false;
  const absl::Time at = *stats.last_update;
  if (rec.prev_stats_time.has_value() && at <= *rec.prev_stats_time) return false;  // No news.
  if (rec.prev_stats_time.has_value()) {
    const double dt = absl::ToDoubleSeconds(at - *rec.prev_stats_time);
    if (rec.prev_swap_in && stats.swap_in_bytes_total &&
        *stats.swap_in_bytes_total >= *rec.prev_swap_in) {
      const double rate = static_cast<double>(*stats.swap_in_bytes_total - *rec.prev_swap_in) / dt;
      if (rate > static_cast<double>(params_.pressure_swap_in_bytes_per_second)) pressure = true;
    }
    if (params_.pressure_major_faults_per_second > 0 && rec.prev_major_faults &&
        stats.major_faults_total && *stats.major_faults_total >= *rec.prev_major_faults) {
      const double rate =
          static_cast<double>(*stats.major_faults_total - *rec.prev_major_faults) / dt;
      if (rate > params_.pressure_major_faults_per_second) pressure = true;
    }
  }
  rec.prev_stats_time = at;
  rec.prev_swap_in = stats.swap_in_bytes_total;
  rec.prev_major_faults = stats.major_faults_total;
  return pressure;
}

void Actuator::TrackProgress(VmRecord& rec, absl::Time now) {
  VmActuation& v = rec.view;
  if (Distance(v.actual_bytes, rec.first_actual) >= kBalloonProgressBytes) rec.ever_moved = true;
  if (v.state != BalloonState::kOk) {
    // Unhealthy until the balloon moves again.
    if (Distance(v.actual_bytes, rec.unhealthy_actual) >= kBalloonProgressBytes) {
      spdlog::info("VM {}: balloon moves again", v.name);
      v.state = BalloonState::kOk;
      rec.tracking = false;
    }
    return;
  }
  // Within the devices' granularity (a virtio-mem block without a balloon)
  // the target is reached.
  if (!v.applied_bytes.has_value() ||
      Distance(v.actual_bytes, *v.applied_bytes) < v.granularity_bytes) {
    rec.tracking = false;  // Nothing pending.
    return;
  }
  if (!rec.tracking) {
    rec.tracking = true;
    rec.ref_actual = v.actual_bytes;
    rec.ref_time = now;
    return;
  }
  const uint64_t target = *v.applied_bytes;
  if (Distance(v.actual_bytes, target) + kBalloonProgressBytes <=
      Distance(rec.ref_actual, target)) {
    rec.ref_actual = v.actual_bytes;
    rec.ref_time = now;
    return;
  }
  if (now - rec.ref_time >= params_.safety.stuck_timeout) {
    v.state = (!rec.ever_moved && !rec.ever_stats) ? BalloonState::kNoDriver : BalloonState::kStuck;
    rec.unhealthy_actual = v.actual_bytes;
    rec.tracking = false;
    spdlog::warn("VM {}: balloon {} (actual {} bytes, target {} bytes)", v.name,
                 BalloonStateName(v.state), v.actual_bytes, target);
  }
}

bool Actuator::Apply(VmRecord& rec, uint64_t target, TickResult& result) {
  absl::Status status = hypervisor_->SetBalloonTarget(rec.view.vm_id, target);
  if (!status.ok()) {
    rec.view.last_error = std::string(status.message());
    result.errors[rec.view.vm_id] = rec.view.last_error;
    spdlog::warn("VM {}: set balloon target {} failed: {}", rec.view.name, target,
                 status.ToString());
    return false;
  }
  rec.view.last_error.clear();
  rec.view.applied_bytes = target;
  // The stuck timer runs from the first target the balloon has to follow.
  if (!rec.tracking && Distance(rec.view.actual_bytes, target) >= rec.view.granularity_bytes) {
    rec.tracking = true;
    rec.ref_actual = rec.view.actual_bytes;
    rec.ref_time = clock_->MonotonicNow();
  }
  ++result.targets_applied;
  return true;
}

void Actuator::GrantLocal(const std::set<std::string>& acute, absl::Time now, TickResult& result) {
  if (!params_.local_grants || params_.capacity_bytes == 0 || acute.empty()) return;
  // What the VMs may hold once every pending target lands.
  auto term = [](const VmActuation& v) {
    return std::max({v.actual_bytes, v.applied_bytes.value_or(0), v.desired_bytes.value_or(0)});
  };
  uint64_t committed = 0;
  for (const auto& [id, rec] : vms_) committed = SaturatingAdd(committed, term(rec.view));
  for (const std::string& id : acute) {
    auto it = vms_.find(id);
    if (it == vms_.end()) continue;
    VmRecord& rec = it->second;
    VmActuation& v = rec.view;
    if (v.state != BalloonState::kOk) continue;  // It cannot deflate.
    if (now - rec.last_grant < params_.local_grant_interval) continue;
    const uint64_t base = term(v);
    const uint64_t budget = SaturatingAdd(committed, params_.local_grant_margin_bytes);
    const uint64_t room = params_.capacity_bytes > budget ? params_.capacity_bytes - budget : 0;
    const uint64_t headroom = v.max_bytes > base ? v.max_bytes - base : 0;
    const uint64_t grant = std::min({params_.local_grant_max_bytes, room, headroom});
    if (grant < kBalloonProgressBytes) {
      spdlog::debug("VM {}: acute pressure, no local grant (room {} bytes, headroom {} bytes)",
                    v.name, room, headroom);
      continue;
    }
    v.desired_bytes = base + grant;
    v.local_grant_bytes = SaturatingAdd(v.local_grant_bytes, grant);
    rec.last_grant = now;
    committed = SaturatingAdd(committed, grant);
    ++result.local_grants;
    result.local_grant_bytes += grant;
    spdlog::info("VM {}: acute pressure, granting {} bytes locally (target {} bytes)", v.name,
                 grant, base + grant);
  }
}

TickResult Actuator::Tick(const std::vector<VmStatus>& vms, const std::set<std::string>& acute) {
  TickResult result;
  // Monotonic: only intervals are measured here (guest statistics carry
  // their own wall timestamps).
  const absl::Time now = clock_->MonotonicNow();

  // 1. Refresh the VM set.
  absl::flat_hash_set<std::string> present;
  for (const VmStatus& vm : vms) {
    present.insert(vm.vm_id);
    auto [it, inserted] = vms_.try_emplace(vm.vm_id);
    VmRecord& rec = it->second;
    if (inserted) {
      rec.view.vm_id = vm.vm_id;
      rec.first_actual = vm.actual_bytes;
    }
    rec.view.name = vm.name;
    rec.view.max_bytes = vm.max_bytes;
    rec.view.actual_bytes = vm.actual_bytes;
    rec.view.granularity_bytes = std::max(kBalloonProgressBytes, vm.sizing.granularity_bytes);
    if (vm.stats.last_update.has_value()) rec.ever_stats = true;
    // 2. Guest pressure.
    rec.view.pressure = DetectPressure(rec, vm.stats);
  }
  for (auto it = vms_.begin(); it != vms_.end();) {
    if (present.count(it->first) == 0) {
      it = vms_.erase(it);
    } else {
      ++it;
    }
  }

  for (auto& [id, rec] : vms_) {
    VmActuation& v = rec.view;
    if (!v.pressure) continue;
    result.pressure_event = true;
    const uint64_t base = std::max(v.desired_bytes.value_or(v.actual_bytes), v.actual_bytes);
    const uint64_t raised = std::min(v.max_bytes, SaturatingAdd(base, params_.pressure_deflate_bytes));
    if (raised > v.desired_bytes.value_or(0)) {
      spdlog::info("VM {}: guest pressure, deflating to {} bytes", v.name, raised);
      v.desired_bytes = raised;
    }
  }

  // 2b. A VM under acute pressure is not inflated further (not even
  // toward the broker's target) until the broker's next target for it;
  // then it may get a local grant from the host's unassigned budget.
  for (const std::string& id : acute) {
    auto it = vms_.find(id);
    if (it == vms_.end()) continue;
    it->second.last_acute = now;
    VmActuation& v = it->second.view;
    if (v.desired_bytes.has_value() && *v.desired_bytes < v.actual_bytes) {
      spdlog::info("VM {}: acute pressure, holding its balloon at {} bytes", v.name,
                   v.actual_bytes);
      v.desired_bytes = v.actual_bytes;
    }
  }
  GrantLocal(acute, now, result);

  // 3. Fail-static walk back toward max.
  if (!broker_connected_ && now - disconnected_since_ >= params_.safety.fail_static_grace) {
    if (!walking_back_) {
      spdlog::warn("broker gone for {}: walking VMs back toward their max",
                   absl::FormatDuration(now - disconnected_since_));
      walking_back_ = true;
    }
    if (now - last_walk_step_ >= params_.fail_static_step_interval) {
      last_walk_step_ = now;
      for (auto& [id, rec] : vms_) {
        VmActuation& v = rec.view;
        const uint64_t base = v.desired_bytes.value_or(v.actual_bytes);
        if (base >= v.max_bytes) continue;
        v.desired_bytes = std::min(v.max_bytes, SaturatingAdd(base, params_.fail_static_step_bytes));
      }
    }
  }

  // 4. Stuck balloons.
  for (auto& [id, rec] : vms_) TrackProgress(rec, now);

  // 5. Plan: shrinks first, then grows within the capacity left.
  struct Step {
    VmRecord* rec;
    uint64_t target;
  };
  std::vector<Step> shrinks;
  std::vector<Step> grows;
  for (auto& [id, rec] : vms_) {
    VmActuation& v = rec.view;
    if (!v.desired_bytes.has_value()) continue;
    const uint64_t desired = *v.desired_bytes;
    if (desired < v.actual_bytes) {
      uint64_t step_target;
      if (v.state != BalloonState::kOk) {
        step_target = v.actual_bytes;  // No inflation of an unhealthy balloon.
      } else if (now - rec.last_acute < params_.acute_hold) {
        step_target = v.actual_bytes;  // Nor of a guest just under acute pressure.
      } else {
        const uint64_t step = params_.safety.max_inflate_step_bytes;
        step_target = std::max(desired, v.actual_bytes > step ? v.actual_bytes - step : uint64_t{1});
      }
      if (v.applied_bytes != step_target) shrinks.push_back({&rec, step_target});
    } else if (v.applied_bytes != desired) {
      grows.push_back({&rec, desired});
    }
  }
  for (const Step& s : shrinks) Apply(*s.rec, s.target, result);
  if (!grows.empty()) {
    // Memory committed on the host: max(actual, target in force) per VM.
    uint64_t committed = 0;
    for (const auto& [id, rec] : vms_) {
      const VmActuation& v = rec.view;
      committed = SaturatingAdd(committed, std::max(v.actual_bytes, v.applied_bytes.value_or(0)));
    }
    for (const Step& s : grows) {
      VmActuation& v = s.rec->view;
      const uint64_t base = std::max(v.actual_bytes, v.applied_bytes.value_or(0));
      uint64_t target = s.target;
      if (params_.capacity_bytes != 0 && target > base) {
        const uint64_t room =
            params_.capacity_bytes > committed ? params_.capacity_bytes - committed : 0;
        target = std::min(target, SaturatingAdd(base, room));
        if (target < s.target) {
          spdlog::debug("VM {}: grow to {} bytes limited to {} by host capacity", v.name,
                        s.target, target);
        }
      }
      if (target == v.applied_bytes) continue;
      if (Apply(*s.rec, target, result) && target > base) {
        committed = SaturatingAdd(committed, target - base);
      }
    }
  }
  return result;
}

std::vector<VmActuation> Actuator::Snapshot() const {
  std::vector<VmActuation> out;
  out.reserve(vms_.size());
  for (const auto& [id, rec] : vms_) out.push_back(rec.view);
  return out;
}

}  // namespace membroker::agent

#include "sim/baselines.h"

#include <algorithm>
#include <cmath>
#include <deque>
#include <map>
#include <utility>

namespace membroker::sim {
namespace {

constexpr uint64_t kMiB = uint64_t{1} << 20;

class NoBallooning : public HostController {
 public:
  std::vector<uint64_t> Decide(const HostView& view) override {
    return std::vector<uint64_t>(view.vms.size(), 0);
  }
};

// ---------------------------------------------------------------------------
// Proxmox VE auto-ballooning.
// Source: proxmox/pve-manager PVE/Service/pvestatd.pm (auto_balloning) and
// PVE/AutoBalloon.pm (compute_alg1); pve-docs qm.adoc.
class Proxmox : public HostController {
 public:
  std::vector<uint64_t> Decide(const HostView& view) override {
    const size_t n = view.vms.size();
    // pvestatd.pm: "try to use ~80% host memory"; goal = total * 0.8 - used.
    constexpr double kTarget = 0.80;
    // pvestatd.pm: $maxchange = 100*1024*1024 (per VM per round).
    constexpr int64_t kMaxChange = 100 * int64_t{kMiB};
    // AutoBalloon.pm: nothing happens for |goal| <= 10 MiB.
    constexpr int64_t kDeadBand = 10 * int64_t{kMiB};
    int64_t used = 0;
    for (const VmView& vm : view.vms) used += static_cast<int64_t>(vm.actual_bytes);
    const int64_t goal =
        static_cast<int64_t>(static_cast<double>(view.capacity_bytes) * kTarget) - used;

    std::vector<size_t> all, pressure, enough_free;
    for (size_t i = 0; i < n; ++i) {
      const VmView& vm = view.vms[i];
      // AutoBalloon.pm: skip VMs without a running balloon driver, without a
      // balloon floor, or with shares 0.
      if (!vm.balloon_driver || vm.min_bytes == 0 || Shares(vm) == 0) continue;
      all.push_back(i);
      // AutoBalloon.pm: free memory above 25 % of balloon_min (and not below
      // the floor) means "enough free memory"; the rest are under pressure.
      if (vm.free_bytes > 0 && static_cast<double>(vm.free_bytes) > vm.min_bytes * 0.25 &&
          vm.actual_bytes >= vm.min_bytes) {
        enough_free.push_back(i);
      } else {
        pressure.push_back(i);
      }
    }
    std::map<size_t, int64_t> res;
    if (goal > kDeadBand) {
      // Grow: VMs under memory pressure first; everyone if none moved.
      int64_t rest = Change(view, res, pressure, goal, kMaxChange);
      if (rest >= goal) Change(view, res, all, rest, kMaxChange);
    } else if (goal < -kDeadBand) {
      // Shrink: VMs with enough free memory first; everyone if none moved.
      int64_t rest = Change(view, res, enough_free, goal, kMaxChange);
      if (rest <= goal) Change(view, res, all, rest, kMaxChange);
    }
    std::vector<uint64_t> out(n, 0);
    for (const auto& [i, bytes] : res) out[i] = static_cast<uint64_t>(std::max<int64_t>(bytes, 1));
    return out;
  }

 private:
  // pve-docs qm.adoc: shares default 1000 (0..50000). Our weight default is
  // 100, so shares = 10 x weight.
  static int64_t Shares(const VmView& vm) { return int64_t{vm.weight} * 10; }

  // AutoBalloon.pm compute_alg1's $change_func: distributes `bytes` by
  // shares above each VM's balloon_min, each VM moving at most `max_change`
  // from its current balloon; VMs that hit min or max drop out and the
  // rest is shared again. Returns what is left of `bytes`.
  static int64_t Change(const HostView& view, std::map<size_t, int64_t>& res,
                        const std::vector<size_t>& ids, int64_t bytes, int64_t max_change) {
    int64_t rest = bytes;
    bool repeat = true;
    int64_t progress = 1;
    std::map<size_t, bool> done;
    // Bounded: the Perl loop ends when nothing moves; cap it as well.
    for (int round = 0; round < 100 && rest != 0 && repeat && progress != 0; ++round) {
      repeat = false;
      progress = 0;
      double shares_total = 0;
      int64_t alloc_old = 0;
      for (size_t i : ids) {
        if (done.count(i)) continue;
        const VmView& vm = view.vms[i];
        const int64_t balloon =
            res.count(i) ? res[i] : static_cast<int64_t>(vm.actual_bytes);
        alloc_old += balloon - static_cast<int64_t>(vm.min_bytes);
        shares_total += static_cast<double>(Shares(vm));
      }
      if (shares_total <= 0) break;
      int64_t changes = 0;
      const int64_t alloc_new = alloc_old + rest;
      for (size_t i : ids) {
        if (done.count(i)) continue;
        const VmView& vm = view.vms[i];
        const int64_t cur = static_cast<int64_t>(vm.actual_bytes);
        int64_t desired = static_cast<int64_t>(vm.min_bytes) +
                          static_cast<int64_t>(static_cast<double>(alloc_new) / shares_total *
                                               static_cast<double>(Shares(vm)));
        if (desired > static_cast<int64_t>(vm.max_bytes)) {
          desired = static_cast<int64_t>(vm.max_bytes);
          repeat = true;
        } else if (desired < static_cast<int64_t>(vm.min_bytes)) {
          desired = static_cast<int64_t>(vm.min_bytes);
          repeat = true;
        }
        int64_t balloon;
        if (bytes > 0 && desired - cur > 0) {  // grow
          balloon = std::min(cur + max_change, desired);
        } else if (desired - cur < 0) {  // shrink
          balloon = std::max(cur - max_change, desired);
        } else {
          done[i] = true;
          continue;
        }
        const int64_t diff = balloon - cur;
        if (diff != 0) {
          const int64_t old = res.count(i) ? res[i] : cur;
          res[i] = balloon;
          const int64_t change = balloon - old;
          if (change != 0) {
            changes += change;
            progress += diff > 0 ? diff : -diff;
            repeat = true;
          }
        }
      }
      rest -= changes;
    }
    return rest;
  }
};

// ---------------------------------------------------------------------------
// oVirt MoM default balloon policy.
// Source: oVirt/vdsm static/etc/vdsm/mom.d/02-balloon.policy; oVirt/mom doc/.
class Mom : public HostController {
 public:
  std::vector<uint64_t> Decide(const HostView& view) override {
    // 02-balloon.policy constants.
    constexpr double kPressureThreshold = 0.20;  // host free below 20 %: pressure
    constexpr double kPressureCritical = 0.05;   // below 5 %: critical
    constexpr double kMinGuestFree = 0.20;       // guests keep 20 % free
    constexpr double kMaxChange = 0.05;          // at most 5 % per step
    constexpr double kMinChange = 0.0025;        // skip changes under 0.25 %
    // MoM's host free memory over host memory (here: the host's capacity
    // for VMs minus what the guests hold). MoM averages a short history of
    // samples; this uses the current sample.
    double used = 0;
    for (const VmView& vm : view.vms) used += static_cast<double>(vm.actual_bytes);
    const double cap = static_cast<double>(view.capacity_bytes);
    const double host_free = cap > 0 ? (cap - used) / cap : 0;
    std::vector<uint64_t> out(view.vms.size(), 0);
    for (size_t i = 0; i < view.vms.size(); ++i) {
      const VmView& vm = view.vms[i];
      // MoM controls guests whose balloon and statistics it can read.
      if (!vm.balloon_driver || vm.total_bytes == 0) continue;
      const double cur = static_cast<double>(vm.actual_bytes);
      // guest_used_mem = balloon_cur - mem_unused.
      const double guest_used = cur - static_cast<double>(vm.free_bytes);
      auto big_enough = [&](double v) { return std::abs(v - cur) > kMinChange * cur; };
      double size;
      if (host_free < kPressureThreshold) {
        // shrink_guest: the guest's free goal scales with host pressure; in
        // the critical case it goes negative on purpose (forces guest swap).
        const double guest_free = host_free <= kPressureCritical
                                      ? -0.05 + host_free
                                      : kMinGuestFree * (host_free / kPressureThreshold);
        const double bmin =
            std::max(static_cast<double>(vm.min_bytes), guest_used + guest_free * cur);
        size = std::max(cur * (1 - kMaxChange), bmin);
        if (!(size <= cur && big_enough(size))) continue;
      } else {
        // grow_guest: only a ballooned guest; at least its 20 % free goal,
        // otherwise 5 % more, never above its size.
        const double max = static_cast<double>(vm.max_bytes);
        if (cur >= max) continue;
        const double bmin =
            std::max(static_cast<double>(vm.min_bytes), guest_used + kMinGuestFree * cur);
        size = std::min(cur * (1 + kMaxChange), max);
        size = std::max(size, bmin);
        if (!big_enough(size)) continue;
      }
      out[i] = static_cast<uint64_t>(std::clamp(size, 1.0 * kMiB, static_cast<double>(vm.max_bytes)));
    }
    return out;
  }
};

// ---------------------------------------------------------------------------
// XenServer squeezed.
// Source: xapi-project/squeezed lib/squeeze.ml; xen-api docs/squeezed.
class Squeezed : public HostController {
 public:
  std::vector<uint64_t> Decide(const HostView& view) override {
    // squeeze.ml: a small slush fund (9 MiB) stays free.
    constexpr double kSlush = 9.0 * kMiB;
    double avail = static_cast<double>(view.capacity_bytes) - kSlush;
    double sum_min = 0, sum_range = 0;
    for (const VmView& vm : view.vms) {
      if (!vm.balloon_driver) {
        // squeezed: a balloon that makes no progress is inactive and
        // excluded; its memory is simply used.
        avail -= static_cast<double>(vm.actual_bytes);
        continue;
      }
      const double lo = static_cast<double>(std::min(vm.min_bytes, vm.max_bytes));
      sum_min += lo;
      sum_range += static_cast<double>(vm.max_bytes) - lo;
    }
    // docs/squeezed: every domain at the same fraction of the way between
    // dynamic-min and dynamic-max; all at max when memory is plentiful,
    // all at min when it is scarce.
    double f = 1.0;
    if (avail <= sum_min) {
      f = 0.0;
    } else if (sum_range > 0 && avail - sum_min < sum_range) {
      f = (avail - sum_min) / sum_range;
    }
    std::vector<uint64_t> out(view.vms.size(), 0);
    for (size_t i = 0; i < view.vms.size(); ++i) {
      const VmView& vm = view.vms[i];
      if (!vm.balloon_driver) continue;
      const double lo = static_cast<double>(std::min(vm.min_bytes, vm.max_bytes));
      out[i] = static_cast<uint64_t>(lo + f * (static_cast<double>(vm.max_bytes) - lo));
    }
    return out;
  }
};

// ---------------------------------------------------------------------------
// The clairvoyant oracle.
class Oracle : public HostController {
 public:
  Oracle(absl::Duration period, uint64_t rate)
      : period_s_(absl::ToDoubleSeconds(period)), rate_(static_cast<double>(rate)) {}

  std::vector<uint64_t> Decide(const HostView& view) override {
    const size_t n = view.vms.size();
    std::vector<uint64_t> out(n, 0);
    if (view.truth == nullptr) return out;
    std::vector<double> want(n, 0), floor(n, 0);
    double fixed = 0, sum_want = 0, sum_floor = 0;
    for (size_t i = 0; i < n; ++i) {
      const VmView& vm = view.vms[i];
      if (!vm.balloon_driver) {
        fixed += static_cast<double>(vm.actual_bytes);
        continue;
      }
      // Look ahead far enough for the balloon to follow any change: one
      // decision period plus the time to deflate the whole VM.
      const double horizon = period_s_ + static_cast<double>(vm.max_bytes) / rate_ + 0.5;
      const double need = WindowMax(*view.truth, vm.index, view.now_seconds, horizon);
      const double max = static_cast<double>(vm.max_bytes);
      floor[i] = std::min(static_cast<double>(vm.min_bytes), max);
      want[i] = std::clamp(need + kMiB, floor[i], max);
      sum_want += want[i];
      sum_floor += floor[i];
    }
    // Short host: floors first, then what is left in proportion to need
    // above the floor.
    const double cap = static_cast<double>(view.capacity_bytes) - fixed;
    double scale = 1.0;
    if (sum_want > cap && sum_want > sum_floor) {
      scale = std::max(0.0, cap - sum_floor) / (sum_want - sum_floor);
    }
    for (size_t i = 0; i < n; ++i) {
      if (!view.vms[i].balloon_driver) continue;
      out[i] = static_cast<uint64_t>(floor[i] + (want[i] - floor[i]) * std::min(scale, 1.0));
      out[i] = std::max<uint64_t>(out[i], kMiB);
    }
    return out;
  }

 private:
  // Samples of one VM's future working set with a running maximum
  // (monotonic deque): each sample is computed once.
  struct Window {
    double next_t = -1;
    uint64_t oom_kills = 0;
    std::deque<std::pair<double, double>> samples;  // (time, bytes), bytes decreasing
  };

  // The largest working set of VM `index` within [now, now + horizon].
  double WindowMax(const SimHost& truth, size_t index, double now, double horizon) {
    constexpr double kStep = 0.25;
    Window& w = windows_[index];
    const uint64_t ooms = truth.vms()[index].oom_kills_total;
    if (w.next_t < 0 || ooms != w.oom_kills) {
      // First look, or the guest's future changed (a kill restarts it).
      w = Window();
      w.next_t = now;
      w.oom_kills = ooms;
    }
    while (w.next_t <= now + horizon) {
      const double v = static_cast<double>(truth.WorkingSetOf(index, w.next_t));
      while (!w.samples.empty() && w.samples.back().second <= v) w.samples.pop_back();
      w.samples.emplace_back(w.next_t, v);
      w.next_t += kStep;
    }
    while (w.samples.size() > 1 && w.samples.front().first < now - 1e-9) w.samples.pop_front();
    return w.samples.empty() ? 0.0 : w.samples.front().second;
  }

  double period_s_;
  double rate_;
  std::map<size_t, Window> windows_;
};

}  // namespace

std::unique_ptr<HostController> MakeNoBallooningController() {
  return std::make_unique<NoBallooning>();
}
std::unique_ptr<HostController> MakeProxmoxController() { return std::make_unique<Proxmox>(); }
std::unique_ptr<HostController> MakeMomController() { return std::make_unique<Mom>(); }
std::unique_ptr<HostController> MakeSqueezedController() { return std::make_unique<Squeezed>(); }
std::unique_ptr<HostController> MakeOracleController(absl::Duration period,
                                                     uint64_t balloon_rate_bytes_per_second) {
  return std::make_unique<Oracle>(period, balloon_rate_bytes_per_second);
}

}  // namespace membroker::sim

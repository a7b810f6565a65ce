#include "sim/fleet_sim.h"

#include <algorithm>
#include <cmath>
#include <map>

#include "absl/strings/str_cat.h"
#include "broker/policy/host_step.h"
#include "broker/policy_config.h"
#include "broker/report.h"
#include "common/proto_time.h"
#include "common/status.h"
#include "sim/baselines.h"
#include "sim/scenario.h"

namespace membroker::sim {
namespace {

using membroker::v1::Scenario;

constexpr uint64_t kMiB = uint64_t{1} << 20;
constexpr double kGiB = 1024.0 * 1024.0 * 1024.0;
constexpr double kTickSeconds = 0.25;
// A deficit episode starts above this and ends when the guest is within
// kEpisodeEndBytes of its working set.
constexpr uint64_t kEpisodeStartBytes = 64 * kMiB;
constexpr uint64_t kEpisodeEndBytes = 1 * kMiB;
// Swap-in since the last decision above this is a pressure event.
constexpr uint64_t kPressureSwapInBytes = 256 * 1024;
// So are major faults (swap-ins or page-cache refaults) above this many.
constexpr uint64_t kPressureMajorFaults = kPressureSwapInBytes / kPageBytes;

// The broker's decision for one host, as the broker runs it: the report an
// agent would send (ReportOf), the broker's edge (ToHostObservation: the
// same trust rule), then the broker's per-host step (ObserveHost +
// DecideStep) under the same policy set the broker builds from the same
// cluster policy. Nothing of the loop is copied here.
class BrokerController : public HostController {
 public:
  BrokerController(policy::PolicySet policies, absl::Duration interval)
      : policies_(std::move(policies)), interval_(interval) {}

  std::vector<uint64_t> Decide(const HostView& view) override {
    const v1::HostReport report = ReportOf(view, ++sequence_);
    const policy::HostObservation obs =
        broker::ToHostObservation(report, view.now_seconds, interval_, nullptr);
    policy::ObserveHost(obs, policies_.demand, state_);
    policy::DecideStep(policies_, state_);
    std::vector<uint64_t> out(view.vms.size(), 0);
    for (size_t i = 0; i < view.vms.size(); ++i) {
      out[i] = state_.vms.at(view.vms[i].vm_id).decision.target_bytes;
    }
    return out;
  }

  // The decision state after the last Decide.
  const policy::HostStepState& state() const { return state_; }

 private:
  const policy::PolicySet policies_;
  const absl::Duration interval_;
  uint64_t sequence_ = 0;
  policy::HostStepState state_;
};

absl::Duration IntervalOf(const Scenario& s) {
  const absl::Duration d = FromProto(s.report_interval());
  return d > absl::ZeroDuration() ? d : absl::Seconds(1);
}

// Per-VM bookkeeping of the figures.
struct VmTrack {
  uint64_t max_bytes = 0;  // effective max: min(configured, policy max)
  uint64_t min_bytes = 0;
  uint32_t weight = 0;
  uint64_t want = 0;  // the controller's last target (0: none yet)
  int last_direction = 0;
  uint64_t reversals = 0;
  double episode_start = -1;
  bool responded = false;
  uint64_t last_swap_in = 0;
  uint64_t last_major_faults = 0;
};

struct HostRun {
  std::unique_ptr<SimHost> sim;
  std::unique_ptr<HostController> controller;
  uint64_t capacity = 0;
  double next_decision = 0;
  std::vector<VmTrack> vms;
};

}  // namespace

v1::ClusterPolicy BrokerClusterPolicy(const Scenario& scenario, const RunOptions& options) {
  v1::ClusterPolicy policy = broker::MergeClusterPolicy(broker::DefaultClusterPolicy(),
                                                        scenario.cluster_policy());
  return broker::MergeClusterPolicy(policy, options.broker_policy);
}

policy::PolicySet BrokerPolicySet(const Scenario& scenario, const RunOptions& options) {
  std::map<std::string, v1::VmPolicy> vm_policies;
  for (const auto& host : scenario.hosts()) {
    for (const auto& vm : host.vms()) {
      if (!vm.has_policy()) continue;
      vm_policies[vm.vm().vm_id().empty() ? DeriveVmId(vm.vm().name()) : vm.vm().vm_id()] =
          vm.policy();
    }
  }
  policy::PolicySet set =
      broker::ToPolicySet(BrokerClusterPolicy(scenario, options), vm_policies);
  if (options.tune_broker) options.tune_broker(set);
  return set;
}

v1::HostReport ReportOf(const HostView& view, uint64_t sequence) {
  v1::HostReport report;
  report.set_sequence(sequence);
  report.set_capacity_bytes(view.capacity_bytes);
  // The simulated host's memory is its budget: what the VMs do not hold is
  // free (the simulator has no host pressure of its own).
  uint64_t held = 0;
  for (const VmView& vm : view.vms) held += vm.actual_bytes;
  report.mutable_host()->set_mem_total_bytes(view.capacity_bytes);
  report.mutable_host()->set_mem_available_bytes(
      view.capacity_bytes > held ? view.capacity_bytes - held : 0);
  for (const VmView& vm : view.vms) {
    v1::VmSample* s = report.add_vms();
    s->set_vm_id(vm.vm_id);
    s->set_max_bytes(vm.configured_max_bytes != 0 ? vm.configured_max_bytes : vm.max_bytes);
    s->set_actual_bytes(vm.actual_bytes);
    s->set_last_target_bytes(vm.target_bytes);
    if (!vm.balloon_driver) {
      // No driver: no statistics, and the balloon never moves.
      s->set_health(v1::BALLOON_HEALTH_NO_DRIVER);
      continue;
    }
    s->set_balloon_driver_ready(true);  // the simulator knows its driver
    if (!vm.guest_stats) {
      // No statistics, flagged as the agent flags them; the host's view.
      s->set_health(v1::BALLOON_HEALTH_STATS_UNAVAILABLE);
      s->mutable_stats()->set_untrusted(true);
      s->mutable_stats()->set_untrusted_reason("the guest sends no statistics");
      s->set_host_working_set_bytes(vm.host_working_set_bytes);
      s->set_host_working_set_interval_ms(vm.host_working_set_interval_ms);
      continue;
    }
    s->set_health(v1::BALLOON_HEALTH_OK);
    v1::GuestStats* g = s->mutable_stats();
    g->set_total_bytes(vm.total_bytes);
    g->set_available_bytes(vm.available_bytes);
    g->set_free_bytes(vm.free_bytes);
    g->set_disk_caches_bytes(vm.disk_caches_bytes);
    g->set_swap_in_bytes_total(vm.swap_in_bytes_total);
    g->set_swap_out_bytes_total(vm.swap_out_bytes_total);
    g->set_major_faults_total(vm.major_faults_total);
    g->set_age_seconds(0);
    // No OOM-kill counter, as from QEMU's and libvirt's balloon statistics:
    // the broker infers kills from a full guest's used memory falling.
  }
  return report;
}

const std::vector<PolicyKind>& AllPolicies() {
  static const std::vector<PolicyKind> kAll = {PolicyKind::kNoBallooning, PolicyKind::kProxmox,
                                               PolicyKind::kMom,          PolicyKind::kSqueezed,
                                               PolicyKind::kBroker,       PolicyKind::kOracle};
  return kAll;
}

const char* PolicyName(PolicyKind kind) {
  switch (kind) {
    case PolicyKind::kNoBallooning: return "none";
    case PolicyKind::kProxmox: return "proxmox";
    case PolicyKind::kMom: return "mom";
    case PolicyKind::kSqueezed: return "squeezed";
    case PolicyKind::kBroker: return "broker";
    case PolicyKind::kOracle: return "oracle";
  }
  return "unknown";
}

PolicyTraits TraitsOf(PolicyKind kind, absl::Duration interval) {
  switch (kind) {
    case PolicyKind::kNoBallooning:
      return {absl::Hours(24 * 365), false, false};
    case PolicyKind::kProxmox:
      // pvestatd.pm: the status loop (and auto-ballooning) runs every 10 s.
      return {absl::Seconds(10), false, false};
    case PolicyKind::kMom:
      // oVirt runs MoM's policy every 15 s (upstream default 10 s).
      return {absl::Seconds(15), false, false};
    case PolicyKind::kSqueezed:
      // squeezed polls every 10 s; squeeze.ml frees memory before it grows.
      return {absl::Seconds(10), false, true};
    case PolicyKind::kBroker:
      // Agents report every interval and at once on pressure; the agent's
      // actuator applies shrinks before growth on the same host.
      return {interval, true, true};
    case PolicyKind::kOracle:
      return {interval, false, true};
  }
  return {interval, false, false};
}

std::unique_ptr<HostController> MakeController(PolicyKind kind, const RunOptions& options,
                                               const Scenario& scenario) {
  switch (kind) {
    case PolicyKind::kNoBallooning: return MakeNoBallooningController();
    case PolicyKind::kProxmox: return MakeProxmoxController();
    case PolicyKind::kMom: return MakeMomController();
    case PolicyKind::kSqueezed: return MakeSqueezedController();
    case PolicyKind::kBroker:
      return std::make_unique<BrokerController>(
          BrokerPolicySet(scenario, options),
          broker::ReportInterval(BrokerClusterPolicy(scenario, options)));
    case PolicyKind::kOracle:
      return MakeOracleController(IntervalOf(scenario),
                                  scenario.balloon_rate_bytes_per_second() == 0
                                      ? kDefaultBalloonRateBytesPerSecond
                                      : scenario.balloon_rate_bytes_per_second());
  }
  return MakeNoBallooningController();
}

absl::StatusOr<QualityFigures> RunScenario(const Scenario& scenario, PolicyKind kind,
                                           const RunOptions& options) {
  RETURN_IF_ERROR(ValidateScenario(scenario));
  const policy::PolicyParams params = BrokerPolicySet(scenario, options).params;
  const PolicyTraits traits = TraitsOf(kind, IntervalOf(scenario));
  const double period = absl::ToDoubleSeconds(traits.period);

  std::vector<HostRun> hosts;
  hosts.reserve(scenario.hosts_size());
  for (int h = 0; h < scenario.hosts_size(); ++h) {
    HostRun run;
    ASSIGN_OR_RETURN(run.sim, SimHost::Create(HostSimConfig(scenario, h)));
    run.controller = MakeController(kind, options, scenario);
    run.capacity = scenario.hosts(h).capacity_bytes();
    for (const auto& vm : scenario.hosts(h).vms()) {
      VmTrack t;
      // The policy's max caps the VM's configured memory; a pinned VM's
      // floor is its max (no policy may reclaim from it).
      t.max_bytes = vm.policy().has_max_bytes()
                        ? std::min(vm.policy().max_bytes(), vm.vm().max_bytes())
                        : vm.vm().max_bytes();
      t.min_bytes = std::min(vm.policy().has_min_bytes() ? vm.policy().min_bytes()
                                                         : params.default_min_bytes,
                             t.max_bytes);
      if (vm.policy().pinned()) t.min_bytes = t.max_bytes;
      t.weight = vm.policy().has_weight() ? vm.policy().weight() : params.default_weight;
      run.vms.push_back(t);
    }
    hosts.push_back(std::move(run));
  }

  const absl::Duration duration =
      options.duration > absl::ZeroDuration() ? options.duration : FromProto(scenario.duration());
  const int64_t ticks =
      static_cast<int64_t>(std::ceil(absl::ToDoubleSeconds(duration) / kTickSeconds));
  QualityFigures fig;
  double reclaimed_byte_seconds = 0;
  double overflow_byte_seconds = 0;
  double reaction_sum = 0;
  uint64_t reactions = 0;
  double response_sum = 0;
  uint64_t responses = 0;
  double vm_seconds = 0;

  for (int64_t k = 1; k <= ticks; ++k) {
    const double now = static_cast<double>(k) * kTickSeconds;
    for (HostRun& host : hosts) {
      host.sim->Advance(absl::Seconds(kTickSeconds));
      const std::vector<SimVmState>& vms = host.sim->vms();

      // Figures from the truth.
      double resident = 0;
      bool pressure = false;
      for (size_t i = 0; i < vms.size(); ++i) {
        const SimVmState& s = vms[i];
        VmTrack& t = host.vms[i];
        if (options.observer) options.observer(now, s);
        if (!s.running) continue;
        vm_seconds += kTickSeconds;
        reclaimed_byte_seconds += static_cast<double>(s.max_bytes - s.actual_bytes) * kTickSeconds;
        resident += static_cast<double>(s.resident_bytes);
        if (t.episode_start < 0 && s.deficit_bytes > kEpisodeStartBytes) {
          t.episode_start = now;
          t.responded = false;
        } else if (t.episode_start >= 0 && s.deficit_bytes < kEpisodeEndBytes) {
          const double r = now - t.episode_start;
          reaction_sum += r;
          ++reactions;
          fig.reaction_seconds_max = std::max(fig.reaction_seconds_max, r);
          if (!t.responded) {
            // Resolved without a response (e.g. the working set fell back):
            // the response took the whole episode.
            response_sum += r;
            ++responses;
            if (r > fig.response_seconds_max) fig.response_max_vm = s.name;
            fig.response_seconds_max = std::max(fig.response_seconds_max, r);
          }
          t.episode_start = -1;
        }
        if (s.swap_in_bytes_total > t.last_swap_in + kPressureSwapInBytes ||
            s.major_faults_total > t.last_major_faults + kPressureMajorFaults) {
          pressure = true;
        }
      }
      const double overflow = resident - static_cast<double>(host.capacity);
      if (overflow > 0) overflow_byte_seconds += overflow * kTickSeconds;

      // Decide.
      const bool due = now + 1e-9 >= host.next_decision;
      if (due || (traits.early_on_pressure && pressure)) {
        HostView view;
        view.now_seconds = now;
        view.capacity_bytes = host.capacity;
        view.early = !due;
        view.truth = kind == PolicyKind::kOracle ? host.sim.get() : nullptr;
        for (size_t i = 0; i < vms.size(); ++i) {
          const SimVmState& s = vms[i];
          if (!s.running) continue;
          VmView v;
          v.index = i;
          v.vm_id = s.vm_id;
          v.max_bytes = host.vms[i].max_bytes;
          v.configured_max_bytes = s.max_bytes;
          v.min_bytes = host.vms[i].min_bytes;
          v.weight = host.vms[i].weight;
          v.balloon_driver = s.balloon_driver;
          v.actual_bytes = s.actual_bytes;
          v.target_bytes = s.target_bytes;
          v.total_bytes = s.total_bytes;
          v.available_bytes = s.available_bytes;
          v.free_bytes = s.free_bytes;
          v.disk_caches_bytes = s.disk_caches_bytes;
          v.swap_in_bytes_total = s.swap_in_bytes_total;
          v.major_faults_total = s.major_faults_total;
          v.swap_out_bytes_total = s.swap_out_bytes_total;
          if (!s.guest_stats) {
            // No statistics: nobody sees them; the host sees what the
            // guest touches.
            v.guest_stats = false;
            v.total_bytes = v.available_bytes = v.free_bytes = v.disk_caches_bytes = 0;
            v.swap_in_bytes_total = v.major_faults_total = v.swap_out_bytes_total = 0;
            v.host_working_set_bytes = std::min(s.working_set_bytes, s.actual_bytes);
            v.host_working_set_interval_ms = static_cast<uint64_t>(
                std::max<int64_t>(absl::ToInt64Milliseconds(traits.period), 100));
          }
          view.vms.push_back(std::move(v));
          host.vms[i].last_swap_in = s.swap_in_bytes_total;
          host.vms[i].last_major_faults = s.major_faults_total;
        }
        const std::vector<uint64_t> targets = host.controller->Decide(view);
        for (size_t j = 0; j < view.vms.size() && j < targets.size(); ++j) {
          if (targets[j] == 0) continue;
          VmTrack& t = host.vms[view.vms[j].index];
          const uint64_t target = std::min(targets[j], view.vms[j].max_bytes);
          if (target < t.min_bytes) ++fig.floor_violations;
          if (t.episode_start >= 0 && !t.responded && target > view.vms[j].actual_bytes) {
            t.responded = true;
            const double r = now - t.episode_start;
            response_sum += r;
            ++responses;
            if (r > fig.response_seconds_max) fig.response_max_vm = vms[view.vms[j].index].name;
            fig.response_seconds_max = std::max(fig.response_seconds_max, r);
          }
          const uint64_t before = t.want != 0 ? t.want : view.vms[j].target_bytes;
          const int direction = target > before ? 1 : target < before ? -1 : 0;
          if (direction != 0) {
            if (t.last_direction != 0 && direction != t.last_direction) ++t.reversals;
            t.last_direction = direction;
          }
          t.want = target;
        }
        if (due) {
          while (host.next_decision <= now + 1e-9) host.next_decision += period;
        }
      }

      // Apply: shrinks at once; growth at once or into freed memory only.
      double committed = 0;
      for (const SimVmState& s : vms) {
        if (s.running) {
          committed += static_cast<double>(
              s.balloon_driver ? std::max(s.actual_bytes, s.target_bytes) : s.actual_bytes);
        }
      }
      double room = static_cast<double>(host.capacity) - committed;
      for (size_t i = 0; i < vms.size(); ++i) {
        const SimVmState& s = vms[i];
        const uint64_t want = host.vms[i].want;
        if (!s.running || want == 0 || want == s.target_bytes) continue;
        if (want < s.target_bytes) {
          (void)host.sim->SetTarget(s.vm_id, want);
          continue;
        }
        if (!traits.free_then_grow) {
          (void)host.sim->SetTarget(s.vm_id, want);
          continue;
        }
        const uint64_t held = std::max(s.actual_bytes, s.target_bytes);
        if (want <= held) {
          (void)host.sim->SetTarget(s.vm_id, want);
          continue;
        }
        const double extra = static_cast<double>(want - held);
        if (extra <= room) {
          (void)host.sim->SetTarget(s.vm_id, want);
          room -= extra;
        } else if (room >= static_cast<double>(kMiB)) {
          (void)host.sim->SetTarget(s.vm_id, held + static_cast<uint64_t>(room));
          room = 0;
        }
      }
    }
  }

  double stall = 0;
  uint64_t reversals = 0;
  for (HostRun& host : hosts) {
    for (size_t i = 0; i < host.sim->vms().size(); ++i) {
      const SimVmState& s = host.sim->vms()[i];
      stall += s.stall_byte_seconds;
      fig.stall_by_vm.emplace_back(s.name, s.stall_byte_seconds / kGiB);
      fig.oom_kills += s.oom_kills_total;
      fig.oom_deflations += s.oom_deflations_total;
      fig.oom_deflated_gib += static_cast<double>(s.oom_deflated_bytes_total) / kGiB;
      reversals += host.vms[i].reversals;
      if (host.vms[i].episode_start >= 0) {
        // Still short at the end: count the episode so far.
        const double r = static_cast<double>(ticks) * kTickSeconds - host.vms[i].episode_start;
        reaction_sum += r;
        ++reactions;
        fig.reaction_seconds_max = std::max(fig.reaction_seconds_max, r);
        if (!host.vms[i].responded) {
          response_sum += r;
          ++responses;
          if (r > fig.response_seconds_max) fig.response_max_vm = s.name;
          fig.response_seconds_max = std::max(fig.response_seconds_max, r);
        }
      }
    }
  }
  const double total_seconds = static_cast<double>(ticks) * kTickSeconds;
  fig.host_overflow_gib_seconds = overflow_byte_seconds / kGiB;
  fig.stall_gib_seconds = (stall + overflow_byte_seconds) / kGiB;
  fig.reclaimed_gib = total_seconds > 0 ? reclaimed_byte_seconds / total_seconds / kGiB : 0;
  fig.surges = reactions;
  fig.reaction_seconds_mean = reactions > 0 ? reaction_sum / static_cast<double>(reactions) : 0;
  fig.response_seconds_mean = responses > 0 ? response_sum / static_cast<double>(responses) : 0;
  fig.vm_hours = vm_seconds / 3600.0;
  fig.reversals_per_vm_hour = fig.vm_hours > 0 ? static_cast<double>(reversals) / fig.vm_hours : 0;
  if (options.broker_plan_hosts != nullptr && kind == PolicyKind::kBroker) {
    options.broker_plan_hosts->clear();
    for (int h = 0; h < scenario.hosts_size(); ++h) {
      const auto* broker = dynamic_cast<const BrokerController*>(hosts[h].controller.get());
      if (broker == nullptr) continue;
      policy::PlanHost plan =
          policy::PlanHostFromStep(scenario.hosts(h).name(), true, broker->state());
      std::map<std::string, std::string> names;
      for (const SimVmState& s : hosts[h].sim->vms()) names[s.vm_id] = s.name;
      for (policy::PlanVm& vm : plan.vms) vm.name = names[vm.vm_id];
      options.broker_plan_hosts->push_back(std::move(plan));
    }
  }
  return fig;
}

absl::StatusOr<Scenario> ApplyMoves(const Scenario& scenario,
                                    const std::vector<policy::Move>& moves) {
  Scenario out = scenario;
  std::map<std::string, int> host_index;
  for (int h = 0; h < out.hosts_size(); ++h) host_index[out.hosts(h).name()] = h;
  for (size_t i = 0; i < moves.size(); ++i) {
    const policy::Move& m = moves[i];
    auto from = host_index.find(m.from_host_id);
    auto to = host_index.find(m.to_host_id);
    if (from == host_index.end() || to == host_index.end()) {
      return absl::NotFoundError(
          absl::StrCat("moves[", i, "]: unknown host \"",
                       from == host_index.end() ? m.from_host_id : m.to_host_id, "\""));
    }
    auto* src = out.mutable_hosts(from->second)->mutable_vms();
    auto it = std::find_if(src->begin(), src->end(), [&](const v1::ScenarioVm& vm) {
      const std::string id = vm.vm().vm_id().empty() ? DeriveVmId(vm.vm().name()) : vm.vm().vm_id();
      return id == m.vm_id;
    });
    if (it == src->end()) {
      return absl::NotFoundError(
          absl::StrCat("moves[", i, "]: VM ", m.vm_id, " is not on host ", m.from_host_id));
    }
    *out.mutable_hosts(to->second)->add_vms() = *it;
    src->erase(it);
  }
  return out;
}

}  // namespace membroker::sim

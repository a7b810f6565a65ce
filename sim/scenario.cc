#include "sim/scenario.h"

#include <algorithm>
#include <set>

#include "absl/strings/str_cat.h"
#include "common/proto_time.h"
#include "common/status.h"
#include "common/textproto.h"
#include "sim/rng.h"
#include "sim/sim_host.h"
#include "sim/workload.h"

namespace membroker::sim {
namespace {

using membroker::v1::Scenario;
using membroker::v1::ScenarioHost;

constexpr int kMaxIncludeDepth = 4;
constexpr int kMaxHosts = 10000;
constexpr uint32_t kMaxCopies = 1000;

std::string DirName(const std::string& path) {
  const size_t slash = path.rfind('/');
  return slash == std::string::npos ? "." : path.substr(0, slash);
}

absl::Status Expand(const std::string& path, int depth, Scenario* out) {
  if (depth > kMaxIncludeDepth) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": includes nested deeper than ", kMaxIncludeDepth));
  }
  Scenario s;
  RETURN_IF_ERROR(LoadTextProto(path, &s));
  if (depth == 0) {
    *out = s;
    out->clear_hosts();
    out->clear_includes();
  }
  for (const ScenarioHost& h : s.hosts()) *out->add_hosts() = h;
  for (int i = 0; i < s.includes_size(); ++i) {
    const auto& inc = s.includes(i);
    if (inc.file().empty()) {
      return absl::InvalidArgumentError(absl::StrCat(path, ": includes[", i, "].file: empty"));
    }
    if (inc.copies() > kMaxCopies) {
      return absl::InvalidArgumentError(
          absl::StrCat(path, ": includes[", i, "].copies: above ", kMaxCopies));
    }
    Scenario sub;
    RETURN_IF_ERROR(Expand(DirName(path) + "/" + inc.file(), depth + 1, &sub));
    const uint32_t copies = inc.copies() == 0 ? 1 : inc.copies();
    for (uint32_t c = 0; c < copies; ++c) {
      for (const ScenarioHost& h : sub.hosts()) {
        ScenarioHost* copy = out->add_hosts();
        *copy = h;
        const std::string suffix = absl::StrCat("-c", c);
        copy->set_name(h.name() + suffix);
        for (auto& vm : *copy->mutable_vms()) {
          vm.mutable_vm()->set_name(vm.vm().name() + suffix);
          if (!vm.vm().vm_id().empty()) vm.mutable_vm()->set_vm_id(vm.vm().vm_id() + suffix);
        }
      }
    }
    if (out->hosts_size() > kMaxHosts) {
      return absl::InvalidArgumentError(absl::StrCat(path, ": more than ", kMaxHosts, " hosts"));
    }
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<Scenario> LoadScenario(const std::string& path) {
  Scenario s;
  RETURN_IF_ERROR(Expand(path, 0, &s));
  if (absl::Status st = ValidateScenario(s); !st.ok()) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": ", st.message()));
  }
  return s;
}

absl::Status ValidateScenario(const Scenario& s) {
  if (s.name().empty()) return absl::InvalidArgumentError("name: must not be empty");
  const absl::Duration duration = FromProto(s.duration());
  if (s.duration().nanos() < 0 || s.duration().nanos() >= 1000000000 ||
      duration <= absl::ZeroDuration() || duration > absl::Hours(24 * 7)) {
    return absl::InvalidArgumentError("duration: must be positive and at most 7 days");
  }
  const absl::Duration interval = FromProto(s.report_interval());
  if (s.report_interval().nanos() < 0 || s.report_interval().nanos() >= 1000000000 ||
      (interval != absl::ZeroDuration() &&
       (interval < absl::Milliseconds(100) || interval > absl::Minutes(10)))) {
    return absl::InvalidArgumentError("report_interval: must be unset or within [100ms, 10m]");
  }
  if (!s.includes().empty()) {
    return absl::InvalidArgumentError("includes: must be expanded (use LoadScenario)");
  }
  if (s.hosts().empty()) return absl::InvalidArgumentError("hosts: at least one host is required");
  if (s.hosts_size() > kMaxHosts) {
    return absl::InvalidArgumentError(absl::StrCat("hosts: more than ", kMaxHosts));
  }
  std::set<std::string> host_names;
  std::set<std::string> vm_names;
  for (int i = 0; i < s.hosts_size(); ++i) {
    const ScenarioHost& h = s.hosts(i);
    const std::string f = absl::StrCat("hosts[", i, "]");
    if (h.name().empty()) return absl::InvalidArgumentError(f + ".name: must not be empty");
    if (!host_names.insert(h.name()).second) {
      return absl::InvalidArgumentError(absl::StrCat(f, ".name: duplicate \"", h.name(), "\""));
    }
    if (h.capacity_bytes() == 0) {
      return absl::InvalidArgumentError(f + ".capacity_bytes: must be positive");
    }
    v1::SimConfig config = HostSimConfig(s, i);
    if (absl::Status st = ValidateSimConfig(config); !st.ok()) {
      // "vms[j].x" of the SimConfig is "hosts[i].vms[j].vm.x" here.
      std::string message(st.message());
      const size_t close = message.find(']');
      if (message.rfind("vms[", 0) == 0 && close != std::string::npos) {
        message.insert(close + 1, ".vm");
      }
      return absl::InvalidArgumentError(absl::StrCat(f, ".", message));
    }
    for (int j = 0; j < h.vms_size(); ++j) {
      const auto& vm = h.vms(j);
      const std::string vf = absl::StrCat(f, ".vms[", j, "]");
      if (!vm_names.insert(vm.vm().name()).second) {
        return absl::InvalidArgumentError(
            absl::StrCat(vf, ".vm.name: duplicate in the fleet \"", vm.vm().name(), "\""));
      }
      if (vm.policy().has_min_bytes() && vm.policy().min_bytes() > vm.vm().max_bytes()) {
        return absl::InvalidArgumentError(
            absl::StrCat(vf, ".policy.min_bytes: above the VM's max_bytes"));
      }
      if (vm.policy().has_max_bytes() && vm.policy().max_bytes() == 0) {
        return absl::InvalidArgumentError(absl::StrCat(vf, ".policy.max_bytes: must be positive"));
      }
      if (vm.policy().has_weight() && (vm.policy().weight() < 1 || vm.policy().weight() > 10000)) {
        return absl::InvalidArgumentError(absl::StrCat(vf, ".policy.weight: must be 1..10000"));
      }
    }
  }
  return absl::OkStatus();
}

v1::SimConfig HostSimConfig(const Scenario& s, int index) {
  v1::SimConfig config;
  if (index < 0 || index >= s.hosts_size()) return config;
  const ScenarioHost& h = s.hosts(index);
  config.set_host_total_bytes(h.capacity_bytes());
  config.set_seed(Hash64(s.seed(), 0x686f7374, static_cast<uint64_t>(index)));
  config.set_balloon_rate_bytes_per_second(s.balloon_rate_bytes_per_second());
  for (const auto& vm : h.vms()) {
    v1::SimVm* out = config.add_vms();
    *out = vm.vm();
    if (s.deflate_on_oom()) out->set_deflate_on_oom(true);
  }
  return config;
}

absl::StatusOr<Scenario> SwaplessVariant(const Scenario& scenario, bool deflate_on_oom) {
  RETURN_IF_ERROR(ValidateScenario(scenario));
  Scenario out = scenario;
  out.set_name(scenario.name() + (deflate_on_oom ? "-swapless-deflate" : "-swapless"));
  out.set_deflate_on_oom(deflate_on_oom);
  for (ScenarioHost& h : *out.mutable_hosts()) {
    for (auto& vm : *h.mutable_vms()) {
      vm.mutable_vm()->set_swap_bytes(0);
      vm.mutable_vm()->set_deflate_on_oom(deflate_on_oom);
    }
  }
  return out;
}

bool PeakWorkingSetsFit(const Scenario& scenario) {
  for (const ScenarioHost& h : scenario.hosts()) {
    double sum = 0;
    for (const auto& vm : h.vms()) {
      const v1::SimVm& v = vm.vm();
      const double kernel =
          static_cast<double>(v.kernel_bytes() == 0 ? kDefaultKernelBytes : v.kernel_bytes());
      const double peak = static_cast<double>(WorkloadPeakBytes(v.workload())) *
                          (1.0 + v.workload().noise_fraction());
      // A guest without a balloon driver holds its max whatever it uses.
      sum += v.no_balloon_driver() ? static_cast<double>(v.max_bytes())
                                   : std::min(kernel + peak, static_cast<double>(v.max_bytes()));
    }
    if (sum > static_cast<double>(h.capacity_bytes())) return false;
  }
  return true;
}

}  // namespace membroker::sim

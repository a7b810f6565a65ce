#include "broker/report.h"

#include <cctype>
#include <set>

#include "absl/strings/str_cat.h"
#include "common/guest_stats.h"
#include "common/log_limit.h"
#include "common/status.h"
#include "common/units.h"

namespace membroker::broker {
namespace {

constexpr uint64_t kMaxBytes = uint64_t{1} << 50;

absl::Status ValidateId(absl::string_view field, absl::string_view id) {
  if (id.empty() || id.size() > kMaxVmIdChars) {
    return absl::InvalidArgumentError(
        absl::StrCat(field, ": must be 1..", kMaxVmIdChars, " characters"));
  }
  for (char c : id) {
    if (!std::isprint(static_cast<unsigned char>(c)) || c == ' ') {
      return absl::InvalidArgumentError(
          absl::StrCat(field, ": must be printable ASCII without spaces"));
    }
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status ValidateAck(const v1::TargetAck& ack) {
  if (ack.errors_size() > kMaxAckErrors) {
    return absl::InvalidArgumentError(
        absl::StrCat("ack.errors: at most ", kMaxAckErrors, " entries (one per VM)"));
  }
  for (const auto& [vm, error] : ack.errors()) {
    if (vm.size() > kMaxVmIdChars || error.size() > kMaxAckErrorChars) {
      return absl::InvalidArgumentError(absl::StrCat("ack.errors: keys at most ", kMaxVmIdChars,
                                                     " and values at most ", kMaxAckErrorChars,
                                                     " characters"));
    }
  }
  return absl::OkStatus();
}

bool BalloonHealthy(v1::BalloonHealth h) {
  return h != v1::BALLOON_HEALTH_STUCK && h != v1::BALLOON_HEALTH_NO_DRIVER &&
         h != v1::BALLOON_HEALTH_EXCLUDED;
}

uint64_t GuestFreeOnHostBytes(const v1::VmSample& sample) {
  if (!sample.free_page_reporting() || !sample.has_host_rss_bytes()) return 0;
  return sample.actual_bytes() > sample.host_rss_bytes()
             ? sample.actual_bytes() - sample.host_rss_bytes()
             : 0;
}

absl::Status ValidateHello(const v1::Hello& hello) {
  absl::Status id = ValidateHostId(hello.host_id());
  if (!id.ok()) return absl::InvalidArgumentError(absl::StrCat("hello.", id.message()));
  if (hello.capacity_bytes() == 0 || hello.capacity_bytes() > kMaxBytes) {
    return absl::InvalidArgumentError(
        absl::StrCat("hello.capacity_bytes: must be in 1..", kMaxBytes));
  }
  if (hello.host_total_bytes() != 0 && hello.capacity_bytes() > hello.host_total_bytes()) {
    return absl::InvalidArgumentError(absl::StrCat("hello.capacity_bytes (", hello.capacity_bytes(),
                                                   ") is above hello.host_total_bytes (",
                                                   hello.host_total_bytes(), ")"));
  }
  if (hello.backend().size() > 64 || hello.agent_version().size() > 128) {
    return absl::InvalidArgumentError("hello.backend or hello.agent_version: too long");
  }
  return absl::OkStatus();
}

absl::Status ValidateReport(const v1::HostReport& report) {
  if (report.sequence() == 0) {
    return absl::InvalidArgumentError("report.sequence: must be > 0");
  }
  if (report.vms_size() > kMaxVmsPerHost) {
    return absl::InvalidArgumentError(
        absl::StrCat("report.vms: at most ", kMaxVmsPerHost, " VMs per host"));
  }
  if (report.capacity_bytes() > kMaxBytes) {
    return absl::InvalidArgumentError("report.capacity_bytes: out of range");
  }
  // Ids point into the report (no copies); the field name is only built
  // for an error.
  std::set<absl::string_view> seen;
  for (int i = 0; i < report.vms_size(); ++i) {
    const v1::VmSample& vm = report.vms(i);
    const auto field = [i] { return absl::StrCat("report.vms[", i, "]"); };
    absl::Status id = ValidateId("vm_id", vm.vm_id());
    if (!id.ok()) {
      return absl::InvalidArgumentError(absl::StrCat("report.vms[", i, "].", id.message()));
    }
    if (!seen.insert(vm.vm_id()).second) {
      return absl::InvalidArgumentError(
          absl::StrCat(field(), ".vm_id: duplicate id \"", QuoteInput(vm.vm_id()), "\""));
    }
    if (vm.name().size() > kMaxVmNameChars) {
      return absl::InvalidArgumentError(
          absl::StrCat(field(), ".name: at most ", kMaxVmNameChars, " characters"));
    }
    if (vm.stats().untrusted_reason().size() > kMaxUntrustedReasonChars) {
      return absl::InvalidArgumentError(absl::StrCat(field(), ".stats.untrusted_reason: at most ",
                                                     kMaxUntrustedReasonChars, " characters"));
    }
    if (vm.sizing_mechanism().size() > kMaxSizingMechanismChars) {
      return absl::InvalidArgumentError(absl::StrCat(field(), ".sizing_mechanism: at most ",
                                                     kMaxSizingMechanismChars, " characters"));
    }
    if (vm.health_reason().size() > kMaxHealthReasonChars) {
      return absl::InvalidArgumentError(absl::StrCat(field(), ".health_reason: at most ",
                                                     kMaxHealthReasonChars, " characters"));
    }
    if (vm.pressure_reasons_size() > kMaxPressureReasons) {
      return absl::InvalidArgumentError(
          absl::StrCat(field(), ".pressure_reasons: at most ", kMaxPressureReasons));
    }
    if (vm.max_bytes() == 0 || vm.max_bytes() > kMaxBytes) {
      return absl::InvalidArgumentError(
          absl::StrCat(field(), ".max_bytes: must be in 1..", kMaxBytes));
    }
    if (vm.actual_bytes() > vm.max_bytes()) {
      return absl::InvalidArgumentError(absl::StrCat(field(), ".actual_bytes (", vm.actual_bytes(),
                                                     ") is above max_bytes (", vm.max_bytes(),
                                                     ")"));
    }
    if (vm.has_host_working_set_bytes()) {
      // Touched guest memory cannot exceed the guest's memory (slack as
      // for a guest's total); the interval is the agent's (1 s .. 1 h).
      if (vm.host_working_set_bytes() > vm.max_bytes() + kGuestTotalSlackBytes) {
        return absl::InvalidArgumentError(
            absl::StrCat(field(), ".host_working_set_bytes (", vm.host_working_set_bytes(),
                         ") is above max_bytes (", vm.max_bytes(), ")"));
      }
      if (vm.host_working_set_interval_ms() < kMinWorkingSetIntervalMs ||
          vm.host_working_set_interval_ms() > kMaxWorkingSetIntervalMs) {
        return absl::InvalidArgumentError(absl::StrCat(
            field(), ".host_working_set_interval_ms: must be in ", kMinWorkingSetIntervalMs, "..",
            kMaxWorkingSetIntervalMs, " when host_working_set_bytes is set"));
      }
    } else if (vm.host_working_set_interval_ms() != 0) {
      return absl::InvalidArgumentError(
          absl::StrCat(field(), ".host_working_set_interval_ms: set without host_working_set_bytes"));
    }
    if (vm.host_working_set_method() != v1::HOST_WORKING_SET_METHOD_UNSPECIFIED) {
      if (!v1::HostWorkingSetMethod_IsValid(vm.host_working_set_method())) {
        return absl::InvalidArgumentError(absl::StrCat(
            field(), ".host_working_set_method: unknown value ", vm.host_working_set_method()));
      }
      if (!vm.has_host_working_set_bytes()) {
        return absl::InvalidArgumentError(absl::StrCat(
            field(), ".host_working_set_method: set without host_working_set_bytes"));
      }
    }
    if (vm.has_host_psi_some_avg10_percent() &&
        !(vm.host_psi_some_avg10_percent() >= 0 && vm.host_psi_some_avg10_percent() <= 100)) {
      return absl::InvalidArgumentError(
          absl::StrCat(field(), ".host_psi_some_avg10_percent: must be in 0..100"));
    }
    if (!v1::BalloonHealth_IsValid(vm.health())) {
      return absl::InvalidArgumentError(absl::StrCat(field(), ".health: unknown value"));
    }
  }
  const v1::HostSample& h = report.host();
  if (h.mem_available_bytes() > h.mem_total_bytes() && h.mem_total_bytes() != 0) {
    return absl::InvalidArgumentError("report.host.mem_available_bytes: above mem_total_bytes");
  }
  for (double v : {h.psi_some_avg10_percent(), h.psi_full_avg10_percent()}) {
    if (!(v >= 0 && v <= 100)) {
      return absl::InvalidArgumentError("report.host.psi_*_avg10_percent: must be in 0..100");
    }
  }
  return absl::OkStatus();
}

policy::HostObservation ToHostObservation(const v1::HostReport& report, double now_seconds,
                                          absl::Duration interval,
                                          std::vector<std::string>* problems) {
  policy::HostObservation obs;
  obs.now_seconds = now_seconds;
  obs.capacity_bytes = report.capacity_bytes();
  obs.host_available_bytes = report.host().mem_available_bytes();
  obs.host_psi_some_avg10_percent = report.host().psi_some_avg10_percent();
  obs.vms.reserve(report.vms_size());
  if (problems) problems->clear();
  for (const v1::VmSample& s : report.vms()) {
    policy::VmObservation o;
    o.vm_id = s.vm_id();
    o.max_bytes = s.max_bytes();
    o.actual_bytes = s.actual_bytes();
    o.balloon_healthy = BalloonHealthy(s.health());
    const std::string problem = GuestStatsProblem(s, interval);
    const v1::GuestStats& g = s.stats();
    o.guest.stats_valid = problem.empty();
    o.guest.total_bytes = g.total_bytes();
    o.guest.available_bytes = g.available_bytes();
    o.guest.swap_in_bytes_total = g.swap_in_bytes_total();
    o.guest.major_faults_total = g.major_faults_total();
    o.guest.swap_out_bytes_total = g.swap_out_bytes_total();
    o.guest.last_target_bytes = s.last_target_bytes();
    o.guest.agent_pressure = s.pressure_reasons_size() > 0;
    o.guest.has_oom_kills = g.has_oom_kills_total();
    o.guest.oom_kills_total = g.oom_kills_total();
    o.guest.disk_caches_bytes = g.disk_caches_bytes();
    o.guest.balloon_driver_ready = s.balloon_driver_ready();
    // Agents that report their sizing say what the balloon holds; for
    // others (and the simulator) it is what the VM lacks of its size.
    o.guest.balloon_inflated_bytes =
        !s.sizing_mechanism().empty()
            ? s.balloon_inflated_bytes()
            : (s.max_bytes() > s.actual_bytes() ? s.max_bytes() - s.actual_bytes() : 0);
    o.guest.has_host_working_set = s.has_host_working_set_bytes();
    o.guest.host_working_set_bytes = s.host_working_set_bytes();
    o.guest.host_working_set_interval_seconds =
        static_cast<double>(s.host_working_set_interval_ms()) / 1000.0;
    switch (s.host_working_set_method()) {
      case v1::HOST_WORKING_SET_METHOD_CLEAR_REFS:
        o.guest.host_working_set_method = "clear_refs";
        break;
      case v1::HOST_WORKING_SET_METHOD_REFAULT:
        o.guest.host_working_set_method = "refault";
        break;
      default:
        break;  // not said
    }
    o.guest.has_host_psi = s.has_host_psi_some_avg10_percent();
    o.guest.host_psi_some_avg10_percent = s.host_psi_some_avg10_percent();
    obs.vms.push_back(std::move(o));
    if (problems) problems->push_back(problem);
  }
  return obs;
}

}  // namespace membroker::broker

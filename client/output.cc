#include "client/output.h"

#include <algorithm>
#include <map>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "common/proto_time.h"
#include "common/units.h"

namespace membroker::client {
namespace {

// ---- Helpers for tables and descriptions. ----

std::string YesNo(bool b) { return b ? "true" : "false"; }

std::string Bytes(uint64_t b) { return FormatBytes(b); }

// Bytes with the exact figure, for explanations.
std::string BytesExact(uint64_t b) {
  if (b < 1024) return FormatBytes(b);
  return absl::StrCat(FormatBytes(b), " (", b, ")");
}

std::string Percent(double p) { return absl::StrFormat("%.1f%%", p); }

// Key/value lines with aligned values.
class Description {
 public:
  void Add(std::string key, std::string value) {
    lines_.emplace_back(std::move(key), std::move(value));
  }
  void Section(std::string title) { lines_.emplace_back(std::move(title), std::string("\x01")); }
  std::string Render() const {
    size_t width = 0;
    for (const auto& [k, v] : lines_) {
      if (v != "\x01") width = std::max(width, k.size());
    }
    std::string out;
    for (const auto& [k, v] : lines_) {
      if (v == "\x01") {
        absl::StrAppend(&out, k, ":\n");
        continue;
      }
      absl::StrAppend(&out, k, ":", std::string(width - k.size() + 2, ' '), v, "\n");
    }
    return out;
  }

 private:
  std::vector<std::pair<std::string, std::string>> lines_;
};

std::string OptBytes(bool has, uint64_t v) { return has ? Bytes(v) : "-"; }

}  // namespace

Table::Table(std::vector<std::string> header) : header_(std::move(header)) {}

void Table::AddRow(std::vector<std::string> row) {
  row.resize(header_.size());
  rows_.push_back(std::move(row));
}

std::string Table::Render() const {
  std::vector<size_t> width(header_.size(), 0);
  for (size_t i = 0; i < header_.size(); ++i) width[i] = header_[i].size();
  for (const auto& row : rows_) {
    for (size_t i = 0; i < row.size(); ++i) width[i] = std::max(width[i], row[i].size());
  }
  std::string out;
  auto line = [&](const std::vector<std::string>& cells) {
    std::string l;
    for (size_t i = 0; i < cells.size(); ++i) {
      l += cells[i];
      if (i + 1 < cells.size()) l.append(width[i] - cells[i].size() + 2, ' ');
    }
    absl::StrAppend(&out, l, "\n");
  };
  line(header_);
  for (const auto& row : rows_) line(row);
  return out;
}

absl::StatusOr<std::string> RenderMessage(const google::protobuf::Message& message,
                                          OutputFormat format) {
  return format == OutputFormat::kYaml ? MessageToYaml(message) : MessageToJson(message);
}

std::string HealthName(v1::BalloonHealth health) {
  switch (health) {
    case v1::BALLOON_HEALTH_OK:
      return "ok";
    case v1::BALLOON_HEALTH_STUCK:
      return "stuck";
    case v1::BALLOON_HEALTH_NO_DRIVER:
      return "no-driver";
    case v1::BALLOON_HEALTH_STATS_UNAVAILABLE:
      return "stats-unavailable";
    case v1::BALLOON_HEALTH_EXCLUDED:
      return "excluded";
    default:
      return "unknown";
  }
}

std::string ReasonName(v1::ReasonCode reason) {
  if (reason == v1::REASON_UNSPECIFIED) return "-";
  std::string name = v1::ReasonCode_Name(reason);
  if (name.empty()) return absl::StrCat("reason-", static_cast<int>(reason));
  if (name.rfind("REASON_", 0) == 0) name = name.substr(7);
  name = absl::AsciiStrToLower(name);
  std::replace(name.begin(), name.end(), '_', '-');
  return name;
}

std::string FormatUtc(absl::Time t) {
  return absl::FormatTime("%Y-%m-%dT%H:%M:%SZ", t, absl::UTCTimeZone());
}

std::string RenderHostsTable(const v1::ListHostsResponse& reply, bool wide) {
  std::vector<std::string> header = {"HOST",   "CONNECTED", "VMS",    "CAPACITY", "TARGET",
                                     "ACTUAL", "FLOOR",     "DEMAND", "PRESSURE", "OVERCOMMITTED"};
  if (wide) {
    for (const char* h :
         {"BACKEND", "VERSION", "RESERVED", "MEM_AVAILABLE", "GENERATION", "ACKED"}) {
      header.push_back(h);
    }
  }
  Table table(header);
  for (const v1::Host& h : reply.hosts()) {
    std::vector<std::string> row = {h.host_id(),
                                    YesNo(h.connected()),
                                    absl::StrCat(h.vm_count()),
                                    Bytes(h.capacity_bytes()),
                                    Bytes(h.target_bytes()),
                                    Bytes(h.actual_bytes()),
                                    Bytes(h.floor_bytes()),
                                    Bytes(h.demand_bytes()),
                                    Percent(h.sample().psi_some_avg10_percent()),
                                    YesNo(h.overcommitted())};
    if (wide) {
      row.push_back(h.backend().empty() ? "-" : h.backend());
      row.push_back(h.agent_version().empty() ? "-" : h.agent_version());
      row.push_back(Bytes(h.reserved_bytes()));
      row.push_back(Bytes(h.sample().mem_available_bytes()));
      row.push_back(absl::StrCat(h.generation()));
      row.push_back(absl::StrCat(h.acked_generation()));
    }
    table.AddRow(std::move(row));
  }
  return table.Render();
}

std::string RenderVmsTable(const v1::ListVmsResponse& reply, bool wide) {
  std::vector<std::string> header = {"HOST",   "NAME",  "MAX",    "ACTUAL", "TARGET",
                                     "DEMAND", "FLOOR", "HEALTH", "REASON"};
  if (wide) {
    for (const char* h : {"VM_ID", "WEIGHT", "GUEST_USED", "SWAP_IN/s", "SIZING", "VMEM_PLUGGED",
                          "BALLOONED", "FREE_PAGE_REPORTING", "FREE_ON_HOST", "HEALTH_REASON"}) {
      header.push_back(h);
    }
  }
  Table table(header);
  for (const v1::Vm& vm : reply.vms()) {
    std::vector<std::string> row = {vm.host_id(),
                                    vm.name().empty() ? "-" : vm.name(),
                                    Bytes(vm.max_bytes()),
                                    Bytes(vm.actual_bytes()),
                                    Bytes(vm.target_bytes()),
                                    Bytes(vm.demand_bytes()),
                                    Bytes(vm.floor_bytes()),
                                    HealthName(vm.health()),
                                    ReasonName(vm.reason())};
    if (wide) {
      row.push_back(vm.vm_id());
      row.push_back(vm.policy().has_weight() ? absl::StrCat(vm.policy().weight()) : "default");
      row.push_back(Bytes(vm.guest_used_bytes()));
      row.push_back(absl::StrCat(
          Bytes(static_cast<uint64_t>(std::max(0.0, vm.swap_in_bytes_per_second()))), "/s"));
      const std::string& sizing = vm.sizing_mechanism();
      row.push_back(sizing.empty() ? "balloon" : sizing);
      row.push_back(absl::StrContains(sizing, "virtio-mem") ? Bytes(vm.virtio_mem_plugged_bytes())
                                                            : "-");
      row.push_back(Bytes(vm.balloon_inflated_bytes()));
      row.push_back(vm.free_page_reporting() ? "on" : "off");
      row.push_back(vm.free_page_reporting() ? Bytes(vm.guest_free_on_host_bytes()) : "-");
      row.push_back(vm.health_reason().empty() ? "-" : vm.health_reason());
    }
    table.AddRow(std::move(row));
  }
  return table.Render();
}

std::string RenderPlanTable(const v1::Plan& plan, bool wide) {
  std::string out;
  if (plan.moves().empty()) {
    out = "No moves planned.\n";
  } else {
    std::vector<std::string> header = {"VM", "FROM", "TO", "SIZE", "REASON"};
    if (wide) header.push_back("VM_ID");
    Table table(header);
    for (const v1::PlannedMove& m : plan.moves()) {
      std::vector<std::string> row = {m.vm_name().empty() ? m.vm_id() : m.vm_name(),
                                      m.from_host_id(), m.to_host_id(), Bytes(m.bytes()),
                                      m.reason().empty() ? "-" : m.reason()};
      if (wide) row.push_back(m.vm_id());
      table.AddRow(std::move(row));
    }
    out = table.Render();
  }
  if (plan.hosts_short_before() > 0 || plan.hosts_short_after() > 0) {
    absl::StrAppend(&out, "\nHosts short: ", plan.hosts_short_before(), " now, ",
                    plan.hosts_short_after(), " after ", plan.moves_size(), " move(s) of ",
                    Bytes(plan.moved_bytes()), ".\n");
    for (const v1::ShortHost& h : plan.unresolved()) {
      absl::StrAppend(&out, "  ", h.host_id(), " stays short by ", Bytes(h.short_bytes()),
                      " (nothing movable fits elsewhere)\n");
    }
  }
  return out;
}

std::string RenderPlaceTable(const v1::PlaceResponse& reply) {
  if (reply.options().empty()) return "No host can take such a VM, even after reclaim.\n";
  Table table({"HOST", "FREE", "RECLAIM", "HEADROOM"});
  for (const v1::PlacementOption& o : reply.options()) {
    const int64_t room = o.headroom_bytes();
    const std::string headroom =
        room >= 0 ? Bytes(static_cast<uint64_t>(room))
                  : absl::StrCat("-", Bytes(static_cast<uint64_t>(-room)), " (below demand)");
    table.AddRow({o.host_id(), Bytes(o.free_bytes()), Bytes(o.reclaim_bytes()), headroom});
  }
  std::string out = table.Render();
  if (reply.requested() > 1) {
    std::map<std::string, int> per_host;
    std::vector<std::string> order;
    for (const std::string& h : reply.assignments()) {
      if (per_host[h]++ == 0) order.push_back(h);
    }
    absl::StrAppend(&out, "\n", reply.assignments_size(), " of ", reply.requested(),
                    " VMs placed:");
    for (const std::string& h : order) absl::StrAppend(&out, " ", h, " x", per_host[h]);
    absl::StrAppend(&out, "\n");
  }
  return out;
}

std::string RenderReservationsTable(const v1::ListReservationsResponse& reply) {
  if (reply.reservations().empty()) return "No reservations.\n";
  Table table({"ID", "HOST", "SIZE", "READY", "FOR_VM", "CREATED", "EXPIRES"});
  for (const v1::Reservation& r : reply.reservations()) {
    table.AddRow({r.id(), r.host_id(), Bytes(r.bytes()), YesNo(r.ready()),
                  r.for_vm_id().empty() ? "-" : r.for_vm_id(),
                  r.has_created_at() ? FormatUtc(FromProto(r.created_at())) : "-",
                  r.has_expires_at() ? FormatUtc(FromProto(r.expires_at())) : "-"});
  }
  return table.Render();
}

std::string RenderAuditTable(const v1::ListAuditEntriesResponse& history) {
  if (history.entries().empty()) return "No policy changes recorded.\n";
  Table table({"ID", "TIME", "ACTOR", "ACTION", "TARGET", "CHANGES"});
  for (const v1::AuditEntry& e : history.entries()) {
    table.AddRow({absl::StrCat(e.id()), FormatUtc(FromProto(e.time())), e.actor(), e.action(),
                  e.target(), absl::StrJoin(e.changes(), "; ")});
  }
  return table.Render();
}

std::string DescribeHost(const v1::Host& h) {
  Description d;
  d.Add("Host", h.host_id());
  d.Add("Connected", YesNo(h.connected()));
  d.Add("Backend", h.backend().empty() ? "-" : h.backend());
  d.Add("Agent version", h.agent_version().empty() ? "-" : h.agent_version());
  d.Add("VMs", absl::StrCat(h.vm_count()));
  d.Add("Capacity", Bytes(h.capacity_bytes()));
  d.Add("Reserved", Bytes(h.reserved_bytes()));
  d.Add("Target (sum)", Bytes(h.target_bytes()));
  d.Add("Actual (sum)", Bytes(h.actual_bytes()));
  d.Add("Floor (sum)", Bytes(h.floor_bytes()));
  d.Add("Demand (sum)", Bytes(h.demand_bytes()));
  d.Add("Overcommitted", YesNo(h.overcommitted()));
  const v1::HostSample& s = h.sample();
  d.Add("Memory total", Bytes(s.mem_total_bytes()));
  d.Add("Memory available", Bytes(s.mem_available_bytes()));
  d.Add("Swap free/total",
        absl::StrCat(Bytes(s.swap_free_bytes()), " / ", Bytes(s.swap_total_bytes())));
  d.Add("Pressure some/full", absl::StrCat(Percent(s.psi_some_avg10_percent()), " / ",
                                           Percent(s.psi_full_avg10_percent()), " (avg10)"));
  d.Add("Report sequence", absl::StrCat(h.report_sequence()));
  d.Add("Last report",
        h.has_last_report_time() ? FormatUtc(FromProto(h.last_report_time())) : "never");
  d.Add("Generation", absl::StrCat(h.generation(), " (acked ", h.acked_generation(), ")"));
  return d.Render();
}

std::string DescribeVm(const v1::Vm& vm) {
  Description d;
  d.Add("VM", vm.name().empty() ? "-" : vm.name());
  d.Add("ID", vm.vm_id());
  d.Add("Host", vm.host_id());
  d.Add("Max", Bytes(vm.max_bytes()));
  d.Add("Actual", Bytes(vm.actual_bytes()));
  d.Add("Target", absl::StrCat(Bytes(vm.target_bytes()), " (", ReasonName(vm.reason()), ")"));
  d.Add("Demand", Bytes(vm.demand_bytes()));
  d.Add("Floor", Bytes(vm.floor_bytes()));
  d.Add("Protect", Bytes(vm.protect_bytes()));
  d.Add("Guest used", Bytes(vm.guest_used_bytes()));
  d.Add("Swap-in rate",
        absl::StrCat(Bytes(static_cast<uint64_t>(std::max(0.0, vm.swap_in_bytes_per_second()))),
                     "/s"));
  d.Add("Major faults", absl::StrFormat("%.1f/s", vm.major_faults_per_second()));
  d.Add("Balloon health", HealthName(vm.health()));
  if (!vm.health_reason().empty()) d.Add("Health reason", vm.health_reason());
  d.Add("Sizing", absl::StrCat(vm.sizing_mechanism().empty() ? "balloon" : vm.sizing_mechanism(),
                               " (virtio-mem plugged ", Bytes(vm.virtio_mem_plugged_bytes()),
                               ", balloon holds ", Bytes(vm.balloon_inflated_bytes()), ")"));
  d.Add("Free page reporting",
        vm.free_page_reporting() ? absl::StrCat("on (", Bytes(vm.guest_free_on_host_bytes()),
                                                " free in the guest and already back on the host)")
                                 : "off");
  const v1::VmPolicy& p = vm.policy();
  d.Add("Policy", absl::StrCat("min=", OptBytes(p.has_min_bytes(), p.min_bytes()),
                               " max=", OptBytes(p.has_max_bytes(), p.max_bytes()),
                               " weight=", p.has_weight() ? absl::StrCat(p.weight()) : "-",
                               " pinned=", p.has_pinned() ? YesNo(p.pinned()) : "-",
                               " (- = cluster default)"));
  const v1::GuestStats& s = vm.stats();
  d.Section("Guest stats");
  d.Add("  Total", OptBytes(s.has_total_bytes(), s.total_bytes()));
  d.Add("  Available", OptBytes(s.has_available_bytes(), s.available_bytes()));
  d.Add("  Free", OptBytes(s.has_free_bytes(), s.free_bytes()));
  d.Add("  Disk caches", OptBytes(s.has_disk_caches_bytes(), s.disk_caches_bytes()));
  d.Add("  Swap in/out (total)",
        absl::StrCat(OptBytes(s.has_swap_in_bytes_total(), s.swap_in_bytes_total()), " / ",
                     OptBytes(s.has_swap_out_bytes_total(), s.swap_out_bytes_total())));
  d.Add("  Faults major/minor",
        absl::StrCat(s.has_major_faults_total() ? absl::StrCat(s.major_faults_total()) : "-", " / ",
                     s.has_minor_faults_total() ? absl::StrCat(s.minor_faults_total()) : "-"));
  d.Add("  OOM kills", s.has_oom_kills_total() ? absl::StrCat(s.oom_kills_total()) : "-");
  d.Add("  Age", s.has_age_seconds() ? absl::StrFormat("%.1fs", s.age_seconds()) : "-");
  d.Add("  Trusted", s.untrusted() ? absl::StrCat("false (", s.untrusted_reason(), ")") : "true");
  return d.Render();
}

std::string DescribeExplanation(const v1::Explanation& e) {
  const v1::Vm& vm = e.vm();
  std::string out = absl::StrCat("VM ", vm.name().empty() ? vm.vm_id() : vm.name(), " (",
                                 vm.vm_id(), ") on host ", vm.host_id(), "\n");
  Description d;
  d.Add("Target", absl::StrCat(BytesExact(e.target_bytes()), "  reason: ", ReasonName(e.reason())));
  d.Add("Share (before smoothing)", BytesExact(e.share_bytes()));
  d.Add("Desired", BytesExact(e.desired_bytes()));
  d.Add("Demand", BytesExact(e.demand_bytes()));
  d.Add("Floor", BytesExact(e.floor_bytes()));
  d.Add("Protect", BytesExact(e.protect_bytes()));
  d.Add("Min (effective)", BytesExact(e.min_bytes()));
  d.Add("Max (effective)", BytesExact(e.max_bytes()));
  d.Add("Weight", absl::StrFormat("%u (%.2f after idle tax)", e.weight(), e.effective_weight()));
  d.Add("Host capacity", BytesExact(e.capacity_bytes()));
  d.Add("Host floors (sum)", BytesExact(e.host_floor_bytes()));
  d.Add("Host desired (sum)", BytesExact(e.host_desired_bytes()));
  absl::StrAppend(&out, d.Render());
  absl::StrAppend(&out, "Steps:\n");
  if (e.steps().empty()) absl::StrAppend(&out, "  (none)\n");
  // Steps print as the broker wrote them (they may carry their own numbers).
  for (const std::string& step : e.steps()) absl::StrAppend(&out, "  ", step, "\n");
  return out;
}

std::string DescribeClusterPolicy(const v1::ClusterPolicy& p) {
  Description d;
  d.Add("buffer-percent", p.has_buffer_percent() ? absl::StrCat(p.buffer_percent()) : "-");
  d.Add("host-free-margin", OptBytes(p.has_host_free_margin_bytes(), p.host_free_margin_bytes()));
  d.Add("reclaim-step", OptBytes(p.has_reclaim_step_bytes(), p.reclaim_step_bytes()));
  d.Add("hysteresis", OptBytes(p.has_hysteresis_bytes(), p.hysteresis_bytes()));
  d.Add("idle-tax-percent", p.has_idle_tax_percent() ? absl::StrCat(p.idle_tax_percent()) : "-");
  d.Add("default-min", OptBytes(p.has_default_min_bytes(), p.default_min_bytes()));
  d.Add("default-weight", p.has_default_weight() ? absl::StrCat(p.default_weight()) : "-");
  d.Add("protect-margin-percent",
        p.has_protect_margin_percent() ? absl::StrCat(p.protect_margin_percent()) : "-");
  d.Add("report-interval",
        p.has_report_interval() ? absl::FormatDuration(FromProto(p.report_interval())) : "-");
  d.Add("surplus-percent", p.has_surplus_percent() ? absl::StrCat(p.surplus_percent()) : "-");
  d.Add("hysteresis-percent",
        p.has_hysteresis_percent() ? absl::StrCat(p.hysteresis_percent()) : "-");
  d.Add("protect-margin-max",
        OptBytes(p.has_protect_margin_max_bytes(), p.protect_margin_max_bytes()));
  return d.Render();
}

std::string DescribeVmPolicy(absl::string_view vm, const v1::VmPolicy& p) {
  return absl::StrCat("vm ", vm, " policy: min=", OptBytes(p.has_min_bytes(), p.min_bytes()),
                      " max=", OptBytes(p.has_max_bytes(), p.max_bytes()),
                      " weight=", p.has_weight() ? absl::StrCat(p.weight()) : "-",
                      " pinned=", p.has_pinned() ? YesNo(p.pinned()) : "-", "\n");
}

std::string DescribeReservation(const v1::Reservation& r) {
  return absl::StrCat(
      "reservation ", r.id(), ": ", Bytes(r.bytes()), " on host ", r.host_id(),
      r.has_created_at() ? absl::StrCat(" since ", FormatUtc(FromProto(r.created_at()))) : "",
      r.has_expires_at() ? absl::StrCat(", expires ", FormatUtc(FromProto(r.expires_at()))) : "",
      r.for_vm_id().empty() ? "" : absl::StrCat(", for VM ", r.for_vm_id()),
      r.ready() ? ", room free" : ", room not free yet", "\n");
}

}  // namespace membroker::client

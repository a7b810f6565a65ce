#include "client/top_view.h"

#include <algorithm>
#include <cmath>
#include <tuple>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "client/output.h"
#include "common/units.h"

namespace membroker::client {
namespace {

constexpr char kRed[] = "\x1b[31m";
constexpr char kBoldRed[] = "\x1b[1;31m";
constexpr char kDim[] = "\x1b[2m";
constexpr char kReset[] = "\x1b[0m";
constexpr double kPageBytes = 4096;

std::string Rate(double per_second, bool bytes) {
  const double v = std::max(0.0, per_second);
  if (bytes) return absl::StrCat(FormatBytes(static_cast<uint64_t>(v)), "/s");
  return absl::StrFormat("%.0f/s", v);
}

// `line` (ending in '\n') wrapped in `color` when colours are on.
std::string Paint(const std::string& line, const char* color, bool on) {
  if (!on || color == nullptr) return line;
  return absl::StrCat(color, line.substr(0, line.size() - 1), kReset, "\n");
}

// Splits a rendered table into its lines (each keeps its '\n').
std::vector<std::string> Lines(const std::string& text) {
  std::vector<std::string> out;
  size_t start = 0;
  while (start < text.size()) {
    size_t end = text.find('\n', start);
    if (end == std::string::npos) end = text.size() - 1;
    out.push_back(text.substr(start, end - start + 1));
    start = end + 1;
  }
  return out;
}

}  // namespace

bool HostShortOfDemand(const v1::Host& host) { return host.demand_bytes() > host.capacity_bytes(); }

bool BalloonStuck(const v1::Vm& vm) {
  return vm.health() == v1::BALLOON_HEALTH_STUCK || vm.health() == v1::BALLOON_HEALTH_NO_DRIVER;
}

double PressureScore(const v1::Vm& vm) {
  return std::max(0.0, vm.swap_in_bytes_per_second()) +
         kPageBytes * std::max(0.0, vm.major_faults_per_second());
}

std::vector<v1::Vm> SortByPressure(const v1::ListVmsResponse& vms) {
  std::vector<v1::Vm> out(vms.vms().begin(), vms.vms().end());
  auto shortfall = [](const v1::Vm& vm) {
    return vm.demand_bytes() > vm.target_bytes() ? vm.demand_bytes() - vm.target_bytes() : 0;
  };
  std::stable_sort(out.begin(), out.end(), [&](const v1::Vm& a, const v1::Vm& b) {
    return std::make_tuple(-PressureScore(a), !BalloonStuck(a), -static_cast<double>(shortfall(a)),
                           a.host_id(), a.name()) <
           std::make_tuple(-PressureScore(b), !BalloonStuck(b), -static_cast<double>(shortfall(b)),
                           b.host_id(), b.name());
  });
  return out;
}

std::string HostBar(const v1::Host& host, int width) {
  width = std::max(width, 10);
  const double scale = static_cast<double>(
      std::max({host.capacity_bytes(), host.target_bytes(), host.demand_bytes(), uint64_t{1}}));
  auto cells = [&](uint64_t bytes) {
    return static_cast<int>(std::lround(static_cast<double>(bytes) * width / scale));
  };
  const int target = cells(host.target_bytes());
  const int demand = cells(host.demand_bytes());
  std::string bar(width + 1, ' ');
  for (int i = 0; i <= width; ++i) {
    if (i < target) {
      bar[i] = '#';
    } else if (i < demand) {
      bar[i] = '+';
    }
  }
  bar[std::min(cells(host.capacity_bytes()), width)] = '|';
  return absl::StrCat("[", bar, "]");
}

std::string RenderTopFrame(const v1::ListHostsResponse& hosts, const v1::ListVmsResponse& vms,
                           const TopViewOptions& options) {
  std::vector<v1::Vm> sorted = SortByPressure(vms);
  std::string out;
  std::vector<std::string> short_hosts, stuck;
  for (const v1::Host& h : hosts.hosts()) {
    if (HostShortOfDemand(h)) short_hosts.push_back(h.host_id());
  }
  for (const v1::Vm& vm : sorted) {
    if (BalloonStuck(vm)) stuck.push_back(absl::StrCat(vm.host_id(), "/", vm.name()));
  }

  if (!options.terminal) {
    // Plain tables, VMs most pressured first, highlights in words.
    v1::ListVmsResponse by_pressure;
    for (const v1::Vm& vm : sorted) *by_pressure.add_vms() = vm;
    absl::StrAppend(&out, RenderHostsTable(hosts, options.wide), "\n",
                    RenderVmsTable(by_pressure, options.wide));
    absl::StrAppend(
        &out, "short of demand: ", short_hosts.empty() ? "none" : absl::StrJoin(short_hosts, ", "),
        "; stuck balloons: ", stuck.empty() ? "none" : absl::StrJoin(stuck, ", "), "\n");
    return out;
  }

  size_t name_width = 4;
  for (const v1::Host& h : hosts.hosts()) name_width = std::max(name_width, h.host_id().size());
  absl::StrAppend(&out, "HOSTS  # targets  + demand above targets  | capacity\n");
  for (const v1::Host& h : hosts.hosts()) {
    std::string flags;
    if (!h.connected()) absl::StrAppend(&flags, "  DISCONNECTED");
    if (h.overcommitted()) absl::StrAppend(&flags, "  OVERCOMMITTED");
    if (HostShortOfDemand(h)) absl::StrAppend(&flags, "  SHORT");
    const std::string line = absl::StrCat(
        absl::StrFormat("%-*s ", static_cast<int>(name_width), h.host_id()),
        HostBar(h, options.bar_width), "  cap ", FormatBytes(h.capacity_bytes()), "  tgt ",
        FormatBytes(h.target_bytes()), "  dem ", FormatBytes(h.demand_bytes()), flags, "\n");
    const char* color = nullptr;
    if (!h.connected()) color = kDim;
    if (HostShortOfDemand(h)) color = kRed;
    if (h.overcommitted()) color = kBoldRed;
    absl::StrAppend(&out, Paint(line, color, options.color));
  }

  absl::StrAppend(&out, "\nVMS by pressure (swap-in + major faults)\n");
  Table table(
      {"HOST", "NAME", "TARGET", "ACTUAL", "DEMAND", "SWAP_IN", "MAJFLT", "REASON", "HEALTH"});
  for (const v1::Vm& vm : sorted) {
    table.AddRow(
        {vm.host_id(), vm.name().empty() ? vm.vm_id() : vm.name(), FormatBytes(vm.target_bytes()),
         FormatBytes(vm.actual_bytes()), FormatBytes(vm.demand_bytes()),
         Rate(vm.swap_in_bytes_per_second(), true), Rate(vm.major_faults_per_second(), false),
         ReasonName(vm.reason()),
         BalloonStuck(vm) ? absl::StrCat(HealthName(vm.health()), " !") : HealthName(vm.health())});
  }
  std::vector<std::string> lines = Lines(table.Render());
  for (size_t i = 0; i < lines.size(); ++i) {
    const bool stuck_row = i > 0 && BalloonStuck(sorted[i - 1]);
    absl::StrAppend(&out, Paint(lines[i], stuck_row ? kRed : nullptr, options.color));
  }
  if (!stuck.empty() || !short_hosts.empty()) {
    absl::StrAppend(&out, "\n");
    if (!short_hosts.empty()) {
      absl::StrAppend(
          &out, Paint(absl::StrCat("short of demand: ", absl::StrJoin(short_hosts, ", "), "\n"),
                      kRed, options.color));
    }
    if (!stuck.empty()) {
      absl::StrAppend(
          &out, Paint(absl::StrCat("stuck balloons: ", absl::StrJoin(stuck, ", "), "\n"), kRed,
                      options.color));
    }
  }
  return out;
}

}  // namespace membroker::client

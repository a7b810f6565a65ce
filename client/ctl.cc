#include "client/ctl.h"

#include <grpcpp/grpcpp.h>

#include <chrono>
#include <memory>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "client/output.h"
#include "client/top_view.h"
#include "common/proto_time.h"
#include "common/tls.h"
#include "common/units.h"
#include "membroker/v1/admin.grpc.pb.h"

#ifndef MB_VERSION
#define MB_VERSION "unknown"
#endif

namespace membroker::client {
namespace {

// Everything one command needs while it runs.
struct Run {
  const Invocation& inv;
  std::ostream& out;
  std::ostream& err;
  const CtlEnvironment& env;
  std::unique_ptr<v1::AdminService::Stub> stub;
};

int Usage(std::ostream& err, const absl::Status& status) {
  err << "error: " << status.message() << "\n";
  return kExitUsage;
}

bool Machine(const Run& r) {
  return r.inv.global.output == OutputFormat::kJson || r.inv.global.output == OutputFormat::kYaml;
}

bool Wide(const Run& r) { return r.inv.global.output == OutputFormat::kWide; }

// Formats a failed call for people.
std::string CallError(const Run& r, const grpc::Status& status) {
  std::string msg =
      absl::StrCat(StatusCodeName(status.error_code()), ": ",
                   status.error_message().empty() ? "(no message)" : status.error_message());
  if (status.error_code() == grpc::StatusCode::UNAVAILABLE) {
    absl::StrAppend(&msg, " (server ", r.inv.global.server, ")");
  } else if (status.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED) {
    absl::StrAppend(&msg, " (--timeout=", absl::FormatDuration(r.inv.global.timeout), ")");
  }
  return msg;
}

// Runs one unary call with the global deadline plus `extra`.
template <typename Fn>
grpc::Status Call(const Run& r, Fn fn, absl::Duration extra = absl::ZeroDuration()) {
  grpc::ClientContext context;
  // gRPC deadlines are wall-clock points by definition.
  context.set_deadline(std::chrono::system_clock::now() +
                       absl::ToChronoMilliseconds(r.inv.global.timeout + extra));
  return fn(&context);
}

int Failed(const Run& r, const grpc::Status& status) {
  r.err << "error: " << CallError(r, status) << "\n";
  return kExitRpcBase + static_cast<int>(status.error_code());
}

// Prints `reply` in the machine format, or `human` for table/wide.
int Print(const Run& r, const google::protobuf::Message& reply, const std::string& human) {
  if (Machine(r)) {
    absl::StatusOr<std::string> text = RenderMessage(reply, r.inv.global.output);
    if (!text.ok()) {
      r.err << "error: " << text.status().message() << "\n";
      return kExitError;
    }
    r.out << *text;
  } else {
    r.out << human;
  }
  r.out.flush();
  return kExitOk;
}

// The value of --watch (false when absent).
absl::StatusOr<bool> WatchFlag(const Run& r) {
  auto it = r.inv.flags.find("watch");
  if (it == r.inv.flags.end() || it->second == "false") return false;
  if (it->second == "true") return true;
  return absl::InvalidArgumentError("--watch: value must be true or false");
}

// Time of a watch event, for people.
std::string EventHeader(const Run& r, absl::string_view what) {
  return absl::StrCat("--- ", what, " ", FormatUtc(r.env.clock->Now()), " ---\n");
}

// Reads a watch stream to its end: each event printed as it comes. `human`
// renders one event for table/wide.
template <typename Event>
int Watch(Run& r, grpc::ClientContext* context, grpc::ClientReaderInterface<Event>* reader,
          const std::function<std::string(const Event&)>& human) {
  Event e;
  while (reader->Read(&e)) {
    if (Machine(r)) {
      absl::StatusOr<std::string> text = RenderMessage(e, r.inv.global.output);
      if (!text.ok()) {
        context->TryCancel();
        reader->Finish().IgnoreError();
        r.err << "error: " << text.status().message() << "\n";
        return kExitError;
      }
      r.out << *text;
      if (r.inv.global.output == OutputFormat::kYaml) r.out << "---\n";
    } else {
      r.out << human(e);
    }
    r.out.flush();
  }
  grpc::Status s = reader->Finish();
  if (!s.ok()) return Failed(r, s);
  return kExitOk;
}

int WatchHosts(Run& r) {
  grpc::ClientContext context;  // no deadline: until the user stops it
  auto reader = r.stub->WatchHosts(&context, v1::WatchHostsRequest());
  v1::ListHostsResponse snapshot;
  return Watch<v1::HostEvent>(r, &context, reader.get(), [&](const v1::HostEvent& e) {
    std::string out;
    switch (e.type()) {
      case v1::HostEvent::TYPE_SNAPSHOT:
        for (const v1::Host& h : e.hosts()) *snapshot.add_hosts() = h;
        return out;
      case v1::HostEvent::TYPE_SNAPSHOT_END:
        return absl::StrCat(EventHeader(r, "hosts"), RenderHostsTable(snapshot, Wide(r)));
      default: {
        out = EventHeader(r, "changed");
        if (e.hosts_size() > 0) {
          v1::ListHostsResponse changed;
          *changed.mutable_hosts() = e.hosts();
          absl::StrAppend(&out, RenderHostsTable(changed, Wide(r)));
        }
        for (const v1::Host& h : e.removed()) absl::StrAppend(&out, "removed host ", h.host_id(), "\n");
        return out;
      }
    }
  });
}

int WatchVms(Run& r, const v1::ListVmsRequest& request) {
  grpc::ClientContext context;  // no deadline: until the user stops it
  v1::WatchVmsRequest watch;
  watch.set_host_id(request.host_id());
  auto reader = r.stub->WatchVms(&context, watch);
  v1::ListVmsResponse snapshot;
  return Watch<v1::VmEvent>(r, &context, reader.get(), [&](const v1::VmEvent& e) {
    std::string out;
    switch (e.type()) {
      case v1::VmEvent::TYPE_SNAPSHOT:
        for (const v1::Vm& vm : e.vms()) *snapshot.add_vms() = vm;
        return out;
      case v1::VmEvent::TYPE_SNAPSHOT_END:
        return absl::StrCat(EventHeader(r, "vms"), RenderVmsTable(snapshot, Wide(r)));
      default: {
        out = EventHeader(r, "changed");
        if (e.vms_size() > 0) {
          v1::ListVmsResponse changed;
          *changed.mutable_vms() = e.vms();
          absl::StrAppend(&out, RenderVmsTable(changed, Wide(r)));
        }
        for (const v1::Vm& vm : e.removed()) {
          absl::StrAppend(&out, "removed vm ", vm.vm_id(), " (host ", vm.host_id(), ")\n");
        }
        return out;
      }
    }
  });
}

int GetHosts(Run& r) {
  auto watch = WatchFlag(r);
  if (!watch.ok()) return Usage(r.err, watch.status());
  if (*watch) return WatchHosts(r);
  v1::ListHostsResponse reply;
  grpc::Status s = Call(r, [&](grpc::ClientContext* c) {
    return r.stub->ListHosts(c, v1::ListHostsRequest(), &reply);
  });
  if (!s.ok()) return Failed(r, s);
  return Print(r, reply, RenderHostsTable(reply, Wide(r)));
}

int GetVms(Run& r) {
  auto request = BuildListVmsRequest(r.inv);
  if (!request.ok()) return Usage(r.err, request.status());
  auto watch = WatchFlag(r);
  if (!watch.ok()) return Usage(r.err, watch.status());
  if (*watch) return WatchVms(r, *request);
  v1::ListVmsResponse reply;
  grpc::Status s =
      Call(r, [&](grpc::ClientContext* c) { return r.stub->ListVms(c, *request, &reply); });
  if (!s.ok()) return Failed(r, s);
  return Print(r, reply, RenderVmsTable(reply, Wide(r)));
}

int DescribeHostCmd(Run& r) {
  if (absl::Status v = ValidateHostId(r.inv.operands[0]); !v.ok()) {
    return Usage(r.err, absl::InvalidArgumentError(absl::StrCat("HOST: ", v.message())));
  }
  v1::GetHostRequest request;
  request.set_host_id(r.inv.operands[0]);
  v1::Host reply;
  grpc::Status s =
      Call(r, [&](grpc::ClientContext* c) { return r.stub->GetHost(c, request, &reply); });
  if (!s.ok()) return Failed(r, s);
  return Print(r, reply, DescribeHost(reply));
}

int DescribeVmCmd(Run& r) {
  v1::GetVmRequest request;
  request.set_vm(r.inv.operands[0]);
  v1::Vm reply;
  grpc::Status s =
      Call(r, [&](grpc::ClientContext* c) { return r.stub->GetVm(c, request, &reply); });
  if (!s.ok()) return Failed(r, s);
  return Print(r, reply, DescribeVm(reply));
}

int ExplainVmCmd(Run& r) {
  v1::ExplainVmRequest request;
  request.set_vm(r.inv.operands[0]);
  v1::Explanation reply;
  grpc::Status s =
      Call(r, [&](grpc::ClientContext* c) { return r.stub->ExplainVm(c, request, &reply); });
  if (!s.ok()) return Failed(r, s);
  return Print(r, reply, DescribeExplanation(reply));
}

int SetVmCmd(Run& r) {
  auto request = BuildSetVmPolicyRequest(r.inv);
  if (!request.ok()) return Usage(r.err, request.status());
  v1::VmPolicy reply;
  grpc::Status s =
      Call(r, [&](grpc::ClientContext* c) { return r.stub->SetVmPolicy(c, *request, &reply); });
  if (!s.ok()) return Failed(r, s);
  return Print(r, reply, DescribeVmPolicy(request->vm(), reply));
}

int UnsetVmCmd(Run& r) {
  v1::ClearVmPolicyRequest request;
  request.set_vm(r.inv.operands[0]);
  v1::ClearVmPolicyResponse reply;
  grpc::Status s =
      Call(r, [&](grpc::ClientContext* c) { return r.stub->ClearVmPolicy(c, request, &reply); });
  if (!s.ok()) return Failed(r, s);
  return Print(r, reply, absl::StrCat("policy of vm ", request.vm(), " cleared\n"));
}

int PolicyGetCmd(Run& r) {
  v1::ClusterPolicy reply;
  grpc::Status s = Call(r, [&](grpc::ClientContext* c) {
    return r.stub->GetClusterPolicy(c, v1::GetClusterPolicyRequest(), &reply);
  });
  if (!s.ok()) return Failed(r, s);
  return Print(r, reply, DescribeClusterPolicy(reply));
}

int PolicySetCmd(Run& r) {
  auto request = BuildSetClusterPolicyRequest(r.inv);
  if (!request.ok()) return Usage(r.err, request.status());
  v1::ClusterPolicy reply;
  grpc::Status s = Call(
      r, [&](grpc::ClientContext* c) { return r.stub->SetClusterPolicy(c, *request, &reply); });
  if (!s.ok()) return Failed(r, s);
  return Print(r, reply, DescribeClusterPolicy(reply));
}

int ReserveCmd(Run& r) {
  auto request = BuildReserveRequest(r.inv);
  if (!request.ok()) return Usage(r.err, request.status());
  const absl::Duration wait =
      request->has_wait() ? FromProto(request->wait()) : absl::ZeroDuration();
  v1::Reservation reply;
  grpc::Status s = Call(
      r, [&](grpc::ClientContext* c) { return r.stub->Reserve(c, *request, &reply); }, wait);
  if (!s.ok()) return Failed(r, s);
  return Print(r, reply, DescribeReservation(reply));
}

int GetReservations(Run& r) {
  bool has_host = false;
  auto host = FlagHostId(r.inv, "host", &has_host);
  if (!host.ok()) return Usage(r.err, host.status());
  v1::ListReservationsRequest request;
  request.set_host_id(*host);
  v1::ListReservationsResponse reply;
  grpc::Status s = Call(
      r, [&](grpc::ClientContext* c) { return r.stub->ListReservations(c, request, &reply); });
  if (!s.ok()) return Failed(r, s);
  return Print(r, reply, RenderReservationsTable(reply));
}

int ReleaseCmd(Run& r) {
  v1::ReleaseRequest request;
  request.set_id(r.inv.operands[0]);
  v1::ReleaseResponse reply;
  grpc::Status s =
      Call(r, [&](grpc::ClientContext* c) { return r.stub->Release(c, request, &reply); });
  if (!s.ok()) return Failed(r, s);
  return Print(r, reply, absl::StrCat("reservation ", request.id(), " released\n"));
}

int PlanCmd(Run& r) {
  v1::Plan reply;
  grpc::Status s = Call(
      r, [&](grpc::ClientContext* c) { return r.stub->GetPlan(c, v1::GetPlanRequest(), &reply); });
  if (!s.ok()) return Failed(r, s);
  return Print(r, reply, RenderPlanTable(reply, Wide(r)));
}

int PlaceCmd(Run& r) {
  auto request = BuildPlaceRequest(r.inv);
  if (!request.ok()) return Usage(r.err, request.status());
  v1::PlaceResponse reply;
  grpc::Status s =
      Call(r, [&](grpc::ClientContext* c) { return r.stub->Place(c, *request, &reply); });
  if (!s.ok()) return Failed(r, s);
  return Print(r, reply, RenderPlaceTable(reply));
}

int HistoryCmd(Run& r) {
  v1::ListAuditEntriesRequest request;
  bool has_limit = false;
  auto limit = FlagInt(r.inv, "limit", 1, 10000, &has_limit);
  if (!limit.ok()) return Usage(r.err, limit.status());
  if (has_limit) request.set_limit(static_cast<uint32_t>(*limit));
  if (auto vm = r.inv.flags.find("vm"); vm != r.inv.flags.end()) {
    if (vm->second.empty()) return Usage(r.err, absl::InvalidArgumentError("--vm: empty"));
    request.set_target(vm->second);
  }
  v1::ListAuditEntriesResponse reply;
  grpc::Status s =
      Call(r, [&](grpc::ClientContext* c) { return r.stub->ListAuditEntries(c, request, &reply); });
  if (!s.ok()) return Failed(r, s);
  return Print(r, reply, RenderAuditTable(reply));
}

int TopCmd(Run& r) {
  bool has_host = false, has_interval = false, has_iterations = false;
  auto host = FlagHostId(r.inv, "host", &has_host);
  if (!host.ok()) return Usage(r.err, host.status());
  auto interval = FlagDuration(r.inv, "interval", /*allow_zero=*/false, &has_interval);
  if (!interval.ok()) return Usage(r.err, interval.status());
  auto iterations = FlagInt(r.inv, "iterations", 1, int64_t{1} << 40, &has_iterations);
  if (!iterations.ok()) return Usage(r.err, iterations.status());
  if (Machine(r)) {
    return Usage(r.err, absl::InvalidArgumentError("-o: top prints only table or wide"));
  }
  const absl::Duration period = has_interval ? *interval : absl::Seconds(1);
  std::function<bool(absl::Duration)> wait = r.env.wait;
  if (!wait) {
    wait = [](absl::Duration d) {
      absl::SleepFor(d);
      return true;
    };
  }
  v1::ListVmsRequest vms_request;
  vms_request.set_host_id(*host);
  // Bars and colours on a terminal that understands escapes (not
  // TERM=dumb); colours unless NO_COLOR is set; plain tables otherwise.
  auto var = [&](const std::string& name) {
    auto it = r.env.vars.find(name);
    return it == r.env.vars.end() ? std::string() : it->second;
  };
  TopViewOptions view;
  view.terminal = r.env.out_is_terminal && var("TERM") != "dumb";
  view.color = view.terminal && r.env.vars.count("NO_COLOR") == 0;
  view.wide = Wide(r);
  if (r.env.enter_live_view) r.env.enter_live_view();
  int last = kExitOk;
  for (int64_t i = 0;; ++i) {
    v1::ListHostsResponse hosts;
    v1::ListVmsResponse vms;
    grpc::Status s = Call(r, [&](grpc::ClientContext* c) {
      return r.stub->ListHosts(c, v1::ListHostsRequest(), &hosts);
    });
    if (s.ok()) {
      s = Call(r, [&](grpc::ClientContext* c) { return r.stub->ListVms(c, vms_request, &vms); });
    }
    const std::string when = FormatUtc(r.env.clock->Now());
    std::string frame;
    if (view.terminal) {
      frame = absl::StrCat("\x1b[H\x1b[2J", "membrokerctl top  server ", r.inv.global.server, "  ",
                           when, "  every ", absl::FormatDuration(period), " (Ctrl-C to stop)\n\n");
    } else {
      frame = absl::StrCat("--- ", when, " ---\n");
    }
    if (s.ok()) {
      if (has_host) {
        v1::ListHostsResponse filtered;
        for (const v1::Host& h : hosts.hosts()) {
          if (h.host_id() == *host) *filtered.add_hosts() = h;
        }
        hosts = std::move(filtered);
      }
      absl::StrAppend(&frame, RenderTopFrame(hosts, vms, view));
      last = kExitOk;
    } else {
      const std::string msg = CallError(r, s);
      if (view.terminal) absl::StrAppend(&frame, "error: ", msg, "\n");
      r.err << "error: " << msg << "\n";
      last = kExitRpcBase + static_cast<int>(s.error_code());
    }
    r.out << frame;
    r.out.flush();
    if (has_iterations && i + 1 >= *iterations) break;
    if (!wait(period)) break;
  }
  return last;
}

int Dispatch(Run& r) {
  const std::string name = absl::StrJoin(r.inv.command->path, " ");
  if (name == "get hosts") return GetHosts(r);
  if (name == "get vms") return GetVms(r);
  if (name == "describe host") return DescribeHostCmd(r);
  if (name == "describe vm") return DescribeVmCmd(r);
  if (name == "explain vm") return ExplainVmCmd(r);
  if (name == "set vm") return SetVmCmd(r);
  if (name == "unset vm") return UnsetVmCmd(r);
  if (name == "policy get") return PolicyGetCmd(r);
  if (name == "policy set") return PolicySetCmd(r);
  if (name == "reserve") return ReserveCmd(r);
  if (name == "release") return ReleaseCmd(r);
  if (name == "get reservations") return GetReservations(r);
  if (name == "plan") return PlanCmd(r);
  if (name == "place") return PlaceCmd(r);
  if (name == "history") return HistoryCmd(r);
  if (name == "top") return TopCmd(r);
  r.err << "error: command '" << name << "' has no implementation\n";
  return kExitError;
}

}  // namespace

std::string StatusCodeName(int code) {
  if (code < 0 || code > 16) return absl::StrCat("CODE_", code);
  return absl::StatusCodeToString(static_cast<absl::StatusCode>(code));
}

absl::StatusOr<v1::ListVmsRequest> BuildListVmsRequest(const Invocation& inv) {
  bool present = false;
  auto host = FlagHostId(inv, "host", &present);
  if (!host.ok()) return host.status();
  v1::ListVmsRequest request;
  request.set_host_id(*host);
  return request;
}

absl::StatusOr<v1::SetVmPolicyRequest> BuildSetVmPolicyRequest(const Invocation& inv) {
  v1::SetVmPolicyRequest request;
  request.set_vm(inv.operands.at(0));
  request.set_merge(true);
  v1::VmPolicy* policy = request.mutable_policy();
  bool has_min = false, has_max = false, has_weight = false, has_pinned = false;
  auto min = FlagBytes(inv, "min", &has_min);
  if (!min.ok()) return min.status();
  auto max = FlagBytes(inv, "max", &has_max);
  if (!max.ok()) return max.status();
  auto weight = FlagInt(inv, "weight", 1, 10000, &has_weight);
  if (!weight.ok()) return weight.status();
  auto pinned = FlagBool(inv, "pinned", &has_pinned);
  if (!pinned.ok()) return pinned.status();
  if (!has_min && !has_max && !has_weight && !has_pinned) {
    return absl::InvalidArgumentError(
        "'set vm' needs at least one of --min, --max, --weight, --pinned");
  }
  if (has_max && *max == 0) return absl::InvalidArgumentError("--max must be greater than 0");
  if (has_min && has_max && *min > *max) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--min (", FormatBytes(*min), ") is greater than --max (", FormatBytes(*max), ")"));
  }
  if (has_min) policy->set_min_bytes(*min);
  if (has_max) policy->set_max_bytes(*max);
  if (has_weight) policy->set_weight(static_cast<uint32_t>(*weight));
  if (has_pinned) policy->set_pinned(*pinned);
  return request;
}

absl::StatusOr<v1::SetClusterPolicyRequest> BuildSetClusterPolicyRequest(const Invocation& inv) {
  v1::SetClusterPolicyRequest request;
  v1::ClusterPolicy* p = request.mutable_policy();
  bool present = false, any = false;
  {
    auto v = FlagDouble(inv, "buffer-percent", 0, 1000, &present);
    if (!v.ok()) return v.status();
    if (present) p->set_buffer_percent(*v);
    any |= present;
  }
  struct SizeFlag {
    const char* name;
    void (v1::ClusterPolicy::*set)(uint64_t);
  };
  for (const SizeFlag& f :
       {SizeFlag{"host-free-margin", &v1::ClusterPolicy::set_host_free_margin_bytes},
        SizeFlag{"reclaim-step", &v1::ClusterPolicy::set_reclaim_step_bytes},
        SizeFlag{"hysteresis", &v1::ClusterPolicy::set_hysteresis_bytes},
        SizeFlag{"default-min", &v1::ClusterPolicy::set_default_min_bytes},
        SizeFlag{"protect-margin-max", &v1::ClusterPolicy::set_protect_margin_max_bytes}}) {
    auto v = FlagBytes(inv, f.name, &present);
    if (!v.ok()) return v.status();
    if (present) (p->*f.set)(*v);
    any |= present;
  }
  {
    auto v = FlagDouble(inv, "idle-tax-percent", 0, 99, &present);
    if (!v.ok()) return v.status();
    if (present) p->set_idle_tax_percent(*v);
    any |= present;
  }
  {
    auto v = FlagInt(inv, "default-weight", 1, 10000, &present);
    if (!v.ok()) return v.status();
    if (present) p->set_default_weight(static_cast<uint32_t>(*v));
    any |= present;
  }
  {
    auto v = FlagDouble(inv, "protect-margin-percent", 0, 1000, &present);
    if (!v.ok()) return v.status();
    if (present) p->set_protect_margin_percent(*v);
    any |= present;
  }
  {
    auto v = FlagDouble(inv, "surplus-percent", 0, 100, &present);
    if (!v.ok()) return v.status();
    if (present) p->set_surplus_percent(*v);
    any |= present;
  }
  {
    auto v = FlagDouble(inv, "hysteresis-percent", 0, 50, &present);
    if (!v.ok()) return v.status();
    if (present) p->set_hysteresis_percent(*v);
    any |= present;
  }
  {
    auto v = FlagDuration(inv, "report-interval", /*allow_zero=*/false, &present);
    if (!v.ok()) return v.status();
    if (present) *p->mutable_report_interval() = ToProtoDuration(*v);
    any |= present;
  }
  if (!any) {
    return absl::InvalidArgumentError(
        "'policy set' needs at least one flag (see 'membrokerctl policy set --help')");
  }
  return request;
}

absl::StatusOr<v1::PlaceRequest> BuildPlaceRequest(const Invocation& inv) {
  v1::PlaceRequest request;
  bool has_bytes = false, has_count = false;
  auto bytes = FlagBytes(inv, "bytes", &has_bytes);
  if (!bytes.ok()) return bytes.status();
  if (!has_bytes) return absl::InvalidArgumentError("'place' needs --bytes");
  if (*bytes == 0) return absl::InvalidArgumentError("--bytes must be greater than 0");
  auto count = FlagInt(inv, "count", 1, 10000, &has_count);
  if (!count.ok()) return count.status();
  request.set_bytes(*bytes);
  request.set_count(has_count ? static_cast<uint32_t>(*count) : 1);
  return request;
}

absl::StatusOr<v1::ReserveRequest> BuildReserveRequest(const Invocation& inv) {
  v1::ReserveRequest request;
  bool has_host = false, has_bytes = false, has_wait = false;
  auto host = FlagHostId(inv, "host", &has_host);
  if (!host.ok()) return host.status();
  if (!has_host) return absl::InvalidArgumentError("'reserve' needs --host");
  auto bytes = FlagBytes(inv, "bytes", &has_bytes);
  if (!bytes.ok()) return bytes.status();
  if (!has_bytes) return absl::InvalidArgumentError("'reserve' needs --bytes");
  if (*bytes == 0) return absl::InvalidArgumentError("--bytes must be greater than 0");
  auto wait = FlagDuration(inv, "wait", /*allow_zero=*/true, &has_wait);
  if (!wait.ok()) return wait.status();
  bool has_ttl = false;
  auto ttl = FlagDuration(inv, "ttl", /*allow_zero=*/false, &has_ttl);
  if (!ttl.ok()) return ttl.status();
  request.set_host_id(*host);
  request.set_bytes(*bytes);
  if (has_wait) *request.mutable_wait() = ToProtoDuration(*wait);
  if (has_ttl) *request.mutable_ttl() = ToProtoDuration(*ttl);
  if (auto vm = inv.flags.find("for-vm"); vm != inv.flags.end()) {
    if (vm->second.empty()) return absl::InvalidArgumentError("--for-vm: empty");
    request.set_for_vm_id(vm->second);
  }
  return request;
}

std::function<bool(absl::Duration)> InterruptibleWait(const std::atomic<bool>* stop) {
  return [stop](absl::Duration d) {
    const absl::Duration kSlice = absl::Milliseconds(50);
    // Bounded by count: ceil(d / slice) slices at most.
    absl::Duration remainder;
    const int64_t slices =
        absl::IDivDuration(d + kSlice - absl::Nanoseconds(1), kSlice, &remainder);
    for (int64_t i = 0; i < slices; ++i) {
      if (stop->load()) return false;
      absl::SleepFor(kSlice);
    }
    return !stop->load();
  };
}

int RunCtl(const std::vector<std::string>& args, std::ostream& out, std::ostream& err,
           const CtlEnvironment& env) {
  absl::StatusOr<Invocation> inv = ParseArgs(args, env.vars);
  if (!inv.ok()) return Usage(err, inv.status());
  if (inv->help) {
    out << HelpText(inv->help_path);
    return kExitOk;
  }
  const std::string name = absl::StrJoin(inv->command->path, " ");
  if (name == "version") {
    out << "membrokerctl " << MB_VERSION << "\n";
    return kExitOk;
  }
  const GlobalOptions& g = inv->global;
  auto tls = PickTransportSecurity(g.insecure, {g.tls_cert, g.tls_key, g.tls_ca});
  if (!tls.ok()) return Usage(err, tls.status());
  if (tls->has_value()) {
    std::string warning;
    if (absl::Status files = CheckTlsFiles(**tls, &warning); !files.ok()) return Usage(err, files);
    if (!warning.empty()) err << "warning: " << warning << "\n";
  }
  Run run{*inv, out, err, env, nullptr};
  grpc::ChannelArguments channel_args;
  channel_args.SetString(GRPC_ARG_PRIMARY_USER_AGENT_STRING,
                         absl::StrCat("membrokerctl/", MB_VERSION));
  run.stub = v1::AdminService::NewStub(grpc::CreateCustomChannel(
      g.server, *tls ? MutualTlsChannelCredentials(**tls) : grpc::InsecureChannelCredentials(),
      channel_args));
  return Dispatch(run);
}

}  // namespace membroker::client

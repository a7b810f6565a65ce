#include "broker/server_limits.h"

#include <grpcpp/resource_quota.h>

#include <algorithm>
#include <limits>
#include <utility>

#include "absl/strings/str_cat.h"
#include "broker/report.h"
#include "common/proto_time.h"
#include "membroker/v1/agent.pb.h"

namespace membroker::broker {
namespace {

// One VM sample with every field at its largest legal value.
void FillLargestVm(int index, v1::VmSample* vm) {
  constexpr uint64_t kBig = std::numeric_limits<uint64_t>::max();
  std::string id = absl::StrCat(index, "-");
  id.resize(kMaxVmIdChars, 'x');
  vm->set_vm_id(id);
  vm->set_name(std::string(kMaxVmNameChars, 'n'));
  vm->set_max_bytes(kBig);
  vm->set_actual_bytes(kBig);
  vm->set_last_target_bytes(kBig);
  vm->set_health(v1::BALLOON_HEALTH_NO_DRIVER);
  vm->set_host_rss_bytes(kBig);
  vm->set_local_grant_bytes(kBig);
  vm->set_sizing_mechanism(std::string(kMaxSizingMechanismChars, 's'));
  vm->set_virtio_mem_plugged_bytes(kBig);
  vm->set_virtio_mem_requested_bytes(kBig);
  vm->set_balloon_inflated_bytes(kBig);
  vm->set_health_reason(std::string(kMaxHealthReasonChars, 'h'));
  vm->set_boot_bytes(kBig);
  vm->set_free_page_reporting(true);
  vm->set_host_working_set_bytes(kBig);
  vm->set_host_working_set_interval_ms(kBig);
  vm->set_host_working_set_method(v1::HOST_WORKING_SET_METHOD_REFAULT);
  vm->set_host_psi_some_avg10_percent(100.0);
  v1::GuestStats* g = vm->mutable_stats();
  g->set_total_bytes(kBig);
  g->set_available_bytes(kBig);
  g->set_free_bytes(kBig);
  g->set_disk_caches_bytes(kBig);
  g->set_swap_in_bytes_total(kBig);
  g->set_swap_out_bytes_total(kBig);
  g->set_major_faults_total(kBig);
  g->set_minor_faults_total(kBig);
  g->set_age_seconds(1e300);
  g->set_untrusted(true);
  g->set_untrusted_reason(std::string(kMaxUntrustedReasonChars, 'r'));
  g->set_oom_kills_total(kBig);
  for (int i = 0; i < kMaxPressureReasons; ++i) {
    vm->add_pressure_reasons(static_cast<v1::PressureReason>(v1::PressureReason_MAX));
  }
}

size_t ReportBytes(int vms) {
  v1::AgentMessage msg;
  v1::HostReport* r = msg.mutable_report();
  constexpr uint64_t kBig = std::numeric_limits<uint64_t>::max();
  r->set_sequence(kBig);
  r->set_capacity_bytes(kBig);
  r->set_pressure_event(true);
  r->mutable_sent_at()->set_seconds(std::numeric_limits<int64_t>::max());
  r->mutable_sent_at()->set_nanos(999999999);
  v1::HostSample* h = r->mutable_host();
  h->set_mem_total_bytes(kBig);
  h->set_mem_available_bytes(kBig);
  h->set_swap_total_bytes(kBig);
  h->set_swap_free_bytes(kBig);
  h->set_psi_some_avg10_percent(100);
  h->set_psi_full_avg10_percent(100);
  h->set_psi_some_seconds_total(1e300);
  h->set_psi_full_seconds_total(1e300);
  for (int i = 0; i < vms; ++i) FillLargestVm(i, r->add_vms());
  return msg.ByteSizeLong();
}

size_t AckBytes(int errors) {
  v1::AgentMessage msg;
  v1::TargetAck* ack = msg.mutable_ack();
  ack->set_generation(std::numeric_limits<uint64_t>::max());
  for (int i = 0; i < errors; ++i) {
    std::string key = absl::StrCat(i, "-");
    key.resize(kMaxVmIdChars, 'k');
    (*ack->mutable_errors())[key] = std::string(kMaxAckErrorChars, 'e');
  }
  return msg.ByteSizeLong();
}

int Millis(absl::Duration d) {
  return static_cast<int>(
      std::min<int64_t>(absl::ToInt64Milliseconds(d), std::numeric_limits<int>::max()));
}

}  // namespace

size_t LargestLegalAgentMessageBytes() {
  // Linear in the VM count: measured on one and two entries, extrapolated.
  static const size_t bytes = [] {
    const size_t report = ReportBytes(1) + (ReportBytes(2) - ReportBytes(1)) * (kMaxVmsPerHost - 1);
    const size_t ack = AckBytes(1) + (AckBytes(2) - AckBytes(1)) * (kMaxAckErrors - 1);
    const size_t largest = std::max(report, ack);
    // A quarter more for fields added later, and room for the framing.
    return largest + largest / 4 + (size_t{64} << 10);
  }();
  return bytes;
}

absl::Status ValidateServerLimits(const ServerLimits& l) {
  auto positive = [](const char* name, int64_t v) -> absl::Status {
    if (v <= 0) return absl::InvalidArgumentError(absl::StrCat("limits.", name, ": must be > 0"));
    return absl::OkStatus();
  };
  for (const auto& [name, v] : std::initializer_list<std::pair<const char*, int64_t>>{
           {"max_agent_streams", l.max_agent_streams},
           {"max_watch_streams", l.max_watch_streams},
           {"max_streams_per_peer", l.max_streams_per_peer},
           {"max_concurrent_streams_per_connection", l.max_concurrent_streams_per_connection},
           {"memory_quota_bytes", static_cast<int64_t>(l.memory_quota_bytes >> 20)}}) {
    if (absl::Status s = positive(name, v); !s.ok()) return s;
  }
  for (const auto& [name, d] : std::initializer_list<std::pair<const char*, absl::Duration>>{
           {"hello_timeout", l.hello_timeout},
           {"keepalive_time", l.keepalive_time},
           {"keepalive_timeout", l.keepalive_timeout},
           {"max_connection_idle", l.max_connection_idle},
           {"host_expiry", l.host_expiry}}) {
    if (d <= absl::ZeroDuration() || d == absl::InfiniteDuration()) {
      return absl::InvalidArgumentError(absl::StrCat("limits.", name, ": must be > 0"));
    }
  }
  if (l.watch_buffer_bytes < (size_t{4} << 10)) {
    return absl::InvalidArgumentError("limits.watch_buffer_bytes: at least 4 KiB");
  }
  if (l.watch_buffer_total_bytes < l.watch_buffer_bytes) {
    return absl::InvalidArgumentError(
        "limits.watch_buffer_total_bytes: at least limits.watch_buffer_bytes");
  }
  if (l.max_receive_message_bytes != 0 && l.max_receive_message_bytes < (size_t{64} << 10)) {
    return absl::InvalidArgumentError("limits.max_receive_message_bytes: at least 64 KiB");
  }
  return absl::OkStatus();
}

absl::Status MergeLimitsConfig(const v1::BrokerLimits& c, ServerLimits* l) {
  auto duration = [](const char* name, const google::protobuf::Duration& d,
                     absl::Duration* out) -> absl::Status {
    if (d.seconds() < 0 || d.nanos() < 0 || d.nanos() >= 1000000000) {
      return absl::InvalidArgumentError(absl::StrCat("limits.", name, ": malformed duration"));
    }
    *out = FromProto(d);
    return absl::OkStatus();
  };
  auto count = [](const char* name, uint32_t v, int* out) -> absl::Status {
    if (v > 1000000) {
      return absl::InvalidArgumentError(absl::StrCat("limits.", name, ": at most 1000000"));
    }
    *out = static_cast<int>(v);
    return absl::OkStatus();
  };
  if (c.has_max_agent_streams()) {
    if (auto s = count("max_agent_streams", c.max_agent_streams(), &l->max_agent_streams); !s.ok())
      return s;
  }
  if (c.has_max_watch_streams()) {
    if (auto s = count("max_watch_streams", c.max_watch_streams(), &l->max_watch_streams); !s.ok())
      return s;
  }
  if (c.has_max_streams_per_peer()) {
    if (auto s = count("max_streams_per_peer", c.max_streams_per_peer(), &l->max_streams_per_peer);
        !s.ok())
      return s;
  }
  if (c.has_hello_timeout()) {
    if (auto s = duration("hello_timeout", c.hello_timeout(), &l->hello_timeout); !s.ok()) return s;
  }
  if (c.has_host_expiry()) {
    if (auto s = duration("host_expiry", c.host_expiry(), &l->host_expiry); !s.ok()) return s;
  }
  if (c.has_memory_quota_bytes()) l->memory_quota_bytes = c.memory_quota_bytes();
  return ValidateServerLimits(*l);
}

void ApplyServerLimits(const ServerLimits& l, grpc::ServerBuilder* builder) {
  const size_t max_receive =
      l.max_receive_message_bytes ? l.max_receive_message_bytes : LargestLegalAgentMessageBytes();
  builder->SetMaxReceiveMessageSize(static_cast<int>(std::min<size_t>(max_receive, INT32_MAX)));
  // Notice dead agents: ping idle connections, allow the agents' own pings.
  builder->AddChannelArgument(GRPC_ARG_KEEPALIVE_TIME_MS, Millis(l.keepalive_time));
  builder->AddChannelArgument(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, Millis(l.keepalive_timeout));
  builder->AddChannelArgument(GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS, 5000);
  builder->AddChannelArgument(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 1);
  builder->AddChannelArgument(GRPC_ARG_MAX_CONNECTION_IDLE_MS, Millis(l.max_connection_idle));
  builder->AddChannelArgument(GRPC_ARG_MAX_CONCURRENT_STREAMS,
                              l.max_concurrent_streams_per_connection);
  grpc::ResourceQuota quota("membroker");
  quota.Resize(l.memory_quota_bytes);
  builder->SetResourceQuota(quota);
}

std::string PeerAddress(const std::string& peer) {
  if (peer.rfind("ipv4:", 0) != 0 && peer.rfind("ipv6:", 0) != 0) return peer;
  const size_t colon = peer.rfind(':');
  if (colon == std::string::npos || colon < 5 || peer[colon - 1] == ':') return peer;
  return peer.substr(0, colon);
}

StreamLimiter::StreamLimiter(std::string kind, int max_total, int max_per_peer,
                             BrokerMetrics* metrics)
    : kind_(std::move(kind)),
      max_total_(max_total),
      max_per_peer_(max_per_peer),
      metrics_(metrics) {}

absl::Status StreamLimiter::Acquire(const std::string& peer) {
  const std::string address = PeerAddress(peer);
  absl::Status refused;
  {
    absl::MutexLock lock(&mu_);
    auto it = per_peer_.find(address);
    const int from_peer = it == per_peer_.end() ? 0 : it->second;
    if (total_ >= max_total_) {
      refused = absl::ResourceExhaustedError(
          absl::StrCat("too many ", kind_, " streams: the broker allows ", max_total_,
                       " in total (limits.max_", kind_, "_streams)"));
    } else if (from_peer >= max_per_peer_) {
      refused = absl::ResourceExhaustedError(
          absl::StrCat("too many streams from this address: the broker allows ", max_per_peer_,
                       " per peer (limits.max_streams_per_peer)"));
    } else {
      ++total_;
      ++per_peer_[address];
      return absl::OkStatus();
    }
  }
  if (metrics_) metrics_->ReportRejected(absl::StrCat(kind_, "_streams_limit"));
  return refused;
}

void StreamLimiter::Release(const std::string& peer) {
  const std::string address = PeerAddress(peer);
  absl::MutexLock lock(&mu_);
  auto it = per_peer_.find(address);
  if (it == per_peer_.end()) return;
  --total_;
  if (--it->second == 0) per_peer_.erase(it);
}

int StreamLimiter::open() const {
  absl::MutexLock lock(&mu_);
  return total_;
}

HostExpiry::HostExpiry(Fleet* fleet, const Clock* clock, absl::Duration after)
    : fleet_(fleet), clock_(clock), after_(after), thread_([this] { Run(); }) {}

HostExpiry::~HostExpiry() {
  {
    absl::MutexLock lock(&mu_);
    stop_ = true;
  }
  thread_.join();
}

void HostExpiry::Run() {
  const absl::Duration period =
      std::max(absl::Milliseconds(10), std::min(after_ / 4, absl::Seconds(30)));
  while (true) {
    {
      absl::MutexLock lock(&mu_);
      if (clock_->AwaitWithTimeout(&mu_, absl::Condition(&stop_), period)) return;
    }
    fleet_->ExpireHosts(after_);
  }
}

}  // namespace membroker::broker

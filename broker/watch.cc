#include "broker/watch.h"

#include <spdlog/spdlog.h>

#include <functional>
#include <tuple>
#include <utility>
#include <vector>

#include "absl/hash/hash.h"
#include "absl/strings/str_cat.h"
#include "broker/stream_writer.h"

namespace membroker::broker {

// --- Fleet::CollectChanges (the Fleet's side of the watch) ---

void Fleet::CollectChanges(WatchCursor& cursor, FleetChanges* out) const {
  std::shared_ptr<const PolicySnapshot> policies = policies_.Snapshot();
  for (const auto& host : AllHosts()) {
    WatchCursor::HostSeen& seen = cursor.hosts[host->host_id];
    if (host->changes.load(std::memory_order_relaxed) == seen.changes) continue;
    absl::MutexLock lock(&host->mu);
    seen.changes = host->changes.load(std::memory_order_relaxed);
    // VMs: one fingerprint of what an operator sees change.
    std::map<std::string, uint64_t> now;
    for (const auto& [id, s] : host->step.vms) {
      auto view = host->vms.find(id);
      if (view == host->vms.end()) continue;
      const v1::VmSample& sample = view->second.sample;
      std::string policy;
      if (auto p = policies->vm_policies.find(id); p != policies->vm_policies.end()) {
        policy = p->second.SerializeAsString();
      }
      const uint64_t fp =
          absl::Hash<std::tuple<std::string, uint64_t, uint64_t, uint64_t, uint64_t, uint64_t,
                                uint64_t, int, int, uint64_t, uint64_t, std::string>>{}(
              std::make_tuple(
                  sample.name(), sample.max_bytes(), sample.actual_bytes(), s.decision.target_bytes,
                  s.demand.demand_bytes, s.decision.floor_bytes, s.demand.protect_bytes,
                  static_cast<int>(sample.health()), static_cast<int>(s.decision.reason),
                  s.demand.used_bytes, s.demand.oom_kills_seen, policy));
      auto old = seen.vms.find(id);
      if (out != nullptr && (old == seen.vms.end() || old->second != fp)) {
        out->vms.push_back(VmProtoLocked(*host, id, *policies));
      }
      now.emplace(id, fp);
    }
    if (out != nullptr) {
      for (const auto& [id, fp] : seen.vms) {
        if (now.count(id)) continue;
        v1::Vm gone;
        gone.set_vm_id(id);
        gone.set_host_id(host->host_id);
        out->removed_vms.push_back(std::move(gone));
      }
    }
    seen.vms = std::move(now);
    // The host, without what moves with every report.
    v1::Host h = HostProtoLocked(*host);
    v1::Host stable = h;
    stable.clear_sample();
    stable.clear_report_sequence();
    stable.clear_last_report_time();
    const uint64_t fp = absl::Hash<std::string>{}(stable.SerializeAsString());
    if (out != nullptr && fp != seen.fingerprint) out->hosts.push_back(std::move(h));
    seen.fingerprint = fp;
  }
}

// --- The reactors ---

namespace {

std::string BehindMessage(size_t limit) {
  return absl::StrCat("watch fell behind: more than ", limit,
                      " events unsent (the per-watcher limit); watch again for a new snapshot");
}

}  // namespace

// One watch: a bounded queued writer; the hub feeds it.
template <typename Event>
class WatchReactor final : public grpc::ServerWriteReactor<Event>, public WatchHub::Watcher {
 public:
  WatchReactor(WatchHub* hub, std::string host_filter, std::function<void()> on_done)
      : hub_(hub),
        host_filter_(std::move(host_filter)),
        on_done_(std::move(on_done)),
        writer_({[this](const Event* e) { this->StartWrite(e); },
                 [this](const grpc::Status& s) { this->Finish(s); }, nullptr, nullptr, nullptr},
                hub->options_.max_queued) {
    id_ = hub_->Add(this);
  }

  void OnWriteDone(bool ok) override {
    writer_.OnWriteDone(ok);
    if (!ok) writer_.FinishOnce(grpc::Status::CANCELLED);
  }
  void OnCancel() override { writer_.FinishOnce(grpc::Status::CANCELLED); }
  void OnDone() override {
    hub_->Remove(id_);
    if (on_done_) on_done_();
    delete this;
  }

  bool SendSnapshot(Fleet& fleet, size_t batch) override;
  bool SendChanges(const FleetChanges& changes, size_t batch) override;

 private:
  // Queues `e`; false (and the call ended) when the watcher fell behind.
  bool Send(Event e) {
    writer_.Enqueue(std::move(e));
    if (writer_.dropped() == 0) return true;
    writer_.FinishOnce(grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED,
                                    BehindMessage(hub_->options_.max_queued)));
    return false;
  }

  WatchHub* const hub_;
  const std::string host_filter_;
  const std::function<void()> on_done_;
  QueuedStreamWriter<Event> writer_;
  uint64_t id_ = 0;
};

template <>
bool WatchReactor<v1::VmEvent>::SendSnapshot(Fleet& fleet, size_t batch) {
  auto vms = fleet.ListVms(host_filter_);
  if (!vms.ok()) {
    writer_.FinishOnce(
        grpc::Status(grpc::StatusCode::NOT_FOUND, std::string(vms.status().message())));
    return false;
  }
  v1::VmEvent e;
  e.set_type(v1::VmEvent::TYPE_SNAPSHOT);
  for (v1::Vm& vm : *vms) {
    *e.add_vms() = std::move(vm);
    if (static_cast<size_t>(e.vms_size()) == batch) {
      if (!Send(e)) return false;
      e.clear_vms();
    }
  }
  if (e.vms_size() > 0 && !Send(e)) return false;
  v1::VmEvent end;
  end.set_type(v1::VmEvent::TYPE_SNAPSHOT_END);
  return Send(std::move(end));
}

template <>
bool WatchReactor<v1::VmEvent>::SendChanges(const FleetChanges& changes, size_t batch) {
  v1::VmEvent e;
  e.set_type(v1::VmEvent::TYPE_CHANGES);
  auto mine = [&](const v1::Vm& vm) {
    return host_filter_.empty() || vm.host_id() == host_filter_;
  };
  auto full = [&] { return static_cast<size_t>(e.vms_size() + e.removed_size()) >= batch; };
  for (const v1::Vm& vm : changes.vms) {
    if (!mine(vm)) continue;
    *e.add_vms() = vm;
    if (full()) {
      if (!Send(e)) return false;
      e.clear_vms();
      e.clear_removed();
    }
  }
  for (const v1::Vm& vm : changes.removed_vms) {
    if (!mine(vm)) continue;
    *e.add_removed() = vm;
    if (full()) {
      if (!Send(e)) return false;
      e.clear_vms();
      e.clear_removed();
    }
  }
  if (e.vms_size() + e.removed_size() > 0) return Send(std::move(e));
  return true;
}

template <>
bool WatchReactor<v1::HostEvent>::SendSnapshot(Fleet& fleet, size_t batch) {
  v1::HostEvent e;
  e.set_type(v1::HostEvent::TYPE_SNAPSHOT);
  for (v1::Host& h : fleet.ListHosts()) {
    *e.add_hosts() = std::move(h);
    if (static_cast<size_t>(e.hosts_size()) == batch) {
      if (!Send(e)) return false;
      e.clear_hosts();
    }
  }
  if (e.hosts_size() > 0 && !Send(e)) return false;
  v1::HostEvent end;
  end.set_type(v1::HostEvent::TYPE_SNAPSHOT_END);
  return Send(std::move(end));
}

template <>
bool WatchReactor<v1::HostEvent>::SendChanges(const FleetChanges& changes, size_t batch) {
  v1::HostEvent e;
  e.set_type(v1::HostEvent::TYPE_CHANGES);
  for (const v1::Host& h : changes.hosts) {
    *e.add_hosts() = h;
    if (static_cast<size_t>(e.hosts_size()) >= batch) {
      if (!Send(e)) return false;
      e.clear_hosts();
    }
  }
  if (e.hosts_size() > 0) return Send(std::move(e));
  return true;
}

// --- The hub ---

WatchHub::WatchHub(Fleet* fleet, Clock* clock, Options options)
    : fleet_(fleet), clock_(clock), options_(options) {}

WatchHub::~WatchHub() {
  {
    absl::MutexLock lock(&mu_);
    stop_ = true;
  }
  if (thread_.joinable()) thread_.join();
}

void WatchHub::Start() {
  thread_ = std::thread([this] { Run(); });
}

grpc::ServerWriteReactor<v1::VmEvent>* WatchHub::WatchVms(const std::string& host_filter,
                                                          std::function<void()> on_done) {
  return new WatchReactor<v1::VmEvent>(this, host_filter, std::move(on_done));
}

grpc::ServerWriteReactor<v1::HostEvent>* WatchHub::WatchHosts(std::function<void()> on_done) {
  return new WatchReactor<v1::HostEvent>(this, "", std::move(on_done));
}

uint64_t WatchHub::Add(Watcher* watcher) {
  absl::MutexLock lock(&mu_);
  const uint64_t id = next_id_++;
  pending_[id] = watcher;
  return id;
}

void WatchHub::Remove(uint64_t id) {
  absl::MutexLock lock(&mu_);
  active_.erase(id);
  pending_.erase(id);
}

size_t WatchHub::WatcherCount() const {
  absl::MutexLock lock(&mu_);
  return active_.size() + pending_.size();
}

uint64_t WatchHub::DroppedCount() const {
  absl::MutexLock lock(&mu_);
  return dropped_;
}

void WatchHub::ScanNow() {
  absl::MutexLock scan(&scan_mu_);
  bool any_active;
  bool any_pending;
  {
    absl::MutexLock lock(&mu_);
    any_active = !active_.empty();
    any_pending = !pending_.empty();
  }
  if (!any_active && !any_pending) return;
  FleetChanges changes;
  // Without active watchers only the cursor moves (no copies).
  fleet_->CollectChanges(cursor_, any_active ? &changes : nullptr);
  absl::MutexLock lock(&mu_);
  if (!changes.vms.empty() || !changes.removed_vms.empty() || !changes.hosts.empty()) {
    for (auto it = active_.begin(); it != active_.end();) {
      if (it->second->SendChanges(changes, options_.batch)) {
        ++it;
        continue;
      }
      ++dropped_;
      spdlog::warn("a watcher fell more than {} events behind and was dropped",
                   options_.max_queued);
      it = active_.erase(it);  // its OnDone still runs Remove (a no-op then)
    }
  }
  for (auto& [id, w] : pending_) {
    if (w->SendSnapshot(*fleet_, options_.batch)) {
      active_[id] = w;
    } else {
      ++dropped_;
    }
  }
  pending_.clear();
}

void WatchHub::Run() {
  while (true) {
    {
      absl::MutexLock lock(&mu_);
      clock_->AwaitWithDeadline(&mu_, absl::Condition(&stop_),
                                clock_->MonotonicNow() + options_.period);
      if (stop_) return;
    }
    ScanNow();
  }
}

}  // namespace membroker::broker

#include "broker/watch.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <atomic>
#include <functional>
#include <tuple>
#include <utility>
#include <vector>

#include "absl/hash/hash.h"
#include "absl/strings/str_cat.h"
#include "broker/stream_writer.h"
#include "common/log_limit.h"

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

// What a VM watch sends about `vm`: its host filter passes it, and during
// a snapshot its host was read already (or was not known when the
// snapshot began: such a host's VMs come as changes).
// `to_read` is the snapshot's hosts still to read, in descending id order.
bool Concerns(const std::string& host_filter, const std::vector<std::string>& to_read,
              const std::string& host_id) {
  if (!host_filter.empty() && host_id != host_filter) return false;
  return !std::binary_search(to_read.begin(), to_read.end(), host_id, std::greater<>());
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
        writer_(
            {[this](const Event* e) { this->StartWrite(e); },
             [this](const grpc::Status& s) { this->Finish(s); }, nullptr,
             [](const Event& e) { return e.SpaceUsedLong(); },
             [hub](size_t queued, bool all) {
               const WatchHub::Options& o = hub->options_;
               return grpc::Status(
                   grpc::StatusCode::RESOURCE_EXHAUSTED,
                   all ? absl::StrCat("watch fell behind: the events unsent to all watchers "
                                      "reached their budget of ",
                                      o.max_total_bytes, " bytes; watch again for a new snapshot")
                       : absl::StrCat("watch fell behind: ", queued,
                                      " bytes of events unsent, above the per-watcher "
                                      "budget of ",
                                      o.max_queued_bytes,
                                      " bytes; watch again for a new snapshot"));
             }},
            hub->options_.max_queued, hub->options_.max_queued_bytes, &hub->budget_) {
    id_ = hub_->Add(this);
  }

  void OnWriteDone(bool ok) override {
    writer_.OnWriteDone(ok);
    if (!ok) {
      writer_.FinishOnce(grpc::Status::CANCELLED);
      return;
    }
    if (snapshotting_.load(std::memory_order_acquire) &&
        writer_.queued_bytes() < hub_->options_.max_queued_bytes / 2) {
      hub_->Wake();
    }
  }
  void OnCancel() override { writer_.FinishOnce(grpc::Status::CANCELLED); }
  void OnDone() override {
    hub_->Remove(id_);
    if (on_done_) on_done_();
    delete this;
  }

  WatchHub::SnapshotStep AdvanceSnapshot(Fleet& fleet, size_t batch, size_t low_water) override;
  bool SendChanges(const FleetChanges& changes, size_t batch) override;

 private:
  // Queues `e`; false (and the call ended) when the watcher fell behind.
  bool Send(Event e) {
    if (!writer_.Enqueue(std::move(e))) return false;  // over a byte budget: ended
    if (writer_.dropped() == 0) return true;
    writer_.FinishOnce(grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED,
                                    BehindMessage(hub_->options_.max_queued)));
    return false;
  }
  // The first step of a snapshot: fixes the hosts to read. False when the
  // watch was ended (an unknown host).
  bool BeginSnapshot(Fleet& fleet);
  // Sends SNAPSHOT_END; the snapshot is over.
  WatchHub::SnapshotStep EndSnapshot() {
    Event end;
    end.set_type(Event::TYPE_SNAPSHOT_END);
    to_read_.clear();
    snapshotting_.store(false, std::memory_order_release);
    return Send(std::move(end)) ? WatchHub::SnapshotStep::kDone : WatchHub::SnapshotStep::kEnded;
  }

  WatchHub* const hub_;
  const std::string host_filter_;
  const std::function<void()> on_done_;
  QueuedStreamWriter<Event> writer_;
  uint64_t id_ = 0;
  // The snapshot's progress; only the hub's thread (under scan_mu_) uses
  // these, except snapshotting_, which OnWriteDone reads.
  bool begun_ = false;
  // Hosts still to read, in descending id order (the next one last);
  // Concerns searches it to filter changes.
  std::vector<std::string> to_read_;
  std::atomic<bool> snapshotting_{true};
};

template <typename Event>
bool WatchReactor<Event>::BeginSnapshot(Fleet& fleet) {
  begun_ = true;
  if (!host_filter_.empty()) {
    if (!fleet.GetHost(host_filter_).ok()) {
      writer_.FinishOnce(
          grpc::Status(grpc::StatusCode::NOT_FOUND,
                       absl::StrCat("host \"", QuoteInput(host_filter_), "\" is not known")));
      return false;
    }
    to_read_ = {host_filter_};
  } else {
    to_read_ = fleet.HostIds();
    std::reverse(to_read_.begin(), to_read_.end());
  }
  return true;
}

template <>
WatchHub::SnapshotStep WatchReactor<v1::VmEvent>::AdvanceSnapshot(Fleet& fleet, size_t batch,
                                                                  size_t low_water) {
  if (!begun_ && !BeginSnapshot(fleet)) return WatchHub::SnapshotStep::kRefused;
  while (!to_read_.empty()) {
    if (writer_.queued_bytes() >= low_water) return WatchHub::SnapshotStep::kMore;
    const std::string host = std::move(to_read_.back());
    to_read_.pop_back();
    // A host gone since the snapshot began has nothing to show.
    absl::StatusOr<std::vector<v1::Vm>> vms = fleet.ListVms(host);
    if (!vms.ok()) continue;
    v1::VmEvent e;
    e.set_type(v1::VmEvent::TYPE_SNAPSHOT);
    for (v1::Vm& vm : *vms) {
      *e.add_vms() = std::move(vm);
      if (static_cast<size_t>(e.vms_size()) == batch) {
        if (!Send(e)) return WatchHub::SnapshotStep::kEnded;
        e.clear_vms();
      }
    }
    if (e.vms_size() > 0 && !Send(std::move(e))) return WatchHub::SnapshotStep::kEnded;
  }
  return EndSnapshot();
}

template <>
bool WatchReactor<v1::VmEvent>::SendChanges(const FleetChanges& changes, size_t batch) {
  if (!begun_) return true;  // its snapshot, still to come, is newer
  v1::VmEvent e;
  e.set_type(v1::VmEvent::TYPE_CHANGES);
  auto full = [&] { return static_cast<size_t>(e.vms_size() + e.removed_size()) >= batch; };
  for (const v1::Vm& vm : changes.vms) {
    if (!Concerns(host_filter_, to_read_, vm.host_id())) continue;
    *e.add_vms() = vm;
    if (full()) {
      if (!Send(e)) return false;
      e.clear_vms();
      e.clear_removed();
    }
  }
  for (const v1::Vm& vm : changes.removed_vms) {
    if (!Concerns(host_filter_, to_read_, vm.host_id())) continue;
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
WatchHub::SnapshotStep WatchReactor<v1::HostEvent>::AdvanceSnapshot(Fleet& fleet, size_t batch,
                                                                    size_t low_water) {
  if (!begun_ && !BeginSnapshot(fleet)) return WatchHub::SnapshotStep::kRefused;
  v1::HostEvent e;
  e.set_type(v1::HostEvent::TYPE_SNAPSHOT);
  while (!to_read_.empty()) {
    if (e.hosts_size() == 0 && writer_.queued_bytes() >= low_water) {
      return WatchHub::SnapshotStep::kMore;
    }
    const std::string host = std::move(to_read_.back());
    to_read_.pop_back();
    absl::StatusOr<v1::Host> h = fleet.GetHost(host);
    if (!h.ok()) continue;  // gone since the snapshot began
    *e.add_hosts() = *std::move(h);
    if (static_cast<size_t>(e.hosts_size()) == batch) {
      if (!Send(e)) return WatchHub::SnapshotStep::kEnded;
      e.clear_hosts();
    }
  }
  if (e.hosts_size() > 0 && !Send(std::move(e))) return WatchHub::SnapshotStep::kEnded;
  return EndSnapshot();
}

template <>
bool WatchReactor<v1::HostEvent>::SendChanges(const FleetChanges& changes, size_t batch) {
  if (!begun_) return true;  // its snapshot, still to come, is newer
  v1::HostEvent e;
  e.set_type(v1::HostEvent::TYPE_CHANGES);
  for (const v1::Host& h : changes.hosts) {
    if (!Concerns("", to_read_, h.host_id())) continue;
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

WatchHub::WatchHub(Fleet* fleet, Clock* clock, Options options,
                   std::function<void()> on_fell_behind)
    : fleet_(fleet),
      clock_(clock),
      options_(options),
      on_fell_behind_(std::move(on_fell_behind)),
      budget_(options.max_total_bytes) {}

WatchHub::~WatchHub() {
  {
    absl::MutexLock lock(&wake_mu_);
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
  uint64_t id;
  {
    absl::MutexLock lock(&mu_);
    id = next_id_++;
    pending_[id] = watcher;
  }
  {
    // Its snapshot starts at once (after a scan), not at the next period.
    absl::MutexLock lock(&wake_mu_);
    wake_ = true;
    fresh_ = true;
  }
  return id;
}

void WatchHub::Remove(uint64_t id) {
  absl::MutexLock lock(&mu_);
  active_.erase(id);
  pending_.erase(id);
}

void WatchHub::Wake() {
  absl::MutexLock lock(&wake_mu_);
  wake_ = true;
}

size_t WatchHub::WatcherCount() const {
  absl::MutexLock lock(&mu_);
  return active_.size() + pending_.size();
}

uint64_t WatchHub::DroppedCount() const {
  absl::MutexLock lock(&mu_);
  return dropped_;
}

void WatchHub::AdvanceSnapshots() {
  for (auto it = pending_.begin(); it != pending_.end();) {
    switch (it->second->AdvanceSnapshot(*fleet_, options_.batch, options_.max_queued_bytes / 2)) {
      case SnapshotStep::kMore:
        ++it;
        break;
      case SnapshotStep::kDone:
        active_[it->first] = it->second;
        it = pending_.erase(it);
        break;
      case SnapshotStep::kEnded:
        ++dropped_;
        if (on_fell_behind_) on_fell_behind_();
        it = pending_.erase(it);  // its OnDone still runs Remove (a no-op then)
        break;
      case SnapshotStep::kRefused:
        it = pending_.erase(it);
        break;
    }
  }
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
  // Without watchers that take changes only the cursor moves (no copies).
  // A watch whose snapshot has begun takes the changes of hosts it read.
  fleet_->CollectChanges(cursor_, any_active || any_pending ? &changes : nullptr);
  absl::MutexLock lock(&mu_);
  if (!changes.vms.empty() || !changes.removed_vms.empty() || !changes.hosts.empty()) {
    for (std::map<uint64_t, Watcher*>* watchers : {&active_, &pending_}) {
      for (auto it = watchers->begin(); it != watchers->end();) {
        if (it->second->SendChanges(changes, options_.batch)) {
          ++it;
          continue;
        }
        ++dropped_;
        if (on_fell_behind_) on_fell_behind_();
        spdlog::warn(
            "a watcher fell behind (more than {} events or {} bytes unsent) and was "
            "dropped",
            options_.max_queued, options_.max_queued_bytes);
        it = watchers->erase(it);  // its OnDone still runs Remove (a no-op then)
      }
    }
  }
  AdvanceSnapshots();
}

void WatchHub::Run() {
  while (true) {
    bool woken;
    bool fresh;
    {
      absl::MutexLock lock(&wake_mu_);
      auto stop_or_wake = [this]()
                              ABSL_EXCLUSIVE_LOCKS_REQUIRED(wake_mu_) { return stop_ || wake_; };
      clock_->AwaitWithDeadline(&wake_mu_, absl::Condition(&stop_or_wake),
                                clock_->MonotonicNow() + options_.period);
      if (stop_) return;
      woken = wake_;
      fresh = fresh_;
      wake_ = false;
      fresh_ = false;
    }
    if (woken && !fresh) {
      // More of the snapshots only: the periodic scan finds the changes.
      absl::MutexLock scan(&scan_mu_);
      absl::MutexLock lock(&mu_);
      AdvanceSnapshots();
    } else {
      ScanNow();
    }
  }
}

}  // namespace membroker::broker

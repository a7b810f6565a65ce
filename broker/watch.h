#pragma once
// WatchVms / WatchHosts: changes only, cheap with many VMs, bounded per
// watcher.
//
//   1. The report path only bumps its host's change counter (Fleet).
//   2. One hub thread scans every `period` while someone watches
//      (Fleet::CollectChanges): hosts whose counter did not move are
//      skipped without a lock; for the others, per-VM fingerprints find
//      the VMs that changed. Only those are copied, once per scan, and
//      sent to every watcher in batches of at most `batch` VMs/hosts.
//   3. A new watcher gets a snapshot, then SNAPSHOT_END, then changes. The
//      snapshot is read host by host, as the watcher drains it: the hub
//      adds hosts while the watcher's unsent events hold less than half
//      its byte budget, and a finished write below that mark wakes the
//      hub for more. So a snapshot of 500 000 VMs is never copied whole,
//      and one that is not read holds at most the budget. While a
//      snapshot runs, the watcher gets the changes of every host except
//      those it has still to read (their snapshot will be newer); scans,
//      deliveries and snapshot reads are serialized (scan_mu_), so no
//      change older than what a watcher was sent reaches it.
//   4. Each watcher's unsent events are bounded: at most `max_queued`
//      events, at most `max_queued_bytes` (memory held, SpaceUsedLong),
//      and all watchers together at most `max_total_bytes`. A watcher
//      whose events would go over any of them has fallen behind and is
//      ended with RESOURCE_EXHAUSTED naming the limit (it may watch again
//      for a new snapshot): nothing is buffered without bound.
//
// Lock order: scan_mu_, then mu_, then a watcher's writer lock or a
// Fleet host lock (a snapshot reads the Fleet under mu_). The Fleet never
// calls the hub. wake_mu_ is a leaf: a gRPC thread takes it alone to wake
// the hub, never waiting on a scan.

#include <grpcpp/support/server_callback.h>

#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "broker/fleet.h"
#include "broker/stream_writer.h"
#include "common/clock.h"
#include "membroker/v1/admin.pb.h"

namespace membroker::broker {

// Thread-safe.
class WatchHub {
 public:
  struct Options {
    absl::Duration period = absl::Milliseconds(200);  // between scans
    size_t max_queued = 1024;  // unsent events per watcher before it is dropped
    size_t batch = 500;        // VMs or hosts per event
    // Memory of unsent events per watcher, and of all watchers together.
    size_t max_queued_bytes = size_t{16} << 20;
    size_t max_total_bytes = size_t{256} << 20;
  };

  // `fleet` and `clock` are not owned and outlive the hub. `on_fell_behind`
  // (may be empty) runs, on the hub's thread, for each watch ended because
  // it fell behind (the broker counts them in
  // membroker_reports_rejected_total{reason="watch_fell_behind"}).
  WatchHub(Fleet* fleet, Clock* clock, Options options,
           std::function<void()> on_fell_behind = nullptr);
  // Stops the scanning thread. Open watches must have ended (the server
  // shut down) before.
  ~WatchHub();

  // Starts the scanning thread.
  void Start();

  // A new watch's reactor (owned by gRPC; it deletes itself when done).
  // `host_filter` empty: every host. `on_done` (may be empty) runs once
  // when the watch has ended.
  grpc::ServerWriteReactor<v1::VmEvent>* WatchVms(const std::string& host_filter,
                                                  std::function<void()> on_done = nullptr);
  grpc::ServerWriteReactor<v1::HostEvent>* WatchHosts(std::function<void()> on_done = nullptr);

  // One scan and delivery now, on the caller's thread (the hub's thread
  // does the same every period). Tests call it to step without waiting.
  void ScanNow();

  // Watches open now (snapshot sent or not).
  size_t WatcherCount() const;
  // Watches ended because they fell behind, since start (not those
  // refused for an unknown host).
  uint64_t DroppedCount() const;
  // Memory held now by all watchers' unsent events.
  size_t QueuedBytes() const { return budget_.used(); }

  // What happened to a watch's snapshot in one step.
  enum class SnapshotStep {
    kMore,     // paused: the watcher holds enough unsent; more hosts to read
    kDone,     // SNAPSHOT_END sent: the watch gets changes only from now on
    kEnded,    // the watch fell behind and was ended
    kRefused,  // the watch was ended: it names a host that is not known
  };

  // A watch as the hub sees it (implemented by the reactors in watch.cc).
  class Watcher {
   public:
    virtual ~Watcher() = default;
    // Reads more of the snapshot from `fleet` (the first call fixes the
    // hosts to read) until the watcher holds `low_water` bytes unsent or
    // every host was read (then SNAPSHOT_END is sent).
    virtual SnapshotStep AdvanceSnapshot(Fleet& fleet, size_t batch, size_t low_water) = 0;
    // Sends what concerns this watch in `changes` (during a snapshot, not
    // the hosts still to be read). Returns false when the watch fell
    // behind and was ended.
    virtual bool SendChanges(const FleetChanges& changes, size_t batch) = 0;
  };

 private:
  uint64_t Add(Watcher* watcher);
  void Remove(uint64_t id);
  void Run();
  // Called by a snapshotting watcher whose unsent events fell below the
  // low-water mark: the hub reads more of its snapshot without waiting
  // for the period. Never blocks on a scan.
  void Wake();
  // Advances every running snapshot; a watch whose snapshot is done
  // becomes active.
  void AdvanceSnapshots() ABSL_EXCLUSIVE_LOCKS_REQUIRED(scan_mu_, mu_);
  template <typename Event>
  friend class WatchReactor;

  Fleet* const fleet_;
  Clock* const clock_;
  const Options options_;
  const std::function<void()> on_fell_behind_;

  absl::Mutex scan_mu_ ABSL_ACQUIRED_BEFORE(mu_);
  WatchCursor cursor_ ABSL_GUARDED_BY(scan_mu_);

  mutable absl::Mutex mu_;
  std::map<uint64_t, Watcher*> active_ ABSL_GUARDED_BY(mu_);
  std::map<uint64_t, Watcher*> pending_ ABSL_GUARDED_BY(mu_);  // snapshot not done yet
  uint64_t next_id_ ABSL_GUARDED_BY(mu_) = 1;
  uint64_t dropped_ ABSL_GUARDED_BY(mu_) = 0;
  SharedByteBudget budget_;

  absl::Mutex wake_mu_;  // a leaf (file comment)
  bool stop_ ABSL_GUARDED_BY(wake_mu_) = false;
  bool wake_ ABSL_GUARDED_BY(wake_mu_) = false;
  bool fresh_ ABSL_GUARDED_BY(wake_mu_) = false;  // a new watch: scan, then snapshot
  std::thread thread_;
};

}  // namespace membroker::broker

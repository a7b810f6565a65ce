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
//   3. A new watcher first gets a snapshot (after a scan, so the changes
//      that follow are relative to it), then SNAPSHOT_END, then changes.
//   4. Each watcher has a QueuedStreamWriter of at most `max_queued`
//      events. One that falls further behind is ended with
//      RESOURCE_EXHAUSTED naming the limit (it may watch again for a new
//      snapshot): nothing is buffered without bound.
//
// Lock order: scan_mu_, then mu_, then a watcher's writer lock or a
// Fleet host lock (a snapshot reads the Fleet under mu_). The Fleet never
// calls the hub.

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
  };

  // `fleet` and `clock` are not owned and outlive the hub.
  WatchHub(Fleet* fleet, Clock* clock, Options options);
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
  // Watches ended because they fell behind, since start.
  uint64_t DroppedCount() const;

  // A watch as the hub sees it (implemented by the reactors in watch.cc).
  class Watcher {
   public:
    virtual ~Watcher() = default;
    // Sends the snapshot, then SNAPSHOT_END. Returns false when the watch
    // was ended instead (too large for its queue, or an unknown host).
    virtual bool SendSnapshot(Fleet& fleet, size_t batch) = 0;
    // Sends what concerns this watch in `changes`. Returns false when the
    // watch fell behind and was ended.
    virtual bool SendChanges(const FleetChanges& changes, size_t batch) = 0;
  };

 private:
  uint64_t Add(Watcher* watcher);
  void Remove(uint64_t id);
  void Run();
  template <typename Event>
  friend class WatchReactor;

  Fleet* const fleet_;
  Clock* const clock_;
  const Options options_;

  absl::Mutex scan_mu_ ABSL_ACQUIRED_BEFORE(mu_);
  WatchCursor cursor_ ABSL_GUARDED_BY(scan_mu_);

  mutable absl::Mutex mu_;
  std::map<uint64_t, Watcher*> active_ ABSL_GUARDED_BY(mu_);
  std::map<uint64_t, Watcher*> pending_ ABSL_GUARDED_BY(mu_);  // snapshot not sent yet
  uint64_t next_id_ ABSL_GUARDED_BY(mu_) = 1;
  uint64_t dropped_ ABSL_GUARDED_BY(mu_) = 0;
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  std::thread thread_;
};

}  // namespace membroker::broker

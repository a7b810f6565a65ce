#include "broker/reservations.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <cctype>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "common/log_limit.h"
#include "common/proto_time.h"
#include "common/units.h"

namespace membroker::broker {
namespace {

constexpr uint64_t kMaxBytes = uint64_t{1} << 50;  // 1 PiB: no host is larger

bool IsUuid(absl::string_view s) {
  if (s.size() != 36) return false;
  for (size_t i = 0; i < s.size(); ++i) {
    const bool dash = i == 8 || i == 13 || i == 18 || i == 23;
    if (dash ? s[i] != '-' : !std::isxdigit(static_cast<unsigned char>(s[i]))) return false;
  }
  return true;
}

absl::Status ValidDuration(const google::protobuf::Duration& d, const char* field,
                           absl::Duration max) {
  if (d.seconds() < 0 || d.nanos() < 0 || d.nanos() >= 1000000000) {
    return absl::InvalidArgumentError(absl::StrCat(field, ": must not be negative"));
  }
  if (FromProto(d) > max) {
    return absl::InvalidArgumentError(absl::StrCat(field, ": at most ", absl::FormatDuration(max)));
  }
  return absl::OkStatus();
}

// The numeric part of an id "r-N" (0 when it has another form).
uint64_t IdNumber(const std::string& id) {
  uint64_t n = 0;
  if (id.rfind("r-", 0) != 0 || !absl::SimpleAtoi(id.substr(2), &n)) return 0;
  return n;
}

}  // namespace

Reservations::Reservations(Clock* clock, Store* store) : clock_(clock), store_(store) {}

Reservations::~Reservations() {
  std::map<uint64_t, Waiter> waiters;
  {
    absl::MutexLock lock(&mu_);
    stop_ = true;
    waiters.swap(waiters_);
    waiting_ = 0;
  }
  if (worker_.joinable()) worker_.join();
  for (auto& [id, w] : waiters) w.done(absl::UnavailableError("the broker is shutting down"));
}

absl::Status Reservations::Load() {
  absl::StatusOr<std::vector<v1::Reservation>> stored = store_->LoadReservations();
  if (!stored.ok()) return stored.status();
  const absl::Time now = clock_->Now();
  for (v1::Reservation& r : *stored) {
    if (FromProto(r.expires_at()) <= now) {
      spdlog::info("reservation {} on host {} expired while the broker was down", r.id(),
                   r.host_id());
      if (absl::Status s = store_->DeleteReservation(r.id()); !s.ok()) return s;
      continue;
    }
    absl::MutexLock lock(&mu_);
    next_id_ = std::max(next_id_, IdNumber(r.id()) + 1);
    reserved_by_host_[r.host_id()] += r.bytes();
    r.set_ready(false);
    by_id_[r.id()] = std::move(r);
  }
  return absl::OkStatus();
}

void Reservations::Start(Fleet* fleet) {
  fleet_ = fleet;
  fleet_->AttachReservations(this);
  worker_ = std::thread([this] { Run(); });
}

absl::Status Reservations::Validate(const v1::ReserveRequest& request) {
  if (absl::Status s = ValidateHostId(request.host_id()); !s.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("host_id: ", s.message()));
  }
  if (request.bytes() == 0) return absl::InvalidArgumentError("bytes: must be greater than 0");
  if (request.bytes() > kMaxBytes) return absl::InvalidArgumentError("bytes: out of range");
  if (absl::Status s = ValidDuration(request.wait(), "wait", kMaxReservationWait); !s.ok()) {
    return s;
  }
  if (absl::Status s = ValidDuration(request.ttl(), "ttl", kMaxReservationTtl); !s.ok()) return s;
  if (request.has_ttl() && FromProto(request.ttl()) < absl::Seconds(1)) {
    return absl::InvalidArgumentError("ttl: at least 1s");
  }
  if (!request.for_vm_id().empty() && !IsUuid(request.for_vm_id())) {
    return absl::InvalidArgumentError("for_vm_id: must be a VM id (UUID)");
  }
  return absl::OkStatus();
}

absl::StatusOr<v1::Reservation> Reservations::Add(const v1::ReserveRequest& request) {
  if (absl::Status s = Validate(request); !s.ok()) return s;
  const absl::Time now = clock_->Now();
  const absl::Duration ttl = request.has_ttl() ? FromProto(request.ttl()) : kDefaultReservationTtl;
  v1::Reservation r;
  {
    absl::MutexLock lock(&mu_);
    r.set_id(absl::StrCat("r-", next_id_++));
  }
  r.set_host_id(request.host_id());
  r.set_bytes(request.bytes());
  *r.mutable_created_at() = ToProtoTimestamp(now);
  *r.mutable_expires_at() = ToProtoTimestamp(now + ttl);
  r.set_for_vm_id(request.for_vm_id());
  if (absl::Status s = store_->PutReservation(r); !s.ok()) return s;
  absl::MutexLock lock(&mu_);
  reserved_by_host_[r.host_id()] += r.bytes();
  by_id_[r.id()] = r;
  // Wakes the worker: its next deadline may now be this expiry.
  dirty_hosts_.insert(r.host_id());
  return r;
}

absl::Status Reservations::Remove(const std::string& id) {
  std::string host;
  {
    absl::MutexLock lock(&mu_);
    auto it = by_id_.find(id);
    if (it == by_id_.end()) {
      return absl::NotFoundError(absl::StrCat("reservation \"", QuoteInput(id),
                                              "\" is not known (released, expired or handed "
                                              "to its VM)"));
    }
    host = it->second.host_id();
    uint64_t& sum = reserved_by_host_[host];
    sum -= std::min(sum, it->second.bytes());
    if (sum == 0) reserved_by_host_.erase(host);
    by_id_.erase(it);
  }
  absl::Status s = store_->DeleteReservation(id);
  if (fleet_) fleet_->RefreshReserved(host);
  return s;
}

std::vector<v1::Reservation> Reservations::List(const std::string& host_id) const {
  std::vector<v1::Reservation> out;
  absl::MutexLock lock(&mu_);
  for (const auto& [id, r] : by_id_) {
    if (host_id.empty() || r.host_id() == host_id) out.push_back(r);
  }
  std::sort(out.begin(), out.end(), [](const v1::Reservation& a, const v1::Reservation& b) {
    const absl::Time ta = FromProto(a.created_at()), tb = FromProto(b.created_at());
    return ta != tb ? ta < tb : IdNumber(a.id()) < IdNumber(b.id());
  });
  return out;
}

uint64_t Reservations::ReservedBytes(const std::string& host_id) const {
  absl::MutexLock lock(&mu_);
  auto it = reserved_by_host_.find(host_id);
  return it == reserved_by_host_.end() ? 0 : it->second;
}

bool Reservations::HandOver(const std::string& host_id,
                            const std::vector<std::string>& new_vm_ids) {
  absl::MutexLock lock(&mu_);
  if (reserved_by_host_.count(host_id) == 0) return false;
  bool any = false;
  for (auto it = by_id_.begin(); it != by_id_.end();) {
    const v1::Reservation& r = it->second;
    if (r.host_id() != host_id || r.for_vm_id().empty() ||
        std::find(new_vm_ids.begin(), new_vm_ids.end(), r.for_vm_id()) == new_vm_ids.end()) {
      ++it;
      continue;
    }
    spdlog::info("reservation {} on host {} handed to VM {} ({})", r.id(), host_id, r.for_vm_id(),
                 FormatBytes(r.bytes()));
    uint64_t& sum = reserved_by_host_[host_id];
    sum -= std::min(sum, r.bytes());
    if (sum == 0) reserved_by_host_.erase(host_id);
    pending_deletes_.push_back(r.id());
    it = by_id_.erase(it);
    any = true;
  }
  return any;
}

std::vector<v1::Reservation> Reservations::ExpireDue() {
  std::vector<v1::Reservation> expired;
  const absl::Time now = clock_->Now();
  {
    absl::MutexLock lock(&mu_);
    for (auto it = by_id_.begin(); it != by_id_.end();) {
      if (FromProto(it->second.expires_at()) > now) {
        ++it;
        continue;
      }
      uint64_t& sum = reserved_by_host_[it->second.host_id()];
      sum -= std::min(sum, it->second.bytes());
      if (sum == 0) reserved_by_host_.erase(it->second.host_id());
      expired.push_back(std::move(it->second));
      it = by_id_.erase(it);
    }
  }
  std::set<std::string> hosts;
  for (const v1::Reservation& r : expired) {
    spdlog::info("reservation {} on host {} ({}) expired", r.id(), r.host_id(),
                 FormatBytes(r.bytes()));
    if (absl::Status s = store_->DeleteReservation(r.id()); !s.ok()) {
      spdlog::error("reservation {}: {}", r.id(), std::string(s.message()));
    }
    hosts.insert(r.host_id());
  }
  if (fleet_) {
    for (const std::string& h : hosts) fleet_->RefreshReserved(h);
  }
  return expired;
}

bool Reservations::Ready(const HostRoom& room) {
  return room.report_sequence > 0 && room.free_bytes() >= room.reserved_bytes;
}

std::string Reservations::CannotFit(const HostRoom& room, uint64_t bytes) {
  const uint64_t others = room.reserved_bytes;
  if (room.held_bytes + others + bytes <= room.capacity_bytes) return "";
  std::string out = absl::StrCat("host capacity ", FormatBytes(room.capacity_bytes),
                                 " cannot hold ", FormatBytes(bytes),
                                 " more: ", FormatBytes(room.held_bytes), " is held by floors");
  if (others > 0) absl::StrAppend(&out, " and ", FormatBytes(others), " by other reservations");
  absl::StrAppend(&out, "; held by ");
  size_t shown = 0;
  for (const HostRoom::Hold& h : room.holds) {
    if (shown == 10) {
      absl::StrAppend(&out, ", and ", room.holds.size() - shown, " more");
      break;
    }
    absl::StrAppend(&out, shown ? ", " : "", h.vm, " ", FormatBytes(h.bytes), " (", h.why, ")");
    ++shown;
  }
  return out;
}

uint64_t Reservations::Reserve(const v1::ReserveRequest& request, Done done) {
  if (fleet_ == nullptr) {
    done(absl::FailedPreconditionError("reservations are not started"));
    return 0;
  }
  if (absl::Status s = Validate(request); !s.ok()) {
    done(s);
    return 0;
  }
  absl::StatusOr<HostRoom> before = fleet_->GetRoom(request.host_id());
  if (!before.ok()) {
    done(before.status());
    return 0;
  }
  if (std::string why = CannotFit(*before, request.bytes()); !why.empty()) {
    done(absl::FailedPreconditionError(why));
    return 0;
  }
  absl::StatusOr<v1::Reservation> added = Add(request);
  if (!added.ok()) {
    done(added.status());
    return 0;
  }
  spdlog::info("reservation {}: {} on host {}{}", added->id(), FormatBytes(added->bytes()),
               added->host_id(),
               added->for_vm_id().empty() ? "" : absl::StrCat(" for VM ", added->for_vm_id()));
  fleet_->RefreshReserved(request.host_id());
  absl::StatusOr<HostRoom> room = fleet_->GetRoom(request.host_id());
  const bool ready = room.ok() && Ready(*room);
  SetReady(added->id(), ready);
  added->set_ready(ready);
  const absl::Duration wait = FromProto(request.wait());
  if (ready || wait <= absl::ZeroDuration()) {
    done(*std::move(added));
    return 0;
  }
  absl::MutexLock lock(&mu_);
  const uint64_t id = next_waiter_++;
  waiters_[id] = {added->id(), added->host_id(), clock_->MonotonicNow() + wait, std::move(done)};
  waiting_ = waiters_.size();
  dirty_hosts_.insert(added->host_id());  // a report may have come in between
  return id;
}

bool Reservations::Cancel(uint64_t waiter) {
  std::string reservation;
  {
    absl::MutexLock lock(&mu_);
    auto it = waiters_.find(waiter);
    if (it == waiters_.end()) return false;
    reservation = it->second.reservation_id;
    waiters_.erase(it);
    waiting_ = waiters_.size();
  }
  spdlog::info("reservation {}: the caller went away while waiting; removed", reservation);
  Remove(reservation).IgnoreError();
  return true;
}

void Reservations::OnReport(const std::string& host_id) {
  if (waiting_.load(std::memory_order_relaxed) == 0) return;
  absl::MutexLock lock(&mu_);
  for (const auto& [id, w] : waiters_) {
    if (w.host_id == host_id) {
      dirty_hosts_.insert(host_id);
      return;
    }
  }
}

size_t Reservations::WaitingCount() const {
  absl::MutexLock lock(&mu_);
  return waiters_.size();
}

void Reservations::SetReady(const std::string& id, bool ready) {
  absl::MutexLock lock(&mu_);
  auto it = by_id_.find(id);
  if (it != by_id_.end()) it->second.set_ready(ready);
}

bool Reservations::HasWorkLocked() const {
  return stop_ || !dirty_hosts_.empty() || !pending_deletes_.empty();
}

absl::Time Reservations::NextDeadlineLocked() const {
  const absl::Time mono = clock_->MonotonicNow();
  absl::Time next = absl::InfiniteFuture();
  for (const auto& [id, w] : waiters_) next = std::min(next, w.deadline);
  const absl::Time wall = clock_->Now();
  for (const auto& [id, r] : by_id_) {
    next = std::min(next, mono + std::max(absl::ZeroDuration(), FromProto(r.expires_at()) - wall));
  }
  // A wall clock jump moves expiries: look again at least every minute.
  return std::min(next, mono + absl::Minutes(1));
}

void Reservations::Run() {
  while (true) {
    std::set<std::string> dirty;
    std::vector<std::string> deletes;
    std::vector<Waiter> due;
    {
      absl::MutexLock lock(&mu_);
      clock_->AwaitWithDeadline(&mu_, absl::Condition(this, &Reservations::HasWorkLocked),
                                NextDeadlineLocked());
      if (stop_) return;
      dirty.swap(dirty_hosts_);
      deletes.swap(pending_deletes_);
      const absl::Time now = clock_->MonotonicNow();
      for (auto it = waiters_.begin(); it != waiters_.end();) {
        if (it->second.deadline > now) {
          ++it;
          continue;
        }
        // Its host's state decides how it fails; look at it first.
        dirty.insert(it->second.host_id);
        ++it;
      }
    }
    for (const std::string& id : deletes) {
      if (absl::Status s = store_->DeleteReservation(id); !s.ok()) {
        spdlog::error("reservation {}: {}", id, std::string(s.message()));
      }
    }
    ExpireDue();
    for (const std::string& host : dirty) CheckHost(host);
  }
}

void Reservations::CheckHost(const std::string& host_id) {
  absl::StatusOr<HostRoom> room = fleet_->GetRoom(host_id);
  const bool ready = room.ok() && Ready(*room);
  std::vector<std::pair<Waiter, v1::Reservation>> met;
  std::vector<std::pair<Waiter, absl::Status>> failed;
  {
    absl::MutexLock lock(&mu_);
    for (auto& [id, r] : by_id_) {
      if (r.host_id() == host_id) r.set_ready(ready);
    }
    const absl::Time now = clock_->MonotonicNow();
    for (auto it = waiters_.begin(); it != waiters_.end();) {
      Waiter& w = it->second;
      if (w.host_id != host_id) {
        ++it;
        continue;
      }
      auto r = by_id_.find(w.reservation_id);
      if (r == by_id_.end()) {
        failed.emplace_back(std::move(w), absl::AbortedError(absl::StrCat(
                                              "reservation ", w.reservation_id,
                                              " ended while waiting (released or expired)")));
      } else if (ready) {
        met.emplace_back(std::move(w), r->second);
      } else if (w.deadline <= now) {
        const uint64_t bytes = r->second.bytes();
        absl::Status why;
        if (!room.ok()) {
          why = room.status();
        } else if (room->held_bytes + room->reserved_bytes > room->capacity_bytes) {
          HostRoom others = *room;
          others.reserved_bytes -= std::min(others.reserved_bytes, bytes);
          why = absl::FailedPreconditionError(absl::StrCat("reservation ", w.reservation_id,
                                                           " not met: ", CannotFit(others, bytes)));
        } else {
          std::string moving;
          for (const std::string& m : room->moving) {
            absl::StrAppend(&moving, moving.empty() ? "" : ", ", m);
          }
          why = absl::DeadlineExceededError(absl::StrCat(
              "reservation ", w.reservation_id, " not met within its wait: host ", host_id,
              room->connected ? "" : " is not connected and", " has ",
              FormatBytes(room->free_bytes()), " free of ", FormatBytes(room->reserved_bytes),
              " reserved",
              moving.empty() ? "" : absl::StrCat("; balloons still above target: ", moving)));
        }
        failed.emplace_back(std::move(w), why);
      } else {
        ++it;
        continue;
      }
      it = waiters_.erase(it);
    }
    waiting_ = waiters_.size();
  }
  for (auto& [w, r] : met) {
    spdlog::info("reservation {} on host {}: room free", r.id(), host_id);
    w.done(r);
  }
  for (auto& [w, status] : failed) {
    spdlog::warn("{}", std::string(status.message()));
    if (!absl::IsAborted(status)) Remove(w.reservation_id).IgnoreError();
    w.done(status);
  }
}

}  // namespace membroker::broker

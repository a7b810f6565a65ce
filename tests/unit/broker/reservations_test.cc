// Reservation bookkeeping: validation, expiry, hand-over to a VM,
// durability across a Store reopen, and the capacity a reservation takes
// from the host's decision. Time is a ManualClock.

#include "broker/reservations.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <random>

#include "broker/policy/host_step.h"
#include "common/proto_time.h"

namespace membroker::broker {
namespace {

constexpr uint64_t kMiB = uint64_t{1} << 20;
constexpr uint64_t kGiB = uint64_t{1} << 30;
constexpr char kVmId[] = "0b2e7f5c-1111-4a4a-9c9c-000000000001";

class ReservationsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::random_device rd;
    dir_ = (std::filesystem::temp_directory_path() /
            ("mb_reservations_test_" + std::to_string(rd()) + std::to_string(::getpid())))
               .string();
    Reopen();
  }
  void TearDown() override {
    book_.reset();
    store_.reset();
    std::filesystem::remove_all(dir_);
  }
  // A fresh Store and book over the same directory (a broker restart).
  void Reopen() {
    book_.reset();
    store_.reset();
    auto s = Store::Open(dir_);
    ASSERT_TRUE(s.ok()) << s.status();
    store_ = std::move(*s);
    book_ = std::make_unique<Reservations>(&clock_, store_.get());
    ASSERT_TRUE(book_->Load().ok());
  }
  static v1::ReserveRequest Request(const std::string& host, uint64_t bytes,
                                    absl::Duration ttl = absl::ZeroDuration(),
                                    const std::string& for_vm = "") {
    v1::ReserveRequest r;
    r.set_host_id(host);
    r.set_bytes(bytes);
    if (ttl > absl::ZeroDuration()) *r.mutable_ttl() = ToProtoDuration(ttl);
    r.set_for_vm_id(for_vm);
    return r;
  }

  ManualClock clock_;
  std::string dir_;
  std::unique_ptr<Store> store_;
  std::unique_ptr<Reservations> book_;
};

TEST_F(ReservationsTest, AddListReleaseAndSums) {
  auto a = book_->Add(Request("h1", 2 * kGiB));
  auto b = book_->Add(Request("h1", 1 * kGiB));
  auto c = book_->Add(Request("h2", 512 * kMiB));
  ASSERT_TRUE(a.ok() && b.ok() && c.ok());
  EXPECT_NE(a->id(), b->id());
  // Default TTL: 10 minutes from now.
  EXPECT_EQ(FromProto(a->expires_at()) - FromProto(a->created_at()), absl::Minutes(10));
  EXPECT_EQ(book_->ReservedBytes("h1"), 3 * kGiB);
  EXPECT_EQ(book_->ReservedBytes("h2"), 512 * kMiB);
  EXPECT_EQ(book_->ReservedBytes("h3"), 0u);
  EXPECT_EQ(book_->List("").size(), 3u);
  ASSERT_EQ(book_->List("h1").size(), 2u);
  EXPECT_EQ(book_->List("h1")[0].id(), a->id());  // oldest first
  ASSERT_TRUE(book_->Remove(a->id()).ok());
  EXPECT_EQ(book_->ReservedBytes("h1"), 1 * kGiB);
  EXPECT_TRUE(absl::IsNotFound(book_->Remove(a->id())));
}

TEST_F(ReservationsTest, BadRequestsChangeNothing) {
  EXPECT_TRUE(absl::IsInvalidArgument(book_->Add(Request("", kGiB)).status()));
  EXPECT_TRUE(absl::IsInvalidArgument(book_->Add(Request("h1", 0)).status()));
  EXPECT_TRUE(absl::IsInvalidArgument(book_->Add(Request("h1", kGiB, absl::Hours(25))).status()));
  EXPECT_TRUE(
      absl::IsInvalidArgument(book_->Add(Request("h1", kGiB, absl::Minutes(1), "vm-1")).status()));
  v1::ReserveRequest negative = Request("h1", kGiB);
  negative.mutable_wait()->set_seconds(-1);
  EXPECT_TRUE(absl::IsInvalidArgument(book_->Add(negative).status()));
  EXPECT_TRUE(book_->List("").empty());
  EXPECT_EQ(book_->ReservedBytes("h1"), 0u);
  Reopen();
  EXPECT_TRUE(book_->List("").empty());
}

TEST_F(ReservationsTest, ExpiresAtItsTtlAndStaysGone) {
  auto r = book_->Add(Request("h1", kGiB, absl::Seconds(60)));
  ASSERT_TRUE(r.ok());
  clock_.Advance(absl::Seconds(59));
  EXPECT_TRUE(book_->ExpireDue().empty());
  EXPECT_EQ(book_->ReservedBytes("h1"), kGiB);
  clock_.Advance(absl::Seconds(1));
  auto expired = book_->ExpireDue();
  ASSERT_EQ(expired.size(), 1u);
  EXPECT_EQ(expired[0].id(), r->id());
  EXPECT_EQ(book_->ReservedBytes("h1"), 0u);
  EXPECT_TRUE(book_->List("").empty());
  Reopen();
  EXPECT_TRUE(book_->List("").empty());
}

TEST_F(ReservationsTest, ExpiredWhileDownIsDroppedOnLoad) {
  ASSERT_TRUE(book_->Add(Request("h1", kGiB, absl::Seconds(30))).ok());
  ASSERT_TRUE(book_->Add(Request("h1", kGiB, absl::Seconds(300))).ok());
  clock_.Advance(absl::Seconds(31));
  Reopen();
  ASSERT_EQ(book_->List("").size(), 1u);
  EXPECT_EQ(book_->ReservedBytes("h1"), kGiB);
}

TEST_F(ReservationsTest, SurvivesAStoreReopen) {
  auto r = book_->Add(Request("h1", 3 * kGiB, absl::Minutes(5), kVmId));
  ASSERT_TRUE(r.ok());
  Reopen();
  auto list = book_->List("");
  ASSERT_EQ(list.size(), 1u);
  EXPECT_EQ(list[0].id(), r->id());
  EXPECT_EQ(list[0].bytes(), 3 * kGiB);
  EXPECT_EQ(list[0].for_vm_id(), kVmId);
  EXPECT_EQ(FromProto(list[0].expires_at()), FromProto(r->expires_at()));
  EXPECT_EQ(book_->ReservedBytes("h1"), 3 * kGiB);
  // A new reservation after the restart gets a new id.
  auto next = book_->Add(Request("h1", kGiB));
  ASSERT_TRUE(next.ok());
  EXPECT_NE(next->id(), r->id());
}

TEST_F(ReservationsTest, HandedToItsVmOnItsHostOnly) {
  auto mine = book_->Add(Request("h1", 2 * kGiB, absl::Minutes(5), kVmId));
  auto other = book_->Add(Request("h1", kGiB));
  ASSERT_TRUE(mine.ok() && other.ok());
  // Another VM, or the same VM on another host, takes nothing.
  EXPECT_FALSE(book_->HandOver("h1", {"0b2e7f5c-1111-4a4a-9c9c-000000000002"}));
  EXPECT_FALSE(book_->HandOver("h2", {kVmId}));
  EXPECT_EQ(book_->ReservedBytes("h1"), 3 * kGiB);
  EXPECT_TRUE(book_->HandOver("h1", {"x", kVmId}));
  EXPECT_EQ(book_->ReservedBytes("h1"), kGiB);
  ASSERT_EQ(book_->List("").size(), 1u);
  EXPECT_EQ(book_->List("")[0].id(), other->id());
}

// The decision sees capacity net of reservations; floors and steps hold.
TEST(ReservedCapacityTest, ReservationLowersTheDecisionsCapacity) {
  policy::PolicySet p;
  p.params.buffer_percent = 0;
  p.params.host_free_margin_bytes = 0;
  p.params.hysteresis_bytes = 0;
  p.params.hysteresis_percent = 0;
  p.params.idle_tax_percent = 0;
  p.params.default_min_bytes = 256 * kMiB;
  p.params.reclaim_step_bytes = 1 * kGiB;
  p.params.surplus_percent = 100;
  p.demand.protect_margin_percent = 0;
  policy::HostStepState state;
  policy::HostObservation obs;
  obs.capacity_bytes = 8 * kGiB;
  auto vm = [](const std::string& id, uint64_t used) {
    policy::VmObservation o;
    o.vm_id = id;
    o.max_bytes = 4 * kGiB;
    o.actual_bytes = 4 * kGiB;
    o.guest.stats_valid = true;
    o.guest.total_bytes = 4 * kGiB;
    o.guest.available_bytes = 4 * kGiB - used;
    return o;
  };
  obs.vms = {vm("a", 1 * kGiB), vm("b", 1 * kGiB)};
  policy::ObserveHost(obs, p.demand, state);
  policy::DecideStep(p, state);
  // 8 GiB for two 4 GiB VMs: surplus 100 % keeps both at max.
  EXPECT_EQ(state.decision.target_bytes, 8 * kGiB);
  // Capacity 8 - 4 = 4 GiB, reached in 1 GiB reclaim steps per VM:
  // 3 + 3 = 6 GiB, then 2 + 2 = 4 GiB.
  state.reserved_bytes = 4 * kGiB;
  obs.now_seconds = 1;
  policy::ObserveHost(obs, p.demand, state);
  policy::DecideStep(p, state);
  EXPECT_EQ(state.vms.at("a").decision.target_bytes, 3 * kGiB);
  EXPECT_EQ(state.vms.at("b").decision.target_bytes, 3 * kGiB);
  obs.now_seconds = 2;
  policy::ObserveHost(obs, p.demand, state);
  policy::DecideStep(p, state);
  EXPECT_EQ(state.vms.at("a").decision.target_bytes, 2 * kGiB);
  EXPECT_EQ(state.decision.target_bytes, 4 * kGiB);
  EXPECT_FALSE(state.decision.overcommitted);
  // More than the floors allow: they hold (1 GiB used each), overcommitted.
  state.reserved_bytes = 7 * kGiB;
  for (int i = 3; i <= 5; ++i) {
    obs.now_seconds = i;
    policy::ObserveHost(obs, p.demand, state);
    policy::DecideStep(p, state);
  }
  EXPECT_GE(state.vms.at("a").decision.target_bytes, 1 * kGiB);
  EXPECT_GE(state.vms.at("b").decision.target_bytes, 1 * kGiB);
  EXPECT_TRUE(state.decision.overcommitted);
}

}  // namespace
}  // namespace membroker::broker

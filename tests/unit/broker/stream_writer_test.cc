// The queued stream writer: one write in flight, supersession, bounds,
// finish after the write in flight. Hooks stand in for the reactor.

#include "broker/stream_writer.h"

#include <string>
#include <vector>

#include <gtest/gtest.h>

namespace membroker::broker {
namespace {

struct Msg {
  std::string kind;  // "welcome", "targets", "decision"
  int n = 0;
};

class StreamWriterTest : public ::testing::Test {
 protected:
  QueuedStreamWriter<Msg>::Hooks Hooks(bool supersede) {
    QueuedStreamWriter<Msg>::Hooks h;
    h.start_write = [this](const Msg* m) { started_.push_back(m->kind + std::to_string(m->n)); };
    h.finish = [this](const grpc::Status& s) { finished_.push_back(s.error_code()); };
    if (supersede) {
      h.supersedes = [](const Msg& last, const Msg& in) {
        return last.kind == "targets" && in.kind == "targets";
      };
    }
    return h;
  }
  std::vector<std::string> started_;
  std::vector<grpc::StatusCode> finished_;
};

TEST_F(StreamWriterTest, OneWriteInFlightAndNewerSnapshotsReplaceQueuedOnes) {
  QueuedStreamWriter<Msg> w(Hooks(true), 16);
  EXPECT_TRUE(w.Enqueue({"targets", 1}));
  EXPECT_TRUE(w.Enqueue({"targets", 2}));
  EXPECT_TRUE(w.Enqueue({"targets", 3}));  // replaces 2, still unsent
  EXPECT_TRUE(w.EnqueueFront({"welcome", 0}));
  // Only the first write started so far.
  EXPECT_EQ(started_, std::vector<std::string>({"targets1"}));
  w.OnWriteDone(true);
  w.OnWriteDone(true);
  w.OnWriteDone(true);
  EXPECT_EQ(started_, std::vector<std::string>({"targets1", "welcome0", "targets3"}));
  EXPECT_TRUE(finished_.empty());
}

TEST_F(StreamWriterTest, BoundedQueueDropsTheOldest) {
  QueuedStreamWriter<Msg> w(Hooks(false), 2);
  for (int i = 1; i <= 5; ++i) w.Enqueue({"decision", i});
  // 1 in flight; queue holds at most 2: 2, 3, 4 dropped down to 4, 5.
  EXPECT_EQ(w.dropped(), 2u);
  w.OnWriteDone(true);
  w.OnWriteDone(true);
  EXPECT_EQ(started_, std::vector<std::string>({"decision1", "decision4", "decision5"}));
}

TEST_F(StreamWriterTest, FinishWaitsForTheWriteInFlightAndHappensOnce) {
  QueuedStreamWriter<Msg> w(Hooks(false), 8);
  w.Enqueue({"decision", 1});
  w.Enqueue({"decision", 2});
  w.FinishOnce(grpc::Status::CANCELLED);
  w.FinishOnce(grpc::Status::OK);
  EXPECT_TRUE(finished_.empty());  // a write is in flight
  EXPECT_FALSE(w.Enqueue({"decision", 3}));
  w.OnWriteDone(true);
  ASSERT_EQ(finished_.size(), 1u);
  EXPECT_EQ(finished_[0], grpc::StatusCode::CANCELLED);
  EXPECT_EQ(started_, std::vector<std::string>({"decision1"}));  // 2 was dropped
}

// Byte budgets: a stream whose unsent messages would go over its own
// budget, or over the budget shared with other streams, is finished with
// the overflow status; the bytes it held go back to the shared budget.
TEST_F(StreamWriterTest, ByteBudgetsFinishAStreamThatFallsBehind) {
  SharedByteBudget shared(250);
  std::vector<std::pair<size_t, bool>> overflows;
  auto hooks = [&] {
    QueuedStreamWriter<Msg>::Hooks h = Hooks(false);
    h.byte_size = [](const Msg& m) { return static_cast<size_t>(m.n); };
    h.overflow = [&overflows](size_t queued, bool all) {
      overflows.emplace_back(queued, all);
      return grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED, "fell behind");
    };
    return h;
  };
  {
    QueuedStreamWriter<Msg> a(hooks(), 1024, /*max_queued_bytes=*/100, &shared);
    EXPECT_TRUE(a.Enqueue({"decision", 10}));  // in flight: not counted
    EXPECT_TRUE(a.Enqueue({"decision", 60}));
    EXPECT_TRUE(a.Enqueue({"decision", 40}));
    EXPECT_EQ(a.queued_bytes(), 100u);
    EXPECT_EQ(shared.used(), 100u);
    a.OnWriteDone(true);  // 60 goes out: 40 left
    EXPECT_EQ(a.queued_bytes(), 40u);
    EXPECT_EQ(shared.used(), 40u);
    EXPECT_TRUE(a.Enqueue({"decision", 50}));
    EXPECT_FALSE(a.Enqueue({"decision", 20}));  // 110 > 100: fell behind
    ASSERT_EQ(overflows.size(), 1u);
    EXPECT_EQ(overflows[0], std::make_pair(size_t{110}, false));
    EXPECT_EQ(shared.used(), 0u);    // its unsent bytes went back
    EXPECT_TRUE(finished_.empty());  // after the write in flight
    a.OnWriteDone(true);
    ASSERT_EQ(finished_.size(), 1u);
    EXPECT_EQ(finished_[0], grpc::StatusCode::RESOURCE_EXHAUSTED);
    EXPECT_FALSE(a.Enqueue({"decision", 1}));
  }
  // The shared budget: two streams within their own budgets, over it
  // together.
  QueuedStreamWriter<Msg> b(hooks(), 1024, 200, &shared);
  QueuedStreamWriter<Msg> c(hooks(), 1024, 200, &shared);
  b.Enqueue({"decision", 1});
  c.Enqueue({"decision", 1});
  EXPECT_TRUE(b.Enqueue({"decision", 150}));
  EXPECT_TRUE(c.Enqueue({"decision", 100}));
  EXPECT_FALSE(c.Enqueue({"decision", 50}));  // 300 > 250 in total
  ASSERT_EQ(overflows.size(), 2u);
  EXPECT_TRUE(overflows[1].second);
  EXPECT_EQ(shared.used(), 150u);  // b's bytes only
}

TEST_F(StreamWriterTest, FinishWithNothingInFlightIsImmediate) {
  QueuedStreamWriter<Msg> w(Hooks(false), 8);
  w.FinishOnce(grpc::Status::OK);
  EXPECT_EQ(finished_.size(), 1u);
}

}  // namespace
}  // namespace membroker::broker

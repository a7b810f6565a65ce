// LogLimiter and the summarising helpers: what one message or a flood of
// them can make a daemon log is bounded.

#include "common/log_limit.h"

#include <gtest/gtest.h>

namespace membroker {
namespace {

TEST(LogLimitTest, TruncateCutsLongTextAndMarksIt) {
  EXPECT_EQ(Truncate("short", 10), "short");
  EXPECT_EQ(Truncate(std::string(10000, 'x'), 8), "xxxxxxxx...");
  // "aé" is 3 bytes; a cut at 2 would split the é.
  EXPECT_EQ(Truncate("a\xc3\xa9zzz", 2), "a...");
}

TEST(LogLimitTest, QuoteInputKeepsShortTextAndCutsLongTextWithItsSize) {
  EXPECT_EQ(QuoteInput("vm-1"), "vm-1");
  EXPECT_EQ(QuoteInput(std::string(64, 'a')), std::string(64, 'a'));
  EXPECT_EQ(QuoteInput(std::string(10000, 'x'), 8), "xxxxxxxx...(10000 bytes)");
  EXPECT_LT(QuoteInput(std::string(10000, 'x')).size(), 100u);
  // Control characters are not echoed.
  EXPECT_EQ(QuoteInput("a\nb\x01"), "a?b?");
  // A cut never splits a UTF-8 character: "\xc3\xa9" is one.
  EXPECT_EQ(QuoteInput("ab\xc3\xa9"
                       "cd",
                       3),
            "ab...(6 bytes)");
}

TEST(LogLimitTest, SummarizeNamesAFewItemsAndCountsTheRest) {
  std::vector<std::pair<std::string, std::string>> items;
  for (int i = 0; i < 10000; ++i) items.emplace_back("vm-" + std::to_string(i), "stuck");
  const std::string s = SummarizeItems(items, 3, 64);
  EXPECT_EQ(s, "vm-0: stuck; vm-1: stuck; vm-2: stuck (+9997 more)");
  EXPECT_EQ(SummarizeItems({{"a", std::string(500, 'e')}}, 3, 4), "a: eeee...");
  EXPECT_EQ(SummarizeItems({}, 3, 4), "");
}

TEST(LogLimitTest, AllowsABurstPerWindowAndCountsWhatItHeldBack) {
  ManualClock clock;
  LogLimiter limiter(&clock, 3, absl::Seconds(10));
  uint64_t suppressed = 99;
  for (int i = 0; i < 3; ++i) {
    EXPECT_TRUE(limiter.Allow("host-a", &suppressed));
    EXPECT_EQ(suppressed, 0u);
  }
  for (int i = 0; i < 1000; ++i) EXPECT_FALSE(limiter.Allow("host-a", &suppressed));
  // Another key has its own budget.
  EXPECT_TRUE(limiter.Allow("host-b", &suppressed));
  EXPECT_EQ(limiter.suppressed_total(), 1000u);
  clock.Advance(absl::Seconds(10));
  ASSERT_TRUE(limiter.Allow("host-a", &suppressed));
  EXPECT_EQ(suppressed, 1000u);  // the next line says how many were held back
  EXPECT_TRUE(limiter.Allow("host-a", &suppressed));
  EXPECT_EQ(suppressed, 0u);
}

TEST(LogLimitTest, TooManyKeysShareOneBudget) {
  ManualClock clock;
  LogLimiter limiter(&clock, 1, absl::Seconds(10), /*max_keys=*/2);
  EXPECT_TRUE(limiter.Allow("a"));
  EXPECT_TRUE(limiter.Allow("b"));
  // Every further key (an attacker's made-up names) lands in one shared slot.
  EXPECT_TRUE(limiter.Allow("c"));
  EXPECT_FALSE(limiter.Allow("d"));
  EXPECT_FALSE(limiter.Allow("e"));
}

}  // namespace
}  // namespace membroker

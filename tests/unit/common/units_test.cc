// Sizes as operators write them and as the daemons print them.

#include "common/units.h"

#include <gtest/gtest.h>

#include <cmath>

namespace membroker {
namespace {

TEST(UnitsTest, ParsesUnits) {
  EXPECT_EQ(*ParseBytes("512MiB"), uint64_t{512} << 20);
  EXPECT_EQ(*ParseBytes("4GiB"), uint64_t{4} << 30);
  EXPECT_EQ(*ParseBytes("1.5G"), uint64_t{1500000000});
  EXPECT_EQ(*ParseBytes("2PiB"), uint64_t{2} << 50);
  EXPECT_EQ(*ParseBytes("3P"), uint64_t{3000000000000000});
  EXPECT_FALSE(ParseBytes("1EiB").ok());
  EXPECT_FALSE(ParseBytes("-1").ok());
  EXPECT_FALSE(ParseBytes("").ok());
  EXPECT_FALSE(ParseBytes("9000PiB").ok());  // above 2^63
}

// Found by fuzz_size (tests/fuzz/regressions/size/format_pib_does_not_parse):
// "0.999999999512M" is 999999999512000000 bytes, which FormatBytes printed
// as "888.18 PiB", a unit ParseBytes did not know.
TEST(UnitsTest, WhatFormatBytesPrintsParsesBack) {
  for (uint64_t v : {uint64_t{0}, uint64_t{1023}, uint64_t{1} << 20, uint64_t{3} << 40,
                     uint64_t{999999999512000000}, uint64_t{1} << 62}) {
    const std::string shown = FormatBytes(v);
    auto back = ParseBytes(shown);
    ASSERT_TRUE(back.ok()) << v << " -> " << shown << ": " << back.status();
    EXPECT_LE(std::fabs(static_cast<double>(*back) - static_cast<double>(v)),
              static_cast<double>(v) * 0.005 + 1)
        << v << " -> " << shown;
  }
}

}  // namespace
}  // namespace membroker

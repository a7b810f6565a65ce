#include "node-agent/host_probe.h"

#include <map>
#include <string>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

namespace membroker::agent {
namespace {

using ::testing::HasSubstr;

constexpr char kMeminfo[] =
    "MemTotal:       16318208 kB\n"
    "MemFree:         1234567 kB\n"
    "MemAvailable:    8159104 kB\n"
    "Buffers:          123456 kB\n"
    "SwapTotal:       2097148 kB\n"
    "SwapFree:        1048574 kB\n"
    "HugePages_Total:       0\n";

constexpr char kPsi[] =
    "some avg10=1.50 avg60=0.75 avg300=0.10 total=2500000\n"
    "full avg10=0.25 avg60=0.00 avg300=0.00 total=500000\n";

FileReader MapReader(std::map<std::string, std::string> files) {
  return [files](const std::string& path) -> absl::StatusOr<std::string> {
    auto it = files.find(path);
    if (it == files.end()) return absl::NotFoundError(path);
    return it->second;
  };
}

TEST(ParseMemInfoTest, ReadsFieldsInBytes) {
  absl::StatusOr<MemInfo> info = ParseMemInfo(kMeminfo);
  ASSERT_TRUE(info.ok()) << info.status();
  EXPECT_EQ(info->mem_total_bytes, uint64_t{16318208} * 1024);
  EXPECT_EQ(info->mem_available_bytes, uint64_t{8159104} * 1024);
  EXPECT_EQ(info->swap_total_bytes, uint64_t{2097148} * 1024);
  EXPECT_EQ(info->swap_free_bytes, uint64_t{1048574} * 1024);
}

TEST(ParseMemInfoTest, SwapIsOptional) {
  absl::StatusOr<MemInfo> info = ParseMemInfo("MemTotal: 100 kB\nMemAvailable: 50 kB\n");
  ASSERT_TRUE(info.ok()) << info.status();
  EXPECT_EQ(info->swap_total_bytes, 0u);
}

struct BadMeminfo {
  const char* text;
  const char* expected;
};

class ParseMemInfoBadTest : public ::testing::TestWithParam<BadMeminfo> {};

TEST_P(ParseMemInfoBadTest, RejectsWithFieldName) {
  absl::StatusOr<MemInfo> info = ParseMemInfo(GetParam().text);
  ASSERT_FALSE(info.ok());
  EXPECT_EQ(info.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(info.status().message()), HasSubstr(GetParam().expected));
}

INSTANTIATE_TEST_SUITE_P(
    Garbage, ParseMemInfoBadTest,
    ::testing::Values(BadMeminfo{"", "MemTotal missing"},
                      BadMeminfo{"MemTotal: 100 kB\n", "MemAvailable missing"},
                      BadMeminfo{"MemTotal: lots kB\nMemAvailable: 1 kB\n", "MemTotal"},
                      BadMeminfo{"MemTotal: 100 MB\nMemAvailable: 1 kB\n", "unknown unit"},
                      BadMeminfo{"MemTotal: 100 kB\nMemAvailable: 200 kB\n", "above MemTotal"},
                      BadMeminfo{"MemTotal: -5 kB\nMemAvailable: 1 kB\n", "MemTotal"},
                      BadMeminfo{"MemTotal: 99999999999999999999 kB\nMemAvailable: 1 kB\n",
                                 "MemTotal"},
                      BadMeminfo{"MemTotal: 18014398509481984 kB\nMemAvailable: 1 kB\n",
                                 "overflows"},
                      BadMeminfo{"MemTotal: 100 kB\nMemTotal: 100 kB\nMemAvailable: 1 kB\n",
                                 "twice"},
                      BadMeminfo{"MemTotal: 0 kB\nMemAvailable: 0 kB\n", "MemTotal is 0"},
                      BadMeminfo{"MemTotal: 100 kB\nMemAvailable: 1 kB\nSwapTotal: 1 kB\n"
                                 "SwapFree: 2 kB\n",
                                 "SwapFree"}));

TEST(ParseMemoryPressureTest, ReadsSomeAndFull) {
  absl::StatusOr<MemoryPressure> psi = ParseMemoryPressure(kPsi);
  ASSERT_TRUE(psi.ok()) << psi.status();
  EXPECT_DOUBLE_EQ(psi->some_avg10_percent, 1.5);
  EXPECT_DOUBLE_EQ(psi->full_avg10_percent, 0.25);
  EXPECT_DOUBLE_EQ(psi->some_seconds_total, 2.5);
  EXPECT_DOUBLE_EQ(psi->full_seconds_total, 0.5);
}

TEST(ParseMemoryPressureTest, FullIsOptional) {
  absl::StatusOr<MemoryPressure> psi =
      ParseMemoryPressure("some avg10=3.00 avg60=0.00 avg300=0.00 total=7\n");
  ASSERT_TRUE(psi.ok()) << psi.status();
  EXPECT_DOUBLE_EQ(psi->some_avg10_percent, 3.0);
  EXPECT_DOUBLE_EQ(psi->full_avg10_percent, 0);
}

TEST(ParseMemoryPressureTest, RejectsGarbage) {
  for (const char* text : {"", "garbage\n", "some avg10=abc avg60=0 avg300=0 total=1\n",
                           "some avg10=150 avg60=0 avg300=0 total=1\n",
                           "some avg10=1.0 avg60=0 avg300=0 total=-1\n",
                           "some avg10=1.0 avg60=0 avg300=0\n", "some avg60=0 total=1\n",
                           "some avg10=nan avg60=0 avg300=0 total=1\n",
                           "full avg10=1.0 avg60=0 avg300=0 total=1\n"}) {
    absl::StatusOr<MemoryPressure> psi = ParseMemoryPressure(text);
    EXPECT_EQ(psi.status().code(), absl::StatusCode::kInvalidArgument) << text;
    if (!psi.ok()) {
      EXPECT_THAT(std::string(psi.status().message()), HasSubstr("/proc/pressure/memory")) << text;
    }
  }
}

TEST(HostProbeTest, ReadsBothFiles) {
  HostProbe probe(MapReader({{"/proc/meminfo", kMeminfo}, {"/proc/pressure/memory", kPsi}}));
  absl::StatusOr<HostMemorySample> sample = probe.Read();
  ASSERT_TRUE(sample.ok()) << sample.status();
  EXPECT_TRUE(sample->pressure_available);
  EXPECT_DOUBLE_EQ(sample->pressure.some_avg10_percent, 1.5);
  EXPECT_EQ(sample->meminfo.mem_total_bytes, uint64_t{16318208} * 1024);
}

TEST(HostProbeTest, MissingPsiIsFine) {
  HostProbe probe(MapReader({{"/proc/meminfo", kMeminfo}}));
  absl::StatusOr<HostMemorySample> sample = probe.Read();
  ASSERT_TRUE(sample.ok()) << sample.status();
  EXPECT_FALSE(sample->pressure_available);
  EXPECT_DOUBLE_EQ(sample->pressure.some_avg10_percent, 0);
}

TEST(HostProbeTest, MissingMeminfoIsAnError) {
  HostProbe probe(MapReader({}));
  EXPECT_EQ(probe.Read().status().code(), absl::StatusCode::kNotFound);
}

TEST(HostProbeTest, MalformedPsiIsAnError) {
  HostProbe probe(MapReader({{"/proc/meminfo", kMeminfo}, {"/proc/pressure/memory", "x"}}));
  EXPECT_EQ(probe.Read().status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(HostProbeTest, ProcRootIsConfigurable) {
  HostProbe probe(MapReader({{"/fake/meminfo", kMeminfo}}), "/fake");
  EXPECT_TRUE(probe.Read().ok());
}

TEST(HostProbeTest, RealProcParses) {
  // This machine's own /proc must parse (Linux only).
  HostProbe probe(RealFileReader());
  absl::StatusOr<HostMemorySample> sample = probe.Read();
  ASSERT_TRUE(sample.ok()) << sample.status();
  EXPECT_GT(sample->meminfo.mem_total_bytes, 0u);
}

TEST(SimHostSampleTest, AvailableIsTotalMinusActual) {
  std::vector<VmStatus> vms(2);
  vms[0].actual_bytes = 3;
  vms[1].actual_bytes = 4;
  HostMemorySample s = SimHostSample(10, vms);
  EXPECT_EQ(s.meminfo.mem_total_bytes, 10u);
  EXPECT_EQ(s.meminfo.mem_available_bytes, 3u);
  vms[1].actual_bytes = 40;
  EXPECT_EQ(SimHostSample(10, vms).meminfo.mem_available_bytes, 0u);
  EXPECT_FALSE(s.pressure_available);
}

}  // namespace
}  // namespace membroker::agent

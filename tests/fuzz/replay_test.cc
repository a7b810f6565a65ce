// Runs one fuzz target (linked beside this file) on every input kept in
// the repository for it: its corpus (tests/fuzz/corpus/NAME) and the inputs
// that once broke it (tests/fuzz/regressions/NAME). Built by every build
// with the normal compiler, so the corpus and each crash found by the
// fuzzer stay regression tests without clang. A broken invariant aborts
// the test (FUZZ_CHECK).

#include <gtest/gtest.h>

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size);

namespace {

std::vector<std::filesystem::path> Inputs(const std::string& dir) {
  std::vector<std::filesystem::path> out;
  std::error_code ec;
  if (!std::filesystem::is_directory(dir, ec)) return out;
  for (const auto& e : std::filesystem::directory_iterator(dir)) {
    if (e.is_regular_file()) out.push_back(e.path());
  }
  std::sort(out.begin(), out.end());
  return out;
}

void RunAll(const std::vector<std::filesystem::path>& inputs) {
  for (const auto& path : inputs) {
    SCOPED_TRACE(path.string());
    std::ifstream in(path, std::ios::binary);
    std::stringstream buffer;
    buffer << in.rdbuf();
    const std::string bytes = buffer.str();
    EXPECT_EQ(LLVMFuzzerTestOneInput(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size()),
              0);
  }
}

TEST(FuzzReplayTest, Corpus) {
  const auto inputs = Inputs(MB_FUZZ_CORPUS);
  ASSERT_FALSE(inputs.empty()) << "no corpus in " << MB_FUZZ_CORPUS;
  RunAll(inputs);
}

TEST(FuzzReplayTest, Regressions) { RunAll(Inputs(MB_FUZZ_REGRESSIONS)); }

}  // namespace

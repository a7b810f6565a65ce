#include "sim/sim_host.h"

#include <gtest/gtest.h>

#include "common/textproto.h"

namespace membroker::sim {
namespace {

using membroker::v1::SimConfig;

constexpr uint64_t kMiB = uint64_t{1} << 20;
constexpr uint64_t kGiB = uint64_t{1} << 30;

SimConfig Parse(const std::string& text) {
  SimConfig c;
  absl::Status s = ParseTextProto(text, "test", &c);
  EXPECT_TRUE(s.ok()) << s;
  return c;
}

// One 2 GiB guest: kernel 64 MiB, working set 512 MiB, 1 GiB of page cache
// wanted, 1 GiB of swap.
SimConfig OneGuest(const std::string& extra = "") {
  return Parse(absl::StrCat(R"(
    host_total_bytes: 8589934592
    seed: 1
    vms {
      name: "g1"
      max_bytes: 2147483648
      kernel_bytes: 67108864
      page_cache_bytes: 1073741824
      swap_bytes: 1073741824
      workload { constant { working_set_bytes: 536870912 } }
      )", extra, "\n}"));
}

std::unique_ptr<SimHost> Make(const SimConfig& c) {
  auto host = SimHost::Create(c);
  EXPECT_TRUE(host.ok()) << host.status();
  return host.ok() ? std::move(host).value() : nullptr;
}

TEST(SimHostTest, BootsAtMaxAndReportsLikeAVirtioBalloon) {
  auto host = Make(OneGuest());
  ASSERT_NE(host, nullptr);
  host->Advance(absl::Seconds(30));  // cache fills at 64 MiB/s: full by 16 s
  const SimVmState& vm = host->vms()[0];
  EXPECT_TRUE(vm.running);
  EXPECT_EQ(vm.vm_id, DeriveVmId("g1"));
  EXPECT_EQ(vm.actual_bytes, 2 * kGiB);
  EXPECT_EQ(vm.total_bytes, 2 * kGiB);
  EXPECT_EQ(vm.disk_caches_bytes, 1 * kGiB);
  // free = 2048 - 576 - 1024 = 448 MiB; available = free + cache.
  EXPECT_EQ(vm.free_bytes, 448 * kMiB);
  EXPECT_EQ(vm.available_bytes, 448 * kMiB + kGiB);
  EXPECT_EQ(vm.working_set_bytes, 576 * kMiB);
  EXPECT_EQ(vm.deficit_bytes, 0u);
  EXPECT_EQ(vm.swap_in_bytes_total, 0u);
  EXPECT_GT(vm.minor_faults_total, 0u);
  EXPECT_EQ(host->host_used_bytes(), 2 * kGiB);
  EXPECT_EQ(host->elapsed(), absl::Seconds(30));
}

TEST(SimHostTest, BalloonMovesAtItsRateAndStopsAtTheKernel) {
  auto host = Make(OneGuest());
  ASSERT_NE(host, nullptr);
  const std::string id = host->vms()[0].vm_id;
  ASSERT_TRUE(host->SetTarget(id, kGiB).ok());
  host->Advance(absl::Seconds(1));  // 512 MiB/s: half way
  EXPECT_EQ(host->vms()[0].actual_bytes, 1536 * kMiB);
  host->Advance(absl::Seconds(1));
  EXPECT_EQ(host->vms()[0].actual_bytes, kGiB);
  ASSERT_TRUE(host->SetTarget(id, 1).ok());
  EXPECT_EQ(host->vms()[0].target_bytes, kMiB);  // clamped to 1 MiB
  host->Advance(absl::Seconds(5));
  EXPECT_EQ(host->vms()[0].actual_bytes, 64 * kMiB);  // never below the kernel
  ASSERT_TRUE(host->SetTarget(id, 100 * kGiB).ok());
  EXPECT_EQ(host->vms()[0].target_bytes, 2 * kGiB);  // clamped to max
  EXPECT_EQ(host->SetTarget("nope", kGiB).code(), absl::StatusCode::kNotFound);
}

TEST(SimHostTest, CustomBalloonRate) {
  SimConfig c = OneGuest();
  c.set_balloon_rate_bytes_per_second(128 * kMiB);
  auto host = Make(c);
  ASSERT_NE(host, nullptr);
  ASSERT_TRUE(host->SetTarget(host->vms()[0].vm_id, kGiB).ok());
  host->Advance(absl::Seconds(2));
  EXPECT_EQ(host->vms()[0].actual_bytes, 2 * kGiB - 256 * kMiB);
}

TEST(SimHostTest, PageCacheIsGivenUpFirst) {
  auto host = Make(OneGuest());
  ASSERT_NE(host, nullptr);
  host->Advance(absl::Seconds(30));
  ASSERT_TRUE(host->SetTarget(host->vms()[0].vm_id, kGiB).ok());
  host->Advance(absl::Seconds(10));
  const SimVmState& vm = host->vms()[0];
  EXPECT_EQ(vm.actual_bytes, kGiB);
  // 1024 - 576 = 448 MiB left; all of it is cache, nothing swapped.
  EXPECT_EQ(vm.disk_caches_bytes, 448 * kMiB);
  EXPECT_EQ(vm.free_bytes, 0u);
  EXPECT_EQ(vm.available_bytes, 448 * kMiB);
  EXPECT_EQ(vm.deficit_bytes, 0u);
  EXPECT_EQ(vm.swap_in_bytes_total, 0u);
  EXPECT_EQ(vm.swap_out_bytes_total, 0u);
  EXPECT_EQ(vm.major_faults_total, 0u);
  EXPECT_EQ(vm.stall_byte_seconds, 0.0);
}

TEST(SimHostTest, SwapAndFaultsGrowWithTheDeficit) {
  auto host = Make(OneGuest());
  ASSERT_NE(host, nullptr);
  const std::string id = host->vms()[0].vm_id;
  ASSERT_TRUE(host->SetTarget(id, 476 * kMiB).ok());  // 100 MiB below 576
  host->Advance(absl::Seconds(10));                   // balloon there within 4 s
  const SimVmState a = host->vms()[0];
  EXPECT_EQ(a.actual_bytes, 476 * kMiB);
  EXPECT_EQ(a.deficit_bytes, 100 * kMiB);
  EXPECT_EQ(a.disk_caches_bytes, 0u);
  EXPECT_EQ(a.available_bytes, 0u);
  EXPECT_GE(a.swapped_bytes, 100 * kMiB);
  EXPECT_GT(a.swap_in_bytes_total, 0u);
  // Major faults are the swapped-in pages plus the page-cache refaults of a
  // guest with no cache left (its 32 MiB of mapped hot files).
  EXPECT_GT(a.refault_major_faults_total, 0u);
  EXPECT_NEAR(static_cast<double>(a.major_faults_total - a.refault_major_faults_total),
              static_cast<double>(a.swap_in_bytes_total / kPageBytes), 2.0);
  EXPECT_GT(a.stall_byte_seconds, 0.0);
  host->Advance(absl::Seconds(10));
  const SimVmState b = host->vms()[0];
  // Ten more seconds of a 100 MiB deficit: 640 MiB swapped in (64 MiB/s cap),
  // 1000 MiB*s more stall.
  EXPECT_EQ(b.swap_in_bytes_total - a.swap_in_bytes_total, 640 * kMiB);
  EXPECT_NEAR(b.stall_byte_seconds - a.stall_byte_seconds, 1000.0 * kMiB, 1.0 * kMiB);
  EXPECT_GT(b.major_faults_total, a.major_faults_total);
  EXPECT_EQ(b.oom_kills_total, 0u);
  // A smaller deficit swaps in less per second.
  auto small = Make(OneGuest());
  ASSERT_TRUE(small->SetTarget(id, 566 * kMiB).ok());  // 10 MiB deficit
  small->Advance(absl::Seconds(20));
  EXPECT_LT(small->vms()[0].swap_in_bytes_total, b.swap_in_bytes_total);
  EXPECT_LT(small->vms()[0].stall_byte_seconds, b.stall_byte_seconds);
  // Given room again, the swapped pages come back and the deficit ends.
  ASSERT_TRUE(host->SetTarget(id, 2 * kGiB).ok());
  host->Advance(absl::Seconds(10));
  EXPECT_EQ(host->vms()[0].deficit_bytes, 0u);
  EXPECT_EQ(host->vms()[0].swapped_bytes, 0u);
}

TEST(SimHostTest, BalloonCannotTakeWhatTheGuestCannotSwap) {
  // 50 MiB of swap, target 100 MiB below the 576 MiB working set: the
  // balloon inflates only as far as the guest can swap out (576 - 50 =
  // 526 MiB) and stays above its target; nobody is killed.
  SimConfig c = OneGuest();
  c.mutable_vms(0)->set_swap_bytes(50 * kMiB);
  auto host = Make(c);
  ASSERT_NE(host, nullptr);
  ASSERT_TRUE(host->SetTarget(host->vms()[0].vm_id, 476 * kMiB).ok());
  host->Advance(absl::Seconds(10));
  const SimVmState& vm = host->vms()[0];
  EXPECT_EQ(vm.target_bytes, 476 * kMiB);
  EXPECT_EQ(vm.actual_bytes, 526 * kMiB);
  EXPECT_EQ(vm.deficit_bytes, 50 * kMiB);
  EXPECT_EQ(vm.swapped_bytes, 50 * kMiB);
  EXPECT_EQ(vm.oom_kills_total, 0u);
}

// A guest of 64 MiB kernel whose working set steps from 512 to 700 MiB at
// 10 s, with `swap` bytes of swap.
SimConfig SteppingGuest(uint64_t swap, const std::string& extra = "") {
  return Parse(absl::StrCat(R"(
    host_total_bytes: 8589934592
    vms {
      name: "g1" max_bytes: 2147483648 kernel_bytes: 67108864
      page_cache_bytes: 1073741824 swap_bytes: )", swap, R"(
      workload { step { before_bytes: 536870912 after_bytes: 734003200 at { seconds: 10 } } }
      )", extra, "\n}"));
}

TEST(SimHostTest, OomKillPastSwapThenRestart) {
  // Held at 600 MiB with 50 MiB of swap: when the working set steps to
  // 764 MiB the deficit (164 MiB) is beyond the swap; once the swap is full
  // (0.2 s at 256 MiB/s) the workload is killed.
  auto host = Make(SteppingGuest(50 * kMiB));
  ASSERT_NE(host, nullptr);
  const std::string id = host->vms()[0].vm_id;
  ASSERT_TRUE(host->SetTarget(id, 600 * kMiB).ok());
  host->Advance(absl::Seconds(9));
  EXPECT_EQ(host->vms()[0].oom_kills_total, 0u);
  host->Advance(absl::Seconds(2));
  EXPECT_EQ(host->vms()[0].oom_kills_total, 1u);
  EXPECT_EQ(host->vms()[0].working_set_bytes, 64 * kMiB);  // only the kernel left
  EXPECT_EQ(host->vms()[0].deficit_bytes, 0u);
  // The workload restarts after 30 s (past its step) and is killed again.
  host->Advance(absl::Seconds(31));
  EXPECT_EQ(host->vms()[0].oom_kills_total, 2u);
  // With room, it restarts and lives.
  ASSERT_TRUE(host->SetTarget(id, 2 * kGiB).ok());
  host->Advance(absl::Seconds(40));
  EXPECT_EQ(host->vms()[0].oom_kills_total, 2u);
  EXPECT_EQ(host->vms()[0].working_set_bytes, 764 * kMiB);
}

TEST(SimHostTest, SwaplessGuestIsKilledAtOnceWithoutASwapSignal) {
  auto host = Make(SteppingGuest(0));
  ASSERT_NE(host, nullptr);
  const std::string id = host->vms()[0].vm_id;
  // Squeezed toward 400 MiB, below its 576 MiB working set: without swap
  // the balloon can take only the page cache and free memory, so it stops
  // at the working set, above the target, with no cache left.
  ASSERT_TRUE(host->SetTarget(id, 400 * kMiB).ok());
  host->Advance(absl::Seconds(9));
  SimVmState a = host->vms()[0];
  EXPECT_EQ(a.actual_bytes, 576 * kMiB);
  EXPECT_EQ(a.target_bytes, 400 * kMiB);
  EXPECT_EQ(a.disk_caches_bytes, 0u);
  EXPECT_EQ(a.available_bytes, 0u);
  EXPECT_EQ(a.oom_kills_total, 0u);
  // Its only signal: refaults of its mapped hot files. No swap traffic.
  EXPECT_EQ(a.swap_in_bytes_total, 0u);
  EXPECT_EQ(a.swap_out_bytes_total, 0u);
  EXPECT_GT(a.major_faults_total, 0u);
  EXPECT_EQ(a.major_faults_total, a.refault_major_faults_total);
  // The working set steps up at 10 s: killed in that very step (0.25 s),
  // no stall accrued, no swap-in ever seen.
  host->Advance(absl::Milliseconds(1250));
  const SimVmState b = host->vms()[0];
  EXPECT_EQ(b.oom_kills_total, 1u);
  EXPECT_EQ(b.stall_byte_seconds, 0.0);
  EXPECT_EQ(b.swap_in_bytes_total, 0u);
  EXPECT_EQ(b.deflate_on_oom, false);
  EXPECT_EQ(b.oom_deflations_total, 0u);
}

TEST(SimHostTest, SwaplessNoisyGuestSqueezedBelowItsWorkingSetDiesWithinSeconds) {
  // A noisy working set moves up and down: the stalled balloon takes what
  // each dip frees, and the next rise finds no memory.
  SimConfig c = OneGuest();
  c.mutable_vms(0)->set_swap_bytes(0);
  c.mutable_vms(0)->mutable_workload()->set_noise_fraction(0.1);
  auto host = Make(c);
  ASSERT_NE(host, nullptr);
  ASSERT_TRUE(host->SetTarget(host->vms()[0].vm_id, 400 * kMiB).ok());
  host->Advance(absl::Seconds(30));
  EXPECT_GE(host->vms()[0].oom_kills_total, 1u);
  EXPECT_EQ(host->vms()[0].swap_in_bytes_total, 0u);
  // The same guest with its target at its noisy peak lives.
  auto roomy = Make(c);
  ASSERT_TRUE(roomy->SetTarget(roomy->vms()[0].vm_id, (64 + 564) * kMiB).ok());
  roomy->Advance(absl::Seconds(300));
  EXPECT_EQ(roomy->vms()[0].oom_kills_total, 0u);
}

TEST(SimHostTest, DeflateOnOomGivesMemoryBackInsteadOfAKill) {
  auto host = Make(SteppingGuest(0, "deflate_on_oom: true"));
  ASSERT_NE(host, nullptr);
  const std::string id = host->vms()[0].vm_id;
  ASSERT_TRUE(host->SetTarget(id, 400 * kMiB).ok());
  host->Advance(absl::Seconds(9));
  EXPECT_TRUE(host->vms()[0].deflate_on_oom);
  EXPECT_EQ(host->vms()[0].actual_bytes, 576 * kMiB);
  // At the step to 764 MiB the guest takes 188 MiB back from its balloon:
  // no kill, no deficit; the target is untouched and actual sits above it.
  host->Advance(absl::Milliseconds(1250));
  SimVmState a = host->vms()[0];
  EXPECT_EQ(a.oom_kills_total, 0u);
  EXPECT_EQ(a.oom_deflations_total, 1u);
  EXPECT_EQ(a.oom_deflated_bytes_total, 188 * kMiB);
  EXPECT_EQ(a.actual_bytes, 764 * kMiB);
  EXPECT_EQ(a.target_bytes, 400 * kMiB);
  EXPECT_EQ(a.deficit_bytes, 0u);
  EXPECT_EQ(a.resident_bytes, 764 * kMiB);
  host->Advance(absl::Seconds(60));
  EXPECT_EQ(host->vms()[0].oom_kills_total, 0u);
  EXPECT_EQ(host->vms()[0].actual_bytes, 764 * kMiB);
  EXPECT_EQ(host->vms()[0].target_bytes, 400 * kMiB);
}

TEST(SimHostTest, DeflatedBalloonStaysUntilANewTarget) {
  // Working set 256 MiB, 512 MiB from 10 s to 20 s. The balloon reaches its
  // 400 MiB target; the spike takes 176 MiB back (576 MiB). When the spike
  // ends the balloon stays deflated: only a new target inflates it again.
  auto host = Make(Parse(R"(
    host_total_bytes: 8589934592
    vms {
      name: "g1" max_bytes: 2147483648 kernel_bytes: 67108864
      page_cache_bytes: 1073741824 deflate_on_oom: true
      workload { spike { base_bytes: 268435456 peak_bytes: 536870912 start { seconds: 10 }
                         duration { seconds: 10 } every { seconds: 1000 } } }
    })"));
  ASSERT_NE(host, nullptr);
  const std::string id = host->vms()[0].vm_id;
  ASSERT_TRUE(host->SetTarget(id, 400 * kMiB).ok());
  host->Advance(absl::Seconds(9));
  EXPECT_EQ(host->vms()[0].actual_bytes, 400 * kMiB);
  host->Advance(absl::Seconds(2));
  EXPECT_EQ(host->vms()[0].actual_bytes, 576 * kMiB);
  EXPECT_EQ(host->vms()[0].oom_deflated_bytes_total, 176 * kMiB);
  host->Advance(absl::Seconds(20));  // spike over at 20 s
  EXPECT_EQ(host->vms()[0].working_set_bytes, 320 * kMiB);
  EXPECT_EQ(host->vms()[0].actual_bytes, 576 * kMiB);
  EXPECT_EQ(host->vms()[0].oom_kills_total, 0u);
  ASSERT_TRUE(host->SetTarget(id, 400 * kMiB).ok());  // the same target, set again
  host->Advance(absl::Seconds(1));
  EXPECT_EQ(host->vms()[0].actual_bytes, 400 * kMiB);
}

TEST(SimHostTest, LeakRestartsFromItsStartAfterOom) {
  SimConfig c = Parse(R"(
    host_total_bytes: 8589934592
    vms {
      name: "leaky" max_bytes: 1073741824 kernel_bytes: 67108864 swap_bytes: 0
      workload { leak { start_bytes: 104857600 rate_bytes_per_second: 10485760
                        cap_bytes: 1006632960 } }
    })");
  auto host = Make(c);
  ASSERT_NE(host, nullptr);
  const std::string id = host->vms()[0].vm_id;
  ASSERT_TRUE(host->SetTarget(id, 512 * kMiB).ok());
  // 64 + 100 + 10 t > 512 at t > 34.8 s: killed then.
  host->Advance(absl::Seconds(34));
  EXPECT_EQ(host->vms()[0].oom_kills_total, 0u);
  host->Advance(absl::Seconds(2));
  EXPECT_EQ(host->vms()[0].oom_kills_total, 1u);
  // Restarts 30 s after the kill (t = 65 s) at its start size: at t = 67 s
  // it holds 64 + 100 + 2 * 10 MiB.
  host->Advance(absl::Seconds(31));
  EXPECT_EQ(host->vms()[0].working_set_bytes, (64 + 100 + 20) * kMiB);
}

TEST(SimHostTest, NoDriverBalloonNeverMoves) {
  auto host = Make(OneGuest("no_balloon_driver: true"));
  ASSERT_NE(host, nullptr);
  const std::string id = host->vms()[0].vm_id;
  ASSERT_TRUE(host->SetTarget(id, 256 * kMiB).ok());
  host->Advance(absl::Seconds(60));
  const SimVmState& vm = host->vms()[0];
  EXPECT_FALSE(vm.balloon_driver);
  EXPECT_EQ(vm.target_bytes, 256 * kMiB);
  EXPECT_EQ(vm.actual_bytes, 2 * kGiB);
  EXPECT_EQ(vm.total_bytes, 0u);  // no driver, no statistics
  EXPECT_EQ(vm.deficit_bytes, 0u);
}

TEST(SimHostTest, StartAfterDelaysTheGuest) {
  auto host = Make(OneGuest("start_after { seconds: 10 }"));
  ASSERT_NE(host, nullptr);
  const std::string id = host->vms()[0].vm_id;
  EXPECT_FALSE(host->vms()[0].running);
  EXPECT_EQ(host->host_used_bytes(), 0u);
  EXPECT_EQ(*host->WorkingSetAt(id, absl::Seconds(5)), 0u);
  host->Advance(absl::Seconds(9));
  EXPECT_FALSE(host->vms()[0].running);
  host->Advance(absl::Seconds(2));
  EXPECT_TRUE(host->vms()[0].running);
  EXPECT_EQ(host->vms()[0].actual_bytes, 2 * kGiB);
  EXPECT_EQ(*host->WorkingSetAt(id, absl::Seconds(100)), 576 * kMiB);
  EXPECT_EQ(host->WorkingSetAt("nope", absl::Seconds(1)).status().code(),
            absl::StatusCode::kNotFound);
}

TEST(SimHostTest, WorkingSetAtMatchesWhatTheGuestLaterHas) {
  SimConfig c = OneGuest();
  c.mutable_vms(0)->mutable_workload()->set_noise_fraction(0.2);
  auto host = Make(c);
  ASSERT_NE(host, nullptr);
  const std::string id = host->vms()[0].vm_id;
  const uint64_t predicted = *host->WorkingSetAt(id, absl::Seconds(47));
  host->Advance(absl::Seconds(47));
  EXPECT_NEAR(static_cast<double>(host->vms()[0].working_set_bytes),
              static_cast<double>(predicted), 1.0);
}

TEST(SimHostTest, DeterministicUnderASeed) {
  SimConfig c = OneGuest();
  c.mutable_vms(0)->mutable_workload()->set_noise_fraction(0.3);
  auto run = [](const SimConfig& config) {
    auto host = SimHost::Create(config);
    EXPECT_TRUE(host.ok());
    std::vector<uint64_t> trace;
    const std::string id = (*host)->vms()[0].vm_id;
    for (int i = 0; i < 120; ++i) {
      if (i % 10 == 0) {
        EXPECT_TRUE((*host)->SetTarget(id, (600 + 10 * i) * kMiB).ok());
      }
      (*host)->Advance(absl::Milliseconds(700));
      const SimVmState& s = (*host)->vms()[0];
      trace.push_back(s.working_set_bytes);
      trace.push_back(s.available_bytes);
      trace.push_back(s.swap_in_bytes_total);
    }
    return trace;
  };
  EXPECT_EQ(run(c), run(c));
  SimConfig other = c;
  other.set_seed(2);
  EXPECT_NE(run(c), run(other));
}

TEST(SimHostTest, ValidationNamesTheField) {
  struct Case {
    const char* text;
    const char* field;
  } cases[] = {
      {"vms { name: 'a' max_bytes: 1073741824 workload { constant {} } }", "host_total_bytes"},
      {"host_total_bytes: 1 time_scale: -1", "time_scale"},
      {"host_total_bytes: 1 vms { max_bytes: 1073741824 workload { constant {} } }",
       "vms[0].name"},
      {"host_total_bytes: 1 vms { name: 'a' workload { constant {} } }", "vms[0].max_bytes"},
      {"host_total_bytes: 1 vms { name: 'a' max_bytes: 1073741824 }", "vms[0].workload"},
      {"host_total_bytes: 1 vms { name: 'a' max_bytes: 1073741824 "
       "workload { constant { working_set_bytes: 1073741824 } } }",
       "vms[0].workload: peak"},
      {"host_total_bytes: 1 vms { name: 'a' max_bytes: 1048576 workload { constant {} } }",
       "vms[0].kernel_bytes"},
      {"host_total_bytes: 1 vms { name: 'a' max_bytes: 1073741824 workload { constant {} } }"
       " vms { name: 'a' max_bytes: 1073741824 workload { constant {} } }",
       "vms[1].name: duplicate"},
      {"host_total_bytes: 1 vms { name: 'a' vm_id: 'x' max_bytes: 1073741824 workload { constant {} } }"
       " vms { name: 'b' vm_id: 'x' max_bytes: 1073741824 workload { constant {} } }",
       "vms[1].vm_id: duplicate"},
      {"host_total_bytes: 1 vms { name: 'a' max_bytes: 1073741824 start_after { seconds: -1 } "
       "workload { constant {} } }",
       "vms[0].start_after"},
      {"host_total_bytes: 1 vms { name: 'a' max_bytes: 1073741824 "
       "workload { spike { duration {} } } }",
       "vms[0].workload.spike.duration"},
      {"host_total_bytes: 1 vms { name: 'a' max_bytes: 1073741824 "
       "workload { constant {} noise_fraction: 0.9 } }",
       "vms[0].workload.noise_fraction"},
      {"host_total_bytes: 1 vms { name: 'a' max_bytes: 1073741824 swap_bytes: 18446744073709551615 "
       "workload { constant {} } }",
       "vms[0].swap_bytes"},
  };
  for (const Case& c : cases) {
    SimConfig config = Parse(c.text);
    absl::Status s = ValidateSimConfig(config);
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << c.text;
    EXPECT_NE(s.message().find(c.field), std::string::npos) << c.text << " -> " << s;
    EXPECT_EQ(SimHost::Create(config).status().code(), absl::StatusCode::kInvalidArgument);
  }
  EXPECT_TRUE(ValidateSimConfig(OneGuest()).ok());
}

TEST(SimHostTest, DerivedIdsAreStableAndUuidShaped) {
  const std::string a = DeriveVmId("web-1");
  EXPECT_EQ(a, DeriveVmId("web-1"));
  EXPECT_NE(a, DeriveVmId("web-2"));
  ASSERT_EQ(a.size(), 36u);
  EXPECT_EQ(a[8], '-');
  EXPECT_EQ(a[14], '4');
}

}  // namespace
}  // namespace membroker::sim

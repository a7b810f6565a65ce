// membrokerctl top's frames: host bars, pressure order, highlights.

#include "client/top_view.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

namespace membroker::client {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

constexpr uint64_t kGiB = uint64_t{1} << 30;

v1::Host MakeHost(const std::string& id, uint64_t capacity, uint64_t target, uint64_t demand) {
  v1::Host h;
  h.set_host_id(id);
  h.set_connected(true);
  h.set_capacity_bytes(capacity);
  h.set_target_bytes(target);
  h.set_demand_bytes(demand);
  return h;
}

v1::Vm MakeVm(const std::string& host, const std::string& name, double swap_in, double faults,
              v1::BalloonHealth health = v1::BALLOON_HEALTH_OK) {
  v1::Vm vm;
  vm.set_host_id(host);
  vm.set_name(name);
  vm.set_swap_in_bytes_per_second(swap_in);
  vm.set_major_faults_per_second(faults);
  vm.set_health(health);
  vm.set_target_bytes(2 * kGiB);
  vm.set_demand_bytes(2 * kGiB);
  return vm;
}

TEST(HostBarTest, TargetsDemandAndCapacityOnOneScale) {
  // Scale 12 GiB over 12 cells: targets 8 cells '#', demand to 12 ('+'
  // from 8 to 11), capacity at cell 10 ('|'), cell 12 empty.
  EXPECT_EQ(HostBar(MakeHost("h", 10 * kGiB, 8 * kGiB, 12 * kGiB), 12), "[########++|+ ]");
  // Room to spare: capacity is the scale, at the right end.
  EXPECT_EQ(HostBar(MakeHost("h", 12 * kGiB, 6 * kGiB, 3 * kGiB), 12), "[######      |]");
  // An empty host does not divide by zero; widths below 10 become 10.
  EXPECT_EQ(HostBar(MakeHost("h", 0, 0, 0), 1), "[|          ]");
}

TEST(TopViewTest, ShortAndStuck) {
  EXPECT_TRUE(HostShortOfDemand(MakeHost("h", 10 * kGiB, 8 * kGiB, 11 * kGiB)));
  EXPECT_FALSE(HostShortOfDemand(MakeHost("h", 10 * kGiB, 8 * kGiB, 10 * kGiB)));
  EXPECT_TRUE(BalloonStuck(MakeVm("h", "a", 0, 0, v1::BALLOON_HEALTH_STUCK)));
  EXPECT_TRUE(BalloonStuck(MakeVm("h", "a", 0, 0, v1::BALLOON_HEALTH_NO_DRIVER)));
  EXPECT_FALSE(BalloonStuck(MakeVm("h", "a", 0, 0, v1::BALLOON_HEALTH_STATS_UNAVAILABLE)));
}

TEST(TopViewTest, SortsByPressureThenStuckThenName) {
  v1::ListVmsResponse vms;
  *vms.add_vms() = MakeVm("h1", "calm", 0, 0);
  *vms.add_vms() = MakeVm("h1", "faulting", 0, 100);      // 100 * 4 KiB = 400 KiB/s
  *vms.add_vms() = MakeVm("h2", "swapping", 1 << 20, 0);  // 1 MiB/s
  *vms.add_vms() = MakeVm("h2", "stuck", 0, 0, v1::BALLOON_HEALTH_STUCK);
  v1::Vm short_vm = MakeVm("h1", "short", 0, 0);
  short_vm.set_demand_bytes(3 * kGiB);  // 1 GiB above its target
  *vms.add_vms() = short_vm;
  std::vector<std::string> order;
  for (const v1::Vm& vm : SortByPressure(vms)) order.push_back(vm.name());
  EXPECT_EQ(order, (std::vector<std::string>{"swapping", "faulting", "stuck", "short", "calm"}));
}

class TopFrameTest : public ::testing::Test {
 protected:
  void SetUp() override {
    *hosts_.add_hosts() = MakeHost("short-host", 10 * kGiB, 10 * kGiB, 14 * kGiB);
    *hosts_.add_hosts() = MakeHost("fine-host", 16 * kGiB, 6 * kGiB, 5 * kGiB);
    *vms_.add_vms() = MakeVm("fine-host", "db", 0, 0, v1::BALLOON_HEALTH_NO_DRIVER);
    *vms_.add_vms() = MakeVm("short-host", "web", 2 << 20, 5);
  }
  v1::ListHostsResponse hosts_;
  v1::ListVmsResponse vms_;
};

TEST_F(TopFrameTest, TerminalShowsBarsAndHighlights) {
  TopViewOptions options;
  options.terminal = true;
  options.color = true;
  options.bar_width = 20;
  const std::string frame = RenderTopFrame(hosts_, vms_, options);
  EXPECT_THAT(frame, HasSubstr("\x1b[31mshort-host "));
  EXPECT_THAT(frame, HasSubstr("SHORT\x1b[0m\n"));
  EXPECT_THAT(frame, HasSubstr(HostBar(hosts_.hosts(1), 20)));
  EXPECT_THAT(frame, HasSubstr("\nfine-host  [########            |]  cap 16 GiB"));  // not red
  // web (2 MiB/s swap-in) is listed before db, whose stuck row is red.
  EXPECT_LT(frame.find("short-host  web"), frame.find("fine-host   db"));
  EXPECT_THAT(frame, HasSubstr("\x1b[31mfine-host   db"));
  EXPECT_THAT(frame, HasSubstr("no-driver !"));
  EXPECT_THAT(frame, HasSubstr("short of demand: short-host"));
  EXPECT_THAT(frame, HasSubstr("stuck balloons: fine-host/db"));
}

TEST_F(TopFrameTest, NoColourMeansNoEscapes) {
  TopViewOptions options;
  options.terminal = true;
  const std::string frame = RenderTopFrame(hosts_, vms_, options);
  EXPECT_THAT(frame, Not(HasSubstr("\x1b[")));
  EXPECT_THAT(frame, HasSubstr("SHORT\n"));
}

TEST_F(TopFrameTest, WithoutTerminalPlainTablesSortedByPressure) {
  const std::string frame = RenderTopFrame(hosts_, vms_, TopViewOptions());
  EXPECT_THAT(frame, Not(HasSubstr("\x1b[")));
  EXPECT_THAT(frame, Not(HasSubstr("[#")));
  EXPECT_THAT(frame, HasSubstr("HOST"));
  EXPECT_LT(frame.find("short-host  web"), frame.find("fine-host   db"));
  EXPECT_THAT(frame, HasSubstr("short of demand: short-host; stuck balloons: fine-host/db\n"));
}

}  // namespace
}  // namespace membroker::client

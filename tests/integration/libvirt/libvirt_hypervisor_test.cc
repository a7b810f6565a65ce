// The libvirt backend against libvirt's in-process test driver: the shared
// test:///default instance and node files of several domains written into a
// temp dir (test:///ABS/PATH/node.xml).

#include "node-agent/hypervisor/libvirt_hypervisor.h"

#include <libvirt/libvirt.h>
#include <libvirt/virterror.h>
#include <stdlib.h>
#include <unistd.h>

#include <algorithm>
#include <fstream>
#include <limits>
#include <map>
#include <string>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace membroker::agent {
namespace {

using ::testing::HasSubstr;

constexpr uint64_t kKiB = 1024;
constexpr uint64_t kMiB = 1024 * kKiB;

std::string DomainXml(const std::string& name, const std::string& uuid, uint64_t max_kib,
                      uint64_t current_kib) {
  return absl::StrCat("<domain type='test'><name>", name, "</name><uuid>", uuid,
                      "</uuid><memory unit='KiB'>", max_kib,
                      "</memory><currentMemory unit='KiB'>", current_kib,
                      "</currentMemory><vcpu>1</vcpu><os><type>hvm</type></os></domain>");
}

class LibvirtHypervisorTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/mb-libvirt-XXXXXX";
    ASSERT_NE(mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
  }
  void TearDown() override {
    for (const std::string& f : files_) ::unlink(f.c_str());
    ::rmdir(dir_.c_str());
  }

  // Writes a node file with `domains` (name -> {uuid, max KiB, current KiB}).
  std::string WriteNode(const std::string& file, const std::string& domains_xml) {
    std::string path = dir_ + "/" + file;
    std::ofstream(path) << "<node>" << domains_xml << "</node>\n";
    files_.push_back(path);
    return path;
  }

  std::unique_ptr<LibvirtHypervisor> Make(const std::string& uri) {
    LibvirtHypervisorOptions options;
    options.uri = uri;
    options.backoff_seed = 17;  // reproducible jitter
    auto hv = LibvirtHypervisor::Create(options, &clock_);
    EXPECT_TRUE(hv.ok()) << hv.status();
    return hv.ok() ? std::move(hv).value() : nullptr;
  }

  static std::map<std::string, VmStatus> ById(const std::vector<VmStatus>& vms) {
    std::map<std::string, VmStatus> out;
    for (const VmStatus& vm : vms) out[vm.vm_id] = vm;
    return out;
  }

  ManualClock clock_;
  std::string dir_;
  std::vector<std::string> files_;
};

TEST_F(LibvirtHypervisorTest, DefaultTestDomainIsReadInBytes) {
  auto hv = Make("test:///default");
  ASSERT_NE(hv, nullptr);
  EXPECT_EQ(hv->backend(), "libvirt");
  auto vms = hv->ListVms();
  ASSERT_TRUE(vms.ok()) << vms.status();
  ASSERT_EQ(vms->size(), 1u);
  const VmStatus& vm = (*vms)[0];
  EXPECT_EQ(vm.name, "test");
  EXPECT_EQ(vm.vm_id.size(), 36u);
  EXPECT_EQ(vm.max_bytes, 8ULL << 30);
  EXPECT_EQ(vm.actual_bytes, 2ULL << 30);
  // The test driver sends a full set of balloon statistics.
  EXPECT_TRUE(vm.stats.total_bytes.has_value());
  EXPECT_TRUE(vm.stats.available_bytes.has_value());
  EXPECT_TRUE(vm.stats.free_bytes.has_value());
  EXPECT_TRUE(vm.stats.major_faults_total.has_value());
  EXPECT_EQ(vm.stats.available_bytes, vm.stats.usable_bytes);
  EXPECT_TRUE(hv->connected());
}

TEST_F(LibvirtHypervisorTest, NodeFileWithSeveralDomains) {
  std::string node = WriteNode(
      "node.xml",
      absl::StrCat(DomainXml("web", "11111111-1111-1111-1111-000000000001", 1048576, 524288),
                   DomainXml("db", "11111111-1111-1111-1111-000000000002", 4194304, 4194304),
                   DomainXml("batch", "11111111-1111-1111-1111-000000000003", 2097152,
                             1048576)));
  auto hv = Make(absl::StrCat("test://", node));
  auto vms = hv->ListVms();
  ASSERT_TRUE(vms.ok()) << vms.status();
  auto by_id = ById(*vms);
  ASSERT_EQ(by_id.size(), 3u);
  const VmStatus& web = by_id["11111111-1111-1111-1111-000000000001"];
  EXPECT_EQ(web.name, "web");
  EXPECT_EQ(web.max_bytes, 1024 * kMiB);
  EXPECT_EQ(web.actual_bytes, 512 * kMiB);
  EXPECT_EQ(by_id["11111111-1111-1111-1111-000000000002"].max_bytes, 4096 * kMiB);
  EXPECT_EQ(by_id["11111111-1111-1111-1111-000000000002"].actual_bytes, 4096 * kMiB);
  EXPECT_EQ(by_id["11111111-1111-1111-1111-000000000003"].name, "batch");
  EXPECT_EQ(by_id["11111111-1111-1111-1111-000000000003"].actual_bytes, 1024 * kMiB);
}

// A domain with extra XML inside <domain> (devices, memoryBacking).
std::string DomainXmlWith(const std::string& name, const std::string& uuid,
                          const std::string& extra) {
  return absl::StrCat("<domain type='test'><name>", name, "</name><uuid>", uuid,
                      "</uuid><memory unit='KiB'>1048576</memory><currentMemory "
                      "unit='KiB'>1048576</currentMemory><vcpu>1</vcpu><os><type>hvm</type></os>",
                      extra, "</domain>");
}

TEST_F(LibvirtHypervisorTest, PassthroughHugepageAndLockedDomainsAreExcluded) {
  std::string node = WriteNode(
      "node.xml",
      absl::StrCat(
          DomainXmlWith("plain", "22222222-2222-2222-2222-000000000001",
                        "<!-- <hostdev mode='subsystem' type='pci'/> -->"),
          DomainXmlWith("vfio", "22222222-2222-2222-2222-000000000002",
                        "<devices><hostdev mode='subsystem' type='pci' managed='yes'><source>"
                        "<address domain='0x0000' bus='0x06' slot='0x00' function='0x0'/>"
                        "</source></hostdev></devices>"),
          DomainXmlWith("huge", "22222222-2222-2222-2222-000000000003",
                        "<memoryBacking><hugepages/></memoryBacking>"),
          DomainXmlWith("locked", "22222222-2222-2222-2222-000000000004",
                        "<memoryBacking><locked/></memoryBacking>")));
  auto hv = Make(absl::StrCat("test://", node));
  auto vms = hv->ListVms();
  ASSERT_TRUE(vms.ok()) << vms.status();
  auto by_id = ById(*vms);
  ASSERT_EQ(by_id.size(), 4u);
  EXPECT_EQ(by_id["22222222-2222-2222-2222-000000000001"].sizing.excluded_reason, "");
  EXPECT_THAT(by_id["22222222-2222-2222-2222-000000000003"].sizing.excluded_reason,
              HasSubstr("hugepage"));
  EXPECT_THAT(by_id["22222222-2222-2222-2222-000000000004"].sizing.excluded_reason,
              HasSubstr("locked"));
  EXPECT_THAT(by_id["22222222-2222-2222-2222-000000000002"].sizing.excluded_reason,
              HasSubstr("PCI passthrough"));
  // An excluded domain is not shrunk; its own size is accepted as is.
  absl::Status shrink = hv->SetBalloonTarget("22222222-2222-2222-2222-000000000003", 512 * kMiB);
  EXPECT_EQ(shrink.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_TRUE(hv->SetBalloonTarget("22222222-2222-2222-2222-000000000003", 1024 * kMiB).ok());
  EXPECT_TRUE(hv->SetBalloonTarget("22222222-2222-2222-2222-000000000001", 512 * kMiB).ok());
  auto after = hv->ListVms();
  ASSERT_TRUE(after.ok());
  auto after_by_id = ById(*after);
  EXPECT_EQ(after_by_id["22222222-2222-2222-2222-000000000003"].actual_bytes, 1024 * kMiB);
  EXPECT_EQ(after_by_id["22222222-2222-2222-2222-000000000001"].actual_bytes, 512 * kMiB);
}

TEST(LibvirtExclusionReasonTest, ReadsHostdevAndMemoryBackingAndIgnoresTheRest) {
  EXPECT_THAT(LibvirtExclusionReason("<domain><devices><hostdev mode='subsystem'/></devices>"
                                     "</domain>"),
              HasSubstr("PCI passthrough"));
  EXPECT_THAT(LibvirtExclusionReason("<domain><memoryBacking>\n  <locked/>\n</memoryBacking>"),
              HasSubstr("locked"));
  EXPECT_THAT(LibvirtExclusionReason("<domain><memoryBacking><hugepages><page size='2048'/>"
                                     "</hugepages></memoryBacking></domain>"),
              HasSubstr("hugepage"));
  // Not these: a comment, a look-alike tag, hugepages outside memoryBacking,
  // an empty memoryBacking, truncated or empty input.
  for (const char* xml : {"<domain><!-- <devices><hostdev/></devices> --></domain>",
                          "<domain><devices><hostdevice/></devices></domain>",
                          "<domain><features><hugepages/></features><memoryBacking/></domain>",
                          "<domain><memoryBacking><source type='memfd'/></memoryBacking>",
                          "<domain><devices><hostd", "<!-- <hostdev", ""}) {
    SCOPED_TRACE(xml);
    EXPECT_EQ(LibvirtExclusionReason(xml), "");
  }
}

TEST_F(LibvirtHypervisorTest, FreePageReportingIsReadFromTheMemballoon) {
  std::string node = WriteNode(
      "node.xml",
      absl::StrCat(DomainXmlWith("reporting", "33333333-3333-3333-3333-000000000001",
                                 "<devices><memballoon model='virtio' freePageReporting='on'>"
                                 "<stats period='1'/></memballoon></devices>"),
                   DomainXmlWith("plain", "33333333-3333-3333-3333-000000000002",
                                 "<devices><memballoon model='virtio'/></devices>")));
  auto hv = Make(absl::StrCat("test://", node));
  auto vms = hv->ListVms();
  ASSERT_TRUE(vms.ok()) << vms.status();
  auto by_id = ById(*vms);
  ASSERT_EQ(by_id.size(), 2u);
  // The test driver keeps the attribute in the XML it returns.
  EXPECT_TRUE(by_id["33333333-3333-3333-3333-000000000001"].free_page_reporting);
  EXPECT_FALSE(by_id["33333333-3333-3333-3333-000000000002"].free_page_reporting);
}

TEST(LibvirtFreePageReportingTest, ReadsTheAttributeAndIgnoresTheRest) {
  EXPECT_TRUE(LibvirtFreePageReporting(
      "<domain><devices><memballoon model='virtio' freePageReporting='on'/></devices></domain>"));
  EXPECT_TRUE(LibvirtFreePageReporting(
      "<domain><devices>\n<memballoon\n model=\"virtio\"\n freePageReporting = \"on\">"
      "<stats period='5'/></memballoon></devices></domain>"));
  // Off: the attribute off, absent, in a comment, on another element, a
  // look-alike attribute, truncated, unquoted, or empty input.
  for (const char* xml :
       {"<domain><devices><memballoon model='virtio' freePageReporting='off'/></devices>",
        "<domain><devices><memballoon model='virtio'/></devices></domain>",
        "<domain><devices><!-- <memballoon freePageReporting='on'/> --></devices></domain>",
        "<domain><devices><memballoon model='none'/><disk freePageReporting='on'/></devices>",
        "<domain><devices><memballoon xfreePageReporting='on'/></devices></domain>",
        "<domain><memballoon freePageReporting='on'/></domain>",
        "<domain><devices><memballoon freePageReporting='on",
        "<domain><devices><memballoon freePageReporting=on/></devices>", ""}) {
    SCOPED_TRACE(xml);
    EXPECT_FALSE(LibvirtFreePageReporting(xml));
  }
}

TEST_F(LibvirtHypervisorTest, SetsTheBalloonInKibAndValidates) {
  std::string node = WriteNode(
      "node.xml", DomainXml("web", "11111111-1111-1111-1111-000000000001", 1048576, 1048576));
  auto hv = Make(absl::StrCat("test://", node));
  const std::string id = "11111111-1111-1111-1111-000000000001";
  ASSERT_TRUE(hv->ListVms().ok());

  ASSERT_TRUE(hv->SetBalloonTarget(id, 300 * kMiB).ok());
  auto vms = hv->ListVms();
  ASSERT_TRUE(vms.ok());
  ASSERT_EQ(vms->size(), 1u);
  EXPECT_EQ((*vms)[0].actual_bytes, 300 * kMiB);

  // Not a whole KiB: rounded down, never above what was asked.
  ASSERT_TRUE(hv->SetBalloonTarget(id, 200 * kMiB + 1000).ok());
  vms = hv->ListVms();
  ASSERT_TRUE(vms.ok());
  EXPECT_EQ((*vms)[0].actual_bytes, 200 * kMiB);

  absl::Status above = hv->SetBalloonTarget(id, 1024 * kMiB + kKiB);
  EXPECT_EQ(above.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(above.message()), HasSubstr("target_bytes"));
  EXPECT_EQ(hv->SetBalloonTarget(id, 0).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(hv->SetBalloonTarget(id, 1023).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(hv->SetBalloonTarget("11111111-1111-1111-1111-00000000dead", kMiB).code(),
            absl::StatusCode::kNotFound);
  EXPECT_EQ(hv->SetBalloonTarget("not-a-uuid", kMiB).code(), absl::StatusCode::kNotFound);
  // None of the refused calls changed the balloon.
  vms = hv->ListVms();
  ASSERT_TRUE(vms.ok());
  EXPECT_EQ((*vms)[0].actual_bytes, 200 * kMiB);
}

TEST_F(LibvirtHypervisorTest, FollowsDomainsThatStartAndStop) {
  // test:///default is one shared instance per process while a connection
  // is open: the test starts and destroys domains through its own.
  virConnectPtr conn = virConnectOpen("test:///default");
  ASSERT_NE(conn, nullptr);
  auto hv = Make("test:///default");
  auto vms = hv->ListVms();
  ASSERT_TRUE(vms.ok());
  ASSERT_EQ(vms->size(), 1u);

  const std::string uuid = "22222222-2222-2222-2222-000000000001";
  virDomainPtr dom =
      virDomainCreateXML(conn, DomainXml("newcomer", uuid, 2097152, 1048576).c_str(), 0);
  ASSERT_NE(dom, nullptr);
  vms = hv->ListVms();
  ASSERT_TRUE(vms.ok());
  auto by_id = ById(*vms);
  ASSERT_EQ(by_id.size(), 2u);
  EXPECT_EQ(by_id[uuid].name, "newcomer");
  EXPECT_EQ(by_id[uuid].max_bytes, 2048 * kMiB);
  EXPECT_EQ(by_id[uuid].actual_bytes, 1024 * kMiB);
  ASSERT_TRUE(hv->SetBalloonTarget(uuid, 512 * kMiB).ok());

  ASSERT_EQ(virDomainDestroy(dom), 0);
  virDomainFree(dom);
  vms = hv->ListVms();
  ASSERT_TRUE(vms.ok());
  EXPECT_EQ(vms->size(), 1u);
  EXPECT_EQ(ById(*vms).count(uuid), 0u);
  // The domain is gone: a target for it is NOT_FOUND, not a crash.
  EXPECT_EQ(hv->SetBalloonTarget(uuid, 512 * kMiB).code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(hv->SetStatsPeriod(uuid, absl::Seconds(1)).code(), absl::StatusCode::kNotFound);
  virConnectClose(conn);
}

TEST_F(LibvirtHypervisorTest, SuspendedDomainStaysListed) {
  virConnectPtr conn = virConnectOpen("test:///default");
  ASSERT_NE(conn, nullptr);
  auto hv = Make("test:///default");
  virDomainPtr dom = virDomainLookupByName(conn, "test");
  ASSERT_NE(dom, nullptr);
  ASSERT_EQ(virDomainSuspend(dom), 0);
  auto vms = hv->ListVms();
  ASSERT_TRUE(vms.ok());
  EXPECT_EQ(vms->size(), 1u);
  virDomainResume(dom);
  virDomainFree(dom);
  virConnectClose(conn);
}

TEST_F(LibvirtHypervisorTest, StatsPeriod) {
  auto hv = Make("test:///default");
  auto vms = hv->ListVms();
  ASSERT_TRUE(vms.ok());
  ASSERT_EQ(vms->size(), 1u);
  const std::string id = (*vms)[0].vm_id;
  EXPECT_TRUE(hv->SetStatsPeriod(id, absl::Seconds(1)).ok());
  EXPECT_TRUE(hv->SetStatsPeriod(id, absl::Milliseconds(10)).ok());
  EXPECT_EQ(hv->SetStatsPeriod(id, absl::Seconds(-1)).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(hv->SetStatsPeriod(id, absl::Hours(25)).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(hv->SetStatsPeriod("not-a-uuid", absl::Seconds(1)).code(),
            absl::StatusCode::kNotFound);
}

TEST_F(LibvirtHypervisorTest, UnreachableUriIsUnavailableAndRetriedWithBackoff) {
  const std::string path = dir_ + "/late.xml";
  auto hv = Make(absl::StrCat("test://", path));
  auto vms = hv->ListVms();
  EXPECT_EQ(vms.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_FALSE(hv->connected());
  EXPECT_EQ(hv->SetBalloonTarget("11111111-1111-1111-1111-000000000001", kMiB).code(),
            absl::StatusCode::kUnavailable);

  WriteNode("late.xml",
            DomainXml("web", "11111111-1111-1111-1111-000000000001", 1048576, 1048576));
  // Within the backoff no new attempt is made.
  vms = hv->ListVms();
  EXPECT_EQ(vms.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(std::string(vms.status().message()), HasSubstr("next attempt"));
  clock_.Advance(absl::Seconds(5));
  vms = hv->ListVms();
  ASSERT_TRUE(vms.ok()) << vms.status();
  EXPECT_EQ(vms->size(), 1u);
  EXPECT_TRUE(hv->connected());
}

TEST_F(LibvirtHypervisorTest, ReconnectWaitsAreJitteredAroundTheDoubling) {
  // The shared backoff: 1 s, 2 s, 4 s ... each within +-20 %.
  const std::string path = dir_ + "/never.xml";
  auto hv = Make(absl::StrCat("test://", path));
  absl::Duration base = absl::Seconds(1);
  for (int attempt = 0; attempt < 4; ++attempt) {
    // A failed attempt now; the next is refused until its wait passed.
    auto vms = hv->ListVms();
    ASSERT_EQ(vms.status().code(), absl::StatusCode::kUnavailable);
    EXPECT_THAT(std::string(vms.status().message()), HasSubstr("cannot connect"))
        << "no attempt after the longest jittered wait, attempt " << attempt;
    clock_.Advance(base * 0.8 - absl::Milliseconds(1));
    vms = hv->ListVms();
    EXPECT_THAT(std::string(vms.status().message()), HasSubstr("next attempt"))
        << "retried before the shortest jittered wait, attempt " << attempt;
    clock_.Advance(base * 0.4 + absl::Milliseconds(1));  // now past 1.2 x base
    base *= 2;
  }
}

TEST_F(LibvirtHypervisorTest, MalformedNodeFileIsAnErrorNotACrash) {
  std::string node = WriteNode("bad.xml", "<domain type='test'><name>x</name>");
  auto hv = Make(absl::StrCat("test://", node));
  EXPECT_EQ(hv->ListVms().status().code(), absl::StatusCode::kUnavailable);
}

TEST_F(LibvirtHypervisorTest, LibvirtErrorsDoNotReachStderr) {
  auto hv = Make("test:///default");
  ::testing::internal::CaptureStderr();
  EXPECT_FALSE(hv->SetBalloonTarget("11111111-1111-1111-1111-00000000dead", kMiB).ok());
  EXPECT_FALSE(hv->SetBalloonTarget("garbage", kMiB).ok());
  std::string err = ::testing::internal::GetCapturedStderr();
  EXPECT_EQ(err, "");
}

TEST_F(LibvirtHypervisorTest, CreateRejectsBadOptions) {
  LibvirtHypervisorOptions options;
  options.uri = "";
  EXPECT_EQ(LibvirtHypervisor::Create(options, &clock_).status().code(),
            absl::StatusCode::kInvalidArgument);
  options.uri = "test:///default";
  options.min_backoff = absl::Seconds(10);
  options.max_backoff = absl::Seconds(1);
  EXPECT_EQ(LibvirtHypervisor::Create(options, &clock_).status().code(),
            absl::StatusCode::kInvalidArgument);
  options.max_backoff = absl::Seconds(30);
  options.backoff_jitter = 2;
  absl::Status jitter = LibvirtHypervisor::Create(options, &clock_).status();
  EXPECT_EQ(jitter.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(jitter.message()), HasSubstr("jitter"));
  EXPECT_EQ(MakeLibvirtHypervisor("test:///default", nullptr).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(MakeLibvirtHypervisor("test:///default", &clock_).ok());
}

TEST(LibvirtGuestStatsTest, MapsKibAndCountsAndIgnoresHostileValues) {
  constexpr unsigned long long kUnset = std::numeric_limits<unsigned long long>::max();
  virDomainMemoryStatStruct stats[] = {
      {VIR_DOMAIN_MEMORY_STAT_ACTUAL_BALLOON, 524288},
      {VIR_DOMAIN_MEMORY_STAT_AVAILABLE, 500000},
      {VIR_DOMAIN_MEMORY_STAT_USABLE, 300000},
      {VIR_DOMAIN_MEMORY_STAT_UNUSED, 200000},
      {VIR_DOMAIN_MEMORY_STAT_DISK_CACHES, kUnset},
      {VIR_DOMAIN_MEMORY_STAT_SWAP_IN, 8},
      {VIR_DOMAIN_MEMORY_STAT_SWAP_OUT, kUnset / 512},  // overflows as bytes
      {VIR_DOMAIN_MEMORY_STAT_MAJOR_FAULT, 7},
      {VIR_DOMAIN_MEMORY_STAT_MINOR_FAULT, kUnset},
      {VIR_DOMAIN_MEMORY_STAT_LAST_UPDATE, 1700000000},
      {999, 42},  // a tag newer than this code
  };
  std::optional<uint64_t> actual;
  GuestMemoryStats out = LibvirtGuestStats(stats, std::size(stats), &actual);
  EXPECT_EQ(actual, 512 * kMiB);
  EXPECT_EQ(out.total_bytes, 500000 * kKiB);
  EXPECT_EQ(out.available_bytes, 300000 * kKiB);
  EXPECT_EQ(out.usable_bytes, 300000 * kKiB);
  EXPECT_EQ(out.free_bytes, 200000 * kKiB);
  EXPECT_FALSE(out.disk_caches_bytes.has_value());
  EXPECT_EQ(out.swap_in_bytes_total, 8 * kKiB);
  EXPECT_FALSE(out.swap_out_bytes_total.has_value());
  EXPECT_EQ(out.major_faults_total, 7u);
  EXPECT_FALSE(out.minor_faults_total.has_value());
  EXPECT_EQ(out.last_update, absl::FromUnixSeconds(1700000000));
}

TEST(LibvirtGuestStatsTest, NeverUpdatedAndEmpty) {
  virDomainMemoryStatStruct stats[] = {{VIR_DOMAIN_MEMORY_STAT_LAST_UPDATE, 0}};
  std::optional<uint64_t> actual = 5;
  GuestMemoryStats out = LibvirtGuestStats(stats, 1, &actual);
  EXPECT_FALSE(out.last_update.has_value());
  EXPECT_FALSE(actual.has_value());
  out = LibvirtGuestStats(nullptr, 3, &actual);
  EXPECT_FALSE(out.total_bytes.has_value());
  out = LibvirtGuestStats(stats, -1, nullptr);
  EXPECT_FALSE(out.last_update.has_value());
}

}  // namespace
}  // namespace membroker::agent

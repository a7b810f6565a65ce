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
#include <optional>
#include <string>
#include <vector>

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
                      "</uuid><memory unit='KiB'>", max_kib, "</memory><currentMemory unit='KiB'>",
                      current_kib,
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
                   DomainXml("batch", "11111111-1111-1111-1111-000000000003", 2097152, 1048576)));
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

TEST_F(LibvirtHypervisorTest, DomainWithoutABalloonIsExcludedAndNotResized) {
  std::string node = WriteNode(
      "node.xml", absl::StrCat(DomainXmlWith("none", "44444444-4444-4444-4444-000000000001",
                                             "<devices><memballoon model='none'/></devices>"),
                               DomainXmlWith("virtio", "44444444-4444-4444-4444-000000000002",
                                             "<devices><memballoon model='virtio'/></devices>")));
  auto hv = Make(absl::StrCat("test://", node));
  auto vms = hv->ListVms();
  ASSERT_TRUE(vms.ok()) << vms.status();
  auto by_id = ById(*vms);
  ASSERT_EQ(by_id.size(), 2u);
  const VmStatus& none = by_id["44444444-4444-4444-4444-000000000001"];
  EXPECT_FALSE(none.sizing.balloon);
  EXPECT_EQ(SizingMechanism(none.sizing), "none");
  EXPECT_EQ(none.sizing.balloon_inflated_bytes, 0u);
  EXPECT_THAT(none.sizing.excluded_reason, HasSubstr("no balloon or virtio-mem device"));
  EXPECT_EQ(by_id["44444444-4444-4444-4444-000000000002"].sizing.excluded_reason, "");
  EXPECT_TRUE(by_id["44444444-4444-4444-4444-000000000002"].sizing.balloon);
  // Refused, with the reason, and nothing moves.
  const uint64_t before = none.actual_bytes;
  absl::Status shrink = hv->SetBalloonTarget("44444444-4444-4444-4444-000000000001", 512 * kMiB);
  EXPECT_EQ(shrink.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(shrink.message()), HasSubstr("has no balloon"));
  auto after = hv->ListVms();
  ASSERT_TRUE(after.ok());
  EXPECT_EQ(ById(*after)["44444444-4444-4444-4444-000000000001"].actual_bytes, before);
}

TEST(LibvirtHasBalloonTest, OnlyAnExplicitModelNoneMeansNoBalloon) {
  EXPECT_FALSE(LibvirtHasBalloon("<domain><devices><memballoon model='none'/></devices></domain>"));
  EXPECT_FALSE(LibvirtHasBalloon(
      "<domain><devices>\n<memballoon\n  model = \"none\" >\n</memballoon></devices>"));
  for (const std::string xml :
       {"<domain><devices><memballoon model='virtio'/></devices></domain>",
        "<domain><devices><!-- <memballoon model='none'/> --></devices></domain>",
        "<domain><devices></devices></domain>", "<domain><memballoon model='none'/></domain>",
        "<domain><devices><memballoon model='none", ""}) {
    EXPECT_TRUE(LibvirtHasBalloon(xml)) << xml;
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
  EXPECT_EQ(hv->SetStatsPeriod("not-a-uuid", absl::Seconds(1)).code(), absl::StatusCode::kNotFound);
}

TEST_F(LibvirtHypervisorTest, UnreachableUriIsUnavailableAndRetriedWithBackoff) {
  const std::string path = dir_ + "/late.xml";
  auto hv = Make(absl::StrCat("test://", path));
  auto vms = hv->ListVms();
  EXPECT_EQ(vms.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_FALSE(hv->connected());
  EXPECT_EQ(hv->SetBalloonTarget("11111111-1111-1111-1111-000000000001", kMiB).code(),
            absl::StatusCode::kUnavailable);

  WriteNode("late.xml", DomainXml("web", "11111111-1111-1111-1111-000000000001", 1048576, 1048576));
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

// A virtio-mem <memory> device element (sizes in KiB).
std::string VirtioMemXml(uint64_t size_kib, uint64_t block_kib, uint64_t requested_kib,
                         std::optional<uint64_t> current_kib, const std::string& alias) {
  return absl::StrCat(
      "<memory model='virtio-mem'><target><size unit='KiB'>", size_kib,
      "</size><node>0</node><block unit='KiB'>", block_kib, "</block><requested unit='KiB'>",
      requested_kib, "</requested>",
      current_kib.has_value() ? absl::StrCat("<current unit='KiB'>", *current_kib, "</current>")
                              : "",
      "</target>", alias.empty() ? "" : absl::StrCat("<alias name='", alias, "'/>"), "</memory>");
}

// A domain of `boot_kib` boot memory with `devices` (virtio-mem elements of
// `total_device_kib` in all): libvirt's <memory> is boot plus the devices.
std::string VirtioMemDomainXml(const std::string& name, const std::string& uuid, uint64_t boot_kib,
                               uint64_t current_kib, uint64_t total_device_kib,
                               const std::string& devices) {
  return absl::StrCat(
      "<domain type='test'><name>", name, "</name><uuid>", uuid,
      "</uuid><maxMemory slots='2' unit='KiB'>16777216</maxMemory><memory unit='KiB'>",
      boot_kib + total_device_kib, "</memory><currentMemory unit='KiB'>", current_kib,
      "</currentMemory><vcpu>1</vcpu><cpu><numa><cell id='0' cpus='0' memory='", boot_kib,
      "' unit='KiB'/></numa></cpu><os><type>hvm</type></os><devices>", devices,
      "</devices></domain>");
}

TEST(LibvirtVirtioMemDevicesTest, ReadsOneDevice) {
  const std::string xml = absl::StrCat(
      "<domain><memory unit='KiB'>3145728</memory><devices><memballoon model='virtio'/>",
      VirtioMemXml(2097152, 2048, 524288, 262144, "virtiomem0"), "</devices></domain>");
  auto devs = LibvirtVirtioMemDevices(xml);
  ASSERT_TRUE(devs.ok()) << devs.status();
  ASSERT_EQ(devs->size(), 1u);
  const LibvirtVirtioMem& d = (*devs)[0];
  EXPECT_EQ(d.size_bytes, 2048 * kMiB);
  EXPECT_EQ(d.block_bytes, 2 * kMiB);
  EXPECT_EQ(d.requested_bytes, 512 * kMiB);
  EXPECT_EQ(d.current_bytes, 256 * kMiB);
  // The element as written, alias included, to send back.
  EXPECT_THAT(d.xml, ::testing::StartsWith("<memory model='virtio-mem'>"));
  EXPECT_THAT(d.xml, ::testing::EndsWith("</memory>"));
  EXPECT_THAT(d.xml, HasSubstr("<alias name='virtiomem0'/>"));
}

TEST(LibvirtVirtioMemDevicesTest, ReadsTwoDevicesInOrderAndSkipsOtherMemory) {
  const std::string xml =
      absl::StrCat("<domain><memory unit='GiB'>8</memory><devices>",
                   "<memory model='dimm'><target><size unit='MiB'>512</size></target></memory>",
                   "<!-- <memory model='virtio-mem'><target><size>x</size></target></memory> -->",
                   VirtioMemXml(1048576, 2048, 0, 0, "virtiomem0"),
                   // Other units than KiB, no <current> (inactive XML): current = requested.
                   "<memory model=\"virtio-mem\"><target><size unit='GiB'>4</size>"
                   "<block unit='MiB'>4</block><requested unit='b'>1073741824</requested>"
                   "</target></memory>",
                   "</devices></domain>");
  auto devs = LibvirtVirtioMemDevices(xml);
  ASSERT_TRUE(devs.ok()) << devs.status();
  ASSERT_EQ(devs->size(), 2u);
  EXPECT_EQ((*devs)[0].size_bytes, 1024 * kMiB);
  EXPECT_EQ((*devs)[0].current_bytes, 0u);
  EXPECT_EQ((*devs)[1].size_bytes, 4096 * kMiB);
  EXPECT_EQ((*devs)[1].block_bytes, 4 * kMiB);
  EXPECT_EQ((*devs)[1].requested_bytes, 1024 * kMiB);
  EXPECT_EQ((*devs)[1].current_bytes, 1024 * kMiB);

  // No devices, no <devices>, malformed text: none found.
  for (const std::string& none :
       {std::string("<domain><devices><memballoon model='virtio'/></devices></domain>"),
        std::string("<domain><memory unit='KiB'>1024</memory></domain>"), std::string("<<<"),
        std::string()}) {
    auto empty = LibvirtVirtioMemDevices(none);
    ASSERT_TRUE(empty.ok()) << none;
    EXPECT_TRUE(empty->empty()) << none;
  }
}

TEST(LibvirtVirtioMemDevicesTest, MissingOrGarbageSizesAreErrorsNamingTheField) {
  struct Case {
    std::string device;
    std::string field;
  };
  const std::vector<Case> cases = {
      {"<memory model='virtio-mem'><target><block unit='KiB'>2048</block>"
       "<requested unit='KiB'>0</requested></target></memory>",
       "<size>"},
      {"<memory model='virtio-mem'><target><size unit='KiB'>lots</size>"
       "<block unit='KiB'>2048</block><requested unit='KiB'>0</requested></target></memory>",
       "<size>"},
      {"<memory model='virtio-mem'><target><size unit='KiB'>-1</size>"
       "<block unit='KiB'>2048</block><requested unit='KiB'>0</requested></target></memory>",
       "<size>"},
      {"<memory model='virtio-mem'><target><size unit='parsecs'>1</size>"
       "<block unit='KiB'>2048</block><requested unit='KiB'>0</requested></target></memory>",
       "unknown unit"},
      {"<memory model='virtio-mem'><target><size unit='TiB'>99999999999</size>"
       "<block unit='KiB'>2048</block><requested unit='KiB'>0</requested></target></memory>",
       "too large"},
      {"<memory model='virtio-mem'><target><size unit='KiB'>1024</size>"
       "<block unit='KiB'>0</block><requested unit='KiB'>0</requested></target></memory>",
       "<block> is zero"},
      {"<memory model='virtio-mem'><target><size unit='KiB'>1024</size>"
       "<block unit='KiB'>2048</block></target></memory>",
       "<requested>"},
      {"<memory model='virtio-mem'><target><size unit='KiB'>1024</size>"
       "<block unit='KiB'>2048</block><requested unit='KiB'>4096</requested></target></memory>",
       "above <size>"},
      {"<memory model='virtio-mem'><target><size unit='KiB'>1024</size>"
       "<block unit='KiB'>2048</block><requested unit='KiB'>0</requested>"
       "<current unit='KiB'>?</current></target></memory>",
       "<current>"},
      {"<memory model='virtio-mem'><target><size unit='KiB'>1024", "not closed"},
      {"<memory model='virtio-mem'/>", "empty"},
  };
  for (const Case& c : cases) {
    auto devs =
        LibvirtVirtioMemDevices(absl::StrCat("<domain><devices>", c.device, "</devices></domain>"));
    ASSERT_FALSE(devs.ok()) << c.device;
    EXPECT_EQ(devs.status().code(), absl::StatusCode::kInvalidArgument) << c.device;
    EXPECT_THAT(std::string(devs.status().message()), HasSubstr("virtio-mem device 0")) << c.device;
    EXPECT_THAT(std::string(devs.status().message()), HasSubstr(c.field)) << c.device;
  }
}

LibvirtVirtioMem Device(uint64_t size, uint64_t block, uint64_t requested = 0) {
  LibvirtVirtioMem d;
  d.size_bytes = size;
  d.block_bytes = block;
  d.requested_bytes = requested;
  return d;
}

TEST(SplitLibvirtVirtioMemTargetTest, WholeBlocksAboveBootAndTheBalloonForTheRest) {
  const uint64_t boot = 1024 * kMiB;
  const std::vector<LibvirtVirtioMem> one = {Device(2048 * kMiB, 2 * kMiB)};
  // 1024 + 511 MiB: 511 MiB rounds up to 512 MiB; the balloon takes 1 MiB.
  LibvirtVirtioMemSplit s = SplitLibvirtVirtioMemTarget(boot + 511 * kMiB, boot, one);
  EXPECT_EQ(s.requested_bytes, std::vector<uint64_t>{512 * kMiB});
  EXPECT_EQ(s.inflate_bytes, 1 * kMiB);
  // A whole number of blocks: nothing for the balloon.
  s = SplitLibvirtVirtioMemTarget(boot + 512 * kMiB, boot, one);
  EXPECT_EQ(s.requested_bytes, std::vector<uint64_t>{512 * kMiB});
  EXPECT_EQ(s.inflate_bytes, 0u);
  // Less than a block above boot: one block, 2 MiB - 100 KiB ballooned.
  s = SplitLibvirtVirtioMemTarget(boot + 100 * kKiB, boot, one);
  EXPECT_EQ(s.requested_bytes, std::vector<uint64_t>{2 * kMiB});
  EXPECT_EQ(s.inflate_bytes, 2 * kMiB - 100 * kKiB);
  // Below boot: virtio-mem unplugs all, the balloon takes 1024 - 300 MiB.
  s = SplitLibvirtVirtioMemTarget(300 * kMiB, boot, one);
  EXPECT_EQ(s.requested_bytes, std::vector<uint64_t>{0});
  EXPECT_EQ(s.inflate_bytes, 724 * kMiB);
  // Exactly boot.
  s = SplitLibvirtVirtioMemTarget(boot, boot, one);
  EXPECT_EQ(s.requested_bytes, std::vector<uint64_t>{0});
  EXPECT_EQ(s.inflate_bytes, 0u);
  // The most: boot + size, clamped there.
  s = SplitLibvirtVirtioMemTarget(boot + 2048 * kMiB, boot, one);
  EXPECT_EQ(s.requested_bytes, std::vector<uint64_t>{2048 * kMiB});
  EXPECT_EQ(s.inflate_bytes, 0u);
  // A size that is not whole blocks is clamped to its whole blocks.
  s = SplitLibvirtVirtioMemTarget(boot + 5 * kMiB, boot, {Device(5 * kMiB, 2 * kMiB)});
  EXPECT_EQ(s.requested_bytes, std::vector<uint64_t>{4 * kMiB});
  EXPECT_EQ(s.inflate_bytes, 0u);
}

TEST(SplitLibvirtVirtioMemTargetTest, TwoDevicesFillInOrder) {
  const uint64_t boot = 512 * kMiB;
  const std::vector<LibvirtVirtioMem> two = {Device(256 * kMiB, 2 * kMiB),
                                             Device(1024 * kMiB, 128 * kMiB)};
  // 512 + 300 MiB: the first takes all 256 MiB, the second 44 MiB rounded
  // up to one 128 MiB block; the balloon takes 128 - 44 = 84 MiB.
  LibvirtVirtioMemSplit s = SplitLibvirtVirtioMemTarget(boot + 300 * kMiB, boot, two);
  EXPECT_EQ(s.requested_bytes, (std::vector<uint64_t>{256 * kMiB, 128 * kMiB}));
  EXPECT_EQ(s.inflate_bytes, 84 * kMiB);
  // Within the first device: the second is emptied.
  s = SplitLibvirtVirtioMemTarget(boot + 10 * kMiB, boot, two);
  EXPECT_EQ(s.requested_bytes, (std::vector<uint64_t>{10 * kMiB, 0}));
  EXPECT_EQ(s.inflate_bytes, 0u);
  // Every split adds up: boot + requests - inflate = target, for targets
  // from 1 MiB to the max in uneven steps.
  for (uint64_t target = kMiB; target <= boot + 1280 * kMiB; target += 7 * kMiB + 333 * kKiB) {
    s = SplitLibvirtVirtioMemTarget(target, boot, two);
    ASSERT_EQ(s.requested_bytes.size(), 2u);
    EXPECT_EQ(s.requested_bytes[0] % (2 * kMiB), 0u) << target;
    EXPECT_EQ(s.requested_bytes[1] % (128 * kMiB), 0u) << target;
    EXPECT_LE(s.requested_bytes[0], 256 * kMiB);
    EXPECT_LE(s.requested_bytes[1], 1024 * kMiB);
    EXPECT_EQ(boot + s.requested_bytes[0] + s.requested_bytes[1] - s.inflate_bytes, target)
        << target;
    // The balloon holds less than a block of the device last asked, or
    // what lies below boot.
    if (target >= boot) {
      EXPECT_LT(s.inflate_bytes, 128 * kMiB) << target;
    }
  }
}

TEST(LibvirtVirtioMemWithRequestTest, ReplacesOnlyTheRequest) {
  auto devs = LibvirtVirtioMemDevices(
      absl::StrCat("<domain><devices>", VirtioMemXml(2097152, 2048, 524288, 0, "virtiomem0"),
                   "</devices></domain>"));
  ASSERT_TRUE(devs.ok());
  ASSERT_EQ(devs->size(), 1u);
  const std::string updated = LibvirtVirtioMemWithRequest((*devs)[0], 1024 * kMiB);
  EXPECT_EQ(updated, VirtioMemXml(2097152, 2048, 1048576, 0, "virtiomem0"));
  auto reread =
      LibvirtVirtioMemDevices(absl::StrCat("<domain><devices>", updated, "</devices></domain>"));
  ASSERT_TRUE(reread.ok());
  EXPECT_EQ((*reread)[0].requested_bytes, 1024 * kMiB);
}

// libvirt 9.0's test driver accepts a virtio-mem device (its live XML has
// <current>, 0 there) but not virDomainUpdateDeviceFlags: discovery and the
// balloon's part are checked against it; changing the request is refused
// with the driver's error, and nothing else changes.
TEST_F(LibvirtHypervisorTest, VirtioMemDomainIsSizedFromItsDevice) {
  const std::string id = "11111111-1111-1111-1111-0000000000e1";
  std::string node = WriteNode(
      "node.xml", VirtioMemDomainXml("vmem", id, 1048576, 1048576, 2097152,
                                     VirtioMemXml(2097152, 2048, 524288, std::nullopt, "")));
  auto hv = Make(absl::StrCat("test://", node));
  ASSERT_NE(hv, nullptr);
  auto vms = hv->ListVms();
  ASSERT_TRUE(vms.ok()) << vms.status();
  ASSERT_EQ(vms->size(), 1u);
  VmStatus vm = (*vms)[0];
  EXPECT_EQ(vm.max_bytes, 3072 * kMiB);  // boot + the device's size
  EXPECT_TRUE(vm.sizing.balloon);
  EXPECT_TRUE(vm.sizing.virtio_mem);
  EXPECT_EQ(SizingMechanism(vm.sizing), "virtio-mem+balloon");
  EXPECT_EQ(vm.sizing.boot_bytes, 1024 * kMiB);
  EXPECT_EQ(vm.sizing.virtio_mem_max_bytes, 2048 * kMiB);
  EXPECT_EQ(vm.sizing.virtio_mem_block_bytes, 2 * kMiB);
  EXPECT_EQ(vm.sizing.virtio_mem_requested_bytes, 512 * kMiB);
  // The test driver reports nothing plugged: size = boot + 0.
  EXPECT_EQ(vm.sizing.virtio_mem_plugged_bytes, 0u);
  EXPECT_EQ(vm.actual_bytes, 1024 * kMiB);
  EXPECT_EQ(vm.sizing.balloon_inflated_bytes, 0u);
  // Nothing moves toward the request: a plug stall once the timeout (20 s
  // by default) has passed on the clock, not before.
  EXPECT_EQ(vm.sizing.shortfall_reason, "");
  clock_.Advance(absl::Seconds(19));
  vms = hv->ListVms();
  ASSERT_TRUE(vms.ok());
  EXPECT_EQ((*vms)[0].sizing.shortfall_reason, "");
  clock_.Advance(absl::Seconds(1));
  vms = hv->ListVms();
  ASSERT_TRUE(vms.ok());
  EXPECT_THAT((*vms)[0].sizing.shortfall_reason,
              HasSubstr("virtio-mem plug stalled at 0 MiB plugged of 512 MiB requested"));

  // The request stays at 512 MiB (boot + 511 MiB rounds up to it): only the
  // balloon moves, holding 1 MiB out of boot memory.
  ASSERT_TRUE(hv->SetBalloonTarget(id, 1024 * kMiB + 511 * kMiB).ok());
  vms = hv->ListVms();
  ASSERT_TRUE(vms.ok());
  EXPECT_EQ((*vms)[0].sizing.balloon_inflated_bytes, 1 * kMiB);
  EXPECT_EQ((*vms)[0].actual_bytes, 1023 * kMiB);
  // A new target starts the stall timer over.
  EXPECT_EQ((*vms)[0].sizing.shortfall_reason, "");

  // A new request goes through virDomainUpdateDeviceFlags, which this
  // driver does not have: the error comes back and the balloon is left.
  absl::Status st = hv->SetBalloonTarget(id, 600 * kMiB);
  EXPECT_EQ(st.code(), absl::StatusCode::kUnimplemented) << st;
  EXPECT_THAT(std::string(st.message()), HasSubstr("virtio-mem device 0"));
  vms = hv->ListVms();
  ASSERT_TRUE(vms.ok());
  EXPECT_EQ((*vms)[0].actual_bytes, 1023 * kMiB);
  EXPECT_EQ(hv->SetBalloonTarget(id, 3072 * kMiB + kKiB).code(),
            absl::StatusCode::kInvalidArgument);
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

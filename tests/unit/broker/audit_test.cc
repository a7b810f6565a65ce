// Audit entries (old -> new per field) and their storage: written with the
// policy in one transaction, listed newest-limited and oldest first, kept
// across a reopen of the store.

#include "broker/audit.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <stdlib.h>

#include "absl/strings/str_cat.h"
#include "broker/policy_registry.h"
#include "broker/store.h"
#include "common/proto_time.h"

namespace membroker::broker {
namespace {

using ::testing::ElementsAre;

std::string TempDir() {
  const char* t = std::getenv("TEST_TMPDIR");
  std::string dir = absl::StrCat(t != nullptr ? t : "/tmp", "/audit_test.XXXXXX");
  EXPECT_NE(mkdtemp(dir.data()), nullptr);
  return dir;
}

TEST(DiffFieldsTest, NamesEachChangedField) {
  v1::VmPolicy before, after;
  before.set_min_bytes(1024);
  before.set_weight(100);
  after.set_min_bytes(2048);
  after.set_weight(100);
  after.set_pinned(true);
  EXPECT_THAT(DiffFields(before, after),
              ElementsAre("min_bytes: 1024 -> 2048", "pinned: unset -> true"));
  EXPECT_THAT(DiffFields(after, after), ElementsAre("no change"));
}

TEST(DiffFieldsTest, ClearedPolicy) {
  v1::VmPolicy before;
  before.set_max_bytes(4096);
  const AuditInfo who{"CN=admin", absl::FromUnixSeconds(1700000000)};
  v1::AuditEntry e = VmPolicyAuditEntry(who, "ClearVmPolicy", "vm-1", &before, nullptr);
  EXPECT_EQ(e.actor(), "CN=admin");
  EXPECT_EQ(e.target(), "vm-1");
  EXPECT_EQ(FromProto(e.time()), absl::FromUnixSeconds(1700000000));
  EXPECT_TRUE(e.has_old_vm_policy());
  EXPECT_FALSE(e.has_new_vm_policy());
  EXPECT_THAT(e.changes(), ElementsAre("max_bytes: 4096 -> unset"));
}

TEST(AuditStoreTest, RegistryRecordsEveryAcceptedChange) {
  const std::string dir = TempDir();
  {
    auto store = Store::Open(dir);
    ASSERT_TRUE(store.ok());
    PolicyRegistry registry(store->get());
    ASSERT_TRUE(registry.Load(v1::ClusterPolicy()).ok());
    const AuditInfo admin{"CN=admin,OU=membroker-admin", absl::FromUnixSeconds(100)};
    v1::VmPolicy p;
    p.set_min_bytes(1 << 20);
    ASSERT_TRUE(registry.SetVmPolicy("vm-a", p, false, admin).ok());
    p.set_weight(300);
    ASSERT_TRUE(registry.SetVmPolicy("vm-a", p, false, admin).ok());
    // A refused change is not audited.
    v1::VmPolicy bad;
    bad.set_weight(0);
    ASSERT_FALSE(registry.SetVmPolicy("vm-b", bad, false, admin).ok());
    v1::ClusterPolicy c;
    c.set_buffer_percent(33);
    ASSERT_TRUE(registry.SetClusterPolicy(c, {"insecure", absl::FromUnixSeconds(200)}).ok());
    ASSERT_TRUE(registry.ClearVmPolicy("vm-a", admin).ok());
  }
  // Reopened: the trail is durable.
  auto store = Store::Open(dir);
  ASSERT_TRUE(store.ok());
  auto all = (*store)->ListAuditEntries(100, "");
  ASSERT_TRUE(all.ok());
  ASSERT_EQ(all->size(), 4u);
  EXPECT_EQ((*all)[0].action(), "SetVmPolicy");
  EXPECT_THAT((*all)[0].changes(), ElementsAre("min_bytes: unset -> 1048576"));
  EXPECT_THAT((*all)[1].changes(), ElementsAre("weight: unset -> 300"));
  EXPECT_EQ((*all)[2].action(), "SetClusterPolicy");
  EXPECT_EQ((*all)[2].actor(), "insecure");
  EXPECT_EQ((*all)[2].target(), "cluster");
  EXPECT_EQ((*all)[2].new_cluster_policy().buffer_percent(), 33);
  EXPECT_EQ((*all)[3].action(), "ClearVmPolicy");
  EXPECT_EQ((*all)[3].actor(), "CN=admin,OU=membroker-admin");
  EXPECT_LT((*all)[0].id(), (*all)[3].id());
  // The newest two, oldest first; filtered by target.
  auto last2 = (*store)->ListAuditEntries(2, "");
  ASSERT_TRUE(last2.ok());
  ASSERT_EQ(last2->size(), 2u);
  EXPECT_EQ((*last2)[0].action(), "SetClusterPolicy");
  EXPECT_EQ((*last2)[1].action(), "ClearVmPolicy");
  auto cluster = (*store)->ListAuditEntries(100, "cluster");
  ASSERT_TRUE(cluster.ok());
  ASSERT_EQ(cluster->size(), 1u);
}

}  // namespace
}  // namespace membroker::broker

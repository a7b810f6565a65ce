// The agent stream's edge for the host-side signals of a VM sample:
// bounds, and what reaches the decision's observation.

#include "broker/report.h"

#include <gtest/gtest.h>

#include <cmath>

namespace membroker::broker {
namespace {

constexpr uint64_t kMiB = uint64_t{1} << 20;

v1::HostReport Report() {
  v1::HostReport r;
  r.set_sequence(1);
  v1::VmSample* vm = r.add_vms();
  vm->set_vm_id("vm-1");
  vm->set_max_bytes(1024 * kMiB);
  vm->set_actual_bytes(1024 * kMiB);
  return r;
}

TEST(ReportHostSignalsTest, ValidSignalsReachTheObservation) {
  v1::HostReport r = Report();
  r.mutable_vms(0)->set_host_working_set_bytes(300 * kMiB);
  r.mutable_vms(0)->set_host_working_set_interval_ms(10000);
  r.mutable_vms(0)->set_host_psi_some_avg10_percent(12.5);
  ASSERT_TRUE(ValidateReport(r).ok()) << ValidateReport(r);
  policy::HostObservation obs = ToHostObservation(r, 1.0, absl::Seconds(1), nullptr);
  ASSERT_EQ(obs.vms.size(), 1u);
  const policy::GuestObservation& g = obs.vms[0].guest;
  EXPECT_TRUE(g.has_host_working_set);
  EXPECT_EQ(g.host_working_set_bytes, 300 * kMiB);
  EXPECT_DOUBLE_EQ(g.host_working_set_interval_seconds, 10.0);
  EXPECT_TRUE(g.has_host_psi);
  EXPECT_DOUBLE_EQ(g.host_psi_some_avg10_percent, 12.5);
  EXPECT_EQ(g.host_working_set_method, "");  // not said
  r.mutable_vms(0)->set_host_working_set_method(v1::HOST_WORKING_SET_METHOD_REFAULT);
  ASSERT_TRUE(ValidateReport(r).ok()) << ValidateReport(r);
  EXPECT_EQ(ToHostObservation(r, 1.0, absl::Seconds(1), nullptr).vms[0].guest.host_working_set_method,
            "refault");
  r.mutable_vms(0)->set_host_working_set_method(v1::HOST_WORKING_SET_METHOD_CLEAR_REFS);
  EXPECT_EQ(ToHostObservation(r, 1.0, absl::Seconds(1), nullptr).vms[0].guest.host_working_set_method,
            "clear_refs");
  // Absent: not measured.
  policy::HostObservation none = ToHostObservation(Report(), 1.0, absl::Seconds(1), nullptr);
  EXPECT_FALSE(none.vms[0].guest.has_host_working_set);
  EXPECT_FALSE(none.vms[0].guest.has_host_psi);
}

TEST(ReportHostSignalsTest, AbsurdValuesAreRejectedNamingTheField) {
  struct Case {
    const char* name;
    void (*set)(v1::VmSample*);
    const char* field;
  } cases[] = {
      {"working set above max",
       [](v1::VmSample* v) {
         v->set_host_working_set_bytes(4096 * kMiB);
         v->set_host_working_set_interval_ms(10000);
       },
       "host_working_set_bytes"},
      {"working set without interval", [](v1::VmSample* v) { v->set_host_working_set_bytes(kMiB); },
       "host_working_set_interval_ms"},
      {"interval too long",
       [](v1::VmSample* v) {
         v->set_host_working_set_bytes(kMiB);
         v->set_host_working_set_interval_ms(uint64_t{1} << 40);
       },
       "host_working_set_interval_ms"},
      {"interval without working set",
       [](v1::VmSample* v) { v->set_host_working_set_interval_ms(10000); },
       "host_working_set_interval_ms"},
      {"method without working set",
       [](v1::VmSample* v) {
         v->set_host_working_set_method(v1::HOST_WORKING_SET_METHOD_REFAULT);
       },
       "host_working_set_method"},
      {"unknown method",
       [](v1::VmSample* v) {
         v->set_host_working_set_bytes(kMiB);
         v->set_host_working_set_interval_ms(10000);
         v->set_host_working_set_method(static_cast<v1::HostWorkingSetMethod>(99));
       },
       "host_working_set_method"},
      {"psi above 100", [](v1::VmSample* v) { v->set_host_psi_some_avg10_percent(101); },
       "host_psi_some_avg10_percent"},
      {"psi negative", [](v1::VmSample* v) { v->set_host_psi_some_avg10_percent(-1); },
       "host_psi_some_avg10_percent"},
      {"psi NaN", [](v1::VmSample* v) { v->set_host_psi_some_avg10_percent(std::nan("")); },
       "host_psi_some_avg10_percent"},
  };
  for (const Case& c : cases) {
    v1::HostReport r = Report();
    c.set(r.mutable_vms(0));
    absl::Status st = ValidateReport(r);
    EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument) << c.name;
    EXPECT_NE(st.message().find(std::string("report.vms[0].") + c.field), std::string::npos)
        << c.name << ": " << st;
  }
}

TEST(ReportStringsTest, OverlongAgentStringsAreRejectedNamingTheField) {
  v1::HostReport r = Report();
  r.mutable_vms(0)->set_sizing_mechanism("virtio-mem+balloon");
  r.mutable_vms(0)->set_health_reason(std::string(kMaxHealthReasonChars, 'h'));
  EXPECT_TRUE(ValidateReport(r).ok()) << ValidateReport(r);
  r.mutable_vms(0)->set_health_reason(std::string(4 << 20, 'h'));
  absl::Status s = ValidateReport(r);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("health_reason"), absl::string_view::npos) << s;
  EXPECT_LT(s.message().size(), 200u);
  r = Report();
  r.mutable_vms(0)->set_sizing_mechanism(std::string(kMaxSizingMechanismChars + 1, 's'));
  s = ValidateReport(r);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("sizing_mechanism"), absl::string_view::npos) << s;
}

}  // namespace
}  // namespace membroker::broker

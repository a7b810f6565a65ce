// libFuzzer target: the agent stream's edge (broker/report.h).
//
// The input is a serialized AgentMessage, as it arrives on the wire. A
// Hello goes through ValidateHello; a HostReport through ValidateReport,
// and a valid one through ToHostObservation and one decision step with the
// default policy. Checked: nothing crashes; a report that passes
// validation has unique VM ids and actual <= max; the observation has one
// VM (and one trust verdict) per reported VM; no decided target is above
// the VM's max.

#include <google/protobuf/stubs/logging.h>

#include <cstdint>
#include <set>
#include <string>
#include <vector>

#include "absl/time/time.h"
#include "broker/policy/host_step.h"
#include "broker/policy_config.h"
#include "broker/report.h"
#include "membroker/v1/agent.pb.h"
#include "tests/fuzz/fuzz_input.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  // protobuf's own complaints (invalid UTF-8) are expected here: not shown.
  static const bool quiet = (google::protobuf::SetLogHandler(nullptr), true);
  (void)quiet;
  using namespace membroker;
  v1::AgentMessage msg;
  if (!msg.ParseFromArray(data, static_cast<int>(size))) return 0;
  if (msg.has_hello()) {
    if (broker::ValidateHello(msg.hello()).ok()) {
      FUZZ_CHECK(!msg.hello().host_id().empty(), "valid hello without host id");
      FUZZ_CHECK(msg.hello().capacity_bytes() > 0, "valid hello without capacity");
    }
    return 0;
  }
  if (!msg.has_report()) return 0;
  const v1::HostReport& report = msg.report();
  if (!broker::ValidateReport(report).ok()) return 0;
  std::set<std::string> ids;
  for (const v1::VmSample& vm : report.vms()) {
    FUZZ_CHECK(ids.insert(vm.vm_id()).second, "duplicate vm id passed validation");
    FUZZ_CHECK(vm.actual_bytes() <= vm.max_bytes(), "actual above max passed validation");
    FUZZ_CHECK(vm.max_bytes() > 0, "zero max passed validation");
  }
  std::vector<std::string> problems;
  const policy::HostObservation obs =
      broker::ToHostObservation(report, 100.0, absl::Seconds(1), &problems);
  FUZZ_CHECK(obs.vms.size() == static_cast<size_t>(report.vms_size()), "observation size");
  FUZZ_CHECK(problems.size() == obs.vms.size(), "one verdict per VM");
  const policy::PolicySet policies = broker::ToPolicySet(broker::DefaultClusterPolicy(), {});
  policy::HostStepState state;
  state.capacity_bytes = 64ull << 30;
  policy::ObserveHost(obs, policies.demand, state);
  policy::DecideStep(policies, state);
  for (const auto& [id, vm] : state.vms) {
    FUZZ_CHECK(vm.decided, "a VM left undecided");
    FUZZ_CHECK(vm.decision.target_bytes <= vm.max_bytes, "target above max");
  }
  return 0;
}

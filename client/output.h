#pragma once
// Rendering of AdminService replies for people (table, wide) and for
// programs (json: protobuf's proto3 JSON mapping with proto field names;
// yaml: the same structure, from the message by reflection, through
// yaml-cpp; see client/proto_yaml.h).

#include <google/protobuf/message.h>

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "client/args.h"
#include "client/proto_yaml.h"
#include "membroker/v1/admin.pb.h"

namespace membroker::client {

// A plain text table: a header row and data rows, columns separated by at
// least two spaces, left-aligned.
class Table {
 public:
  // Starts a table with these column headers.
  explicit Table(std::vector<std::string> header);
  // Appends a row; missing cells print empty, extra cells are dropped.
  void AddRow(std::vector<std::string> row);
  // Number of data rows.
  size_t rows() const { return rows_.size(); }
  // Renders the header and all rows, each line ending in '\n'.
  std::string Render() const;

 private:
  std::vector<std::string> header_;
  std::vector<std::vector<std::string>> rows_;
};

// Renders any message for programs: kYaml as MessageToYaml, anything else
// as MessageToJson (client/proto_yaml.h). INTERNAL when the printer fails.
absl::StatusOr<std::string> RenderMessage(const google::protobuf::Message& message,
                                          OutputFormat format);

// Short lower-case names: "ok", "stuck", "no-driver", "stats-unavailable",
// "unknown".
std::string HealthName(v1::BalloonHealth health);
// Short lower-case reason: "demand", "floor", "share", "step-limit", ...;
// "-" for unspecified.
std::string ReasonName(v1::ReasonCode reason);

// Tables of the list replies; `wide` adds the extra columns.
std::string RenderHostsTable(const v1::ListHostsResponse& reply, bool wide);
std::string RenderVmsTable(const v1::ListVmsResponse& reply, bool wide);
// The plan's moves (VM FROM TO SIZE REASON; `wide` adds VM_ID) and the
// hosts short before and after them.
std::string RenderPlanTable(const v1::Plan& plan, bool wide = false);
// Placement: HOST FREE RECLAIM HEADROOM, best first, then where `count`
// VMs would go.
std::string RenderPlaceTable(const v1::PlaceResponse& reply);
std::string RenderReservationsTable(const v1::ListReservationsResponse& reply);
// The audit trail: ID TIME ACTOR ACTION TARGET CHANGES, one row per change
// (its changed fields joined by "; "), or a line saying there is none.
std::string RenderAuditTable(const v1::ListAuditEntriesResponse& history);

// Key/value descriptions of one object.
std::string DescribeHost(const v1::Host& host);
std::string DescribeVm(const v1::Vm& vm);
std::string DescribeExplanation(const v1::Explanation& explanation);
std::string DescribeClusterPolicy(const v1::ClusterPolicy& policy);
std::string DescribeVmPolicy(absl::string_view vm, const v1::VmPolicy& policy);
std::string DescribeReservation(const v1::Reservation& reservation);

// Formats a time as "2026-01-02T03:04:05Z" (UTC).
std::string FormatUtc(absl::Time t);

}  // namespace membroker::client

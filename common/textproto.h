#pragma once
// Loading config files: textproto of a message in proto/.

#include <string>

#include <google/protobuf/message.h>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"

namespace membroker {

// Reads `path` and parses it as textproto into `message`. NOT_FOUND when the
// file cannot be read; INVALID_ARGUMENT naming the file, line and column
// when it does not parse. `message` is unchanged on error.
absl::Status LoadTextProto(absl::string_view path, google::protobuf::Message* message);

// Parses `text` as textproto into `message` (unchanged on error).
absl::Status ParseTextProto(absl::string_view text, absl::string_view source_name,
                            google::protobuf::Message* message);

// Renders `message` as proto3 JSON with the proto field names.
std::string ToJson(const google::protobuf::Message& message, bool pretty = true);

}  // namespace membroker

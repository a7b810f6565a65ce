#pragma once
// Protobuf messages printed as JSON and YAML, straight from the message.
//
// JSON is protobuf's own printer (the proto3 JSON mapping). YAML walks the
// message with reflection and writes it through yaml-cpp's emitter, with
// the same structure as the JSON:
//   1. fields under their proto names, in declaration order;
//   2. a singular field without presence is always printed (0, "", false,
//      the zero enum); a message, a proto3 `optional` or a oneof member only
//      when set; a repeated field always ([] when empty), a map as {} when
//      empty and otherwise with its entries sorted by key;
//   3. int64/uint64 (and their fixed/sint variants) are strings, as in the
//      JSON mapping, so `max_bytes: "8589934592"`; int32/uint32, double,
//      float and bool are YAML numbers and booleans (doubles with the
//      shortest text that reads back exactly; NaN and infinities as YAML's
//      .nan, .inf, -.inf where JSON writes "NaN", "Infinity");
//   4. an enum is its value name, or its number when the value is unknown;
//      bytes are base64;
//   5. google.protobuf.Timestamp and Duration are their JSON strings
//      ("2026-01-02T03:04:05Z", "1.500s"); the wrapper types
//      (google.protobuf.UInt64Value, ...) are their value. Other well-known
//      types (Any, Struct, FieldMask, ...) print as their fields; the admin
//      API uses none of them;
//   6. a string is plain when it cannot be read back as anything but that
//      string (it starts with a letter or '_', holds only letters, digits,
//      '_', '-', '.', '/' and inner spaces, and is no YAML keyword such as
//      `true`, `null`, `no`); every other string is double-quoted, and the
//      emitter escapes '"', '\\' and control characters and writes other
//      characters, those outside the BMP included, as UTF-8.
//
// Thread-safe: the functions keep no state.

#include <google/protobuf/message.h>

#include <string>

#include "absl/status/statusor.h"

namespace membroker::client {

// The proto3 JSON mapping of `message`: proto field names, fields without
// presence printed with their zero values, indented, ending in '\n'.
// INTERNAL when protobuf's printer fails (e.g. a string field that is not
// UTF-8).
absl::StatusOr<std::string> MessageToJson(const google::protobuf::Message& message);

// `message` as a YAML block document (rules above), ending in '\n'.
// INTERNAL when the emitter reports an error.
absl::StatusOr<std::string> MessageToYaml(const google::protobuf::Message& message);

}  // namespace membroker::client

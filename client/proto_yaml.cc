#include "client/proto_yaml.h"

#include <google/protobuf/descriptor.h>
#include <google/protobuf/duration.pb.h>
#include <google/protobuf/timestamp.pb.h>
#include <google/protobuf/util/json_util.h>
#include <google/protobuf/util/time_util.h>
#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "absl/container/flat_hash_set.h"
#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace membroker::client {
namespace {

using google::protobuf::Descriptor;
using google::protobuf::FieldDescriptor;
using google::protobuf::Message;
using google::protobuf::Reflection;

// Rule 6 of the header: true when `s` reads back as this string unquoted.
bool PlainIsSafe(const std::string& s) {
  if (s.empty() || !(absl::ascii_isalpha(s.front()) || s.front() == '_') || s.back() == ' ') {
    return false;
  }
  for (char c : s) {
    if (!(absl::ascii_isalnum(c) || c == '_' || c == '-' || c == '.' || c == '/' || c == ' ')) {
      return false;
    }
  }
  // YAML 1.1 and 1.2 words that a loader turns into booleans, null or floats.
  static const auto* const kKeywords = new absl::flat_hash_set<std::string>(
      {"true", "false", "yes", "no", "on", "off", "y", "n", "null", "nan", "inf"});
  return !kKeywords->contains(absl::AsciiStrToLower(s));
}

void EmitString(YAML::Emitter& out, const std::string& s) {
  if (PlainIsSafe(s)) {
    out << s;
  } else {
    out << YAML::DoubleQuoted << s;
  }
}

// The shortest of %.{digits}g and %.{max_digits}g that reads back as `v`
// (what protobuf's JSON printer does), or YAML's names of non-finite values.
template <typename T>
std::string FormatFloat(T v, int digits, int max_digits) {
  if (std::isnan(v)) return ".nan";
  if (std::isinf(v)) return v > 0 ? ".inf" : "-.inf";
  std::string text = absl::StrFormat("%.*g", digits, v);
  double back = 0;
  if (!absl::SimpleAtod(text, &back) || static_cast<T>(back) != v) {
    text = absl::StrFormat("%.*g", max_digits, v);
  }
  return text;
}

void EmitMessage(YAML::Emitter& out, const Message& message);

// One value of `field` (element `index` when the field is repeated).
void EmitValue(YAML::Emitter& out, const Message& message, const FieldDescriptor* field,
               int index) {
  const Reflection* r = message.GetReflection();
  const bool rep = field->is_repeated();
  switch (field->cpp_type()) {
    case FieldDescriptor::CPPTYPE_INT32:
      out << absl::StrCat(rep ? r->GetRepeatedInt32(message, field, index)
                              : r->GetInt32(message, field));
      break;
    case FieldDescriptor::CPPTYPE_UINT32:
      out << absl::StrCat(rep ? r->GetRepeatedUInt32(message, field, index)
                              : r->GetUInt32(message, field));
      break;
    case FieldDescriptor::CPPTYPE_INT64:
      out << YAML::DoubleQuoted
          << absl::StrCat(rep ? r->GetRepeatedInt64(message, field, index)
                              : r->GetInt64(message, field));
      break;
    case FieldDescriptor::CPPTYPE_UINT64:
      out << YAML::DoubleQuoted
          << absl::StrCat(rep ? r->GetRepeatedUInt64(message, field, index)
                              : r->GetUInt64(message, field));
      break;
    case FieldDescriptor::CPPTYPE_DOUBLE:
      out << FormatFloat(
          rep ? r->GetRepeatedDouble(message, field, index) : r->GetDouble(message, field), 15, 17);
      break;
    case FieldDescriptor::CPPTYPE_FLOAT:
      out << FormatFloat(
          rep ? r->GetRepeatedFloat(message, field, index) : r->GetFloat(message, field), 6, 9);
      break;
    case FieldDescriptor::CPPTYPE_BOOL:
      out << ((rep ? r->GetRepeatedBool(message, field, index) : r->GetBool(message, field))
                  ? "true"
                  : "false");
      break;
    case FieldDescriptor::CPPTYPE_ENUM: {
      int number =
          rep ? r->GetRepeatedEnumValue(message, field, index) : r->GetEnumValue(message, field);
      const auto* value = field->enum_type()->FindValueByNumber(number);
      if (value != nullptr) {
        EmitString(out, value->name());
      } else {
        out << absl::StrCat(number);
      }
      break;
    }
    case FieldDescriptor::CPPTYPE_STRING: {
      std::string s =
          rep ? r->GetRepeatedString(message, field, index) : r->GetString(message, field);
      EmitString(out, field->type() == FieldDescriptor::TYPE_BYTES ? absl::Base64Escape(s) : s);
      break;
    }
    case FieldDescriptor::CPPTYPE_MESSAGE:
      EmitMessage(
          out, rep ? r->GetRepeatedMessage(message, field, index) : r->GetMessage(message, field));
      break;
  }
}

// Orders map entries by their keys (strings, integers or booleans).
bool MapKeyLess(const Message& a, const Message& b) {
  const FieldDescriptor* key = a.GetDescriptor()->map_key();
  const Reflection* r = a.GetReflection();
  switch (key->cpp_type()) {
    case FieldDescriptor::CPPTYPE_INT32:
      return r->GetInt32(a, key) < r->GetInt32(b, key);
    case FieldDescriptor::CPPTYPE_INT64:
      return r->GetInt64(a, key) < r->GetInt64(b, key);
    case FieldDescriptor::CPPTYPE_UINT32:
      return r->GetUInt32(a, key) < r->GetUInt32(b, key);
    case FieldDescriptor::CPPTYPE_UINT64:
      return r->GetUInt64(a, key) < r->GetUInt64(b, key);
    case FieldDescriptor::CPPTYPE_BOOL:
      return r->GetBool(a, key) < r->GetBool(b, key);
    default:
      return r->GetString(a, key) < r->GetString(b, key);
  }
}

// A map field: entries sorted by key, keys as strings (as in JSON).
void EmitMap(YAML::Emitter& out, const Message& message, const FieldDescriptor* field) {
  const Reflection* r = message.GetReflection();
  const int size = r->FieldSize(message, field);
  if (size == 0) {
    out << YAML::Flow << YAML::BeginMap << YAML::EndMap;
    return;
  }
  std::vector<const Message*> entries;
  for (int i = 0; i < size; ++i) entries.push_back(&r->GetRepeatedMessage(message, field, i));
  std::sort(entries.begin(), entries.end(),
            [](const Message* a, const Message* b) { return MapKeyLess(*a, *b); });
  const FieldDescriptor* key = field->message_type()->map_key();
  const FieldDescriptor* value = field->message_type()->map_value();
  out << YAML::BeginMap;
  for (const Message* entry : entries) {
    const Reflection* er = entry->GetReflection();
    std::string key_text;
    switch (key->cpp_type()) {
      case FieldDescriptor::CPPTYPE_STRING:
        key_text = er->GetString(*entry, key);
        break;
      case FieldDescriptor::CPPTYPE_BOOL:
        key_text = er->GetBool(*entry, key) ? "true" : "false";
        break;
      case FieldDescriptor::CPPTYPE_INT32:
        key_text = absl::StrCat(er->GetInt32(*entry, key));
        break;
      case FieldDescriptor::CPPTYPE_INT64:
        key_text = absl::StrCat(er->GetInt64(*entry, key));
        break;
      case FieldDescriptor::CPPTYPE_UINT32:
        key_text = absl::StrCat(er->GetUInt32(*entry, key));
        break;
      default:
        key_text = absl::StrCat(er->GetUInt64(*entry, key));
        break;
    }
    out << YAML::Key;
    EmitString(out, key_text);
    out << YAML::Value;
    EmitValue(out, *entry, value, -1);
  }
  out << YAML::EndMap;
}

// Rule 5: the well-known types with a JSON form of their own. Returns false
// for every other message.
bool EmitWellKnown(YAML::Emitter& out, const Message& message) {
  const Descriptor* d = message.GetDescriptor();
  const Reflection* r = message.GetReflection();
  const std::string& name = d->full_name();
  if (name == "google.protobuf.Timestamp" || name == "google.protobuf.Duration") {
    const int64_t seconds = r->GetInt64(message, d->FindFieldByName("seconds"));
    const int32_t nanos = r->GetInt32(message, d->FindFieldByName("nanos"));
    std::string text;
    if (name == "google.protobuf.Timestamp") {
      google::protobuf::Timestamp t;
      t.set_seconds(seconds);
      t.set_nanos(nanos);
      text = google::protobuf::util::TimeUtil::ToString(t);
    } else {
      google::protobuf::Duration t;
      t.set_seconds(seconds);
      t.set_nanos(nanos);
      text = google::protobuf::util::TimeUtil::ToString(t);
    }
    out << YAML::DoubleQuoted << text;
    return true;
  }
  static const auto* const kWrappers = new absl::flat_hash_set<std::string>(
      {"google.protobuf.DoubleValue", "google.protobuf.FloatValue", "google.protobuf.Int64Value",
       "google.protobuf.UInt64Value", "google.protobuf.Int32Value", "google.protobuf.UInt32Value",
       "google.protobuf.BoolValue", "google.protobuf.StringValue", "google.protobuf.BytesValue"});
  if (kWrappers->contains(name)) {
    EmitValue(out, message, d->FindFieldByName("value"), -1);
    return true;
  }
  return false;
}

// Rules 1 and 2: a message as a block mapping.
void EmitMessage(YAML::Emitter& out, const Message& message) {
  if (EmitWellKnown(out, message)) return;
  const Descriptor* d = message.GetDescriptor();
  const Reflection* r = message.GetReflection();
  std::vector<const FieldDescriptor*> fields;
  for (int i = 0; i < d->field_count(); ++i) {
    const FieldDescriptor* f = d->field(i);
    if (f->is_repeated() || !f->has_presence() || r->HasField(message, f)) fields.push_back(f);
  }
  if (fields.empty()) {
    out << YAML::Flow << YAML::BeginMap << YAML::EndMap;
    return;
  }
  out << YAML::BeginMap;
  for (const FieldDescriptor* f : fields) {
    out << YAML::Key << f->name() << YAML::Value;
    if (f->is_map()) {
      EmitMap(out, message, f);
    } else if (f->is_repeated()) {
      const int size = r->FieldSize(message, f);
      if (size == 0) out << YAML::Flow;
      out << YAML::BeginSeq;
      for (int i = 0; i < size; ++i) EmitValue(out, message, f, i);
      out << YAML::EndSeq;
    } else {
      EmitValue(out, message, f, -1);
    }
  }
  out << YAML::EndMap;
}

}  // namespace

absl::StatusOr<std::string> MessageToJson(const Message& message) {
  google::protobuf::util::JsonPrintOptions options;
  options.preserve_proto_field_names = true;
  options.always_print_primitive_fields = true;
  options.add_whitespace = true;
  std::string json;
  auto status = google::protobuf::util::MessageToJsonString(message, &json, options);
  if (!status.ok()) {
    return absl::InternalError(absl::StrCat("cannot print the reply as JSON: ", status.ToString()));
  }
  if (json.empty() || json.back() != '\n') json.push_back('\n');
  return json;
}

absl::StatusOr<std::string> MessageToYaml(const Message& message) {
  YAML::Emitter out;
  out.SetOutputCharset(YAML::EmitNonAscii);
  EmitMessage(out, message);
  if (!out.good()) {
    return absl::InternalError(
        absl::StrCat("cannot print the reply as YAML: ", out.GetLastError()));
  }
  return absl::StrCat(out.c_str(), "\n");
}

}  // namespace membroker::client

// The Python runtime's typed reading of JSON records (formats/record.py, formats/manifest.py `ManifestRecord`), with
// its one-line messages: a missing key, a value of the wrong type (shown as Python's repr), a non-object.
#pragma once

#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace pkd::detail {

using Json = nlohmann::ordered_json;

// A field's annotation as formats/manifest.py declares it.
enum class Kind { Str, Int, Float, Bool, List, ListOfStr, Object, ObjectOfStr, ObjectOfNum, Any };

struct Field {
  const char* name;
  Kind kind;
  bool required = false;  // no default in the dataclass
  bool nullable = false;  // `X | None`
};

std::string py_repr(const Json& value);   // Python's repr() of the value json.loads gives
std::string py_str(const Json& value);    // Python's str()
std::string py_type(const Json& value);   // type(value).__name__

// JsonRecord.from_dict + ManifestRecord's type check: "{what} must be a JSON object, got {type}",
// "{what} lacks 'a', 'b'", "{what} has 'k' = {repr}, which is not {type}".
void check_record(const Json& data, const std::string& what, const std::vector<Field>& fields);

}  // namespace pkd::detail

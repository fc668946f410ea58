#include "json_checks.hpp"

#include <cmath>
#include <cstdio>
#include <cstdlib>

#include "promptkd_edge/error.hpp"

namespace pkd::detail {
namespace {

// Python's repr of a float: the shortest digits that read back to the same double, in fixed notation unless the
// decimal point lies more than 16 digits right or 4 left of the first digit (float_repr_style 'short').
std::string float_repr(double v) {
  if (std::isnan(v)) return "nan";
  if (std::isinf(v)) return v < 0 ? "-inf" : "inf";
  char buf[40];
  for (int precision = 1; precision <= 17; ++precision) {
    std::snprintf(buf, sizeof buf, "%.*e", precision - 1, v);
    if (std::strtod(buf, nullptr) == v) break;
  }
  std::string text(buf);
  std::string sign = text[0] == '-' ? "-" : "";
  if (!sign.empty()) text.erase(0, 1);
  size_t e = text.find('e');
  std::string digits = text.substr(0, 1) + (e > 2 ? text.substr(2, e - 2) : "");
  int exponent = std::atoi(text.c_str() + e + 1);
  while (digits.size() > 1 && digits.back() == '0') digits.pop_back();
  int point = exponent + 1;  // digits before the decimal point
  if (point > 16 || point < -3) {
    std::string mantissa = digits.substr(0, 1) + (digits.size() > 1 ? "." + digits.substr(1) : "");
    std::snprintf(buf, sizeof buf, "e%c%02d", exponent < 0 ? '-' : '+', std::abs(exponent));
    return sign + mantissa + buf;
  }
  if (point <= 0) return sign + "0." + std::string(-point, '0') + digits;
  if (static_cast<size_t>(point) >= digits.size())
    return sign + digits + std::string(point - digits.size(), '0') + ".0";
  return sign + digits.substr(0, point) + "." + digits.substr(point);
}

std::string str_repr(const std::string& s) {
  char quote = (s.find('\'') != std::string::npos && s.find('"') == std::string::npos) ? '"' : '\'';
  std::string out(1, quote);
  for (unsigned char c : s) {
    if (c == '\\' || c == static_cast<unsigned char>(quote)) {
      out += '\\';
      out += static_cast<char>(c);
    } else if (c == '\n') {
      out += "\\n";
    } else if (c == '\r') {
      out += "\\r";
    } else if (c == '\t') {
      out += "\\t";
    } else if (c < 0x20 || c == 0x7f) {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\x%02x", c);
      out += buf;
    } else {
      out += static_cast<char>(c);
    }
  }
  return out + quote;
}

bool is_int(const Json& v) { return v.is_number_integer(); }
bool is_num(const Json& v) { return v.is_number(); }

bool has_kind(const Json& v, Kind kind) {
  switch (kind) {
    case Kind::Str: return v.is_string();
    case Kind::Int: return is_int(v);
    case Kind::Float: return is_num(v);
    case Kind::Bool: return v.is_boolean();
    case Kind::List: return v.is_array();
    case Kind::ListOfStr:
      if (!v.is_array()) return false;
      for (const auto& e : v)
        if (!e.is_string()) return false;
      return true;
    case Kind::Object: return v.is_object();
    case Kind::ObjectOfStr:
    case Kind::ObjectOfNum:
      if (!v.is_object()) return false;
      for (const auto& e : v)
        if (kind == Kind::ObjectOfStr ? !e.is_string() : !is_num(e)) return false;
      return true;
    case Kind::Any: return true;
  }
  return true;
}

std::string kind_name(Kind kind) {
  switch (kind) {
    case Kind::Str: return "a string";
    case Kind::Int: return "an integer";
    case Kind::Float: return "a number";
    case Kind::Bool: return "true or false";
    case Kind::List:
    case Kind::ListOfStr: return "a list";
    case Kind::Object: return "an object";
    case Kind::ObjectOfStr: return "an object of strings";
    case Kind::ObjectOfNum: return "an object of numbers";
    case Kind::Any: return "anything";
  }
  return "";
}

}  // namespace

std::string py_repr(const Json& v) {
  if (v.is_null()) return "None";
  if (v.is_boolean()) return v.get<bool>() ? "True" : "False";
  if (v.is_number_unsigned()) return std::to_string(v.get<uint64_t>());
  if (v.is_number_integer()) return std::to_string(v.get<int64_t>());
  if (v.is_number_float()) return float_repr(v.get<double>());
  if (v.is_string()) return str_repr(v.get<std::string>());
  std::string out;
  if (v.is_array()) {
    for (const auto& e : v) out += (out.empty() ? "" : ", ") + py_repr(e);
    return "[" + out + "]";
  }
  for (auto it = v.begin(); it != v.end(); ++it)
    out += (out.empty() ? "" : ", ") + str_repr(it.key()) + ": " + py_repr(it.value());
  return "{" + out + "}";
}

std::string py_str(const Json& v) { return v.is_string() ? v.get<std::string>() : py_repr(v); }

std::string py_type(const Json& v) {
  if (v.is_null()) return "NoneType";
  if (v.is_boolean()) return "bool";
  if (v.is_number_integer()) return "int";
  if (v.is_number_float()) return "float";
  if (v.is_string()) return "str";
  if (v.is_array()) return "list";
  return "dict";
}

void check_record(const Json& data, const std::string& what, const std::vector<Field>& fields) {
  if (!data.is_object()) throw Error(what + " must be a JSON object, got " + py_type(data));
  std::string missing;
  for (const auto& f : fields)
    if (f.required && !data.contains(f.name)) missing += (missing.empty() ? "'" : ", '") + std::string(f.name) + "'";
  if (!missing.empty()) throw Error(what + " lacks " + missing);
  for (const auto& f : fields) {
    auto it = data.find(f.name);
    if (it == data.end()) continue;
    if (has_kind(*it, f.kind) || (f.nullable && it->is_null())) continue;
    std::string shown = py_repr(*it);
    if (shown.size() > 40) shown = shown.substr(0, 37) + "...";
    throw Error(what + " has '" + f.name + "' = " + shown + ", which is not " + kind_name(f.kind) +
                (f.nullable ? " or null" : ""));
  }
}

}  // namespace pkd::detail

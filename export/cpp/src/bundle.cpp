#include "bundle.hpp"

#include <cerrno>
#include <cstring>
#include <fstream>
#include <iterator>
#include <optional>
#include <sstream>

namespace fs = std::filesystem;

namespace pkd::detail {
namespace {

const char* const CLASSES_FILE = "classes.json";
const char* const PREPROCESS_FILE = "preprocess.json";
const char* const VECTORS_FILE = "class_vectors.safetensors";
const char* const STUDENT_FILE = "student.safetensors";
const char* const ALTERED = "the bundle was altered or written by a broken tool";
const int SCHEMA_VERSION = 1;

// Python's truth value of a JSON value.
bool truthy(const Json& v) {
  if (v.is_null()) return false;
  if (v.is_boolean()) return v.get<bool>();
  if (v.is_number()) return v.get<double>() != 0.0;
  if (v.is_string() || v.is_array() || v.is_object()) return !v.empty();
  return true;
}

std::string read_bytes(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error("cannot open " + path.string() + ": " + std::strerror(errno));
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

// utils/files.py read_json: a JSON object with schema_version <= 1; `shown` is the path as Python prints it.
Json read_json(const fs::path& path, const std::string& shown, const std::string& what) {
  std::error_code ec;
  auto status = fs::status(path, ec);
  if (!fs::exists(status)) throw Error(what + " not found: " + shown);
  if (fs::is_directory(status))
    throw Error(what + " " + shown + " is unreadable: [Errno 21] Is a directory: '" + shown + "'");
  Json obj;
  try {
    obj = Json::parse(read_bytes(path));
  } catch (const Json::exception& e) {
    throw Error(what + " " + shown + " is unreadable: " + e.what());
  } catch (const Error& e) {
    throw Error(what + " " + shown + " is unreadable: " + e.what());
  }
  if (!obj.is_object()) throw Error(what + " " + shown + " does not hold a JSON object");
  if (obj.contains("schema_version")) {
    const Json& v = obj["schema_version"];
    bool ok = v.is_boolean() || (v.is_number_integer() && v.get<int64_t>() <= SCHEMA_VERSION);
    if (!ok)
      throw Error(what + " " + shown + " has schema_version " + py_str(v) + "; this promptkd-edge reads <= " +
                  std::to_string(SCHEMA_VERSION));
  }
  return obj;
}

const std::vector<Field> MANIFEST_FIELDS = {
    {"model", Kind::Any, true},         {"format", Kind::Str},        {"valid", Kind::Bool},
    {"created", Kind::Str, false, true}, {"source", Kind::Object},     {"versions", Kind::Object},
    {"preprocess", Kind::Str},          {"parity", Kind::List},       {"engines", Kind::List},
    {"text_encoder", Kind::Any},        {"files", Kind::ObjectOfStr}};
const std::vector<Field> MODEL_FIELDS = {
    {"file", Kind::Str, true},        {"precision", Kind::Str, true},         {"head", Kind::Str, true},
    {"inputs", Kind::List, true},     {"outputs", Kind::List, true},          {"num_classes", Kind::Int, true},
    {"embedding_dim", Kind::Int, true}, {"logit_scale", Kind::Float, true},   {"input_format", Kind::Str},
    {"fp32_nodes", Kind::ListOfStr},  {"conversion", Kind::Object},
    {"slim_nodes_removed", Kind::Int, false, true}, {"frame", Kind::Object, false, true}};
const std::vector<Field> TENSOR_FIELDS = {
    {"name", Kind::Str, true}, {"shape", Kind::List, true}, {"dtype", Kind::Str, true},
    {"layout", Kind::Str, false, true}};
const std::vector<Field> PARITY_FIELDS = {
    {"target", Kind::Str, true},          {"precision", Kind::Str, true},
    {"passed", Kind::Bool, true},         {"failures", Kind::ListOfStr},
    {"thresholds", Kind::ObjectOfNum},    {"images", Kind::Int, false, true},
    {"top1_agreement", Kind::Float, false, true}, {"max_abs_logit_diff", Kind::Float, false, true},
    {"min_cosine", Kind::Float, false, true},     {"required", Kind::Bool, false, true},
    {"runtime", Kind::Str, false, true},  {"engine", Kind::Str, false, true},
    {"reference", Kind::Str, false, true}};
const std::vector<Field> ENGINE_FIELDS = {
    {"file", Kind::Str, true},  {"precision", Kind::Str, true},
    {"tensorrt", Kind::Str, false, true}, {"compute_capability", Kind::Str, false, true},
    {"gpu", Kind::Str, false, true},      {"profiles", Kind::List},
    {"onnx", Kind::Str, false, true},     {"parity_passed", Kind::Bool}};
const std::vector<Field> TEXT_FIELDS = {
    {"files", Kind::ObjectOfStr, true}, {"output", Kind::Str, true}, {"sentence", Kind::Str, true},
    {"tokenizer", Kind::Object, true},  {"parity", Kind::List}};

std::string str_or(const Json& d, const char* key, const std::string& fallback = "") {
  auto it = d.find(key);
  return it != d.end() && it->is_string() ? it->get<std::string>() : fallback;
}

// Manifest.from_dict: the typed records in the order Python builds them. Returns the model entry (input_format set).
Json check_manifest(const Json& d) {
  if (!d.is_object() || !d.contains("format") || d["format"] != "promptkd-edge/bundle")
    throw Error("not a promptkd-edge bundle manifest");
  if (!d.contains("files")) throw Error("manifest lacks 'files'");
  check_record(d, "manifest", MANIFEST_FIELDS);
  Json model = d["model"];
  if (!model.is_object()) throw Error("the bundle manifest has no model entry");
  Json format = model.contains("input_format") ? model["input_format"] : Json();
  if (!truthy(format)) format = truthy(model.value("uint8_input", Json())) ? "uint8" : "normalized";
  model.erase("uint8_input");
  model["input_format"] = format;
  check_record(model, "manifest model", MODEL_FIELDS);
  for (const auto& t : model["inputs"]) check_record(t, "manifest model input", TENSOR_FIELDS);
  for (const auto& t : model["outputs"]) check_record(t, "manifest model output", TENSOR_FIELDS);
  if (truthy(d.value("parity", Json())))
    for (const auto& p : d["parity"]) check_record(p, "manifest parity entry", PARITY_FIELDS);
  if (truthy(d.value("engines", Json())))
    for (const auto& e : d["engines"]) check_record(e, "manifest engine entry", ENGINE_FIELDS);
  if (truthy(d.value("text_encoder", Json()))) {
    const Json& te = d["text_encoder"];
    const std::string what = "manifest text_encoder";
    check_record(te, what, TEXT_FIELDS);
    const std::pair<const char*, Kind> keys[] = {
        {"merges", Kind::Str}, {"special_tokens", Kind::List}, {"context_length", Kind::Int}, {"clean", Kind::Str}};
    for (const auto& [key, kind] : keys) {
      auto it = te["tokenizer"].find(key);
      bool ok = it != te["tokenizer"].end() &&
                (kind == Kind::Str ? it->is_string() : kind == Kind::List ? it->is_array()
                                                                            : it->is_number_integer() || it->is_boolean());
      if (!ok)
        throw Error(what + " tokenizer lacks '" + key + "' or it is not " +
                    (kind == Kind::Str ? "a string" : kind == Kind::List ? "a list" : "an integer"));
    }
    if (!te["files"].contains("fp32")) throw Error(what + " files lack 'fp32'");
    for (const auto& p : te.value("parity", Json::array()))
      check_record(p, "manifest text_encoder parity entry", PARITY_FIELDS);
  }
  return model;
}

class Reader {
 public:
  explicit Reader(const fs::path& dir) : dir_(dir), root_(python_path(dir.string())) {}

  std::string shown(const std::string& name) const { return python_path(root_ + "/" + name); }
  fs::path at(const std::string& name) const { return dir_ / name; }
  const std::string& root() const { return root_; }

  // bundle.py `inside`: a name that could lead out of the bundle is refused.
  fs::path inside(const std::string& name) const {
    bool outside = name.empty() || name[0] == '/' || name[0] == '\\' || (name.size() >= 2 && name[1] == ':');
    size_t start = 0;
    while (!outside && start <= name.size()) {
      size_t end = name.find_first_of("/\\", start);
      if (end == std::string::npos) end = name.size();
      outside = name.compare(start, end - start, "..") == 0 && end - start == 2;
      start = end + 1;
    }
    if (outside)
      throw Error("bundle " + root_ + ": manifest.json names " + py_repr(Json(name)) +
                  ", a path outside the bundle; " + ALTERED);
    return at(name);
  }

  void require_listed(const Json& files, const std::vector<std::string>& names) const {
    for (const auto& name : names) {
      inside(name);
      if (!files.contains(name))
        throw Error("bundle " + root_ + ": manifest.json does not list " + name + "; " + ALTERED);
    }
  }

  void verify_files(const Json& files) const {
    for (auto it = files.begin(); it != files.end(); ++it) {
      fs::path path = inside(it.key());
      std::error_code ec;
      if (!fs::is_regular_file(path, ec))
        throw Error("bundle " + root_ + " is incomplete: " + it.key() + " is missing");
      if (sha256_file(path) != it.value().get<std::string>())
        throw Error("bundle " + root_ + " was modified: " + it.key() + " does not match its sha256 in manifest.json");
    }
  }

  Json json(const std::string& name, const std::string& what) const { return read_json(at(name), shown(name), what); }

 private:
  fs::path dir_;
  std::string root_;
};

std::vector<std::string> files_read(const Json& manifest, const Json& model) {
  std::vector<std::string> names = {model["file"].get<std::string>(), CLASSES_FILE, PREPROCESS_FILE};
  for (const auto& e : manifest.value("engines", Json::array())) {
    names.push_back(e["file"].get<std::string>());
    if (truthy(e.value("onnx", Json()))) names.push_back(e["onnx"].get<std::string>());
  }
  if (truthy(manifest.value("text_encoder", Json()))) {
    const Json& te = manifest["text_encoder"];
    for (const auto& f : te["files"]) names.push_back(f.get<std::string>());
    names.push_back(te["tokenizer"]["merges"].get<std::string>());
  }
  std::vector<std::string> unique;
  for (auto& n : names)
    if (std::find(unique.begin(), unique.end(), n) == unique.end()) unique.push_back(n);
  return unique;
}

// The class vectors W [C, D] of a safetensors file (its tensor "class_vectors", F32).
void read_vectors(const fs::path& path, const std::string& shown, Bundle& b) {
  std::string bytes = read_bytes(path);
  auto bad = [&](const std::string& why) { return Error("class vectors " + shown + " are unreadable: " + why); };
  if (bytes.size() < 8) throw bad("shorter than a safetensors header");
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | static_cast<unsigned char>(bytes[i]);
  if (n > bytes.size() - 8) throw bad("header longer than the file");
  Json header;
  try {
    header = Json::parse(bytes.substr(8, n));
  } catch (const Json::exception& e) {
    throw bad(e.what());
  }
  if (!header.contains("class_vectors")) throw bad("no tensor 'class_vectors'");
  const Json& t = header["class_vectors"];
  if (t.value("dtype", "") != "F32" || !t["shape"].is_array() || t["shape"].size() != 2)
    throw bad("'class_vectors' is not a 2-D F32 tensor");
  int64_t rows = t["shape"][0].get<int64_t>(), cols = t["shape"][1].get<int64_t>();
  uint64_t begin = t["data_offsets"][0].get<uint64_t>(), end = t["data_offsets"][1].get<uint64_t>();
  if (rows < 0 || cols < 0 || end < begin || end - begin != static_cast<uint64_t>(rows * cols) * 4 ||
      8 + n + end > bytes.size())
    throw bad("'class_vectors' data does not fit its shape");
  b.class_vectors.resize(static_cast<size_t>(rows * cols));
  std::memcpy(b.class_vectors.data(), bytes.data() + 8 + n + begin, end - begin);  // little-endian hosts
  b.vectors_rows = rows;
  b.vectors_cols = cols;
}

void read_classes(const Reader& r, Bundle& b) {
  Json classes = r.json(CLASSES_FILE, "class list");
  std::string vectors = classes.contains("vectors_file") ? py_str(classes["vectors_file"]) : VECTORS_FILE;
  fs::path path = r.inside(vectors);
  const Json names = classes.value("names", Json());
  bool ok = names.is_array();
  for (const auto& n : names) ok = ok && n.is_string();
  if (!ok) throw Error(r.shown(CLASSES_FILE) + " has no list of class names ('names')");
  const Json scale = classes.value("logit_scale", Json());
  if (!scale.is_number()) throw Error(r.shown(CLASSES_FILE) + " has no number 'logit_scale'");
  for (const auto& n : names) b.class_names.push_back(n.get<std::string>());
  b.logit_scale = scale.get<double>();
  std::error_code ec;
  if (fs::is_regular_file(path, ec)) read_vectors(path, r.shown(vectors), b);
}

EngineRecord engine_record(const Json& e) {
  EngineRecord rec;
  rec.file = e["file"].get<std::string>();
  rec.precision = e["precision"].get<std::string>();
  rec.tensorrt = str_or(e, "tensorrt");
  rec.compute_capability = str_or(e, "compute_capability");
  rec.gpu = str_or(e, "gpu");
  rec.sha256 = str_or(e, "sha256");
  rec.onnx = str_or(e, "onnx");
  rec.parity_passed = e.value("parity_passed", true);
  return rec;
}

void read_model(const Json& model, Bundle& b) {
  b.model_file = model["file"].get<std::string>();
  b.model_precision = model["precision"].get<std::string>();
  b.head = model["head"].get<std::string>();
  b.input_format = model["input_format"].get<std::string>();
  b.embedding_dim = model["embedding_dim"].get<int64_t>();
  if (model["inputs"].empty()) throw Error("bundle " + b.name + ": manifest model has no inputs; " + ALTERED);
  const Json& in = model["inputs"][0];
  b.input.name = in["name"].get<std::string>();
  b.input.format = b.input_format;
  for (const auto& d : in["shape"]) b.input.shape.push_back(d.is_number_integer() ? d.get<int64_t>() : -1);
  if (!b.input.shape.empty()) b.input.shape[0] = -1;
  b.input_dtype = in["dtype"].get<std::string>();
  b.input_layout = str_or(in, "layout");
  for (const auto& o : model["outputs"]) b.output_names.push_back(o["name"].get<std::string>());
}

}  // namespace

std::string python_path(const std::string& p) {
  bool absolute = !p.empty() && p[0] == '/';
  std::string out;
  size_t start = 0;
  while (start <= p.size()) {
    size_t end = p.find('/', start);
    if (end == std::string::npos) end = p.size();
    std::string part = p.substr(start, end - start);
    if (!part.empty() && part != ".") out += (out.empty() ? "" : "/") + part;
    start = end + 1;
  }
  if (absolute) return "/" + out;
  return out.empty() ? "." : out;
}

Bundle open_bundle(const fs::path& dir, bool allow_invalid) {
  Reader r(dir);
  Bundle b;
  b.name = r.root();
  b.dir = dir;
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) throw Error("bundle not found: " + r.root());
  Json model;
  try {
    b.manifest = r.json("manifest.json", "bundle manifest");
    model = check_manifest(b.manifest);
  } catch (const Error& e) {
    throw Error(r.shown("manifest.json") + ": " + e.what());
  }
  const Json& files = b.manifest["files"];
  r.require_listed(files, files_read(b.manifest, model));
  r.verify_files(files);
  Json classes = r.json(CLASSES_FILE, "class list");
  const Json vectors = classes.contains("vectors_file") ? classes["vectors_file"] : Json(VECTORS_FILE);
  if (!vectors.is_string())
    throw Error("bundle " + r.root() + ": classes.json has vectors_file " + py_repr(vectors) + ", not a file name; " +
                ALTERED);
  std::vector<std::string> extra;
  for (const std::string& name : {vectors.get<std::string>(), std::string(STUDENT_FILE)})
    if ((classes.contains("vectors_file") && classes["vectors_file"] == name) || fs::exists(r.inside(name), ec))
      extra.push_back(name);
  r.require_listed(files, extra);
  b.valid = b.manifest.value("valid", false);
  if (!b.valid && !allow_invalid)
    throw Error("bundle " + r.root() + " failed its parity gate at export (kept with --force); re-export it, or "
                "accept it explicitly (allow_invalid=True / --allow-invalid)");
  read_classes(r, b);
  b.preprocess = r.json(PREPROCESS_FILE, "preprocess description");
  read_model(model, b);
  for (const auto& e : b.manifest.value("engines", Json::array())) b.engines.push_back(engine_record(e));
  for (const auto& p : b.manifest.value("parity", Json::array()))
    if (truthy(p.value("runtime", Json())) && p["passed"].get<bool>())
      b.passed_gates.push_back(p["runtime"].get<std::string>());
  return b;
}

namespace {

// Python's tuple(value) of a JSON value (None when it is not iterable), for preprocess.json's lists.
std::optional<std::vector<Json>> py_tuple(const Json& v) {
  std::vector<Json> out;
  if (v.is_array()) {
    for (const auto& e : v) out.push_back(e);
  } else if (v.is_object()) {
    for (auto it = v.begin(); it != v.end(); ++it) out.push_back(it.key());
  } else if (v.is_string()) {
    for (char c : v.get<std::string>()) out.push_back(std::string(1, c));
  } else {
    return std::nullopt;
  }
  return out;
}

std::string py_list(const std::vector<Json>& items) { return py_repr(Json(items)); }

std::vector<Json> tuple_or_throw(const Json& v) {
  auto t = py_tuple(v);
  if (!t) throw Error("preprocess config is malformed: '" + py_type(v) + "' object is not iterable");
  return *t;
}

}  // namespace

PreprocessSpec preprocess_spec(const Json& d) {
  for (const char* key : {"size", "mean", "std"})
    if (!d.contains(key)) throw Error(std::string("preprocess config lacks '") + key + "'");
  std::vector<Json> size = d["size"].is_number_integer() || d["size"].is_boolean()
                               ? std::vector<Json>{d["size"], d["size"]}
                               : tuple_or_throw(d["size"]);
  std::vector<Json> mean = tuple_or_throw(d["mean"]), stdev = tuple_or_throw(d["std"]);
  bool size_ok = size.size() == 2;
  for (const auto& s : size) size_ok = size_ok && s.is_number_integer() && s.get<int64_t>() > 0;
  if (!size_ok)
    throw Error("preprocess size must be two positive integers [height, width], got " + py_list(size));
  for (const auto& [name, vals] : {std::pair<const char*, const std::vector<Json>&>{"mean", mean}, {"std", stdev}}) {
    bool ok = vals.size() == 3;
    for (const auto& v : vals) ok = ok && v.is_number();
    if (!ok) throw Error(std::string("preprocess ") + name + " must be three numbers, got " + py_list(vals));
  }
  for (const auto& v : stdev)
    if (v.get<double>() == 0) throw Error("preprocess std must not contain 0, got " + py_list(stdev));
  PreprocessSpec spec;
  spec.height = static_cast<int>(size[0].get<int64_t>());
  spec.width = static_cast<int>(size[1].get<int64_t>());
  for (int c = 0; c < 3; ++c) {
    spec.mean[c] = static_cast<float>(mean[c].get<double>());
    spec.std[c] = static_cast<float>(stdev[c].get<double>());
  }
  spec.interpolation = d.contains("interpolation") ? py_str(d["interpolation"]) : "bicubic";
  spec.resize_mode = d.contains("resize_mode") ? py_str(d["resize_mode"]) : "shortest";
  if (spec.interpolation != "bicubic" && spec.interpolation != "bilinear" && spec.interpolation != "nearest")
    throw Error("preprocess interpolation '" + spec.interpolation + "' is not one of bicubic, bilinear, nearest");
  if (spec.resize_mode != "shortest" && spec.resize_mode != "squash" && spec.resize_mode != "longest")
    throw Error("preprocess resize_mode '" + spec.resize_mode + "' is not one of shortest, squash, longest");
  return spec;
}

}  // namespace pkd::detail

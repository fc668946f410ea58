// Reading and verifying a bundle folder as the Python runtime does (runtime/bundle.py `open_bundle`,
// formats/manifest.py, formats/preprocess.py): the same checks in the same order, the same one-line refusals.
#pragma once

#include <filesystem>
#include <string>
#include <vector>

#include "backend.hpp"
#include "json_checks.hpp"
#include "promptkd_edge/classifier.hpp"

namespace pkd::detail {

struct Bundle {
  std::string name;                 // the folder as Python's Path(dir) prints it (messages, --json "bundle")
  std::filesystem::path dir;
  Json manifest;                    // checked by the manifest's typed records
  std::string model_file;
  std::string model_precision;      // fp32, fp16, int8, bf16
  std::string head;                 // logits, embeddings, both
  std::string input_format;         // normalized, uint8, pixels, frame
  InputSpec input;
  std::string input_dtype, input_layout;
  std::vector<std::string> output_names;
  int64_t embedding_dim = 0;
  std::vector<EngineRecord> engines;   // manifest order
  std::vector<std::string> passed_gates;  // the `runtime` of each passing parity entry (e.g. "openvino-bf16")
  std::vector<std::string> class_names;
  std::vector<float> class_vectors;  // [C, D] row-major; empty when the bundle ships none
  int64_t vectors_rows = 0, vectors_cols = 0;
  double logit_scale = 1.0;
  Json preprocess;                   // preprocess.json as read (checked by preprocess_spec)
  bool valid = false;
};

// Python's str(Path(p)): separators collapsed, "." parts and a trailing '/' dropped.
std::string python_path(const std::string& p);

// open_bundle(path, allow_invalid=...): every file a reader opens is listed in manifest.json and has its sha256.
Bundle open_bundle(const std::filesystem::path& dir, bool allow_invalid);

// PreprocessSpec.from_dict of preprocess.json, with its one-line refusals.
PreprocessSpec preprocess_spec(const Json& d);

}  // namespace pkd::detail

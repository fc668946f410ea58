// The one interface between the bundle-reading core (classifier.cpp) and an inference backend (OpenVINO, TensorRT).
// The core reads and verifies the bundle, turns images into the model's input tensor and turns the model's output into
// logits; a backend only runs the graph or plan. Internal header: not installed.
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "promptkd_edge/error.hpp"

namespace pkd::detail {

// The model input as the bundle's manifest describes it (manifest "model.inputs[0]" and "input_format").
struct InputSpec {
  std::string name;            // graph input name, e.g. "image"
  std::string format;          // "uint8" (NHWC uint8 0-255), "normalized" (NCHW float32), "pixels" (NCHW float32 0-255)
  std::vector<int64_t> shape;  // manifest shape; the batch dimension (and any dynamic one) is -1
};

// A backend's output for one batch: row-major [batch, width] float32 (the graph's first output: logits or embeddings).
struct Output {
  std::vector<float> values;
  int64_t batch = 0;
  int64_t width = 0;
};

// A TensorRT plan as the manifest's "engines" list records it (runtime/bundle.py, formats/manifest.py).
struct EngineRecord {
  std::string file;                // plan file, relative to the bundle
  std::string precision;           // "fp16", "int8", "fp32", ...
  std::string tensorrt;            // TensorRT version it was built with, e.g. "10.3.0" or "11.4.0.106"
  std::string compute_capability;  // "8.7"
  std::string gpu;                 // GPU name at build time
  std::string sha256;              // of the plan file (lowercase hex)
  std::string onnx;                // the ONNX graph it was built from, relative to the bundle
  bool parity_passed = false;
};

class Backend {
 public:
  virtual ~Backend() = default;
  // Runs one batch. `input` points at batch * prod(shape[1:]) elements in InputSpec::format's dtype and layout.
  // Thread-safe: one Backend may be called from several threads at once. Throws pkd::Error with one line on failure.
  virtual Output run(const void* input, int64_t batch) = 0;
  // Largest batch one run() accepts (a TensorRT profile's max), or 0 when unlimited.
  virtual int64_t max_batch() const { return 0; }
  // What runs, for the CLI's "backend" field, e.g. "openvino (CPU, f32)" or "tensorrt 10.3.0 (Orin, fp16)".
  virtual std::string description() const = 0;
};

// sha256 of a file as lowercase hex (the manifest's form); defined by the core (sha256.cpp). Throws pkd::Error when
// the file cannot be read.
std::string sha256_file(const std::filesystem::path& path);

// Defined in tensorrt_backend.cpp, compiled only with -DPKD_WITH_TENSORRT=ON (the core then defines PKD_HAVE_TENSORRT).
// `bundle` is the bundle folder as the user named it (for messages), `dir` the folder to read from. `engines` are the
// manifest's records in manifest order; the backend picks the first whose TensorRT version and compute capability
// match this machine and refuses with the Python runtime's lines otherwise (runtime/classifier.py `_tensorrt`).
std::unique_ptr<Backend> open_tensorrt(const std::string& bundle, const std::filesystem::path& dir,
                                       const std::vector<EngineRecord>& engines, const InputSpec& input,
                                       int device);

}  // namespace pkd::detail

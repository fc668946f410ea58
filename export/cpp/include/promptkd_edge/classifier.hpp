// promptkd_edge: a promptkd-edge bundle in a native app. The bundle is read and verified as the Python runtime reads
// it (promptkd_edge/runtime/bundle.py: the sha256 of every file, the same one-line refusals), images are resized and
// cropped as its preprocess.json says, and a backend (OpenVINO on the CPU, TensorRT on an NVIDIA GPU) runs the model.
//
//   auto clf = pkd::Classifier::from_bundle("bundles/pets");          // OpenVINO, the precision the bundle gates
//   pkd::Image img = pkd::load_image("cat.jpg");
//   for (const auto& p : clf.classify({img.view()}, 3)) std::cout << p.labels[0] << ' ' << p.probabilities[0];
//
// Every error is a pkd::Error whose what() is one line. One Classifier may be used from several threads at once.
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "promptkd_edge/error.hpp"
#include "promptkd_edge/image.hpp"

namespace pkd {

struct Options {
  int threads = 0;                // OpenVINO's INFERENCE_NUM_THREADS; 0: OpenVINO's default (all usable cores)
  std::string precision = "auto"; // OpenVINO: auto (bf16 where the bundle's bf16 gate passed and the CPU has it, else
                                  // fp32), fp32, bf16 (forced), int8 (the bundle's INT8 graph at f32; refused otherwise)
  std::string hint = "latency";   // OpenVINO's PERFORMANCE_HINT: latency or throughput
  int device = 0;                 // TensorRT: the CUDA device
  bool allow_invalid = false;     // load a bundle that failed its parity gate at export (kept with --force)
  int batch_size = 16;            // images per backend call (capped by a TensorRT plan's largest profile)
};

// The top-k classes of one image, most probable first.
struct Prediction {
  std::vector<std::string> labels;
  std::vector<double> probabilities;  // softmax in float64 over all classes
  std::vector<int> indices;
};

// Row-major [rows, cols] float32.
struct Matrix {
  std::vector<float> values;
  int64_t rows = 0;
  int64_t cols = 0;
  const float* row(int64_t i) const { return values.data() + i * cols; }
};

// How a bundle turns an image into model input (its preprocess.json).
struct PreprocessSpec {
  int height = 0;
  int width = 0;
  float mean[3] = {0, 0, 0};
  float std[3] = {1, 1, 1};
  std::string interpolation = "bicubic";  // bicubic | bilinear | nearest
  std::string resize_mode = "shortest";   // shortest | squash | longest
};

// open_clip's eval resize + centre crop of `image` to spec's size, as the Python runtime does it (utils/images.py
// `resize_crop`, Pillow 13's resampling): an owned HxWx3 image of exactly spec.height x spec.width.
Image resize_crop(const ImageView& image, const PreprocessSpec& spec);

class Classifier {
 public:
  // Opens and verifies the bundle folder `dir` (sha256 of every file) and loads it on `backend`: "openvino" or
  // "tensorrt" (when this build has it).
  static Classifier from_bundle(const std::filesystem::path& dir, const std::string& backend = "openvino",
                                const Options& options = {});
  Classifier(Classifier&&) noexcept;
  Classifier& operator=(Classifier&&) noexcept;
  ~Classifier();

  // Logits [N, C] at the teacher's logit scale for images of any size (resized and cropped as preprocess.json says).
  Matrix logits(const std::vector<ImageView>& images) const;
  // Unit image features [N, D] (bundles exported with --head embeddings or both).
  Matrix embed(const std::vector<ImageView>& images) const;
  // The top_k classes of each image (top_k clamped to 1..number of classes).
  std::vector<Prediction> classify(const std::vector<ImageView>& images, int top_k = 5) const;

  const std::vector<std::string>& class_names() const;
  const PreprocessSpec& preprocess() const;
  std::string input_format() const;  // the model input: "normalized", "uint8" or "pixels"
  std::string description() const;   // what runs, e.g. "openvino 2026.4.1 CPU fp32" (pkd predict's "backend")
  const std::vector<std::string>& notes() const;  // what the caller should know (e.g. bf16 forced without a gate)

 private:
  struct Impl;
  explicit Classifier(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// Softmax (float64) of each row of `logits` and its top_k classes, stable on ties (runtime/classifier.py best_k).
std::vector<Prediction> best_k(const Matrix& logits, const std::vector<std::string>& names, int top_k);

}  // namespace pkd

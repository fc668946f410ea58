// The core: a verified bundle, images turned into its model input, a backend, logits turned into predictions.
// Mirrors promptkd_edge/runtime/classifier.py and runtime/preprocess.py.
#include "promptkd_edge/classifier.hpp"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "backend.hpp"
#include "bundle.hpp"
#include "resample.hpp"
#ifdef PKD_HAVE_OPENVINO
#include "openvino_backend.hpp"
#endif

namespace fs = std::filesystem;

namespace pkd {

using detail::Backend;
using detail::Bundle;

struct Classifier::Impl {
  Bundle bundle;
  PreprocessSpec spec;
  std::unique_ptr<Backend> backend;
  bool openvino = false;
  std::vector<std::string> notes;
  int64_t batch = 16;

  std::vector<uint8_t> inputs(const std::vector<ImageView>& images, size_t first, size_t count) const;
  Matrix run(const std::vector<ImageView>& images, const std::string& output) const;
};

namespace {

std::string dims(const std::vector<int64_t>& shape) {
  std::string out;
  for (auto d : shape) out += (out.empty() ? "" : ", ") + std::to_string(d);
  return out;
}

// The line for image `i` of `count` (runtime/preprocess.py `_indexed`: prefixed when there are several).
Error image_error(size_t i, size_t count, const std::string& line) {
  return Error(count == 1 ? line : "image " + std::to_string(i) + ": " + line);
}

void check_view(const ImageView& v, size_t i, size_t count) {
  if (v.rgb == nullptr) throw image_error(i, count, "image buffer is null");
  if (v.width <= 0 || v.height <= 0)
    throw image_error(i, count, "image of " + std::to_string(v.width) + "x" + std::to_string(v.height) +
                                    " pixels; width and height must be positive");
  const size_t row = static_cast<size_t>(v.width) * 3, stride = v.stride_bytes ? v.stride_bytes : row;
  if (stride < row)
    throw image_error(i, count, "row stride of " + std::to_string(stride) + " bytes is less than the " +
                                    std::to_string(row) + " bytes of a " + std::to_string(v.width) +
                                    "-pixel RGB row (3 bytes a pixel)");
  const size_t need = stride * static_cast<size_t>(v.height - 1) + row;
  if (v.size_bytes && v.size_bytes < need)
    throw image_error(i, count, "image buffer of " + std::to_string(v.size_bytes) + " bytes is too small for " +
                                    std::to_string(v.width) + "x" + std::to_string(v.height) + " RGB with rows " +
                                    std::to_string(stride) + " bytes apart (" + std::to_string(need) + " bytes)");
}

// numpy's pairwise summation (npy_pairwise_sum, used by .sum over a contiguous axis), so probabilities match.
double pairwise_sum(const double* a, size_t n) {
  if (n < 8) {
    double s = 0.;
    for (size_t i = 0; i < n; ++i) s += a[i];
    return s;
  }
  if (n <= 128) {
    double r[8];
    for (int j = 0; j < 8; ++j) r[j] = a[j];
    size_t i = 8;
    for (; i < n - (n % 8); i += 8)
      for (int j = 0; j < 8; ++j) r[j] += a[i + j];
    double s = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));
    for (; i < n; ++i) s += a[i];
    return s;
  }
  size_t n2 = n / 2;
  n2 -= n2 % 8;
  return pairwise_sum(a, n2) + pairwise_sum(a + n2, n - n2);
}

std::unique_ptr<Backend> open_backend(const Bundle& b, const std::string& backend, const Options& o,
                                      std::vector<std::string>& notes) {
  if (backend == "openvino") {
#ifdef PKD_HAVE_OPENVINO
    std::string precision = o.precision;
    if (precision == "auto") {
      bool gated = std::find(b.passed_gates.begin(), b.passed_gates.end(), "openvino-bf16") != b.passed_gates.end();
      precision = gated && detail::openvino_has_bf16() ? "bf16" : "fp32";
    } else if (precision == "int8") {
      if (b.model_precision != "int8")
        throw Error("precision int8 runs a bundle exported with --precision int8; " + b.name + "'s graph is " +
                    b.model_precision);
      precision = "fp32";  // the INT8 graph's own arithmetic, the rest at f32 (runtime/classifier.py _cpu_options)
    } else if (precision == "bf16" &&
               std::find(b.passed_gates.begin(), b.passed_gates.end(), "openvino-bf16") == b.passed_gates.end()) {
      notes.push_back("bf16 forced: this bundle has no passing bf16 parity gate (add one with `pkd export " + b.name +
                      " --precision bf16`)");
    }
    return detail::open_openvino(b.dir / b.model_file, detail::python_path(b.name + "/" + b.model_file), b.input,
                                 precision, o.threads, o.hint);
#else
    (void)b, (void)o, (void)notes;
    throw Error("this promptkd_edge was built without its OpenVINO backend; configure it with -DPKD_WITH_OPENVINO=ON "
                "-DOpenVINO_DIR=<the openvino wheel's cmake folder>");
#endif
  }
#ifdef PKD_HAVE_TENSORRT
  return detail::open_tensorrt(b.name, b.dir, b.engines, b.input, o.device);  // it picks among the passed plans
#else
  throw Error("this promptkd_edge was built without its TensorRT backend; configure it with -DPKD_WITH_TENSORRT=ON "
              "-DTensorRT_ROOT=<TensorRT or JetPack prefix>");
#endif
}

// The manifest's input shape, as Python's message shows it: [batch, 3, 224, 224] float32 (NCHW).
void check_input_shape(const Bundle& b, const PreprocessSpec& spec, int64_t batch) {
  std::vector<int64_t> got = b.input_format == "uint8" ? std::vector<int64_t>{batch, spec.height, spec.width, 3}
                                                       : std::vector<int64_t>{batch, 3, spec.height, spec.width};
  const detail::Json& shape = b.manifest["model"]["inputs"][0]["shape"];
  bool ok = shape.size() == got.size();
  std::string expected;
  for (size_t i = 1; i < shape.size(); ++i) {
    expected += ", " + detail::py_str(shape[i]);
    if (ok && shape[i].is_number_integer() && shape[i].get<int64_t>() != got[i]) ok = false;
  }
  if (!ok)
    throw Error("input of shape [" + dims(got) + "]; this model takes [batch" + expected + "] " + b.input_dtype +
                " (" + b.input_layout + ")");
  const char* dtype = b.input_format == "uint8" ? "uint8" : "float32";
  if (b.input_dtype != dtype) throw Error(std::string("input of dtype ") + dtype + "; this model takes " + b.input_dtype);
}

}  // namespace

// Images [first, first + count) as the model's input (runtime/preprocess.py `prepare`): uint8 NHWC crops, or
// float32 NCHW pixels (0-255), or normalised ((x / 255 - mean) / std in float32, numpy's operations in its order).
std::vector<uint8_t> Classifier::Impl::inputs(const std::vector<ImageView>& images, size_t first,
                                             size_t count) const {
  const size_t h = spec.height, w = spec.width, plane = h * w;
  const bool u8 = bundle.input_format == "uint8";
  std::vector<uint8_t> out(count * plane * 3 * (u8 ? 1 : sizeof(float)));
  for (size_t n = 0; n < count; ++n) {
    Image crop = resize_crop(images[first + n], spec);
    if (u8) {
      std::copy(crop.rgb.begin(), crop.rgb.end(), out.begin() + n * plane * 3);
      continue;
    }
    float* x = reinterpret_cast<float*>(out.data()) + n * plane * 3;
    const bool normalized = bundle.input_format == "normalized";
    for (size_t c = 0; c < 3; ++c)
      for (size_t i = 0; i < plane; ++i) {
        float p = static_cast<float>(crop.rgb[i * 3 + c]);
        x[c * plane + i] = normalized ? (p / 255.0f - spec.mean[c]) / spec.std[c] : p;
      }
  }
  return out;
}

// The named output ("logits" or "embeddings") of every image, batch by batch.
Matrix Classifier::Impl::run(const std::vector<ImageView>& images, const std::string& output) const {
  if (images.empty()) throw Error("no images given");
  for (size_t i = 0; i < images.size(); ++i) check_view(images[i], i, images.size());
  const auto& names = bundle.output_names;
  size_t index = std::find(names.begin(), names.end(), output) - names.begin();
  bool from_embeddings = output == "logits" && index == names.size();
  if (from_embeddings) index = std::find(names.begin(), names.end(), "embeddings") - names.begin();
  if (index == names.size()) throw Error("the bundle's graph has no output '" + output + "'");
  if (index > 0 && !openvino)
    throw Error("the TensorRT backend returns a plan's first output (" + names[0] + "), not " + output);
  if (from_embeddings && bundle.class_vectors.empty()) throw Error("this bundle ships no class vectors");
  Matrix m;
  m.rows = static_cast<int64_t>(images.size());
  const int64_t step = backend->max_batch() > 0 ? std::min(batch, backend->max_batch()) : batch;
  for (size_t first = 0; first < images.size(); first += step) {
    size_t count = std::min(images.size() - first, static_cast<size_t>(step));
    check_input_shape(bundle, spec, static_cast<int64_t>(count));
    std::vector<uint8_t> input = inputs(images, first, count);
#ifdef PKD_HAVE_OPENVINO
    detail::Output out = openvino ? detail::run_openvino_output(*backend, input.data(), count, index)
                                  : backend->run(input.data(), static_cast<int64_t>(count));
#else
    detail::Output out = backend->run(input.data(), static_cast<int64_t>(count));
#endif
    if (out.batch != static_cast<int64_t>(count) || out.values.size() != static_cast<size_t>(out.batch * out.width))
      throw Error("the backend returned " + std::to_string(out.batch) + " rows for a batch of " +
                  std::to_string(count));
    if (from_embeddings) {  // logit_scale * E @ W^T (runtime/classifier.py logits_of), float32 like numpy's
      const int64_t classes = bundle.vectors_rows, d = bundle.vectors_cols;
      if (out.width != d)
        throw Error("the graph's embeddings have " + std::to_string(out.width) + " dimensions; classes.json's " +
                    "vectors have " + std::to_string(d));
      detail::Output logits{std::vector<float>(count * classes), out.batch, classes};
      const float scale = static_cast<float>(bundle.logit_scale);
      for (size_t n = 0; n < count; ++n)
        for (int64_t c = 0; c < classes; ++c) {
          double s = 0;
          for (int64_t k = 0; k < d; ++k)
            s += static_cast<double>(scale * out.values[n * d + k]) * bundle.class_vectors[c * d + k];
          logits.values[n * classes + c] = static_cast<float>(s);
        }
      out = std::move(logits);
    }
    if (m.cols == 0) m.cols = out.width;
    m.values.insert(m.values.end(), out.values.begin(), out.values.end());
  }
  if (output == "logits" && m.cols != static_cast<int64_t>(bundle.class_names.size()))
    throw Error("the model gives " + std::to_string(m.cols) + " logits; classes.json names " +
                std::to_string(bundle.class_names.size()) + " classes");
  return m;
}

Classifier::Classifier(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Classifier::Classifier(Classifier&&) noexcept = default;
Classifier& Classifier::operator=(Classifier&&) noexcept = default;
Classifier::~Classifier() = default;

Classifier Classifier::from_bundle(const fs::path& dir, const std::string& backend, const Options& options) {
  if (backend != "openvino" && backend != "tensorrt")
    throw Error("unknown backend '" + backend + "'; choose one of openvino, tensorrt");
  const std::string& p = options.precision;
  if (p != "auto" && p != "fp32" && p != "bf16" && p != "int8")
    throw Error("unknown precision '" + p + "'; choose one of auto, fp32, bf16, int8");
  if (p != "auto" && p != "fp32" && backend != "openvino")
    throw Error("precision " + p + " runs on OpenVINO (backend 'openvino'), not on " + backend);
  if (options.hint != "latency" && options.hint != "throughput")
    throw Error("unknown OpenVINO hint '" + options.hint + "'; choose latency or throughput");
  if (options.batch_size < 1) throw Error("batch size must be >= 1, got " + std::to_string(options.batch_size));
  if (options.threads < 0) throw Error("threads must be >= 0, got " + std::to_string(options.threads));
  auto impl = std::make_unique<Impl>();
  impl->bundle = detail::open_bundle(dir, options.allow_invalid);
  const Bundle& b = impl->bundle;
  if (b.input_format != "normalized" && b.input_format != "uint8" && b.input_format != "pixels")
    throw Error("bundle " + b.name + " takes input_format '" + b.input_format + "'; the native library runs " +
                "normalized, uint8 and pixels bundles (re-export without --frame-input)");
  impl->spec = detail::preprocess_spec(b.preprocess);
  impl->backend = open_backend(b, backend, options, impl->notes);
  impl->openvino = backend == "openvino";
  impl->batch = options.batch_size;
  return Classifier(std::move(impl));
}

Matrix Classifier::logits(const std::vector<ImageView>& images) const { return impl_->run(images, "logits"); }

Matrix Classifier::embed(const std::vector<ImageView>& images) const {
  const auto& names = impl_->bundle.output_names;
  if (std::find(names.begin(), names.end(), "embeddings") == names.end())
    throw Error("this bundle outputs logits only; export it with --head embeddings or --head both to get embeddings");
  return impl_->run(images, "embeddings");
}

std::vector<Prediction> Classifier::classify(const std::vector<ImageView>& images, int top_k) const {
  return best_k(logits(images), impl_->bundle.class_names, top_k);
}

const std::vector<std::string>& Classifier::class_names() const { return impl_->bundle.class_names; }
const PreprocessSpec& Classifier::preprocess() const { return impl_->spec; }
std::string Classifier::input_format() const { return impl_->bundle.input_format; }
std::string Classifier::description() const { return impl_->backend->description(); }
const std::vector<std::string>& Classifier::notes() const { return impl_->notes; }

std::vector<Prediction> best_k(const Matrix& logits, const std::vector<std::string>& names, int top_k) {
  const size_t classes = static_cast<size_t>(logits.cols);
  const size_t k = static_cast<size_t>(std::max(1, std::min<int>(top_k, static_cast<int>(classes))));
  std::vector<Prediction> out;
  std::vector<double> e(classes);
  std::vector<int> order(classes);
  for (int64_t n = 0; n < logits.rows; ++n) {
    const float* row = logits.row(n);
    double top = *std::max_element(row, row + classes);
    for (size_t c = 0; c < classes; ++c) e[c] = std::exp(static_cast<double>(row[c]) - top);
    const double sum = pairwise_sum(e.data(), classes);
    for (auto& v : e) v /= sum;
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return e[a] > e[b]; });
    Prediction p;
    for (size_t i = 0; i < k; ++i) {
      p.labels.push_back(names.at(order[i]));
      p.probabilities.push_back(e[order[i]]);
      p.indices.push_back(order[i]);
    }
    out.push_back(std::move(p));
  }
  return out;
}

}  // namespace pkd

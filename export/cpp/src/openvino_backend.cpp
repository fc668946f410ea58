#include "openvino_backend.hpp"

#include <mutex>
#include <vector>

#include <openvino/openvino.hpp>

namespace pkd::detail {
namespace {

// The process's one ov::Core, never destroyed: every Core's CPU plugin swaps the calling thread's signal stack and
// unmaps it when the Core dies; Cores dying out of order leave a thread on an unmapped stack
// (runtime/openvino_backend.py shared_core).
ov::Core& shared_core() {
  static ov::Core* core = new ov::Core();
  return *core;
}

std::string first_line(const std::string& text) {
  std::string line = text.substr(0, text.find('\n'));
  while (!line.empty() && (line.back() == '\r' || line.back() == ' ')) line.pop_back();
  return line;
}

std::string version() {
  std::string build = ov::get_openvino_version().buildNumber;
  return build.substr(0, build.find('-'));
}

// An output tensor as float32 (an FP16 graph's outputs are f16; numpy would give float16, promoted alike).
std::vector<float> to_float(const ov::Tensor& t) {
  const size_t n = t.get_size();
  if (t.get_element_type() == ov::element::f32) return {t.data<const float>(), t.data<const float>() + n};
  if (t.get_element_type() == ov::element::f16) {
    const ov::float16* p = t.data<const ov::float16>();
    return std::vector<float>(p, p + n);
  }
  if (t.get_element_type() == ov::element::bf16) {
    const ov::bfloat16* p = t.data<const ov::bfloat16>();
    return std::vector<float>(p, p + n);
  }
  throw Error("the model's output is " + t.get_element_type().get_type_name() + ", not a float tensor");
}

class OpenVinoBackend final : public Backend {
 public:
  OpenVinoBackend(const std::filesystem::path& model, const std::string& shown, const InputSpec& input,
                  const std::string& precision, int threads, const std::string& hint)
      : input_(input), precision_(precision) {
    if (precision != "fp32" && precision != "bf16")
      throw Error("OpenVINO precision '" + precision + "' is not one of fp32, bf16");
    if (hint != "latency" && hint != "throughput")
      throw Error("OpenVINO hint '" + hint + "' is not one of latency, throughput");
    if (precision == "bf16" && !openvino_has_bf16())
      throw Error("this CPU has no native bf16 for OpenVINO (it needs AMX or AVX512_BF16); use fp32");
    try {
      ov::AnyMap config{
          ov::hint::inference_precision(precision == "bf16" ? ov::element::bf16 : ov::element::f32),
          ov::hint::performance_mode(hint == "latency" ? ov::hint::PerformanceMode::LATENCY
                                                       : ov::hint::PerformanceMode::THROUGHPUT)};
      if (threads > 0) config.emplace(ov::inference_num_threads(threads));
      compiled_ = shared_core().compile_model(shared_core().read_model(model.string()), "CPU", config);
    } catch (const std::exception& e) {
      throw Error("OpenVINO cannot load " + shown + ": " + first_line(e.what()));
    }
    version_ = version();
  }

  Output run(const void* input, int64_t batch) override { return run_output(input, batch, 0); }

  Output run_output(const void* input, int64_t batch, size_t index) {
    ov::Shape shape;
    for (size_t i = 0; i < input_.shape.size(); ++i)
      shape.push_back(i == 0 ? static_cast<size_t>(batch) : static_cast<size_t>(input_.shape[i]));
    ov::element::Type type = input_.format == "uint8" ? ov::element::u8 : ov::element::f32;
    ov::InferRequest request = take();
    Output out;
    try {
      request.set_input_tensor(ov::Tensor(type, shape, const_cast<void*>(input)));
      request.infer();
      ov::Tensor t = request.get_output_tensor(index);
      const ov::Shape s = t.get_shape();
      out.batch = static_cast<int64_t>(s.empty() ? 0 : s[0]);
      out.width = out.batch ? static_cast<int64_t>(t.get_size()) / out.batch : 0;
      out.values = to_float(t);
    } catch (const std::exception& e) {
      give(std::move(request));
      throw Error("OpenVINO failed to run the model: " + first_line(e.what()));
    }
    give(std::move(request));
    return out;
  }

  std::string description() const override { return "openvino " + version_ + " CPU " + precision_; }

 private:
  // A request from the pool (made on demand): one CompiledModel, an InferRequest per concurrent call.
  ov::InferRequest take() {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      if (!pool_.empty()) {
        ov::InferRequest r = std::move(pool_.back());
        pool_.pop_back();
        return r;
      }
    }
    return compiled_.create_infer_request();
  }

  void give(ov::InferRequest request) {
    std::lock_guard<std::mutex> lock(mutex_);
    pool_.push_back(std::move(request));
  }

  InputSpec input_;
  std::string precision_, version_;
  ov::CompiledModel compiled_;
  std::mutex mutex_;
  std::vector<ov::InferRequest> pool_;
};

}  // namespace

std::unique_ptr<Backend> open_openvino(const std::filesystem::path& model, const std::string& shown,
                                       const InputSpec& input, const std::string& precision, int threads,
                                       const std::string& hint) {
  return std::make_unique<OpenVinoBackend>(model, shown, input, precision, threads, hint);
}

bool openvino_has_bf16() {
  static const bool has = [] {
    try {
      for (const auto& cap : shared_core().get_property("CPU", ov::device::capabilities))
        if (cap == "BF16") return true;
    } catch (const std::exception&) {
    }
    return false;
  }();
  return has;
}

Output run_openvino_output(Backend& backend, const void* input, int64_t batch, size_t index) {
  return static_cast<OpenVinoBackend&>(backend).run_output(input, batch, index);
}

}  // namespace pkd::detail

// Test stand-in for libnvinfer.so.N, compiled against the real TensorRT headers of that version: the entry points the
// backend links (createInferRuntime_INTERNAL, getInferLib*Version) and, where PKD_FAKE_TRT_RUNTIME=1, a runtime whose
// plans are text ("PKDFAKEPLAN inputs=1 dtype=5 shape=32,32,3 out=10 outdtype=0 profiles=1:4,5:8 fail=none") so that
// the backend's engine-side code runs without a GPU. Without PKD_FAKE_TRT_RUNTIME createInferRuntime returns NULL, as
// TensorRT does where no GPU can start. The implementation classes override every pure virtual of apiv::VRuntime,
// VCudaEngine and VExecutionContext (fake_overrides.inc, generated from NvInferImpl.h by tests/native_tensorrt.py):
// those the backend is not expected to call abort.
//
// The engine "computes" out[b][j] = 0.001 * sum(input row b) + j + 100 * active profile into the output address,
// from the input address, on the host memory the fake libcudart hands out (tests/native_tensorrt.py CUDART_STUB).
#include <NvInferRuntime.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

using namespace nvinfer1;

namespace {

int version_part(int i) {
  int v[4] = {NV_TENSORRT_MAJOR, NV_TENSORRT_MINOR, NV_TENSORRT_PATCH, NV_TENSORRT_BUILD};
  if (const char* s = std::getenv("PKD_STUB_TENSORRT")) std::sscanf(s, "%d.%d.%d.%d", &v[0], &v[1], &v[2], &v[3]);
  return v[i];
}

struct Spec {
  int inputs = 1;
  DataType dtype = DataType::kUINT8;
  std::vector<int64_t> shape;  // without the batch
  int64_t out = 10;
  DataType outdtype = DataType::kFLOAT;
  std::vector<std::pair<int64_t, int64_t>> profiles;
  std::string fail = "none";  // deserialize | context | shape | enqueue | profile
};

bool parse(const char* blob, size_t size, Spec& spec) {
  std::string text(blob, size);
  std::istringstream in(text);
  std::string word;
  if (!(in >> word) || word != "PKDFAKEPLAN") return false;
  while (in >> word) {
    auto eq = word.find('=');
    std::string key = word.substr(0, eq), value = word.substr(eq + 1);
    std::replace(value.begin(), value.end(), ',', ' ');
    std::istringstream v(value);
    if (key == "inputs") v >> spec.inputs;
    if (key == "dtype" || key == "outdtype") {
      int t;
      v >> t;
      (key == "dtype" ? spec.dtype : spec.outdtype) = static_cast<DataType>(t);
    }
    if (key == "shape") for (int64_t d; v >> d;) spec.shape.push_back(d);
    if (key == "out") v >> spec.out;
    if (key == "fail") spec.fail = value;
    if (key == "profiles") {
      for (std::string p; v >> p;) {
        spec.profiles.emplace_back(std::stoll(p.substr(0, p.find(':'))), std::stoll(p.substr(p.find(':') + 1)));
      }
    }
  }
  return true;
}

Dims dims_of(int64_t batch, const std::vector<int64_t>& rest) {
  Dims d{};
  d.nbDims = static_cast<int32_t>(rest.size() + 1);
  d.d[0] = batch;
  for (size_t i = 0; i < rest.size(); ++i) d.d[i + 1] = rest[i];
  return d;
}

uint16_t float_to_half(float f) {  // normal numbers, truncated mantissa (the test's values are exact in half)
  uint32_t x;
  std::memcpy(&x, &f, sizeof x);
  uint32_t sign = (x >> 16) & 0x8000u;
  int32_t exp = static_cast<int32_t>((x >> 23) & 0xffu) - 127 + 15;
  if ((x & 0x7fffffffu) == 0 || exp <= 0) return static_cast<uint16_t>(sign);
  return static_cast<uint16_t>(sign | (static_cast<uint32_t>(exp) << 10) | ((x >> 13) & 0x3ffu));
}

class Engine;

class ContextImpl : public apiv::VExecutionContext {
 public:
  explicit ContextImpl(const Spec& spec) : spec_(spec) {}
#define PKD_FAKE_CLASS_VExecutionContext
#include "fake_overrides.inc"
#undef PKD_FAKE_CLASS_VExecutionContext

  bool fake_set_profile(int32_t index) {
    if (spec_.fail == "profile" || index < 0 || index >= static_cast<int32_t>(spec_.profiles.size())) return false;
    profile_ = index;
    return true;
  }
  bool fake_set_input_shape(Dims const& dims) {
    const auto& p = spec_.profiles[static_cast<size_t>(profile_)];
    if (spec_.fail == "shape" || dims.d[0] < p.first || dims.d[0] > p.second) return false;
    batch_ = dims.d[0];
    return true;
  }
  Dims fake_shape(char const* name) const {
    return std::strcmp(name, "logits") == 0 ? dims_of(batch_, {spec_.out}) : dims_of(batch_, spec_.shape);
  }
  bool fake_set_address(char const* name, void* data) {
    addresses_[name] = data;
    return true;
  }
  bool fake_enqueue() {
    std::this_thread::yield();  // a GPU returns from enqueue before the work is done: let other threads in
    if (spec_.fail == "enqueue" || !addresses_.count("image") || !addresses_.count("logits")) return false;
    int64_t row = 1;
    for (int64_t d : spec_.shape) row *= d;
    for (int64_t b = 0; b < batch_; ++b) {
      double sum = 0;
      for (int64_t i = 0; i < row; ++i) {
        sum += spec_.dtype == DataType::kUINT8 ? static_cast<const uint8_t*>(addresses_["image"])[b * row + i]
                                               : static_cast<const float*>(addresses_["image"])[b * row + i];
      }
      for (int64_t j = 0; j < spec_.out; ++j) {
        float v = static_cast<float>(0.001 * sum + static_cast<double>(j) + 100.0 * profile_);
        if (spec_.outdtype == DataType::kHALF) {
          static_cast<uint16_t*>(addresses_["logits"])[b * spec_.out + j] = float_to_half(v);
        } else {
          static_cast<float*>(addresses_["logits"])[b * spec_.out + j] = v;
        }
      }
    }
    return true;
  }

 private:
  Spec spec_;
  int32_t profile_ = 0;
  int64_t batch_ = -1;
  std::map<std::string, void*> addresses_;
};

class Context : public IExecutionContext {
 public:
  explicit Context(const Spec& spec) { mImpl = new ContextImpl(spec); }
  ~Context() noexcept override { delete mImpl; }
};

class EngineImpl : public apiv::VCudaEngine {
 public:
  explicit EngineImpl(const Spec& spec) : spec_(spec) {
    for (int i = 0; i < spec.inputs; ++i) names_.push_back(i ? "image" + std::to_string(i) : "image");
    names_.push_back("logits");
  }
#define PKD_FAKE_CLASS_VCudaEngine
#include "fake_overrides.inc"
#undef PKD_FAKE_CLASS_VCudaEngine

  IExecutionContext* fake_context() { return spec_.fail == "context" ? nullptr : new Context(spec_); }
  bool is_output(char const* name) const { return std::strcmp(name, "logits") == 0; }
  Dims fake_profile_shape(int32_t profile, OptProfileSelector select) const {
    const auto& p = spec_.profiles.at(static_cast<size_t>(profile));
    return dims_of(select == OptProfileSelector::kMIN ? p.first : p.second, spec_.shape);
  }

 private:
  Spec spec_;
  std::vector<std::string> names_;
};

class Engine : public ICudaEngine {
 public:
  explicit Engine(const Spec& spec) { mImpl = new EngineImpl(spec); }
  ~Engine() noexcept override { delete mImpl; }
};

class RuntimeImpl : public apiv::VRuntime {
 public:
#define PKD_FAKE_CLASS_VRuntime
#include "fake_overrides.inc"
#undef PKD_FAKE_CLASS_VRuntime

  ICudaEngine* fake_deserialize(void const* blob, size_t size) {
    Spec spec;
    if (!parse(static_cast<const char*>(blob), size, spec) || spec.fail == "deserialize") return nullptr;
    return new Engine(spec);
  }
};

class Runtime : public IRuntime {
 public:
  Runtime() { mImpl = new RuntimeImpl(); }
  ~Runtime() noexcept override { delete mImpl; }
};

}  // namespace

extern "C" {
void* createInferRuntime_INTERNAL(void* logger, int32_t version) noexcept {
  (void)logger;
  if (version != NV_TENSORRT_VERSION) std::abort();  // the backend was compiled against other headers
  const char* on = std::getenv("PKD_FAKE_TRT_RUNTIME");
  return on && std::strcmp(on, "1") == 0 ? new Runtime() : nullptr;
}
int32_t getInferLibVersion() noexcept { return version_part(0) * 10000 + version_part(1) * 100 + version_part(2); }
int32_t getInferLibMajorVersion() noexcept { return version_part(0); }
int32_t getInferLibMinorVersion() noexcept { return version_part(1); }
int32_t getInferLibPatchVersion() noexcept { return version_part(2); }
int32_t getInferLibBuildVersion() noexcept { return version_part(3); }
}

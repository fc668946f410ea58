// The TensorRT backend: runs a plan the bundle's manifest records for this GPU and TensorRT, refusing what the Python
// runtime refuses with the same one-line reasons. Mirrors promptkd_edge/runtime/classifier.py `_tensorrt` and
// runtime/tensorrt_backend.py (`gpu_info`, `check_plan_compatible`, `TensorRTBackend`) step for step.
//
// Compiled against TensorRT 10.3 (JetPack 6.1/6.2) and 11.1 headers (NvInferRuntime.h: IRuntime::deserializeCudaEngine
// (void const*, size_t), ICudaEngine::getProfileShape, IExecutionContext::setInputShape/setTensorAddress/enqueueV3 are
// identical in both) and the CUDA 12 runtime API (cuda_runtime_api.h).

#include <NvInferRuntime.h>
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cctype>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iterator>
#include <memory>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "backend.hpp"

namespace pkd::detail {
namespace {

using nvinfer1::DataType;

constexpr const char* kRebuildHint = "rebuild it here with `pkd export BUNDLE --trt`";

// TensorRT's messages of severity warning or worse on stderr (the Python runtime's trt.Logger(WARNING)).
class StderrLogger : public nvinfer1::ILogger {
 public:
  void log(Severity severity, nvinfer1::AsciiChar const* msg) noexcept override {
    if (severity <= Severity::kWARNING) {
      std::fprintf(stderr, "[TensorRT] %s: %s\n", severity == Severity::kWARNING ? "warning" : "error", msg);
    }
  }
};

std::string error_name(cudaError_t err) {
  const char* name = cudaGetErrorName(err);
  return name ? name : std::to_string(static_cast<int>(err));
}

// tensorrt_backend.py `cuda_check`.
void cuda_check(cudaError_t err, const char* what) {
  if (err != cudaSuccess) throw Error(std::string("CUDA call ") + what + " failed: " + error_name(err));
}

struct Gpu {
  std::string name;
  std::string compute_capability;  // "8.7"
  std::string sm;                  // "87"
};

// tensorrt_backend.py `gpu_info`: the GPU `device`, or the Python runtime's line for no GPU / no such GPU.
Gpu gpu_info(int device) {
  int count = 0;
  cudaError_t err = cudaGetDeviceCount(&count);
  if (err != cudaSuccess || count <= 0) {
    std::string why = err != cudaSuccess ? error_name(err) : "0 devices";
    throw Error("no CUDA GPU is visible (" + why + "); TensorRT needs an NVIDIA GPU and driver");
  }
  if (device >= count) {
    throw Error("GPU " + std::to_string(device) + " does not exist; this machine has " + std::to_string(count));
  }
  cudaDeviceProp props{};
  cuda_check(cudaGetDeviceProperties(&props, device), "cudaGetDeviceProperties");
  std::string name(props.name, strnlen(props.name, sizeof props.name));
  auto space = [](unsigned char c) { return std::isspace(c) != 0; };
  name.erase(name.begin(), std::find_if_not(name.begin(), name.end(), space));
  name.erase(std::find_if_not(name.rbegin(), name.rend(), space).base(), name.end());
  std::string major = std::to_string(props.major), minor = std::to_string(props.minor);
  return {name, major + "." + minor, major + minor};
}

std::string sm_of(const std::string& compute_capability) {
  std::string out;
  for (char c : compute_capability) {
    if (c != '.') out += c;
  }
  return out;
}

// The TensorRT library this process loaded (not the headers it was compiled with): "M.m.p" and "M.m.p.b".
struct TrtVersion {
  std::string short_form;
  std::string long_form;
  // A record equal to either form matches. Python compares the record with `trt.__version__`, which is "10.3.0" for
  // the 10.3 wheel and JetPack's bindings but "11.4.0.106" for 11.4: the native library only reports the numbers.
  bool matches(const std::string& recorded) const { return recorded == short_form || recorded == long_form; }
  // What a message shows: the form the record uses (the build machine's `trt.__version__` form).
  const std::string& shown_for(const std::string& recorded) const {
    return std::count(recorded.begin(), recorded.end(), '.') == 3 ? long_form : short_form;
  }
};

TrtVersion trt_version() {
  std::string s = std::to_string(getInferLibMajorVersion()) + "." + std::to_string(getInferLibMinorVersion()) + "." +
                  std::to_string(getInferLibPatchVersion());
  return {s, s + "." + std::to_string(getInferLibBuildVersion())};
}

// tensorrt_backend.py `check_plan_compatible`: empty when `record` runs here, else the Python runtime's line.
std::string plan_mismatch(const EngineRecord& record, const TrtVersion& trt, const Gpu& gpu) {
  if (trt.matches(record.tensorrt) && record.compute_capability == gpu.compute_capability) return "";
  return record.file + " was built for TensorRT " + record.tensorrt + " on sm_" + sm_of(record.compute_capability) +
         " (" + record.gpu + "); this machine has TensorRT " + trt.shown_for(record.tensorrt) + " on sm_" + gpu.sm +
         " (" + gpu.name + "): " + kRebuildHint;
}

// Python's `Path(bundle) / file` as printed: "." is dropped, one separator.
std::string joined(const std::string& bundle, const std::string& file) {
  if (bundle.empty() || bundle == ".") return file;
  return bundle.back() == '/' ? bundle + file : bundle + "/" + file;
}

std::string dtype_name(DataType t) {
  switch (t) {
    case DataType::kFLOAT: return "DataType.FLOAT";
    case DataType::kHALF: return "DataType.HALF";
    case DataType::kINT8: return "DataType.INT8";
    case DataType::kINT32: return "DataType.INT32";
    case DataType::kBOOL: return "DataType.BOOL";
    case DataType::kUINT8: return "DataType.UINT8";
    case DataType::kFP8: return "DataType.FP8";
    case DataType::kBF16: return "DataType.BF16";
    case DataType::kINT64: return "DataType.INT64";
    default: return "DataType(" + std::to_string(static_cast<int>(t)) + ")";
  }
}

// Bytes per element of the types numpy holds (tensorrt_backend.py NUMPY_DTYPES); 0 for the others.
size_t dtype_size(DataType t) {
  switch (t) {
    case DataType::kFLOAT: case DataType::kINT32: return 4;
    case DataType::kHALF: return 2;
    case DataType::kINT8: case DataType::kUINT8: case DataType::kBOOL: return 1;
    case DataType::kINT64: return 8;
    default: return 0;
  }
}

// IEEE half to float (for fp16 output tensors).
float half_to_float(uint16_t h) {
  uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16, exp = (h >> 10) & 0x1fu, man = h & 0x3ffu, bits;
  if (exp == 0x1f) {
    bits = sign | 0x7f800000u | (man << 13);
  } else if (exp != 0) {
    bits = sign | ((exp + 112) << 23) | (man << 13);
  } else if (man == 0) {
    bits = sign;
  } else {  // subnormal: normalise
    exp = 113;
    while (!(man & 0x400u)) { man <<= 1; --exp; }
    bits = sign | (exp << 23) | ((man & 0x3ffu) << 13);
  }
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}

std::string shape_text(const std::vector<int64_t>& dims) {  // Python's tuple repr: (2, 3, 4) / (5,)
  std::string s = "(";
  for (size_t i = 0; i < dims.size(); ++i) s += (i ? ", " : "") + std::to_string(dims[i]);
  return s + (dims.size() == 1 ? ",)" : ")");
}

std::vector<int64_t> dims_vector(const nvinfer1::Dims& d) {
  return d.nbDims < 0 ? std::vector<int64_t>{} : std::vector<int64_t>(d.d, d.d + d.nbDims);
}

int64_t product(const std::vector<int64_t>& dims, size_t from = 0) {
  int64_t n = 1;
  for (size_t i = from; i < dims.size(); ++i) n *= dims[i];
  return n;
}

std::vector<char> read_file(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::vector<char> blob((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (!in.good() && !in.eof()) throw Error("cannot read " + path.string());
  return blob;
}

// A device or pinned host allocation that grows; freed only when the stream is idle (run() synchronizes it).
class Buffer {
 public:
  explicit Buffer(bool pinned) : pinned_(pinned) {}
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;
  ~Buffer() { release(); }
  void* get(size_t bytes) {
    bytes = std::max<size_t>(bytes, 1);
    if (bytes <= size_) return ptr_;
    release();
    cuda_check(pinned_ ? cudaMallocHost(&ptr_, bytes) : cudaMalloc(&ptr_, bytes),
               pinned_ ? "cudaMallocHost" : "cudaMalloc");
    size_ = bytes;
    return ptr_;
  }
  void* data() const { return ptr_; }

 private:
  void release() {
    if (ptr_) pinned_ ? cudaFreeHost(ptr_) : cudaFree(ptr_);
    ptr_ = nullptr;
    size_ = 0;
  }
  bool pinned_;
  void* ptr_ = nullptr;
  size_t size_ = 0;
};

struct Tensor {
  std::string name;
  DataType dtype;
  Buffer device{false};
};

class TensorRTBackend final : public Backend {
 public:
  TensorRTBackend(std::string shown_plan, const std::filesystem::path& plan, const EngineRecord& record,
                  const InputSpec& input, int device, Gpu gpu, TrtVersion version)
      : record_(record), device_(device), gpu_(std::move(gpu)), version_(std::move(version)) {
    if (!std::filesystem::is_regular_file(plan)) throw Error("TensorRT plan not found: " + shown_plan);
    if (!record.sha256.empty() && sha256_file(plan) != record.sha256) {
      throw Error(shown_plan + " does not match its sha256 in the manifest");
    }
    cuda_check(cudaSetDevice(device), "cudaSetDevice");
    runtime_.reset(nvinfer1::createInferRuntime(logger_));
    if (!runtime_) {
      throw Error("TensorRT " + version_.shown_for(record.tensorrt) +
                  " found no usable GPU (createInferRuntime returned nullptr)");
    }
    std::vector<char> blob = read_file(plan);
    engine_.reset(runtime_->deserializeCudaEngine(blob.data(), blob.size()));
    if (!engine_) {
      throw Error(record.file + " cannot be loaded by this TensorRT/GPU (TensorRT " +
                  version_.shown_for(record.tensorrt) + ", " + gpu_.name + "); " + kRebuildHint);
    }
    context_.reset(engine_->createExecutionContext());
    if (!context_) throw Error("TensorRT could not create an execution context (out of GPU memory?)");
    read_tensors(std::filesystem::path(shown_plan).filename().string(), input);
    cuda_check(cudaStreamCreate(&stream_), "cudaStreamCreate");
  }

  ~TensorRTBackend() override {
    if (!stream_) return;
    cudaSetDevice(device_);
    cudaStreamSynchronize(stream_);
    tensors_.clear();
    host_input_.reset();
    host_output_.reset();
    cudaStreamDestroy(stream_);
  }

  int64_t max_batch() const override {
    int64_t hi = 0;
    for (const auto& p : profiles_) hi = std::max(hi, p.second);
    return hi;
  }

  std::string description() const override {
    return "TensorRT " + version_.shown_for(record_.tensorrt) + ", " + gpu_.name + " (sm_" + gpu_.sm + "), plan " +
           record_.file;
  }

  Output run(const void* input, int64_t batch) override {
    std::lock_guard<std::mutex> lock(mutex_);
    cuda_check(cudaSetDevice(device_), "cudaSetDevice");  // the current device is per host thread
    if (batch < 1) throw Error("empty batch");
    std::vector<int64_t> in_shape = input_shape_;
    in_shape[0] = batch;
    const size_t in_bytes = static_cast<size_t>(product(in_shape)) * dtype_size(tensors_[0].dtype);
    std::vector<int64_t> out_shape = set_shapes(in_shape);
    void* staging = host_input_->get(in_bytes);
    std::memcpy(staging, input, in_bytes);
    cuda_check(cudaMemcpyAsync(tensors_[0].device.data(), staging, in_bytes, cudaMemcpyHostToDevice, stream_),
               "cudaMemcpyAsync");
    if (!context_->enqueueV3(stream_)) throw Error("TensorRT failed to run the engine; see the TensorRT log above");
    const Tensor& out = tensors_[output_];
    const size_t out_bytes = static_cast<size_t>(product(out_shape)) * dtype_size(out.dtype);
    void* host = host_output_->get(out_bytes);
    cuda_check(cudaMemcpyAsync(host, out.device.data(), out_bytes, cudaMemcpyDeviceToHost, stream_),
               "cudaMemcpyAsync");
    cuda_check(cudaStreamSynchronize(stream_), "cudaStreamSynchronize");
    return to_output(host, out_shape, out.dtype);
  }

 private:
  // Names, modes and dtypes of the I/O tensors (input first), the input shape and the profiles' batch ranges.
  void read_tensors(const std::string& plan_name, const InputSpec& spec) {
    std::vector<std::string> inputs, outputs;
    for (int32_t i = 0; i < engine_->getNbIOTensors(); ++i) {
      const char* name = engine_->getIOTensorName(i);
      (engine_->getTensorIOMode(name) == nvinfer1::TensorIOMode::kINPUT ? inputs : outputs).push_back(name);
    }
    if (inputs.size() != 1) {
      throw Error(plan_name + " has " + std::to_string(inputs.size()) + " inputs; promptkd-edge plans have one");
    }
    if (outputs.empty()) throw Error(plan_name + " has no output");
    inputs.insert(inputs.end(), outputs.begin(), outputs.end());
    tensors_ = std::vector<Tensor>(inputs.size());
    for (size_t i = 0; i < inputs.size(); ++i) {
      tensors_[i].name = inputs[i];
      tensors_[i].dtype = engine_->getTensorDataType(inputs[i].c_str());
      if (dtype_size(tensors_[i].dtype) == 0) {
        throw Error("the engine has an I/O tensor of type " + dtype_name(tensors_[i].dtype) +
                    " that numpy cannot hold; export with float32 I/O");
      }
    }
    check_input(spec);
    const DataType out = tensors_[output_].dtype;
    if (out != DataType::kFLOAT && out != DataType::kHALF) {
      throw Error(plan_name + " gives " + dtype_name(out) + " output " + tensors_[output_].name +
                  "; promptkd-edge plans give float32 or float16: " + kRebuildHint);
    }
    const char* in = tensors_[0].name.c_str();
    for (int32_t p = 0; p < engine_->getNbOptimizationProfiles(); ++p) {
      profiles_.emplace_back(engine_->getProfileShape(in, p, nvinfer1::OptProfileSelector::kMIN).d[0],
                             engine_->getProfileShape(in, p, nvinfer1::OptProfileSelector::kMAX).d[0]);
    }
    host_input_ = std::make_unique<Buffer>(true);
    host_output_ = std::make_unique<Buffer>(true);
  }

  // The plan's input must take what the core hands over: InputSpec's dtype and layout (uint8 NHWC or float32 NCHW),
  // with the manifest's fixed dimensions.
  void check_input(const InputSpec& spec) {
    const std::vector<int64_t> engine_shape = dims_vector(engine_->getTensorShape(tensors_[0].name.c_str()));
    const DataType want = spec.format == "uint8" ? DataType::kUINT8 : DataType::kFLOAT;
    std::string want_shape;
    for (size_t i = 0; i < engine_shape.size(); ++i) {
      want_shape += (i ? "x" : "") + (engine_shape[i] < 0 ? std::string("batch") : std::to_string(engine_shape[i]));
    }
    input_shape_ = spec.shape;
    bool fits = engine_shape.size() == spec.shape.size() && !spec.shape.empty();
    for (size_t i = 1; fits && i < spec.shape.size(); ++i) {
      if (spec.shape[i] < 0) input_shape_[i] = engine_shape[i];
      fits = input_shape_[i] >= 0 && (engine_shape[i] < 0 || engine_shape[i] == input_shape_[i]);
    }
    if (!fits || tensors_[0].dtype != want) {
      throw Error("the bundle's model input " + spec.name + " " + shape_text(spec.shape) + " (" + spec.format +
                  ") does not fit the engine's " + want_shape + " " + dtype_name(tensors_[0].dtype) + " input; " +
                  kRebuildHint);
    }
  }

  // tensorrt_backend.py `_pick_profile`: the first profile that holds `batch`.
  int32_t pick_profile(int64_t batch) const {
    std::string ranges;
    for (size_t i = 0; i < profiles_.size(); ++i) {
      if (profiles_[i].first <= batch && batch <= profiles_[i].second) return static_cast<int32_t>(i);
      ranges += (i ? ", " : "") + std::to_string(profiles_[i].first) + ".." + std::to_string(profiles_[i].second);
    }
    throw Error("batch " + std::to_string(batch) + " is outside the engine's profiles [" + ranges +
                "]; rebuild with --trt-profile");
  }

  // tensorrt_backend.py `_set_shapes`: profile, input shape and every tensor address; returns the output's shape.
  std::vector<int64_t> set_shapes(const std::vector<int64_t>& shape) {
    const int32_t profile = pick_profile(shape[0]);
    if (profile != profile_) {
      if (!context_->setOptimizationProfileAsync(profile, stream_)) {
        throw Error("TensorRT could not switch to optimization profile " + std::to_string(profile) +
                    " (setOptimizationProfileAsync returned false)");
      }
      profile_ = profile;
    }
    nvinfer1::Dims dims{};
    dims.nbDims = static_cast<int32_t>(shape.size());
    std::copy(shape.begin(), shape.end(), dims.d);
    if (!context_->setInputShape(tensors_[0].name.c_str(), dims)) {
      throw Error("TensorRT rejected input shape " + shape_text(shape));
    }
    const size_t in_bytes = static_cast<size_t>(product(shape)) * dtype_size(tensors_[0].dtype);
    context_->setTensorAddress(tensors_[0].name.c_str(), tensors_[0].device.get(in_bytes));
    std::vector<int64_t> first;
    for (size_t i = 1; i < tensors_.size(); ++i) {
      Tensor& t = tensors_[i];
      std::vector<int64_t> out = dims_vector(context_->getTensorShape(t.name.c_str()));
      if (out.empty() || std::any_of(out.begin(), out.end(), [](int64_t d) { return d < 0; })) {
        throw Error("TensorRT could not infer the shape of output " + t.name + " " + shape_text(out));
      }
      context_->setTensorAddress(t.name.c_str(), t.device.get(static_cast<size_t>(product(out)) * dtype_size(t.dtype)));
      if (i == output_) first = out;
    }
    return first;
  }

  static Output to_output(const void* host, const std::vector<int64_t>& shape, DataType dtype) {
    Output out;
    out.batch = shape[0];
    out.width = product(shape, 1);
    out.values.resize(static_cast<size_t>(out.batch * out.width));
    if (dtype == DataType::kFLOAT) {
      std::memcpy(out.values.data(), host, out.values.size() * sizeof(float));
    } else {
      const auto* h = static_cast<const uint16_t*>(host);
      for (size_t i = 0; i < out.values.size(); ++i) out.values[i] = half_to_float(h[i]);
    }
    return out;
  }

  EngineRecord record_;
  int device_;
  Gpu gpu_;
  TrtVersion version_;
  StderrLogger logger_;  // outlives the runtime, engine and context below (members die in reverse order)
  std::unique_ptr<nvinfer1::IRuntime> runtime_;
  std::unique_ptr<nvinfer1::ICudaEngine> engine_;
  std::unique_ptr<nvinfer1::IExecutionContext> context_;
  std::vector<Tensor> tensors_;  // the input, then the outputs in engine order
  size_t output_ = 1;            // the graph's first output
  std::vector<int64_t> input_shape_;
  std::vector<std::pair<int64_t, int64_t>> profiles_;  // (kMIN, kMAX) batch per optimization profile
  int32_t profile_ = 0;                                // a new context starts on profile 0
  std::unique_ptr<Buffer> host_input_, host_output_;   // pinned: asynchronous copies
  cudaStream_t stream_ = nullptr;                      // own stream: TensorRT syncs extra on the default one
  std::mutex mutex_;
};

}  // namespace

std::unique_ptr<Backend> open_tensorrt(const std::string& bundle, const std::filesystem::path& dir,
                                       const std::vector<EngineRecord>& engines, const InputSpec& input,
                                       int device) {
  std::vector<const EngineRecord*> passed;
  for (const auto& e : engines) {
    if (e.parity_passed) passed.push_back(&e);
  }
  if (passed.empty()) {
    throw Error("bundle " + bundle + " holds no TensorRT plan; build one with `pkd export " + bundle + " --trt`");
  }
  const Gpu gpu = gpu_info(device);
  const TrtVersion version = trt_version();
  std::string first_error;
  for (const EngineRecord* record : passed) {
    std::string why = plan_mismatch(*record, version, gpu);
    if (why.empty()) {
      return std::make_unique<TensorRTBackend>(joined(bundle, record->file), dir / record->file, *record, input,
                                               device, gpu, version);
    }
    if (first_error.empty()) first_error = why;
  }
  throw Error(first_error);
}

}  // namespace pkd::detail

// Test driver: opens a bundle's TensorRT plan through pkd::detail::open_tensorrt as the core will, reading only what
// that needs from manifest.json (model.inputs[0], input_format, engines). Prints the backend's description, or
// "error: <line>" on stderr and exits 2, as pkd-classify does.
// Usage: pkd_trt_driver BUNDLE [--device N] [--run B...] [--threads T]
// --run runs batches of B made-up images (element i of a batch = (i * 7 + 3) % 256, over 255 for float input) in
// turn and prints each output row. --threads then runs every batch 200 times more on each of T threads at once, with
// the one backend, and prints "threads: N outputs differ" (0 when each equals its single-threaded output).
#include <atomic>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "backend.hpp"

namespace {

using nlohmann::ordered_json;
using pkd::detail::EngineRecord;
using pkd::detail::InputSpec;

std::string text(const ordered_json& j, const char* key) {
  return j.contains(key) && j[key].is_string() ? j[key].get<std::string>() : "";
}

InputSpec input_spec(const ordered_json& model) {
  const ordered_json& in = model.at("inputs").at(0);
  InputSpec spec;
  spec.name = in.at("name").get<std::string>();
  for (const auto& d : in.at("shape")) spec.shape.push_back(d.is_number_integer() ? d.get<int64_t>() : -1);
  spec.format = model.contains("input_format") ? model["input_format"].get<std::string>()
                : model.value("uint8_input", false)  ? "uint8"
                                                     : "normalized";
  return spec;
}

std::vector<EngineRecord> engines(const ordered_json& manifest) {
  std::vector<EngineRecord> out;
  for (const auto& e : manifest.value("engines", ordered_json::array())) {
    out.push_back({text(e, "file"), text(e, "precision"), text(e, "tensorrt"), text(e, "compute_capability"),
                   text(e, "gpu"), text(e, "sha256"), text(e, "onnx"), e.value("parity_passed", true)});
  }
  return out;
}

pkd::detail::Output run(pkd::detail::Backend& backend, const InputSpec& spec, int64_t batch) {
  int64_t row = 1;
  for (size_t i = 1; i < spec.shape.size(); ++i) row *= spec.shape[i];
  std::vector<uint8_t> bytes(static_cast<size_t>(batch * row));
  std::vector<float> floats(bytes.size());
  for (size_t i = 0; i < bytes.size(); ++i) {
    bytes[i] = static_cast<uint8_t>((i * 7 + 3) % 256);
    floats[i] = static_cast<float>(bytes[i]) / 255.0f;
  }
  return backend.run(spec.format == "uint8" ? static_cast<const void*>(bytes.data()) : floats.data(), batch);
}

void print(const pkd::detail::Output& out) {
  std::printf("output %lld %lld\n", static_cast<long long>(out.batch), static_cast<long long>(out.width));
  for (int64_t b = 0; b < out.batch; ++b) {
    for (int64_t j = 0; j < out.width; ++j) std::printf(j ? " %.9g" : "%.9g", out.values[b * out.width + j]);
    std::printf("\n");
  }
}

// Every batch 200 times on each of `threads` threads at once: how many outputs differ from `single`.
int differing(pkd::detail::Backend& backend, const InputSpec& spec, const std::vector<int64_t>& batches,
              const std::vector<pkd::detail::Output>& single, int threads) {
  std::atomic<int> bad{0};
  std::vector<std::thread> pool;
  for (int t = 0; t < threads; ++t) {
    pool.emplace_back([&, t] {
      for (int r = 0; r < 200; ++r) {
        for (size_t k = 0; k < batches.size(); ++k) {
          size_t i = (k + static_cast<size_t>(t)) % batches.size();  // threads interleave different batch sizes
          if (run(backend, spec, batches[i]).values != single[i].values) ++bad;
        }
      }
    });
  }
  for (auto& th : pool) th.join();
  return bad;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::cerr << "usage: pkd_trt_driver BUNDLE [--device N] [--run BATCH...]\n";
    return 2;
  }
  std::string bundle = argv[1];
  while (bundle.size() > 1 && bundle.back() == '/') bundle.pop_back();  // Python's Path(bundle) as printed
  int device = 0, threads = 0;
  std::vector<int64_t> batches;
  for (int i = 2; i + 1 < argc; i += 2) {
    if (std::string(argv[i]) == "--device") {
      device = std::stoi(argv[i + 1]);
    } else if (std::string(argv[i]) == "--threads") {
      threads = std::stoi(argv[i + 1]);
    } else {
      batches.push_back(std::stoll(argv[i + 1]));
    }
  }
  try {
    std::ifstream in(std::filesystem::path(bundle) / "manifest.json");
    const ordered_json manifest = ordered_json::parse(in);
    const InputSpec spec = input_spec(manifest.at("model"));
    auto backend = pkd::detail::open_tensorrt(bundle, bundle, engines(manifest), spec, device);
    std::cout << backend->description() << "\nmax_batch " << backend->max_batch() << std::endl;
    std::vector<pkd::detail::Output> outputs;
    for (int64_t batch : batches) {
      outputs.push_back(run(*backend, spec, batch));
      print(outputs.back());
    }
    if (threads > 0) std::printf("threads: %d outputs differ\n", differing(*backend, spec, batches, outputs, threads));
    return 0;
  } catch (const std::exception& e) {
    std::cout.flush();
    std::cerr << "error: " << e.what() << "\n";
    return 2;
  }
}

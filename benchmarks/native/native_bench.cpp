// Times the native library's path (pkd::Classifier::logits: image views -> preprocess -> OpenVINO -> logits) and,
// interleaved with it call by call, OpenVINO's own inference alone on the same model file (one InferRequest on a
// ready input tensor, compiled with the same properties), for benchmarks/native.py. Prints one JSON object.
//   pkd-native-bench BUNDLE WIDTH HEIGHT BATCH WARMUP ITERATIONS THREADS f32|bf16
// The bench's own ov::Core is made after the library's and dies before it (OpenVINO Cores must die in the reverse
// order of their creation: runtime/openvino_backend.py shared_core).
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <iostream>
#include <random>
#include <string>
#include <vector>

#include <openvino/openvino.hpp>
#include <promptkd_edge/classifier.hpp>

using Clock = std::chrono::steady_clock;

static std::string list(const std::vector<double>& v) {
  std::string s = "[";
  for (size_t i = 0; i < v.size(); ++i) s += (i ? "," : "") + std::to_string(v[i]);
  return s + "]";
}

int main(int argc, char** argv) {
  if (argc != 9) {
    std::cerr << "usage: pkd-native-bench BUNDLE WIDTH HEIGHT BATCH WARMUP ITERATIONS THREADS f32|bf16\n";
    return 2;
  }
  const std::string bundle = argv[1];
  const int width = std::stoi(argv[2]), height = std::stoi(argv[3]), batch = std::stoi(argv[4]);
  const int warmup = std::stoi(argv[5]), iterations = std::stoi(argv[6]), threads = std::stoi(argv[7]);
  const std::string precision = argv[8];
  try {
    pkd::Options options;
    options.threads = threads;
    options.precision = precision == "bf16" ? "bf16" : "fp32";
    options.batch_size = batch;
    auto clf = pkd::Classifier::from_bundle(bundle, "openvino", options);
    std::mt19937 rng(0);
    std::vector<pkd::Image> images(batch);
    for (auto& im : images) {
      im.width = width;
      im.height = height;
      im.rgb.resize(static_cast<size_t>(width) * height * 3);
      for (auto& b : im.rgb) b = static_cast<uint8_t>(rng() & 0xff);
    }
    std::vector<pkd::ImageView> views;
    for (auto& im : images) views.push_back(im.view());

    ov::Core core;
    ov::AnyMap config{ov::hint::inference_precision(precision == "bf16" ? ov::element::bf16 : ov::element::f32),
                      ov::hint::performance_mode(ov::hint::PerformanceMode::LATENCY),
                      ov::inference_num_threads(threads)};
    auto compiled = core.compile_model(core.read_model(bundle + "/model.onnx"), "CPU", config);
    auto request = compiled.create_infer_request();
    auto port = compiled.input();
    auto shape = port.get_partial_shape();
    ov::Shape concrete;
    for (size_t i = 0; i < shape.size(); ++i)
      concrete.push_back(i == 0 ? batch : static_cast<size_t>(shape[i].get_length()));
    ov::Tensor input(port.get_element_type(), concrete);
    std::fill_n(static_cast<char*>(input.data()), input.get_byte_size(), 0);
    request.set_input_tensor(input);

    std::vector<double> library, bare;
    for (int i = 0; i < warmup + iterations; ++i) {
      auto t0 = Clock::now();
      clf.logits(views);
      auto t1 = Clock::now();
      request.infer();
      auto t2 = Clock::now();
      if (i < warmup) continue;
      library.push_back(std::chrono::duration<double, std::milli>(t1 - t0).count());
      bare.push_back(std::chrono::duration<double, std::milli>(t2 - t1).count());
    }
    std::cout << "{\"description\": \"" << clf.description() << "\", \"library_ms\": " << list(library)
              << ", \"openvino_ms\": " << list(bare) << "}\n";
  } catch (const std::exception& e) {
    std::cerr << "error: " << e.what() << "\n";
    return 2;
  }
  return 0;
}

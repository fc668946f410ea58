// Test driver: opens a bundle's TensorRT plan through pkd::detail::open_tensorrt as the core will, reading only what
// that needs from manifest.json (model.inputs[0], input_format, engines). Prints the backend's description, or
// "error: <line>" on stderr and exits 2, as pkd-classify does. Usage: pkd_trt_driver BUNDLE [--device N]
#include <fstream>
#include <iostream>
#include <string>

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

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2 && !(argc == 4 && std::string(argv[2]) == "--device")) {
    std::cerr << "usage: pkd_trt_driver BUNDLE [--device N]\n";
    return 2;
  }
  std::string bundle = argv[1];
  while (bundle.size() > 1 && bundle.back() == '/') bundle.pop_back();  // Python's Path(bundle) as printed
  try {
    std::ifstream in(std::filesystem::path(bundle) / "manifest.json");
    const ordered_json manifest = ordered_json::parse(in);
    auto backend = pkd::detail::open_tensorrt(bundle, bundle, engines(manifest), input_spec(manifest.at("model")),
                                              argc == 4 ? std::stoi(argv[3]) : 0);
    std::cout << backend->description() << "\nmax_batch " << backend->max_batch() << "\n";
    return 0;
  } catch (const std::exception& e) {
    std::cerr << "error: " << e.what() << "\n";
    return 2;
  }
}

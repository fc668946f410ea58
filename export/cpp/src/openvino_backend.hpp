// The OpenVINO backend (CPU): the bundle's ONNX graph at an explicit inference precision, as
// promptkd_edge/runtime/openvino_backend.py runs it. Compiled only with PKD_WITH_OPENVINO (PKD_HAVE_OPENVINO).
#pragma once

#include <filesystem>
#include <memory>
#include <string>

#include "backend.hpp"

namespace pkd::detail {

// precision "fp32" or "bf16" (INFERENCE_PRECISION_HINT f32 / bf16), hint "latency" or "throughput"
// (PERFORMANCE_HINT), threads > 0: INFERENCE_NUM_THREADS. `shown` names the model in messages.
std::unique_ptr<Backend> open_openvino(const std::filesystem::path& model, const std::string& shown,
                                       const InputSpec& input, const std::string& precision, int threads,
                                       const std::string& hint);

// Whether OpenVINO's CPU plugin computes bf16 natively here (AMX or AVX512_BF16): its capabilities list BF16.
bool openvino_has_bf16();

// Runs `backend` (made by open_openvino) and returns its output number `index` (head "both": 1 = embeddings).
Output run_openvino_output(Backend& backend, const void* input, int64_t batch, size_t index);

}  // namespace pkd::detail

// Pillow's resampling of 8-bit RGB (Image.resize with a box) and open_clip's resize + centre crop geometry as the
// Python runtime computes it (promptkd_edge/utils/images.py).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace pkd::detail {

// Pillow 13.0's Image.resize((out_w, out_h), filter, box) of an RGB image (rows `stride` bytes apart); returns
// out_h x out_w x 3. filter: "bicubic", "bilinear" or "nearest". box: (x0, y0, x1, y1) in source pixels.
std::vector<uint8_t> pil_resize(const uint8_t* src, int width, int height, size_t stride, int out_w, int out_h,
                                const std::string& filter, const float box[4]);

struct ResizePlan {
  int height, width;      // the size open_clip resizes to before its centre crop
  std::string filter;     // the filter it resamples with
};

// utils/images.py resize_plan.
ResizePlan resize_plan(int height, int width, int size_h, int size_w, const std::string& resize_mode,
                       const std::string& interpolation);

}  // namespace pkd::detail

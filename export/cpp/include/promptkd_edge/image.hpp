// Images for promptkd_edge: a view of an 8-bit RGB buffer (a camera frame: rows may be padded) and an owned image
// decoded from a file exactly as the Python runtime decodes it (promptkd_edge/utils/images.py decode_rgb).
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <vector>

namespace pkd {

// 8-bit RGB pixels, row-major: pixel (x, y) channel c is at rgb[y * stride_bytes + 3 * x + c]. Not owned.
struct ImageView {
  const uint8_t* rgb = nullptr;
  int width = 0;
  int height = 0;
  size_t stride_bytes = 0;  // bytes from one row to the next (>= 3 * width); 0: rows are packed (3 * width)
  size_t size_bytes = 0;    // the buffer's length when known: checked to hold every row; 0: not checked
};

// An owned RGB image (packed rows).
struct Image {
  std::vector<uint8_t> rgb;
  int width = 0;
  int height = 0;
  ImageView view() const { return {rgb.data(), width, height, static_cast<size_t>(width) * 3, rgb.size()}; }
};

// Decodes an image file to 8-bit RGB as the Python runtime does (utils/images.py `decode_rgb`): JPEG with libjpeg
// (bit-exact with Pillow's), PNG/BMP/GIF/PPM with stb_image (16-bit gray rounded to 8 bits as Python does). WebP and
// TIFF are refused. Throws pkd::Error with one line: "image not found: PATH" or "cannot read image PATH: REASON".
Image load_image(const std::filesystem::path& path);

}  // namespace pkd

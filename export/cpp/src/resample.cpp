// Resampling ported from Pillow's src/libImaging/Resample.c and Geometry.c (ImagingScaleAffine), for 8-bit RGB.
//
// Pillow is licensed under the MIT-CMU licence:
//   The Python Imaging Library (PIL) is Copyright (c) 1997-2011 by Secret Labs AB, Copyright (c) 1995-2011 by
//   Fredrik Lundh and contributors. Pillow is the friendly PIL fork. It is Copyright (c) 2010 by Jeffrey A. Clark
//   and contributors. By obtaining, using, and/or copying this software and/or its associated documentation, you
//   agree that you have read, understood, and will comply with the following terms and conditions: Permission to
//   use, copy, modify and distribute this software and its documentation for any purpose and without fee is hereby
//   granted, provided that the above copyright notice appears in all copies, and that both that copyright notice
//   and this permission notice appear in supporting documentation, and that the name of Secret Labs AB or the
//   author not be used in advertising or publicity pertaining to distribution of the software without specific,
//   written prior permission. SECRET LABS AB AND THE AUTHOR DISCLAIMS ALL WARRANTIES WITH REGARD TO THIS SOFTWARE,
//   INCLUDING ALL IMPLIED WARRANTIES OF MERCHANTABILITY AND FITNESS. IN NO EVENT SHALL SECRET LABS AB OR THE AUTHOR
//   BE LIABLE FOR ANY SPECIAL, INDIRECT OR CONSEQUENTIAL DAMAGES OR ANY DAMAGES WHATSOEVER RESULTING FROM LOSS OF
//   USE, DATA OR PROFITS, WHETHER IN AN ACTION OF CONTRACT, NEGLIGENCE OR OTHER TORTIOUS ACTION, ARISING OUT OF OR
//   IN CONNECTION WITH THE USE OR PERFORMANCE OF THIS SOFTWARE.
//
// Bit-exact with Pillow 13.0.0 (measured on 317 resizes, docs/native.md). Pillow 13 resamples vertically first when
// the height shrinks by more than twice what the width does (python-pillow/Pillow#9549); 12.x always horizontally.
#include "resample.hpp"

#include <algorithm>
#include <cmath>

#include "promptkd_edge/classifier.hpp"
#include "promptkd_edge/error.hpp"

namespace pkd::detail {
namespace {

constexpr int PRECISION_BITS = 32 - 8 - 2;

double bicubic(double x) {
  const double a = -0.5;
  if (x < 0.0) x = -x;
  if (x < 1.0) return ((a + 2.0) * x - (a + 3.0)) * x * x + 1;
  if (x < 2.0) return (((x - 5) * x + 8) * x - 4) * a;
  return 0.0;
}

double bilinear(double x) {
  if (x < 0.0) x = -x;
  return x < 1.0 ? 1.0 - x : 0.0;
}

struct Coeffs {
  int ksize = 0;
  std::vector<int> bounds;      // per output pixel: first input pixel, count
  std::vector<int32_t> kernel;  // per output pixel: ksize fixed-point weights
};

// precompute_coeffs + normalize_coeffs_8bpc.
Coeffs coeffs(int in_size, float in0, float in1, int out_size, double (*filter)(double), double filter_support) {
  double scale = static_cast<double>(in1 - in0) / out_size;
  double filterscale = scale < 1.0 ? 1.0 : scale;
  double support = filter_support * filterscale;
  Coeffs c;
  c.ksize = static_cast<int>(std::ceil(support)) * 2 + 1;
  c.bounds.assign(static_cast<size_t>(out_size) * 2, 0);
  c.kernel.assign(static_cast<size_t>(out_size) * c.ksize, 0);
  std::vector<double> k(c.ksize);
  for (int xx = 0; xx < out_size; ++xx) {
    double center = in0 + (xx + 0.5) * scale;
    double ww = 0.0, ss = 1.0 / filterscale;
    int xmin = static_cast<int>(center - support + 0.5);
    if (xmin < 0) xmin = 0;
    int xmax = static_cast<int>(center + support + 0.5);
    if (xmax > in_size) xmax = in_size;
    xmax -= xmin;
    for (int x = 0; x < xmax; ++x) {
      double w = filter((x + xmin - center + 0.5) * ss);
      k[x] = w;
      ww += w;
    }
    for (int x = 0; x < xmax; ++x) {
      double v = ww != 0.0 ? k[x] / ww : k[x];
      c.kernel[static_cast<size_t>(xx) * c.ksize + x] =
          v < 0 ? static_cast<int32_t>(-0.5 + v * (1 << PRECISION_BITS))
                : static_cast<int32_t>(0.5 + v * (1 << PRECISION_BITS));
    }
    c.bounds[2 * xx] = xmin;
    c.bounds[2 * xx + 1] = xmax;
  }
  return c;
}

inline uint8_t clip8(int32_t v) {
  v >>= PRECISION_BITS;
  return v < 0 ? 0 : v > 255 ? 255 : static_cast<uint8_t>(v);
}

// ResampleHorizontal_8bpc over `rows` rows of `in` starting at row `first`.
void horizontal(const uint8_t* in, size_t stride, int rows, int first, const Coeffs& c, int out_w,
                std::vector<uint8_t>& out) {
  out.resize(static_cast<size_t>(rows) * out_w * 3);
  for (int y = 0; y < rows; ++y) {
    const uint8_t* row = in + static_cast<size_t>(y + first) * stride;
    for (int xx = 0; xx < out_w; ++xx) {
      int xmin = c.bounds[2 * xx], xmax = c.bounds[2 * xx + 1];
      const int32_t* k = &c.kernel[static_cast<size_t>(xx) * c.ksize];
      int32_t s0 = 1 << (PRECISION_BITS - 1), s1 = s0, s2 = s0;
      for (int x = 0; x < xmax; ++x) {
        const uint8_t* p = row + static_cast<size_t>(x + xmin) * 3;
        s0 += p[0] * k[x];
        s1 += p[1] * k[x];
        s2 += p[2] * k[x];
      }
      uint8_t* o = &out[(static_cast<size_t>(y) * out_w + xx) * 3];
      o[0] = clip8(s0);
      o[1] = clip8(s1);
      o[2] = clip8(s2);
    }
  }
}

// ResampleVertical_8bpc of a `width`-pixel-wide image to out_h rows.
void vertical(const uint8_t* in, size_t stride, int width, const Coeffs& c, int out_h, std::vector<uint8_t>& out) {
  out.resize(static_cast<size_t>(out_h) * width * 3);
  for (int yy = 0; yy < out_h; ++yy) {
    int ymin = c.bounds[2 * yy], ymax = c.bounds[2 * yy + 1];
    const int32_t* k = &c.kernel[static_cast<size_t>(yy) * c.ksize];
    for (int xx = 0; xx < width; ++xx) {
      int32_t s0 = 1 << (PRECISION_BITS - 1), s1 = s0, s2 = s0;
      for (int y = 0; y < ymax; ++y) {
        const uint8_t* p = in + static_cast<size_t>(y + ymin) * stride + static_cast<size_t>(xx) * 3;
        s0 += p[0] * k[y];
        s1 += p[1] * k[y];
        s2 += p[2] * k[y];
      }
      uint8_t* o = &out[(static_cast<size_t>(yy) * width + xx) * 3];
      o[0] = clip8(s0);
      o[1] = clip8(s1);
      o[2] = clip8(s2);
    }
  }
}

// ImagingScaleAffine (Image.resize with NEAREST): positions accumulated from box start + half a step.
std::vector<uint8_t> nearest(const uint8_t* src, int width, int height, size_t stride, int out_w, int out_h,
                             const float box[4]) {
  double ax = static_cast<double>(box[2] - box[0]) / out_w, ay = static_cast<double>(box[3] - box[1]) / out_h;
  std::vector<int> xin(out_w, -1);
  double xo = box[0] + ax * 0.5;
  for (int x = 0; x < out_w; ++x, xo += ax) {
    int xi = xo < 0.0 ? -1 : static_cast<int>(xo);
    xin[x] = xi < width ? xi : -1;
  }
  std::vector<uint8_t> out(static_cast<size_t>(out_w) * out_h * 3, 0);
  double yo = box[1] + ay * 0.5;
  for (int y = 0; y < out_h; ++y, yo += ay) {
    int yi = yo < 0.0 ? -1 : static_cast<int>(yo);
    if (yi < 0 || yi >= height) continue;
    for (int x = 0; x < out_w; ++x)
      if (xin[x] >= 0)
        std::copy_n(src + static_cast<size_t>(yi) * stride + static_cast<size_t>(xin[x]) * 3, 3,
                    &out[(static_cast<size_t>(y) * out_w + x) * 3]);
  }
  return out;
}

}  // namespace

std::vector<uint8_t> pil_resize(const uint8_t* src, int w, int h, size_t stride, int ow, int oh,
                                const std::string& filter, const float box[4]) {
  if (filter == "nearest") return nearest(src, w, h, stride, ow, oh, box);
  bool cubic = filter == "bicubic";
  double (*f)(double) = cubic ? bicubic : bilinear;
  double support = cubic ? 2.0 : 1.0;
  bool need_h = ow != w || box[0] != 0 || box[2] != static_cast<float>(ow);
  bool need_v = oh != h || box[1] != 0 || box[3] != static_cast<float>(oh);
  Coeffs cv = coeffs(h, box[1], box[3], oh, f, support);
  std::vector<uint8_t> t1, t2;
  if (need_h && need_v && h > oh && (h - oh) > 2 * (w - ow)) {  // Pillow 13: vertical pass first
    Coeffs ch = coeffs(w, box[0], box[2], ow, f, support);
    vertical(src, stride, w, cv, oh, t1);
    horizontal(t1.data(), static_cast<size_t>(w) * 3, oh, 0, ch, ow, t2);
    return t2;
  }
  const uint8_t* in = src;
  size_t in_stride = stride;
  int in_w = w;
  int first = 0;
  if (need_h) {
    first = cv.bounds[0];
    int last = cv.bounds[2 * oh - 2] + cv.bounds[2 * oh - 1];
    for (int i = 0; i < oh; ++i) cv.bounds[2 * i] -= first;
    horizontal(src, stride, last - first, first, coeffs(w, box[0], box[2], ow, f, support), ow, t1);
    in = t1.data();
    in_stride = static_cast<size_t>(ow) * 3;
    in_w = ow;
    first = 0;
  }
  if (need_v) {
    vertical(in, in_stride, in_w, cv, oh, t2);
    return t2;
  }
  if (need_h) return t1;
  std::vector<uint8_t> out(static_cast<size_t>(oh) * in_w * 3);
  for (int y = 0; y < oh; ++y) std::copy_n(in + static_cast<size_t>(y) * in_stride, in_w * 3, &out[y * in_w * 3ul]);
  return out;
}

namespace {

// torchvision's size for an int size: short side = size, long side = int(size * long / short).
std::pair<int, int> shortest_side(int h, int w, int size) {
  int short_side = w <= h ? w : h, long_side = w <= h ? h : w;
  int new_long = static_cast<int>(static_cast<double>(size) * long_side / short_side);
  return w <= h ? std::pair<int, int>{new_long, size} : std::pair<int, int>{size, new_long};
}

// open_clip's ResizeKeepRatio.get_params; Python's round() is half-to-even: std::nearbyint.
std::pair<int, int> keep_ratio(int h, int w, int th, int tw, double longest) {
  double rh = static_cast<double>(h) / th, rw = static_cast<double>(w) / tw;
  double ratio = std::max(rh, rw) * longest + std::min(rh, rw) * (1.0 - longest);
  return {std::max(1, static_cast<int>(std::nearbyint(h / ratio))),
          std::max(1, static_cast<int>(std::nearbyint(w / ratio)))};
}

struct Axis {
  int start, length, before, after;
};

// utils/images.py crop_axis: torchvision's center_crop (zero padding when the side is short).
Axis crop_axis(int resized, int crop) {
  if (resized < crop) return {0, resized, (crop - resized) / 2, (crop - resized + 1) / 2};
  return {static_cast<int>(std::nearbyint((resized - crop) / 2.0)), crop, 0, 0};
}

constexpr int64_t RESIZE_BUDGET = int64_t{1} << 24;  // utils/images.py: above it only the crop box is resampled

}  // namespace

ResizePlan resize_plan(int h, int w, int size_h, int size_w, const std::string& mode, const std::string& interp) {
  if (mode == "squash") return {size_h, size_w, interp};
  if (mode == "longest") {
    auto [nh, nw] = keep_ratio(h, w, size_h, size_w, 1.0);
    return {nh, nw, interp};
  }
  if (size_h == size_w) {
    auto [nh, nw] = shortest_side(h, w, size_h);
    return {nh, nw, interp};
  }
  auto [nh, nw] = keep_ratio(h, w, size_h, size_w, 0.0);
  return {nh, nw, interp == "nearest" ? "nearest" : "bicubic"};
}

}  // namespace pkd::detail

namespace pkd {

Image resize_crop(const ImageView& image, const PreprocessSpec& spec) {
  using namespace detail;
  const int h = image.height, w = image.width;
  const size_t stride = image.stride_bytes ? image.stride_bytes : static_cast<size_t>(w) * 3;
  ResizePlan plan = resize_plan(h, w, spec.height, spec.width, spec.resize_mode, spec.interpolation);
  Axis ay = crop_axis(plan.height, spec.height), ax = crop_axis(plan.width, spec.width);
  std::vector<uint8_t> resized;  // lh x lw x 3 (the part the crop keeps)
  const uint8_t* kept;
  size_t kept_stride;
  if (plan.height == h && plan.width == w) {  // torchvision does not resample an image already at the size
    kept = image.rgb + static_cast<size_t>(ay.start) * stride + static_cast<size_t>(ax.start) * 3;
    kept_stride = stride;
  } else if (static_cast<int64_t>(plan.height) * plan.width <= RESIZE_BUDGET) {
    const float box[4] = {0.f, 0.f, static_cast<float>(w), static_cast<float>(h)};
    resized = pil_resize(image.rgb, w, h, stride, plan.width, plan.height, plan.filter, box);
    kept_stride = static_cast<size_t>(plan.width) * 3;
    kept = resized.data() + static_cast<size_t>(ay.start) * kept_stride + static_cast<size_t>(ax.start) * 3;
  } else {
    double sy = static_cast<double>(h) / plan.height, sx = static_cast<double>(w) / plan.width;
    const float box[4] = {static_cast<float>(ax.start * sx), static_cast<float>(ay.start * sy),
                          static_cast<float>((ax.start + ax.length) * sx), static_cast<float>((ay.start + ay.length) * sy)};
    resized = pil_resize(image.rgb, w, h, stride, ax.length, ay.length, plan.filter, box);
    kept = resized.data();
    kept_stride = static_cast<size_t>(ax.length) * 3;
  }
  Image out;
  out.width = spec.width;
  out.height = spec.height;
  out.rgb.assign(static_cast<size_t>(spec.width) * spec.height * 3, 0);
  for (int y = 0; y < ay.length; ++y)
    std::copy_n(kept + static_cast<size_t>(y) * kept_stride, static_cast<size_t>(ax.length) * 3,
                &out.rgb[(static_cast<size_t>(y + ay.before) * spec.width + ax.before) * 3]);
  return out;
}

}  // namespace pkd

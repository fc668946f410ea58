// Image files decoded as utils/images.py decode_rgb decodes them: JPEG by libjpeg(-turbo), bit-exact with Pillow's
// bundled libjpeg-turbo (defaults, RGB output); PNG/BMP/GIF/PPM by stb_image, equal to Pillow's conversion to RGB
// (16-bit gray: (v * 255 + 32767) // 65535 as rgb_image rounds it; 16-bit colour: its high byte, as Pillow reads it).
#include <csetjmp>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iterator>
#include <memory>
#include <string>

#include <sys/stat.h>
#include <unistd.h>

#include <jpeglib.h>
#include <jerror.h>

#define STB_IMAGE_STATIC
#define STB_IMAGE_IMPLEMENTATION
#define STBI_NO_STDIO
#define STBI_ONLY_PNG
#define STBI_ONLY_BMP
#define STBI_ONLY_GIF
#define STBI_ONLY_PNM
#if defined(__GNUC__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wunused-function"
#pragma GCC diagnostic ignored "-Wmissing-field-initializers"
#pragma GCC diagnostic ignored "-Wsign-compare"
#endif
#include <stb_image.h>
#if defined(__GNUC__)
#pragma GCC diagnostic pop
#endif

#include "bundle.hpp"
#include "promptkd_edge/image.hpp"

namespace fs = std::filesystem;

namespace pkd {
namespace {

struct Unreadable {
  std::string reason;
};

// utils/paths.py file_problem: why a path cannot be read as a file, never opening what is not a regular file.
std::string file_problem(const fs::path& path) {
  struct stat st;
  if (::stat(path.c_str(), &st) != 0) {
    if (errno == ENOENT) {
      struct stat lst;
      if (::lstat(path.c_str(), &lst) == 0 && S_ISLNK(lst.st_mode)) {
        std::error_code ec;
        return "is a broken symlink to '" + fs::read_symlink(path, ec).string() + "'";
      }
      return "file not found";
    }
    if (errno == ELOOP) return "is a symlink loop";
    if (errno == EACCES) return "is not reachable: permission denied on a folder above it";
    if (errno == ENOTDIR) return "is not reachable: a part of the path above it is a file, not a folder";
    return std::string("is not reachable: ") + std::strerror(errno);
  }
  if (S_ISREG(st.st_mode)) return ::access(path.c_str(), R_OK) == 0 ? "" : "is not readable (permission denied)";
  if (S_ISDIR(st.st_mode)) return "is a folder, not a file";
  if (S_ISFIFO(st.st_mode)) return "is a FIFO (named pipe), not a file";
  if (S_ISSOCK(st.st_mode)) return "is a socket, not a file";
  if (S_ISCHR(st.st_mode)) return "is a character device, not a file";
  if (S_ISBLK(st.st_mode)) return "is a block device, not a file";
  return "is not a regular file";
}

struct JpegError {
  jpeg_error_mgr mgr;
  std::jmp_buf jump;
  char message[JMSG_LENGTH_MAX];
  bool truncated;  // libjpeg warned that the data ended early (it pads the image with gray)
};

void jpeg_fail(j_common_ptr info) {
  auto* err = reinterpret_cast<JpegError*>(info->err);
  (*info->err->format_message)(info, err->message);
  std::longjmp(err->jump, 1);
}

// Warnings are not printed; the one that says the data ended early is remembered.
void jpeg_warn(j_common_ptr info, int level) {
  if (level >= 0) return;
  auto* err = reinterpret_cast<JpegError*>(info->err);
  err->mgr.num_warnings++;
  if (err->mgr.msg_code == JWRN_JPEG_EOF) err->truncated = true;
}

// libjpeg with Pillow's settings (JpegDecode.c: out_color_space JCS_RGB, libjpeg's defaults otherwise).
Image decode_jpeg(const std::string& bytes) {
  jpeg_decompress_struct info;
  JpegError err;
  info.err = jpeg_std_error(&err.mgr);
  err.mgr.error_exit = jpeg_fail;
  err.mgr.emit_message = jpeg_warn;
  err.truncated = false;
  auto img = std::make_unique<Image>();  // not changed itself after setjmp: safe to use after a longjmp
  if (setjmp(err.jump)) {
    jpeg_destroy_decompress(&info);
    throw Unreadable{err.message};
  }
  jpeg_create_decompress(&info);
  jpeg_mem_src(&info, reinterpret_cast<const unsigned char*>(bytes.data()), bytes.size());
  jpeg_read_header(&info, TRUE);
  if (info.jpeg_color_space == JCS_CMYK || info.jpeg_color_space == JCS_YCCK) {
    jpeg_destroy_decompress(&info);
    throw Unreadable{"CMYK JPEG: the native reader decodes RGB and gray JPEGs only; convert it to RGB"};
  }
  info.out_color_space = JCS_RGB;
  jpeg_start_decompress(&info);
  img->width = static_cast<int>(info.output_width);
  img->height = static_cast<int>(info.output_height);
  img->rgb.resize(static_cast<size_t>(img->width) * img->height * 3);
  while (info.output_scanline < info.output_height) {
    JSAMPROW row = &img->rgb[static_cast<size_t>(info.output_scanline) * img->width * 3];
    jpeg_read_scanlines(&info, &row, 1);
  }
  jpeg_finish_decompress(&info);
  jpeg_destroy_decompress(&info);
  // Pillow refuses a JPEG whose data ends early ("image file is truncated"); libjpeg pads it and warns
  if (err.truncated) throw Unreadable{"image file is truncated"};
  return std::move(*img);
}

Image decode_stb(const std::string& bytes) {
  const auto* data = reinterpret_cast<const stbi_uc*>(bytes.data());
  int len = static_cast<int>(bytes.size()), w = 0, h = 0, channels = 0;
  if (!stbi_info_from_memory(data, len, &w, &h, &channels)) throw Unreadable{"not an image file PIL can read"};
  Image img;
  if (channels == 1 && stbi_is_16_bit_from_memory(data, len)) {  // 16-bit gray: the format's range, rounded
    stbi_us* px = stbi_load_16_from_memory(data, len, &w, &h, &channels, 1);
    if (!px) throw Unreadable{stbi_failure_reason()};
    img.rgb.resize(static_cast<size_t>(w) * h * 3);
    for (size_t i = 0; i < static_cast<size_t>(w) * h; ++i)
      std::memset(&img.rgb[i * 3], static_cast<int>((px[i] * 255u + 32767u) / 65535u), 3);
    stbi_image_free(px);
  } else {
    stbi_uc* px = stbi_load_from_memory(data, len, &w, &h, &channels, 3);
    if (!px) throw Unreadable{stbi_failure_reason()};
    img.rgb.assign(px, px + static_cast<size_t>(w) * h * 3);
    stbi_image_free(px);
  }
  img.width = w;
  img.height = h;
  return img;
}

Image decode(const std::string& bytes) {
  auto starts = [&](const char* magic, size_t at = 0) {
    size_t n = std::strlen(magic);
    return bytes.size() >= at + n && bytes.compare(at, n, magic) == 0;
  };
  if (starts("\xFF\xD8\xFF")) return decode_jpeg(bytes);
  if (starts("RIFF") && starts("WEBP", 8))
    throw Unreadable{"WebP is not read by the native reader (JPEG, PNG, BMP, GIF, PPM); convert it to PNG"};
  if (starts("II*") || starts("MM\0*"))
    throw Unreadable{"TIFF is not read by the native reader (JPEG, PNG, BMP, GIF, PPM); convert it to PNG"};
  if (starts("\x89PNG") || starts("BM") || starts("GIF8") || starts("P5") || starts("P6")) return decode_stb(bytes);
  throw Unreadable{"not an image file PIL can read"};
}

}  // namespace

Image load_image(const fs::path& path) {
  const std::string shown = detail::python_path(path.string());
  std::string problem = file_problem(path);
  if (problem == "file not found") throw Error("image not found: " + shown);
  try {
    if (!problem.empty()) throw Unreadable{problem};
    std::ifstream in(path, std::ios::binary);
    if (!in) throw Unreadable{std::strerror(errno)};
    std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    Image img = decode(bytes);
    if (img.width == 0 || img.height == 0) throw Unreadable{"image is empty (0 pixels)"};
    return img;
  } catch (const Unreadable& e) {
    throw Error("cannot read image " + shown + ": " + e.reason);
  }
}

}  // namespace pkd

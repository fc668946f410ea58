// The test driver of tests/test_native.py (built with -DPKD_BUILD_TESTS=ON, not installed): runs the library on
// what the Python tests give it and writes raw results they compare with the Python runtime's.
//   resize IN.rgb W H STRIDE H_OUT W_OUT INTERP MODE OUT.rgb   resize_crop of a buffer with rows STRIDE bytes apart
//   decode FILE OUT.rgb                                        load_image; prints "W H"
//   logits BUNDLE PRECISION PAD OUT.f32 IMAGE...               logits of files, rows padded by PAD bytes
//   embed BUNDLE PRECISION OUT.f32 IMAGE...                    embed of files
//   threads BUNDLE THREADS ROUNDS IMAGE...                     logits from several threads == one thread's
//   view BUNDLE W H STRIDE SIZE                                classify one zero buffer described so
#include <atomic>
#include <cstring>
#include <fstream>
#include <iostream>
#include <iterator>
#include <string>
#include <thread>
#include <vector>

#include "promptkd_edge/classifier.hpp"

namespace {

std::vector<uint8_t> read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

void write_file(const std::string& path, const void* data, size_t size) {
  std::ofstream(path, std::ios::binary).write(static_cast<const char*>(data), static_cast<std::streamsize>(size));
}

// The files as images whose rows are `pad` bytes longer than their pixels (a camera frame's layout).
struct Padded {
  std::vector<std::vector<uint8_t>> buffers;
  std::vector<pkd::ImageView> views;
};

Padded load(char** first, char** last, size_t pad) {
  Padded p;
  for (char** f = first; f != last; ++f) {
    pkd::Image img = pkd::load_image(*f);
    size_t row = static_cast<size_t>(img.width) * 3, stride = row + pad;
    std::vector<uint8_t> buf(stride * img.height, 0xAB);
    for (int y = 0; y < img.height; ++y) std::memcpy(&buf[y * stride], &img.rgb[y * row], row);
    p.buffers.push_back(std::move(buf));
    p.views.push_back({p.buffers.back().data(), img.width, img.height, stride, p.buffers.back().size()});
  }
  return p;
}

int run(int argc, char** argv) {
  const std::string cmd = argc > 1 ? argv[1] : "";
  if (cmd == "resize" && argc == 11) {
    std::vector<uint8_t> in = read_file(argv[2]);
    pkd::ImageView view{in.data(), std::stoi(argv[3]), std::stoi(argv[4]), std::stoul(argv[5]), in.size()};
    pkd::PreprocessSpec spec;
    spec.height = std::stoi(argv[6]);
    spec.width = std::stoi(argv[7]);
    spec.interpolation = argv[8];
    spec.resize_mode = argv[9];
    pkd::Image out = pkd::resize_crop(view, spec);
    write_file(argv[10], out.rgb.data(), out.rgb.size());
    return 0;
  }
  if (cmd == "decode" && argc == 4) {
    pkd::Image img = pkd::load_image(argv[2]);
    write_file(argv[3], img.rgb.data(), img.rgb.size());
    std::cout << img.width << ' ' << img.height << '\n';
    return 0;
  }
  if (cmd == "logits" && argc >= 7) {
    pkd::Options options;
    options.precision = argv[3];
    auto clf = pkd::Classifier::from_bundle(argv[2], "openvino", options);
    Padded p = load(argv + 6, argv + argc, std::stoul(argv[4]));
    pkd::Matrix m = clf.logits(p.views);
    write_file(argv[5], m.values.data(), m.values.size() * sizeof(float));
    std::cout << clf.description() << '\n';
    return 0;
  }
  if (cmd == "embed" && argc >= 6) {
    pkd::Options options;
    options.precision = argv[3];
    auto clf = pkd::Classifier::from_bundle(argv[2], "openvino", options);
    Padded p = load(argv + 5, argv + argc, 0);
    pkd::Matrix m = clf.embed(p.views);
    write_file(argv[4], m.values.data(), m.values.size() * sizeof(float));
    return 0;
  }
  if (cmd == "threads" && argc >= 6) {
    auto clf = pkd::Classifier::from_bundle(argv[2]);
    Padded p = load(argv + 5, argv + argc, 0);
    const pkd::Matrix one = clf.logits(p.views);  // one thread's results: the batch, and each image alone
    std::vector<pkd::Matrix> alone;
    for (const auto& v : p.views) alone.push_back(clf.logits({v}));
    const int threads = std::stoi(argv[3]), rounds = std::stoi(argv[4]);
    std::atomic<int> differ{0}, calls{0};
    std::vector<std::thread> pool;
    for (int t = 0; t < threads; ++t)
      pool.emplace_back([&, t] {
        try {
          for (int r = 0; r < rounds; ++r) {
            // each thread its own image (rotated) alone and then the whole batch
            size_t i = static_cast<size_t>(t + r) % p.views.size();
            pkd::Matrix single = clf.logits({p.views[i]});
            pkd::Matrix all = clf.logits(p.views);
            if (single.values != alone[i].values || all.values != one.values)
              ++differ;
            calls += 2;
          }
        } catch (const pkd::Error& e) {  // counted, and the first one said
          if (differ++ == 0) std::cerr << "error in a thread: " << e.what() << '\n';
        }
      });
    for (auto& th : pool) th.join();
    std::cout << "calls " << calls << " differ " << differ << '\n';
    return differ == 0 ? 0 : 1;
  }
  if (cmd == "view" && argc == 7) {
    auto clf = pkd::Classifier::from_bundle(argv[2]);
    std::vector<uint8_t> buf(1 << 16, 0);
    pkd::ImageView v{buf.data(), std::stoi(argv[3]), std::stoi(argv[4]), std::stoul(argv[5]), std::stoul(argv[6])};
    clf.classify({v});
    std::cout << "ok\n";
    return 0;
  }
  std::cerr << "usage: see native_check.cpp\n";
  return 64;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return run(argc, argv);
  } catch (const pkd::Error& e) {
    std::cerr << "error: " << e.what() << '\n';
    return 2;
  }
}

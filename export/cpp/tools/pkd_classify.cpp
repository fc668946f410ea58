// pkd-classify BUNDLE IMAGE... [--backend openvino|tensorrt] [--top-k K] [--threads N] [--precision P] [--json]
// The native `pkd predict`: the same --json keys, "error: <line>" on stderr and exit 2 for a bad bundle or argument,
// unreadable images skipped with the reason on stderr and exit 3 (2 when none could be read).
#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <map>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "promptkd_edge/classifier.hpp"

namespace fs = std::filesystem;

namespace {

constexpr int ERROR_EXIT = 2, SKIPPED_EXIT = 3;
const char* const USAGE =
    "usage: pkd-classify BUNDLE IMAGE... [--backend openvino|tensorrt] [--top-k K] [--threads N]\n"
    "                    [--precision auto|fp32|bf16|int8] [--batch-size N] [--allow-invalid] [--json]\n"
    "Top-k classes of image files (folders are walked) with a promptkd-edge bundle; output like `pkd predict`.\n"
    "\n"
    "  --backend B       openvino (CPU; default) or tensorrt (a plan the bundle records for this GPU)\n"
    "  --top-k K         classes per image (default 5)\n"
    "  --threads N       OpenVINO inference threads (default: all usable cores)\n"
    "  --precision P     OpenVINO: auto (bf16 where the bundle's bf16 gate passed and the CPU has it), fp32, bf16,\n"
    "                    int8 (the bundle's INT8 graph)\n"
    "  --batch-size N    images per inference call (default 16)\n"
    "  --allow-invalid   load a bundle that failed its parity gate at export\n"
    "  --json            one JSON object: bundle, backend, predictions [{image, labels, probabilities, indices}],\n"
    "                    skipped [{image, reason}]\n"
    "\n"
    "Exit: 0; 2 with one line on stderr (bad bundle, input or option); 3 when some images were skipped.\n"
    "\n"
    "Examples:\n"
    "  pkd-classify bundles/pets cat.jpg dog.png\n"
    "  pkd-classify bundles/pets photos/ --top-k 3 --json > labels.json\n"
    "  pkd-classify bundles/pets frame.jpg --backend tensorrt\n";
const char* const IMAGE_EXTENSIONS[] = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif", ".ppm"};

struct Args {
  std::string bundle;
  std::vector<std::string> images;
  std::string backend = "openvino";
  int top_k = 5;
  bool json = false;
  pkd::Options options;
};

// Python's str(Path(p)) (separators collapsed, "." parts and a trailing '/' dropped), as `pkd predict` prints paths.
std::string shown(const std::string& p) {
  bool absolute = !p.empty() && p[0] == '/';
  std::string out;
  size_t start = 0;
  while (start <= p.size()) {
    size_t end = std::min(p.find('/', start), p.size());
    std::string part = p.substr(start, end - start);
    if (!part.empty() && part != ".") out += (out.empty() ? "" : "/") + part;
    start = end + 1;
  }
  return absolute ? "/" + out : out.empty() ? "." : out;
}

int to_int(const std::string& flag, const std::string& text) {
  size_t used = 0;
  int v = 0;
  try {
    v = std::stoi(text, &used);
  } catch (const std::exception&) {
    used = std::string::npos;
  }
  if (used != text.size()) throw pkd::Error(flag + " takes an integer, got '" + text + "'");
  return v;
}

Args parse(int argc, char** argv) {
  Args a;
  std::vector<std::string> positional;
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) throw pkd::Error(arg + " needs a value");
      return argv[++i];
    };
    if (arg == "--backend") a.backend = value();
    else if (arg == "--top-k" || arg == "-k") a.top_k = to_int(arg, value());
    else if (arg == "--threads") a.options.threads = to_int(arg, value());
    else if (arg == "--precision") a.options.precision = value();
    else if (arg == "--batch-size") a.options.batch_size = to_int(arg, value());
    else if (arg == "--allow-invalid") a.options.allow_invalid = true;
    else if (arg == "--json") a.json = true;
    else if (arg.size() > 1 && arg[0] == '-') throw pkd::Error("unknown option " + arg + "; see pkd-classify --help");
    else positional.push_back(arg);
  }
  if (positional.size() < 2) throw pkd::Error("give a bundle folder and at least one image: " + std::string(USAGE).substr(7, 45));
  if (a.top_k < 1) throw pkd::Error("--top-k must be >= 1");
  a.bundle = positional[0];
  a.images.assign(positional.begin() + 1, positional.end());
  return a;
}

bool is_image_name(const fs::path& p) {
  std::string name = p.filename().string(), lower = name;
  std::transform(lower.begin(), lower.end(), lower.begin(), [](unsigned char c) { return std::tolower(c); });
  if (name.empty() || name[0] == '.') return false;
  for (const char* ext : IMAGE_EXTENSIONS) {
    std::string e(ext);
    if (lower.size() >= e.size() && lower.compare(lower.size() - e.size(), e.size(), e) == 0) return true;
  }
  return false;
}

// runtime/files.py image_files: paths as given, the images under folders (recursive, sorted).
std::vector<std::string> image_files(const std::vector<std::string>& items) {
  std::vector<std::string> files;
  for (const auto& item : items) {
    std::error_code ec;
    if (!fs::is_directory(item, ec)) {
      files.push_back(item);
      continue;
    }
    std::vector<std::string> found;
    for (auto it = fs::recursive_directory_iterator(item, fs::directory_options::skip_permission_denied, ec);
         !ec && it != fs::recursive_directory_iterator(); it.increment(ec))
      if (it->is_regular_file(ec) && is_image_name(it->path())) found.push_back(shown(it->path().string()));
    if (found.empty())
      throw pkd::Error("no images under " + shown(item) +
                       " (looked for .jpg, .jpeg, .png, .bmp, .webp, .tif, .tiff, .gif, .ppm)");
    std::sort(found.begin(), found.end());
    files.insert(files.end(), found.begin(), found.end());
  }
  return files;
}

std::string fixed(double v, int digits) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.*f", digits, v);
  return buf;
}

int run(int argc, char** argv) {
  for (int i = 1; i < argc; ++i)
    if (std::string(argv[i]) == "--help" || std::string(argv[i]) == "-h") {
      std::cout << USAGE;
      return 0;
    }
  Args a = parse(argc, argv);
  std::vector<std::string> files = image_files(a.images);
  pkd::Classifier clf = pkd::Classifier::from_bundle(a.bundle, a.backend, a.options);
  for (const auto& note : clf.notes()) std::cerr << "note: " << note << '\n';
  std::vector<pkd::Image> images;
  std::vector<std::string> kept;
  std::vector<std::pair<std::string, std::string>> skipped;  // (image, reason)
  for (const auto& f : files) {
    try {
      images.push_back(pkd::load_image(f));
      kept.push_back(shown(f));
    } catch (const pkd::Error& e) {
      skipped.emplace_back(shown(f), e.what());
    }
  }
  if (images.empty())
    throw pkd::Error("none of the " + std::to_string(files.size()) + " images could be read (" + skipped[0].second +
                     (skipped.size() > 1 ? "; " + std::to_string(skipped.size() - 1) + " more" : "") + ")");
  std::vector<pkd::ImageView> views;
  for (const auto& img : images) views.push_back(img.view());
  std::vector<pkd::Prediction> predictions = clf.classify(views, a.top_k);
  if (a.json) {
    nlohmann::ordered_json out = {{"bundle", shown(a.bundle)}, {"backend", clf.description()},
                                  {"backend_choice", nullptr}, {"predictions", nlohmann::ordered_json::array()},
                                  {"skipped", nlohmann::ordered_json::array()}};
    for (size_t i = 0; i < predictions.size(); ++i)
      out["predictions"].push_back({{"image", kept[i]}, {"labels", predictions[i].labels},
                                    {"probabilities", predictions[i].probabilities},
                                    {"indices", predictions[i].indices}});
    for (const auto& [image, reason] : skipped) out["skipped"].push_back({{"image", image}, {"reason", reason}});
    std::cout << out.dump(2, ' ', true) << '\n';
  } else {
    std::cout << shown(a.bundle) << " on " << clf.description() << '\n';
    for (size_t i = 0; i < predictions.size(); ++i) {
      const auto& p = predictions[i];
      std::cout << kept[i] << "\t" << p.labels[0] << "\t" << fixed(p.probabilities[0], 3);
      for (size_t j = 1; j < p.labels.size(); ++j)
        std::cout << (j == 1 ? "\t" : ", ") << p.labels[j] << ' ' << fixed(p.probabilities[j], 2);
      std::cout << '\n';
    }
  }
  for (const auto& s : skipped) std::cerr << "skipped " << s.second << '\n';
  return skipped.empty() ? 0 : SKIPPED_EXIT;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return run(argc, argv);
  } catch (const pkd::Error& e) {
    std::cerr << "error: " << e.what() << '\n';
  } catch (const std::exception& e) {  // a bug or the system (out of memory): still one line, never a crash
    std::cerr << "error: " << e.what() << '\n';
  }
  return ERROR_EXIT;
}

// `aim analyse-shapes`: reads the class, centre and size of shape images (the built-in dataset
// or samples of a model trained on it) and reports accuracy, confusions and spread per class.
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iomanip>
#include <iostream>
#include <map>
#include <sstream>
#include <regex>

#include "aim/cli/commands.h"
#include "aim/core/error.h"
#include "aim/core/fileio.h"
#include "aim/data/image.h"
#include "aim/data/image_folder.h"
#include "aim/data/shapes.h"

namespace aim::cli {

namespace {
namespace fs = std::filesystem;

struct Input {
  std::string path;
  int truth = -1;
};

/// The label a class folder stands for: "3_yellow_ring" or "yellow_ring"; -1 when neither.
int label_of_folder(const std::string& name) {
  for (int k = 0; k < kNumShapeClasses; ++k)
    if (name == shape_class_dir(k) || name == shape_classes()[k].name) return k;
  return -1;
}

/// `aim sample --outdir` names files "<index>_class<label>.png"; -1 when a name has no label, or
/// one beyond the shape classes (counted in `beyond`).
int label_of_file(const std::string& path, int& beyond) {
  static const std::regex pattern("_class([0-9]+)\\.[A-Za-z]+$");
  std::smatch m;
  const std::string name = fs::path(path).filename().string();
  if (!std::regex_search(name, m, pattern)) return -1;
  const std::string digits = m[1].str();
  if (digits.size() > 9 || std::stoi(digits) >= kNumShapeClasses) {
    ++beyond;
    return -1;
  }
  return std::stoi(digits);
}

/// ", N files labelled beyond the 10 shape classes (no truth)" when N > 0.
std::string beyond_note(int beyond) {
  return beyond ? str_cat(", ", beyond, beyond == 1 ? " file" : " files", " labelled beyond the ", kNumShapeClasses,
                          " shape classes (no truth)")
                : "";
}

std::vector<Input> collect(const std::vector<std::string>& args, std::string& mode) {
  std::vector<Input> out;
  if (args.size() == 1 && fs::is_directory(args[0])) {
    bool has_class_dirs = false;
    for (const auto& e : fs::directory_iterator(args[0])) has_class_dirs |= e.is_directory();
    if (has_class_dirs) {
      const ImageList list = list_image_folder(args[0]);
      std::vector<int> map;
      int unknown = 0;
      for (const auto& name : list.classes) {
        map.push_back(label_of_folder(name));
        unknown += map.back() < 0;
      }
      for (const auto& e : list.entries) out.push_back({e.path, map[static_cast<size_t>(e.label)]});
      mode = str_cat(list.classes.size(), " class folders", unknown ? str_cat(", ", unknown, " not named after a class") : "");
      return out;
    }
    std::vector<std::string> files;
    for (const auto& e : fs::directory_iterator(args[0]))
      if (e.is_regular_file() && has_image_extension(e.path().string())) files.push_back(e.path().string());
    std::sort(files.begin(), files.end());
    AIM_CHECK(!files.empty(), str_cat(args[0], ": no image files (and no class sub-folders)"));
    int beyond = 0;
    for (const auto& f : files) out.push_back({f, label_of_file(f, beyond)});
    mode = "one folder" + beyond_note(beyond);
    return out;
  }
  int beyond = 0;
  for (const auto& a : args) {
    AIM_CHECK(fs::is_regular_file(a), str_cat(a, ": not an image file (give one folder or image files)"));
    out.push_back({a, label_of_file(a, beyond)});
  }
  mode = "files" + beyond_note(beyond);
  return out;
}

std::string label_name(int label) { return label < 0 ? std::string("none") : shape_class_dir(label); }

}  // namespace

Runner add_analyse_shapes_command(CLI::App& app) {
  auto* cmd = app.add_subcommand(
      "analyse-shapes",
      "Classify shape images (aim make-dataset shapes, or samples of a model trained on them) without learning");
  auto paths = std::make_shared<std::vector<std::string>>();
  auto json = std::make_shared<std::string>();
  cmd->add_option("inputs", *paths,
                  "a folder (class sub-folders give the truth) or image files (truth from '_class<N>' in the name)")
      ->required();
  cmd->add_option("--json", *json, "also write the figures to this JSON file (- for standard output)");
  return [cmd, paths, json]() -> int {
    if (!cmd->parsed()) return -1;
    std::string mode;
    const std::vector<Input> inputs = collect(*paths, mode);
    {
      // The JSON may not replace an image or a folder's truth.jsonl it reads.
      std::vector<std::pair<std::string, std::string>> read;
      for (const auto& p : *paths) {
        read.emplace_back("", p);
        read.emplace_back("", (std::filesystem::path(p) / "truth.jsonl").string());
      }
      for (const auto& in : inputs) read.emplace_back("", in.path);
      refuse_output_over_input("--json", *json, read);
      check_report_path("--json", *json);
    }
    std::vector<ShapeAnalysis> analyses(inputs.size());
    std::vector<int> truth(inputs.size()), sizes(inputs.size());
    at::parallel_for(0, static_cast<int64_t>(inputs.size()), 1, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        const Image im = decode_image(inputs[static_cast<size_t>(i)].path);
        analyses[static_cast<size_t>(i)] = analyse_shape(im);
        sizes[static_cast<size_t>(i)] = std::min(im.width, im.height);
      }
    });
    bool any_truth = false;
    for (size_t i = 0; i < inputs.size(); ++i) {
      truth[i] = inputs[i].truth;
      any_truth |= truth[i] >= 0;
    }
    const ShapeScore s = score_shapes(analyses, any_truth ? truth : std::vector<int>{}, sizes);

    // On standard error where the JSON takes standard output (--json -).
    std::ostream& out = process_stream_fd(*json) == 1 ? std::cerr : std::cout;
    out << "analysed " << s.images << " images (" << mode << "); no shape found in " << s.no_shape << "\n";
    out << (any_truth ? "per true class" : "per detected class")
              << " (spread = std of detected centre and size, as fractions of the side):\n";
    out << "  class                 images  correct  accuracy   std cx  std cy  std size\n";
    for (int k = 0; k < kNumShapeClasses; ++k) {
      const auto& c = s.per_class[static_cast<size_t>(k)];
      if (c.count == 0) continue;
      out << "  " << std::left << std::setw(20) << shape_class_dir(k) << std::right << std::setw(8) << c.count;
      if (any_truth)
        out << std::setw(9) << c.correct << std::setw(9) << std::fixed << std::setprecision(2)
                  << 100.0 * c.correct / c.count << "%";
      else
        out << std::setw(9) << "-" << std::setw(10) << "-";
      out << std::fixed << std::setprecision(3) << std::setw(9) << c.std_cx << std::setw(8) << c.std_cy
                << std::setw(10) << c.std_size << "\n";
    }
    std::vector<std::pair<int64_t, std::pair<int, int>>> confusions;
    if (any_truth) {
      out << "accuracy " << std::fixed << std::setprecision(2) << 100.0 * s.accuracy() << "% (" << s.correct
                << " / " << s.with_truth << ")\n";
      for (int t = 0; t < kNumShapeClasses; ++t)
        for (int d = -1; d < kNumShapeClasses; ++d)
          if (d != t && s.confusion[static_cast<size_t>(t)][static_cast<size_t>(d + 1)] > 0)
            confusions.push_back({s.confusion[static_cast<size_t>(t)][static_cast<size_t>(d + 1)], {t, d}});
      std::sort(confusions.begin(), confusions.end(), [](const auto& a, const auto& b) { return a.first > b.first; });
      if (confusions.empty()) out << "no confusions\n";
      for (size_t i = 0; i < std::min<size_t>(10, confusions.size()); ++i)
        out << "  confused: " << label_name(confusions[i].second.first) << " -> "
                  << label_name(confusions[i].second.second) << ": " << confusions[i].first << "\n";
    } else {
      int64_t unmatched = 0;
      for (const auto& a : analyses) unmatched += a.shape >= 0 && a.label < 0;
      out << "shape and colour of no class: " << unmatched << "\n";
    }

    if (!json->empty()) {
      std::ostringstream f;
      f << std::setprecision(6) << "{\n  \"images\": " << s.images << ",\n  \"no_shape\": " << s.no_shape
        << ",\n  \"with_truth\": " << s.with_truth << ",\n  \"correct\": " << s.correct
        << ",\n  \"accuracy\": " << (any_truth ? std::to_string(s.accuracy()) : std::string("null"))
        << ",\n  \"per_class\": [";
      bool first = true;
      for (int k = 0; k < kNumShapeClasses; ++k) {
        const auto& c = s.per_class[static_cast<size_t>(k)];
        if (c.count == 0) continue;
        f << (first ? "\n" : ",\n") << "    {\"label\": " << k << ", \"class\": \"" << shape_class_dir(k)
          << "\", \"images\": " << c.count << ", \"correct\": " << c.correct << ", \"detected\": " << c.detected
          << ", \"std_cx\": " << c.std_cx
          << ", \"std_cy\": " << c.std_cy << ", \"std_size\": " << c.std_size << "}";
        first = false;
      }
      f << "\n  ],\n  \"confusions\": [";
      for (size_t i = 0; i < confusions.size(); ++i)
        f << (i ? ", " : "") << "{\"truth\": " << confusions[i].second.first << ", \"detected\": "
          << confusions[i].second.second << ", \"count\": " << confusions[i].first << "}";
      f << "]\n}\n";
      write_report(*json, f.str());
      if (!is_stream_output(*json)) out << "figures: " << *json << "\n";
    }
    return 0;
  };
}

}  // namespace aim::cli

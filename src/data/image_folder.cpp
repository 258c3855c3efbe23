#include "aim/data/image_folder.h"

#include <algorithm>
#include <cctype>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "aim/core/error.h"

namespace aim {

namespace fs = std::filesystem;

bool has_image_extension(const std::string& path) {
  // torchvision: filename.lower().endswith(IMG_EXTENSIONS), so a file named ".jpg" counts too.
  static const std::string kExt[] = {".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp"};
  auto name = fs::path(path).filename().string();
  std::transform(name.begin(), name.end(), name.begin(), [](unsigned char c) { return std::tolower(c); });
  for (const auto& e : kExt) {
    if (name.size() >= e.size() && name.compare(name.size() - e.size(), e.size(), e) == 0) return true;
  }
  return false;
}

ImageList list_image_folder(const std::string& root, const std::string& what) {
  std::error_code ec;
  if (!fs::is_directory(root, ec)) throw Error(str_cat(what, " ", root, ": not a directory"));
  ImageList list;
  list.source = root;
  std::vector<fs::path> class_dirs;
  for (const auto& e : fs::directory_iterator(root, fs::directory_options::follow_directory_symlink)) {
    if (e.is_directory()) class_dirs.push_back(e.path());
  }
  std::sort(class_dirs.begin(), class_dirs.end());
  if (class_dirs.empty()) {
    throw Error(str_cat(what, " ", root, ": no class folders found\n---> HINT: expected ", root,
                        "/<class name>/<image files>, as torchvision's ImageFolder"));
  }
  for (size_t c = 0; c < class_dirs.size(); ++c) {
    list.classes.push_back(class_dirs[c].filename().string());
    // torchvision's order: folders (os.walk roots) sorted by path, the files of each sorted by
    // name, so a class folder's own files come before those of its sub-folders.
    std::vector<std::pair<std::string, std::string>> files;  // (folder, file name)
    for (const auto& e : fs::recursive_directory_iterator(
             class_dirs[c], fs::directory_options::follow_directory_symlink)) {
      if (e.is_regular_file() && has_image_extension(e.path().string()))
        files.emplace_back(e.path().parent_path().string(), e.path().filename().string());
    }
    std::sort(files.begin(), files.end());
    for (const auto& [folder, name] : files)
      list.entries.push_back({(fs::path(folder) / name).string(), static_cast<int64_t>(c)});
  }
  if (list.entries.empty()) throw Error(str_cat(what, " ", root, ": no image files in its class folders"));
  return list;
}

ImageList read_image_list(const std::string& list_file, const std::string& classes_file) {
  std::ifstream in(list_file);
  if (!in) throw Error(str_cat("--list ", list_file, ": cannot open"));
  ImageList list;
  list.source = list_file;
  const fs::path base = fs::path(list_file).parent_path();
  std::string line;
  int64_t lineno = 0, max_label = -1;
  while (std::getline(in, line)) {
    ++lineno;
    if (line.empty() || line[0] == '#') continue;
    const auto sp = line.find_last_of(" \t");
    if (sp == std::string::npos) {
      throw Error(str_cat(list_file, ":", lineno, ": expected '<path> <label>', found '", line, "'"));
    }
    std::string path = line.substr(0, sp), label_text = line.substr(sp + 1);
    while (!path.empty() && std::isspace(static_cast<unsigned char>(path.back()))) path.pop_back();
    char* end = nullptr;
    const long label = std::strtol(label_text.c_str(), &end, 10);
    if (label_text.empty() || *end != '\0' || label < 0 || label > 32767) {
      throw Error(str_cat(list_file, ":", lineno, ": label must be an integer in [0, 32767], found '",
                          label_text, "'"));
    }
    if (fs::path(path).is_relative()) path = (base / path).string();
    list.entries.push_back({path, label});
    max_label = std::max<int64_t>(max_label, label);
  }
  if (list.entries.empty()) throw Error(str_cat("--list ", list_file, ": no entries"));
  if (!classes_file.empty()) {
    std::ifstream cin(classes_file);
    if (!cin) throw Error(str_cat("--classes ", classes_file, ": cannot open"));
    while (std::getline(cin, line)) {
      if (!line.empty()) list.classes.push_back(line);
    }
    if (static_cast<int64_t>(list.classes.size()) <= max_label) {
      throw Error(str_cat("--classes ", classes_file, ": ", list.classes.size(), " names, but ",
                          list_file, " uses label ", max_label));
    }
  } else {
    for (int64_t c = 0; c <= max_label; ++c) list.classes.push_back(std::to_string(c));
  }
  return list;
}

}  // namespace aim

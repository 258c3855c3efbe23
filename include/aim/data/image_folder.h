#pragma once
// Image lists: an ImageFolder tree (class sub-folders sorted by name give labels 0..C-1; files
// in torchvision's order: folders sorted by path, files sorted by name within each) or a file
// list ("<path> <label>" per line).
#include <cstdint>
#include <string>
#include <vector>

namespace aim {

struct ImageEntry {
  std::string path;
  int64_t label = 0;
};

struct ImageList {
  std::vector<ImageEntry> entries;
  std::vector<std::string> classes;  ///< names; index = label
  std::string source;                ///< the folder or list file
};

/// Walks `root`/<class>/**/<file> for torchvision's image extensions (case-insensitive).
/// Throws aim::Error naming `what` (the flag or key) and `root` when it has no class folder or
/// no image.
ImageList list_image_folder(const std::string& root, const std::string& what = "--data");

/// Reads "<path> <label>" lines (paths relative to the list's folder unless absolute; '#'
/// comments and blank lines skipped). Class names are the label numbers unless `classes_file`
/// (one name per line) is given. Errors name the file and line.
ImageList read_image_list(const std::string& list_file, const std::string& classes_file = "");

/// Whether `path` has one of torchvision's image extensions.
bool has_image_extension(const std::string& path);

}  // namespace aim

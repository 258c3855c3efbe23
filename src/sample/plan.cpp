#include "aim/sample/plan.h"

#include <algorithm>
#include <cctype>
#include <fstream>
#include <sstream>

#include "aim/core/error.h"
#include "aim/data/sampler.h"

namespace aim {

namespace {
std::string lower_trim(std::string s) {
  std::transform(s.begin(), s.end(), s.begin(), [](unsigned char c) { return std::tolower(c); });
  const auto b = s.find_first_not_of(" \t");
  const auto e = s.find_last_not_of(" \t\r");
  return b == std::string::npos ? "" : s.substr(b, e - b + 1);
}
int64_t random_label(uint64_t seed, int64_t i, int64_t num_classes) {
  return static_cast<int64_t>(splitmix64(splitmix64(seed ^ 0x1abe15ull) + static_cast<uint64_t>(i)) %
                              static_cast<uint64_t>(num_classes));
}

/// The names line `line` of a class-names file answers to, lower-cased; the first is its primary
/// name. A line may lead with a WordNet id ("n01440764 tench, Tinca tinca"), which is one of the
/// names, and hold comma-separated synonyms ("tench, Tinca tinca"): the primary name is then the
/// first synonym, and the whole line counts too. Without an id, a line's words are one name
/// ("tiger shark" is not "tiger").
std::vector<std::string> class_line_names(const std::string& line) {
  std::string rest = line;
  std::string wnid;
  const auto sp = line.find_first_of(" \t");
  if (sp == 9 && line[0] == 'n' &&
      std::all_of(line.begin() + 1, line.begin() + 9, [](unsigned char c) { return std::isdigit(c); })) {
    wnid = line.substr(0, 9);
    rest = line.substr(sp + 1);
  }
  std::vector<std::string> names;
  std::stringstream syn(rest);
  std::string s;
  while (std::getline(syn, s, ',')) {
    s = lower_trim(s);
    if (!s.empty()) names.push_back(s);
  }
  if (names.empty()) names.push_back(lower_trim(rest));
  names.push_back(lower_trim(rest));
  names.push_back(lower_trim(line));
  if (!wnid.empty()) names.push_back(lower_trim(wnid));
  return names;
}

/// The class whose line of `class_names` answers to `want` (lower-cased): a single primary-name
/// match, else a single match among all names; none or several is an error naming --class.
int64_t class_of_name(const std::string& item, const std::string& want, const std::vector<std::string>& class_names) {
  AIM_CHECK(!class_names.empty(), "--class '", item, "': not a class id, and no --class-names file was given");
  std::vector<int64_t> primary, any;
  for (size_t c = 0; c < class_names.size(); ++c) {
    const auto names = class_line_names(class_names[c]);
    if (names.front() == want) primary.push_back(static_cast<int64_t>(c));
    if (std::find(names.begin(), names.end(), want) != names.end()) any.push_back(static_cast<int64_t>(c));
  }
  const auto& found = primary.size() == 1 ? primary : any;
  AIM_CHECK(!found.empty(), "--class '", item, "': not a class id nor a name in the --class-names file");
  if (found.size() > 1) {
    std::string which;
    for (size_t k = 0; k < found.size() && k < 8; ++k)
      which += str_cat(k ? ", " : "", found[k], " ('", class_names[static_cast<size_t>(found[k])], "')");
    if (found.size() > 8) which += str_cat(" and ", found.size() - 8, " more");
    throw Error(str_cat("--class '", item, "': names ", found.size(), " classes of the --class-names file: ", which,
                        "\n---> HINT: give the class id"));
  }
  return found.front();
}
}  // namespace

std::vector<int64_t> plan_labels(const std::string& mode, int64_t num, int64_t num_classes, uint64_t seed) {
  AIM_CHECK(num >= 1, "--num-samples: expected >= 1, found ", num);
  std::vector<int64_t> labels(static_cast<size_t>(num));
  if (mode == "balanced") {
    AIM_CHECK(num % num_classes == 0, "--labels balanced: --num-samples ", num,
              " is not a multiple of the ", num_classes, " classes");
    // num / classes of each class, in an order shuffled by the seed: the ADM evaluator's
    // Inception Score takes consecutive splits of 5000 samples, and in class order each split
    // would hold a tenth of the classes (IS far below the published figures, which came from
    // randomly ordered labels).
    const int64_t per = num / num_classes;
    for (int64_t i = 0; i < num; ++i) labels[i] = i / per;
    uint64_t state = splitmix64(seed ^ 0xba1a2ceull);
    for (int64_t i = num - 1; i > 0; --i) {
      state = splitmix64(state);
      std::swap(labels[i], labels[static_cast<int64_t>(state % static_cast<uint64_t>(i + 1))]);
    }
  } else if (mode == "random") {
    for (int64_t i = 0; i < num; ++i) labels[i] = random_label(seed, i, num_classes);
  } else {
    throw Error(str_cat("--labels: expected balanced or random, found '", mode, "'"));
  }
  return labels;
}

std::vector<std::string> read_class_names(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw Error(str_cat("--class-names ", path, ": cannot open"));
  std::vector<std::string> names;
  std::string line;
  while (std::getline(in, line)) {
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (!line.empty()) names.push_back(line);
  }
  return names;
}

std::vector<int64_t> parse_class_flag(const std::string& value, int64_t per_class, int64_t num_classes,
                                      const std::vector<std::string>& class_names, uint64_t seed) {
  AIM_CHECK(per_class >= 1, "--num: expected >= 1, found ", per_class);
  std::vector<int64_t> labels;
  if (lower_trim(value) == "random") {
    for (int64_t i = 0; i < per_class; ++i) labels.push_back(random_label(seed, i, num_classes));
    return labels;
  }
  std::stringstream items(value);
  std::string item;
  while (std::getline(items, item, ',')) {
    const std::string want = lower_trim(item);
    AIM_CHECK(!want.empty(), "--class: empty entry in '", value, "'");
    int64_t id = -1;
    if (std::all_of(want.begin(), want.end(), [](unsigned char c) { return std::isdigit(c); })) {
      AIM_CHECK(want.size() <= 18, "--class ", want, ": expected a class in [0, ", num_classes, ")");
      id = std::stoll(want);
      AIM_CHECK(id < num_classes, "--class ", id, ": expected a class in [0, ", num_classes,
                ") (the null class ", num_classes, " is for guidance only)");
    } else {
      id = class_of_name(item, want, class_names);
      AIM_CHECK(id < num_classes, "--class '", item, "': class ", id, " of the --class-names file is beyond the model's ",
                num_classes, " classes");
    }
    for (int64_t i = 0; i < per_class; ++i) labels.push_back(id);
  }
  return labels;
}

}  // namespace aim

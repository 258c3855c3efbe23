#pragma once
// What to sample: the label of every global sample index, and how batches are spread over
// ranks and resumed. Batch k (samples [k * B, (k + 1) * B)) belongs to rank k % world; each
// finished batch is a part file, so a killed run skips what is done when restarted.
#include <cstdint>
#include <string>
#include <vector>

namespace aim {

/// Labels for `num` samples: "balanced" (num / classes samples per class, in an order shuffled
/// by the seed; num must be a multiple of classes) or "random" (uniform, keyed by seed and index).
std::vector<int64_t> plan_labels(const std::string& mode, int64_t num, int64_t num_classes, uint64_t seed);

/// Parses --class: comma-separated ids or names, or "random". A name is matched, case-insensitive,
/// against `class_names` (one line per class): a line's whole text, its comma-separated
/// synonyms, and a leading WordNet id ("n01440764 tench, Tinca tinca"); a name that is the
/// first synonym of one line wins over other lines' later synonyms, and one still naming several
/// classes (ImageNet's two "crane"s) is refused. Each listed class is repeated
/// `per_class` times; "random" gives `per_class` random labels. Errors name --class.
std::vector<int64_t> parse_class_flag(const std::string& value, int64_t per_class, int64_t num_classes,
                                      const std::vector<std::string>& class_names, uint64_t seed);

/// Reads class names, one per line (class i on the i-th non-empty line).
std::vector<std::string> read_class_names(const std::string& path);

}  // namespace aim

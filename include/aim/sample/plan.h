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

/// Parses --class: comma-separated ids or names (matched against `class_names`, whole line or
/// any comma-separated synonym, case-insensitive), or "random". Each listed class is repeated
/// `per_class` times; "random" gives `per_class` random labels. Errors name --class.
std::vector<int64_t> parse_class_flag(const std::string& value, int64_t per_class, int64_t num_classes,
                                      const std::vector<std::string>& class_names, uint64_t seed);

/// Reads class names, one per line; a leading WordNet id ("n01440764 tench, Tinca tinca") is
/// kept as a synonym.
std::vector<std::string> read_class_names(const std::string& path);

}  // namespace aim

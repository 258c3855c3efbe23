#include "aim/data/extract.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <optional>
#include <sstream>
#include <thread>
#include <tuple>
#include <utility>
#include <vector>

#include "aim/core/error.h"
#include "aim/core/fileio.h"
#include "aim/core/liveness.h"
#include "aim/core/progress.h"
#include "aim/data/code_dataset.h"

namespace aim {

namespace fs = std::filesystem;

int64_t views_per_image(const std::string& aug) {
  if (aug == "none") return 1;
  if (aug == "flip") return 2;
  if (aug == "tencrop") return 10;
  throw Error(str_cat("--aug: expected none, flip or tencrop, found '", aug, "'"));
}

torch::Tensor extraction_views(const Image& image, const std::string& aug, int64_t image_size,
                               double crop_range) {
  const int size = static_cast<int>(image_size);
  std::vector<torch::Tensor> views;
  if (aug == "tencrop") {
    return to_tensor(llamagen_ten_crop(image, size, crop_range));
  } else {
    const Image crop = center_crop_arr(image, size);
    views.push_back(to_tensor(crop));
    if (aug == "flip") views.push_back(to_tensor(hflip(crop)));
    else if (aug != "none") views_per_image(aug);  // throws with the message
  }
  return torch::stack(views);
}

namespace {

std::string shard_path(const std::string& out, int rank, int world) {
  return str_cat(out, ".shard-", rank, "-of-", world);
}

/// Beside a shard whose rank stopped at --max-chunks: rank 0 then does not wait for it (it would
/// not finish before a re-run). See begin_extraction for which markers rank 0 believes. (Not
/// times compared across machines: a stopped rank may finish its chunks before rank 0 starts.)
std::string stopped_marker(const std::string& shard) { return shard + ".stopped"; }
/// Beside a shard whose rank stopped with an error (its message): rank 0 stops waiting and says so,
/// believing it as it believes a stopped marker.
std::string failed_marker(const std::string& shard) { return shard + ".failed"; }
/// A shard's rank's heartbeat (aim/core/liveness.h) while it encodes: rank 0 stops waiting for a
/// rank that has gone quiet, killed without a word (SIGKILL leaves no failure marker).
std::string alive_file(const std::string& shard) { return shard + ".alive"; }

/// Beside an unfinished file: the image list it was started on ("<N> images, fnv64 <digest of
/// the paths and labels>"). Its header records how many images the file holds, not which: a
/// resume, or another launch copying its chunks, must be working on the same list.
std::string list_sidecar(const std::string& path) { return path + ".list"; }

std::string list_identity(const ImageList& list) {
  uint64_t h = kFnv1aOffset;
  for (const auto& e : list.entries) {
    h = fnv1a64(h, e.path.data(), e.path.size() + 1);  // with the terminating NUL
    const int64_t label = e.label;
    h = fnv1a64(h, &label, sizeof(label));
  }
  return str_cat(list.entries.size(), " images, fnv64 ", hex16(h));
}

/// The list identity recorded beside `path` ("" when there is none: a file started before
/// identities were recorded).
std::string recorded_list(const std::string& path) {
  std::error_code ec;
  if (!fs::exists(list_sidecar(path), ec)) return "";
  std::string text = read_text(list_sidecar(path));
  while (!text.empty() && (text.back() == '\n' || text.back() == '\r')) text.pop_back();
  return text;
}

/// Samples already written by an earlier run ("done <start> <count>" lines of the sidecar), as
/// sorted disjoint [begin, end) ranges. An earlier run may have used another --batch-size, so a
/// chunk of this run counts as done only when these ranges cover all of it.
std::vector<std::pair<int64_t, int64_t>> done_ranges(const std::string& path) {
  std::vector<std::pair<int64_t, int64_t>> ranges;
  std::ifstream in(code_dataset_progress_path(path));
  std::string word;
  int64_t start = 0, count = 0;
  while (in >> word >> start >> count) {
    if (word == "done" && count > 0) ranges.emplace_back(start, start + count);
  }
  std::sort(ranges.begin(), ranges.end());
  std::vector<std::pair<int64_t, int64_t>> merged;
  for (const auto& r : ranges) {
    if (!merged.empty() && r.first <= merged.back().second) {
      merged.back().second = std::max(merged.back().second, r.second);
    } else {
      merged.push_back(r);
    }
  }
  return merged;
}

bool covered(const std::vector<std::pair<int64_t, int64_t>>& ranges, int64_t begin, int64_t end) {
  for (const auto& [b, e] : ranges) {
    if (b <= begin && end <= e) return true;
  }
  return false;
}

void log_done(const std::string& path, int64_t start, int64_t count) {
  std::ofstream out(code_dataset_progress_path(path), std::ios::app);
  out << "done " << start << " " << count << "\n";
  out.flush();
  if (!out) throw Error(str_cat(code_dataset_progress_path(path), ": cannot record progress"));
}

/// The rank and rank count of a file `<out>.shard-Q-of-W` (sidecars included: `suffix` gets
/// what follows, "" for the shard itself); false for any other name.
bool parse_shard_name(const std::string& out_name, const std::string& name, int& q, int& w, std::string& suffix) {
  const std::string prefix = out_name + ".shard-";
  if (name.rfind(prefix, 0) != 0) return false;
  size_t at = prefix.size();
  auto number = [&](int& v) {
    const size_t start = at;
    v = 0;
    while (at < name.size() && name[at] >= '0' && name[at] <= '9' && at - start < 9) v = v * 10 + (name[at++] - '0');
    return at > start;
  };
  if (!number(q) || name.compare(at, 4, "-of-") != 0) return false;
  at += 4;
  if (!number(w) || w < 2 || q >= w) return false;
  suffix = name.substr(at);
  return suffix.empty() || suffix[0] == '.';
}

/// The shard files (and their sidecars) of launches with another number of ranks than
/// `world_size`, beside `out`.
std::vector<fs::path> shard_files_of_other_launches(const std::string& out, int world_size) {
  std::vector<fs::path> files;
  const fs::path p(out);
  const fs::path dir = p.parent_path().empty() ? fs::path(".") : p.parent_path();
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(dir, ec)) {
    int q = 0, w = 0;
    std::string suffix;
    if (parse_shard_name(p.filename().string(), e.path().filename().string(), q, w, suffix) && w != world_size)
      files.push_back(e.path());
  }
  std::sort(files.begin(), files.end());
  return files;
}

CodeDatasetInfo dataset_info(const ImageList& list, const ExtractOptions& o, int64_t n,
                             int64_t tokens, int64_t vocab) {
  CodeDatasetInfo info;
  info.num_samples = n;
  info.num_aug = views_per_image(o.aug);
  info.tokens = tokens;
  info.vocab_size = vocab;
  info.image_size = o.image_size;
  info.aug = o.aug;
  info.crop_range = o.aug == "tencrop" ? o.crop_range : 0.0;
  info.classes = list.classes;
  info.tokenizer = o.tokenizer_id;
  info.source = list.source;
  return info;
}

/// A shard of an earlier launch with another number of ranks (stopped early or killed): the
/// chunks it finished are copied rather than encoded again.
struct EarlierShard {
  std::unique_ptr<CodeDataset> data;
  int64_t begin = 0;                              ///< its first image in the list
  std::vector<std::pair<int64_t, int64_t>> done;  ///< images it holds, [begin, end) in the list
};

/// The shards of launches with another rank count than this one's that hold this dataset's
/// images (the same list, whose list_identity() is `identity`, views, tokenizer, ...), each with
/// the images it finished.
std::vector<EarlierShard> earlier_shards(const ImageList& list, const std::string& identity, const ExtractOptions& o,
                                         int64_t tokens, int64_t vocab) {
  std::vector<EarlierShard> out;
  const auto n = static_cast<int64_t>(list.entries.size());
  const std::string out_name = fs::path(o.out).filename().string();
  // (file, its first image, one past its last)
  std::vector<std::tuple<fs::path, int64_t, int64_t>> candidates;
  for (const auto& f : shard_files_of_other_launches(o.out, o.world_size)) {
    int q = 0, w = 0;
    std::string suffix;
    if (parse_shard_name(out_name, f.filename().string(), q, w, suffix) && suffix.empty())
      candidates.emplace_back(f, n * q / w, n * (q + 1) / w);
  }
  // An unfinished single-process extraction, continued by several ranks (the merge then writes the
  // output over it, once every rank has finished reading it).
  std::error_code ec;
  if (o.world_size > 1 && fs::exists(o.out, ec) && code_dataset_unfinished(o.out)) candidates.emplace_back(o.out, 0, n);
  for (const auto& [f, begin, end] : candidates) {
    EarlierShard e;
    e.begin = begin;
    try {
      e.data = std::make_unique<CodeDataset>(f.string(), /*allow_unfinished=*/true);
    } catch (const Error& err) {
      if (!o.quiet) std::fprintf(stderr, "[extract] not reusing %s: %s\n", f.c_str(), err.what());
      continue;
    }
    const std::string difference =
        code_dataset_difference(e.data->info(), dataset_info(list, o, end - begin, tokens, vocab));
    if (!difference.empty()) {
      if (!o.quiet) std::fprintf(stderr, "[extract] not reusing %s: %s\n", f.c_str(), difference.c_str());
      continue;
    }
    const std::string recorded = recorded_list(f.string());
    if (recorded != identity) {
      if (!o.quiet)
        std::fprintf(stderr, "[extract] not reusing %s: started on another image list (%s; this run: %s)\n", f.c_str(),
                     recorded.empty() ? "not recorded" : recorded.c_str(), identity.c_str());
      continue;
    }
    if (code_dataset_unfinished(f.string())) {
      for (const auto& [b, x] : done_ranges(f.string())) e.done.emplace_back(begin + b, begin + std::min(x, end - begin));
    } else {
      e.done.emplace_back(begin, end);
    }
    if (!e.done.empty()) out.push_back(std::move(e));
  }
  return out;
}

/// Sample `i` of `d`, every view (A x T codes, contiguous in the file), widened into `dst`.
void copy_sample_codes(const CodeDataset& d, int64_t i, int64_t* dst) {
  const uint16_t* src = d.codes(i, 0);
  std::copy(src, src + d.info().num_aug * d.info().tokens, dst);
}

/// Copies images [first, first + count) of the list out of earlier shards into `codes` [count,
/// A, T] and `labels` [count]; false (nothing meaningful written) unless every one of them is in
/// a chunk an earlier shard finished.
bool copy_from_earlier(const std::vector<EarlierShard>& earlier, const ImageList& list, int64_t first, int64_t count,
                       torch::Tensor& codes, torch::Tensor& labels) {
  std::vector<std::pair<const EarlierShard*, int64_t>> source(static_cast<size_t>(count), {nullptr, 0});
  for (int64_t k = 0; k < count; ++k) {
    const int64_t g = first + k;
    for (const auto& e : earlier) {
      if (covered(e.done, g, g + 1)) {
        source[static_cast<size_t>(k)] = {&e, g - e.begin};
        break;
      }
    }
    if (!source[static_cast<size_t>(k)].first) return false;
  }
  const int64_t per_image = codes.size(1) * codes.size(2);
  auto* dst = codes.data_ptr<int64_t>();
  auto* lp = labels.data_ptr<int64_t>();
  for (int64_t k = 0; k < count; ++k) {
    const auto& [e, i] = source[static_cast<size_t>(k)];
    lp[k] = e->data->label(i);
    // (-1: unreadable then. Another label means another image: encode this chunk instead.)
    if (lp[k] != -1 && lp[k] != list.entries[static_cast<size_t>(first + k)].label) return false;
    copy_sample_codes(*e->data, i, dst + k * per_image);
  }
  return true;
}

/// Removes what shard_files_of_other_launches() finds: once the dataset is finished, nothing
/// of an earlier launch is needed.
void remove_shards_of_other_launches(const std::string& out, int world_size) {
  std::error_code ec;
  for (const auto& f : shard_files_of_other_launches(out, world_size)) fs::remove(f, ec);
}

/// Writes samples [begin, end) of `list` into `path` (samples renumbered from 0).
ExtractReport extract_range(VqModel& vq, const ImageList& list, int64_t begin, int64_t end,
                            const ExtractOptions& o, const std::string& path, const std::string& label) {
  ExtractReport report;
  const auto t0 = std::chrono::steady_clock::now();
  const int64_t n = end - begin, views = views_per_image(o.aug);
  const int64_t f = vq->config.downsample();
  AIM_CHECK(o.image_size % f == 0, "--image-size ", o.image_size, " is not a multiple of the tokenizer's downsampling factor ", f);
  const int64_t side = o.image_size / f, tokens = side * side;
  auto info = dataset_info(list, o, n, tokens, vq->config.codebook_size);
  std::unique_ptr<CodeDatasetWriter> writer;
  std::vector<std::pair<int64_t, int64_t>> done;
  const std::string identity = list_identity(list);
  if (fs::exists(path) && code_dataset_unfinished(path)) {
    writer = CodeDatasetWriter::resume(path, info);
    const std::string recorded = recorded_list(path);
    AIM_CHECK(recorded.empty() || recorded == identity, path, ": the unfinished extraction was started on another "
              "image list (", recorded, "; this run: ", identity, ")\n---> HINT: re-run with the list it was started "
              "on, or delete it and ", code_dataset_progress_path(path), " to start over");
    if (recorded.empty()) write_text_atomic(list_sidecar(path), identity + "\n");
    done = done_ranges(path);
  } else if (fs::exists(path)) {
    // A finished file: nothing to do when it describes the same dataset.
    CodeDataset existing(path);
    const std::string difference = code_dataset_difference(existing.info(), info);
    AIM_CHECK(difference.empty(), path, ": exists with other settings: ", difference,
              "\n---> HINT: remove it or choose another --out");
    report.images = n;
    report.resumed = n;
    return report;
  } else {
    writer = CodeDatasetWriter::create(path, info);
    write_text_atomic(list_sidecar(path), identity + "\n");
  }
  const auto earlier = earlier_shards(list, identity, o, tokens, vq->config.codebook_size);
  if (!earlier.empty() && !o.quiet)
    std::fprintf(stderr, "[%s] copying what %zu shard(s) of an earlier launch with another number of ranks "
                 "finished\n", label.c_str(), earlier.size());
  Progress progress(label, n, "img", !o.quiet);
  int64_t new_chunks = 0;
  std::ofstream skipped_log(path + ".skipped.txt", std::ios::app);
  torch::NoGradGuard no_grad;
  for (int64_t start = 0; start < n; start += o.batch_size) {
    const int64_t count = std::min(o.batch_size, n - start);
    if (covered(done, start, start + count)) {
      report.resumed += count;
      report.images += count;
      progress.update(count);
      continue;
    }
    if (!earlier.empty()) {
      auto codes = torch::empty({count, views, tokens}, torch::kLong);
      auto labels = torch::empty({count}, torch::kLong);
      if (copy_from_earlier(earlier, list, begin + start, count, codes, labels)) {
        for (int64_t k = 0; k < count; ++k) {
          if (labels.data_ptr<int64_t>()[k] >= 0) continue;
          const auto& entry = list.entries[static_cast<size_t>(begin + start + k)];
          ++report.skipped;
          report.skipped_files.push_back(entry.path);
          skipped_log << entry.path << "\tunreadable (found so by an earlier launch)\n";
        }
        writer->write(start, codes, labels);
        writer->sync();
        log_done(path, start, count);
        report.resumed += count;
        report.images += count;
        progress.update(count, report.skipped ? str_cat(report.skipped, " skipped") : "");
        continue;
      }
    }
    if (o.max_chunks > 0 && new_chunks == o.max_chunks) {
      report.finished = false;
      break;
    }
    ++new_chunks;
    // Decode and preprocess on worker threads.
    std::vector<torch::Tensor> views_of(static_cast<size_t>(count));
    // An image that does not decode is skipped; one that decodes but cannot be cropped means settings
    // no image would pass (every one would be skipped into a "finished" dataset): that stops the run.
    std::vector<std::string> errors(static_cast<size_t>(count)), fatal(static_cast<size_t>(count));
    std::atomic<int64_t> next{0};
    auto work = [&] {
      for (int64_t k = next++; k < count; k = next++) {
        const auto& entry = list.entries[static_cast<size_t>(begin + start + k)];
        Image image;
        try {
          image = decode_image(entry.path);
        } catch (const std::exception& e) {
          errors[k] = e.what();
          continue;
        }
        try {
          views_of[k] = extraction_views(image, o.aug, o.image_size, o.crop_range);
        } catch (const std::exception& e) {
          fatal[k] = e.what();
        }
      }
    };
    std::vector<std::thread> pool;
    for (int64_t t = 1; t < std::min<int64_t>(o.threads, count); ++t) pool.emplace_back(work);
    work();
    for (auto& t : pool) t.join();
    for (int64_t k = 0; k < count; ++k) {
      if (fatal[k].empty()) continue;
      throw Error(str_cat(list.entries[static_cast<size_t>(begin + start + k)].path, ": decoded, but its views (--aug ",
                          o.aug, ", --image-size ", o.image_size, ") failed: ", fatal[k]));
    }
    auto codes = torch::zeros({count, views, tokens}, torch::kLong);
    auto labels = torch::empty({count}, torch::kLong);
    std::vector<int64_t> ok;
    std::vector<torch::Tensor> batch;
    for (int64_t k = 0; k < count; ++k) {
      const auto& entry = list.entries[static_cast<size_t>(begin + start + k)];
      if (!errors[k].empty()) {
        labels[k] = -1;
        ++report.skipped;
        report.skipped_files.push_back(entry.path);
        skipped_log << entry.path << "\t" << errors[k] << "\n";
        continue;
      }
      labels[k] = entry.label;
      ok.push_back(k);
      batch.push_back(views_of[k]);
    }
    if (!ok.empty()) {
      auto images = torch::cat(batch).to(o.device);                    // [n_ok * A, 3, S, S]
      auto c = vq->encode(images).to(torch::kCPU).view({static_cast<int64_t>(ok.size()), views, tokens});
      codes.index_copy_(0, torch::tensor(ok, torch::kLong), c);
    }
    writer->write(start, codes, labels);
    writer->sync();
    log_done(path, start, count);
    report.images += count;
    progress.update(count, report.skipped ? str_cat(report.skipped, " skipped") : "");
  }
  skipped_log.close();
  writer.reset();
  report.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  if (!report.finished) {
    if (o.world_size > 1) write_text_atomic(stopped_marker(path), str_cat("stopped after ", new_chunks, " chunks\n"));
    progress.finish(str_cat("stopped after ", new_chunks, " chunks (--max-chunks): re-run to resume"));
    return report;
  }
  code_dataset_mark_finished(path);
  std::error_code ec;
  if (o.world_size == 1) {
    fs::remove(list_sidecar(path), ec);
    remove_shards_of_other_launches(o.out, 1);
  }
  progress.finish(report.skipped ? str_cat(report.skipped, " unreadable images skipped, listed in ", path, ".skipped.txt") : "");
  report.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return report;
}

/// Waits for every shard, then merges them into `out`. Returns false, merging nothing, when a
/// rank stopped at --max-chunks (the shards stay for the re-run that resumes them).
bool merge_shards(const std::string& out, int world, double timeout_s, double grace_s, bool quiet) {
  using Clock = std::chrono::steady_clock;
  std::vector<std::string> shards;
  for (int r = 0; r < world; ++r) shards.push_back(shard_path(out, r, world));
  const auto t0 = Clock::now();
  std::vector<std::optional<Clock::time_point>> marker_seen(static_cast<size_t>(world));
  HeartbeatWatch heartbeats;
  const double silence_limit = rank_silence_limit_s();
  for (;;) {
    int ready = 0;
    for (int r = 0; r < world; ++r) {
      const auto& s = shards[static_cast<size_t>(r)];
      auto& seen = marker_seen[static_cast<size_t>(r)];
      if (fs::exists(s) && !code_dataset_unfinished(s)) {
        ++ready;
      } else if (fs::exists(failed_marker(s))) {
        if (!seen) seen = Clock::now();
        if (std::chrono::duration<double>(Clock::now() - *seen).count() >= grace_s) {
          std::string why;
          try {
            why = read_text(failed_marker(s));
          } catch (const Error&) {
          }
          while (!why.empty() && why.back() == '\n') why.pop_back();
          throw Error(str_cat(out, ": rank ", r, " stopped with an error, so its shard ", s, " is unfinished: ", why,
                              "\n---> HINT: re-run the same command once that is fixed; finished chunks are kept"));
        }
      } else if (fs::exists(stopped_marker(s))) {
        if (!seen) seen = Clock::now();
        if (std::chrono::duration<double>(Clock::now() - *seen).count() >= grace_s) {
          if (!quiet)
            std::fprintf(stderr, "[extract] rank %d stopped early (--max-chunks): the shards merge into %s once "
                         "every rank has finished; re-run the same command to resume\n", r, out.c_str());
          return false;
        }
      } else {
        seen.reset();
        const double quiet = r == 0 ? 0.0 : heartbeats.quiet_s(alive_file(s));
        if (quiet >= silence_limit && !(fs::exists(s) && !code_dataset_unfinished(s)))
          throw Error(str_cat(out, ": rank ", r, " has not been heard from for ", format_duration(quiet), " (",
                              fs::exists(alive_file(s))               ? "its heartbeat " + alive_file(s) + " has not changed"
                              : heartbeats.appeared(alive_file(s)) ? "its heartbeat " + alive_file(s) + " went away"
                                                                      : "no heartbeat " + alive_file(s) + " appeared",
                              ") and its shard ", s, " is unfinished: it was killed (out of memory? the scheduler?) "
                              "or never started\n---> HINT: re-run the same command; finished chunks are kept. "
                              "AIM_RANK_SILENCE_S sets how long a rank may be silent (now ", silence_limit, " s)"));
      }
    }
    if (ready == world) break;
    const double waited = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    AIM_CHECK(waited < timeout_s, out, ": waited ", format_duration(waited), " for ", world - ready,
              " shard(s) to finish\n---> HINT: re-run the same command to resume the missing ranks");
    std::this_thread::sleep_for(std::chrono::milliseconds(500));
  }
  int64_t total = 0;
  std::vector<std::unique_ptr<CodeDataset>> parts;
  for (const auto& s : shards) {
    parts.push_back(std::make_unique<CodeDataset>(s));
    total += parts.back()->size();
  }
  // Shards of one dataset (a shard left by a launch with other settings, the rest redone, would
  // mix two tokenizers' codes under one header).
  for (size_t r = 1; r < parts.size(); ++r) {
    auto a = parts[r]->info();
    a.num_samples = parts[0]->info().num_samples;
    const std::string difference = code_dataset_difference(a, parts[0]->info());
    AIM_CHECK(difference.empty(), out, ": shard ", shards[r], " was made with other settings than ", shards[0], ": ",
              difference, " (", shards[0], ")\n---> HINT: delete the shards of the other settings (and their "
              ".progress files) and re-run");
  }
  auto info = parts[0]->info();
  info.num_samples = total;
  auto writer = CodeDatasetWriter::create(out, info);
  int64_t offset = 0;
  std::ofstream skipped(out + ".skipped.txt");
  for (size_t r = 0; r < parts.size(); ++r) {
    const auto& p = *parts[r];
    const int64_t n = p.size(), a = p.info().num_aug, t = p.info().tokens;
    constexpr int64_t kChunk = 4096;
    for (int64_t s = 0; s < n; s += kChunk) {
      const int64_t c = std::min(kChunk, n - s);
      auto codes = torch::empty({c, a, t}, torch::kLong);
      auto labels = torch::empty({c}, torch::kLong);
      auto* dst = codes.data_ptr<int64_t>();
      auto* lp = labels.data_ptr<int64_t>();
      for (int64_t k = 0; k < c; ++k) {
        lp[k] = p.label(s + k);
        copy_sample_codes(p, s + k, dst + k * a * t);
      }
      writer->write(offset + s, codes, labels);
    }
    offset += n;
    std::ifstream in(shards[r] + ".skipped.txt");
    skipped << in.rdbuf();
  }
  writer->sync();
  writer.reset();
  code_dataset_mark_finished(out);
  parts.clear();
  for (const auto& s : shards) {
    fs::remove(s);
    fs::remove(s + ".skipped.txt");
    fs::remove(stopped_marker(s));
    fs::remove(failed_marker(s));
    fs::remove(alive_file(s));
    fs::remove(list_sidecar(s));
  }
  fs::remove(list_sidecar(out));  // a single-process extraction's, continued by these ranks
  remove_shards_of_other_launches(out, world);
  if (!quiet) std::fprintf(stderr, "[extract] merged %d shards into %s (%lld images)\n", world, out.c_str(), (long long)total);
  return true;
}

}  // namespace

std::unique_ptr<Heartbeat> begin_extraction(const std::string& out, int rank, int world_size) {
  if (world_size <= 1) return nullptr;
  std::error_code ec;
  const std::string shard = shard_path(out, rank, world_size);
  fs::remove(stopped_marker(shard), ec);
  fs::remove(failed_marker(shard), ec);
  // (The output's folder may not exist yet: made here, as extract_codes would.)
  fs::create_directories(fs::path(out).parent_path(), ec);
  return rank == 0 ? nullptr : std::make_unique<Heartbeat>(alive_file(shard));
}

ExtractReport extract_codes(VqModel& vq, const ImageList& list, const ExtractOptions& o) {
  views_per_image(o.aug);
  AIM_CHECK(o.batch_size >= 1, "--batch-size must be >= 1, got ", o.batch_size);
  AIM_CHECK(o.world_size >= 1 && o.rank >= 0 && o.rank < o.world_size, "extract: rank ", o.rank,
            " outside world size ", o.world_size);
  const auto n = static_cast<int64_t>(list.entries.size());
  AIM_CHECK(n >= o.world_size, "extract: ", n, " images cannot be split over ", o.world_size, " ranks");
  vq->eval();
  std::error_code ec;  // the output's folder (codes/ in codes/imagenet.codes) is made here
  fs::create_directories(fs::path(o.out).parent_path(), ec);
  if (fs::exists(o.out) && !code_dataset_unfinished(o.out)) {
    // Already extracted (every rank sees the merged file): check it is this dataset.
    CodeDataset existing(o.out);
    const int64_t f = vq->config.downsample(), side = o.image_size / f;
    const std::string difference =
        code_dataset_difference(existing.info(), dataset_info(list, o, n, side * side, vq->config.codebook_size));
    AIM_CHECK(difference.empty(), o.out, ": exists with other settings: ", difference,
              "\n---> HINT: remove it or choose another --out");
    // The images themselves are not compared (a finished file keeps no list record): a moved copy of
    // the same folder is fine, but another folder of the same size and classes would pass too.
    if (o.rank == 0 && !o.quiet && existing.info().source != list.source)
      std::fprintf(stderr, "[extract] note: %s is finished and was made from %s (this run: %s); its settings match, "
                   "so it is kept as it is: remove it to extract these images\n", o.out.c_str(),
                   existing.info().source.c_str(), list.source.c_str());
    if (o.rank == 0) remove_shards_of_other_launches(o.out, o.world_size);  // left by a launch that lost the race
    ExtractReport report;
    report.images = report.resumed = n;
    return report;
  }
  if (o.world_size == 1) return extract_range(vq, list, 0, n, o, o.out, "extract");
  // Contiguous ranges keep the merged file in list order.
  const int64_t begin = n * o.rank / o.world_size, end = n * (o.rank + 1) / o.world_size;
  const std::string shard = shard_path(o.out, o.rank, o.world_size);
  // (A caller that began the extraction keeps the heartbeat it was given.)
  const std::unique_ptr<Heartbeat> heartbeat = o.began ? nullptr : begin_extraction(o.out, o.rank, o.world_size);
  ExtractReport report;
  try {
    report = extract_range(vq, list, begin, end, o, shard, str_cat("extract rank ", o.rank));
  } catch (const std::exception& e) {
    // For rank 0, which would otherwise wait for this shard until merge_timeout_s.
    try {
      write_text_atomic(failed_marker(shard), std::string(e.what()) + "\n");
    } catch (const std::exception&) {
    }
    throw;
  }
  if (o.rank == 0 && report.finished &&
      !merge_shards(o.out, o.world_size, o.merge_timeout_s, o.stopped_grace_s, o.quiet))
    report.finished = false;
  return report;
}

}  // namespace aim

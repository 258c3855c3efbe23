#include "aim/data/code_dataset.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <torch/torch.h>

#include "aim/core/error.h"

namespace aim {

namespace {

constexpr char kMagic[8] = {'A', 'I', 'M', 'C', 'O', 'D', 'E', '1'};
constexpr int64_t kAlign = 64;
constexpr uint64_t kMaxHeader = 64ull << 20;

int64_t align_up(int64_t x) { return (x + kAlign - 1) / kAlign * kAlign; }

nlohmann::json to_json(const CodeDatasetInfo& i) {
  return {{"format", "aim-codes"},     {"version", 1},
          {"num_samples", i.num_samples}, {"num_aug", i.num_aug},
          {"tokens", i.tokens},         {"vocab_size", i.vocab_size},
          {"image_size", i.image_size}, {"aug", i.aug},
          {"classes", i.classes},       {"tokenizer", i.tokenizer},
          {"source", i.source},         {"crop_range", i.crop_range},
          {"codes_offset", i.codes_offset},
          {"labels_offset", i.labels_offset}};
}

CodeDatasetInfo from_json(const nlohmann::json& j, const std::string& path) {
  CodeDatasetInfo i;
  try {
    if (j.at("format") != "aim-codes") throw Error(str_cat(path, ": header format is not 'aim-codes'"));
    if (j.at("version").get<int>() != 1) {
      throw Error(str_cat(path, ": code dataset version ", j.at("version").dump(), ", expected 1"));
    }
    i.num_samples = j.at("num_samples").get<int64_t>();
    i.num_aug = j.at("num_aug").get<int64_t>();
    i.tokens = j.at("tokens").get<int64_t>();
    i.vocab_size = j.at("vocab_size").get<int64_t>();
    i.image_size = j.at("image_size").get<int64_t>();
    i.aug = j.at("aug").get<std::string>();
    i.classes = j.at("classes").get<std::vector<std::string>>();
    i.tokenizer = j.at("tokenizer").get<std::string>();
    i.source = j.at("source").get<std::string>();
    i.crop_range = j.value("crop_range", -1.0);  // absent before it was recorded
    i.codes_offset = j.at("codes_offset").get<int64_t>();
    i.labels_offset = j.at("labels_offset").get<int64_t>();
  } catch (const nlohmann::json::exception& e) {
    throw Error(str_cat(path, ": bad code dataset header: ", e.what()));
  }
  return i;
}

/// Fills offsets and returns the serialised header (magic + length + padded JSON) of a file being
/// written: its JSON says "finished": false until code_dataset_mark_finished() rewrites it in place
/// (as "true", one character shorter, so it fits the padded length).
std::string layout(CodeDatasetInfo& info) {
  AIM_CHECK(info.num_samples >= 0 && info.num_aug >= 1 && info.tokens >= 1,
            "code dataset: invalid sizes N ", info.num_samples, ", A ", info.num_aug, ", T ", info.tokens);
  AIM_CHECK(info.vocab_size >= 1 && info.vocab_size <= 65536, "code dataset: vocab_size ",
            info.vocab_size, " does not fit uint16 codes");
  // Offsets depend on the header length and the length on the offsets' digits: iterate.
  std::string json;
  auto unfinished_json = [&] {
    auto j = to_json(info);
    j["finished"] = false;
    return j.dump();
  };
  for (int iter = 0; iter < 4; ++iter) {
    json = unfinished_json();
    const int64_t header_end = align_up(16 + static_cast<int64_t>(json.size()));
    info.codes_offset = header_end;
    info.labels_offset = align_up(info.codes_offset + info.num_samples * info.num_aug * info.tokens * 2);
  }
  json = unfinished_json();
  const int64_t header_len = info.codes_offset - 16;
  AIM_CHECK(static_cast<int64_t>(json.size()) <= header_len, "code dataset: header layout did not converge");
  json.resize(header_len, ' ');
  std::string out(kMagic, 8);
  uint64_t n = static_cast<uint64_t>(header_len);
  for (int b = 0; b < 8; ++b) out.push_back(static_cast<char>((n >> (8 * b)) & 0xff));
  return out + json;
}

int64_t file_bytes(const CodeDatasetInfo& i) { return i.labels_offset + i.num_samples * 2; }

void pwrite_all(int fd, const void* data, size_t n, int64_t offset, const std::string& path) {
  const auto* p = static_cast<const uint8_t*>(data);
  while (n > 0) {
    const ssize_t w = ::pwrite(fd, p, n, offset);
    if (w < 0) {
      if (errno == EINTR) continue;
      throw Error(str_cat(path, ": write failed: ", std::strerror(errno)));
    }
    p += w;
    n -= static_cast<size_t>(w);
    offset += w;
  }
}

/// The header length a file's first 16 bytes state.
uint64_t header_length(const uint8_t* base) {
  uint64_t n = 0;
  for (int b = 0; b < 8; ++b) n |= static_cast<uint64_t>(base[8 + b]) << (8 * b);
  return n;
}

/// `base` holds `available` bytes of a file of `size` bytes. `finished` (when given) receives the
/// header's "finished" (true in files written before it was recorded).
CodeDatasetInfo read_header(const uint8_t* base, size_t available, size_t size, const std::string& path,
                            bool* finished = nullptr) {
  AIM_CHECK(available >= 16 && std::memcmp(base, kMagic, 8) == 0, path,
            ": not an aim code dataset (missing 'AIMCODE1' magic)");
  const uint64_t n = header_length(base);
  AIM_CHECK(n <= kMaxHeader && 16 + n <= available && 16 + n <= size, path, ": header length ", n,
            " exceeds the file (", size, " bytes)");
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(reinterpret_cast<const char*>(base) + 16,
                              reinterpret_cast<const char*>(base) + 16 + n);
  } catch (const nlohmann::json::exception& e) {
    throw Error(str_cat(path, ": header is not valid JSON: ", e.what()));
  }
  auto info = from_json(j, path);
  if (finished) *finished = !j.contains("finished") || j["finished"] != false;
  AIM_CHECK(info.num_samples >= 0 && info.num_aug >= 1 && info.tokens >= 1 &&
                info.num_samples <= (int64_t{1} << 40) && info.num_aug <= 4096 && info.tokens <= 65536,
            path, ": implausible sizes N ", info.num_samples, ", A ", info.num_aug, ", T ", info.tokens);
  AIM_CHECK(info.vocab_size >= 1 && info.vocab_size <= 65536, path, ": vocab_size ", info.vocab_size,
            " does not fit its uint16 codes (expected 1 to 65536)");
  // Offsets from the file are checked against its size before any arithmetic with them, so that
  // no sum or product can overflow (N x A x T x 2 alone may exceed int64 at the limits above).
  const auto file_size = static_cast<int64_t>(size);
  int64_t codes_bytes = 0;
  const bool too_many = __builtin_mul_overflow(info.num_samples * info.num_aug, info.tokens * 2, &codes_bytes);
  AIM_CHECK(info.codes_offset >= static_cast<int64_t>(16 + n) && info.codes_offset <= file_size &&
                info.codes_offset % 2 == 0 && info.labels_offset >= 0 && info.labels_offset <= file_size &&
                info.labels_offset % 2 == 0 && !too_many && codes_bytes <= file_size - info.codes_offset &&
                info.labels_offset - info.codes_offset >= codes_bytes,
            path, ": inconsistent offsets (codes ", info.codes_offset, ", labels ", info.labels_offset, ", ",
            info.num_samples, " x ", info.num_aug, " x ", info.tokens, " codes, file of ", size, " bytes)");
  AIM_CHECK(info.num_samples * 2 <= file_size - info.labels_offset, path, ": truncated: expected at least ",
            file_bytes(info), " bytes, found ", size);
  return info;
}

}  // namespace

std::string code_dataset_progress_path(const std::string& path) { return path + ".progress"; }

std::string code_dataset_difference(const CodeDatasetInfo& f, const CodeDatasetInfo& w) {
  auto differs = [](const char* field, const auto& found, const auto& wanted) {
    return str_cat(field, " ", found, " in the file, ", wanted, " in this run");
  };
  if (f.num_samples != w.num_samples) return differs("images", f.num_samples, w.num_samples);
  if (f.aug != w.aug) return differs("aug", f.aug, w.aug);
  if (f.num_aug != w.num_aug) return differs("views", f.num_aug, w.num_aug);
  if (f.image_size != w.image_size) return differs("image size", f.image_size, w.image_size);
  if (f.crop_range >= 0 && w.crop_range >= 0 && f.crop_range != w.crop_range)
    return differs("crop range", f.crop_range, w.crop_range);
  if (f.tokens != w.tokens) return differs("tokens per view", f.tokens, w.tokens);
  if (f.vocab_size != w.vocab_size) return differs("codebook size", f.vocab_size, w.vocab_size);
  if (f.tokenizer != w.tokenizer) return differs("tokenizer", f.tokenizer, w.tokenizer);
  if (f.classes != w.classes) {
    return differs("classes", str_cat(f.classes.size(), f.classes.empty() ? "" : " from " + f.classes.front()),
                   str_cat(w.classes.size(), w.classes.empty() ? "" : " from " + w.classes.front()));
  }
  return "";
}

std::string class_order_difference(const std::vector<std::string>& ours, const std::vector<std::string>& theirs,
                                   const std::string& theirs_what) {
  auto numbered = [](const std::vector<std::string>& names) {
    for (size_t i = 0; i < names.size(); ++i)
      if (names[i] != std::to_string(i)) return false;
    return true;
  };
  if (ours.empty() || theirs.empty() || numbered(ours) || numbered(theirs)) return "";
  const size_t n = std::min(ours.size(), theirs.size());
  size_t at = 0;
  while (at < n && ours[at] == theirs[at]) ++at;
  if (at == n) return "";
  return str_cat("label ", at, " is class '", ours[at], "', but in ", theirs_what, " it is '", theirs[at], "'");
}

bool code_dataset_unfinished(const std::string& path) {
  return std::filesystem::exists(code_dataset_progress_path(path));
}

void code_dataset_mark_finished(const std::string& path) {
  // The header first (its "finished" rewritten in place and synced), then the sidecar: a stop in
  // between leaves a file the sidecar still calls unfinished, which a re-run finishes again.
  const int fd = ::open(path.c_str(), O_RDWR | O_CLOEXEC);
  if (fd < 0) throw Error(str_cat(path, ": cannot open to mark the code dataset finished: ", std::strerror(errno)));
  try {
    struct stat st {};
    if (::fstat(fd, &st) != 0) throw Error(str_cat(path, ": fstat failed: ", std::strerror(errno)));
    std::vector<uint8_t> head(std::min<size_t>(static_cast<size_t>(st.st_size), kMaxHeader + 16));
    if (::pread(fd, head.data(), head.size(), 0) != static_cast<ssize_t>(head.size()))
      throw Error(str_cat(path, ": cannot read the header to mark the code dataset finished"));
    bool finished = true;
    read_header(head.data(), head.size(), static_cast<size_t>(st.st_size), path, &finished);
    if (!finished) {
      const uint64_t n = header_length(head.data());
      auto j = nlohmann::json::parse(head.begin() + 16, head.begin() + 16 + static_cast<std::ptrdiff_t>(n));
      j["finished"] = true;
      std::string json = j.dump();
      AIM_CHECK(json.size() <= n, path, ": the finished header (", json.size(), " bytes) exceeds its room (", n, ")");
      json.resize(n, ' ');
      pwrite_all(fd, json.data(), json.size(), 16, path);
      if (::fsync(fd) != 0) throw Error(str_cat(path, ": fsync failed: ", std::strerror(errno)));
    }
  } catch (...) {
    ::close(fd);
    throw;
  }
  ::close(fd);
  std::error_code ec;
  std::filesystem::remove(code_dataset_progress_path(path), ec);
}

CodeDataset::CodeDataset(const std::string& path, bool allow_unfinished) : path_(path) {
  if (!allow_unfinished && code_dataset_unfinished(path)) {
    throw Error(str_cat(path, ": extraction is unfinished (", code_dataset_progress_path(path),
                        " exists)\n---> HINT: re-run `aim extract-codes` with the same arguments to resume"));
  }
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw Error(str_cat(path, ": cannot open code dataset: ", std::strerror(errno)));
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    ::close(fd);
    throw Error(str_cat(path, ": fstat failed: ", std::strerror(errno)));
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    throw Error(str_cat(path, ": expected a code dataset file (aim extract-codes), found a ",
                        S_ISDIR(st.st_mode) ? "folder" : "special file"));
  }
  size_ = static_cast<size_t>(st.st_size);
  if (size_ == 0) {
    ::close(fd);
    throw Error(str_cat(path, ": empty file, not a code dataset"));
  }
  void* p = ::mmap(nullptr, size_, PROT_READ, MAP_SHARED, fd, 0);
  ::close(fd);
  if (p == MAP_FAILED) throw Error(str_cat(path, ": mmap failed: ", std::strerror(errno)));
  base_ = static_cast<const uint8_t*>(p);
  try {
    bool finished = true;
    info_ = read_header(base_, size_, size_, path, &finished);
    AIM_CHECK(finished || allow_unfinished, path, ": an unfinished extraction (its header says so), and its ",
              code_dataset_progress_path(path), " is not beside it: a copy or link made before `aim extract-codes` ",
              "finished? Samples not yet written would read as class 0 with all-zero codes\n---> HINT: finish the ",
              "extraction where it started (re-run aim extract-codes with the same arguments), then copy the file again");
  } catch (...) {
    ::munmap(const_cast<uint8_t*>(base_), size_);
    throw;
  }
  const auto* labels = reinterpret_cast<const int16_t*>(base_ + info_.labels_offset);
  const auto num_classes = static_cast<int64_t>(info_.classes.size());
  for (int64_t i = 0; i < info_.num_samples; ++i) {
    if (labels[i] < 0) continue;
    if (num_classes > 0 && labels[i] >= num_classes) {
      const int16_t label = labels[i];  // read before the mapping goes
      ::munmap(const_cast<uint8_t*>(base_), size_);
      base_ = nullptr;
      throw Error(str_cat(path, ": sample ", i, " has label ", label, ", expected < ", num_classes,
                          " (the header lists ", num_classes, " classes)"));
    }
    valid_.push_back(i);
  }
  // Random access over the whole file: no read-ahead.
  ::madvise(const_cast<uint8_t*>(base_), size_, MADV_RANDOM);
}

CodeDataset::~CodeDataset() {
  if (base_) ::munmap(const_cast<uint8_t*>(base_), size_);
}

const uint16_t* CodeDataset::codes(int64_t i, int64_t a) const {
  AIM_CHECK(i >= 0 && i < info_.num_samples && a >= 0 && a < info_.num_aug, path_, ": sample ", i,
            " aug ", a, " out of range (N ", info_.num_samples, ", A ", info_.num_aug, ")");
  return reinterpret_cast<const uint16_t*>(base_ + info_.codes_offset) + (i * info_.num_aug + a) * info_.tokens;
}

int16_t CodeDataset::label(int64_t i) const {
  AIM_CHECK(i >= 0 && i < info_.num_samples, path_, ": sample ", i, " out of range");
  return reinterpret_cast<const int16_t*>(base_ + info_.labels_offset)[i];
}

void CodeDataset::gather(const std::vector<int64_t>& indices, const std::vector<int64_t>& augs,
                         torch::Tensor& codes_out, torch::Tensor& labels_out) const {
  AIM_CHECK(indices.size() == augs.size(), "CodeDataset::gather: ", indices.size(), " indices, ",
            augs.size(), " augs");
  const int64_t b = static_cast<int64_t>(indices.size()), t = info_.tokens;
  codes_out = torch::empty({b, t}, torch::kLong);
  labels_out = torch::empty({b}, torch::kLong);
  auto* c = codes_out.data_ptr<int64_t>();
  auto* l = labels_out.data_ptr<int64_t>();
  const int64_t vocab = info_.vocab_size;
  for (int64_t k = 0; k < b; ++k) {
    const uint16_t* src = codes(indices[k], augs[k]);
    uint16_t top = 0;
    for (int64_t j = 0; j < t; ++j) {
      c[k * t + j] = src[j];
      top = std::max(top, src[j]);
    }
    // A corrupt file would otherwise index past the embedding table, far from its cause.
    if (top >= vocab) {
      int64_t at = 0;
      while (src[at] < vocab) ++at;
      throw Error(str_cat(path_, ": image ", indices[k], " (view ", augs[k], ") holds code ", src[at], " at token ", at,
                          ", outside the file's codebook [0, ", vocab, "): the file is damaged\n---> HINT: extract "
                          "it again with aim extract-codes"));
    }
    l[k] = label(indices[k]);
  }
}

std::unique_ptr<CodeDatasetWriter> CodeDatasetWriter::create(const std::string& path, CodeDatasetInfo info) {
  const std::string header = layout(info);
  std::unique_ptr<CodeDatasetWriter> w(new CodeDatasetWriter());
  w->path_ = path;
  w->info_ = info;
  {
    std::error_code ec;  // a missing folder is made (a failure shows at the open below)
    std::filesystem::create_directories(std::filesystem::path(path).parent_path(), ec);
    std::ofstream progress(code_dataset_progress_path(path));
    if (!progress)
      throw Error(str_cat(code_dataset_progress_path(path), ": cannot create progress file: ", std::strerror(errno)));
  }
  w->fd_ = ::open(path.c_str(), O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (w->fd_ < 0) throw Error(str_cat(path, ": cannot create code dataset: ", std::strerror(errno)));
  if (::ftruncate(w->fd_, file_bytes(info)) != 0) {
    throw Error(str_cat(path, ": cannot size the file to ", file_bytes(info), " bytes: ", std::strerror(errno)));
  }
  pwrite_all(w->fd_, header.data(), header.size(), 0, path);
  return w;
}

std::unique_ptr<CodeDatasetWriter> CodeDatasetWriter::resume(const std::string& path,
                                                             const CodeDatasetInfo& expected) {
  std::unique_ptr<CodeDatasetWriter> w(new CodeDatasetWriter());
  w->path_ = path;
  w->fd_ = ::open(path.c_str(), O_RDWR | O_CLOEXEC);
  if (w->fd_ < 0) throw Error(str_cat(path, ": cannot open to resume: ", std::strerror(errno)));
  struct stat st {};
  ::fstat(w->fd_, &st);
  std::vector<uint8_t> head(std::min<size_t>(static_cast<size_t>(st.st_size), kMaxHeader + 16));
  if (::pread(w->fd_, head.data(), head.size(), 0) != static_cast<ssize_t>(head.size())) {
    throw Error(str_cat(path, ": cannot read header to resume"));
  }
  // read_header checks sizes against the real file size, so hand it the full size.
  auto info = read_header(head.data(), head.size(), static_cast<size_t>(st.st_size), path);
  const std::string difference = code_dataset_difference(info, expected);
  AIM_CHECK(difference.empty(), path, ": the unfinished dataset was started with other settings: ", difference,
            "\n---> HINT: re-run with the settings it was started with, or delete it and ",
            code_dataset_progress_path(path), " to start over");
  w->info_ = info;
  return w;
}

CodeDatasetWriter::~CodeDatasetWriter() {
  if (fd_ >= 0) ::close(fd_);
}

void CodeDatasetWriter::write(int64_t start, const torch::Tensor& codes, const torch::Tensor& labels) {
  const int64_t n = codes.size(0);
  AIM_CHECK(codes.dim() == 3 && codes.size(1) == info_.num_aug && codes.size(2) == info_.tokens,
            path_, ": codes must be [n, ", info_.num_aug, ", ", info_.tokens, "], got ", codes.sizes());
  AIM_CHECK(labels.dim() == 1 && labels.size(0) == n, path_, ": labels must be [", n, "]");
  AIM_CHECK(start >= 0 && start + n <= info_.num_samples, path_, ": samples ", start, "..",
            start + n - 1, " out of range (N ", info_.num_samples, ")");
  auto c = codes.to(torch::kCPU, torch::kLong).contiguous();
  AIM_CHECK(n == 0 || (c.min().item<int64_t>() >= 0 && c.max().item<int64_t>() < info_.vocab_size),
            path_, ": codes outside [0, ", info_.vocab_size, ")");
  auto l = labels.to(torch::kCPU, torch::kLong).contiguous();
  AIM_CHECK(n == 0 || (l.min().item<int64_t>() >= -1 && l.max().item<int64_t>() < 32768), path_,
            ": labels outside [-1, 32767]");
  std::vector<uint16_t> cbuf(static_cast<size_t>(c.numel()));
  const auto* cp = c.data_ptr<int64_t>();
  for (size_t k = 0; k < cbuf.size(); ++k) cbuf[k] = static_cast<uint16_t>(cp[k]);
  std::vector<int16_t> lbuf(static_cast<size_t>(n));
  const auto* lp = l.data_ptr<int64_t>();
  for (int64_t k = 0; k < n; ++k) lbuf[k] = static_cast<int16_t>(lp[k]);
  pwrite_all(fd_, cbuf.data(), cbuf.size() * 2,
             info_.codes_offset + start * info_.num_aug * info_.tokens * 2, path_);
  pwrite_all(fd_, lbuf.data(), lbuf.size() * 2, info_.labels_offset + start * 2, path_);
}

void CodeDatasetWriter::sync() {
  if (::fsync(fd_) != 0) throw Error(str_cat(path_, ": fsync failed: ", std::strerror(errno)));
}

}  // namespace aim

// safetensors reader and writer: round trips for every dtype, interop with Python's safetensors,
// the atomic save, and one rejection test per validation rule (each checks that the message
// names the file and the offending key).
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <dirent.h>
#include <ftw.h>
#include <sys/stat.h>
#include <torch/torch.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>
#include <string>
#include <tuple>

#include "aim/core/error.h"
#include "aim/core/safetensors.h"
#include "test_util.h"

namespace aim {
namespace {

using ::testing::HasSubstr;

// File helpers use POSIX rather than std::filesystem: the libtorch.so of the torch wheel exports
// its own std::filesystem operations, built against a newer libstdc++, and they win symbol
// resolution; its remove_all calls a symbol Debian's libstdc++ lacks and jumps to address 0.

bool exists(const std::string& path) {
  struct stat st {};
  return ::lstat(path.c_str(), &st) == 0;
}

bool is_directory(const std::string& path) {
  struct stat st {};
  return ::lstat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

void remove_tree(const std::string& path) {
  // Children first (FTW_DEPTH), links not followed (FTW_PHYS); best effort, errors ignored.
  const auto remove_one = [](const char* p, const struct stat*, int, struct FTW*) {
    std::remove(p);
    return 0;
  };
  ::nftw(path.c_str(), remove_one, 16, FTW_DEPTH | FTW_PHYS);
}

/// Regular files under `root` (recursively) whose names end with `ext`, sorted.
void collect_files(const std::string& root, const std::string& ext, std::vector<std::string>* out) {
  DIR* dir = ::opendir(root.c_str());
  if (dir == nullptr) return;
  while (const dirent* e = ::readdir(dir)) {
    const std::string name = e->d_name;
    if (name == "." || name == "..") continue;
    const std::string p = root + "/" + name;
    struct stat st {};
    if (::lstat(p.c_str(), &st) != 0) continue;
    if (S_ISDIR(st.st_mode)) {
      collect_files(p, ext, out);
    } else if (S_ISREG(st.st_mode) && name.size() > ext.size() &&
               name.compare(name.size() - ext.size(), ext.size(), ext) == 0) {
      out->push_back(p);
    }
  }
  ::closedir(dir);
}

std::vector<std::string> files_under(const std::string& root, const std::string& ext) {
  std::vector<std::string> out;
  collect_files(root, ext, &out);
  std::sort(out.begin(), out.end());
  return out;
}

std::string read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

void write_bytes(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  ASSERT_TRUE(out.good()) << path;
}

std::string le64(uint64_t n) {
  std::string s(8, '\0');
  for (int i = 0; i < 8; ++i) s[i] = static_cast<char>((n >> (8 * i)) & 0xFF);
  return s;
}

/// A file of header length + `json` (padded to 8 with spaces) + `data`.
std::string st_file(const std::string& json, const std::string& data) {
  std::string header = json;
  header.append((8 - header.size() % 8) % 8, ' ');
  return le64(header.size()) + header + data;
}

/// Random values that are never zero and exactly representable in `dtype`.
torch::Tensor random_nonzero(torch::IntArrayRef shape, torch::ScalarType dtype) {
  switch (dtype) {
    case torch::kDouble:
    case torch::kFloat:
    case torch::kHalf:
    case torch::kBFloat16: {
      const auto mag = torch::rand(shape, torch::kDouble) * 1.5 + 0.25;
      const auto sign = torch::randint(0, 2, shape, torch::kDouble) * 2 - 1;
      return (mag * sign).to(dtype);
    }
    case torch::kLong: {
      // Beyond 32 bits so the high bytes are exercised.
      const auto v = torch::randint(1, int64_t{1} << 40, shape, torch::kLong);
      return v * (torch::randint(0, 2, shape, torch::kLong) * 2 - 1);
    }
    case torch::kInt:
    case torch::kShort: {
      const int64_t high = dtype == torch::kInt ? int64_t{1} << 31 : int64_t{1} << 15;
      const auto v = torch::randint(1, high, shape, torch::kLong);
      return (v * (torch::randint(0, 2, shape, torch::kLong) * 2 - 1)).to(dtype);
    }
    case torch::kUInt16:
      return torch::randint(1, 65536, shape, torch::kLong).to(torch::kUInt16);
    case torch::kByte:
      return torch::randint(1, 256, shape, torch::kLong).to(torch::kByte);
    default:
      throw Error(str_cat("random_nonzero: unsupported dtype ", dtype));
  }
}

/// Exact equality that also works for kUInt16, which lacks most kernels: compares bytes.
void expect_same(const torch::Tensor& expected, const torch::Tensor& actual,
                 const std::string& name) {
  ASSERT_TRUE(actual.defined()) << name;
  EXPECT_EQ(actual.scalar_type(), expected.scalar_type()) << name;
  ASSERT_EQ(actual.sizes(), expected.sizes()) << name;
  const auto a = actual.contiguous();
  const auto e = expected.contiguous();
  const size_t nbytes = e.numel() * e.element_size();
  if (nbytes == 0) return;
  EXPECT_EQ(std::memcmp(a.data_ptr(), e.data_ptr(), nbytes), 0) << name << ": values differ";
}

const std::vector<torch::ScalarType> kAllDtypes = {
    torch::kDouble, torch::kFloat, torch::kHalf,   torch::kBFloat16, torch::kLong,
    torch::kInt,    torch::kShort, torch::kUInt16, torch::kByte};

/// A fresh directory under the system temp dir per test, removed afterwards.
class SafetensorsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const char* tmp = std::getenv("TMPDIR");
    std::string pattern = str_cat(tmp != nullptr && *tmp ? tmp : "/tmp", "/aim_st_XXXXXX");
    ASSERT_NE(::mkdtemp(pattern.data()), nullptr) << pattern << ": " << std::strerror(errno);
    dir_ = pattern;
    torch::manual_seed(1234);
  }
  void TearDown() override {
    if (!dir_.empty()) remove_tree(dir_);
  }
  std::string path(const std::string& name) const { return dir_ + "/" + name; }

  /// Expects SafetensorsFile(path) to throw with a message holding the path and every piece.
  void expect_rejected(const std::string& file, const std::string& bytes,
                       const std::vector<std::string>& pieces) {
    const std::string p = path(file);
    write_bytes(p, bytes);
    try {
      SafetensorsFile f(p);
      ADD_FAILURE() << file << ": expected aim::Error, the file was accepted";
    } catch (const Error& e) {
      EXPECT_THAT(e.what(), HasSubstr(p));
      for (const auto& piece : pieces) EXPECT_THAT(e.what(), HasSubstr(piece)) << file;
    }
  }

  std::string dir_;
};

class SafetensorsDtypeTest : public SafetensorsTest,
                             public ::testing::WithParamInterface<torch::ScalarType> {};

TEST_P(SafetensorsDtypeTest, RoundTripExact) {
  const torch::ScalarType dtype = GetParam();
  const std::vector<std::vector<int64_t>> shapes = {{}, {1}, {7}, {3, 5}, {2, 3, 4}, {4, 1, 3, 2},
                                                    {0}, {3, 0, 2}};
  std::vector<std::pair<std::string, torch::Tensor>> tensors;
  for (size_t i = 0; i < shapes.size(); ++i) {
    tensors.emplace_back(str_cat("t", i), random_nonzero(shapes[i], dtype));
  }
  const std::string p = path("round_trip.safetensors");
  save_safetensors(p, tensors);
  EXPECT_FALSE(exists(p + ".tmp"));

  {
    SafetensorsFile file(p);
    ASSERT_EQ(file.entries().size(), tensors.size());
    for (const auto& [name, expected] : tensors) {
      ASSERT_TRUE(file.contains(name));
      EXPECT_EQ(file.info(name).dtype, from_torch_dtype(dtype));
      EXPECT_EQ(file.info(name).shape, expected.sizes().vec());
      const torch::Tensor got = file.get(name);
      expect_same(expected, got, name);
      if (expected.numel() > 0) {
        EXPECT_EQ(reinterpret_cast<uintptr_t>(got.data_ptr()) % got.element_size(), 0u) << name;
      }
    }
  }
  const auto loaded = load_safetensors(p);
  ASSERT_EQ(loaded.size(), tensors.size());
  for (const auto& [name, expected] : tensors) expect_same(expected, loaded.at(name), name);
}

INSTANTIATE_TEST_SUITE_P(AllDtypes, SafetensorsDtypeTest, ::testing::ValuesIn(kAllDtypes),
                         [](const auto& info) { return std::string(c10::toString(info.param)); });

TEST(SafetensorsDtype, MappingBothWays) {
  for (StDType d : {StDType::F64, StDType::F32, StDType::F16, StDType::BF16, StDType::I64,
                    StDType::I32, StDType::I16, StDType::U16, StDType::U8}) {
    EXPECT_EQ(from_torch_dtype(to_torch_dtype(d)), d) << st_dtype_name(d);
    EXPECT_EQ(st_dtype_from_string(st_dtype_name(d)), d);
    EXPECT_EQ(st_dtype_size(d), c10::elementSize(to_torch_dtype(d)));
  }
  EXPECT_THROW(st_dtype_from_string("BOOL"), Error);
  EXPECT_THROW(from_torch_dtype(torch::kComplexFloat), Error);
}

TEST_F(SafetensorsTest, MixedDtypesAreAlignedAndOrderedByOffset) {
  // Odd byte counts first in the input; the writer must still align every tensor.
  std::vector<std::pair<std::string, torch::Tensor>> tensors = {
      {"u8", random_nonzero({3}, torch::kByte)},
      {"f16", random_nonzero({5}, torch::kHalf)},
      {"f32", random_nonzero({3}, torch::kFloat)},
      {"f64", random_nonzero({1}, torch::kDouble)},
  };
  const std::string p = path("mixed.safetensors");
  save_safetensors(p, tensors);
  SafetensorsFile file(p);
  uint64_t prev_end = 0;
  for (const StTensorInfo& t : file.entries()) {
    EXPECT_EQ(t.begin, prev_end) << t.name << ": expected contiguous data";
    EXPECT_EQ(t.begin % st_dtype_size(t.dtype), 0u) << t.name;
    prev_end = t.end;
  }
  for (const auto& [name, expected] : tensors) expect_same(expected, file.get(name), name);
}

TEST_F(SafetensorsTest, MetadataRoundTrip) {
  const std::map<std::string, std::string> metadata = {
      {"format", "pt"}, {"step", "1200"}, {"note", "ünïcode \"quoted\" \\ and\nnewline"},
      {"empty", ""}};
  const std::string p = path("meta.safetensors");
  save_safetensors(p, {{"w", random_nonzero({2, 2}, torch::kFloat)}}, metadata);
  SafetensorsFile file(p);
  EXPECT_EQ(file.metadata(), metadata);

  const std::string q = path("no_meta.safetensors");
  save_safetensors(q, {{"w", random_nonzero({2}, torch::kFloat)}});
  EXPECT_TRUE(SafetensorsFile(q).metadata().empty());
  EXPECT_THAT(read_bytes(q), ::testing::Not(HasSubstr("__metadata__")));
}

TEST_F(SafetensorsTest, HeaderIsPaddedToEightBytes) {
  StTensorInfo t;
  t.name = "abc";
  t.dtype = StDType::U8;
  t.shape = {3};
  t.begin = 0;
  t.end = 3;
  const std::string bytes = serialize_safetensors_header({t}, {{"k", "v"}});
  ASSERT_GE(bytes.size(), 8u);
  EXPECT_EQ(bytes.size() % 8, 0u);
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | static_cast<uint8_t>(bytes[i]);
  EXPECT_EQ(n + 8, bytes.size());
  EXPECT_EQ(bytes[8], '{');
  const StHeader h = parse_safetensors_header(reinterpret_cast<const uint8_t*>(bytes.data()),
                                              bytes.size(), bytes.size() + 3, "serialized");
  ASSERT_EQ(h.tensors.size(), 1u);
  EXPECT_EQ(h.tensors[0].name, "abc");
  EXPECT_EQ(h.metadata.at("k"), "v");

  t.begin = 1;
  t.end = 4;
  EXPECT_THROW(serialize_safetensors_header({t}, {}), Error);
}

TEST_F(SafetensorsTest, NonContiguousAndStridedInputs) {
  const auto base = random_nonzero({4, 6}, torch::kFloat);
  const auto transposed = base.t();
  const auto sliced = base.index({torch::indexing::Slice(), torch::indexing::Slice(1, 5, 2)});
  const std::string p = path("strided.safetensors");
  save_safetensors(p, {{"t", transposed}, {"s", sliced}});
  SafetensorsFile file(p);
  EXPECT_TRUE(torch::equal(file.get("t"), transposed));
  EXPECT_TRUE(torch::equal(file.get("s"), sliced));
}

TEST_F(SafetensorsTest, CudaTensorsAreSaved) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device";
  const auto cpu = random_nonzero({3, 4}, torch::kBFloat16);
  const std::string p = path("cuda.safetensors");
  save_safetensors(p, {{"x", cpu.to(torch::kCUDA)}});
  expect_same(cpu, load_safetensors(p).at("x"), "x");
}

TEST_F(SafetensorsTest, SaveRejectsBadInputs) {
  const std::string p = path("bad.safetensors");
  try {
    save_safetensors(p, {{"mask", torch::ones({2}, torch::kBool)}});
    ADD_FAILURE() << "bool accepted";
  } catch (const Error& e) {
    EXPECT_THAT(e.what(), HasSubstr(p));
    EXPECT_THAT(e.what(), HasSubstr("mask"));
    EXPECT_THAT(e.what(), HasSubstr("Bool"));
  }
  try {
    save_safetensors(p, {{"a", torch::ones({1})}, {"a", torch::ones({1})}});
    ADD_FAILURE() << "duplicate names accepted";
  } catch (const Error& e) {
    EXPECT_THAT(e.what(), HasSubstr(p));
    EXPECT_THAT(e.what(), HasSubstr("\"a\""));
  }
  EXPECT_THROW(save_safetensors(p, {{"__metadata__", torch::ones({1})}}), Error);
  EXPECT_THROW(save_safetensors(p, {{"", torch::ones({1})}}), Error);
  EXPECT_THROW(save_safetensors(p, {{"u", torch::Tensor()}}), Error);
  EXPECT_FALSE(exists(p));
  EXPECT_FALSE(exists(p + ".tmp"));
}

TEST_F(SafetensorsTest, MissingKeyNamesFileAndKey) {
  const std::string p = path("one.safetensors");
  save_safetensors(p, {{"present", torch::ones({1})}});
  SafetensorsFile file(p);
  EXPECT_FALSE(file.contains("absent"));
  try {
    file.get("absent");
    ADD_FAILURE() << "absent key accepted";
  } catch (const Error& e) {
    EXPECT_THAT(e.what(), HasSubstr(p));
    EXPECT_THAT(e.what(), HasSubstr("absent"));
    EXPECT_THAT(e.what(), HasSubstr("present"));
  }
}

TEST_F(SafetensorsTest, TensorsOutliveTheFile) {
  const auto expected = random_nonzero({64, 33}, torch::kFloat);
  const std::string p = path("outlive.safetensors");
  save_safetensors(p, {{"x", expected}});
  torch::Tensor view;
  std::map<std::string, torch::Tensor> all;
  {
    SafetensorsFile file(p);
    view = file.get("x");
    all = file.load_all();
  }
  std::remove(p.c_str());  // the mapping keeps the data even once the name is gone
  EXPECT_TRUE(torch::equal(view, expected));
  EXPECT_TRUE(torch::equal(all.at("x"), expected));
  EXPECT_TRUE(torch::equal(view * 2, expected * 2));
}

TEST_F(SafetensorsTest, UnalignedDataIsCopied) {
  // A writer that does not align: one byte of U8, then F32 at offset 1 and I64 at offset 5.
  const float f = 3.25f;
  const int64_t l = -1234567890123;
  std::string data = "\x07";
  data.append(reinterpret_cast<const char*>(&f), 4);
  data.append(reinterpret_cast<const char*>(&l), 8);
  const std::string json =
      R"({"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},)"
      R"("f":{"dtype":"F32","shape":[],"data_offsets":[1,5]},)"
      R"("l":{"dtype":"I64","shape":[1],"data_offsets":[5,13]}})";
  const std::string p = path("unaligned.safetensors");
  write_bytes(p, st_file(json, data));
  SafetensorsFile file(p);
  const auto tf = file.get("f");
  const auto tl = file.get("l");
  EXPECT_EQ(reinterpret_cast<uintptr_t>(tf.data_ptr()) % 4, 0u);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(tl.data_ptr()) % 8, 0u);
  EXPECT_EQ(tf.dim(), 0);
  EXPECT_EQ(tf.item<float>(), f);
  EXPECT_EQ(tl[0].item<int64_t>(), l);
  EXPECT_EQ(file.get("a")[0].item<uint8_t>(), 7);
}

TEST_F(SafetensorsTest, GapsAndEmptyTensorsInsideRangesAreAccepted) {
  const std::string json =
      R"({"a":{"dtype":"U8","shape":[2],"data_offsets":[0,2]},)"
      R"("e":{"dtype":"F32","shape":[0,5],"data_offsets":[1,1]},)"
      R"("b":{"dtype":"U8","shape":[2],"data_offsets":[4,6]}})";
  const std::string p = path("gaps.safetensors");
  write_bytes(p, st_file(json, std::string("\x01\x02\x03\x04\x05\x06", 6)));
  SafetensorsFile file(p);
  ASSERT_EQ(file.entries().size(), 3u);
  EXPECT_EQ(file.entries()[0].name, "a");
  EXPECT_EQ(file.entries()[1].name, "e");
  EXPECT_EQ(file.entries()[2].name, "b");
  EXPECT_EQ(file.get("e").sizes(), (std::vector<int64_t>{0, 5}));
  EXPECT_EQ(file.get("b")[1].item<uint8_t>(), 6);
}

// ------------------------------------------------------------------------- atomic save

TEST_F(SafetensorsTest, FailedSaveLeavesOldFileIntact) {
  const std::string p = path("model.safetensors");
  const auto old_tensor = random_nonzero({8}, torch::kFloat);
  save_safetensors(p, {{"w", old_tensor}});
  const std::string old_bytes = read_bytes(p);

  // The tmp path is taken by a directory: the tmp file cannot even be created.
  ASSERT_EQ(::mkdir((p + ".tmp").c_str(), 0755), 0);
  try {
    save_safetensors(p, {{"w", random_nonzero({8}, torch::kFloat)}});
    ADD_FAILURE() << "save over a directory tmp path succeeded";
  } catch (const Error& e) {
    EXPECT_THAT(e.what(), HasSubstr(p));
    EXPECT_THAT(e.what(), HasSubstr(".tmp"));
  }
  EXPECT_EQ(read_bytes(p), old_bytes);
  EXPECT_TRUE(is_directory(p + ".tmp")) << "a directory that is not ours must stay";
  ::rmdir((p + ".tmp").c_str());
  expect_same(old_tensor, load_safetensors(p).at("w"), "w");
}

TEST_F(SafetensorsTest, FullDiskLeavesOldFileIntactAndRemovesTmp) {
  // /dev/full fails every write with ENOSPC: the tmp path points there.
  if (!exists("/dev/full")) GTEST_SKIP() << "/dev/full is absent";
  const std::string p = path("model.safetensors");
  save_safetensors(p, {{"w", random_nonzero({8}, torch::kFloat)}});
  const std::string old_bytes = read_bytes(p);
  ASSERT_EQ(::symlink("/dev/full", (p + ".tmp").c_str()), 0);
  try {
    save_safetensors(p, {{"w", random_nonzero({1000}, torch::kFloat)}});
    ADD_FAILURE() << "save onto a full disk succeeded";
  } catch (const Error& e) {
    EXPECT_THAT(e.what(), HasSubstr(p));
    EXPECT_THAT(e.what(), HasSubstr(std::strerror(ENOSPC)));
  }
  EXPECT_EQ(read_bytes(p), old_bytes);
  EXPECT_FALSE(exists(p + ".tmp")) << "the tmp file must be removed";
}

TEST_F(SafetensorsTest, SaveMakesAMissingDirectoryAndNamesAnUnusablePath) {
  const std::string made = path("no/such/dir/model.safetensors");
  save_safetensors(made, {{"w", torch::ones({1})}});
  EXPECT_TRUE(exists(made));
  // A "directory" that is a file cannot be made: the error names the path.
  const std::string file = path("plain_file");
  save_safetensors(file, {{"w", torch::ones({1})}});
  const std::string p = file + "/model.safetensors";
  try {
    save_safetensors(p, {{"w", torch::ones({1})}});
    ADD_FAILURE() << "save below a regular file succeeded";
  } catch (const Error& e) {
    EXPECT_THAT(e.what(), HasSubstr(p));
  }
}

// ------------------------------------------------------------------------- rejection

const std::string kValidJson = R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})";
const std::string kValidData(8, '\x11');

TEST_F(SafetensorsTest, RejectsEmptyFile) {
  expect_rejected("empty.safetensors", "", {"empty"});
}

TEST_F(SafetensorsTest, RejectsFileShorterThanEightBytes) {
  expect_rejected("short.safetensors", std::string("\x10\x00\x00", 3), {"3 bytes", "at least 8"});
}

TEST_F(SafetensorsTest, RejectsTruncatedInHeader) {
  const std::string full = st_file(kValidJson, kValidData);
  expect_rejected("cut_header.safetensors", full.substr(0, 20), {"header length", "truncated"});
}

TEST_F(SafetensorsTest, RejectsTruncatedInData) {
  const std::string full = st_file(kValidJson, kValidData);
  expect_rejected("cut_data.safetensors", full.substr(0, full.size() - 3),
                  {"\"w\"", "data_offsets", "[0, 8]", "5 bytes"});
}

TEST_F(SafetensorsTest, RejectsHeaderLengthLargerThanFile) {
  expect_rejected("long.safetensors", le64(4096) + "{}      ", {"header length 4096", "8"});
}

TEST_F(SafetensorsTest, RejectsAbsurdHeaderLength) {
  expect_rejected("absurd.safetensors", le64(uint64_t{1} << 63) + "{}      ",
                  {"header length 9223372036854775808", "at most"});
}

TEST_F(SafetensorsTest, RejectsNotJson) {
  expect_rejected("not_json.safetensors", st_file("{\"w\": nope}", ""), {"not valid JSON"});
}

TEST_F(SafetensorsTest, RejectsInvalidUtf8) {
  expect_rejected("utf8.safetensors", st_file("{\"w\xff\": 1}", ""), {"not valid JSON"});
}

TEST_F(SafetensorsTest, RejectsJsonArray) {
  expect_rejected("array.safetensors", st_file("[1, 2, 3]", ""), {"JSON object", "array"});
}

TEST_F(SafetensorsTest, RejectsUnknownDtype) {
  expect_rejected("dtype.safetensors",
                  st_file(R"({"mask":{"dtype":"BOOL","shape":[2],"data_offsets":[0,2]}})", "ab"),
                  {"\"mask\"", "dtype", "BOOL", "F32"});
}

TEST_F(SafetensorsTest, RejectsNegativeDim) {
  expect_rejected("neg.safetensors",
                  st_file(R"({"w":{"dtype":"U8","shape":[2,-1],"data_offsets":[0,2]}})", "ab"),
                  {"\"w\"", "shape[1]", "-1"});
}

TEST_F(SafetensorsTest, RejectsFractionalDim) {
  expect_rejected("frac.safetensors",
                  st_file(R"({"w":{"dtype":"U8","shape":[2.5],"data_offsets":[0,2]}})", "ab"),
                  {"\"w\"", "shape[0]", "2.5"});
}

TEST_F(SafetensorsTest, RejectsShapeOverflow) {
  expect_rejected(
      "overflow.safetensors",
      st_file(R"({"w":{"dtype":"F64","shape":[4294967296,4294967296],"data_offsets":[0,8]}})",
              kValidData),
      {"\"w\"", "overflow"});
  expect_rejected(
      "overflow_bytes.safetensors",
      st_file(R"({"w":{"dtype":"F64","shape":[4611686018427387904],"data_offsets":[0,8]}})",
              kValidData),
      {"\"w\"", "overflow"});
}

TEST_F(SafetensorsTest, RejectsShapeOffsetSizeMismatch) {
  expect_rejected("mismatch.safetensors",
                  st_file(R"({"w":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", kValidData),
                  {"\"w\"", "data_offsets", "expected 12", "8 bytes"});
}

TEST_F(SafetensorsTest, RejectsOffsetsOutOfRange) {
  expect_rejected("range.safetensors",
                  st_file(R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})", kValidData),
                  {"\"w\"", "data_offsets", "[4, 12]", "8 bytes"});
}

TEST_F(SafetensorsTest, RejectsReversedOffsets) {
  expect_rejected("reversed.safetensors",
                  st_file(R"({"w":{"dtype":"U8","shape":[0],"data_offsets":[5,4]}})", kValidData),
                  {"\"w\"", "begin <= end", "[5, 4]"});
}

TEST_F(SafetensorsTest, RejectsOverlappingRanges) {
  expect_rejected("overlap.safetensors",
                  st_file(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},)"
                          R"("b":{"dtype":"F32","shape":[1],"data_offsets":[2,6]}})",
                          kValidData),
                  {"\"a\"", "\"b\"", "overlap"});
}

TEST_F(SafetensorsTest, RejectsDuplicateKey) {
  expect_rejected("dup.safetensors",
                  st_file(R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                          R"("w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})",
                          kValidData),
                  {"\"w\"", "twice"});
  expect_rejected("dup_inner.safetensors",
                  st_file(R"({"w":{"dtype":"F32","shape":[2],"dtype":"F32",)"
                          R"("data_offsets":[0,8]}})",
                          kValidData),
                  {"\"w\"", "\"dtype\"", "twice"});
}

TEST_F(SafetensorsTest, RejectsOffsetsNotAPair) {
  expect_rejected("triple.safetensors",
                  st_file(R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8,8]}})",
                          kValidData),
                  {"\"w\"", "data_offsets", "pair"});
  expect_rejected("scalar.safetensors",
                  st_file(R"({"w":{"dtype":"F32","shape":[2],"data_offsets":8}})", kValidData),
                  {"\"w\"", "data_offsets", "pair"});
  expect_rejected("negative.safetensors",
                  st_file(R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[-1,7]}})",
                          kValidData),
                  {"\"w\"", "data_offsets[0]", "-1"});
}

TEST_F(SafetensorsTest, RejectsMissingAndExtraEntryKeys) {
  expect_rejected("missing.safetensors",
                  st_file(R"({"w":{"dtype":"F32","data_offsets":[0,8]}})", kValidData),
                  {"\"w\"", "shape"});
  expect_rejected("extra.safetensors",
                  st_file(R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8],"x":1}})",
                          kValidData),
                  {"\"w\"", "\"x\""});
}

TEST_F(SafetensorsTest, RejectsBadMetadata) {
  expect_rejected("meta_type.safetensors", st_file(R"({"__metadata__":[1]})", ""),
                  {"__metadata__", "object"});
  expect_rejected("meta_value.safetensors", st_file(R"({"__metadata__":{"step":3}})", ""),
                  {"__metadata__", "\"step\"", "string"});
}

TEST_F(SafetensorsTest, RejectsDeepNesting) {
  expect_rejected("deep.safetensors",
                  st_file(R"({"w":{"dtype":"U8","shape":[[[1]]],"data_offsets":[0,1]}})", "a"),
                  {"\"w\"", "\"shape\"", "deep"});
}

TEST_F(SafetensorsTest, RejectsOverlongShape) {
  std::string dims = "1";
  for (int i = 0; i < 64; ++i) dims += ",1";
  expect_rejected("rank.safetensors",
                  st_file(R"({"w":{"dtype":"U8","shape":[)" + dims + R"(],"data_offsets":[0,1]}})",
                          "a"),
                  {"\"w\" -> \"shape\"", "64"});
}

TEST(SafetensorsHeader, ManyTensorsParseInLinearTime) {
  // A header of 200k entries: nlohmann's callback parser needed minutes for this (it rescans the
  // parent object at each entry's end); a linear parser takes about a second.
  constexpr int kCount = 200000;
  std::string json = "{";
  for (int i = 0; i < kCount; ++i) {
    json += str_cat(i ? "," : "", "\"layers.", i, ".w\":{\"dtype\":\"U8\",\"shape\":[1],",
                    "\"data_offsets\":[", i, ",", i + 1, "]}");
  }
  json += "}";
  const std::string bytes = st_file(json, std::string(kCount, '\x01'));
  const auto start = std::chrono::steady_clock::now();
  const StHeader h = parse_safetensors_header(reinterpret_cast<const uint8_t*>(bytes.data()),
                                              bytes.size(), bytes.size(), "many");
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  ASSERT_EQ(h.tensors.size(), static_cast<size_t>(kCount));
  EXPECT_EQ(h.tensors.back().end, static_cast<uint64_t>(kCount));
  EXPECT_LT(seconds, 30.0) << "parsing " << kCount << " entries took " << seconds << " s";
}

TEST_F(SafetensorsTest, RejectsDirectoryAndMissingFile) {
  try {
    SafetensorsFile f(dir_);
    ADD_FAILURE() << "a directory was accepted";
  } catch (const Error& e) {
    EXPECT_THAT(e.what(), HasSubstr(dir_));
  }
  const std::string missing = path("missing.safetensors");
  try {
    SafetensorsFile f(missing);
    ADD_FAILURE() << "a missing file was accepted";
  } catch (const Error& e) {
    EXPECT_THAT(e.what(), HasSubstr(missing));
  }
}

// ------------------------------------------------------------------------- fixtures, corpus

TEST(SafetensorsFixtures, AllParseAndAreFinite) {
  const auto files = files_under(str_cat(test::source_dir(), "/tests/fixtures"), ".safetensors");
  ASSERT_FALSE(files.empty()) << "no *.safetensors under " << test::source_dir() << "/tests/fixtures";
  for (const auto& f : files) {
    SCOPED_TRACE(f);
    SafetensorsFile file(f);
    EXPECT_FALSE(file.entries().empty());
    for (const StTensorInfo& t : file.entries()) {
      const torch::Tensor x = file.get(t.name);
      EXPECT_EQ(x.sizes().vec(), t.shape) << t.name;
      if (x.is_floating_point()) {
        EXPECT_TRUE(torch::isfinite(x).all().item<bool>()) << t.name << " has non-finite values";
      }
    }
  }
}

TEST(SafetensorsFuzzCorpus, SeedsParseOrFailAsNamed) {
  // Seeds named valid_* must parse and bad_* must be rejected, so the corpus keeps covering
  // both sides of each rule.
  const auto files = files_under(str_cat(test::source_dir(), "/tests/fuzz/corpus_safetensors"),
                                 ".safetensors");
  ASSERT_FALSE(files.empty());
  for (const auto& f : files) {
    const std::string name = f.substr(f.rfind('/') + 1);
    const std::string bytes = read_bytes(f);
    const auto* data = reinterpret_cast<const uint8_t*>(bytes.data());
    if (name.rfind("valid_", 0) == 0) {
      EXPECT_NO_THROW(parse_safetensors_header(data, bytes.size(), bytes.size(), name)) << name;
    } else {
      EXPECT_THROW(parse_safetensors_header(data, bytes.size(), bytes.size(), name), Error)
          << name;
    }
  }
}

// ------------------------------------------------------------------------- Python interop

/// Runs `script` with the venv python; the output goes to the test log on failure.
int run_python(const std::string& dir, const std::string& script, const std::string& args,
               std::string* log) {
  const std::string script_path = dir + "/script.py";
  const std::string log_path = dir + "/python.log";
  {
    std::ofstream out(script_path);
    out << script;
  }
  const std::string cmd = str_cat("\"", test::python(), "\" \"", script_path, "\" ",
                                  args, " > \"", log_path, "\" 2>&1");
  const int rc = std::system(cmd.c_str());
  *log = read_bytes(log_path);
  return rc;
}

bool python_has_safetensors(const std::string& dir) {
  std::string log;
  return run_python(dir, "import numpy, torch, safetensors.numpy, safetensors.torch\n", "", &log) == 0;
}

/// The values the Python writer below uses: ((i * 7) % 251 + 1) * scale, sign alternating for
/// signed types; every value is exact in its dtype.
torch::Tensor interop_values(torch::ScalarType dtype, std::vector<int64_t> shape) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  const auto i = torch::arange(n, torch::kLong);
  const auto base = (i * 7) % 251 + 1;
  const auto sign = 1 - 2 * (i % 2);
  torch::Tensor v;
  switch (dtype) {
    case torch::kDouble:
    case torch::kFloat:
    case torch::kHalf:
    case torch::kBFloat16: v = (base.to(torch::kDouble) * sign) / 4; break;
    case torch::kLong: v = base * sign * (int64_t{1} << 40); break;
    case torch::kInt: v = base * sign * 65536; break;
    case torch::kShort: v = base * sign * 100; break;
    case torch::kUInt16: v = base * 200; break;
    default: v = base; break;
  }
  return v.to(dtype).reshape(shape);
}

constexpr const char* kPythonWriter = R"PY(
import sys
import numpy as np

# The public writer (safetensors.torch) takes every dtype the tests use, bfloat16 and uint16
# included; the raw-dict serialize_file changed its signature in safetensors 0.8.
import torch
from safetensors.torch import save_file
TORCH_DTYPES = {"float64": torch.float64, "float32": torch.float32, "float16": torch.float16,
                "bfloat16": torch.bfloat16, "int64": torch.int64, "int32": torch.int32,
                "int16": torch.int16, "uint16": torch.uint16, "uint8": torch.uint8}

def serialize_file(specs, path, metadata):
    tensors = {}
    for name, spec in specs.items():
        dtype = TORCH_DTYPES[spec["dtype"]]
        if len(spec["data"]) == 0:
            tensors[name] = torch.empty(spec["shape"], dtype=dtype)
        else:
            flat = torch.frombuffer(bytearray(spec["data"]), dtype=dtype)
            tensors[name] = flat.reshape(spec["shape"]).clone()
    save_file(tensors, path, metadata=metadata)

def values(n, scale, signed):
    i = np.arange(n, dtype=np.int64)
    v = ((i * 7) % 251 + 1) * scale
    if signed:
        v = v * (1 - 2 * (i % 2))
    return v

def bf16_bytes(x):
    # x is exact in bfloat16: the upper half of each float32 is the bfloat16.
    u = np.asarray(x, dtype=np.float32).view(np.uint32)
    return (u >> 16).astype("<u2").tobytes()

specs = {
    "f64": ("float64", [2, 3], lambda n: (values(n, 1, True) / 4).astype("<f8").tobytes()),
    "f32": ("float32", [4, 5], lambda n: (values(n, 1, True) / 4).astype("<f4").tobytes()),
    "f16": ("float16", [3], lambda n: (values(n, 1, True) / 4).astype("<f2").tobytes()),
    "bf16": ("bfloat16", [2, 2, 2], lambda n: bf16_bytes(values(n, 1, True) / 4)),
    "i64": ("int64", [5], lambda n: values(n, 1 << 40, True).astype("<i8").tobytes()),
    "i32": ("int32", [2, 3], lambda n: values(n, 65536, True).astype("<i4").tobytes()),
    "i16": ("int16", [7], lambda n: values(n, 100, True).astype("<i2").tobytes()),
    "u16": ("uint16", [3, 1], lambda n: values(n, 200, False).astype("<u2").tobytes()),
    "u8": ("uint8", [9], lambda n: values(n, 1, False).astype("u1").tobytes()),
    "scalar": ("float32", [], lambda n: (values(n, 1, True) / 4).astype("<f4").tobytes()),
    "empty": ("float32", [0, 3], lambda n: b""),
}
# serialize_file (above) takes numpy-style dtype names.
tensors = {}
for name, (dtype, shape, make) in specs.items():
    n = int(np.prod(shape)) if shape else 1
    tensors[name] = {"dtype": dtype, "shape": shape, "data": make(n)}
serialize_file(tensors, sys.argv[1], metadata={"format": "np", "origin": "python \u00fc"})
)PY";

TEST_F(SafetensorsTest, ReadsFileWrittenByPython) {
  if (!python_has_safetensors(dir_)) {
    GTEST_SKIP() << test::python() << " cannot import numpy, torch and safetensors";
  }
  const std::string p = path("from_python.safetensors");
  std::string log;
  ASSERT_EQ(run_python(dir_, kPythonWriter, "\"" + p + "\"", &log), 0) << log;

  SafetensorsFile file(p);
  EXPECT_EQ(file.metadata(), (std::map<std::string, std::string>{
                                 {"format", "np"}, {"origin", "python \u00fc"}}));
  const std::vector<std::tuple<std::string, torch::ScalarType, std::vector<int64_t>>> expected = {
      {"f64", torch::kDouble, {2, 3}},  {"f32", torch::kFloat, {4, 5}},
      {"f16", torch::kHalf, {3}},       {"bf16", torch::kBFloat16, {2, 2, 2}},
      {"i64", torch::kLong, {5}},       {"i32", torch::kInt, {2, 3}},
      {"i16", torch::kShort, {7}},      {"u16", torch::kUInt16, {3, 1}},
      {"u8", torch::kByte, {9}},        {"scalar", torch::kFloat, {}},
      {"empty", torch::kFloat, {0, 3}}};
  ASSERT_EQ(file.entries().size(), expected.size());
  for (const auto& [name, dtype, shape] : expected) {
    expect_same(interop_values(dtype, shape), file.get(name), name);
  }
}

constexpr const char* kPythonReader = R"PY(
import json
import sys
import numpy as np
from safetensors import deserialize, safe_open

# The public writer (safetensors.torch) takes every dtype the tests use, bfloat16 and uint16
# included; the raw-dict serialize_file changed its signature in safetensors 0.8.
import torch
from safetensors.torch import save_file
TORCH_DTYPES = {"float64": torch.float64, "float32": torch.float32, "float16": torch.float16,
                "bfloat16": torch.bfloat16, "int64": torch.int64, "int32": torch.int32,
                "int16": torch.int16, "uint16": torch.uint16, "uint8": torch.uint8}

def serialize_file(specs, path, metadata):
    tensors = {}
    for name, spec in specs.items():
        dtype = TORCH_DTYPES[spec["dtype"]]
        if len(spec["data"]) == 0:
            tensors[name] = torch.empty(spec["shape"], dtype=dtype)
        else:
            flat = torch.frombuffer(bytearray(spec["data"]), dtype=dtype)
            tensors[name] = flat.reshape(spec["shape"]).clone()
    save_file(tensors, path, metadata=metadata)

src, dst, meta = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
# deserialize reports "F32", serialize_file wants numpy-style names.
names = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16",
         "I64": "int64", "I32": "int32", "I16": "int16", "U16": "uint16", "U8": "uint8"}
with open(src, "rb") as f:
    raw = dict(deserialize(f.read()))
out = {}
with safe_open(src, framework="np") as f:
    assert f.metadata() == meta, (f.metadata(), meta)
    assert sorted(f.keys()) == sorted(raw), (f.keys(), sorted(raw))
    for name, info in raw.items():
        # numpy has no bfloat16: those only pass their raw bytes back.
        if info["dtype"] != "BF16":
            a = f.get_tensor(name)
            assert list(a.shape) == list(info["shape"]), name
            assert np.ascontiguousarray(a).tobytes() == bytes(info["data"]), name
        out[name] = {"dtype": names[info["dtype"]], "shape": info["shape"],
                     "data": bytes(info["data"])}
serialize_file(out, dst, metadata=meta)
)PY";

TEST_F(SafetensorsTest, PythonReadsFileWeWrote) {
  if (!python_has_safetensors(dir_)) {
    GTEST_SKIP() << test::python() << " cannot import numpy, torch and safetensors";
  }
  std::vector<std::pair<std::string, torch::Tensor>> tensors;
  for (torch::ScalarType dtype : kAllDtypes) {
    tensors.emplace_back(str_cat(c10::toString(dtype), "_2d"), random_nonzero({3, 5}, dtype));
    tensors.emplace_back(str_cat(c10::toString(dtype), "_odd"), random_nonzero({7}, dtype));
  }
  tensors.emplace_back("scalar", random_nonzero({}, torch::kFloat));
  tensors.emplace_back("empty", random_nonzero({2, 0}, torch::kHalf));
  const std::map<std::string, std::string> metadata = {{"format", "pt"}, {"step", "42"}};
  const std::string ours = path("ours.safetensors");
  const std::string back = path("back.safetensors");
  save_safetensors(ours, tensors, metadata);

  std::string log;
  const std::string args = str_cat("\"", ours, "\" \"", back, "\" '{\"format\": \"pt\", ",
                                   "\"step\": \"42\"}'");
  ASSERT_EQ(run_python(dir_, kPythonReader, args, &log), 0) << log;
  SafetensorsFile file(back);
  EXPECT_EQ(file.metadata(), metadata);
  ASSERT_EQ(file.entries().size(), tensors.size());
  for (const auto& [name, expected] : tensors) expect_same(expected, file.get(name), name);
}

}  // namespace
}  // namespace aim

// .npy/.npz writing and reading: NumPy reads what NpzWriter streams (ZIP64 included), our reader
// reads np.savez / np.savez_compressed / np.save files whole or in row batches, and malformed
// files are errors naming the file and member, never crashes.
#include "aim/sample/npz.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "aim/core/error.h"
#include "test_util.h"

namespace aim {
namespace {

namespace fs = std::filesystem;

std::string read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

void write_bytes(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary);
  out << bytes;
}

/// Runs `script` with the venv python and the given args; output goes to `*log`.
int run_python(const std::string& dir, const std::string& script, const std::string& args,
               std::string* log) {
  const std::string script_path = dir + "/script.py";
  const std::string log_path = dir + "/python.log";
  write_bytes(script_path, script);
  const std::string cmd = str_cat("\"", test::python(), "\" \"", script_path, "\" ", args,
                                  " > \"", log_path, "\" 2>&1");
  const int rc = std::system(cmd.c_str());
  *log = read_bytes(log_path);
  return rc;
}

/// uint8 images [n, h, w, 3] whose value at flat index i is (i * 7 + 3) % 256, rows offset by
/// `first_row` so chunks of one array line up with the whole.
torch::Tensor images(int64_t first_row, int64_t n, int64_t h, int64_t w) {
  const int64_t row = h * w * 3;
  auto i = torch::arange(first_row * row, (first_row + n) * row, torch::kLong);
  return ((i * 7 + 3) % 256).to(torch::kByte).reshape({n, h, w, 3});
}

void expect_equal(const std::string& name, const torch::Tensor& actual,
                  const torch::Tensor& expected) {
  ASSERT_TRUE(actual.defined()) << name;
  EXPECT_EQ(actual.scalar_type(), expected.scalar_type()) << name;
  ASSERT_EQ(actual.sizes(), expected.sizes()) << name;
  EXPECT_TRUE(torch::equal(actual, expected)) << name << ": values differ";
}

/// Expects `fn` to throw aim::Error whose message holds every string in `parts`.
template <typename Fn>
void expect_error(Fn&& fn, const std::vector<std::string>& parts) {
  try {
    fn();
    ADD_FAILURE() << "expected aim::Error mentioning '" << parts.at(0) << "'";
  } catch (const Error& e) {
    const std::string msg = e.what();
    for (const auto& p : parts) EXPECT_NE(msg.find(p), std::string::npos) << msg;
  }
}

class NpzTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    dir_ = (fs::temp_directory_path() /
            str_cat("aim_npz_", ::getpid(), "_", info->name()))
               .string();
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }

  std::string path(const std::string& name) const { return dir_ + "/" + name; }

  bool has_numpy() {
    std::string log;
    return run_python(dir_, "import numpy\n", "", &log) == 0;
  }

  /// Writes the sample layout the ADM evaluator reads: arr_0 uint8 [10, 4, 5, 3] in chunks of
  /// 3, 0, 3, 4 rows, and arr_1 int64 labels.
  void write_samples(const std::string& file, NpzWriterOptions options = {}) {
    NpzWriter w(file, options);
    w.begin_array("arr_0", torch::kByte, {10, 4, 5, 3});
    int64_t row = 0;
    for (int64_t n : {3, 0, 3, 4}) {
      w.append(images(row, n, 4, 5));
      row += n;
    }
    w.end_array();
    w.add_array("arr_1", torch::arange(10, torch::kLong) * 100 - 7);
    EXPECT_TRUE(fs::exists(file + ".tmp"));
    EXPECT_FALSE(fs::exists(file));
    w.close();
    EXPECT_FALSE(fs::exists(file + ".tmp"));
  }

  void check_samples(const std::map<std::string, torch::Tensor>& got) {
    ASSERT_EQ(got.size(), 2u);
    expect_equal("arr_0", got.at("arr_0"), images(0, 10, 4, 5));
    expect_equal("arr_1", got.at("arr_1"), torch::arange(10, torch::kLong) * 100 - 7);
  }

  std::string dir_;
};

// Checks what the evaluator relies on, plus the archive CRCs (testzip) and the ZIP64 records.
constexpr const char* kNumpyCheck = R"(
import sys, zipfile
import numpy as np
path, want_zip64 = sys.argv[1], sys.argv[2] == "1"
with zipfile.ZipFile(path) as z:
    assert z.testzip() is None, "bad CRC"
    assert [i.compress_type for i in z.infolist()] == [0, 0]
d = np.load(path)
assert sorted(d.files) == ["arr_0", "arr_1"], d.files
a, l = d["arr_0"], d["arr_1"]
assert a.dtype == np.uint8 and a.shape == (10, 4, 5, 3), (a.dtype, a.shape)
i = np.arange(a.size, dtype=np.int64)
assert np.array_equal(a.reshape(-1), ((i * 7 + 3) % 256).astype(np.uint8))
assert l.dtype == np.int64 and l.shape == (10,) and l.tolist() == [k * 100 - 7 for k in range(10)]
raw = open(path, "rb").read()
assert (b"PK\x06\x06" in raw) == want_zip64, "ZIP64 end record presence"
print("OK")
)";

TEST_F(NpzTest, Crc32KnownValues) {
  EXPECT_EQ(crc32_update(0, "123456789", 9), 0xCBF43926u);
  EXPECT_EQ(crc32_update(0, "", 0), 0u);
  // Split updates equal one pass, across the 8-byte fast path.
  const std::string s = "The quick brown fox jumps over the lazy dog";
  EXPECT_EQ(crc32_update(0, s.data(), s.size()), 0x414FA339u);
  EXPECT_EQ(crc32_update(crc32_update(0, s.data(), 13), s.data() + 13, s.size() - 13), 0x414FA339u);
}

TEST_F(NpzTest, DescrNames) {
  EXPECT_EQ(npy_descr(torch::kByte), "|u1");
  EXPECT_EQ(npy_descr(torch::kLong), "<i8");
  EXPECT_EQ(npy_descr(torch::kFloat), "<f4");
  EXPECT_EQ(npy_descr(torch::kBool), "|b1");
  expect_error([] { npy_descr(torch::kBFloat16); }, {"BFloat16", "no NumPy equivalent"});
}

TEST_F(NpzTest, ChunkedSamplesReadByNumpyAndOurs) {
  const std::string file = path("samples.npz");
  write_samples(file);
  check_samples(load_npz(file));
  if (!has_numpy()) GTEST_SKIP() << "venv python without numpy: NumPy check skipped";
  std::string log;
  ASSERT_EQ(run_python(dir_, kNumpyCheck, "\"" + file + "\" 0", &log), 0) << log;
  EXPECT_NE(log.find("OK"), std::string::npos) << log;
}

TEST_F(NpzTest, ForcedZip64ReadByNumpyAndOurs) {
  const std::string file = path("zip64.npz");
  write_samples(file, NpzWriterOptions{/*force_zip64=*/true});
  check_samples(load_npz(file));
  if (!has_numpy()) GTEST_SKIP() << "venv python without numpy: NumPy check skipped";
  std::string log;
  ASSERT_EQ(run_python(dir_, kNumpyCheck, "\"" + file + "\" 1", &log), 0) << log;
  EXPECT_NE(log.find("OK"), std::string::npos) << log;
}

TEST_F(NpzTest, AllDtypesRoundTrip) {
  const std::string file = path("dtypes.npz");
  std::map<std::string, torch::Tensor> want;
  want["b1"] = torch::tensor({true, false, true});
  want["u1"] = torch::tensor({0, 1, 255}, torch::kByte);
  want["i1"] = torch::tensor({-128, 0, 127}, torch::kChar);
  want["i2"] = torch::tensor({-32768, 5, 32767}, torch::kShort);
  want["u2"] = torch::tensor({0, 5, 65535}, torch::kInt).to(torch::kUInt16);
  want["i4"] = torch::tensor({-7, 0, 1 << 30}, torch::kInt).reshape({3, 1});
  want["i8"] = torch::tensor({int64_t{-1} << 40, int64_t{3}}, torch::kLong);
  want["f2"] = torch::tensor({0.5, -2.0}, torch::kHalf);
  want["f4"] = torch::tensor({1.5f, -0.25f, 3e10f, 7.0f}).reshape({2, 2});
  want["f8"] = torch::tensor({1e-300, -2.5});
  want["scalar"] = torch::tensor(42.0);
  want["empty"] = torch::zeros({0, 3}, torch::kFloat);
  {
    NpzWriter w(file);
    for (const auto& [k, v] : want) w.add_array(k, v);
    w.close();
  }
  const auto got = load_npz(file);
  ASSERT_EQ(got.size(), want.size());
  for (const auto& [k, v] : want) expect_equal(k, got.at(k), v);
}

TEST_F(NpzTest, ReadsNumpySavezAndSave) {
  if (!has_numpy()) GTEST_SKIP() << "venv python without numpy: NumPy-written files skipped";
  constexpr const char* kWriter = R"(
import sys
import numpy as np
d = sys.argv[1]
i = np.arange(24)
np.savez(d + "/np.npz", i.reshape(2, 3, 4).astype(np.uint8), i.astype(np.int64) - 5,
         f4=(i.reshape(4, 6) * 0.5).astype(np.float32), f8=i.astype(np.float64) / 3,
         i4=-i.astype(np.int32), b1=(i % 3 == 0), i2=i.astype(np.int16) - 12,
         u2=i.astype(np.uint16) * 1000, f2=i.astype(np.float16), s=np.int64(9),
         e=np.zeros((0, 5), np.float32), t=np.ascontiguousarray(i.reshape(4, 6).T))
np.save(d + "/plain.npy", (i.reshape(2, 12) * 1.25).astype(np.float32))
np.save(d + "/fortran.npy", np.asfortranarray(i.reshape(4, 6).astype(np.float32)))
np.save(d + "/big_endian.npy", i.astype(">f4"))
np.save(d + "/objects.npy", np.array([1, "a"], dtype=object), allow_pickle=True)
np.savez_compressed(d + "/compressed.npz", i)
with open(d + "/v2.npy", "wb") as f:
    np.lib.format.write_array(f, i.astype(np.int32), version=(2, 0))
print("OK")
)";
  std::string log;
  ASSERT_EQ(run_python(dir_, kWriter, "\"" + dir_ + "\"", &log), 0) << log;

  const auto i = torch::arange(24, torch::kLong);
  const auto got = load_npz(path("np.npz"));
  ASSERT_EQ(got.size(), 12u);
  expect_equal("arr_0", got.at("arr_0"), i.reshape({2, 3, 4}).to(torch::kByte));
  expect_equal("arr_1", got.at("arr_1"), i - 5);
  expect_equal("f4", got.at("f4"), (i.reshape({4, 6}) * 0.5).to(torch::kFloat));
  expect_equal("f8", got.at("f8"), i.to(torch::kDouble) / 3);
  expect_equal("i4", got.at("i4"), (-i).to(torch::kInt));
  expect_equal("b1", got.at("b1"), i % 3 == 0);
  expect_equal("i2", got.at("i2"), (i - 12).to(torch::kShort));
  expect_equal("u2", got.at("u2"), (i * 1000).to(torch::kUInt16));
  expect_equal("f2", got.at("f2"), i.to(torch::kHalf));
  expect_equal("s", got.at("s"), torch::tensor(int64_t{9}));
  expect_equal("e", got.at("e"), torch::zeros({0, 5}));
  expect_equal("t", got.at("t"), i.reshape({4, 6}).t().contiguous());

  expect_equal("plain.npy", load_npy(path("plain.npy")),
               (i.reshape({2, 12}) * 1.25).to(torch::kFloat));
  expect_equal("v2.npy", load_npy(path("v2.npy")), i.to(torch::kInt));
  expect_error([&] { load_npy(path("fortran.npy")); }, {"fortran.npy", "Fortran order"});
  expect_error([&] { load_npy(path("big_endian.npy")); }, {"big_endian.npy", "'>f4'"});
  expect_error([&] { load_npy(path("objects.npy")); }, {"objects.npy", "'|O'"});
  expect_equal("compressed arr_0", load_npz(path("compressed.npz")).at("arr_0"), i);
}

TEST_F(NpzTest, RowCountAndUsageErrors) {
  const std::string file = path("rows.npz");
  {
    NpzWriter w(file);
    w.begin_array("arr_0", torch::kByte, {5, 2, 2, 3});
    w.append(images(0, 3, 2, 2));
    expect_error([&] { w.end_array(); }, {file, "arr_0", "expected 5 rows", "found 3"});
    expect_error([&] { w.append(images(3, 3, 2, 2)); }, {file, "exceeds the declared 5 rows"});
    expect_error([&] { w.append(images(3, 2, 2, 2).to(torch::kFloat)); },
                 {file, "dtype Byte", "found Float"});
    expect_error([&] { w.append(torch::zeros({2, 2, 3, 3}, torch::kByte)); },
                 {file, "[n, 2, 2, 3]", "[2, 2, 3, 3]"});
    expect_error([&] { w.begin_array("arr_1", torch::kLong, {5}); }, {file, "arr_0", "open"});
    expect_error([&] { w.close(); }, {file, "arr_0", "3 of 5 rows"});
    w.append(images(3, 2, 2, 2));
    w.end_array();
    expect_error([&] { w.add_array("arr_0", torch::zeros({2})); }, {file, "already written"});
    expect_error([&] { w.begin_array("neg", torch::kByte, {-1, 3}); }, {file, ">= 0"});
    expect_error([&] { w.add_array("bf16", torch::zeros({2}, torch::kBFloat16)); },
                 {"BFloat16"});
    w.close();
    expect_error([&] { w.close(); }, {file, "after close()"});
    expect_error([&] { w.add_array("late", torch::zeros({2})); }, {file, "after close()"});
  }
  EXPECT_TRUE(fs::exists(file));
  expect_equal("arr_0", load_npz(file).at("arr_0"), images(0, 5, 2, 2));
}

TEST_F(NpzTest, DestroyedWriterRemovesTmpFile) {
  const std::string file = path("unfinished.npz");
  {
    NpzWriter w(file);
    w.begin_array("arr_0", torch::kByte, {4, 2, 2, 3});
    w.append(images(0, 2, 2, 2));
    EXPECT_TRUE(fs::exists(w.tmp_path()));
  }
  EXPECT_FALSE(fs::exists(file + ".tmp"));
  EXPECT_FALSE(fs::exists(file));
  expect_error([&] { NpzWriter w(path("no_such_dir/x.npz")); }, {"no_such_dir/x.npz.tmp"});
}

TEST_F(NpzTest, MalformedFilesAreErrors) {
  const std::string file = path("good.npz");
  const std::string bad = path("bad.npz");
  for (bool zip64 : {true, false}) {
    fs::remove(file);
    write_samples(file, NpzWriterOptions{zip64});
    const std::string good = read_bytes(file);
    // Every truncation is an aim::Error.
    for (size_t n = 0; n < good.size(); ++n) {
      write_bytes(bad, good.substr(0, n));
      EXPECT_THROW(load_npz(bad), Error) << "truncated to " << n << " of " << good.size();
    }
    // Every single-byte corruption is an error or leaves a file that reads back; never a crash.
    int errors = 0;
    for (size_t pos = 0; pos < good.size(); ++pos) {
      std::string b = good;
      b[pos] = static_cast<char>(b[pos] ^ 0x5A);
      write_bytes(bad, b);
      try {
        load_npz(bad);
      } catch (const Error&) {
        ++errors;
      }
    }
    EXPECT_GT(errors, static_cast<int>(good.size() / 2)) << "zip64 " << zip64;
  }
  const std::string good = read_bytes(file);
  // A flipped data byte is caught by the CRC.
  std::string b = good;
  b[good.size() / 3] ^= 1;
  write_bytes(bad, b);
  expect_error([&] { load_npz(bad); }, {"bad.npz", "arr_0.npy", "CRC-32 mismatch"});
  expect_error([&] { load_npz(path("missing.npz")); }, {"missing.npz", "cannot open"});
  write_bytes(bad, std::string(100, 'x'));
  expect_error([&] { load_npz(bad); }, {"bad.npz", "not a ZIP archive"});
  expect_error([&] { load_npy(bad); }, {"bad.npz", "not a .npy"});
}

// ------------------------------------------------------------------------------ NpzReader

/// Pseudo-random bytes that deflate cannot shrink much: an integer hash of the index, exact in
/// int64 (no overflow for i < 2^31), written the same way in the Python writers below.
torch::Tensor noise(int64_t first, int64_t n) {
  constexpr int64_t k32 = int64_t{1} << 32;
  auto x = (torch::arange(first, first + n, torch::kLong) * int64_t{2654435761}).remainder(k32);
  x = torch::bitwise_xor(x, torch::floor_divide(x, 65536));
  x = (x * int64_t{0x45d9f3b}).remainder(k32);
  x = torch::bitwise_xor(x, torch::floor_divide(x, 65536));
  return x.remainder(256);
}

/// The arrays kArrayWriter stores, by name.
std::map<std::string, torch::Tensor> interop_arrays() {
  std::map<std::string, torch::Tensor> a;
  a["arr_0"] = noise(0, 1000 * 16 * 16 * 3).to(torch::kByte).reshape({1000, 16, 16, 3});
  const auto i = torch::arange(600, torch::kLong);
  a["f4"] = ((noise(7, 600) - 128).to(torch::kFloat) * 0.25f).reshape({200, 3});
  a["f8"] = (i.to(torch::kDouble) / 3).reshape({100, 6});
  a["f2"] = (i.slice(0, 0, 64).to(torch::kHalf) * 0.5).reshape({16, 4});
  a["i8"] = (noise(3, 300) * 1000003 - 5).reshape({150, 2});
  a["i4"] = (-i).to(torch::kInt);
  a["u2"] = (i.slice(0, 0, 90) * 700).to(torch::kInt).to(torch::kUInt16);
  a["b1"] = (i % 3 == 0).reshape({60, 10});
  a["s"] = torch::tensor(int64_t{9});
  a["e"] = torch::zeros({0, 5}, torch::kFloat);
  return a;
}

constexpr const char* kArrayWriter = R"(
import sys
import numpy as np
d = sys.argv[1]
def noise(first, n):
    x = np.arange(first, first + n, dtype=np.int64) * 2654435761 % 2**32
    x ^= x // 65536
    x = x * 0x45D9F3B % 2**32
    x ^= x // 65536
    return x % 256
i = np.arange(600, dtype=np.int64)
arrays = dict(
    arr_0=noise(0, 1000 * 16 * 16 * 3).astype(np.uint8).reshape(1000, 16, 16, 3),
    f4=((noise(7, 600) - 128).astype(np.float32) * np.float32(0.25)).reshape(200, 3),
    f8=(i.astype(np.float64) / 3).reshape(100, 6),
    f2=(i[:64].astype(np.float16) * np.float16(0.5)).reshape(16, 4),
    i8=(noise(3, 300) * 1000003 - 5).reshape(150, 2),
    i4=(-i).astype(np.int32),
    u2=(i[:90] * 700).astype(np.uint16),
    b1=(i % 3 == 0).reshape(60, 10),
    s=np.int64(9),
    e=np.zeros((0, 5), np.float32),
)
np.savez(d + "/stored.npz", **arrays)
np.savez_compressed(d + "/deflated.npz", **arrays)
print("OK")
)";

/// Batches of `batch` rows of member `name`, concatenated.
torch::Tensor read_in_batches(NpzReader& r, const std::string& name, int64_t batch) {
  std::vector<torch::Tensor> parts;
  const int64_t n = r.member(name).rows();
  for (int64_t s = 0; s < n; s += batch) {
    torch::Tensor t = r.read_rows(name, s, std::min(batch, n - s));
    EXPECT_EQ(t.size(0), std::min(batch, n - s));
    parts.push_back(t);
  }
  return parts.empty() ? r.read_rows(name, 0, 0) : torch::cat(parts);
}

TEST_F(NpzTest, ReaderReadsNumpySavezAndSavezCompressed) {
  if (!has_numpy()) GTEST_SKIP() << "venv python without numpy: NumPy-written files skipped";
  std::string log;
  ASSERT_EQ(run_python(dir_, kArrayWriter, "\"" + dir_ + "\"", &log), 0) << log;
  const auto want = interop_arrays();
  for (const char* file : {"stored.npz", "deflated.npz"}) {
    SCOPED_TRACE(file);
    const bool deflated = std::string(file) == "deflated.npz";
    // Whole members, through load_npz.
    const auto got = load_npz(path(file));
    ASSERT_EQ(got.size(), want.size());
    for (const auto& [k, v] : want) expect_equal(k, got.at(k), v);

    NpzReader r(path(file));
    EXPECT_EQ(r.path(), path(file));
    ASSERT_EQ(r.members().size(), want.size());
    EXPECT_EQ(r.members().front().name, "arr_0");  // archive order
    for (const NpzMemberInfo& m : r.members()) {
      const torch::Tensor& v = want.at(m.name);
      EXPECT_EQ(m.dtype, v.scalar_type()) << m.name;
      EXPECT_EQ(m.shape, v.sizes().vec()) << m.name;
      EXPECT_EQ(m.compressed, deflated) << m.name;
      EXPECT_EQ(m.rows(), v.dim() == 0 ? 1 : v.size(0)) << m.name;
      if (!deflated) EXPECT_EQ(m.compressed_size, m.uncompressed_size) << m.name;
    }
    EXPECT_TRUE(r.contains("f4"));
    EXPECT_FALSE(r.contains("mu"));
    expect_error([&] { r.member("mu"); }, {file, "no member 'mu'", "arr_0, "});

    // Batches equal the whole, for every member with rows; ranges equal slices.
    for (const auto& [k, v] : want) {
      if (v.dim() == 0) {
        expect_equal(k, r.read(k), v);
        expect_error([&, k = k] { r.read_rows(k, 0, 1); }, {file, k + ".npy", "0-d"});
        continue;
      }
      for (int64_t batch : {1, 7, 250}) expect_equal(k + " in batches", read_in_batches(r, k, batch), v);
    }
    const torch::Tensor& images = want.at("arr_0");
    expect_equal("rows [13, 63)", r.read_rows("arr_0", 13, 50), images.slice(0, 13, 63));
    expect_equal("rows [999, 1000)", r.read_rows("arr_0", 999, 1), images.slice(0, 999, 1000));
    expect_equal("rows [1000, 1000)", r.read_rows("arr_0", 1000, 0), images.slice(0, 0, 0));
    // Backwards: a deflated member restarts from its first byte.
    expect_equal("rows [900, 910)", r.read_rows("arr_0", 900, 10), images.slice(0, 900, 910));
    expect_equal("rows [5, 9) after 900", r.read_rows("arr_0", 5, 4), images.slice(0, 5, 9));
    expect_equal("rows [4, 5) after 9", r.read_rows("arr_0", 4, 1), images.slice(0, 4, 5));
    expect_equal("f4 between arr_0 reads", r.read_rows("f4", 100, 50), want.at("f4").slice(0, 100, 150));
    expect_equal("rows [9, 400) after f4", r.read_rows("arr_0", 9, 391), images.slice(0, 9, 400));
    expect_equal("whole arr_0 again", r.read("arr_0"), images);
    expect_error([&] { r.read_rows("arr_0", 990, 11); },
                 {file, "arr_0.npy", "rows [990, 990 + 11)", "1000 rows"});
    expect_error([&] { r.read_rows("arr_0", -1, 2); }, {file, "arr_0.npy", "outside"});
  }
}

TEST_F(NpzTest, ReaderReadsForcedZip64InBatches) {
  for (bool zip64 : {true, false}) {
    const std::string file = path(zip64 ? "zip64.npz" : "plain.npz");
    write_samples(file, NpzWriterOptions{zip64});
    NpzReader r(file);
    ASSERT_EQ(r.members().size(), 2u);
    EXPECT_EQ(r.member("arr_0").shape, (std::vector<int64_t>{10, 4, 5, 3}));
    EXPECT_FALSE(r.member("arr_0").compressed);
    for (int64_t batch : {1, 3, 4, 10})
      expect_equal("arr_0 in batches", read_in_batches(r, "arr_0", batch), images(0, 10, 4, 5));
    expect_equal("arr_0 rows [6, 9)", r.read_rows("arr_0", 6, 3), images(6, 3, 4, 5));
    expect_equal("arr_1", r.read("arr_1"), torch::arange(10, torch::kLong) * 100 - 7);
  }
}

TEST_F(NpzTest, StoredCrcIsCheckedWhenReadToTheEnd) {
  const std::string file = path("samples.npz"), bad = path("bad.npz");
  write_samples(file);
  std::string b = read_bytes(file);
  b[200] ^= 1;  // inside arr_0's data (10 x 60 bytes after a 128-byte header + local header)
  write_bytes(bad, b);
  NpzReader r(bad);
  // Rows read at random are not verified (that needs every byte); a sequential pass is.
  EXPECT_EQ(r.read_rows("arr_0", 5, 2).size(0), 2);
  for (int64_t s = 0; s < 9; s += 3) r.read_rows("arr_0", s, 3);
  expect_error([&] { r.read_rows("arr_0", 9, 1); }, {"bad.npz", "arr_0.npy", "CRC-32 mismatch"});
  expect_error([&] { r.read("arr_0"); }, {"bad.npz", "arr_0.npy", "CRC-32 mismatch"});
  expect_error([&] { load_npz(bad); }, {"bad.npz", "arr_0.npy", "CRC-32 mismatch"});
  expect_equal("arr_1 is intact", r.read("arr_1"), torch::arange(10, torch::kLong) * 100 - 7);
}

// Hand-made archives of one deflated member: good, truncated stream, wrong CRC, corrupt bytes,
// a stream longer than the directory says, and a size that disagrees with the .npy header.
constexpr const char* kBadDeflateWriter = R"(
import io, struct, sys, zlib
import numpy as np
d = sys.argv[1]
def write_zip(path, data, crc, usize, name=b"arr_0.npy"):
    local = struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, 0, 8, 0, 33, crc, len(data), usize,
                        len(name), 0) + name
    central = struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 20, 20, 0, 8, 0, 33, crc, len(data),
                          usize, len(name), 0, 0, 0, 0, 0, 0) + name
    end = struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, 1, 1, len(central), len(local) + len(data), 0)
    open(path, "wb").write(local + data + central + end)
def noise(first, n):
    x = np.arange(first, first + n, dtype=np.int64) * 2654435761 % 2**32
    x ^= x // 65536
    x = x * 0x45D9F3B % 2**32
    x ^= x // 65536
    return x % 256
a = noise(0, 64 * 40).astype(np.uint8).reshape(64, 40)
buf = io.BytesIO()
np.lib.format.write_array(buf, a)
raw = buf.getvalue()
def deflate(b):
    c = zlib.compressobj(6, zlib.DEFLATED, -15)
    return c.compress(b) + c.flush()
comp, crc = deflate(raw), zlib.crc32(raw)
write_zip(d + "/good.npz", comp, crc, len(raw))
write_zip(d + "/truncated_stream.npz", comp[: len(comp) * 3 // 4], crc, len(raw))
write_zip(d + "/bad_crc.npz", comp, crc ^ 0x10, len(raw))
bad = bytearray(comp)
for k in range(len(bad) // 2, len(bad) // 2 + 16):
    bad[k] ^= 0xA5
write_zip(d + "/corrupt.npz", bytes(bad), crc, len(raw))
write_zip(d + "/longer.npz", deflate(raw + b"0123456789"), zlib.crc32(raw + b"0123456789"), len(raw))
write_zip(d + "/size_mismatch.npz", comp, crc, len(raw) - 40)
print("OK")
)";

TEST_F(NpzTest, CorruptDeflatedMembersAreErrorsNamingTheMember) {
  if (!has_numpy()) GTEST_SKIP() << "venv python without numpy: hand-made archives skipped";
  std::string log;
  ASSERT_EQ(run_python(dir_, kBadDeflateWriter, "\"" + dir_ + "\"", &log), 0) << log;
  const torch::Tensor want = noise(0, 64 * 40).to(torch::kByte).reshape({64, 40});
  expect_equal("good", load_npz(path("good.npz")).at("arr_0"), want);
  {
    NpzReader r(path("good.npz"));
    EXPECT_TRUE(r.member("arr_0").compressed);
    expect_equal("good in batches", read_in_batches(r, "arr_0", 5), want);
  }
  expect_error([&] { load_npz(path("truncated_stream.npz")); },
               {"truncated_stream.npz", "arr_0.npy", "truncated or corrupt"});
  expect_error([&] { load_npz(path("bad_crc.npz")); },
               {"bad_crc.npz", "arr_0.npy", "CRC-32 mismatch"});
  expect_error([&] { load_npz(path("corrupt.npz")); }, {"corrupt.npz", "arr_0.npy", "corrupt"});
  expect_error([&] { load_npz(path("longer.npz")); },
               {"longer.npz", "arr_0.npy", "holds more than"});
  expect_error([&] { load_npz(path("size_mismatch.npz")); },
               {"size_mismatch.npz", "arr_0.npy", "needs 2560 bytes"});
  {
    // The error comes from the read that reaches the damage, with rows before it intact.
    NpzReader r(path("bad_crc.npz"));
    expect_equal("rows before the end", r.read_rows("arr_0", 0, 63), want.slice(0, 0, 63));
    expect_error([&] { r.read_rows("arr_0", 63, 1); }, {"bad_crc.npz", "arr_0.npy", "CRC-32"});
  }
  // Every truncation and every byte flip of a deflated archive is an error or reads back.
  const std::string good = read_bytes(path("good.npz"));
  const std::string bad = path("bad.npz");
  for (size_t n = 0; n < good.size(); ++n) {
    write_bytes(bad, good.substr(0, n));
    EXPECT_THROW(load_npz(bad), Error) << "truncated to " << n << " of " << good.size();
  }
  write_bytes(bad, good.substr(0, good.size() / 2));
  expect_error([&] { load_npz(bad); }, {"bad.npz", "not a ZIP archive", "truncated"});
  int errors = 0;
  for (size_t pos = 0; pos < good.size(); ++pos) {
    std::string b = good;
    b[pos] = static_cast<char>(b[pos] ^ 0x5A);
    write_bytes(bad, b);
    try {
      const auto got = load_npz(bad);
      if (got.count("arr_0")) EXPECT_TRUE(torch::equal(got.at("arr_0"), want)) << "flip at " << pos;
    } catch (const Error&) {
      ++errors;
    }
  }
  EXPECT_GT(errors, static_cast<int>(good.size() * 9 / 10));
}

// Set AIM_NPZ_LARGE_TEST=1 to write and read back a 4.6 GB archive (arr_0 past 4 GiB, so arr_1's
// offset needs ZIP64) in batches of 250 256x256 images; a few minutes and 4.6 GB of disk.
TEST_F(NpzTest, LargeZip64ArchiveInBatches) {
  const char* env = std::getenv("AIM_NPZ_LARGE_TEST");
  if (!env || std::string(env) != "1") GTEST_SKIP() << "set AIM_NPZ_LARGE_TEST=1 to run";
  const std::string file = path("large.npz");
  const int64_t n = 23500, h = 256, w = 256, batch = 250;  // 4.62e9 bytes of arr_0
  auto rows = [&](int64_t first, int64_t count) {
    // Each image filled with its index's low byte, one marker pixel with the next byte.
    auto t = (torch::arange(first, first + count, torch::kLong) % 251)
                 .to(torch::kByte)
                 .reshape({count, 1, 1, 1})
                 .expand({count, h, w, 3})
                 .contiguous();
    t.select(1, 7).select(1, 9).select(1, 2).copy_(
        (torch::arange(first, first + count, torch::kLong) / 251).to(torch::kByte));
    return t;
  };
  {
    NpzWriter writer(file);
    writer.begin_array("arr_0", torch::kByte, {n, h, w, 3});
    for (int64_t s = 0; s < n; s += batch) writer.append(rows(s, std::min(batch, n - s)));
    writer.end_array();
    writer.add_array("arr_1", torch::arange(n, torch::kLong));
    writer.close();
  }
  NpzReader r(file);
  EXPECT_GT(r.member("arr_0").uncompressed_size, uint64_t{1} << 32);
  expect_equal("arr_1 (offset past 4 GiB)", r.read("arr_1"), torch::arange(n, torch::kLong));
  for (int64_t s = 0; s < n; s += batch) {
    const int64_t c = std::min(batch, n - s);
    const torch::Tensor got = r.read_rows("arr_0", s, c);  // CRC checked by the last batch
    ASSERT_TRUE(torch::equal(got, rows(s, c))) << "rows [" << s << ", " << s + c << ")";
  }
  expect_equal("rows [20000, 20003)", r.read_rows("arr_0", 20000, 3), rows(20000, 3));
  if (has_numpy()) {
    std::string log;
    ASSERT_EQ(run_python(dir_, R"(
import sys
import numpy as np
d = np.load(sys.argv[1])
assert d["arr_1"].shape == (23500,) and int(d["arr_1"][-1]) == 23499
print("OK")
)", "\"" + file + "\"", &log), 0) << log;
  }
}

}  // namespace
}  // namespace aim

#pragma once
// NumPy .npy and .npz files. The writer streams a ZIP archive of STORED `<name>.npy` members
// (ZIP64 where sizes or offsets need it), so 50k 256x256 samples (~9.8 GB) never sit in memory;
// np.load(path)["arr_0"] reads the result, as the ADM evaluator does. The reader streams rows of
// one member out of an np.savez (stored) or np.savez_compressed (deflated) archive, equally in
// constant memory.
// Supported dtypes: b1, u1, i1, u2, i2, i4, i8, f2, f4, f8 (little-endian, C order).
#include <torch/torch.h>

#include <cstdint>
#include <cstdio>
#include <map>
#include <memory>
#include <string>
#include <vector>

namespace aim {

/// Options of NpzWriter.
struct NpzWriterOptions {
  /// Writes ZIP64 records (local, central and end of directory) even when every size and
  /// offset fits in 32 bits; lets tests check the >4 GiB layout on a small file.
  bool force_zip64 = false;
};

/// Streaming .npz writer. Writes `path + ".tmp"` and renames it to `path` on close(); a writer
/// destroyed before close() removes its tmp file. Every error is an aim::Error naming the file.
///
///   NpzWriter w("samples.npz");
///   w.begin_array("arr_0", torch::kByte, {N, H, W, 3});
///   for (...) w.append(chunk);   // [n, H, W, 3] uint8, CPU
///   w.end_array();
///   w.add_array("arr_1", labels);  // [N] int64
///   w.close();
class NpzWriter {
 public:
  /// Opens `path + ".tmp"` for writing.
  explicit NpzWriter(const std::string& path, NpzWriterOptions options = {});
  ~NpzWriter();
  NpzWriter(const NpzWriter&) = delete;
  NpzWriter& operator=(const NpzWriter&) = delete;

  /// Starts member `<name>.npy` holding an array of `dtype` and `shape`; rows follow through
  /// append(). Only one array is open at a time; names are unique.
  void begin_array(const std::string& name, torch::ScalarType dtype, std::vector<int64_t> shape);
  /// Appends `rows`: [n, shape[1:]...] of the open array's dtype on the CPU (a 0-d array takes
  /// one 0-d tensor). The rows written so far may not exceed shape[0].
  void append(const torch::Tensor& rows);
  /// Finishes the open array; the rows written must equal shape[0].
  void end_array();
  /// begin_array + append + end_array for a whole tensor (e.g. `arr_1`, [N] int64 labels).
  void add_array(const std::string& name, const torch::Tensor& tensor);
  /// Writes the central directory, flushes, and renames the tmp file to path(). Throws when an
  /// array is still open or when called twice.
  void close();

  /// Final path of the archive.
  const std::string& path() const { return path_; }
  /// Path written until close().
  std::string tmp_path() const { return path_ + ".tmp"; }

 private:
  struct Member {
    std::string file_name;  // "<name>.npy"
    uint64_t header_offset = 0;
    uint64_t size = 0;
    uint32_t crc = 0;
    bool zip64_local = false;
  };

  void write_raw(const void* data, size_t n);
  void write_member_bytes(const void* data, size_t n);
  void check_usable(const char* what) const;
  [[noreturn]] void fail(const std::string& message);

  std::string path_;
  NpzWriterOptions options_;
  std::FILE* file_ = nullptr;
  uint64_t offset_ = 0;
  std::vector<Member> members_;
  bool closed_ = false;
  bool failed_ = false;

  // The open array, if any.
  bool in_array_ = false;
  std::string array_name_;
  torch::ScalarType array_dtype_ = torch::kByte;
  std::vector<int64_t> array_shape_;
  int64_t rows_expected_ = 0;
  int64_t rows_written_ = 0;
  uint32_t crc_state_ = 0;
};

/// One `<name>.npy` member of an .npz archive, as NpzReader lists it.
struct NpzMemberInfo {
  std::string name;                        ///< key without ".npy" ("arr_0")
  torch::ScalarType dtype = torch::kByte;
  std::vector<int64_t> shape;              ///< [] for a 0-d array
  bool compressed = false;                 ///< deflated (np.savez_compressed), else stored
  uint64_t compressed_size = 0;            ///< bytes in the archive
  uint64_t uncompressed_size = 0;          ///< bytes of the .npy (header + data)
  /// shape[0]; 1 for a 0-d array.
  int64_t rows() const { return shape.empty() ? 1 : shape[0]; }
};

/// Streaming .npz reader (np.savez, np.savez_compressed, NpzWriter; ZIP64 included). Opening
/// reads the central directory and each member's .npy header; read_rows() then reads rows
/// [start, start + count) of one member without touching the rest:
/// - stored members seek to the rows;
/// - deflated members decode sequentially through zlib from where the last read of that member
///   stopped, and restart from the member's first byte when asked to go backwards, so reading
///   in increasing order costs one pass over the archive.
/// The CRC-32 is checked whenever a member is read up to its end in one sequential pass from
/// row 0 (always for deflated members, whose decoding is always sequential; for stored ones
/// when the reads since the last read of row 0 were contiguous). Every error is an aim::Error
/// naming the file and, past the directory, the member ("<path>: member 'arr_0.npy': ...").
/// One reader is not safe to use from several threads at once.
///
///   NpzReader r("samples.npz");
///   const int64_t n = r.member("arr_0").rows();
///   for (int64_t i = 0; i < n; i += 250)
///     auto batch = r.read_rows("arr_0", i, std::min<int64_t>(250, n - i));  // [b, H, W, 3] u8
class NpzReader {
 public:
  /// Opens `path` and lists its members.
  explicit NpzReader(const std::string& path);
  ~NpzReader();
  NpzReader(NpzReader&&) noexcept;
  NpzReader& operator=(NpzReader&&) noexcept;
  NpzReader(const NpzReader&) = delete;
  NpzReader& operator=(const NpzReader&) = delete;

  const std::string& path() const;
  /// Members in archive order.
  const std::vector<NpzMemberInfo>& members() const { return members_; }
  /// Whether a member `name` (without ".npy") exists.
  bool contains(const std::string& name) const;
  /// The member `name`; an error listing the members when there is none.
  const NpzMemberInfo& member(const std::string& name) const;
  /// Rows [start, start + count) of member `name` ([count, shape[1:]...], CPU, its dtype).
  /// 0-d members have no rows (use read()).
  torch::Tensor read_rows(const std::string& name, int64_t start, int64_t count);
  /// The whole member, CRC checked.
  torch::Tensor read(const std::string& name);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
  std::vector<NpzMemberInfo> members_;
};

/// Reads a .npy file into a CPU tensor of its dtype and shape. Malformed files, Fortran order,
/// big-endian or unsupported dtypes are an aim::Error naming the file.
torch::Tensor load_npy(const std::string& path);

/// Reads every member of an .npz (stored or deflated members, ZIP64 included) through
/// NpzReader; keys drop the ".npy" suffix ("arr_0"). Malformed archives, corrupt data and CRC
/// mismatches are an aim::Error naming the file and member.
std::map<std::string, torch::Tensor> load_npz(const std::string& path);

/// NumPy descr ("|u1", "<i8", "<f4", ...) of a torch dtype; throws for dtypes NumPy lacks.
std::string npy_descr(torch::ScalarType dtype);

/// CRC-32 (ZIP / IEEE 802.3) of `n` bytes continuing from `crc` (0 to start).
uint32_t crc32_update(uint32_t crc, const void* data, size_t n);

}  // namespace aim

// safetensors reading through mmap and atomic writing (tmp file, fsync, rename).
#include "aim/core/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <limits>
#include <set>
#include <torch/torch.h>

#include "aim/core/error.h"
#include "aim/core/fileio.h"

// safetensors data is little-endian; the views below reinterpret it in place.
static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "aim assumes a little-endian host");

namespace aim {
namespace {

constexpr const char* kSupportedTorchDtypes =
    "Double, Float, Half, BFloat16, Long, Int, Short, UInt16, Byte";

std::string errno_text(int err) { return str_cat(std::strerror(err), " (errno ", err, ")"); }

/// Closes a file descriptor on scope exit unless released.
class FdGuard {
 public:
  explicit FdGuard(int fd) : fd_(fd) {}
  ~FdGuard() {
    if (fd_ >= 0) ::close(fd_);
  }
  FdGuard(const FdGuard&) = delete;
  FdGuard& operator=(const FdGuard&) = delete;
  int get() const { return fd_; }
  int release() {
    const int fd = fd_;
    fd_ = -1;
    return fd;
  }

 private:
  int fd_;
};

/// Writes all of [data, data + size) to fd, retrying short writes and EINTR.
void write_all(int fd, const void* data, size_t size, const std::string& tmp_path,
               const std::string& path) {
  const char* p = static_cast<const char*>(data);
  while (size > 0) {
    // Linux writes at most about 2 GiB per call; ask for at most 1 GiB.
    const size_t chunk = std::min<size_t>(size, size_t{1} << 30);
    const ssize_t written = ::write(fd, p, chunk);
    if (written < 0) {
      if (errno == EINTR) continue;
      throw Error(str_cat(path, ": writing ", tmp_path, " failed: ", errno_text(errno),
                          "; the previous ", path, " (if any) is untouched"));
    }
    if (written == 0) {
      throw Error(str_cat(path, ": writing ", tmp_path, " made no progress with ", size,
                          " bytes left; the previous ", path, " (if any) is untouched"));
    }
    p += written;
    size -= static_cast<size_t>(written);
  }
}

}  // namespace

torch::ScalarType to_torch_dtype(StDType dtype) {
  switch (dtype) {
    case StDType::F64: return torch::kDouble;
    case StDType::F32: return torch::kFloat;
    case StDType::F16: return torch::kHalf;
    case StDType::BF16: return torch::kBFloat16;
    case StDType::I64: return torch::kLong;
    case StDType::I32: return torch::kInt;
    case StDType::I16: return torch::kShort;
    case StDType::U16: return torch::kUInt16;
    case StDType::U8: return torch::kByte;
  }
  throw Error(str_cat("invalid StDType value ", static_cast<int>(dtype)));
}

StDType from_torch_dtype(torch::ScalarType dtype) {
  switch (dtype) {
    case torch::kDouble: return StDType::F64;
    case torch::kFloat: return StDType::F32;
    case torch::kHalf: return StDType::F16;
    case torch::kBFloat16: return StDType::BF16;
    case torch::kLong: return StDType::I64;
    case torch::kInt: return StDType::I32;
    case torch::kShort: return StDType::I16;
    case torch::kUInt16: return StDType::U16;
    case torch::kByte: return StDType::U8;
    default: break;
  }
  std::string hint;
  if (dtype == torch::kBool) hint = " ---> HINT: store masks as Byte (tensor.to(torch::kUInt8))";
  throw Error(str_cat("safetensors: torch dtype ", c10::toString(dtype),
                      " is not supported: expected one of ", kSupportedTorchDtypes, hint));
}

/// The read-only mapping of a whole file; tensors viewing it hold a shared_ptr to it.
struct SafetensorsFile::Mapping {
  void* addr = nullptr;
  size_t size = 0;
  Mapping(void* a, size_t s) : addr(a), size(s) {}
  ~Mapping() {
    if (addr != nullptr) ::munmap(addr, size);
  }
  Mapping(const Mapping&) = delete;
  Mapping& operator=(const Mapping&) = delete;
  const uint8_t* bytes() const { return static_cast<const uint8_t*>(addr); }
};

SafetensorsFile::SafetensorsFile(const std::string& path) : path_(path) {
  FdGuard fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  AIM_CHECK(fd.get() >= 0, path, ": cannot open safetensors file: ", errno_text(errno));
  struct stat st {};
  AIM_CHECK(::fstat(fd.get(), &st) == 0, path, ": cannot stat: ", errno_text(errno));
  AIM_CHECK(S_ISREG(st.st_mode), path, ": expected a regular safetensors file, found ",
            S_ISDIR(st.st_mode) ? "a directory" : "a special file");
  const uint64_t size = static_cast<uint64_t>(st.st_size);
  AIM_CHECK(size != 0, path, ": file is empty: expected a safetensors file (8-byte header "
            "length, JSON header, data)");
  AIM_CHECK(size >= 8, path, ": file is ", size,
            " bytes: expected at least 8 (the little-endian header length)");
  AIM_CHECK(size <= std::numeric_limits<size_t>::max(), path, ": file of ", size,
            " bytes does not fit the address space");
  // The mapping pins the inode: a file replaced by rename (as save_safetensors does) keeps its
  // old bytes here. One rewritten in place would not, and one truncated faults (SIGBUS).
  void* addr = ::mmap(nullptr, static_cast<size_t>(size), PROT_READ, MAP_PRIVATE, fd.get(), 0);
  AIM_CHECK(addr != MAP_FAILED, path, ": cannot mmap ", size, " bytes: ", errno_text(errno));
  mapping_ = std::make_shared<Mapping>(addr, static_cast<size_t>(size));
  try {
    header_ = parse_safetensors_header(mapping_->bytes(), mapping_->size, size, path);
  } catch (const Error&) {
    // (Only now: a real header's length may begin with a pickle's two bytes.)
    refuse_torch_pickle(path);
    throw;
  }
  for (size_t i = 0; i < header_.tensors.size(); ++i) index_.emplace(header_.tensors[i].name, i);
}

SafetensorsFile::~SafetensorsFile() = default;

bool SafetensorsFile::contains(const std::string& name) const { return index_.count(name) != 0; }

const StTensorInfo& SafetensorsFile::info(const std::string& name) const {
  const auto it = index_.find(name);
  if (it == index_.end()) {
    std::string some;
    size_t shown = 0;
    for (const auto& kv : index_) {
      if (shown++ == 8) {
        some += ", ...";
        break;
      }
      some += str_cat(shown > 1 ? ", " : "", "\"", kv.first, "\"");
    }
    throw Error(str_cat(path_, ": no tensor \"", name, "\": expected one of the ", index_.size(),
                        " tensors in the file (", some, ")"));
  }
  return header_.tensors[it->second];
}

torch::Tensor SafetensorsFile::get(const std::string& name) const {
  const StTensorInfo& t = info(name);
  const auto options = torch::TensorOptions().dtype(to_torch_dtype(t.dtype));
  if (t.begin == t.end) return torch::empty(t.shape, options);
  const uint8_t* data = mapping_->bytes() + header_.data_offset + t.begin;
  const size_t nbytes = static_cast<size_t>(t.end - t.begin);
  // Writers that do not align (ours and Python's do) would give views that trap or run slowly
  // on unaligned loads; such tensors are copied instead.
  if (reinterpret_cast<uintptr_t>(data) % st_dtype_size(t.dtype) != 0) {
    torch::Tensor copy = torch::empty(t.shape, options);
    std::memcpy(copy.data_ptr(), data, nbytes);
    return copy;
  }
  std::shared_ptr<Mapping> keep = mapping_;
  return torch::from_blob(const_cast<uint8_t*>(data), t.shape,
                          [keep](void*) mutable { keep.reset(); }, options);
}

std::map<std::string, torch::Tensor> SafetensorsFile::load_all() const {
  std::map<std::string, torch::Tensor> out;
  for (const StTensorInfo& t : header_.tensors) out.emplace(t.name, get(t.name));
  return out;
}

void save_safetensors(const std::string& path,
                      const std::vector<std::pair<std::string, torch::Tensor>>& tensors,
                      const std::map<std::string, std::string>& metadata) {
  refuse_unreplaceable(path);
  std::set<std::string> names;
  std::vector<torch::Tensor> data;
  std::vector<StTensorInfo> infos;
  data.reserve(tensors.size());
  infos.reserve(tensors.size());
  for (const auto& [name, tensor] : tensors) {
    AIM_CHECK(!name.empty() && name != "__metadata__", path, ": tensor name \"", name,
              "\": expected a non-empty name other than __metadata__");
    AIM_CHECK(names.insert(name).second, path, ": tensor \"", name,
              "\" is given twice: expected unique names");
    AIM_CHECK(tensor.defined(), path, ": tensor \"", name, "\" is undefined");
    AIM_CHECK(tensor.layout() == torch::kStrided, path, ": tensor \"", name,
              "\": expected a dense (strided) tensor, found layout ", tensor.layout());
    StDType dtype = StDType::F32;
    try {
      dtype = from_torch_dtype(tensor.scalar_type());
    } catch (const Error& e) {
      throw Error(str_cat(path, ": tensor \"", name, "\": ", e.what()));
    }
    StTensorInfo info;
    info.name = name;
    info.dtype = dtype;
    info.shape = tensor.sizes().vec();
    infos.push_back(std::move(info));
    data.push_back(tensor.detach().to(torch::kCPU).contiguous());
  }

  // Largest items first: each tensor's byte size is a multiple of its item size, so every
  // offset is then a multiple of the item size of the tensor placed there (aligned views).
  std::vector<size_t> order(infos.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) {
    return st_dtype_size(infos[a].dtype) > st_dtype_size(infos[b].dtype);
  });
  std::vector<StTensorInfo> laid_out;
  laid_out.reserve(order.size());
  uint64_t offset = 0;
  for (size_t i : order) {
    StTensorInfo info = infos[i];
    info.begin = offset;
    info.end = offset + static_cast<uint64_t>(data[i].numel()) * st_dtype_size(info.dtype);
    offset = info.end;
    laid_out.push_back(std::move(info));
  }
  std::string header;
  try {
    header = serialize_safetensors_header(laid_out, metadata);
  } catch (const Error& e) {
    throw Error(str_cat(path, ": ", e.what()));
  }

  const std::string tmp_path = path + ".tmp";
  std::error_code ec;  // a missing folder is made (a failure shows at the open below)
  std::filesystem::create_directories(std::filesystem::path(path).parent_path(), ec);
  FdGuard fd(::open(tmp_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644));
  AIM_CHECK(fd.get() >= 0, path, ": cannot create the temporary file ", tmp_path, ": ",
            errno_text(errno), "; the previous ", path, " (if any) is untouched");
  // From here on the tmp file is ours: any failure removes it before rethrowing.
  try {
    write_all(fd.get(), header.data(), header.size(), tmp_path, path);
    for (size_t i : order) {
      const size_t nbytes = data[i].numel() * data[i].element_size();
      if (nbytes > 0) write_all(fd.get(), data[i].data_ptr(), nbytes, tmp_path, path);
    }
    AIM_CHECK(::fsync(fd.get()) == 0, path, ": fsync of ", tmp_path, " failed: ",
              errno_text(errno), "; the previous ", path, " (if any) is untouched");
    AIM_CHECK(::close(fd.release()) == 0, path, ": closing ", tmp_path, " failed: ",
              errno_text(errno), "; the previous ", path, " (if any) is untouched");
    AIM_CHECK(::rename(tmp_path.c_str(), path.c_str()) == 0, path, ": renaming ", tmp_path,
              " to it failed: ", errno_text(errno), "; the previous ", path,
              " (if any) is untouched");
  } catch (...) {
    const int fd_left = fd.release();
    if (fd_left >= 0) ::close(fd_left);
    ::unlink(tmp_path.c_str());
    throw;
  }

  // Make the rename itself durable. The file is complete under `path` by now, so a directory
  // that cannot be opened or synced (some filesystems refuse) is not reported as a failure.
  const size_t slash = path.rfind('/');
  const std::string dir =
      slash == std::string::npos ? "." : (slash == 0 ? "/" : path.substr(0, slash));
  const int dir_fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dir_fd >= 0) {
    ::fsync(dir_fd);
    ::close(dir_fd);
  }
}

std::map<std::string, torch::Tensor> load_safetensors(const std::string& path) {
  const SafetensorsFile file(path);
  std::map<std::string, torch::Tensor> out;
  for (const StTensorInfo& t : file.entries()) out.emplace(t.name, file.get(t.name).clone());
  return out;
}

}  // namespace aim

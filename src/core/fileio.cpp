#include "aim/core/fileio.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <vector>

#include "aim/core/error.h"

namespace aim {

namespace {

/// N where `name` is /dev/fd/N, /proc/self/fd/N or /proc/<this pid>/fd/N; -1 otherwise.
int fd_of_name(const std::string& name) {
  std::string digits;
  const std::string own = str_cat("/proc/", ::getpid(), "/fd/");
  for (const std::string prefix : {std::string("/dev/fd/"), std::string("/proc/self/fd/"), own}) {
    if (name.size() > prefix.size() && name.compare(0, prefix.size(), prefix) == 0) {
      digits = name.substr(prefix.size());
      break;
    }
  }
  if (digits.empty() || digits.size() > 9 || digits.find_first_not_of("0123456789") != std::string::npos) return -1;
  return std::stoi(digits);
}

/// Writes all of `text` to `fd` (short writes continued, EINTR retried): 0, or the errno.
int write_all(int fd, const std::string& text) {
  size_t done = 0;
  while (done < text.size()) {
    const ssize_t n = ::write(fd, text.data() + done, text.size() - done);
    if (n < 0) {
      if (errno == EINTR) continue;
      return errno;
    }
    done += static_cast<size_t>(n);
  }
  return 0;
}

}  // namespace

int process_stream_fd(const std::string& path) {
  namespace fs = std::filesystem;
  if (path == "-") return 1;
  fs::path p(path);
  // A chain of symbolic links, followed a few steps by name (the last, /proc/self/fd/N, is a
  // magic link to whatever the descriptor is open on).
  for (int hop = 0; hop < 8; ++hop) {
    const std::string name = p.lexically_normal().string();
    if (name == "/dev/stdin") return 0;
    if (name == "/dev/stdout") return 1;
    if (name == "/dev/stderr") return 2;
    const int fd = fd_of_name(name);
    if (fd >= 0) return fd;
    std::error_code ec;
    if (!fs::is_symlink(fs::symlink_status(p, ec))) return -1;
    const fs::path target = fs::read_symlink(p, ec);
    if (ec) return -1;
    p = target.is_absolute() ? target : p.parent_path() / target;
  }
  return -1;
}

void refuse_unreplaceable(const std::string& path) {
  namespace fs = std::filesystem;
  std::error_code ec;
  if (const int fd = process_stream_fd(path); fd >= 0)
    throw Error(str_cat(path, ": names this process's ",
                        fd == 0 ? "standard input" : fd == 1 ? "standard output" : fd == 2 ? "standard error"
                                                                                : str_cat("descriptor ", fd),
                        "; outputs are written to a temporary file and renamed over the name, which would "
                        "replace the link, not write to the stream: give a file"));
  // What the name leads to (a link's target, followed): a regular file, nothing, or something a
  // rename must not replace (a link to a device, such as /dev/stdout, included).
  const auto st = fs::status(path, ec);
  if (fs::exists(st) && !fs::is_regular_file(st))
    throw Error(str_cat(path, ": exists and is not a regular file (",
                        fs::is_directory(st) ? "a folder" : fs::is_fifo(st) ? "a FIFO" : "a device or special file",
                        fs::is_symlink(fs::symlink_status(path, ec)) ? ", through a symbolic link" : "",
                        "); outputs are written to a temporary file and renamed over it, which would replace it"));
}

void check_output_path(const std::string& flag, const std::string& path) {
  namespace fs = std::filesystem;
  if (path.empty()) return;
  try {
    refuse_unreplaceable(path);
  } catch (const Error& e) {
    throw Error(str_cat(flag, " ", e.what()));
  }
  fs::path dir = fs::path(path).parent_path();
  if (dir.empty()) dir = ".";
  std::error_code ec;
  fs::create_directories(dir, ec);
  // A file made and removed: what writing there needs (root passes access() on read-only mounts).
  const std::string probe = (dir / str_cat(".aim-write-probe.", ::getpid())).string();
  const int fd = ec ? -1 : ::open(probe.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
  if (fd < 0 && !ec && errno == EEXIST) return;  // another process's probe (a rank elsewhere): writable
  if (fd < 0)
    throw Error(str_cat(flag, " ", path, ": cannot write in ", dir.string(), ": ",
                        ec ? ec.message() : std::string(std::strerror(errno))));
  ::close(fd);
  ::unlink(probe.c_str());
}

bool is_stream_output(const std::string& path) {
  if (process_stream_fd(path) >= 0) return true;
  std::error_code ec;
  const auto st = std::filesystem::status(path, ec);
  return std::filesystem::is_fifo(st) || std::filesystem::is_character_file(st);
}

void check_report_path(const std::string& flag, const std::string& path) {
  if (path.empty() || !is_stream_output(path)) return check_output_path(flag, path);
  // A stream that cannot take the report is refused now, not after the work.
  const int fd = process_stream_fd(path);
  if (fd == 0) throw Error(str_cat(flag, " ", path, ": names this process's standard input, not an output"));
  if (fd > 0) {
    const int flags = ::fcntl(fd, F_GETFL);
    if (flags < 0)
      throw Error(str_cat(flag, " ", path, ": descriptor ", fd, " is not open in this process"));
    if ((flags & O_ACCMODE) == O_RDONLY)
      throw Error(str_cat(flag, " ", path, ": descriptor ", fd, " is open for reading only"));
    return;
  }
  if (::access(path.c_str(), W_OK) != 0)
    throw Error(str_cat(flag, " ", path, ": cannot write to it: ", std::strerror(errno)));
}

void write_report(const std::string& path, const std::string& text) {
  if (!is_stream_output(path)) return write_text_atomic(path, text);
  int fd = process_stream_fd(path);
  const bool own = fd < 0;
  if (fd == 1) std::fflush(stdout);
  if (own) fd = ::open(path.c_str(), O_WRONLY | O_CLOEXEC);
  if (fd < 0) throw Error(str_cat(path, ": cannot open for writing: ", std::strerror(errno)));
  int err = write_all(fd, text);
  if (own && ::close(fd) != 0 && err == 0) err = errno;
  if (err != 0) throw Error(str_cat(path, ": writing failed: ", std::strerror(err)));
}

void write_text_atomic(const std::string& path, const std::string& text) {
  refuse_unreplaceable(path);
  std::error_code ec;  // a missing folder is made (a failure shows at the open below)
  std::filesystem::create_directories(std::filesystem::path(path).parent_path(), ec);
  const std::string tmp = str_cat(path, ".tmp.", ::getpid());
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) throw Error(str_cat(path, ": cannot create ", tmp, ": ", std::strerror(errno)));
  int err = write_all(fd, text);
  if (err == 0 && ::fsync(fd) != 0) err = errno;
  if (::close(fd) != 0 && err == 0) err = errno;
  if (err == 0 && ::rename(tmp.c_str(), path.c_str()) != 0) err = errno;
  if (err != 0) {
    ::unlink(tmp.c_str());
    throw Error(str_cat(path, ": writing failed: ", std::strerror(err)));
  }
}

std::string read_text(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error(str_cat(path, ": cannot open: ", std::strerror(errno)));
  std::stringstream ss;
  ss << in.rdbuf();
  if (in.bad()) throw Error(str_cat(path, ": cannot read"));
  return ss.str();
}

bool is_torch_pickle(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  unsigned char head[4] = {0, 0, 0, 0};
  in.read(reinterpret_cast<char*>(head), 4);
  const bool zip = in.gcount() == 4 && head[0] == 'P' && head[1] == 'K' && head[2] == 3 && head[3] == 4;
  const bool pickle = in.gcount() >= 2 && head[0] == 0x80 && head[1] >= 2 && head[1] <= 5;
  return zip || pickle;
}

void refuse_torch_pickle(const std::string& path) {
  if (!is_torch_pickle(path)) return;
  throw Error(str_cat(path, ": a PyTorch pickle (torch.save: .pt/.pth/.bin), not safetensors; aim reads weights "
                            "converted once\n---> HINT: .venv/bin/python tools/convert_checkpoint.py ",
                      path, " --out <NAME>.safetensors (README, \"Converting official checkpoints\")"));
}

void refuse_output_over_input(const std::string& out_flag, const std::string& out,
                              const std::vector<std::pair<std::string, std::string>>& inputs) {
  namespace fs = std::filesystem;
  std::error_code ec;
  if (out.empty() || !fs::exists(out, ec)) return;
  for (const auto& [flag, path] : inputs) {
    if (path.empty() || !fs::exists(path, ec)) continue;
    if (fs::equivalent(out, path, ec))
      throw Error(str_cat(out_flag, " ", out, ": is an input of this command (", flag.empty() ? "" : flag + " ", path,
                          "); writing there would replace it\n---> HINT: give ", out_flag, " another path"));
  }
}

void sync_directory(const std::string& dir) {
  const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return;
  ::fsync(fd);
  ::close(fd);
}

uint64_t fnv1a64(uint64_t h, const void* data, size_t n) {
  const auto* p = static_cast<const unsigned char*>(data);
  for (size_t i = 0; i < n; ++i) {
    h ^= p[i];
    h *= 0x100000001b3ull;  // FNV prime
  }
  return h;
}

std::string hex16(uint64_t v) {
  char buf[17];
  std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(v));
  return buf;
}

std::string file_digest(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  AIM_CHECK(in, path, ": cannot open");
  std::vector<char> buf(1 << 20);
  uint64_t h = kFnv1aOffset;
  while (in) {
    in.read(buf.data(), static_cast<std::streamsize>(buf.size()));
    h = fnv1a64(h, buf.data(), static_cast<size_t>(in.gcount()));
  }
  return hex16(h);
}

std::string file_identity(const std::string& path) {
  return str_cat(std::filesystem::path(path).filename().string(), " (", std::filesystem::file_size(path),
                 " bytes, fnv64 ", file_digest(path), ")");
}

}  // namespace aim

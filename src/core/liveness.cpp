#include "aim/core/liveness.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <fstream>
#include <sstream>

#include "aim/core/error.h"

namespace aim {

double rank_silence_limit_s() {
  const char* v = std::getenv("AIM_RANK_SILENCE_S");
  if (v == nullptr || *v == '\0') return 600.0;
  char* end = nullptr;
  const double s = std::strtod(v, &end);
  AIM_CHECK(end != v && *end == '\0' && s > 0, "AIM_RANK_SILENCE_S: expected a positive number of seconds, found '",
            v, "'");
  return s;
}

Heartbeat::Heartbeat(std::string path)
    : path_(std::move(path)),
      period_(std::clamp(rank_silence_limit_s() / 5.0, 0.05, 10.0)) {
  char host[256] = {};
  if (::gethostname(host, sizeof(host) - 1) != 0) host[0] = '\0';
  identity_ = str_cat(host, " pid ", ::getpid());
  beat();
  thread_ = std::thread([this] {
    std::unique_lock<std::mutex> lock(mutex_);
    while (!wake_.wait_for(lock, period_, [this] { return stop_; })) beat();
  });
}

Heartbeat::~Heartbeat() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stop_ = true;
  }
  wake_.notify_all();
  if (thread_.joinable()) thread_.join();
  ::unlink(path_.c_str());
}

void Heartbeat::beat() {
  // A temporary file renamed over the last: a reader sees one whole count or the next. Not
  // through write_text_atomic, which makes the folder and throws.
  const std::string text = str_cat(++count_, " ", identity_, "\n");
  const std::string tmp = str_cat(path_, ".tmp.", ::getpid());
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return;
  const bool written = ::write(fd, text.data(), text.size()) == static_cast<ssize_t>(text.size());
  if (::close(fd) != 0 || !written || ::rename(tmp.c_str(), path_.c_str()) != 0) ::unlink(tmp.c_str());
}

double HeartbeatWatch::quiet_s(const std::string& path) {
  std::string content;
  bool present = false;
  {
    std::ifstream in(path, std::ios::binary);
    std::stringstream ss;
    if (in) {
      present = true;
      ss << in.rdbuf();
    }
    content = ss.str();
  }
  const auto now = std::chrono::steady_clock::now();
  auto it = seen_.find(path);
  if (it == seen_.end() || it->second.content != content) {
    const bool before = it != seen_.end() && it->second.appeared;
    seen_[path] = Seen{content, now, before || present};
    return 0.0;
  }
  it->second.appeared |= present;
  return std::chrono::duration<double>(now - it->second.since).count();
}

bool HeartbeatWatch::appeared(const std::string& path) const {
  const auto it = seen_.find(path);
  return it != seen_.end() && it->second.appeared;
}

}  // namespace aim

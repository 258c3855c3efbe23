#pragma once
// Signs of life between ranks that meet only in a shared folder (aim sample's work folder,
// extract-codes' shards). A rank that fails leaves a failure marker as its stack unwinds; one
// that is killed (SIGKILL: the out-of-memory killer, a scheduler, a launcher that does not end
// the job, e.g. srun without --kill-on-bad-exit) leaves nothing, so rank 0 would wait for its
// work for ever. Each rank's heartbeat file changes every few seconds while it lives; rank 0
// takes a rank whose file has not changed for rank_silence_limit_s() as gone.
#include <chrono>
#include <condition_variable>
#include <map>
#include <mutex>
#include <string>
#include <thread>

namespace aim {

/// Seconds of silence after which a rank is taken for dead: $AIM_RANK_SILENCE_S (> 0), else
/// 600. Throws aim::Error naming the variable when it is set but not a positive number.
double rank_silence_limit_s();

/// Rewrites `path` (a counter, the host and the process id) every min(10 s, limit / 5) from a
/// background thread, the first time at construction; the destructor stops it and removes the
/// file. A write that fails (the folder gone once the work is assembled) is skipped, and the
/// folder is never made again.
class Heartbeat {
 public:
  explicit Heartbeat(std::string path);
  ~Heartbeat();
  Heartbeat(const Heartbeat&) = delete;
  Heartbeat& operator=(const Heartbeat&) = delete;

 private:
  void beat();
  std::string path_, identity_;
  long long count_ = 0;
  std::chrono::duration<double> period_;
  std::mutex mutex_;
  std::condition_variable wake_;
  bool stop_ = false;
  std::thread thread_;
};

/// Rank 0's view of other ranks' heartbeat files, by its own clock (not file times: the ranks'
/// clocks and a network file system's need not agree).
class HeartbeatWatch {
 public:
  /// Seconds since the content of `path` last changed as this process saw it; the first look at
  /// a path starts its count, and a missing file reads as empty content.
  double quiet_s(const std::string& path);
  /// Whether quiet_s() has ever found `path` present (to tell a heartbeat that went away from one
  /// that never appeared).
  bool appeared(const std::string& path) const;

 private:
  struct Seen {
    std::string content;
    std::chrono::steady_clock::time_point since;
    bool appeared = false;
  };
  std::map<std::string, Seen> seen_;
};

}  // namespace aim

#pragma once
// Progress lines for long work: done/total, rate, ETA, printed at most every `interval` seconds
// (and at the end) to stderr.
#include <chrono>
#include <string>

namespace aim {

class Progress {
 public:
  /// `unit` names what is counted ("img", "step"); `enabled` false prints nothing (other ranks).
  Progress(std::string label, int64_t total, std::string unit, bool enabled = true,
           double interval_s = 5.0);
  /// Adds `n` done items; prints when the interval has passed. `extra` is appended to the line.
  void update(int64_t n, const std::string& extra = "");
  /// Starts the count at `done` items already done before (a resumed job): they count toward
  /// the total but not toward the rate.
  void resume_at(int64_t done) { done_ = start_done_ = done; }
  /// Prints the final line (total time and mean rate).
  void finish(const std::string& extra = "");
  int64_t done() const { return done_; }
  double rate() const;  ///< items per second since start

 private:
  void print(bool final, const std::string& extra);
  std::string label_, unit_;
  int64_t total_, done_ = 0, start_done_ = 0;
  bool enabled_;
  double interval_s_;
  std::chrono::steady_clock::time_point start_, last_;
};

/// "1h02m03s" / "4m05s" / "12s".
std::string format_duration(double seconds);

}  // namespace aim

#include "aim/core/progress.h"

#include <cstdio>

namespace aim {

std::string format_duration(double seconds) {
  if (!(seconds >= 0) || seconds > 1e8) return "?";
  const auto s = static_cast<int64_t>(seconds + 0.5);
  char buf[32];
  if (s >= 3600) {
    std::snprintf(buf, sizeof buf, "%lldh%02lldm%02llds", (long long)(s / 3600), (long long)(s / 60 % 60), (long long)(s % 60));
  } else if (s >= 60) {
    std::snprintf(buf, sizeof buf, "%lldm%02llds", (long long)(s / 60), (long long)(s % 60));
  } else {
    std::snprintf(buf, sizeof buf, "%llds", (long long)s);
  }
  return buf;
}

Progress::Progress(std::string label, int64_t total, std::string unit, bool enabled, double interval_s)
    : label_(std::move(label)), unit_(std::move(unit)), total_(total), enabled_(enabled),
      interval_s_(interval_s), start_(std::chrono::steady_clock::now()), last_(start_) {}

double Progress::rate() const {
  const double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  return dt > 0 ? static_cast<double>(done_ - start_done_) / dt : 0.0;
}

void Progress::update(int64_t n, const std::string& extra) {
  done_ += n;
  const auto now = std::chrono::steady_clock::now();
  if (std::chrono::duration<double>(now - last_).count() >= interval_s_) {
    last_ = now;
    print(false, extra);
  }
}

void Progress::finish(const std::string& extra) { print(true, extra); }

void Progress::print(bool final, const std::string& extra) {
  if (!enabled_) return;
  const double r = rate();
  const double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  const double pct = total_ > 0 ? 100.0 * static_cast<double>(done_) / static_cast<double>(total_) : 100.0;
  if (final) {
    std::fprintf(stderr, "[%s] done %lld/%lld %s in %s (%.1f %s/s)%s%s\n", label_.c_str(),
                 (long long)done_, (long long)total_, unit_.c_str(), format_duration(elapsed).c_str(), r,
                 unit_.c_str(), extra.empty() ? "" : "  ", extra.c_str());
  } else {
    const double eta = r > 0 ? static_cast<double>(total_ - done_) / r : -1;
    std::fprintf(stderr, "[%s] %lld/%lld %s (%.1f%%)  %.1f %s/s  ETA %s%s%s\n", label_.c_str(),
                 (long long)done_, (long long)total_, unit_.c_str(), pct, r, unit_.c_str(),
                 format_duration(eta).c_str(), extra.empty() ? "" : "  ", extra.c_str());
  }
  std::fflush(stderr);
}

}  // namespace aim

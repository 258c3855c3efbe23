#pragma once
// Command-line flags of the benchmark programs: --help / -h prints the usage and exits 0; a
// missing value, a malformed or out-of-range number and an unknown flag are errors that name the
// flag, what was expected and what was found, followed by the usage (exit status 2).
//
//   FlagReader flags("bench_x", kUsage, argc, argv);
//   while (flags.next()) {
//     if (flags.is("--batch")) batch = flags.integer(1);
//     else flags.unknown();
//   }
// and in main, around it: catch (const FlagError& e) { return flags_failed(e, kUsage); }
#include <cerrno>
#include <cmath>
#include <cstdint>
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

namespace aim::bench {

struct FlagError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

/// Prints the error and the usage to stderr; the exit status of a bad command line.
inline int flags_failed(const FlagError& e, const char* usage) {
  std::fprintf(stderr, "%s\nusage: %s\n", e.what(), usage);
  return 2;
}

class FlagReader {
 public:
  FlagReader(const char* program, const char* usage, int argc, char** argv)
      : program_(program), usage_(usage), argc_(argc), argv_(argv) {}

  /// Moves to the next argument; false past the last. --help and -h print the usage and exit.
  bool next() {
    if (++i_ >= argc_) return false;
    arg_ = argv_[i_];
    if (arg_ == "--help" || arg_ == "-h") {
      std::printf("usage: %s\n", usage_);
      std::exit(0);
    }
    return true;
  }
  const std::string& arg() const { return arg_; }
  bool is(const char* flag) const { return arg_ == flag; }
  bool positional() const { return !arg_.empty() && arg_[0] != '-'; }

  /// The argument after the current flag.
  std::string value() {
    if (i_ + 1 >= argc_) fail("expected a value after it, found the end of the command line");
    return argv_[++i_];
  }
  /// The value as a whole number >= `min`.
  int64_t integer(int64_t min) {
    const std::string text = value();
    const auto v = whole(text, min);
    if (!v) fail("expected a whole number >= " + std::to_string(min) + ", found '" + text + "'");
    return *v;
  }
  /// The value as comma-separated whole numbers, each >= `min` ("0,1").
  std::vector<int64_t> integer_list(int64_t min) {
    const std::string text = value();
    std::vector<int64_t> out;
    size_t start = 0;
    while (start <= text.size()) {
      const size_t comma = std::min(text.find(',', start), text.size());
      const auto v = whole(text.substr(start, comma - start), min);
      if (!v) fail("expected whole numbers >= " + std::to_string(min) + " separated by commas, found '" + text + "'");
      out.push_back(*v);
      start = comma + 1;
    }
    return out;
  }
  /// The value as a finite number.
  double number() {
    const std::string text = value();
    char* end = nullptr;
    const double v = std::strtod(text.c_str(), &end);
    if (text.empty() || *end != '\0' || !std::isfinite(v)) fail("expected a number, found '" + text + "'");
    return v;
  }
  /// The value, which must be one of `choices` ("a|b|c").
  std::string choice(const std::string& choices) {
    const std::string text = value();
    if (("|" + choices + "|").find("|" + text + "|") == std::string::npos || text.empty()) {
      fail("expected one of " + choices + ", found '" + text + "'");
    }
    return text;
  }
  /// The current argument is not one the program takes.
  [[noreturn]] void unknown() const {
    throw FlagError(std::string(program_) + (positional() ? ": unexpected argument '" : ": unknown flag '") + arg_ +
                    "'");
  }

 private:
  /// `text` as a whole number >= `min`; nothing if it is not one.
  static std::optional<int64_t> whole(const std::string& text, int64_t min) {
    errno = 0;
    char* end = nullptr;
    const long long v = std::strtoll(text.c_str(), &end, 10);
    if (text.empty() || *end != '\0' || errno == ERANGE || v < min) return std::nullopt;
    return v;
  }
  [[noreturn]] void fail(const std::string& what) const {
    throw FlagError(std::string(program_) + ": " + arg_ + ": " + what);
  }
  const char* program_;
  const char* usage_;
  int argc_;
  char** argv_;
  int i_ = 0;  // argv_[i_] is the current argument (0: none read yet)
  std::string arg_;
};

}  // namespace aim::bench

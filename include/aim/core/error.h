#pragma once
// One exception type for everything the user can get wrong (files, keys, flags, values).
// Library code throws; only main() turns it into a message and a non-zero exit.
#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>

namespace aim {

/// An error the user can act on. The message names the file, key or flag, what was expected
/// and what was found.
class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& what) : std::runtime_error(what) {}
};

namespace detail {
inline void append(std::ostringstream&) {}
template <typename T, typename... Rest>
void append(std::ostringstream& os, T&& first, Rest&&... rest) {
  os << std::forward<T>(first);
  append(os, std::forward<Rest>(rest)...);
}
}  // namespace detail

/// Concatenates the arguments with operator<< into one message.
template <typename... Args>
std::string str_cat(Args&&... args) {
  std::ostringstream os;
  detail::append(os, std::forward<Args>(args)...);
  return os.str();
}

}  // namespace aim

/// Throws aim::Error with the streamed arguments when `cond` is false.
#define AIM_CHECK(cond, ...)                                 \
  do {                                                       \
    if (!(cond)) throw ::aim::Error(::aim::str_cat(__VA_ARGS__)); \
  } while (0)

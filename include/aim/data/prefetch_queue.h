#pragma once
// A bounded queue between one producer thread and one consumer: the producer blocks while
// `capacity` items wait, the consumer blocks until an item or the end arrives; a producer error
// is handed to the consumer. Shared by the data loaders.
#include <condition_variable>
#include <deque>
#include <exception>
#include <mutex>
#include <optional>

namespace aim {

template <typename T>
class PrefetchQueue {
 public:
  explicit PrefetchQueue(size_t capacity) : capacity_(capacity < 1 ? 1 : capacity) {}

  /// Producer: waits for room; false when the consumer asked to stop.
  bool push(T item) {
    std::unique_lock<std::mutex> lock(mutex_);
    cv_.wait(lock, [&] { return stop_ || items_.size() < capacity_; });
    if (stop_) return false;
    items_.push_back(std::move(item));
    cv_.notify_all();
    return true;
  }
  /// Producer: no more items; `error` (if any) is rethrown by the consumer's pop().
  void finish(std::exception_ptr error = nullptr) {
    std::lock_guard<std::mutex> lock(mutex_);
    done_ = true;
    error_ = error;
    cv_.notify_all();
  }
  /// Consumer: the next item, or nullopt at the end.
  std::optional<T> pop() {
    std::unique_lock<std::mutex> lock(mutex_);
    cv_.wait(lock, [&] { return !items_.empty() || done_; });
    if (!items_.empty()) {
      T item = std::move(items_.front());
      items_.pop_front();
      cv_.notify_all();
      return item;
    }
    if (error_) std::rethrow_exception(error_);
    return std::nullopt;
  }
  /// Consumer: unblocks and stops the producer.
  void stop() {
    std::lock_guard<std::mutex> lock(mutex_);
    stop_ = true;
    cv_.notify_all();
  }

 private:
  size_t capacity_;
  std::mutex mutex_;
  std::condition_variable cv_;
  std::deque<T> items_;
  bool stop_ = false, done_ = false;
  std::exception_ptr error_;
};

}  // namespace aim

#pragma once
// TensorBoard event files, written without TensorFlow or protobuf: scalars and PNG images, what a
// training run logs. A file is a sequence of TFRecords (length, masked CRC-32C of the length,
// payload, masked CRC-32C of the payload), each payload one serialised tensorflow.Event: the first
// carries file_version "brain.Event:2", every later one a Summary with one value (simple_value,
// or an encoded image), at its step and wall time. `tensorboard --logdir runs` reads any file
// whose name holds "tfevents".
#include <cstddef>
#include <cstdint>
#include <fstream>
#include <string>
#include <vector>

namespace aim {

/// CRC-32C (Castagnoli), as TFRecord frames use it.
uint32_t crc32c(const void* data, size_t n);

/// Width, height and channels (1 grey, 2 grey + alpha, 3 RGB or palette, 4 RGBA) from a PNG's
/// header. Throws aim::Error naming `what` when `png` is not a PNG.
struct PngHeader {
  int width = 0, height = 0, channels = 0;
};
PngHeader png_header(const std::string& png, const std::string& what);

/// The payloads of a TFRecord file, each frame's two checksums verified; throws aim::Error naming
/// the file and the record's offset on a damaged frame. A frame cut short at the end (a writer
/// killed mid-record) ends the list, as TensorBoard's reader treats it.
std::vector<std::string> read_tfrecords(const std::string& path);

/// One events file in `dir` (created): events.out.tfevents.<seconds>.<host>.<pid>.<n>.
class TensorBoardWriter {
 public:
  /// Creates the file and writes its file-version event. Throws aim::Error naming the file.
  explicit TensorBoardWriter(const std::string& dir);
  /// `value` at `step` under `tag`, stamped `wall_time` (seconds since the epoch).
  void scalar(const std::string& tag, int64_t step, double value, double wall_time);
  /// A PNG file's bytes at `step` under `tag` (TensorBoard's Images tab).
  void image(const std::string& tag, int64_t step, const std::string& png, double wall_time);
  /// Flushes; false (and the file left as it is) once a write has failed (a full disk).
  bool flush();
  const std::string& path() const { return path_; }

  /// The current time in seconds since the epoch.
  static double now();

 private:
  void event(int64_t step, double wall_time, const std::string& body);

  std::string path_;
  std::ofstream out_;
};

}  // namespace aim

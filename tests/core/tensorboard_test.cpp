// TensorBoard event files: the frames' checksums, and what TensorBoard's own reader
// (tests/tools/read_tensorboard.py) finds in a file written here.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "aim/core/error.h"
#include "aim/core/fileio.h"
#include "aim/core/tensorboard.h"
#include "aim/data/image.h"
#include "test_util.h"

namespace aim {
namespace {

namespace fs = std::filesystem;

class TensorBoardTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("aim_tensorboard_test_" + std::to_string(::getpid()));
    fs::remove_all(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }
  fs::path dir_;
};

TEST(Crc32c, KnownValues) {
  // The check value of CRC-32C, and the iSCSI test vector of 32 zero bytes (RFC 3720, B.4).
  EXPECT_EQ(crc32c("123456789", 9), 0xE3069283u);
  const std::string zeros(32, '\0');
  EXPECT_EQ(crc32c(zeros.data(), zeros.size()), 0x8A9136AAu);
  EXPECT_EQ(crc32c("", 0), 0u);
}

TEST_F(TensorBoardTest, TensorBoardReadsScalarsAndImages) {
  Image img(37, 21);  // odd sizes: width and height must not be swapped
  for (size_t k = 0; k < img.rgb.size(); ++k) img.rgb[k] = static_cast<uint8_t>((k * 13) % 251);
  const std::string png = (dir_ / "grid.png").string();
  fs::create_directories(dir_);
  write_png(png, img);

  const double t0 = 1.8e9 + 0.25;  // seconds since the epoch, exact in a double
  std::string path;
  {
    TensorBoardWriter w((dir_ / "tb").string());
    path = w.path();
    EXPECT_NE(fs::path(path).filename().string().find("events.out.tfevents."), std::string::npos) << path;
    for (int64_t step = 1; step <= 5; ++step) {
      w.scalar("train/loss", step, 6.25 - 0.5 * static_cast<double>(step), t0 + static_cast<double>(step));
      w.scalar("train/lr", step, 8e-4 * static_cast<double>(step), t0 + static_cast<double>(step));
    }
    w.scalar("eval/val_loss", 1000000007, -3.5, t0);  // a step past 2^30: varints of several bytes
    w.image("samples", 4, read_text(png), t0 + 4.5);
    EXPECT_TRUE(w.flush());
    const auto msg = test::error_of([&] { w.image("samples", 5, "not a png at all, but long enough", t0); });
    EXPECT_NE(msg.find("samples: not a PNG"), std::string::npos) << msg;
  }
  // Our reader: the file-version event and 12 more, every checksum right.
  const auto records = read_tfrecords(path);
  ASSERT_EQ(records.size(), 13u);
  EXPECT_NE(records[0].find("brain.Event:2"), std::string::npos);

  // TensorBoard's.
  const auto j = test::read_tensorboard((dir_ / "tb").string());
  ASSERT_FALSE(j.is_null());
  EXPECT_EQ(j.at("files").get<int>(), 1);
  const auto& loss = j.at("scalars").at("train/loss");
  ASSERT_EQ(loss.size(), 5u);
  for (int64_t i = 0; i < 5; ++i) {
    EXPECT_EQ(loss[i][0].get<int64_t>(), i + 1);
    EXPECT_EQ(loss[i][1].get<double>(), 6.25 - 0.5 * static_cast<double>(i + 1));  // exact in a float
    EXPECT_EQ(loss[i][2].get<double>(), t0 + static_cast<double>(i + 1));
  }
  const auto& lr = j.at("scalars").at("train/lr");
  EXPECT_EQ(lr[2][1].get<double>(), static_cast<double>(static_cast<float>(8e-4 * 3)));
  const auto& val = j.at("scalars").at("eval/val_loss");
  ASSERT_EQ(val.size(), 1u);
  EXPECT_EQ(val[0][0].get<int64_t>(), 1000000007);
  EXPECT_EQ(val[0][1].get<double>(), -3.5);
  const auto& images = j.at("images").at("samples");
  ASSERT_EQ(images.size(), 1u);
  EXPECT_EQ(images[0][0].get<int64_t>(), 4);
  EXPECT_EQ(images[0][1].get<int>(), 37);
  EXPECT_EQ(images[0][2].get<int>(), 21);
  EXPECT_EQ(images[0][3].get<std::string>(), file_digest(png));
}

TEST_F(TensorBoardTest, DamagedFramesAreNamedAndACutEndIsTheEnd) {
  std::string path;
  {
    TensorBoardWriter w((dir_ / "tb").string());
    path = w.path();
    for (int64_t step = 1; step <= 3; ++step) w.scalar("x", step, 1.0, 1.0);
  }
  const std::string bytes = read_text(path);
  ASSERT_EQ(read_tfrecords(path).size(), 4u);
  // A writer killed mid-record: the records before the cut.
  const std::string cut = (dir_ / "cut").string();
  {
    std::ofstream(cut, std::ios::binary) << bytes.substr(0, bytes.size() - 5);
  }
  EXPECT_EQ(read_tfrecords(cut).size(), 3u);
  // A changed byte in the last record's data, then in its length.
  const std::string bad = (dir_ / "bad").string();
  std::string flipped = bytes;
  flipped[flipped.size() - 6] ^= 0x10;
  {
    std::ofstream(bad, std::ios::binary) << flipped;
  }
  auto msg = test::error_of([&] { read_tfrecords(bad); });
  EXPECT_NE(msg.find("the data's checksum does not match"), std::string::npos) << msg;
  const size_t last = read_tfrecords(path).back().size() + 16;  // the last frame's length
  flipped = bytes;
  flipped[flipped.size() - last] ^= 0x01;
  {
    std::ofstream(bad, std::ios::binary) << flipped;
  }
  msg = test::error_of([&] { read_tfrecords(bad); });
  EXPECT_NE(msg.find("the length's checksum does not match"), std::string::npos) << msg;
  EXPECT_NE(msg.find(bad), std::string::npos) << msg;
}

}  // namespace
}  // namespace aim

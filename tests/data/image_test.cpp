// Images in and out against PIL: decoding of every JPEG / PNG / BMP layout we expect, refusal of
// broken files, resampling and the ADM / AiM / LlamaGen preprocessing (references written by
// tests/data/image_fixtures.py with the project's Python at test time), plus geometry, tensor
// conversion, PNG writing and grids.
#include "aim/data/image.h"
#include "aim/data/image_folder.h"

#include <gtest/gtest.h>
#include <stb_image_write.h>
#include <sys/wait.h>
#include <torch/torch.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <set>
#include <sstream>

#include "aim/core/error.h"
#include "test_util.h"

namespace aim {
namespace {

namespace fs = std::filesystem;

// ------------------------------------------------------------------------------- fixtures

/// Fixture images and PIL references, generated once per test process.
struct Fixtures {
  fs::path dir;
  std::vector<std::vector<std::string>> lines;  ///< manifest, split on spaces
  std::string skip;                             ///< non-empty: why the tests cannot run

  ~Fixtures() {
    std::error_code ec;
    if (!dir.empty()) fs::remove_all(dir, ec);
  }
  std::vector<std::vector<std::string>> of(const std::string& kind) const {
    std::vector<std::vector<std::string>> out;
    for (const auto& l : lines) {
      if (!l.empty() && l[0] == kind) out.push_back(l);
    }
    return out;
  }
  std::string path(const std::string& name) const { return (dir / name).string(); }
};

const Fixtures& fixtures() {
  static Fixtures f = [] {
    Fixtures x;
    x.dir = fs::temp_directory_path() / ("aim_image_test_" + std::to_string(::getpid()));
    fs::create_directories(x.dir);
    const std::string python = test::python();
    const std::string script = test::source_dir() + "/tests/data/image_fixtures.py";
    if (!fs::exists(python)) {
      x.skip = "no Python at " + python + " (AIM_PYTHON): PIL references unavailable";
      return x;
    }
    const std::string log = (x.dir / "fixtures.log").string();
    const std::string cmd =
        "'" + python + "' '" + script + "' '" + x.dir.string() + "' > '" + log + "' 2>&1";
    const int rc = std::system(cmd.c_str());
    std::ifstream lf(log);
    std::stringstream text;
    text << lf.rdbuf();
    if (rc == -1 || !WIFEXITED(rc) || WEXITSTATUS(rc) != 0) {
      x.skip =
          (WIFEXITED(rc) && WEXITSTATUS(rc) == 77 ? "" : "fixture script failed: ") + text.str();
      if (!(WIFEXITED(rc) && WEXITSTATUS(rc) == 77)) ADD_FAILURE() << cmd << "\n" << text.str();
      return x;
    }
    std::ifstream mf(x.dir / "manifest");
    std::string line;
    while (std::getline(mf, line)) {
      std::istringstream ss(line);
      std::vector<std::string> parts;
      std::string p;
      while (ss >> p) parts.push_back(p);
      if (!parts.empty()) x.lines.push_back(parts);
    }
    return x;
  }();
  return f;
}

#define AIM_NEED_FIXTURES()                      \
  const Fixtures& fx = fixtures();               \
  if (!fx.skip.empty()) GTEST_SKIP() << fx.skip; \
  ASSERT_FALSE(fx.lines.empty()) << "empty manifest in " << fx.dir

Image read_raw(const Fixtures& fx, const std::string& name, int w, int h, int count = 1) {
  std::ifstream f(fx.path(name), std::ios::binary);
  Image im(w, h * count);
  f.read(reinterpret_cast<char*>(im.rgb.data()), static_cast<std::streamsize>(im.rgb.size()));
  EXPECT_TRUE(f.good()) << "short raw file " << name;
  return im;
}

struct Diff {
  double mean = 0;
  int max = 0;
  double exact = 0;  ///< share of bytes equal
};

Diff diff(const Image& a, const Image& b) {
  Diff d;
  EXPECT_EQ(a.width, b.width);
  EXPECT_EQ(a.height, b.height);
  if (a.rgb.size() != b.rgb.size() || a.rgb.empty()) {
    d.mean = d.max = 1e9;
    return d;
  }
  int64_t sum = 0, same = 0;
  for (size_t i = 0; i < a.rgb.size(); ++i) {
    const int v = std::abs(int(a.rgb[i]) - int(b.rgb[i]));
    sum += v;
    same += v == 0;
    d.max = std::max(d.max, v);
  }
  d.mean = double(sum) / a.rgb.size();
  d.exact = double(same) / a.rgb.size();
  return d;
}

void print_diff(const std::string& name, const Diff& d) {
  std::printf("    %-44s mean|diff| %.4f (%.5f of 1)  max %d  equal %.2f%%\n", name.c_str(), d.mean,
              d.mean / 255.0, d.max, 100.0 * d.exact);
}


/// Image whose pixels encode their position, so any crop / flip is identifiable.
Image coordinate_image(int w, int h) {
  Image im(w, h);
  for (int y = 0; y < h; ++y) {
    for (int x = 0; x < w; ++x) {
      uint8_t* p = im.pixel(x, y);
      p[0] = static_cast<uint8_t>(x);
      p[1] = static_cast<uint8_t>(y);
      p[2] = static_cast<uint8_t>((x * 7 + y * 13) >> 8);
    }
  }
  return im;
}

bool same(const Image& a, const Image& b) {
  return a.width == b.width && a.height == b.height && a.rgb == b.rgb;
}

// ------------------------------------------------------------------------------- decoding

TEST(ImageDecode, MatchesPil) {
  AIM_NEED_FIXTURES();
  const auto cases = fx.of("decode");
  ASSERT_GE(cases.size(), 20u);
  for (const auto& c : cases) {
    SCOPED_TRACE(c[1]);
    const Image got = decode_image(fx.path(c[1]));
    const Image ref = read_raw(fx, c[2], std::stoi(c[3]), std::stoi(c[4]));
    const Diff d = diff(got, ref);
    print_diff("decode " + c[1], d);
    // JPEG too: libjpeg with PIL's settings gives PIL's pixels (stb_image differed on 2-5% of
    // them by up to 3 levels, and on 10-16% for 4:4:0 chroma).
    EXPECT_EQ(d.max, 0) << c[1] << " (" << c[5] << "): decoding must equal PIL's";
  }
  for (const std::string kind : {"jpeg", "png", "bmp", "pnm"}) {
    EXPECT_TRUE(std::any_of(cases.begin(), cases.end(), [&](const auto& c) { return c[5] == kind; })) << kind;
  }
  const std::string scaled = fx.path("maxval100.pgm");
  const std::string msg = test::error_of([&] { decode_image(scaled); });
  EXPECT_NE(msg.find(scaled), std::string::npos) << msg;
  EXPECT_NE(msg.find("maximum value 100"), std::string::npos) << msg;
}

TEST(ImageDecode, RefusesBrokenFilesNamingThem) {
  AIM_NEED_FIXTURES();
  const auto cases = fx.of("error");
  ASSERT_GE(cases.size(), 5u);
  for (const auto& c : cases) {
    const std::string file = fx.path(c[1]);
    const std::string msg = test::error_of([&] { decode_image(file); });
    std::printf("    %-20s -> %s\n", c[1].c_str(), msg.c_str());
    EXPECT_NE(msg.find(file), std::string::npos) << c[1] << ": expected an aim::Error naming it";
    if (c[1].rfind("truncated", 0) == 0) {
      EXPECT_NE(msg.find("truncated"), std::string::npos) << c[1] << ": " << msg;
    }
  }
  const std::string missing = (fx.dir / "no_such.jpg").string();
  const std::string msg = test::error_of([&] { decode_image(missing); });
  EXPECT_NE(msg.find(missing), std::string::npos) << msg;
  EXPECT_NE(msg.find("cannot open"), std::string::npos) << msg;
}

TEST(ImageDecode, RefusesDecompressionBombs) {
  // A PNG header announcing 20000 x 10000 pixels (PIL's limit is 178956970) and nothing else.
  std::vector<uint8_t> png = {0x89, 'P',  'N', 'G', '\r', '\n', 0x1A, '\n', 0,    0, 0,
                              13,   'I',  'H', 'D', 'R',  0,    0,    0x4E, 0x20, 0, 0,
                              0x27, 0x10, 8,   2,   0,    0,    0,    0,    0,    0, 0};
  const std::string msg =
      test::error_of([&] { decode_image_memory(png.data(), png.size(), "bomb.png"); });
  EXPECT_NE(msg.find("bomb.png"), std::string::npos) << msg;
  EXPECT_NE(msg.find("DecompressionBombError"), std::string::npos) << msg;
}

/// A small baseline JPEG (stb_image_write) and the offset of its SOF0 segment's payload.
std::pair<std::vector<uint8_t>, size_t> small_jpeg() {
  Image im(19, 13);
  for (size_t i = 0; i < im.rgb.size(); ++i) im.rgb[i] = static_cast<uint8_t>(i * 37);
  std::vector<uint8_t> out;
  stbi_write_jpg_to_func(
      [](void* ctx, void* data, int n) {
        auto* v = static_cast<std::vector<uint8_t>*>(ctx);
        v->insert(v->end(), static_cast<uint8_t*>(data), static_cast<uint8_t*>(data) + n);
      },
      &out, im.width, im.height, 3, im.rgb.data(), 90);
  for (size_t i = 0; i + 1 < out.size(); ++i) {
    if (out[i] == 0xFF && out[i + 1] == 0xC0) return {out, i + 4};
  }
  ADD_FAILURE() << "no SOF0 in the JPEG stb wrote";
  return {out, 0};
}

TEST(ImageDecode, JpegErrorsNameTheFileAndLibjpegsReason) {
  auto [jpeg, sof] = small_jpeg();
  ASSERT_GT(sof, 0u);
  const Image ok = decode_image_memory(jpeg.data(), jpeg.size(), "small.jpg");
  EXPECT_EQ(ok.width, 19);
  EXPECT_EQ(ok.height, 13);
  // 60000 x 60000 announced: refused from the header, before any decompression.
  auto bomb = jpeg;
  bomb[sof + 1] = bomb[sof + 3] = 0xEA;
  bomb[sof + 2] = bomb[sof + 4] = 0x60;
  std::string msg = test::error_of([&] { decode_image_memory(bomb.data(), bomb.size(), "bomb.jpg"); });
  EXPECT_NE(msg.find("bomb.jpg"), std::string::npos) << msg;
  EXPECT_NE(msg.find("60000x60000 pixels"), std::string::npos) << msg;
  // 12-bit samples (PIL cannot read them either): libjpeg's own reason.
  auto deep = jpeg;
  deep[sof] = 12;
  msg = test::error_of([&] { decode_image_memory(deep.data(), deep.size(), "deep.jpg"); });
  EXPECT_NE(msg.find("cannot decode image 'deep.jpg'"), std::string::npos) << msg;
  EXPECT_NE(msg.find("(libjpeg)"), std::string::npos) << msg;
  // Decoding still works after an error (no state left behind).
  EXPECT_TRUE(same(ok, decode_image_memory(jpeg.data(), jpeg.size(), "again.jpg")));
}

TEST(ImageDecode, MemoryMatchesFile) {
  AIM_NEED_FIXTURES();
  std::ifstream f(fx.path("rgb.png"), std::ios::binary);
  std::vector<uint8_t> bytes((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  const Image a = decode_image_memory(bytes.data(), bytes.size(), "in-memory");
  EXPECT_TRUE(same(a, decode_image(fx.path("rgb.png"))));
  const std::string msg = test::error_of([&] { decode_image_memory(bytes.data(), 40, "blob #7"); });
  EXPECT_NE(msg.find("blob #7"), std::string::npos) << msg;
}

// ------------------------------------------------------------------------------ resizing

TEST(ImageResize, MatchesPil) {
  AIM_NEED_FIXTURES();
  const auto cases = fx.of("resize");
  ASSERT_GE(cases.size(), 40u);
  std::map<std::string, std::pair<double, int>> worst;  // filter -> (max mean, max max)
  std::map<std::string, Image> sources;
  for (const auto& c : cases) {
    const int sw = std::stoi(c[2]), sh = std::stoi(c[3]), w = std::stoi(c[5]), h = std::stoi(c[6]);
    if (!sources.count(c[1])) sources[c[1]] = read_raw(fx, c[1], sw, sh);
    const Image got = resize(sources[c[1]], w, h, filter_from_name(c[4]));
    const Image ref = read_raw(fx, c[7], w, h);
    const Diff d = diff(got, ref);
    const std::string name = str_cat(c[4], " ", sw, "x", sh, " -> ", w, "x", h);
    print_diff(name, d);
    EXPECT_LT(d.mean, 1.0) << name << ": mean |diff| vs PIL must stay under 1/255";
    EXPECT_LE(d.max, 1) << name << ": the same arithmetic as Pillow should give its bytes";
    auto& wv = worst[c[4]];
    wv.first = std::max(wv.first, d.mean);
    wv.second = std::max(wv.second, d.max);
  }
  for (const auto& [f, v] : worst) {
    std::printf("    worst %-8s mean %.4f max %d\n", f.c_str(), v.first, v.second);
  }
}

TEST(ImageResize, RejectsBadSizesAndNames) {
  const Image im = coordinate_image(8, 6);
  EXPECT_THROW(resize(im, 0, 5, Filter::kBicubic), Error);
  EXPECT_THROW(resize(Image(), 4, 4, Filter::kBicubic), Error);
  const std::string msg = test::error_of([] { filter_from_name("cubic", "data.filter"); });
  EXPECT_NE(msg.find("data.filter"), std::string::npos) << msg;
  EXPECT_NE(msg.find("cubic"), std::string::npos) << msg;
  EXPECT_TRUE(same(resize(im, 8, 6, Filter::kLanczos), im));
  for (Filter f :
       {Filter::kBox, Filter::kBilinear, Filter::kHamming, Filter::kBicubic, Filter::kLanczos}) {
    EXPECT_EQ(filter_from_name(filter_name(f)), f);
  }
}

TEST(ImageResize, ConstantStaysConstant) {
  // Normalised taps: a flat image stays flat under every filter, up and down.
  Image im(37, 23);
  for (size_t i = 0; i < im.rgb.size(); i += 3) {
    im.rgb[i] = 200;
    im.rgb[i + 1] = 17;
    im.rgb[i + 2] = 255;
  }
  for (Filter f :
       {Filter::kBox, Filter::kBilinear, Filter::kHamming, Filter::kBicubic, Filter::kLanczos}) {
    for (auto [w, h] : {std::pair{5, 3}, std::pair{80, 51}, std::pair{37, 9}}) {
      const Image out = resize(im, w, h, f);
      for (size_t i = 0; i < out.rgb.size(); i += 3) {
        ASSERT_EQ(out.rgb[i], 200) << filter_name(f) << " " << w << "x" << h;
        ASSERT_EQ(out.rgb[i + 1], 17);
        ASSERT_EQ(out.rgb[i + 2], 255);
      }
    }
  }
}

// ------------------------------------------------------------------------- preprocessing

TEST(ImagePreprocess, CenterCropArrMatchesAdm) {
  AIM_NEED_FIXTURES();
  const auto cases = fx.of("cca");
  ASSERT_GE(cases.size(), 5u);
  for (const auto& c : cases) {
    const int w = std::stoi(c[2]), h = std::stoi(c[3]), s = std::stoi(c[4]);
    const Image got = center_crop_arr(read_raw(fx, c[1], w, h), s);
    const Diff d = diff(got, read_raw(fx, c[5], s, s));
    const std::string name = str_cat("center_crop_arr ", w, "x", h, " -> ", s);
    print_diff(name, d);
    EXPECT_LT(d.mean, 1.0) << name;
    EXPECT_LE(d.max, 1) << name;
  }
}

TEST(ImagePreprocess, AimEvalMatchesTorchvision) {
  AIM_NEED_FIXTURES();
  const auto cases = fx.of("aimeval");
  ASSERT_GE(cases.size(), 4u);
  for (const auto& c : cases) {
    const int w = std::stoi(c[2]), h = std::stoi(c[3]), s = std::stoi(c[4]);
    const Image got = aim_eval_transform(read_raw(fx, c[1], w, h), s);
    const Diff d = diff(got, read_raw(fx, c[5], s, s));
    const std::string name = str_cat("aim_eval_transform ", w, "x", h, " -> ", s);
    print_diff(name, d);
    EXPECT_LT(d.mean, 1.0) << name;
    EXPECT_LE(d.max, 1) << name;
  }
}

TEST(ImagePreprocess, LlamaGenTenCropMatches) {
  AIM_NEED_FIXTURES();
  const auto cases = fx.of("tencrop");
  ASSERT_GE(cases.size(), 2u);
  for (const auto& c : cases) {
    const int w = std::stoi(c[2]), h = std::stoi(c[3]), s = std::stoi(c[4]);
    const std::vector<Image> got = llamagen_ten_crop(read_raw(fx, c[1], w, h), s);
    ASSERT_EQ(got.size(), 10u);
    const Image all = read_raw(fx, c[5], s, s, 10);
    for (int k = 0; k < 10; ++k) {
      const Image ref = crop(all, 0, k * s, s, s);
      const Diff d = diff(got[k], ref);
      const std::string name = str_cat("llamagen_ten_crop ", w, "x", h, " crop ", k);
      if (k == 0 || k == 4 || k == 9) print_diff(name, d);
      EXPECT_LT(d.mean, 1.0) << name;
      EXPECT_LE(d.max, 1) << name;
    }
  }
}

TEST(ImagePreprocess, AimTrainIsSeededRandomCropOfTheResize) {
  const Image im = coordinate_image(200, 150);
  const Image mid = resize_short_side(im, 72, Filter::kLanczos);  // round(1.125 * 64)
  EXPECT_EQ(mid.height, 72);
  EXPECT_EQ(mid.width, 96);  // int(72 * 200 / 150)
  std::set<std::pair<int, int>> offsets;
  std::mt19937_64 rng_a(123), rng_b(123);
  for (int i = 0; i < 64; ++i) {
    const Image a = aim_train_transform(im, 64, rng_a);
    const Image b = aim_train_transform(im, 64, rng_b);
    ASSERT_TRUE(same(a, b)) << "same seed, same crops";
    ASSERT_EQ(a.width, 64);
    ASSERT_EQ(a.height, 64);
    bool found = false;
    for (int y = 0; y <= mid.height - 64 && !found; ++y) {
      for (int x = 0; x <= mid.width - 64 && !found; ++x) {
        if (same(a, crop(mid, x, y, 64, 64))) {
          found = true;
          offsets.insert({x, y});
        }
      }
    }
    ASSERT_TRUE(found) << "draw " << i << " is not a crop of the short-side resize";
  }
  EXPECT_GT(offsets.size(), 20u) << "crops should spread over the 33 x 9 offsets";
  EXPECT_TRUE(same(aim_eval_transform(im, 64), crop(mid, 16, 4, 64, 64)));
  // An image already at the resize target is not resampled.
  const Image exact = coordinate_image(72, 90);
  EXPECT_TRUE(same(resize_short_side(exact, 72, Filter::kLanczos), exact));
}

// ------------------------------------------------------------------------------ geometry

TEST(ImageGeometry, RandomCropArrIsACropOfADMResizeAtADrawnSize) {
  // A square source: center_crop_arr(img, s) is then the whole resized image, so every output of
  // random_crop_arr must be one of its 64x64 crops for some s in [64, ceil(64 / 0.8)] = [64, 80].
  Image img(300, 300);
  std::mt19937_64 fill(1);
  for (auto& v : img.rgb) v = static_cast<uint8_t>(fill());
  std::map<int, Image> resized;
  for (int s = 64; s <= 80; ++s) resized[s] = center_crop_arr(img, s);
  std::mt19937_64 rng(7);
  std::set<int> sizes;
  for (int k = 0; k < 60; ++k) {
    const Image out = random_crop_arr(img, 64, rng);
    ASSERT_EQ(out.width, 64);
    ASSERT_EQ(out.height, 64);
    bool found = false;
    for (const auto& [s, r] : resized) {
      for (int top = 0; top + 64 <= s && !found; ++top)
        for (int left = 0; left + 64 <= s && !found; ++left)
          if (same(out, crop(r, left, top, 64, 64))) found = true, sizes.insert(s);
      if (found) break;
    }
    EXPECT_TRUE(found) << "draw " << k << " is no crop of the resized image at any short side in [64, 80]";
  }
  EXPECT_GE(sizes.size(), 10u) << "short sides drawn: " << sizes.size() << " of 17";
}

TEST(ImageGeometry, TenCropOrderAndPlacement) {
  const Image im = coordinate_image(45, 37);
  const int s = 20;
  const std::vector<Image> crops = ten_crop(im, s);
  ASSERT_EQ(crops.size(), 10u);
  // torchvision: tl, tr, bl, br, center; then the same on the mirrored image.
  // Center offsets round((45 - 20) / 2) = round(12.5) = 12 and round(8.5) = 8 (half to even).
  const std::vector<std::pair<int, int>> at = {{0, 0}, {25, 0}, {0, 17}, {25, 17}, {12, 8}};
  const Image mirrored = hflip(im);
  for (int k = 0; k < 5; ++k) {
    EXPECT_TRUE(same(crops[k], crop(im, at[k].first, at[k].second, s, s))) << "crop " << k;
    EXPECT_TRUE(same(crops[5 + k], crop(mirrored, at[k].first, at[k].second, s, s)))
        << "crop " << 5 + k;
  }
  // The mirrored top-left is the original top-right, flipped.
  EXPECT_TRUE(same(crops[5], hflip(crops[1])));
  EXPECT_EQ(crops[0].pixel(0, 0)[0], 0);
  EXPECT_EQ(crops[1].pixel(0, 0)[0], 25);
  EXPECT_EQ(crops[2].pixel(0, 0)[1], 17);
  EXPECT_EQ(crops[4].pixel(0, 0)[0], 12);
  EXPECT_EQ(crops[4].pixel(0, 0)[1], 8);
  EXPECT_EQ(crops[5].pixel(0, 0)[0], 44);
  EXPECT_THROW(ten_crop(im, 38), Error);
  EXPECT_TRUE(same(hflip(hflip(im)), im));
  EXPECT_TRUE(same(Image(45, 37, im.rgb), im));
  EXPECT_THROW(Image(45, 36, im.rgb), Error);
  const std::string msg = test::error_of([&] { crop(im, 40, 0, 10, 10); });
  EXPECT_NE(msg.find("45x37"), std::string::npos) << msg;
}

// ------------------------------------------------------------------------------- tensors

TEST(ImageTensor, NormalisationAndRoundTrip) {
  Image im(5, 3);
  for (size_t i = 0; i < im.rgb.size(); ++i) im.rgb[i] = static_cast<uint8_t>(i * 17 % 256);
  im.rgb[0] = 0;
  im.rgb[1] = 255;
  const torch::Tensor t = to_tensor(im);
  ASSERT_EQ(t.sizes(), (torch::IntArrayRef{3, 3, 5}));
  ASSERT_EQ(t.scalar_type(), torch::kFloat);
  EXPECT_FLOAT_EQ(t[0][0][0].item<float>(), -1.0f);
  EXPECT_FLOAT_EQ(t[1][0][0].item<float>(), 1.0f);
  // Channel c of pixel (x, y) is rgb[(y * W + x) * 3 + c].
  EXPECT_FLOAT_EQ(t[2][1][3].item<float>(), (im.pixel(3, 1)[2] / 255.0f - 0.5f) / 0.5f);
  EXPECT_TRUE(same(from_tensor(t), im)) << "to_tensor then from_tensor must be the identity";
  // Every byte value survives the round trip.
  Image all(256, 1);
  for (int i = 0; i < 256; ++i) all.rgb[3 * i] = all.rgb[3 * i + 1] = all.rgb[3 * i + 2] = i;
  EXPECT_TRUE(same(from_tensor(to_tensor(all)), all));
  // Batch quantisation equals torch.clamp(127.5 * x + 128, 0, 255).to(uint8), out of range too.
  torch::manual_seed(0);
  const torch::Tensor x = torch::randn({2, 3, 4, 6}) * 1.5;
  const torch::Tensor q = to_uint8_hwc(x);
  ASSERT_EQ(q.sizes(), (torch::IntArrayRef{2, 4, 6, 3}));
  ASSERT_EQ(q.scalar_type(), torch::kUInt8);
  const torch::Tensor ref =
      (127.5 * x + 128.0).clamp(0, 255).to(torch::kUInt8).permute({0, 2, 3, 1});
  EXPECT_TRUE(torch::equal(q, ref));
  const std::vector<Image> imgs = from_tensor_batch(x);
  ASSERT_EQ(imgs.size(), 2u);
  EXPECT_EQ(imgs[1].pixel(5, 3)[2], q[1][3][5][2].item<uint8_t>());
  EXPECT_TRUE(torch::equal(to_tensor(std::vector<Image>{im, im})[1], t));
  EXPECT_THROW(to_uint8_hwc(torch::zeros({3, 4, 4})), c10::Error);
}

// ------------------------------------------------------------------------------- writing

TEST(ImageWrite, PngRoundTripAtomic) {
  const fs::path dir = fs::temp_directory_path() / ("aim_image_png_" + std::to_string(::getpid()));
  fs::create_directories(dir);
  Image im = coordinate_image(31, 17);
  im.pixel(3, 4)[1] = 255;
  const std::string file = (dir / "out.png").string();
  write_png(file, im);
  EXPECT_TRUE(same(decode_image(file), im));
  write_png(file, hflip(im));  // overwrite in place
  EXPECT_TRUE(same(decode_image(file), hflip(im)));
  int entries = 0;
  for ([[maybe_unused]] const auto& e : fs::directory_iterator(dir)) ++entries;
  EXPECT_EQ(entries, 1) << "no temporary file may be left behind";
  // A missing folder is made; one that cannot be (a file in the way) is named in the error.
  write_png((dir / "missing_dir" / "x.png").string(), im);
  EXPECT_TRUE(fs::exists(dir / "missing_dir" / "x.png"));
  const std::string bad = (dir / "out.png" / "x.png").string();
  const std::string msg = test::error_of([&] { write_png(bad, im); });
  EXPECT_NE(msg.find(bad), std::string::npos) << msg;
  fs::remove_all(dir);
}

TEST(ImageGrid, TorchvisionLayout) {
  std::vector<Image> tiles;
  for (int k = 0; k < 5; ++k) {
    Image t(10, 8);
    for (auto& v : t.rgb) v = static_cast<uint8_t>(10 * (k + 1));
    tiles.push_back(t);
  }
  const std::array<uint8_t, 3> pad{255, 0, 255};
  const Image g = make_grid(tiles, 2, 2, pad);
  // torchvision: xmaps = min(nrow, n), ymaps = ceil(n / xmaps), (tile + padding) * maps + padding.
  EXPECT_EQ(g.width, 2 * 12 + 2);
  EXPECT_EQ(g.height, 3 * 10 + 2);
  for (int k = 0; k < 5; ++k) {
    const int x0 = (k % 2) * 12 + 2, y0 = (k / 2) * 10 + 2;
    EXPECT_EQ(g.pixel(x0, y0)[0], 10 * (k + 1)) << "tile " << k;
    EXPECT_EQ(g.pixel(x0 + 9, y0 + 7)[2], 10 * (k + 1)) << "tile " << k;
    EXPECT_EQ(g.pixel(x0 - 1, y0)[0], 255) << "padding left of tile " << k;
  }
  EXPECT_EQ(g.pixel(15, 25)[1], 0) << "the missing sixth tile stays padding";
  EXPECT_EQ(g.pixel(14, 22)[0], 255);
  const Image one_row = make_grid(tiles, 8, 0, pad);
  EXPECT_EQ(one_row.width, 50);
  EXPECT_EQ(one_row.height, 8);

  const Image c = make_grid(tiles, 2, 2, {0, 0, 0}, {"a", "B7", "cat", "~", "x?"});
  const int strip = kGlyphHeight + 2;
  EXPECT_EQ(c.width, g.width);
  EXPECT_EQ(c.height, 3 * (10 + strip) + 2);
  int ink = 0;
  for (int y = 2 + 8; y < 2 + 8 + strip; ++y) {
    for (int x = 2; x < 12; ++x) ink += c.pixel(x, y)[0] == 255;
  }
  EXPECT_GT(ink, 4) << "white caption text under tile 0 on black padding";
  EXPECT_THROW(make_grid(tiles, 2, 2, pad, {"only one"}), Error);
  tiles[3] = Image(9, 8);
  const std::string msg = test::error_of([&] { make_grid(tiles, 2, 2, pad); });
  EXPECT_NE(msg.find("image 3"), std::string::npos) << msg;
}

TEST(ImageGrid, FontGlyphsAreDistinctAndScale) {
  std::set<std::vector<uint8_t>> seen;
  for (int ch = 33; ch < 127; ++ch) {
    Image im(kCellWidth, kCellHeight);
    draw_text(im, 0, 0, std::string(1, static_cast<char>(ch)), {255, 255, 255});
    int lit = 0;
    for (size_t i = 0; i < im.rgb.size(); i += 3) lit += im.rgb[i] != 0;
    EXPECT_GT(lit, 0) << "glyph '" << static_cast<char>(ch) << "' is blank";
    EXPECT_TRUE(seen.insert(im.rgb).second)
        << "glyph '" << static_cast<char>(ch) << "' duplicates another";
    // At scale 2 every lit pixel becomes a 2x2 block.
    Image big(2 * kCellWidth, 2 * kCellHeight);
    draw_text(big, 0, 0, std::string(1, static_cast<char>(ch)), {255, 255, 255}, 2);
    for (int y = 0; y < kCellHeight; ++y) {
      for (int x = 0; x < kCellWidth; ++x) {
        ASSERT_EQ(big.pixel(2 * x + 1, 2 * y + 1)[0], im.pixel(x, y)[0]);
      }
    }
  }
  EXPECT_EQ(text_width("abc", 2), 36);
  Image clip(4, 4);
  draw_text(clip, -3, -2, "Wide text clipped", {1, 2, 3}, 3);  // must not write outside
}

TEST(ImageFolderList, LabelsAndOrderFollowTorchvision) {
  const fs::path root = fs::temp_directory_path() / ("aim_folder_test_" + std::to_string(::getpid()));
  fs::remove_all(root);
  for (const char* f : {"b_cls/z.jpg", "b_cls/b.JPG", "b_cls/a/x.png", "b_cls/a/b/y.jpeg", "b_cls/.jpg",
                        "b_cls/notes.txt", "a_cls/1.webp", "A_cls/k.bmp"}) {
    fs::create_directories((root / f).parent_path());
    std::ofstream(root / f) << "x";
  }
  fs::create_directories(root / "c_empty");
  const ImageList list = list_image_folder(root.string());
  // Classes sorted by name (upper case first, as Python sorts); an empty class keeps its index.
  EXPECT_EQ(list.classes, (std::vector<std::string>{"A_cls", "a_cls", "b_cls", "c_empty"}));
  std::vector<std::string> got;
  for (const auto& e : list.entries) got.push_back(fs::relative(e.path, root).string() + ":" + std::to_string(e.label));
  // Within a class: its own files by name, then each sub-folder's (os.walk roots sorted).
  EXPECT_EQ(got, (std::vector<std::string>{"A_cls/k.bmp:0", "a_cls/1.webp:1", "b_cls/.jpg:2", "b_cls/b.JPG:2",
                                           "b_cls/z.jpg:2", "b_cls/a/x.png:2", "b_cls/a/b/y.jpeg:2"}));
  fs::remove_all(root);
}

}  // namespace
}  // namespace aim

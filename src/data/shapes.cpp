#include "aim/data/shapes.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <complex>
#include <filesystem>
#include <fstream>
#include <iomanip>
#include <sstream>

#include "aim/core/error.h"
#include "aim/data/sampler.h"

namespace aim {

namespace {

constexpr double kPi = 3.14159265358979323846;
constexpr int kSuper = 4;               // supersampling per axis
constexpr double kRingInner = 0.55;     // inner / outer radius of a ring
constexpr double kCrossHalfArm = 0.9487;  // arm half-length / circumradius (arm tip corner at R)
constexpr double kCrossHalfWidth = kCrossHalfArm / 3;

// Analyser settings. Background residuals (texture, added noise) stay far below kForeground;
// the nearest class colour is >= 100 away from any background (saturation <= 0.25, max
// channel <= 110).
constexpr double kForeground = 45;  // RGB distance from the fitted background
constexpr int kRays = 64;
constexpr double kHoleMax = 0.5;      // mean coverage near the centre below this: a ring
constexpr double kSolidityMin = 0.85; // below: a cross (ideal 5/7)
constexpr double kTriangleH3 = 0.06;  // ideal triangle ~0.19, 4-fold shapes 0
constexpr double kSquareH4 = 0.025;   // ideal square ~0.07, disc 0

const std::array<ShapeClass, kNumShapeClasses> kClasses = {{
    {"red_disc", ShapeKind::kDisc, {215, 35, 45}},
    {"green_square", ShapeKind::kSquare, {40, 170, 60}},
    {"blue_triangle", ShapeKind::kTriangle, {30, 80, 235}},
    {"yellow_ring", ShapeKind::kRing, {245, 230, 50}},
    {"magenta_cross", ShapeKind::kCross, {225, 45, 215}},
    {"cyan_disc", ShapeKind::kDisc, {40, 210, 220}},
    {"orange_square", ShapeKind::kSquare, {250, 130, 20}},
    {"white_triangle", ShapeKind::kTriangle, {245, 245, 245}},
    {"purple_ring", ShapeKind::kRing, {125, 35, 190}},
    {"lime_cross", ShapeKind::kCross, {140, 235, 40}},
}};

/// A splitmix64 stream keyed by (seed, label, index): images are independent of each other and
/// of the order (and thread) they are made in.
class Stream {
 public:
  Stream(uint64_t seed, uint64_t label, uint64_t index, uint64_t purpose)
      : state_(splitmix64(splitmix64(splitmix64(splitmix64(seed) ^ label) ^ index) ^ purpose)) {}
  uint64_t next() { return state_ = splitmix64(state_); }
  double uniform() { return static_cast<double>(next() >> 11) * (1.0 / 9007199254740992.0); }
  double uniform(double lo, double hi) { return lo + (hi - lo) * uniform(); }

 private:
  uint64_t state_;
};

std::array<double, 3> hsv_to_rgb(double h, double s, double v) {
  h = std::fmod(std::fmod(h, 360.0) + 360.0, 360.0) / 60.0;
  const int i = static_cast<int>(h) % 6;
  const double f = h - std::floor(h);
  const double p = v * (1 - s), q = v * (1 - s * f), t = v * (1 - s * (1 - f));
  switch (i) {
    case 0: return {v, t, p};
    case 1: return {q, v, p};
    case 2: return {p, v, t};
    case 3: return {p, q, v};
    case 4: return {t, p, v};
    default: return {v, p, q};
  }
}

uint8_t to_u8(double x) { return static_cast<uint8_t>(std::clamp(std::lround(x), 0L, 255L)); }

/// Background: a gradient between two dull colours, smooth value noise on a 5x5 grid and
/// +-3 per-pixel noise.
Image render_background(int size, Stream& rng) {
  const double h1 = rng.uniform(0, 360), s1 = rng.uniform(0.05, 0.25), v1 = rng.uniform(35, 105);
  const double h2 = h1 + rng.uniform(-40, 40), s2 = rng.uniform(0.05, 0.25);
  const double v2 = std::clamp(v1 + rng.uniform(-25, 25), 30.0, 110.0);
  const auto c1 = hsv_to_rgb(h1, s1, v1), c2 = hsv_to_rgb(h2, s2, v2);
  const double angle = rng.uniform(0, 2 * kPi), ca = std::cos(angle), sa = std::sin(angle);
  constexpr int kGrid = 5;
  double grid[kGrid][kGrid];
  for (auto& row : grid)
    for (double& g : row) g = rng.uniform(-7, 7);
  Image image(size, size);
  for (int y = 0; y < size; ++y) {
    for (int x = 0; x < size; ++x) {
      const double u = (x + 0.5) / size - 0.5, v = (y + 0.5) / size - 0.5;
      const double t = std::clamp(u * ca + v * sa + 0.5, 0.0, 1.0);
      const double gx = (x + 0.5) / size * (kGrid - 1), gy = (y + 0.5) / size * (kGrid - 1);
      const int ix = std::min(static_cast<int>(gx), kGrid - 2), iy = std::min(static_cast<int>(gy), kGrid - 2);
      const double fx = gx - ix, fy = gy - iy;
      const double smooth = (grid[iy][ix] * (1 - fx) + grid[iy][ix + 1] * fx) * (1 - fy) +
                            (grid[iy + 1][ix] * (1 - fx) + grid[iy + 1][ix + 1] * fx) * fy;
      uint8_t* p = image.pixel(x, y);
      for (int c = 0; c < 3; ++c)
        p[c] = to_u8(c1[c] * (1 - t) + c2[c] * t + smooth + rng.uniform(-3, 3));
    }
  }
  return image;
}

/// Whether the shape-local point (u, v) (rotation undone, circumradius r) is inside.
bool inside(ShapeKind kind, double u, double v, double r) {
  switch (kind) {
    case ShapeKind::kDisc: return u * u + v * v <= r * r;
    case ShapeKind::kSquare: return std::abs(u) <= r * M_SQRT1_2 && std::abs(v) <= r * M_SQRT1_2;
    case ShapeKind::kTriangle: {
      // Edge normals at 90, 210 and 330 degrees; the inradius is r / 2.
      static const double nx[3] = {0.0, -0.8660254037844386, 0.8660254037844386};
      static const double ny[3] = {1.0, -0.5, -0.5};
      for (int k = 0; k < 3; ++k)
        if (u * nx[k] + v * ny[k] > r / 2) return false;
      return true;
    }
    case ShapeKind::kRing: {
      const double d2 = u * u + v * v;
      return d2 <= r * r && d2 >= kRingInner * kRingInner * r * r;
    }
    case ShapeKind::kCross: {
      const double a = kCrossHalfArm * r, w = kCrossHalfWidth * r;
      const double au = std::abs(u), av = std::abs(v);
      return (au <= a && av <= w) || (au <= w && av <= a);
    }
  }
  return false;
}

ShapeParams draw_params(const ShapesOptions& o, int label, Stream& rng) {
  ShapeParams p;
  p.label = label;
  const double n = static_cast<double>(o.size);
  p.size = rng.uniform(0.16, 0.30) * n;
  const double margin = p.size + 0.06 * n;
  p.cx = rng.uniform(margin, n - margin);
  p.cy = rng.uniform(margin, n - margin);
  switch (kClasses[label].shape) {
    case ShapeKind::kSquare:
    case ShapeKind::kCross: p.rotation = rng.uniform(0, 90); break;
    case ShapeKind::kTriangle: p.rotation = rng.uniform(0, 120); break;
    default: p.rotation = 0;
  }
  return p;
}

std::string five_digits(int64_t i) {
  std::ostringstream os;
  os << std::setw(5) << std::setfill('0') << i;
  return os.str();
}

}  // namespace

const std::array<ShapeClass, kNumShapeClasses>& shape_classes() { return kClasses; }

const char* shape_kind_name(ShapeKind kind) {
  switch (kind) {
    case ShapeKind::kDisc: return "disc";
    case ShapeKind::kSquare: return "square";
    case ShapeKind::kTriangle: return "triangle";
    case ShapeKind::kRing: return "ring";
    case ShapeKind::kCross: return "cross";
  }
  return "?";
}

std::string shape_class_dir(int label) {
  AIM_CHECK(label >= 0 && label < kNumShapeClasses,
            str_cat("shape class label: expected 0..", kNumShapeClasses - 1, ", found ", label));
  return str_cat(label, "_", kClasses[label].name);
}

void ShapesOptions::validate() const {
  AIM_CHECK(classes >= 1 && classes <= kNumShapeClasses,
            str_cat("--classes: expected 1..", kNumShapeClasses, ", found ", classes));
  AIM_CHECK(per_class >= 1 && per_class <= 10000000,
            str_cat("--per-class: expected 1..10000000, found ", per_class));
  AIM_CHECK(size >= 16 && size <= 1024,
            str_cat("--size: expected 16..1024 pixels, found ", size,
                    " ---> HINT: 64 gives 8x8 tokens with an 8x-downsampling tokenizer"));
}

Image make_shape_background(const ShapesOptions& o, int label, int64_t index) {
  o.validate();
  Stream bg_rng(o.seed, static_cast<uint64_t>(label), static_cast<uint64_t>(index), 1);
  return render_background(static_cast<int>(o.size), bg_rng);
}

ShapeSample make_shape_sample(const ShapesOptions& o, int label, int64_t index) {
  o.validate();
  AIM_CHECK(label >= 0 && label < o.classes, str_cat("shape label: expected 0..", o.classes - 1, ", found ", label));
  AIM_CHECK(index >= 0, str_cat("shape index: expected >= 0, found ", index));
  ShapeSample s;
  s.image = make_shape_background(o, label, index);
  Stream rng(o.seed, static_cast<uint64_t>(label), static_cast<uint64_t>(index), 2);
  s.params = draw_params(o, label, rng);
  const ShapeClass& cls = kClasses[label];
  const double shade = rng.uniform(0.88, 1.0);
  const double th = s.params.rotation * kPi / 180, c = std::cos(th), sn = std::sin(th);
  const double r = s.params.size;
  const int n = static_cast<int>(o.size);
  const int x0 = std::max(0, static_cast<int>(s.params.cx - r) - 1), x1 = std::min(n - 1, static_cast<int>(s.params.cx + r) + 1);
  const int y0 = std::max(0, static_cast<int>(s.params.cy - r) - 1), y1 = std::min(n - 1, static_cast<int>(s.params.cy + r) + 1);
  for (int y = y0; y <= y1; ++y) {
    for (int x = x0; x <= x1; ++x) {
      int hits = 0;
      for (int j = 0; j < kSuper; ++j) {
        for (int i = 0; i < kSuper; ++i) {
          const double dx = x + (i + 0.5) / kSuper - s.params.cx, dy = y + (j + 0.5) / kSuper - s.params.cy;
          hits += inside(cls.shape, c * dx + sn * dy, -sn * dx + c * dy, r);
        }
      }
      if (!hits) continue;
      const double a = static_cast<double>(hits) / (kSuper * kSuper);
      uint8_t* p = s.image.pixel(x, y);
      for (int k = 0; k < 3; ++k) p[k] = to_u8(p[k] * (1 - a) + cls.colour[k] * shade * a);
    }
  }
  return s;
}

void write_shapes_dataset(const std::string& dir, const ShapesOptions& o) {
  o.validate();
  namespace fs = std::filesystem;
  std::error_code ec;
  // Into a folder that already has files, images of another run (seed, count, size) would stay
  // beside the new ones and be read as one dataset.
  AIM_CHECK(!fs::exists(dir, ec) || fs::is_empty(dir, ec), "--out ", dir,
            ": the folder is not empty\n---> HINT: remove it or choose another folder");
  fs::create_directories(dir, ec);
  AIM_CHECK(!ec, str_cat("--out ", dir, ": cannot create the folder (", ec.message(), ")"));
  for (int label = 0; label < o.classes; ++label) {
    fs::create_directories(fs::path(dir) / shape_class_dir(label), ec);
    AIM_CHECK(!ec, str_cat("--out ", dir, ": cannot create ", shape_class_dir(label), " (", ec.message(), ")"));
  }
  const int64_t total = o.classes * o.per_class;
  std::vector<ShapeParams> params(static_cast<size_t>(total));
  at::parallel_for(0, total, 1, [&](int64_t begin, int64_t end) {
    for (int64_t k = begin; k < end; ++k) {
      const int label = static_cast<int>(k / o.per_class);
      const int64_t index = k % o.per_class;
      ShapeSample s = make_shape_sample(o, label, index);
      write_png((fs::path(dir) / shape_class_dir(label) / (five_digits(index) + ".png")).string(), s.image);
      params[static_cast<size_t>(k)] = s.params;
    }
  });
  {
    std::ofstream f(fs::path(dir) / "classes.txt");
    for (int label = 0; label < o.classes; ++label) f << shape_class_dir(label) << "\n";
    AIM_CHECK(f.good(), str_cat(dir, "/classes.txt: write failed"));
  }
  std::ofstream f(fs::path(dir) / "truth.jsonl");
  f << std::fixed << std::setprecision(3);
  for (int64_t k = 0; k < total; ++k) {
    const ShapeParams& p = params[static_cast<size_t>(k)];
    f << "{\"path\": \"" << shape_class_dir(p.label) << "/" << five_digits(k % o.per_class) << ".png\", \"label\": "
      << p.label << ", \"class\": \"" << kClasses[p.label].name << "\", \"cx\": " << p.cx << ", \"cy\": " << p.cy
      << ", \"size\": " << p.size << ", \"rotation\": " << p.rotation << "}\n";
  }
  AIM_CHECK(f.good(), str_cat(dir, "/truth.jsonl: write failed"));
}

// ------------------------------------------------------------------------------------ analyser

namespace {

/// Least-squares plane a0 + a1 x + a2 y per channel through the given pixels.
struct Plane {
  double a[3][3] = {};
  double at(int c, double x, double y) const { return a[c][0] + a[c][1] * x + a[c][2] * y; }
};

Plane fit_plane(const Image& im, const std::vector<std::pair<int, int>>& pts) {
  Plane pl;
  double m[3][3] = {}, rhs[3][3] = {};
  for (auto [x, y] : pts) {
    const double f[3] = {1.0, x + 0.5, y + 0.5};
    const uint8_t* p = im.pixel(x, y);
    for (int i = 0; i < 3; ++i) {
      for (int j = 0; j < 3; ++j) m[i][j] += f[i] * f[j];
      for (int c = 0; c < 3; ++c) rhs[c][i] += f[i] * p[c];
    }
  }
  // Cramer's rule; a degenerate set (too few points) falls back to the mean.
  auto det3 = [](const double a[3][3]) {
    return a[0][0] * (a[1][1] * a[2][2] - a[1][2] * a[2][1]) - a[0][1] * (a[1][0] * a[2][2] - a[1][2] * a[2][0]) +
           a[0][2] * (a[1][0] * a[2][1] - a[1][1] * a[2][0]);
  };
  const double d = det3(m);
  for (int c = 0; c < 3; ++c) {
    if (std::abs(d) < 1e-9) {
      pl.a[c][0] = m[0][0] > 0 ? rhs[c][0] / m[0][0] : 0;
      continue;
    }
    for (int k = 0; k < 3; ++k) {
      double mk[3][3];
      for (int i = 0; i < 3; ++i)
        for (int j = 0; j < 3; ++j) mk[i][j] = j == k ? rhs[c][i] : m[i][j];
      pl.a[c][k] = det3(mk) / d;
    }
  }
  return pl;
}

double cross2(double ox, double oy, double ax, double ay, double bx, double by) {
  return (ax - ox) * (by - oy) - (ay - oy) * (bx - ox);
}

/// Area of the convex hull of the points (monotone chain).
double hull_area(std::vector<std::pair<double, double>> pts) {
  if (pts.size() < 3) return 0;
  std::sort(pts.begin(), pts.end());
  std::vector<std::pair<double, double>> h(2 * pts.size());
  size_t k = 0;
  for (size_t i = 0; i < pts.size(); ++i) {
    while (k >= 2 && cross2(h[k - 2].first, h[k - 2].second, h[k - 1].first, h[k - 1].second, pts[i].first, pts[i].second) <= 0) --k;
    h[k++] = pts[i];
  }
  for (size_t i = pts.size() - 1, t = k + 1; i-- > 0;) {
    while (k >= t && cross2(h[k - 2].first, h[k - 2].second, h[k - 1].first, h[k - 1].second, pts[i].first, pts[i].second) <= 0) --k;
    h[k++] = pts[i];
  }
  double area = 0;
  for (size_t i = 0; i + 1 < k; ++i) area += h[i].first * h[i + 1].second - h[i + 1].first * h[i].second;
  return std::abs(area) / 2;
}

}  // namespace

ShapeAnalysis analyse_shape(const Image& im) {
  ShapeAnalysis r;
  const int w = im.width, h = im.height;
  if (w < 8 || h < 8) return r;
  // Background: a plane through a border frame, refitted without the pixels it explains badly
  // (a shape touching the border).
  const int b = std::max(1, std::min(w, h) / 32);
  std::vector<std::pair<int, int>> border;
  for (int y = 0; y < h; ++y)
    for (int x = 0; x < w; ++x)
      if (x < b || y < b || x >= w - b || y >= h - b) border.emplace_back(x, y);
  Plane bg = fit_plane(im, border);
  auto dist_bg = [&](int x, int y) {
    const uint8_t* p = im.pixel(x, y);
    double s = 0;
    for (int c = 0; c < 3; ++c) {
      const double d = p[c] - bg.at(c, x + 0.5, y + 0.5);
      s += d * d;
    }
    return std::sqrt(s);
  };
  std::vector<std::pair<int, int>> kept;
  for (auto pt : border)
    if (dist_bg(pt.first, pt.second) < kForeground / 2) kept.push_back(pt);
  if (kept.size() >= 8 && kept.size() < border.size()) bg = fit_plane(im, kept);

  std::vector<double> dist(static_cast<size_t>(w) * h);
  double dmax = 0;
  int64_t fg = 0;
  for (int y = 0; y < h; ++y)
    for (int x = 0; x < w; ++x) {
      const double d = dist[static_cast<size_t>(y) * w + x] = dist_bg(x, y);
      fg += d > kForeground;
      dmax = std::max(dmax, d);
    }
  if (fg < std::max<int64_t>(8, static_cast<int64_t>(w) * h / 500)) return r;

  // Fill colour: the mean of the strongest foreground pixels (blurred edges are mixtures).
  std::vector<double> strong;
  for (double d : dist)
    if (d > kForeground) strong.push_back(d);
  std::nth_element(strong.begin(), strong.begin() + static_cast<long>(strong.size() * 9 / 10), strong.end());
  const double cut = std::max(kForeground, 0.7 * strong[strong.size() * 9 / 10]);
  double fill[3] = {0, 0, 0}, nfill = 0;
  for (int y = 0; y < h; ++y)
    for (int x = 0; x < w; ++x)
      if (dist[static_cast<size_t>(y) * w + x] >= cut) {
        const uint8_t* p = im.pixel(x, y);
        for (int c = 0; c < 3; ++c) fill[c] += p[c];
        nfill += 1;
      }
  for (double& f : fill) f /= nfill;
  double best = 1e30;
  for (int k = 0; k < kNumShapeClasses; ++k) {
    double s = 0;
    for (int c = 0; c < 3; ++c) s += (fill[c] - kClasses[k].colour[c]) * (fill[c] - kClasses[k].colour[c]);
    if (s < best) best = s, r.colour = k;
  }

  // Coverage: each pixel's position between the background and the fill colour.
  std::vector<float> alpha(static_cast<size_t>(w) * h, 0.f);
  double sx = 0, sy = 0;
  for (int y = 0; y < h; ++y)
    for (int x = 0; x < w; ++x) {
      const size_t i = static_cast<size_t>(y) * w + x;
      if (dist[i] < kForeground / 2) continue;
      const uint8_t* p = im.pixel(x, y);
      double num = 0, den = 0;
      for (int c = 0; c < 3; ++c) {
        const double bgc = bg.at(c, x + 0.5, y + 0.5);
        num += (p[c] - bgc) * (fill[c] - bgc);
        den += (fill[c] - bgc) * (fill[c] - bgc);
      }
      const double a = std::clamp(num / std::max(den, 1.0), 0.0, 1.0);
      alpha[i] = static_cast<float>(a);
      r.area += a;
      sx += a * (x + 0.5);
      sy += a * (y + 0.5);
    }
  if (r.area < 4) return ShapeAnalysis{};
  r.cx = sx / r.area;
  r.cy = sy / r.area;
  auto sample = [&](double x, double y) {  // bilinear coverage at continuous (x, y)
    x -= 0.5;
    y -= 0.5;
    if (x < 0 || y < 0 || x > w - 1 || y > h - 1) return 0.0;
    const int ix = std::min(static_cast<int>(x), w - 2), iy = std::min(static_cast<int>(y), h - 2);
    const double fx = x - ix, fy = y - iy;
    auto a = [&](int xx, int yy) { return static_cast<double>(alpha[static_cast<size_t>(yy) * w + xx]); };
    return (a(ix, iy) * (1 - fx) + a(ix + 1, iy) * fx) * (1 - fy) + (a(ix, iy + 1) * (1 - fx) + a(ix + 1, iy + 1) * fx) * fy;
  };
  const double r_eq = std::sqrt(r.area / kPi);

  // Hole: mean coverage over a disc of radius r_eq / 4 at the centroid.
  double hole = 0;
  int nhole = 0;
  for (int j = -2; j <= 2; ++j)
    for (int i = -2; i <= 2; ++i) {
      if (i * i + j * j > 4) continue;
      hole += sample(r.cx + i * r_eq / 8, r.cy + j * r_eq / 8);
      ++nhole;
    }
  r.hole = hole / nhole;

  // Radial profile: the farthest 0.5-coverage crossing along each ray from the centroid.
  std::vector<std::pair<double, double>> outline;
  std::complex<double> c3 = 0, c4 = 0;
  double c0 = 0;
  const double reach = std::min(std::hypot(w, h), 4 * r_eq + 4);
  for (int k = 0; k < kRays; ++k) {
    const double th = 2 * kPi * k / kRays, dx = std::cos(th), dy = std::sin(th);
    double radius = 0, prev = sample(r.cx, r.cy);
    for (double t = 0.25; t <= reach; t += 0.25) {
      const double a = sample(r.cx + t * dx, r.cy + t * dy);
      if (prev >= 0.5 && a < 0.5) radius = t - 0.25 + 0.25 * (prev - 0.5) / (prev - a);
      prev = a;
    }
    outline.emplace_back(r.cx + radius * dx, r.cy + radius * dy);
    r.size = std::max(r.size, radius);
    c0 += radius;
    c3 += radius * std::polar(1.0, -3 * th);
    c4 += radius * std::polar(1.0, -4 * th);
  }
  if (c0 <= 0) return ShapeAnalysis{};
  r.harmonic3 = std::abs(c3) / c0;
  r.harmonic4 = std::abs(c4) / c0;
  const double hull = hull_area(outline);
  r.solidity = hull > 0 ? r.area / hull : 0;

  ShapeKind kind;
  if (r.hole < kHoleMax) kind = ShapeKind::kRing;
  else if (r.solidity < kSolidityMin) kind = ShapeKind::kCross;
  else if (r.harmonic3 > kTriangleH3 && r.harmonic3 > r.harmonic4) kind = ShapeKind::kTriangle;
  else if (r.harmonic4 > kSquareH4) kind = ShapeKind::kSquare;
  else kind = ShapeKind::kDisc;
  r.shape = static_cast<int>(kind);
  r.label = kClasses[r.colour].shape == kind ? r.colour : -1;
  return r;
}

ShapeScore score_shapes(const std::vector<ShapeAnalysis>& analyses, const std::vector<int>& truth,
                        const std::vector<int>& image_sizes) {
  AIM_CHECK(truth.empty() || truth.size() == analyses.size(),
            str_cat("score_shapes: ", truth.size(), " truth labels for ", analyses.size(), " analyses"));
  AIM_CHECK(image_sizes.size() == analyses.size(),
            str_cat("score_shapes: ", image_sizes.size(), " image sizes for ", analyses.size(), " analyses"));
  ShapeScore s;
  s.confusion.assign(kNumShapeClasses, std::vector<int64_t>(kNumShapeClasses + 1, 0));
  s.per_class.assign(kNumShapeClasses, {});
  struct Sums {
    double n = 0, x = 0, y = 0, r = 0, xx = 0, yy = 0, rr = 0;
  };
  std::vector<Sums> sums(kNumShapeClasses);
  for (size_t i = 0; i < analyses.size(); ++i) {
    const ShapeAnalysis& a = analyses[i];
    const int t = truth.empty() ? -1 : truth[i];
    ++s.images;
    s.no_shape += a.shape < 0;
    const int group = t >= 0 ? t : a.label;
    if (t >= 0 && t < kNumShapeClasses) {
      ++s.with_truth;
      s.correct += a.label == t;
      ++s.confusion[t][a.label + 1];
      s.per_class[t].correct += a.label == t;
    }
    if (group < 0 || group >= kNumShapeClasses) continue;
    ++s.per_class[group].count;
    if (a.shape < 0) continue;
    ++s.per_class[group].detected;
    const double side = std::max(1, image_sizes[i]);
    Sums& m = sums[group];
    const double x = a.cx / side, y = a.cy / side, r = a.size / side;
    m.n += 1, m.x += x, m.y += y, m.r += r, m.xx += x * x, m.yy += y * y, m.rr += r * r;
  }
  for (int k = 0; k < kNumShapeClasses; ++k) {
    const Sums& m = sums[k];
    if (m.n < 2) continue;
    auto sd = [&](double s1, double s2) { return std::sqrt(std::max(0.0, s2 / m.n - (s1 / m.n) * (s1 / m.n))); };
    s.per_class[k].std_cx = sd(m.x, m.xx);
    s.per_class[k].std_cy = sd(m.y, m.yy);
    s.per_class[k].std_size = sd(m.r, m.rr);
  }
  return s;
}

}  // namespace aim

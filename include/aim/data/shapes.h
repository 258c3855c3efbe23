#pragma once
// The built-in procedural dataset: one coloured shape per image on a dull textured background,
// ten classes that differ in shape or colour (each shape comes in two far-apart colours), and a
// deterministic analyser (no learning) that reads the class, centre and size back from pixels.
//
// - Every image is a pure function of (seed, label, index): the same on any thread count.
// - Shapes are supersampled 4x4 per pixel, so edges are anti-aliased.
// - Backgrounds are low-saturation, dark-to-mid colours (a gradient, smooth value noise and
//   fine noise) that no class colour comes near; shapes keep a margin to the border.
// - The analyser fits the background from the border, measures each pixel's coverage by the
//   dominant foreground colour, and classifies the shape from that soft mask (hole at the
//   centre, solidity, 3- and 4-fold harmonics of the radial profile), so it tolerates blur,
//   noise and the colour shifts of a VQ tokenizer.
#include <array>
#include <cstdint>
#include <string>
#include <vector>

#include "aim/data/image.h"

namespace aim {

enum class ShapeKind { kDisc, kSquare, kTriangle, kRing, kCross };
constexpr int kNumShapeKinds = 5;
constexpr int kNumShapeClasses = 10;

/// One class: its name ("red_disc"), shape and fill colour.
struct ShapeClass {
  const char* name;
  ShapeKind shape;
  std::array<uint8_t, 3> colour;
};

/// The ten classes in label order; `--classes C` uses the first C.
const std::array<ShapeClass, kNumShapeClasses>& shape_classes();
/// "disc" | "square" | "triangle" | "ring" | "cross".
const char* shape_kind_name(ShapeKind kind);
/// Folder and classes.txt name of a label: "<label>_<name>", e.g. "3_yellow_ring" (single digits
/// sort in label order, as ImageFolder needs).
std::string shape_class_dir(int label);

struct ShapesOptions {
  int64_t classes = 10;    ///< 1..10
  int64_t per_class = 100; ///< images per class
  int64_t size = 64;       ///< image side in pixels, 16..1024
  uint64_t seed = 0;
  /// Throws aim::Error naming the flag (--classes, --per-class, --size), expected and found.
  void validate() const;
};

/// Ground truth of one image, in pixels (rotation in degrees, 0 for round shapes). `size` is
/// the circumradius: the shape fits the circle of that radius around (cx, cy).
struct ShapeParams {
  int label = 0;
  double cx = 0, cy = 0, size = 0, rotation = 0;
};

struct ShapeSample {
  Image image;  // [size, size, 3]
  ShapeParams params;
};

/// Image `index` of class `label` (both >= 0).
ShapeSample make_shape_sample(const ShapesOptions& options, int label, int64_t index);

/// The background alone (as under image `index` of `label`): for "no shape" checks.
Image make_shape_background(const ShapesOptions& options, int label, int64_t index);

/// Writes dir/<class dir>/<index:05>.png, dir/classes.txt (one class dir name per line) and
/// dir/truth.jsonl (path, label, class, cx, cy, size, rotation per image, in label then index
/// order). Images are made in parallel; the files do not depend on the thread count.
void write_shapes_dataset(const std::string& dir, const ShapesOptions& options);

/// What the analyser read from one image. label is -1 when no shape was found or when the
/// detected shape and colour form no class; shape and colour are then still reported when seen.
struct ShapeAnalysis {
  int label = -1;
  int shape = -1;   ///< ShapeKind as int, -1 = no shape found
  int colour = -1;  ///< index of the class whose colour is nearest, -1 = no shape found
  double cx = 0, cy = 0;  ///< centroid of the coverage, pixels
  double size = 0;        ///< circumradius (largest radius of the 0.5-coverage outline), pixels
  double area = 0;        ///< coverage sum, pixels
  // The features the shape was read from.
  double hole = 0;       ///< mean coverage near the centroid (a ring has ~0)
  double solidity = 0;   ///< area / convex hull of the outline (a cross has ~0.71)
  double harmonic3 = 0;  ///< |3rd| / 0th Fourier coefficient of the radial profile (triangle)
  double harmonic4 = 0;  ///< |4th| / 0th (square)
};

/// Classifies one image of any size. Deterministic; no state.
ShapeAnalysis analyse_shape(const Image& image);

/// Accuracy, confusion and spread over a set of analysed images.
struct ShapeScore {
  int64_t images = 0, with_truth = 0, correct = 0, no_shape = 0;
  /// [truth label][detected label + 1] counts; column 0 is "-1" (none). Rows for labels 0..9.
  std::vector<std::vector<int64_t>> confusion;
  /// Per label (truth when given, else detected): count, correct, how many had a shape found
  /// (`detected`), and the std of the detected centre x, y and size as fractions of the image
  /// side (0 with fewer than 2 detected: no spread to measure).
  struct PerClass {
    int64_t count = 0, correct = 0, detected = 0;
    double std_cx = 0, std_cy = 0, std_size = 0;
  };
  std::vector<PerClass> per_class;
  double accuracy() const { return with_truth ? static_cast<double>(correct) / with_truth : 0.0; }
};

/// Scores analyses against `truth` (one label per analysis, -1 = unknown; may be empty).
/// `image_sizes` gives each image's side for the spread (one per analysis).
ShapeScore score_shapes(const std::vector<ShapeAnalysis>& analyses, const std::vector<int>& truth,
                        const std::vector<int>& image_sizes);

}  // namespace aim

// Synthetic class-conditional codes: each sequence a function of (seed, its index), written in
// chunks (memory does not grow with --per-class) without seams between them.
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>

#include "aim/data/code_dataset.h"
#include "aim/data/synthetic.h"

namespace aim {
namespace {

namespace fs = std::filesystem;

TEST(SyntheticCodes, SequencesDependOnTheirIndexOnlyAcrossChunks) {
  const fs::path dir = fs::temp_directory_path() / ("aim_synthetic_test_" + std::to_string(::getpid()));
  fs::remove_all(dir);
  SyntheticCodesOptions big;
  big.classes = 2;
  big.per_class = 9000;  // 18,000 sequences: more than one chunk of 16,384
  big.tokens = 16;
  big.vocab_size = 64;
  write_synthetic_codes((dir / "big.codes").string(), big);
  // Sequences 16,380-16,399 on their own: the same codes and labels (an even first index keeps
  // the classes' interleaving).
  SyntheticCodesOptions part = big;
  part.per_class = 10;
  part.first_index = 16380;
  write_synthetic_codes((dir / "part.codes").string(), part);

  CodeDataset a((dir / "big.codes").string()), b((dir / "part.codes").string());
  ASSERT_EQ(a.size(), 18000);
  ASSERT_EQ(b.size(), 20);
  EXPECT_EQ(a.valid_indices().size(), 18000u);
  for (int64_t k = 0; k < 20; ++k) {
    EXPECT_EQ(a.label(16380 + k), b.label(k)) << k;
    const uint16_t *x = a.codes(16380 + k, 0), *y = b.codes(k, 0);
    for (int64_t t = 0; t < 16; ++t) ASSERT_EQ(x[t], y[t]) << "sequence " << 16380 + k << " token " << t;
  }
  // Every code is inside the codebook, every label one of the classes.
  for (int64_t i = 0; i < a.size(); ++i) {
    ASSERT_EQ(a.label(i), i % 2) << i;
    const uint16_t* c = a.codes(i, 0);
    for (int64_t t = 0; t < 16; ++t) ASSERT_LT(c[t], 64) << i;
  }
  fs::remove_all(dir);
}

}  // namespace
}  // namespace aim

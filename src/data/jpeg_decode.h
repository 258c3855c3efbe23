// JPEG decoding with libjpeg(-turbo), the library PIL decodes with, so that the pixels equal
// `Image.open(f).convert('RGB')`'s (internal to src/data).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

#include "aim/data/image.h"

namespace aim::detail {

/// Decodes a complete JPEG stream to RGB as PIL does: accurate integer IDCT, fancy (triangle)
/// chroma upsampling, grayscale replicated to three channels, and 4-component streams read as
/// Adobe-convention (inverted) CMYK and converted with PIL's CMYK -> RGB arithmetic.
/// `max_pixels` > 0 refuses larger images before decompressing them. Throws aim::Error naming
/// `what` with libjpeg's message on a corrupt stream.
Image decode_jpeg(const uint8_t* data, size_t size, const std::string& what, int64_t max_pixels);

}  // namespace aim::detail

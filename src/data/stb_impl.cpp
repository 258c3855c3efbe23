// The one translation unit holding stb_image / stb_image_write's implementations (Debian's
// libstb-dev ships headers only). We compile only the decoders we use: PNG, BMP and binary
// PPM/PGM. JPEG goes through libjpeg (jpeg_decode.cpp), whose output PIL's equals; stb's IDCT and
// chroma upsampling differ from it.
#define STBI_ONLY_PNG
#define STBI_ONLY_BMP
#define STBI_ONLY_PNM
#define STB_IMAGE_IMPLEMENTATION
#include <stb_image.h>

#define STB_IMAGE_WRITE_IMPLEMENTATION
#include <stb_image_write.h>

#!/usr/bin/env python3
"""Images and PIL reference outputs for tests/data/image_test.cpp.

Usage: image_fixtures.py OUT_DIR
Writes encoded test images, raw uint8 RGB (HWC) references computed with PIL, and OUT_DIR/manifest
whose lines the C++ test reads:

  decode  FILE REF W H KIND      KIND: png, bmp, pnm or jpeg (every kind must equal PIL)
  error   FILE                   PIL refuses it too (checked here)
  resize  SRC SW SH FILTER W H REF
  cca     SRC SW SH SIZE REF     ADM center_crop_arr
  aimeval SRC SW SH SIZE REF     AiM validation transform (torchvision Resize + CenterCrop)
  tencrop SRC SW SH SIZE REF     LlamaGen: center_crop_arr(int(SIZE * 1.1)) then TenCrop(SIZE)

Exits 77 when numpy or PIL is missing.
"""
import math
import os
import struct
import sys
import zlib

try:
    import numpy as np
    from PIL import Image
except ImportError as e:  # the C++ test skips with this message
    print(f"image fixtures need numpy and Pillow: {e}")
    sys.exit(77)

OUT = sys.argv[1]
os.makedirs(OUT, exist_ok=True)
manifest = []
FILTERS = {
    "box": Image.BOX,
    "bilinear": Image.BILINEAR,
    "hamming": Image.HAMMING,
    "bicubic": Image.BICUBIC,
    "lanczos": Image.LANCZOS,
}


def photo(w, h, seed):
    """Smooth gradients, flat shapes with sharp edges, a fine checker strip, and noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    img = np.stack(
        [
            127 + 100 * np.sin(x / w * 3.1 + y / h * 1.3),
            127 + 100 * np.cos(x / w * 1.7 - y / h * 2.9),
            255 * (x + y) / (w + h),
        ],
        -1,
    )
    img[(x > w * 0.2) & (x < w * 0.45) & (y > h * 0.3) & (y < h * 0.6)] = [250, 20, 30]
    img[(x - w * 0.7) ** 2 + (y - h * 0.4) ** 2 < (min(w, h) * 0.18) ** 2] = [10, 240, 60]
    img[((x // 3 + y // 3) % 2 == 0) & (y > h * 0.8)] = 0
    img += rng.normal(0, 12, img.shape)
    return np.clip(np.round(img), 0, 255).astype(np.uint8)


def save_raw(name, arr):
    arr = np.ascontiguousarray(arr, dtype=np.uint8)
    with open(os.path.join(OUT, name), "wb") as f:
        f.write(arr.tobytes())
    return name


def path(name):
    return os.path.join(OUT, name)


def write_png(name, arr, color_type, depth):
    """Minimal PNG writer for layouts PIL cannot save (16-bit RGB, RGBA, gray+alpha)."""
    h, w = arr.shape[:2]
    dtype = ">u2" if depth == 16 else "u1"
    rows = arr.reshape(h, -1).astype(dtype)
    raw = b"".join(b"\x00" + rows[r].tobytes() for r in range(h))

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", w, h, depth, color_type, 0, 0, 0)
    with open(path(name), "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw)) +
                chunk(b"IEND", b""))


def strip_app14(data):
    """The JPEG without its APP14 'Adobe' segments."""
    out, pos = bytearray(data[:2]), 2
    while pos < len(data):
        assert data[pos] == 0xFF
        marker = data[pos + 1]
        if marker == 0xDA:
            out += data[pos:]
            break
        length = struct.unpack(">H", data[pos + 2:pos + 4])[0]
        if not (marker == 0xEE and data[pos + 4:pos + 9] == b"Adobe"):
            out += data[pos:pos + 2 + length]
        pos += 2 + length
    return bytes(out)


def add_decode(name, kind):
    im = Image.open(path(name))
    ref = np.asarray(im.convert("RGB"))
    manifest.append(f"decode {name} {save_raw(name + '.ref', ref)} {ref.shape[1]} {ref.shape[0]} {kind}")


def add_error(name, data):
    with open(path(name), "wb") as f:
        f.write(data)
    try:
        Image.open(path(name)).convert("RGB")
    except Exception:
        manifest.append(f"error {name}")
        return
    raise SystemExit(f"PIL decoded {name}, which the test expects to be refused")


# ------------------------------------------------------------------------------ decoding
base = photo(97, 75, 1)
rgb = Image.fromarray(base)
rgb.save(path("rgb_q90.jpg"), quality=90)
rgb.save(path("rgb_444.jpg"), quality=95, subsampling=0)
rgb.save(path("rgb_422.jpg"), quality=85, subsampling=1)
rgb.save(path("progressive.jpg"), quality=85, progressive=True)
rgb.convert("L").save(path("gray.jpg"), quality=90)
rgb.convert("CMYK").save(path("cmyk.jpg"), quality=92)
assert Image.open(path("cmyk.jpg")).info.get("adobe") is not None
with open(path("cmyk.jpg"), "rb") as f:
    cmyk_bytes = f.read()
with open(path("cmyk_noadobe.jpg"), "wb") as f:
    f.write(strip_app14(cmyk_bytes))
assert Image.open(path("cmyk_noadobe.jpg")).info.get("adobe") is None
Image.fromarray(base[:, :96]).save(path("rgb_422_even.jpg"), quality=85, subsampling=1)
Image.fromarray(photo(500, 375, 6)).save(path("photo_q75.jpg"), quality=75)
rgb.save(path("restart.jpg"), quality=90, restart_marker_blocks=3)
Image.fromarray(photo(333, 250, 7)).save(path("photo_420_odd.jpg"), quality=80, subsampling=2)
with open(path("rgb_q90.jpg"), "rb") as f:
    jpeg = f.read()
with open(path("junk_after_eoi.jpg"), "wb") as f:
    f.write(jpeg + b"\x00junk\xff\xd8")
for name in ["rgb_q90.jpg", "rgb_444.jpg", "rgb_422.jpg", "rgb_422_even.jpg", "photo_q75.jpg",
             "progressive.jpg", "gray.jpg", "cmyk.jpg", "cmyk_noadobe.jpg", "junk_after_eoi.jpg",
             "restart.jpg", "photo_420_odd.jpg"]:
    add_decode(name, "jpeg")

alpha = (np.arange(97 * 75).reshape(75, 97) % 256).astype(np.uint8)
rgb.save(path("rgb.png"))
Image.fromarray(np.dstack([base, alpha])).save(path("rgba.png"))
rgb.convert("L").save(path("gray.png"))
Image.fromarray(np.dstack([np.asarray(rgb.convert("L")), alpha])).save(path("la.png"))
rgb.quantize(64).save(path("palette.png"), transparency=3)
rgb.convert("1").save(path("bilevel.png"))
rng = np.random.default_rng(2)
write_png("rgb16.png", rng.integers(0, 65536, (75, 97, 3)), 2, 16)
write_png("rgba16.png", rng.integers(0, 65536, (75, 97, 4)), 6, 16)
write_png("la16.png", rng.integers(0, 65536, (75, 97, 2)), 4, 16)
# Values both below and above 255: PIL clamps I;16 to 255 in convert('RGB').
Image.fromarray(rng.integers(0, 600, (75, 97)).astype(np.uint16)).save(path("gray16.png"))
assert Image.open(path("gray16.png")).mode == "I;16"
with open(path("rgb.png"), "rb") as f:
    png = f.read()
assert png[-12:-8] == b"\x00\x00\x00\x00" and png[-8:-4] == b"IEND"
with open(path("no_iend.png"), "wb") as f:
    f.write(png[:-12])  # PIL reads a PNG whose IEND chunk is missing
rgb.save(path("rgb.bmp"))
rgb.quantize(200).save(path("palette.bmp"))
rgb.convert("L").save(path("gray.bmp"))
Image.fromarray(np.dstack([base, alpha])).save(path("rgba.bmp"))
for name in ["rgb.png", "rgba.png", "gray.png", "la.png", "palette.png", "bilevel.png",
             "rgb16.png", "rgba16.png", "la16.png", "gray16.png", "no_iend.png"]:
    add_decode(name, "png")
for name in ["rgb.bmp", "palette.bmp", "gray.bmp", "rgba.bmp"]:
    add_decode(name, "bmp")
rgb.save(path("rgb.ppm"))
rgb.convert("L").save(path("gray.pgm"))
with open(path("comment.ppm"), "wb") as f:  # a comment in the header
    f.write(b"P6\n# made by hand\n97 75\n255\n" + base.tobytes())
for name in ["rgb.ppm", "gray.pgm", "comment.ppm"]:
    add_decode(name, "pnm")
# PIL rescales samples of another maximum value; aim refuses such files (image_test.cpp).
with open(path("maxval100.pgm"), "wb") as f:
    f.write(b"P5 4 2 100\n" + bytes(range(0, 80, 10)))

# An APP1 payload holding an end-of-image marker (as EXIF thumbnails do) must not make a cut
# stream look complete.
rgb.save(path("exif.jpg"), quality=90, exif=b"Exif\x00\x00" + b"\xff\xd8\xff\xd9" * 8)
with open(path("exif.jpg"), "rb") as f:
    exif_jpeg = f.read()
add_error("truncated_exif.jpg", exif_jpeg[: len(exif_jpeg) * 2 // 3])
add_error("truncated_half.jpg", jpeg[: len(jpeg) // 2])
add_error("truncated_eoi.jpg", jpeg[:-2])
add_error("truncated.png", png[: len(png) // 2])
add_error("random.jpg", np.random.default_rng(3).integers(0, 256, 4096).astype(np.uint8).tobytes())
add_error("empty.jpg", b"")

# ------------------------------------------------------------------------------ resizing
small = photo(173, 131, 4)
large = photo(517, 389, 5)
save_raw("small.rgb", small)
save_raw("large.rgb", large)
cases = [
    ("small.rgb", small, (260, 197)),  # x1.5
    ("small.rgb", small, (346, 262)),  # x2
    ("small.rgb", small, (200, 140)),  # slight upscale
    ("small.rgb", small, (401, 96)),   # up in x, down in y
    ("large.rgb", large, (258, 194)),  # ~1/2
    ("large.rgb", large, (191, 144)),  # 0.37
    ("large.rgb", large, (52, 39)),    # 1/10
    ("large.rgb", large, (300, 389)),  # x only
    ("large.rgb", large, (517, 200)),  # y only
]
for src_name, src, (w, h) in cases:
    for fname, f in FILTERS.items():
        out = np.asarray(Image.fromarray(src).resize((w, h), resample=f))
        ref = save_raw(f"resize_{src_name[:-4]}_{fname}_{w}x{h}.ref", out)
        manifest.append(f"resize {src_name} {src.shape[1]} {src.shape[0]} {fname} {w} {h} {ref}")


def center_crop_arr(pil_image, image_size):
    """ADM / LlamaGen center_crop_arr, as in guided-diffusion's image_datasets.py."""
    while min(*pil_image.size) >= 2 * image_size:
        pil_image = pil_image.resize(tuple(x // 2 for x in pil_image.size), resample=Image.BOX)
    scale = image_size / min(*pil_image.size)
    pil_image = pil_image.resize(tuple(round(x * scale) for x in pil_image.size), resample=Image.BICUBIC)
    arr = np.array(pil_image)
    crop_y = (arr.shape[0] - image_size) // 2
    crop_x = (arr.shape[1] - image_size) // 2
    return Image.fromarray(arr[crop_y: crop_y + image_size, crop_x: crop_x + image_size])


def tv_resize_short(img, size, interpolation):
    """torchvision.transforms.Resize(size) on a PIL image (F.resize, _compute_resized_output_size)."""
    w, h = img.size
    short, long = (w, h) if w <= h else (h, w)
    new_short, new_long = size, int(size * long / short)
    new_w, new_h = (new_short, new_long) if w <= h else (new_long, new_short)
    if (new_w, new_h) == (w, h):
        return img
    return img.resize((new_w, new_h), interpolation)


def tv_center_crop(img, size):
    """torchvision.transforms.functional.center_crop (no padding case)."""
    w, h = img.size
    top = int(round((h - size) / 2.0))
    left = int(round((w - size) / 2.0))
    return img.crop((left, top, left + size, top + size))


def tv_ten_crop(img, size):
    """torchvision five_crop(img) + five_crop(hflip(img))."""
    def five(im):
        w, h = im.size
        return [im.crop((0, 0, size, size)), im.crop((w - size, 0, w, size)),
                im.crop((0, h - size, size, h)), im.crop((w - size, h - size, w, h)),
                tv_center_crop(im, size)]
    return five(img) + five(img.transpose(Image.FLIP_LEFT_RIGHT))


for i, (w, h, size) in enumerate([(700, 525, 256), (300, 200, 256), (640, 480, 128),
                                  (1001, 333, 256), (513, 1027, 256), (500, 375, 281),
                                  (255, 383, 64)]):
    src = photo(w, h, 10 + i)
    name = save_raw(f"cca_src{i}.rgb", src)
    ref = save_raw(f"cca{i}.ref", np.asarray(center_crop_arr(Image.fromarray(src), size)))
    manifest.append(f"cca {name} {w} {h} {size} {ref}")

for i, (w, h) in enumerate([(500, 375), (375, 500), (288, 300), (1001, 333), (290, 291)]):
    src = photo(w, h, 20 + i)
    name = save_raw(f"aim_src{i}.rgb", src)
    out = tv_center_crop(tv_resize_short(Image.fromarray(src), round(1.125 * 256), Image.LANCZOS), 256)
    ref = save_raw(f"aimeval{i}.ref", np.asarray(out))
    manifest.append(f"aimeval {name} {w} {h} 256 {ref}")

for i, (w, h) in enumerate([(500, 375), (333, 500)]):
    src = photo(w, h, 30 + i)
    name = save_raw(f"tencrop_src{i}.rgb", src)
    crops = tv_ten_crop(center_crop_arr(Image.fromarray(src), int(256 * 1.1)), 256)
    ref = save_raw(f"tencrop{i}.ref", np.stack([np.asarray(c) for c in crops]))
    manifest.append(f"tencrop {name} {w} {h} 256 {ref}")

with open(path("manifest"), "w") as f:
    f.write("\n".join(manifest) + "\n")
print(f"{len(manifest)} cases in {OUT}")

"""Prints, as one JSON line, what TensorBoard's own event reader finds in a folder of event files:

  {"files": N, "scalars": {tag: [[step, value, wall_time], ...]},
   "images": {tag: [[step, width, height, fnv1a64 of the PNG bytes], ...]}}

Orphaned data is not purged, so events a resume should have removed show up as repeated steps.
Each image's bytes are decoded with Pillow and must have the width and height the event states.
"""
import io
import json
import os
import sys

from PIL import Image
from tensorboard.backend.event_processing import event_accumulator as ea


def fnv1a64(data: bytes) -> str:
    h = 0xCBF29CE484222325
    for b in data:
        h = ((h ^ b) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return "%016x" % h


def main() -> int:
    if len(sys.argv) != 2:
        print("usage: read_tensorboard.py FOLDER", file=sys.stderr)
        return 2
    folder = sys.argv[1]
    acc = ea.EventAccumulator(folder, size_guidance={ea.SCALARS: 0, ea.IMAGES: 0}, purge_orphaned_data=False)
    acc.Reload()
    out = {"files": sum("tfevents" in f for f in os.listdir(folder)), "scalars": {}, "images": {}}
    tags = acc.Tags()
    for tag in tags["scalars"]:
        out["scalars"][tag] = [[e.step, e.value, e.wall_time] for e in acc.Scalars(tag)]
    for tag in tags["images"]:
        rows = []
        for e in acc.Images(tag):
            size = Image.open(io.BytesIO(e.encoded_image_string)).size
            if size != (e.width, e.height):
                print(f"{tag} step {e.step}: the PNG is {size}, the event says {(e.width, e.height)}", file=sys.stderr)
                return 1
            rows.append([e.step, e.width, e.height, fnv1a64(e.encoded_image_string)])
        out["images"][tag] = rows
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())

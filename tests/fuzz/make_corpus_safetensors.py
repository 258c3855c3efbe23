#!/usr/bin/env python3
"""Writes the seed corpus of the safetensors header fuzzer (tests/fuzz/corpus_safetensors/).

Standard library only. Each seed is a whole tiny file: valid ones to start from, and one per
rule of parse_safetensors_header that a mutation should keep probing.
"""
import json
import os
import struct
import sys


def pack(header, data=b"", pad=True, length=None):
    text = header if isinstance(header, (bytes, str)) else json.dumps(header, separators=(",", ":"))
    raw = text.encode() if isinstance(text, str) else text
    if pad:
        raw += b" " * ((8 - len(raw) % 8) % 8)
    n = len(raw) if length is None else length
    return struct.pack("<Q", n) + raw + data


def entry(dtype, shape, begin, end):
    return {"dtype": dtype, "shape": shape, "data_offsets": [begin, end]}


SEEDS = {
    "valid_two": pack({"__metadata__": {"format": "pt"}, "w": entry("F32", [2], 0, 8),
                       "b": entry("U8", [3], 8, 11)}, bytes(range(1, 12))),
    "valid_empty_header": pack({}),
    "valid_all_dtypes": pack({
        "f64": entry("F64", [1], 0, 8), "i64": entry("I64", [], 8, 16),
        "f32": entry("F32", [1, 1], 16, 20), "i32": entry("I32", [1], 20, 24),
        "f16": entry("F16", [1], 24, 26), "bf16": entry("BF16", [1], 26, 28),
        "i16": entry("I16", [1], 28, 30), "u16": entry("U16", [1], 30, 32),
        "u8": entry("U8", [1], 32, 33), "empty": entry("F32", [0, 4], 33, 33),
    }, bytes(range(1, 34))),
    "valid_gap_and_unaligned": pack({"a": entry("U8", [1], 0, 1), "b": entry("F32", [1], 1, 5),
                                     "c": entry("I16", [2], 9, 13)}, bytes(range(1, 14))),
    "bad_duplicate_key": pack('{"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},'
                              '"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}', b"\x01"),
    "bad_overlap": pack({"a": entry("U8", [2], 0, 2), "b": entry("U8", [2], 1, 3)},
                        b"\x01\x02\x03"),
    "bad_dtype": pack({"a": entry("BOOL", [1], 0, 1)}, b"\x01"),
    "bad_negative_dim": pack({"a": entry("U8", [-1], 0, 1)}, b"\x01"),
    "bad_size_mismatch": pack({"a": entry("F32", [2], 0, 4)}, b"\x01" * 4),
    "bad_out_of_range": pack({"a": entry("U8", [4], 0, 4)}, b"\x01"),
    "bad_offsets_triple": pack('{"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1,2]}}', b"\x01"),
    "bad_overflow_shape": pack({"a": entry("F64", [4294967296, 4294967296], 0, 8)}, b"\x01" * 8),
    "bad_nested": pack('{"a":{"dtype":"U8","shape":[[1]],"data_offsets":[0,1]}}', b"\x01"),
    "bad_metadata_value": pack({"__metadata__": {"k": 1}}),
    "bad_array_root": pack("[1,2,3]"),
    "bad_not_json": pack("{not json"),
    "bad_length_past_end": pack({}, length=1 << 20),
    "bad_length_huge": pack({}, length=1 << 63),
    "bad_short": b"\x08\x00\x00",
}


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__),
                                                              "corpus_safetensors")
    os.makedirs(out, exist_ok=True)
    for name, blob in SEEDS.items():
        assert len(blob) < 2048, name
        with open(os.path.join(out, name + ".safetensors"), "wb") as f:
            f.write(blob)


if __name__ == "__main__":
    main()

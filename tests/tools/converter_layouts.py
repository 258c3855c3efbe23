#!/usr/bin/env python3
"""tools/convert_checkpoint.py's layout check at the official sizes: for each file of
tests/fixtures/official_layout/ (every key and shape of AiM-B/L/XL/1B's language model and of
LlamaGen's VQ-16, listed from the official code), the configuration the converter derives from
those shapes must give back exactly those keys and shapes. Meta tensors: nothing is allocated.

Usage: converter_layouts.py FIXTURES_DIR"""
import collections
import importlib.util
import json
import os
import sys


def main():
    fixtures = sys.argv[1]
    root = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
    spec = importlib.util.spec_from_file_location(
        "convert_checkpoint", os.path.join(root, "tools", "convert_checkpoint.py"))
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    tool.require_torch()
    torch = tool.torch
    folder = os.path.join(fixtures, "official_layout")
    names = sorted(n for n in os.listdir(folder) if n.endswith(".txt"))
    failures = 0
    for name in names:
        want = collections.OrderedDict()
        for line in open(os.path.join(folder, name)):
            key, value = line.split()
            if key != "total":
                want[key] = tuple(json.loads(value))
        sd = collections.OrderedDict((k, torch.empty(s, device="meta")) for k, s in want.items())
        if all(k.startswith("mamba.") for k in want):
            cfg, _ = tool.aim_config(sd, "mamba.", "tied")
            got = tool.aim_layout(cfg, "mamba.")
            what = "d_model %d, %d layers, %s" % (cfg["d_model"], cfg["n_layer"],
                                                  cfg["ssm_cfg"]["layer"])
        else:
            cfg, _ = tool.vq_config(sd, "", None)
            got = tool.vq_layout(cfg, "")
            what = "ch %d, ch_mult %s, codebook %dx%d" % (
                cfg["ch"], cfg["encoder_ch_mult"], cfg["codebook_size"], cfg["codebook_embed_dim"])
        diff = sorted(set(got.items()) ^ set(want.items()))
        problems = tool.layout_problems(sd, got)
        ok = not diff and not problems
        failures += not ok
        print("%-12s %4d tensors (%s): %s" % (name, len(want), what,
                                              "ok" if ok else "FAIL %s %s" % (diff[:6], problems)))
    if not names:
        print("FAIL: no layout files in %s" % folder)
        failures += 1
    print("converter_layouts: %d of %d layouts %s" % (len(names) - failures, len(names),
                                                       "ok" if not failures else "FAILED"))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())

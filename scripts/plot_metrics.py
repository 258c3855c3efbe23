#!/usr/bin/env python3
"""Draw the curves of an `aim train` run: loss (and held-out loss), learning rate, gradient
norm, throughput, model FLOPs utilisation and FID (train.fid_every), from <run>/metrics.jsonl
to one PNG.

    .venv/bin/python scripts/plot_metrics.py runs/aim_l            # -> runs/aim_l/metrics.png
    .venv/bin/python scripts/plot_metrics.py runs/a runs/b --out cmp.png --smooth 20

Several runs are drawn on the same axes (labelled by directory name). A step logged twice
(a run resumed from an earlier checkpoint) keeps its last entry.
"""
import argparse
import json
import math
import os
import sys


def read_metrics(run_dir):
    path = os.path.join(run_dir, "metrics.jsonl")
    if not os.path.isfile(path):
        sys.exit(f"plot_metrics: {path}: no such file (is {run_dir} an aim train run directory?)")
    kinds = {"train": {}, "eval": {}, "fid": {}}
    with open(path) as f:
        for number, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                sys.exit(f"plot_metrics: {path}:{number}: not JSON ({e})")
            target = kinds.get(row.get("kind", "train"))
            if target is not None:
                target[int(row["step"])] = row
    return tuple([k[s] for s in sorted(k)] for k in kinds.values())


def smooth(values, window):
    if window <= 1:
        return values
    out, acc = [], []
    for v in values:
        acc.append(v)
        if len(acc) > window:
            acc.pop(0)
        out.append(sum(acc) / len(acc))
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", help="run directories (holding metrics.jsonl)")
    parser.add_argument("--out", help="PNG to write (default: <first run>/metrics.png)")
    parser.add_argument("--smooth", type=int, default=1, help="moving-average window for the loss")
    args = parser.parse_args()

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = [(os.path.basename(os.path.normpath(r)), *read_metrics(r)) for r in args.runs]
    has_mfu = any("mfu" in row for _, train, _, _ in data for row in train)
    has_fid = any(fid for _, _, _, fid in data)
    panels = ["loss", "lr", "grad_norm", "images_per_s"] + (["mfu"] if has_mfu else []) + (["fid"] if has_fid else [])
    titles = {"loss": "training loss (nats/token)", "lr": "learning rate", "grad_norm": "gradient norm (before clipping)",
              "images_per_s": "throughput (images/s, all ranks)", "mfu": "model FLOPs utilisation (%)",
              "fid": "FID"}
    cols = 2
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(12, 3.6 * rows), squeeze=False)
    for i, key in enumerate(panels):
        ax = axes[i // cols][i % cols]
        for name, train, held_out, fid in data:
            if key == "fid":
                if fid:
                    ax.plot([r["step"] for r in fid], [r["fid"] for r in fid], "o-",
                            label=f"{name} ({fid[-1]['samples']} images, cfg {fid[-1]['cfg']:g})")
                continue
            steps = [r["step"] for r in train if key in r]
            values = [r[key] * (100.0 if key == "mfu" else 1.0) for r in train if key in r]
            if key == "loss":
                values = smooth(values, args.smooth)
            if steps:
                ax.plot(steps, values, label=name if key != "loss" else f"{name} train")
            if key == "loss" and held_out:
                held = [r for r in held_out if "val_loss" in r]
                ax.plot([r["step"] for r in held], [r["val_loss"] for r in held], "o-",
                        label=f"{name} held-out")
        ax.set_title(titles[key])
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if key == "lr":
            ax.ticklabel_format(axis="y", style="sci", scilimits=(0, 0))
        if len(data) > 1 or key in ("loss", "fid"):
            ax.legend(fontsize=8)
    for j in range(len(panels), rows * cols):
        axes[j // cols][j % cols].axis("off")
    fig.tight_layout()
    out = args.out or os.path.join(args.runs[0], "metrics.png")
    fig.savefig(out, dpi=110)
    print(out)


if __name__ == "__main__":
    main()

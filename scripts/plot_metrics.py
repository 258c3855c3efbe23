#!/usr/bin/env python3
"""Draw the curves of an `aim train` run: loss (and held-out loss), learning rate, gradient
norm, throughput, model FLOPs utilisation and FID (train.fid_every), from <run>/metrics.jsonl
to one PNG.

    .venv/bin/python scripts/plot_metrics.py runs/aim_l            # -> runs/aim_l/metrics.png
    .venv/bin/python scripts/plot_metrics.py runs/a runs/b --out cmp.png --smooth 20

Several runs are drawn on the same axes (labelled by directory name). A step logged twice
(a run resumed from an earlier checkpoint) keeps its last entry. Lines that are not JSON records
with an integer step (one cut short by a crash, or a run still writing) are skipped with a note,
and null values (a non-finite loss or gradient norm) are left out of the curves.
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
    skipped = []
    with open(path) as f:
        for number, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                row = None
            if not isinstance(row, dict) or not isinstance(row.get("step"), int):
                skipped.append(number)
                continue
            target = kinds.get(row.get("kind", "train"))
            if target is not None:
                target[row["step"]] = row
    if skipped:
        print(f"plot_metrics: {path}: skipped {len(skipped)} line(s) that are not records with a step "
              f"(line {', '.join(map(str, skipped[:5]))}{', ...' if len(skipped) > 5 else ''})", file=sys.stderr)
    return tuple([k[s] for s in sorted(k)] for k in kinds.values())


def is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


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
    has_fid = any(is_number(r.get("fid")) for _, _, _, fid in data for r in fid)
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
                fid = [r for r in fid if is_number(r.get("fid"))]
                if fid:
                    last = fid[-1]
                    detail = ", ".join(([f"{last['samples']} images"] if "samples" in last else []) +
                                       ([f"cfg {last['cfg']:g}"] if is_number(last.get("cfg")) else []))
                    ax.plot([r["step"] for r in fid], [r["fid"] for r in fid], "o-",
                            label=f"{name} ({detail})" if detail else name)
                continue
            logged = [r for r in train if is_number(r.get(key))]
            steps = [r["step"] for r in logged]
            values = [r[key] * (100.0 if key == "mfu" else 1.0) for r in logged]
            if key == "loss":
                values = smooth(values, args.smooth)
            if steps:
                ax.plot(steps, values, label=name if key != "loss" else f"{name} train")
            if key == "loss" and held_out:
                held = [r for r in held_out if is_number(r.get("val_loss"))]
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

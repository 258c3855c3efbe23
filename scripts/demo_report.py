#!/usr/bin/env python3
"""Report of scripts/demo.sh: reads what each stage wrote under --out and prints one summary.

Checks that every stage's artefact exists (exit 1 naming the missing file otherwise) and, with
--min-accuracy, that the analyser's accuracy on the samples reaches it at every guidance scale.
With --targets it also states whether the full demo's targets are met (docs/perf.md).
Standard library only.
"""
import argparse
import json
import os
import sys

TARGET_ACCURACY = 0.90
# Diversity: the mean spread (std of centre x, centre y and size) of one class's samples over the
# same figure in the training data; "close to the data's" = within this band.
TARGET_DIVERSITY = (0.75, 1.25)


def fail(msg):
    print(f"demo_report: {msg}", file=sys.stderr)
    sys.exit(1)


def need(path):
    if not os.path.exists(path):
        fail(f"missing artefact {path}: the stage that writes it did not finish")
    return path


def load_json(path):
    with open(need(path)) as f:
        return json.load(f)


def num(value, spec):
    """`value` formatted with `spec`, or "nan" for the null a non-finite figure is written as."""
    return format(value, spec) if isinstance(value, (int, float)) else "nan"


def last_train_record(metrics_path):
    last = None
    with open(need(metrics_path)) as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut short by a crash
            if isinstance(rec, dict) and rec.get("kind") == "train" and isinstance(rec.get("step"), int):
                last = rec
    if last is None:
        fail(f"{metrics_path} has no training record")
    return last


def spread(analysis):
    """Mean over classes of (std cx + std cy + std size) / 3, for classes with >= 2 detections
    (with fewer the analyser reports a spread of 0, which is no measurement)."""
    vals = [(c["std_cx"] + c["std_cy"] + c["std_size"]) / 3 for c in analysis["per_class"]
            if c.get("detected", c.get("images", 0)) >= 2 and "std_cx" in c]
    return sum(vals) / len(vals) if vals else float("nan")


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--out", required=True, help="the demo's output folder")
    p.add_argument("--cfgs", nargs="+", required=True, help="guidance scales that were sampled")
    p.add_argument("--min-accuracy", type=float, help="fail when any cfg's sample accuracy is below")
    p.add_argument("--targets", action="store_true", help="state whether the full demo's targets are met")
    a = p.parse_args()
    out = a.out

    data = load_json(os.path.join(out, "data", "analysis.json"))
    vq = load_json(os.path.join(out, "vq_eval.json"))
    recon = load_json(os.path.join(out, "vq_eval", "analysis.json"))
    need(os.path.join(out, "vq", "latest"))
    need(os.path.join(out, "codes.safetensors"))
    need(os.path.join(out, "aim", "latest"))
    held = load_json(os.path.join(out, "heldout_loss.json"))
    shifted = load_json(os.path.join(out, "heldout_loss_offset1.json"))
    vq_last = last_train_record(os.path.join(out, "vq", "metrics.jsonl"))
    aim_last = last_train_record(os.path.join(out, "aim", "metrics.jsonl"))
    timings = {}
    tpath = os.path.join(out, "timings.txt")
    if os.path.exists(tpath):
        with open(tpath) as f:
            for line in f:
                name, _, secs = line.rstrip().rpartition(" ")
                if name:
                    timings[name] = int(secs)

    cont = load_json(os.path.join(out, "samples", "continue.json"))
    data_spread = spread(data)
    rows = []
    for cfg in a.cfgs:
        grid = need(os.path.join(out, "samples", f"cfg{cfg}.png"))
        s = load_json(os.path.join(out, "samples", f"cfg{cfg}.json"))
        rows.append((cfg, s, grid))

    w = print
    w("== report")
    w(f"data         {data['images']} training images, 10 classes; analyser accuracy on them "
      f"{100 * data['accuracy']:.2f}%")
    w(f"tokenizer    held-out PSNR {vq['psnr']:.2f} dB (min {vq['psnr_min']:.2f}), codebook usage "
      f"{100 * vq['usage']:.1f}% ({vq['codes_used']}/{vq['codebook_size']}, perplexity "
      f"{vq['perplexity']:.0f}); analyser on reconstructions {100 * recon['accuracy']:.1f}%")
    w(f"             after {vq_last['step']} steps, final train loss {num(vq_last.get('loss'), '.4f')}")
    w(f"AiM          after {aim_last['step']} steps, final train loss {num(aim_last.get('loss'), '.4f')} "
      f"(uniform over the codebook: {__import__('math').log(vq['codebook_size']):.2f})")
    rec = held["recurrent"]
    w(f"             held-out loss {held['nll']:.4f} over {held['images']} images; the sampler's recurrent "
      f"decoder on them: {rec['nll']:.4f}, logits within {rec['max_logit_error'] / rec['max_abs_logit']:.1e} "
      f"of their scale, the same most likely token at {100 * rec['argmax_agreement']:.2f}% of positions")
    w(f"             at the official decoder's positions (token j at j + 1) the loss would be "
      f"{shifted['nll_decode_positions']:.4f} ({shifted['nll_decode_positions'] - held['nll']:+.4f})")
    w("samples      cfg  accuracy  worst class            diversity (sample / data spread)")
    ok = True
    for cfg, s, grid in rows:
        worst = min(s["per_class"], key=lambda c: c["correct"] / max(1, c["images"]))
        worst_acc = worst["correct"] / max(1, worst["images"])
        div = spread(s) / data_spread
        w(f"             {cfg:>3}  {100 * s['accuracy']:6.1f}%   {worst['class']:<16} "
          f"{100 * worst_acc:5.1f}%  {div:.2f}")
        if a.min_accuracy is not None and s["accuracy"] < a.min_accuracy:
            ok = False
            print(f"demo_report: sample accuracy at cfg {cfg} is {100 * s['accuracy']:.1f}%, "
                  f"below the required {100 * a.min_accuracy:.1f}%", file=sys.stderr)
        if a.targets:
            met = s["accuracy"] >= TARGET_ACCURACY and TARGET_DIVERSITY[0] <= div <= TARGET_DIVERSITY[1]
            w(f"                  target (accuracy >= {100 * TARGET_ACCURACY:.0f}%, diversity in "
              f"{TARGET_DIVERSITY[0]}..{TARGET_DIVERSITY[1]}): {'met' if met else 'NOT met'}")
    w(f"continuation {100 * cont['accuracy']:.1f}% by the analyser: {cont['images']} continuations (cfg 3) of "
      f"held-out images' top halves (their codes also carry some of the lower half), each in its own class")
    w("pictures     " + "\n             ".join(
        [g for _, _, g in rows] +
        [os.path.join(out, "samples", "continue.png") + " (each row: a held-out image's top half, then its "
         "continuations)"] +
        [os.path.join(out, "heldout_loss.png") + " (held-out loss by code position)",
         os.path.join(out, "vq", "samples") + "/ (tokenizer reconstructions during training)",
         os.path.join(out, "samples") + "/cfg<N>/ (every sample as a PNG)"]))
    if timings:
        order = [k for k in timings if k != "total"]
        w("time         " + ", ".join(f"{k} {timings[k]}s" for k in order) +
          (f"; total {timings['total'] // 60}m{timings['total'] % 60:02d}s" if "total" in timings else ""))
    if not ok:
        sys.exit(1)


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Parity with the official network at AiM's real widths: golden cases generated on the spot.

The committed fixtures (tests/fixtures/aim/) are tiny: d_model 64, d_state 16, chunk 16, 64 tokens.
This test checks the C++ model where the real sizes differ, with 8 layers of one of (--case):
  aim_l_8layers  AiM-L's widths: d_model 1024, 32 heads, adaLN-group with 4 groups (8 of 48 layers)
  aim_b_8layers  AiM-B's widths: d_model 768, 24 heads, one adaLN per layer (8 of 24 layers)
both with Mamba2 d_state 128, headdim 64, chunk_size 256, a 16384-token vocabulary, 1000 classes
and 256 tokens. Such a case is 0.6-0.85 GB, too large to commit, so this program computes it,
runs aim_tests' `Fixtures/AimParity.*` on it (tests/model/parity_test.cpp) and deletes it.

What is compared (cases.safetensors, format in tests/fixtures/README.md), for B = 2 (the last
training label the null class) and random weights drawn as the committed fixtures' scales:
  training  logits [2, 256, 16384], the loss, and d loss / d parameter for every `mamba.*`
            parameter (the tied embedding once);
  decoding  teacher-forced decoding of all 256 tokens with classifier-free guidance (cfg 2.5):
            the conditional, unconditional and guided logits of every step.

Where the golden values come from. The network is tools/bench/official_baseline.py's rebuild of
the official AiM (hp-l33/AiM) over mamba_ssm 2.2.2's own modules (.official/site, which
scripts/setup.sh puts there): its `build_model`, with mamba_ssm's `Mamba2` mixer and `RMSNorm`,
the official parameter names and call order. The official AiM source itself is not needed (it
is not in the repository). The rebuild is trusted because the `official_baseline.check` ctest
compares it with the committed fixtures, which the official code computed, and because
`--weights-from tests/fixtures/aim/mamba2_tiny` below recomputes every language-model tensor of
that fixture (gradients and all 64 decoding steps included) through this program's own code path
and reports the differences (with mamba_ssm 2.2.2: all bit for bit identical).

The GPU kernels are replaced by the pure-PyTorch reference functions that ship in the same
packages (the same maths; the kernels need a GPU, and these compute in any dtype):

  mamba_chunk_scan_combined (Triton SSD scan) -> ssd_combined.ssd_chunk_scan_combined_ref, and
      for the final state the decoder's first step asks for, chunk_state_ref + state_passing_ref
      (the pieces that function is made of); a prompt shorter than one chunk is one chunk of its
      length (the reference pads dt, not x).
  causal_conv1d_fn (CUDA)                     -> a causal depthwise convolution computed as the
      sum of the 4 shifted products: the maths of causal-conv1d's causal_conv1d_ref and of
      official_baseline.causal_conv1d_reference (checked against the latter at start-up), since
      float64 depthwise F.conv1d is erratically slow on CPUs (0.2 to 3 s for one layer's).
  causal_conv1d_update (CUDA)                 -> None: Mamba2.step's own PyTorch branch (roll the
      state, sum(state * w) + b, SiLU), what mamba2.py runs without causal-conv1d.
  selective_state_update (Triton)             -> selective_state_update_ref.
  layernorm_gated.rmsnorm_fn (Triton)         -> layernorm_gated.rms_norm_ref (upcast).
  layer_norm.layer_norm_fn / rms_norm_fn      -> layer_norm.rms_norm_ref / layer_norm_ref (upcast),
      the fused residual add + RMSNorm of every block, norm_f and the final layer's norm.

Precision: weights and inputs are drawn in float32 and stored in float32; the model runs in
float64 (the explicit float32 casts of mamba_ssm's code keep float64 tensors at float64 while it
runs) and the outputs are rounded to float32. The stored values are therefore the exact answer
to float32 precision, which parity_test.cpp's tolerances (1e-4 of each tensor's max) rely on.

Decoding uses the rebuild's step API as GenerationMixin.decode drives the model (mamba_ssm has
no AiM decoder to import: AiM's decode with class conditioning lives in its own generation.py):
the doubled batch (labels, then the null class), the class slot first with empty state, token t
fed at position t + 1 to both halves, guidance uncond + (cond - uncond) * cfg after the model.

Usage (every mode takes --case NAME, default aim_l_8layers):
  real_size_parity.py --aim-tests BUILD/tests/aim_tests --work DIR [--site DIR]
      self-check on tests/fixtures/aim/mamba2_tiny, generate DIR/aim/NAME, run aim_tests
      --gtest_filter='Fixtures/AimParity.*' with AIM_FIXTURES_DIR=DIR, delete the case folder
      (pass or fail); exit status: the test's
  real_size_parity.py --out CASE_DIR            only generate the case into CASE_DIR (kept)
  real_size_parity.py --weights-from CASE_DIR   self-check: recompute CASE_DIR's golden tensors
      from its weights, config and inputs, print the max relative difference of each
--site defaults to .official/site of this checkout.
"""
import argparse
import contextlib
import importlib.util
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BASELINE = os.path.join(ROOT, "tools", "bench", "official_baseline.py")
# AiM-L and AiM-B (models/aim.py AiM_L, AiM_B) with 8 layers; Mamba2 at mamba_ssm's defaults,
# which are AiM's (d_state 128, d_conv 4, expand 2, headdim 64, ngroups 1, chunk_size 256).
CASES = {
    "aim_l_8layers": dict(d_model=1024, n_layer=8, adaln_group=True, num_groups=4),
    "aim_b_8layers": dict(d_model=768, n_layer=8, adaln_group=False, num_groups=1),
}
SSM_CFG = {"layer": "Mamba2", "d_state": 128, "d_conv": 4, "expand": 2, "headdim": 64,
           "ngroups": 1, "chunk_size": 256, "use_mem_eff_path": False}
SEED, BATCH, CFG_SCALE = 1234, 2, 2.5
# The official MambaConfig's fields, in its order (config.json as AiM's checkpoints hold it).
CONFIG_FIELDS = ("d_model", "d_intermediate", "n_layer", "vocab_size", "ssm_cfg", "attn_layer_idx",
                 "attn_cfg", "rms_norm", "residual_in_fp32", "fused_add_norm",
                 "pad_vocab_size_multiple", "tie_embeddings", "num_classes", "num_tokens",
                 "adaln_group", "num_groups", "token_drop", "mixer_drop", "mlp_drop")
CONFIG_DEFAULTS = dict(attn_layer_idx=[], attn_cfg={}, pad_vocab_size_multiple=8, token_drop=0.0,
                       mixer_drop=0.0, mlp_drop=0.0)
# Self-check bound: the largest difference allowed, relative to the tensor's max |value|.
SELF_CHECK_REL = 1e-6


def fail(msg, status=1):
    print(f"real_size_parity.py: {msg}", file=sys.stderr, flush=True)
    sys.exit(status)


def say(msg):
    print(msg, flush=True)


def load_module(name, path):
    if not os.path.isfile(path):
        fail(f"{path}: missing (this program needs the checkout's {os.path.relpath(path, ROOT)})")
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ------------------------------------------------------------------------------ the network

def causal_conv1d_sum(x, weight, bias=None, activation=None, seq_idx=None):
    """causal_conv1d_fn on the CPU: x [B, D, L], weight [D, W]; out[t] = sum_k w[k] x[t-W+1+k]."""
    import torch.nn.functional as F
    assert seq_idx is None
    width, n = weight.shape[-1], x.shape[-1]
    xp = F.pad(x, (width - 1, 0))
    out = xp[..., 0:n] * weight[:, 0, None]
    for k in range(1, width):
        out = out + xp[..., k:k + n] * weight[:, k, None]
    if bias is not None:
        out = out + bias[:, None]
    return F.silu(out) if activation in ("silu", "swish") else out


def check_site(site):
    if not os.path.isdir(os.path.join(site, "mamba_ssm")):
        fail(f"{os.path.join(site, 'mamba_ssm')}: missing: scripts/setup.sh puts mamba_ssm 2.2.2 "
             f"(and causal-conv1d, einops) in .official/site (or give --site DIR)")


_SETUP = {}


def setup(site):
    """official_baseline.py's network constructor, with the reference functions installed. Once
    per process: mamba_ssm's package is imported without its __init__, which cannot be redone."""
    if site not in _SETUP:
        _SETUP[site] = _setup(site)
    return _SETUP[site]


def _setup(site):
    check_site(site)
    ob = load_module("official_baseline", BASELINE)
    mamba2, layer_norm = ob.import_mamba(site, on_cpu=True)
    import torch
    import torch.nn.functional as F
    from einops import rearrange
    import mamba_ssm.ops.triton.layernorm_gated as layernorm_gated
    import mamba_ssm.ops.triton.ssd_combined as ssd_combined
    from mamba_ssm.ops.triton.ssd_chunk_state import chunk_state_ref
    from mamba_ssm.ops.triton.ssd_state_passing import state_passing_ref
    from mamba_ssm.ops.triton.selective_state_update import selective_state_update_ref

    def chunk_scan_combined(x, dt, A, B, C, chunk_size, D=None, z=None, dt_bias=None,
                            initial_states=None, seq_idx=None, cu_seqlens=None, dt_softplus=False,
                            dt_limit=(0.0, float("inf")), return_final_states=False,
                            return_varlen_states=False):
        assert initial_states is None and seq_idx is None and cu_seqlens is None
        assert not return_varlen_states and dt_limit == (0.0, float("inf"))
        seqlen = x.shape[1]
        if seqlen % chunk_size:
            assert seqlen < chunk_size, "a sequence of whole chunks or shorter than one chunk"
            chunk_size = seqlen
        out = ssd_combined.ssd_chunk_scan_combined_ref(x, dt, A, B, C, chunk_size, D=D, z=z,
                                                       dt_bias=dt_bias, dt_softplus=dt_softplus)
        if not return_final_states:
            return out
        # The final state, from the pieces ssd_chunk_scan_combined_ref is made of.
        dtc = rearrange(dt, "b (c l) h -> b h c l", l=chunk_size).float()
        if dt_bias is not None:
            dtc = dtc + rearrange(dt_bias, "h -> h 1 1")
        if dt_softplus:
            dtc = F.softplus(dtc)
        dA_cumsum = torch.cumsum(dtc * rearrange(A, "h -> h 1 1"), dim=-1)
        states = chunk_state_ref(B, x, dtc, dA_cumsum)
        final = state_passing_ref(rearrange(states, "... p n -> ... (p n)"),
                                  dA_cumsum[:, :, :, -1])[1]
        return out, rearrange(final, "... (p n) -> ... p n", n=B.shape[-1])

    def layer_norm_fn(x, weight, bias, residual=None, x1=None, weight1=None, bias1=None, eps=1e-6,
                      dropout_p=0.0, rowscale=None, prenorm=False, residual_in_fp32=False,
                      is_rms_norm=False, return_dropout_mask=False):
        assert dropout_p == 0.0 and not return_dropout_mask
        ref = layer_norm.rms_norm_ref if is_rms_norm else layer_norm.layer_norm_ref
        out = ref(x, weight, bias, residual=residual, x1=x1, weight1=weight1, bias1=bias1, eps=eps,
                  rowscale=rowscale, prenorm=prenorm, upcast=True)
        if prenorm and residual_in_fp32:
            *outs, res = out
            return (*outs, res.float())
        return out

    def rms_norm_fn(x, weight, bias, residual=None, x1=None, weight1=None, bias1=None, eps=1e-6,
                    dropout_p=0.0, rowscale=None, prenorm=False, residual_in_fp32=False,
                    return_dropout_mask=False):
        return layer_norm_fn(x, weight, bias, residual, x1, weight1, bias1, eps, dropout_p,
                             rowscale, prenorm, residual_in_fp32, True, return_dropout_mask)

    def gated_rmsnorm_fn(x, weight, bias, z=None, eps=1e-6, group_size=None,
                         norm_before_gate=True):
        return layernorm_gated.rms_norm_ref(x, weight, bias, z=z, eps=eps, group_size=group_size,
                                            norm_before_gate=norm_before_gate, upcast=True)

    # The convolution replacement equals the rebuild's CPU reference (F.conv1d) on a small case.
    g = torch.Generator().manual_seed(0)
    xs, ws, bs = (torch.randn(shape, generator=g, dtype=torch.float64)
                  for shape in ((2, 6, 9), (6, 4), (6,)))
    err = (causal_conv1d_sum(xs, ws, bs, "silu")
           - ob.causal_conv1d_reference(xs, ws, bs, "silu")).abs().max().item()
    if err > 1e-13:
        fail(f"causal_conv1d_sum differs from {BASELINE} causal_conv1d_reference by {err:.2e}")

    mamba2.mamba_chunk_scan_combined = chunk_scan_combined
    mamba2.causal_conv1d_fn = causal_conv1d_sum
    mamba2.causal_conv1d_update = None  # Mamba2.step's own PyTorch branch
    mamba2.selective_state_update = selective_state_update_ref
    layernorm_gated.rmsnorm_fn = gated_rmsnorm_fn
    # build_model takes layer_norm.layer_norm_fn when called; RMSNorm.forward calls rms_norm_fn.
    layer_norm.layer_norm_fn, layer_norm.rms_norm_fn = layer_norm_fn, rms_norm_fn
    return ob, mamba2, layer_norm


@contextlib.contextmanager
def fp32_casts_keep_fp64():
    """Inside: `.float()` and `.to(torch.float32)` of a float64 tensor return it as float64."""
    import torch
    orig_float, orig_to = torch.Tensor.float, torch.Tensor.to

    def float_(self, *args, **kwargs):
        return self if self.dtype == torch.float64 else orig_float(self, *args, **kwargs)

    def to_(self, *args, **kwargs):
        if self.dtype == torch.float64:
            if kwargs.get("dtype") is torch.float32:
                kwargs["dtype"] = torch.float64
            args = tuple(torch.float64 if a is torch.float32 else a for a in args)
        return orig_to(self, *args, **kwargs)
    torch.Tensor.float, torch.Tensor.to = float_, to_
    try:
        yield
    finally:
        torch.Tensor.float, torch.Tensor.to = orig_float, orig_to


def redraw(model, seed):
    """Every parameter re-drawn in float32 at the committed fixtures' scales (README.md), in
    named_parameters order from one generator: O(1) activations, nonzero adaLN modulations."""
    import torch
    g = torch.Generator().manual_seed(seed)
    d = model.backbone.embeddings.word_embeddings.weight.shape[1]
    nheads = model.backbone.layers[0].mixer.nheads

    def randn(shape, std):
        return torch.randn(shape, generator=g) * std

    def rand(shape, lo, hi):
        return lo + (hi - lo) * torch.rand(shape, generator=g)

    with torch.no_grad():
        for name, p in model.named_parameters():
            shape = p.shape
            if name.endswith("A_log"):
                v = torch.log(rand(shape, 0.5, 4.0))           # A = -exp(A_log) in [-4, -0.5]
            elif name.endswith("dt_bias"):
                t = rand(shape, 0.01, 0.2)                     # softplus(dt_bias) in [0.01, 0.2]
                v = t + torch.log(-torch.expm1(-t))
            elif name.endswith(".D"):
                v = rand(shape, 0.5, 1.5)
            elif name.endswith(("norm.weight", "norm_f.weight", "norm_final.weight")):
                v = 1 + randn(shape, 0.1)
            elif name.endswith("conv1d.weight"):
                v = randn(shape, 0.5)
            elif name.endswith("conv1d.bias"):
                v = randn(shape, 0.1)
            elif name.endswith("in_proj.weight"):
                v = randn(shape, 1 / math.sqrt(shape[1]))
                v[-nheads:] *= 0.5                             # dt rows: chunk decays in range
            elif name.endswith("out_proj.weight"):
                v = randn(shape, 1 / math.sqrt(shape[1]))
            elif name.endswith(("adaLN_modulation.1.weight", "adaln_group.1.weight")):
                v = randn(shape, 0.6 / math.sqrt(shape[1]))
            elif name.endswith(".bias"):
                v = randn(shape, 0.2)
            elif name.endswith("scale_shift_table"):
                v = randn(shape, 0.3)
            elif name.endswith("word_embeddings.weight"):
                v = randn(shape, 3.0 / math.sqrt(d))           # tied: logits std ~3
            elif name.endswith("position_embeddings.weight"):
                v = randn(shape, 0.3)
            elif name.endswith("cls_embed.embedding_table.weight"):
                v = randn(shape, 1.0)
            else:
                fail(f"redraw: no rule for parameter {name} {tuple(shape)}")
            p.copy_(v.to(p.dtype))


# ------------------------------------------------------------------------------ the case

def default_config(case):
    cfg = dict(CONFIG_DEFAULTS, d_intermediate=0, vocab_size=16384, rms_norm=True,
               residual_in_fp32=True, fused_add_norm=True, tie_embeddings=True, num_classes=1000,
               num_tokens=256, ssm_cfg=dict(SSM_CFG), **CASES[case])
    return {k: cfg[k] for k in CONFIG_FIELDS}


def compute(site, config, cfg_scale, weights=None, inputs=None, out_dir=None):
    """The golden tensors of one case (float32). With `weights` (a mamba.* state dict) and
    `inputs` (tokens, labels, decode_tokens, decode_labels), those are used instead of drawn.
    With `out_dir`, model.safetensors is written there as soon as the weights are known."""
    import torch
    # One thread, whatever OMP_NUM_THREADS says (aim_tests gets it): a decoding step is ~500
    # small memory-bound operations, and on 2 cores shared with other jobs OpenMP's barriers made
    # 2 threads 3x slower than 1 there (0.5 against 0.16 s a step) and 2-3x in the training pass.
    torch.set_num_threads(1)
    ob, mamba2, layer_norm = setup(site)
    sys.path.insert(0, os.path.join(ROOT, "tools"))
    import convert_checkpoint
    convert_checkpoint.require_torch()
    if config["ssm_cfg"].get("layer") != "Mamba2":
        fail(f"ssm_cfg {config['ssm_cfg']}: only Mamba2 cases (official_baseline.py's network)")
    cfg = {k: config[k] for k in ob.DEFAULTS}
    cfg.update({k: config[k] for k in ("d_model", "n_layer", "adaln_group", "num_groups")})
    cfg["ssm_cfg"] = dict(config["ssm_cfg"], use_mem_eff_path=False)  # the fused path is CUDA's
    V, L, K = cfg["vocab_size"], cfg["num_tokens"], cfg["num_classes"]
    torch.manual_seed(SEED)
    model = ob.build_model(cfg, mamba2, layer_norm).eval()
    if weights is not None:
        sd = {k[len("mamba."):]: v for k, v in weights.items() if k.startswith("mamba.")}
        missing, unexpected = model.load_state_dict(sd, strict=False)
        if missing or unexpected:
            fail(f"weights: missing {missing[:5]}, unexpected {unexpected[:5]}")
        tokens, labels = inputs["tokens"], inputs["labels"]
        decode_tokens, decode_labels = inputs["decode_tokens"], inputs["decode_labels"]
    else:
        redraw(model, SEED)
        g = torch.Generator().manual_seed(SEED + 1)
        tokens = torch.randint(V, (BATCH, L), generator=g)
        labels = torch.randint(K, (BATCH,), generator=g)
        labels[-1] = K  # the last sample is the null class
        decode_tokens = torch.randint(V, (BATCH, L), generator=g)
        decode_labels = torch.randint(K, (BATCH,), generator=g)
    assert model.lm_head.weight is model.backbone.embeddings.word_embeddings.weight
    say(f"  {ob.describe(cfg, model)}; B = {tokens.shape[0]}, {L} tokens, vocabulary {V}, "
        f"cfg {cfg_scale}; float64 compute, 1 thread")
    if out_dir is not None:  # the float32 weights as drawn, the tied one under both names
        weights32 = {"mamba." + k: v.detach().float().contiguous()
                     for k, v in model.state_dict().items()}
        convert_checkpoint.write_builtin(os.path.join(out_dir, "model.safetensors"), weights32)
        del weights32
    model = model.to(torch.float64)
    out = {"tokens": tokens, "labels": labels}

    # Training forward (AiM.forward: class slot, tokens 0..L-2 at positions 0..L-2), the mean
    # cross-entropy over all B*L positions, and its gradients.
    t = time.time()
    with fp32_casts_keep_fp64():  # (where .float() keeps float64: rounded after it)
        logits = model(tokens, labels)
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, V), tokens.reshape(-1))
        t_fwd = time.time() - t
        loss.backward()
    out["logits"], out["loss"] = logits.detach().float(), loss.detach().float()
    del logits
    for name, p in model.named_parameters():  # the tied weight once, under the embedding's name
        if p.grad is None or not torch.isfinite(p.grad).all():
            fail(f"gradient of {name}: {'none' if p.grad is None else 'not finite'}")
        out["grad.mamba." + name] = p.grad.float()
        p.grad = None
    say(f"  training forward {t_fwd:.1f} s, backward {time.time() - t - t_fwd:.1f} s: "
        f"loss {out['loss'].item():.6f}, max|logit| {out['logits'].abs().max().item():.2f}")

    # Teacher-forced decoding with guidance, as GenerationMixin.decode drives the model.
    t = time.time()
    batch = decode_labels.shape[0]
    both = torch.cat([decode_labels, torch.full_like(decode_labels, K)])
    steps = decode_tokens.shape[1]
    params = ob.InferenceParams(steps + 1, 2 * batch, model.allocate_inference_cache(
        2 * batch, steps + 1, dtype=torch.float64))
    cond, uncond, guided = [], [], []
    ids = both.unsqueeze(1)
    with torch.no_grad(), fp32_casts_keep_fp64():
        for s in range(steps):
            position = torch.full((2 * batch, 1), s, dtype=torch.long)  # unused at s = 0
            raw = model.step(ids, position, both, params)
            params.seqlen_offset += 1
            cond.append(raw[:batch])
            uncond.append(raw[batch:])
            guided.append(ob.guide(raw, cfg_scale)[:batch])
            ids = decode_tokens[:, s].repeat(2).unsqueeze(1)
    out["decode_labels"], out["decode_tokens"] = decode_labels, decode_tokens
    out["decode_cond_logits"] = torch.stack(cond, 1).float()
    out["decode_uncond_logits"] = torch.stack(uncond, 1).float()
    out["decode_logits"] = torch.stack(guided, 1).float()
    for key, value in out.items():
        assert value.dtype in (torch.float32, torch.int64), (key, value.dtype)
    say(f"  decode {steps} steps {time.time() - t:.1f} s: max|guided logit| "
        f"{out['decode_logits'].abs().max().item():.2f}")
    return out


def generate(site, case, case_dir):
    """Writes the case folder: config.json, model.safetensors, cases.safetensors."""
    sys.path.insert(0, os.path.join(ROOT, "tools"))
    import convert_checkpoint
    os.makedirs(case_dir, exist_ok=True)
    config = default_config(case)
    out = compute(site, config, CFG_SCALE, out_dir=case_dir)
    t = time.time()
    convert_checkpoint.write_builtin(os.path.join(case_dir, "cases.safetensors"),
                                     {k: v.contiguous() for k, v in out.items()})
    side = math.isqrt(config["num_tokens"])
    config["fixture"] = {
        "cfg_scale": CFG_SCALE, "batch": BATCH, "image_size": 16 * side, "latent_size": side,
        "label_dropout_prob_used": 0.0, "mamba_ssm_version": "2.2.2", "weights_tied": True,
        "tied_weight_stored_as": ["mamba.backbone.embeddings.word_embeddings.weight",
                                  "mamba.lm_head.weight"],
        "generator": "tests/tools/real_size_parity.py (tools/bench/official_baseline.py's "
                     "network over mamba_ssm 2.2.2, reference functions)",
        "compute_dtype": "float64", "seed": SEED,
        "note": "no vqvae.* weights and no decoded_images (language model only)",
    }
    with open(os.path.join(case_dir, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
    say(f"  wrote {case_dir} ({time.time() - t:.1f} s to write the tensors)")


def self_check(site, case_dir):
    """Recomputes a committed case's golden tensors; prints each one's max relative difference."""
    sys.path.insert(0, os.path.join(ROOT, "tools"))
    import convert_checkpoint
    paths = {n: os.path.join(case_dir, n)
             for n in ("config.json", "model.safetensors", "cases.safetensors")}
    for path in paths.values():
        if not os.path.isfile(path):
            fail(f"{path}: missing (--weights-from needs a case folder: config.json, "
                 f"model.safetensors, cases.safetensors)")
    with open(paths["config.json"]) as f:
        config = json.load(f)
    config = dict(CONFIG_DEFAULTS, **config)
    cfg_scale = config.get("fixture", {}).get("cfg_scale")
    if cfg_scale is None:
        fail(f"{paths['config.json']}: no fixture.cfg_scale")
    weights, _ = convert_checkpoint.read_safetensors(paths["model.safetensors"])
    golden, _ = convert_checkpoint.read_safetensors(paths["cases.safetensors"])
    for key in ("tokens", "labels", "decode_tokens", "decode_labels"):
        if key not in golden:
            fail(f"{paths['cases.safetensors']}: no '{key}'")
    say(f"self-check against {case_dir}")
    got = compute(site, config, cfg_scale, weights=weights, inputs=golden)
    worst, identical, compared, failures = 0.0, 0, 0, []
    for key in sorted(golden):
        want = golden[key]
        if key not in got:
            if key.startswith(("grad.", "decode_", "logits", "loss")):
                failures.append(f"{key} not computed")
            continue
        if got[key].shape != want.shape:
            failures.append(f"{key}: shape {tuple(got[key].shape)}, golden {tuple(want.shape)}")
            continue
        diff = (got[key].double() - want.double()).abs().max().item() if want.numel() else 0.0
        rel = diff / max(want.double().abs().max().item(), 1e-30)
        identical += diff == 0.0
        compared += 1
        worst = max(worst, rel)
        if rel > SELF_CHECK_REL:
            failures.append(f"{key}: {rel:.2e}")
        say(f"  {key:58s} max|diff| {diff:.3e}  / max|golden| {rel:.3e}"
            f"{'  (identical)' if diff == 0.0 else ''}")
    say(f"self-check: {identical} of {compared} compared tensors bit for bit identical, largest "
        f"relative difference {worst:.3e} (bound {SELF_CHECK_REL:g})")
    if failures:
        fail("self-check FAILED: " + "; ".join(failures[:8]))


# ------------------------------------------------------------------------------ test mode

def run_test(args):
    if not os.path.isfile(args.aim_tests) or not os.access(args.aim_tests, os.X_OK):
        fail(f"{args.aim_tests}: not an executable (build aim_tests first)")
    case_dir = os.path.join(args.work, "aim", args.case)
    child = None

    def terminate(signum, frame):  # ctest's timeout: the case folder is still removed
        raise SystemExit(128 + signum)
    signal.signal(signal.SIGTERM, terminate)
    try:
        if os.path.exists(case_dir):
            shutil.rmtree(case_dir)
        # The generator's own code path first reproduces a case the official code computed
        # (seconds): golden values from a network that drifted from it would prove nothing.
        self_check(args.site, os.path.join(ROOT, "tests", "fixtures", "aim", "mamba2_tiny"))
        say(f"generating {case_dir}")
        t = time.time()
        generate(args.site, args.case, case_dir)
        t_gen = time.time() - t
        say(f"generation {t_gen:.1f} s")
        env = dict(os.environ, AIM_FIXTURES_DIR=os.path.abspath(args.work))
        cmd = [args.aim_tests, "--gtest_filter=Fixtures/AimParity.*"]
        say(f"running AIM_FIXTURES_DIR={env['AIM_FIXTURES_DIR']} {' '.join(cmd)}")
        t = time.time()
        child = subprocess.Popen(cmd, env=env)
        status = child.wait()
        say(f"aim_tests {time.time() - t:.1f} s, exit status {status}; generation {t_gen:.1f} s")
        return status if status >= 0 else 128 - status
    finally:
        if child is not None and child.poll() is None:
            child.kill()
            child.wait()
        if os.path.exists(case_dir):
            shutil.rmtree(case_dir, ignore_errors=True)
            say(f"removed {case_dir}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--site", default=os.path.join(ROOT, ".official", "site"),
                        help="mamba_ssm 2.2.2's folder (default .official/site: scripts/setup.sh)")
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--aim-tests", help="test mode: the aim_tests executable (needs --work)")
    mode.add_argument("--out", help="only generate the case into this folder")
    mode.add_argument("--weights-from", help="self-check: recompute this case folder's tensors")
    parser.add_argument("--case", default="aim_l_8layers", choices=sorted(CASES),
                        help="the widths to generate (default aim_l_8layers)")
    parser.add_argument("--work", help="test mode: the case goes to WORK/aim/CASE")
    args = parser.parse_args()
    args.site = os.path.abspath(args.site)
    if args.aim_tests and not args.work:
        parser.error("--aim-tests needs --work DIR")
    if args.work and not args.aim_tests:
        parser.error("--work goes with --aim-tests")
    check_site(args.site)
    if args.aim_tests:
        return run_test(args)
    t = time.time()
    if args.out:
        generate(args.site, args.case, args.out)
    else:
        self_check(args.site, args.weights_from)
    say(f"done in {time.time() - t:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

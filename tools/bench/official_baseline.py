#!/usr/bin/env python3
"""The baseline of DESIGN.md section 6's speed ratios: the official AiM's compute path, timed.

The official AiM (hp-l33/AiM at 0a91c60) is a thin layer of PyTorch over mamba_ssm: its network
is mamba_ssm 2.2.2's Mamba2 mixer (Triton SSD scan, Triton gated RMSNorm, Triton state update,
causal-conv1d's CUDA convolution), mamba_ssm's Triton fused add + RMSNorm, and a few PyTorch
modules for the embeddings, adaLN(-group) and the final layer. This program builds that network
from the same library code, with the official parameter names and call order, and times:

  train   the official trainer's step (Hugging Face Trainer with bf16=True: autocast to bf16 over
          fp32 weights, class dropout 0.1, cross-entropy over the full [B*256, 16384] logits,
          gradient-norm clip 1.0, AdamW with weight decay on matrices only);
  sample  the official decoder (GenerationMixin.decode with cg=True): the first step eagerly, then
          one CUDA graph of the whole model step with guidance, replayed per token, and the
          official sampling (top-k, top-p, multinomial; it ignores the temperature) eagerly
          between replays, over both halves of the doubled batch as the official code draws.

Commands:
  official_baseline.py fetch DIR          the pinned packages from PyPI into DIR (hash-checked)
  official_baseline.py build-ext DIR      compile causal-conv1d's CUDA kernels into DIR/site
                                          (CUDA toolkit; TORCH_CUDA_ARCH_LIST, default 9.0; the
                                          objects in build-official-ext/, rebuilt when changed)
  official_baseline.py check FIXTURES     CPU: the network's parameter layout equals the official
                                          layout files, and its logits equal the official fixtures
                                          (Mamba2 cases), Triton's kernels interpreted on the CPU
  official_baseline.py precompile [--shard K/N]
                                          compile, without launching, every Triton kernel (and
                                          every autotuner config) that train and sample launch,
                                          into Triton's cache; N processes with K = 0..N-1 share
                                          the configs (on the GPU machine, while other work runs)
  official_baseline.py train  [--model aim_l] [--micro 64] [--steps 10] [--warmup 3]
  official_baseline.py sample [--model aim_l] [--batch 16] [--cfg 1.75] [--dtype bf16] [--repeats 3]

DIR/site goes on sys.path (--site, default .official/site). mamba_ssm's package __init__ is not
run: it imports transformers (2.2.2) and Mamba1's CUDA extension, neither of which Mamba2 uses.
causal-conv1d 1.5.2 is the oldest release on PyPI whose source distribution carries all of its
CUDA sources (the fixtures name 1.4.0, whose sdist has none; 1.5.1's lacks the bindings); its
cpp_functions keep the 1.4 calling convention that mamba_ssm 2.2.2 calls.
"""
import argparse
import contextlib
import hashlib
import importlib.util
import math
import os
import shutil
import sys
import tarfile
import time
import types
import urllib.request
import warnings
import zipfile
import zlib

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# (file, url, sha256, [(member prefix in the archive, destination under DIR)])
PACKAGES = [
    ("mamba_ssm-2.2.2.tar.gz",
     "https://files.pythonhosted.org/packages/f7/80/69bc14816fda4b30be3ac724e3efc713969dd545cd0bcb35abee6b8dfbf9/"
     "mamba_ssm-2.2.2.tar.gz",
     "009de2d74decd847d463ae9cdbc1f9419f454ca6bf9beab36ed5243f01ea44d5",
     [("mamba_ssm-2.2.2/mamba_ssm/", "site/mamba_ssm/"), ("mamba_ssm-2.2.2/LICENSE", "site/mamba_ssm/LICENSE")]),
    ("causal_conv1d-1.5.2.tar.gz",
     "https://files.pythonhosted.org/packages/03/e5/2d2b2e067234c0022ff491ff8e574ca0c67094b2deb61249a2be21789cbb/"
     "causal_conv1d-1.5.2.tar.gz",
     "9b7d8ec8d07e3590a1dfa010e4e87d1442635c3f96d665a3c1ce3025d8cc4b84",
     [("causal_conv1d-1.5.2/causal_conv1d/", "site/causal_conv1d/"),
      ("causal_conv1d-1.5.2/LICENSE", "site/causal_conv1d/LICENSE"),
      ("causal_conv1d-1.5.2/csrc/", "csrc/causal_conv1d/")]),
    ("einops-0.8.1-py3-none-any.whl",
     "https://files.pythonhosted.org/packages/87/62/9773de14fe6c45c23649e98b83231fffd7b9892b6cf863251dc2afa73643/"
     "einops-0.8.1-py3-none-any.whl",
     "919387eb55330f5757c6bea9165c5ff5cfe63a642682ea788a6d472576d81737",
     [("einops/", "site/einops/")]),
]

# The official sizes (models/aim.py: AiM_B, AiM_L, AiM_XL; AiM-1B as official_layout/aim_1b.txt has it),
# every other field at the official MambaConfig's default.
PRESETS = {
    "aim_b": dict(d_model=768, n_layer=24, adaln_group=False, num_groups=1),
    "aim_l": dict(d_model=1024, n_layer=48, adaln_group=True, num_groups=4),
    "aim_xl": dict(d_model=1536, n_layer=48, adaln_group=True, num_groups=4),
    "aim_1b": dict(d_model=2048, n_layer=48, adaln_group=True, num_groups=4),
}
DEFAULTS = dict(d_intermediate=0, vocab_size=16384, ssm_cfg={"layer": "Mamba2"}, num_classes=1000,
                num_tokens=256, rms_norm=True, residual_in_fp32=True, fused_add_norm=True, tie_embeddings=True)


def fail(msg):
    print(f"official_baseline.py: {msg}", file=sys.stderr)
    sys.exit(1)


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def fetch(dest):
    os.makedirs(os.path.join(dest, "dist"), exist_ok=True)
    for name, url, want, members in PACKAGES:
        path = os.path.join(dest, "dist", name)
        if not os.path.exists(path) or sha256(path) != want:
            print(f"fetch: {url}")
            with urllib.request.urlopen(url, timeout=120) as r, open(path + ".part", "wb") as f:
                shutil.copyfileobj(r, f)
            os.replace(path + ".part", path)
        got = sha256(path)
        if got != want:
            fail(f"{path}: sha256 {got}, expected {want}")
        if name.endswith(".whl"):
            archive = zipfile.ZipFile(path)
            entries = [(n, lambda n=n: archive.read(n)) for n in archive.namelist() if not n.endswith("/")]
        else:
            archive = tarfile.open(path)
            entries = [(m.name, lambda m=m: archive.extractfile(m).read()) for m in archive.getmembers() if m.isfile()]
        # Files are rewritten only where their bytes change, so that build-ext's ninja rebuilds
        # nothing after a second fetch; files the archive no longer has are removed.
        wanted = set()
        for entry, read in entries:
            for prefix, target in members:
                if entry == prefix or (prefix.endswith("/") and entry.startswith(prefix)):
                    out = os.path.join(dest, target + entry[len(prefix):]) if prefix.endswith("/") else os.path.join(dest, target)
                    wanted.add(os.path.normpath(out))
                    data = read()
                    if os.path.isfile(out):
                        with open(out, "rb") as f:
                            if f.read() == data:
                                continue
                    os.makedirs(os.path.dirname(out), exist_ok=True)
                    with open(out, "wb") as f:
                        f.write(data)
        for prefix, target in members:
            top = os.path.join(dest, target)
            for folder, _, files in os.walk(top) if target.endswith("/") else []:
                for name in files:
                    path = os.path.normpath(os.path.join(folder, name))
                    if path not in wanted and not name.endswith(".pyc"):
                        os.remove(path)
    print(f"fetch: mamba_ssm 2.2.2, causal_conv1d 1.5.2, einops 0.8.1 in {os.path.join(dest, 'site')}")


def build_ext(dest, build):
    import torch
    from torch.utils.cpp_extension import load
    csrc = os.path.join(dest, "csrc", "causal_conv1d")
    if not os.path.isdir(csrc):
        fail(f"{csrc}: missing: run 'official_baseline.py fetch {dest}' first")
    os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "9.0")
    os.makedirs(build, exist_ok=True)
    t = time.time()
    flags = ["-O3", "--expt-relaxed-constexpr", "--expt-extended-lambda", "--use_fast_math"] + [
        f"-U__CUDA_NO_{k}__" for k in ("HALF_OPERATORS", "HALF_CONVERSIONS", "BFLOAT16_OPERATORS",
                                       "BFLOAT16_CONVERSIONS", "BFLOAT162_OPERATORS", "BFLOAT162_CONVERSIONS")]
    # The same sources and flags as causal-conv1d's setup.py, for the architectures asked only.
    load(name="causal_conv1d_cuda", build_directory=build, extra_cflags=["-O3"], extra_cuda_cflags=flags,
         sources=[os.path.join(csrc, f) for f in ("causal_conv1d.cpp", "causal_conv1d_fwd.cu",
                                                  "causal_conv1d_bwd.cu", "causal_conv1d_update.cu")])
    shutil.copy(os.path.join(build, "causal_conv1d_cuda.so"), os.path.join(dest, "site", "causal_conv1d_cuda.so"))
    print(f"build-ext: causal_conv1d_cuda for sm {os.environ['TORCH_CUDA_ARCH_LIST']} (torch {torch.__version__}) "
          f"in {time.time() - t:.0f} s")


# ------------------------------------------------------------------------------------------ model

def import_mamba(site, on_cpu, interpret=False):
    """Imports the mamba_ssm modules Mamba2 needs without the package's __init__."""
    if site:
        sys.path.insert(0, os.path.abspath(site))
    # mamba_ssm 2.2.2 uses torch.cuda.amp's deprecated decorators (the official trainer silences
    # the same warnings).
    warnings.filterwarnings("ignore", category=FutureWarning)
    spec = importlib.util.find_spec("mamba_ssm")
    if spec is None:
        fail(f"no mamba_ssm in {site or 'sys.path'}: run 'official_baseline.py fetch .official' (--site)")
    pkg = types.ModuleType("mamba_ssm")
    pkg.__path__ = list(spec.submodule_search_locations)
    sys.modules["mamba_ssm"] = pkg
    import torch
    if on_cpu:
        # CPU tensors: mamba_ssm enters torch.cuda.device(index) around its launches.
        torch.cuda.device = lambda index: contextlib.nullcontext()
    if interpret:
        # Triton's interpreter: the autotuner would time each config on a device. Every config
        # computes the same values; the first one runs.
        import triton.runtime.autotuner as autotuner
        autotuner.Autotuner._bench = lambda self, *args, config, **kwargs: [0.0, 0.0, 0.0]
    import mamba_ssm.modules.mamba2 as mamba2
    import mamba_ssm.ops.triton.layer_norm as layer_norm
    import mamba_ssm.ops.triton.ssd_combined as ssd_combined
    if mamba2.causal_conv1d_fn is not None:
        # mamba_ssm 2.2.2 calls the extension with causal-conv1d 1.4's arguments, which 1.5 keeps
        # in its cpp_functions.
        from causal_conv1d import cpp_functions
        ssd_combined.causal_conv1d_cuda = types.SimpleNamespace(
            causal_conv1d_fwd=cpp_functions.causal_conv1d_fwd_function,
            causal_conv1d_bwd=cpp_functions.causal_conv1d_bwd_function)
    elif not on_cpu:
        try:
            importlib.import_module("causal_conv1d_cuda")  # only for the reason it fails
            reason = "causal_conv1d does not import"
        except ImportError as e:
            reason = f"causal_conv1d_cuda does not import ({e})"
        fail(f"{reason}: run 'official_baseline.py build-ext DIR' against this PyTorch where the CUDA toolkit "
             f"is, and carry DIR")
    return mamba2, layer_norm


def causal_conv1d_reference(x, weight, bias=None, activation=None, seq_idx=None):
    """Depthwise causal convolution [B, D, L] (+ SiLU): causal-conv1d's arithmetic, for the CPU check."""
    import torch.nn.functional as F
    y = F.conv1d(F.pad(x, (weight.shape[-1] - 1, 0)), weight.unsqueeze(1), bias, groups=x.shape[1])
    return F.silu(y) if activation in ("silu", "swish") else y


def build_model(cfg, mamba2, layer_norm, device=None):
    import torch
    from torch import nn

    RMSNorm, layer_norm_fn = layer_norm.RMSNorm, layer_norm.layer_norm_fn
    d, groups = cfg["d_model"], cfg["num_groups"] if cfg["adaln_group"] else 1
    ssm_cfg = dict(cfg["ssm_cfg"])
    if ssm_cfg.pop("layer", "Mamba1") != "Mamba2":
        fail("only Mamba2 mixers are timed (the official checkpoints' mixer)")
    for key in ("d_intermediate",):
        if cfg[key]:
            fail(f"{key} {cfg[key]}: the official sizes have none")

    def modulate(x, shift, scale):
        return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)

    class Block(nn.Module):
        def __init__(self, i):
            super().__init__()
            self.norm = RMSNorm(d, eps=1e-5, device=device)
            self.mixer = mamba2.Mamba2(d, layer_idx=i, device=device, **ssm_cfg)
            if cfg["adaln_group"]:
                self.scale_shift_table = nn.Parameter(torch.randn(1, 3, d, device=device) / d ** 0.5)
            else:
                self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(d, 3 * d, device=device))

        def forward(self, hidden, residual, cond, inference_params=None):
            hidden, residual = layer_norm_fn(hidden, self.norm.weight, self.norm.bias, residual=residual,
                                             prenorm=True, residual_in_fp32=True, eps=self.norm.eps, is_rms_norm=True)
            if cfg["adaln_group"]:
                shift, scale, gate = (self.scale_shift_table + cond).unbind(1)
            else:
                shift, scale, gate = self.adaLN_modulation(cond).chunk(3, dim=1)
            out = self.mixer(modulate(hidden, shift, scale), inference_params=inference_params)
            return gate.unsqueeze(1) * out, residual

    class Embeddings(nn.Module):
        def __init__(self):
            super().__init__()
            self.word_embeddings = nn.Embedding(cfg["vocab_size"], d, device=device)
            self.position_embeddings = nn.Embedding(cfg["num_tokens"] + 1, d, device=device)

    class LabelEmbedder(nn.Module):
        def __init__(self):
            super().__init__()
            self.embedding_table = nn.Embedding(cfg["num_classes"] + 1, d, device=device)

    class FinalLayer(nn.Module):
        def __init__(self):
            super().__init__()
            self.norm_final = RMSNorm(d, eps=1e-5, device=device)
            self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(d, 2 * d, device=device))

    class Backbone(nn.Module):
        def __init__(self):
            super().__init__()
            self.embeddings = Embeddings()
            self.cls_embed = LabelEmbedder()
            self.adaln_group = (nn.Sequential(nn.SiLU(), nn.Linear(d, groups * 3 * d, device=device))
                                if cfg["adaln_group"] else nn.Identity())
            self.final_layer = FinalLayer()
            self.layers = nn.ModuleList([Block(i) for i in range(cfg["n_layer"])])
            self.norm_f = RMSNorm(d, eps=1e-5, device=device)

    class OfficialAiM(nn.Module):
        """MambaLMHeadModel of the official models/stage2/mixer_seq_simple.py, as it computes."""

        def __init__(self):
            super().__init__()
            self.backbone = Backbone()
            self.lm_head = nn.Linear(d, cfg["vocab_size"], bias=False, device=device)
            self.lm_head.weight = self.backbone.embeddings.word_embeddings.weight
            self.class_dropout = 0.0

        def hidden(self, input_ids, position_ids, labels, inference_params=None):
            b = self.backbone
            if self.training and self.class_dropout > 0:
                drop = torch.rand(labels.shape[0], device=labels.device) < self.class_dropout
                labels = torch.where(drop, cfg["num_classes"], labels)
            cond = b.cls_embed.embedding_table(labels)
            if inference_params is None:
                pos = b.embeddings.position_embeddings(torch.arange(input_ids.shape[1], device=input_ids.device))
                tokens = b.embeddings.word_embeddings(input_ids) + pos
                hidden = torch.cat([cond.unsqueeze(1), tokens], dim=1)
            elif inference_params.seqlen_offset == 0:
                hidden = cond.unsqueeze(1)
            else:
                hidden = b.embeddings.word_embeddings(input_ids) + b.embeddings.position_embeddings(position_ids)
            ada = b.adaln_group(cond)
            ada = ada.view(-1, groups * 3, d).chunk(groups, dim=1) if cfg["adaln_group"] else [cond]
            residual = None
            for i, layer in enumerate(b.layers):
                hidden, residual = layer(hidden, residual, ada[i % groups], inference_params)
            hidden = layer_norm_fn(hidden, b.norm_f.weight, b.norm_f.bias, eps=b.norm_f.eps, residual=residual,
                                   prenorm=False, residual_in_fp32=True, is_rms_norm=True)
            shift, scale = b.final_layer.adaLN_modulation(cond).chunk(2, dim=1)
            return modulate(b.final_layer.norm_final(hidden), shift, scale)

        def forward(self, codes, labels):
            """Training: logits [B, L, V] of codes[:, :-1] after the class slot (AiM.forward)."""
            return self.lm_head(self.hidden(codes[:, :-1], None, labels))

        def step(self, input_ids, position_ids, labels, inference_params):
            """One decoding step of the doubled batch: logits [2B, V] (cond rows, then uncond)."""
            half = input_ids.shape[0] // 2
            input_ids = torch.cat([input_ids[:half], input_ids[:half]])
            return self.lm_head(self.hidden(input_ids, position_ids, labels, inference_params)[:, -1])

        def allocate_inference_cache(self, batch, max_seqlen, dtype=None):
            return {i: layer.mixer.allocate_inference_cache(batch, max_seqlen, dtype=dtype)
                    for i, layer in enumerate(self.backbone.layers)}

    return OfficialAiM()


class InferenceParams:
    """The fields of mamba_ssm's InferenceParams that Mamba2 reads."""

    def __init__(self, max_seqlen, max_batch_size, cache):
        self.max_seqlen, self.max_batch_size = max_seqlen, max_batch_size
        self.seqlen_offset, self.batch_size_offset = 0, 0
        self.key_value_memory_dict = cache
        self.lengths_per_sample = None


def sample_official(logits, top_k=0, top_p=1.0):
    """models/stage2/generation.py's sample(): top-k, then top-p, then a multinomial draw."""
    import torch
    if top_k > 0:
        top_k = min(top_k, logits.size(-1))
        logits.masked_fill_(logits < torch.topk(logits, top_k)[0][..., -1, None], float("-inf"))
    if top_p < 1.0:
        sorted_logits, sorted_indices = torch.sort(logits, descending=False)
        remove = sorted_logits.softmax(dim=-1).cumsum(dim=-1) <= (1 - top_p)
        remove[..., -1:] = False
        logits.masked_fill_(remove.scatter(sorted_indices.ndim - 1, sorted_indices, remove), float("-inf"))
    return torch.multinomial(torch.softmax(logits, dim=-1), num_samples=1).squeeze(dim=-1)


def guide(logits, cfg_scale):
    """The official guidance: uncond + (cond - uncond) * cfg, repeated for both halves."""
    cond, uncond = logits.chunk(2, dim=0)
    return (uncond + (cond - uncond) * cfg_scale).repeat(2, 1)


def model_config(args):
    cfg = dict(DEFAULTS)
    cfg.update(PRESETS[args.model])
    return cfg


def describe(cfg, model):
    n = sum(p.numel() for p in model.parameters())
    kind = f"adaLN-group {cfg['num_groups']}" if cfg["adaln_group"] else "adaLN per layer"
    return f"d_model {cfg['d_model']}, {cfg['n_layer']} Mamba2 layers, {kind}, {n / 1e6:.1f}M parameters"


# ------------------------------------------------------------------------------------------ check

def check(args):
    import json
    import torch
    sys.path.insert(0, os.path.join(ROOT, "tools"))
    from convert_checkpoint import read_safetensors  # the project's reader: no package needed
    mamba2, layer_norm = import_mamba(args.site, on_cpu=True, interpret=True)
    mamba2.causal_conv1d_fn = causal_conv1d_reference
    mamba2.causal_conv1d_update = None  # Mamba2.step's own PyTorch path
    failures = 0

    def report(name, got, want, rel=1e-4):
        nonlocal failures
        err = (got.double() - want.double()).abs().max().item()
        bound = rel * max(want.abs().max().item(), 1e-12)
        ok = err <= bound
        failures += not ok
        print(f"  {name:34s} max|diff| {err:.3e}  bound {bound:.3e}  {'ok' if ok else 'FAIL'}")

    # 1. The four official sizes: every key and shape, and the totals, of official_layout/.
    layout = os.path.join(args.fixtures, "official_layout")
    for name in PRESETS:
        cfg = dict(DEFAULTS, **PRESETS[name])
        with torch.device("meta"):
            model = build_model(cfg, mamba2, layer_norm, device="meta")
        ours = {f"mamba.{k}": list(v.shape) for k, v in model.state_dict().items()}
        want, total = {}, None
        for line in open(os.path.join(layout, f"{name}.txt")):
            key, value = line.split()
            if key == "total":
                total = int(value)
            elif key.startswith("mamba."):
                want[key] = json.loads(value)
        n = sum(p.numel() for p in model.parameters())
        ok = ours == want and n == total
        failures += not ok
        print(f"layout {name}: {len(ours)} tensors, {n} parameters (official {len(want)}, {total}) "
              f"{'ok' if ok else 'FAIL: ' + str(sorted(set(ours.items()) ^ set(want.items()), key=str)[:4])}")

    # 2. Every Mamba2 fixture case: the training logits and loss, and teacher-forced decoding.
    torch.manual_seed(0)
    cases_root = os.path.join(args.fixtures, "aim")
    for case in sorted(os.listdir(cases_root)):
        config = json.load(open(os.path.join(cases_root, case, "config.json")))
        if config["ssm_cfg"].get("layer") != "Mamba2":
            continue
        cfg = {k: config[k] for k in DEFAULTS if k in config}
        cfg.update({k: config[k] for k in ("d_model", "n_layer", "adaln_group", "num_groups")})
        cfg["ssm_cfg"] = {k: v for k, v in config["ssm_cfg"].items() if k != "use_mem_eff_path"}
        cfg["ssm_cfg"]["use_mem_eff_path"] = False  # the fused path calls the CUDA extension
        model = build_model(cfg, mamba2, layer_norm).eval()
        stored, _ = read_safetensors(os.path.join(cases_root, case, "model.safetensors"))
        weights = {k[len("mamba."):]: v for k, v in stored.items() if k.startswith("mamba.")}
        missing, unexpected = model.load_state_dict(weights, strict=False)
        if missing or unexpected:
            fail(f"{case}: missing {missing}, unexpected {unexpected}")
        cases = read_safetensors(os.path.join(cases_root, case, "cases.safetensors"))[0]
        print(f"{case}: {describe(cfg, model)}")
        t = time.time()
        with torch.no_grad():
            logits = model(cases["tokens"], cases["labels"])
            loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), cases["tokens"].reshape(-1))
        report("training logits", logits, cases["logits"])
        report("training loss", loss, cases["loss"])
        # Teacher-forced decoding as GenerationMixin.decode runs it: the class slot, then token t at
        # position t + 1, guidance after the model.
        steps = min(args.decode_steps, cases["decode_tokens"].shape[1])
        labels = cases["decode_labels"]
        batch = labels.shape[0]
        both = torch.cat([labels, torch.full_like(labels, cfg["num_classes"])])
        params = InferenceParams(steps + 1, 2 * batch, model.allocate_inference_cache(2 * batch, steps + 1,
                                                                                       dtype=torch.float32))
        cond, uncond, guided = [], [], []
        ids = both.unsqueeze(1)
        with torch.no_grad():
            for s in range(steps):
                position = torch.full((2 * batch, 1), s, dtype=torch.long)
                raw = model.step(ids, position, both, params)
                params.seqlen_offset += 1
                cond.append(raw[:batch])
                uncond.append(raw[batch:])
                guided.append(guide(raw, config["fixture"]["cfg_scale"])[:batch])
                ids = cases["decode_tokens"][:, s].repeat(2).unsqueeze(1)
        report(f"decode cond logits ({steps} steps)", torch.stack(cond, 1), cases["decode_cond_logits"][:, :steps])
        report(f"decode uncond logits ({steps} steps)", torch.stack(uncond, 1), cases["decode_uncond_logits"][:, :steps])
        report(f"decode guided logits ({steps} steps)", torch.stack(guided, 1), cases["decode_logits"][:, :steps])
        print(f"  ({time.time() - t:.0f} s, Triton interpreted)")
    if failures:
        fail(f"{failures} check(s) failed")
    print("check: the network is the official one (layout and fixtures)")


# ------------------------------------------------------------------------------------------ precompile

class TritonCompiles:
    """Counts Triton's compilations and its cache hits in this process."""

    def __init__(self):
        from triton import knobs
        self.compiled, self.cached = 0, 0
        knobs.compilation.listener = self

    def __call__(self, *, src, metadata, metadata_group, times, cache_hit):
        if cache_hit:
            self.cached += 1
        else:
            self.compiled += 1

    def __str__(self):
        return f"Triton compiled {self.compiled} kernels, found {self.cached} in its cache"


def install_compile_only_driver(index, count):
    """Triton compiles what it is asked to launch, autotuner configs included, and launches nothing.

    The model runs its real code path (on CUDA where there is a GPU, so that every kernel is
    specialised for the same dtypes, alignments and sizes as in train and sample); only Triton's
    launches and module loads are skipped. The compiled kernels land in Triton's cache, where the
    real runs find them. A config is compiled by the process whose K equals its position in the
    kernel's config list modulo N; kernels without configs are compiled by every process.
    """
    from triton.backends.compiler import GPUTarget
    from triton.runtime.driver import driver
    import triton.runtime.autotuner as autotuner
    try:
        real = driver.active
    except RuntimeError:  # no GPU: sm_90, as the device's
        real = None

    class Utils:
        def get_device_properties(self, device):
            props = dict(real.utils.get_device_properties(device)) if real is not None else {
                "multiprocessor_count": 132, "max_num_regs": 65536, "warpSize": 32, "sm_clock_rate": 1980000,
                "mem_clock_rate": 2619000, "mem_bus_width": 5120}
            # Nothing loads, so nothing is refused for its shared memory: the configs the real
            # autotuner will refuse are compiled too (it compiles them before it refuses them).
            props["max_shared_mem"] = 1 << 30
            return props

        def load_binary(self, name, kernel, shared, device):
            return 0, 0, 0, 0, 1024

    class CompileOnly:
        utils = Utils()

        def get_current_device(self):
            return real.get_current_device() if real is not None else 0

        def get_current_stream(self, device=None):
            return 0

        def get_current_target(self):
            return real.get_current_target() if real is not None else GPUTarget("cuda", 90, 32)

        def launcher_cls(self, src, metadata):
            return lambda *args, **kwargs: None

        def get_benchmarker(self):
            return lambda fn, quantiles=None, **kwargs: (fn(), [0.0, 0.0, 0.0])[1]

    driver.set_active(CompileOnly())
    bench = autotuner.Autotuner._bench

    def sharded_bench(self, *args, config, **kwargs):
        position = next((i for i, c in enumerate(self.configs) if c is config), None)
        if position is None:
            position = zlib.crc32(str(config).encode())
        if position % count != index:
            return [math.inf] * 3  # the best config of this shard is one it compiled
        return bench(self, *args, config=config, **kwargs)

    autotuner.Autotuner._bench = sharded_bench


def precompile(args):
    import torch
    index, count = (int(v) for v in args.shard.split("/"))
    if not 0 <= index < count:
        fail(f"--shard {args.shard}: expected K/N with 0 <= K < N")
    on_cpu = not torch.cuda.is_available()
    mamba2, layer_norm = import_mamba(args.site, on_cpu=on_cpu)
    install_compile_only_driver(index, count)
    if on_cpu:
        torch.cuda.get_device_properties = lambda device=None: types.SimpleNamespace(multi_processor_count=132)
        mamba2.causal_conv1d_fn = causal_conv1d_reference
        mamba2.causal_conv1d_update = None
    device = "cpu" if on_cpu else "cuda"
    # Two layers: the first block (no residual yet) and the others; the shapes of each layer are
    # those of all 48. Micro-batch 16 has the divisibility of 64 in every size a kernel sees.
    cfg = dict(model_config(args), n_layer=2)
    t = time.time()
    compiles = TritonCompiles()
    model = build_model(cfg, mamba2, layer_norm, device=device)
    if on_cpu:
        for layer in model.backbone.layers:
            layer.mixer.use_mem_eff_path = False  # the fused path calls causal-conv1d's CUDA code
    codes = torch.randint(cfg["vocab_size"], (16, cfg["num_tokens"]), device=device)
    labels = torch.randint(cfg["num_classes"], (16,), device=device)
    # Without a GPU this only shows that the kernels compile: in fp32, which a CPU multiplies fast.
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=not on_cpu):
        logits = model(codes, labels)
        loss = torch.nn.functional.cross_entropy(logits.view(-1, cfg["vocab_size"]), codes.view(-1))
    loss.backward()
    # Sampling: the bf16 model's first step (the chunked scan) and a decoding step, per batch.
    model = model.to(torch.bfloat16).eval()
    with torch.inference_mode():
        for b in (16, 1):
            rows = 2 * b
            both = torch.cat([labels[:b], torch.full_like(labels[:b], cfg["num_classes"])])
            params = InferenceParams(cfg["num_tokens"] + 1, rows,
                                     model.allocate_inference_cache(rows, cfg["num_tokens"] + 1, dtype=torch.bfloat16))
            ids = both.unsqueeze(1)
            guide(model.step(ids, None, both, params), 1.75)
            params.seqlen_offset = 1
            guide(model.step(ids, torch.ones_like(ids), both, params), 1.75)
    print(f"precompile {args.model} shard {index}/{count}: {compiles} ({time.time() - t:.0f} s; "
          f"{'no GPU: for sm_90' if on_cpu else torch.cuda.get_device_name()})")


# ------------------------------------------------------------------------------------------ timing

def cuda_setup(args):
    import torch
    if not torch.cuda.is_available():
        fail("train and sample time the CUDA path: no GPU here")
    mamba2, layer_norm = import_mamba(args.site, on_cpu=False)
    cfg = model_config(args)
    torch.manual_seed(0)
    model = build_model(cfg, mamba2, layer_norm, device="cuda")
    return torch, cfg, model


def train(args):
    torch, cfg, model = cuda_setup(args)
    model.train()
    model.class_dropout = 0.1
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.05}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=1e-4, betas=(0.9, 0.95))
    b, v = args.micro, cfg["vocab_size"]
    codes = torch.randint(v, (b, cfg["num_tokens"]), device="cuda")
    labels = torch.randint(cfg["num_classes"], (b,), device="cuda")

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            logits = model(codes, labels)
            loss = torch.nn.functional.cross_entropy(logits.view(-1, v), codes.view(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    print(f"official train {args.model}: {describe(cfg, model)}; micro-batch {b}, bf16 autocast, "
          f"{args.steps} timed steps after {args.warmup} warm-up (Triton autotuning)")
    t = time.time()
    compiles = TritonCompiles()
    for _ in range(args.warmup):
        step()
    torch.cuda.synchronize()
    warm = time.time() - t
    torch.cuda.reset_peak_memory_stats()
    t = time.time()
    for _ in range(args.steps):
        loss = step()
    torch.cuda.synchronize()
    s = (time.time() - t) / args.steps
    if not math.isfinite(loss.item()):
        fail(f"loss {loss.item()}")
    print(f"official train {args.model} micro {b}: {1e3 * s:.1f} ms/step, {b / s:.1f} images/s, "
          f"{b * cfg['num_tokens'] / s:.0f} tokens/s, peak {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB, "
          f"loss {loss.item():.3f} (warm-up {warm:.0f} s: {compiles})")


def sample(args):
    torch, cfg, model = cuda_setup(args)
    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[args.dtype]
    model = model.to(dtype).eval()
    b, n = args.batch, cfg["num_tokens"]
    rows, max_len = 2 * b, n + 1
    labels = torch.randint(cfg["num_classes"], (b,), device="cuda")
    both = torch.cat([labels, torch.full_like(labels, cfg["num_classes"])])
    # The states in the weights' dtype, as mamba_ssm's allocate_inference_cache keeps them.
    params = InferenceParams(max_len, rows, model.allocate_inference_cache(rows, max_len, dtype=dtype))

    # update_graph_cache + capture_graph: static input buffers, two warm-up runs on a side stream,
    # then one graph of the model step with guidance at the last offset.
    static_ids = torch.zeros(rows, 1, dtype=torch.long, device="cuda")
    static_pos = torch.zeros(rows, 1, dtype=torch.long, device="cuda")
    compiles = TritonCompiles()
    t = time.time()
    with torch.inference_mode():
        params.seqlen_offset = max_len - 1
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(2):
                guide(model.step(static_ids, static_pos, both, params), args.cfg)
            side.synchronize()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static_logits = guide(model.step(static_ids, static_pos, both, params), args.cfg)
    torch.cuda.synchronize()
    capture = time.time() - t

    def generate():
        # decode(): the offset reset; the prompt step overwrites every state.
        params.seqlen_offset = 0
        ids = both.unsqueeze(1)
        tokens = []
        while params.seqlen_offset < max_len - 1:
            if params.seqlen_offset == 0:
                logits = guide(model.step(ids, None, both, params), args.cfg)
            else:
                static_ids.copy_(ids)
                static_pos.fill_(params.seqlen_offset)
                graph.replay()
                logits = static_logits.clone()
            params.seqlen_offset += 1
            ids = sample_official(logits, top_k=args.top_k, top_p=args.top_p).unsqueeze(1)
            tokens.append(ids)
        return torch.cat(tokens, 1)

    print(f"official sample {args.model}: {describe(cfg, model)}; {b} images with guidance ({rows} rows), "
          f"cfg {args.cfg}, {n} tokens, {args.dtype} weights and states, top-k {args.top_k}, top-p {args.top_p}")
    with torch.inference_mode():
        generate()  # warm-up: Triton compiles the first step's kernels
        torch.cuda.synchronize()
        times = []
        for _ in range(args.repeats):
            t = time.time()
            out = generate()
            torch.cuda.synchronize()
            times.append(time.time() - t)
    if out.shape != (rows, n) or out.min() < 0 or out.max() >= cfg["vocab_size"]:
        fail(f"generated tokens {tuple(out.shape)} in [{out.min().item()}, {out.max().item()}]")
    s = sorted(times)[len(times) // 2]
    print(f"official sample {args.model} batch {b}: generate, graph {1e3 * s / n:.2f} ms/token, "
          f"{b * n / s:.1f} tokens/s, {b / s:.3f} images/s (median of {args.repeats}; graph capture {capture:.1f} s; "
          f"no VQ decode; {compiles})")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("fetch")
    p.add_argument("dir")
    p = sub.add_parser("build-ext")
    p.add_argument("dir")
    p = sub.add_parser("check")
    p.add_argument("fixtures", nargs="?", default=os.environ.get("AIM_FIXTURES_DIR", os.path.join(ROOT, "tests", "fixtures")),
                   help="the fixtures folder (default $AIM_FIXTURES_DIR or tests/fixtures)")
    p.add_argument("--decode-steps", type=int, default=8, help="teacher-forced steps compared (default 8)")
    for name in ("train", "sample", "precompile"):
        p = sub.add_parser(name)
        p.add_argument("--model", choices=sorted(PRESETS), default="aim_l")
    sub.choices["precompile"].add_argument("--shard", default="0/1", help="K/N: this process's share (default 0/1)")
    sub.choices["train"].add_argument("--micro", type=int, default=64)
    sub.choices["train"].add_argument("--steps", type=int, default=10)
    sub.choices["train"].add_argument("--warmup", type=int, default=3)
    p = sub.choices["sample"]
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--cfg", type=float, default=1.75)
    p.add_argument("--dtype", choices=["bf16", "fp32"], default="bf16")
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--repeats", type=int, default=3)
    for p in sub.choices.values():
        p.add_argument("--site", default=os.path.join(ROOT, ".official", "site"),
                       help="where 'fetch' put the packages (default .official/site)")
    args = parser.parse_args()
    if args.command == "fetch":
        fetch(args.dir)
    elif args.command == "build-ext":
        sys.path.insert(0, os.path.abspath(args.site))
        build_ext(args.dir, os.path.join(ROOT, "build-official-ext"))
    elif args.command == "check":
        check(args)
    elif args.command == "precompile":
        precompile(args)
    elif args.command == "train":
        train(args)
    else:
        sample(args)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "check":
        os.environ["TRITON_INTERPRET"] = "1"  # before triton is imported
    main()

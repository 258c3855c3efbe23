#!/usr/bin/env python3
"""Converts official AiM and LlamaGen checkpoints and pytorch-fid's FID Inception weights
(PyTorch pickles) to safetensors.

The C++ code never unpickles anything: checkpoints in PyTorch's pickle formats come in through
this tool, once, on the user's machine. Inputs:

  llamagen-vq  LlamaGen tokenizer checkpoints (vq_ds16_c2i.pt, vq_train.py's NNNNNNN.pt): a dict
               {model, [ema], [optimizer], [discriminator], [optimizer_disc], [steps], [args]},
               or a bare VQ state dict (the vq_f16.pt AiM's train_stage2.py loads).
  aim          AiM weights: pytorch_model.bin (torch.save of AiM.state_dict(): mamba.*, vqvae.*),
               a MambaLMHeadModel.save_pretrained() directory (backbone.*, lm_head.weight +
               config.json), or a Hugging Face snapshot (config.json + model.safetensors).
  aim-trainer  AiM training checkpoints of its Hugging Face Trainer: checkpoint-N/ holding
               pytorch_model.bin or model.safetensors next to trainer_state.json, optimizer.pt...
  inception    pytorch-fid's FID Inception-v3 weights, pt_inception-2015-12-05-6726825d.pth (the
               state dict of fid_inception_v3()), for aim's FID/sFID/IS evaluation: the 472
               tensors under their own names, float32, BatchNorm num_batches_tracked dropped;
               no config.
  lpips        LPIPS v0.1 VGG16 for aim train-vq's perceptual loss and eval-vq: torchvision's
               vgg16-397923af.pth (features.* used, classifier.* dropped) with --lpips-lin vgg.pth
               (the lpips package's lpips/weights/v0.1/vgg.pth, LlamaGen's cache/vgg.pth: the
               same file), or a saved LPIPS state dict (LlamaGen's or the lpips package's module:
               net.slice*, lin*; scaling_layer.* checked and dropped, lins.* copies dropped);
               31 tensors under LPIPS's names, float32, no config.

Every tensor is checked against the layout the configuration implies (a missing, extra or
misshapen tensor is named and nothing is written). The output keeps the official key names and the tensors bit for bit (unless --dtype converts
them); a tied weight is written under both of its names. Beside it goes the matching config:
LlamaGen ModelArgs fields (+ ch, num_res_blocks) for a tokenizer, AiM's MambaConfig
config.json for a model.

Pickles are opened with torch.load(weights_only=True): only tensors, plain containers and (for
LlamaGen's `args`) argparse.Namespace are accepted; any other Python global is refused, never
executed. Needs only PyTorch; the safetensors package is used when importable.
"""
import argparse
import collections
import ctypes
import json
import math
import os
import pickle
import re
import shutil
import struct
import sys
import zipfile

torch = None  # imported by require_torch(), so that --help works without PyTorch

PROG = "convert_checkpoint"

LLAMAGEN_KEYS = ("model", "ema", "optimizer", "discriminator", "optimizer_disc", "steps", "args")
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
EMBED_KEY = "backbone.embeddings.word_embeddings.weight"
HEAD_KEY = "lm_head.weight"
VQ_ROOTS = ("encoder.", "decoder.", "quantize.", "quant_conv.", "post_quant_conv.")
MAMBA_ROOTS = ("backbone.", "lm_head.")

# torch dtype <-> safetensors dtype name, filled by require_torch(). Every writer and reader
# here assumes a little-endian host.
ST_DTYPES = {}
ST_TO_TORCH = {}

OUT_DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16", "keep": None}


class ConvertError(Exception):
    """A refusal: the message names the file, what was expected and what was found."""


def require_torch():
    global torch
    if torch is not None:
        return
    try:
        import torch as imported
    except ImportError as e:
        raise ConvertError("PyTorch is not importable from %s (%s) ---> HINT: run it with "
                           ".venv/bin/python (scripts/setup.sh installs torch there), or pip "
                           "install torch" % (sys.executable, e))
    torch = imported
    names = {"float64": "F64", "float32": "F32", "float16": "F16", "bfloat16": "BF16",
             "int64": "I64", "int32": "I32", "int16": "I16", "int8": "I8", "uint8": "U8",
             "bool": "BOOL", "float8_e4m3fn": "F8_E4M3", "float8_e5m2": "F8_E5M2",
             "uint16": "U16", "uint32": "U32", "uint64": "U64"}
    for name, code in names.items():
        if hasattr(torch, name):
            ST_DTYPES[getattr(torch, name)] = code
            ST_TO_TORCH[code] = getattr(torch, name)


# ------------------------------------------------------------------------------------ reading

def sniff(path):
    """'zip' (torch.save), 'pickle' (legacy torch.save), 'safetensors', or None."""
    with open(path, "rb") as f:
        head = f.read(16)
    if head.startswith(b"PK\x03\x04"):
        return "zip"
    if head[:1] == b"\x80" and len(head) > 1 and 2 <= head[1] <= 5:
        return "pickle"
    if len(head) >= 9:
        n = struct.unpack("<Q", head[:8])[0]
        if 2 <= n <= 100_000_000 and head[8:9] == b"{":
            return "safetensors"
    return None


def _disallowed_global(err):
    m = re.search(r"GLOBAL ([\w.]+)", str(err))
    return m.group(1) if m else None


def _safe_globals_context(classes):
    ser = torch.serialization
    if hasattr(ser, "safe_globals"):
        return ser.safe_globals(classes)
    if hasattr(ser, "add_safe_globals"):  # torch 2.4: process-wide allowlist only
        ser.add_safe_globals(classes)
        return _NullContext()
    raise ConvertError("this PyTorch (%s) cannot allowlist argparse.Namespace for a weights-only "
                       "load ---> HINT: use PyTorch >= 2.4" % torch.__version__)


class _NullContext:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def load_torch(path, fmt):
    """torch.load(weights_only=True), allowing argparse.Namespace and nothing else."""
    refused = ("%s: refusing to unpickle: it needs the Python object %s, which a checkpoint of "
               "tensors, containers and argparse.Namespace does not ---> HINT: loading it would "
               "run code from the file; this tool reads only LlamaGen and AiM weight checkpoints")
    ser = torch.serialization
    if fmt == "zip" and hasattr(ser, "get_unsafe_globals_in_checkpoint"):
        try:
            unsafe = set(ser.get_unsafe_globals_in_checkpoint(path)) - {"argparse.Namespace"}
        except Exception:  # a damaged archive: torch.load below reports it
            unsafe = set()
        if unsafe:
            raise ConvertError(refused % (path, ", ".join(sorted(unsafe))))
    kwargs = {"map_location": "cpu", "weights_only": True}
    if fmt == "zip":
        kwargs["mmap"] = True  # tensors are paged in from the file, not copied
    allowed = []
    while True:
        try:
            with _safe_globals_context(allowed):
                return torch.load(path, **kwargs)
        except pickle.UnpicklingError as e:
            name = _disallowed_global(e)
            if name == "argparse.Namespace" and not allowed:
                allowed = [argparse.Namespace]
                continue
            if name:
                raise ConvertError(refused % (path, name))
            raise ConvertError("%s: not a readable PyTorch checkpoint: %s" % (path, _first_line(e)))
        except ConvertError:
            raise
        except Exception as e:
            raise ConvertError("%s: not a readable PyTorch checkpoint (%s): %s ---> HINT: is the "
                               "download complete?" % (path, type(e).__name__, _first_line(e)))


def _first_line(err):
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__


def read_safetensors(path):
    """name -> tensor and the metadata, from a safetensors file (no package needed)."""
    require_torch()
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        if n > size - 8:
            raise ConvertError("%s: safetensors header of %d bytes, but the file has %d"
                               % (path, n, size))
        try:
            header = json.loads(f.read(n).decode("utf-8"))
        except ValueError as e:
            raise ConvertError("%s: safetensors header is not JSON: %s" % (path, e))
        if not isinstance(header, dict):
            raise ConvertError("%s: safetensors header is not a JSON object" % path)
        base = 8 + n
        tensors = collections.OrderedDict()
        metadata = header.pop("__metadata__", {}) or {}
        entries = []
        for name, info in header.items():
            try:
                begin, end = (int(x) for x in info["data_offsets"])
                shape = [int(x) for x in info["shape"]]
                code = info["dtype"]
            except (KeyError, TypeError, ValueError):
                raise ConvertError("%s: tensor %s: expected {dtype, shape, data_offsets: [begin, "
                                   "end]}, found %s" % (path, name, json.dumps(info)[:200]))
            entries.append((begin, end, name, shape, code))
        for begin, end, name, shape, code in sorted(entries):
            dtype = ST_TO_TORCH.get(code)
            if dtype is None:
                raise ConvertError("%s: tensor %s has dtype %r, expected one of %s"
                                   % (path, name, code, ", ".join(ST_TO_TORCH)))
            nbytes = math.prod(shape) * torch.empty((), dtype=dtype).element_size()
            if end - begin != nbytes or base + end > size:
                raise ConvertError("%s: tensor %s: offsets [%d, %d] do not fit shape %s %s in a "
                                   "file of %d bytes" % (path, name, begin, end, shape, code, size))
            f.seek(base + begin)
            buf = bytearray(f.read(nbytes))
            t = torch.frombuffer(buf, dtype=dtype) if nbytes else torch.empty(0, dtype=dtype)
            tensors[name] = t.reshape(shape)
    return tensors, metadata


# ------------------------------------------------------------------------------------ inputs

class Source:
    """What the input turned out to be."""

    def __init__(self, path):
        self.path = path            # the weights file
        self.container = ""         # "llamagen" | "state-dict" | "safetensors"
        self.trainer_state = None   # trainer_state.json of an HF Trainer checkpoint
        self.config_beside = None   # config.json in the input's directory
        self.entries = []           # top-level entries of a LlamaGen dict
        self.args = None            # LlamaGen args (argparse.Namespace)
        self.steps = None
        self.taken = ""             # "model" | "ema" | ""


def find_weights(path):
    """The weights file for `path` (a file, or a checkpoint / snapshot directory)."""
    if not os.path.exists(path):
        raise ConvertError("%s: no such file or directory" % path)
    if not os.path.isdir(path):
        return path
    for name in WEIGHT_FILES:
        if os.path.isfile(os.path.join(path, name)):
            return os.path.join(path, name)
    shards = [n for n in ("model.safetensors.index.json", "pytorch_model.bin.index.json")
              if os.path.isfile(os.path.join(path, n))]
    if shards:
        raise ConvertError("%s: holds a sharded checkpoint (%s), expected one %s ---> HINT: "
                           "neither AiM's trainer nor its Hugging Face snapshots shard weights"
                           % (path, shards[0], " or ".join(WEIGHT_FILES)))
    found = sorted(os.listdir(path))[:12]
    raise ConvertError("%s: a directory without %s (found: %s) ---> HINT: pass a Hugging Face "
                       "Trainer checkpoint-N/ directory, a snapshot directory or the weights file"
                       % (path, " or ".join(WEIGHT_FILES), ", ".join(found) or "nothing"))


def open_input(path, use_ema):
    """Reads the input; returns (Source, state dict)."""
    src = Source(find_weights(path))
    folder = os.path.dirname(os.path.abspath(src.path))
    state_file = os.path.join(folder, "trainer_state.json")
    if os.path.isfile(state_file):
        try:
            with open(state_file) as f:
                state = json.load(f)
        except ValueError as e:
            raise ConvertError("%s: not valid JSON: %s" % (state_file, e))
        # The Hugging Face Trainer's TrainerState (aim's own run directories have another one).
        if isinstance(state, dict) and "global_step" in state:
            src.trainer_state = state
    if os.path.isfile(os.path.join(folder, "config.json")):
        src.config_beside = os.path.join(folder, "config.json")

    fmt = sniff(src.path)
    if fmt is None:
        with open(src.path, "rb") as f:
            head = f.read(8)
        raise ConvertError("%s: not a checkpoint: expected a PyTorch file (a zip archive or a "
                           "pickle, as torch.save writes) or safetensors, found bytes %s"
                           % (src.path, head.hex(" ") if head else "(empty file)"))
    if fmt == "safetensors":
        sd, _ = read_safetensors(src.path)
        src.container = "safetensors"
        if use_ema:
            raise ConvertError("%s: --use-ema: a safetensors file holds one set of weights, no "
                               "EMA copy" % src.path)
        return src, sd

    obj = load_torch(src.path, fmt)
    if not isinstance(obj, dict):
        raise ConvertError("%s: expected a dict (a state dict or a LlamaGen checkpoint), found %s"
                           % (src.path, type(obj).__name__))
    if obj and all(torch.is_tensor(v) for v in obj.values()):
        src.container = "state-dict"
        if use_ema:
            raise ConvertError("%s: --use-ema: a bare state dict holds one set of weights, no EMA "
                               "copy ---> HINT: LlamaGen training checkpoints keep it under 'ema'"
                               % src.path)
        return src, obj

    # A LlamaGen training checkpoint: {"model": state dict, "ema": ..., "args": Namespace, ...}.
    keys = [str(k) for k in obj.keys()]
    unknown = [k for k in keys if k not in LLAMAGEN_KEYS]
    if unknown:
        hint = ""
        if {"state", "param_groups"} <= set(keys):
            hint = " ---> HINT: this is an optimizer state; pass the model weights"
        elif src.trainer_state is not None:
            hint = (" ---> HINT: in a Trainer checkpoint the weights are %s; pass the directory"
                    % " or ".join(WEIGHT_FILES))
        raise ConvertError("%s: unknown top-level keys %s: expected a state dict (tensors only) or "
                           "a LlamaGen checkpoint with keys from %s%s"
                           % (src.path, unknown, ", ".join(LLAMAGEN_KEYS), hint))
    if "model" not in obj:
        raise ConvertError("%s: a dict with keys %s but no 'model': expected a LlamaGen "
                           "checkpoint, whose weights are under 'model' (and 'ema')"
                           % (src.path, keys))
    args = obj.get("args")
    if args is not None and not isinstance(args, argparse.Namespace):
        raise ConvertError("%s: 'args' is a %s, expected argparse.Namespace (LlamaGen's parsed "
                           "command line)" % (src.path, type(args).__name__))
    src.container = "llamagen"
    src.entries = keys
    src.args = args
    src.steps = obj.get("steps")
    src.taken = "ema" if use_ema else "model"
    if use_ema and "ema" not in obj:
        raise ConvertError("%s: --use-ema, but the checkpoint has no 'ema' entry (entries: %s) "
                           "---> HINT: LlamaGen stores one only when trained with --ema"
                           % (src.path, ", ".join(keys)))
    sd = obj[src.taken]
    if not isinstance(sd, dict) or not sd or not all(torch.is_tensor(v) for v in sd.values()):
        raise ConvertError("%s: '%s' is not a state dict (expected a non-empty dict of tensors, "
                           "found %s)" % (src.path, src.taken, _describe(sd)))
    return src, sd


def _describe(obj):
    if isinstance(obj, dict):
        kinds = collections.Counter(type(v).__name__ for v in obj.values())
        return "a dict of %d entries: %s" % (len(obj), dict(kinds))
    return "a %s" % type(obj).__name__


# ------------------------------------------------------------------------------------ contents

def classify(sd):
    """(content, prefix, stray keys): content "vq" (prefix "" or "vqvae.") or "aim" (prefix
    "mamba." or "" for MambaLMHeadModel names); (None, None, []) when neither."""
    keys = set(sd)

    def has_vq(p):
        return all(p + k in keys for k in ("encoder.conv_in.weight", "decoder.conv_out.weight",
                                           "quant_conv.weight", "quantize.embedding.weight"))

    def has_mamba(p):
        return (p + "backbone.norm_f.weight" in keys
                and (p + EMBED_KEY in keys or p + HEAD_KEY in keys))

    if has_mamba("mamba."):
        roots = ("mamba.", "vqvae.")
        kind, prefix = "aim", "mamba."
    elif has_mamba(""):
        roots, kind, prefix = MAMBA_ROOTS, "aim", ""
    elif has_vq(""):
        roots, kind, prefix = VQ_ROOTS, "vq", ""
    elif has_vq("vqvae."):
        roots, kind, prefix = ("vqvae.",), "vq", "vqvae."
    else:
        return None, None, []
    stray = sorted(k for k in keys if not k.startswith(roots))
    return kind, prefix, stray


def unknown_contents(src, sd, what):
    sample = sorted(sd)[:4]
    roots = sorted({k.split(".")[0] + "." for k in sd})
    hint = ""
    if len(roots) == 1 and roots[0] not in ("mamba.", "vqvae.", "backbone.", "encoder."):
        hint = (" ---> HINT: every key starts with '%s'; strip it with --prefix %s-"
                % (roots[0], roots[0]))
    elif hasattr(src.args, "gpt_model"):
        hint = (" ---> HINT: args.gpt_model = %s: a LlamaGen GPT, which aim does not run"
                % src.args.gpt_model)
    return ConvertError("%s: %s is neither a VQ tokenizer (encoder.*, decoder.*, quant_conv.*, "
                        "quantize.embedding.weight) nor an AiM model (mamba.backbone.*, "
                        "mamba.lm_head.weight, vqvae.*): found %d tensors such as %s%s"
                        % (src.path, what, len(sd), ", ".join(sample), hint))


def parse_prefixes(values):
    """--prefix values -> (prefixes to strip, prefixes to add), each in the given order."""
    strip, add = [], []
    for v in values or []:
        if v.endswith("-") and len(v) > 1:
            strip.append(v[:-1])
        elif v and not v.endswith("-"):
            add.append(v)
        else:
            raise ConvertError("--prefix %r: expected PREFIX (prepend) or PREFIX- (strip), e.g. "
                               "'vqvae.' or 'module.-'" % v)
    return strip, add


def strip_prefix(path, sd, prefix):
    kept = collections.OrderedDict((k[len(prefix):], v) for k, v in sd.items()
                                   if k.startswith(prefix))
    if not kept:
        roots = sorted({k.split(".")[0] + "." for k in sd})
        raise ConvertError("%s: --prefix %s-: no key starts with '%s' (keys start with %s)"
                           % (path, prefix, prefix, ", ".join(roots[:8])))
    return kept, len(sd) - len(kept)


def complete_tie(sd, mprefix, tie_config):
    """Writes the tied weight under both names. Returns 'tied' | 'untied'."""
    emb, head = mprefix + EMBED_KEY, mprefix + HEAD_KEY
    if emb in sd and head in sd:
        same = sd[emb].shape == sd[head].shape and torch.equal(sd[emb], sd[head])
        if tie_config is True and not same:
            raise ConvertError("%s and %s differ, but the config says tie_embeddings: true"
                               % (emb, head))
        return "tied" if same else "untied"
    if tie_config is False:
        missing = head if emb in sd else emb
        raise ConvertError("%s is missing and the config says tie_embeddings: false" % missing)
    if emb in sd:
        sd[head] = sd[emb]
    else:
        sd[emb] = sd[head]
    return "tied"


# ------------------------------------------------------------------------------------ inception

INCEPTION_PROBE = ("Conv2d_1a_3x3.conv.weight", "Mixed_7c.branch_pool.conv.weight")
INCEPTION_CLASSES = 1008


def inception_keys():
    """name -> shape of the 472 tensors of pytorch-fid's fid_inception_v3() state dict (torchvision
    Inception3 with 1008 classes and no aux classifier), without num_batches_tracked. Every conv is
    a BasicConv2d: `<name>.conv.weight` and `<name>.bn.{weight,bias,running_mean,running_var}`."""
    keys = collections.OrderedDict()

    def conv(name, cin, cout, kh, kw=None):
        keys[name + ".conv.weight"] = (cout, cin, kh, kh if kw is None else kw)
        for p in ("weight", "bias", "running_mean", "running_var"):
            keys["%s.bn.%s" % (name, p)] = (cout,)

    conv("Conv2d_1a_3x3", 3, 32, 3)
    conv("Conv2d_2a_3x3", 32, 32, 3)
    conv("Conv2d_2b_3x3", 32, 64, 3)
    conv("Conv2d_3b_1x1", 64, 80, 1)
    conv("Conv2d_4a_3x3", 80, 192, 3)
    for m, cin, pool in (("Mixed_5b", 192, 32), ("Mixed_5c", 256, 64), ("Mixed_5d", 288, 64)):
        conv(m + ".branch1x1", cin, 64, 1)
        conv(m + ".branch5x5_1", cin, 48, 1)
        conv(m + ".branch5x5_2", 48, 64, 5)
        conv(m + ".branch3x3dbl_1", cin, 64, 1)
        conv(m + ".branch3x3dbl_2", 64, 96, 3)
        conv(m + ".branch3x3dbl_3", 96, 96, 3)
        conv(m + ".branch_pool", cin, pool, 1)
    conv("Mixed_6a.branch3x3", 288, 384, 3)
    conv("Mixed_6a.branch3x3dbl_1", 288, 64, 1)
    conv("Mixed_6a.branch3x3dbl_2", 64, 96, 3)
    conv("Mixed_6a.branch3x3dbl_3", 96, 96, 3)
    for m, c7 in (("Mixed_6b", 128), ("Mixed_6c", 160), ("Mixed_6d", 160), ("Mixed_6e", 192)):
        conv(m + ".branch1x1", 768, 192, 1)
        conv(m + ".branch7x7_1", 768, c7, 1)
        conv(m + ".branch7x7_2", c7, c7, 1, 7)
        conv(m + ".branch7x7_3", c7, 192, 7, 1)
        conv(m + ".branch7x7dbl_1", 768, c7, 1)
        conv(m + ".branch7x7dbl_2", c7, c7, 7, 1)
        conv(m + ".branch7x7dbl_3", c7, c7, 1, 7)
        conv(m + ".branch7x7dbl_4", c7, c7, 7, 1)
        conv(m + ".branch7x7dbl_5", c7, 192, 1, 7)
        conv(m + ".branch_pool", 768, 192, 1)
    conv("Mixed_7a.branch3x3_1", 768, 192, 1)
    conv("Mixed_7a.branch3x3_2", 192, 320, 3)
    conv("Mixed_7a.branch7x7x3_1", 768, 192, 1)
    conv("Mixed_7a.branch7x7x3_2", 192, 192, 1, 7)
    conv("Mixed_7a.branch7x7x3_3", 192, 192, 7, 1)
    conv("Mixed_7a.branch7x7x3_4", 192, 192, 3)
    for m, cin in (("Mixed_7b", 1280), ("Mixed_7c", 2048)):
        conv(m + ".branch1x1", cin, 320, 1)
        conv(m + ".branch3x3_1", cin, 384, 1)
        conv(m + ".branch3x3_2a", 384, 384, 1, 3)
        conv(m + ".branch3x3_2b", 384, 384, 3, 1)
        conv(m + ".branch3x3dbl_1", cin, 448, 1)
        conv(m + ".branch3x3dbl_2", 448, 384, 3)
        conv(m + ".branch3x3dbl_3a", 384, 384, 1, 3)
        conv(m + ".branch3x3dbl_3b", 384, 384, 3, 1)
        conv(m + ".branch_pool", cin, 192, 1)
    keys["fc.weight"] = (INCEPTION_CLASSES, 2048)
    keys["fc.bias"] = (INCEPTION_CLASSES,)
    return keys


def looks_like_inception(sd):
    return all(k in sd for k in INCEPTION_PROBE)


def _listing(items, limit=8):
    text = ", ".join(items[:limit])
    return text + (" (and %d more)" % (len(items) - limit) if len(items) > limit else "")


def layout_problems(sd, expected, ignore=()):
    """What keeps `sd` from being exactly `expected` ({key: shape tuple}): lines naming the
    missing, unexpected (not in `ignore`), misshapen and non-floating-point tensors."""
    missing = [k for k in expected if k not in sd]
    unexpected = [k for k in sd if k not in expected and k not in ignore]
    shapes = ["%s: expected %s, found %s" % (k, list(s), list(sd[k].shape))
              for k, s in expected.items() if k in sd and tuple(sd[k].shape) != tuple(s)]
    integer = ["%s (%s)" % (k, str(sd[k].dtype).replace("torch.", "")) for k in expected
               if k in sd and not sd[k].is_floating_point()]
    problems = []
    if missing:
        problems.append("missing %d: %s" % (len(missing), _listing(missing)))
    if unexpected:
        problems.append("unexpected %d: %s" % (len(unexpected), _listing(unexpected)))
    if shapes:
        problems.append("shape mismatch: %s" % _listing(shapes, 4))
    if integer:
        problems.append("not floating point: %s" % _listing(integer))
    return problems


def check_inception(path, sd):
    """The FID Inception tensors of `sd` in float32, in the network's order; num_batches_tracked
    dropped. Returns (tensors, number of counters dropped); raises naming every problem."""
    counters = [k for k in sd if k == "num_batches_tracked" or k.endswith(".num_batches_tracked")]
    expected = inception_keys()
    problems = layout_problems(sd, expected, counters)
    unexpected = [k for k in sd if k not in expected and k not in counters]
    if problems:
        hint = ""
        fc = sd.get("fc.weight")
        if fc is not None and tuple(fc.shape) == (1000, 2048):
            hint = ("\n---> HINT: fc has 1000 classes: this is torchvision's ImageNet Inception-v3, "
                    "not the FID network (1008 classes, converted from TensorFlow's "
                    "inception-2015-12-05), whose features FID and sFID are defined with")
        elif any(k.startswith("AuxLogits.") for k in unexpected):
            hint = ("\n---> HINT: AuxLogits.* belong to torchvision's Inception3 with aux_logits; "
                    "pytorch-fid's FID network (pt_inception-2015-12-05-6726825d.pth) has none")
        raise ConvertError("%s: not pytorch-fid's FID Inception-v3 weights (fid_inception_v3(): "
                           "%d tensors plus BatchNorm num_batches_tracked):\n  %s%s"
                           % (path, len(expected), "\n  ".join(problems), hint))
    out = collections.OrderedDict()
    for k in expected:
        out[k] = sd[k].to(torch.float32) if sd[k].dtype != torch.float32 else sd[k]
    return out, len(counters)


def write_fixed_network(opts, src, tensors, dtypes_in, head, stripped, tensors_line, others=()):
    """Writes the float32 `tensors` of a network with a fixed architecture (no config) to
    opts.out and prints the report: `head` lines after the first, then the prefixes stripped,
    `tensors_line`, the parameter count, dtypes, output and writer."""
    out, _ = output_paths(opts.out, None)
    for other in (src.path,) + tuple(others):
        if _same_file(out, other):
            raise ConvertError("%s: the output would overwrite the input" % out)
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    how = write_output(out, tensors)
    lines = ["%s: %s" % (PROG, opts.input)] + list(head)
    for p, dropped in stripped:
        lines.append("  prefix      stripped '%s' (%d other tensors dropped)" % (p, dropped))
    lines.append("  tensors     %s" % tensors_line)
    lines.append("  parameters  %s" % _fmt_int(sum(v.numel() for v in tensors.values())))
    lines.append("  dtype       %s -> float32 x%d"
                 % (", ".join("%s x%d" % kv for kv in sorted(dtypes_in.items())), len(tensors)))
    lines.append("  output      %s" % out)
    lines.append("  writer      %s" % how)
    lines.append("  config      none (fixed architecture)")
    print("\n".join(lines))
    return 0


def convert_inception(opts, src, sd, stripped, add):
    if add:
        raise ConvertError("%s: --prefix %s: the FID Inception weights keep their own names "
                           "(aim's loader reads Conv2d_1a_3x3.conv.weight, ...); a prefix cannot be "
                           "added" % (src.path, add[0]))
    if opts.dtype not in ("keep", "fp32"):
        raise ConvertError("%s: --dtype %s: the FID Inception weights are written in float32 only "
                           "(FID is defined by the float32 network)" % (src.path, opts.dtype))
    for flag, given in (("--config-out", opts.config_out), ("--config-in", opts.config_in)):
        if given:
            raise ConvertError("%s: %s: the FID Inception network has a fixed architecture "
                               "and no config file" % (src.path, flag))
    dtypes_in = collections.Counter(str(v.dtype).replace("torch.", "") for v in sd.values())
    tensors, counters = check_inception(src.path, sd)
    detail = {"state-dict": "state dict, torch.save", "safetensors": "safetensors file",
              "llamagen": "under '%s'" % src.taken}[src.container]
    head = ["  kind        inception (pytorch-fid FID Inception-v3, %s)" % detail,
            "  weights     %s%s" % (src.path, " ['%s']" % src.taken if src.taken else "")]
    return write_fixed_network(opts, src, tensors, dtypes_in, head, stripped,
                               "%d (%d BatchNorm num_batches_tracked dropped)"
                               % (len(tensors), counters))


# ------------------------------------------------------------------------------------ lpips

# VGG16 `features` index of each 3x3 conv: (index, input channels, output channels, slice).
LPIPS_VGG = ((0, 3, 64, 1), (2, 64, 64, 1), (5, 64, 128, 2), (7, 128, 128, 2), (10, 128, 256, 3),
             (12, 256, 256, 3), (14, 256, 256, 3), (17, 256, 512, 4), (19, 512, 512, 4),
             (21, 512, 512, 4), (24, 512, 512, 5), (26, 512, 512, 5), (28, 512, 512, 5))
LPIPS_CHANNELS = (64, 128, 256, 512, 512)
LPIPS_SHIFT = (-0.030, -0.088, -0.188)
LPIPS_SCALE = (0.458, 0.448, 0.450)
LPIPS_PROBE = ("net.slice1.0.weight", "lin0.model.1.weight")
VGG_PROBE = ("features.0.weight", "features.28.weight")
LPIPS_LIN_HINT = ("the lpips package ships it as lpips/weights/v0.1/vgg.pth (pip install lpips); "
                  "LlamaGen downloads the same file (md5 d507d734...) to "
                  "tokenizer/tokenizer_image/cache/vgg.pth")


def lpips_keys():
    """name -> shape of the 31 tensors aim's LPIPS loader reads, in network order."""
    keys = collections.OrderedDict()
    for idx, cin, cout, sl in LPIPS_VGG:
        keys["net.slice%d.%d.weight" % (sl, idx)] = (cout, cin, 3, 3)
        keys["net.slice%d.%d.bias" % (sl, idx)] = (cout,)
    for k, c in enumerate(LPIPS_CHANNELS):
        keys["lin%d.model.1.weight" % k] = (1, c, 1, 1)
    return keys


def looks_like_lpips(sd):
    return all(k in sd for k in LPIPS_PROBE)


def looks_like_vgg16(sd):
    return all(k in sd for k in VGG_PROBE)


def lpips_from_vgg16(path, sd, lin_path):
    """torchvision's VGG16 state dict (features.N.*) + LPIPS's linear layers -> LPIPS names.
    Returns (state dict, number of classifier tensors dropped)."""
    expected = collections.OrderedDict()
    for idx, cin, cout, _ in LPIPS_VGG:
        expected["features.%d.weight" % idx] = (cout, cin, 3, 3)
        expected["features.%d.bias" % idx] = (cout,)
    classifier = [k for k in sd if k.startswith("classifier.")]
    problems = layout_problems(sd, expected, classifier)
    if problems:
        raise ConvertError("%s: not torchvision's VGG16 weights (vgg16-397923af.pth: features.* "
                           "with 13 convolutions, classifier.*):\n  %s%s"
                           % (path, "\n  ".join(problems),
                              "\n---> HINT: VGG16 with batch norm (vgg16_bn) is not what LPIPS "
                              "uses" if "features.1.running_mean" in sd else ""))
    if not lin_path:
        raise ConvertError("%s: VGG16 weights alone: LPIPS also needs its linear layers "
                           "---> HINT: pass --lpips-lin vgg.pth; %s" % (path, LPIPS_LIN_HINT))
    lin_src, lin_sd = open_input(lin_path, False)
    lin_expected = collections.OrderedDict(
        ("lin%d.model.1.weight" % k, (1, c, 1, 1)) for k, c in enumerate(LPIPS_CHANNELS))
    problems = layout_problems(lin_sd, lin_expected)
    if problems:
        raise ConvertError("%s (--lpips-lin): not LPIPS v0.1's VGG linear layers (5 tensors "
                           "lin0..lin4.model.1.weight):\n  %s\n---> HINT: %s"
                           % (lin_src.path, "\n  ".join(problems), LPIPS_LIN_HINT))
    out = collections.OrderedDict()
    for idx, _, _, sl in LPIPS_VGG:
        for p in ("weight", "bias"):
            out["net.slice%d.%d.%s" % (sl, idx, p)] = sd["features.%d.%s" % (idx, p)]
    out.update((k, lin_sd[k]) for k in lin_expected)
    return out, len(classifier)


def lpips_from_module(path, sd):
    """A saved LPIPS module state dict -> the 31 tensors. scaling_layer.* must hold v0.1's
    constants; lins.K.* (the lpips package's ModuleList) must equal linK.*. Returns (state dict,
    names of the tensors dropped)."""
    expected = lpips_keys()
    extra = [k for k in sd if k.startswith("scaling_layer.") or k.startswith("lins.")]
    problems = layout_problems(sd, expected, extra)
    for k in extra:
        v = sd[k]
        if k in ("scaling_layer.shift", "scaling_layer.scale"):
            want = LPIPS_SHIFT if k.endswith("shift") else LPIPS_SCALE
            got = [float(x) for x in v.reshape(-1)] if v.numel() == 3 else None
            if got is None or any(abs(a - b) > 1e-6 for a, b in zip(got, want)):
                problems.append("%s: expected %s (LPIPS v0.1), found %s"
                                % (k, list(want), got if got is not None else list(v.shape)))
        elif k.startswith("lins."):
            twin = "lin" + k[len("lins."):]
            if twin not in sd or tuple(sd[twin].shape) != tuple(v.shape) or not torch.equal(
                    sd[twin].to(v.dtype), v):
                problems.append("%s: expected a copy of %s" % (k, twin))
        else:
            problems.append("unexpected: %s" % k)
    if problems:
        raise ConvertError("%s: not an LPIPS v0.1 VGG16 state dict (%d tensors net.slice*, "
                           "lin*):\n  %s" % (path, len(expected), "\n  ".join(problems)))
    return collections.OrderedDict((k, sd[k]) for k in expected), extra


def convert_lpips(opts, src, sd, stripped, add):
    if add:
        raise ConvertError("%s: --prefix %s: the LPIPS weights keep their own names (aim's "
                           "loader reads net.slice1.0.weight, ...); a prefix cannot be added"
                           % (src.path, add[0]))
    if opts.dtype not in ("keep", "fp32"):
        raise ConvertError("%s: --dtype %s: the LPIPS weights are written in float32 only"
                           % (src.path, opts.dtype))
    for flag, given in (("--config-out", opts.config_out), ("--config-in", opts.config_in)):
        if given:
            raise ConvertError("%s: %s: LPIPS has a fixed architecture and no config file"
                               % (src.path, flag))
    if looks_like_lpips(sd):
        if opts.lpips_lin:
            raise ConvertError("%s: --lpips-lin %s: the input is a whole LPIPS state dict, which "
                               "holds its linear layers already" % (src.path, opts.lpips_lin))
        tensors, dropped = lpips_from_module(src.path, sd)
        origin = "LPIPS state dict"
        note = "%d dropped (%s)" % (len(dropped), ", ".join(sorted({k.split(".")[0]
                                                                    for k in dropped})) or "none")
    elif looks_like_vgg16(sd):
        tensors, n_classifier = lpips_from_vgg16(src.path, sd, opts.lpips_lin)
        origin = "torchvision VGG16 + %s" % opts.lpips_lin
        note = "%d classifier tensors dropped" % n_classifier
    else:
        raise ConvertError("%s: --kind lpips expects torchvision's VGG16 weights (features.0.weight"
                           " .. features.28.weight) with --lpips-lin, or an LPIPS state dict "
                           "(net.slice1.0.weight, lin0.model.1.weight), found %d tensors such as "
                           "%s" % (src.path, len(sd), ", ".join(sorted(sd)[:4])))
    dtypes_in = collections.Counter(str(v.dtype).replace("torch.", "") for v in tensors.values())
    tensors = collections.OrderedDict(
        (k, v.to(torch.float32) if v.dtype != torch.float32 else v) for k, v in tensors.items())
    return write_fixed_network(opts, src, tensors, dtypes_in,
                               ["  kind        lpips (v0.1, VGG16; %s)" % origin], stripped,
                               "%d (%s)" % (len(tensors), note),
                               [opts.lpips_lin] if opts.lpips_lin else [])


# ------------------------------------------------------------------------------------ configs

def _levels(sd, root):
    """Per-level number of ResnetBlocks and width of the first one, from `<root>.conv_blocks.*`."""
    pat = re.compile(re.escape(root) + r"conv_blocks\.(\d+)\.res\.(\d+)\.conv1\.weight$")
    blocks = collections.defaultdict(dict)
    for k, v in sd.items():
        m = pat.match(k)
        if m:
            blocks[int(m.group(1))][int(m.group(2))] = v.shape[0]
    levels = sorted(blocks)
    if not levels or levels != list(range(len(levels))):
        raise ConvertError("expected %sconv_blocks.0.. with res.*.conv1.weight, found levels %s"
                           % (root, levels))
    return [len(blocks[i]) for i in levels], [blocks[i][0] for i in levels]


def vq_config(sd, prefix, args):
    """LlamaGen ModelArgs (+ ch, num_res_blocks) from tensor shapes and the training args."""
    p = prefix
    need = ("encoder.conv_in.weight", "quant_conv.weight", "quantize.embedding.weight")
    for k in need:
        if p + k not in sd:
            raise ConvertError("tokenizer tensor %s%s is missing" % (p, k))
    ch = sd[p + "encoder.conv_in.weight"].shape[0]
    enc_res, enc_width = _levels(sd, p + "encoder.")
    dec_res, dec_width = _levels(sd, p + "decoder.")

    def mult(widths, what):
        for w in widths:
            if w % ch:
                raise ConvertError("%s width %d is not a multiple of ch = %d (encoder.conv_in)"
                                   % (what, w, ch))
        return [w // ch for w in widths]

    enc_mult = mult(enc_width, "encoder level")
    dec_mult = list(reversed(mult(dec_width, "decoder level")))  # decoder levels run top-down
    nrb = enc_res[0]
    if set(enc_res) != {nrb} or set(dec_res) != {nrb + 1}:
        raise ConvertError("expected %d ResnetBlocks per encoder level and %d per decoder level "
                           "(LlamaGen's layout), found %s and %s" % (nrb, nrb + 1, enc_res, dec_res))
    size, dim = sd[p + "quantize.embedding.weight"].shape
    cfg = collections.OrderedDict()
    cfg["codebook_size"] = int(size)
    cfg["codebook_embed_dim"] = int(dim)
    cfg["codebook_l2_norm"] = bool(getattr(args, "codebook_l2_norm", True))
    cfg["codebook_show_usage"] = (p + "quantize.codebook_used") in sd
    cfg["commit_loss_beta"] = float(getattr(args, "commit_loss_beta", 0.25))
    cfg["entropy_loss_ratio"] = float(getattr(args, "entropy_loss_ratio", 0.0))
    cfg["encoder_ch_mult"] = enc_mult
    cfg["decoder_ch_mult"] = dec_mult
    cfg["z_channels"] = int(sd[p + "quant_conv.weight"].shape[1])
    cfg["dropout_p"] = float(getattr(args, "dropout_p", 0.0))
    cfg["ch"] = int(ch)
    cfg["num_res_blocks"] = int(nrb)
    notes = []
    for field in ("codebook_size", "codebook_embed_dim"):
        given = getattr(args, field, None)
        if given is not None and given != cfg[field]:
            notes.append("args.%s = %s, but the tensors say %s (the tensors win)"
                         % (field, given, cfg[field]))
    return cfg, notes


def _layer_ids(sd, mp):
    pat = re.compile(re.escape(mp) + r"backbone\.layers\.(\d+)\.")
    return sorted({int(m.group(1)) for m in (pat.match(k) for k in sd) if m})


def aim_config(sd, mp, tie):
    """AiM's MambaConfig (the official config.json fields) from tensor shapes."""
    def t(key):
        if mp + key not in sd:
            raise ConvertError("AiM tensor %s%s is missing" % (mp, key))
        return sd[mp + key]

    vocab, d = t(EMBED_KEY).shape
    ids = _layer_ids(sd, mp)
    if not ids or ids != list(range(len(ids))):
        raise ConvertError("expected %sbackbone.layers.0.. numbered without gaps, found %s"
                           % (mp, ids[:10]))
    n_layer = len(ids)
    l0 = "backbone.layers.0."
    if mp + l0 + "mixer.in_proj.weight" not in sd:
        mixers = sorted({k[len(mp + l0):] for k in sd if k.startswith(mp + l0 + "mixer.")})
        raise ConvertError("layer 0 has no Mamba mixer (mixer.in_proj.weight); found %s ---> "
                           "HINT: hybrid models with attention layers are not supported"
                           % (mixers[:6],))
    d_intermediate = 0
    if mp + l0 + "mlp.fc2.weight" in sd:
        d_intermediate = int(sd[mp + l0 + "mlp.fc2.weight"].shape[1])
    adaln_factor = 6 if d_intermediate else 3
    group = mp + "backbone.adaln_group.1.weight" in sd
    num_groups = 1
    if group:
        rows = sd[mp + "backbone.adaln_group.1.weight"].shape[0]
        if rows % (adaln_factor * d):
            raise ConvertError("backbone.adaln_group.1.weight has %d rows, expected a multiple of "
                               "%d * d_model (%d)" % (rows, adaln_factor, d))
        num_groups = rows // (adaln_factor * d)

    a_log = t(l0 + "mixer.A_log")
    conv = t(l0 + "mixer.conv1d.weight")
    ssm = collections.OrderedDict()
    notes = []
    if a_log.dim() == 1:  # Mamba2: one A per head
        nheads = a_log.shape[0]
        d_inner = t(l0 + "mixer.out_proj.weight").shape[1]
        conv_dim = conv.shape[0]
        if d_inner % d or d_inner % nheads or (conv_dim - d_inner) % 2:
            raise ConvertError("Mamba2 layer 0: d_inner %d, %d heads, conv width %d do not fit "
                               "d_model %d" % (d_inner, nheads, conv_dim, d))
        gs = (conv_dim - d_inner) // 2  # ngroups * d_state: shapes cannot separate the two
        ssm["layer"] = "Mamba2"
        ssm["d_state"] = int(gs)
        ssm["d_conv"] = int(conv.shape[2])
        ssm["expand"] = int(d_inner // d)
        ssm["headdim"] = int(d_inner // nheads)
        ssm["ngroups"] = 1
        notes.append("ngroups 1 assumed (shapes fix only ngroups * d_state = %d; every released "
                     "AiM has 1): a model trained with more converts with its config.json, "
                     "--config-in" % gs)
        if t(l0 + "mixer.D").shape[0] != nheads:
            ssm["D_has_hdim"] = True
        if mp + l0 + "mixer.norm.weight" not in sd:
            ssm["rmsnorm"] = False
    else:  # Mamba1: A [d_inner, d_state]
        d_inner, d_state = a_log.shape
        if d_inner % d:
            raise ConvertError("Mamba1 layer 0: d_inner %d is not a multiple of d_model %d"
                               % (d_inner, d))
        dt_rank = t(l0 + "mixer.dt_proj.weight").shape[1]
        ssm["layer"] = "Mamba1"
        ssm["d_state"] = int(d_state)
        ssm["d_conv"] = int(conv.shape[2])
        ssm["expand"] = int(d_inner // d)
        ssm["dt_rank"] = "auto" if dt_rank == math.ceil(d / 16) else int(dt_rank)
    if mp + l0 + "mixer.conv1d.bias" not in sd:
        ssm["conv_bias"] = False
    if mp + l0 + "mixer.in_proj.bias" in sd:
        ssm["bias"] = True

    cfg = collections.OrderedDict()
    cfg["d_model"] = int(d)
    cfg["d_intermediate"] = d_intermediate
    cfg["n_layer"] = n_layer
    cfg["vocab_size"] = int(vocab)
    cfg["ssm_cfg"] = ssm
    cfg["attn_layer_idx"] = []
    cfg["attn_cfg"] = {}
    cfg["rms_norm"] = mp + l0 + "norm.bias" not in sd
    cfg["residual_in_fp32"] = True
    cfg["fused_add_norm"] = True
    cfg["pad_vocab_size_multiple"] = 8
    cfg["tie_embeddings"] = tie == "tied"
    cfg["num_classes"] = int(t("backbone.cls_embed.embedding_table.weight").shape[0]) - 1
    cfg["num_tokens"] = int(t("backbone.embeddings.position_embeddings.weight").shape[0]) - 1
    cfg["adaln_group"] = group
    cfg["num_groups"] = num_groups
    cfg["token_drop"] = 0.0
    cfg["mixer_drop"] = 0.0
    cfg["mlp_drop"] = 0.0
    return cfg, notes


def aim_layout(cfg, mp):
    """key -> shape of every tensor of the official AiM language model (MambaLMHeadModel with
    AiM's blocks) that `cfg` describes, under prefix `mp`, in the model's order. `cfg` is
    aim_config()'s: for Mamba2, ssm_cfg.d_state stands for ngroups * d_state, which is all that
    the shapes need."""
    d, ssm, b = cfg["d_model"], cfg["ssm_cfg"], mp + "backbone."
    out = collections.OrderedDict()
    out[b + "embeddings.word_embeddings.weight"] = (cfg["vocab_size"], d)
    out[b + "embeddings.position_embeddings.weight"] = (cfg["num_tokens"] + 1, d)
    out[b + "cls_embed.embedding_table.weight"] = (cfg["num_classes"] + 1, d)
    if cfg["adaln_group"]:
        out[b + "adaln_group.1.weight"] = (cfg["num_groups"] * 3 * d, d)
        out[b + "adaln_group.1.bias"] = (cfg["num_groups"] * 3 * d,)
    out[b + "final_layer.norm_final.weight"] = (d,)
    out[b + "final_layer.adaLN_modulation.1.weight"] = (2 * d, d)
    out[b + "final_layer.adaLN_modulation.1.bias"] = (2 * d,)
    e = ssm["expand"] * d
    bias, conv_bias = ssm.get("bias", False), ssm.get("conv_bias", True)
    for i in range(cfg["n_layer"]):
        p = "%slayers.%d." % (b, i)
        m = p + "mixer."
        if cfg["adaln_group"]:
            out[p + "scale_shift_table"] = (1, 3, d)
        out[p + "norm.weight"] = (d,)
        if ssm["layer"] == "Mamba2":
            h, gs = e // ssm["headdim"], ssm["ngroups"] * ssm["d_state"]
            out[m + "dt_bias"] = (h,)
            out[m + "A_log"] = (h,)
            out[m + "D"] = (e,) if ssm.get("D_has_hdim", False) else (h,)
            out[m + "in_proj.weight"] = (2 * e + 2 * gs + h, d)
            if bias:
                out[m + "in_proj.bias"] = (2 * e + 2 * gs + h,)
            out[m + "conv1d.weight"] = (e + 2 * gs, 1, ssm["d_conv"])
            if conv_bias:
                out[m + "conv1d.bias"] = (e + 2 * gs,)
            if ssm.get("rmsnorm", True):
                out[m + "norm.weight"] = (e,)
        else:
            n = ssm["d_state"]
            r = math.ceil(d / 16) if ssm["dt_rank"] == "auto" else ssm["dt_rank"]
            out[m + "A_log"] = (e, n)
            out[m + "D"] = (e,)
            out[m + "in_proj.weight"] = (2 * e, d)
            if bias:
                out[m + "in_proj.bias"] = (2 * e,)
            out[m + "conv1d.weight"] = (e, 1, ssm["d_conv"])
            if conv_bias:
                out[m + "conv1d.bias"] = (e,)
            out[m + "x_proj.weight"] = (r + 2 * n, e)
            out[m + "dt_proj.weight"] = (e, r)
            out[m + "dt_proj.bias"] = (e,)
        out[m + "out_proj.weight"] = (d, e)
        if bias:
            out[m + "out_proj.bias"] = (d,)
        if not cfg["adaln_group"]:
            out[p + "adaLN_modulation.1.weight"] = (3 * d, d)
            out[p + "adaLN_modulation.1.bias"] = (3 * d,)
    out[b + "norm_f.weight"] = (d,)
    out[mp + HEAD_KEY] = (cfg["vocab_size"], d)
    return out


def vq_layout(cfg, p):
    """key -> shape of every tensor of LlamaGen's VQModel (AiM's is the same network) that
    vq_config()'s `cfg` describes, under prefix `p`, in the model's order."""
    out = collections.OrderedDict()

    def conv(name, cout, cin, k):
        out[name + ".weight"] = (cout, cin, k, k)
        out[name + ".bias"] = (cout,)

    def norm(name, c):  # GroupNorm(32, c, affine=True)
        out[name + ".weight"] = (c,)
        out[name + ".bias"] = (c,)

    def resnet(name, cin, cout):
        norm(name + ".norm1", cin)
        conv(name + ".conv1", cout, cin, 3)
        norm(name + ".norm2", cout)
        conv(name + ".conv2", cout, cout, 3)
        if cin != cout:
            conv(name + ".nin_shortcut", cout, cin, 1)

    def attn(name, c):
        norm(name + ".norm", c)
        for part in ("q", "k", "v", "proj_out"):
            conv("%s.%s" % (name, part), c, c, 1)

    def middle(root, c):
        resnet(root + "mid.0", c, c)
        attn(root + "mid.1", c)
        resnet(root + "mid.2", c, c)

    ch, nrb, z = cfg["ch"], cfg["num_res_blocks"], cfg["z_channels"]
    mult = cfg["encoder_ch_mult"]
    e = p + "encoder."
    conv(e + "conv_in", ch, 3, 3)
    c = ch
    for i, m in enumerate(mult):
        for j in range(nrb):
            resnet("%sconv_blocks.%d.res.%d" % (e, i, j), c, ch * m)
            c = ch * m
            if i == len(mult) - 1:
                attn("%sconv_blocks.%d.attn.%d" % (e, i, j), c)
        if i != len(mult) - 1:
            conv("%sconv_blocks.%d.downsample.conv" % (e, i), c, c, 3)
    middle(e, c)
    norm(e + "norm_out", c)
    conv(e + "conv_out", z, c, 3)

    mult = cfg["decoder_ch_mult"]
    dd = p + "decoder."
    c = ch * mult[-1]
    conv(dd + "conv_in", c, z, 3)
    middle(dd, c)
    for k, level in enumerate(reversed(range(len(mult)))):
        for j in range(nrb + 1):
            resnet("%sconv_blocks.%d.res.%d" % (dd, k, j), c, ch * mult[level])
            c = ch * mult[level]
            if level == len(mult) - 1:
                attn("%sconv_blocks.%d.attn.%d" % (dd, k, j), c)
        if level != 0:
            conv("%sconv_blocks.%d.upsample.conv" % (dd, k), c, c, 3)
    norm(dd + "norm_out", c)
    conv(dd + "conv_out", 3, c, 3)

    out[p + "quantize.embedding.weight"] = (cfg["codebook_size"], cfg["codebook_embed_dim"])
    if cfg["codebook_show_usage"]:
        out[p + "quantize.codebook_used"] = (65536,)
    conv(p + "quant_conv", cfg["codebook_embed_dim"], z, 1)
    conv(p + "post_quant_conv", z, cfg["codebook_embed_dim"], 1)
    return out


def check_layout(path, sd, expected, what):
    """Raises naming every tensor of `sd` that keeps it from being the `expected` layout."""
    problems = layout_problems(sd, expected)
    if problems:
        raise ConvertError("%s: the tensors do not form %s (%d tensors, as its configuration "
                           "expects):\n  %s\n---> HINT: a checkpoint of another model or code "
                           "version, or a damaged file"
                           % (path, what, len(expected), "\n  ".join(problems)))


def read_hf_config(path):
    """A MambaConfig config.json as a dict, or None when the file is something else."""
    try:
        with open(path) as f:
            j = json.load(f)
    except (OSError, ValueError):
        return None
    if isinstance(j, dict) and isinstance(j.get("config"), dict) and "d_model" not in j:
        j = j["config"]  # a nested {"config": {...}} layout
    if isinstance(j, dict) and "d_model" in j and "n_layer" in j:
        return j
    return None


def check_hf_config(path, given, derived, hint="move it away to have the config derived from the tensors"):
    """Raises when a config.json beside the weights contradicts the tensor shapes."""
    ssm_given = given.get("ssm_cfg", {"layer": "Mamba2"})  # MambaConfig's default
    if ssm_given is None:
        ssm_given = {}
    layer = ssm_given.get("layer", "Mamba1")  # mamba_ssm's create_block() default
    ssm = derived["ssm_cfg"]
    mamba2 = layer == "Mamba2"
    expect = {
        "d_model": given.get("d_model", 1024), "n_layer": given.get("n_layer", 48),
        "vocab_size": given.get("vocab_size", 16384), "num_classes": given.get("num_classes", 1000),
        "num_tokens": given.get("num_tokens", 256), "adaln_group": given.get("adaln_group", False),
        "d_intermediate": given.get("d_intermediate", 0),
        "ssm_cfg.layer": layer,
        "ssm_cfg.d_conv": ssm_given.get("d_conv", 4), "ssm_cfg.expand": ssm_given.get("expand", 2),
    }
    found = {
        "d_model": derived["d_model"], "n_layer": derived["n_layer"],
        "vocab_size": derived["vocab_size"], "num_classes": derived["num_classes"],
        "num_tokens": derived["num_tokens"], "adaln_group": derived["adaln_group"],
        "d_intermediate": derived["d_intermediate"],
        "ssm_cfg.layer": ssm["layer"], "ssm_cfg.d_conv": ssm["d_conv"],
        "ssm_cfg.expand": ssm["expand"],
    }
    if derived["adaln_group"]:
        expect["num_groups"] = given.get("num_groups", 1)
        found["num_groups"] = derived["num_groups"]
    if mamba2 and ssm["layer"] == "Mamba2":
        expect["ssm_cfg.headdim"] = ssm_given.get("headdim", 64)
        found["ssm_cfg.headdim"] = ssm["headdim"]
        expect["ssm_cfg.ngroups * d_state"] = (ssm_given.get("ngroups", 1)
                                               * ssm_given.get("d_state", 128))
        found["ssm_cfg.ngroups * d_state"] = ssm["d_state"] * ssm["ngroups"]
    elif ssm["layer"] == "Mamba1" and layer == "Mamba1":
        expect["ssm_cfg.d_state"] = ssm_given.get("d_state", 16)
        found["ssm_cfg.d_state"] = ssm["d_state"]
    bad = ["%s: config %s, tensors %s" % (k, expect[k], found[k]) for k in expect
           if expect[k] != found[k]]
    if bad:
        raise ConvertError("%s does not describe these weights:\n  %s\n---> HINT: %s"
                           % (path, "\n  ".join(bad), hint))


# ------------------------------------------------------------------------------------ writing

def _contiguous_unshared(tensors):
    """CPU, contiguous tensors that own their bytes (the safetensors package refuses shared ones)."""
    require_torch()
    out, seen = collections.OrderedDict(), set()
    for name, t in tensors.items():
        t = t.detach().cpu().contiguous()
        ptr = t.data_ptr() if t.numel() else None
        storage_bytes = t.untyped_storage().nbytes()
        if (ptr is not None and ptr in seen) or storage_bytes != t.numel() * t.element_size():
            t = t.clone()
        if t.numel():
            seen.add(t.data_ptr())
        out[name] = t
    return out


def write_builtin(path, tensors):
    """safetensors: u64 LE header length, JSON header padded with spaces to a multiple of 8, then
    the raw little-endian bytes. Larger dtypes first, so every tensor is aligned to its size."""
    require_torch()
    if sys.byteorder != "little":
        raise ConvertError("the built-in safetensors writer needs a little-endian machine")
    order = sorted(tensors.items(), key=lambda kv: (-kv[1].element_size(), kv[0]))
    header = collections.OrderedDict([("__metadata__", {"format": "pt"})])
    offset = 0
    for name, t in order:
        if t.dtype not in ST_DTYPES:
            raise ConvertError("tensor %s has dtype %s, which safetensors cannot store"
                               % (name, t.dtype))
        nbytes = t.numel() * t.element_size()
        header[name] = {"dtype": ST_DTYPES[t.dtype], "shape": list(t.shape),
                        "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for _, t in order:
            if t.numel():
                nbytes = t.numel() * t.element_size()
                f.write((ctypes.c_char * nbytes).from_address(t.data_ptr()))
        f.flush()
        os.fsync(f.fileno())


def safetensors_writer():
    """The package's save_file, or None when not importable (or AIM_CONVERT_NO_SAFETENSORS=1)."""
    if os.environ.get("AIM_CONVERT_NO_SAFETENSORS", "") not in ("", "0"):
        return None, "built-in (AIM_CONVERT_NO_SAFETENSORS is set)"
    try:
        import safetensors
        from safetensors.torch import save_file
    except Exception as e:  # ImportError, or a broken install (a missing dependency)
        return None, "built-in (the safetensors package is not importable: %s)" % _first_line(e)
    return save_file, "safetensors package %s" % getattr(safetensors, "__version__", "?")


def write_output(path, tensors):
    """Writes to PATH.tmp, then renames: a failure never leaves a half-written PATH."""
    tensors = _contiguous_unshared(tensors)
    save_file, how = safetensors_writer()
    tmp = path + ".tmp"
    try:
        if save_file is not None:
            save_file(tensors, tmp, metadata={"format": "pt"})
        else:
            write_builtin(tmp, tensors)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return how


def write_json(path, obj):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2)
        f.write("\n")
    os.replace(tmp, path)


# ------------------------------------------------------------------------------------ main

def output_paths(out, config_out):
    # A name without the .safetensors suffix is a folder (made if missing): a file written under
    # it would not be recognised as weights by aim (--ckpt weights/aim-tiny).
    if out.endswith(os.sep) or os.path.isdir(out) or not out.endswith(".safetensors"):
        out = os.path.join(out, "model.safetensors")
    if config_out:
        cfg = config_out
    elif os.path.basename(out) == "model.safetensors":
        cfg = os.path.join(os.path.dirname(out), "config.json")  # Hugging Face snapshot layout
    else:
        stem = out[:-len(".safetensors")] if out.endswith(".safetensors") else out
        cfg = stem + ".json"
    return out, cfg


# The architecture of LlamaGen's VQ-16 (vq_ds16_c2i), which aim assumes for an AiM checkpoint's
# vqvae.* tensors without a tokenizer config (named in the summary).
VQ16_ARCH = collections.OrderedDict([
    ("codebook_size", 16384), ("codebook_embed_dim", 8), ("encoder_ch_mult", [1, 1, 2, 2, 4]),
    ("decoder_ch_mult", [1, 1, 2, 2, 4]), ("z_channels", 256), ("ch", 128), ("num_res_blocks", 2),
])


def vq_json_path(out):
    """Where the tokenizer config of an AiM checkpoint written to `out` goes."""
    if os.path.basename(out) == "model.safetensors":
        return os.path.join(os.path.dirname(out), "vq.json")
    return out[:-len(".safetensors")] + ".vq.json"


def _json_has(path, key):
    with open(path) as f:
        return key in json.load(f)


def _same_file(a, b):
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _fmt_int(n):
    return "{:,}".format(n)


def convert(opts):
    strip, add = parse_prefixes(opts.prefix)
    src, sd = open_input(opts.input, opts.use_ema)
    if opts.config_in:
        if not os.path.isfile(opts.config_in):
            raise ConvertError("--config-in %s: no such file" % opts.config_in)
        src.config_beside = opts.config_in
    what = "'%s'" % src.taken if src.taken else "the state dict"
    sd = collections.OrderedDict((str(k), v) for k, v in sd.items())
    aim_vq_cfg = None  # an AiM checkpoint's vqvae.* tokenizer, as its shapes describe it

    stripped = []
    for p in strip:
        sd, dropped = strip_prefix(src.path, sd, p)
        stripped.append((p, dropped))

    if opts.kind == "lpips" or (opts.kind == "auto" and (looks_like_lpips(sd)
                                                         or looks_like_vgg16(sd))):
        return convert_lpips(opts, src, sd, stripped, add)
    if opts.lpips_lin:
        raise ConvertError("%s: --lpips-lin belongs to --kind lpips (with torchvision's VGG16 "
                           "weights as the input)" % src.path)
    if opts.kind == "inception" or (opts.kind == "auto" and looks_like_inception(sd)):
        return convert_inception(opts, src, sd, stripped, add)

    content, mprefix, stray = classify(sd)
    if content is None:
        raise unknown_contents(src, sd, what)
    if stray:
        raise ConvertError("%s: %s looks like %s, but also holds tensors outside it: %s%s"
                           % (src.path, what, "an AiM model" if content == "aim"
                              else "a VQ tokenizer", ", ".join(stray[:6]),
                              " (and %d more)" % (len(stray) - 6) if len(stray) > 6 else ""))

    if content == "vq":
        kind = "llamagen-vq"
    else:
        kind = "aim-trainer" if src.trainer_state is not None else "aim"
    if opts.kind != "auto":
        ok = (opts.kind == kind or (opts.kind == "aim" and kind == "aim-trainer")
              or (opts.kind == "llamagen-vq" and content == "vq"))
        if not ok:
            found = {"llamagen-vq": "a VQ tokenizer", "aim": "an AiM model",
                     "aim-trainer": "an AiM Trainer checkpoint"}[kind]
            expected = {"llamagen-vq": "a LlamaGen VQ tokenizer checkpoint",
                        "aim": "AiM weights (mamba.*, vqvae.*)",
                        "aim-trainer": "an AiM Trainer checkpoint (a checkpoint-N/ directory with "
                                       "trainer_state.json)"}[opts.kind]
            hint = ""
            if content == "aim" and opts.kind == "llamagen-vq":
                hint = " ---> HINT: --prefix vqvae.- takes the tokenizer out of an AiM checkpoint"
            raise ConvertError("%s: --kind %s expects %s, found %s%s"
                               % (src.path, opts.kind, expected, found, hint))

    # The configuration, derived before any dtype change.
    tie, beside = None, None
    try:
        if content == "vq":
            config, notes = vq_config(sd, mprefix, src.args)
            config_src = "derived from tensor shapes" + (" and args" if src.args else "")
        else:
            beside = read_hf_config(src.config_beside) if src.config_beside else None
            tie_given = beside.get("tie_embeddings", True) if beside is not None else None
            tie = complete_tie(sd, mprefix, tie_given)
            config, notes = aim_config(sd, mprefix, tie)
            config_src = "derived from tensor shapes"
    except ConvertError as e:
        raise ConvertError("%s: %s" % (src.path, e))
    if beside is not None:
        if opts.config_in:
            check_hf_config(src.config_beside, beside, config,
                            "--config-in takes the config.json of the run these weights come from")
        else:
            check_hf_config(src.config_beside, beside, config)
        notes = []
        if _json_has(src.config_beside, "d_model"):
            config_src = "copied from " + src.config_beside
        else:
            config_src = "the 'config' object of %s, written flat" % src.config_beside
    elif opts.config_in:
        raise ConvertError("--config-in %s: %s" % (
            opts.config_in, "not a MambaConfig config.json (no d_model and n_layer, at the top or "
            "under 'config')" if content == "aim" else "belongs to an AiM checkpoint; this is %s"
            % "a tokenizer (its config comes from the tensor shapes)"))
    elif content == "aim" and src.config_beside:
        notes.append("%s is not a MambaConfig config.json; ignored" % src.config_beside)

    # Every tensor, not only the ones the configuration was read from.
    if content == "vq":
        check_layout(src.path, sd, vq_layout(config, mprefix), "LlamaGen's VQ tokenizer")
    else:
        unsupported = []
        if config["d_intermediate"]:
            unsupported.append("a gated MLP (mlp.fc2.weight: d_intermediate %d)"
                               % config["d_intermediate"])
        if not config["rms_norm"]:
            unsupported.append("LayerNorm (norm.bias: rms_norm false)")
        if unsupported:
            raise ConvertError("%s: the blocks have %s: no AiM size does, and aim runs AiM's "
                               "blocks only (RMSNorm, no MLP)"
                               % (src.path, " and ".join(unsupported)))
        lm = collections.OrderedDict((k, v) for k, v in sd.items() if not k.startswith("vqvae."))
        check_layout(src.path, lm, aim_layout(config, mprefix), "an AiM language model")
        vq = collections.OrderedDict((k, v) for k, v in sd.items() if k.startswith("vqvae."))
        if vq:
            try:
                vq_cfg, _ = vq_config(vq, "vqvae.", None)
                aim_vq_cfg = vq_cfg
            except ConvertError as e:
                raise ConvertError("%s: %s" % (src.path, e))
            check_layout(src.path, vq, vq_layout(vq_cfg, "vqvae."), "LlamaGen's VQ tokenizer "
                         "under vqvae.")

    target = OUT_DTYPES[opts.dtype]
    dtypes_in = collections.Counter(str(v.dtype).replace("torch.", "") for v in sd.values())
    if target is not None:
        tdt = getattr(torch, target)
        cache = {}
        for k, v in sd.items():
            # (quantize.codebook_used holds code indices in a float buffer: bf16 would round
            # 301 to 300, fp16 past 2048.)
            if v.is_floating_point() and v.dtype != tdt and not k.endswith("quantize.codebook_used"):
                key = (v.data_ptr(), v.dtype, tuple(v.shape), tuple(v.stride()))
                if key not in cache:
                    cache[key] = v.to(tdt)
                sd[k] = cache[key]

    for p in add:
        sd = collections.OrderedDict((p + k, v) for k, v in sd.items())

    out, cfg_path = output_paths(opts.out, opts.config_out)
    for p in (out, cfg_path):
        if _same_file(p, src.path):
            raise ConvertError("%s: the output would overwrite the input" % p)
    for p in (out, cfg_path):
        d = os.path.dirname(os.path.abspath(p))
        os.makedirs(d, exist_ok=True)
    how = write_output(out, sd)
    if beside is not None:
        if _same_file(cfg_path, src.config_beside):
            pass
        elif _json_has(src.config_beside, "d_model"):
            shutil.copyfile(src.config_beside, cfg_path + ".tmp")
            os.replace(cfg_path + ".tmp", cfg_path)
        else:  # the nested {"config": {...}} layout, written flat as the C++ reader expects
            write_json(cfg_path, beside)
    else:
        write_json(cfg_path, config)
    # An AiM checkpoint's config.json describes the language model only; without more, aim takes
    # its vqvae.* tokenizer for VQ-16, as in every released checkpoint. The tokenizer's own config
    # goes to vq.json (or NAME.vq.json beside NAME.safetensors), where aim looks for it, so that
    # another tokenizer loads too (and an earlier conversion's file there is replaced).
    vq_json = None
    if aim_vq_cfg is not None:
        vq_json = vq_json_path(out)
        write_json(vq_json, aim_vq_cfg)

    # Summary. Parameters per part (mamba / vqvae), the tied weight once, the usage buffer apart.
    parts, seen, buffers = collections.OrderedDict(), set(), 0
    for k, v in sd.items():
        if k.endswith("quantize.codebook_used"):
            buffers += v.numel()
            continue
        key = (v.data_ptr(), tuple(v.shape), v.dtype) if v.numel() else k
        if key in seen:
            continue
        if tie == "tied" and k.endswith(HEAD_KEY) and k[:-len(HEAD_KEY)] + EMBED_KEY in sd:
            continue  # the embedding's twin, stored apart (safetensors files keep both names)
        seen.add(key)
        part = "vqvae" if "vqvae." in k or content == "vq" else "mamba"
        parts[part] = parts.get(part, 0) + v.numel()
    dtypes_out = collections.Counter(str(v.dtype).replace("torch.", "") for v in sd.values())
    lines = ["%s: %s" % (PROG, opts.input)]
    detail = {
        "llamagen": "LlamaGen checkpoint {%s}" % ", ".join(src.entries),
        "state-dict": "state dict, torch.save",
        "safetensors": "safetensors file",
    }[src.container]
    if src.container == "llamagen":
        extra = []
        if src.steps is not None:
            extra.append("steps %s" % src.steps)
        if src.args is not None:
            for field in ("vq_model", "gpt_model"):
                if hasattr(src.args, field):
                    extra.append("%s %s" % (field, getattr(src.args, field)))
        if extra:
            detail += ", " + ", ".join(extra)
    if content == "aim" and not mprefix:
        detail += ", MambaLMHeadModel names backbone.*, lm_head.weight"
    if src.trainer_state is not None:
        detail += ", Trainer global_step %s" % src.trainer_state.get("global_step", "?")
    lines.append("  kind        %s (%s)" % (kind, detail))
    lines.append("  weights     %s%s" % (src.path, " ['%s']" % src.taken if src.taken else ""))
    for p, dropped in stripped:
        lines.append("  prefix      stripped '%s' (%d other tensors dropped)" % (p, dropped))
    for p in add:
        lines.append("  prefix      added '%s'" % p)
    tied = ""
    if tie == "tied":
        tied = " (tied embedding/lm_head weight stored under both names)"
    lines.append("  tensors     %d%s" % (len(sd), tied))
    counts = ", ".join("%s %s" % (k, _fmt_int(n)) for k, n in sorted(parts.items()))
    if len(parts) == 1:
        counts = _fmt_int(sum(parts.values()))
    lines.append("  parameters  %s%s" % (counts, " + %s buffer elements (quantize.codebook_used)"
                                         % _fmt_int(buffers) if buffers else ""))
    fmt_counts = lambda c: ", ".join("%s x%d" % kv for kv in sorted(c.items()))
    if target is None or dtypes_in == dtypes_out:
        lines.append("  dtype       %s (kept)" % fmt_counts(dtypes_out))
    else:
        lines.append("  dtype       %s -> %s" % (fmt_counts(dtypes_in), fmt_counts(dtypes_out)))
    lines.append("  output      %s" % out)
    lines.append("  writer      %s" % how)
    lines.append("  config      %s (%s)" % (cfg_path, config_src))
    if vq_json:
        is_vq16 = all(aim_vq_cfg[k] == v for k, v in VQ16_ARCH.items())
        lines.append("  vq config   %s (the vqvae.* tokenizer: %s)"
                     % (vq_json, "VQ-16" if is_vq16 else "not VQ-16, aim reads its shape from there"))
    for n in notes:
        lines.append("  note        %s" % n)
    print("\n".join(lines))
    return 0


def build_parser():
    p = argparse.ArgumentParser(
        prog="convert_checkpoint.py",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Convert an official LlamaGen VQ or AiM checkpoint (PyTorch pickle, Hugging "
                    "Face Trainer checkpoint or snapshot) to safetensors with the official key "
                    "names, and write the matching config beside it; or pytorch-fid's FID "
                    "Inception weights for aim's evaluation, or LPIPS's VGG16 for its "
                    "perceptual loss.",
        epilog="""kinds (--kind auto recognises them):
  llamagen-vq  LlamaGen tokenizer: vq_ds16_c2i.pt, vq_train.py checkpoints {model, ema,
               optimizer, discriminator, steps, args}, or a bare VQ state dict (vq_f16.pt)
  aim          AiM weights: pytorch_model.bin with mamba.* and vqvae.*, a
               MambaLMHeadModel.save_pretrained() directory, or a snapshot directory
  aim-trainer  an AiM Hugging Face Trainer checkpoint-N/ directory (or its weights file)
  inception    pytorch-fid's pt_inception-2015-12-05-6726825d.pth (fid_inception_v3()'s state
               dict): 472 tensors, same names, float32, num_batches_tracked dropped, no config
  lpips        LPIPS v0.1 VGG16 (aim train-vq's perceptual loss, eval-vq --lpips): torchvision's
               vgg16-397923af.pth with --lpips-lin vgg.pth, or a saved LPIPS state dict;
               31 tensors, float32, no config

config written beside OUT (or at --config-out):
  tokenizer  LlamaGen ModelArgs fields + ch, num_res_blocks (read by aim's vq_config_from_json)
  AiM        the official MambaConfig config.json: copied when one sits beside the input and
             matches the tensors, else derived from the tensor shapes
  OUT = DIR/ or DIR/model.safetensors -> DIR/config.json; OUT = NAME.safetensors -> NAME.json

--prefix (repeatable): 'P' prepends P to every key after conversion; 'P-' keeps only the keys
starting with P and removes it, before the checkpoint is recognised.

examples:
  %(prog)s vq_ds16_c2i.pt --out weights/vq_ds16_c2i.safetensors
  %(prog)s vq_ds16_c2i.pt --prefix vqvae. --out weights/vqvae.safetensors
  %(prog)s 0040000.pt --use-ema --dtype bf16 --out vq_ema.safetensors
  %(prog)s aim-large/pytorch_model.bin --out hf/aim-large/
  %(prog)s runs/AiM-L/checkpoint-50000 --out aim_l_50k/
  %(prog)s module_prefixed.bin --prefix module.- --out clean.safetensors
  %(prog)s pt_inception-2015-12-05-6726825d.pth --out weights/fid_inception.safetensors
  %(prog)s ~/.cache/torch/hub/checkpoints/vgg16-397923af.pth \\
      --lpips-lin .venv/lib/python3.11/site-packages/lpips/weights/v0.1/vgg.pth \\
      --out weights/lpips_vgg.safetensors

environment: AIM_CONVERT_NO_SAFETENSORS=1 writes with the built-in writer even when the
safetensors package is installed (both give identical tensors).
exit status: 0 converted, 1 refused (the message says why), 2 bad command line.""")
    p.add_argument("input", help="checkpoint file (.pt, .bin, .pth, .safetensors) or a "
                                 "checkpoint / snapshot directory")
    p.add_argument("--out", required=True,
                   help="output .safetensors file, or a directory (gets model.safetensors)")
    p.add_argument("--kind", choices=("auto", "llamagen-vq", "aim", "aim-trainer", "inception",
                                      "lpips"),
                   default="auto", help="what the input must be (default: auto)")
    p.add_argument("--prefix", action="append", metavar="PREFIX",
                   help="'vqvae.' prepends, 'module.-' strips (see below)")
    p.add_argument("--use-ema", action="store_true",
                   help="take LlamaGen's 'ema' weights instead of 'model' (error if absent)")
    p.add_argument("--dtype", choices=tuple(OUT_DTYPES), default="keep",
                   help="convert floating tensors (default: keep)")
    p.add_argument("--config-out", metavar="PATH", help="where to write the config")
    p.add_argument("--config-in", metavar="CONFIG_JSON",
                   help="an AiM checkpoint's config.json (MambaConfig) where none is beside the "
                        "weights; checked against the tensor shapes like one beside them")
    p.add_argument("--lpips-lin", metavar="VGG_PTH",
                   help="--kind lpips: LPIPS v0.1's linear layers (vgg.pth) to go with "
                        "torchvision's VGG16 weights as the input")
    return p


def main(argv=None):
    opts = build_parser().parse_args(argv)
    try:
        require_torch()
        return convert(opts)
    except ConvertError as e:
        print("%s: error: %s" % (PROG, e), file=sys.stderr)
        return 1
    except (OSError, zipfile.BadZipFile) as e:
        print("%s: error: %s" % (PROG, e), file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())

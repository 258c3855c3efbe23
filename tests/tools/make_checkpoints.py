#!/usr/bin/env python3
"""Writes checkpoints the way LlamaGen and AiM save them, from the fixture weights.

Usage: make_checkpoints.py FIXTURES_DIR OUT_DIR

The weights are the real fixture tensors (tests/fixtures/vq/vq16_tiny, aim/mamba2_tiny,
aim/mamba1_tiny); the containers copy the official code's torch.save calls:

  llamagen/vq.pt              LlamaGen tokenizer/tokenizer_image/vq_train.py: {"model",
                              "optimizer", "discriminator", "optimizer_disc", "steps", "args"
                              (argparse.Namespace), "ema"}. ema = model + 2**-10 on every
                              floating tensor.
  aim/pytorch_model.bin       torch.save(AiM.state_dict()): vqvae.* then mamba.*; the tied
                              lm_head / word_embeddings weight shares one storage.
  aim_mamba1/pytorch_model.bin  the same for the Mamba1 fixture.
  mamba_pretrained/           AiM's MambaLMHeadModel.save_pretrained(): pytorch_model.bin
                              (backbone.*, lm_head.weight) + config.json (json.dump(__dict__)).
  snapshot/                   a Hugging Face snapshot (PyTorchModelHubMixin): config.json +
                              model.safetensors with the tied weight once (the embedding name,
                              which safetensors' save_model keeps).
  trainer/checkpoint-250/     AiM's HF Trainer (save_safetensors=False): pytorch_model.bin,
                              optimizer.pt, scheduler.pt, rng_state.pth, trainer_state.json,
                              training_args.bin (a pickled transformers TrainingArguments).
  inception/pt_inception-2015-12-05-6726825d.pth
                              pytorch-fid's FID Inception weights: torch.save of the
                              fid_inception_v3() state dict, random values (not the fixture's),
                              with every BatchNorm's num_batches_tracked. expected.safetensors
                              beside it holds the 472 tensors the conversion must give.
  bad/*                       inputs the converter must refuse (see below).
"""
import argparse
import collections
import dataclasses
import importlib.util
import json
import os
import random
import sys
import types

import torch

EMA_DELTA = 2.0 ** -10


def load_tool(source_dir):
    path = os.path.join(source_dir, "tools", "convert_checkpoint.py")
    spec = importlib.util.spec_from_file_location("convert_checkpoint", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def as_state_dict(tensors):
    """An OrderedDict with the `_metadata` attribute nn.Module.state_dict() attaches."""
    sd = collections.OrderedDict(tensors)
    meta = collections.OrderedDict([("", {"version": 1})])
    for k in sd:
        parts = k.split(".")[:-1]
        for i in range(1, len(parts) + 1):
            meta.setdefault(".".join(parts[:i]), {"version": 1})
    sd._metadata = meta
    return sd


def optimizer_state(tensors, cls, **kwargs):
    """optimizer.state_dict() after one real step over parameters shaped like `tensors`."""
    params = [torch.nn.Parameter(t.detach().clone().float()) for t in tensors
              if t.is_floating_point()]
    opt = cls(params, **kwargs)
    for p in params:
        p.grad = torch.full_like(p, 1e-3)
    opt.step()
    return opt, opt.state_dict()


def llamagen_args():
    """vq_train.py's argparse.Namespace, as parsed for this tokenizer, plus the fields LlamaGen's
    init_distributed_mode() adds."""
    return argparse.Namespace(
        data_path="/data/imagenet/train", data_face_path=None, cloud_save_path="/cloud/vq",
        no_local_save=False, vq_model="VQ-16", vq_ckpt=None, finetune=False, ema=True,
        codebook_size=512, codebook_embed_dim=8, codebook_l2_norm=True, codebook_weight=1.0,
        entropy_loss_ratio=0.0, commit_loss_beta=0.25, reconstruction_weight=1.0,
        reconstruction_loss="l2", perceptual_weight=1.0, disc_weight=0.5, disc_start=20000,
        disc_type="patchgan", disc_loss="hinge", gen_loss="hinge", compile=False, dropout_p=0.0,
        results_dir="results_tokenizer_image", dataset="imagenet", image_size=256, epochs=40,
        lr=1e-4, weight_decay=5e-2, beta1=0.9, beta2=0.95, max_grad_norm=1.0,
        global_batch_size=128, global_seed=0, num_workers=16, log_every=100, ckpt_every=5000,
        gradient_accumulation_steps=1, mixed_precision="bf16",
        rank=0, world_size=8, gpu=0, distributed=True, dist_backend="nccl", dist_url="env://")


def discriminator_state():
    """A PatchGAN-like discriminator state dict (with BatchNorm's int64 scalar)."""
    g = torch.Generator().manual_seed(1)
    return as_state_dict([
        ("main.0.weight", torch.randn(8, 3, 4, 4, generator=g)),
        ("main.0.bias", torch.randn(8, generator=g)),
        ("main.2.weight", torch.randn(16, 8, 4, 4, generator=g)),
        ("main.3.weight", torch.ones(16)),
        ("main.3.bias", torch.zeros(16)),
        ("main.3.running_mean", torch.zeros(16)),
        ("main.3.running_var", torch.ones(16)),
        ("main.3.num_batches_tracked", torch.tensor(123, dtype=torch.int64)),
    ])


def aim_state_dict(fix):
    """AiM.state_dict(): vqvae registered first, then mamba; the tied pair shares storage."""
    emb = fix["mamba.backbone.embeddings.word_embeddings.weight"].clone()
    items = [(k, v.clone()) for k, v in fix.items() if k.startswith("vqvae.")]
    for k, v in fix.items():
        if not k.startswith("mamba."):
            continue
        if k in ("mamba.backbone.embeddings.word_embeddings.weight", "mamba.lm_head.weight"):
            continue
        items.append((k, v.clone()))
    # MambaLMHeadModel registers backbone (embeddings first) and then lm_head.
    items.insert(sum(1 for k, _ in items if k.startswith("vqvae.")),
                 ("mamba.backbone.embeddings.word_embeddings.weight", emb))
    items.append(("mamba.lm_head.weight", emb.detach()))  # state_dict() detaches: same storage
    return as_state_dict(items)


def inception_state_dict(tool):
    """fid_inception_v3().state_dict() layout (names from the converter's architecture table, each
    BatchNorm followed by its counter) with random values; running_var > 0."""
    g = torch.Generator().manual_seed(3)
    items = []
    for name, shape in tool.inception_keys().items():
        t = torch.randn(shape, generator=g) * 0.1
        if name.endswith("running_var"):
            t = t.abs() + 0.5
        items.append((name, t))
        if name.endswith(".bn.running_var"):
            items.append((name[:-len("running_var")] + "num_batches_tracked",
                          torch.tensor(0, dtype=torch.int64)))
    return as_state_dict(items)


def hf_config(config_path):
    with open(config_path) as f:
        cfg = json.load(f, object_pairs_hook=collections.OrderedDict)
    cfg.pop("fixture", None)
    return cfg


class Evil:
    """Pickles as a call to os.system: a weights-only load must refuse it, never run it. Were it
    run, it would create the file $AIM_CONVERT_TEST_MARKER names."""

    def __reduce__(self):
        return (os.system, ('touch "${AIM_CONVERT_TEST_MARKER:-/dev/null}"',))


def fake_training_arguments():
    """An instance pickled as transformers.training_args.TrainingArguments, as the HF Trainer
    writes training_args.bin (transformers itself is not needed for that)."""
    pkg = types.ModuleType("transformers")
    mod = types.ModuleType("transformers.training_args")

    @dataclasses.dataclass
    class TrainingArguments:
        output_dir: str = "./checkpoints/AiM-L"
        learning_rate: float = 8e-4
        per_device_train_batch_size: int = 64
        bf16: bool = True
        save_safetensors: bool = False

    TrainingArguments.__module__ = "transformers.training_args"
    TrainingArguments.__qualname__ = "TrainingArguments"
    mod.TrainingArguments = TrainingArguments
    pkg.training_args = mod
    sys.modules.setdefault("transformers", pkg)
    sys.modules.setdefault("transformers.training_args", mod)
    return TrainingArguments()


def main():
    fixtures, out = sys.argv[1], sys.argv[2]
    source_dir = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
    tool = load_tool(source_dir)
    torch.manual_seed(0)
    random.seed(0)

    def mkdir(*parts):
        d = os.path.join(out, *parts)
        os.makedirs(d, exist_ok=True)
        return d

    # ---- LlamaGen tokenizer training checkpoint (vq_train.py).
    vq_fix, _ = tool.read_safetensors(os.path.join(fixtures, "vq", "vq16_tiny", "model.safetensors"))
    model = as_state_dict((k, v.clone()) for k, v in vq_fix.items())
    ema = as_state_dict((k, v + EMA_DELTA if v.is_floating_point() else v.clone())
                        for k, v in vq_fix.items())
    _, opt = optimizer_state(list(model.values()), torch.optim.Adam, lr=1e-4, betas=(0.9, 0.95))
    disc = discriminator_state()
    _, opt_disc = optimizer_state(list(disc.values()), torch.optim.Adam, lr=1e-4,
                                  betas=(0.9, 0.95))
    checkpoint = {
        "model": model,
        "optimizer": opt,
        "discriminator": disc,
        "optimizer_disc": opt_disc,
        "steps": 123,
        "args": llamagen_args(),
    }
    checkpoint["ema"] = ema
    torch.save(checkpoint, os.path.join(mkdir("llamagen"), "vq.pt"))
    # The released vq_ds16_c2i.pt form: weights only, under "model".
    torch.save({"model": model}, os.path.join(mkdir("llamagen"), "vq_ds16_c2i.pt"))

    # ---- AiM weights.
    aim_fix, _ = tool.read_safetensors(os.path.join(fixtures, "aim", "mamba2_tiny", "model.safetensors"))
    aim_sd = aim_state_dict(aim_fix)
    torch.save(aim_sd, os.path.join(mkdir("aim"), "pytorch_model.bin"))

    m1_fix, _ = tool.read_safetensors(os.path.join(fixtures, "aim", "mamba1_tiny", "model.safetensors"))
    torch.save(aim_state_dict(m1_fix), os.path.join(mkdir("aim_mamba1"), "pytorch_model.bin"))

    # MambaLMHeadModel.save_pretrained(): mamba-only names, config.__dict__ with indent=4.
    d = mkdir("mamba_pretrained")
    mamba_only = as_state_dict((k[len("mamba."):], v) for k, v in aim_sd.items()
                               if k.startswith("mamba."))
    torch.save(mamba_only, os.path.join(d, "pytorch_model.bin"))
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump(hf_config(os.path.join(fixtures, "aim", "mamba2_tiny", "config.json")), f,
                  indent=4)

    # Hugging Face snapshot: the tied weight once, under the embedding name.
    d = mkdir("snapshot")
    single = collections.OrderedDict((k, v) for k, v in aim_sd.items()
                                     if k != "mamba.lm_head.weight")
    tool.write_builtin(os.path.join(d, "model.safetensors"), tool._contiguous_unshared(single))
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump(hf_config(os.path.join(fixtures, "aim", "mamba2_tiny", "config.json")), f,
                  indent=2, sort_keys=True)

    # ---- AiM's Hugging Face Trainer checkpoint (train_stage2.py, save_safetensors=False).
    d = mkdir("trainer", "checkpoint-250")
    torch.save(aim_sd, os.path.join(d, "pytorch_model.bin"))
    mamba_params = [v for k, v in aim_sd.items()
                    if k.startswith("mamba.") and k != "mamba.lm_head.weight"]
    opt_obj, opt_sd = optimizer_state(mamba_params, torch.optim.AdamW, lr=8e-4,
                                      betas=(0.9, 0.95), weight_decay=0.05)
    torch.save(opt_sd, os.path.join(d, "optimizer.pt"))
    sched = torch.optim.lr_scheduler.LambdaLR(opt_obj, lambda step: 1.0 - step / 1000)
    torch.save(sched.state_dict(), os.path.join(d, "scheduler.pt"))
    rng = {"python": random.getstate(), "cpu": torch.random.get_rng_state()}
    try:
        import numpy as np
        rng["numpy"] = np.random.get_state()
    except ImportError:
        pass
    torch.save(rng, os.path.join(d, "rng_state.pth"))
    state = {
        "best_metric": None, "best_model_checkpoint": None, "epoch": 1.0, "eval_steps": 500,
        "global_step": 250, "is_hyper_param_search": False, "is_local_process_zero": True,
        "is_world_process_zero": True,
        "log_history": [{"epoch": 1.0, "grad_norm": 0.5, "learning_rate": 6e-4, "loss": 7.1,
                         "step": 250}],
        "logging_steps": 500, "max_steps": 1000, "num_input_tokens_seen": 0,
        "num_train_epochs": 4, "save_steps": 250, "stateful_callbacks": {},
        "total_flos": 0.0, "train_batch_size": 64, "trial_name": None, "trial_params": None,
    }
    with open(os.path.join(d, "trainer_state.json"), "w") as f:
        json.dump(state, f, indent=2, sort_keys=True)
    torch.save(fake_training_arguments(), os.path.join(d, "training_args.bin"))

    # ---- pytorch-fid's FID Inception weights.
    d = mkdir("inception")
    inception = inception_state_dict(tool)
    torch.save(inception, os.path.join(d, "pt_inception-2015-12-05-6726825d.pth"))
    tool.write_builtin(os.path.join(d, "expected.safetensors"),
                       collections.OrderedDict((k, v) for k, v in inception.items()
                                               if not k.endswith("num_batches_tracked")))

    # ---- Inputs the converter must refuse.
    d = mkdir("bad")
    with open(os.path.join(d, "random.bin"), "wb") as f:
        f.write(b"\x13" + bytes(random.getrandbits(8) for _ in range(4095)))
    torch.save({"model": model, "epoch": 3, "scaler": {"scale": 65536.0}},
               os.path.join(d, "unknown_keys.pt"))
    torch.save({"model": Evil()}, os.path.join(d, "evil.pt"))
    torch.save({"optimizer": opt_disc, "steps": 123}, os.path.join(d, "no_model.pt"))
    gpt = as_state_dict([("tok_embeddings.weight", torch.randn(16, 8)),
                         ("layers.0.attention.wqkv.weight", torch.randn(24, 8)),
                         ("norm.weight", torch.ones(8)), ("output.weight", torch.randn(16, 8))])
    torch.save({"model": gpt, "optimizer": {}, "steps": 5,
                "args": argparse.Namespace(gpt_model="GPT-B")}, os.path.join(d, "gpt.pt"))
    with open(os.path.join(out, "llamagen", "vq_ds16_c2i.pt"), "rb") as f:
        blob = f.read()
    with open(os.path.join(d, "truncated.pt"), "wb") as f:
        f.write(blob[: len(blob) * 3 // 5])
    torch.save(as_state_dict(("module." + k, v) for k, v in model.items()),
               os.path.join(d, "module_prefixed.bin"))
    # torchvision's ImageNet Inception-v3 (1000 classes, aux classifier), cut short: the
    # converter must say it is not the FID network.
    torch.save(as_state_dict([
        ("Conv2d_1a_3x3.conv.weight", inception["Conv2d_1a_3x3.conv.weight"]),
        ("Mixed_7c.branch_pool.conv.weight", inception["Mixed_7c.branch_pool.conv.weight"]),
        ("AuxLogits.fc.weight", torch.zeros(1000, 768)),
        ("fc.weight", torch.zeros(1000, 2048)),
        ("fc.bias", torch.zeros(1000)),
    ]), os.path.join(d, "inception_torchvision.pth"))
    # AiM weights that are not the layout their layer 0 describes.
    def aim_edited(edit):
        sd = aim_state_dict(aim_fix)
        edit(sd)
        return sd

    layer = "mamba.backbone.layers.%d."
    torch.save(aim_edited(lambda sd: sd.pop(layer % 2 + "mixer.D")),
               os.path.join(d, "aim_missing.bin"))
    torch.save(aim_edited(lambda sd: sd.__setitem__(
        layer % 3 + "mixer.in_proj.weight", torch.zeros(8, 64))),
        os.path.join(d, "aim_misshapen.bin"))
    torch.save(aim_edited(lambda sd: sd.__setitem__(layer % 1 + "mixer.x_proj.weight",
                                                    torch.zeros(4, 4))),
               os.path.join(d, "aim_unexpected.bin"))
    torch.save(aim_edited(lambda sd: sd.pop("vqvae.decoder.conv_blocks.1.res.2.conv2.bias")),
               os.path.join(d, "aim_vq_missing.bin"))

    def add_mlp(sd):  # mamba_ssm's Block with a GatedMLP, which no AiM size has
        for i in range(4):
            sd[layer % i + "norm2.weight"] = torch.ones(64)
            sd[layer % i + "mlp.fc1.weight"] = torch.zeros(256, 64)
            sd[layer % i + "mlp.fc2.weight"] = torch.zeros(64, 128)

    torch.save(aim_edited(add_mlp), os.path.join(d, "aim_mlp.bin"))
    vq_bad = as_state_dict((k, v.clone()) for k, v in vq_fix.items())
    q = vq_bad["encoder.mid.1.q.weight"]
    vq_bad["encoder.mid.1.q.weight"] = q.repeat(1, 1, 3, 3)  # a 3x3 kernel where LlamaGen has 1x1
    torch.save({"model": vq_bad}, os.path.join(d, "vq_misshapen.pt"))
    # Mamba1 weights beside a Mamba2 config.json.
    d = mkdir("bad", "mismatch")
    torch.save(aim_state_dict(m1_fix), os.path.join(d, "pytorch_model.bin"))
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump(hf_config(os.path.join(fixtures, "aim", "mamba2_tiny", "config.json")), f)
    print("make_checkpoints: wrote", out)


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""LPIPS reference values from the lpips package (the network LlamaGen's perceptual loss is).

Usage: lpips_reference.py OUT_DIR

Builds lpips.LPIPS(net='vgg', version='0.1') with the package's own linear layers (the real
v0.1 weights, lpips/weights/v0.1/vgg.pth) and a VGG16 with random weights and biases (the
ImageNet VGG16 cannot be downloaded here), and writes:

  lpips_module.pth     torch.save(model.state_dict()): net.slice*, lin*, lins.*, scaling_layer.*
  vgg16.pth            the same VGG16 under torchvision's vgg16().state_dict() names, what
                       vgg16-397923af.pth holds: features.* and classifier.* (small random
                       stand-ins here: the conversion drops them, and the real ones are 0.5 GB)
  lin.pth              the package's vgg.pth path, copied
  cases.safetensors    per case c: c.x, c.y [N, 3, H, W] in [-1, 1]; c.d32, c.d64 [N] the
                       distances in float32 and float64 (eval mode: no dropout); c.grad64
                       d(sum of distances)/dy in float64
"""
import os
import shutil
import sys
import warnings

import torch

warnings.filterwarnings("ignore")  # torchvision's `pretrained` deprecation, lpips' messages

import lpips  # noqa: E402
import torchvision  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

CASES = {"square": (3, 32, 32), "wide": (2, 40, 56)}


def main(out):
    os.makedirs(out, exist_ok=True)
    torch.manual_seed(20241122)
    model = lpips.LPIPS(net="vgg", version="0.1", pnet_rand=True, verbose=False).eval()
    with torch.no_grad():
        for m in model.net.modules():
            if isinstance(m, torch.nn.Conv2d):
                fan_in = m.weight[0].numel()
                m.weight.copy_(torch.randn_like(m.weight) * (2.0 / fan_in) ** 0.5)
                m.bias.copy_(torch.randn_like(m.bias) * 0.05)
    torch.save(model.state_dict(), os.path.join(out, "lpips_module.pth"))

    sd = {}
    for k, v in model.net.state_dict().items():  # slice1.0.weight -> features.0.weight
        sd["features." + k.split(".", 1)[1]] = v.clone()
    for i in (0, 3, 6):
        sd["classifier.%d.weight" % i] = torch.randn(8, 8)
        sd["classifier.%d.bias" % i] = torch.randn(8)
    torch.save(sd, os.path.join(out, "vgg16.pth"))
    lin = os.path.join(os.path.dirname(lpips.__file__), "weights", "v0.1", "vgg.pth")
    shutil.copyfile(lin, os.path.join(out, "lin.pth"))

    tensors = {}
    gen = torch.Generator().manual_seed(7)
    for name, (n, h, w) in CASES.items():
        x = torch.rand(n, 3, h, w, generator=gen) * 2 - 1
        y = (x + 0.4 * torch.randn(n, 3, h, w, generator=gen)).clamp(-1, 1)
        y[0] = x[0]  # a pair at distance 0
        with torch.no_grad():
            d32 = model(x, y).reshape(n)
        m64 = model.double()
        y64 = y.double().requires_grad_(True)
        d64 = m64(x.double(), y64).reshape(n)
        (g,) = torch.autograd.grad(d64.sum(), y64)
        model.float()
        tensors.update({name + ".x": x, name + ".y": y, name + ".d32": d32,
                        name + ".d64": d64.detach(), name + ".grad64": g})
    save_file({k: v.contiguous() for k, v in tensors.items()}, os.path.join(out, "cases.safetensors"))
    print("lpips %s, torchvision %s: %d cases written to %s"
          % (getattr(lpips, "__version__", "?"), torchvision.__version__, len(CASES), out))


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(sys.argv[1])

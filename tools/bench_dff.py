#!/usr/bin/env python3
"""Time pytorch-grad-cam 1.5.7's DeepFeatureFactorization on the CPU, for BENCHMARKS.md beside
`gradcam dff` on the same images:

    .venv-tools/bin/python tools/make_bench_images.py /tmp/dffimg 32
    .venv-tools/bin/python tools/bench_dff.py /tmp/dffimg --arch resnet50 -k 16
    gradcam dff /tmp/dffimg -m resnet50.safetensors -k 16 -o /tmp/dffout

torchvision model with random weights (weights=None, seed 0), the folder's PNGs resized to
224x224 and normalised as gradcam does, one batch, target layer4 with model.fc on the
concepts (pytorch-grad-cam's tutorial); prints the seconds of the call (forward pass, NMF,
scaling the maps, the head on the concepts) and scikit-learn's NMF iteration count.
"""

import argparse
import time
from pathlib import Path

import numpy as np
import torch
import torchvision
from PIL import Image
from pytorch_grad_cam import DeepFeatureFactorization
from sklearn.decomposition import NMF


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("folder", type=Path)
    p.add_argument("--arch", default="resnet50")
    p.add_argument("-k", type=int, default=16)
    p.add_argument("--threads", type=int, default=0)
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    model = getattr(torchvision.models, a.arch)(weights=None).eval()
    mean = np.array([0.485, 0.456, 0.406], np.float32)
    std = np.array([0.229, 0.224, 0.225], np.float32)
    xs = []
    for f in sorted(a.folder.glob("*.png")):
        rgb = np.asarray(Image.open(f).convert("RGB").resize((224, 224), Image.BILINEAR),
                         np.float32) / 255
        xs.append(((rgb - mean) / std).transpose(2, 0, 1))
    x = torch.from_numpy(np.stack(xs))
    obj = DeepFeatureFactorization(model, model.layer4, computation_on_concepts=model.fc)
    t = time.perf_counter()
    obj(x, n_components=a.k)
    total = time.perf_counter() - t
    with torch.no_grad():
        t = time.perf_counter()
        model(x)
        fwd = time.perf_counter() - t
    # The iteration count of the same factorisation.
    acts = {}
    h = model.layer4.register_forward_hook(lambda m, i, o: acts.setdefault("a", o))
    with torch.no_grad():
        model(x)
    h.remove()
    act = acts["a"].numpy()
    flat = act.transpose((1, 0, 2, 3)).reshape(act.shape[1], -1)
    nmf = NMF(n_components=a.k, init="random", random_state=0)
    nmf.fit_transform(flat - flat.min(axis=-1)[:, None])
    print(f"{len(xs)} images, k={a.k}: DeepFeatureFactorization {total:.2f} s "
          f"(forward pass alone {fwd:.2f} s), NMF {nmf.n_iter_} iterations")


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Check `gradcam explain` against pytorch-grad-cam on full-size torchvision models.

    python tools/check_torchvision.py [ARCH ...] [--gradcam target/release/gradcam]
        [--size 224|native] [--images DIR] [--work DIR] [--method gradcam|gradcam++|...]

For each ARCH (default: a spread of VGG and ResNet depths), builds torchvision's model with
random weights, randomises every BatchNorm's statistics and affine parameters (so folding
them is tested; torchvision's init leaves them at identity), exports it with the tensor names
of its state_dict, explains the images with `gradcam explain --outputs cam,json` on the CPU,
and explains the same images with pytorch-grad-cam 1.5.7 (top-1 class, the same
preprocessing: PIL with EXIF orientation, float32 / 255, cv2.resize INTER_LINEAR, ImageNet
normalisation). It prints, per model and image, the top-1 class of each, the
difference of the top logit (relative to the logits' standard deviation: random weights give
near-uniform probabilities) and the largest of the normalised map, and exits 1 when any class
differs, a logit by more than 1e-4, or a map by more than --tol (1e-4, default; maps are
normalised to [0, 1]).

Without --images it writes photographs-like images of odd sizes (smooth colour fields with
shapes and noise; JPEG and PNG; one with an EXIF orientation) under --work.

Eigen-CAM's and Eigen-Grad-CAM's maps may come out negated (a singular vector has no sign;
LAPACK's varies with the data, see src/cam/eigen.rs), and FullGrad's pixel-wise gradients
follow f32 rounding in max-pooling near-ties (torch's own f32 and f64 maps differ by 0.1 on
random-weight VGG16; README, Methods), as, less, do LayerCAM's, HiResCAM's and
GradCAMElementWise's at a layer a max pool follows (VGG's last ReLU): mismatches there are not
parity failures by themselves; compare with torch in float64 to tell.

Not a test (it needs torch, and minutes per model on a CPU): a check to run by hand after
changing the model loader, the graph, or the preprocessing. Last run: see BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import torch
import torchvision
from PIL import Image, ImageDraw, ImageOps
from safetensors.torch import save_file

from pytorch_grad_cam import (AblationCAM, EigenCAM, EigenGradCAM, FullGrad, GradCAM,
                             GradCAMElementWise, GradCAMPlusPlus, HiResCAM, LayerCAM, ScoreCAM,
                             XGradCAM)

# gradcam's --method name → pytorch-grad-cam's class (Score-CAM: one forward pass per channel
# of the layer, 512 for VGG16: minutes per image on a CPU).
METHODS = {
    "gradcam": GradCAM,
    "gradcam++": GradCAMPlusPlus,
    "xgradcam": XGradCAM,
    "hirescam": HiResCAM,
    "layercam": LayerCAM,
    "gradcamelementwise": GradCAMElementWise,
    "eigencam": EigenCAM,
    "eigengradcam": EigenGradCAM,
    "scorecam": ScoreCAM,
    "ablationcam": AblationCAM,
    "fullgrad": FullGrad,
}
DEFAULT_ARCHS = ["resnet18", "resnet101", "vgg11", "vgg19_bn", "resnext101_32x8d"]
MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


def target_layer(arch: str, model: torch.nn.Module) -> tuple[str, torch.nn.Module]:
    """The layer pytorch-grad-cam's examples use: ResNet's layer4, VGG's last ReLU."""
    if arch.startswith("vgg"):
        last = max(i for i, m in enumerate(model.features) if isinstance(m, torch.nn.ReLU))
        return f"features.{last}", model.features[last]
    return "layer4", model.layer4


def randomise_batchnorm(model: torch.nn.Module, gen: torch.Generator) -> None:
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=gen) * 0.1)
            m.running_var.copy_(torch.rand(n, generator=gen) * 0.5 + 0.75)
            m.weight.data.copy_(torch.rand(n, generator=gen) * 0.5 + 0.75)
            m.bias.data.copy_(torch.randn(n, generator=gen) * 0.1)


def make_images(folder: Path, seed: int) -> None:
    """Photograph-like images of odd sizes: smooth fields, shapes, noise."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.RandomState(seed)
    sizes = [(333, 517), (480, 271), (1023, 767), (97, 1301), (640, 427)]
    for i, (w, h) in enumerate(sizes):
        small = rng.rand(6, 6, 3).astype(np.float32)
        field = cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)
        field += rng.randn(h, w, 3).astype(np.float32) * 0.05
        img = Image.fromarray((np.clip(field, 0, 1) * 255).astype(np.uint8))
        d = ImageDraw.Draw(img)
        for _ in range(4):
            x0, y0 = rng.randint(0, w - 8), rng.randint(0, h - 8)
            x1, y1 = x0 + rng.randint(8, max(9, w // 3)), y0 + rng.randint(8, max(9, h // 3))
            colour = tuple(int(c) for c in rng.randint(0, 256, 3))
            [d.ellipse, d.rectangle][rng.randint(2)]([x0, y0, x1, y1], fill=colour)
        if i % 2 == 0:
            exif = Image.Exif()
            if i == 2:
                exif[0x0112] = 6  # rotated 90° clockwise when shown
            img.save(folder / f"photo{i}.jpg", quality=88, exif=exif)
        else:
            img.save(folder / f"photo{i}.png")


def preprocess(path: Path, size) -> tuple[torch.Tensor, np.ndarray]:
    rgb = np.asarray(ImageOps.exif_transpose(Image.open(path)).convert("RGB"), np.float32) / 255
    if size != "native":
        rgb = cv2.resize(rgb, (int(size), int(size)), interpolation=cv2.INTER_LINEAR)
    x = (rgb - MEAN) / STD
    return torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))[None], rgb


def check(arch: str, args, images: list[Path]) -> bool:
    torch.manual_seed(args.seed)
    model = torchvision.models.get_model(arch, weights=None).eval()
    randomise_batchnorm(model, torch.Generator().manual_seed(args.seed + 1))
    weights = args.work / f"{arch}.safetensors"
    tensors = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(tensors, str(weights), metadata={"arch": arch})
    name, layer = target_layer(arch, model)
    out = args.work / f"out-{arch}-{args.method}-{args.size}"
    cmd = [str(args.gradcam), "explain", *map(str, images), "--model", str(weights),
           "--layer", name, "--size", str(args.size), "--method", args.method,
           "--outputs", "cam,json", "--device", "cpu", "-o", str(out)]
    t = time.time()
    run = subprocess.run(cmd, capture_output=True, text=True)
    took = time.time() - t
    if run.returncode != 0:
        print(f"{arch}: gradcam failed ({run.returncode}):\n{run.stderr}")
        return False
    cam = METHODS[args.method](model=model, target_layers=[layer])
    ok = True
    for p in images:
        x, _ = preprocess(p, args.size)
        with torch.no_grad():
            logits = model(x)[0]
        top = int(logits.argmax())
        ref = cam(input_tensor=x, targets=None)[0]
        report = json.loads((out / f"{p.stem}.json").read_text())
        ours = np.load(out / f"{p.stem}.cam.npy")
        same_class = report["class"] == top
        # Random weights give near-uniform probabilities: compare logits, relative to their spread.
        dp = abs(report["logit"] - float(logits[top])) / float(logits.std())
        dm = float(np.abs(ours - ref).max()) if ours.shape == ref.shape else float("inf")
        good = same_class and dm <= args.tol and dp <= 1e-4
        ok &= good
        print(f"{arch:18} {p.name:12} {x.shape[3]}x{x.shape[2]:<5} class {report['class']:4}"
              f"/{top:4}  |Δlogit|/σ {dp:.1e}  max|Δmap| {dm:.1e}  {'ok' if good else 'MISMATCH'}")
    print(f"{arch}: gradcam explain took {took:.1f} s for {len(images)} images")
    return ok


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    ap.add_argument("archs", nargs="*", default=DEFAULT_ARCHS)
    ap.add_argument("--gradcam", type=Path, default=Path("target/release/gradcam"))
    ap.add_argument("--size", default="224")
    ap.add_argument("--images", type=Path)
    ap.add_argument("--work", type=Path, default=Path("/tmp/gradcam-check-torchvision"))
    ap.add_argument("--method", default="gradcam", choices=sorted(METHODS))
    ap.add_argument("--tol", type=float, default=1e-4)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(2)
    args.work.mkdir(parents=True, exist_ok=True)
    folder = args.images or args.work / "images"
    if args.images is None:
        make_images(folder, args.seed)
    images = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    print(f"torch {torch.__version__}, torchvision {torchvision.__version__}, "
          f"{len(images)} images, --size {args.size}, --method {args.method}")
    results = [check(a, args, images) for a in args.archs]
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main())

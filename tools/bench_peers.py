#!/usr/bin/env python3
"""Peer implementations for the gradcam benchmarks.

    python tools/bench_peers.py --arch resnet50|vgg16 --images DIR --batch 8 --out OUTDIR \
        --tool gradcam|torchcam|captum|forward [--threads N] [--bf16]

Every tool: torchvision model with random weights (weights=None, seed 0),
each image read with OpenCV and converted to RGB float32 in [0, 1], resized
to 224x224 (cv2.INTER_LINEAR), ImageNet-normalised, NCHW, processed in
batches of --batch.

  gradcam   pytorch-grad-cam GradCAM (target layer4 for resnet50, features[29]
            for vgg16), argmax class, show_cam_on_image, writes
            OUTDIR/<stem>.overlay.png
  torchcam  the same with torchcam's GradCAM; its layer-resolution map is
            resized and normalised like pytorch-grad-cam's and blended with
            the same show_cam_on_image, so the overlays are equivalent
  captum    the same with Captum's LayerGradCam (relu_attributions=True); Captum
            needs the class up front, so each batch runs a forward pass for the
            argmax first (under inference_mode), as a user of it would
  forward   torch's bare forward pass under torch.inference_mode (no output)

--bf16 runs the model under torch.autocast("cpu", dtype=torch.bfloat16) (oneDNN's bf16
kernels: AMX where the CPU has it), the CAM's backward pass too; the target layer's output
and the logits are cast back to float32 by forward hooks registered before the tool's own
(numpy, which the tools hand the scores, activations and gradients to, has no bfloat16), as
a user would.

Prints one summary line (key=value) with images/s measured from the first
image read to the last PNG written (or last forward for `forward`), a
per-stage time breakdown, and the peak RSS (getrusage ru_maxrss).
"""

from __future__ import annotations

import argparse
import contextlib
import resource
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import torch
import torchvision

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
SIZE = 224
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff"}
# Target layer (torchvision module name) for each supported architecture.
TARGET_LAYERS = {"resnet50": "layer4", "vgg16": "features.29"}


def parse_args(argv):
    p = argparse.ArgumentParser(description="Peer Grad-CAM / forward benchmark (PyTorch).")
    p.add_argument("--arch", required=True, choices=sorted(TARGET_LAYERS))
    p.add_argument("--images", required=True, type=Path, help="directory of input images")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--out", required=True, type=Path, help="directory for <stem>.overlay.png")
    p.add_argument("--tool", required=True, choices=["gradcam", "torchcam", "captum", "forward"])
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    p.add_argument("--bf16", action="store_true", help="run under CPU bf16 autocast")
    args = p.parse_args(argv)
    if args.batch < 1:
        p.error("--batch must be >= 1")
    if args.threads is not None and args.threads < 1:
        p.error("--threads must be >= 1")
    return args


def list_images(directory: Path) -> list[Path]:
    if not directory.is_dir():
        raise SystemExit(f"error: --images {directory} is not a directory")
    files = sorted(p for p in directory.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise SystemExit(f"error: no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in {directory}")
    return files


def load_rgb224(path: Path) -> np.ndarray:
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise SystemExit(f"error: cannot read image {path}")
    rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB).astype(np.float32) / 255.0
    return cv2.resize(rgb, (SIZE, SIZE), interpolation=cv2.INTER_LINEAR)


def to_batch(rgbs: list[np.ndarray]) -> torch.Tensor:
    x = (np.stack(rgbs) - IMAGENET_MEAN) / IMAGENET_STD
    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


def normalise_and_resize(cam_small: np.ndarray) -> np.ndarray:
    """pytorch-grad-cam's scaling: min-max, resize to the input, min-max again."""
    def minmax(a):
        a = a - a.min()
        return a / (1e-7 + a.max())
    return minmax(cv2.resize(minmax(cam_small.astype(np.float32)), (SIZE, SIZE)))


def write_overlay(out_dir: Path, stem: str, rgb: np.ndarray, cam: np.ndarray, show_cam_on_image):
    overlay = show_cam_on_image(rgb, cam, use_rgb=True)
    path = out_dir / f"{stem}.overlay.png"
    if not cv2.imwrite(str(path), cv2.cvtColor(overlay, cv2.COLOR_RGB2BGR)):
        raise SystemExit(f"error: cannot write {path}")


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    files = list_images(args.images)
    if args.tool != "forward":
        args.out.mkdir(parents=True, exist_ok=True)

    torch.manual_seed(0)
    model = torchvision.models.get_model(args.arch, weights=None).eval()
    layer_name = TARGET_LAYERS[args.arch]
    precision = contextlib.nullcontext
    if args.bf16:
        for module in (model.get_submodule(layer_name), model):
            module.register_forward_hook(lambda m, i, o: o.float())
        precision = lambda: torch.autocast("cpu", dtype=torch.bfloat16)  # noqa: E731

    extractor = None
    show_cam_on_image = None
    if args.tool == "gradcam":
        from pytorch_grad_cam import GradCAM
        from pytorch_grad_cam.utils.image import show_cam_on_image
        extractor = GradCAM(model=model, target_layers=[model.get_submodule(layer_name)])
    elif args.tool == "torchcam":
        from pytorch_grad_cam.utils.image import show_cam_on_image
        from torchcam.methods import GradCAM as TorchCamGradCAM
        extractor = TorchCamGradCAM(model, target_layer=layer_name)
    elif args.tool == "captum":
        from captum.attr import LayerGradCam
        from pytorch_grad_cam.utils.image import show_cam_on_image
        extractor = LayerGradCam(model, model.get_submodule(layer_name))

    t_load = t_model = t_write = 0.0
    start = time.perf_counter()
    for offset in range(0, len(files), args.batch):
        chunk = files[offset:offset + args.batch]
        t0 = time.perf_counter()
        rgbs = [load_rgb224(p) for p in chunk]
        x = to_batch(rgbs)
        t1 = time.perf_counter()
        if args.tool == "forward":
            with torch.inference_mode(), precision():
                model(x)
            cams = None
        elif args.tool == "gradcam":
            with precision():
                cams = extractor(input_tensor=x, targets=None)  # [B,224,224], argmax class
        elif args.tool == "captum":
            with torch.inference_mode(), precision():
                classes = model(x).argmax(1).tolist()
            with precision():
                small = extractor.attribute(x, target=classes, relu_attributions=True)[:, 0]
            cams = [normalise_and_resize(c) for c in small.detach().float().cpu().numpy()]
        else:
            with precision():
                scores = model(x)
                small = extractor(scores.argmax(1).tolist(), scores)[0]  # [B,h,w], normalised
            cams = [normalise_and_resize(c) for c in small.detach().float().cpu().numpy()]
        t2 = time.perf_counter()
        if cams is not None:
            for path, rgb, cam in zip(chunk, rgbs, cams):
                write_overlay(args.out, path.stem, rgb, cam, show_cam_on_image)
        t3 = time.perf_counter()
        t_load += t1 - t0
        t_model += t2 - t1
        t_write += t3 - t2
    elapsed = time.perf_counter() - start

    if args.tool == "torchcam":
        extractor.remove_hooks()
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux
    n = len(files)
    print(f"tool={args.tool} arch={args.arch} images={n} batch={args.batch} bf16={args.bf16} "
          f"threads={torch.get_num_threads()} seconds={elapsed:.3f} images_per_s={n / elapsed:.2f} "
          f"load_s={t_load:.3f} model_s={t_model:.3f} write_s={t_write:.3f} "
          f"peak_rss_mb={peak_mb:.1f} torch={torch.__version__} torchvision={torchvision.__version__}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

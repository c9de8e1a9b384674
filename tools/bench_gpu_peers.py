#!/usr/bin/env python3
"""PyTorch peers for `gradcam bench --device cuda`, on the same GPU, in one process.

    python tools/bench_gpu_peers.py --arch resnet50|vgg16 --batch 64 --images 256

Synthetic RGB8 images (224x224, in memory, as `gradcam bench` uses), torchvision model with
random weights (seed 0). Each tool runs one untimed warm-up batch, then every batch timed with
torch.cuda.synchronize() around it:

  gradcam        pytorch-grad-cam 1.5.7 GradCAM (layer4 / features.29), argmax class,
                 preprocessing (cv2.resize, ImageNet normalisation) and show_cam_on_image
                 overlays included; torch's defaults (cuDNN convolutions may use TF32)
  forward-tf32   torch's bare forward pass on batches already preprocessed and on the GPU
                 (the throughput floor a Grad-CAM tool is measured against), inference_mode,
                 TF32 allowed, cudnn.benchmark on (torch at its best)
  forward-f32    the same with TF32 off (exact f32)
  forward-bf16   the same under torch.autocast(bfloat16)
  forward-bf16-cl  the same with the model and inputs in channels_last (torch's fastest eager
                 layout for bf16 convolutions)
  forward-f16, forward-f16-cl  the same two under torch.autocast(float16)

Prints one line per tool: images/s and torch.cuda.max_memory_allocated (for the forward
tools that includes the inputs held ready on the GPU).
"""

from __future__ import annotations

import argparse
import time

import cv2
import numpy as np
import torch
import torchvision

MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
LAYERS = {"resnet50": "layer4", "vgg16": "features.29"}


def images(n: int, side: int) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (side, side, 3), dtype=np.uint8) for _ in range(n)]


def preprocess(batch: list[np.ndarray]) -> torch.Tensor:
    x = np.stack([cv2.resize(im.astype(np.float32) / 255.0, (224, 224)) for im in batch])
    x = (x - MEAN) / STD
    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2))).cuda(non_blocking=True)


def timed(label: str, batches, step) -> None:
    step(batches[0])  # warm-up: cuDNN autotuning, lazy allocations
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    n = 0
    for b in batches:
        step(b)
        n += len(b)
    torch.cuda.synchronize()
    secs = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated() / 1e6
    print(f"tool={label} images={n} seconds={secs:.3f} images_per_s={n / secs:.1f} "
          f"peak_mb={peak:.0f}", flush=True)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--arch", required=True, choices=sorted(LAYERS))
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--images", type=int, default=256)
    p.add_argument("--tools",
                   default="gradcam,forward-tf32,forward-f32,forward-bf16,forward-bf16-cl,"
                           "forward-f16,forward-f16-cl")
    a = p.parse_args()
    torch.manual_seed(0)
    model = torchvision.models.get_model(a.arch, weights=None).eval().cuda()
    imgs = images(a.images, 224)
    batches = [imgs[i:i + a.batch] for i in range(0, len(imgs), a.batch)]
    print(f"# torch {torch.__version__}, torchvision {torchvision.__version__}, "
          f"{torch.cuda.get_device_name()}, {a.arch}, batch {a.batch}", flush=True)
    for tool in a.tools.split(","):
        torch.backends.cudnn.allow_tf32 = tool != "forward-f32"
        torch.backends.cuda.matmul.allow_tf32 = tool == "forward-tf32"
        if tool == "gradcam":
            from pytorch_grad_cam import GradCAM
            from pytorch_grad_cam.utils.image import show_cam_on_image
            torch.backends.cuda.matmul.allow_tf32 = False  # torch's default
            cam = GradCAM(model=model, target_layers=[model.get_submodule(LAYERS[a.arch])])

            def step(batch, cam=cam, show=show_cam_on_image):
                maps = cam(input_tensor=preprocess(batch), targets=None)
                for im, m in zip(batch, maps):
                    show(cv2.resize(im, (224, 224)).astype(np.float32) / 255.0, m, use_rgb=True)
        else:
            torch.backends.cudnn.benchmark = True
            half = {"forward-bf16": torch.bfloat16, "forward-f16": torch.float16}.get(
                tool.removesuffix("-cl"))
            fmt = torch.channels_last if tool.endswith("-cl") else torch.contiguous_format
            net = model.to(memory_format=fmt)
            ctx = (lambda: torch.autocast("cuda", dtype=half)) if half \
                else (lambda: torch.autocast("cuda", enabled=False))
            # Inputs preprocessed and uploaded before the clock starts: the bare forward pass.
            ready = {id(b): preprocess(b).contiguous(memory_format=fmt) for b in batches}

            def step(batch, ctx=ctx, net=net, ready=ready):
                with torch.inference_mode(), ctx():
                    net(ready[id(batch)])
        timed(tool, batches, step)
        model = model.to(memory_format=torch.contiguous_format)


if __name__ == "__main__":
    main()

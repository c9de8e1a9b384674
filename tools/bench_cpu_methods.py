#!/usr/bin/env python3
"""Time pytorch-grad-cam's AblationCAM, FullGrad, ShapleyCAM, FEM or SESS (over GradCAM) per image on the CPU, for
the side-by-side tables in BENCHMARKS.md (beside `gradcam bench --method ...` on the same
architecture).

    .venv-tools/bin/python tools/bench_cpu_methods.py --method ablationcam|fullgrad|shapleycam|fem|sess \
        --arch resnet18 --images 2 [--target logit|softmax|rest] [--threads N]

torchvision model with random weights (weights=None, seed 0), random normalised inputs at
224x224, target layer4 (ResNet) or features[29] (VGG16; FullGrad ignores it), argmax class;
AblationCAM with batch_size 32 (the library's default: 32 ablated copies per forward pass of
the whole model). One image per call (AblationCAM ablates one image's channels at a time);
the first call is a warm-up.
"""

import argparse
import time

import torch
import torchvision
from pytorch_grad_cam import FEM, SESS, AblationCAM, FullGrad, GradCAM, ShapleyCAM
from pytorch_grad_cam.utils.model_targets import (ClassifierOutputReST,
                                                  ClassifierOutputSoftmaxTarget,
                                                  ClassifierOutputTarget)

CLASSES = {"ablationcam": AblationCAM, "fullgrad": FullGrad, "shapleycam": ShapleyCAM,
           "fem": FEM, "sess": SESS}  # SESS over Grad-CAM, its default base
TARGETS = {"logit": ClassifierOutputTarget, "softmax": ClassifierOutputSoftmaxTarget,
           "rest": ClassifierOutputReST}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--method", choices=list(CLASSES), default="ablationcam")
    p.add_argument("--target", choices=list(TARGETS), default="logit")
    p.add_argument("--arch", default="resnet18")
    p.add_argument("--images", type=int, default=2)
    p.add_argument("--threads", type=int, default=0)
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    model = getattr(torchvision.models, a.arch)(weights=None).eval()
    layer = model.features[29] if a.arch.startswith("vgg") else model.layer4
    x = torch.randn(a.images + 1, 3, 224, 224)
    cls_ = CLASSES[a.method]
    with cls_(model=model, target_layers=[layer]) as cam:
        times = []
        for i in range(a.images + 1):
            xi = x[i : i + 1]
            with torch.no_grad():
                cls = int(model(xi).argmax())
            t0 = time.perf_counter()
            cam(input_tensor=xi, targets=[TARGETS[a.target](cls)])
            times.append(time.perf_counter() - t0)
    per = sum(times[1:]) / a.images
    print(f"arch={a.arch} tool=pytorch-grad-cam {cls_.__name__} target={a.target} "
          f"threads={torch.get_num_threads()} "
          f"images={a.images} per_image_s={per:.3f}")


if __name__ == "__main__":
    main()

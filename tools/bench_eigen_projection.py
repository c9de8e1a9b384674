#!/usr/bin/env python3
"""Time pytorch-grad-cam's get_2d_projection (Eigen-CAM's principal component) per image on
the shapes of `cargo bench --bench ops -- principal_projection`, with the same kind of data
(uniform random activations), for the side-by-side table in BENCHMARKS.md.

    .venv-tools/bin/python tools/bench_eigen_projection.py
"""

import time

import numpy as np
from pytorch_grad_cam.utils.svd_on_activations import get_2d_projection

# (name, images per call, channels, map side): as benches/ops.rs
SHAPES = [
    ("resnet50_layer4_224", 8, 2048, 7),
    ("vgg16_features29_224", 8, 512, 14),
    ("resnet50_layer4_1000px", 1, 2048, 32),
    ("vgg16_features29_1000px", 1, 512, 62),
]


def main() -> None:
    rng = np.random.default_rng(1)
    for name, n, k, side in SHAPES:
        x = rng.random((n, k, side, side), dtype=np.float32)
        get_2d_projection(x[:1])  # warm-up (LAPACK's first call allocates)
        reps = 3
        t0 = time.perf_counter()
        for _ in range(reps):
            get_2d_projection(x)
        per_image = (time.perf_counter() - t0) / reps / n
        print(f"{name}: {per_image * 1e3:.1f} ms per image")


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Time pytorch-grad-cam's ROAD imputation (NoisyLinearImputer: SciPy's spsolve) on the case
`cargo bench --bench ops -- road_impute` times: a 224x224 RGB input, a smooth blob map
exp(-((y-90)^2 + (x-130)^2) / (2*50^2)), MoRF at 10, 50 and 90 % (one solve each), and all 18
solves of ROADCombined's default percentiles (MoRF and LeRF at 10..90), one after another as
pytorch-grad-cam runs them. Median of --repeats runs.

    .venv-tools/bin/python tools/bench_road.py [--repeats 5]
"""

import argparse
import statistics
import time

import numpy as np
import torch
from pytorch_grad_cam.metrics.road import NoisyLinearImputer


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=5)
    a = p.parse_args()
    h = w = 224
    rng = np.random.default_rng(3)
    img = torch.from_numpy(rng.uniform(-2, 2, (3, h, w)).astype(np.float32))
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    cam = np.exp(-((yy - 90) ** 2 + (xx - 130) ** 2) / (2 * 50 * 50)).astype(np.float32)
    imputer = NoisyLinearImputer(noise=0.01)

    def mask(ranked, pct):
        return torch.from_numpy(np.float32(ranked < np.percentile(ranked, pct)))

    def timed(f):
        runs = []
        for _ in range(a.repeats):
            t = time.perf_counter()
            f()
            runs.append(time.perf_counter() - t)
        return statistics.median(runs)

    for pct in (10, 50, 90):
        m = mask(cam, pct)
        print(f"road_impute/morf{pct}: {timed(lambda: imputer(img, m)) * 1e3:.1f} ms")
    masks = [mask(r, pct) for r in (cam, 1 - cam) for pct in range(10, 100, 10)]
    print(f"road_impute/all18: {timed(lambda: [imputer(img, m) for m in masks]) * 1e3:.1f} ms")


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Write N deterministic RGB PNGs (or JPEGs) for benchmarks.

    python tools/make_bench_images.py OUTDIR N [--size 224 | --size 320x240] [--seed 0] [--format png|jpg]

Files are named img_0000.png, img_0001.png, ... (.jpg: 4:2:0 at quality 90, as cameras and
ImageNet store photographs); image i depends only on
(seed, i, size), so growing N keeps the earlier files identical.
Content: smooth colour fields (upsampled low-resolution noise) with a few
hard-edged rectangles and a little pixel noise, so neither resizing nor PNG
compression is trivially cheap.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np


def parse_size(text: str) -> tuple[int, int]:
    """'224' -> (224, 224); '320x240' -> (320, 240) as (width, height)."""
    parts = text.lower().split("x")
    try:
        dims = [int(p) for p in parts]
    except ValueError:
        raise argparse.ArgumentTypeError(f"bad size '{text}', expected S or WxH") from None
    if len(dims) == 1:
        dims = dims * 2
    if len(dims) != 2 or min(dims) < 8:
        raise argparse.ArgumentTypeError(f"bad size '{text}', expected S or WxH with sides >= 8")
    return dims[0], dims[1]


def make_image(seed: int, index: int, width: int, height: int) -> np.ndarray:
    rng = np.random.default_rng([seed, index])
    coarse = rng.uniform(0, 255, size=(rng.integers(3, 8), rng.integers(3, 8), 3)).astype(np.float32)
    img = cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC)
    for _ in range(rng.integers(2, 6)):
        x0, y0 = int(rng.integers(0, width - 4)), int(rng.integers(0, height - 4))
        x1 = x0 + int(rng.integers(4, max(5, width // 3)))
        y1 = y0 + int(rng.integers(4, max(5, height // 3)))
        img[y0:y1, x0:x1] = 0.5 * img[y0:y1, x0:x1] + 0.5 * rng.uniform(0, 255, size=3)
    img += rng.normal(0.0, 4.0, size=img.shape).astype(np.float32)
    return np.clip(img + 0.5, 0, 255).astype(np.uint8)  # RGB


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Write N deterministic RGB PNG benchmark images.")
    parser.add_argument("outdir", type=Path)
    parser.add_argument("n", type=int)
    parser.add_argument("--size", type=parse_size, default=(224, 224),
                        help="S or WxH (default 224)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--format", choices=["png", "jpg"], default="png")
    args = parser.parse_args(argv)
    if args.n < 0:
        parser.error("N must be >= 0")

    args.outdir.mkdir(parents=True, exist_ok=True)
    width, height = args.size
    for i in range(args.n):
        rgb = make_image(args.seed, i, width, height)
        path = args.outdir / f"img_{i:04d}.{args.format}"
        params = [cv2.IMWRITE_JPEG_QUALITY, 90] if args.format == "jpg" else []
        if not cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), params):
            print(f"error: could not write {path}", file=sys.stderr)
            return 1
    print(f"wrote {args.n} images of {width}x{height} to {args.outdir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

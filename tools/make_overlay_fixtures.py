#!/usr/bin/env python3
"""Overlay fixtures for tests/parity.rs's overlay_styles_match_show_cam_on_image:
pytorch-grad-cam 1.5.7's show_cam_on_image(img, mask, use_rgb=True, colormap, image_weight)
over one of the fixture images and a smooth map, for several of OpenCV's colormaps and image
weights, so the colormap tables and the blend are checked against the peer itself.

    python tools/make_overlay_fixtures.py      # writes tests/fixtures/overlay/
"""

import json
from pathlib import Path

import cv2
import numpy as np
from PIL import Image
from pytorch_grad_cam.utils.image import show_cam_on_image

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "tests" / "fixtures" / "overlay"
IMAGE = "images/a.png"
STYLES = [
    ("JET", 0.5),  # pytorch-grad-cam's default
    ("TURBO", 0.3),
    ("VIRIDIS", 0.0),  # the colormap alone
    ("HOT", 0.8),
    ("TWILIGHT_SHIFTED", 0.5),
    ("BONE", 1.0),  # the image alone
]


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    img = np.asarray(Image.open(ROOT / "tests" / "fixtures" / IMAGE).convert("RGB"))
    h, w = img.shape[:2]
    # A map that crosses every colormap entry: a ramp plus a blob, min-max normalised as
    # pytorch-grad-cam's scale_cam_image leaves it.
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    m = 0.6 * x / (w - 1) + np.exp(-((x - 0.3 * w) ** 2 + (y - 0.6 * h) ** 2) / (0.02 * w * h))
    m = ((m - m.min()) / (m.max() - m.min() + 1e-7)).astype(np.float32)
    np.save(OUT / "map.npy", m)
    rgb = np.float32(img) / 255
    cases = []
    for name, weight in STYLES:
        colormap = getattr(cv2, "COLORMAP_" + name)
        out = show_cam_on_image(rgb, m, use_rgb=True, colormap=colormap, image_weight=weight)
        file = f"{name.lower()}_{weight}.png"
        Image.fromarray(out).save(OUT / file)
        cases.append({"colormap": name.lower(), "image_weight": weight, "overlay": file})
    manifest = {
        "image": IMAGE,
        "map": "map.npy",
        "made_by": f"pytorch-grad-cam show_cam_on_image, OpenCV {cv2.__version__}",
        "cases": cases,
    }
    (OUT / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")


if __name__ == "__main__":
    main()

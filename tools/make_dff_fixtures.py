#!/usr/bin/env python3
"""Deep Feature Factorization parity fixtures: pytorch-grad-cam 1.5.7's
DeepFeatureFactorization (scikit-learn's NMF inside) on the committed fixture models.

Writes tests/fixtures/expected/dff__<model>__<layer>__<images>__<size>__k<k>.safetensors:

    concepts      [K,k]      concepts (W of the NMF plus each channel's minimum)
    maps          [N,k,h,w]  the raw explanations of pytorch_grad_cam's dff()
    explanations  [N,k,H,W]  what DeepFeatureFactorization returned (scale_cam_image)
    scores        [k,C]      concept_outputs with computation_on_concepts=model.fc
                             (ResNet layer4 cases only)
    iterations    int64 [1]  scikit-learn's n_iter_ for the same NMF
    overlay       uint8 [H,W,3]  show_factorization_on_image(rgb / 255, explanations[0],
                             colors=gist_rainbow as it picks them, image_weight=0.3), first
                             image, native-size cases only

pytorch-grad-cam's show_factorization_on_image looks the colours up with
plt.cm.get_cmap, which matplotlib 3.9 removed; they are passed here as it would pick them
(matplotlib.colormaps["gist_rainbow"] at np.arange(0, 1, 1 / k)). The inputs are the
committed manifest.json expected files named in the metadata's "sources".

Also tests/fixtures/expected/dff__colours.safetensors, the overlay's colour arithmetic:

    colours   uint8 [2080,3]   np.uint8(255 * gist_rainbow(x)[:3]) for x in np.arange(0, 1, 1/k),
                               k = 1..64 in turn
    hsv       uint8 [2080,3]   cv2.cvtColor(colours as one image row, COLOR_RGB2HSV)
    hsv2rgb   uint8 [180,256,3]  cv2.cvtColor of the image of (h, 255, v), COLOR_HSV2RGB (rows
                               of 256: OpenCV's vectorised path throughout)
    hsv2rgb_scalar  uint8 [180,256,3]  the same pixels converted one at a time (its scalar
                               path, which the end of a row whose width is no multiple of 32
                               takes)
Run: .venv-tools/bin/python tools/make_dff_fixtures.py
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import cv2
import matplotlib
import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file, save_file
from sklearn.decomposition import NMF

sys.path.insert(0, str(Path(__file__).resolve().parent))
import make_method_fixtures as mmf  # noqa: E402

from pytorch_grad_cam import DeepFeatureFactorization  # noqa: E402
from pytorch_grad_cam.feature_factorization.deep_feature_factorization import dff  # noqa: E402
from pytorch_grad_cam.utils.image import show_factorization_on_image  # noqa: E402

# (model, layer, images, size, k)
CASES = [
    ("resnet_tiny", "layer4", ["a", "b"], 64, 3),
    ("resnet_basic_tiny", "layer3", ["a"], "native", 5),
    ("vgg_bn_tiny", "features.27", ["c"], "native", 4),
]


def main() -> int:
    torch.set_num_threads(1)
    fixtures = Path(__file__).resolve().parent.parent / "tests" / "fixtures"
    sources = mmf.input_sources(fixtures)
    digest = hashlib.sha256()
    for model_name, layer, images, size, k in CASES:
        model = mmf.load_model(fixtures, model_name)
        srcs = [sources[(im, size)] for im in images]
        x = torch.cat([load_file(str(fixtures / s))["input"].float() for s in srcs])
        layer_mod = dict(model.named_modules())[layer]
        head = model.fc if layer == "layer4" else None
        obj = DeepFeatureFactorization(model, layer_mod, computation_on_concepts=head)
        out = obj(x, n_components=k)
        concepts, explanations = out[0], np.stack(out[1])
        # The raw factors and scikit-learn's iteration count, from the same steps.
        acts = {}
        hook = layer_mod.register_forward_hook(lambda m, i, o: acts.setdefault("a", o))
        with torch.no_grad():
            model(x)
        hook.remove()
        a = acts["a"].numpy().copy()
        c2, maps = dff(a.copy(), n_components=k)
        assert np.array_equal(c2, concepts)
        flat = a.transpose((1, 0, 2, 3)).reshape(a.shape[1], -1)
        nmf = NMF(n_components=k, init="random", random_state=0)
        nmf.fit_transform(flat - flat.min(axis=-1)[:, None])

        tensors = {
            "concepts": torch.from_numpy(np.float32(concepts)),
            "maps": torch.from_numpy(np.float32(maps)),
            "explanations": torch.from_numpy(np.float32(explanations)),
            "iterations": torch.tensor([nmf.n_iter_], dtype=torch.int64),
        }
        if head is not None:
            tensors["scores"] = torch.from_numpy(np.float32(out[2]))
        if size == "native":
            rgb = np.array(Image.open(fixtures / "images" / f"{images[0]}.png").convert("RGB"))
            cmap = matplotlib.colormaps["gist_rainbow"]
            colors = [np.array(cmap(v)) for v in np.arange(0, 1, 1.0 / k)]
            vis = show_factorization_on_image(rgb / 255, explanations[0].copy(), colors=colors,
                                              image_weight=0.3)
            tensors["overlay"] = torch.from_numpy(vis)
        name = f"dff__{model_name}__{layer}__{'_'.join(images)}__{size}__k{k}.safetensors"
        path = fixtures / "expected" / name
        save_file({n: t.contiguous() for n, t in tensors.items()}, str(path),
                  metadata={"sources": ",".join(srcs), "reference": "pytorch-grad-cam 1.5.7"})
        digest.update(path.read_bytes())
        print(f"{name}: {nmf.n_iter_} iterations, {path.stat().st_size} bytes")
    cmap = matplotlib.colormaps["gist_rainbow"]
    # (np.arange(0, 1, 1 / k) has k + 1 values for some k, 49 for one; the first k are used.)
    colours = np.uint8([np.array(cmap(x))[:3] * 255 for k in range(1, 65)
                        for x in np.arange(0, 1, 1.0 / k)[:k]])
    hsv = cv2.cvtColor(colours[None], cv2.COLOR_RGB2HSV)[0]
    hh, vv = np.meshgrid(np.arange(180), np.arange(256), indexing="ij")
    grid = np.stack([hh, np.full_like(hh, 255), vv], -1).astype(np.uint8)
    path = fixtures / "expected" / "dff__colours.safetensors"
    save_file({"colours": torch.from_numpy(colours), "hsv": torch.from_numpy(hsv),
               "hsv2rgb": torch.from_numpy(cv2.cvtColor(grid, cv2.COLOR_HSV2RGB)),
               "hsv2rgb_scalar": torch.from_numpy(np.uint8(
                   [[cv2.cvtColor(px[None, None], cv2.COLOR_HSV2RGB)[0, 0] for px in row]
                    for row in grid]))}, str(path),
              metadata={"reference": f"matplotlib {matplotlib.__version__}, OpenCV {cv2.__version__}"})
    digest.update(path.read_bytes())
    print(f"{path.name}: {path.stat().st_size} bytes")
    print("sha256", digest.hexdigest()[:16])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

#!/usr/bin/env python3
"""ROAD parity fixtures: pytorch-grad-cam 1.5.7's ROAD metrics (arXiv 2202.00449).

Writes tests/fixtures/expected/road__<model>__<image>.safetensors per case:

    cam            [H,W]      GradCAM(model, [layer])(input) for the argmax class, plus 1e-3
                              of a centred Gaussian, min-max normalised (see below)
    class          int64 [1]
    keep           uint8 [2,9,ceil(H*W/8)]  the pixels RemoveMostRelevantFirst (row 0) and
                              RemoveLeastRelevantFirst (row 1) keep at percentiles 10..90
                              (mask < np.percentile(mask, p), on 1 - mask for LeRF), row-major,
                              np.packbits (the first pixel in the top bit)
    imputed        [2,3,H,W]  NoisyLinearImputer(noise=0)(input[0], keep) for MoRF 10 and
                              LeRF 50

The input is the committed manifest.json expected file named in the metadata's "source"
(its `input` tensor), as methods.json's "input_from".
    change         [2,9]      PerturbationConfidenceMetric(Remove...(p, NoisyLinearImputer(
                              noise=0))) with ClassifierOutputSoftmaxTarget: the class
                              probability after removal minus before, per percentile
    morf, lerf, combined  [1]  ROADMostRelevantFirstAverage, ROADLeastRelevantFirstAverage,
                              ROADCombined (all noise 0, softmax target)

Noise 0 because pytorch-grad-cam draws its imputation noise from torch's global generator,
which no other implementation can reproduce; the noise-free values are deterministic.
Run with the tools venv: .venv-tools/bin/python tools/make_road_fixtures.py
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
import make_method_fixtures as mmf  # noqa: E402  (models and inputs as the parity fixtures)

from pytorch_grad_cam import GradCAM  # noqa: E402
from pytorch_grad_cam.metrics.perturbation_confidence import (  # noqa: E402
    PerturbationConfidenceMetric, RemoveLeastRelevantFirst, RemoveMostRelevantFirst)
from pytorch_grad_cam.metrics.road import (NoisyLinearImputer, ROADCombined,  # noqa: E402
                                           ROADLeastRelevantFirstAverage,
                                           ROADMostRelevantFirstAverage)
from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget  # noqa: E402

PERCENTILES = [10, 20, 30, 40, 50, 60, 70, 80, 90]
# (model, layer, image): a ResNet on a landscape image, a VGG on a portrait one.
CASES = [("resnet_tiny", "layer4", "a"), ("vgg_bn_tiny", "features.27", "c")]


def silent_imputer():
    return NoisyLinearImputer(noise=0.0)


def main() -> int:
    torch.set_num_threads(1)
    fixtures = Path(__file__).resolve().parent.parent / "tests" / "fixtures"
    sources = mmf.input_sources(fixtures)
    digest = hashlib.sha256()
    for model_name, layer, image in CASES:
        model = mmf.load_model(fixtures, model_name)
        src = sources[(image, "native")]
        x = load_file(str(fixtures / src))["input"].float()
        with torch.no_grad():
            cls = int(model(x).argmax())
        target = [ClassifierOutputSoftmaxTarget(cls)]
        layer_mod = dict(model.named_modules())[layer]
        with GradCAM(model, [layer_mod]) as cam_obj:
            cams = cam_obj(x, targets=target)
        # Grad-CAM's maps are flat (zero) wherever no channel counts for the class, and
        # pytorch-grad-cam's ROAD is NaN at every percentile inside that flat part (nothing
        # kept: a singular system). A centred Gaussian at 1e-3 breaks the ties so that every
        # percentile is defined; the map stays pytorch-grad-cam's up to that.
        h, w = cams.shape[1:]
        yy, xx = np.mgrid[0:h, 0:w]
        bump = np.exp(-(((yy - h / 2) / h) ** 2 + ((xx - w / 2) / w) ** 2) * 4)
        cam = (cams[0] + 1e-3 * bump).astype(np.float32)
        cam = (cam - cam.min()) / (cam.max() - cam.min())
        cams = cam[None].astype(np.float32)

        keep = np.zeros((2, len(PERCENTILES), h, w), np.uint8)
        for r, flip in enumerate([False, True]):
            ranked = torch.from_numpy(cam)
            ranked = 1 - ranked if flip else ranked
            for k, p in enumerate(PERCENTILES):
                thr = np.percentile(ranked.numpy(), p)
                keep[r, k] = (ranked < thr).numpy()
                assert keep[r, k].any(), f"{model_name} {image}: empty mask at {p} (NaN in pgc)"

        imputer = silent_imputer()
        imputed = torch.stack([
            imputer(x[0], torch.from_numpy(keep[0, 0].astype(np.float32))),
            imputer(x[0], torch.from_numpy(keep[1, 4].astype(np.float32))),
        ])

        change = np.zeros((2, len(PERCENTILES)), np.float32)
        for r, remover in enumerate([RemoveMostRelevantFirst, RemoveLeastRelevantFirst]):
            for k, p in enumerate(PERCENTILES):
                metric = PerturbationConfidenceMetric(remover(p, silent_imputer()))
                change[r, k] = metric(x, cams, target, model)[0]

        # The averaging classes, with their imputers made noise-free the same way.
        def quiet(averager):
            def make(p, base=averager.imputer):
                m = base(p)
                m.perturbation.imputer = silent_imputer()
                return m
            averager.imputer = make
            return averager

        morf = quiet(ROADMostRelevantFirstAverage(PERCENTILES))(x, cams, target, model)
        lerf = quiet(ROADLeastRelevantFirstAverage(PERCENTILES))(x, cams, target, model)
        combined = ROADCombined(PERCENTILES)
        quiet(combined.morf_averager)
        quiet(combined.lerf_averager)
        comb = combined(x, cams, target, model)
        assert np.allclose(morf[0], change[0].mean(), atol=1e-6)
        assert np.allclose(lerf[0], change[1].mean(), atol=1e-6)
        assert np.allclose(comb[0], (lerf[0] - morf[0]) / 2, atol=1e-6)

        out = {
            "cam": torch.from_numpy(cam.astype(np.float32)),
            "class": torch.tensor([cls], dtype=torch.int64),
            "keep": torch.from_numpy(np.packbits(keep.reshape(2, len(PERCENTILES), -1), axis=-1)),
            "imputed": imputed.float().contiguous(),
            "change": torch.from_numpy(change),
            "morf": torch.tensor([morf[0]], dtype=torch.float32),
            "lerf": torch.tensor([lerf[0]], dtype=torch.float32),
            "combined": torch.tensor([comb[0]], dtype=torch.float32),
        }
        path = fixtures / "expected" / f"road__{model_name}__{image}.safetensors"
        save_file(out, str(path), metadata={"layer": layer, "source": src,
                                            "reference": "pytorch-grad-cam 1.5.7"})
        digest.update(path.read_bytes())
        print(f"{path.name}: class {cls}, {w}x{h}, MoRF {morf[0]:.5f} LeRF {lerf[0]:.5f} "
              f"combined {comb[0]:.5f}, {path.stat().st_size} bytes")
    print("sha256", digest.hexdigest()[:16])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

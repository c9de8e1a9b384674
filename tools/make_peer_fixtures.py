#!/usr/bin/env python3
"""Write tests/fixtures/peers.json: the raw maps TorchCAM and Captum compute on the committed
fixture models and inputs, for tests/peers.rs.

pytorch-grad-cam is the reference of every other fixture; this file checks gradcam against the
two other libraries people use for the same methods, at the target layer's resolution and
before any normalisation (the map each library's own post-processing starts from):

    torchcam 0.5.0   GradCAM, XGradCAM, LayerCAM  (extractor(class, scores, normalized=False))
    captum 0.9.0     LayerGradCam.attribute(x, target=class, relu_attributions=True)

Captum's GuidedBackprop is checked equal to pytorch-grad-cam's GuidedBackpropReLUModel (whose
outputs tests/methods.rs' guided fixtures hold) and not stored again.

Cases: every manifest.json case that is not counterfactual (neither peer has one), its input
read back from the committed expected file (so the maps come from exactly the values the Rust
test loads), its class the given one or the argmax.

Where a peer defines a method otherwise than pytorch-grad-cam (and gradcam), nothing is
stored; the script checks what it measured and prints how far the finished maps (ReLU,
min-max, resize to the input, min-max: pytorch-grad-cam's rule) fall from pytorch-grad-cam's,
for the README's Parity section:

    TorchCAM's Grad-CAM++ meant to divide g^2 by 2 g^2 + sum_ab(A g^3) (the paper and
      pytorch-grad-cam: 2 g^2 + (sum_ab A) g^3), but the division acts on a copy made by
      boolean indexing and is lost: its weights are sum_ij g^2 relu(g) (checked).
    TorchCAM's Score-CAM normalises each channel at the layer's resolution, before the
      upsampling, and upsamples with half-pixel centres (pytorch-grad-cam upsamples first,
      with align_corners=True, then normalises); its baseline score is a constant under the
      softmax over channels.

    .venv-tools/bin/python tools/make_peer_fixtures.py [--out tests/fixtures]
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

import captum
import torchcam
from captum.attr import GuidedBackprop, LayerGradCam
from pytorch_grad_cam import GradCAM as PgcGradCAM
from pytorch_grad_cam import GradCAMPlusPlus as PgcGradCAMPlusPlus
from pytorch_grad_cam import GuidedBackpropReLUModel
from pytorch_grad_cam import ScoreCAM as PgcScoreCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from torchcam.methods import GradCAM, GradCAMpp, LayerCAM, ScoreCAM, XGradCAM

sys.path.insert(0, str(Path(__file__).resolve().parent))
import make_method_fixtures as mmf  # noqa: E402  (loading the committed models)

DEFAULT_OUT = Path(__file__).resolve().parent.parent / "tests" / "fixtures"
TORCHCAM = {"gradcam": GradCAM, "xgradcam": XGradCAM, "layercam": LayerCAM}


def torchcam_map(cls_, model, layer: str, x: torch.Tensor, k: int) -> np.ndarray:
    """The extractor's map for class k, unnormalised, [h, w]."""
    with cls_(model, layer) as extractor:
        scores = model(x)
        cams = extractor(k, scores, normalized=False)
    assert len(cams) == 1
    return cams[0][0].detach().numpy().astype(np.float32)


def captum_map(model, layer: str, x: torch.Tensor, k: int) -> np.ndarray:
    attr = LayerGradCam(model, model.get_submodule(layer))
    a = attr.attribute(x, target=k, relu_attributions=True)
    return a[0, 0].detach().numpy().astype(np.float32)


def guided_agrees(model, x: torch.Tensor, k: int) -> float:
    """Captum's GuidedBackprop against pytorch-grad-cam's GuidedBackpropReLUModel (whose
    output tests/methods.rs' guided fixtures hold): the largest difference, relative."""
    ours = GuidedBackprop(model).attribute(x.clone().requires_grad_(True), target=k)
    # pytorch-grad-cam swaps the model's ReLU modules (and does not put back their names):
    # a copy.
    model = copy.deepcopy(model)
    theirs = GuidedBackpropReLUModel(model, device="cpu")(x.clone(), target_category=k)
    return rel(ours[0].detach().numpy().transpose(1, 2, 0), theirs)


def activation_and_gradient(model, layer: str, x: torch.Tensor, k: int):
    """A and dY_k/dA at the layer, [K, h, w] each (for the checks below)."""
    kept = {}

    def hook(_m, _i, out):
        kept["a"] = out
        out.register_hook(lambda g: kept.__setitem__("g", g))

    h = model.get_submodule(layer).register_forward_hook(hook)
    try:
        model(x)[0, k].backward()
    finally:
        h.remove()
    return kept["a"][0].detach().double().numpy(), kept["g"][0].double().numpy()


def rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))


def finished(cam: np.ndarray, hw) -> np.ndarray:
    """A raw layer map as pytorch-grad-cam finishes its own: ReLU, min-max, resize, min-max."""
    return mmf.min_max_resize(cam, hw[1], hw[0])


def differing(model, layer, x, k, tc_gradcam: np.ndarray) -> dict:
    """How far TorchCAM's Grad-CAM++ and Score-CAM fall from pytorch-grad-cam's (maps at the
    input size, both finished by pytorch-grad-cam's rule), the Grad-CAM++ definition measured
    checked first; `tc_gradcam`, TorchCAM's Grad-CAM map as stored, checks that rule."""
    a, g = activation_and_gradient(model, layer, x, k)
    tc_pp = torchcam_map(GradCAMpp, model, layer, x, k)
    # What TorchCAM 0.5.0 computes: sum_ij g^2 relu(g) (its division acts on a copy).
    w = (g**2 * np.maximum(g, 0)).sum(axis=(1, 2))
    measured = np.maximum((w[:, None, None] * a).sum(0), 0)
    assert rel(tc_pp, measured) < 1e-4, rel(tc_pp, measured)
    with ScoreCAM(model, layer, batch_size=16) as extractor:
        with torch.no_grad():
            model(x)
        tc_score = extractor(k, normalized=False)[0][0].numpy()
    hw = tuple(x.shape[2:])
    far = {}
    for name, theirs, cls_ in [("gradcam", tc_gradcam, PgcGradCAM),
                               ("gradcampp", tc_pp, PgcGradCAMPlusPlus),
                               ("scorecam", tc_score, PgcScoreCAM)]:
        with cls_(model=model, target_layers=[model.get_submodule(layer)]) as cam:
            if name == "scorecam":
                cam.batch_size = 16
            reference = cam(input_tensor=x, targets=[ClassifierOutputTarget(k)])[0]
        far[name] = float(np.abs(finished(theirs, hw) - reference).max())
    # The finishing rule itself: Grad-CAM, where the libraries agree, lands on pytorch-grad-cam.
    assert far["gradcam"] < 1e-4, far
    return far


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    manifest = json.loads((args.out / "manifest.json").read_text())
    models = {name: mmf.load_model(args.out, name) for name in manifest["models"]}
    cases, far = [], {"gradcampp": 0.0, "scorecam": 0.0}
    for c in manifest["cases"]:
        if c["counterfactual"]:
            continue
        model, layer = models[c["model"]], c["layer"]
        x = load_file(str(args.out / c["expected"]))["input"]
        with torch.no_grad():
            logits = model(x)
        k = c["class"] if c["class"] is not None else int(logits[0].argmax())
        maps = {f"torchcam_{m}": torchcam_map(cls_, model, layer, x, k)
                for m, cls_ in TORCHCAM.items()}
        maps["captum_gradcam"] = captum_map(model, layer, x, k)
        # The two libraries agree with each other on Grad-CAM (a check on this script).
        assert rel(maps["captum_gradcam"], maps["torchcam_gradcam"]) < 1e-4, c["id"]
        guided = guided_agrees(model, x, k)
        assert guided < 1e-6, (c["id"], guided)
        d = differing(model, layer, x, k, maps["torchcam_gradcam"])
        far = {m: max(v, d[m]) for m, v in far.items()}
        h, w = maps["captum_gradcam"].shape
        cases.append({
            "id": c["id"],
            "model": c["model"],
            "layer": layer,
            "input_from": c["expected"],
            "class": k,
            "map_size": [h, w],
            "maps": {name: [float(v) for v in m.astype(np.float32).ravel()]
                     for name, m in maps.items()},
        })
        print(f"{c['id']}: class {k}, map {h}x{w}; TorchCAM vs pytorch-grad-cam (finished "
              f"maps): Grad-CAM++ {d['gradcampp']:.3g}, Score-CAM {d['scorecam']:.3g}")
    doc = {
        "generator": {
            "script": "tools/make_peer_fixtures.py",
            "torch": torch.__version__,
            "torchcam": torchcam.__version__,
            "captum": captum.__version__,
        },
        "notes": {
            "maps": "[h*w] row-major at the target layer's resolution, after the ReLU, "
                    "before any normalisation",
            "torchcam_<method>": "torchcam.methods.<Method>(model, layer)(class, "
                                 "model(x), normalized=False)[0][0]",
            "captum_gradcam": "LayerGradCam(model, layer).attribute(x, target=class, "
                              "relu_attributions=True)[0, 0]",
            "class": "the manifest case's class, else the argmax of the logits",
            "captum_guided_backprop": "GuidedBackprop(model).attribute(x, target=class) "
                                      "equals pytorch-grad-cam's GuidedBackpropReLUModel on "
                                      "every case (checked, < 1e-6): tests/methods.rs' guided "
                                      "fixtures stand for both",
        },
        "not_stored": {
            "torchcam_gradcampp": "TorchCAM 0.5.0's weights are sum_ij g^2 relu(g) "
                                  "(checked): finished as pytorch-grad-cam's, its maps are "
                                  f"up to {far['gradcampp']:.3g} from pytorch-grad-cam's",
            "torchcam_scorecam": "normalises each channel at the layer's resolution, then "
                                 "upsamples it with align_corners=False (pytorch-grad-cam: "
                                 "upsamples with align_corners=True, then normalises): "
                                 f"finished maps up to {far['scorecam']:.3g} from "
                                 "pytorch-grad-cam's",
        },
        "cases": cases,
    }
    (args.out / "peers.json").write_text(json.dumps(doc, indent=1) + "\n")
    print(f"wrote {args.out / 'peers.json'}: {len(cases)} cases")
    return 0


if __name__ == "__main__":
    sys.exit(main())

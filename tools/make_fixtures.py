#!/usr/bin/env python3
"""Regenerate the Grad-CAM parity fixtures under tests/fixtures/.

Everything here is deterministic (fixed seeds, one torch thread), so running
the script twice produces the same files up to float rounding noise of the
PyTorch CPU kernels.

Layout written (all paths relative to tests/fixtures/):

    manifest.json                 what the Rust tests iterate over
    vgg_bn_tiny.safetensors       narrowed VGG11-BN, F32
    resnet_tiny.safetensors       narrowed bottleneck ResNet, F16
    resnet_basic_tiny.safetensors narrowed BasicBlock ResNet, BF16
    images/{a,b,c,d}.png          synthetic test images (RGB, RGB, L, RGBA)
    expected/<case_id>.safetensors

Conventions that the Rust side mirrors:

* image loading: PIL ``ImageOps.exif_transpose(Image.open(p)).convert('RGB')``
  (upright by the EXIF orientation, as ``cv2.imread`` in pytorch-grad-cam's examples; RGBA
  drops alpha, L is replicated to three channels), then ``float32 / 255``;
* size "native": no resize; size S: ``cv2.resize(rgb_f32, (S, S),
  interpolation=cv2.INTER_LINEAR)`` applied to the float32 image;
* normalisation in float32: ``(rgb - mean) / std`` with the ImageNet mean/std,
  then HWC -> NCHW;
* the reference Grad-CAM is pytorch-grad-cam's ``GradCAM`` with
  ``ClassifierOutputTarget`` (or the negated target for counterfactual cases).

Each expected file holds (float32 unless noted):

    input       [1,3,H,W]  preprocessed tensor fed to the model
    logits      [1,10]
    class       int64 [1]  class whose score was back-propagated
    alpha       [1,K]      spatial mean of the gradient at the target layer
                           (already negated for counterfactual cases)
    activation  [1,K,h,w]  target-layer output
    cam         [1,H,W]    pytorch-grad-cam's normalised map at input size
    overlay     uint8 [H,W,3]  show_cam_on_image(rgb, cam[0], use_rgb=True),
                           native-size cases only
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
from pathlib import Path

import cv2
import numpy as np
import torch
import torchvision
from PIL import Image, ImageOps
from safetensors.torch import save_file
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck

import pytorch_grad_cam
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.image import show_cam_on_image
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "tests" / "fixtures"

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)

NUM_CLASSES = 10
GRAD_CAM_VERSION = "1.5.7"


# --------------------------------------------------------------------------
# Models (module names follow torchvision's state_dict naming exactly)
# --------------------------------------------------------------------------

VGG_TINY_CFG = [8, "M", 16, "M", 24, 24, "M", 32, 32, "M", 32, 32, "M"]


def vgg_features(cfg):
    """Same layer order as torchvision's make_layers(cfg, batch_norm=True)."""
    layers: list[nn.Module] = []
    channels = 3
    for item in cfg:
        if item == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            layers.append(nn.Conv2d(channels, item, kernel_size=3, padding=1))
            layers.append(nn.BatchNorm2d(item))
            layers.append(nn.ReLU(inplace=True))
            channels = item
    return nn.Sequential(*layers), channels


class TinyVGG(nn.Module):
    def __init__(self, cfg, hidden=64, num_classes=NUM_CLASSES):
        super().__init__()
        self.features, channels = vgg_features(cfg)
        self.avgpool = nn.AdaptiveAvgPool2d((7, 7))
        self.classifier = nn.Sequential(
            nn.Linear(channels * 7 * 7, hidden),
            nn.ReLU(True),
            nn.Dropout(),
            nn.Linear(hidden, hidden),
            nn.ReLU(True),
            nn.Dropout(),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x):
        x = self.features(x)
        x = self.avgpool(x)
        x = torch.flatten(x, 1)
        return self.classifier(x)


class TinyResNet(nn.Module):
    """torchvision-style ResNet (v1.5: stride on the 3x3 conv) with free widths.

    The residual blocks are torchvision's own BasicBlock / Bottleneck classes,
    so the forward pass is identical to torchvision's for the same weights.
    """

    def __init__(self, block, layers, stem, planes, num_classes=NUM_CLASSES):
        super().__init__()
        self.inplanes = stem
        self.conv1 = nn.Conv2d(3, stem, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(stem)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(block, planes[0], layers[0], stride=1)
        self.layer2 = self._make_layer(block, planes[1], layers[1], stride=2)
        self.layer3 = self._make_layer(block, planes[2], layers[2], stride=2)
        self.layer4 = self._make_layer(block, planes[3], layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(planes[3] * block.expansion, num_classes)

    def _make_layer(self, block, planes, blocks, stride):
        out_channels = planes * block.expansion
        downsample = None
        if stride != 1 or self.inplanes != out_channels:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, out_channels, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )
        blocks_list = [block(self.inplanes, planes, stride, downsample)]
        self.inplanes = out_channels
        for _ in range(1, blocks):
            blocks_list.append(block(self.inplanes, planes))
        return nn.Sequential(*blocks_list)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = torch.flatten(self.avgpool(x), 1)
        return self.fc(x)


# Per model: constructor, the torchvision reference used to check key names,
# storage dtype, and the description written to the manifest.
MODEL_SPECS = {
    "vgg_bn_tiny": dict(
        seed=1001,
        build=lambda: TinyVGG(VGG_TINY_CFG),
        reference=lambda: torchvision.models.vgg.VGG(
            torchvision.models.vgg.make_layers(VGG_TINY_CFG, batch_norm=True),
            num_classes=NUM_CLASSES, init_weights=False),
        dtype=torch.float32,
        manifest=dict(arch="vgg11_bn", dtype="F32",
                      config=dict(cfg=VGG_TINY_CFG, hidden=64, num_classes=NUM_CLASSES)),
    ),
    "resnet_tiny": dict(
        seed=2002,
        build=lambda: TinyResNet(Bottleneck, [2, 1, 2, 1], 8, [4, 8, 12, 16]),
        reference=lambda: torchvision.models.resnet.ResNet(
            Bottleneck, [2, 1, 2, 1], num_classes=NUM_CLASSES),
        dtype=torch.float16,
        manifest=dict(arch="resnet_bottleneck", dtype="F16",
                      config=dict(block="bottleneck", layers=[2, 1, 2, 1], stem=8,
                                  planes=[4, 8, 12, 16], expansion=4,
                                  num_classes=NUM_CLASSES)),
    ),
    "resnet_basic_tiny": dict(
        seed=3003,
        build=lambda: TinyResNet(BasicBlock, [1, 1, 1, 1], 8, [8, 16, 16, 24]),
        reference=lambda: torchvision.models.resnet.ResNet(
            BasicBlock, [1, 1, 1, 1], num_classes=NUM_CLASSES),
        dtype=torch.bfloat16,
        manifest=dict(arch="resnet_basic", dtype="BF16",
                      config=dict(block="basic", layers=[1, 1, 1, 1], stem=8,
                                  planes=[8, 16, 16, 24], expansion=1,
                                  num_classes=NUM_CLASSES)),
    ),
}


@torch.no_grad()
def randomise(model: nn.Module, seed: int) -> None:
    """Random weights plus random BatchNorm statistics, scaled to keep O(1) activations."""
    g = torch.Generator().manual_seed(seed)
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            fan_in = m.in_channels // m.groups * m.kernel_size[0] * m.kernel_size[1]
            m.weight.normal_(0.0, math.sqrt(2.0 / fan_in), generator=g)
            if m.bias is not None:
                m.bias.normal_(0.0, 0.1, generator=g)
        elif isinstance(m, nn.BatchNorm2d):
            m.running_mean.normal_(0.0, 0.1, generator=g)
            m.running_var.uniform_(0.5, 1.5, generator=g)
            m.weight.uniform_(0.5, 1.5, generator=g)
            m.bias.normal_(0.0, 0.1, generator=g)
        elif isinstance(m, nn.Linear):
            gain = 1.0 if m is linears[-1] else 2.0
            m.weight.normal_(0.0, math.sqrt(gain / m.in_features), generator=g)
            m.bias.normal_(0.0, 0.1, generator=g)


@torch.no_grad()
def round_to_storage_dtype(model: nn.Module, dtype: torch.dtype) -> None:
    """Round every floating tensor to `dtype` and back, in place, so that the
    f32 model that produces the expectations uses exactly the stored values."""
    if dtype == torch.float32:
        return
    for tensor in model.state_dict().values():
        if tensor.is_floating_point():
            tensor.copy_(tensor.to(dtype).to(torch.float32))


def build_model(name: str) -> tuple[nn.Module, dict[str, torch.Tensor]]:
    spec = MODEL_SPECS[name]
    torch.manual_seed(spec["seed"])
    model = spec["build"]()
    ours = list(model.state_dict().keys())
    ref = list(spec["reference"]().state_dict().keys())
    if ours != ref:
        missing = sorted(set(ref) - set(ours))
        extra = sorted(set(ours) - set(ref))
        raise SystemExit(f"{name}: state_dict names differ from torchvision "
                         f"(missing {missing[:5]}, extra {extra[:5]})")
    randomise(model, spec["seed"])
    round_to_storage_dtype(model, spec["dtype"])
    model.eval()
    stored = {}
    for key, tensor in model.state_dict().items():
        if tensor.is_floating_point():
            tensor = tensor.to(spec["dtype"])
        stored[key] = tensor.detach().clone().contiguous()
    return model, stored


# --------------------------------------------------------------------------
# Images
# --------------------------------------------------------------------------

IMAGE_SPECS = {
    # name: (width, height, PIL mode, seed)
    "a": (97, 75, "RGB", 11),
    "b": (64, 80, "RGB", 22),
    "c": (71, 53, "L", 33),
    "d": (90, 66, "RGBA", 44),
}


def smooth_field(rng: np.random.RandomState, h: int, w: int) -> np.ndarray:
    """A sum of gaussian blobs over a random linear ramp, min-max scaled to [0, 1]."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    field = rng.uniform(-1, 1) * xx / w + rng.uniform(-1, 1) * yy / h
    for _ in range(rng.randint(4, 9)):
        cx, cy = rng.uniform(0, w), rng.uniform(0, h)
        sigma = rng.uniform(0.06, 0.3) * max(h, w)
        amp = rng.uniform(-1.5, 1.5)
        field += amp * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * sigma ** 2))
    # One hard-edged rectangle so there is some high-frequency structure too.
    x0, y0 = rng.randint(0, w // 2), rng.randint(0, h // 2)
    x1, y1 = x0 + rng.randint(w // 6, w // 2), y0 + rng.randint(h // 6, h // 2)
    field[y0:y1, x0:x1] += rng.uniform(-0.8, 0.8)
    field -= field.min()
    field /= max(field.max(), 1e-12)
    return field


def make_image(name: str) -> Image.Image:
    w, h, mode, seed = IMAGE_SPECS[name]
    rng = np.random.RandomState(seed)
    channels = {"L": 1, "RGB": 3, "RGBA": 3}[mode]
    planes = []
    for _ in range(channels):
        plane = 0.05 + 0.9 * smooth_field(rng, h, w)
        plane += rng.normal(0.0, 0.02, size=(h, w))
        planes.append(plane)
    if mode == "RGBA":
        alpha = 0.25 + 0.75 * smooth_field(rng, h, w)  # never fully transparent
        planes.append(alpha)
    arr = np.clip(np.stack(planes, axis=-1) * 255.0 + 0.5, 0, 255).astype(np.uint8)
    if mode == "L":
        arr = arr[..., 0]
    return Image.fromarray(arr, mode=mode)


def load_rgb(path: Path) -> np.ndarray:
    img = ImageOps.exif_transpose(Image.open(path)).convert("RGB")
    return np.asarray(img).astype(np.float32) / 255.0


def preprocess(rgb: np.ndarray, size) -> torch.Tensor:
    if size != "native":
        rgb = cv2.resize(rgb, (size, size), interpolation=cv2.INTER_LINEAR)
    x = (rgb - IMAGENET_MEAN) / IMAGENET_STD
    return torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)[None])).float()


# --------------------------------------------------------------------------
# Cases
# --------------------------------------------------------------------------

class NegatedClassTarget:
    """Counterfactual target: the negated score of one class."""

    def __init__(self, category: int):
        self.category = category

    def __call__(self, model_output):
        if model_output.ndim == 1:
            return -model_output[self.category]
        return -model_output[:, self.category]


# Explicit-class and counterfactual overrides, keyed by (model, layer, image, size).
EXPLICIT_CLASS = {
    ("vgg_bn_tiny", "features.27", "b", "native"): 5,
    ("resnet_tiny", "layer4", "c", "native"): 3,
}
COUNTERFACTUAL = {
    ("vgg_bn_tiny", "features.27", "c", "native"),
    ("resnet_tiny", "layer4", "a", 64),
}


def case_list():
    combos = []
    for layer in ("features.27", "features.28"):
        for img in "abcd":
            combos.append(("vgg_bn_tiny", layer, img, "native"))
        for img in "ab":
            combos.append(("vgg_bn_tiny", layer, img, 64))
    for img in "abcd":
        combos.append(("resnet_tiny", "layer4", img, "native"))
    for img in "ab":
        combos.append(("resnet_tiny", "layer4", img, 64))
    combos.append(("resnet_tiny", "layer3", "a", "native"))
    for img in "ac":
        combos.append(("resnet_basic_tiny", "layer4", img, "native"))

    cases = []
    for combo in combos:
        model, layer, img, size = combo
        cls = EXPLICIT_CLASS.get(combo)
        cf = combo in COUNTERFACTUAL
        case_id = f"{model}__{layer}__{img}__{size}"
        if cls is not None:
            case_id += f"__class{cls}"
        if cf:
            case_id += "__counterfactual"
        cases.append(dict(id=case_id, model=model, layer=layer, image=f"images/{img}.png",
                          size=size, **{"class": cls}, counterfactual=cf,
                          expected=f"expected/{case_id}.safetensors"))
    return cases


def reference_cam(alpha: np.ndarray, activation: np.ndarray, width: int, height: int) -> np.ndarray:
    """Independent re-computation of the map from the stored alpha/activation."""
    cam = np.maximum((alpha[:, :, None, None] * activation).sum(axis=1), 0)[0]
    cam = cam - cam.min()
    cam = cam / (1e-7 + cam.max())
    cam = cv2.resize(cam.astype(np.float32), (width, height))
    cam = cam - cam.min()
    cam = cam / (1e-7 + cam.max())
    return cam[None]


def grad_cam(model: nn.Module, layer: nn.Module, x: torch.Tensor, targets):
    """Run pytorch-grad-cam and keep copies of what its hooks recorded."""
    with GradCAM(model=model, target_layers=[layer]) as cam_extractor:
        cam = cam_extractor(input_tensor=x, targets=targets)
        logits = cam_extractor.outputs.detach().clone()
        activation = cam_extractor.activations_and_grads.activations[0].detach().clone()
        gradient = cam_extractor.activations_and_grads.gradients[0].detach().clone()
    return np.asarray(cam, dtype=np.float32), logits, activation, gradient


def run_case(case, model: nn.Module, rgb_native: np.ndarray):
    x = preprocess(rgb_native, case["size"])
    layer = model.get_submodule(case["layer"])
    with torch.no_grad():
        argmax = int(model(x).argmax(dim=1).item())
    cls = case["class"] if case["class"] is not None else argmax
    if case["class"] is not None and case["class"] == argmax:
        raise SystemExit(f"{case['id']}: explicit class {cls} equals argmax; pick another")

    if case["counterfactual"]:
        targets = [NegatedClassTarget(cls)]
    elif case["class"] is not None:
        targets = [ClassifierOutputTarget(cls)]
    else:
        targets = None  # pytorch-grad-cam picks the argmax itself

    cam, logits, activation, gradient = grad_cam(model, layer, x, targets)
    grads = gradient.numpy()
    alpha = np.mean(grads, axis=(2, 3))  # exactly what GradCAM.get_cam_weights does

    tensors = {
        "input": x.contiguous(),
        "logits": logits.float().contiguous(),
        "class": torch.tensor([cls], dtype=torch.int64),
        "alpha": torch.from_numpy(np.ascontiguousarray(alpha, dtype=np.float32)),
        "activation": activation.float().contiguous(),
        "cam": torch.from_numpy(np.ascontiguousarray(cam)),
    }
    if case["size"] == "native":
        overlay = show_cam_on_image(rgb_native, cam[0], use_rgb=True)
        tensors["overlay"] = torch.from_numpy(np.ascontiguousarray(overlay, dtype=np.uint8))

    # ---- sanity checks -------------------------------------------------
    h, w = x.shape[2], x.shape[3]
    assert cam.shape == (1, h, w), (case["id"], cam.shape)
    assert int(logits.argmax()) == argmax, case["id"]
    assert abs(float(cam.max()) - 1.0) < 1e-3, f"{case['id']}: cam max {cam.max()}"
    assert float(cam.min()) >= 0.0, case["id"]
    assert (cam > 1e-3).mean() > 0.01, f"{case['id']}: cam nearly all zero"
    again = reference_cam(alpha, activation.numpy(), w, h)
    err = float(np.abs(again - cam).max())
    assert err < 1e-4, f"{case['id']}: stored alpha/activation do not reproduce cam (err {err})"
    if case["counterfactual"]:
        # alpha must be exactly the negation of the plain class-score alpha.
        _, _, _, plain = grad_cam(model, layer, x, [ClassifierOutputTarget(cls)])
        plain_alpha = np.mean(plain.numpy(), axis=(2, 3))
        assert np.allclose(alpha, -plain_alpha, rtol=1e-5, atol=1e-7), case["id"]
    return tensors


# --------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------

def dir_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT,
                        help="fixture directory (default: tests/fixtures)")
    args = parser.parse_args()
    out: Path = args.out

    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)

    # Start from a clean slate for everything this script owns.
    for sub in ("images", "expected"):
        shutil.rmtree(out / sub, ignore_errors=True)
        (out / sub).mkdir(parents=True, exist_ok=True)
    for name in MODEL_SPECS:
        (out / f"{name}.safetensors").unlink(missing_ok=True)

    # Images
    rgbs = {}
    for name, (w, h, mode, _) in IMAGE_SPECS.items():
        path = out / "images" / f"{name}.png"
        make_image(name).save(path, optimize=True)
        rgbs[name] = load_rgb(path)
        assert rgbs[name].shape == (h, w, 3)

    # Models
    models = {}
    manifest_models = {}
    for name, spec in MODEL_SPECS.items():
        model, stored = build_model(name)
        path = out / f"{name}.safetensors"
        save_file(stored, str(path), metadata={"arch": spec["manifest"]["arch"]})
        size = path.stat().st_size
        assert size < 1_000_000, f"{name} is {size} bytes"
        models[name] = model
        manifest_models[name] = dict(file=path.name, **spec["manifest"])
        print(f"model {name:18s} {spec['manifest']['dtype']:4s} "
              f"{sum(t.numel() for t in stored.values()):7d} values  {size:7d} bytes")

    # Cases
    cases = case_list()
    logits_seen: dict[str, dict[tuple, torch.Tensor]] = {}
    print(f"\n{'case':58s} {'input':>10s} {'act':>14s} cls  logit-range      cam>0.5")
    for case in cases:
        img = Path(case["image"]).stem
        tensors = run_case(case, models[case["model"]], rgbs[img])
        save_file(tensors, str(out / case["expected"]))
        logits_seen.setdefault(case["model"], {})[(img, case["size"])] = tensors["logits"]
        lg = tensors["logits"]
        inp = "x".join(str(s) for s in tensors["input"].shape[2:])
        act = "x".join(str(s) for s in tensors["activation"].shape[1:])
        print(f"{case['id']:58s} {inp:>10s} {act:>14s} {int(tensors['class'][0]):3d}  "
              f"[{float(lg.min()):+6.2f},{float(lg.max()):+6.2f}]  "
              f"{float((tensors['cam'] > 0.5).float().mean()):.3f}")

    # Logits must differ between images / sizes for each model.
    for model_name, per_input in logits_seen.items():
        keys = list(per_input)
        for i in range(len(keys)):
            for j in range(i + 1, len(keys)):
                diff = float((per_input[keys[i]] - per_input[keys[j]]).abs().max())
                assert diff > 1e-2, f"{model_name}: logits of {keys[i]} and {keys[j]} coincide"

    manifest = {
        "generator": {
            "torch": torch.__version__,
            "torchvision": torchvision.__version__,
            "grad_cam": GRAD_CAM_VERSION,
            "numpy": np.__version__,
            "opencv": cv2.__version__,
            "pillow": Image.__version__,
        },
        "preprocess": {
            "load": "PIL convert('RGB'), float32 / 255",
            "resize": "cv2.resize INTER_LINEAR on float32 HWC image (only when size is an integer)",
            "mean": IMAGENET_MEAN.tolist(),
            "std": IMAGENET_STD.tolist(),
            "layout": "NCHW float32",
        },
        "models": manifest_models,
        "cases": cases,
    }
    installed = getattr(pytorch_grad_cam, "__version__", None)
    if installed and installed != GRAD_CAM_VERSION:
        print(f"warning: pytorch_grad_cam reports {installed}", file=sys.stderr)
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")

    total = dir_size(out)
    print(f"\n{len(cases)} cases, fixtures total {total / 1e6:.2f} MB in {out}")
    assert total < 4_500_000, "fixtures grew past the size budget"
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Add parity fixtures for the rest of the CAM family and guided backprop.

Reference: pytorch-grad-cam 1.5.7 (GradCAMPlusPlus, XGradCAM, HiResCAM,
LayerCAM, GradCAMElementWise, ScoreCAM, AblationCAM, FullGrad, EigenCAM, EigenGradCAM,
KPCA_CAM, FEM, ShapleyCAM, SegEigenCAM, RefineCAM, SESS, FinerCAM over several of them, the softmax and ReST model
targets, the `eigen_smooth=True` option of the others, GuidedBackpropReLUModel, and Guided Grad-CAM as the library's
README builds it).

This script only ADDS files under tests/fixtures/; it never touches what
tools/make_fixtures.py owns (manifest.json, the models, the images and the
existing expected/*.safetensors). The models and images are read back from
the committed fixture files, so the expectations are computed from exactly
the values the Rust tests load.

Written (relative to tests/fixtures/):

    methods.json                      manifest of the cases below
    expected/<id>.safetensors         one file per (case, method)

CAM-method files (float32 unless noted):

    logits      [1,10]
    class       int64 [1]      argmax class (negated score for counterfactual)
    activation  [1,K,h,w]      target-layer output
    gradient    [1,K,h,w]      d(target)/d(activation), sign as used (i.e. of
                               the negated score for counterfactual cases);
                               absent for ScoreCAM (no backward pass)
    weights     [1,K]          GradCAMPlusPlus / XGradCAM / ScoreCAM / AblationCAM: the
                               array get_cam_weights returned inside the call
    projection  [1,h,w]        EigenCAM / EigenGradCAM / eigen_smooth cases only:
                               get_2d_projection's output (before the ReLU), the
                               first principal component with LAPACK's sign
    cam         [1,H,W]        what the method object returned
    overlay     uint8 [H,W,3]  show_cam_on_image(rgb, cam[0], use_rgb=True),
                               native-size cases only
    input       [1,3,H,W]      only with --embed-inputs (see "input_from")

The preprocessed input depends only on (image, size), and every such pair
already has a committed file in manifest.json holding it; each methods.json
case names that file in "input_from" (checked bit-for-bit here) instead of
duplicating ~87 kB per file, which keeps the addition under 5.5 MB. Pass
--embed-inputs to store `input` in every CAM-method file as well.

Guided files (<model>__<image>__<size>__guided):

    input              [1,3,H,W]
    logits             [1,10]
    class              int64 [1]   argmax
    guided             [H,W,3]     GuidedBackpropReLUModel(model)(input), HWC
    guided_png         uint8 [H,W,3]  deprocess_image(guided)
    cam                [1,H,W]     GradCAM(model, [layer])(input) (argmax class)
    guided_gradcam_png uint8 [H,W,3]  deprocess_image(stack([cam[0]]*3, -1) * guided)
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")  # ScoreCAM wraps its batches in tqdm

import cv2
import numpy as np
import torch
import torchvision
from PIL import Image
from safetensors.torch import load_file, save_file

from pytorch_grad_cam import (FEM, SESS, AblationCAM, RefineCAM, EigenCAM, EigenGradCAM, FinerCAM, FullGrad,
                              GradCAM, SegEigenCAM, ShapleyCAM,
                              GradCAMElementWise,
                              GradCAMPlusPlus, GuidedBackpropReLUModel, HiResCAM, KPCA_CAM,
                              LayerCAM, ScoreCAM, XGradCAM)
from pytorch_grad_cam.utils.image import deprocess_image, show_cam_on_image
from pytorch_grad_cam.utils.model_targets import (ClassifierOutputReST,
                                                  ClassifierOutputSoftmaxTarget,
                                                  ClassifierOutputTarget)

sys.path.insert(0, str(Path(__file__).resolve().parent))
import make_fixtures as mf  # noqa: E402  (model classes, preprocessing, targets)

DEFAULT_OUT = mf.DEFAULT_OUT

METHODS = {
    # tag: (class, has weights, uses gradients)
    "gradcampp": (GradCAMPlusPlus, True, True),
    "xgradcam": (XGradCAM, True, True),
    "hirescam": (HiResCAM, False, True),
    "layercam": (LayerCAM, False, True),
    "scorecam": (ScoreCAM, True, False),
    "eigencam": (EigenCAM, False, False),
    "eigengradcam": (EigenGradCAM, False, True),
}
GRADIENT_METHODS = [m for m, (_, _, g) in METHODS.items() if g]
# Plain Grad-CAM's own files are make_fixtures.py's; here it runs only with eigen_smooth.
# GradCAMElementWise equals LayerCAM on the post-ReLU layers of CAM_CASES; it runs only in
# ELEMENTWISE_CASES, mostly on layers with negative activations, where the two differ.
CLASSES = dict(METHODS, gradcam=(GradCAM, True, True),
               gradcamelementwise=(GradCAMElementWise, False, True),
               ablationcam=(AblationCAM, True, False),
               kpcacam=(KPCA_CAM, False, False),
               fem=(FEM, False, False),
               shapleycam=(ShapleyCAM, True, True),
               segeigencam=(SegEigenCAM, False, True))

# gradcam's --target names for pytorch-grad-cam's model targets.
TARGETS = {"logit": ClassifierOutputTarget, "softmax": ClassifierOutputSoftmaxTarget,
           "rest": ClassifierOutputReST}
EIGEN_METHODS = ("eigencam", "eigengradcam")

# (model, layer, image, size, counterfactual)
CAM_CASES = [
    ("vgg_bn_tiny", "features.27", "a", "native", False),
    ("vgg_bn_tiny", "features.27", "d", "native", False),
    ("vgg_bn_tiny", "features.27", "b", 64, False),
    ("resnet_tiny", "layer4", "a", "native", False),
    ("resnet_tiny", "layer4", "c", "native", False),
    ("resnet_tiny", "layer3", "b", "native", False),
    ("resnet_basic_tiny", "layer4", "a", "native", False),
    ("vgg_bn_tiny", "features.27", "c", "native", True),
    ("resnet_tiny", "layer4", "a", 64, True),
]

# GradCAMElementWise: (model, layer, image, size, counterfactual, eigen_smooth). A BatchNorm's
# or a conv's output (before a ReLU) has negative activations. Not a ResNet's bn3: the block
# adds the identity to it in place and applies an in-place ReLU, and on the CPU the
# activation pytorch-grad-cam's hook keeps (`output.cpu().detach()`) shares that storage: it
# is overwritten with relu(bn3 + identity) before it is read.
ELEMENTWISE_CASES = [
    ("vgg_bn_tiny", "features.26", "b", 64, False, False),
    ("resnet_tiny", "layer3.1.conv3", "a", 64, False, False),
    ("resnet_tiny", "layer4", "a", 64, True, False),
    ("vgg_bn_tiny", "features.26", "b", 64, False, True),
]

# AblationCAM: (model, layer, image, size). Layers after a ReLU (with zeros, so
# pytorch-grad-cam's AblationLayer zeroes the channel, as gradcam does).
ABLATION_CASES = [
    ("resnet_tiny", "layer4", "a", "native"),
    ("vgg_bn_tiny", "features.27", "b", 64),
    ("resnet_basic_tiny", "layer3", "c", "native"),
]

# FullGrad (every bias layer; no target layer): (model, image, size, counterfactual). The
# VGG's convs have biases and BatchNorms; the ResNets' convs have none.
FULLGRAD_CASES = [
    ("vgg_bn_tiny", "b", 64, False),
    ("resnet_tiny", "a", "native", False),
    ("resnet_basic_tiny", "c", "native", False),
    ("resnet_tiny", "a", 64, True),
]

# Finer-CAM: FinerCAM(model, [layer], base_method)(x, alpha=, comparison_categories=ranks,
# target_idx=): (model, layer, image, size, base method, alpha, ranks, target), target None
# for the top class (target_idx=None) or "second" for the second-best (target_idx given).
FINER_CASES = [
    ("resnet_tiny", "layer4", "a", "native", "gradcam", 1.0, [1, 2, 3], None),
    ("vgg_bn_tiny", "features.27", "b", 64, "layercam", 0.6, [1, 3], None),
    ("resnet_basic_tiny", "layer3", "c", "native", "gradcampp", 1.0, [2, 12], "second"),
    ("vgg_bn_tiny", "features.27", "a", "native", "fullgrad", 1.0, [1, 2, 3], None),
]

# KPCA-CAM with its defaults (sigmoid kernel, gamma 1/K): (model, layer, image, size).
KPCA_CASES = [
    ("resnet_tiny", "layer4", "a", "native", "sigmoid", None),
    ("vgg_bn_tiny", "features.27", "b", 64, "sigmoid", None),
    ("resnet_basic_tiny", "layer3", "c", "native", "sigmoid", None),
    # KPCA_CAM(kernel=..., gamma=...): scikit-learn's other kernels.
    ("resnet_tiny", "layer3", "b", "native", "rbf", None),
    ("vgg_bn_tiny", "features.27", "b", 64, "poly", 0.02),
    ("resnet_basic_tiny", "layer3", "b", 64, "cosine", None),
    ("resnet_tiny", "layer2", "a", 64, "linear", None),
]

# FEM(model, [layer], k=k): (model, layer, image, size, k); 2 is pytorch-grad-cam's default.
FEM_CASES = [
    ("resnet_tiny", "layer4", "a", "native", 2.0),
    ("vgg_bn_tiny", "features.27", "b", 64, 2.0),
    ("resnet_basic_tiny", "layer3", "c", "native", 1.0),
]

# SegEigenCAM: the first principal component of |g| * A, its sign chosen so the larger
# magnitude is positive (deterministic): (model, layer, image, size).
SEG_EIGEN_CASES = [
    ("resnet_tiny", "layer4", "a", "native"),
    ("vgg_bn_tiny", "features.27", "b", 64),
    ("resnet_basic_tiny", "layer3", "c", "native"),
]

# ShapleyCAM and other methods under another model target: (model, layer, image, size,
# method, target). ShapleyCAM under the logit target is Grad-CAM (its Hessian term is zero
# through ReLU layers); the softmax and ReST targets give it one: through the affine head
# (layer4), through residual blocks (layer3) and through VGG's max pool and ReLU classifier.
TARGET_CASES = [
    ("resnet_tiny", "layer4", "a", "native", "shapleycam", "rest"),
    ("vgg_bn_tiny", "features.27", "b", 64, "shapleycam", "softmax"),
    ("resnet_basic_tiny", "layer3", "c", "native", "shapleycam", "rest"),
    ("resnet_tiny", "layer4", "a", 64, "shapleycam", "logit"),
    # Inside a block, before its BatchNorm: the direction is scale * A, and the block's add
    # takes the shortcut from before the layer (no tangent there).
    ("resnet_tiny", "layer4.0.conv2", "b", 64, "shapleycam", "rest"),
    ("resnet_tiny", "layer4", "c", "native", "gradcam", "softmax"),
    ("vgg_bn_tiny", "features.27", "b", 64, "scorecam", "softmax"),
    ("resnet_tiny", "layer4", "a", "native", "ablationcam", "rest"),
]

# eigen_smooth=True: (model, layer, image, size, methods)
EIGEN_SMOOTH_CASES = [
    ("resnet_tiny", "layer4", "a", "native", ["gradcam", "hirescam"]),
    ("vgg_bn_tiny", "features.27", "a", "native", ["gradcam", "gradcampp", "layercam"]),
    ("vgg_bn_tiny", "features.27", "b", 64, ["gradcam"]),
    ("resnet_basic_tiny", "layer4", "c", "native", ["xgradcam", "scorecam"]),
]

# aug_smooth=True (test-time augmentation): (model, layer, image, size, methods)
AUG_SMOOTH_CASES = [
    ("resnet_tiny", "layer4", "a", "native", ["gradcam"]),
    ("vgg_bn_tiny", "features.27", "b", 64, ["gradcam", "layercam"]),
]

# SESS(model, [layer], base_method=...) with its defaults: (model, layer, image, size, base
# method, target). Square, landscape and portrait inputs (scaled copies keep their aspect).
SESS_CASES = [
    ("resnet_tiny", "layer4", "a", 64, "gradcam", "logit"),
    ("vgg_bn_tiny", "features.27", "a", "native", "gradcampp", "logit"),
    # The target also scores the windows, on their softmax probabilities: softmax's of a
    # softmax, and ReST's, negative for 10 classes, so every window weighs 1.
    ("resnet_tiny", "layer4", "b", "native", "gradcam", "softmax"),  # portrait
    ("vgg_bn_tiny", "features.27", "b", 64, "gradcam", "rest"),
]

# RefineCAM(model, layers, base_method=...): the layers' maps multiplied (gradcam's
# --layer-fusion product): (model, layers, image, size, base method).
REFINE_CASES = [
    ("resnet_tiny", ["layer2", "layer3", "layer4"], "a", "native", "gradcampp"),
    ("vgg_bn_tiny", ["features.20", "features.27"], "b", 64, "gradcam"),
]

# Several target layers: (model, layers, image, size, methods)
MULTI_LAYER_CASES = [
    ("resnet_tiny", ["layer3", "layer4"], "a", "native", ["gradcam", "layercam"]),
    ("vgg_bn_tiny", ["features.20", "features.27"], "b", 64, ["gradcam"]),
    ("resnet_basic_tiny", ["layer2", "layer4"], "c", "native", ["gradcampp"]),
]

# (model, image, size); the Grad-CAM layer is the model's default one.
GUIDED_CASES = [
    ("vgg_bn_tiny", "a", "native"),
    ("vgg_bn_tiny", "b", 64),
    ("resnet_tiny", "a", "native"),
    ("resnet_tiny", "d", "native"),
    ("resnet_basic_tiny", "c", "native"),
]
DEFAULT_LAYER = {"vgg_bn_tiny": "features.27", "resnet_tiny": "layer4",
                 "resnet_basic_tiny": "layer4"}


# --------------------------------------------------------------------------
# Loading what make_fixtures.py committed
# --------------------------------------------------------------------------

def load_model(fixtures: Path, name: str) -> torch.nn.Module:
    """Fresh f32 model holding exactly the committed (possibly F16/BF16) weights."""
    model = mf.MODEL_SPECS[name]["build"]()
    stored = load_file(str(fixtures / f"{name}.safetensors"))
    state = {k: (v.float() if v.is_floating_point() else v) for k, v in stored.items()}
    model.load_state_dict(state, strict=True)
    model.eval()
    return model


def input_sources(fixtures: Path) -> dict[tuple, str]:
    """(image, size) -> an existing manifest.json expected file holding that input."""
    manifest = json.loads((fixtures / "manifest.json").read_text())
    out: dict[tuple, str] = {}
    for case in manifest["cases"]:
        key = (Path(case["image"]).stem, case["size"])
        out.setdefault(key, case["expected"])
    return out


# --------------------------------------------------------------------------
# Independent re-computations (checks only; nothing here is stored)
# --------------------------------------------------------------------------

def min_max_resize(cam: np.ndarray, width: int, height: int) -> np.ndarray:
    cam = np.maximum(cam, 0)
    cam = cam - cam.min()
    cam = cam / (1e-7 + cam.max())
    cam = cv2.resize(cam.astype(np.float32), (width, height))
    cam = cam - cam.min()
    cam = cam / (1e-7 + cam.max())
    return cam


def check_weights(method: str, act: np.ndarray, grad: np.ndarray, weights: np.ndarray):
    """Re-derive the gradient-based weights in float64 and compare."""
    a, g = act.astype(np.float64), grad.astype(np.float64)
    s = a.sum(axis=(2, 3), keepdims=True)
    if method == "gradcampp":
        g2, g3 = g * g, g * g * g
        aij = np.where(g != 0, g2 / (2 * g2 + s * g3 + 1e-6), 0.0)
        ref = (np.maximum(g, 0) * aij).sum(axis=(2, 3))
    elif method == "xgradcam":
        ref = (g * a / (s + 1e-7)).sum(axis=(2, 3))
    else:
        return
    scale = max(float(np.abs(ref).max()), 1e-12)
    err = float(np.abs(ref - weights).max()) / scale
    assert err < 1e-4, f"{method}: weights differ from float64 recomputation ({err})"


def check_scorecam_weights(model, x, act: np.ndarray, cls: int, weights: np.ndarray,
                           target=None):
    """ScoreCAM from scratch: align_corners=True bilinear, per-channel min-max,
    one masked forward per channel, softmax over the channel scores (the logit's, or
    `target`'s of each masked output)."""
    score = target if target is not None else (lambda out: out[:, cls])
    with torch.no_grad():
        up = torch.nn.functional.interpolate(torch.from_numpy(act), size=x.shape[-2:],
                                             mode="bilinear", align_corners=True)[0]
        flat = up.reshape(up.shape[0], -1)
        lo, hi = flat.min(dim=1)[0], flat.max(dim=1)[0]
        masks = (up - lo[:, None, None]) / (hi - lo + 1e-8)[:, None, None]
        scores = torch.stack([score(model(x * m[None, None]))[0] for m in masks])
        ref = torch.softmax(scores, dim=0).numpy()[None]
    err = float(np.abs(ref - weights).max())
    assert err < 1e-5, f"scorecam: weights differ from recomputation ({err})"


def check_ablation_weights(model, layer_name: str, x, cls: int, weights: np.ndarray,
                           target=None):
    """AblationCAM from scratch: a forward hook zeroes one channel of the layer's output,
    w_k = (score - ablated score_k) / score, in float64 (the logit's, or `target`'s)."""
    layer = model.get_submodule(layer_name)
    score = target if target is not None else (lambda out: out[:, cls])
    with torch.no_grad():
        base = float(score(model(x))[0])
        ref = []
        for k in range(weights.shape[1]):
            def zero(module, inputs, output, k=k):
                output = output.clone()
                output[:, k] = 0
                return output
            handle = layer.register_forward_hook(zero)
            try:
                ref.append((base - float(score(model(x))[0])) / base)
            finally:
                handle.remove()
    ref = np.array(ref)[None]
    err = float(np.abs(ref - weights).max()) / max(float(np.abs(ref).max()), 1e-12)
    assert err < 1e-4, f"ablationcam: weights differ from recomputation ({err})"


# --------------------------------------------------------------------------
# Cases
# --------------------------------------------------------------------------

def projection_f64(x: np.ndarray) -> np.ndarray:
    """get_2d_projection of one [1,K,h,w] array, recomputed in float64."""
    m = x[0].reshape(x.shape[1], -1).T.astype(np.float64)
    m = m - m.mean(axis=0)
    _, _, vt = np.linalg.svd(m, full_matrices=False)
    return (m @ vt[0]).reshape(x.shape[2:])


def eigen_input(method: str, act: np.ndarray, grad, weights) -> np.ndarray:
    """What get_2d_projection receives: the method's weighted activations."""
    if method == "eigencam":
        return act
    if method in ("eigengradcam", "hirescam"):
        return grad * act
    if method == "segeigencam":
        return np.abs(grad) * act
    if method == "layercam":
        return np.maximum(grad, 0) * act
    if method == "gradcamelementwise":
        return np.maximum(grad * act, 0)
    return weights[:, :, None, None] * act


def checked_input(rgb, size, src_file, fixtures) -> torch.Tensor:
    """The preprocessed input, checked bit for bit against the committed file holding it."""
    x = mf.preprocess(rgb, size)
    assert torch.equal(load_file(str(fixtures / src_file))["input"], x)
    return x


def add_overlay(tensors: dict, rgb, cam, size) -> None:
    """show_cam_on_image's overlay of the case's cam, for native-size cases only."""
    if size == "native":
        overlay = show_cam_on_image(rgb, cam[0], use_rgb=True)
        tensors["overlay"] = torch.from_numpy(np.ascontiguousarray(overlay, dtype=np.uint8))


def run_method(method: str, model, layer_name: str, x: torch.Tensor, targets,
               eigen_smooth: bool = False, **options):
    cls_, has_weights, uses_grads = CLASSES[method]
    layer = model.get_submodule(layer_name)
    seen = {}
    with cls_(model=model, target_layers=[layer], **options) as obj:
        original_image = obj.get_cam_image

        def recording_image(*args, **kwargs):
            r = original_image(*args, **kwargs)
            seen["raw"] = np.array(r, copy=True)
            return r

        obj.get_cam_image = recording_image
        if has_weights:
            original = obj.get_cam_weights

            def recording(input_tensor, target_layer, targets_, activations, grads):
                w = original(input_tensor, target_layer, targets_, activations, grads)
                seen["weights"] = np.array(w, copy=True)
                return w

            obj.get_cam_weights = recording
        cam = obj(input_tensor=x, targets=targets, eigen_smooth=eigen_smooth)
        logits = obj.outputs.detach().clone()
        # ScoreCAM's masked forwards append more activations; [0] is the real one.
        activation = obj.activations_and_grads.activations[0].detach().clone()
        gradient = None
        if uses_grads:
            grads = obj.activations_and_grads.gradients
            # ShapleyCAM's double backward may pass the layer's hook again, and the hook
            # prepends: the first pass's gradient is the last.
            assert len(grads) in ((1, 2) if method == "shapleycam" else (1,)), (method, len(grads))
            gradient = grads[-1].detach().clone()
    return np.asarray(cam), logits, activation, gradient, seen.get("weights"), seen["raw"]


def cam_case(entry, method, model, rgb, src_file, fixtures, embed_inputs,
             eigen_smooth=False):
    model_name, layer, img, size, cf = entry
    x = mf.preprocess(rgb, size)
    with torch.no_grad():
        cls = int(model(x).argmax(dim=1).item())
    targets = [mf.NegatedClassTarget(cls)] if cf else [ClassifierOutputTarget(cls)]
    cam, logits, activation, gradient, weights, seen_raw = run_method(
        method, model, layer, x, targets, eigen_smooth)
    eigen = eigen_smooth or method in EIGEN_METHODS

    case_id = f"{model_name}__{layer}__{img}__{size}" + ("__counterfactual" if cf else "") \
        + f"__{method}" + ("__eigen_smooth" if eigen_smooth else "")
    h, w = x.shape[2], x.shape[3]

    # ---- checks ---------------------------------------------------------
    stored_input = load_file(str(fixtures / src_file))["input"]
    assert torch.equal(stored_input, x), f"{case_id}: input differs from {src_file}"
    assert cam.dtype == np.float32 and cam.shape == (1, h, w), (case_id, cam.dtype, cam.shape)
    assert int(logits.argmax()) == cls
    act = activation.numpy()
    if weights is not None:
        assert weights.dtype == np.float32 and weights.shape == act.shape[:2], \
            (case_id, weights.dtype, weights.shape)
    if method in ("gradcampp", "xgradcam"):
        check_weights(method, act, gradient.numpy(), weights)
    if method == "scorecam":
        check_scorecam_weights(model, x, act, cls, weights)
    if method == "ablationcam":
        assert act.min() == 0, f"{case_id}: no zero in the activation (AblationLayer's other rule)"
        check_ablation_weights(model, layer, x, cls, weights)
    if eigen:
        grad_np = gradient.numpy() if gradient is not None else None
        ref = projection_f64(eigen_input(method, act, grad_np, weights))
        raw = seen_raw[0]
        # A singular vector's sign is LAPACK's choice: compare up to it.
        err = min(float(np.abs(ref - raw).max()), float(np.abs(ref + raw).max()))
        err /= max(float(np.abs(raw).max()), 1e-12)
        assert err < 1e-4, f"{case_id}: projection differs from float64 SVD ({err})"
    elif method in ("gradcampp", "xgradcam", "scorecam", "ablationcam"):
        raw = (weights[:, :, None, None] * act).sum(axis=1)[0]
    elif method == "hirescam":
        raw = (gradient.numpy() * act).sum(axis=1)[0]
    elif method == "gradcamelementwise":
        raw = np.maximum(gradient.numpy() * act, 0).sum(axis=1)[0]
        if (act < 0).any():
            # Where activations go negative the case must tell it apart from LayerCAM.
            layercam = (np.maximum(gradient.numpy(), 0) * act).sum(axis=1)[0]
            assert np.abs(raw - layercam).max() > 1e-3 * np.abs(raw).max(), case_id
    else:
        raw = (np.maximum(gradient.numpy(), 0) * act).sum(axis=1)[0]
    degenerate = None
    if not np.isfinite(cam).all():
        degenerate = "non-finite cam"
    elif raw.max() <= 0:
        degenerate = "layer map has no positive value (all-zero cam)"
    elif abs(float(cam.max()) - 1.0) > 1e-3 or (cam > 1e-3).mean() <= 0.01:
        degenerate = f"cam max {cam.max():.4f}, {(cam > 1e-3).mean():.4f} above 1e-3"
    if degenerate:
        return case_id, None, degenerate
    err = float(np.abs(min_max_resize(raw, w, h) - cam[0]).max())
    assert err < 1e-4, f"{case_id}: stored tensors do not reproduce cam ({err})"
    if cf:
        _, _, _, plain, _, _ = run_method(method, model, layer, x, [ClassifierOutputTarget(cls)])
        assert torch.equal(gradient, -plain), f"{case_id}: gradient is not the negation"

    tensors = {
        "logits": logits.float().contiguous(),
        "class": torch.tensor([cls], dtype=torch.int64),
        "activation": activation.float().contiguous(),
        "cam": torch.from_numpy(np.ascontiguousarray(cam)),
    }
    if embed_inputs:
        tensors["input"] = x.contiguous()
    if gradient is not None:
        tensors["gradient"] = gradient.float().contiguous()
    if weights is not None:
        tensors["weights"] = torch.from_numpy(np.ascontiguousarray(weights))
    if eigen:
        tensors["projection"] = torch.from_numpy(np.ascontiguousarray(seen_raw))
    add_overlay(tensors, rgb, cam, size)
    return case_id, tensors, None


def aug_case(entry, method, model, rgb, src_file, fixtures):
    """obj(x, targets, aug_smooth=True): stores the plain input's logits and class (the
    object's own `outputs` are its last augmented copy's) and the mean cam."""
    model_name, layer_name, img, size = entry
    x = checked_input(rgb, size, src_file, fixtures)
    with torch.no_grad():
        logits = model(x)
    cls = int(logits.argmax(dim=1).item())
    targets = [ClassifierOutputTarget(cls)]
    cls_ = CLASSES[method][0]
    layer = model.get_submodule(layer_name)
    with cls_(model=model, target_layers=[layer]) as obj:
        cam = np.asarray(obj(input_tensor=x, targets=targets, aug_smooth=True))
    # The same from scratch: six plain calls on mirrored / scaled copies, mirrored back.
    cams = []
    for mirror in (False, True):
        for factor in (0.9, 1.0, 1.1):
            xa = (torch.flip(x, dims=[3]) if mirror else x) * factor
            with cls_(model=model, target_layers=[layer]) as obj:
                c = np.asarray(obj(input_tensor=xa, targets=targets))
            cams.append(c[:, :, ::-1] if mirror else c)
    ref = np.mean(np.float32(cams), axis=0)
    err = float(np.abs(ref - cam).max())
    assert err < 1e-5, f"aug_smooth differs from six plain calls ({err})"
    assert cam.shape == (1, x.shape[2], x.shape[3]) and float(cam.max()) > 0.5
    case_id = f"{model_name}__{layer_name}__{img}__{size}__{method}__aug_smooth"
    return case_id, {
        "logits": logits.float().contiguous(),
        "class": torch.tensor([cls], dtype=torch.int64),
        "cam": torch.from_numpy(np.ascontiguousarray(cam)),
    }


def multi_layer_case(entry, method, model, rgb, src_file, fixtures):
    """cls_(model, target_layers=[several])(x, targets): stores the plain logits and class
    and the aggregated cam, checked against the single-layer runs' raw maps."""
    model_name, layers, img, size = entry
    x = checked_input(rgb, size, src_file, fixtures)
    with torch.no_grad():
        logits = model(x)
    cls = int(logits.argmax(dim=1).item())
    targets = [ClassifierOutputTarget(cls)]
    cls_ = CLASSES[method][0]
    with cls_(model=model, target_layers=[model.get_submodule(l) for l in layers]) as obj:
        cam = np.asarray(obj(input_tensor=x, targets=targets))
    h, w = x.shape[2], x.shape[3]
    # From scratch: each layer's raw map, ReLU, min-max, resized; their mean, min-max.
    per_layer = []
    for layer in layers:
        raw = run_method(method, model, layer, x, targets)[5][0]
        m = np.maximum(raw, 0)
        m = m - m.min()
        m = m / (1e-7 + m.max())
        per_layer.append(cv2.resize(m.astype(np.float32), (w, h)))
    ref = np.mean(per_layer, axis=0)
    ref = ref - ref.min()
    ref = ref / (1e-7 + ref.max())
    err = float(np.abs(ref - cam[0]).max())
    assert err < 1e-5, f"multi-layer cam differs from the per-layer maps ({err})"
    case_id = f"{model_name}__{'+'.join(layers)}__{img}__{size}__{method}"
    return case_id, {
        "logits": logits.float().contiguous(),
        "class": torch.tensor([cls], dtype=torch.int64),
        "cam": torch.from_numpy(np.ascontiguousarray(cam)),
    }


def sess_case(entry, model, rgb, src_file, fixtures):
    """SESS(model, [layer], base_method=cls_)(x, targets): logits, class and the cam."""
    model_name, layer, img, size, method, target_name = entry
    x = checked_input(rgb, size, src_file, fixtures)
    with torch.no_grad():
        logits = model(x)
    cls = int(logits.argmax(dim=1).item())
    with SESS(model, [model.get_submodule(layer)], base_method=CLASSES[method][0]) as obj:
        cam = np.asarray(obj(input_tensor=x, targets=[TARGETS[target_name](cls)]))
        patches, _ = obj.collect_patches(x, min(x.shape[-2:]), min(x.shape[-2:]))
    assert float(cam.max()) > 0.99 and np.isfinite(cam).all()
    case_id = f"{model_name}__{layer}__{img}__{size}__{method}__sess" \
        + ("" if target_name == "logit" else f"__{target_name}")
    return case_id, {
        "logits": logits.float().contiguous(),
        "class": torch.tensor([cls], dtype=torch.int64),
        "cam": torch.from_numpy(np.ascontiguousarray(cam)),
    }, len(patches)


def refine_case(entry, model, rgb, src_file, fixtures):
    """RefineCAM(model, layers, base_method=cls_)(x, targets): logits, class and the cam,
    checked against the single-layer runs: each layer's map ReLU-ed, min-max normalised,
    resized, normalised again (the base method's output), their product normalised."""
    model_name, layers, img, size, method = entry
    x = checked_input(rgb, size, src_file, fixtures)
    with torch.no_grad():
        logits = model(x)
    cls = int(logits.argmax(dim=1).item())
    targets = [ClassifierOutputTarget(cls)]
    obj = RefineCAM(model, [model.get_submodule(l) for l in layers],
                    base_method=CLASSES[method][0])
    cam = np.asarray(obj(input_tensor=x, targets=targets))
    for base in obj.base_cam_per_layer:  # RefineCAM has no context manager: unhook by hand
        base.activations_and_grads.release()
    h, w = x.shape[2], x.shape[3]
    norm = lambda m: (m - m.min()) / (1e-7 + (m - m.min()).max())  # noqa: E731
    ref = np.ones((h, w), dtype=np.float64)
    for layer in layers:
        raw = run_method(method, model, layer, x, targets)[5][0]
        ref *= norm(cv2.resize(norm(np.maximum(raw, 0)).astype(np.float32), (w, h)))
    ref = norm(ref)
    err = float(np.abs(ref - cam[0]).max())
    assert err < 1e-5, f"RefineCAM cam differs from the per-layer maps ({err})"
    # The case must tell the product from the mean.
    assert (cam[0] > 1e-3).mean() < 0.99, "RefineCAM: a flat map"
    case_id = f"{model_name}__{'+'.join(layers)}__{img}__{size}__{method}__product"
    return case_id, {
        "logits": logits.float().contiguous(),
        "class": torch.tensor([cls], dtype=torch.int64),
        "cam": torch.from_numpy(np.ascontiguousarray(cam)),
    }


def fullgrad_case(entry, model, rgb, src_file, fixtures):
    """FullGrad(model, [])(x, targets): logits, class, cam (and the overlay at native size).
    The gradients of its ~all layers are not stored (the Rust test compares the map)."""
    model_name, img, size, cf = entry
    x = mf.preprocess(rgb, size)
    with torch.no_grad():
        logits = model(x)
    cls = int(logits.argmax(dim=1).item())
    targets = [mf.NegatedClassTarget(cls)] if cf else [ClassifierOutputTarget(cls)]
    stored_input = load_file(str(fixtures / src_file))["input"]
    assert torch.equal(stored_input, x), f"{model_name}: input differs from {src_file}"
    with FullGrad(model=model, target_layers=[]) as obj:
        n_bias = len(obj.bias_data)
        cam = np.asarray(obj(input_tensor=x, targets=targets))
        assert len(obj.activations_and_grads.gradients) == n_bias > 0
    assert cam.shape == (1, x.shape[2], x.shape[3]) and np.isfinite(cam).all()
    assert abs(float(cam.max()) - 1.0) < 1e-3, "FullGrad's map is min-max normalised"
    case_id = f"{model_name}__fullgrad__{img}__{size}" + ("__counterfactual" if cf else "")
    tensors = {
        "logits": logits.float().contiguous(),
        "class": torch.tensor([cls], dtype=torch.int64),
        "cam": torch.from_numpy(np.ascontiguousarray(cam)),
    }
    add_overlay(tensors, rgb, cam, size)
    return case_id, tensors, n_bias


def finer_case(entry, model, rgb, src_file, fixtures):
    """FinerCAM(model, [layer], base_method)(x, alpha, comparison_categories, target_idx):
    logits, the main class, the compared classes (as FinerCAM picks them), the cam, and for a
    Grad-CAM base its weights (the mean gradient of the Finer target)."""
    model_name, layer_name, img, size, method, alpha, ranks, target = entry
    x = checked_input(rgb, size, src_file, fixtures)
    with torch.no_grad():
        logits = model(x)
    out = logits.numpy()
    target_idx = None if target is None else int(np.argsort(-out[0])[1])
    # FinerCAM's own choice, redone: classes sorted by |logit - target logit|.
    t = out[0].max() if target_idx is None else out[0, target_idx]
    order = np.argsort(np.abs(out[0] - t))
    main = int(order[0])
    compared = [int(order[r]) for r in ranks if r < out.shape[1]]
    assert target_idx is None or main == target_idx
    fullgrad = method == "fullgrad"
    base = FullGrad if fullgrad else CLASSES[method][0]
    layers = [] if fullgrad else [model.get_submodule(layer_name)]
    with FinerCAM(model, layers, base_method=base) as obj:
        cam = np.asarray(obj(x, alpha=alpha, comparison_categories=ranks,
                             target_idx=target_idx))
        grads = obj.base_cam.activations_and_grads.gradients
        gradient = None if fullgrad else grads[0].detach().clone()
    assert cam.shape == (1, x.shape[2], x.shape[3]) and np.isfinite(cam).all()
    tag = "fullgrad" if fullgrad else layer_name
    case_id = f"{model_name}__{tag}__{img}__{size}__{method}__finer"
    tensors = {
        "logits": logits.float().contiguous(),
        "class": torch.tensor([main], dtype=torch.int64),
        "compared": torch.tensor(compared, dtype=torch.int64),
        "cam": torch.from_numpy(np.ascontiguousarray(cam)),
    }
    if method == "gradcam":
        tensors["weights"] = gradient.mean(dim=(2, 3)).float().contiguous()
    add_overlay(tensors, rgb, cam, size)
    return case_id, tensors, target_idx


def kpca_reference(act: np.ndarray, kernel: str = "sigmoid", gamma=None) -> np.ndarray:
    """KernelPCA(n_components=1, kernel=kernel, gamma=gamma).fit_transform in float64 from
    scratch: the centred kernel's top eigenvector (largest entry positive) times
    sqrt(eigenvalue); scikit-learn's defaults gamma 1/K, degree 3, coef0 1."""
    k = act.shape[0]
    m = act.reshape(k, -1).T.astype(np.float64)
    m = m - m.mean(axis=0)
    gm = 1.0 / k if gamma is None else gamma
    dots = m @ m.T
    if kernel == "sigmoid":
        g = np.tanh(gm * dots + 1.0)
    elif kernel == "poly":
        g = (gm * dots + 1.0) ** 3
    elif kernel == "rbf":
        sq = (m * m).sum(axis=1)
        g = np.exp(-gm * np.maximum(sq[:, None] + sq[None, :] - 2 * dots, 0))
    elif kernel == "cosine":
        norms = np.sqrt((m * m).sum(axis=1))
        norms[norms == 0] = 1.0
        g = dots / np.outer(norms, norms)
    else:
        g = dots
    one = np.full_like(g, 1.0 / g.shape[0])
    g = g - one @ g - g @ one + one @ g @ one
    vals, vecs = np.linalg.eigh(g)
    v = vecs[:, -1]
    v = v * np.sign(v[np.argmax(np.abs(v))])
    return (v * np.sqrt(max(vals[-1], 0.0))).reshape(act.shape[1:]), vals


def kpca_case(entry, model, rgb, src_file, fixtures):
    """KPCA_CAM(model, [layer])(x, targets): logits, class, cam and the projection before the
    ReLU (`projection`), checked against a float64 kernel PCA from scratch."""
    model_name, layer, img, size, kernel, gamma = entry
    x = checked_input(rgb, size, src_file, fixtures)
    with torch.no_grad():
        cls = int(model(x).argmax(dim=1).item())
    cam, logits, activation, _, _, raw = run_method(
        "kpcacam", model, layer, x, [ClassifierOutputTarget(cls)], kernel=kernel, gamma=gamma)
    ref, vals = kpca_reference(activation.numpy()[0], kernel, gamma)
    err = float(np.abs(ref - raw[0]).max()) / max(float(np.abs(raw).max()), 1e-12)
    gap = (vals[-1] - vals[-2]) / abs(vals[-1])
    assert err < 1e-3 and gap > 1e-2, f"{model_name} {layer}: err {err}, gap {gap}"
    assert float(cam.max()) > 0.99 and np.isfinite(cam).all()
    case_id = f"{model_name}__{layer}__{img}__{size}__kpcacam"
    if kernel != "sigmoid" or gamma is not None:
        case_id += f"_{kernel}" + ("" if gamma is None else f"_g{gamma:g}")
    tensors = {
        "logits": logits.float().contiguous(),
        "class": torch.tensor([cls], dtype=torch.int64),
        "projection": torch.from_numpy(np.ascontiguousarray(raw, dtype=np.float32)),
        "cam": torch.from_numpy(np.ascontiguousarray(cam)),
    }
    add_overlay(tensors, rgb, cam, size)
    return case_id, tensors, err, gap


def seg_eigen_case(entry, model, rgb, src_file, fixtures):
    """SegEigenCAM(model, [layer])(x, targets): logits, class, activation, gradient, the
    projection before the ReLU (`projection`, checked against a float64 SVD with the same sign
    rule) and cam."""
    model_name, layer, img, size = entry
    x = checked_input(rgb, size, src_file, fixtures)
    with torch.no_grad():
        cls = int(model(x).argmax(dim=1).item())
    cam, logits, activation, gradient, _, raw = run_method(
        "segeigencam", model, layer, x, [ClassifierOutputTarget(cls)])
    ref = projection_f64(eigen_input("segeigencam", activation.numpy(), gradient.numpy(), None))
    flipped = abs(ref.min()) > abs(ref.max())
    if flipped:
        ref = -ref
    err = float(np.abs(ref - raw[0]).max()) / max(float(np.abs(raw).max()), 1e-12)
    assert err < 1e-4, f"{model_name} {layer}: projection vs float64 ({err})"
    # The sign rule must be decided by a margin, not by rounding.
    margin = abs(abs(ref.min()) - abs(ref.max())) / max(float(np.abs(ref).max()), 1e-12)
    assert margin > 1e-3, f"{model_name} {layer}: |min| and |max| too close ({margin})"
    assert float(cam.max()) > 0.99 and np.isfinite(cam).all()
    case_id = f"{model_name}__{layer}__{img}__{size}__segeigencam"
    tensors = {
        "logits": logits.float().contiguous(),
        "class": torch.tensor([cls], dtype=torch.int64),
        "activation": activation.float().contiguous(),
        "gradient": gradient.float().contiguous(),
        "projection": torch.from_numpy(np.ascontiguousarray(raw, dtype=np.float32)),
        "cam": torch.from_numpy(np.ascontiguousarray(cam)),
    }
    add_overlay(tensors, rgb, cam, size)
    return case_id, tensors, f"vs float64 {err:.1e}, " + ("min flipped up" if flipped else "max kept")


def fem_case(entry, model, rgb, src_file, fixtures):
    """FEM(model, [layer], k=k)(x, targets): logits, class, activation, the channel weights
    (FEM's own float32 formula, which it keeps inside get_cam_image), cam. The weights are
    counts above a threshold: the case is refused if a float64 threshold counts differently
    (a value within rounding of it would make the fixture depend on summation order)."""
    model_name, layer, img, size, k = entry
    x = checked_input(rgb, size, src_file, fixtures)
    with torch.no_grad():
        cls = int(model(x).argmax(dim=1).item())
    layer_mod = model.get_submodule(layer)
    seen = {}
    with FEM(model=model, target_layers=[layer_mod], k=k) as obj:
        original = obj.get_cam_image

        def recording(*args, **kwargs):
            r = original(*args, **kwargs)
            seen["raw"] = np.array(r, copy=True)
            return r

        obj.get_cam_image = recording
        cam = np.asarray(obj(input_tensor=x, targets=[ClassifierOutputTarget(cls)]))
        logits = obj.outputs.detach().clone()
        activation = obj.activations_and_grads.activations[0].detach().clone()
    act = activation.numpy()
    th = act.mean(axis=(2, 3)) + k * act.std(axis=(2, 3))
    weights = (act > th[:, :, None, None]).mean(axis=(2, 3)).astype(np.float32)
    a64 = act.astype(np.float64)
    th64 = a64.mean(axis=(2, 3)) + k * a64.std(axis=(2, 3))
    w64 = (a64 > th64[:, :, None, None]).mean(axis=(2, 3))
    assert np.array_equal(weights, w64.astype(np.float32)), f"{model_name} {layer}: borderline"
    if k != 2.0:
        # The case must show that k is used: the default's weights differ.
        th2 = act.mean(axis=(2, 3)) + 2.0 * act.std(axis=(2, 3))
        assert not np.array_equal(weights, (act > th2[:, :, None, None]).mean(axis=(2, 3))), \
            f"{model_name} {layer}: k={k} weighs as the default"
    raw = (weights[:, :, None, None] * act).sum(axis=1)
    err = float(np.abs(raw - seen["raw"]).max()) / max(float(np.abs(raw).max()), 1e-12)
    assert err < 1e-5, f"{model_name} {layer}: FEM's map differs from the weights' ({err})"
    assert raw.max() > 0 and (weights > 0).mean() > 0.05, f"{model_name} {layer}: degenerate"
    assert float(cam.max()) > 0.99 and np.isfinite(cam).all()
    case_id = f"{model_name}__{layer}__{img}__{size}__fem" + ("" if k == 2.0 else f"_k{k:g}")
    tensors = {
        "logits": logits.float().contiguous(),
        "class": torch.tensor([cls], dtype=torch.int64),
        "activation": activation.float().contiguous(),
        "weights": torch.from_numpy(np.ascontiguousarray(weights)),
        "cam": torch.from_numpy(np.ascontiguousarray(cam)),
    }
    add_overlay(tensors, rgb, cam, size)
    return case_id, tensors, float((weights > 0).mean())


def shapley_reference(model, layer_name, x, cls, target):
    """ShapleyCAM's weights from scratch, in float64: mean over (h, w) of g − ½ H A, where g
    is the target's gradient at the layer and H A its derivative along A, by central
    differences of g at A(1 ± 1e-6) (a forward hook puts the changed activation in place)."""
    import copy
    m = copy.deepcopy(model).double().eval()
    layer = m.get_submodule(layer_name)
    xd = x.double()
    seen = {}
    h = layer.register_forward_hook(lambda mod, inp, out: seen.setdefault("a", out.detach().clone()))
    with torch.no_grad():
        m(xd)
    h.remove()
    a = seen["a"]

    def grad_at(ap):
        ap = ap.clone().requires_grad_(True)
        handle = layer.register_forward_hook(lambda mod, inp, out: ap)
        try:
            f = target(m(xd)).sum()
            (g,) = torch.autograd.grad(f, ap)
        finally:
            handle.remove()
        return g

    eps = 1e-6
    g = grad_at(a)
    hvp = (grad_at(a * (1 + eps)) - grad_at(a * (1 - eps))) / (2 * eps)
    return (g - 0.5 * hvp).mean(dim=(2, 3)).numpy(), g.mean(dim=(2, 3)).numpy()


def target_case(entry, model, rgb, src_file, fixtures):
    """A method under another model target: logits, class, activation, weights (what
    get_cam_weights returned), cam. ShapleyCAM's weights are checked against
    shapley_reference; Score-CAM's and Ablation-CAM's against the target's scores."""
    model_name, layer, img, size, method, target_name = entry
    x = checked_input(rgb, size, src_file, fixtures)
    with torch.no_grad():
        logits0 = model(x)
        cls = int(logits0.argmax(dim=1).item())
    target = TARGETS[target_name](cls)
    cam, logits, activation, gradient, weights, _ = run_method(method, model, layer, x, [target])
    if method == "shapleycam":
        ref, grad_mean = shapley_reference(model, layer, x, cls, target)
        scale = max(float(np.abs(ref).max()), 1e-12)
        err = float(np.abs(ref - weights).max()) / scale
        assert err < 1e-3, f"{model_name} {layer} {target_name}: ShapleyCAM weights vs float64 ({err})"
        gap = float(np.abs(ref - grad_mean).max()) / scale
        if target_name == "logit":
            assert gap < 1e-6, f"{model_name} {layer}: the logit's Hessian term is not zero ({gap})"
        else:
            assert gap > 1e-2, f"{model_name} {layer} {target_name}: no Hessian term ({gap})"
        note = f"vs float64 {err:.1e}, Hessian term {gap:.2f}"
    elif method == "scorecam":
        check_scorecam_weights(model, x, activation.numpy(), cls, weights, target)
        note = "scores checked"
    elif method == "ablationcam":
        check_ablation_weights(model, layer, x, cls, weights, target)
        note = "drops checked"
    else:
        note = ""
    if weights is None:
        weights = gradient.numpy().mean(axis=(2, 3))
    assert float(cam.max()) > 0.99 and np.isfinite(cam).all()
    case_id = f"{model_name}__{layer}__{img}__{size}__{method}__{target_name}"
    tensors = {
        "logits": logits.float().contiguous(),
        "class": torch.tensor([cls], dtype=torch.int64),
        "activation": activation.float().contiguous(),
        "weights": torch.from_numpy(np.ascontiguousarray(weights, dtype=np.float32)),
        "cam": torch.from_numpy(np.ascontiguousarray(cam)),
    }
    add_overlay(tensors, rgb, cam, size)
    return case_id, tensors, note


def guided_case(entry, fixtures, rgb):
    model_name, img, size = entry
    layer = DEFAULT_LAYER[model_name]
    model = load_model(fixtures, model_name)
    x = mf.preprocess(rgb, size)
    case_id = f"{model_name}__{img}__{size}__guided"

    # Grad-CAM first, on the untouched model (GuidedBackpropReLUModel swaps the
    # ReLU modules, and puts back fresh non-inplace nn.ReLU objects).
    with GradCAM(model=model, target_layers=[model.get_submodule(layer)]) as gc:
        grayscale_cam = gc(input_tensor=x, targets=None)[0, :]
        logits = gc.outputs.detach().clone()
    cls = int(logits.argmax())

    gb_model = GuidedBackpropReLUModel(model=model, device=None)
    gb = gb_model(x.clone(), target_category=None)  # clone: it sets requires_grad in place
    cam_mask = np.stack([grayscale_cam] * 3, axis=-1)  # == cv2.merge([g, g, g])
    assert np.array_equal(cam_mask, cv2.merge([grayscale_cam] * 3))
    cam_gb = deprocess_image(cam_mask * gb)
    gb_png = deprocess_image(gb)

    h, w = x.shape[2], x.shape[3]
    assert gb.dtype == np.float32 and gb.shape == (h, w, 3), (case_id, gb.dtype, gb.shape)
    assert np.isfinite(gb).all() and float(np.abs(gb).max()) > 0, f"{case_id}: zero guided"
    nz = float((gb != 0).mean())
    assert nz > 0.05, f"{case_id}: guided gradient only {nz:.3f} non-zero"
    assert grayscale_cam.dtype == np.float32 and grayscale_cam.shape == (h, w)
    assert abs(float(grayscale_cam.max()) - 1.0) < 1e-3
    # The model must be back to plain ReLUs and give the same logits.
    assert not any(type(m).__name__ == "GuidedBackpropReLUasModule" for m in model.modules())
    with torch.no_grad():
        assert torch.equal(model(x), logits), f"{case_id}: model changed by guided backprop"
    # Independent guided backprop: ReLU backward that also drops negative
    # incoming gradients, via full backward hooks on a fresh model.
    ref_model = load_model(fixtures, model_name)
    for m in ref_model.modules():
        if isinstance(m, torch.nn.ReLU):
            m.inplace = False
            m.register_full_backward_hook(lambda mod, gi, go: (gi[0].clamp(min=0),))
    xi = x.clone().requires_grad_(True)
    ref_model(xi)[0, cls].backward()
    ref = xi.grad[0].permute(1, 2, 0).numpy()
    err = float(np.abs(ref - gb).max()) / float(np.abs(gb).max())
    assert err < 1e-5, f"{case_id}: guided gradient differs from hook recomputation ({err})"

    tensors = {
        "input": x.contiguous(),
        "logits": logits.float().contiguous(),
        "class": torch.tensor([cls], dtype=torch.int64),
        "guided": torch.from_numpy(np.ascontiguousarray(gb)),
        "guided_png": torch.from_numpy(np.ascontiguousarray(gb_png, dtype=np.uint8)),
        "cam": torch.from_numpy(np.ascontiguousarray(grayscale_cam[None])),
        "guided_gradcam_png": torch.from_numpy(np.ascontiguousarray(cam_gb, dtype=np.uint8)),
    }
    return case_id, layer, tensors, nz


# --------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------

def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT,
                        help="fixture directory holding make_fixtures.py's output "
                             "(default: tests/fixtures)")
    parser.add_argument("--embed-inputs", action="store_true",
                        help="also store `input` in every CAM-method file (~+2.8 MB)")
    args = parser.parse_args()
    out: Path = args.out

    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)

    manifest = json.loads((out / "manifest.json").read_text())
    owned_by_manifest = {c["expected"] for c in manifest["cases"]}
    sources = input_sources(out)

    # Remove what a previous run of this script wrote (and only that).
    old = out / "methods.json"
    if old.exists():
        for case in json.loads(old.read_text())["cases"]:
            assert case["expected"] not in owned_by_manifest
            (out / case["expected"]).unlink(missing_ok=True)

    rgbs = {name: mf.load_rgb(out / "images" / f"{name}.png") for name in mf.IMAGE_SPECS}
    models = {name: load_model(out, name) for name in mf.MODEL_SPECS}

    cases, dropped, written = [], [], []
    print(f"{'case':66s} {'cls':>3s} {'act':>10s} cam>0.5")
    def add(entry, method, eigen_smooth):
        model_name, layer, img, size, cf = entry
        src = sources[(img, size)]
        case_id, tensors, why = cam_case(entry, method, models[model_name], rgbs[img],
                                         src, out, args.embed_inputs, eigen_smooth)
        if tensors is None:
            dropped.append((case_id, why))
            print(f"{case_id:66s} DROPPED: {why}")
            return
        rel = f"expected/{case_id}.safetensors"
        assert rel not in owned_by_manifest
        save_file(tensors, str(out / rel))
        written.append(rel)
        case = {"id": case_id, "model": model_name, "layer": layer,
                "image": f"images/{img}.png", "size": size, "class": None,
                "counterfactual": cf, "method": method, "expected": rel,
                "input_from": src}
        if eigen_smooth:
            case["eigen_smooth"] = True
        cases.append(case)
        act = "x".join(str(s) for s in tensors["activation"].shape[1:])
        sign = ""
        if "projection" in tensors:
            # gradcam orients the component to correlate with the channel sum; say whether
            # LAPACK's sign happened to agree (informational: the tests handle both).
            a = tensors["activation"].numpy()
            g = tensors["gradient"].numpy() if "gradient" in tensors else None
            w = tensors["weights"].numpy() if "weights" in tensors else None
            xin = eigen_input(method, a, g, w)[0]
            m = xin.reshape(xin.shape[0], -1)
            m = m - m.mean(axis=1, keepdims=True)
            agree = float((tensors["projection"].numpy()[0].ravel() * m.sum(axis=0)).sum()) >= 0
            sign = " sign agrees" if agree else " sign flipped"
        print(f"{case_id:66s} {int(tensors['class'][0]):3d} {act:>10s} "
              f"{float((tensors['cam'] > 0.5).float().mean()):.3f}{sign}")

    for entry in CAM_CASES:
        cf = entry[4]
        for method in (GRADIENT_METHODS if cf else list(METHODS)):
            add(entry, method, False)
    for model_name, layer, img, size, methods in EIGEN_SMOOTH_CASES:
        for method in methods:
            add((model_name, layer, img, size, False), method, True)
    for model_name, layer, img, size, cf, eigen_smooth in ELEMENTWISE_CASES:
        add((model_name, layer, img, size, cf), "gradcamelementwise", eigen_smooth)
    for model_name, layer, img, size in ABLATION_CASES:
        add((model_name, layer, img, size, False), "ablationcam", False)

    def store(case_id, tensors, model_name, layer, img, size, method, src, **extra):
        """Writes one expected file and its methods.json entry (keys in add()'s order)."""
        rel = f"expected/{case_id}.safetensors"
        assert rel not in owned_by_manifest
        save_file(tensors, str(out / rel))
        written.append(rel)
        cases.append({"id": case_id, "model": model_name, "layer": layer,
                      "image": f"images/{img}.png", "size": size, "class": None,
                      "counterfactual": False, "method": method, "expected": rel,
                      "input_from": src, **extra})

    for model_name, layer, img, size, methods in AUG_SMOOTH_CASES:
        src = sources[(img, size)]
        for method in methods:
            case_id, tensors = aug_case((model_name, layer, img, size), method,
                                        models[model_name], rgbs[img], src, out)
            store(case_id, tensors, model_name, layer, img, size, method, src,
                  aug_smooth=True)
            print(f"{case_id:66s} {int(tensors['class'][0]):3d} cam max "
                  f"{float(tensors['cam'].max()):.3f}")

    for model_name, img, size, cf in FULLGRAD_CASES:
        src = sources[(img, size)]
        case_id, tensors, n_bias = fullgrad_case((model_name, img, size, cf), models[model_name],
                                                 rgbs[img], src, out)
        store(case_id, tensors, model_name, DEFAULT_LAYER[model_name], img, size, "fullgrad",
              src)
        if cf:
            cases[-1]["counterfactual"] = True
        print(f"{case_id:66s} {int(tensors['class'][0]):3d} {n_bias} bias layers")

    for model_name, layers, img, size, methods in MULTI_LAYER_CASES:
        src = sources[(img, size)]
        for method in methods:
            case_id, tensors = multi_layer_case((model_name, layers, img, size), method,
                                                models[model_name], rgbs[img], src, out)
            store(case_id, tensors, model_name, ",".join(layers), img, size, method, src)
            print(f"{case_id:66s} {int(tensors['class'][0]):3d}")

    for entry in SESS_CASES:
        model_name, layer, img, size, method, target_name = entry
        src = sources[(img, size)]
        case_id, tensors, patches = sess_case(entry, models[model_name], rgbs[img], src, out)
        store(case_id, tensors, model_name, layer, img, size, method, src, sess={"scales": 12},
              **({} if target_name == "logit" else {"target": target_name}))
        print(f"{case_id:66s} {int(tensors['class'][0]):3d} {patches} patches")

    for entry in REFINE_CASES:
        model_name, layers, img, size, method = entry
        src = sources[(img, size)]
        case_id, tensors = refine_case(entry, models[model_name], rgbs[img], src, out)
        store(case_id, tensors, model_name, ",".join(layers), img, size, method, src,
              layer_fusion="product")
        print(f"{case_id:66s} {int(tensors['class'][0]):3d}")

    for entry in KPCA_CASES:
        model_name, layer, img, size, kernel, gamma = entry
        src = sources[(img, size)]
        case_id, tensors, err, gap = kpca_case(entry, models[model_name], rgbs[img], src, out)
        extra = {} if kernel == "sigmoid" and gamma is None else {
            "kpca": {"kernel": kernel, "gamma": gamma}}
        store(case_id, tensors, model_name, layer, img, size, "kpcacam", src, **extra)
        print(f"{case_id:66s} {int(tensors['class'][0]):3d} vs float64 {err:.1e}, "
              f"eigen gap {gap:.2f}")

    for entry in SEG_EIGEN_CASES:
        model_name, layer, img, size = entry
        src = sources[(img, size)]
        case_id, tensors, note = seg_eigen_case(entry, models[model_name], rgbs[img], src, out)
        store(case_id, tensors, model_name, layer, img, size, "segeigencam", src)
        print(f"{case_id:66s} {int(tensors['class'][0]):3d} {note}")

    for entry in FEM_CASES:
        model_name, layer, img, size, k = entry
        src = sources[(img, size)]
        case_id, tensors, share = fem_case(entry, models[model_name], rgbs[img], src, out)
        store(case_id, tensors, model_name, layer, img, size, "fem", src, fem_k=k)
        print(f"{case_id:66s} {int(tensors['class'][0]):3d} {share:.2f} of channels weighted")

    for entry in TARGET_CASES:
        model_name, layer, img, size, method, target_name = entry
        src = sources[(img, size)]
        case_id, tensors, note = target_case(entry, models[model_name], rgbs[img], src, out)
        store(case_id, tensors, model_name, layer, img, size, method, src, target=target_name)
        print(f"{case_id:66s} {int(tensors['class'][0]):3d} {note}")

    for entry in FINER_CASES:
        model_name, layer, img, size, method, alpha, ranks, target = entry
        src = sources[(img, size)]
        case_id, tensors, target_idx = finer_case(entry, models[model_name], rgbs[img], src,
                                                  out)
        if method == "fullgrad":
            layer = DEFAULT_LAYER[model_name]
        store(case_id, tensors, model_name, layer, img, size, method, src,
              finer={"alpha": alpha, "ranks": ranks})
        cases[-1]["class"] = target_idx
        print(f"{case_id:66s} {int(tensors['class'][0]):3d} compared "
              f"{tensors['compared'].tolist()}")

    for entry in GUIDED_CASES:
        model_name, img, size = entry
        case_id, layer, tensors, nz = guided_case(entry, out, rgbs[img])
        src = sources[(img, size)]
        assert torch.equal(load_file(str(out / src))["input"], tensors["input"])
        store(case_id, tensors, model_name, layer, img, size, "guided", src)
        print(f"{case_id:66s} {int(tensors['class'][0]):3d} guided non-zero {nz:.3f}")

    methods_manifest = {
        "generator": {
            "script": "tools/make_method_fixtures.py",
            "torch": torch.__version__,
            "torchvision": torchvision.__version__,
            "grad_cam": mf.GRAD_CAM_VERSION,
            "numpy": np.__version__,
            "opencv": cv2.__version__,
            "pillow": Image.__version__,
        },
        "notes": {
            "models_images_preprocess": "as in manifest.json",
            "input_from": "committed manifest.json expected file whose `input` tensor is "
                          "bit-identical to this case's preprocessed input",
            "target": "ClassifierOutputTarget(argmax); counterfactual: -logits[argmax]",
            "guided": "GuidedBackpropReLUModel(model)(input, target_category=None); "
                      "cam = GradCAM(model, [layer])(input, targets=None)[0]",
            "eigen": "eigencam / eigengradcam, and cases with eigen_smooth: true "
                     "(obj(x, targets, eigen_smooth=True)); `projection` is "
                     "get_2d_projection's output with LAPACK's sign",
            "layers": "a `layer` listing several (comma-separated) is target_layers=[...]; "
                      "logits of the plain input",
            "aug_smooth": "obj(x, [ClassifierOutputTarget(argmax of the plain input)], "
                          "aug_smooth=True); logits of the plain input; cam not renormalised",
            "finer": "FinerCAM(model, [layer], base_method)(x, alpha, comparison_categories="
                     "ranks, target_idx=class); `class` in the file is the main class, "
                     "`compared` the classes FinerCAM compares it with",
        },
        "dropped": [{"id": i, "reason": r} for i, r in dropped],
        "cases": cases,
    }
    (out / "methods.json").write_text(json.dumps(methods_manifest, indent=2) + "\n")

    total = sum((out / p).stat().st_size for p in written) + (out / "methods.json").stat().st_size
    digest = hashlib.sha256()
    for rel in sorted(written + ["methods.json"]):
        digest.update(rel.encode() + b"\0" + (out / rel).read_bytes())
    print(f"\n{len(cases)} cases ({len(dropped)} dropped), added {total / 1e6:.2f} MB, "
          f"sha256 {digest.hexdigest()[:16]}")
    if not args.embed_inputs:
        assert total < 5_500_000, "method fixtures grew past the 5.5 MB budget"
    return 0


if __name__ == "__main__":
    sys.exit(main())

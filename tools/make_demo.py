#!/usr/bin/env python3
"""Build the bundled demo model and images under assets/demo/.

    python tools/make_demo.py [--out assets/demo] [--train 16000] [--epochs 8] [--seed 0]

Everything is deterministic from seeds:

* a synthetic scene generator: 128x128 RGB scenes, each holding one filled
  shape of one of 8 classes (circle, square, triangle, star, cross, ring,
  diamond, hexagon) with a random colour, size (about 25-55% of the side),
  position (fully inside) and rotation, on a cluttered background (smooth
  colour noise, optional stripes, thin lines, 2-5 small distractor blobs or
  curves) with mild pixel noise. Scene i of a split depends only on its seed.
  The ground truth box is the inclusive [x0, y0, x1, y1] of the object's
  drawn pixels.
* a narrow ResNet (BasicBlock, [1, 1, 1, 1], widths 16/16/32/64/128) using
  torchvision's state_dict names, trained on freshly generated scenes with
  ImageNet input normalisation at 128x128.
* outputs: OUT/model.safetensors (F16, metadata arch/labels/input_size/
  description), OUT/images/<class>.png (one demo per class), OUT/heldout/
  (96 scenes, 12 per class, plus manifest.csv with image,class,x0,y0,x1,y1).
* a sanity check: held-out accuracy (F32 and F16 weights) and the pointing
  game of pytorch_grad_cam's GradCAM at layer4 and layer3 against a centred
  Gaussian baseline.

Seed ranges (disjoint): training scenes 0.., validation 5_000_000..,
demo candidates 8_000_000.., held-out scenes 9_000_000...
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import sys
import time
from pathlib import Path

import cv2
import numpy as np

CLASSES = ["circle", "square", "triangle", "star", "cross", "ring", "diamond", "hexagon"]
SIZE = 128
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)

TRAIN_SEED0 = 0
VAL_SEED0 = 5_000_000
DEMO_SEED0 = 8_000_000
HELDOUT_SEED0 = 9_000_000
HELDOUT_PER_CLASS = 12

SHIFT = 4  # sub-pixel bits for cv2 drawing
ONE = 1 << SHIFT

DESCRIPTION = "gradcam demo: 8 synthetic shapes on cluttered backgrounds, tools/make_demo.py"


# --------------------------------------------------------------------------
# Scene generator
# --------------------------------------------------------------------------

def _fixed(points: np.ndarray) -> np.ndarray:
    """Float (x, y) points to cv2 fixed-point int32 coordinates."""
    return np.round(points * ONE).astype(np.int32)


def _regular(n: int, radius: float, theta: float) -> np.ndarray:
    a = theta + 2 * math.pi * np.arange(n) / n
    return np.stack([radius * np.cos(a), radius * np.sin(a)], axis=1)


def _rotate(points: np.ndarray, theta: float) -> np.ndarray:
    c, s = math.cos(theta), math.sin(theta)
    return points @ np.array([[c, s], [-s, c]])


def object_mask(cls: int, cx: float, cy: float, radius: float, theta: float,
                rng: np.random.Generator) -> np.ndarray:
    """Binary mask (uint8 0/1) of one object whose circumradius is `radius`."""
    mask = np.zeros((SIZE, SIZE), np.uint8)
    centre = np.array([cx, cy])
    name = CLASSES[cls]
    if name in ("circle", "ring"):
        c = (int(round(cx * ONE)), int(round(cy * ONE)))
        cv2.circle(mask, c, int(round(radius * ONE)), 1, -1, cv2.LINE_8, SHIFT)
        if name == "ring":
            inner = radius * rng.uniform(0.5, 0.65)
            cv2.circle(mask, c, int(round(inner * ONE)), 0, -1, cv2.LINE_8, SHIFT)
        return mask
    if name == "square":
        pts = _regular(4, radius, theta)
    elif name == "triangle":
        pts = _regular(3, radius, theta)
    elif name == "hexagon":
        pts = _regular(6, radius, theta)
    elif name == "star":
        radii = np.where(np.arange(10) % 2 == 0, radius, radius * rng.uniform(0.38, 0.48))
        a = theta + 2 * math.pi * np.arange(10) / 10
        pts = np.stack([radii * np.cos(a), radii * np.sin(a)], axis=1)
    elif name == "diamond":
        ratio = rng.uniform(0.5, 0.62)
        pts = _rotate(np.array([[radius, 0], [0, ratio * radius], [-radius, 0], [0, -ratio * radius]]), theta)
    elif name == "cross":
        w = rng.uniform(0.28, 0.36)  # arm half-width relative to arm length
        arm = radius / math.hypot(1.0, w)  # outer corners on the circumcircle
        h = w * arm
        base = np.array([[h, -arm], [h, -h], [arm, -h], [arm, h], [h, h], [h, arm],
                         [-h, arm], [-h, h], [-arm, h], [-arm, -h], [-h, -h], [-h, -arm]])
        pts = _rotate(base, theta)
    else:  # pragma: no cover
        raise ValueError(name)
    cv2.fillPoly(mask, [_fixed(pts + centre)], 1, cv2.LINE_8, SHIFT)
    return mask


def _background(rng: np.random.Generator) -> np.ndarray:
    gh, gw = rng.integers(3, 9, size=2)
    coarse = rng.uniform(0, 255, size=(gh, gw, 3)).astype(np.float32)
    img = cv2.resize(coarse, (SIZE, SIZE), interpolation=cv2.INTER_CUBIC)
    # Pull towards a random base colour so contrast varies between scenes.
    mix = rng.uniform(0.3, 1.0)
    img = mix * img + (1 - mix) * rng.uniform(0, 255, size=3).astype(np.float32)
    if rng.random() < 0.5:  # stripes
        period = rng.uniform(5, 20)
        phi = rng.uniform(0, math.pi)
        yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32)
        wave = np.sin(2 * math.pi * (xx * math.cos(phi) + yy * math.sin(phi)) / period + rng.uniform(0, 2 * math.pi))
        direction = rng.uniform(-1, 1, size=3).astype(np.float32)
        img += rng.uniform(10, 35) * wave[..., None] * direction
    img = np.clip(img, 0, 255)
    # Thin straight lines.
    for _ in range(rng.integers(2, 9)):
        p = rng.uniform(-20, SIZE + 20, size=4)
        colour = tuple(float(v) for v in rng.uniform(0, 255, size=3))
        cv2.line(img, _fixed(p[:2]).tolist(), _fixed(p[2:]).tolist(), colour,
                 int(rng.integers(1, 3)), cv2.LINE_AA, SHIFT)
    # Small distractors: irregular blobs or short curves, never one of the classes.
    for _ in range(rng.integers(2, 6)):
        colour = tuple(float(v) for v in rng.uniform(0, 255, size=3))
        c = rng.uniform(4, SIZE - 4, size=2)
        if rng.random() < 0.5:
            n = int(rng.integers(5, 10))
            a = np.sort(rng.uniform(0, 2 * math.pi, size=n))
            r = rng.uniform(2.0, 6.5) * rng.uniform(0.5, 1.0, size=n)
            pts = c + np.stack([r * np.cos(a), r * np.sin(a)], axis=1)
            cv2.fillPoly(img, [_fixed(pts)], colour, cv2.LINE_AA, SHIFT)
        else:
            length = rng.uniform(10, 26)
            a0 = rng.uniform(0, 2 * math.pi)
            bend = rng.uniform(-1.5, 1.5)
            t = np.linspace(0, 1, 12)
            ang = a0 + bend * t
            steps = np.stack([np.cos(ang), np.sin(ang)], axis=1) * (length / 11)
            pts = c + np.cumsum(steps, axis=0) - steps.sum(axis=0) / 2
            cv2.polylines(img, [_fixed(pts)], False, colour, int(rng.integers(1, 4)), cv2.LINE_AA, SHIFT)
    return img


def make_scene(seed: int, cls: int) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """One scene: (uint8 RGB HxWx3, inclusive box [x0, y0, x1, y1])."""
    rng = np.random.default_rng([seed, cls])
    img = _background(rng)
    radius = rng.uniform(0.25, 0.55) * SIZE / 2
    cx = rng.uniform(radius + 1, SIZE - 2 - radius)
    cy = rng.uniform(radius + 1, SIZE - 2 - radius)
    mask = object_mask(cls, cx, cy, radius, rng.uniform(0, 2 * math.pi), rng)
    sel = mask.astype(bool)
    under = img[sel].mean(axis=0)
    for _ in range(64):  # pick a colour that stands out from what it covers
        colour = rng.uniform(0, 255, size=3)
        if np.linalg.norm(colour - under) >= 100:
            break
    else:
        colour = 255 - under
    img[sel] = colour
    img += rng.normal(0, rng.uniform(1.0, 3.0), size=img.shape)
    img = np.clip(np.round(img), 0, 255).astype(np.uint8)
    ys, xs = np.nonzero(mask)
    box = (int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max()))
    return img, box


def png_bytes(img: np.ndarray) -> bytes:
    from PIL import Image
    buf = io.BytesIO()
    Image.fromarray(img, "RGB").save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def make_split(seed0: int, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Scenes seed0+i with class i % 8: images NxHxWx3 uint8, labels, boxes."""
    imgs = np.empty((n, SIZE, SIZE, 3), np.uint8)
    labels = np.arange(n) % len(CLASSES)
    boxes = np.empty((n, 4), np.int64)
    for i in range(n):
        imgs[i], boxes[i] = make_scene(seed0 + i, int(labels[i]))
    return imgs, labels, boxes


# --------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------

def build_model(num_classes: int = len(CLASSES)):
    import torch.nn as nn

    def conv3(i, o, s=1):
        return nn.Conv2d(i, o, 3, s, 1, bias=False)

    class BasicBlock(nn.Module):
        def __init__(self, inp, planes, stride):
            super().__init__()
            self.conv1 = conv3(inp, planes, stride)
            self.bn1 = nn.BatchNorm2d(planes)
            self.relu = nn.ReLU(inplace=True)
            self.conv2 = conv3(planes, planes)
            self.bn2 = nn.BatchNorm2d(planes)
            self.downsample = None
            if stride != 1 or inp != planes:
                self.downsample = nn.Sequential(nn.Conv2d(inp, planes, 1, stride, bias=False),
                                                nn.BatchNorm2d(planes))

        def forward(self, x):
            idt = x if self.downsample is None else self.downsample(x)
            out = self.relu(self.bn1(self.conv1(x)))
            out = self.bn2(self.conv2(out))
            return self.relu(out + idt)

    class ResNet(nn.Module):
        def __init__(self, stem=16, widths=(16, 32, 64, 128)):
            super().__init__()
            self.conv1 = nn.Conv2d(3, stem, 7, 2, 3, bias=False)
            self.bn1 = nn.BatchNorm2d(stem)
            self.relu = nn.ReLU(inplace=True)
            self.maxpool = nn.MaxPool2d(3, 2, 1)
            inp = stem
            for k, w in enumerate(widths):
                setattr(self, f"layer{k + 1}", nn.Sequential(BasicBlock(inp, w, 1 if k == 0 else 2)))
                inp = w
            self.avgpool = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(inp, num_classes)
            for m in self.modules():
                if isinstance(m, nn.Conv2d):
                    nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

        def forward(self, x):
            x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
            x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
            return self.fc(self.avgpool(x).flatten(1))

    return ResNet()


def to_input(imgs_u8, flip_mask=None):
    """uint8 NHWC numpy/tensor -> normalised float NCHW tensor."""
    import torch
    x = torch.as_tensor(imgs_u8).permute(0, 3, 1, 2).float().div_(255)
    if flip_mask is not None:
        x[flip_mask] = x[flip_mask].flip(-1)
    mean = torch.tensor(MEAN).view(1, 3, 1, 1)
    std = torch.tensor(STD).view(1, 3, 1, 1)
    return (x - mean) / std


def predict(model, imgs, batch=256):
    import torch
    model.eval()
    out = []
    with torch.no_grad():
        for i in range(0, len(imgs), batch):
            out.append(model(to_input(imgs[i:i + batch])))
    return torch.cat(out)


def train(model, imgs, labels, epochs, seed, batch=32, lr=2e-3):
    import torch
    g = torch.Generator().manual_seed(seed)
    n = len(imgs)
    steps = epochs * (n // batch)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.15)
    lab = torch.as_tensor(labels)
    loss_fn = torch.nn.CrossEntropyLoss()
    step = 0
    for ep in range(epochs):
        model.train()
        perm = torch.randperm(n, generator=g)
        t0, tot, correct = time.time(), 0.0, 0
        for b in range(n // batch):
            idx = perm[b * batch:(b + 1) * batch]
            flip = torch.rand(len(idx), generator=g) < 0.5
            x = to_input(imgs[idx.numpy()], flip)
            y = lab[idx]
            logits = model(x)
            loss = loss_fn(logits, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            tot += loss.item() * len(idx)
            correct += (logits.argmax(1) == y).sum().item()
        m = (n // batch) * batch
        print(f"  epoch {ep + 1}/{epochs}: loss {tot / m:.4f}  train acc {correct / m:.4f}  "
              f"({time.time() - t0:.1f}s)", flush=True)


# --------------------------------------------------------------------------
# Export and checks
# --------------------------------------------------------------------------

def f16_state(model):
    import torch
    sd = {}
    for k, v in model.state_dict().items():
        v = v.detach().clone().contiguous()
        sd[k] = v.to(torch.float16) if v.is_floating_point() else v
    return sd


def load_f16_into_f32(model, sd):
    import torch
    model.load_state_dict({k: (v.float() if v.is_floating_point() else v) for k, v in sd.items()})
    return model


def canonical_header(path: Path) -> None:
    """Rewrite a safetensors header with sorted metadata keys.

    The library writes `__metadata__` from a hash map, so its key order (and so
    the file's bytes) can change between runs; sorting makes the file
    reproducible. Tensor entries and data are left as they are.
    """
    import struct
    raw = path.read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8:8 + n])
    meta = header.pop("__metadata__", None)
    ordered = {"__metadata__": dict(sorted(meta.items()))} if meta is not None else {}
    ordered.update(header)
    text = json.dumps(ordered, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    path.write_bytes(struct.pack("<Q", len(text)) + text + raw[8 + n:])


def gaussian_centre_map(sigma=0.25):
    yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float64)
    c = (SIZE - 1) / 2
    s = sigma * SIZE
    return np.exp(-((xx - c) ** 2 + (yy - c) ** 2) / (2 * s * s))


def inside(box, y, x) -> bool:
    x0, y0, x1, y1 = box
    return x0 <= x <= x1 and y0 <= y <= y1


def gradcam_points(model, imgs, layer):
    """Argmax (y, x) of pytorch_grad_cam GradCAM at `layer` for the predicted class."""
    from pytorch_grad_cam import GradCAM
    model.eval()
    pts = []
    with GradCAM(model=model, target_layers=[layer]) as cam:
        for i in range(0, len(imgs), 32):
            maps = cam(input_tensor=to_input(imgs[i:i + 32]), targets=None)  # N x 128 x 128
            for m in maps:
                pts.append(np.unravel_index(int(np.argmax(m)), m.shape))
    return pts


def pointing_game(model, imgs, boxes):
    res = {}
    for name in ("layer4", "layer3"):
        pts = gradcam_points(model, imgs, getattr(model, name))
        res[name] = float(np.mean([inside(b, y, x) for b, (y, x) in zip(boxes, pts)]))
    g = gaussian_centre_map()
    gy, gx = np.unravel_index(int(np.argmax(g)), g.shape)
    res["centre"] = float(np.mean([inside(b, gy, gx) for b in boxes]))
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path("assets/demo"))
    ap.add_argument("--train", type=int, default=16000, help="training scenes")
    ap.add_argument("--val", type=int, default=2000, help="validation scenes (accuracy)")
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0, help="torch seed (init, shuffling, flips)")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)

    import torch
    from safetensors.torch import save_file, load_file

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    # Generator determinism: same seed -> identical PNG bytes.
    for s, c in ((TRAIN_SEED0 + 7, 3), (HELDOUT_SEED0 + 5, 5)):
        a, b = png_bytes(make_scene(s, c)[0]), png_bytes(make_scene(s, c)[0])
        assert a == b, "scene generator is not deterministic"
    print("generator determinism: OK (same seed -> identical PNG bytes)")

    t0 = time.time()
    tr_x, tr_y, _ = make_split(TRAIN_SEED0, args.train)
    va_x, va_y, va_b = make_split(VAL_SEED0, args.val)
    n_ho = HELDOUT_PER_CLASS * len(CLASSES)
    ho_x, ho_y, ho_b = make_split(HELDOUT_SEED0, n_ho)
    print(f"generated {args.train} train / {args.val} val / {n_ho} held-out scenes in {time.time() - t0:.1f}s")

    model = build_model()
    nparams = sum(p.numel() for p in model.parameters())
    print(f"model: resnet [1,1,1,1], widths 16/16/32/64/128, {nparams} parameters")
    c0, t0 = time.process_time(), time.time()
    train(model, tr_x, tr_y, args.epochs, args.seed)
    train_wall, train_cpu = time.time() - t0, time.process_time() - c0
    print(f"training: {train_wall:.1f}s wall, {train_cpu:.1f}s CPU ({args.threads} threads)")

    acc32 = {n: float((predict(model, x).argmax(1).numpy() == y).mean())
             for n, x, y in (("val", va_x, va_y), ("held-out", ho_x, ho_y))}
    sd16 = f16_state(model)
    model16 = load_f16_into_f32(build_model(), sd16)
    acc16 = {n: float((predict(model16, x).argmax(1).numpy() == y).mean())
             for n, x, y in (("val", va_x, va_y), ("held-out", ho_x, ho_y))}
    for n in acc32:
        print(f"accuracy {n}: f32 {acc32[n]:.4f}  f16 {acc16[n]:.4f}")

    pg_val = pointing_game(model16, va_x[:1000], va_b[:1000])
    pg_ho = pointing_game(model16, ho_x, ho_b)
    for n, pg in (("val[:1000]", pg_val), ("held-out", pg_ho)):
        print(f"pointing game ({n}, f16 weights): GradCAM layer4 {pg['layer4']:.3f}  "
              f"layer3 {pg['layer3']:.3f}  centre Gaussian {pg['centre']:.3f}")

    # Write the assets.
    out = args.out
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "heldout").mkdir(parents=True, exist_ok=True)
    meta = {"arch": "resnet", "labels": json.dumps(CLASSES), "input_size": str(SIZE),
            "description": DESCRIPTION}
    save_file(sd16, str(out / "model.safetensors"), metadata=meta)
    canonical_header(out / "model.safetensors")
    reloaded = load_file(str(out / "model.safetensors"))
    assert all(torch.equal(reloaded[k], sd16[k]) for k in sd16)

    with open(out / "heldout" / "manifest.csv", "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["image", "class", "x0", "y0", "x1", "y1"])
        for i in range(n_ho):
            name = f"{i + 1:04d}.png"
            (out / "heldout" / name).write_bytes(png_bytes(ho_x[i]))
            w.writerow([name, int(ho_y[i]), *map(int, ho_b[i])])

    # Demo images: per class, the first candidate seed that the model classifies
    # correctly and confidently (p >= 0.9) and whose layer4 Grad-CAM peak lies at
    # least 3 px inside the box,
    # with the object away from the image centre (so the heatmap visibly follows it).
    gy, gx = np.unravel_index(int(np.argmax(gaussian_centre_map())), (SIZE, SIZE))
    for c, name in enumerate(CLASSES):
        for k in range(1000):
            seed = DEMO_SEED0 + 1000 * c + k
            img, box = make_scene(seed, c)
            if inside(box, gy, gx):
                continue
            p = torch.softmax(predict(model16, img[None]), 1)[0]
            if int(p.argmax()) != c or float(p[c]) < 0.9:
                continue
            (y, x), = gradcam_points(model16, img[None], model16.layer4)
            m = 3  # keep the peak a few pixels inside, robust to resampling details
            if inside((box[0] + m, box[1] + m, box[2] - m, box[3] - m), y, x):
                (out / "images" / f"{name}.png").write_bytes(png_bytes(img))
                print(f"demo {name}.png: seed {seed}, box {list(box)}, p={float(p[c]):.3f}, "
                      f"layer4 peak (x={x}, y={y})")
                break
        else:
            print(f"warning: no demo image found for {name}", file=sys.stderr)

    total = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    print(f"model.safetensors: {(out / 'model.safetensors').stat().st_size} bytes; "
          f"images/: {sum(p.stat().st_size for p in (out / 'images').glob('*.png'))} bytes; "
          f"heldout/: {sum(p.stat().st_size for p in (out / 'heldout').iterdir())} bytes; "
          f"total {total} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Export a torchvision VGG or ResNet state_dict to a .safetensors file.

    python tools/export_torchvision.py ARCH OUT.safetensors [--weights DEFAULT|NONE] [--dtype f32|f16|bf16]

ARCH is a torchvision model name: vgg11..vgg19 (with or without _bn),
resnet18..resnet152, wide_resnet50_2 / wide_resnet101_2, or
resnext50_32x4d / resnext101_32x8d / resnext101_64x4d.

--weights NONE (the default) gives torchvision's random initialisation (seeded
with --seed); --weights DEFAULT downloads torchvision's recommended pretrained
weights, which needs network access to download.pytorch.org (or a copy already
in the torch hub cache, $TORCH_HOME).

Floating tensors are converted to --dtype; integer buffers such as
BatchNorm's num_batches_tracked are kept as int64. Tensor names are exactly
torchvision's state_dict names. The file's metadata holds {"arch": ARCH}.
"""

from __future__ import annotations

import argparse
import difflib
import sys
from pathlib import Path

SUPPORTED = (
    [f"vgg{n}{bn}" for n in (11, 13, 16, 19) for bn in ("", "_bn")]
    + [f"resnet{n}" for n in (18, 34, 50, 101, 152)]
    + ["wide_resnet50_2", "wide_resnet101_2"]
    + ["resnext50_32x4d", "resnext101_32x8d", "resnext101_64x4d"]
)

DTYPES = {"f32": "float32", "f16": "float16", "bf16": "bfloat16"}


def parse_args(argv):
    parser = argparse.ArgumentParser(
        description="Export a torchvision VGG/ResNet state_dict to safetensors.",
        epilog="supported ARCH values: " + ", ".join(SUPPORTED))
    parser.add_argument("arch", metavar="ARCH", help="torchvision model name, e.g. resnet50 or vgg16_bn")
    parser.add_argument("out", metavar="OUT.safetensors", type=Path, help="output file")
    parser.add_argument("--weights", default="NONE", type=str.upper, choices=["DEFAULT", "NONE"],
                        help="NONE: random init (default); DEFAULT: torchvision pretrained weights")
    parser.add_argument("--dtype", default="f32", type=str.lower, choices=sorted(DTYPES),
                        help="storage dtype of floating tensors (default f32)")
    parser.add_argument("--seed", type=int, default=0, help="torch seed for random init (default 0)")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    arch = args.arch.lower()
    if arch not in SUPPORTED:
        close = difflib.get_close_matches(arch, SUPPORTED, n=4)
        hint = f" (did you mean one of: {', '.join(close)}?)" if close else ""
        print(f"error: unsupported ARCH '{args.arch}'{hint}\nsupported: {', '.join(SUPPORTED)}",
              file=sys.stderr)
        return 2
    if args.out.suffix != ".safetensors":
        print(f"warning: output '{args.out}' does not end in .safetensors", file=sys.stderr)

    try:
        import torch
        import torchvision
        from safetensors.torch import save_file
    except ImportError as exc:
        print(f"error: {exc}. Install the tool requirements first:\n"
              "  python3 -m venv .venv-tools && .venv-tools/bin/pip install -r tools/requirements.txt",
              file=sys.stderr)
        return 1

    dtype = getattr(torch, DTYPES[args.dtype])
    torch.manual_seed(args.seed)
    weights = None if args.weights == "NONE" else "DEFAULT"
    try:
        model = torchvision.models.get_model(arch, weights=weights)
    except Exception as exc:  # network failures surface as URLError/RuntimeError/OSError
        if weights is not None:
            print(f"error: could not load pretrained weights for {arch}: {exc}\n"
                  "Pretrained weights are downloaded from download.pytorch.org; this needs network "
                  "access or a populated torch hub cache ($TORCH_HOME). Use --weights NONE for "
                  "random weights.", file=sys.stderr)
        else:
            print(f"error: could not build {arch}: {exc}", file=sys.stderr)
        return 1
    model.eval()

    tensors = {}
    for name, tensor in model.state_dict().items():
        tensor = tensor.detach().cpu()
        if tensor.is_floating_point():
            tensor = tensor.to(dtype)
        tensors[name] = tensor.contiguous()

    args.out.parent.mkdir(parents=True, exist_ok=True)
    try:
        save_file(tensors, str(args.out), metadata={"arch": arch})
    except OSError as exc:
        print(f"error: cannot write {args.out}: {exc}", file=sys.stderr)
        return 1

    n_values = sum(t.numel() for t in tensors.values())
    print(f"wrote {args.out}: {arch}, {len(tensors)} tensors, {n_values:,} values, "
          f"{args.dtype}, weights={args.weights}, torchvision {torchvision.__version__}, "
          f"{args.out.stat().st_size / 1e6:.1f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())

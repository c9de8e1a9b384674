#!/usr/bin/env python3
"""PyTorch checkpoint fixtures for tests/pth.rs: resnet_tiny's weights as torch.save writes
them, so the reader of .pth files is tested against torch's own writer.

    python tools/make_pth_fixtures.py      # writes tests/fixtures/pth/*.pth

- resnet_tiny.pth: `torch.save(model.state_dict())` (the zip format, PyTorch >= 1.6);
- resnet_tiny_legacy.pth: the same with `_use_new_zipfile_serialization=False` (the format
  of torchvision's older downloads, e.g. resnet50-19c8e357.pth);
- resnet_tiny_checkpoint.pth: a training script's checkpoint: epoch, an `nn.DataParallel`
  state_dict (`module.` names) under `state_dict`, the optimizer's state (momentum buffers),
  an argparse.Namespace and a float;
- resnet_tiny_f16.pth: `model.half().state_dict()`;
- resnet_tiny_shared.pth: fc.weight saved as a transposed view (not contiguous) and
  fc.bias as a slice of a larger tensor (an offset into its storage);
- resnet_tiny_module.pth: `torch.save(model)`, the whole module pickled (a tree of plain
  nn.Modules holding the parameters and buffers under resnet_tiny's names, nested as
  torchvision nests them), inside a checkpoint dict's `model` entry;
- resnet_tiny_module_legacy.pth: that module alone, in the legacy format (its classes are
  persistent ids there, with their source);
- whole_module.pth: `torch.save(nn.Linear(2, 2))`, a whole module at the top level;
- expanded.pth: one stored element expanded to 10^8 (refused, not read out);
- resnet_tiny_legacy_p4.pth: the legacy format at pickle protocol 4 (a FRAME before the
  magic number). The checkpoint's `best_acc1` is a tensor, as pytorch/examples saves it.
"""

import argparse
import collections
from pathlib import Path

import torch
from safetensors.torch import load_file

root = Path(__file__).resolve().parent.parent / "tests" / "fixtures"
out = root / "pth"
out.mkdir(exist_ok=True)
sd = collections.OrderedDict(sorted(load_file(root / "resnet_tiny.safetensors").items()))

torch.save(sd, out / "resnet_tiny.pth")
torch.save(sd, out / "resnet_tiny_legacy.pth", _use_new_zipfile_serialization=False)
torch.save(
    sd, out / "resnet_tiny_legacy_p4.pth", pickle_protocol=4, _use_new_zipfile_serialization=False
)

params = [torch.nn.Parameter(t.clone()) for k, t in sd.items() if t.is_floating_point()]
opt = torch.optim.SGD(params, lr=0.1, momentum=0.9)
sum((p * p).sum() for p in params).backward()
opt.step()
torch.save(
    {
        "epoch": 3,
        "state_dict": collections.OrderedDict((f"module.{k}", v) for k, v in sd.items()),
        "optimizer": opt.state_dict(),
        "args": argparse.Namespace(lr=0.1, arch="resnet_tiny"),
        "best_acc1": torch.tensor(0.25),
    },
    out / "resnet_tiny_checkpoint.pth",
)

torch.save(
    collections.OrderedDict((k, v.half() if v.is_floating_point() else v) for k, v in sd.items()),
    out / "resnet_tiny_f16.pth",
)

shared = collections.OrderedDict(sd)
shared["fc.weight"] = sd["fc.weight"].t().contiguous().t()
assert not shared["fc.weight"].is_contiguous()
bias = sd["fc.bias"]
shared["fc.bias"] = torch.cat([torch.zeros(5), bias])[5:]
torch.save(shared, out / "resnet_tiny_shared.pth")

def module_tree(state):
    """nn.Modules nested by the names' dots, parameters as Parameters (floats) and buffers
    (running statistics, step counters) as buffers."""
    root = torch.nn.Module()
    for name, t in state.items():
        *path, leaf = name.split(".")
        m = root
        for part in path:
            if part not in m._modules:
                m.add_module(part, torch.nn.Module())
            m = m._modules[part]
        if leaf.startswith("running_") or leaf == "num_batches_tracked":
            m.register_buffer(leaf, t.clone())
        else:
            m.register_parameter(leaf, torch.nn.Parameter(t.clone(), requires_grad=False))
    return root


torch.save({"model": module_tree(sd), "epoch": 1}, out / "resnet_tiny_module.pth")
torch.save(
    module_tree(sd), out / "resnet_tiny_module_legacy.pth", _use_new_zipfile_serialization=False
)
torch.manual_seed(0)
torch.save(torch.nn.Linear(2, 2), out / "whole_module.pth")
torch.save({"fc.bias": torch.zeros(1).expand(100_000_000)}, out / "expanded.pth")
for f in sorted(out.glob("*.pth")):
    print(f.name, f.stat().st_size)

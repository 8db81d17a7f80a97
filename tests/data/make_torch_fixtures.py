"""Writes the torch fixture checkpoints under tests/data/torch_fixtures/ (needs torch).

Run from the repository root: `python tests/data/make_torch_fixtures.py`. CI does not run
it; the files it writes are committed (under 2 MB in all).

torchvision has no wheel matching the CPU torch used here, so the torchvision ResNet is
re-defined below with torchvision's module names and semantics (BasicBlock, Bottleneck v1.5
with the stride on the 3x3 conv, `width_per_group`, 7x7/2 stem with padding 3, 3x3/2
max-pool with padding 1, adaptive average pool, `fc`), plus width knobs for small nets.

What is written (nets of reduced width, random weights AND random BatchNorm running
statistics, eval mode):
- `{arch}_{layout}_{fmt}.pt` (the pairs in `COMMITTED`: all for resnet18, two each for
  resnet50 and wide_resnet50_2; `FULL` is every pair for the three) with layout in
    torchvision   plain state dict,
    robustness    {'model': {module.normalizer.new_mean|new_std, module.model.*,
                  module.attacker.model.*, module.attacker.normalize.*}, 'optimizer',
                  'schedule', 'epoch', 'nat_prec1', ...}, its own normalizer,
    dummy         robustness with the DummyModel wrapping (module.model.model.*),
    robustbench   model.* plus normalize.mean|std (1, 3, 1, 1),
    robustbench_nonorm  model.* only (ImageNet normalization),
    state_dict    {'state_dict': torchvision keys, 'epoch': ...},
  and fmt zip (torch.save default) or legacy (`_use_new_zipfile_serialization=False`);
- `payload_{zip,legacy}.pt`: robustness layout whose extras hold an object whose
  `__reduce__` is `(os.system, ("touch SPURJAX_PAYLOAD_RAN",))`;
- `logits.npz`: for each arch and layout, torch's eval logits on
  `fixture_images(size)` for size in (97, 64) (float32), keyed `{arch}_{layout}_{size}`.
"""

from __future__ import annotations

import os
import sys

import numpy as np

try:
  import torch
  import torch.nn as nn
  import torch.nn.functional as F
except ImportError:  # importable without torch for `fixture_images`
  torch = nn = F = None

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "torch_fixtures")
ARCHS = {  # arch -> (block, depths, width_per_group)
    "resnet18": ("basic", (2, 2, 2, 2), 64),
    "resnet34": ("basic", (3, 4, 6, 3), 64),
    "resnet50": ("bottleneck", (3, 4, 6, 3), 64),
    "resnet101": ("bottleneck", (3, 4, 23, 3), 64),
    "wide_resnet50_2": ("bottleneck", (3, 4, 6, 3), 128),
    "wide_resnet50_4": ("bottleneck", (3, 4, 6, 3), 256),
}
SMALL = dict(stem_width=4, planes=(2, 4, 4, 8), num_classes=10)
FIXTURE_ARCHS = ("resnet18", "resnet50", "wide_resnet50_2")
LAYOUTS = ("torchvision", "robustness", "dummy", "robustbench", "robustbench_nonorm",
           "state_dict")
SIZES = (97, 64)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
ROBUST_MEAN = (0.5, 0.4, 0.3)   # deliberately not ImageNet's: the loader must read them
ROBUST_STD = (0.2, 0.25, 0.3)
MARKER = "SPURJAX_PAYLOAD_RAN"


def fixture_images(size: int, n: int = 2) -> np.ndarray:
  """The fixed inputs `(n, size, size, 3)` float32 in [0, 1] (NHWC)."""
  return np.random.default_rng(1000 + size).random((n, size, size, 3), dtype=np.float32)


if torch is not None:

  class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes, planes, stride=1, downsample=None, base_width=64):
      super().__init__()
      self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
      self.bn1 = nn.BatchNorm2d(planes)
      self.relu = nn.ReLU(inplace=True)
      self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
      self.bn2 = nn.BatchNorm2d(planes)
      self.downsample = downsample

    def forward(self, x):
      identity = x if self.downsample is None else self.downsample(x)
      out = self.relu(self.bn1(self.conv1(x)))
      return self.relu(self.bn2(self.conv2(out)) + identity)

  class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes, planes, stride=1, downsample=None, base_width=64):
      super().__init__()
      width = int(planes * (base_width / 64.0))
      self.conv1 = nn.Conv2d(inplanes, width, 1, bias=False)
      self.bn1 = nn.BatchNorm2d(width)
      self.conv2 = nn.Conv2d(width, width, 3, stride, 1, bias=False)
      self.bn2 = nn.BatchNorm2d(width)
      self.conv3 = nn.Conv2d(width, planes * 4, 1, bias=False)
      self.bn3 = nn.BatchNorm2d(planes * 4)
      self.relu = nn.ReLU(inplace=True)
      self.downsample = downsample

    def forward(self, x):
      identity = x if self.downsample is None else self.downsample(x)
      out = self.relu(self.bn1(self.conv1(x)))
      out = self.relu(self.bn2(self.conv2(out)))
      return self.relu(self.bn3(self.conv3(out)) + identity)

  class ResNet(nn.Module):
    """torchvision.models.ResNet with width knobs (stem_width, planes)."""

    def __init__(self, arch, num_classes=1000, stem_width=64, planes=(64, 128, 256, 512)):
      super().__init__()
      kind, depths, wpg = ARCHS[arch]
      block = BasicBlock if kind == "basic" else Bottleneck
      self.inplanes, self.base_width = stem_width, wpg
      self.conv1 = nn.Conv2d(3, stem_width, 7, 2, 3, bias=False)
      self.bn1 = nn.BatchNorm2d(stem_width)
      self.relu = nn.ReLU(inplace=True)
      self.maxpool = nn.MaxPool2d(3, 2, 1)
      self.layer1 = self._make_layer(block, planes[0], depths[0])
      self.layer2 = self._make_layer(block, planes[1], depths[1], 2)
      self.layer3 = self._make_layer(block, planes[2], depths[2], 2)
      self.layer4 = self._make_layer(block, planes[3], depths[3], 2)
      self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
      self.fc = nn.Linear(planes[3] * block.expansion, num_classes)

    def _make_layer(self, block, planes, blocks, stride=1):
      downsample = None
      if stride != 1 or self.inplanes != planes * block.expansion:
        downsample = nn.Sequential(
            nn.Conv2d(self.inplanes, planes * block.expansion, 1, stride, bias=False),
            nn.BatchNorm2d(planes * block.expansion))
      layers = [block(self.inplanes, planes, stride, downsample, self.base_width)]
      self.inplanes = planes * block.expansion
      layers += [block(self.inplanes, planes, base_width=self.base_width)
                 for _ in range(1, blocks)]
      return nn.Sequential(*layers)

    def forward(self, x):
      x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
      x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
      return self.fc(torch.flatten(self.avgpool(x), 1))

  def randomize(model: nn.Module, seed: int) -> nn.Module:
    """Random weights and random BatchNorm running statistics (so BN is not the identity)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
      for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
          m.weight.copy_(0.5 + torch.rand(m.weight.shape, generator=g))
          m.bias.copy_(0.2 * torch.randn(m.bias.shape, generator=g))
          m.running_mean.copy_(0.2 * torch.randn(m.running_mean.shape, generator=g))
          m.running_var.copy_(0.5 + torch.rand(m.running_var.shape, generator=g))
          m.num_batches_tracked.fill_(1000)
        elif isinstance(m, (nn.Conv2d, nn.Linear)):
          fan_in = m.weight[0].numel()
          m.weight.copy_(torch.randn(m.weight.shape, generator=g) * (2.0 / fan_in) ** 0.5)
          if m.bias is not None:
            m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=g))
    return model.eval()

  def torch_logits(model: nn.Module, images: np.ndarray, mean, std) -> np.ndarray:
    """Eval logits of `model` on NHWC images in [0, 1], normalized by (mean, std)."""
    x = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))
    m = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
    with torch.no_grad():
      return model((x.clamp(0, 1) - m) / s).numpy()

  class Payload:
    """Unpickling this runs `touch SPURJAX_PAYLOAD_RAN` (with any unrestricted loader)."""

    def __reduce__(self):
      return (os.system, (f"touch {MARKER}",))

  class TrainerArgs:  # stands in for the dill-pickled extras of robustness files
    def __init__(self):
      self.arch, self.eps, self.constraint = "resnet50", 3.0, "2"

  def layout(sd: dict, name: str, extras: dict | None = None):
    """Wraps a torchvision state dict as `name` lays it out."""
    if name == "torchvision":
      return sd
    if name == "state_dict":
      return {"state_dict": sd, "epoch": 90, "arch": "resnet"}
    if name in ("robustness", "dummy"):
      inner = "module.model.model." if name == "dummy" else "module.model."
      m = {"module.normalizer.new_mean": torch.tensor(ROBUST_MEAN).view(3, 1, 1),
           "module.normalizer.new_std": torch.tensor(ROBUST_STD).view(3, 1, 1)}
      m.update({inner + k: v for k, v in sd.items()})
      m["module.attacker.normalize.new_mean"] = m["module.normalizer.new_mean"].clone()
      m["module.attacker.normalize.new_std"] = m["module.normalizer.new_std"].clone()
      m.update({"module.attacker." + inner[len("module."):] + k: v.clone()
                for k, v in sd.items()})
      out = {"model": m, "optimizer": {"state": {}, "param_groups": [{"lr": 0.1}]},
             "schedule": None, "epoch": 90, "amp": None, "adv_prec1": 51.2,
             "args": TrainerArgs()}
      out.update(extras or {})
      return out
    if name in ("robustbench", "robustbench_nonorm"):
      m = {"model." + k: v for k, v in sd.items()}
      if name == "robustbench":
        m["normalize.mean"] = torch.tensor(ROBUST_MEAN).view(1, 3, 1, 1)
        m["normalize.std"] = torch.tensor(ROBUST_STD).view(1, 3, 1, 1)
      return m
    raise ValueError(name)

  def layout_normalizer(name: str):
    return ((ROBUST_MEAN, ROBUST_STD) if name in ("robustness", "dummy", "robustbench")
            else (IMAGENET_MEAN, IMAGENET_STD))


# What is committed (2 MB cap; a zip record costs ~200 bytes, so deep nets are mostly
# overhead): every layout in both formats for the basic-block net, a few (layout, format)
# pairs for the bottleneck nets. The torch-only test writes the full matrix to a temp dir.
FORMATS = ("zip", "legacy")
COMMITTED = {"resnet18": [(lay, fmt) for lay in LAYOUTS for fmt in FORMATS],
             "resnet50": [("torchvision", "zip"), ("dummy", "legacy")],
             "wide_resnet50_2": [("robustbench", "zip"), ("state_dict", "legacy")]}
FULL = {arch: [(lay, fmt) for lay in LAYOUTS for fmt in FORMATS] for arch in FIXTURE_ARCHS}


def write_fixtures(out: str, plan: dict, sizes=SIZES) -> dict:
  """Writes `{arch}_{layout}_{fmt}.pt` for `plan` = {arch: [(layout, fmt), ...]} and the
  payload files into `out`; returns torch's logits `{arch}_{layout}_{size}: (2, K)`."""
  os.makedirs(out, exist_ok=True)
  logits = {}
  for arch, pairs in plan.items():
    net = randomize(ResNet(arch, **SMALL), seed=FIXTURE_ARCHS.index(arch))
    sd = net.state_dict()
    for name, fmt in pairs:
      torch.save(layout(sd, name), os.path.join(out, f"{arch}_{name}_{fmt}.pt"),
                 _use_new_zipfile_serialization=(fmt == "zip"))
      mean, std = layout_normalizer(name)
      for size in sizes:
        logits[f"{arch}_{name}_{size}"] = torch_logits(net, fixture_images(size), mean, std)
  net = randomize(ResNet("resnet18", **SMALL), seed=0)
  obj = layout(net.state_dict(), "robustness", {"payload": Payload()})
  for fmt in ("zip", "legacy"):
    torch.save(obj, os.path.join(out, f"payload_{fmt}.pt"),
               _use_new_zipfile_serialization=(fmt == "zip"))
  return logits


def main():
  if torch is None:
    sys.exit("make_torch_fixtures.py needs torch")
  torch.manual_seed(0)
  for f in os.listdir(OUT) if os.path.isdir(OUT) else ():
    os.remove(os.path.join(OUT, f))
  logits = write_fixtures(OUT, COMMITTED)
  np.savez(os.path.join(OUT, "logits.npz"), **logits)
  total = sum(os.path.getsize(os.path.join(OUT, f)) for f in os.listdir(OUT))
  print(f"wrote {len(os.listdir(OUT))} files, {total / 1e6:.2f} MB, to {OUT}")


if __name__ == "__main__":
  main()

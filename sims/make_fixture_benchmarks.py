r"""Small stand-ins for the real downloads: five benchmark trees and robust-model checkpoints.

Writes, under --workdir, everything `sims.pretrained_reliance` reads, in the published
layouts, so that its one command runs anywhere (a dry run of the study's table):
- the five benchmark trees of `spurjax.fixture_trees.write_all` (ImageNet-9, Waterbirds,
  RIVAL10, Salient ImageNet with its crowd annotations and ImageNet-train-style images,
  ObjectNet), drawn from the procedural data with every trap of the real files, and an
  ImageNet-1k val tree at `imagenet/val/<wnid>/` (next to Salient's `imagenet/train/`);
- width-reduced torchvision ResNets with 1000 classes, random weights and random
  BatchNorm statistics, saved as the robustness library saves them and named like the
  robust-models-transfer releases (`CHECKPOINTS`): `resnet18_l2_eps3.ckpt` (torch zip
  format, `{'model': state dict, 'optimizer', 'schedule', 'epoch', 'adv_prec1'}`),
  `resnet18_linf_eps4.0.ckpt` (torch's legacy pickle format, the older layout with the
  weights under `state_dict`), `resnet50_l2_eps0.ckpt` (zip, `{'model': ...}`, a
  bottleneck net); each state dict holds `module.normalizer.*`, `module.model.*` and the
  `module.attacker.*` duplicate, written by `spurjax.pretrained.write_torch_checkpoint`;
- `fixtures.json` (the paths, and the `sims.pretrained_reliance` command for them) and
  `manifest.json`.

  python -m sims.make_fixture_benchmarks --workdir=/tmp/fixture_benchmarks [--preset=small]

The trees are written atomically (a temporary sibling renamed into place); an existing
--workdir holding a previous fixture is refused rather than mixed with a new one.
"""

from __future__ import annotations

import collections
import os
import shlex
import time
from typing import Any, Mapping

import numpy as np

from sims import _common

# name -> (arch, torch format, layout key of the weights)
CHECKPOINTS = {
    "resnet18_l2_eps3.ckpt": ("resnet18", "zip", "model"),
    "resnet18_linf_eps4.0.ckpt": ("resnet18", "legacy", "state_dict"),
    "resnet50_l2_eps0.ckpt": ("resnet50", "zip", "model"),
}
ARCHS = {"resnet18": ("basic", (2, 2, 2, 2), 64), "resnet34": ("basic", (3, 4, 6, 3), 64),
         "resnet50": ("bottleneck", (3, 4, 6, 3), 64),
         "wide_resnet50_2": ("bottleneck", (3, 4, 6, 3), 128)}
_DEFAULT = dict(per_class=3, image_size=48, stem_width=16, planes="16,32,64,128", seed=0)
PRESETS = {"default": _DEFAULT,
           "small": dict(_DEFAULT, per_class=2, image_size=32, stem_width=8,
                         planes="8,16,32,64")}
CONFIG_FLAGS = tuple(_DEFAULT)


def torchvision_state_dict(arch: str, *, num_classes: int = 1000, stem_width: int = 64,
                           planes=(64, 128, 256, 512), seed: int = 0
                           ) -> "collections.OrderedDict[str, np.ndarray]":
  """A torchvision ResNet state dict (names, shapes, dtypes as `model.state_dict()`) with
  random weights and random BatchNorm statistics.

  Conv kernels `(O, I, kh, kw)` ~ N(0, 2 / fan_out) (torchvision's init); BatchNorm
  `weight` ~ U(0.5, 1), `bias` ~ N(0, 0.1), `running_mean` ~ N(0, 0.1), `running_var` ~
  U(0.5, 1.5), `num_batches_tracked` int64 scalar; `fc.weight` `(num_classes, C)` ~
  N(0, 1 / C), `fc.bias` 0. Widths: stem `stem_width`, stage planes `planes`, the
  bottleneck's inner width `planes * width_per_group / 64` (torchvision's formula).
  """
  if arch not in ARCHS:
    raise ValueError(f"arch: expected one of {sorted(ARCHS)}, got {arch!r}")
  kind, depths, wpg = ARCHS[arch]
  rng = np.random.default_rng(seed)
  sd: collections.OrderedDict = collections.OrderedDict()

  def conv(name, o, i, k):
    sd[name + ".weight"] = rng.normal(0, np.sqrt(2.0 / (o * k * k)), (o, i, k, k)).astype(
        np.float32)

  def bn(name, c):
    sd[name + ".weight"] = rng.uniform(0.5, 1.0, c).astype(np.float32)
    sd[name + ".bias"] = rng.normal(0, 0.1, c).astype(np.float32)
    sd[name + ".running_mean"] = rng.normal(0, 0.1, c).astype(np.float32)
    sd[name + ".running_var"] = rng.uniform(0.5, 1.5, c).astype(np.float32)
    sd[name + ".num_batches_tracked"] = np.array(1000, np.int64)

  conv("conv1", stem_width, 3, 7)
  bn("bn1", stem_width)
  inplanes = stem_width
  expansion = 1 if kind == "basic" else 4
  for s, (n_blocks, p) in enumerate(zip(depths, planes), start=1):
    for j in range(n_blocks):
      pre = f"layer{s}.{j}"
      stride = 2 if (s > 1 and j == 0) else 1
      if kind == "basic":
        conv(pre + ".conv1", p, inplanes, 3)
        bn(pre + ".bn1", p)
        conv(pre + ".conv2", p, p, 3)
        bn(pre + ".bn2", p)
      else:
        width = int(p * (wpg / 64.0))
        conv(pre + ".conv1", width, inplanes, 1)
        bn(pre + ".bn1", width)
        conv(pre + ".conv2", width, width, 3)
        bn(pre + ".bn2", width)
        conv(pre + ".conv3", p * 4, width, 1)
        bn(pre + ".bn3", p * 4)
      if j == 0 and (stride != 1 or inplanes != p * expansion):
        conv(pre + ".downsample.0", p * expansion, inplanes, 1)
        bn(pre + ".downsample.1", p * expansion)
      inplanes = p * expansion
  sd["fc.weight"] = rng.normal(0, np.sqrt(1.0 / inplanes), (num_classes, inplanes)).astype(
      np.float32)
  sd["fc.bias"] = np.zeros(num_classes, np.float32)
  return sd


def robustness_checkpoint(sd: Mapping[str, np.ndarray], *, weights_key: str = "model",
                          eps: float = 0.0, seed: int = 0) -> dict[str, Any]:
  """The dict the robustness library saves (robustness/train.py): the state dict under
  `weights_key` with `module.normalizer.new_mean|new_std` `(3, 1, 1)`, `module.model.*`
  and the duplicate `module.attacker.normalize.*` / `module.attacker.model.*`, beside
  `optimizer`, `schedule`, `epoch` and `adv_prec1` (or `nat_prec1` for eps 0)."""
  rng = np.random.default_rng(seed + 1)
  mean = rng.uniform(0.4, 0.5, (3, 1, 1)).astype(np.float32)
  std = rng.uniform(0.2, 0.3, (3, 1, 1)).astype(np.float32)
  wrapped: collections.OrderedDict = collections.OrderedDict()
  for prefix in ("module.", "module.attacker."):
    norm = "normalizer" if prefix == "module." else "normalize"
    wrapped[f"{prefix}{norm}.new_mean"] = mean
    wrapped[f"{prefix}{norm}.new_std"] = std
    for k, v in sd.items():
      wrapped[f"{prefix}model.{k}"] = v
  out = {weights_key: wrapped,
         "optimizer": {"state": {}, "param_groups": [{"lr": 0.1, "momentum": 0.9,
                                                      "weight_decay": 1e-4}]},
         "schedule": None, "epoch": 90}
  out["adv_prec1" if eps > 0 else "nat_prec1"] = 0.5
  return out


def write_checkpoints(folder: str, config: Mapping[str, Any]) -> list[str]:
  """Writes `CHECKPOINTS` under `folder` (atomically each); returns their paths."""
  from sims import pretrained_reliance
  from spurjax import pretrained
  planes = tuple(int(p) for p in str(config["planes"]).split(","))
  paths = []
  for i, (name, (arch, fmt, key)) in enumerate(sorted(CHECKPOINTS.items())):
    _, _, eps = pretrained_reliance.parse_checkpoint_name(name)
    sd = torchvision_state_dict(arch, stem_width=int(config["stem_width"]), planes=planes,
                                seed=int(config["seed"]) * 100 + i)
    path = os.path.join(folder, name)
    pretrained.write_torch_checkpoint(
        path, robustness_checkpoint(sd, weights_key=key, eps=eps, seed=i),
        legacy=(fmt == "legacy"))
    paths.append(path)
  return paths


def command(paths: Mapping[str, str], checkpoints_glob: str, workdir: str) -> str:
  """The `sims.pretrained_reliance` command line for the fixture under `paths`."""
  args = ["python", "-m", "sims.pretrained_reliance", f"--checkpoints={checkpoints_glob}"]
  for flag in ("in9", "waterbirds", "rival10", "salient_masks", "imagenet",
               "salient_annotations", "objectnet"):
    args.append(f"--{flag}={paths[flag]}")
  args += [f"--workdir={workdir}", "--preset=small"]
  return " ".join(shlex.quote(a) for a in args)


def run(config: Mapping[str, Any], workdir: str) -> dict[str, Any]:
  """Writes the trees, the ImageNet val tree and the checkpoints; returns `fixtures.json`."""
  import jax
  from spurjax import fixture_trees
  from spurjax import io
  start = time.perf_counter()
  if os.path.exists(os.path.join(workdir, "fixtures.json")) or os.path.exists(
      os.path.join(workdir, "imagenet9")):
    raise ValueError(f"--workdir: {workdir} already holds a fixture; use a new folder")
  os.makedirs(workdir, exist_ok=True)
  paths = fixture_trees.write_all(workdir, jax.random.key(int(config["seed"])),
                                  per_class=int(config["per_class"]),
                                  image_size=int(config["image_size"]))
  # The real ImageNet download holds train/ and val/ side by side.
  val = os.path.join(paths["imagenet"], "val")
  os.rename(paths.pop("imagenet_val"), val)
  ckpt_dir = os.path.join(workdir, "checkpoints")
  ckpts = write_checkpoints(ckpt_dir, config)
  glob = os.path.join(ckpt_dir, "*.ckpt")
  out = {"benchmarks": paths, "imagenet_val": val, "checkpoints": ckpts,
         "checkpoints_glob": glob,
         "command": command(paths, glob, os.path.join(workdir, "reliance"))}
  io.write_json(os.path.join(workdir, "fixtures.json"), out)
  _common.write_manifest(workdir, config=dict(config), seed=int(config["seed"]),
                         wall_time_s=time.perf_counter() - start,
                         outputs=["fixtures.json", "truth.json", "checkpoints/"] + sorted(
                             os.path.relpath(p, workdir) + ("/" if os.path.isdir(p) else "")
                             for p in paths.values()))
  return out


def define_flags() -> None:
  """The absl flags (defined only when run as a program; tests call `run`)."""
  from absl import flags
  _common.define_common_flags("results/fixture_benchmarks", PRESETS, x64_default=False)
  flags.DEFINE_integer("per_class", None, "Images per class in each tree.", lower_bound=1)
  flags.DEFINE_integer("image_size", None, "Side of the procedural draws.", lower_bound=16)
  flags.DEFINE_integer("stem_width", None, "Stem width of the fixture ResNets.",
                       lower_bound=1)
  flags.DEFINE_string("planes", None, "Four stage widths of the fixture ResNets.")
  flags.DEFINE_integer("seed", None, "Seed of the trees and weights.", lower_bound=0)


def main(argv):
  from absl import app
  from absl import flags
  from absl import logging
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  config = _common.resolve_config(PRESETS, CONFIG_FLAGS)
  planes = str(config["planes"]).split(",")
  if len(planes) != 4 or not all(p.strip().isdigit() and int(p) > 0 for p in planes):
    raise app.UsageError(f"--planes: four positive ints, got {config['planes']!r}")
  _common.start_runtime()
  try:
    out = run(config, flags.FLAGS.workdir)
  except ValueError as e:
    raise app.UsageError(str(e)) from e
  logging.info("fixture written under %s; its sims.pretrained_reliance command follows",
               flags.FLAGS.workdir)
  print(out["command"])


if __name__ == "__main__":
  from absl import app as _app
  define_flags()
  _app.run(main)

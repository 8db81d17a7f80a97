"""ImageNet ResNets that compute exactly what torchvision's do, in Flax NNX.

`imagenet_resnet(arch, num_classes, rngs=...)` builds resnet18/34/50/101, wide_resnet50_2
(torchvision) and wide_resnet50_4 (the robustness library's ResNet-50 with
`width_per_group=256`). Submodules carry torchvision's names (`conv1`, `bn1`,
`layer{1..4}[i].conv{1,2,3}` / `bn{1,2,3}`, `downsample[0/1]`, `fc`) so a torch state dict
maps onto them one key at a time (`spurjax.pretrained`).

Three details make the outputs equal torch's, not merely shaped alike:
- Padding is explicit and symmetric, as torch pads: `(3, 3)` for the 7x7 stride-2 stem,
  `(1, 1)` for every 3x3 conv and for the 3x3 stride-2 max-pool (which pads with -inf).
  XLA's "SAME" would pad `(2, 3)` / `(0, 1)` at even sizes: same shapes, different numbers.
- BatchNorm epsilon is 1e-5 and momentum 0.1 in torch's convention (0.9 in Flax's).
- The stride of a bottleneck sits on its 3x3 conv (torchvision "ResNet v1.5").

Every spurjax model takes `(B, H, W, 3)` float32 images in [0, 1]; the per-channel
normalization `(x - mean) / std` is inside the model, with `mean`/`std` stored as
non-trainable `Normalizer` variables so a checkpoint's own normalizer can be loaded (the
robustness library's models also clamp to [0, 1] first, which is the identity on valid
inputs). Width knobs (`stem_width`, `planes`, `width_per_group`) build width-reduced nets of
the same topology for tests.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
BN_EPS = 1e-5
BN_MOMENTUM = 0.9  # Flax convention: running = 0.9 running + 0.1 batch, torch's momentum 0.1

# arch -> (block, blocks per stage, width_per_group)
ARCH_SPECS: dict[str, tuple[str, tuple[int, int, int, int], int]] = {
    "resnet18": ("basic", (2, 2, 2, 2), 64),
    "resnet34": ("basic", (3, 4, 6, 3), 64),
    "resnet50": ("bottleneck", (3, 4, 6, 3), 64),
    "resnet101": ("bottleneck", (3, 4, 23, 3), 64),
    "wide_resnet50_2": ("bottleneck", (3, 4, 6, 3), 128),
    "wide_resnet50_4": ("bottleneck", (3, 4, 6, 3), 256),
}
IMAGENET_ARCHS = tuple(ARCH_SPECS)
DEFAULT_PLANES = (64, 128, 256, 512)


class Normalizer(nnx.Variable):
  """Non-trainable per-channel input statistics (not a Param, not a BatchStat)."""


@dataclasses.dataclass(frozen=True)
class ResNetSpec:
  """Static description of an ImageNet ResNet (what the native checkpoint header stores).

  Attributes:
    arch: a key of `ARCH_SPECS`.
    num_classes: logits.
    stem_width: output channels of the 7x7 stem (torchvision: 64).
    planes: the four stages' `planes` (torchvision: 64, 128, 256, 512); a basic block
      outputs `planes`, a bottleneck `4 planes` with `int(planes * width_per_group / 64)`
      channels inside.
    width_per_group: torchvision's `width_per_group` (64, or 128 / 256 for the wide nets).
  """
  arch: str
  num_classes: int = 1000
  stem_width: int = 64
  planes: tuple[int, int, int, int] = DEFAULT_PLANES
  width_per_group: int | None = None

  def __post_init__(self):
    if self.arch not in ARCH_SPECS:
      raise ValueError(f"arch: unknown architecture {self.arch!r}; "
                       f"expected one of {sorted(ARCH_SPECS)}")
    object.__setattr__(self, "planes", tuple(int(p) for p in self.planes))
    if self.width_per_group is None:
      object.__setattr__(self, "width_per_group", ARCH_SPECS[self.arch][2])
    if not isinstance(self.num_classes, int) or self.num_classes < 1:
      raise ValueError(f"num_classes: must be an int >= 1, got {self.num_classes!r}")
    if not isinstance(self.stem_width, int) or self.stem_width < 1:
      raise ValueError(f"stem_width: must be a positive int, got {self.stem_width!r}")
    if len(self.planes) != 4 or min(self.planes) < 1:
      raise ValueError(f"planes: expected 4 positive ints, got {self.planes}")
    if not isinstance(self.width_per_group, int) or self.width_per_group < 1:
      raise ValueError(f"width_per_group: must be a positive int, got {self.width_per_group!r}")
    if self.block == "basic" and self.width_per_group != 64:
      raise ValueError(f"width_per_group: basic-block nets ({self.arch}) only support 64, "
                       f"got {self.width_per_group}")
    if self.block == "bottleneck" and min(self.mid_widths) < 1:
      raise ValueError(f"width_per_group: {self.width_per_group} gives an empty bottleneck "
                       f"for planes {self.planes}")

  @property
  def block(self) -> str:
    return ARCH_SPECS[self.arch][0]

  @property
  def depths(self) -> tuple[int, int, int, int]:
    return ARCH_SPECS[self.arch][1]

  @property
  def expansion(self) -> int:
    return 1 if self.block == "basic" else 4

  @property
  def mid_widths(self) -> tuple[int, ...]:
    """Channels inside each stage's bottleneck: `int(planes * width_per_group / 64)`."""
    return tuple(int(p * (self.width_per_group / 64.0)) for p in self.planes)

  @property
  def num_features(self) -> int:
    """Width of the pooled penultimate features, `planes[3] * expansion`."""
    return self.planes[3] * self.expansion

  def to_dict(self) -> dict:
    d = dataclasses.asdict(self)
    d["planes"] = list(self.planes)
    return d

  @classmethod
  def from_dict(cls, d: dict) -> "ResNetSpec":
    known = {f.name for f in dataclasses.fields(cls)}
    extra = set(d) - known
    if extra:
      raise ValueError(f"spec: unknown fields {sorted(extra)}")
    return cls(**{**d, "planes": tuple(d.get("planes", DEFAULT_PLANES))})


def _np_zeros(key, shape, dtype=np.float32):
  """Initializer for skeleton models (`init=False`): NumPy zeros, no JAX op, no RNG use."""
  del key
  return np.zeros(shape, dtype)


# Set while building a skeleton: every initializer returns NumPy zeros (values are about to
# be replaced by a checkpoint's, and random init of 25-70M parameters costs seconds).
_SKELETON = [False]


def _conv(cin: int, cout: int, k: int, stride: int, rngs: nnx.Rngs) -> nnx.Conv:
  """Bias-free conv with torch's symmetric padding `k // 2` (1x1: 0, 3x3: 1, 7x7: 3)."""
  p = k // 2
  init = (_np_zeros if _SKELETON[0]
          else nnx.initializers.variance_scaling(2.0, "fan_out", "normal"))
  return nnx.Conv(cin, cout, (k, k), strides=(stride, stride), padding=((p, p), (p, p)),
                  use_bias=False, kernel_init=init, rngs=rngs)


def _bn(c: int, rngs: nnx.Rngs) -> nnx.BatchNorm:
  return nnx.BatchNorm(c, epsilon=BN_EPS, momentum=BN_MOMENTUM,
                       scale_init=_np_zeros if _SKELETON[0] else nnx.initializers.ones,
                       bias_init=_np_zeros if _SKELETON[0] else nnx.initializers.zeros,
                       rngs=rngs)


def max_pool_3x3_s2(x: jax.Array) -> jax.Array:
  """torch `MaxPool2d(3, stride=2, padding=1)`: `(B, H, W, C) -> (B, (H-1)//2+1, ...)`,
  padding with -inf so the border never wins."""
  return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 3, 3, 1), (1, 2, 2, 1),
                               ((0, 0), (1, 1), (1, 1), (0, 0)))


class BasicBlock(nnx.Module):
  """torchvision BasicBlock: relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))."""

  def __init__(self, cin: int, planes: int, stride: int, *, rngs: nnx.Rngs):
    self.conv1 = _conv(cin, planes, 3, stride, rngs)
    self.bn1 = _bn(planes, rngs)
    self.conv2 = _conv(planes, planes, 3, 1, rngs)
    self.bn2 = _bn(planes, rngs)
    self.downsample = (nnx.List([_conv(cin, planes, 1, stride, rngs), _bn(planes, rngs)])
                       if stride != 1 or cin != planes else None)

  def __call__(self, x: jax.Array) -> jax.Array:
    s = x if self.downsample is None else self.downsample[1](self.downsample[0](x))
    y = jax.nn.relu(self.bn1(self.conv1(x)))
    return jax.nn.relu(self.bn2(self.conv2(y)) + s)


class Bottleneck(nnx.Module):
  """torchvision Bottleneck (v1.5): 1x1 -> 3x3 (stride here) -> 1x1 (x4), plus shortcut."""

  def __init__(self, cin: int, planes: int, mid: int, stride: int, *, rngs: nnx.Rngs):
    out = 4 * planes
    self.conv1 = _conv(cin, mid, 1, 1, rngs)
    self.bn1 = _bn(mid, rngs)
    self.conv2 = _conv(mid, mid, 3, stride, rngs)
    self.bn2 = _bn(mid, rngs)
    self.conv3 = _conv(mid, out, 1, 1, rngs)
    self.bn3 = _bn(out, rngs)
    self.downsample = (nnx.List([_conv(cin, out, 1, stride, rngs), _bn(out, rngs)])
                       if stride != 1 or cin != out else None)

  def __call__(self, x: jax.Array) -> jax.Array:
    s = x if self.downsample is None else self.downsample[1](self.downsample[0](x))
    y = jax.nn.relu(self.bn1(self.conv1(x)))
    y = jax.nn.relu(self.bn2(self.conv2(y)))
    return jax.nn.relu(self.bn3(self.conv3(y)) + s)


class ImageNetResNet(nnx.Module):
  """torchvision ResNet with the input normalization inside.

  `__call__`: `(B, H, W, 3)` in [0, 1] -> logits `(B, num_classes)`;
  `features`: `(B, H, W, 3)` -> pooled penultimate features `(B, num_features)`.
  Any H, W >= 1 works (torch's output-size rule `floor((n + 2p - k) / s) + 1` per layer).
  """

  def __init__(self, spec: ResNetSpec, *, rngs: nnx.Rngs):
    self.spec = spec
    self.mean = Normalizer(jnp.asarray(IMAGENET_MEAN, jnp.float32))
    self.std = Normalizer(jnp.asarray(IMAGENET_STD, jnp.float32))
    self.conv1 = _conv(3, spec.stem_width, 7, 2, rngs)
    self.bn1 = _bn(spec.stem_width, rngs)
    cin = spec.stem_width
    for i in range(4):
      blocks = []
      for j in range(spec.depths[i]):
        stride = 2 if (i > 0 and j == 0) else 1
        if spec.block == "basic":
          blocks.append(BasicBlock(cin, spec.planes[i], stride, rngs=rngs))
        else:
          blocks.append(Bottleneck(cin, spec.planes[i], spec.mid_widths[i], stride, rngs=rngs))
        cin = spec.planes[i] * spec.expansion
      setattr(self, f"layer{i + 1}", nnx.List(blocks))
    self.fc = (nnx.Linear(cin, spec.num_classes, kernel_init=_np_zeros, bias_init=_np_zeros,
                          rngs=rngs) if _SKELETON[0]
               else nnx.Linear(cin, spec.num_classes, rngs=rngs))

  def features(self, x: jax.Array) -> jax.Array:
    """Pooled penultimate features `(B, num_features)` of images `(B, H, W, 3)` in [0, 1]."""
    if x.ndim != 4 or x.shape[-1] != 3:
      raise ValueError(f"images: expected (B, H, W, 3), got shape {x.shape}")
    x = (x - self.mean[...].reshape(1, 1, 1, 3)) / self.std[...].reshape(1, 1, 1, 3)
    x = jax.nn.relu(self.bn1(self.conv1(x)))
    x = max_pool_3x3_s2(x)
    for i in range(4):
      for block in getattr(self, f"layer{i + 1}"):
        x = block(x)
    return jnp.mean(x, axis=(1, 2))

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.fc(self.features(x))


def imagenet_resnet(arch: str, num_classes: int = 1000, *, rngs: nnx.Rngs,
                    stem_width: int = 64, planes: Sequence[int] = DEFAULT_PLANES,
                    width_per_group: int | None = None) -> ImageNetResNet:
  """Builds a torchvision-exact ImageNet ResNet by name.

  Args:
    arch: "resnet18", "resnet34", "resnet50", "resnet101", "wide_resnet50_2" or
      "wide_resnet50_4".
    num_classes: logits.
    rngs: parameter RNGs (conv kernels: He normal, fan-out, as torchvision).
    stem_width, planes, width_per_group: width knobs (defaults: the published nets;
      width_per_group None takes the arch's own: 64, 128 or 256).

  Returns:
    An `ImageNetResNet` in train mode; `models.eval_view` gives the eval view.
  """
  return ImageNetResNet(ResNetSpec(arch, num_classes, stem_width, tuple(planes),
                                   width_per_group), rngs=rngs)


def skeleton(spec: ResNetSpec) -> ImageNetResNet:
  """An `ImageNetResNet` for `spec` with all-zero parameters, built without JAX random ops
  (fast; for loading a checkpoint's values into it)."""
  _SKELETON[0] = True
  try:
    return ImageNetResNet(spec, rngs=nnx.Rngs(0))
  finally:
    _SKELETON[0] = False


def suite_builder(arch: str):
  """A `models.ARCHS`-style constructor for `arch`:
  `(num_classes, *, in_channels, rngs, width=None, conv_impl=None) -> ImageNetResNet`.
  `width` w gives stem w and planes `(w, 2w, 4w, 8w)` (default 64); only 3 channels."""

  def build(num_classes: int, *, in_channels: int = 3, rngs: nnx.Rngs,
            width: int | None = None, conv_impl: str | None = None) -> ImageNetResNet:
    del conv_impl  # one implementation (XLA convolutions)
    if in_channels != 3:
      raise ValueError(f"in_channels: ImageNet ResNets take 3 channels, got {in_channels}")
    w = 64 if width is None else width
    return imagenet_resnet(arch, num_classes, rngs=rngs, stem_width=w,
                           planes=(w, 2 * w, 4 * w, 8 * w))

  build.__name__ = f"imagenet_{arch}"
  return build

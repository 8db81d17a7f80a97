"""Flax NNX image classifiers: a small CNN for CPU runs and a ResNet-18 for GPU runs.

Both take NHWC float images in [0, 1] and return logits `(B, num_classes)`. Both use
BatchNorm (optional for `SmallCNN`), so they have a train mode (batch statistics, running
averages updated) and an eval mode (running averages). The train/eval switch of Flax NNX has
changed across minor versions, so it lives in `eval_view`/`train_view` only (flax 0.12:
`nnx.view`). Attacks always run on `eval_view(model)`: examples are then independent, and
under `jit` a train-mode BatchNorm would try to write its statistics from inside the
attack's gradient trace.

`make_model(arch, num_classes, rngs=...)` builds a model by name, for configs and sims.
"""

from __future__ import annotations

from typing import Callable, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

# Running averages follow the batch statistics faster than Flax's default 0.99, which matters
# for the short CPU runs: attacks are computed with the running averages.
BN_MOMENTUM = 0.9


def eval_view(model: nnx.Module) -> nnx.Module:
  """The model in eval mode (BatchNorm on running averages, no dropout); shares parameters."""
  return nnx.view(model, deterministic=True, use_running_average=True,
                  raise_if_not_found=False)


def train_view(model: nnx.Module) -> nnx.Module:
  """The model in train mode (BatchNorm on batch statistics, updating its running averages)."""
  return nnx.view(model, deterministic=False, use_running_average=False,
                  raise_if_not_found=False)


class Im2colConv(nnx.Module):
  """Stride-1 SAME convolution written as one matmul on im2col patches.

  y[b, i, j, :] = sum_{di, dj, c} x_pad[b, i + di, j + dj, c] K[di, dj, c, :]: the kh*kw
  shifted views of the padded input are concatenated on the channel axis, `(B, H, W,
  kh kw Cin)`, and multiplied by the kernel reshaped to `(kh kw Cin, Cout)`. Same parameters
  (`kernel` `(kh, kw, Cin, Cout)`, lecun-normal) and same values as `nnx.Conv`. On XLA:CPU
  (jax 0.10) the small CNN's forward + input gradient inside a `fori_loop`, as PGD runs it,
  is about 2x faster this way than through `conv_general_dilated`; as a single call outside
  a loop XLA's convolution is the faster one (benchmarks/step_breakdown.py
  --conv_variants, benchmarks/README.md).
  """

  def __init__(self, cin: int, cout: int, kernel_size: tuple[int, int], *,
               use_bias: bool = True, rngs: nnx.Rngs):
    kh, kw = kernel_size
    self.kernel = nnx.Param(nnx.initializers.lecun_normal()(rngs.params(),
                                                            (kh, kw, cin, cout)))
    self.bias = nnx.Param(jnp.zeros((cout,))) if use_bias else None

  def __call__(self, x: jax.Array) -> jax.Array:
    kh, kw, cin, cout = self.kernel.shape
    b, h, w, _ = x.shape
    ph, pw = (kh - 1) // 2, (kw - 1) // 2
    xp = jnp.pad(x, ((0, 0), (ph, kh - 1 - ph), (pw, kw - 1 - pw), (0, 0)))
    patches = jnp.concatenate(
        [xp[:, i:i + h, j:j + w, :] for i in range(kh) for j in range(kw)], axis=-1)
    y = jnp.dot(patches.reshape(b * h * w, kh * kw * cin),
                self.kernel[...].reshape(kh * kw * cin, cout)).reshape(b, h, w, cout)
    return y if self.bias is None else y + self.bias[...]


CONV_IMPLS = ("xla", "im2col")


def max_pool_2x2(x: jax.Array) -> jax.Array:
  """2x2 max-pool with stride 2, `(B, H, W, C) -> (B, H // 2, W // 2, C)` (odd edges dropped).

  Written as a reshape and a max over the two window axes rather than `reduce_window`: the
  gradient is then a mask multiply instead of XLA's `select_and_scatter`, which is slow on
  CPU. On ties the gradient is shared among the maxima rather than given to the first one.
  """
  b, h, w, c = x.shape
  x = x[:, :h - h % 2, :w - w % 2, :]
  return jnp.max(x.reshape(b, h // 2, 2, w // 2, 2, c), axis=(2, 4))


class _ConvBN(nnx.Module):
  """3x3 (or kxk) convolution, optional BatchNorm, optional ReLU."""

  def __init__(self, cin: int, cout: int, *, kernel: int = 3, stride: int = 1,
               batch_norm: bool = True, relu: bool = True, conv_impl: str = "xla",
               rngs: nnx.Rngs):
    if conv_impl not in CONV_IMPLS:
      raise ValueError(f"conv_impl: expected one of {CONV_IMPLS}, got {conv_impl!r}")
    if conv_impl == "im2col" and stride == 1:
      self.conv = Im2colConv(cin, cout, (kernel, kernel), use_bias=not batch_norm, rngs=rngs)
    else:
      self.conv = nnx.Conv(cin, cout, (kernel, kernel), strides=(stride, stride),
                           padding="SAME", use_bias=not batch_norm, rngs=rngs)
    self.bn = nnx.BatchNorm(cout, momentum=BN_MOMENTUM, rngs=rngs) if batch_norm else None
    self.relu = relu

  def __call__(self, x: jax.Array) -> jax.Array:
    x = self.conv(x)
    if self.bn is not None:
      x = self.bn(x)
    return jax.nn.relu(x) if self.relu else x


class SmallCNN(nnx.Module):
  """Three conv blocks (widths `(w, 2w, 4w)`, default 32-64-128), 2x2 max-pool after the first
  two, global average pool, linear head. Convolutions are `Im2colConv` by default (faster
  on CPU); `conv_impl="xla"` uses `nnx.Conv` (same parameters, same function).

  `(B, H, W, C) -> (B, num_classes)`; about `2 * 9 * H W (3 w + w 2w / 4 + 2w 4w / 16)`
  FLOPs per image in the forward pass (convolutions only).
  """

  def __init__(self, num_classes: int, *, width: int = 32, in_channels: int = 3,
               batch_norm: bool = True, conv_impl: str = "im2col", rngs: nnx.Rngs):
    w = width
    kw = dict(batch_norm=batch_norm, conv_impl=conv_impl, rngs=rngs)
    self.block1 = _ConvBN(in_channels, w, **kw)
    self.block2 = _ConvBN(w, 2 * w, **kw)
    self.block3 = _ConvBN(2 * w, 4 * w, **kw)
    self.head = nnx.Linear(4 * w, num_classes, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    x = max_pool_2x2(self.block1(x))
    x = max_pool_2x2(self.block2(x))
    x = self.block3(x)
    return self.head(jnp.mean(x, axis=(1, 2)))


class _BasicBlock(nnx.Module):
  """ResNet basic block: conv-BN-ReLU, conv-BN, plus (projected) shortcut, ReLU."""

  def __init__(self, cin: int, cout: int, stride: int, *, conv_impl: str, rngs: nnx.Rngs):
    self.a = _ConvBN(cin, cout, stride=stride, conv_impl=conv_impl, rngs=rngs)
    self.b = _ConvBN(cout, cout, relu=False, conv_impl=conv_impl, rngs=rngs)
    self.shortcut = (_ConvBN(cin, cout, kernel=1, stride=stride, relu=False, rngs=rngs)
                     if stride != 1 or cin != cout else None)

  def __call__(self, x: jax.Array) -> jax.Array:
    s = x if self.shortcut is None else self.shortcut(x)
    return jax.nn.relu(self.b(self.a(x)) + s)


class ResNet18(nnx.Module):
  """CIFAR-style ResNet-18 (He et al. 2016): 3x3 stem, four stages of two basic blocks with
  widths `(w, 2w, 4w, 8w)` (default 64-...-512) and strides 1, 2, 2, 2, global average pool,
  linear head. `(B, H, W, C) -> (B, num_classes)`; for 32x32 to 64x64 inputs. Default
  `conv_impl="xla"` (cuDNN convolutions on GPU); "im2col" changes the stride-1 3x3 convs.
  """

  def __init__(self, num_classes: int, *, width: int = 64, in_channels: int = 3,
               conv_impl: str = "xla", rngs: nnx.Rngs):
    w = width
    self.stem = _ConvBN(in_channels, w, conv_impl=conv_impl, rngs=rngs)
    blocks = []
    cin = w
    for i, cout in enumerate((w, 2 * w, 4 * w, 8 * w)):
      for j in range(2):
        blocks.append(_BasicBlock(cin, cout, 2 if (i > 0 and j == 0) else 1,
                                  conv_impl=conv_impl, rngs=rngs))
        cin = cout
    self.blocks = nnx.List(blocks)
    self.head = nnx.Linear(cin, num_classes, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    x = self.stem(x)
    for block in self.blocks:
      x = block(x)
    return self.head(jnp.mean(x, axis=(1, 2)))


ARCHS: dict[str, Callable[..., nnx.Module]] = {"small_cnn": SmallCNN, "resnet18": ResNet18}
# torchvision-exact ImageNet ResNets, as "imagenet_resnet50" etc. ("resnet18" is the CIFAR one).
from spurjax.imagenet_models import imagenet_resnet, IMAGENET_ARCHS, suite_builder  # noqa: E402
ARCHS.update({f"imagenet_{a}": suite_builder(a) for a in IMAGENET_ARCHS})


def make_model(arch: str, num_classes: int, *, rngs: nnx.Rngs, width: int | None = None,
               in_channels: int = 3, conv_impl: str | None = None) -> nnx.Module:
  """Builds the architecture named `arch` ("small_cnn" or "resnet18").

  Args:
    arch: a key of `ARCHS`.
    num_classes: number of output logits, >= 2.
    rngs: parameter RNGs.
    width: base channel count; None keeps the architecture's default (32 / 64).
    in_channels: image channels.
    conv_impl: "xla" or "im2col"; None keeps the architecture's default ("im2col" for the
      CPU network, "xla" for ResNet-18).

  Returns:
    An `nnx.Module` in train mode; use `eval_view` for inference and attacks.
  """
  if arch not in ARCHS:
    raise ValueError(f"arch: unknown architecture {arch!r}; expected one of {sorted(ARCHS)}")
  if not isinstance(num_classes, int) or num_classes < 2:
    raise ValueError(f"num_classes: must be an int >= 2, got {num_classes!r}")
  if width is not None and (not isinstance(width, int) or width < 1):
    raise ValueError(f"width: must be a positive int, got {width!r}")
  if conv_impl is not None and conv_impl not in CONV_IMPLS:
    raise ValueError(f"conv_impl: expected one of {CONV_IMPLS}, got {conv_impl!r}")
  kwargs = {} if width is None else {"width": width}
  if conv_impl is not None:
    kwargs["conv_impl"] = conv_impl
  return ARCHS[arch](num_classes, in_channels=in_channels, rngs=rngs, **kwargs)


def count_params(model: nnx.Module) -> int:
  """Number of trainable parameters."""
  return sum(int(p.size) for p in jax.tree.leaves(nnx.state(model, nnx.Param)))


def forward_flops(model: nnx.Module, image_shape: Sequence[int]) -> int:
  """Forward-pass FLOPs per image (2 per multiply-add) of every conv and matmul.

  Counted from the jaxpr of one eval-mode forward pass: a convolution contributes
  `2 * (output elements) * (kernel height * width * input channels)`, a `dot_general`
  `2 * (output elements) * (contracted size)`. Elementwise ops are not counted.

  Args:
    model: an NNX model taking `(1, *image_shape)`.
    image_shape: `(H, W, C)`.
  """
  return _flops_by_trace(model, image_shape)


def _flops_by_trace(model: nnx.Module, image_shape: Sequence[int]) -> int:
  """Counts 2*MACs of every conv and dot in the jaxpr of one forward pass."""
  x = jax.ShapeDtypeStruct((1, *image_shape), jnp.float32)
  view = eval_view(model)
  jaxpr = jax.make_jaxpr(lambda x: view(x))(x)
  total = 0

  def visit(jp):
    nonlocal total
    for eqn in jp.eqns:
      name = eqn.primitive.name
      if name == "conv_general_dilated":
        out = eqn.outvars[0].aval.shape
        rhs = eqn.invars[1].aval.shape
        # Output elements * (kernel spatial * in-features) multiply-adds.
        dn = eqn.params["dimension_numbers"]
        k_spatial = 1
        for d in dn.rhs_spec[2:]:
          k_spatial *= rhs[d]
        cin = rhs[dn.rhs_spec[1]]
        n = 1
        for s in out:
          n *= s
        total += 2 * n * k_spatial * cin
      elif name == "dot_general":
        (lc, _), _ = eqn.params["dimension_numbers"]
        lhs = eqn.invars[0].aval.shape
        out = eqn.outvars[0].aval.shape
        k = 1
        for d in lc:
          k *= lhs[d]
        n = 1
        for s in out:
          n *= s
        total += 2 * n * k
      for p in eqn.params.values():
        if hasattr(p, "jaxpr") and hasattr(p.jaxpr, "eqns"):
          visit(p.jaxpr)
        elif hasattr(p, "eqns"):
          visit(p)

  visit(jaxpr.jaxpr)
  return total

"""The procedural spurious-image dataset: shapes (core) on class-correlated textures (spurious).

Everything is generated from a PRNG key on the fly, in pure jit-able JAX; no files. Each image
of side S (any multiple of 8) is rendered as

  x = marker_mask * marker_colour + (1 - marker_mask) * (m * colour + (1 - m) * background),

where
- m is the binary foreground mask of the object, a class-defined shape (`SHAPES`) with random
  position, size, rotation and colour drawn independently of the class, so only the shape is
  a core feature;
- the background is an oriented sinusoidal texture with a per-style orientation, frequency and
  tint, `clip(tint_s + bg_contrast / 2 * sin(2 pi f_s (u cos t_s + v sin t_s) + phase), 0, 1)`
  with (u, v) the pixel centre in [0, 1]^2 and a random phase; the tint is
  `tint_s = 0.5 + tint_amp * cos(2 pi s / K + (0, 2, 4) pi / 3)` per RGB channel
  (`tint_amp` = 0.15 by default; set it proportional to `bg_contrast` to scale the whole
  background cue with one number). Style s equals the class y with
  probability p, otherwise it is uniform over the other K - 1 styles, so that
  P(style = y) = p exactly and p = 1/K makes the style independent of the class;
- the optional marker (`DataConfig.marker`) is a small square of a per-class colour in a
  random corner, matching the class with probability `marker_p` (same rule), drawn under the
  object (its mask excludes the object).

Domains (`DOMAINS`):
- "train": in-distribution, P(style = y) = p, poses as in training.
- "uncorrelated": P(style = y) = 1/K (marker uncorrelated too), training poses.
- "shifted": nuisance shift of severity s = `shift_severity` in [0, 1] applied to the factors
  in `shift_factors` (each independently switchable). Each factor's value is the mixture
  (1 - s) training draw + s full-shift draw, so s = 0 is the training distribution and s = 1
  the full shift: "size" (full shift: object radius smaller or larger than any training
  object), "pose" (rotation; full shift: |angle| in [30, 150] degrees, training uses
  [-30, 30]), "position" (full shift: off-centre by 0.2-0.3 of the side), "background"
  (P(style = y) = (1 - s) p + s / K, the marker likewise; full shift: uniformly random
  backgrounds and markers). Objects are kept inside the image (centre clipped to
  0.75 radius from the border).
- "waterbirds_train" / "waterbirds_test": binary Waterbirds-style split. The label is the
  superclass y = floor(2 c / K) of the shape class c; the place is the superclass of the
  background style; P(place = y) = `wb_p_train` (0.95) or `wb_p_test` (0.5); the group is
  g = 2 y + place. c is uniform within the superclass y, the style uniform within the place.

The soft mask (Salient-ImageNet stand-in) is the foreground mask dilated by max(1, S // 16)
pixels and blurred with a Gaussian of std S / 32 pixels, combined with the binary mask by a
maximum, so it is exactly 1 on the object, in [0, 1] and has maximum 1.

Training batches: `sample_batch(key, config, batch_size, domain="train")`.
Evaluation sets for `spurjax.reliance.evaluate`: `make_eval_set(key, config, n)` builds all
parts (in-distribution test set with masks and soft masks, the eight ImageNet-9 variants, the
Waterbirds-style test split and the shifted domain).
"""

from __future__ import annotations

import functools
import math
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from spurjax import evalset as evalset_lib

SHIFT_FACTORS = ("size", "pose", "position", "background")
SHAPES = ("disc", "square", "triangle", "cross", "ring", "bar", "semicircle", "star",
          "crescent", "ell", "frame", "dumbbell")
DOMAINS = ("train", "uncorrelated", "shifted", "waterbirds_train", "waterbirds_test")


@flax.struct.dataclass
class DataConfig:
  """Parameters of the procedural dataset (a frozen pytree; sizes and flags are static).

  Attributes:
    image_size: S, side in pixels; a multiple of 8 (static).
    num_classes: K, number of shape classes, 2 <= K <= len(SHAPES) (static).
    marker: whether to draw the class-correlated marker cue (static).
    p: P(background style = class) in the "train" domain.
    bg_contrast: peak-to-peak amplitude of the background texture (spurious-feature scale).
    fg_scale: linear size multiplier of the object (the foreground area scales as
      fg_scale**2; core-feature scale). At 1.0 the object covers about 9% of the image.
    marker_p: P(marker colour = class) in the correlated domains.
    marker_side: marker side in pixels; 0 = max(2, S // 8) (static).
    marker_corner: -1 = a random corner per image, 0..3 = always that corner (static).
    wb_p_train: P(place = y) in "waterbirds_train".
    wb_p_test: P(place = y) in "waterbirds_test".
    tint_amp: amplitude of the per-style background tint around 0.5 (0.15; in [0, 0.5]).
    shift_severity: severity s in [0, 1] of the "shifted" domain (1 = the full shift; see
      the module docstring).
    shift_factors: the factors the "shifted" domain changes, a non-empty subset of
      `SHIFT_FACTORS` (static).
  """
  image_size: int = flax.struct.field(pytree_node=False, default=32)
  num_classes: int = flax.struct.field(pytree_node=False, default=10)
  marker: bool = flax.struct.field(pytree_node=False, default=False)
  marker_side: int = flax.struct.field(pytree_node=False, default=0)
  marker_corner: int = flax.struct.field(pytree_node=False, default=-1)
  p: float = 0.9
  bg_contrast: float = 0.5
  fg_scale: float = 1.0
  marker_p: float = 0.9
  wb_p_train: float = 0.95
  wb_p_test: float = 0.5
  tint_amp: float = 0.15
  shift_severity: float = 1.0
  shift_factors: tuple[str, ...] = flax.struct.field(pytree_node=False,
                                                     default=SHIFT_FACTORS)


@flax.struct.dataclass
class Batch:
  """A batch of procedural images (B examples, side S). All arrays are jax arrays.

  Attributes:
    images: `(B, S, S, 3)` float32 in [0, 1].
    labels: `(B,)` int32: the shape class in [0, K), or the binary y for Waterbirds domains.
    shape_ids: `(B,)` int32 shape class c in [0, K) (equal to labels outside Waterbirds).
    masks: `(B, S, S)` float32 in {0, 1}, the object's pixels.
    soft_masks: `(B, S, S)` float32 in [0, 1], dilated-and-blurred masks with maximum 1.
    boxes: `(B, 4)` int32 tight boxes `(y0, x0, y1, x1)` of `masks`, half-open.
    bg_ids: `(B,)` int32 background style in [0, K).
    places: `(B,)` int32 superclass of the style, floor(2 bg_id / K).
    groups: `(B,)` int32 g = 2 y + place for Waterbirds domains, -1 otherwise.
    marker_masks: `(B, S, S)` float32 in {0, 1} (all zero without a marker).
    marker_ids: `(B,)` int32 marker colour class, -1 without a marker.
    colors: `(B, 3)` float32 object colour (the image equals it on the mask).
  """
  images: jax.Array
  labels: jax.Array
  shape_ids: jax.Array
  masks: jax.Array
  soft_masks: jax.Array
  boxes: jax.Array
  bg_ids: jax.Array
  places: jax.Array
  groups: jax.Array
  marker_masks: jax.Array
  marker_ids: jax.Array
  colors: jax.Array


def validate_config(config: DataConfig) -> None:
  """Raises ValueError naming the first invalid field of a concrete `config`."""
  if not isinstance(config, DataConfig):
    raise ValueError(f"config: expected a DataConfig, got {type(config)}")
  s = config.image_size
  if not isinstance(s, int) or s < 8 or s % 8:
    raise ValueError(f"DataConfig.image_size: must be a positive multiple of 8, got {s}")
  k = config.num_classes
  if not isinstance(k, int) or not 2 <= k <= len(SHAPES):
    raise ValueError(f"DataConfig.num_classes: must be in [2, {len(SHAPES)}], got {k}")
  for name in ("p", "marker_p", "wb_p_train", "wb_p_test"):
    v = getattr(config, name)
    if isinstance(v, jax.core.Tracer):
      continue
    if not 0.0 <= float(v) <= 1.0:
      raise ValueError(f"DataConfig.{name}: must be a probability in [0, 1], got {v}")
  side = config.marker_side
  if not isinstance(side, int) or not 0 <= side <= s // 2:
    raise ValueError(f"DataConfig.marker_side: must be an int in [0, {s // 2}], got {side!r}")
  if config.marker_corner not in (-1, 0, 1, 2, 3):
    raise ValueError(f"DataConfig.marker_corner: must be -1 (random) or 0..3, got "
                     f"{config.marker_corner!r}")
  factors = config.shift_factors
  if (not isinstance(factors, tuple) or not factors
      or any(f not in SHIFT_FACTORS for f in factors) or len(set(factors)) != len(factors)):
    raise ValueError(f"DataConfig.shift_factors: must be a non-empty tuple of distinct names "
                     f"from {SHIFT_FACTORS}, got {factors!r}")
  for name, lo, hi in (("bg_contrast", 0.0, 1.0), ("fg_scale", 0.25, 2.0),
                       ("tint_amp", 0.0, 0.5), ("shift_severity", 0.0, 1.0)):
    v = getattr(config, name)
    if isinstance(v, jax.core.Tracer):
      continue
    if not lo <= float(v) <= hi:
      raise ValueError(f"DataConfig.{name}: must be in [{lo}, {hi}], got {v}")


def superclass(c: jax.Array, num_classes: int) -> jax.Array:
  """The binary superclass floor(2 c / K) of a class or style index (Waterbirds label/place)."""
  return (2 * c) // num_classes


# --------------------------------------------------------------------------- shapes
def _shape_masks(u: jax.Array, v: jax.Array) -> jax.Array:
  """All shapes at object coordinates (u, v) (units of the object radius); `(len(SHAPES), ...)`.

  The shapes are chosen to stay distinct under rotation (no square/diamond pair).
  """
  r2 = u * u + v * v
  rho = jnp.sqrt(r2)
  # cos(5 phi) = Re((u + i v)^5) / rho^5, without arctan2/cos (generation speed).
  cos5 = (u ** 5 - 10 * u ** 3 * v * v + 5 * u * v ** 4) / jnp.maximum(r2 * r2 * rho, 1e-12)
  au, av = jnp.abs(u), jnp.abs(v)
  cheb = jnp.maximum(au, av)
  return jnp.stack([
      rho <= 0.85,                                                     # disc
      cheb <= 0.7,                                                     # square
      (v >= -0.5) & (math.sqrt(3.0) * au + v <= 1.0),                  # triangle
      ((au <= 0.28) & (av <= 0.95)) | ((av <= 0.28) & (au <= 0.95)),   # cross
      (rho >= 0.55) & (rho <= 0.95),                                   # ring
      (au <= 0.95) & (av <= 0.3),                                      # bar
      (u * u + (v + 0.4) ** 2 <= 0.95 ** 2) & (v >= -0.4),             # semicircle
      rho <= 0.55 + 0.4 * cos5,                                      # star
      (rho <= 0.95) & ((u - 0.45) ** 2 + v * v > 0.75 ** 2),          # crescent
      ((u >= -0.8) & (u <= -0.3) & (av <= 0.8))
      | ((au <= 0.8) & (v >= 0.3) & (v <= 0.8)),                       # ell
      (cheb <= 0.8) & (cheb >= 0.5),                                   # frame
      ((u - 0.5) ** 2 + v * v <= 0.16) | ((u + 0.5) ** 2 + v * v <= 0.16)
      | ((au <= 0.5) & (av <= 0.12)),                                  # dumbbell
  ])


def _style_params(num_classes: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Per-style orientation `(K,)`, cycles per image side `(K,)` and unit tint direction
  `(K, 3)` (the tint is 0.5 + tint_amp * direction)."""
  k = np.arange(num_classes)
  theta = np.pi * k / num_classes
  freq = 2.0 + 1.5 * (k % 3)
  hue = 2 * np.pi * k / num_classes
  tint = np.cos(hue[:, None] + np.array([0.0, 2.0, 4.0])[None, :] * np.pi / 3.0)
  return theta.astype(np.float32), freq.astype(np.float32), tint.astype(np.float32)


def _marker_colors(num_classes: int) -> np.ndarray:
  """Saturated per-class marker colours `(K, 3)` (hue wheel)."""
  h = np.arange(num_classes) / num_classes
  rgb = 0.5 + 0.5 * np.cos(2 * np.pi * (h[:, None] - np.array([0.0, 1.0, 2.0])[None, :] / 3))
  return np.clip(1.6 * (rgb - 0.5) + 0.5, 0.0, 1.0).astype(np.float32)


def _grid(s: int) -> tuple[jax.Array, jax.Array]:
  c = (jnp.arange(s, dtype=jnp.float32) + 0.5) / s
  yy, xx = jnp.meshgrid(c, c, indexing="ij")
  return yy, xx


def _background(config: DataConfig, style: jax.Array, phase: jax.Array) -> jax.Array:
  """One background `(S, S, 3)` of the given style (scalar int) and phase (scalar)."""
  theta, freq, tint = _style_params(config.num_classes)
  yy, xx = _grid(config.image_size)
  t = jnp.asarray(theta)[style]
  arg = 2 * jnp.pi * jnp.asarray(freq)[style] * (xx * jnp.cos(t) + yy * jnp.sin(t)) + phase
  wave = 0.5 * config.bg_contrast * jnp.sin(arg)
  tint_s = 0.5 + config.tint_amp * jnp.asarray(tint)[style]
  return jnp.clip(tint_s[None, None, :] + wave[:, :, None], 0.0, 1.0)


def _object_mask(config: DataConfig, shape_id, cy, cx, radius, angle) -> jax.Array:
  """Binary mask `(S, S)` of shape `shape_id` centred at (cy, cx) (units of the side)."""
  yy, xx = _grid(config.image_size)
  dy, dx = (yy - cy) / radius, (xx - cx) / radius
  ca, sa = jnp.cos(angle), jnp.sin(angle)
  u = ca * dx + sa * dy
  v = -sa * dx + ca * dy
  return _shape_masks(u, v)[shape_id].astype(jnp.float32)


def _marker_mask(config: DataConfig, corner: jax.Array) -> jax.Array:
  """Square marker `(S, S)` of side `marker_side` (0: max(2, S // 8)) inset 1 px in corner
  0..3."""
  s = config.image_size
  side = config.marker_side or max(2, s // 8)
  idx = jnp.arange(s)
  lo_y = jnp.where(corner // 2 == 0, 1, s - 1 - side)
  lo_x = jnp.where(corner % 2 == 0, 1, s - 1 - side)
  in_y = (idx >= lo_y) & (idx < lo_y + side)
  in_x = (idx >= lo_x) & (idx < lo_x + side)
  return (in_y[:, None] & in_x[None, :]).astype(jnp.float32)


def _shifted_reduce(x: jax.Array, weights: np.ndarray | None, radius: int, axis: int,
                    pad_value: float) -> jax.Array:
  """Separable 1-D filter along `axis` of `(B, S, S)` as a sum (or max) of shifted slices.

  Shifted slices are several times faster on CPU than a one-channel convolution or
  reduce_window, which dominated the generation time.
  """
  pad = [(0, 0)] * x.ndim
  pad[axis] = (radius, radius)
  xp = jnp.pad(x, pad, constant_values=pad_value)
  n = x.shape[axis]
  out = None
  for t in range(2 * radius + 1):
    sl = jax.lax.slice_in_dim(xp, t, t + n, axis=axis)
    if weights is None:
      out = sl if out is None else jnp.maximum(out, sl)
    else:
      out = weights[t] * sl if out is None else out + weights[t] * sl
  return out


def _soft_masks(masks: jax.Array) -> jax.Array:
  """Dilate by max(1, S // 16) px, blur (std S / 32 px), max with the mask: `(B, S, S)`."""
  s = masks.shape[-1]
  d = max(1, s // 16)
  dil = _shifted_reduce(_shifted_reduce(masks, None, d, 1, 0.0), None, d, 2, 0.0)
  std = s / 32.0
  r = max(1, int(math.ceil(2 * std)))
  g = np.exp(-0.5 * (np.arange(-r, r + 1) / std) ** 2)
  g = (g / g.sum()).astype(np.float32)
  blur = _shifted_reduce(_shifted_reduce(dil, g, r, 1, 0.0), g, r, 2, 0.0)
  return jnp.clip(jnp.maximum(blur, masks), 0.0, 1.0)


def _boxes(masks: jax.Array) -> jax.Array:
  """Tight half-open boxes `(B, 4)` `(y0, x0, y1, x1)` of binary masks `(B, S, S)`."""
  s = masks.shape[-1]
  rows = jnp.any(masks > 0, axis=2)
  cols = jnp.any(masks > 0, axis=1)

  def span(a):
    lo = jnp.argmax(a, axis=1)
    hi = s - jnp.argmax(a[:, ::-1], axis=1)
    empty = ~jnp.any(a, axis=1)
    return jnp.where(empty, 0, lo), jnp.where(empty, 0, hi)

  y0, y1 = span(rows)
  x0, x1 = span(cols)
  return jnp.stack([y0, x0, y1, x1], axis=1).astype(jnp.int32)


def _correlated(key: jax.Array, target: jax.Array, prob, n_options: int) -> jax.Array:
  """Equals `target` with probability `prob`, else uniform over the other n_options - 1."""
  k1, k2 = jax.random.split(key)
  keep = jax.random.bernoulli(k1, prob, target.shape)
  other = (target + jax.random.randint(k2, target.shape, 1, n_options)) % n_options
  return jnp.where(keep, target, other).astype(jnp.int32)


def _in_half(key: jax.Array, half: jax.Array, num_classes: int) -> jax.Array:
  """A class uniform among those with superclass `half`: [0, ceil(K/2)) or [ceil(K/2), K)."""
  n0 = (num_classes + 1) // 2
  u = jax.random.uniform(key, half.shape)
  n = jnp.where(half == 0, n0, num_classes - n0)
  c = jnp.minimum(jnp.floor(u * n).astype(jnp.int32), n - 1)
  return jnp.where(half == 0, c, n0 + c).astype(jnp.int32)


def _domain_flags(config: DataConfig, domain: str) -> dict[str, Any]:
  """The domain as traced numbers, so that all domains share one compilation."""
  k = config.num_classes
  correlated = domain in ("train", "waterbirds_train")
  shifted = domain == "shifted"

  def severity(factor):
    on = shifted and factor in config.shift_factors
    return jnp.asarray(config.shift_severity if on else 0.0, jnp.float32)

  s_bg = severity("background")
  p_style = jnp.asarray(config.p if domain == "train" else 1.0 / k, jnp.float32)
  p_marker = jnp.asarray(config.marker_p if correlated else 1.0 / k, jnp.float32)
  if shifted:  # (1 - s) p + s / K: the training correlation at s = 0, none at s = 1.
    p_style = (1.0 - s_bg) * config.p + s_bg / k
    p_marker = (1.0 - s_bg) * config.marker_p + s_bg / k
  return {
      "waterbirds": jnp.asarray(domain.startswith("waterbirds")),
      "s_size": severity("size"),
      "s_pose": severity("pose"),
      "s_position": severity("position"),
      "p_style": jnp.asarray(p_style, jnp.float32),
      "p_place": jnp.asarray(config.wb_p_train if domain == "waterbirds_train"
                             else config.wb_p_test, jnp.float32),
      "p_marker": jnp.asarray(p_marker, jnp.float32),
  }


def _static(config: DataConfig) -> DataConfig:
  """`config` with the fields `_render` never reads (they act through `_domain_flags`) reset,
  so that changing the shift factors does not recompile the renderer."""
  return config.replace(shift_factors=SHIFT_FACTORS)


@functools.partial(jax.jit, static_argnames=("batch_size",))
def _render(key: jax.Array, config: DataConfig, batch_size: int,
            flags: dict[str, Any]) -> tuple[Batch, jax.Array]:
  """Samples latent factors and renders a batch and its backgrounds `(B, S, S, 3)`.

  See the module docstring for the model; `flags` comes from `_domain_flags`.
  """
  k = config.num_classes
  keys = jax.random.split(key, 12)
  b = (batch_size,)
  wb = flags["waterbirds"]
  # Waterbirds domains: y, place, then a class within y and a style within place.
  y = jax.random.bernoulli(keys[0], 0.5, b).astype(jnp.int32)
  place = _correlated(keys[1], y, flags["p_place"], 2)
  wb_shape = _in_half(keys[2], y, k)
  wb_style = _in_half(keys[3], place, k)
  # K-class domains: a uniform class and a style equal to it with probability p_style.
  cls = jax.random.randint(keys[2], b, 0, k).astype(jnp.int32)
  style = _correlated(keys[3], cls, flags["p_style"], k)
  shape_id = jnp.where(wb, wb_shape, cls)
  bg_id = jnp.where(wb, wb_style, style)
  labels = jnp.where(wb, y, cls)
  groups = jnp.where(wb, 2 * y + place, -1).astype(jnp.int32)
  places = superclass(bg_id, k)

  fs = config.fg_scale
  # Training poses: centred, mid-sized, mildly rotated.
  radius_t = jax.random.uniform(keys[5], b, minval=0.2, maxval=0.27) * fs
  angle_t = jax.random.uniform(keys[7], b, minval=-jnp.pi / 6, maxval=jnp.pi / 6)
  cy_t = jax.random.uniform(keys[8], b, minval=0.38, maxval=0.62)
  cx_t = jax.random.uniform(keys[9], b, minval=0.38, maxval=0.62)
  # Shifted poses: smaller or larger, strongly rotated, off-centre.
  big = jax.random.bernoulli(keys[4], 0.5, b)
  radius_s = jnp.where(big, jax.random.uniform(keys[5], b, minval=0.31, maxval=0.35),
                       jax.random.uniform(keys[5], b, minval=0.11, maxval=0.15)) * fs
  turn = jnp.where(jax.random.bernoulli(keys[6], 0.5, b), 1.0, -1.0)
  angle_s = turn * jax.random.uniform(keys[7], b, minval=jnp.pi / 6, maxval=5 * jnp.pi / 6)
  direction = jax.random.uniform(keys[8], b, minval=0.0, maxval=2 * jnp.pi)
  dist = jax.random.uniform(keys[9], b, minval=0.2, maxval=0.3)
  # Severity s per factor: (1 - s) training draw + s shifted draw (exact at s = 0 and 1).
  def mix(s, train_value, shifted_value):
    return (1.0 - s) * train_value + s * shifted_value

  radius = mix(flags["s_size"], radius_t, radius_s)
  angle = mix(flags["s_pose"], angle_t, angle_s)
  lim = jnp.clip(0.75 * radius, 0.05, 0.45)
  moved = flags["s_position"] > 0  # training centres are never clipped
  cy = jnp.where(moved, jnp.clip(mix(flags["s_position"], cy_t,
                                     0.5 + dist * jnp.sin(direction)), lim, 1 - lim), cy_t)
  cx = jnp.where(moved, jnp.clip(mix(flags["s_position"], cx_t,
                                     0.5 + dist * jnp.cos(direction)), lim, 1 - lim), cx_t)

  sign = jnp.where(jax.random.bernoulli(keys[10], 0.5, b), 1.0, -1.0)
  kc, kp, km, kcorner = jax.random.split(keys[11], 4)
  colors = 0.5 + sign[:, None] * (0.25 + 0.2 * jax.random.uniform(kc, b + (3,)))
  phase = jax.random.uniform(kp, b, minval=0.0, maxval=2 * jnp.pi)

  masks = jax.vmap(functools.partial(_object_mask, config))(shape_id, cy, cx, radius, angle)
  backgrounds = jax.vmap(functools.partial(_background, config))(bg_id, phase)
  images = masks[..., None] * colors[:, None, None, :] + (1 - masks[..., None]) * backgrounds

  if config.marker:
    marker_ids = _correlated(km, shape_id, flags["p_marker"], k)
    corner = (jax.random.randint(kcorner, b, 0, 4) if config.marker_corner < 0
              else jnp.full(b, config.marker_corner, jnp.int32))
    marker_masks = jax.vmap(functools.partial(_marker_mask, config))(corner) * (1 - masks)
    mcol = jnp.asarray(_marker_colors(k))[marker_ids]
    images = (marker_masks[..., None] * mcol[:, None, None, :]
              + (1 - marker_masks[..., None]) * images)
    backgrounds = (marker_masks[..., None] * mcol[:, None, None, :]
                   + (1 - marker_masks[..., None]) * backgrounds)
  else:
    marker_ids = jnp.full(b, -1, jnp.int32)
    marker_masks = jnp.zeros_like(masks)

  batch = Batch(images=jnp.clip(images, 0.0, 1.0).astype(jnp.float32), labels=labels,
                shape_ids=shape_id, masks=masks, soft_masks=_soft_masks(masks),
                boxes=_boxes(masks), bg_ids=bg_id, places=places, groups=groups,
                marker_masks=marker_masks, marker_ids=marker_ids,
                colors=colors.astype(jnp.float32))
  return batch, backgrounds.astype(jnp.float32)


def _check_common(config: DataConfig, batch_size: int, domain: str) -> None:
  validate_config(config)
  if not isinstance(batch_size, int) or batch_size < 1:
    raise ValueError(f"batch_size: must be a positive int, got {batch_size!r}")
  if domain not in DOMAINS:
    raise ValueError(f"domain: must be one of {DOMAINS}, got {domain!r}")


def sample_batch(key: jax.Array, config: DataConfig, batch_size: int,
                 domain: str = "train") -> Batch:
  """Samples a fresh batch of procedural images, for training or evaluation.

  Deterministic in `key`; jitted once per (config statics, batch_size, domain). The returned
  `Batch` holds `images` `(B, S, S, 3)` float32 in [0, 1] and `labels` `(B,)` int32 (class in
  [0, K), or the binary y in Waterbirds domains) plus masks, soft masks, boxes, background
  ids, places/groups and marker masks (see `Batch`).

  Args:
    key: PRNG key.
    config: `DataConfig`.
    batch_size: B.
    domain: one of `DOMAINS` (see the module docstring).

  Returns:
    A `Batch` of jax arrays.
  """
  _check_common(config, batch_size, domain)
  return _render(key, _static(config), batch_size, _domain_flags(config, domain))[0]


def batches(key: jax.Array, config: DataConfig, batch_size: int,
            domain: str = "train"):
  """An endless iterator of training batches; batch t uses `fold_in(key, t)`.

  Yields:
    `Batch` objects, as `sample_batch(jax.random.fold_in(key, t), config, batch_size, domain)`.
  """
  _check_common(config, batch_size, domain)
  flags = _domain_flags(config, domain)
  t = 0
  while True:
    yield _render(jax.random.fold_in(key, t), _static(config), batch_size, flags)[0]
    t += 1


def _generate(key: jax.Array, config: DataConfig, n: int, domain: str,
              size: int) -> tuple[dict[str, np.ndarray], np.ndarray]:
  """n examples as numpy arrays, rendered in chunks of `size`, plus their backgrounds."""
  parts, bgs = [], []
  flags = _domain_flags(config, domain)
  for i, start in enumerate(range(0, n, size)):
    batch, bg = _render(jax.random.fold_in(key, i), _static(config), size, flags)
    m = min(size, n - start)
    parts.append(jax.tree_util.tree_map(lambda a: np.asarray(a)[:m], batch))
    bgs.append(np.asarray(bg)[:m])
  fields = {f: np.concatenate([getattr(p, f) for p in parts]) for f in Batch.__dataclass_fields__}
  return fields, np.concatenate(bgs)


def _pick_sources(key: jax.Array, labels: np.ndarray, target: np.ndarray,
                  exclude_self: bool) -> np.ndarray:
  """For each i, a uniformly random index j with labels[j] == target[i] (j != i if asked)."""
  n = labels.shape[0]
  u = np.asarray(jax.random.uniform(key, (n,)))
  out = np.empty(n, np.int64)
  for c in np.unique(target):
    pool = np.flatnonzero(labels == c)
    rows = np.flatnonzero(target == c)
    if pool.size == 0 or (exclude_self and pool.size < 2):
      raise ValueError(f"n: too small; class {c} has {pool.size} images, which is not enough "
                       "to build the mixed ImageNet-9 variants")
    for r, ur in zip(rows, u[rows]):
      cand = pool[pool != r] if exclude_self else pool
      out[r] = cand[min(int(ur * cand.size), cand.size - 1)]
  return out


def in9_variants(key: jax.Array, images: np.ndarray, labels: np.ndarray, masks: np.ndarray,
                 boxes: np.ndarray, backgrounds: np.ndarray, num_classes: int
                 ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
  """The eight ImageNet-9 variants of procedural images (Xiao et al. 2020).

  original = x; only_fg = m x (object on black); no_fg = (1 - m) x; only_bg_b = x with the
  box blacked out; only_bg_t = the background with the box filled: the generator knows the
  true background behind the object, so the fill is exact rather than tiled; mixed_* =
  m x + (1 - m) only_bg_t[j], with j a random image of the same class other than x
  (mixed_same), of a random other class (mixed_rand), or of class (y + 1) mod K (mixed_next).

  Args:
    key: PRNG key choosing the background donors j.
    images: `(N, S, S, 3)`; labels: `(N,)`; masks: `(N, S, S)`; boxes: `(N, 4)`;
    backgrounds: `(N, S, S, 3)` the images without their object.
    num_classes: K.

  Returns:
    (variants, sources): name -> `(N, S, S, 3)` images, and for each mixed variant the `(N,)`
    donor indices j.
  """
  images, labels, masks, boxes, backgrounds = map(
      np.asarray, (images, labels, masks, boxes, backgrounds))
  n = images.shape[0]
  for name, arr, shape in (("images", images, None), ("labels", labels, (n,)),
                           ("masks", masks, images.shape[:3]), ("boxes", boxes, (n, 4)),
                           ("backgrounds", backgrounds, images.shape)):
    if shape is None:
      if arr.ndim != 4 or arr.shape[-1] != 3:
        raise ValueError(f"images: expected shape (N, S, S, 3), got {arr.shape}")
    elif arr.shape != tuple(shape):
      raise ValueError(f"{name}: expected shape {tuple(shape)}, got {arr.shape}")
  m = masks[..., None]
  s = images.shape[1]
  idx = np.arange(s)
  inbox = ((idx[None, :, None] >= boxes[:, 0, None, None])
           & (idx[None, :, None] < boxes[:, 2, None, None])
           & (idx[None, None, :] >= boxes[:, 1, None, None])
           & (idx[None, None, :] < boxes[:, 3, None, None]))[..., None]
  k_same, k_rand, k_next, k_cls = jax.random.split(key, 4)
  shift = np.asarray(jax.random.randint(k_cls, labels.shape, 1, num_classes))
  targets = {"mixed_same": (k_same, labels, True),
             "mixed_rand": (k_rand, (labels + shift) % num_classes, False),
             "mixed_next": (k_next, (labels + 1) % num_classes, False)}
  variants = {"original": images, "only_fg": m * images, "no_fg": (1 - m) * images,
              "only_bg_b": np.where(inbox, 0.0, images).astype(np.float32),
              "only_bg_t": backgrounds}
  sources = {}
  for name, (k, tgt, excl) in targets.items():
    j = _pick_sources(k, labels, tgt, excl)
    sources[name] = j
    variants[name] = (m * images + (1 - m) * backgrounds[j]).astype(np.float32)
  return {k: variants[k].astype(np.float32) for k in evalset_lib.IN9_VARIANTS}, sources


def make_eval_set(key: jax.Array, config: DataConfig, n: int = 1000, *,
                  domain: str = "train", n_groups: int | None = None,
                  n_shifted: int | None = None, variants: bool = True) -> evalset_lib.EvalSet:
  """A complete procedural `EvalSet`: every protocol of `spurjax.reliance` can run on it.

  Parts (all numpy, float32 images in [0, 1]):
  - `images`, `labels`, `masks`, `soft_masks`, `boxes` (and `marker_masks` when
    `config.marker`): n images of `domain` (default the in-distribution "train" domain,
    P(style = y) = config.p);
  - `variants`: the eight ImageNet-9 variants of those images (`in9_variants`), with
    `variant_sources`;
  - `groups`: n_groups images of "waterbirds_test" (P(place = y) = config.wb_p_test),
    `label_map` = superclass of each of the K classes, training group fractions
    ((p, 1-p, 1-p, p) / 2 with p = config.wb_p_train for g = 0..3);
  - `shifted`: n_shifted images of the "shifted" domain.

  Memory: about (10 n + n_groups + n_shifted) S^2 3 4 bytes (40 MB for n = 1000, S = 32).

  Args:
    key: PRNG key; the same key gives the same set.
    config: `DataConfig`.
    n: size of the main test set; every class needs >= 2 images for the mixed variants.
    domain: domain of the main set, one of `DOMAINS` except the Waterbirds ones.
    n_groups: size of the Waterbirds-style split (default n; 0 omits it).
    n_shifted: size of the shifted set (default n; 0 omits it).
    variants: whether to build the ImageNet-9 variants.

  Returns:
    An `EvalSet`.
  """
  if not isinstance(n, int) or n < 2:
    raise ValueError(f"n: must be an int >= 2, got {n!r}")
  _check_common(config, n, domain)
  if domain.startswith("waterbirds"):
    raise ValueError(f"domain: the main set needs K-class labels, got {domain!r}")
  n_groups = n if n_groups is None else n_groups
  n_shifted = n if n_shifted is None else n_shifted
  for name, v in (("n_groups", n_groups), ("n_shifted", n_shifted)):
    if not isinstance(v, int) or v < 0:
      raise ValueError(f"{name}: must be an int >= 0, got {v!r}")
  k_main, k_var, k_wb, k_shift = jax.random.split(key, 4)
  # One chunk size for all parts: a single compilation of the renderer.
  size = min(1000, max(n, n_groups, n_shifted))
  main, backgrounds = _generate(k_main, config, n, domain, size)
  var = src = None
  if variants:
    var_arrays, src = in9_variants(k_var, main["images"], main["labels"], main["masks"],
                                   main["boxes"], backgrounds, config.num_classes)
    var = {name: evalset_lib.Variant(a, main["labels"]) for name, a in var_arrays.items()}
  groups = shifted = None
  if n_groups:
    wb, _ = _generate(k_wb, config, n_groups, "waterbirds_test", size)
    p = float(config.wb_p_train)
    groups = evalset_lib.GroupSplit(
        images=wb["images"], labels=wb["labels"], places=wb["places"],
        label_map=np.asarray(superclass(np.arange(config.num_classes), config.num_classes)),
        train_group_fractions=np.array([p, 1 - p, 1 - p, p]) / 2)
  if n_shifted:
    sh, _ = _generate(k_shift, config, n_shifted, "shifted", size)
    shifted = evalset_lib.ShiftSplit(images=sh["images"], labels=sh["labels"])
  return evalset_lib.EvalSet(
      images=main["images"], labels=main["labels"], num_classes=config.num_classes,
      masks=main["masks"], soft_masks=main["soft_masks"], boxes=main["boxes"],
      marker_masks=main["marker_masks"] if config.marker else None, variants=var,
      variant_sources=src, groups=groups, shifted=shifted,
      name=f"procedural:{domain}:S={config.image_size}:K={config.num_classes}")

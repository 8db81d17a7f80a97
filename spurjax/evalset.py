"""The evaluation-set structure shared by the procedural generator and the real loaders.

An `EvalSet` carries everything the five background-reliance protocols (docs/benchmarks.md)
need. Only `images`, `labels` and `num_classes` are required; every
other part is optional, and `spurjax.reliance.evaluate` reports the protocols whose inputs are
absent as missing (`None`), never as 0.

Array fields may be numpy arrays, jax arrays, or any lazy array-like object with `.shape`,
`len()` and slicing (`x[a:b]` returning a numpy array), such as `spurjax.loaders.LazyArray`;
the protocols read them batch by batch.

| part                  | protocol                   | fields                                  |
|-----------------------|----------------------------|-----------------------------------------|
| images, labels        | clean accuracy             | `(N, H, W, 3)` float in [0,1], `(N,)`   |
| masks                 | RFS (RIVAL10)              | `(N, H, W)` foreground mask in [0, 1]   |
| soft_masks            | core/spur acc (Salient)    | `(N, H, W)` soft core mask in [0, 1]    |
| marker_masks          | marker-noise accuracy      | `(N, H, W)` binary marker mask          |
| variants              | ImageNet-9 BG-Gap          | name -> `Variant(images, labels)`       |
| groups                | Waterbirds worst group     | `GroupSplit`                            |
| shifted               | ObjectNet-style drop       | `ShiftSplit`                            |
| class_map             | every protocol             | `ClassMap` (scores a C-logit model)     |

With a `class_map` (benchmarks scored by ImageNet-1k models through a published class table),
`apply_fn` returns `(B, C)` logits over the model's own C classes (1000 for ImageNet) and
`spurjax.reliance.evaluate` maps each prediction to the benchmark's K classes first.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import chex
import jax
import numpy as np

IN9_VARIANTS = ("original", "only_fg", "no_fg", "only_bg_b", "only_bg_t", "mixed_same",
                "mixed_rand", "mixed_next")


def check_finite(field: str, x: Any) -> None:
  """Raises ValueError naming `field` and the first bad index if the concrete array `x`
  holds a NaN or an infinity; integer arrays and traced values pass (check concrete inputs
  at the API boundary, never inside jitted code: this reads the array on the host)."""
  if isinstance(x, jax.core.Tracer):
    return
  a = np.asarray(x)
  if not np.issubdtype(a.dtype, np.inexact):
    return
  try:
    chex.assert_tree_all_finite(a)
  except AssertionError:
    bad = tuple(int(i) for i in np.argwhere(~np.isfinite(a))[0])
    raise ValueError(f"{field}: non-finite value {a[bad]} at index {bad}; inputs must be "
                     "finite") from None


def _shape(x: Any) -> tuple[int, ...]:
  return tuple(int(s) for s in np.shape(x)) if not hasattr(x, "shape") else tuple(
      int(s) for s in x.shape)


def _check_images(name: str, x: Any) -> tuple[int, ...]:
  shape = _shape(x)
  if len(shape) != 4 or shape[-1] != 3:
    raise ValueError(f"{name}: expected shape (N, H, W, 3), got {shape}")
  return shape


def _check_labels(name: str, x: Any, n: int) -> None:
  shape = _shape(x)
  if shape != (n,):
    raise ValueError(f"{name}: expected shape ({n},), got {shape}")


def _check_maps(name: str, x: Any, images_shape: tuple[int, ...]) -> None:
  shape = _shape(x)
  if shape != images_shape[:3]:
    raise ValueError(f"{name}: expected shape {images_shape[:3]} (N, H, W) to match the "
                     f"images, got {shape}")


CLASS_MAP_MODES = ("top1", "max")


@dataclasses.dataclass(frozen=True, eq=False)
class ClassMap:
  """How a classifier with C outputs (e.g. ImageNet-1k) is scored on a K-class benchmark.

  Attributes:
    members: `(K, C)` bool; `members[k, c]` says that model class c belongs to benchmark class
      k.
    mode: "top1": the prediction is the benchmark class of the model's top-1 class over all C
      logits, and a top-1 class in no benchmark class counts as wrong (ImageNet-9 with
      `in_to_in9.json`: 630 classes map to -1); each model class may belong to at most one
      benchmark class. "max": the score of benchmark class k is max_{c in k} logit_c and the
      prediction is the arg-max over k (ObjectNet, RIVAL10: one to several ImageNet classes
      per benchmark class); every benchmark class needs at least one member.
    name: where the table comes from.

  Identity-hashed (eq=False), so it can key compilation caches.
  """
  members: Any
  mode: str = "top1"
  name: str = ""

  def __post_init__(self):
    m = np.asarray(self.members)
    if m.ndim != 2 or m.dtype != np.bool_:
      raise ValueError(f"ClassMap.members: expected a (K, C) bool array, got {m.dtype} "
                       f"{m.shape}")
    if self.mode not in CLASS_MAP_MODES:
      raise ValueError(f"ClassMap.mode: must be one of {CLASS_MAP_MODES}, got {self.mode!r}")
    if self.mode == "top1" and np.any(m.sum(0) > 1):
      bad = np.flatnonzero(m.sum(0) > 1)[:5]
      raise ValueError(f"ClassMap.members: model classes {bad.tolist()} belong to several "
                       "benchmark classes (not allowed in mode 'top1')")
    if self.mode == "max" and np.any(~m.any(1)):
      bad = np.flatnonzero(~m.any(1))[:5]
      raise ValueError(f"ClassMap.members: benchmark classes {bad.tolist()} have no member "
                       "(not allowed in mode 'max')")
    object.__setattr__(self, "members", m)

  @property
  def num_classes(self) -> int:
    """K, the benchmark's classes."""
    return int(self.members.shape[0])

  @property
  def model_classes(self) -> int:
    """C, the classifier's outputs."""
    return int(self.members.shape[1])

  def scores(self, logits: Any) -> Any:
    """Benchmark scores `(B, K + 1)` from model logits `(B, C)`; their arg-max is the mapped
    prediction, and column K ("no benchmark class", never a label) wins exactly when a
    top-1 prediction is unmapped.

    top1: one-hot of the benchmark class of argmax_c logits (column K when unmapped).
    max: score_k = max_{c in k} logit_c, and column K = -inf.
    """
    import jax.numpy as jnp  # Local: evalset itself stays importable without jax.
    if logits.ndim != 2 or logits.shape[-1] != self.model_classes:
      raise ValueError(f"apply_fn: expected logits of shape (B, {self.model_classes}) for "
                       f"class map {self.name!r}, got {logits.shape}")
    m = jnp.asarray(self.members)
    if self.mode == "top1":
      col = m[:, jnp.argmax(logits, axis=-1)].T                  # (B, K)
      unmapped = ~col.any(axis=-1, keepdims=True)
      return jnp.concatenate([col, unmapped], axis=-1).astype(jnp.float32)
    neg = jnp.finfo(logits.dtype).min
    s = jnp.max(jnp.where(m[None], logits[:, None, :], neg), axis=-1)   # (B, K)
    return jnp.concatenate([s, jnp.full((s.shape[0], 1), -jnp.inf, s.dtype)], axis=-1)

  def predict(self, logits: Any) -> Any:
    """`(B,)` benchmark predictions in [0, K], K meaning "no benchmark class" (wrong)."""
    import jax.numpy as jnp
    return jnp.argmax(self.scores(logits), axis=-1)


@dataclasses.dataclass(frozen=True)
class Variant:
  """One ImageNet-9 variant: its images `(M, H, W, 3)` and labels `(M,)` (int)."""
  images: Any
  labels: Any

  def __post_init__(self):
    shape = _check_images("Variant.images", self.images)
    _check_labels("Variant.labels", self.labels, shape[0])


@dataclasses.dataclass(frozen=True)
class GroupSplit:
  """The Waterbirds-style test split.

  Attributes:
    images: `(M, H, W, 3)` float in [0, 1].
    labels: `(M,)` binary label y in {0, 1}.
    places: `(M,)` binary place in {0, 1}; the group is g = 2 y + place.
    label_map: `(C,)` int or None: maps the classifier's argmax class to y (a K-class model
      evaluated on a binary task through superclasses); None means the classifier outputs the
      two classes itself.
    train_group_fractions: `(4,)` float or None: P(g) in the training split, for the
      training-weighted mean accuracy.
  """
  images: Any
  labels: Any
  places: Any
  label_map: Any = None
  train_group_fractions: Any = None

  def __post_init__(self):
    shape = _check_images("GroupSplit.images", self.images)
    _check_labels("GroupSplit.labels", self.labels, shape[0])
    _check_labels("GroupSplit.places", self.places, shape[0])
    for name in ("labels", "places"):
      v = np.asarray(getattr(self, name))
      if v.size and not np.all((v == 0) | (v == 1)):
        raise ValueError(f"GroupSplit.{name}: must be 0 or 1")
    if self.label_map is not None and np.ndim(self.label_map) != 1:
      raise ValueError("GroupSplit.label_map: expected shape (C,)")
    if self.train_group_fractions is not None:
      f = np.asarray(self.train_group_fractions, dtype=np.float64)
      if f.shape != (4,) or np.any(f < 0) or not np.isclose(f.sum(), 1.0):
        raise ValueError("GroupSplit.train_group_fractions: expected 4 non-negative "
                         f"fractions summing to 1, got {f}")


@dataclasses.dataclass(frozen=True)
class ShiftSplit:
  """The nuisance-shifted (ObjectNet-style) test set: images `(M, H, W, 3)`, labels `(M,)`."""
  images: Any
  labels: Any

  def __post_init__(self):
    shape = _check_images("ShiftSplit.images", self.images)
    _check_labels("ShiftSplit.labels", self.labels, shape[0])


@dataclasses.dataclass(frozen=True)
class EvalSet:
  """An evaluation set for `spurjax.reliance.evaluate` (see the module docstring).

  Attributes:
    images: `(N, H, W, 3)` float32 in [0, 1], the in-distribution test images.
    labels: `(N,)` int class indices in [0, num_classes).
    num_classes: K.
    masks: `(N, H, W)` foreground masks in [0, 1] (binary, or soft as RIVAL10's) or None.
    soft_masks: `(N, H, W)` soft core masks in [0, 1] or None.
    boxes: `(N, 4)` int boxes `(y0, x0, y1, x1)`, half-open pixel ranges, or None.
    marker_masks: `(N, H, W)` binary masks of the marker cue or None.
    variants: mapping from ImageNet-9 variant name (`IN9_VARIANTS`) to `Variant`, or None.
    variant_sources: mapping from a mixed variant name to `(N,)` int: the index of the image
      whose background was used (procedural sets only), or None.
    groups: `GroupSplit` or None.
    shifted: `ShiftSplit` or None.
    class_map: `ClassMap` from the classifier's classes to the K labels, or None (the
      classifier outputs the K classes itself).
    name: a free-form description.
  """
  images: Any
  labels: Any
  num_classes: int
  masks: Any = None
  soft_masks: Any = None
  boxes: Any = None
  marker_masks: Any = None
  variants: Mapping[str, Variant] | None = None
  variant_sources: Mapping[str, Any] | None = None
  groups: GroupSplit | None = None
  shifted: ShiftSplit | None = None
  class_map: ClassMap | None = None
  name: str = ""

  def __post_init__(self):
    shape = _check_images("EvalSet.images", self.images)
    n = shape[0]
    _check_labels("EvalSet.labels", self.labels, n)
    if int(self.num_classes) < 2:
      raise ValueError(f"EvalSet.num_classes: must be >= 2, got {self.num_classes}")
    for name in ("masks", "soft_masks", "marker_masks"):
      if getattr(self, name) is not None:
        _check_maps(f"EvalSet.{name}", getattr(self, name), shape)
    if self.boxes is not None and _shape(self.boxes) != (n, 4):
      raise ValueError(f"EvalSet.boxes: expected shape ({n}, 4), got {_shape(self.boxes)}")
    if self.variants is not None:
      for k, v in self.variants.items():
        if k not in IN9_VARIANTS:
          raise ValueError(f"EvalSet.variants: unknown variant {k!r}; known: {IN9_VARIANTS}")
        if not isinstance(v, Variant):
          raise ValueError(f"EvalSet.variants[{k!r}]: expected a Variant, got {type(v)}")
        if _shape(v.images)[1:] != shape[1:]:
          raise ValueError(f"EvalSet.variants[{k!r}]: image size {_shape(v.images)[1:]} "
                           f"differs from EvalSet.images {shape[1:]}")
    for name in ("groups", "shifted"):
      part = getattr(self, name)
      if part is not None and _shape(part.images)[1:] != shape[1:]:
        raise ValueError(f"EvalSet.{name}: image size {_shape(part.images)[1:]} differs from "
                         f"EvalSet.images {shape[1:]}")

    if self.class_map is not None:
      if not isinstance(self.class_map, ClassMap):
        raise ValueError(f"EvalSet.class_map: expected a ClassMap, got {type(self.class_map)}")
      if self.class_map.num_classes != int(self.num_classes):
        raise ValueError(f"EvalSet.class_map: maps to {self.class_map.num_classes} classes "
                         f"but num_classes is {self.num_classes}")

  def __len__(self) -> int:
    return _shape(self.images)[0]

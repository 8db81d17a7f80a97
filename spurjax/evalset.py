"""The evaluation-set structure shared by the procedural generator and the real loaders.

An `EvalSet` carries everything the five background-reliance protocols of
`../shared/BENCHMARKS.md` need. Only `images`, `labels` and `num_classes` are required; every
other part is optional, and `spurjax.reliance.evaluate` reports the protocols whose inputs are
absent as missing (`None`), never as 0.

Array fields may be numpy arrays, jax arrays, or any lazy array-like object with `.shape`,
`len()` and slicing (`x[a:b]` returning a numpy array), such as `spurjax.loaders.LazyArray`;
the protocols read them batch by batch.

| part                  | protocol                   | fields                                  |
|-----------------------|----------------------------|-----------------------------------------|
| images, labels        | clean accuracy             | `(N, H, W, 3)` float in [0,1], `(N,)`   |
| masks                 | RFS (RIVAL10)              | `(N, H, W)` binary foreground mask      |
| soft_masks            | core/spur acc (Salient)    | `(N, H, W)` soft core mask in [0, 1]    |
| marker_masks          | marker-noise accuracy      | `(N, H, W)` binary marker mask          |
| variants              | ImageNet-9 BG-Gap          | name -> `Variant(images, labels)`       |
| groups                | Waterbirds worst group     | `GroupSplit`                            |
| shifted               | ObjectNet-style drop       | `ShiftSplit`                            |
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import numpy as np

IN9_VARIANTS = ("original", "only_fg", "no_fg", "only_bg_b", "only_bg_t", "mixed_same",
                "mixed_rand", "mixed_next")


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
    masks: `(N, H, W)` binary foreground masks or None.
    soft_masks: `(N, H, W)` soft core masks in [0, 1] or None.
    boxes: `(N, 4)` int boxes `(y0, x0, y1, x1)`, half-open pixel ranges, or None.
    marker_masks: `(N, H, W)` binary masks of the marker cue or None.
    variants: mapping from ImageNet-9 variant name (`IN9_VARIANTS`) to `Variant`, or None.
    variant_sources: mapping from a mixed variant name to `(N,)` int: the index of the image
      whose background was used (procedural sets only), or None.
    groups: `GroupSplit` or None.
    shifted: `ShiftSplit` or None.
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

  def __len__(self) -> int:
    return _shape(self.images)[0]

"""Loaders for the five real benchmarks, read as published; each returns an `EvalSet`.

Layouts (each project's own code is the reference; the class tables that live in code
repositories, not in the downloads, ship in `spurjax/mappings/`):
- ImageNet-9 (MadryLab/backgrounds_challenge): `<root>/<variant>/val/<class>/*.JPEG` for the
  eight variants; class index = sorted order of the class folders (never their names);
  foreground masks `<root>/fg_mask/val/<class>/<stem>.npy` (0/1, the image's size). An
  ImageNet-1k model is scored by its top-1 over 1000 logits mapped through `in_to_in9.json`
  (630 classes map to -1 and count as wrong).
- Waterbirds (kohpangwei/group_DRO): `<root>/metadata.csv` (img_id, img_filename, y, split,
  place, place_filename; split 0/1/2 = train/val/test); group g = 2 y + place.
- RIVAL10 (mmoayeri/RIVAL10, the released zip read like `LocalRIVAL10`):
  `<root>/{train,test}/ordinary/<wnid>_<imagenet file>.JPEG` beside the siblings
  `<stem>_merged_mask.JPEG`, `<stem>_attr_labels.npy`, `<stem>_attr_dict.pkl` (never taken as
  images, and the pickle is never opened), entire-object masks
  `<root>/{train,test}/entire_object_masks/<same file name>`; label = wnid ->
  `wnid_to_class.json` -> `label_mappings.json` ([name, index]). ImageNet-1k index = position
  of the wnid in the sorted list of the 1000 wnids of `wnid_to_class.json`.
- Salient ImageNet (singlasahil14/salient_imagenet): `<mask_root>/wordnet_dict.py` (class
  index -> wnid; parsed as a literal, never executed), `<mask_root>/<wnid>/
  image_names_map.csv` (one column per feature index), masks `<mask_root>/<wnid>/
  feature_<k>/<image>.JPEG` (224 x 224, in the frame of "resize 256, center-crop 224" of the
  image), images `<imagenet_root>/train/<wnid>/<image>.JPEG` of any size. Core features:
  those whose majority of crowd answers in `discover_spurious_features.csv` is main_object.
- ObjectNet (objectnet.dev layout, read like modestyachts/imagenet-testbed):
  `<root>/images/<folder>/*.png` with a 1-pixel border (2 px cropped per side) and the four
  files of `<root>/mappings/`; only the 113 classes that overlap ImageNet are loaded; class
  score = max over the class's ImageNet logits.

Default transforms are each benchmark's evaluation transform (PIL bilinear, which
antialiases when shrinking; masks follow the same geometry, binary ones with nearest):
ImageNet-9 "stored" (224 as stored, no resize), Waterbirds "squash_crop" (resize (256, 256),
center-crop 224), Salient "resize_crop" (shorter side 256, center-crop 224; masks as stored),
RIVAL10 "squash" (resize (224, 224)), ObjectNet border crop then "resize_crop". `size` sets the
output side (the 256 becomes round(256 size / 224)); `preprocess=` selects another of
`PREPROCESS`.

Scale: every loader lists files and reads every header up front (a missing file, an
unreadable image, a mask of the wrong size or a csv without a column raises a ValueError
naming the path before anything is decoded); pixels are decoded lazily by a thread pool
(`num_workers`; PIL releases the GIL while decoding and resizing), the next batch of a
sequential read is decoded in the background (prefetch), and decoded uint8 pixels are kept
in one cache per loaded set, shared by all parts and by all protocol trials, up to
`cache_bytes` (default 1 GiB; items beyond it are decoded again on each read, so memory is
bounded by the budget plus two batches).
"""

from __future__ import annotations

import ast
import concurrent.futures
from concurrent.futures import ThreadPoolExecutor
import csv
import dataclasses
import itertools
import json
import os
import threading
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
from PIL import Image

from spurjax import evalset as evalset_lib

IMAGE_EXTENSIONS = (".jpeg", ".jpg", ".png")
WATERBIRDS_COLUMNS = ("img_id", "img_filename", "y", "split", "place", "place_filename")
SALIENT_ANNOTATION_COLUMNS = ("Input.class_index", "Input.feature_index", "Answer.main")
SALIENT_SPURIOUS_ANSWERS = ("separate_object", "background")
OBJECTNET_MAPPING_FILES = ("folder_to_objectnet_label.json", "objectnet_to_imagenet_1k.json",
                           "imagenet_to_label_2012_v2", "pytorch_to_imagenet_2012_id.json")
PREPROCESS = ("stored", "squash", "squash_crop", "resize_crop")
DEFAULT_CACHE_BYTES = 1 << 30
MAPPINGS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "mappings")


class MissingPathError(FileNotFoundError, ValueError):
  """A required file or folder is absent (both a FileNotFoundError and a ValueError)."""


# --------------------------------------------------------------------------- geometry
def _resize_side(size: int) -> int:
  return int(round(256 * size / 224))


def _plan(preprocess: str, w: int, h: int, size: int
          ) -> tuple[tuple[int, int] | None, tuple[int, int, int, int] | None]:
  """(resize (W, H) or None, crop box (left, top, right, bottom) or None) of a transform,
  with torchvision's conventions (Resize(int): shorter side, the other int(r long / short);
  CenterCrop: offsets int(round((side - size) / 2)))."""
  if preprocess == "stored":
    return (None if (w, h) == (size, size) else (size, size)), None
  if preprocess == "squash":
    return (size, size), None
  r = _resize_side(size)
  if preprocess == "squash_crop":
    rw, rh = r, r
  elif preprocess == "resize_crop":
    rw, rh = (r, int(r * h / w)) if w <= h else (int(r * w / h), r)
  else:
    raise ValueError(f"preprocess: must be one of {PREPROCESS}, got {preprocess!r}")
  top, left = int(round((rh - size) / 2.0)), int(round((rw - size) / 2.0))
  return (rw, rh), (left, top, left + size, top + size)


def apply_transform(im: Image.Image, preprocess: str, size: int,
                    resample: int = Image.BILINEAR) -> Image.Image:
  """Applies a `PREPROCESS` transform to a PIL image; the result is `size` x `size`.

  stored: unchanged when already size x size, else resized to it; squash: resize to
  (size, size); squash_crop: resize to (r, r), center-crop size; resize_crop: shorter side
  r, center-crop size; r = round(256 size / 224) (256 at size 224).
  """
  resize, box = _plan(preprocess, im.size[0], im.size[1], size)
  if resize is not None and resize != im.size:
    im = im.resize(resize, resample)
  if box is not None:
    im = im.crop(box)
  return im


# --------------------------------------------------------------------------- lazy decoding
class DecodeCache:
  """Decoded uint8 items kept up to `budget_bytes`, shared by the arrays of one set.

  Items are added while they fit and never evicted: for the protocols' repeated sequential
  scans this keeps a fixed prefix resident (hit rate budget / set size), where LRU would
  miss every time once the set exceeds the budget.
  """

  def __init__(self, budget_bytes: int = DEFAULT_CACHE_BYTES):
    if not isinstance(budget_bytes, int) or budget_bytes < 0:
      raise ValueError(f"cache_bytes: must be an int >= 0, got {budget_bytes!r}")
    self.budget = budget_bytes
    self.used = 0
    self.items: dict[Any, np.ndarray] = {}
    self.lock = threading.Lock()

  def get(self, key: Any) -> np.ndarray | None:
    return self.items.get(key)

  def put(self, key: Any, value: np.ndarray) -> None:
    with self.lock:
      if key not in self.items and self.used + value.nbytes <= self.budget:
        self.items[key] = value
        self.used += value.nbytes


_POOLS: dict[int, ThreadPoolExecutor] = {}
_ARRAY_IDS = itertools.count()  # Cache keys: unique per LazyArray (id() may be reused).
_POOLS_LOCK = threading.Lock()


def _pool(workers: int) -> ThreadPoolExecutor:
  with _POOLS_LOCK:
    if workers not in _POOLS:
      _POOLS[workers] = ThreadPoolExecutor(max_workers=workers,
                                           thread_name_prefix="spurjax-decode")
    return _POOLS[workers]


def _workers(num_workers: int | None) -> int:
  if num_workers is None:
    return max(1, min(8, os.cpu_count() or 1))
  if not isinstance(num_workers, int) or num_workers < 1:
    raise ValueError(f"num_workers: must be a positive int, got {num_workers!r}")
  return num_workers


class LazyArray:
  """An array-like `(N,) + item_shape` float32 whose rows are decoded from files when read.

  `x[a:b]`, `x[i]` and `x[index_array]` return numpy arrays; `np.asarray(x)` reads all.
  Rows are decoded by `reader(item) -> uint8 array` on a thread pool, scaled by `scale`,
  kept in `cache` while it has room, and a contiguous read of rows [a, b) starts decoding
  rows [b, 2b - a) in the background.
  """

  def __init__(self, items: Sequence[Any], reader: Callable[[Any], np.ndarray],
               item_shape: tuple[int, ...], *, scale: float = 1.0 / 255.0,
               cache: DecodeCache | None = None, num_workers: int | None = None,
               prefetch: bool = True):
    self.items = list(items)
    self.reader = reader
    self.shape = (len(self.items),) + tuple(item_shape)
    self.dtype = np.dtype(np.float32)
    self.scale = float(scale)
    self.cache = cache if cache is not None else DecodeCache(0)
    self.workers = _workers(num_workers)
    self.prefetch = prefetch
    self._pending: dict[int, concurrent.futures.Future] = {}
    self._uid = next(_ARRAY_IDS)
    self._lock = threading.Lock()

  def __len__(self) -> int:
    return self.shape[0]

  def _decode(self, i: int) -> np.ndarray:
    key = (self._uid, i)
    hit = self.cache.get(key)
    if hit is not None:
      return hit
    a = np.asarray(self.reader(self.items[i]))
    if a.shape != self.shape[1:]:
      raise ValueError(f"{self.items[i]}: decoded to shape {a.shape}, expected "
                       f"{self.shape[1:]}")
    self.cache.put(key, a)
    return a

  def __getitem__(self, index: Any) -> np.ndarray:
    if isinstance(index, (int, np.integer)):
      return self[np.asarray([int(index)])][0]
    idx = np.arange(len(self))[index]
    pool = _pool(self.workers)
    with self._lock:
      pending, self._pending = self._pending, {}
    futures = [pending.pop(int(i), None) or pool.submit(self._decode, int(i)) for i in idx]
    for f in pending.values():  # Prefetched rows nobody asked for.
      f.cancel()
    if (self.prefetch and isinstance(index, slice) and len(idx) and
        (index.step in (None, 1))):
      stop = int(idx[-1]) + 1
      nxt = range(stop, min(len(self), stop + len(idx)))
      with self._lock:
        self._pending = {i: pool.submit(self._decode, i) for i in nxt}
    out = np.empty((len(idx),) + self.shape[1:], np.float32)
    for row, f in enumerate(futures):
      out[row] = f.result() * np.float32(self.scale)
    return out

  def __array__(self, dtype=None, copy=None):
    a = self[:]
    return a if dtype is None else a.astype(dtype)


# --------------------------------------------------------------------------- file helpers
def _require_dir(path: str, what: str) -> str:
  if not os.path.isdir(path):
    raise MissingPathError(f"{what}: folder not found: {path}")
  return path


def _require_file(path: str, what: str) -> str:
  if not os.path.isfile(path):
    raise MissingPathError(f"{what}: file not found: {path}")
  return path


def _is_image(name: str) -> bool:
  # RIVAL10 keeps `<stem>_merged_mask.JPEG` beside each image: the official lister skips any
  # file containing "merged_mask"; .npy/.pkl siblings fail the extension test.
  return name.lower().endswith(IMAGE_EXTENSIONS) and "merged_mask" not in name


def _list_images(folder: str) -> list[str]:
  return sorted(os.path.join(folder, f) for f in os.listdir(folder) if _is_image(f))


def _subdirs(folder: str) -> list[str]:
  return sorted(d for d in os.listdir(folder) if os.path.isdir(os.path.join(folder, d)))


def image_size_of(path: str) -> tuple[int, int]:
  """(height, width) of an image file from its header; errors name the path."""
  _require_file(path, "image")
  try:
    with Image.open(path) as im:
      w, h = im.size
  except (OSError, ValueError, Image.DecompressionBombError) as e:
    raise ValueError(f"unreadable image: {path}: {e}") from e
  return h, w


def _sizes(paths: Sequence[str], workers: int) -> list[tuple[int, int]]:
  """Header sizes of many files, read on the thread pool (errors name the path)."""
  return list(_pool(workers).map(image_size_of, paths))


def _open_rgb(path: str, border: int = 0) -> Image.Image:
  try:
    with Image.open(path) as im:
      im = im.convert("RGB")  # Grayscale (L), CMYK and palette images become RGB.
  except FileNotFoundError:
    raise MissingPathError(f"image: file not found: {path}") from None
  except (OSError, ValueError) as e:
    raise ValueError(f"unreadable image: {path}: {e}") from e
  if border:
    w, h = im.size
    if w <= 2 * border or h <= 2 * border:
      raise ValueError(f"{path}: image of size {w}x{h} is too small to crop {border} px")
    im = im.crop((border, border, w - border, h - border))
  return im


def read_image(path: str, size: int, preprocess: str = "squash", border: int = 0
               ) -> np.ndarray:
  """Decodes an image as RGB `(size, size, 3)` uint8 through a `PREPROCESS` transform.

  Args:
    path: image file (any mode; converted to RGB).
    size: output side.
    preprocess: transform name.
    border: pixels cropped from each side first (ObjectNet: 2).
  """
  return np.asarray(apply_transform(_open_rgb(path, border), preprocess, size), np.uint8)


def read_mask_image(path: str, size: int, preprocess: str = "squash",
                    binary: bool = False) -> np.ndarray:
  """Decodes a mask image as `(size, size)` uint8: soft (0..255, bilinear) or binary
  (255 where pixel / 255 >= 0.5, then nearest), through a `PREPROCESS` transform."""
  try:
    with Image.open(path) as im:
      im = im.convert("L")
  except FileNotFoundError:
    raise MissingPathError(f"mask: file not found: {path}") from None
  except (OSError, ValueError) as e:
    raise ValueError(f"unreadable mask: {path}: {e}") from e
  if binary:
    im = im.point(lambda v: 255 if v >= 128 else 0)
    return np.asarray(apply_transform(im, preprocess, size, Image.NEAREST), np.uint8)
  return np.asarray(apply_transform(im, preprocess, size, Image.BILINEAR), np.uint8)


def _npy_shape(path: str) -> tuple[int, ...]:
  _require_file(path, "mask")
  try:
    return tuple(np.load(path, mmap_mode="r", allow_pickle=False).shape)
  except (OSError, ValueError) as e:
    raise ValueError(f"unreadable mask: {path}: {e}") from e


def read_npy_mask(path: str, size: int, preprocess: str = "stored") -> np.ndarray:
  """Reads a 0/1 `.npy` mask `(H, W)` (or `(H, W, C)`, any channel > 0) as `(size, size)`
  uint8 0/1 through a `PREPROCESS` transform (nearest)."""
  try:
    a = np.load(path, allow_pickle=False)
  except (OSError, ValueError) as e:
    raise ValueError(f"unreadable mask: {path}: {e}") from e
  if a.ndim == 3:
    a = (a > 0).any(axis=-1)
  im = Image.fromarray(((a > 0) * 255).astype(np.uint8))
  return (np.asarray(apply_transform(im, preprocess, size, Image.NEAREST)) > 0).astype(
      np.uint8)


def _read_json(path: str, what: str = "json") -> Any:
  _require_file(path, what)
  try:
    with open(path) as f:
      return json.load(f)
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise ValueError(f"{path}: invalid json: {e}") from e


def _read_csv_columns(path: str, required: Iterable[str]) -> list[dict[str, str]]:
  _require_file(path, "csv")
  with open(path, newline="") as f:
    reader = csv.DictReader(f)
    header = reader.fieldnames or []
    missing = [c for c in required if c not in header]
    if missing:
      raise ValueError(f"{path}: missing csv columns {missing}; found {header}")
    return list(reader)


def _check_options(size: int, preprocess: str) -> None:
  if not isinstance(size, int) or isinstance(size, bool) or size < 8:
    raise ValueError(f"size: must be an int >= 8, got {size!r}")
  if preprocess not in PREPROCESS:
    raise ValueError(f"preprocess: must be one of {PREPROCESS}, got {preprocess!r}")


@dataclasses.dataclass
class _Ctx:
  """Shared decoding state of one loader call."""
  size: int
  preprocess: str
  cache: DecodeCache
  workers: int

  def images(self, paths: Sequence[str], border: int = 0, preprocess: str | None = None,
             check: bool = True) -> LazyArray:
    if check:
      _sizes(paths, self.workers)  # Header check up front: missing or unreadable fail now.
    pre = preprocess or self.preprocess
    s = self.size
    return LazyArray(paths, lambda p: read_image(p, s, pre, border), (s, s, 3),
                     cache=self.cache, num_workers=self.workers)


def _ctx(size, preprocess, cache_bytes, num_workers) -> _Ctx:
  _check_options(size, preprocess)
  return _Ctx(size, preprocess, DecodeCache(cache_bytes), _workers(num_workers))


def _mapping_path(path: str | None, name: str) -> str:
  return _require_file(path or os.path.join(MAPPINGS_DIR, name), "class table")


def imagenet_wnids() -> list[str]:
  """The 1000 ImageNet-1k wnids in index order (sorted; as torchvision's ImageFolder and
  every PyTorch ImageNet model), from the shipped `rival10_wnid_to_class.json`."""
  wnids = sorted(_read_json(_mapping_path(None, "rival10_wnid_to_class.json")))
  if len(wnids) != 1000:
    raise ValueError(f"rival10_wnid_to_class.json: expected 1000 wnids, got {len(wnids)}")
  return wnids


# --------------------------------------------------------------------------- generic folder
def load_image_folder(root: str, *, size: int = 224, preprocess: str = "resize_crop",
                      class_mapping: Mapping[str, int] | None = None,
                      num_classes: int | None = None, border: int = 0,
                      max_per_class: int | None = None,
                      cache_bytes: int = DEFAULT_CACHE_BYTES,
                      num_workers: int | None = None) -> evalset_lib.EvalSet:
  """A `<root>/<class folder>/*.{jpeg,jpg,png}` tree as an `EvalSet` (images, labels).

  Args:
    root: the folder of class folders.
    size: output side; preprocess: a `PREPROCESS` transform (default resize 256, crop 224).
    class_mapping: {folder name: class index}; folders not in it are ignored. Default: every
      sub-folder, indexed in sorted order.
    num_classes: K (default: max index + 1).
    border: pixels cropped from each side first.
    max_per_class: keep the first (sorted) files of each class only.
    cache_bytes, num_workers: decoded-pixel budget and decoding threads.
  """
  ctx = _ctx(size, preprocess, cache_bytes, num_workers)
  paths, labels = _folder_files(root, class_mapping, max_per_class)
  k = num_classes or max(labels) + 1
  return evalset_lib.EvalSet(images=ctx.images(paths, border),
                             labels=np.asarray(labels, np.int32), num_classes=max(int(k), 2),
                             name=f"folder:{root}")


def _folder_files(root: str, class_mapping: Mapping[str, int] | None,
                  max_per_class: int | None) -> tuple[list[str], list[int]]:
  _require_dir(root, "image folder")
  if class_mapping is None:
    class_mapping = {d: i for i, d in enumerate(_subdirs(root))}
  if not class_mapping:
    raise ValueError(f"class_mapping: no classes under {root}")
  paths, labels = [], []
  for folder, idx in sorted(class_mapping.items()):
    files = _list_images(_require_dir(os.path.join(root, folder), "class"))
    files = files if max_per_class is None else files[:max_per_class]
    paths += files
    labels += [int(idx)] * len(files)
  if not paths:
    raise ValueError(f"{root}: no images ({', '.join(IMAGE_EXTENSIONS)}) found")
  return paths, labels


# --------------------------------------------------------------------------- ImageNet-9
def in9_class_map(in_to_in9: str | None = None) -> evalset_lib.ClassMap:
  """`ClassMap` (mode top1, `(9, 1000)`) from `in_to_in9.json` ({"ImageNet index": 0..8 or
  -1}; default the shipped copy of MadryLab/backgrounds_challenge's file)."""
  path = _mapping_path(in_to_in9, "in_to_in9.json")
  table = _read_json(path, "class table")
  members = np.zeros((9, 1000), bool)
  try:
    items = [(int(c), int(k)) for c, k in table.items()]
  except (AttributeError, TypeError, ValueError) as e:
    raise ValueError(f"{path}: expected {{ImageNet index: 0..8 or -1}}: {e}") from e
  for c, k in items:
    if not 0 <= c < 1000 or not -1 <= k < 9:
      raise ValueError(f"{path}: entry {c}: {k} out of range (index 0..999 -> -1..8)")
    if k >= 0:
      members[k, c] = True
  return evalset_lib.ClassMap(members, "top1", name="in_to_in9")


def load_imagenet9(root: str, *, split: str = "val", model_classes: str = "in9",
                   preprocess: str = "stored", size: int = 224,
                   variants: Sequence[str] = evalset_lib.IN9_VARIANTS,
                   masks: bool | None = None, max_per_class: int | None = None,
                   in_to_in9: str | None = None, cache_bytes: int = DEFAULT_CACHE_BYTES,
                   num_workers: int | None = None) -> evalset_lib.EvalSet:
  """ImageNet-9 (backgrounds challenge) as an `EvalSet` with all variants.

  `images`/`labels` are the original variant; `variants` holds every requested variant;
  `masks` `(N, size, size)` 0/1 come from `fg_mask/<split>/<class>/<stem>.npy` (RFS runs too)
  and must have their image's size. Class index k = position of the class folder in sorted
  order. With `model_classes="imagenet1k"` the set carries `in9_class_map()`: prediction =
  in_to_in9[argmax over 1000 logits], -1 wrong.

  Args:
    root: folder holding `original/`, `mixed_rand/`, ... and `fg_mask/`.
    split: sub-folder of each variant ("val").
    model_classes: "in9" (the classifier outputs the 9 classes) or "imagenet1k".
    preprocess: transform (default "stored": the official evaluation uses the stored 224 x
      224 pixels; with another `size` image and mask are resized alike).
    size: output side.
    variants: variants to load; must include "original".
    masks: load fg masks (True), skip them (False) or load them if `fg_mask/` exists (None).
    max_per_class: keep the first (sorted) files of each class of each variant.
    in_to_in9: path of another `in_to_in9.json`.
    cache_bytes, num_workers: decoded-pixel budget and decoding threads.
  """
  ctx = _ctx(size, preprocess, cache_bytes, num_workers)
  if model_classes not in ("in9", "imagenet1k"):
    raise ValueError(f"model_classes: must be 'in9' or 'imagenet1k', got {model_classes!r}")
  class_map = in9_class_map(in_to_in9) if model_classes == "imagenet1k" else None
  _require_dir(root, "ImageNet-9 root")
  if "original" not in variants:
    raise ValueError("variants: must include 'original'")
  for v in variants:
    if v not in evalset_lib.IN9_VARIANTS:
      raise ValueError(f"variants: unknown variant {v!r}; known: {evalset_lib.IN9_VARIANTS}")
  classes = None
  loaded = {}
  for v in variants:
    vroot = _require_dir(os.path.join(root, v, split), f"ImageNet-9 variant {v!r}")
    found = _subdirs(vroot)
    if classes is None:
      classes = found
    elif found != classes:
      raise ValueError(f"{vroot}: class folders {found} differ from those of "
                       f"{os.path.join(root, 'original', split)}: {classes}")
    paths, labels = [], []
    for i, c in enumerate(classes):
      files = _list_images(os.path.join(vroot, c))
      files = files if max_per_class is None else files[:max_per_class]
      paths += files
      labels += [i] * len(files)
    if not paths:
      raise ValueError(f"{vroot}: no images found")
    loaded[v] = (paths, np.asarray(labels, np.int32))
  if class_map is not None and len(classes) != 9:
    raise ValueError(f"{os.path.join(root, 'original', split)}: in_to_in9 needs 9 class "
                     f"folders, found {len(classes)}: {classes}")
  mask_arr = None
  mask_root = os.path.join(root, "fg_mask", split)
  if masks or (masks is None and os.path.isdir(mask_root)):
    _require_dir(mask_root, "ImageNet-9 fg_mask")
    paths = loaded["original"][0]
    mask_paths = [os.path.join(mask_root, os.path.basename(os.path.dirname(p)),
                               os.path.splitext(os.path.basename(p))[0] + ".npy")
                  for p in paths]
    for p, mp, hw in zip(paths, mask_paths, _sizes(paths, ctx.workers)):
      shape = _npy_shape(mp)
      if tuple(shape[:2]) != hw:
        raise ValueError(f"mask {mp} has size {tuple(shape[:2])} (H, W) but its image {p} "
                         f"has size {hw}")
    s, pre = size, preprocess
    mask_arr = LazyArray(mask_paths, lambda q: read_npy_mask(q, s, pre), (s, s), scale=1.0,
                         cache=ctx.cache, num_workers=ctx.workers)
  var = {v: evalset_lib.Variant(ctx.images(paths), labels)
         for v, (paths, labels) in loaded.items()}
  return evalset_lib.EvalSet(images=var["original"].images, labels=var["original"].labels,
                             num_classes=len(classes), masks=mask_arr, variants=var,
                             class_map=class_map, name=f"imagenet9:{root}")


# --------------------------------------------------------------------------- Waterbirds
def load_waterbirds(root: str, *, split: int = 2, preprocess: str = "squash_crop",
                    size: int = 224, cache_bytes: int = DEFAULT_CACHE_BYTES,
                    num_workers: int | None = None) -> evalset_lib.EvalSet:
  """Waterbirds as an `EvalSet` whose `groups` part drives the group protocol.

  `images`/`labels` are the split's images and binary labels y (K = 2); `groups` holds the
  same images with places and the training group fractions P_train(g), g = 2 y + place,
  counted from split 0. The classifier must output the 2 classes (for an ImageNet backbone,
  a 2-class head, e.g. a linear probe fitted on split 0).

  Args:
    root: folder holding `metadata.csv` and the image folders.
    split: 0 train, 1 val, 2 test.
    preprocess: transform (default group_DRO's `get_transform_cub`: resize (256, 256),
      center-crop 224).
    size: output side.
    cache_bytes, num_workers: decoded-pixel budget and decoding threads.
  """
  ctx = _ctx(size, preprocess, cache_bytes, num_workers)
  _require_dir(root, "Waterbirds root")
  if split not in (0, 1, 2) or isinstance(split, bool):
    raise ValueError(f"split: must be 0, 1 or 2, got {split!r}")
  csv_path = os.path.join(root, "metadata.csv")
  rows = _read_csv_columns(csv_path, WATERBIRDS_COLUMNS)
  try:
    parsed = [(r["img_filename"], int(r["y"]), int(r["split"]), int(r["place"])) for r in rows]
  except (TypeError, ValueError) as e:
    raise ValueError(f"{csv_path}: y, split and place must be integers: {e}") from e
  for name, y, s, place in parsed:
    if y not in (0, 1) or place not in (0, 1) or s not in (0, 1, 2):
      raise ValueError(f"{csv_path}: y and place must be 0 or 1 and split 0, 1 or 2 "
                       f"(row {name})")
  chosen = [r for r in parsed if r[2] == split]
  if not chosen:
    raise ValueError(f"{csv_path}: no rows with split == {split}")
  paths = [os.path.join(root, r[0]) for r in chosen]
  y = np.asarray([r[1] for r in chosen], np.int32)
  place = np.asarray([r[3] for r in chosen], np.int32)
  train = [2 * r[1] + r[3] for r in parsed if r[2] == 0]
  fractions = np.bincount(train, minlength=4) / len(train) if train else None
  images = ctx.images(paths)
  groups = evalset_lib.GroupSplit(images=images, labels=y, places=place,
                                  train_group_fractions=fractions)
  return evalset_lib.EvalSet(images=images, labels=y, num_classes=2, groups=groups,
                             name=f"waterbirds:{root}:split={split}")


# --------------------------------------------------------------------------- RIVAL10
def rival10_tables(wnid_to_class: str | None = None, label_mappings: str | None = None
                   ) -> tuple[dict[str, str], dict[str, int], list[str]]:
  """RIVAL10's class tables: ({wnid: ImageNet name} of all 1000 classes, {ImageNet name:
  RIVAL10 index} of the 20 classes used, the 10 RIVAL10 class names by index).

  Defaults: the shipped copies of mmoayeri/RIVAL10 datasets/wnid_to_class.json and
  datasets/label_mappings.json ({name: [RIVAL10 name, index]}).
  """
  wpath = _mapping_path(wnid_to_class, "rival10_wnid_to_class.json")
  lpath = _mapping_path(label_mappings, "rival10_label_mappings.json")
  w2c, lm = _read_json(wpath, "class table"), _read_json(lpath, "class table")
  if not isinstance(w2c, dict) or not isinstance(lm, dict):
    raise ValueError(f"{wpath}, {lpath}: expected json objects")
  to_index, names = {}, {}
  for name, entry in lm.items():
    if not (isinstance(entry, list) and len(entry) == 2 and isinstance(entry[1], int)):
      raise ValueError(f"{lpath}: entry {name!r} must be [RIVAL10 name, index], got {entry}")
    to_index[name] = entry[1]
    names[entry[1]] = entry[0]
  if sorted(names) != list(range(len(names))):
    raise ValueError(f"{lpath}: RIVAL10 indices must be 0..K-1, got {sorted(names)}")
  return w2c, to_index, [names[i] for i in range(len(names))]


def load_rival10(root: str, *, split: str = "test", model_classes: str = "rival10",
                 preprocess: str = "squash", size: int = 224, mask_mode: str = "soft",
                 max_items: int | None = None, wnid_to_class: str | None = None,
                 label_mappings: str | None = None, cache_bytes: int = DEFAULT_CACHE_BYTES,
                 num_workers: int | None = None) -> evalset_lib.EvalSet:
  """RIVAL10 (released zip layout) with entire-object masks as an `EvalSet` (RFS protocol).

  Images are the files of `<split>/ordinary/` with an image extension whose name does not
  contain "merged_mask"; grayscale images become RGB. `masks` `(N, size, size)` in [0, 1]
  are the entire-object masks (same file name), resized like the images and kept soft as in
  the official noise protocol (`mask_mode="binary"` thresholds at 0.5 before resizing).
  Under the default "squash" image and mask are each resized to (size, size), as the
  official reader does, so a mask may be stored at another size; any other `preprocess`
  requires masks of their image's size. With
  `model_classes="imagenet1k"` the set carries a `ClassMap` (mode max): RIVAL10 class score
  = max over the logits of its two ImageNet classes (index = sorted wnid position).

  Args:
    root: the `RIVAL10` folder (holding `train/` and `test/`).
    split: "train" or "test".
    model_classes: "rival10" (the classifier outputs the 10 classes) or "imagenet1k".
    preprocess: transform (default the official test transform: resize to (224, 224)).
    size: output side.
    mask_mode: "soft" or "binary".
    max_items: keep the first (sorted) images only.
    wnid_to_class, label_mappings: paths of other class tables (default: shipped copies).
    cache_bytes, num_workers: decoded-pixel budget and decoding threads.
  """
  ctx = _ctx(size, preprocess, cache_bytes, num_workers)
  if split not in ("train", "test"):
    raise ValueError(f"split: must be 'train' or 'test', got {split!r}")
  if model_classes not in ("rival10", "imagenet1k"):
    raise ValueError(f"model_classes: must be 'rival10' or 'imagenet1k', got "
                     f"{model_classes!r}")
  if mask_mode not in ("soft", "binary"):
    raise ValueError(f"mask_mode: must be 'soft' or 'binary', got {mask_mode!r}")
  w2c, to_index, names = rival10_tables(wnid_to_class, label_mappings)
  img_dir = _require_dir(os.path.join(root, split, "ordinary"), "RIVAL10 images")
  mask_dir = _require_dir(os.path.join(root, split, "entire_object_masks"), "RIVAL10 masks")
  paths = _list_images(img_dir)
  if max_items is not None:
    paths = paths[:max_items]
  if not paths:
    raise ValueError(f"{img_dir}: no images found")
  labels, mask_paths = [], []
  for p in paths:
    fname = os.path.basename(p)
    wnid = fname.split("_")[0]
    if wnid not in w2c:
      raise ValueError(f"{p}: wnid {wnid!r} not in wnid_to_class.json")
    if w2c[wnid] not in to_index:
      raise ValueError(f"{p}: class {w2c[wnid]!r} (wnid {wnid}) not in label_mappings.json")
    labels.append(to_index[w2c[wnid]])
    mask_paths.append(_require_file(os.path.join(mask_dir, fname), "RIVAL10 mask"))
  mask_sizes = _sizes(mask_paths, ctx.workers)   # Header check: unreadable masks fail now.
  if preprocess != "squash":
    # The official reader resizes image and mask to (224, 224) each, so under "squash" any
    # mask size covering the image's frame aligns; a crop needs the image's own size.
    for p, mp, hw, mhw in zip(paths, mask_paths, _sizes(paths, ctx.workers), mask_sizes):
      if hw != mhw:
        raise ValueError(f"mask {mp} has size {mhw} (H, W) but its image {p} has size {hw}; "
                         f"preprocess={preprocess!r} needs equal sizes")
  class_map = None
  if model_classes == "imagenet1k":
    index = {w: i for i, w in enumerate(sorted(w2c))}
    if len(index) != 1000:
      raise ValueError(f"wnid_to_class.json: expected 1000 wnids, got {len(index)}")
    members = np.zeros((len(names), 1000), bool)
    for w, name in w2c.items():
      if name in to_index:
        members[to_index[name], index[w]] = True
    class_map = evalset_lib.ClassMap(members, "max", name="rival10 label_mappings")
  s, pre, binary = size, preprocess, mask_mode == "binary"
  masks = LazyArray(mask_paths, lambda q: read_mask_image(q, s, pre, binary), (s, s),
                    cache=ctx.cache, num_workers=ctx.workers)
  return evalset_lib.EvalSet(
      images=ctx.images(paths, check=False), labels=np.asarray(labels, np.int32),
      num_classes=len(names), masks=masks, class_map=class_map,
      name=f"rival10:{root}:{split}")


# --------------------------------------------------------------------------- Salient ImageNet
def read_wordnet_dict(path: str) -> dict[int, str]:
  """{ImageNet class index: wnid} from Salient ImageNet's `wordnet_dict.py`, parsed with
  `ast.literal_eval` (the file is data, never executed): the first dict literal, bare or
  assigned to a name."""
  _require_file(path, "wordnet_dict.py")
  try:
    with open(path) as f:
      tree = ast.parse(f.read(), filename=path)
    node = next(n.value for n in tree.body
                if isinstance(n, (ast.Assign, ast.AnnAssign, ast.Expr)) and
                isinstance(n.value, ast.Dict))
    table = ast.literal_eval(node)
    out = {int(k): str(v) for k, v in table.items()}
  except StopIteration:
    raise ValueError(f"{path}: no dict literal found") from None
  except (SyntaxError, ValueError, TypeError, UnicodeDecodeError) as e:
    raise ValueError(f"{path}: not a {{class index: wnid}} literal: {e}") from e
  return out


def salient_core_features(annotations: str) -> dict[int, dict[int, bool]]:
  """{class index: {feature index: is_core}} from `discover_spurious_features.csv` (one row
  per crowd answer): a feature is spurious when a majority of its answers (>= 3 of 5) are
  separate_object or background (utils.py `MTurk_Results.core_spurious_labels_dict`)."""
  rows = _read_csv_columns(annotations, SALIENT_ANNOTATION_COLUMNS)
  votes: dict[tuple[int, int], list[int]] = {}
  for i, r in enumerate(rows):
    try:
      key = (int(r["Input.class_index"]), int(r["Input.feature_index"]))
    except (TypeError, ValueError) as e:
      raise ValueError(f"{annotations}: row {i + 2}: class and feature index must be "
                       f"integers: {e}") from e
    answer = (r["Answer.main"] or "").strip()
    if answer not in ("main_object",) + SALIENT_SPURIOUS_ANSWERS:
      raise ValueError(f"{annotations}: row {i + 2}: Answer.main {answer!r} not in "
                       f"main_object, separate_object, background")
    v = votes.setdefault(key, [0, 0])
    v[answer in SALIENT_SPURIOUS_ANSWERS] += 1
  out: dict[int, dict[int, bool]] = {}
  for (c, k), (core, spur) in votes.items():
    out.setdefault(c, {})[k] = 2 * spur <= core + spur  # Spurious needs a strict majority.
  return out


@dataclasses.dataclass(frozen=True)
class SalientTriple:
  """One Salient-ImageNet item: the image, its ImageNet class index and its soft core mask
  files (combined by a pixelwise maximum)."""
  image_path: str
  class_index: int
  mask_paths: tuple[str, ...]


def salient_triples(mask_root: str, imagenet_root: str, *,
                    classes: Sequence[int] | None = None, annotations: str | None = None,
                    max_per_class: int | None = None) -> list[SalientTriple]:
  """Lists (image, class index, core-mask files) triples of Salient ImageNet.

  Args:
    mask_root: folder of `wordnet_dict.py` and `<wnid>/image_names_map.csv`,
      `<wnid>/feature_<k>/`.
    imagenet_root: folder holding `train/<wnid>/<image>.JPEG`.
    classes: ImageNet class indices (default: all of `wordnet_dict.py`).
    annotations: `discover_spurious_features.csv`; the masks are those of the majority-core
      features. None: every feature column of the csv (then M covers spurious features too).
    max_per_class: keep the first (sorted) images of each class.

  Returns:
    Triples sorted by (class index, image name); an image listed under several core features
    gets all their masks; images with no core feature are left out.
  """
  _require_dir(mask_root, "Salient ImageNet mask root")
  train = _require_dir(os.path.join(imagenet_root, "train"), "ImageNet train")
  wn = read_wordnet_dict(os.path.join(mask_root, "wordnet_dict.py"))
  classes = sorted(wn) if classes is None else [int(c) for c in classes]
  for c in classes:
    if c not in wn:
      raise ValueError(f"classes: class {c} not in {os.path.join(mask_root, 'wordnet_dict.py')}")
  core = salient_core_features(annotations) if annotations is not None else None
  triples = []
  for c in classes:
    wnid = wn[c]
    wdir = _require_dir(os.path.join(mask_root, wnid), "Salient ImageNet class")
    csv_path = _require_file(os.path.join(wdir, "image_names_map.csv"), "csv")
    with open(csv_path, newline="") as f:
      reader = csv.DictReader(f)
      header = [h for h in (reader.fieldnames or []) if h.strip()]
      rows = list(reader)
    try:
      feats = {int(h): h for h in header}
    except ValueError as e:
      raise ValueError(f"{csv_path}: columns must be feature indices, got {header}") from e
    if core is None:
      wanted = sorted(feats)
    else:
      labels = core.get(c, {})
      unlabelled = [k for k in feats if k not in labels]
      if unlabelled:
        raise ValueError(f"{annotations}: no answers for class {c} features {unlabelled} "
                         f"(columns of {csv_path})")
      wanted = sorted(k for k in feats if labels[k])
    per_image: dict[str, list[str]] = {}
    for k in wanted:
      for r in rows:
        name = (r.get(feats[k]) or "").strip()
        if name:
          stem = os.path.splitext(name)[0]
          per_image.setdefault(stem, []).append(
              os.path.join(wdir, f"feature_{k}", stem + ".JPEG"))
    stems = sorted(per_image)
    if max_per_class is not None:
      stems = stems[:max_per_class]
    for stem in stems:
      triples.append(SalientTriple(os.path.join(train, wnid, stem + ".JPEG"), c,
                                   tuple(per_image[stem])))
  if not triples:
    raise ValueError(f"{mask_root}: no Salient ImageNet images with core features for "
                     f"classes {classes[:10]}")
  return triples


def load_salient_imagenet(mask_root: str, imagenet_root: str, *,
                          classes: Sequence[int] | None = None,
                          annotations: str | None = None, preprocess: str = "resize_crop",
                          size: int = 224, mask_size: int = 224, mask_zoom: bool = False,
                          num_classes: int = 1000, max_per_class: int | None = None,
                          cache_bytes: int = DEFAULT_CACHE_BYTES,
                          num_workers: int | None = None) -> evalset_lib.EvalSet:
  """Salient ImageNet with soft core masks as an `EvalSet` (core/spurious protocol).

  Images (ImageNet train, any size) go through `preprocess` (default: shorter side 256,
  center-crop 224, the frame the masks were drawn in); the masks, `mask_size` x `mask_size`
  as stored, are only resized to `size` (identity at 224), so they stay pixel-aligned. The
  soft core mask M `(N, size, size)` in [0, 1] is the pixelwise maximum of the image's
  core-feature masks / 255. Labels are ImageNet-1k indices (the classifier outputs 1000).

  Args:
    mask_root, imagenet_root, classes, annotations, max_per_class: see `salient_triples`.
    preprocess: image transform; size: output side.
    mask_size: the stored mask side; any other size raises ValueError naming the file.
    mask_zoom: apply resize-256/center-crop-224 to the masks too, as the official
      `SalientImageNet` class does (an 8/7 zoom that misaligns them; for reproduction only).
    num_classes: K (1000).
    cache_bytes, num_workers: decoded-pixel budget and decoding threads.
  """
  ctx = _ctx(size, preprocess, cache_bytes, num_workers)
  triples = salient_triples(mask_root, imagenet_root, classes=classes,
                            annotations=annotations, max_per_class=max_per_class)
  mask_files = [mp for t in triples for mp in t.mask_paths]
  for mp, hw in zip(mask_files, _sizes(mask_files, ctx.workers)):
    if hw != (mask_size, mask_size):
      raise ValueError(f"mask {mp} has size {hw} (H, W); Salient ImageNet masks are "
                       f"{mask_size} x {mask_size}")
  mask_pre = "resize_crop" if mask_zoom else "squash"

  def read_soft(t: SalientTriple) -> np.ndarray:
    return np.max([read_mask_image(mp, size, mask_pre) for mp in t.mask_paths], axis=0)

  labels = np.asarray([t.class_index for t in triples], np.int32)
  if labels.max() >= num_classes:
    raise ValueError(f"num_classes: {num_classes} but class index {labels.max()} is listed")
  return evalset_lib.EvalSet(
      images=ctx.images([t.image_path for t in triples]), labels=labels,
      num_classes=int(num_classes),
      soft_masks=LazyArray(triples, read_soft, (size, size), cache=ctx.cache,
                           num_workers=ctx.workers),
      name=f"salient_imagenet:{mask_root}")


# --------------------------------------------------------------------------- ObjectNet
@dataclasses.dataclass(frozen=True)
class ObjectNetClasses:
  """ObjectNet's overlap with ImageNet-1k, from its four mapping files.

  Attributes:
    names: the K ObjectNet labels that map to ImageNet, sorted (index = position).
    folders: {image folder: class index} of the folders whose label is one of them.
    members: `(K, 1000)` bool, ImageNet-1k (PyTorch order) members of each class.
  """
  names: tuple[str, ...]
  folders: Mapping[str, int]
  members: np.ndarray


def objectnet_classes(mappings_dir: str) -> ObjectNetClasses:
  """Reads ObjectNet's `mappings/`: folder_to_objectnet_label.json ({folder: label}),
  objectnet_to_imagenet_1k.json ({label: "name; name"}, one to several),
  imagenet_to_label_2012_v2 (line i: names of ImageNet 2012 id i) and
  pytorch_to_imagenet_2012_id.json ({PyTorch index: 2012 id}; the orders differ). A name
  matching several lines maps to all of them."""
  paths = [_require_file(os.path.join(mappings_dir, f), "ObjectNet mapping file")
           for f in OBJECTNET_MAPPING_FILES]
  f2l, l2i, _, p2i = (_read_json(paths[0]), _read_json(paths[1]), None,
                      _read_json(paths[3]))
  with open(paths[2]) as f:
    lines = [line.strip() for line in f.read().splitlines()]
  lines = lines[:-1] if lines and not lines[-1] else lines
  if len(lines) != 1000:
    raise ValueError(f"{paths[2]}: expected 1000 lines, got {len(lines)}")
  try:
    id_to_torch = {int(v): int(k) for k, v in p2i.items()}
  except (AttributeError, TypeError, ValueError) as e:
    raise ValueError(f"{paths[3]}: expected {{PyTorch index: 2012 id}}: {e}") from e
  if sorted(id_to_torch) != list(range(1000)) or sorted(id_to_torch.values()) != list(
      range(1000)):
    raise ValueError(f"{paths[3]}: must be a permutation of 0..999")
  by_name: dict[str, list[int]] = {}
  for i, line in enumerate(lines):
    by_name.setdefault(line, []).append(i)
  names = tuple(sorted(l2i))
  members = np.zeros((len(names), 1000), bool)
  for k, label in enumerate(names):
    for name in str(l2i[label]).split(";"):
      name = name.strip()
      if name not in by_name:
        raise ValueError(f"{paths[1]}: ImageNet name {name!r} of {label!r} is not a line "
                         f"of {paths[2]}")
      for i in by_name[name]:
        members[k, id_to_torch[i]] = True
  index = {n: k for k, n in enumerate(names)}
  folders = {f: index[label] for f, label in f2l.items() if label in index}
  if not folders:
    raise ValueError(f"{paths[0]}: no folder maps to a label of {paths[1]}")
  return ObjectNetClasses(names, folders, members)


def load_objectnet(root: str, *, model_classes: str = "imagenet1k",
                   imagenet_val: str | None = None, preprocess: str = "resize_crop",
                   size: int = 224, border: int = 2, max_per_class: int | None = None,
                   cache_bytes: int = DEFAULT_CACHE_BYTES,
                   num_workers: int | None = None) -> evalset_lib.EvalSet:
  """ObjectNet's ImageNet-overlapping classes for the nuisance-shift protocol.

  Labels are indices into the sorted overlapping labels of `objectnet_to_imagenet_1k.json`
  (113 in the release). Images: 2-px border crop, then `preprocess` (default resize 256,
  center-crop 224). With `model_classes="imagenet1k"` the set carries a `ClassMap` (mode
  max: class score = max over its ImageNet logits); with "objectnet" the classifier outputs
  the K classes itself.

  Args:
    root: the `objectnet-1.0` folder (holding `images/` and `mappings/`).
    model_classes: "imagenet1k" or "objectnet".
    imagenet_val: ImageNet validation images in class folders `<wnid>/*.JPEG`. When given,
      the result's main images are those of the mapped ImageNet classes (label = the
      smallest ObjectNet class containing the wnid), and `shifted` holds ObjectNet, so
      `shift_drop` runs; otherwise the ObjectNet images are the main images.
    preprocess, size: transform and output side; border: pixels cropped per side.
    max_per_class: keep the first (sorted) files of each folder.
    cache_bytes, num_workers: decoded-pixel budget and decoding threads.
  """
  ctx = _ctx(size, preprocess, cache_bytes, num_workers)
  if model_classes not in ("imagenet1k", "objectnet"):
    raise ValueError(f"model_classes: must be 'imagenet1k' or 'objectnet', got "
                     f"{model_classes!r}")
  images_root = _require_dir(os.path.join(root, "images"), "ObjectNet images")
  classes = objectnet_classes(os.path.join(root, "mappings"))
  class_map = (evalset_lib.ClassMap(classes.members, "max", name="objectnet mappings")
               if model_classes == "imagenet1k" else None)
  k = len(classes.names)
  paths, labels = _folder_files(images_root, classes.folders, max_per_class)
  shifted_images = ctx.images(paths, border)
  name = f"objectnet:{root}"
  if imagenet_val is None:
    return evalset_lib.EvalSet(images=shifted_images, labels=np.asarray(labels, np.int32),
                               num_classes=max(k, 2), class_map=class_map, name=name)
  _require_dir(imagenet_val, "ImageNet val")
  wnids = imagenet_wnids()
  owner = {}
  for c in range(1000):
    ks = np.flatnonzero(classes.members[:, c])
    if ks.size:
      owner[wnids[c]] = int(ks[0])
  present = {w: owner[w] for w in _subdirs(imagenet_val) if w in owner}
  if not present:
    raise ValueError(f"{imagenet_val}: no class folder <wnid> of the mapped ImageNet classes")
  id_paths, id_labels = _folder_files(imagenet_val, present, max_per_class)
  return evalset_lib.EvalSet(
      images=ctx.images(id_paths), labels=np.asarray(id_labels, np.int32),
      num_classes=max(k, 2), class_map=class_map,
      shifted=evalset_lib.ShiftSplit(shifted_images, np.asarray(labels, np.int32)), name=name)

"""Loaders for the real benchmarks' on-disk layouts; each returns a `spurjax.evalset.EvalSet`.

The layouts are those of `../shared/BENCHMARKS.md`:
- ImageNet-9 (Xiao et al.): `<root>/<variant>/val/<class>/*.JPEG` for the eight variants,
  class folders `00_dog` ... `08_fish` (class index = sorted folder order), foreground masks
  `<root>/fg_mask/val/<class>/<stem>.npy` (0/1 arrays of the image's size).
- Waterbirds (Sagawa et al.): `<root>/metadata.csv` with columns img_id, img_filename, y,
  split, place, place_filename (split 0 train, 1 val, 2 test); images `<root>/<img_filename>`.
- RIVAL10 (Moayeri et al.): `<root>/{train,test}/ordinary/<stem>.JPEG`,
  `<root>/{train,test}/entire_object_masks/<stem>.JPEG` (binarized with mask > 0); labels from
  the stem's wnid (`<wnid>_...`) via `<root>/meta/wnid_to_class.json` (wnid -> ImageNet class
  name) and `<root>/meta/label_mappings.json` (class name -> [RIVAL10 name, index] or index).
- Salient ImageNet (Singla & Feizi): soft masks `<mask_root>/<wnid>/feature_<k>/<image>.JPEG`
  (0-255) listed by `<mask_root>/<wnid>/image_names_map.csv` (one column per feature index k,
  rows the image names without extension); images `<image_root>/<wnid>/<image>.JPEG` (the
  ImageNet train folder). Built around (image path, class index, soft-mask paths) triples.
- ObjectNet: `<root>/images/<folder>/<file>.png` with a 1-pixel border (2 pixels are cropped
  on each side), classes mapped by a user-supplied {folder: class index}.

Loading is lazy and batched: the loaders list every file and read every header up front
(so a missing folder or file, an unreadable image, a mask whose size differs from its image,
or a csv with missing columns raises at once, naming the path), and pixels are decoded only
when the protocols slice a batch (`LazyArray`). A file that passes the header check but fails
to decode raises ValueError naming it when its batch is read; nothing is skipped silently.
Images are resized to `size` x `size` (bilinear; binary masks nearest) and scaled to [0, 1].
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
from PIL import Image

from spurjax import evalset as evalset_lib

IMAGE_EXTENSIONS = (".jpeg", ".jpg", ".png")
WATERBIRDS_COLUMNS = ("img_id", "img_filename", "y", "split", "place", "place_filename")


class LazyArray:
  """An array-like `(N,) + item_shape` whose rows are decoded from files when sliced.

  `x[a:b]`, `x[i]` and `x[index_array]` return numpy arrays; `np.asarray(x)` reads all.
  """

  def __init__(self, items: Sequence[Any], reader: Callable[[Any], np.ndarray],
               item_shape: tuple[int, ...], dtype: Any = np.float32):
    self.items = list(items)
    self.reader = reader
    self.shape = (len(self.items),) + tuple(item_shape)
    self.dtype = np.dtype(dtype)

  def __len__(self) -> int:
    return self.shape[0]

  def __getitem__(self, index: Any) -> np.ndarray:
    if isinstance(index, (int, np.integer)):
      return self._read(self.items[int(index)])
    idx = np.arange(len(self))[index]
    out = np.empty((len(idx),) + self.shape[1:], self.dtype)
    for row, i in enumerate(idx):
      out[row] = self._read(self.items[int(i)])
    return out

  def _read(self, item: Any) -> np.ndarray:
    a = np.asarray(self.reader(item), self.dtype)
    if a.shape != self.shape[1:]:
      raise ValueError(f"{item}: decoded to shape {a.shape}, expected {self.shape[1:]}")
    return a

  def __array__(self, dtype=None, copy=None):
    a = self[:]
    return a if dtype is None else a.astype(dtype)


# --------------------------------------------------------------------------- file helpers
def _require_dir(path: str, what: str) -> str:
  if not os.path.isdir(path):
    raise FileNotFoundError(f"{what}: folder not found: {path}")
  return path


def _require_file(path: str, what: str) -> str:
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{what}: file not found: {path}")
  return path


def _list_images(folder: str) -> list[str]:
  return sorted(os.path.join(folder, f) for f in os.listdir(folder)
                if f.lower().endswith(IMAGE_EXTENSIONS))


def image_size_of(path: str) -> tuple[int, int]:
  """(height, width) of an image file from its header; errors name the path."""
  _require_file(path, "image")
  try:
    with Image.open(path) as im:
      w, h = im.size
  except (OSError, ValueError, Image.DecompressionBombError) as e:
    raise ValueError(f"unreadable image: {path}: {e}") from e
  return h, w


def read_image(path: str, size: int, border: int = 0) -> np.ndarray:
  """Decodes an image as RGB `(size, size, 3)` float32 in [0, 1].

  Args:
    path: image file.
    size: output side (bilinear resize).
    border: pixels cropped from each side before resizing (ObjectNet: 2).
  """
  try:
    with Image.open(path) as im:
      im = im.convert("RGB")
      if border:
        w, h = im.size
        if w <= 2 * border or h <= 2 * border:
          raise ValueError(f"image of size {w}x{h} is too small to crop {border} px")
        im = im.crop((border, border, w - border, h - border))
      im = im.resize((size, size), Image.BILINEAR)
      return np.asarray(im, np.float32) / 255.0
  except FileNotFoundError:
    raise FileNotFoundError(f"image: file not found: {path}") from None
  except (OSError, ValueError) as e:
    raise ValueError(f"unreadable image: {path}: {e}") from e


def read_mask_image(path: str, size: int, binary: bool) -> np.ndarray:
  """Decodes a mask image as `(size, size)` float32: binary (pixel > 0, nearest resize) or
  soft (pixel / 255, bilinear resize, in [0, 1])."""
  try:
    with Image.open(path) as im:
      a = np.asarray(im.convert("L"), np.float32)
  except FileNotFoundError:
    raise FileNotFoundError(f"mask: file not found: {path}") from None
  except (OSError, ValueError) as e:
    raise ValueError(f"unreadable mask: {path}: {e}") from e
  if binary:
    m = Image.fromarray(((a > 0) * 255).astype(np.uint8)).resize((size, size), Image.NEAREST)
    return (np.asarray(m) > 0).astype(np.float32)
  m = Image.fromarray(a, mode="F").resize((size, size), Image.BILINEAR)
  return np.clip(np.asarray(m, np.float32) / 255.0, 0.0, 1.0)


def _npy_shape(path: str) -> tuple[int, ...]:
  _require_file(path, "mask")
  try:
    return tuple(np.load(path, mmap_mode="r").shape)
  except (OSError, ValueError) as e:
    raise ValueError(f"unreadable mask: {path}: {e}") from e


def read_npy_mask(path: str, size: int) -> np.ndarray:
  """Reads a 0/1 `.npy` mask `(H, W)` (or `(H, W, C)`, any channel > 0) as `(size, size)`."""
  try:
    a = np.load(path)
  except (OSError, ValueError) as e:
    raise ValueError(f"unreadable mask: {path}: {e}") from e
  if a.ndim == 3:
    a = (a > 0).any(axis=-1)
  m = Image.fromarray(((a > 0) * 255).astype(np.uint8)).resize((size, size), Image.NEAREST)
  return (np.asarray(m) > 0).astype(np.float32)


def _check_same_size(image_path: str, mask_path: str, mask_hw: tuple[int, int]) -> None:
  hw = image_size_of(image_path)
  if tuple(mask_hw) != hw:
    raise ValueError(f"mask {mask_path} has size {tuple(mask_hw)} (H, W) but its image "
                     f"{image_path} has size {hw}")


def _check_size(size: int) -> None:
  if not isinstance(size, int) or size < 8:
    raise ValueError(f"size: must be an int >= 8, got {size!r}")


def _images(paths: Sequence[str], size: int, border: int = 0) -> LazyArray:
  for p in paths:
    image_size_of(p)  # Header check up front: missing or unreadable files fail now.
  return LazyArray(paths, lambda p: read_image(p, size, border), (size, size, 3))


def _limit(paths: list[str], max_per_class: int | None) -> list[str]:
  return paths if max_per_class is None else paths[:max_per_class]


# --------------------------------------------------------------------------- generic folder
def load_image_folder(root: str, *, size: int = 64,
                      class_mapping: Mapping[str, int] | None = None,
                      num_classes: int | None = None, border: int = 0,
                      max_per_class: int | None = None) -> evalset_lib.EvalSet:
  """A `<root>/<class folder>/*.{jpeg,jpg,png}` tree as an `EvalSet` (images and labels).

  Args:
    root: the folder of class folders.
    size: output side.
    class_mapping: {folder name: class index}; folders not in it are ignored. Default: every
      sub-folder, indexed in sorted order.
    num_classes: K (default: max index + 1).
    border: pixels cropped from each side.
    max_per_class: keep the first (sorted) files of each class only.
  """
  _check_size(size)
  _require_dir(root, "image folder")
  if class_mapping is None:
    folders = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))
    class_mapping = {d: i for i, d in enumerate(folders)}
  if not class_mapping:
    raise ValueError(f"class_mapping: no classes under {root}")
  paths, labels = [], []
  for folder, idx in sorted(class_mapping.items()):
    files = _limit(_list_images(_require_dir(os.path.join(root, folder), "class")),
                   max_per_class)
    paths += files
    labels += [int(idx)] * len(files)
  if not paths:
    raise ValueError(f"{root}: no images ({', '.join(IMAGE_EXTENSIONS)}) found")
  k = num_classes or max(class_mapping.values()) + 1
  return evalset_lib.EvalSet(images=_images(paths, size, border),
                             labels=np.asarray(labels, np.int32), num_classes=int(k),
                             name=f"folder:{root}")


# --------------------------------------------------------------------------- ImageNet-9
def load_imagenet9(root: str, *, size: int = 64, split: str = "val",
                   variants: Sequence[str] = evalset_lib.IN9_VARIANTS,
                   masks: bool | None = None,
                   max_per_class: int | None = None) -> evalset_lib.EvalSet:
  """ImageNet-9 (backgrounds challenge) as an `EvalSet` with all variants.

  `images`/`labels` are the Original variant; `variants` holds every requested variant;
  `masks` come from `fg_mask/<split>/<class>/<stem>.npy` (so RFS can run too).

  Args:
    root: folder holding `original/`, `mixed_rand/`, ... and `fg_mask/`.
    size: output side.
    split: sub-folder of each variant ("val").
    variants: variants to load; must include "original".
    masks: load fg masks (True), skip them (False) or load them if `fg_mask/` exists (None).
    max_per_class: keep the first (sorted) files of each class of each variant.
  """
  _check_size(size)
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
    found = sorted(d for d in os.listdir(vroot) if os.path.isdir(os.path.join(vroot, d)))
    if classes is None:
      classes = found
    elif found != classes:
      raise ValueError(f"{vroot}: class folders {found} differ from those of "
                       f"{os.path.join(root, 'original', split)}: {classes}")
    paths, labels = [], []
    for i, c in enumerate(classes):
      files = _limit(_list_images(os.path.join(vroot, c)), max_per_class)
      paths += files
      labels += [i] * len(files)
    if not paths:
      raise ValueError(f"{vroot}: no images found")
    loaded[v] = (paths, np.asarray(labels, np.int32))
  mask_arr = None
  mask_root = os.path.join(root, "fg_mask", split)
  if masks or (masks is None and os.path.isdir(mask_root)):
    _require_dir(mask_root, "ImageNet-9 fg_mask")
    mask_paths = []
    for p in loaded["original"][0]:
      cls = os.path.basename(os.path.dirname(p))
      stem = os.path.splitext(os.path.basename(p))[0]
      mp = os.path.join(mask_root, cls, stem + ".npy")
      shape = _npy_shape(mp)
      _check_same_size(p, mp, shape[:2])
      mask_paths.append(mp)
    mask_arr = LazyArray(mask_paths, lambda p: read_npy_mask(p, size), (size, size))
  var = {v: evalset_lib.Variant(_images(paths, size), labels)
         for v, (paths, labels) in loaded.items()}
  return evalset_lib.EvalSet(images=var["original"].images, labels=var["original"].labels,
                             num_classes=len(classes), masks=mask_arr, variants=var,
                             name=f"imagenet9:{root}")


# --------------------------------------------------------------------------- Waterbirds
def _read_csv_columns(path: str, required: Iterable[str]) -> list[dict[str, str]]:
  _require_file(path, "csv")
  with open(path, newline="") as f:
    reader = csv.DictReader(f)
    header = reader.fieldnames or []
    missing = [c for c in required if c not in header]
    if missing:
      raise ValueError(f"{path}: missing csv columns {missing}; found {header}")
    return list(reader)


def load_waterbirds(root: str, *, size: int = 64, split: int = 2) -> evalset_lib.EvalSet:
  """Waterbirds as an `EvalSet` whose `groups` part drives the group protocol.

  `images`/`labels` are the split's images and binary labels y (K = 2); `groups` holds the
  same images with places, no label map (the classifier outputs the two classes) and the
  training group fractions P_train(g), g = 2 y + place, counted from split 0.

  Args:
    root: folder holding `metadata.csv` and the image folders.
    size: output side.
    split: 0 train, 1 val, 2 test.
  """
  _check_size(size)
  _require_dir(root, "Waterbirds root")
  if split not in (0, 1, 2):
    raise ValueError(f"split: must be 0, 1 or 2, got {split!r}")
  csv_path = os.path.join(root, "metadata.csv")
  rows = _read_csv_columns(csv_path, WATERBIRDS_COLUMNS)
  try:
    parsed = [(r["img_filename"], int(r["y"]), int(r["split"]), int(r["place"])) for r in rows]
  except ValueError as e:
    raise ValueError(f"{csv_path}: y, split and place must be integers: {e}") from e
  for name, y, s, place in parsed:
    if y not in (0, 1) or place not in (0, 1):
      raise ValueError(f"{csv_path}: y and place must be 0 or 1 (row {name})")
  chosen = [r for r in parsed if r[2] == split]
  if not chosen:
    raise ValueError(f"{csv_path}: no rows with split == {split}")
  paths = [os.path.join(root, r[0]) for r in chosen]
  y = np.asarray([r[1] for r in chosen], np.int32)
  place = np.asarray([r[3] for r in chosen], np.int32)
  train = [2 * r[1] + r[3] for r in parsed if r[2] == 0]
  fractions = np.bincount(train, minlength=4) / len(train) if train else None
  images = _images(paths, size)
  groups = evalset_lib.GroupSplit(images=images, labels=y, places=place,
                                  train_group_fractions=fractions)
  return evalset_lib.EvalSet(images=images, labels=y, num_classes=2, groups=groups,
                             name=f"waterbirds:{root}:split={split}")


# --------------------------------------------------------------------------- RIVAL10
def _read_json(path: str) -> Any:
  _require_file(path, "json")
  try:
    with open(path) as f:
      return json.load(f)
  except json.JSONDecodeError as e:
    raise ValueError(f"{path}: invalid json: {e}") from e


def load_rival10(root: str, *, size: int = 64, split: str = "test",
                 max_items: int | None = None) -> evalset_lib.EvalSet:
  """RIVAL10 with entire-object masks as an `EvalSet` (RFS protocol).

  Args:
    root: the `RIVAL10` folder (holding `train/`, `test/`, `meta/`).
    size: output side.
    split: "train" or "test".
    max_items: keep the first (sorted) images only.
  """
  _check_size(size)
  if split not in ("train", "test"):
    raise ValueError(f"split: must be 'train' or 'test', got {split!r}")
  img_dir = _require_dir(os.path.join(root, split, "ordinary"), "RIVAL10 images")
  mask_dir = _require_dir(os.path.join(root, split, "entire_object_masks"), "RIVAL10 masks")
  wnid_to_class = _read_json(os.path.join(root, "meta", "wnid_to_class.json"))
  mappings_path = os.path.join(root, "meta", "label_mappings.json")
  mappings = _read_json(mappings_path)
  paths = _list_images(img_dir)
  if max_items is not None:
    paths = paths[:max_items]
  if not paths:
    raise ValueError(f"{img_dir}: no images found")
  labels, mask_paths = [], []
  for p in paths:
    fname = os.path.basename(p)
    wnid = fname.split("_")[0]
    if wnid not in wnid_to_class:
      raise ValueError(f"{p}: wnid {wnid!r} not in meta/wnid_to_class.json")
    name = wnid_to_class[wnid]
    if name not in mappings:
      raise ValueError(f"{p}: class {name!r} not in {mappings_path}")
    entry = mappings[name]
    labels.append(int(entry[1] if isinstance(entry, (list, tuple)) else entry))
    mp = os.path.join(mask_dir, fname)
    _check_same_size(p, mp, image_size_of(mp))
    mask_paths.append(mp)
  k = max(max(int(e[1] if isinstance(e, (list, tuple)) else e) for e in mappings.values()) + 1,
          2)
  return evalset_lib.EvalSet(
      images=_images(paths, size), labels=np.asarray(labels, np.int32), num_classes=k,
      masks=LazyArray(mask_paths, lambda q: read_mask_image(q, size, True), (size, size)),
      name=f"rival10:{root}:{split}")


# --------------------------------------------------------------------------- Salient ImageNet
@dataclasses.dataclass(frozen=True)
class SalientTriple:
  """One Salient-ImageNet item: the image, its class index and its soft core mask files
  (combined by a pixelwise maximum)."""
  image_path: str
  class_index: int
  mask_paths: tuple[str, ...]


def salient_triples(mask_root: str, image_root: str, class_index: Mapping[str, int], *,
                    core_features: Mapping[str, Sequence[int]] | None = None,
                    extension: str = ".JPEG") -> list[SalientTriple]:
  """Lists (image path, class index, soft-mask paths) triples of Salient ImageNet.

  Args:
    mask_root: folder of `<wnid>/image_names_map.csv` and `<wnid>/feature_<k>/`.
    image_root: folder of `<wnid>/<image><extension>` (the ImageNet train folder).
    class_index: {wnid: class index} of the classes to load.
    core_features: {wnid: core feature indices}; default: every feature column of the csv
      (then M is the union of all annotated features, not only the core ones).
    extension: image and mask file extension.

  Returns:
    Triples sorted by (wnid, image name); an image listed under several core features gets
    all their masks.
  """
  _require_dir(mask_root, "Salient ImageNet mask root")
  _require_dir(image_root, "Salient ImageNet image root")
  triples = []
  for wnid, idx in sorted(class_index.items()):
    wdir = _require_dir(os.path.join(mask_root, wnid), "Salient ImageNet class")
    csv_path = os.path.join(wdir, "image_names_map.csv")
    _require_file(csv_path, "csv")
    with open(csv_path, newline="") as f:
      reader = csv.DictReader(f)
      header = [h for h in (reader.fieldnames or []) if h.strip()]
      rows = list(reader)
    try:
      feats = {int(h): h for h in header}
    except ValueError as e:
      raise ValueError(f"{csv_path}: columns must be feature indices, got {header}") from e
    wanted = sorted(feats) if core_features is None else list(core_features.get(wnid, []))
    missing = [k for k in wanted if k not in feats]
    if missing:
      raise ValueError(f"{csv_path}: missing csv columns for features {missing}; "
                       f"found {header}")
    per_image: dict[str, list[str]] = {}
    for k in wanted:
      for r in rows:
        name = (r.get(feats[k]) or "").strip()
        if not name:
          continue
        stem = os.path.splitext(name)[0]
        mp = os.path.join(wdir, f"feature_{k}", stem + extension)
        per_image.setdefault(stem, []).append(mp)
    for stem in sorted(per_image):
      triples.append(SalientTriple(os.path.join(image_root, wnid, stem + extension), int(idx),
                                   tuple(per_image[stem])))
  if not triples:
    raise ValueError(f"{mask_root}: no Salient ImageNet images listed for {list(class_index)}")
  return triples


def eval_set_from_triples(triples: Sequence[SalientTriple], *, size: int = 64,
                          num_classes: int | None = None) -> evalset_lib.EvalSet:
  """An `EvalSet` with soft masks from Salient triples (core/spurious accuracy protocol).

  The soft core mask M is the pixelwise maximum of the triple's masks (each pixel / 255).
  """
  _check_size(size)
  if not triples:
    raise ValueError("triples: empty")
  for t in triples:
    for mp in t.mask_paths:
      _check_same_size(t.image_path, mp, image_size_of(mp))

  def read_soft(t: SalientTriple) -> np.ndarray:
    return np.max([read_mask_image(mp, size, False) for mp in t.mask_paths], axis=0)

  labels = np.asarray([t.class_index for t in triples], np.int32)
  k = num_classes or int(labels.max()) + 1
  return evalset_lib.EvalSet(
      images=_images([t.image_path for t in triples], size), labels=labels,
      num_classes=max(int(k), 2),
      soft_masks=LazyArray(list(triples), read_soft, (size, size)), name="salient_imagenet")


def load_salient_imagenet(mask_root: str, image_root: str, class_index: Mapping[str, int], *,
                          core_features: Mapping[str, Sequence[int]] | None = None,
                          size: int = 64, num_classes: int | None = None,
                          extension: str = ".JPEG") -> evalset_lib.EvalSet:
  """`eval_set_from_triples(salient_triples(...))`; see both."""
  return eval_set_from_triples(
      salient_triples(mask_root, image_root, class_index, core_features=core_features,
                      extension=extension), size=size, num_classes=num_classes)


# --------------------------------------------------------------------------- ObjectNet
def load_objectnet(root: str, class_mapping: Mapping[str, int], *, size: int = 64,
                   num_classes: int | None = None,
                   in_distribution: evalset_lib.EvalSet | None = None,
                   border: int = 2, max_per_class: int | None = None) -> evalset_lib.EvalSet:
  """ObjectNet (or any `images/<folder>/*.png` tree) for the nuisance-shift protocol.

  Args:
    root: the `objectnet-1.0` folder (holding `images/`).
    class_mapping: {ObjectNet folder: class index of the classifier}; other folders are
      ignored; a listed folder that does not exist raises FileNotFoundError.
    size: output side.
    num_classes: K (default: that of `in_distribution`, else max index + 1).
    in_distribution: the in-distribution test set of the same classes. When given, the
      result is that set with `shifted` set to the ObjectNet images (so `shift_drop` runs);
      otherwise the ObjectNet images are the main images.
    border: pixels cropped from each side (2 removes ObjectNet's 1-pixel border).
    max_per_class: keep the first (sorted) files of each folder.
  """
  images_root = _require_dir(os.path.join(root, "images"), "ObjectNet images")
  if num_classes is None and in_distribution is not None:
    num_classes = in_distribution.num_classes
  shifted = load_image_folder(images_root, size=size, class_mapping=class_mapping,
                              num_classes=num_classes, border=border,
                              max_per_class=max_per_class)
  if in_distribution is None:
    return dataclasses.replace(shifted, name=f"objectnet:{root}")
  if in_distribution.images.shape[1:] != shifted.images.shape[1:]:
    raise ValueError(f"in_distribution: image size {in_distribution.images.shape[1:]} "
                     f"differs from size={size}")
  return dataclasses.replace(
      in_distribution, shifted=evalset_lib.ShiftSplit(shifted.images, shifted.labels))

"""Small trees in the five benchmarks' published layouts, drawn from the procedural data.

Each writer renders images with `spurjax.data` and lays them out exactly as the real
download is laid out, traps included, so that `spurjax.loaders` (and the end-to-end
commands) run anywhere:
- ImageNet-9: the eight variants `<variant>/val/<NN_name>/<stem>.JPEG` and
  `fg_mask/val/<class>/<stem>.npy`; the true ImageNet class of each image is a random member
  of its class in `in_to_in9.json` (the other 630 classes map to -1).
- Waterbirds: `metadata.csv` (img_id, img_filename, y, split, place, place_filename) and
  `<NNN.Species>/<file>.jpg` images of assorted sizes.
- RIVAL10: `{train,test}/ordinary/<wnid>_<wnid>_<n>.JPEG` with the sibling files
  `_merged_mask.JPEG`, `_attr_labels.npy` and `_attr_dict.pkl` beside each image, soft
  JPEG entire-object masks, and every third image grayscale; wnids are real RIVAL10 wnids.
- Salient ImageNet: `wordnet_dict.py` (a bare dict literal), `<wnid>/image_names_map.csv`, 224 x 224 soft masks
  `<wnid>/feature_<k>/<image>.JPEG` drawn in the resize-256/center-crop-224 frame of
  ImageNet-train-style images of assorted sizes and aspect ratios, core features on the
  object and spurious ones on the background, and `discover_spurious_features.csv` with five
  crowd answers per feature (2 of 5 spurious answers still mean core), written as
  `<mask_root>/discover_spurious_features.csv` (in the real release it lives in the code
  repository's `mturk_results/`).
- ObjectNet: `images/<folder>/<n>.png` with a 1-px red border, folders outside the ImageNet
  overlap, and the four `mappings/` files with one-to-several ImageNet names and a PyTorch
  order that differs from the 2012-id order; optionally an ImageNet-val tree `<wnid>/*.JPEG`.

Every writer builds its tree in a temporary sibling folder and renames it into place, so an
interrupted write leaves no partial tree; it returns (and `write_all` stores as
`truth.json`) the ground truth: for each image file (path relative to the tree) its label and
true ImageNet-1k class (PyTorch index, -1 where none), which the tests compare with what the
loaders read.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import tempfile
from typing import Any

import jax
import numpy as np
from PIL import Image

from spurjax import data
from spurjax import evalset as evalset_lib
from spurjax import io as io_lib
from spurjax import loaders

IN9_FOLDERS = ("00_dog", "01_bird", "02_wheeled vehicle", "03_reptile", "04_carnivore",
               "05_insect", "06_musical instrument", "07_primate", "08_fish")


def _u8(x: Any) -> np.ndarray:
  return (np.clip(np.asarray(x, np.float32), 0, 1) * 255 + 0.5).astype(np.uint8)


def _save(path: str, array: Any, fmt: str, size: tuple[int, int] | None = None,
          mode: str | None = None, **kw) -> None:
  """Saves a float [0, 1] image/mask, optionally resized to `size` (W, H) and converted."""
  os.makedirs(os.path.dirname(path), exist_ok=True)
  im = Image.fromarray(_u8(array))
  if size is not None and im.size != tuple(size):
    im = im.resize(tuple(size), Image.BILINEAR)
  if mode is not None:
    im = im.convert(mode)
  im.save(path, format=fmt, **kw)


class _AtomicTree:
  """Writes a tree in a temporary sibling and renames it onto `root` when complete."""

  def __init__(self, root: str):
    self.root = os.path.abspath(root)
    if os.path.exists(self.root):
      raise ValueError(f"root: {self.root} already exists; fixture trees are written fresh")
    parent = os.path.dirname(self.root)
    os.makedirs(parent, exist_ok=True)
    self.tmp = tempfile.mkdtemp(dir=parent, prefix="." + os.path.basename(self.root) + ".")

  def __enter__(self) -> str:
    return self.tmp

  def __exit__(self, exc_type, exc, tb):
    if exc_type is None:
      os.replace(self.tmp, self.root)
    else:
      shutil.rmtree(self.tmp, ignore_errors=True)
    return False


_DRAW = 128  # One procedural draw size (and K = 10) for every tree: one compilation.


def _draw(key: jax.Array, image_size: int, variants: bool = False) -> evalset_lib.EvalSet:
  if not isinstance(image_size, int) or image_size < 8:
    raise ValueError(f"image_size: must be an int >= 8, got {image_size!r}")
  # Low-contrast textures: the flat-colour objects stay detectable from the pixels alone.
  config = data.DataConfig(image_size=image_size, num_classes=10, p=0.9, bg_contrast=0.1)
  return data.make_eval_set(key, config, _DRAW, n_groups=_DRAW, n_shifted=0,
                            variants=variants)


def _per_class(key: jax.Array, image_size: int, num_classes: int, per_class: int,
               variants: bool = False) -> tuple[evalset_lib.EvalSet, np.ndarray]:
  """A procedural set (10 classes) and the indices of `per_class` images of each of the
  first `num_classes` classes (in class order)."""
  if not isinstance(per_class, int) or per_class < 1:
    raise ValueError(f"per_class: must be a positive int, got {per_class!r}")
  for attempt in range(8):
    es = _draw(jax.random.fold_in(key, attempt), image_size, variants)
    labels = np.asarray(es.labels)
    picks = [np.flatnonzero(labels == c)[:per_class] for c in range(num_classes)]
    if all(len(p) == per_class for p in picks):
      return es, np.concatenate(picks)
  raise ValueError(f"per_class: could not draw {per_class} images of every class "
                   f"(at most about {_DRAW // 20} per class)")


def _colour(es: evalset_lib.EvalSet, i: int) -> list[float]:
  """The flat RGB colour of image i's object (the procedural objects are one colour)."""
  m = np.asarray(es.masks[i]) > 0.5
  return np.asarray(es.images[i])[m].mean(0).tolist() if m.any() else [-1.0] * 3


def _wnids() -> list[str]:
  return loaders.imagenet_wnids()


# --------------------------------------------------------------------------- ImageNet-9
def write_imagenet9(root: str, key: jax.Array, *, per_class: int = 2,
                    image_size: int = 32) -> dict[str, Any]:
  """ImageNet-9 tree: 9 classes x `per_class` images of side `image_size`, eight variants
  and fg masks. Returns the truth {"files": {relative path: {"label", "imagenet"}}}."""
  es, idx = _per_class(key, image_size, 9, per_class, variants=True)
  table = loaders.in9_class_map().members
  rng = np.random.default_rng(np.asarray(jax.random.key_data(key)).ravel())
  files = {}
  with _AtomicTree(root) as tmp:
    for i in idx:
      y = int(es.labels[i])
      stem = f"n{rng.integers(10**7, 10**8)}_{i}"
      true_class = int(rng.choice(np.flatnonzero(table[y])))
      colour = _colour(es, i)
      for v in evalset_lib.IN9_VARIANTS:
        rel = os.path.join(v, "val", IN9_FOLDERS[y], stem + ".JPEG")
        _save(os.path.join(tmp, rel), es.variants[v].images[i], "JPEG", quality=95)
        files[rel] = {"label": y, "imagenet": true_class, "colour": colour}
      path = os.path.join(tmp, "fg_mask", "val", IN9_FOLDERS[y], stem + ".npy")
      os.makedirs(os.path.dirname(path), exist_ok=True)
      np.save(path, np.asarray(es.masks[i]).astype(np.uint8))
  return {"files": files}


# --------------------------------------------------------------------------- Waterbirds
def write_waterbirds(root: str, key: jax.Array, *, n: int = 24, image_size: int = 32
                     ) -> dict[str, Any]:
  """Waterbirds tree: `n` images of assorted sizes (around `image_size`), splits 0/1/2 in
  turn, `metadata.csv` as published. Returns the truth (label y, place, split per file)."""
  if not isinstance(n, int) or not 6 <= n <= _DRAW:
    raise ValueError(f"n: must be an int in [6, {_DRAW}], got {n!r}")
  es = _draw(key, image_size)
  g = es.groups
  rng = np.random.default_rng(np.asarray(jax.random.key_data(key)).ravel())
  rows, files = [], {}
  with _AtomicTree(root) as tmp:
    for i in range(n):
      y, place = int(g.labels[i]), int(g.places[i])
      species = "001.Black_footed_Albatross" if y else "095.Baltimore_Oriole"
      rel = f"{species}/{species[4:]}_{i:04d}_{rng.integers(100, 999)}.jpg"
      w, h = (int(image_size * s) for s in rng.uniform(1.0, 1.6, 2))
      _save(os.path.join(tmp, rel), g.images[i], "JPEG", size=(w, h), quality=95)
      rows.append({"img_id": i + 1, "img_filename": rel, "y": y, "split": i % 3,
                   "place": place,
                   "place_filename": f"/{'o/ocean' if place else 'b/bamboo_forest'}/"
                                     f"{i:08d}.jpg"})
      files[rel] = {"label": y, "place": place, "split": i % 3, "imagenet": -1}
    io_lib.write_csv(os.path.join(tmp, "metadata.csv"), rows)
  return {"files": files}


# --------------------------------------------------------------------------- RIVAL10
def write_rival10(root: str, key: jax.Array, *, per_class: int = 2, image_size: int = 32,
                  splits: tuple[str, ...] = ("test",)) -> dict[str, Any]:
  """RIVAL10 tree (`root` is the `RIVAL10` folder): 10 classes x `per_class` images per
  split, each labelled by a real wnid of its class, with the three sibling files, a soft JPEG
  entire-object mask of the image's size (soft
  at the edges after resizing and JPEG), and every third image grayscale."""
  w2c, to_index, _ = loaders.rival10_tables()
  index = {w: i for i, w in enumerate(_wnids())}
  by_class: dict[int, list[str]] = {}
  for w in sorted(w2c):
    if w2c[w] in to_index:
      by_class.setdefault(to_index[w2c[w]], []).append(w)
  rng = np.random.default_rng(np.asarray(jax.random.key_data(key)).ravel())
  files = {}
  with _AtomicTree(root) as tmp:
    for s, split in enumerate(splits):
      es, idx = _per_class(jax.random.fold_in(key, s), image_size, 10, per_class)
      for j, i in enumerate(idx):
        y = int(es.labels[i])
        wnid = str(rng.choice(by_class[y]))
        stem = f"{wnid}_{wnid}_{rng.integers(1000, 99999)}"
        size = tuple(int(image_size * f) for f in rng.uniform(1.0, 1.5, 2))
        gray = j % 3 == 2
        img_dir = os.path.join(tmp, split, "ordinary")
        rel = os.path.join(split, "ordinary", stem + ".JPEG")
        _save(os.path.join(tmp, rel), es.images[i], "JPEG", size=size,
              mode="L" if gray else None, quality=95)
        _save(os.path.join(img_dir, stem + "_merged_mask.JPEG"), es.masks[i], "JPEG",
              size=size, quality=90)
        np.save(os.path.join(img_dir, stem + "_attr_labels.npy"),
                rng.integers(0, 2, (2, 18)).astype(np.float32))   # attrs, changed attrs
        with open(os.path.join(img_dir, stem + "_attr_dict.pkl"), "wb") as f:
          pickle.dump({"attr": rng.integers(0, 2, 18).tolist()}, f)
        _save(os.path.join(tmp, split, "entire_object_masks", stem + ".JPEG"),
              es.masks[i], "JPEG", size=size, quality=90)
        files[rel] = {"label": y, "imagenet": index[wnid], "grayscale": gray,
                      "colour": _colour(es, i)}
  return {"files": files}


# --------------------------------------------------------------------------- Salient ImageNet
def _crop_frame_source(img224: np.ndarray, rng: np.random.Generator,
                       taken: set[tuple[int, int]]) -> np.ndarray:
  """An image of random size and aspect whose resize-256/center-crop-224 view is `img224`:
  `img224` is padded (edge values) to a 256-short-side frame, which is then resized. Its
  (height, width) is not in `taken` (redrawn until new; then added), so that every image
  of a tree has its own size (~38,000 possible sizes: 12 images share one ~0.2% of the
  time otherwise)."""
  while True:
    wide = int(rng.integers(256, 384))
    portrait = rng.random() < 0.5   # Portrait as often as landscape.
    short = int(rng.integers(120, 300))
    h, w = (wide, 256) if portrait else (256, wide)
    out = (short, int(round(short * w / h))) if h <= w else (int(round(short * h / w)), short)
    if out not in taken:
      break
  taken.add(out)
  long_pad = (int(round((wide - 224) / 2.0)), wide - 224 - int(round((wide - 224) / 2.0)))
  short_pad = (16, 16)
  frame = np.pad(img224, (long_pad if portrait else short_pad,
                          short_pad if portrait else long_pad, (0, 0)), mode="edge")
  im = Image.fromarray(_u8(frame)).resize((out[1], out[0]), Image.BILINEAR)
  return np.asarray(im, np.float32) / 255.0


def write_salient_imagenet(mask_root: str, imagenet_root: str, key: jax.Array, *,
                           classes: tuple[int, ...] = (1, 94, 309, 417),
                           per_class: int = 3, image_size: int = 32,
                           mask_size: int = 224) -> dict[str, Any]:
  """Salient ImageNet masks (`mask_root`) and ImageNet-train-style images
  (`imagenet_root/train/<wnid>/`) for the ImageNet classes `classes`.

  Per class: features 0 (core: the object), 1 (spurious: background, 4 of 5 answers), 2
  (core by 3 of 5 votes although 2 answers say background: a part of the object) and 3
  (spurious, 3 of 5: a background patch); masks are soft, `mask_size` x `mask_size`, in the
  crop frame of each image. Returns the truth, with each file's object colour (the object is
  drawn in one flat colour) for alignment checks.
  """
  wnids = _wnids()
  if not 1 <= len(classes) <= 10:
    raise ValueError(f"classes: 1 to 10 ImageNet indices, got {classes}")
  es, idx = _per_class(key, image_size, len(classes), per_class)
  rng = np.random.default_rng(np.asarray(jax.random.key_data(key)).ravel())
  up = lambda a, mode=Image.BILINEAR: np.asarray(
      Image.fromarray(_u8(a)).resize((mask_size, mask_size), mode), np.float32) / 255.0
  files, answers, sizes = {}, [], set()
  for d in (mask_root, imagenet_root):
    if os.path.exists(d):
      raise ValueError(f"{d} already exists; fixture trees are written fresh")
  with _AtomicTree(mask_root) as mtmp, _AtomicTree(imagenet_root) as itmp:
    with open(os.path.join(mtmp, "wordnet_dict.py"), "w") as f:
      # A bare dict literal, as published (the official code eval()s it; we parse it).
      f.write("{\n" + "".join(f"  {c}: '{wnids[c]}',\n" for c in classes) + "}\n")
    for c_pos, c in enumerate(classes):
      wnid = wnids[c]
      names = []
      for j, i in enumerate(idx[c_pos * per_class:(c_pos + 1) * per_class]):
        name = f"{wnid}_{rng.integers(1000, 99999)}{j}"
        names.append(name)
        img = up(np.asarray(es.images[i]))
        src = _crop_frame_source(img, rng, sizes)
        rel = os.path.join("train", wnid, name + ".JPEG")
        _save(os.path.join(itmp, rel), src, "JPEG", quality=95)
        m = np.asarray(es.masks[i], np.float32)
        soft = up(m)   # Bilinear upsampling and JPEG make the object mask soft at its edge.
        half = soft * (np.arange(mask_size)[:, None] < mask_size // 2)   # Top of the object.
        bg = (1.0 - up(m, Image.NEAREST)) * 0.8                     # The background.
        patch = np.zeros_like(soft)
        patch[:mask_size // 6, :mask_size // 6] = 1.0
        for k, mask in ((0, soft), (1, bg), (2, half), (3, patch)):
          _save(os.path.join(mtmp, wnid, f"feature_{k}", name + ".JPEG"), mask, "JPEG",
                quality=95)
        files[rel] = {"label": c, "imagenet": c, "colour": _colour(es, i)}
      with open(os.path.join(mtmp, wnid, "image_names_map.csv"), "w") as f:
        f.write("0,1,2,3\n" + "".join(f"{n},{n},{n},{n}\n" for n in names))
      for k, spurious in ((0, 0), (1, 4), (2, 2), (3, 3)):
        votes = (["separate_object", "background"] * 3)[:spurious] + ["main_object"] * (
            5 - spurious)
        for v in rng.permutation(votes):
          answers.append({"HITId": f"h{len(answers)}", "WorkerId": f"w{rng.integers(1e6)}",
                          "Input.wordnet_id": wnid, "Input.class_index": c,
                          "Input.feature_index": k, "Answer.main": str(v),
                          "Answer.confidence": int(rng.integers(1, 6))})
    io_lib.write_csv(os.path.join(mtmp, "discover_spurious_features.csv"), answers)
  return {"files": files, "core_features": [0, 2]}


# --------------------------------------------------------------------------- ObjectNet
OBJECTNET_FIXTURE_CLASSES = (
    ("banana", "Banana", 1), ("bucket", "Bucket", 1), ("chair", "Chair", 3),
    ("tie", "Tie", 2))
OBJECTNET_FIXTURE_EXTRA = (("air_freshener", "Air freshener"), ("ziploc_bag", "Ziploc bag"))


def write_objectnet(root: str, key: jax.Array, *, per_class: int = 2, image_size: int = 32,
                    imagenet_val: str | None = None) -> dict[str, Any]:
  """ObjectNet tree (`root` is `objectnet-1.0`): four overlapping classes mapped to 1, 1, 3
  and 2 ImageNet classes, two folders outside the overlap, 1-px red borders, the four
  mapping files with a random 2012-id order; with `imagenet_val`, an ImageNet-val tree of the
  mapped wnids. The truth gives each file's class (index in sorted labels) and true
  ImageNet class (a random member)."""
  k = len(OBJECTNET_FIXTURE_CLASSES)
  es, idx = _per_class(key, image_size, k + len(OBJECTNET_FIXTURE_EXTRA), per_class)
  rng = np.random.default_rng(np.asarray(jax.random.key_data(key)).ravel())
  wnids = _wnids()
  names_by_torch = [loaders.rival10_tables()[0][w] for w in wnids]
  torch_to_line = rng.permutation(1000)
  lines = [""] * 1000
  for t, line in enumerate(torch_to_line):
    lines[line] = names_by_torch[t]
  chosen = rng.choice(1000, sum(c[2] for c in OBJECTNET_FIXTURE_CLASSES), replace=False)
  labels_sorted = sorted(c[1] for c in OBJECTNET_FIXTURE_CLASSES)
  members, to_imagenet, pos = {}, {}, 0
  for folder, label, n_members in OBJECTNET_FIXTURE_CLASSES:
    members[label] = [int(t) for t in chosen[pos:pos + n_members]]
    to_imagenet[label] = "; ".join(names_by_torch[t] for t in members[label])
    pos += n_members
  folders = dict((f, l) for f, l, _ in OBJECTNET_FIXTURE_CLASSES)
  folders.update(dict(OBJECTNET_FIXTURE_EXTRA))
  files, val_files = {}, {}
  if imagenet_val is not None and os.path.exists(imagenet_val):
    raise ValueError(f"imagenet_val: {imagenet_val} already exists")
  with _AtomicTree(root) as tmp:
    mdir = os.path.join(tmp, "mappings")
    os.makedirs(mdir)
    with open(os.path.join(mdir, "folder_to_objectnet_label.json"), "w") as f:
      json.dump(folders, f, indent=1)
    with open(os.path.join(mdir, "objectnet_to_imagenet_1k.json"), "w") as f:
      json.dump(to_imagenet, f, indent=1)
    with open(os.path.join(mdir, "imagenet_to_label_2012_v2"), "w") as f:
      f.write("".join(line + "\n" for line in lines))
    with open(os.path.join(mdir, "pytorch_to_imagenet_2012_id.json"), "w") as f:
      json.dump({str(t): int(line) for t, line in enumerate(torch_to_line)}, f)
    all_folders = [c[0] for c in OBJECTNET_FIXTURE_CLASSES] + [
        c[0] for c in OBJECTNET_FIXTURE_EXTRA]
    for i in idx:
      folder = all_folders[int(es.labels[i])]
      label = folders[folder]
      w, h = (int(image_size * s) for s in rng.uniform(1.0, 1.5, 2))
      im = np.asarray(Image.fromarray(_u8(es.images[i])).resize((w, h), Image.BILINEAR),
                      np.float32) / 255.0
      canvas = np.zeros((h + 2, w + 2, 3), np.float32)
      canvas[...] = (1.0, 0.0, 0.0)             # ObjectNet's 1-px red border.
      canvas[1:-1, 1:-1] = im
      rel = os.path.join("images", folder, f"{rng.integers(10**9):x}.png")
      _save(os.path.join(tmp, rel), canvas, "PNG")
      in_overlap = label in members
      files[rel] = {"label": labels_sorted.index(label) if in_overlap else -1,
                    "imagenet": int(rng.choice(members[label])) if in_overlap else -1}
  if imagenet_val is not None:
    with _AtomicTree(imagenet_val) as vtmp:
      es2, idx2 = _per_class(jax.random.fold_in(key, 1), image_size, k, per_class)
      for i in idx2:
        y = int(es2.labels[i])
        if y >= k:
          continue
        label = OBJECTNET_FIXTURE_CLASSES[y][1]
        t = int(rng.choice(members[label]))
        rel = os.path.join(wnids[t], f"ILSVRC2012_val_{rng.integers(10**8):08d}.JPEG")
        _save(os.path.join(vtmp, rel), es2.images[i], "JPEG", quality=95)
        val_files[rel] = {"label": labels_sorted.index(label), "imagenet": t}
  return {"files": files, "imagenet_val_files": val_files, "members": members}


# --------------------------------------------------------------------------- all five
def write_all(workdir: str, key: jax.Array | None = None, *, per_class: int = 2,
              image_size: int = 32) -> dict[str, str]:
  """Writes the five trees under `workdir` and their truth to `workdir/truth.json`.

  Layout: `imagenet9/`, `waterbirds/`, `RIVAL10/`, `salient_masks/` with
  `salient_masks/discover_spurious_features.csv`, `imagenet/train/` (Salient's images),
  `objectnet-1.0/`, `imagenet_val/`. Returns {name: path} for the loaders' arguments.
  """
  key = jax.random.key(0) if key is None else key
  ks = jax.random.split(key, 5)
  p = {"in9": os.path.join(workdir, "imagenet9"),
       "waterbirds": os.path.join(workdir, "waterbirds"),
       "rival10": os.path.join(workdir, "RIVAL10"),
       "salient_masks": os.path.join(workdir, "salient_masks"),
       "imagenet": os.path.join(workdir, "imagenet"),
       "objectnet": os.path.join(workdir, "objectnet-1.0"),
       "imagenet_val": os.path.join(workdir, "imagenet_val")}
  p["salient_annotations"] = os.path.join(p["salient_masks"],
                                          "discover_spurious_features.csv")
  truth = {
      "in9": write_imagenet9(p["in9"], ks[0], per_class=per_class, image_size=image_size),
      "waterbirds": write_waterbirds(p["waterbirds"], ks[1], n=max(12, 6 * per_class),
                                     image_size=image_size),
      "rival10": write_rival10(p["rival10"], ks[2], per_class=per_class,
                               image_size=image_size, splits=("train", "test")),
      "salient": write_salient_imagenet(p["salient_masks"], p["imagenet"], ks[3],
                                        per_class=per_class + 1, image_size=image_size),
      "objectnet": write_objectnet(p["objectnet"], ks[4], per_class=per_class,
                                   image_size=image_size, imagenet_val=p["imagenet_val"]),
  }
  io_lib.write_json(os.path.join(workdir, "truth.json"), truth)
  return p

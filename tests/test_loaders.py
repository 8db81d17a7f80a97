"""Tests of spurjax.loaders on tiny fixture trees written in each real layout."""

import csv
import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image
import pytest

from spurjax import data
from spurjax import evalset
from spurjax import loaders
from spurjax import reliance

S = 16
CONFIG = data.DataConfig(image_size=S, num_classes=4, p=1.0)
IN9_CLASSES = ("00_dog", "01_bird", "02_wheeled vehicle", "03_reptile")


def _u8(x):
  return (np.clip(np.asarray(x), 0, 1) * 255 + 0.5).astype(np.uint8)


def _save(path, array, fmt=None, **kw):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  Image.fromarray(_u8(array)).save(path, format=fmt, **kw)


def simple_classifier(num_classes):
  """A fixed linear classifier of the mean colour and a coarse spatial pooling."""
  w = jax.random.normal(jax.random.key(0), (3 * 4 + 3, num_classes))

  def apply_fn(x):
    b = x.shape[0]
    pooled = x.reshape(b, 2, x.shape[1] // 2, 2, x.shape[2] // 2, 3).mean((2, 4))
    feats = jnp.concatenate([pooled.reshape(b, -1), x.mean((1, 2))], axis=1)
    return feats @ w

  return apply_fn


@pytest.fixture(scope="module")
def source():
  return data.make_eval_set(jax.random.key(0), CONFIG, 24, n_groups=12, n_shifted=8)


# --------------------------------------------------------------------------- ImageNet-9
@pytest.fixture(scope="module")
def in9_root(tmp_path_factory, source):
  root = str(tmp_path_factory.mktemp("in9"))
  for name in evalset.IN9_VARIANTS:
    for i, (img, y) in enumerate(zip(source.variants[name].images, source.labels)):
      _save(os.path.join(root, name, "val", IN9_CLASSES[y], f"n{y:08d}_{i}.JPEG"), img,
            "JPEG", quality=95)
  for i, (m, y) in enumerate(zip(source.masks, source.labels)):
    path = os.path.join(root, "fg_mask", "val", IN9_CLASSES[y], f"n{y:08d}_{i}.npy")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    np.save(path, m.astype(np.uint8))
  return root


def test_imagenet9_layout_and_protocols(in9_root, source):
  e = loaders.load_imagenet9(in9_root, size=S)
  assert set(e.variants) == set(evalset.IN9_VARIANTS) and e.num_classes == 4
  order = np.argsort([f"{IN9_CLASSES[y]}/n{y:08d}_{i}" for i, y in enumerate(source.labels)],
                     kind="stable")
  # Files are listed in sorted order; labels follow the sorted class folders.
  np.testing.assert_array_equal(e.labels, source.labels[order])
  np.testing.assert_array_equal(np.asarray(e.masks), source.masks[order])
  got = np.asarray(e.variants["mixed_rand"].images)
  assert np.abs(got - source.variants["mixed_rand"].images[order]).mean() < 0.03  # JPEG
  out = reliance.evaluate(jax.random.key(0), simple_classifier(4), e, sigmas=(0.3,))
  assert isinstance(out["bg_gap"], float) and isinstance(out["rfs"], float)
  assert out["bg_gap"] == pytest.approx(out["acc_mixed_same"] - out["acc_mixed_rand"])
  for k in ("core_acc", "worst_group_acc", "shift_drop"):
    assert out[k] is None


def test_imagenet9_errors(in9_root, tmp_path):
  with pytest.raises(FileNotFoundError, match="nope"):
    loaders.load_imagenet9(str(tmp_path / "nope"))
  broken = str(tmp_path / "in9")
  shutil.copytree(in9_root, broken)
  shutil.rmtree(os.path.join(broken, "mixed_next"))
  with pytest.raises(FileNotFoundError, match="mixed_next"):
    loaders.load_imagenet9(broken, size=S)
  # A mask whose size differs from its image.
  shutil.rmtree(broken)
  shutil.copytree(in9_root, broken)
  cls_dir = os.path.join(broken, "fg_mask", "val", IN9_CLASSES[0])
  bad = os.path.join(cls_dir, sorted(os.listdir(cls_dir))[0])
  np.save(bad, np.zeros((S + 4, S), np.uint8))
  with pytest.raises(ValueError, match="has size"):
    loaders.load_imagenet9(broken, size=S)
  assert loaders.load_imagenet9(broken, size=S, masks=False).masks is None


# --------------------------------------------------------------------------- Waterbirds
@pytest.fixture(scope="module")
def waterbirds_root(tmp_path_factory, source):
  root = str(tmp_path_factory.mktemp("waterbirds"))
  g = source.groups
  rows = []
  for i, (img, y, place) in enumerate(zip(g.images, g.labels, g.places)):
    fn = f"{'001.Albatross' if y else '002.Sparrow'}/img_{i}.jpg"
    _save(os.path.join(root, fn), img, "JPEG", quality=95)
    rows.append({"img_id": i, "img_filename": fn, "y": int(y), "split": 2 if i >= 4 else 0,
                 "place": int(place), "place_filename": f"/x/place_{i}.jpg"})
  with open(os.path.join(root, "metadata.csv"), "w", newline="") as f:
    w = csv.DictWriter(f, fieldnames=list(rows[0]))
    w.writeheader()
    w.writerows(rows)
  return root


def test_waterbirds_layout_and_protocols(waterbirds_root, source):
  e = loaders.load_waterbirds(waterbirds_root, size=S)
  g = source.groups
  np.testing.assert_array_equal(e.labels, g.labels[4:])
  np.testing.assert_array_equal(e.groups.places, g.places[4:])
  train_g = 2 * g.labels[:4] + g.places[:4]
  np.testing.assert_allclose(e.groups.train_group_fractions,
                             np.bincount(train_g, minlength=4) / 4)
  out = reliance.evaluate(jax.random.key(0), simple_classifier(2), e)
  assert isinstance(out["worst_group_acc"], float)
  assert isinstance(out["wb_mean_acc"], float) and out["wb_mean_acc"] == out["clean_acc"]
  assert out["rfs"] is None and out["bg_gap"] is None


def test_waterbirds_errors(waterbirds_root, tmp_path):
  broken = str(tmp_path / "wb")
  shutil.copytree(waterbirds_root, broken)
  csv_path = os.path.join(broken, "metadata.csv")
  rows = list(csv.DictReader(open(csv_path)))
  with open(csv_path, "w", newline="") as f:
    w = csv.DictWriter(f, fieldnames=[c for c in rows[0] if c != "place"],
                       extrasaction="ignore")
    w.writeheader()
    w.writerows(rows)
  with pytest.raises(ValueError, match=r"metadata\.csv.*missing csv columns \['place'\]"):
    loaders.load_waterbirds(broken, size=S)
  # An unreadable image is named up front.
  shutil.rmtree(broken)
  shutil.copytree(waterbirds_root, broken)
  bad = os.path.join(broken, rows[5]["img_filename"])
  with open(bad, "wb") as f:
    f.write(b"not an image")
  with pytest.raises(ValueError, match="unreadable image.*img_5"):
    loaders.load_waterbirds(broken, size=S)
  # A truncated file passes the header check, then fails loudly when its batch is decoded.
  shutil.rmtree(broken)
  shutil.copytree(waterbirds_root, broken)
  raw = open(os.path.join(waterbirds_root, rows[6]["img_filename"]), "rb").read()
  with open(os.path.join(broken, rows[6]["img_filename"]), "wb") as f:
    f.write(raw[: len(raw) - 30])   # headers intact, scan data cut
  e = loaders.load_waterbirds(broken, size=S)
  with pytest.raises(ValueError, match="img_6"):
    reliance.evaluate(jax.random.key(0), simple_classifier(2), e)


# --------------------------------------------------------------------------- RIVAL10
@pytest.fixture(scope="module")
def rival_root(tmp_path_factory, source):
  root = str(tmp_path_factory.mktemp("rival")) + "/RIVAL10"
  wnids = [f"n0{k}000000" for k in range(4)]
  names = ["tabby cat", "trailer truck", "sorrel", "goldfinch"]
  os.makedirs(os.path.join(root, "meta"))
  json.dump(dict(zip(wnids, names)), open(os.path.join(root, "meta", "wnid_to_class.json"), "w"))
  mappings = {n: [r, (k + 1) % 4] for k, (n, r) in enumerate(zip(names, ["cat", "truck",
                                                                         "horse", "bird"]))}
  json.dump(mappings, open(os.path.join(root, "meta", "label_mappings.json"), "w"))
  for i, (img, m, y) in enumerate(zip(source.images, source.masks, source.labels)):
    stem = f"{wnids[y]}_{i:03d}"
    _save(os.path.join(root, "test", "ordinary", stem + ".JPEG"), img, "JPEG", quality=95)
    _save(os.path.join(root, "test", "entire_object_masks", stem + ".JPEG"), m, "JPEG",
          quality=100, subsampling=0)
  return root


def test_rival10_layout_and_protocols(rival_root, source):
  e = loaders.load_rival10(rival_root, size=S)
  order = np.argsort([f"n0{y}000000_{i:03d}" for i, y in enumerate(source.labels)])
  np.testing.assert_array_equal(e.labels, (source.labels[order] + 1) % 4)  # label_mappings
  masks = np.asarray(e.masks)
  # JPEG masks binarized with > 0: the object is always inside, a thin halo may be added.
  assert np.all(masks[source.masks[order] == 1] == 1)
  assert masks.sum() < 1.5 * source.masks.sum()
  out = reliance.evaluate(jax.random.key(0), simple_classifier(4), e, sigmas=(0.2, 0.6))
  assert isinstance(out["rfs"], float) and "rfs_s051" in out
  assert out["core_acc"] is None


def test_rival10_mask_size_mismatch(rival_root, tmp_path):
  broken = str(tmp_path / "RIVAL10")
  shutil.copytree(rival_root, broken)
  mdir = os.path.join(broken, "test", "entire_object_masks")
  bad = os.path.join(mdir, sorted(os.listdir(mdir))[3])
  _save(bad, np.zeros((S + 2, S + 2)), "JPEG")
  with pytest.raises(ValueError, match=os.path.basename(bad)):
    loaders.load_rival10(broken, size=S)
  os.remove(bad)
  with pytest.raises(FileNotFoundError, match=os.path.basename(bad)):
    loaders.load_rival10(broken, size=S)


# --------------------------------------------------------------------------- Salient ImageNet
@pytest.fixture(scope="module")
def salient_roots(tmp_path_factory, source):
  base = str(tmp_path_factory.mktemp("salient"))
  mask_root, image_root = os.path.join(base, "masks"), os.path.join(base, "train")
  wnids = [f"n1{k}000000" for k in range(2)]
  for c, wnid in enumerate(wnids):
    idx = np.flatnonzero(source.labels == c)[:4]
    stems = [f"{wnid}_{i}" for i in idx]
    # Feature 0 annotates all four images, feature 7 the first two (a half-strength mask).
    with open(os.path.join(_mk(mask_root, wnid), "image_names_map.csv"), "w") as f:
      f.write("0,7\n" + "\n".join(f"{s},{stems[j] if j < 2 else ''}"
                                  for j, s in enumerate(stems)) + "\n")
    for j, (i, stem) in enumerate(zip(idx, stems)):
      _save(os.path.join(image_root, wnid, stem + ".JPEG"), source.images[i], "JPEG",
            quality=95)
      _save(os.path.join(mask_root, wnid, "feature_0", stem + ".JPEG"), source.soft_masks[i],
            "JPEG", quality=95)
      if j < 2:
        _save(os.path.join(mask_root, wnid, "feature_7", stem + ".JPEG"),
              np.full((S, S), 0.5), "JPEG", quality=95)
  return mask_root, image_root, {w: c for c, w in enumerate(wnids)}


def _mk(*parts):
  path = os.path.join(*parts)
  os.makedirs(path, exist_ok=True)
  return path


def test_salient_triples_and_protocols(salient_roots, source):
  mask_root, image_root, class_index = salient_roots
  triples = loaders.salient_triples(mask_root, image_root, class_index)
  assert len(triples) == 8
  assert sum(len(t.mask_paths) == 2 for t in triples) == 4
  core_only = loaders.salient_triples(mask_root, image_root, class_index,
                                      core_features={w: [0] for w in class_index})
  e = loaders.eval_set_from_triples(core_only, size=S, num_classes=4)
  soft = np.asarray(e.soft_masks)
  order = [int(os.path.basename(t.image_path).split("_")[1].split(".")[0]) for t in core_only]
  assert np.abs(soft - source.soft_masks[order]).max() < 0.05   # JPEG of a 0-255 mask
  both = loaders.eval_set_from_triples(triples, size=S, num_classes=4)
  two = [i for i, t in enumerate(triples) if len(t.mask_paths) == 2]
  # Combined by a pixelwise maximum: at least the half-strength feature everywhere.
  assert np.asarray(both.soft_masks)[two].min() > 0.45
  out = reliance.evaluate(jax.random.key(0), simple_classifier(4), e)
  for k in ("core_acc", "spur_acc", "rcs"):
    assert isinstance(out[k], float)
  assert out["rfs"] is None and out["marker_noise_acc"] is None


def test_salient_errors(salient_roots, tmp_path):
  mask_root, image_root, class_index = salient_roots
  with pytest.raises(ValueError, match="missing csv columns"):
    loaders.salient_triples(mask_root, image_root, class_index,
                            core_features={w: [3] for w in class_index})
  with pytest.raises(FileNotFoundError, match="n19"):
    loaders.salient_triples(mask_root, image_root, {"n19": 0})


# --------------------------------------------------------------------------- ObjectNet
@pytest.fixture(scope="module")
def objectnet_root(tmp_path_factory, source):
  root = str(tmp_path_factory.mktemp("on")) + "/objectnet-1.0"
  folders = ["chair", "banana", "bucket", "teapot"]
  for i, (img, y) in enumerate(zip(source.shifted.images, source.shifted.labels)):
    canvas = np.zeros((S + 4, S + 4, 3))
    canvas[...] = [1.0, 0.0, 0.0]               # ObjectNet's red frame (cropped away)
    canvas[2:-2, 2:-2] = img
    _save(os.path.join(root, "images", folders[y], f"{i:02d}.png"), canvas, "PNG")
  for f in folders + ["unmapped"]:
    os.makedirs(os.path.join(root, "images", f), exist_ok=True)
  return root, {f: k for k, f in enumerate(folders)}


def test_objectnet_crop_mapping_and_shift(objectnet_root, in9_root, source):
  root, mapping = objectnet_root
  alone = loaders.load_objectnet(root, mapping, size=S)
  names = [f"{list(mapping)[y]}/{i:02d}" for i, y in enumerate(source.shifted.labels)]
  order = np.argsort(names, kind="stable")
  # Lossless PNG and an exact 2-pixel crop: the pixels come back exactly.
  np.testing.assert_allclose(np.asarray(alone.images), _u8(source.shifted.images)[order] / 255,
                             atol=1e-6)
  np.testing.assert_array_equal(alone.labels, source.shifted.labels[order])
  in_dist = loaders.load_image_folder(os.path.join(in9_root, "original", "val"), size=S)
  e = loaders.load_objectnet(root, mapping, size=S, in_distribution=in_dist)
  out = reliance.evaluate(jax.random.key(0), simple_classifier(4), e)
  assert out["shift_drop"] == pytest.approx(out["shift_id_acc"] - out["shift_acc"])
  assert out["shift_id_acc"] == out["clean_acc"]
  with pytest.raises(FileNotFoundError, match="sofa"):
    loaders.load_objectnet(root, {"sofa": 0}, size=S)

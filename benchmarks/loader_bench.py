"""JPEG-to-batch throughput of spurjax.loaders against a torchvision-style pipeline, and the
peak memory of a 10,000-image Salient-ImageNet-style evaluation.

  python -m benchmarks.loader_bench [--n=1000] [--workers=2] [--salient_n=10000]

(from the repository root, with torch installed).

1. Throughput (run second): `--n` JPEGs of assorted ImageNet-like sizes are written in an ImageFolder
   tree; both pipelines decode them to float32 batches of 224 x 224 with the standard
   evaluation transform (shorter side 256, center-crop 224, PIL bilinear): spurjax with
   `load_image_folder(...).images[a:b]` (threads, prefetch, cache disabled so every image is
   decoded) and a plain-PyTorch ImageFolder + DataLoader(num_workers) written with PIL (no
   torchvision). Both read the same files in the same run; reported as images/s and ratio.
2. Memory (run first, so the peak RSS is that of the evaluation): a Salient-ImageNet tree (`wordnet_dict.py`, `image_names_map.csv`, one core
   feature mask per image, crowd answers) of `--salient_n` small images is evaluated by
   `reliance.evaluate` (5 noise trials) with a `cache_bytes` budget; peak RSS growth is
   compared with the size of the decoded set.
Needs torch (the `bench` extra). Numbers depend on the machine's load: quote them with it.
"""

import csv
import os
import resource
import shutil
import tempfile
import time

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from spurjax import loaders
from spurjax import reliance

_N = flags.DEFINE_integer("n", 1000, "JPEGs for the throughput comparison.")
_WORKERS = flags.DEFINE_integer("workers", 2, "Decoding threads / DataLoader workers.")
_BATCH = flags.DEFINE_integer("batch_size", 64, "Batch size.")
_SALIENT_N = flags.DEFINE_integer("salient_n", 10000, "Images of the Salient-style set.")
_SALIENT_SIZE = flags.DEFINE_integer("salient_size", 64, "Output side of the Salient run.")
_CACHE = flags.DEFINE_integer("cache_mb", 32, "cache_bytes budget of the Salient run (MiB).")


def _rss_mib() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _smooth_image(rng, h, w):
  """A smooth random RGB image (a JPEG of noise would be unrealistically slow to decode)."""
  small = rng.uniform(0, 255, (max(h // 16, 2), max(w // 16, 2), 3)).astype(np.uint8)
  return Image.fromarray(small).resize((w, h), Image.BILINEAR)


def write_folder(root, n, rng):
  for i in range(n):
    h, w = (int(v) for v in rng.integers(300, 500, 2))
    path = os.path.join(root, f"c{i % 10}", f"{i:06d}.JPEG")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    _smooth_image(rng, h, w).save(path, quality=90)


def time_spurjax(root, workers, batch):
  e = loaders.load_image_folder(root, size=224, cache_bytes=0, num_workers=workers)
  t0 = time.perf_counter()
  for a in range(0, len(e), batch):
    x = e.images[a:a + batch]
  return len(e) / (time.perf_counter() - t0), x.shape


def time_torch(root, workers, batch):
  import torch

  class Folder(torch.utils.data.Dataset):
    """torchvision.datasets.ImageFolder + Resize(256), CenterCrop(224), ToTensor()."""

    def __init__(self, root):
      classes = sorted(os.listdir(root))
      self.items = [(os.path.join(root, c, f), k) for k, c in enumerate(classes)
                    for f in sorted(os.listdir(os.path.join(root, c)))]

    def __len__(self):
      return len(self.items)

    def __getitem__(self, i):
      path, label = self.items[i]
      with open(path, "rb") as f:
        im = Image.open(f).convert("RGB")
      w, h = im.size
      ow, oh = (256, int(256 * h / w)) if w <= h else (int(256 * w / h), 256)
      im = im.resize((ow, oh), Image.BILINEAR)
      top, left = int(round((oh - 224) / 2.0)), int(round((ow - 224) / 2.0))
      im = im.crop((left, top, left + 224, top + 224))
      x = torch.from_numpy(np.asarray(im, np.uint8).copy()).permute(2, 0, 1).float() / 255
      return x, label

  loader = torch.utils.data.DataLoader(Folder(root), batch_size=batch, shuffle=False,
                                       num_workers=workers)
  t0 = time.perf_counter()
  n = 0
  for x, _ in loader:
    n += x.shape[0]
  return n / (time.perf_counter() - t0), tuple(x.shape)


def write_salient(base, n, rng, classes=10, mask_size=56):
  mask_root, train = os.path.join(base, "masks"), os.path.join(base, "imagenet", "train")
  wnids = loaders.imagenet_wnids()[:classes]
  with open(os.path.join(_mk(mask_root), "wordnet_dict.py"), "w") as f:
    f.write("wordnet_dict = {" + ", ".join(f"{c}: '{w}'" for c, w in enumerate(wnids)) + "}\n")
  answers = []
  yy, xx = np.mgrid[:mask_size, :mask_size] / mask_size
  for c, w in enumerate(wnids):
    names = [f"{w}_{i}" for i in range(c, n, classes)]
    for name in names:
      h, wd = (int(v) for v in rng.integers(60, 100, 2))
      _smooth_image(rng, h, wd).save(os.path.join(_mk(train, w), name + ".JPEG"), quality=90)
      cy, cx = rng.uniform(0.3, 0.7, 2)
      m = (((yy - cy) ** 2 + (xx - cx) ** 2) < 0.05).astype(np.uint8) * 255
      Image.fromarray(m).save(os.path.join(_mk(mask_root, w, "feature_0"), name + ".JPEG"))
    with open(os.path.join(mask_root, w, "image_names_map.csv"), "w") as f:
      f.write("0\n" + "".join(nm + "\n" for nm in names))
    answers += [{"Input.class_index": c, "Input.feature_index": 0,
                 "Answer.main": "main_object"}] * 5
  ann = os.path.join(mask_root, "discover_spurious_features.csv")
  with open(ann, "w", newline="") as f:
    wr = csv.DictWriter(f, fieldnames=list(answers[0]))
    wr.writeheader()
    wr.writerows(answers)
  return mask_root, os.path.join(base, "imagenet"), ann, mask_size


def _mk(*parts):
  p = os.path.join(*parts)
  os.makedirs(p, exist_ok=True)
  return p


def main(argv):
  del argv
  rng = np.random.default_rng(0)
  tmp = tempfile.mkdtemp(prefix="loader_bench_")
  try:
    base = os.path.join(tmp, "salient")
    t0 = time.perf_counter()
    mask_root, imagenet_root, ann, mask_size = write_salient(base, _SALIENT_N.value, rng)
    print(f"wrote a {_SALIENT_N.value}-image Salient-style tree in "
          f"{time.perf_counter() - t0:.1f} s")
    s = _SALIENT_SIZE.value
    apply_fn = lambda x: jnp.stack([x[..., c].mean((1, 2)) for c in range(3)] * 4, -1)[:, :10]
    # Warm-up on 300 images: JAX's backend and the compiled model (same batch shape) are
    # in memory before the baseline RSS is read.
    warm = loaders.load_salient_imagenet(mask_root, imagenet_root, annotations=ann, size=s,
                                         mask_size=mask_size, num_classes=10, max_per_class=30)
    reliance.evaluate(jax.random.key(0), apply_fn, warm, batch_size=250, salient_trials=5)
    del warm
    rss0 = _rss_mib()
    t0 = time.perf_counter()
    e = loaders.load_salient_imagenet(mask_root, imagenet_root, annotations=ann, size=s,
                                      mask_size=mask_size, num_classes=10,
                                      cache_bytes=_CACHE.value << 20,
                                      num_workers=_WORKERS.value)
    t_list = time.perf_counter() - t0
    out = reliance.evaluate(jax.random.key(0), apply_fn, e, batch_size=250, salient_trials=5)
    t_eval = time.perf_counter() - t0 - t_list
    full = len(e) * s * s * 4 * 4 / 2**20
    print(f"Salient-style evaluation: {len(e)} images at {s} px, 5 trials: listing and "
          f"header checks {t_list:.1f} s, evaluation {t_eval:.1f} s "
          f"(core_acc {out['core_acc']:.3f})")
    print(f"peak RSS {_rss_mib():.0f} MiB (growth {_rss_mib() - rss0:.0f} MiB over the "
          f"{rss0:.0f} MiB before loading); cache budget {_CACHE.value} MiB, used "
          f"{e.images.cache.used / 2**20:.1f} MiB; the decoded set (images + masks, float32) "
          f"would be {full:.0f} MiB")
    root = os.path.join(tmp, "folder")
    t0 = time.perf_counter()
    write_folder(root, _N.value, rng)
    print(f"wrote {_N.value} JPEGs (300-500 px) in {time.perf_counter() - t0:.1f} s")
    # Warm the page cache, then alternate the two pipelines; best of two runs each.
    time_spurjax(root, _WORKERS.value, _BATCH.value)
    ours, shape = time_spurjax(root, _WORKERS.value, _BATCH.value)
    theirs, tshape = time_torch(root, _WORKERS.value, _BATCH.value)
    ours = max(ours, time_spurjax(root, _WORKERS.value, _BATCH.value)[0])
    theirs = max(theirs, time_torch(root, _WORKERS.value, _BATCH.value)[0])
    print(f"JPEG -> float32 batch {shape} (spurjax, {_WORKERS.value} threads): "
          f"{ours:.0f} images/s")
    print(f"JPEG -> float32 batch {tshape} (torch DataLoader, num_workers={_WORKERS.value}): "
          f"{theirs:.0f} images/s")
    print(f"ratio spurjax / torch: {ours / theirs:.2f}x")

  finally:
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
  app.run(main)

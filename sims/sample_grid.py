"""Draws the sample-image grids of docs/benchmarks.md.

  python -m sims.sample_grid [--workdir=docs/img] [--image_size=32] [--seed=0]

Writes `data_domains.png` (rows: the procedural domains, with the marker cue; columns:
samples) and `in9_variants.png` (rows: the eight ImageNet-9 variants of the same images).
"""

from __future__ import annotations

import os
from typing import Any, Mapping

from absl import app
from absl import flags
import jax
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
import numpy as np

from spurjax import data
from spurjax import evalset
from spurjax import io

FLAGS = flags.FLAGS


def define_flags() -> None:
  """Defines the absl flags (when run, not on import: tests import several sims at once)."""
  flags.DEFINE_string("workdir", "docs/img", "Output folder.")
  flags.DEFINE_integer("image_size", 32, "Image side (multiple of 8).")
  flags.DEFINE_integer("columns", 8, "Samples per row.")
  flags.DEFINE_integer("seed", 0, "PRNG seed.")


def _grid(rows: Mapping[str, np.ndarray], path: str, subtitle: Any = None) -> None:
  names = list(rows)
  cols = next(iter(rows.values())).shape[0]
  fig, axes = plt.subplots(len(names), cols, figsize=(0.9 * cols + 1.4, 0.9 * len(names)),
                           squeeze=False)
  for r, name in enumerate(names):
    for c in range(cols):
      ax = axes[r, c]
      ax.imshow(rows[name][c], interpolation="nearest")
      ax.set_xticks([])
      ax.set_yticks([])
      if subtitle is not None and r == 0:
        ax.set_title(str(subtitle[c]), fontsize=7)
    axes[r, 0].set_ylabel(name, rotation=0, ha="right", va="center", fontsize=8)
  fig.subplots_adjust(wspace=0.05, hspace=0.05)
  io.save_figure(fig, path, dpi=80)
  plt.close(fig)


def run(config: Mapping[str, Any], workdir: str) -> list[str]:
  """Renders both grids into `workdir`; returns their paths."""
  cfg = data.DataConfig(image_size=config["image_size"], num_classes=10, marker=True)
  key = jax.random.key(config["seed"])
  cols = config["columns"]
  rows = {}
  for i, domain in enumerate(data.DOMAINS):
    b = data.sample_batch(jax.random.fold_in(key, i), cfg, cols, domain)
    rows[domain] = np.asarray(b.images)
  b = data.sample_batch(jax.random.fold_in(key, 99), cfg, cols, "train")
  rows["masks"] = np.repeat(np.asarray(b.masks)[..., None], 3, -1)
  rows["soft masks"] = np.repeat(np.asarray(b.soft_masks)[..., None], 3, -1)
  paths = [os.path.join(workdir, "data_domains.png"), os.path.join(workdir, "in9_variants.png")]
  _grid(rows, paths[0])
  e = data.make_eval_set(jax.random.fold_in(key, 100), cfg, 200, n_groups=0, n_shifted=0)
  pick = np.concatenate([np.flatnonzero(e.labels == k)[:1] for k in range(cols)])
  _grid({v: np.asarray(e.variants[v].images)[pick] for v in evalset.IN9_VARIANTS}, paths[1],
        subtitle=[f"{data.SHAPES[y]}" for y in e.labels[pick]])
  return paths


def main(argv):
  del argv
  cfg = {"image_size": FLAGS.image_size, "columns": FLAGS.columns, "seed": FLAGS.seed}
  for p in run(cfg, FLAGS.workdir):
    print(p, os.path.getsize(p), "bytes")


if __name__ == "__main__":
  define_flags()
  app.run(main)

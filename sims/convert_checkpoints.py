r"""Converts a folder of PyTorch ImageNet ResNet checkpoints to spurjax's native format.

  python -m sims.convert_checkpoints --src=DIR --dst=DIR [--arch=resnet50] [--overwrite]

Every `.pt/.pth/.ckpt/.pth.tar/.tar/.safetensors` file in --src (robustness-library,
robust-models-transfer, RobustBench or plain torchvision layouts; torch zip or legacy
format) is read without torch and without running its pickle, and written as
`<name>.safetensors` into --dst (`spurjax.pretrained.save`, atomic). Files already
converted are skipped, so an interrupted run is resumed by running it again. Progress is
logged per file; --dst/conversions.csv lists every file (status, arch, seconds, error) and
--dst/manifest.json the run. Exit status 1 if any file failed.
"""

from __future__ import annotations

import os
import time

from absl import app
from absl import flags
from absl import logging

from sims import _common
from spurjax import io
from spurjax import pretrained

FLAGS = flags.FLAGS


def define_flags() -> None:
  """Defines the absl flags (when run, not on import: tests import several sims at once)."""
  flags.DEFINE_string("src", None, "Folder of torch checkpoints.", required=True)
  flags.DEFINE_string("dst", None, "Output folder for the converted .safetensors files.",
                      required=True)
  flags.DEFINE_string("arch", None, "Expected architecture of every file (default: infer).")
  flags.DEFINE_bool("overwrite", False, "Convert files whose output already exists.")


def run(src: str, dst: str, *, arch: str | None = None, overwrite: bool = False) -> list[dict]:
  """Converts `src` into `dst`, writes conversions.csv and manifest.json; returns the rows."""
  t0 = time.perf_counter()

  def progress(i, n, row):
    logging.info("[%d/%d] %s: %s%s (%.1f s)", i, n, row["source"], row["status"],
                 f" {row['arch']}" if row["arch"] else f" {row['error']}" if row["error"]
                 else "", row["seconds"])

  rows = pretrained.convert_folder(src, dst, arch=arch, overwrite=overwrite,
                                   progress=progress)
  os.makedirs(dst, exist_ok=True)
  io.write_csv(os.path.join(dst, "conversions.csv"), rows,
               fieldnames=["source", "output", "status", "arch", "num_classes", "seconds",
                           "source_mb", "error"])
  _common.write_manifest(dst, config={"src": src, "dst": dst, "arch": arch,
                                      "overwrite": overwrite}, seed=None,
                         wall_time_s=time.perf_counter() - t0,
                         outputs=["conversions.csv"] + [r["output"] for r in rows
                                                        if r["status"] != "error"])
  counts = {s: sum(r["status"] == s for r in rows) for s in ("converted", "skipped", "error")}
  logging.info("done: %s", counts)
  return rows


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if FLAGS.arch is not None and FLAGS.arch not in pretrained.imagenet_models.ARCH_SPECS:
    raise app.UsageError(f"--arch: expected one of "
                         f"{sorted(pretrained.imagenet_models.ARCH_SPECS)}, got {FLAGS.arch!r}")
  if not os.path.isdir(FLAGS.src):
    raise app.UsageError(f"--src: {FLAGS.src} is not a directory")
  rows = run(FLAGS.src, FLAGS.dst, arch=FLAGS.arch, overwrite=FLAGS.overwrite)
  if any(r["status"] == "error" for r in rows):
    raise SystemExit(1)


if __name__ == "__main__":
  define_flags()
  app.run(main)

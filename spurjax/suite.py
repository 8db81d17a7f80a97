"""Model suites: many small CNNs trained on the procedural data, with skip and resume.

A suite workdir holds `suite.json` (the data and training settings every model shares) and
`models/<name>/`, one `spurjax.train` workdir per model (`config.json`, `metrics.jsonl`,
`checkpoints/<step>/`). A model is complete when its `config.json` exists and its checkpoint
of the final step is finalized (orbax renames a finished save to the bare step number).
Completed models are never touched again; an unfinished one resumes from its latest
checkpoint (`spurjax.train.train`), so an interrupted suite ends with the same parameters as
an uninterrupted one. Batch t of a model with seed s is
`data.sample_batch(fold_in(fold_in(key(s), 1), t), data_config, batch_size, "train")`.
Entry points: `sims.model_suite` (train), `sims.background_reliance` (evaluate); see
`docs/results.md`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Any, Mapping, Sequence

from absl import logging

from spurjax import io
from spurjax import norms as norms_lib

__all__ = [
    "DATA_FIELDS", "TRAIN_FIELDS", "ModelSpec", "SuiteMismatchError", "grid_specs",
    "check_grid", "data_settings", "data_config", "train_config", "make_batch_fn",
    "model_dir", "is_complete", "check_suite_file", "read_suite_file", "train_models",
    "list_models", "apply_fn_of", "eval_key", "quiet_orbax"]

NORMS = norms_lib.NORMS
DATA_FIELDS = ("image_size", "num_classes", "p", "bg_contrast", "fg_scale", "marker",
               "marker_p")
TRAIN_FIELDS = ("width", "steps", "batch_size", "optimizer", "lr", "adv_steps",
                "checkpoint_every")


class SuiteMismatchError(ValueError):
  """A workdir's `suite.json` holds other shared settings than the suite being trained."""


@dataclasses.dataclass(frozen=True)
class ModelSpec:
  """One model of a suite: architecture, training norm ("none" = standard), radius, seed.

  `data` overrides fields of the suite's data settings (e.g. `{"p": 0.1}` for the claim (iv)
  models, `{"bg_contrast": 0.6}` for the scale sweep); `tag` names such a variant.
  """
  arch: str
  norm: str
  eps: float
  seed: int
  tag: str = ""
  data: tuple[tuple[str, Any], ...] = ()

  @property
  def name(self) -> str:
    """Directory name, e.g. `small_cnn_linf_eps0.01569_seed0` (eps to 4 significant digits)."""
    base = f"{self.arch}_{self.norm}_eps{self.eps:.4g}_seed{self.seed}"
    return f"{self.tag}_{base}" if self.tag else base


def grid_specs(archs: Sequence[str], seeds: Sequence[int], norms: Sequence[str],
               radii: Mapping[str, Sequence[float]], *, standard: bool = True) -> list[ModelSpec]:
  """The models of a full grid in training order: per arch and seed, the standard model
  (norm "none", eps 0) when `standard`, then each norm's radii in pixel units
  (`radii[norm]`, l_inf included: convert quoted /255 values with `norms.pixel_radius`)."""
  out = []
  for arch in archs:
    for seed in seeds:
      if standard:
        out.append(ModelSpec(arch, "none", 0.0, int(seed)))
      for norm in norms:
        for eps in radii[norm]:
          out.append(ModelSpec(arch, norm, float(eps), int(seed)))
  return out


def check_grid(*, archs: Sequence[str], seeds: Sequence[Any], norms: Sequence[str],
               radii: Mapping[str, Sequence[Any]], standard: bool, image_size: int,
               num_classes: int, lr: float) -> None:
  """Checks the settings of a suite grid.

  Raises:
    ValueError starting with the field name: `archs` empty or unknown, `norms` unknown,
      `eps_<norm>` not numbers > 0, `seeds` empty or not ints >= 0, `image_size` not a
      multiple of 8, `num_classes` above the number of shapes, `lr` <= 0, or no model at
      all (`norms` empty and not `standard`).
  """
  from spurjax import data as data_lib
  from spurjax import models
  if not archs:
    raise ValueError("archs: empty")
  for a in archs:
    if a not in models.ARCHS:
      raise ValueError(f"archs: unknown architecture {a!r}; known: {sorted(models.ARCHS)}")
  for n in norms:
    norms_lib.check_norm(n, "norms")
  for n, values in radii.items():
    try:
      vals = [float(v) for v in values]
    except (TypeError, ValueError):
      raise ValueError(f"eps_{n}: not a list of numbers: {values}") from None
    if not all(v > 0 for v in vals):
      raise ValueError(f"eps_{n}: radii must be > 0, got {vals}")
  try:
    ints = [int(s) for s in seeds]
  except (TypeError, ValueError):
    raise ValueError(f"seeds: not a list of ints: {seeds}") from None
  if not ints or any(s < 0 for s in ints):
    raise ValueError(f"seeds: need at least one seed >= 0, got {ints}")
  if image_size % 8:
    raise ValueError(f"image_size: must be a multiple of 8, got {image_size}")
  if num_classes > len(data_lib.SHAPES):
    raise ValueError(f"num_classes: at most {len(data_lib.SHAPES)} shapes, got {num_classes}")
  if not lr > 0:
    raise ValueError(f"lr: must be > 0, got {lr}")
  if not norms and not standard:
    raise ValueError("norms: empty and standard is off: no models to train")


def data_settings(config: Mapping[str, Any], spec: ModelSpec | None = None) -> dict[str, Any]:
  """The data fields of `config`, with the spec's overrides applied."""
  out = {k: config[k] for k in DATA_FIELDS}
  if spec is not None:
    out.update(dict(spec.data))
  return out


def data_config(settings: Mapping[str, Any]):
  """`spurjax.data.DataConfig` from a dict holding `DATA_FIELDS` (and optionally the
  overrides tint_amp, marker_side, marker_corner; data defaults otherwise)."""
  from spurjax import data
  return data.DataConfig(image_size=int(settings["image_size"]),
                         num_classes=int(settings["num_classes"]),
                         marker=bool(settings["marker"]), p=float(settings["p"]),
                         bg_contrast=float(settings["bg_contrast"]),
                         fg_scale=float(settings["fg_scale"]),
                         marker_p=float(settings["marker_p"]),
                         tint_amp=float(settings.get("tint_amp", 0.15)),
                         marker_side=int(settings.get("marker_side", 0)),
                         marker_corner=int(settings.get("marker_corner", -1)))


def train_config(config: Mapping[str, Any], spec: ModelSpec):
  """The `spurjax.train.TrainConfig` of one model of the suite.

  The PGD steps inside training follow the engine's default schedule (first step to the better
  vertex, then `2.5 eps / adv_steps`); the log and checkpoint intervals never exceed the run
  length.
  """
  from spurjax import train
  s = int(config["image_size"])
  steps = int(config["steps"])
  return train.TrainConfig(
      arch=spec.arch, num_classes=int(config["num_classes"]),
      width=int(config["width"]) or None,  # 0: the architecture's default
      image_shape=(s, s, 3), steps=steps, batch_size=int(config["batch_size"]),
      optimizer=config["optimizer"], lr=float(config["lr"]),
      adv_norm=None if spec.norm == "none" else spec.norm, adv_eps=float(spec.eps),
      adv_steps=int(config["adv_steps"]),
      checkpoint_every=min(int(config["checkpoint_every"]), steps),
      log_every=min(10, steps), seed=int(spec.seed))


def make_batch_fn(settings: Mapping[str, Any], batch_size: int):
  """A pure `batch_fn(key, step) -> (images (B, S, S, 3), labels (B,))` of the "train" domain."""
  from spurjax import data
  dcfg = data_config(settings)

  def batch_fn(key, step):
    del step  # the key already depends on the step (train folds it in)
    b = data.sample_batch(key, dcfg, batch_size, "train")
    return b.images, b.labels

  return batch_fn


def model_dir(workdir: str, spec: ModelSpec) -> str:
  """The training workdir of `spec`: `<workdir>/models/<spec.name>`."""
  return os.path.join(workdir, "models", spec.name)


def is_complete(path: str, steps: int) -> bool:
  """Whether the training workdir `path` has its config and a finalized step-`steps` checkpoint."""
  return (os.path.exists(os.path.join(path, "config.json"))
          and os.path.isdir(os.path.join(path, "checkpoints", str(int(steps)))))


def check_suite_file(workdir: str, config: Mapping[str, Any]) -> None:
  """Writes `workdir/suite.json` (the shared data and training settings) or checks it.

  Raises:
    SuiteMismatchError (a ValueError): the workdir holds a suite with other shared settings
      (its models would not be comparable); use a new workdir.
  """
  path = os.path.join(workdir, "suite.json")
  shared = {k: config[k] for k in DATA_FIELDS + TRAIN_FIELDS}
  shared = json.loads(json.dumps(shared))
  if os.path.exists(path):
    with open(path) as f:
      old = json.load(f)
    diff = sorted(k for k in shared if old.get(k) != shared[k])
    if diff:
      raise SuiteMismatchError(
          f"workdir: {workdir} holds a suite with other settings for {diff} (old "
          f"{[old.get(k) for k in diff]}, new {[shared[k] for k in diff]}); use a new workdir")
  else:
    io.write_json(path, shared)


def read_suite_file(workdir: str) -> dict[str, Any]:
  """The shared settings of the suite in `workdir` (`suite.json`)."""
  path = os.path.join(workdir, "suite.json")
  if not os.path.exists(path):
    raise FileNotFoundError(f"workdir: no suite.json in {workdir}; run the suite first")
  with open(path) as f:
    return json.load(f)


def _keep_record(record) -> bool:
  import logging as std_logging
  return record.levelno >= std_logging.WARNING or "orbax" not in record.pathname


def quiet_orbax() -> None:
  """Drops orbax's INFO lines (several per checkpoint) from the absl log; warnings stay."""
  handler = logging.get_absl_handler()
  if _keep_record not in handler.filters:
    handler.addFilter(_keep_record)


def train_models(config: Mapping[str, Any], workdir: str, specs: Sequence[ModelSpec], *,
                 max_models: int | None = None,
                 kill_after_steps: int | None = None) -> list[dict[str, Any]]:
  """Trains every model of `specs` that is not complete, in order, logging progress.

  Args:
    config: shared settings (`DATA_FIELDS`, `TRAIN_FIELDS`).
    workdir: suite directory; model i trains in `model_dir(workdir, specs[i])`.
    specs: the models.
    max_models: train at most this many (not yet complete) models in this call, then stop:
      the rest are left for a rerun.
    kill_after_steps: testing aid: after the `max_models` models, train the next one up to
      this step and stop without a final checkpoint, as a killed process would.

  Returns:
    One status dict per spec: model (name), status ("skipped" = was complete, "trained",
    "pending", "interrupted"), seconds of training in this call, and for trained models the
    final logged training loss and accuracy.
  """
  from spurjax import train
  quiet_orbax()
  check_suite_file(workdir, config)
  status = []
  todo = [s for s in specs if not is_complete(model_dir(workdir, s), config["steps"])]
  logging.info("suite: %d models, %d complete, %d to train", len(specs),
               len(specs) - len(todo), len(todo))
  trained = 0
  t_suite = time.perf_counter()
  for i, spec in enumerate(specs):
    path = model_dir(workdir, spec)
    row = {"model": spec.name, "status": "skipped", "seconds": 0.0}
    if is_complete(path, config["steps"]):
      status.append(row)
      continue
    stop = None
    if max_models is not None and trained >= max_models:
      if kill_after_steps is None:
        row["status"] = "pending"
        status.append(row)
        continue
      stop = kill_after_steps
    tcfg = train_config(config, spec)
    logging.info("model %d/%d %s: %s training (%s, eps=%.4g, seed %d, %d steps)%s", i + 1,
                 len(specs), spec.name, "resuming" if os.path.exists(path) else "starting",
                 spec.norm, spec.eps, spec.seed, tcfg.steps,
                 f", stopping at step {stop}" if stop else "")
    t = time.perf_counter()
    result = train.train(tcfg, path, make_batch_fn(data_settings(config, spec),
                                                   tcfg.batch_size), stop_after=stop)
    dt = time.perf_counter() - t
    last = result.history[-1] if result.history else {}
    row.update(status="interrupted" if stop else "trained", seconds=round(dt, 2),
               final_loss=last.get("loss"), final_train_acc=last.get("accuracy"))
    status.append(row)
    if stop:
      logging.info("model %s: stopped at step %d (simulated kill)", spec.name, result.step)
      break
    trained += 1
    logging.info("model %d/%d %s: done in %.1fs, final train loss %.3f, acc %.3f", i + 1,
                 len(specs), spec.name, dt, last.get("loss", float("nan")),
                 last.get("accuracy", float("nan")))
    done = sum(1 for s in specs if is_complete(model_dir(workdir, s), config["steps"]))
    elapsed = time.perf_counter() - t_suite
    logging.info("suite: %d/%d models complete (%.0f%%), %.0fs this run, ~%.0fs left",
                 done, len(specs), 100.0 * done / len(specs), elapsed,
                 elapsed / trained * (len(todo) - trained))
  for spec in specs[len(status):]:
    status.append({"model": spec.name, "status": "pending", "seconds": 0.0})
  return status


def list_models(workdir: str) -> list[tuple[str, Any]]:
  """`(name, TrainConfig)` of every complete model under `workdir/models`, sorted by name."""
  from spurjax import train
  root = os.path.join(workdir, "models")
  out = []
  if not os.path.isdir(root):
    return out
  for name in sorted(os.listdir(root)):
    path = os.path.join(root, name)
    if not os.path.exists(os.path.join(path, "config.json")):
      continue
    cfg = train.load_config(path)
    if is_complete(path, cfg.steps):
      out.append((name, cfg))
    else:
      logging.warning("model %s is not complete; skipped (rerun the suite to finish it)", name)
  return out


def apply_fn_of(model):
  """A pure `apply_fn(images (B, H, W, 3)) -> logits (B, K)` of the model in eval mode."""
  from flax import nnx
  from spurjax import models
  graphdef, state = nnx.split(models.eval_view(model))
  return lambda x: nnx.merge(graphdef, state)(x)


def eval_key(seed: int, what: str):
  """A fixed evaluation key per purpose, independent of the model (same data for all)."""
  import jax
  import zlib
  return jax.random.fold_in(jax.random.key(seed), zlib.crc32(what.encode()) & 0x7FFFFFFF)

"""Shared pieces of the image sims: model specs, training with skip/resume, evaluation.

A suite workdir holds `suite.json` (the data and training settings every model shares) and
`models/<name>/`, one `spurjax.train` workdir per model (`config.json`, `metrics.jsonl`,
`checkpoints/<step>/`). A model is complete when its `config.json` exists and its checkpoint
of the final step is finalized (orbax renames a finished save to the bare step number).
Completed models are never touched again; an unfinished one resumes from its latest
checkpoint (`spurjax.train.train`), so an interrupted suite ends with the same parameters as
an uninterrupted one.

Data: the procedural dataset of `spurjax.data`; batch t of a model with seed s is
`sample_batch(fold_in(fold_in(key(s), 1), t), data_config, batch_size, "train")`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Any, Mapping, Sequence

from absl import flags
from absl import logging

from spurjax import io

NORMS = ("l1", "l2", "linf")
DATA_FIELDS = ("image_size", "num_classes", "p", "bg_contrast", "fg_scale", "marker",
               "marker_p")
TRAIN_FIELDS = ("width", "steps", "batch_size", "optimizer", "lr", "adv_steps",
                "checkpoint_every")


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
    ValueError: the workdir holds a suite with other shared settings (its models would not be
      comparable); use a new workdir.
  """
  path = os.path.join(workdir, "suite.json")
  shared = {k: config[k] for k in DATA_FIELDS + TRAIN_FIELDS}
  shared = json.loads(json.dumps(shared))
  if os.path.exists(path):
    with open(path) as f:
      old = json.load(f)
    diff = sorted(k for k in shared if old.get(k) != shared[k])
    if diff:
      raise ValueError(f"--workdir: {workdir} holds a suite with other settings for "
                       f"{diff} (old {[old.get(k) for k in diff]}, new "
                       f"{[shared[k] for k in diff]}); use a new --workdir")
  else:
    io.write_json(path, shared)


def read_suite_file(workdir: str) -> dict[str, Any]:
  """The shared settings of the suite in `workdir` (`suite.json`)."""
  path = os.path.join(workdir, "suite.json")
  if not os.path.exists(path):
    raise FileNotFoundError(f"--workdir: no suite.json in {workdir}; run the suite first")
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


# ------------------------------------------------- the small single-question experiments


def define_experiment_flags() -> None:
  """Flags shared by `sims.preserved_correlation` and `sims.scale_law`.

  Radii (--eps_l1, --eps_l2, --eps_linf in units of 1/255), seeds, image size, object
  size, SmallCNN width and training settings, and the evaluation size and seed. Defaults are
  None: each sim's preset supplies them (`_common.resolve_config`).
  """
  flags.DEFINE_float("eps_l1", None, "l1 training radius.", lower_bound=0)
  flags.DEFINE_float("eps_l2", None, "l2 training radius.", lower_bound=0)
  flags.DEFINE_float("eps_linf", None, "l_inf training radius in units of 1/255.",
                     lower_bound=0)
  flags.DEFINE_list("seeds", None, "Seeds.")
  flags.DEFINE_integer("image_size", None, "Image side (multiple of 8).", lower_bound=8)
  flags.DEFINE_float("fg_scale", None, "Object size.", lower_bound=0.25, upper_bound=2)
  flags.DEFINE_integer("width", None, "SmallCNN width.", lower_bound=1)
  flags.DEFINE_integer("steps", None, "Training steps.", lower_bound=1)
  flags.DEFINE_integer("batch_size", None, "Batch size.", lower_bound=1)
  flags.DEFINE_float("lr", None, "Peak SGD learning rate.", lower_bound=0)
  flags.DEFINE_integer("adv_steps", None, "PGD steps in training.", lower_bound=1)
  flags.DEFINE_integer("n_eval", None, "Test images (per domain).", lower_bound=8)
  flags.DEFINE_integer("eval_seed", None, "Seed of the test data (and of PGD).",
                       lower_bound=0)


def radius(config: Mapping[str, Any], norm: str) -> float:
  """Training radius of `norm` in pixel units: 0 for "none", the l_inf flag is in 1/255."""
  if norm == "none":
    return 0.0
  return config[f"eps_{norm}"] / (255.0 if norm == "linf" else 1.0)


def experiment_settings(config: Mapping[str, Any], *, p: float, bg_contrast: float,
                        marker: bool, marker_p: float) -> dict[str, Any]:
  """The shared settings `train_models` needs for a SmallCNN experiment (SGD, one final
  checkpoint), from the flags of `define_experiment_flags` plus the data's p, contrast and
  marker."""
  return dict(image_size=config["image_size"], num_classes=config["num_classes"], p=p,
              bg_contrast=bg_contrast, fg_scale=config["fg_scale"], marker=marker,
              marker_p=marker_p, width=config["width"], steps=config["steps"],
              batch_size=config["batch_size"], optimizer="sgd", lr=config["lr"],
              adv_steps=config["adv_steps"], checkpoint_every=config["steps"])

"""Standard and adversarial training of `spurjax.models` networks, with resume.

The loop lives here; workdir storage in `spurjax.checkpoints`, accuracy under attack in
`spurjax.evaluation` (`evaluate_accuracy` is re-exported).

Protocol (Madry et al. 2018 adversarial training when `adv_norm` is set): at step s,

  images, labels = batch_fn(fold_in(data_key, s), s)
  x_adv = pgd(fold_in(attack_key, s), CE(eval_view(model)), images, labels, ...)   # eval mode
  loss  = mean_i CE(model_train_mode(x_adv)_i, labels_i)      # BatchNorm stats from x_adv
  params <- optax update(grad loss)

all inside one jitted step with the train state donated. The step is data-parallel: the batch
is sharded over a 1-D mesh of all local devices (`NamedSharding`, axis "data"), parameters and
optimizer state are replicated, and XLA inserts the cross-device reductions (BatchNorm
statistics included), so one code path serves 1 or n devices with the same numbers up to
summation order.

A workdir holds `config.json` (written once; a rerun with a different config is refused),
`metrics.jsonl` (one JSON object per logged step), and `checkpoints/<step>/` (orbax; params,
BatchNorm statistics, optimizer state, step). Rerunning `train` on a workdir resumes from the
latest checkpoint; because batches and attack keys depend only on (seed, step), a resumed run
ends with the same parameters as an uninterrupted one. A non-finite loss raises
`FloatingPointError`.

Typical use:

  config = TrainConfig(arch="small_cnn", num_classes=10, image_shape=(32, 32, 3),
                       adv_norm="linf", adv_eps=8 / 255, steps=2000)
  result = train(config, workdir, batch_fn)      # or resumes / returns at once if finished
  model = load_model(workdir)                    # latest checkpoint, train-mode module
  acc = evaluate_accuracy(model, x, y, norm="linf", eps=8 / 255, steps=20, key=key)
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import time
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from spurjax import attacks
from spurjax import checkpoints
from spurjax import io
from spurjax import models
from spurjax import norms
from spurjax.evaluation import evaluate_accuracy  # re-exported: spurjax.train's public API

BatchFn = Callable[[jax.Array, int], tuple[Any, Any]]

__all__ = ["TrainConfig", "TrainResult", "BatchFn", "make_optimizer", "data_mesh", "train",
           "load_config", "load_model", "evaluate_accuracy"]

_SCHEDULES = ("constant", "cosine", "piecewise")
_OPTIMIZERS = ("sgd", "adam")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """Everything that determines a training run (and hence its checkpoints).

  Attributes:
    arch: "small_cnn" or "resnet18" (`spurjax.models.ARCHS`).
    num_classes: number of classes K; labels are ints in [0, K).
    width: base channel width, None for the architecture's default.
    image_shape: `(H, W, C)` of the training images.
    steps: total optimizer steps.
    batch_size: global batch size (divisible by the number of local devices).
    optimizer: "sgd" (Nesterov momentum) or "adam".
    lr: peak learning rate.
    momentum: SGD momentum.
    weight_decay: decoupled L2 coefficient added to the gradient of every parameter.
    schedule: "constant", "cosine" (to 0 at `steps`) or "piecewise" (x0.1 at 50% and 75%).
    warmup_steps: linear warm-up from 0 to `lr`.
    adv_norm: None for standard training, or "l1" / "l2" / "linf" for PGD training.
    adv_eps: training radius.
    adv_steps: PGD steps inside the training step.
    adv_step_size: constant PGD step, None for `attacks.pgd`'s default schedule.
    adv_loss: "ce" or "margin": the loss the training attack ascends.
    checkpoint_every: save every this many steps (and always at the end).
    log_every: write a metrics line every this many steps.
    seed: seeds initialisation, batches (through `batch_fn`) and attack starts.
  """

  arch: str = "small_cnn"
  num_classes: int = 10
  width: int | None = None
  image_shape: tuple[int, int, int] = (32, 32, 3)
  steps: int = 1000
  batch_size: int = 128
  optimizer: str = "sgd"
  lr: float = 0.1
  momentum: float = 0.9
  weight_decay: float = 5e-4
  schedule: str = "cosine"
  warmup_steps: int = 0
  adv_norm: str | None = None
  adv_eps: float = 0.0
  adv_steps: int = 7
  adv_step_size: float | None = None
  adv_loss: str = "ce"
  checkpoint_every: int = 500
  log_every: int = 10
  seed: int = 0

  def __post_init__(self):
    object.__setattr__(self, "image_shape", tuple(int(s) for s in self.image_shape))
    if self.arch not in models.ARCHS:
      raise ValueError(f"arch: unknown architecture {self.arch!r}; "
                       f"expected one of {sorted(models.ARCHS)}")
    if self.num_classes < 2:
      raise ValueError(f"num_classes: must be >= 2, got {self.num_classes}")
    if len(self.image_shape) != 3 or min(self.image_shape) < 1:
      raise ValueError(f"image_shape: expected (H, W, C), got {self.image_shape}")
    for name in ("steps", "batch_size", "checkpoint_every", "log_every"):
      if getattr(self, name) < 1:
        raise ValueError(f"{name}: must be >= 1, got {getattr(self, name)}")
    if self.optimizer not in _OPTIMIZERS:
      raise ValueError(f"optimizer: expected one of {_OPTIMIZERS}, got {self.optimizer!r}")
    if self.schedule not in _SCHEDULES:
      raise ValueError(f"schedule: expected one of {_SCHEDULES}, got {self.schedule!r}")
    if not (self.lr > 0 and math.isfinite(self.lr)):
      raise ValueError(f"lr: must be finite and > 0, got {self.lr}")
    norms.check_norm(self.adv_norm, "adv_norm", allow_none=True)
    if not (self.adv_eps >= 0 and math.isfinite(self.adv_eps)):
      raise ValueError(f"adv_eps: must be finite and >= 0, got {self.adv_eps}")
    if self.adv_steps < 0:
      raise ValueError(f"adv_steps: must be >= 0, got {self.adv_steps}")
    if self.adv_loss not in attacks.LOSSES:
      raise ValueError(f"adv_loss: expected one of {sorted(attacks.LOSSES)}, "
                       f"got {self.adv_loss!r}")

  def to_dict(self) -> dict[str, Any]:
    """Plain JSON-serialisable dict (what `config.json` holds)."""
    d = dataclasses.asdict(self)
    d["image_shape"] = list(self.image_shape)
    return d

  @classmethod
  def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
    """Inverse of `to_dict`."""
    return cls(**d)


class TrainResult(NamedTuple):
  """What `train` returns."""
  model: nnx.Module          # trained model (train mode; use models.eval_view to infer)
  history: list[dict]        # the metrics.jsonl records, in step order
  step: int                  # steps completed


# --------------------------------------------------------------------------------- state


def make_optimizer(config: TrainConfig
                   ) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """Returns `(tx, schedule)`: weight decay, then SGD-Nesterov or Adam on the lr schedule."""
  peak, total, warm = config.lr, config.steps, config.warmup_steps
  if config.schedule == "constant":
    main = optax.constant_schedule(peak)
  elif config.schedule == "cosine":
    main = optax.cosine_decay_schedule(peak, max(total - warm, 1))
  else:
    rest = max(total - warm, 1)
    main = optax.piecewise_constant_schedule(
        peak, {int(0.5 * rest): 0.1, int(0.75 * rest): 0.1})
  sched = (optax.join_schedules([optax.linear_schedule(0.0, peak, warm), main], [warm])
           if warm > 0 else main)
  if config.optimizer == "sgd":
    opt = optax.sgd(sched, momentum=config.momentum, nesterov=True)
  else:
    opt = optax.adam(sched)
  return optax.chain(optax.add_decayed_weights(config.weight_decay), opt), sched


def _init(config: TrainConfig):
  """Fresh model split into (graphdef, state dict) with optimizer state and step 0."""
  key = jax.random.key(config.seed)
  model = models.make_model(config.arch, config.num_classes, width=config.width,
                            in_channels=config.image_shape[2],
                            rngs=nnx.Rngs(jax.random.fold_in(key, 0)))
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  tx, _ = make_optimizer(config)
  state = {"params": params, "rest": rest, "opt_state": tx.init(params),
           "step": jnp.zeros((), jnp.int32)}
  return graphdef, state


def _keys(config: TrainConfig):
  key = jax.random.key(config.seed)
  return jax.random.fold_in(key, 1), jax.random.fold_in(key, 2)  # data, attack


def _train_step(graphdef, config: TrainConfig, state, images, labels, key):
  """One (adversarial) training step; pure, jitted by `_step_fn`."""
  tx, sched = make_optimizer(config)
  params, rest = state["params"], state["rest"]
  if config.adv_norm is not None:
    model = nnx.merge(graphdef, params, rest)
    loss_fn = attacks.make_loss_fn(models.eval_view(model), config.adv_loss)
    images = attacks.pgd(key, loss_fn, images, labels, norm=config.adv_norm,
                         eps=config.adv_eps, steps=config.adv_steps,
                         step_size=config.adv_step_size)

  def loss_of(params, rest):
    # BatchNorm writes its running averages into `rest`, which NNX allows only at the trace
    # level its Variables were created in: rebuild them here, inside the grad trace.
    rest = jax.tree.map(lambda v: v, rest)
    model = nnx.merge(graphdef, params, rest)  # train mode: batch statistics
    logits = model(images)
    loss = jnp.mean(attacks.cross_entropy(logits, labels))
    return loss, (logits, nnx.state(model, nnx.Not(nnx.Param)))

  (loss, (logits, new_rest)), grads = jax.value_and_grad(loss_of, has_aux=True)(params, rest)
  updates, opt_state = tx.update(grads, state["opt_state"], params)
  new_state = {"params": optax.apply_updates(params, updates), "rest": new_rest,
               "opt_state": opt_state, "step": state["step"] + 1}
  metrics = {"loss": loss, "accuracy": jnp.mean(jnp.argmax(logits, -1) == labels),
             "lr": sched(state["step"])}
  return new_state, metrics


def data_mesh() -> Mesh:
  """A 1-D mesh over all local devices, axis "data"."""
  return Mesh(np.array(jax.local_devices()), ("data",))


@functools.lru_cache(maxsize=16)
def _step_fn(graphdef, config: TrainConfig, mesh: Mesh):
  """The jitted, donated, data-parallel train step for one (model, config, mesh)."""
  repl = NamedSharding(mesh, P())
  data = NamedSharding(mesh, P("data"))
  return jax.jit(functools.partial(_train_step, graphdef, config),
                 in_shardings=(repl, data, data, repl), out_shardings=(repl, repl),
                 donate_argnums=(0,))


# ---------------------------------------------------------------------- workdir and resume


def load_config(workdir: str) -> TrainConfig:
  """The `TrainConfig` stored in `workdir/config.json`."""
  with open(os.path.join(workdir, "config.json")) as f:
    return TrainConfig.from_dict(json.load(f))


def load_model(workdir: str, step: int | None = None) -> nnx.Module:
  """Rebuilds the model of a training workdir from its latest (or given) checkpoint.

  Args:
    workdir: a directory written by `train`.
    step: checkpoint step; None for the latest.

  Returns:
    The `nnx.Module` (train mode; use `models.eval_view` for inference and attacks).

  Raises:
    FileNotFoundError: no config or no checkpoint in `workdir`.
  """
  config = load_config(workdir)
  graphdef, template = _init(config)
  mngr = checkpoints.manager(workdir)
  step = mngr.latest_step() if step is None else step
  if step is None:
    raise FileNotFoundError(f"workdir: no checkpoint in {workdir}")
  state = checkpoints.restore(mngr, template, step)
  mngr.close()
  return nnx.merge(graphdef, state["params"], state["rest"])


# ------------------------------------------------------------------------------- training


def _check_batch(config: TrainConfig, images, labels) -> None:
  shape = (config.batch_size, *config.image_shape)
  if tuple(np.shape(images)) != shape:
    raise ValueError(f"batch_fn: images of shape {np.shape(images)}, expected {shape}")
  if tuple(np.shape(labels)) != (config.batch_size,):
    raise ValueError(f"batch_fn: labels of shape {np.shape(labels)}, expected "
                     f"({config.batch_size},)")
  attacks.validate_inputs(images, labels, num_classes=config.num_classes)


def train(config: TrainConfig, workdir: str, batch_fn: BatchFn, *,
          stop_after: int | None = None) -> TrainResult:
  """Trains (or resumes training) a model as `config` says, checkpointing into `workdir`.

  Args:
    config: the run's `TrainConfig`.
    workdir: output directory; if it holds checkpoints of this config, training resumes from
      the latest one (and returns at once when it is complete).
    batch_fn: `(key, step) -> (images (B, H, W, C) in [0, 1], labels (B,) int)`, a pure
      function of its arguments (so that a resumed run sees the same batches).
    stop_after: stop once this many steps are done in total, without a final checkpoint,
      as if the process had been killed (for testing resume).

  Returns:
    `TrainResult(model, history, step)`.

  Raises:
    FloatingPointError: the training loss became NaN or infinite (the step is named).
    ValueError: bad config, a batch of the wrong shape/range, or a workdir of another config.
  """
  os.makedirs(workdir, exist_ok=True)
  checkpoints.write_config(workdir, config)
  mesh = data_mesh()
  if config.batch_size % mesh.size:
    raise ValueError(f"batch_size: {config.batch_size} is not divisible by the "
                     f"{mesh.size} local devices")
  repl = NamedSharding(mesh, P())
  data = NamedSharding(mesh, P("data"))
  graphdef, state = _init(config)
  state = jax.device_put(state, repl)
  metrics_path = os.path.join(workdir, "metrics.jsonl")
  mngr = checkpoints.manager(workdir)
  start = mngr.latest_step() or 0
  if start:
    state = checkpoints.restore(mngr, state, start, sharding=repl)
    # Drop metric lines a killed run wrote after its last checkpoint: they are redone.
    kept = [r for r in io.read_jsonl(metrics_path) if r["step"] <= start]
    text = "".join(json.dumps(r) + "\n" for r in kept)
    current = open(metrics_path).read() if os.path.exists(metrics_path) else None
    if text != current:  # leave an intact file (and its mtime) alone, e.g. a finished run
      with io.atomic_write(metrics_path) as f:
        f.write(text)
  elif os.path.exists(metrics_path):
    os.remove(metrics_path)

  step_fn = _step_fn(graphdef, config, mesh)
  data_key, attack_key = _keys(config)
  end = config.steps if stop_after is None else min(config.steps, stop_after)
  pending = []
  t0 = time.perf_counter()
  for s in range(start, end):
    images, labels = batch_fn(jax.random.fold_in(data_key, s), s)
    if s == start:
      _check_batch(config, images, labels)
    images = jax.device_put(jnp.asarray(images, jnp.float32), data)
    labels = jax.device_put(jnp.asarray(labels, jnp.int32), data)
    state, metrics = step_fn(state, images, labels, jax.random.fold_in(attack_key, s))
    loss = float(metrics["loss"])
    if not math.isfinite(loss):
      io.append_jsonl(metrics_path, pending)  # the finite lines before the failure
      mngr.close()
      raise FloatingPointError(
          f"training loss is {loss} at step {s + 1} of {workdir}; last checkpoint at step "
          f"{mngr.latest_step()}")
    done = s + 1
    if done % config.log_every == 0 or done == config.steps:
      pending.append({"step": done, "loss": loss,
                      "accuracy": float(metrics["accuracy"]), "lr": float(metrics["lr"]),
                      "adversarial": config.adv_norm is not None,
                      "wall_s": round(time.perf_counter() - t0, 3)})
    if done % config.checkpoint_every == 0 or done == config.steps:
      io.append_jsonl(metrics_path, pending)
      pending = []
      mngr.save(done, args=ocp.args.StandardSave(jax.tree.leaves(state)))
  if pending:  # a simulated kill still leaves its lines, as a real one mostly would
    io.append_jsonl(metrics_path, pending)
  mngr.wait_until_finished()
  mngr.close()
  model = nnx.merge(graphdef, jax.device_get(state["params"]),
                    jax.device_get(state["rest"]))
  return TrainResult(model, io.read_jsonl(metrics_path), max(start, end))

"""Shared plumbing of the `sims.*` entry points: presets, flag checks, manifests.

Each sim keeps a thin absl `main` that turns flags into a config dict and calls a testable
`run(config, workdir)`; this module holds what they all share.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.metadata
import os
import platform
import sys
import threading
import time
import types
from typing import Any, Callable, Iterator, Mapping, Sequence

from absl import app
from absl import flags
from absl import logging

from spurjax import io

_PACKAGES = ("spurjax", "jax", "jaxlib", "flax", "optax", "numpy", "chex", "orbax-checkpoint")


def versions() -> dict[str, str]:
  """Installed versions of the packages a result depends on."""
  out = {"python": platform.python_version()}
  for name in _PACKAGES:
    try:
      out[name] = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
      out[name] = "not installed"
  return out


def write_manifest(workdir: str, *, config: Mapping[str, Any], seed: int | None,
                   wall_time_s: float, outputs: Sequence[str],
                   extra: Mapping[str, Any] | None = None) -> str:
  """Writes `manifest.json` (config, versions, devices, seed, wall time, outputs) atomically.

  Returns:
    The manifest's path.
  """
  import jax  # Imported late so that flags/env (XLA_FLAGS, x64) are set before jax starts.
  manifest = {
      "command": " ".join([os.path.basename(sys.executable)] + sys.argv),
      "config": dict(config),
      "seed": seed,
      "wall_time_s": round(float(wall_time_s), 3),
      "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
      "versions": versions(),
      "backend": jax.default_backend(),
      "devices": [str(d) for d in jax.devices()],
      "process_count": jax.process_count(),
      "x64": bool(jax.config.jax_enable_x64),
      "outputs": list(outputs),
  }
  if extra:
    manifest.update(extra)
  path = os.path.join(workdir, "manifest.json")
  io.write_json(path, manifest)
  return path


def check(condition: bool, message: str) -> None:
  """Raises `flags.ValidationError` (absl prints it as a usage error) unless `condition`."""
  if not condition:
    raise flags.ValidationError(message)


def register_validator(flag_name: str, predicate: Callable[[Any], bool], message: str) -> None:
  """Registers an absl validator so that a bad flag value exits with a usage message."""
  flags.register_validator(flag_name, predicate, message=f"--{flag_name}: {message}")


class Timer:
  """Wall-clock timer: `with Timer() as t: ...; t.seconds`."""

  def __enter__(self) -> "Timer":
    self.start = time.perf_counter()
    self.seconds = 0.0
    return self

  def __exit__(self, *exc: Any) -> None:
    self.seconds = time.perf_counter() - self.start


def log_progress(done: int, total: int, what: str) -> None:
  """Logs `what: done/total (pct%)` through absl logging."""
  logging.info("%s: %d/%d (%.0f%%)", what, done, total, 100.0 * done / max(total, 1))


class _TypedListParser(flags.ListParser):
  """A comma-separated list of `kind` values (int, float or str), each >= `lower_bound` or
  one of `allowed`; absl reports a bad item as a usage error naming the flag."""

  def __init__(self, kind: type, lower_bound: float | None = None,
               allowed: Sequence[str] | None = None):
    super().__init__()
    self._kind, self._lower = kind, lower_bound
    self._allowed = tuple(allowed) if allowed is not None else None

  def parse(self, argument):
    if isinstance(argument, (list, tuple)):
      items = list(argument)
    else:
      items = super().parse(argument)
    try:
      out = [self._kind(v) for v in items]
    except (TypeError, ValueError):
      raise ValueError(f"not a list of {self._kind.__name__}s: {argument!r}") from None
    if self._lower is not None and any(not v >= self._lower for v in out):
      raise ValueError(f"each value must be >= {self._lower}, got {out}")
    if self._allowed is not None and any(v not in self._allowed for v in out):
      raise ValueError(f"each value must be one of {', '.join(self._allowed)}; got {out}")
    return out

  def flag_type(self):
    if self._allowed is not None:
      return f"comma-separated list of <{'|'.join(self._allowed)}>"
    return f"comma-separated list of {self._kind.__name__}s"


def define_int_list(name: str, default, help_text: str, *, lower_bound: int | None = None):
  """An absl list flag whose items parse as ints (`--seeds=0,1,2`)."""
  flags.DEFINE(_TypedListParser(int, lower_bound), name, default, help_text,
               serializer=flags.CsvListSerializer(","))


def define_float_list(name: str, default, help_text: str, *,
                      lower_bound: float | None = None):
  """An absl list flag whose items parse as floats (`--eps_l2=0.25,0.5`)."""
  flags.DEFINE(_TypedListParser(float, lower_bound), name, default, help_text,
               serializer=flags.CsvListSerializer(","))


def define_enum_list(name: str, default, values: Sequence[str], help_text: str):
  """An absl list flag whose items are each one of `values` (`--attack_norms=l2,linf`; an
  empty value is the empty list). Unlike `DEFINE_multi_enum` it takes one comma list."""
  flags.DEFINE(_TypedListParser(str, allowed=values), name, default, help_text,
               serializer=flags.CsvListSerializer(","))


def define_common_flags(default_workdir: str, presets: Sequence[str], *,
                        x64_default: bool = True) -> None:
  """Defines --workdir, --preset, --x64 and the multi-process flags shared by the sims.

  Theory sims default to float64 (the exact solver needs it); image sims pass
  `x64_default=False`.
  """
  flags.DEFINE_string("workdir", default_workdir, "Directory for figures, data and manifest.")
  flags.DEFINE_enum("preset", "default", list(presets), "Grid/size preset.")
  flags.DEFINE_bool("x64", x64_default, "Compute in float64 (the exact theory needs it).")
  flags.DEFINE_string("coordinator_address", None,
                      "host:port of process 0 for a multi-process run (jax.distributed).")
  flags.DEFINE_integer("num_processes", None, "Number of processes (jax.distributed).",
                       lower_bound=1)
  flags.DEFINE_integer("process_id", None, "This process's index (jax.distributed).",
                       lower_bound=0)


def resolve_config(presets: Mapping[str, Mapping[str, Any]], names: Sequence[str]) -> dict:
  """The preset's values, overridden by every flag in `names` given on the command line."""
  config = dict(presets[flags.FLAGS.preset])
  for name in names:
    if flags.FLAGS[name].present or name not in config:
      config[name] = flags.FLAGS[name].value
  return config


def start_runtime() -> None:
  """Applies --x64 and starts jax.distributed if the flags or environment ask for it."""
  import jax
  from spurjax import parallel
  jax.config.update("jax_enable_x64", bool(flags.FLAGS.x64))
  parallel.maybe_initialize_distributed(flags.FLAGS.coordinator_address,
                                        flags.FLAGS.num_processes, flags.FLAGS.process_id)


def write_outputs(workdir: str, name: str, *, rows: Sequence[Mapping[str, Any]],
                  fieldnames: Sequence[str], figure: Any, config: Mapping[str, Any],
                  seed: int | None, start: float,
                  extra: Mapping[str, Any] | None = None) -> dict[str, str]:
  """Writes NAME.csv, NAME.png and manifest.json atomically (on process 0 only).

  Args:
    workdir: output directory.
    name: file stem.
    rows: CSV rows.
    fieldnames: CSV column order.
    figure: a matplotlib figure (closed after saving).
    config: the resolved config, stored in the manifest.
    seed: the run's seed (None if deterministic).
    start: `time.perf_counter()` at the start of the run.
    extra: more manifest entries.

  Returns:
    The three paths.
  """
  import matplotlib.pyplot as plt
  from spurjax import parallel
  paths = dict(csv=os.path.join(workdir, f"{name}.csv"),
               png=os.path.join(workdir, f"{name}.png"),
               manifest=os.path.join(workdir, "manifest.json"))
  if parallel.is_writer():
    io.write_csv(paths["csv"], rows, fieldnames)
    io.save_figure(figure, paths["png"])
    write_manifest(workdir, config=config, seed=seed,
                   wall_time_s=time.perf_counter() - start,
                   outputs=[os.path.basename(p) for p in paths.values()], extra=extra)
    logging.info("wrote %s", ", ".join(paths.values()))
  plt.close(figure)
  return paths


@contextlib.contextmanager
def sim_flags(module: str | types.ModuleType,
              argv: Sequence[str] = ()) -> Iterator[tuple[types.ModuleType, list[str]]]:
  """Defines a sim's flags, parses `argv` into them, and removes them on exit.

  Each sim defines its flags in `define_flags()` (called by its `__main__` block), not on
  import, because sims share flag names with different defaults (`--workdir`, `--norms`,
  ...). Inside this block the sim's flags exist with its own defaults, so several sims can
  run one after the other in one process (tests, notebooks); blocks do not nest.

  Args:
    module: the sim, e.g. `"sims.phase_diagram"`.
    argv: its command-line arguments, e.g. `["--preset=small"]`.

  Yields:
    `(module, rest)`: the imported module and the unparsed `[program, *positional]`.

  Raises:
    app.UsageError: a flag value absl rejects (what `python -m` reports as "FATAL Flags
      parsing error" with exit status 1).
  """
  mod = importlib.import_module(module) if isinstance(module, str) else module
  registry = flags.FLAGS
  before = set(registry)
  program = [mod.__file__]
  saved_argv = sys.argv
  try:
    mod.define_flags()
    try:
      rest = registry(program + list(argv))
    except flags.Error as e:
      raise app.UsageError(f"Flags parsing error: {e}") from e
    sys.argv = program + list(argv)  # as `python -m` sees it (the manifest's "command")
    yield mod, rest
  finally:
    sys.argv = saved_argv
    for name in set(registry) - before:
      delattr(registry, name)


def _global_x64() -> bool:
  """The global `jax_enable_x64` (read on a fresh thread: `jax.enable_x64(...)` blocks are
  thread-local, `start_runtime` sets the global)."""
  import jax
  out = []
  reader = threading.Thread(target=lambda: out.append(bool(jax.config.jax_enable_x64)))
  reader.start()
  reader.join()
  return out[0]


def run_main(module: str | types.ModuleType, argv: Sequence[str] = ()) -> Any:
  """Runs `python -m <module> *argv` in this process: flags as in `sim_flags`, then `main`.

  Unlike a subprocess it shares this process's JAX runtime and compilation caches. The
  global `jax_enable_x64`, which `start_runtime` sets from `--x64`, is restored afterwards.

  Returns:
    What `main` returns (None for every sim).

  Raises:
    app.UsageError: a bad flag value, or a usage error raised by `main` (both are what
      `absl.app.run` prints as a usage message with exit status 1).
  """
  import jax
  x64 = _global_x64()
  try:
    with sim_flags(module, argv) as (mod, rest):
      return mod.main(rest)
  finally:
    jax.config.update("jax_enable_x64", x64)


def use_agg() -> None:
  """Selects matplotlib's file-only backend (no display needed)."""
  import matplotlib
  matplotlib.use("Agg")


NORM_LABELS = {"l1": r"$\ell_1$", "l2": r"$\ell_2$", "linf": r"$\ell_\infty$"}
NORM_COLORS = {"l1": "tab:blue", "l2": "tab:orange", "linf": "tab:green"}


def compute_and_write(workdir: str, name: str, config: Mapping[str, Any], *,
                      compute: Callable[[Any], list], figure: Callable[[Any, list], Any],
                      fieldnames: Sequence[str], seed: int | None = None,
                      extra: Callable[[list], Mapping[str, Any]] | None = None
                      ) -> dict[str, str]:
  """The body of a sim's `run`: rows = compute(config); write CSV, figure and manifest."""
  start = time.perf_counter()
  rows = compute(config)
  return write_outputs(workdir, name, rows=rows, fieldnames=fieldnames,
                       figure=figure(config, rows), config=config, seed=seed, start=start,
                       extra=extra(rows) if extra else None)


# ------------------------------------------------- the small single-question experiments


def define_experiment_flags() -> None:
  """Flags shared by `sims.preserved_correlation` and `sims.scale_law`.

  Radii (--eps_l1, --eps_l2, --eps_linf in units of 1/255), seeds, image size, object
  size, SmallCNN width and training settings, and the evaluation size and seed. Defaults are
  None: each sim's preset supplies them (`resolve_config`).
  """
  flags.DEFINE_float("eps_l1", None, "l1 training radius.", lower_bound=0)
  flags.DEFINE_float("eps_l2", None, "l2 training radius.", lower_bound=0)
  flags.DEFINE_float("eps_linf", None, "l_inf training radius in units of 1/255.",
                     lower_bound=0)
  define_int_list("seeds", None, "Seeds (a list: one model per seed).", lower_bound=0)
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
  from spurjax import norms
  return norms.pixel_radius(norm, config[f"eps_{norm}"] if norm != "none" else 0.0)


def experiment_settings(config: Mapping[str, Any], *, p: float, bg_contrast: float,
                        marker: bool, marker_p: float) -> dict[str, Any]:
  """The shared settings `spurjax.suite.train_models` needs for a SmallCNN experiment (SGD,
  one final checkpoint), from the flags of `define_experiment_flags` plus the data's p,
  contrast and marker."""
  return dict(image_size=config["image_size"], num_classes=config["num_classes"], p=p,
              bg_contrast=bg_contrast, fg_scale=config["fg_scale"], marker=marker,
              marker_p=marker_p, width=config["width"], steps=config["steps"],
              batch_size=config["batch_size"], optimizer="sgd", lr=config["lr"],
              adv_steps=config["adv_steps"], checkpoint_every=config["steps"])

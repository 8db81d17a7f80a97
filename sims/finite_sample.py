r"""Finite-sample adversarial training against the exact population minimizer.

For each norm, sample size n, training radius eps and seed: draw n examples with
`theory.sample`, adversarially train a linear model (exact inner maximisation, Adam), and
compare with the exact population minimizer: weight error ||w_n - w*||_2, excess
population risk R(w_n) - R(w*), and the empirical spurious weight share next to the
theoretical one. Seeds and radii are vmapped and sharded over devices.

  python -m sims.finite_sample [--preset=small] [--workdir=results/finite_sample]

Outputs: finite_sample.png (log-log error vs n with an n^-1/2 reference; weight share vs n),
finite_sample.csv, manifest.json.
"""

from __future__ import annotations

import time
from typing import Any

from absl import app
from absl import flags
from absl import logging
import numpy as np

from sims import _common
from sims import _theory_flags as tf

PRESETS = {
    "default": dict(n_list=["100", "316", "1000", "3162", "10000", "31623", "100000"],
                    seeds=[0, 1, 2, 3], steps=2000),
    "small": dict(n_list=["100", "1000"], seeds=[0, 1], steps=200, norms=["l2"]),
}
CONFIG_FLAGS = ("norms", "n_list", "eps_list", "seeds", "steps", "learning_rate",
                ) + tf.MODEL_FLAGS
FIELDS = ("norm", "n", "eps", "seed", "w_err", "excess_risk", "share_emp", "share_theory",
          "w_core_emp", "w_spu_emp", "w_core_theory", "w_spu_theory")

FLAGS = flags.FLAGS


def define_flags() -> None:
  """Defines the absl flags (when run, not on import: tests import several sims at once)."""
  _common.define_common_flags("results/finite_sample", PRESETS)
  tf.define_model_flags()
  flags.DEFINE_multi_enum("norms", ["l1", "l2", "linf"], ["l1", "l2", "linf"], "Attack norms.")
  flags.DEFINE_list("n_list", None, "Sample sizes (preset if unset).")
  flags.DEFINE_list("eps_list", ["0.2", "0.6"], "Training radii.")
  _common.define_int_list("seeds", None, "Seeds, one fit per (n, eps, seed) (preset if unset).",
                          lower_bound=0)
  flags.DEFINE_integer("steps", None, "Adam steps (preset if unset).", lower_bound=1)
  flags.DEFINE_float("learning_rate", 0.05, "Initial Adam step size.", lower_bound=0.0)


def _ints(values, name):
  try:
    out = [int(float(v)) for v in values]
  except ValueError as e:
    raise app.UsageError(f"--{name}: not a list of numbers: {values}") from e
  if not out or any(v < 2 for v in out):
    raise app.UsageError(f"--{name}: need a non-empty list of sizes >= 2, got {values}")
  return out


def _floats(values, name):
  try:
    out = [float(v) for v in values]
  except ValueError as e:
    raise app.UsageError(f"--{name}: not a list of numbers: {values}") from e
  if not out or any(not np.isfinite(v) or v < 0 for v in out):
    raise app.UsageError(f"--{name}: need a non-empty list of radii >= 0, got {values}")
  return out


def compute(config: dict[str, Any]) -> list[dict[str, Any]]:
  """One row per (norm, n, eps, seed)."""
  import jax
  from spurjax import empirical, parallel
  from spurjax import theory as T
  model = tf.model_from(config)
  eps_list = np.asarray(config["eps_list"], float)
  seeds = np.asarray(config["seeds"], int)
  grid_seed = np.repeat(seeds, len(eps_list))
  grid_eps = np.tile(eps_list, len(seeds))
  rows = []
  for norm in config["norms"]:
    pop = {e: T.adversarial_minimizer(model, e, norm) for e in eps_list}
    for n in config["n_list"]:
      def fn(seed, e, n=n, norm=norm):
        x, y = T.sample(jax.random.key(seed), model, n)
        fit = empirical.fit_adversarial_linear(x, y, e, norm, steps=config["steps"],
                                               learning_rate=config["learning_rate"])
        star = T.adversarial_minimizer(model, e, norm)
        return dict(w=fit.w, w_err=jax.numpy.linalg.norm(fit.w - star.w),
                    excess_risk=T.adversarial_risk(model, fit.w, e, norm) - star.risk,
                    share_emp=T.spurious_weight_share(model, fit.w),
                    share_theory=T.spurious_weight_share(model, star.w))
      t = time.perf_counter()
      out = parallel.grid_map(fn, grid_seed, grid_eps)
      logging.info("%s n=%d: %d fits in %.2fs", norm, n, len(grid_seed), time.perf_counter() - t)
      for i in range(len(grid_seed)):
        star = pop[grid_eps[i]]
        w = out["w"][i]
        rows.append(dict(norm=norm, n=n, eps=grid_eps[i], seed=int(grid_seed[i]),
                         w_err=out["w_err"][i], excess_risk=out["excess_risk"][i],
                         share_emp=out["share_emp"][i], share_theory=out["share_theory"][i],
                         w_core_emp=float(np.mean(w[:model.d_core])),
                         w_spu_emp=float(np.mean(w[model.d_core:])) if model.d_spu else 0.0,
                         w_core_theory=float(star.w_core), w_spu_theory=float(star.w_spu)))
  return rows


def summarize(rows, norm, eps, key="w_err"):
  """(n values, mean over seeds, std over seeds) of `key` for one norm and radius."""
  ns = sorted({r["n"] for r in rows})
  vals = [[r[key] for r in rows if r["norm"] == norm and r["eps"] == eps and r["n"] == n]
          for n in ns]
  return np.array(ns), np.array([np.mean(v) for v in vals]), np.array([np.std(v) for v in vals])


def loglog_slope(ns, errs) -> float:
  """Least-squares slope of log(err) against log(n)."""
  return float(np.polyfit(np.log(ns), np.log(errs), 1)[0])


def figure(config: dict[str, Any], rows: list[dict[str, Any]]):
  """Top: weight error vs n (log-log, n^-1/2 reference). Bottom: weight share vs n."""
  _common.use_agg()
  import matplotlib.pyplot as plt
  norms = config["norms"]
  fig, axes = plt.subplots(2, len(norms), figsize=(4.4 * len(norms), 7.0), squeeze=False,
                           constrained_layout=True)
  for col, norm in enumerate(norms):
    ax, ax2 = axes[0, col], axes[1, col]
    for j, e in enumerate(config["eps_list"]):
      ns, mean, std = summarize(rows, norm, e)
      lower = np.minimum(std, 0.9 * mean)  # keep log-scale error bars above zero
      line = ax.errorbar(ns, mean, yerr=[lower, std], marker="o", capsize=3,
                         label=f"eps={e:g} (slope {loglog_slope(ns, mean):.2f})")
      ns, sh, sh_std = summarize(rows, norm, e, "share_emp")
      _, th, _ = summarize(rows, norm, e, "share_theory")
      ax2.errorbar(ns, sh, yerr=sh_std, marker="o", capsize=3, color=line[0].get_color(),
                   label=f"empirical, eps={e:g}")
      ax2.axhline(th[0], color=line[0].get_color(), ls="--", lw=1,
                  label=f"population, eps={e:g}")
    ns = np.array(sorted({r["n"] for r in rows}))
    ref = summarize(rows, norm, max(config["eps_list"]))[1][0]
    ax.plot(ns, ref * np.sqrt(ns[0] / ns), "k:", label=r"$n^{-1/2}$ reference")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("training samples n")
    ax.set_ylabel(r"$\|w_n - w^*\|_2$ (mean $\pm$ sd over seeds)")
    ax.set_title(f"{_common.NORM_LABELS[norm]} adversarial training")
    ax.legend(fontsize=7)
    ax2.set_xscale("log")
    ax2.set_ylim(-0.05, 1.05)
    ax2.set_xlabel("training samples n")
    ax2.set_ylabel("spurious weight share")
    ax2.legend(fontsize=7)
  fig.suptitle("Finite-sample adversarial training converges to the exact population "
               "minimizer", fontsize=10)
  return fig


def slopes(config: dict[str, Any], rows: list[dict[str, Any]]) -> dict[str, float]:
  """Log-log slope of the mean weight error against n, per norm and radius."""
  return {f"{norm}_eps{e:g}": loglog_slope(*summarize(rows, norm, e)[:2])
          for norm in config["norms"] for e in config["eps_list"]}


def run(config: dict[str, Any], workdir: str) -> dict[str, str]:
  """Fits, compares, writes CSV, PNG and manifest (with the fitted slopes)."""
  def extra(rows):
    fitted = slopes(config, rows)
    logging.info("log-log slopes of the weight error: %s", fitted)
    return dict(weight_error_slopes=fitted)
  return _common.compute_and_write(workdir, "finite_sample", config, compute=compute,
                                   figure=figure, fieldnames=FIELDS, seed=min(config["seeds"]),
                                   extra=extra)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  config = _common.resolve_config(PRESETS, CONFIG_FLAGS)
  config["n_list"] = sorted(set(_ints(config["n_list"], "n_list")))
  config["eps_list"] = _floats(config["eps_list"], "eps_list")
  if not config["seeds"]:
    raise app.UsageError("--seeds: need at least one seed")
  _common.start_runtime()
  run(config, FLAGS.workdir)


if __name__ == "__main__":
  define_flags()
  app.run(main)

r"""Adversarial robustness bought with natural distributional robustness (claim 3).

For each attack norm, the exact minimizer at each training radius eps is evaluated in the
training domain (standard risk, and adversarial risk at a fixed evaluation radius) and in
test domains whose spurious correlation is rho_test (default {rho, 0, -rho}): standard
risk and shift gap R(w; rho_test) - R(w; rho).

  python -m sims.shift_tradeoff [--preset=small] [--workdir=results/shift_tradeoff]

Outputs: shift_tradeoff.png, shift_tradeoff.csv, manifest.json.
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

PRESETS = {"default": dict(n_eps=301), "small": dict(n_eps=25)}
CONFIG_FLAGS = ("norms", "n_eps", "eps_max", "eps_eval", "rho_test") + tf.MODEL_FLAGS
FIELDS = ("norm", "eps", "rho_test", "w_core", "w_spu", "weight_share", "std_risk_in",
          "adv_risk_in", "adv_risk_own_eps", "std_risk_test", "shift_gap")

FLAGS = flags.FLAGS


def define_flags() -> None:
  """Defines the absl flags (when run, not on import: tests import several sims at once)."""
  _common.define_common_flags("results/shift_tradeoff", PRESETS)
  tf.define_model_flags()
  tf.define_eps_flags(eps_max=1.0)
  flags.DEFINE_float("eps_eval", None, "Evaluation radius of the in-domain adversarial risk "
                     "(default: --eps_max).", lower_bound=0.0)
  flags.DEFINE_list("rho_test", None, "Test-domain correlations (default: rho, 0, -rho).")


def _parse_rho_test(values, rho):
  if values is None:
    return [rho, 0.0, -rho]
  try:
    out = [float(v) for v in values]
  except ValueError as e:
    raise flags.ValidationError(f"--rho_test: not a list of numbers: {values}") from e
  _common.check(len(out) > 0, "--rho_test: empty list")
  _common.check(all(-1 <= v <= 1 for v in out), f"--rho_test: values must be in [-1, 1]: {out}")
  return out


def compute(config: dict[str, Any]) -> list[dict[str, Any]]:
  """One row per (norm, eps, rho_test)."""
  import jax.numpy as jnp
  from spurjax import parallel
  from spurjax import theory as T
  base = tf.model_from(config)
  eps = np.linspace(0.0, config["eps_max"], config["n_eps"])
  rho_tests = np.asarray(config["rho_test"], float)
  eps_eval = config["eps_eval"]
  rows = []
  for norm in config["norms"]:
    def fn(e, norm=norm):
      sol = T.adversarial_minimizer(base, e, norm)
      tests = [base.replace(rho=r) for r in rho_tests]
      return dict(
          w_core=sol.w_core, w_spu=sol.w_spu,
          weight_share=T.spurious_weight_share(base, sol.w),
          std_risk_in=T.standard_risk(base, sol.w),
          adv_risk_in=T.adversarial_risk(base, sol.w, eps_eval, norm),
          adv_risk_own_eps=sol.risk,
          std_risk_test=jnp.stack([T.standard_risk(m, sol.w) for m in tests]))
    t = time.perf_counter()
    out = parallel.grid_map(fn, eps)
    logging.info("%s: %d radii in %.2fs", norm, len(eps), time.perf_counter() - t)
    for i, e in enumerate(eps):
      for j, r in enumerate(rho_tests):
        rows.append(dict(norm=norm, eps=e, rho_test=r, w_core=out["w_core"][i],
                         w_spu=out["w_spu"][i], weight_share=out["weight_share"][i],
                         std_risk_in=out["std_risk_in"][i], adv_risk_in=out["adv_risk_in"][i],
                         adv_risk_own_eps=out["adv_risk_own_eps"][i],
                         std_risk_test=out["std_risk_test"][i, j],
                         shift_gap=out["std_risk_test"][i, j] - out["std_risk_in"][i]))
  return rows


def figure(config: dict[str, Any], rows: list[dict[str, Any]]):
  """Per norm: in-domain adversarial risk (falls) vs shifted standard risk (rises)."""
  _common.use_agg()
  import matplotlib.pyplot as plt
  from spurjax import theory as T
  base = tf.model_from(config)
  norms = config["norms"]
  fig, axes = plt.subplots(1, len(norms), figsize=(4.6 * len(norms), 3.9), squeeze=False,
                           constrained_layout=True)
  styles = ["-", "--", ":", "-."]
  for col, norm in enumerate(norms):
    ax = axes[0, col]
    sel = [r for r in rows if r["norm"] == norm]
    for j, r_t in enumerate(config["rho_test"]):
      pts = [r for r in sel if r["rho_test"] == r_t]
      ax.plot([r["eps"] for r in pts], [r["std_risk_test"] for r in pts], color="tab:red",
              ls=styles[j % 4], label=f"standard risk, test rho'={r_t:+.2g}")
    pts = [r for r in sel if r["rho_test"] == config["rho_test"][0]]
    ax.plot([r["eps"] for r in pts], [r["adv_risk_in"] for r in pts], color="tab:blue",
            lw=2, label=f"adversarial risk in-domain (eval eps={config['eps_eval']:.2g})")
    eps_star = float(T.robust_interpolation_radius(base, norm))
    ax.axvline(eps_star, color="gray", lw=1, ls=":")
    ax.text(eps_star, ax.get_ylim()[1] * 0.97, r" $\epsilon^*$", va="top", color="gray")
    ax.set_xlabel(r"training radius $\epsilon$")
    ax.set_ylabel("population risk")
    ax.set_title(f"{_common.NORM_LABELS[norm]} adversarial training")
    ax.set_yscale("symlog", linthresh=1e-2)
    ax.set_ylim(bottom=0.0)
    if col == 0:
      ax.legend(fontsize=7)
  fig.suptitle("Adversarial robustness in-domain vs. standard risk under a shifted spurious "
               f"correlation (rho={config['rho']}, s_spu/s_core="
               f"{config['sigma_spu'] / config['sigma_core']:.2g})", fontsize=10)
  return fig


def run(config: dict[str, Any], workdir: str) -> dict[str, str]:
  """Computes the tradeoff and writes CSV, PNG and manifest."""
  return _common.compute_and_write(workdir, "shift_tradeoff", config, compute=compute, figure=figure,
                                   fieldnames=FIELDS)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  config = _common.resolve_config(PRESETS, CONFIG_FLAGS)
  try:
    config["rho_test"] = _parse_rho_test(config["rho_test"], config["rho"])
  except flags.ValidationError as e:
    raise app.UsageError(str(e)) from e
  if config["eps_eval"] is None:
    config["eps_eval"] = config["eps_max"]
  _common.start_runtime()
  run(config, FLAGS.workdir)


if __name__ == "__main__":
  define_flags()
  app.run(main)

r"""Preserved spurious correlations lower the optimal adversarial risk (claim 4).

Over training radius eps and attack norms: the minimal adversarial risk of the model with
its spurious correlation preserved (rho, d_spu) against the same model without spurious
signal (rho = 0) and without spurious features (d_spu = 0). Where the curves separate,
spurious features help adversarial robustness (always past eps*).

  python -m sims.spurious_helps [--preset=small] [--workdir=results/spurious_helps]

Outputs: spurious_helps.png, spurious_helps.csv, manifest.json.
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
CONFIG_FLAGS = ("norms", "n_eps", "eps_max") + tf.MODEL_FLAGS
FIELDS = ("norm", "eps", "risk_spurious", "risk_rho0", "risk_no_spurious", "benefit",
          "w_core", "w_spu", "eps_star")

FLAGS = flags.FLAGS


def define_flags() -> None:
  """Defines the absl flags (when run, not on import: tests import several sims at once)."""
  _common.define_common_flags("results/spurious_helps", PRESETS)
  tf.define_model_flags()
  tf.define_eps_flags(eps_max=2.0)


def compute(config: dict[str, Any]) -> list[dict[str, Any]]:
  """One row per (norm, eps): optimal risks with and without the spurious signal."""
  from spurjax import parallel
  from spurjax import theory as T
  with_spu = tf.model_from(config)
  rho0 = with_spu.replace(rho=0.0)
  without = with_spu.replace(d_spu=0)
  eps = np.linspace(0.0, config["eps_max"], config["n_eps"])
  rows = []
  for norm in config["norms"]:
    def fn(e, norm=norm):
      sol = T.adversarial_minimizer(with_spu, e, norm)
      return dict(risk_spurious=sol.risk, w_core=sol.w_core, w_spu=sol.w_spu,
                  risk_rho0=T.adversarial_minimizer(rho0, e, norm).risk,
                  risk_no_spurious=T.adversarial_minimizer(without, e, norm).risk)
    t = time.perf_counter()
    out = parallel.grid_map(fn, eps)
    logging.info("%s: %d radii in %.2fs", norm, len(eps), time.perf_counter() - t)
    eps_star = float(T.robust_interpolation_radius(with_spu, norm))
    for i, e in enumerate(eps):
      rows.append(dict(norm=norm, eps=e, eps_star=eps_star,
                       benefit=out["risk_no_spurious"][i] - out["risk_spurious"][i],
                       **{k: v[i] for k, v in out.items()}))
  return rows


def figure(config: dict[str, Any], rows: list[dict[str, Any]]):
  """Per norm: the three optimal-risk curves and the benefit shaded."""
  _common.use_agg()
  import matplotlib.pyplot as plt
  norms = config["norms"]
  fig, axes = plt.subplots(1, len(norms), figsize=(4.4 * len(norms), 3.8), squeeze=False,
                           constrained_layout=True)
  for col, norm in enumerate(norms):
    ax = axes[0, col]
    sel = [r for r in rows if r["norm"] == norm]
    e = np.array([r["eps"] for r in sel])
    with_spu = np.array([r["risk_spurious"] for r in sel])
    no_spu = np.array([r["risk_no_spurious"] for r in sel])
    ax.plot(e, no_spu, color="k", lw=2, label="no spurious features ($d_{spu}=0$)")
    ax.plot(e, [r["risk_rho0"] for r in sel], color="gray", ls="--",
            label=r"spurious features, $\rho=0$")
    ax.plot(e, with_spu, color="tab:red", lw=2, label=rf"spurious correlation $\rho$={config['rho']}")
    ax.fill_between(e, with_spu, no_spu, color="tab:red", alpha=0.2,
                    label="benefit of spurious features")
    ax.axvline(sel[0]["eps_star"], color="tab:blue", ls=":", lw=1.2, label=r"$\epsilon^*$")
    ax.set_xlabel(r"training radius $\epsilon$")
    ax.set_ylabel("optimal adversarial risk")
    ax.set_title(f"{_common.NORM_LABELS[norm]} attack")
    if col == 0:
      ax.legend(fontsize=7, loc="upper left")
  fig.suptitle("Spurious features lower the optimal adversarial risk when the correlation "
               f"is preserved (s_spu/s_core={config['sigma_spu'] / config['sigma_core']:.2g})",
               fontsize=10)
  return fig


def run(config: dict[str, Any], workdir: str) -> dict[str, str]:
  """Computes the comparison and writes CSV, PNG and manifest."""
  return _common.compute_and_write(workdir, "spurious_helps", config, compute=compute, figure=figure,
                                   fieldnames=FIELDS)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  config = _common.resolve_config(PRESETS, CONFIG_FLAGS)
  _common.start_runtime()
  run(config, FLAGS.workdir)


if __name__ == "__main__":
  define_flags()
  app.run(main)

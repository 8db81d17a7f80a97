r"""Phase diagram of spurious reliance under adversarial training, computed exactly.

For each attack norm, the exact adversarial-risk minimizer of the core/spurious Gaussian
model over a grid of training radius eps against (1) the spurious-to-core scale ratio
sigma_spu / sigma_core and (2) the spurious correlation rho, with the closed-form
boundaries drawn on top: eps* (spurious weight appears), eps_0 (collapse to w = 0) and the
l_inf scale law |rho| sigma_spu = sigma_core / sqrt(d_core).

  python -m sims.phase_diagram                      # default grid, < 1 min on 2 CPU cores
  python -m sims.phase_diagram --preset=small --workdir=/tmp/pd

Outputs in --workdir: phase_diagram.png, phase_diagram.csv (one row per grid point),
manifest.json.
"""

from __future__ import annotations

import os
import time
from typing import Any

from absl import app
from absl import flags
from absl import logging
import numpy as np

from sims import _common
from sims import _theory_flags

PRESETS = {
    "default": dict(n_eps=121, n_ratio=121, n_rho=121),
    "small": dict(n_eps=21, n_ratio=17, n_rho=17),
}
CONFIG_FLAGS = ("norms", "n_eps", "eps_max", "n_ratio", "ratio_min", "ratio_max", "n_rho",
                "ratio_for_rho", "d_core", "d_spu", "sigma_core", "rho", "label_noise",
                "rho_test")

FLAGS = flags.FLAGS


def define_flags() -> None:
  """Defines the absl flags (when run, not on import: tests import several sims at once)."""
  _common.define_common_flags("results/phase_diagram", PRESETS)
  _theory_flags.define_eps_flags(eps_max=1.5)
  flags.DEFINE_integer("n_ratio", None, "Grid points in the scale ratio.", lower_bound=2)
  flags.DEFINE_float("ratio_min", 0.1, "Smallest sigma_spu / sigma_core (log grid).",
                     lower_bound=0.0)
  flags.DEFINE_float("ratio_max", 4.0, "Largest sigma_spu / sigma_core.", lower_bound=0.0)
  flags.DEFINE_integer("n_rho", None, "Grid points in rho (second diagram).", lower_bound=2)
  flags.DEFINE_float("ratio_for_rho", 0.7, "Scale ratio held fixed in the rho diagram.",
                     lower_bound=0.0)
  flags.DEFINE_integer("d_core", 4, "Core features.", lower_bound=1)
  flags.DEFINE_integer("d_spu", 3, "Spurious features.", lower_bound=1)
  flags.DEFINE_float("sigma_core", 1.0, "Core feature scale.", lower_bound=0.0)
  flags.DEFINE_float("rho", 0.9, "Spurious correlation (ratio diagram).", lower_bound=-1.0,
                     upper_bound=1.0)
  flags.DEFINE_float("label_noise", 0.0, "Label noise std.", lower_bound=0.0)
  flags.DEFINE_float("rho_test", 0.0, "Test-domain correlation for the shift gap.",
                     lower_bound=-1.0, upper_bound=1.0)
  flags.register_validator("sigma_core", lambda v: v > 0, "--sigma_core must be > 0")
  flags.register_validator("ratio_for_rho", lambda v: v > 0, "--ratio_for_rho must be > 0")
  flags.register_multi_flags_validator(
      ["ratio_min", "ratio_max"], lambda f: 0 < f["ratio_min"] < f["ratio_max"],
      "need 0 < --ratio_min < --ratio_max")


def _grid_fn(d_core: int, d_spu: int, norm: str):
  """One grid point -> the minimizer and its reliance metrics (vmapped by grid_map)."""
  from spurjax import theory as T

  def fn(eps, s_c, s_s, rho, s_n, rho_test):
    model = T.CoreSpuriousModel(d_core, d_spu, s_c, s_s, rho, s_n)
    sol = T.adversarial_minimizer(model, eps, norm)
    return dict(w_core=sol.w_core, w_spu=sol.w_spu, risk=sol.risk,
                weight_share=T.spurious_weight_share(model, sol.w),
                shift_gap=T.shift_gap(model, sol.w, rho_test))
  return fn


def compute(config: dict[str, Any]) -> list[dict[str, Any]]:
  """All grid points of both diagrams for every norm; one dict per point."""
  from spurjax import parallel
  eps = np.linspace(0.0, config["eps_max"], config["n_eps"])
  ratios = np.geomspace(config["ratio_min"], config["ratio_max"], config["n_ratio"])
  rhos = np.linspace(-0.99, 0.99, config["n_rho"])
  s_c = config["sigma_core"]
  grids = {
      "ratio": np.stack(np.meshgrid(eps, ratios * s_c, indexing="ij"), -1).reshape(-1, 2),
      "rho": np.stack(np.meshgrid(eps, rhos, indexing="ij"), -1).reshape(-1, 2),
  }
  # Both diagrams in one sharded call per norm (one compilation per norm).
  n_ratio, n_rho = len(grids["ratio"]), len(grids["rho"])
  e = np.concatenate([grids["ratio"][:, 0], grids["rho"][:, 0]])
  s_s = np.concatenate([grids["ratio"][:, 1], np.full(n_rho, config["ratio_for_rho"] * s_c)])
  rho = np.concatenate([np.full(n_ratio, config["rho"]), grids["rho"][:, 1]])
  diagram = ["ratio"] * n_ratio + ["rho"] * n_rho
  n = len(e)
  rows = []
  for norm in config["norms"]:
    t = time.perf_counter()
    out = parallel.grid_map(_grid_fn(config["d_core"], config["d_spu"], norm), e,
                            np.full(n, s_c), s_s, rho, np.full(n, config["label_noise"]),
                            np.full(n, config["rho_test"]))
    logging.info("%s: %d exact minimizers in %.2fs (incl. compilation)", norm, n,
                 time.perf_counter() - t)
    for i in range(n):
      rows.append(dict(diagram=diagram[i], norm=norm, eps=e[i], scale_ratio=s_s[i] / s_c,
                       rho=rho[i], **{k: v[i] for k, v in out.items()}))
  return rows


def plot(config: dict[str, Any], rows: list[dict[str, Any]], path: str) -> None:
  """One panel per norm and diagram: weight share as colour, closed-form boundaries."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  import jax
  from spurjax import theory as T

  norms = config["norms"]
  fig, axes = plt.subplots(2, len(norms), figsize=(4.2 * len(norms), 7.4), squeeze=False,
                           constrained_layout=True)
  names = {"l1": r"$\ell_1$", "l2": r"$\ell_2$", "linf": r"$\ell_\infty$"}
  s_c, d_c, d_s = config["sigma_core"], config["d_core"], config["d_spu"]
  image = None
  for col, norm in enumerate(norms):
    for row, diagram in enumerate(("ratio", "rho")):
      ax = axes[row, col]
      sel = [r for r in rows if r["norm"] == norm and r["diagram"] == diagram]
      xkey = "scale_ratio" if diagram == "ratio" else "rho"
      xs = np.unique([r[xkey] for r in sel])
      es = np.unique([r["eps"] for r in sel])
      z = np.zeros((len(es), len(xs)))
      ix = {x: i for i, x in enumerate(xs)}
      ie = {e: i for i, e in enumerate(es)}
      for r in sel:
        z[ie[r["eps"]], ix[r[xkey]]] = r["weight_share"]
      image = ax.pcolormesh(xs, es, z, cmap="magma", vmin=0.0, vmax=1.0, shading="auto")
      # Closed-form boundaries on a fine grid of the x variable.
      xf = (np.geomspace(xs[0], xs[-1], 400) if diagram == "ratio"
            else np.linspace(xs[0], xs[-1], 400))
      if diagram == "ratio":
        models = T.CoreSpuriousModel(d_c, d_s, np.full_like(xf, s_c), xf * s_c,
                                     np.full_like(xf, config["rho"]),
                                     np.full_like(xf, config["label_noise"]))
      else:
        models = T.CoreSpuriousModel(d_c, d_s, np.full_like(xf, s_c),
                                     np.full_like(xf, config["ratio_for_rho"] * s_c), xf,
                                     np.full_like(xf, config["label_noise"]))
      eps_star = jax.vmap(lambda m: T.robust_interpolation_radius(m, norm))(models)
      eps_0 = jax.vmap(lambda m: T.collapse_radius(m, norm))(models)
      ax.plot(xf, eps_star, color="cyan", lw=1.6, label=r"$\epsilon^*$ (standard solution stops being optimal)")
      ax.plot(xf, eps_0, color="white", lw=1.6, ls="--", label=r"$\epsilon_0$ (collapse to $w=0$)")
      if norm == "linf":  # scale law: |rho| s_s = s_c / sqrt(d_c)
        if diagram == "ratio" and config["rho"] != 0:
          ax.axvline(1 / (abs(config["rho"]) * np.sqrt(d_c)), color="lime", lw=1.4, ls=":",
                     label=r"$\ell_\infty$ law $|\rho|\sigma_s=\sigma_c/\sqrt{d_c}$")
        elif diagram == "rho":
          law = 1 / (config["ratio_for_rho"] * np.sqrt(d_c))
          if law < 1:
            for sign in (-1, 1):
              ax.axvline(sign * law, color="lime", lw=1.4, ls=":",
                         label=r"$\ell_\infty$ law" if sign > 0 else None)
      ax.set_ylim(es[0], es[-1])
      if diagram == "ratio":
        ax.set_xscale("log")
        ax.set_xlabel(r"scale ratio $\sigma_{spu}/\sigma_{core}$" + f"  (rho={config['rho']})")
      else:
        ax.set_xlabel(r"spurious correlation $\rho$" +
                      f"  ($\\sigma_{{spu}}/\\sigma_{{core}}$={config['ratio_for_rho']})")
      ax.set_ylabel(r"training radius $\epsilon$")
      ax.set_title(f"{names[norm]} adversarial training")
      if row == 0 and col == 0:
        ax.legend(loc="upper left", fontsize=7, framealpha=0.6)
      elif norm == "linf" and row == 0:
        ax.legend(loc="upper left", fontsize=7, framealpha=0.6)
  cbar = fig.colorbar(image, ax=axes, shrink=0.8)
  cbar.set_label(r"spurious weight share $\|w_{spu}\|_2/\|w\|_2$")
  fig.suptitle(f"Exact spurious reliance of adversarial training (d_core={d_c}, "
               f"d_spu={d_s}, label noise={config['label_noise']})")
  from spurjax import io
  io.save_figure(fig, path)
  plt.close(fig)


def run(config: dict[str, Any], workdir: str) -> dict[str, str]:
  """Computes both diagrams, writes PNG, CSV and manifest (process 0 only).

  Returns:
    Paths of the written files.
  """
  from spurjax import io, parallel
  start = time.perf_counter()
  rows = compute(config)
  paths = dict(csv=os.path.join(workdir, "phase_diagram.csv"),
               png=os.path.join(workdir, "phase_diagram.png"),
               manifest=os.path.join(workdir, "manifest.json"))
  if parallel.is_writer():
    io.write_csv(paths["csv"], rows, ["diagram", "norm", "eps", "scale_ratio", "rho",
                                      "w_core", "w_spu", "weight_share", "risk",
                                      "shift_gap"])
    plot(config, rows, paths["png"])
    _common.write_manifest(workdir, config=config, seed=None,
                           wall_time_s=time.perf_counter() - start,
                           outputs=[os.path.basename(p) for p in paths.values()],
                           extra=dict(grid_points=len(rows)))
    logging.info("wrote %s", ", ".join(paths.values()))
  return paths


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  _common.start_runtime()
  config = _common.resolve_config(PRESETS, CONFIG_FLAGS)
  run(config, FLAGS.workdir)


if __name__ == "__main__":
  define_flags()
  app.run(main)

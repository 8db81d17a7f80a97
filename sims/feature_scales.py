r"""Which features keep weight under adversarial training, feature by feature, exactly.

A Gaussian linear-regression model with individual feature scales and correlations (no
symmetry, so the two-variable reduction of `spurjax.theory` does not apply; the exact
general solver `spurjax.gaussian` does):

    g ~ N(0, I_dc), u = R^{1/2} g   (core factors, pairwise correlation --core_corr)
    y = 1^T u / sqrt(d_c) + s_n xi                          Var(y) = v
    x_core_i = s_i u_i                                       (scales --core_scales)
    x_spu_j  = t_j (r_j y / sqrt(v) + sqrt(1 - r_j^2) z_j)   (scales --spu_scales,
                                                              correlations --spu_rhos)

For l1, l2 and l_inf training the exact minimizer's weight on every feature as eps grows
(one weight-path panel per norm): the paper's claim (ii) feature by feature. l_inf
training (a lasso path) zeroes features one by one, and the last one standing is the
feature with the largest label covariance |E[x_i y]|, core or spurious; l1 training (an
l_inf-penalty path) caps ever more weights at one common magnitude, so near collapse
every feature with E[x_i y] != 0, spurious ones included, has the same |w_i|; l2 training
(ridge) shrinks w towards a multiple of E[x y]. The CSV also has the shift gap
R(w; r' = 0) - R(w; r) (standard risk when every spurious correlation breaks at test
time).

  python -m sims.feature_scales                      # default grid
  python -m sims.feature_scales --preset=small --workdir=/tmp/fs

Outputs in --workdir: feature_scales.png, feature_scales.csv (one row per norm and eps),
manifest.json (with, per norm, the largest eps at which each feature keeps weight).
"""

from __future__ import annotations

import math
from typing import Any

from absl import app
from absl import flags
import numpy as np

from sims import _common
from sims import _theory_flags

PRESETS = {
    "default": dict(n_eps=161),
    "small": dict(n_eps=13),
}
CONFIG_FLAGS = ("norms", "n_eps", "eps_max", "core_scales", "core_corr", "spu_scales",
                "spu_rhos", "label_noise")

FLAGS = flags.FLAGS


def define_flags() -> None:
  """Defines the absl flags (when run, not on import: tests import several sims at once)."""
  _common.define_common_flags("results/feature_scales", PRESETS)
  _theory_flags.define_eps_flags(eps_max=2.0)
  _common.define_float_list("core_scales", [1.0, 0.5, 2.0], "Scale of each core feature.")
  flags.DEFINE_float("core_corr", 0.3, "Correlation between core factors.")
  _common.define_float_list("spu_scales", [0.5, 1.5, 3.0], "Scale of each spurious feature.")
  _common.define_float_list("spu_rhos", [0.9, 0.6, 0.3],
                            "Correlation of each spurious feature with the label.")
  flags.DEFINE_float("label_noise", 0.1, "Label noise std.", lower_bound=0.0)


def _floats(name: str, values: Any) -> np.ndarray:
  try:
    out = np.asarray([float(v) for v in values], np.float64)
  except ValueError as e:
    raise ValueError(f"--{name} must be a list of numbers, got {values!r}") from e
  if not np.all(np.isfinite(out)):
    raise ValueError(f"--{name} must be finite, got {values!r}")
  return out


def moments(config: dict[str, Any], spu_rhos: Any = None) -> tuple[np.ndarray, ...]:
  """Exact moments (sigma `(d, d)`, cross `(d,)`, var_y) of the model in the docstring,
  from its linear factor (x, y) = A zeta, zeta = (g, xi, z) standard normal.

  `spu_rhos` overrides the spurious correlations (a test domain)."""
  s_c = _floats("core_scales", config["core_scales"])
  s_s = _floats("spu_scales", config["spu_scales"])
  r = _floats("spu_rhos", config["spu_rhos"] if spu_rhos is None else spu_rhos)
  d_c, d_s = len(s_c), len(s_s)
  if d_c < 1 or np.any(s_c <= 0):
    raise ValueError(f"--core_scales must be one or more numbers > 0, got {s_c}")
  if np.any(s_s <= 0):
    raise ValueError(f"--spu_scales must be numbers > 0, got {s_s}")
  if len(r) != d_s or np.any(np.abs(r) > 1):
    raise ValueError(f"--spu_rhos must be {d_s} numbers in [-1, 1], got {r}")
  rho_c = config["core_corr"]
  if not -1.0 / max(d_c - 1, 1) < rho_c < 1.0:
    raise ValueError(f"--core_corr must be in (-1/(d_c - 1), 1) = "
                     f"({-1.0 / max(d_c - 1, 1):.3g}, 1), got {rho_c}")
  s_n = config["label_noise"]
  corr = np.full((d_c, d_c), rho_c) + (1 - rho_c) * np.eye(d_c)
  half = np.linalg.cholesky(corr)                         # u = half g
  m = d_c + 1 + d_s
  a_y = np.r_[half.T @ np.ones(d_c) / math.sqrt(d_c), s_n, np.zeros(d_s)]
  v = a_y @ a_y
  a_core = np.c_[s_c[:, None] * half, np.zeros((d_c, 1 + d_s))]
  a_spu = s_s[:, None] * (np.outer(r / math.sqrt(v), a_y)
                          + np.sqrt(1 - r**2)[:, None] * np.eye(d_s, m, d_c + 1))
  a_x = np.r_[a_core, a_spu]
  return a_x @ a_x.T, a_x @ a_y, v


def feature_names(config: dict[str, Any]) -> list[str]:
  return ([f"core{i}" for i in range(len(config["core_scales"]))]
          + [f"spu{j}" for j in range(len(config["spu_scales"]))])


def compute(config: dict[str, Any]) -> list[dict[str, Any]]:
  """One row per (norm, eps): every feature's weight, the risk, the shift gap."""
  import jax
  import jax.numpy as jnp
  from spurjax import gaussian as G

  model = G.GaussianModel(*(jnp.asarray(a) for a in moments(config)))
  test = G.GaussianModel(*(jnp.asarray(a) for a in moments(
      config, spu_rhos=[0.0] * len(config["spu_scales"]))))
  G.validate_gaussian(model, positive_definite=True)
  names = feature_names(config)
  d_c = len(config["core_scales"])
  eps = np.linspace(0.0, config["eps_max"], config["n_eps"])
  rows = []
  for norm in config["norms"]:
    @jax.jit
    def solve(e, norm=norm):
      sol = G.adversarial_minimizer(model, e, norm)
      gap = (G.adversarial_risk(test, sol.w, 0.0, "l2")
             - G.adversarial_risk(model, sol.w, 0.0, "l2"))
      return sol.w, sol.risk, gap

    w, risk, gap = jax.vmap(solve)(jnp.asarray(eps))
    w, risk, gap = np.asarray(w), np.asarray(risk), np.asarray(gap)
    _common.check(bool(np.all(np.isfinite(w))), f"{norm}: non-finite minimizer")
    for i, e in enumerate(eps):
      norm2 = np.linalg.norm(w[i])
      share = np.linalg.norm(w[i, d_c:]) / norm2 if norm2 > 0 else 0.0
      rows.append(dict(norm=norm, eps=e, risk=risk[i], shift_gap=gap[i],
                       spurious_weight_share=share, nonzero=int(np.sum(w[i] != 0)),
                       **{f"w_{n}": w[i, k] for k, n in enumerate(names)}))
  return rows


def survival(config: dict[str, Any], rows: list[dict[str, Any]]) -> dict[str, Any]:
  """Per norm and feature, the largest eps on the grid with a nonzero weight (None: never)."""
  out = {}
  for norm in config["norms"]:
    sel = [r for r in rows if r["norm"] == norm]
    out[norm] = {}
    for n in feature_names(config):
      alive = [r["eps"] for r in sel if r[f"w_{n}"] != 0.0]
      out[norm][n] = float(max(alive)) if alive else None
  return out


def figure(config: dict[str, Any], rows: list[dict[str, Any]]) -> Any:
  """One panel per norm: weight of every feature against eps (core solid, spurious
  dashed), with |E[x_i y]| in the legend."""
  _common.use_agg()
  import matplotlib.pyplot as plt

  norms = config["norms"]
  names = feature_names(config)
  _, cross, _ = moments(config)
  d_c = len(config["core_scales"])
  fig, axes = plt.subplots(1, len(norms), figsize=(3.6 * len(norms), 3.3), squeeze=False,
                           constrained_layout=True)
  colors = plt.get_cmap("tab10")
  for col, norm in enumerate(norms):
    ax = axes[0, col]
    sel = [r for r in rows if r["norm"] == norm]
    eps = np.asarray([r["eps"] for r in sel])
    for k, n in enumerate(names):
      kind = (f"core s={config['core_scales'][k]}" if k < d_c else
              f"spu s={config['spu_scales'][k - d_c]} r={config['spu_rhos'][k - d_c]}")
      ax.plot(eps, [r[f"w_{n}"] for r in sel], ls="-" if k < d_c else "--",
              color=colors(k % 10), lw=1.5, label=f"{kind}  |c|={abs(cross[k]):.2f}")
    ax.axhline(0.0, color="gray", lw=0.6)
    ax.set_xlabel(r"training radius $\epsilon$")
    ax.set_title(f"{_common.NORM_LABELS[norm]} adversarial training", fontsize=10)
    if col == 0:
      ax.set_ylabel("weight $w_i$")
  axes[0, -1].legend(fontsize=6, loc="upper right", framealpha=0.7)
  fig.suptitle(f"Exact weight paths, features with their own scales (label noise "
               f"{config['label_noise']}, core correlation {config['core_corr']})",
               fontsize=10)
  return fig


def run(config: dict[str, Any], workdir: str) -> dict[str, str]:
  """Computes the weight paths; writes PNG, CSV and manifest. Returns the paths."""
  names = feature_names(config)
  return _common.compute_and_write(
      workdir, "feature_scales", config, compute=compute, figure=figure,
      fieldnames=["norm", "eps", "risk", "shift_gap", "spurious_weight_share", "nonzero"]
      + [f"w_{n}" for n in names],
      extra=lambda rows: dict(last_eps_with_weight=survival(config, rows)))


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  _common.start_runtime()
  config = _common.resolve_config(PRESETS, CONFIG_FLAGS)
  try:
    for name in ("core_scales", "spu_scales", "spu_rhos"):
      config[name] = [float(v) for v in _floats(name, config[name])]
    moments(config)
  except ValueError as e:
    raise app.UsageError(str(e)) from e
  run(config, FLAGS.workdir)


if __name__ == "__main__":
  define_flags()
  app.run(main)

r"""Exact minimizers per second against a generic per-point numerical optimizer.

  python benchmarks/theory_bench.py [--points=100000] [--json=PATH]

Exact: `spurjax.theory.adversarial_minimizer`, float64, jit(vmap) over a grid of
(eps, sigma_spu, rho) points for each of the three norms (`--points` per norm), sharded
over the local devices. Baselines, measured in the same run:
  * the previous exact solver (64 bisection steps on the path multiplier with 7-9
    candidates per step, `theory._minimize_reduced_bisection`), per norm: speedup and the
    relative risk difference of the two exact solvers;
  * scipy: `scipy.optimize.minimize` (Nelder-Mead on the reduced two-variable risk), one
    point at a time, timed on a subsample (`--baseline_points`) -- the "generic per-point
    optimizer" of the ratio;
  * optax: 2,000 Adam steps on the full d-dimensional risk, vmapped over the same
    subsample (reported with its excess risk, not used in the ratio).
`--json PATH` writes {"points", "exact_per_s", "exact_per_s_l1", "exact_per_s_l2",
"exact_per_s_linf", "bisection_per_s_<norm>", "speedup_<norm>", "baseline_per_s",
"ratio", "load_average", ...}.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time

from absl import app
from absl import flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

flags.DEFINE_integer("points", 100_000, "Grid points per norm.", lower_bound=1000)
flags.DEFINE_integer("baseline_points", 150, "Points per norm for the per-point baseline.",
                     lower_bound=10)
flags.DEFINE_integer("repeats", 3, "Timed repetitions (best of grid_map; 2x+1 interleaved "
                     "runs for the steady medians).", lower_bound=1)
flags.DEFINE_string("json", None, "Write the figures to this JSON file.")
FLAGS = flags.FLAGS


def _grid(n, rng):
  import numpy as np
  return (rng.uniform(0.0, 1.5, n), rng.uniform(0.1, 3.0, n), rng.uniform(-0.95, 0.95, n),
          rng.uniform(0.0, 0.3, n))


def main(argv):
  del argv
  import jax
  jax.config.update("jax_enable_x64", True)
  import jax.numpy as jnp
  import numpy as np
  import optax
  from scipy import optimize
  from spurjax import parallel
  from spurjax import theory as T

  d_c, d_s = 4, 3
  rng = np.random.default_rng(0)
  eps, s_s, rho, s_n = _grid(FLAGS.points, rng)
  print(f"devices: {jax.devices()}  backend: {jax.default_backend()}  float64  "
        f"load average {os.getloadavg()[0]:.2f} (timings on a shared machine are noisy: "
        "compare the ratios)")

  # --- exact, all three norms; the previous solver (64-step path bisection) in the same run ---
  def reduced_fn(solver, norm):
    def fn(e, s, r, n):
      red = T._reduce(T.CoreSpuriousModel(d_c, d_s, 1.0, s, r, n))
      return solver(red, e, norm, True)[2]
    return fn

  def steady_times(fs, args):
    """Median compile-free time of each function, timed interleaved (load hits both)."""
    for f in fs:
      f(*args).block_until_ready()
    times = [[] for _ in fs]
    for _ in range(2 * FLAGS.repeats + 1):
      for f, ts in zip(fs, times):
        t = time.perf_counter()
        f(*args).block_until_ready()
        ts.append(time.perf_counter() - t)
    return [float(np.median(ts)) for ts in times]

  args = [jnp.asarray(a) for a in (eps, s_s, rho, s_n)]
  exact_s = 0.0
  per_norm = {}
  for norm in T.NORMS:
    def fn(e, s, r, n, norm=norm):
      return T.adversarial_minimizer(T.CoreSpuriousModel(d_c, d_s, 1.0, s, r, n), e,
                                     norm).risk
    parallel.grid_map(fn, eps[:1000], s_s[:1000], rho[:1000], s_n[:1000])  # warm-up shape
    best = math.inf
    for _ in range(FLAGS.repeats):
      t = time.perf_counter()
      out = parallel.grid_map(fn, eps, s_s, rho, s_n)
      best = min(best, time.perf_counter() - t)
    assert np.all(np.isfinite(out))
    # grid_map compiles per call (a fresh jit of vmap(fn)); measure compile-free time too.
    steady, old = steady_times(
        [jax.jit(jax.vmap(fn)),
         jax.jit(jax.vmap(reduced_fn(T._minimize_reduced_bisection, norm)))], args)
    new_r = jax.jit(jax.vmap(reduced_fn(T._minimize_reduced, norm)))(*args)
    old_r = jax.jit(jax.vmap(reduced_fn(T._minimize_reduced_bisection, norm)))(*args)
    rel = np.asarray(new_r / old_r - 1.0)
    per_norm[norm] = dict(exact_per_s=FLAGS.points / steady,
                          bisection_per_s=FLAGS.points / old, speedup=old / steady,
                          max_rel_risk_vs_bisection=float(np.max(rel)),
                          min_rel_risk_vs_bisection=float(np.min(rel)))
    print(f"exact {norm:>4}: {FLAGS.points / steady:12,.0f} minimizers/s steady "
          f"({FLAGS.points / best:,.0f}/s via grid_map incl. compile); previous 64-step "
          f"bisection solver {FLAGS.points / old:,.0f}/s: {old / steady:.2f}x; "
          f"risk new/old - 1 in [{np.min(rel):.1e}, {np.max(rel):.1e}]")
    exact_s += steady
  n_total = 3 * FLAGS.points
  exact_per_s = n_total / exact_s

  # --- per-point generic optimizer (scipy) on a subsample ---
  m = FLAGS.baseline_points
  base_s = 0.0
  excess = []
  for norm in T.NORMS:
    exact = jax.vmap(lambda e, s, r, n: T.adversarial_minimizer(
        T.CoreSpuriousModel(d_c, d_s, 1.0, s, r, n), e, norm).risk)(
            eps[:m], s_s[:m], rho[:m], s_n[:m])
    risk_fn = jax.jit(lambda ab, e, s, r, n: T.adversarial_risk(
        T.CoreSpuriousModel(d_c, d_s, 1.0, s, r, n),
        jnp.concatenate([jnp.full(d_c, ab[0] / math.sqrt(d_c)),
                         jnp.full(d_s, ab[1] / math.sqrt(d_s))]), e, norm))
    risk_np = lambda ab, *p: float(risk_fn(jnp.asarray(ab), *p))
    risk_np([0.0, 0.0], eps[0], s_s[0], rho[0], s_n[0])
    t = time.perf_counter()
    for i in range(m):
      res = optimize.minimize(risk_np, [0.5, 0.0], args=(eps[i], s_s[i], rho[i], s_n[i]),
                              method="Nelder-Mead", options=dict(xatol=1e-8, fatol=1e-12))
      excess.append(res.fun / float(exact[i]) - 1.0)
    base_s += time.perf_counter() - t
  baseline_per_s = 3 * m / base_s
  print(f"scipy Nelder-Mead per point: {baseline_per_s:,.1f} minimizers/s "
        f"(median excess risk {np.median(excess):.1e})")

  # --- vmapped first-order optimizer on the full problem (context only) ---
  opt = optax.adam(1e-2)

  def adam_solve(e, s, r, n, norm):
    model = T.CoreSpuriousModel(d_c, d_s, 1.0, s, r, n)
    loss = lambda w: T.adversarial_risk(model, w, e, norm)
    w = jnp.zeros(d_c + d_s)
    def step(_, carry):
      w, st = carry
      upd, st = opt.update(jax.grad(loss)(w), st)
      return optax.apply_updates(w, upd), st
    w, _ = jax.lax.fori_loop(0, 2000, step, (w, opt.init(w)))
    return loss(w)

  adam_s = 0.0
  adam_excess = []
  for norm in T.NORMS:
    f = jax.jit(jax.vmap(lambda *p: adam_solve(*p, norm)))
    p = [jnp.asarray(a[:m]) for a in (eps, s_s, rho, s_n)]
    f(*p).block_until_ready()
    t = time.perf_counter()
    r = f(*p).block_until_ready()
    adam_s += time.perf_counter() - t
    exact = jax.vmap(lambda e, s, r_, n: T.adversarial_minimizer(
        T.CoreSpuriousModel(d_c, d_s, 1.0, s, r_, n), e, norm).risk)(*p)
    adam_excess.append(float(jnp.median(r / exact - 1.0)))
  print(f"optax Adam x2000, vmapped: {3 * m / adam_s:,.0f} minimizers/s "
        f"(median excess risk {np.median(adam_excess):.1e})")

  ratio = exact_per_s / baseline_per_s
  print(f"\nexact: {exact_per_s:,.0f}/s over {n_total:,} points (3 norms); "
        f"per-point baseline: {baseline_per_s:,.1f}/s; ratio {ratio:,.0f}x")
  if FLAGS.json:
    from spurjax import io
    extra = {}
    for norm, figs in per_norm.items():
      for key, val in figs.items():
        extra[key.replace("exact_per_s", "exact_per_s_" + norm) if key == "exact_per_s"
              else f"{key}_{norm}"] = val
    io.write_json(FLAGS.json, dict(points=n_total, exact_per_s=exact_per_s,
                                   baseline_per_s=baseline_per_s, ratio=ratio,
                                   load_average=os.getloadavg()[0], **extra,
                                   vmapped_adam_per_s=3 * m / adam_s,
                                   devices=len(jax.devices())))


if __name__ == "__main__":
  app.run(main)

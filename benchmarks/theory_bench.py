r"""Exact minimizers per second against a generic per-point numerical optimizer.

  python benchmarks/theory_bench.py [--points=100000] [--json=PATH] [--general_only]

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

General Gaussian models (`spurjax.gaussian`, `general_bench`): random covariances at
d = 10 and d = 50 (`--general_dims`), with and without label noise, all three norms;
exact minimizers/s for an eps grid per model (the path walked once per model) and for a
single eps per model, each against cvxpy's interior-point solver (Clarabel) one point at
a time on a subsample, with the largest excess risk of ours over cvxpy's. JSON keys
`general_d{d}_cvxpy_per_s`, `general_d{d}_{grid,single}_{exact_per_s,ratio,
max_excess_vs_cvxpy}`.
"""

from __future__ import annotations

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
flags.DEFINE_list("general_dims", ["10", "50"], "Sizes d for the general-model benchmark "
                  "(empty: skip it).")
flags.DEFINE_integer("general_points", 3000, "Minimizers per norm and d (general models).",
                     lower_bound=1)
flags.DEFINE_integer("general_baseline_points", 20, "cvxpy solves per norm and d.",
                     lower_bound=1)
flags.DEFINE_bool("general_only", False, "Only the general-model benchmark.")
flags.DEFINE_integer("general_chunk", 32, "Models per vmapped chunk in the single-radius "
                     "workload (lax.map over chunks).", lower_bound=1)
flags.DEFINE_integer("cpus", 0, "Run on this many CPU cores (0: all). 1 compares one core "
                     "with one core (Clarabel is single-threaded) and keeps XLA's thread "
                     "hand-offs off a shared machine's scheduler.", lower_bound=0)
FLAGS = flags.FLAGS


def _grid(n, rng):
  return (rng.uniform(0.0, 1.5, n), rng.uniform(0.1, 3.0, n), rng.uniform(-0.95, 0.95, n),
          rng.uniform(0.0, 0.3, n))


def main(argv):
  del argv
  if FLAGS.cpus:  # before JAX sizes its thread pools
    os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:FLAGS.cpus])
  import jax
  jax.config.update("jax_enable_x64", True)
  import jax.numpy as jnp
  import numpy as np
  import optax
  from scipy import optimize
  from spurjax import parallel
  from spurjax import theory as T

  if FLAGS.general_only:
    general = {}
    for d in FLAGS.general_dims:
      general.update(general_bench(int(d), FLAGS.general_points,
                                   FLAGS.general_baseline_points, FLAGS.repeats))
    if FLAGS.json:
      from spurjax import io
      io.write_json(FLAGS.json, dict(load_average=os.getloadavg()[0],
                                     devices=len(jax.devices()), **general))
    return

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

  general = {}
  for d in FLAGS.general_dims:
    general.update(general_bench(int(d), FLAGS.general_points, FLAGS.general_baseline_points,
                                 FLAGS.repeats))

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
                                   devices=len(jax.devices()), **general))


def _random_models(rng, d, n_models):
  """sigma = A A^T / d + 0.05 I, rows of A scaled by U(0.2, 2), y = beta^T x (+ noise
  N(0, 0.3^2) on every other model), beta sparse (the tests' random models)."""
  import numpy as np
  sig, cross, var_y = [], [], []
  for i in range(n_models):
    a = rng.normal(size=(d, d)) * rng.uniform(0.2, 2.0, size=d)[:, None]
    s = a @ a.T / d + 0.05 * np.eye(d)
    beta = rng.normal(size=d) * (rng.uniform(size=d) < 0.6)
    sig.append(s)
    cross.append(s @ beta)
    var_y.append(beta @ s @ beta + (0.3**2 if i % 2 else 0.0))
  return np.stack(sig), np.stack(cross), np.asarray(var_y)


def _workloads(d, points):
  """The grid and single workloads of `general_bench` (deterministic in d, points)."""
  import jax.numpy as jnp
  import numpy as np
  from spurjax import gaussian as G
  rng = np.random.default_rng(d)
  n_grid = 16
  per_model = max(points // n_grid, 1)
  points = per_model * n_grid
  grid_models = G.GaussianModel(*(jnp.asarray(a) for a in _random_models(rng, d, n_grid)))
  grid_eps = rng.uniform(0.0, 0.6, (n_grid, per_model))
  single_models = G.GaussianModel(*(jnp.asarray(a) for a in _random_models(rng, d, points)))
  single_eps = rng.uniform(0.0, 0.6, points)
  return n_grid, points, dict(grid=(grid_models, grid_eps), single=(single_models, single_eps))


def _time_general(models, eps, norm, repeats, chunk=None):
  """Best of `repeats` compile-free runs of the exact solver, vmapped over the models (in
  `lax.map` chunks of `chunk` models if given): (seconds, risk)."""
  import jax
  import numpy as np
  from spurjax import gaussian as G
  one = lambda me: G.adversarial_minimizer(me[0], me[1], norm)
  if chunk:
    fn = jax.jit(lambda m, e: jax.lax.map(one, (m, e), batch_size=chunk))
  else:
    fn = jax.jit(jax.vmap(lambda m, e: one((m, e))))
  fn = fn.lower(models, eps).compile()  # ahead of time: compilation apart from the runs
  res = jax.block_until_ready(fn(models, eps))
  best = math.inf
  for _ in range(repeats):
    t = time.perf_counter()
    res = jax.block_until_ready(fn(models, eps))
    best = min(best, time.perf_counter() - t)
  risk = np.asarray(res.risk)
  assert np.all(np.isfinite(risk)), "non-finite exact minimizer"
  return best, risk


def _cvxpy_problem(d, norm):
  """The adversarial risk as one parametrised (DPP) second-order cone program, so that a
  point skips the canonicalisation: R = (s + eps k n)^2 + eps^2 (1 - k^2) n^2 is the
  squared 2-norm of (s + eps k n, eps sqrt(1 - k^2) n), minimised as min sqrt(R) (the
  homogeneous form; the squared objective left Clarabel "inaccurate" or failing on a
  share of random problems). Returns (problem, w, parameters)."""
  import cvxpy as cp
  bx, by = cp.Parameter((d + 1, d)), cp.Parameter(d + 1)
  epsk, epsr = cp.Parameter(nonneg=True), cp.Parameter(nonneg=True)
  w = cp.Variable(d)
  n = cp.norm(w, {"l1": "inf", "l2": 2, "linf": 1}[norm])
  s = cp.norm(bx @ w - by, 2)
  prob = cp.Problem(cp.Minimize(cp.norm(cp.hstack([s + epsk * n, epsr * n]), 2)))
  return prob, w, (bx, by, epsk, epsr)


def general_bench(d, points, baseline_points, repeats):
  """Exact general-model minimizers/s at size d against cvxpy (Clarabel), same run.

  Two workloads of `points` minimizers per norm, random models (`_random_models`),
  eps ~ U(0, 0.6):
    * grid: 16 models, `points / 16` radii each, one `adversarial_minimizer` call per
      model with the radii as an `(m,)` array (the path is walked once per model),
      vmapped over the models;
    * single: `points` models, one radius each (`adversarial_minimizer` with a scalar
      radius: the path is walked down to the radius's piece), vmapped over chunks of
      `--general_chunk` models (`lax.map(..., batch_size=...)`: one vmap over thousands
      of d = 50 models streams their `(d, d)` states through memory at every step of the
      while loop, 2x slower).
  Timed: best of `repeats` compile-free runs. cvxpy solves the first `baseline_points`
  (model, eps) pairs of each workload one at a time (`_cvxpy_problem`; timed from setting
  the parameters to the end of the solve); its rate is the same problem's for both
  ratios. The excess risk of ours over cvxpy's (its w evaluated exactly) is reported for
  both workloads; a cvxpy failure is counted, not timed.
  """
  import cvxpy as cp
  import jax
  import jax.numpy as jnp
  import numpy as np
  from spurjax import gaussian as G
  from spurjax import theory as T

  n_grid, points, work = _workloads(d, points)
  m = min(baseline_points, points)

  exact_s = dict(grid=0.0, single=0.0)
  cvx_s, cvx_n, cvx_fail, excess = 0.0, 0, 0, dict(grid=[], single=[])
  for norm in T.NORMS:
    res = {}
    for kind, (models, eps) in work.items():
      sec, risk = _time_general(models, jnp.asarray(eps), norm, repeats,
                                chunk=FLAGS.general_chunk if kind == "single" else None)
      res[kind] = risk
      exact_s[kind] += sec
      print(f"general d={d} {kind:>6} {norm:>4}: {points / sec:12,.0f} minimizers/s", flush=True)
    prob, w, (bx, by, epsk, epsr) = _cvxpy_problem(d, norm)
    for kind, (models, eps) in work.items():
      for i in range(m):
        mi, ei = (i % n_grid, i // n_grid) if kind == "grid" else (i, None)
        e = float(eps[mi, ei] if kind == "grid" else eps[mi])
        mod = jax.tree.map(lambda a: np.asarray(a[mi]), models)
        joint = np.block([[mod.sigma, mod.cross[:, None]],
                          [mod.cross[None], np.reshape(mod.var_y, (1, 1))]])
        lam, u = np.linalg.eigh(joint)
        b = u * np.sqrt(np.clip(lam, 0.0, None))[None, :]
        t0 = time.perf_counter()
        bx.value, by.value = b[:d].T, b[d]
        epsk.value, epsr.value = e * T.K, e * math.sqrt(1 - T.K**2)
        try:
          prob.solve(solver="CLARABEL")
        except cp.error.SolverError:
          cvx_fail += 1
          continue
        cvx_s += time.perf_counter() - t0
        cvx_n += 1
        r_cvx = float(G.adversarial_risk(mod, jnp.asarray(w.value), e, norm))
        excess[kind].append(float(res[kind][mi, ei] if kind == "grid" else res[kind][mi])
                            / r_cvx - 1.0)
  cvx_per_s = cvx_n / cvx_s
  out = {f"general_d{d}_cvxpy_per_s": cvx_per_s, f"general_d{d}_cvxpy_failures": cvx_fail}
  for kind in work:
    per_s = 3 * points / exact_s[kind]
    key = f"general_d{d}_{kind}_"
    out.update({key + "exact_per_s": per_s, key + "ratio": per_s / cvx_per_s,
                key + "max_excess_vs_cvxpy": max(excess[kind])})
    print(f"general d={d} {kind}: exact {per_s:,.0f}/s, cvxpy {cvx_per_s:,.1f}/s "
          f"({cvx_fail} failed), ratio {per_s / cvx_per_s:,.0f}x (goal 1000x: "
          f"{'met' if per_s >= 1000 * cvx_per_s else 'NOT met'}); largest excess risk over "
          f"cvxpy {max(excess[kind]):.1e} (negative: below cvxpy)", flush=True)
  return out


if __name__ == "__main__":
  app.run(main)

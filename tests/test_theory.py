"""Tests of spurjax.theory: reference minimizers, Monte Carlo, an independent solver,
closed-form thresholds, batching, gradients and input validation. All in float64."""

import functools
import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import optimize

from spurjax import theory as T

DATA = os.path.join(os.path.dirname(__file__), "data", "theory_vectors.json")


@pytest.fixture(autouse=True)
def x64():
  with jax.enable_x64(True):
    yield


# Not wrapped in an outer jit: the solver's kernel is compiled once per norm with the
# dimensions traced, while an outer jit would recompile for every (d_core, d_spu).
minimize = T.adversarial_minimizer


def minimize_eps_grid(model, eps, norm):
  return jax.vmap(lambda e: T.adversarial_minimizer(model, e, norm))(eps)


@functools.partial(jax.jit, static_argnames="norm")
def risk_batch(model, ws, eps, norm):
  return jax.vmap(lambda w: T.adversarial_risk(model, w, eps, norm))(ws)


def numpy_risk(model, w, eps, norm):
  """Independent evaluation from the generative equations, in numpy.

  (x, y) = A zeta with zeta = (u, xi, z) standard normal, so the residual w^T x - y has
  variance ||A_x^T w - A_y||^2: a sum of squares, accurate near s = 0, where a quadratic
  form w^T Sigma w - 2 w^T c + v loses s^2 to cancellation.
  """
  d_c, d_s = model.d_core, model.d_spu
  s_c, s_s, r, s_n = model.sigma_core, model.sigma_spu, model.rho, model.label_noise
  v = 1 + s_n**2
  theta = np.full(d_c, 1 / math.sqrt(d_c))
  a_y = np.r_[theta, s_n, np.zeros(d_s)]
  a_xc = np.c_[s_c * np.eye(d_c), np.zeros((d_c, 1 + d_s))]
  a_xs = s_s * (r / math.sqrt(v) * np.outer(np.ones(d_s), a_y)
                + math.sqrt(1 - r**2) * np.c_[np.zeros((d_s, d_c + 1)), np.eye(d_s)])
  resid = np.r_[a_xc, a_xs].T @ w - a_y
  s = np.linalg.norm(resid)
  q = {"l1": np.inf, "l2": 2, "linf": 1}[norm]
  n = np.linalg.norm(w, q)
  return s * s + 2 * eps * T.K * s * n + (eps * n) ** 2


WORKED = T.CoreSpuriousModel(4, 3, 1.0, 0.7, 0.9, 0.0)


def _load_cases():
  with open(DATA) as f:
    return json.load(f)


def _model(c):
  return T.CoreSpuriousModel(c["d_core"], c["d_spu"], c["sigma_core"], c["sigma_spu"],
                             c["rho"], c["label_noise"])


def test_reference_vectors():
  """Every case of theory_vectors.json (the reference minimizers in tests/data).

  The upper bound is the reference's risk or, where larger, the exact risk of the
  reference's own weights: at interpolating solutions (s = 0) the reference risks sit up
  to ~1.5e-7 below the risk of their own weights (their evaluation loses s^2 to
  cancellation), while the exact minimizer's risk there is eps^2 ||w0||_q^2 to round-off.
  """
  cases = _load_cases()
  assert len(cases) == 96
  for c in cases:
    m = _model(c)
    got = minimize(m, c["eps"], c["norm"])
    w_ref = jnp.array([c["w_core"]] * m.d_core + [c["w_spu"]] * m.d_spu)
    risk_of_ref_w = float(T.adversarial_risk(m, w_ref, c["eps"], c["norm"]))
    upper = max(c["risk"], risk_of_ref_w) * (1 + 1e-9) + 1e-15
    assert float(got.risk) <= upper, c
    assert float(got.risk) >= c["risk"] * (1 - 1e-6) - 1e-15, c
    assert abs(float(got.w_core) - c["w_core"]) <= 1e-3, c
    assert abs(float(got.w_spu) - c["w_spu"]) <= 1e-3, c
    # The returned risk is the risk of the returned w.
    np.testing.assert_allclose(got.risk, T.adversarial_risk(m, got.w, c["eps"], c["norm"]),
                               rtol=1e-12, atol=1e-15)


def test_interpolating_reference_cases_match_closed_form():
  """Below eps* (s_n = 0) the minimum is R(w0) = eps^2 ||w0||_q^2 exactly."""
  for c in _load_cases():
    m = _model(c)
    if c["label_noise"] or c["eps"] > float(T.robust_interpolation_radius(m, c["norm"])):
      continue
    w0 = np.r_[np.full(m.d_core, 1 / (c["sigma_core"] * math.sqrt(m.d_core))),
               np.zeros(m.d_spu)]
    q = {"l1": np.inf, "l2": 2, "linf": 1}[c["norm"]]
    expected = (c["eps"] * np.linalg.norm(w0, q)) ** 2
    got = minimize(m, c["eps"], c["norm"])
    np.testing.assert_allclose(got.risk, expected, rtol=1e-14, atol=1e-30)
    np.testing.assert_array_equal(got.w, w0)


@pytest.mark.parametrize("norm", T.NORMS)
def test_risk_matches_monte_carlo(norm):
  """R(w) equals the sample mean of the exact worst-case loss (|w^T x - y| + eps||w||_q)^2,
  and that loss is attained by an explicit perturbation (Hoelder's equality)."""
  model = T.CoreSpuriousModel(3, 4, 0.8, 1.3, -0.6, 0.4)
  seed = int(np.random.SeedSequence().entropy % 2**31)   # fresh draw each run
  rng = np.random.default_rng(seed)
  x, y = T.sample(jax.random.key(seed), model, 400_000)
  x, y = np.asarray(x), np.asarray(y)
  for trial in range(3):
    w = rng.normal(size=model.dim) * (0.2 + trial)
    eps = [0.0, 0.3, 1.1][trial]
    q = {"l1": np.inf, "l2": 2, "linf": 1}[norm]
    resid = x @ w - y
    loss = (np.abs(resid) + eps * np.linalg.norm(w, q)) ** 2
    mc, se = loss.mean(), loss.std() / math.sqrt(len(loss))
    exact = float(T.adversarial_risk(model, w, eps, norm))
    # 6 sigma: 9 checks (3 norms x 3 trials) fail a correct risk w.p. 9 * 2e-9.
    assert abs(mc - exact) < 6 * se, (seed, mc, exact, se)
    np.testing.assert_allclose(exact, numpy_risk(model, w, eps, norm), rtol=1e-10)
    # Explicit worst-case delta for the first example: |delta|_p = eps, w^T delta = eps n.
    if norm == "l2":
      delta = eps * w / np.linalg.norm(w)
    elif norm == "linf":
      delta = eps * np.sign(w)
    else:
      delta = np.zeros_like(w)
      j = np.argmax(np.abs(w))
      delta[j] = eps * np.sign(w[j])
    delta *= np.sign(resid[0])
    attacked = (w @ (x[0] + delta) - y[0]) ** 2
    np.testing.assert_allclose(attacked, loss[0], rtol=1e-10)


def test_moments_match_monte_carlo():
  """Sample moments of `sample` within 6 standard errors of `moments`, on a fresh draw.

  (x, y) is zero-mean Gaussian, so the raw moment (1/n) sum a_k b_k has variance
  (E[a^2] E[b^2] + E[ab]^2) / n: the band comes from the model (31 entries at 6 sigma fail
  w.p. 31 * 2e-9; the former atol = 0.01 was 2 sigma on the core variance 2.25).
  """
  model = T.CoreSpuriousModel(2, 3, 1.5, 0.5, 0.7, 0.3)
  seed = int(np.random.SeedSequence().entropy % 2**31)
  n = 400_000
  x, y = (np.asarray(a) for a in T.sample(jax.random.key(seed), model, n))
  sigma, c, v = (np.asarray(a) for a in T.moments(model))
  dg = np.diag(sigma)
  assert np.all(np.abs(x.T @ x / n - sigma) <= 6 * np.sqrt((np.outer(dg, dg) + sigma**2) / n)), seed
  assert np.all(np.abs(x.T @ y / n - c) <= 6 * np.sqrt((dg * v + c**2) / n)), seed
  assert abs(y @ y / n - v) <= 6 * np.sqrt(2 * v**2 / n), seed


MODELS = [
    T.CoreSpuriousModel(4, 3, 1.0, 0.7, 0.9, 0.0),
    T.CoreSpuriousModel(2, 5, 1.5, 1.0, -0.7, 0.0),
    T.CoreSpuriousModel(3, 2, 1.0, 2.0, 0.8, 0.3),
    T.CoreSpuriousModel(5, 1, 0.5, 3.0, 0.4, 0.1),
    T.CoreSpuriousModel(3, 0, 1.0, 1.0, 0.5, 0.2),
]


@pytest.mark.parametrize("norm", T.NORMS)
def test_against_independent_solvers(norm):
  """Nelder-Mead on the reduced problem and Powell on the full d-dimensional problem
  (risk evaluated by numpy from the moments) never beat the exact minimizer, and the
  reduced solve agrees on the weights."""
  rng = np.random.default_rng(1)
  for model in MODELS:
    for eps in (0.05, 0.3, 0.8, 1.6):
      got = minimize(model, eps, norm)
      d_c, d_s = model.d_core, model.d_spu

      def reduced(ab):
        w = np.r_[np.full(d_c, ab[0] / math.sqrt(d_c)),
                  np.full(d_s, ab[1] / math.sqrt(max(d_s, 1)))]
        return numpy_risk(model, w, eps, norm)

      best = None
      for start in ([0.0, 0.0], [float(got.a) + 0.3, float(got.b) - 0.2], [1.0, 0.5]):
        res = optimize.minimize(reduced, start, method="Nelder-Mead",
                                options=dict(xatol=1e-11, fatol=1e-15, maxiter=20000))
        best = res if best is None or res.fun < best.fun else best
      assert float(got.risk) <= best.fun * (1 + 1e-9) + 1e-15, (model, eps)
      assert best.fun <= float(got.risk) * (1 + 1e-6) + 1e-12
      np.testing.assert_allclose([float(got.a), float(got.b) if d_s else 0.0],
                                 [best.x[0], best.x[1] if d_s else 0.0], atol=1e-3)
      full = optimize.minimize(lambda w: numpy_risk(model, w, eps, norm),
                               np.asarray(got.w) + 0.05 * rng.normal(size=model.dim),
                               method="Powell", options=dict(xtol=1e-10, ftol=1e-14))
      assert float(got.risk) <= full.fun * (1 + 1e-9) + 1e-15, (model, eps)


@pytest.mark.parametrize("norm", T.NORMS)
def test_minimizer_is_optimal_against_perturbations(norm):
  """Convexity: a global minimizer is not beaten by any nearby point."""
  rng = np.random.default_rng(2)
  for model in MODELS:
    eps = jnp.linspace(0.0, 2.0, 9)
    sol = minimize_eps_grid(model, eps, norm)
    for i, e in enumerate(np.asarray(eps)):
      w = np.asarray(sol.w[i])
      deltas = rng.normal(size=(64, model.dim)) * np.logspace(-7, -1, 64)[:, None]
      risks = risk_batch(model, w + deltas, e, norm)
      assert np.all(np.asarray(risks) >= float(sol.risk[i]) * (1 - 1e-13)), (model, e)


@pytest.mark.parametrize("norm", T.NORMS)
def test_threshold_below_and_above_eps_star(norm):
  for model in MODELS[:2]:
    eps_star = float(T.robust_interpolation_radius(model, norm))
    below = minimize(model, 0.999 * eps_star, norm)
    w0 = np.r_[np.full(model.d_core, 1 / (model.sigma_core * math.sqrt(model.d_core))),
               np.zeros(model.d_spu)]
    np.testing.assert_array_equal(below.w, w0)
    assert float(below.w_spu) == 0.0
    above = minimize(model, 1.01 * eps_star, norm)
    if norm in ("l1", "l2"):
      assert abs(float(above.w_spu)) > 0.0
    # Either way the standard solution stops being optimal just past eps*.
    assert not np.array_equal(np.asarray(above.w), w0)


def test_worked_example():
  """The README's worked example: eps*_2 = 0.2149, eps*_1 = 0.4297, eps*_inf = 0.3210,
  a = 0 at 1.5 eps*."""
  np.testing.assert_allclose(T.robust_interpolation_radius(WORKED, "l2"), 0.2149, atol=1e-4)
  np.testing.assert_allclose(T.robust_interpolation_radius(WORKED, "l1"), 0.4297, atol=1e-4)
  np.testing.assert_allclose(T.robust_interpolation_radius(WORKED, "linf"), 0.3210, atol=1e-4)
  e = 1.5 * float(T.robust_interpolation_radius(WORKED, "linf"))
  sol = minimize(WORKED, e, "linf")
  assert float(sol.a) == 0.0 and float(sol.b) > 0.0


def test_linf_scale_law():
  """w_spu = 0 at every eps iff |rho| sigma_spu <= sigma_core / sqrt(d_core) (s_n = 0)."""
  eps = jnp.linspace(0.0, 3.0, 301)
  d_c = 4
  for s_s in (0.2, 0.4, 0.5, 0.55, 0.6, 1.0, 2.0):
    for rho in (0.5, 0.9, -0.9):
      model = T.CoreSpuriousModel(d_c, 3, 1.0, s_s, rho, 0.0)
      sol = minimize_eps_grid(model, eps, "linf")
      has_spurious = bool(np.any(np.asarray(sol.w_spu) != 0.0))
      law = abs(rho) * s_s > 1.0 / math.sqrt(d_c)
      assert has_spurious == law, (s_s, rho)
      assert bool(T.linf_spurious_phase(model)) == law
      if law:  # the spurious weight switches on exactly at eps*_inf
        eps_star = float(T.robust_interpolation_radius(model, "linf"))
        assert float(minimize(model, 0.999 * eps_star, "linf").w_spu) == 0.0
        assert float(minimize(model, 1.001 * eps_star, "linf").w_spu) != 0.0


@pytest.mark.parametrize("norm", T.NORMS)
def test_collapse_radius(norm):
  for model in MODELS:
    eps0 = float(T.collapse_radius(model, norm))
    at = minimize(model, eps0 * 1.0001, norm)
    assert np.all(np.asarray(at.w) == 0.0)
    np.testing.assert_allclose(at.risk, 1.0 + model.label_noise**2, rtol=1e-14)
    before = minimize(model, eps0 * 0.999, norm)
    assert np.any(np.asarray(before.w) != 0.0)


def test_claim1_spurious_reliance_grows_past_eps_star():
  """Claim 1: without label noise the l1/l2 share is 0 up to eps* and grows past it; with
  label noise eps* = 0, w_spu > 0 at every eps below collapse, and the l2 share grows."""
  eps = jnp.linspace(0.0, 1.2, 25)
  clean = T.CoreSpuriousModel(4, 3, 1.0, 0.7, 0.9, 0.0)
  noisy = clean.replace(label_noise=0.3)
  for norm in ("l1", "l2"):
    sol = minimize_eps_grid(clean, eps, norm)
    share = np.asarray(jax.vmap(lambda w: T.spurious_weight_share(clean, w))(sol.w))
    eps_star = float(T.robust_interpolation_radius(clean, norm))
    below = np.asarray(eps) <= eps_star
    assert np.all(share[below] == 0.0) and np.all(share[~below] > 0.0)
    assert np.all(np.diff(share) >= -1e-12)
    assert float(T.robust_interpolation_radius(noisy, norm)) == 0.0
    sol = minimize_eps_grid(noisy, eps, norm)
    alive = np.asarray(eps) < float(T.collapse_radius(noisy, norm))
    assert np.all(np.asarray(sol.w_spu)[alive] > 0.0)
  share = np.asarray(jax.vmap(lambda w: T.spurious_weight_share(noisy, w))(
      minimize_eps_grid(noisy, eps, "l2").w))
  assert np.all(np.diff(share) > 0.0)


def test_vmap_equals_stacked_and_jit():
  eps = jnp.array([0.0, 0.2, 0.5, 1.0])
  s_s = jnp.array([0.3, 0.7, 1.5, 2.5])
  rho = jnp.array([0.9, -0.5, 0.2, 0.99])
  batched = T.CoreSpuriousModel(4, 3, jnp.ones(4), s_s, rho, jnp.zeros(4))
  for norm in T.NORMS:
    out = jax.jit(jax.vmap(lambda m, e: T.adversarial_minimizer(m, e, norm)))(batched, eps)
    for i in range(4):
      single = T.adversarial_minimizer(
          T.CoreSpuriousModel(4, 3, 1.0, float(s_s[i]), float(rho[i]), 0.0), float(eps[i]),
          norm)
      for field in ("w", "risk", "a", "b"):
        np.testing.assert_allclose(getattr(out, field)[i], getattr(single, field),
                                   rtol=1e-12, atol=1e-15)
    thr = jax.vmap(lambda m: T.robust_interpolation_radius(m, norm))(batched)
    for i in range(4):
      np.testing.assert_allclose(thr[i], T.robust_interpolation_radius(
          T.CoreSpuriousModel(4, 3, 1.0, float(s_s[i]), float(rho[i]), 0.0), norm))


def test_gradients_finite_at_kinks():
  model = WORKED
  w0 = jnp.r_[jnp.full(4, 0.5), jnp.zeros(3)]
  for norm in T.NORMS:
    for w in (jnp.zeros(7), w0, jnp.r_[jnp.full(4, 0.3), jnp.zeros(3)]):
      for eps in (0.0, 0.3):
        g = jax.grad(T.adversarial_risk, argnums=1)(model, w, eps, norm)
        assert np.all(np.isfinite(np.asarray(g))), (norm, w, eps)
    # Gradient in the model fields and eps, through the exact minimizer, is finite too.
    g = jax.grad(lambda e: minimize(model, e, norm).risk)(0.4)
    assert np.isfinite(float(g))


def test_shift_gap_and_weight_share():
  model = WORKED
  w0 = T.standard_minimizer(model).w
  for rho_test in (0.0, -0.9, 0.3):
    assert float(T.shift_gap(model, w0, rho_test)) == 0.0
  assert float(T.spurious_weight_share(model, w0)) == 0.0
  assert float(T.spurious_weight_share(model, jnp.zeros(7))) == 0.0
  adv = minimize(model, 0.6, "l2")
  assert float(adv.w_spu) > 0
  assert float(T.shift_gap(model, adv.w, 0.0)) > 0
  assert float(T.shift_gap(model, adv.w, -0.9)) > float(T.shift_gap(model, adv.w, 0.0))
  share = float(T.spurious_weight_share(model, adv.w))
  np.testing.assert_allclose(share, np.linalg.norm(adv.w[4:]) / np.linalg.norm(adv.w))


@pytest.mark.parametrize("kwargs, field", [
    (dict(sigma_core=-1.0), "sigma_core"),
    (dict(sigma_spu=0.0), "sigma_spu"),
    (dict(rho=1.2), "rho"),
    (dict(rho=float("nan")), "rho"),
    (dict(label_noise=-0.1), "label_noise"),
    (dict(d_core=0), "d_core"),
    (dict(d_spu=-1), "d_spu"),
    (dict(sigma_core=float("inf")), "sigma_core"),
])
def test_invalid_model_raises(kwargs, field):
  args = dict(d_core=4, d_spu=3, sigma_core=1.0, sigma_spu=0.7, rho=0.9, label_noise=0.0)
  args.update(kwargs)
  model = T.CoreSpuriousModel(**args)
  with pytest.raises(ValueError, match=field):
    T.adversarial_minimizer(model, 0.1, "l2")
  with pytest.raises(ValueError, match=field):
    T.adversarial_risk(model, jnp.zeros(model.d_core + max(model.d_spu, 0)), 0.1, "l2")


def test_invalid_arguments_raise():
  with pytest.raises(ValueError, match="eps"):
    T.adversarial_minimizer(WORKED, -0.1, "l2")
  with pytest.raises(ValueError, match="eps"):
    T.adversarial_minimizer(WORKED, float("nan"), "l2")
  with pytest.raises(ValueError, match="norm"):
    T.adversarial_minimizer(WORKED, 0.1, "l3")
  with pytest.raises(ValueError, match="w must have shape"):
    T.adversarial_risk(WORKED, jnp.zeros(6), 0.1, "l2")
  with pytest.raises(ValueError, match="w must be finite"):
    T.adversarial_risk(WORKED, jnp.full(7, jnp.nan), 0.1, "l2")
  with pytest.raises(ValueError, match="rho_test"):
    T.shift_gap(WORKED, jnp.zeros(7), 1.5)
  with pytest.raises(ValueError, match="n must be"):
    T.sample(jax.random.key(0), WORKED, 0)
  with pytest.raises(ValueError, match="eps"):  # batched concrete inputs are checked too
    T.adversarial_risk(WORKED, jnp.zeros(7), jnp.array([0.1, -1.0]), "l2")


def test_float32_mode_is_accurate_to_single_precision():
  with jax.enable_x64(False):
    sol = T.adversarial_minimizer(WORKED, 0.4, "l2")
    assert sol.w.dtype == jnp.float32
  ref = [c for c in _load_cases() if _model(c) == WORKED and c["norm"] == "l2"
         and c["eps"] == 0.4][0]
  np.testing.assert_allclose(float(sol.risk), ref["risk"], rtol=1e-5)


def test_degenerate_rho_one_without_noise_is_rejected():
  with pytest.raises(ValueError, match="rho"):
    T.adversarial_minimizer(T.CoreSpuriousModel(4, 3, 1.0, 0.7, 1.0, 0.0), 0.3, "l2")
  with pytest.raises(ValueError, match="rho"):
    T.adversarial_minimizer(T.CoreSpuriousModel(4, 3, 1.0, 0.7, -1.0, 0.0), 0.3, "l1")


@pytest.mark.parametrize("dims", [(1, 1), (100, 1000)])
def test_wide_parameter_ranges_optimal_and_finite(dims):
  """Random models over six orders of magnitude of scales and radii, |rho| up to 1 (with
  label noise): finite output, and no perturbation of (a, b) lowers the risk."""
  d_c, d_s = dims
  rng = np.random.default_rng(d_c + d_s)
  n = 400
  eps = 10 ** rng.uniform(-4, 1, n)
  s_c, s_s = 10 ** rng.uniform(-2, 2, n), 10 ** rng.uniform(-3, 3, n)
  rho = rng.uniform(-1, 1, n)
  rho[:20] = 1.0
  rho[20:40] = -1.0
  s_n = np.where(rng.uniform(size=n) < 0.5, 0.0, 10 ** rng.uniform(-3, 1, n))
  s_n[:40] = 10 ** rng.uniform(-3, 0, 40)
  for norm in T.NORMS:
    def check(e, c, s, r, sn, key):
      model = T.CoreSpuriousModel(d_c, d_s, c, s, r, sn)
      sol = T.adversarial_minimizer(model, e, norm)
      step = jax.random.normal(key, (32, 2)) * jnp.logspace(-6, -1, 32)[:, None]
      step = step * (jnp.abs(sol.a) + jnp.abs(sol.b) + 1.0 / c)

      def risk(ab):
        w = jnp.concatenate([jnp.full(d_c, ab[0] / math.sqrt(d_c)),
                             jnp.full(d_s, ab[1] / math.sqrt(max(d_s, 1)))])
        return T.adversarial_risk(model, w, e, norm)
      others = jax.vmap(risk)(jnp.stack([sol.a, sol.b])[None, :] + step)
      return sol.w, sol.risk, jnp.min(others) / sol.risk - 1.0
    w, risk, gain = jax.jit(jax.vmap(check))(eps, s_c, s_s, rho, s_n,
                                             jax.random.split(jax.random.key(0), n))
    assert np.all(np.isfinite(np.asarray(w))) and np.all(np.isfinite(np.asarray(risk)))
    assert np.all(np.asarray(gain) >= -1e-12), (norm, np.min(np.asarray(gain)))


@pytest.mark.parametrize("norm", ["l1", "linf"])
def test_line_search_solver_matches_path_bisection(norm):
  """The l1 / l_inf solver (one convex line search per smooth piece) against the
  independent 64-step bisection on the path multiplier, on fresh random models: the same
  risk to round-off, neither ever lower by more, and the same exact zeros."""
  seed = int(np.random.SeedSequence().entropy % 2**32)
  rng = np.random.default_rng(seed)
  n = 1000
  eps = 10 ** rng.uniform(-3, 1, n)
  s_c, s_s = 10 ** rng.uniform(-1, 1, n), 10 ** rng.uniform(-2, 2, n)
  rho = rng.uniform(-0.99, 0.99, n)
  s_n = np.where(rng.uniform(size=n) < 0.5, 0.0, 10 ** rng.uniform(-3, 0, n))

  def both(e, c, s, r, sn):
    red = T._reduce(T.CoreSpuriousModel(4, 3, c, s, r, sn))
    return (T._minimize_reduced(red, e, norm, True),
            T._minimize_reduced_bisection(red, e, norm, True))
  (a, b, risk), (a_ref, b_ref, risk_ref) = jax.jit(jax.vmap(both))(eps, s_c, s_s, rho, s_n)
  rel = np.asarray(risk) / np.asarray(risk_ref) - 1.0
  assert np.all(np.abs(rel) <= 1e-12), (seed, rel.min(), rel.max())
  np.testing.assert_allclose(a, a_ref, rtol=1e-6, atol=1e-9)
  np.testing.assert_allclose(b, b_ref, rtol=1e-6, atol=1e-9)
  np.testing.assert_array_equal(np.asarray(b) == 0.0, np.asarray(b_ref) == 0.0)

"""Tests of spurjax.autoattack: exactness on linear models, invariants, validation."""

import functools

import hypothesis
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import strategies as st

from spurjax import attacks
from spurjax import autoattack as aa

NORMS = ("linf", "l2", "l1")


def _in_ball(x_adv, x, norm, eps):
  """Exactly in the ball: the float32 images' distance, computed in float64, against eps
  itself (no slack: the radius is rounded down to float32, never up)."""
  return _norm64(np.asarray(x_adv, np.float64) - np.asarray(x, np.float64), norm) <= eps


def _norm64(d, norm):
  d = np.asarray(d, np.float64).reshape(d.shape[0], -1)
  return {"linf": np.abs(d).max(1), "l2": np.sqrt((d * d).sum(1)),
          "l1": np.abs(d).sum(1)}[norm]


def _images(key, shape):
  """Uniform images with a quarter of the pixels saturated at 0 or 1, so the box binds."""
  k1, k2, k3 = jax.random.split(key, 3)
  x = jax.random.uniform(k1, shape)
  sat = jax.random.uniform(k2, shape) < 0.25
  return jnp.where(sat, jnp.round(jax.random.uniform(k3, shape)), x)


# ------------------------------------------------------------ exact min-norm hyperplane step


@pytest.mark.parametrize("norm", NORMS)
def test_min_norm_step_is_exact(norm):
  """FAB's step reaches w.d = c with the smallest norm: the exact worst case at that radius
  (`linear_worst_case`, computed independently) attains exactly c."""
  b, d = 64, 48
  key = jax.random.key(11)
  x = _images(key, (b, d, 1, 1)).reshape(b, d)
  w = jax.random.normal(jax.random.fold_in(key, 1), (b, d))
  rho = jax.random.uniform(jax.random.fold_in(key, 2), (b,), minval=0.05, maxval=1.0)
  rho = rho * {"linf": 0.3, "l2": 2.0, "l1": 6.0}[norm]
  ref = jax.vmap(lambda wi, xi, r: attacks.linear_worst_case(
      wi[None, :, None, None], xi[None, :, None, None], norm=norm, eps=r))(w, x, rho)
  c = jnp.sum(w * ref.reshape(b, d), axis=1)
  got = aa._min_norm_reach(w, c, x, norm)
  np.testing.assert_allclose(np.sum(np.asarray(w * got), 1), np.asarray(c), rtol=1e-4)
  # Never shorter than the exact minimum, and not longer either.
  np.testing.assert_allclose(_norm64(got, norm), np.asarray(rho), rtol=1e-4)
  xg = np.asarray(x + got)
  assert xg.min() >= -1e-6 and xg.max() <= 1 + 1e-6


# ------------------------------------------------------- linear classifiers: exact robustness

N_LIN, K_LIN, LIN_SHAPE = 500, 10, (4, 4, 3)


def _linear_classifier(seed):
  kx, kw, kb, ky = jax.random.split(jax.random.key(seed), 4)
  x = _images(kx, (N_LIN,) + LIN_SHAPE)
  w = jax.random.normal(kw, (K_LIN,) + LIN_SHAPE)
  b = jax.random.normal(kb, (K_LIN,))
  logits = lambda p, xa: jnp.einsum("bhwc,khwc->bk", xa, p[0]) + p[1][None]
  y = jnp.argmax(logits((w, b), x), -1)
  # One label in ten is wrong: those points must come back unchanged.
  wrong = jax.random.uniform(ky, (N_LIN,)) < 0.1
  y = jnp.where(wrong, (y + 1) % K_LIN, y)
  return x, y, (w, b), logits


@functools.partial(jax.jit, static_argnames="norm")
def _exact_robust_jit(x, y, w, b, eps, norm):
  def margin_to(j):
    wd = w[y] - w[j][None]
    d = attacks.linear_worst_case(-wd, x, norm=norm, eps=eps)
    m = jnp.sum(wd * (x + d), axis=(1, 2, 3)) + b[y] - b[j]
    return (m > 0) | (y == j)
  z = jnp.einsum("bhwc,khwc->bk", x, w) + b[None]
  return jnp.all(jax.vmap(margin_to)(jnp.arange(K_LIN)), axis=0) & (jnp.argmax(z, -1) == y)


def _exact_robust(x, y, params, norm, eps):
  """Robust iff for every wrong class j the exact minimum over ball and box of the margin
  z_y - z_j (a linear function: `linear_worst_case`) stays positive."""
  return np.asarray(_exact_robust_jit(x, y, *params, jnp.float32(eps), norm))


def _radius_for(x, y, params, norm, target=0.5):
  """Bisection on eps for an exact robust accuracy near `target` (on 100 of the points)."""
  lo, hi = 0.0, {"linf": 0.3, "l2": 5.0, "l1": 50.0}[norm]
  for _ in range(8):
    mid = 0.5 * (lo + hi)
    acc = _exact_robust(x[:100], y[:100], params, norm, mid).mean()
    lo, hi = (mid, hi) if acc > target else (lo, mid)
  return 0.5 * (lo + hi)


@pytest.mark.parametrize("norm", NORMS)
def test_autoattack_is_exact_on_linear_classifiers(norm):
  """Default `autoattack` on random 10-class linear classifiers (box binding) finds every
  non-robust point: its robust accuracy equals the exact one within 1 example in 500, and is
  never below it (every returned point is in the ball and the box). With default arguments:
  in the ball, in the box, misclassified points untouched, and (l2, the cheapest second
  run) the same key gives the same result."""
  seed = {"linf": 0, "l2": 1, "l1": 2}[norm]
  x, y, params, logits = _linear_classifier(seed)
  eps = _radius_for(x, y, params, norm, target=float(np.random.default_rng(seed).uniform(
      0.35, 0.65)))
  exact = _exact_robust(x, y, params, norm, eps)
  assert 0.3 <= exact.mean() <= 0.7
  x_adv, counts = aa.autoattack(jax.random.key(seed), logits, x, y, norm=norm, eps=eps,
                                params=params, return_counts=True)
  rob = np.asarray(jnp.argmax(logits(params, x_adv), -1) == y)
  assert rob.sum() == counts["robust"]
  assert _in_ball(x_adv, x, norm, eps).all()
  assert x_adv.min() >= 0.0 and x_adv.max() <= 1.0
  assert not (~rob & exact).any()  # never below the exact value
  assert (rob & ~exact).sum() <= N_LIN // 500, (rob.mean(), exact.mean(), counts)
  clean_wrong = np.asarray(jnp.argmax(logits(params, x), -1) != y)
  np.testing.assert_array_equal(x_adv[clean_wrong], np.asarray(x)[clean_wrong])
  if norm == "l2":
    again = aa.autoattack(jax.random.key(seed), logits, x, y, norm=norm, eps=eps,
                          params=params)
    np.testing.assert_array_equal(x_adv, again)


# ------------------------------------------------------- linear regression: worst-case loss


def _regression_problem(norm, seed):
  """Linear regression on box-binding images: `(x, t, loss, exact worst-case loss)`.

  The exact worst case is the better side of +-w (`linear_worst_case` of each): with the box
  binding the two sides differ, so the side of the residual's sign is not always the best.
  """
  n, shape = 64, (8, 8, 3)
  key = jax.random.key(seed)
  x = _images(key, (n,) + shape)
  w = jax.random.normal(jax.random.fold_in(key, 1), shape)
  eps = {"linf": 8 / 255, "l2": 0.5, "l1": 4.0}[norm]
  f = lambda xa: jnp.sum(w[None] * xa, axis=(1, 2, 3))
  up = jnp.sum(w[None] * attacks.linear_worst_case(w, x, norm=norm, eps=eps), axis=(1, 2, 3))
  dn = -jnp.sum(w[None] * attacks.linear_worst_case(-w, x, norm=norm, eps=eps), axis=(1, 2, 3))
  # Residuals of a model that errs: normal, on the scale of the attack's effect.
  r = jax.random.normal(jax.random.fold_in(key, 2), (n,)) * 0.3 * jnp.mean(up)
  t = f(x) - r
  loss = lambda xa, t: (f(xa) - t) ** 2
  worst = np.asarray(jnp.maximum((r + up) ** 2, (r - dn) ** 2))
  return x, t, eps, loss, worst


def _check_regression(x_adv, x, t, eps, loss, worst, norm, frac):
  got = np.asarray(loss(x_adv, t))
  assert (_norm64(x_adv - np.asarray(x, np.float64), norm) <= eps * (1 + 1e-6)).all()
  assert (got >= frac * worst).all(), np.sort(got / worst)[:5]
  assert (got <= worst * (1 + 1e-4)).all()


@pytest.mark.parametrize("norm", NORMS)
def test_apgd_reaches_regression_worst_case(norm):
  """Squared loss of a linear regression: every example reaches >= 0.999 of the exact
  worst-case loss (the better side of +-w, box binding) with default `apgd`."""
  x, t, eps, loss, worst = _regression_problem(norm, 100 + NORMS.index(norm))
  x_adv = jax.jit(functools.partial(aa.apgd, loss_fn=loss, norm=norm, eps=eps))(
      jax.random.key(0), x=x, y=t)
  _check_regression(x_adv, x, t, eps, loss, worst, norm, 0.999)


@pytest.mark.parametrize("norm", NORMS)
def test_default_pgd_reaches_regression_worst_case(norm):
  """The same with default `pgd` (random start, 50 steps), on fresh problems: >= 0.99 of
  the exact worst case on every example (the random start may flip the residual's sign, and
  the box makes the sides unequal, so both ends of the first step must be looked at)."""
  x, t, eps, loss, worst = _regression_problem(norm, 200 + NORMS.index(norm))
  x_adv = jax.jit(functools.partial(attacks.pgd, loss_fn=loss, norm=norm, eps=eps, steps=50))(
      jax.random.key(1), x=x, y=t)
  _check_regression(x_adv, x, t, eps, loss, worst, norm, 0.99)


# ------------------------------------------------------------ invariants on a small network

SHAPE, K = (6, 6, 6, 3), 5


def _net(params, x):
  w1, w2 = params
  return jnp.tanh(x.reshape(x.shape[0], -1) @ w1 - 1.0) @ w2


def _net_params(seed):
  k1, k2 = jax.random.split(jax.random.key(seed))
  d = int(np.prod(SHAPE[1:]))
  return (jax.random.normal(k1, (d, 16)) / np.sqrt(d) * 4.0, jax.random.normal(k2, (16, K)))


@pytest.mark.parametrize("norm", NORMS)
@hypothesis.settings(max_examples=3, deadline=None)
@hypothesis.given(seed=st.integers(0, 2**31 - 1), eps_frac=st.floats(0.0, 1.0))
def test_autoattack_invariants(norm, seed, eps_frac):
  """In the ball and the box, misclassified points untouched, same key same result, and a
  second model of the same architecture (new parameters) uses the same compilation. The
  "fast" version keeps this test cheap; the exactness test above checks all four for the
  default ("standard") one. l_inf is in the ball exactly (clips, radius rounded down);
  l1 and l2 up to the float32 rounding of their projection's sum (1e-6 relative)."""
  eps = eps_frac * {"linf": 16 / 255, "l2": 1.0, "l1": 8.0}[norm]
  x = _images(jax.random.key(seed), SHAPE)
  params = _net_params(seed % 7)
  y = jax.random.randint(jax.random.key(seed + 1), (SHAPE[0],), 0, K)
  run = functools.partial(aa.autoattack, jax.random.key(seed), _net, x, y, norm=norm, eps=eps,
                          params=params, return_counts=True, version="fast")
  x_adv, counts = run()
  x_np = np.asarray(x)
  assert np.isfinite(x_adv).all() and x_adv.min() >= 0.0 and x_adv.max() <= 1.0
  slack = 0.0 if norm == "linf" else 1e-6
  assert (_norm64(x_adv - x_np.astype(np.float64), norm) <= eps * (1 + slack)).all()
  wrong = np.asarray(jnp.argmax(_net(params, x), -1) != y)
  np.testing.assert_array_equal(x_adv[wrong], x_np[wrong])
  assert counts["clean_errors"] == wrong.sum()
  assert sum(counts[a] for a in aa.ATTACK_NAMES) + counts["robust"] + wrong.sum() == SHAPE[0]
  x_again, _ = run()
  np.testing.assert_array_equal(x_adv, x_again)
  before = aa._compiled.cache_info().currsize
  aa.autoattack(jax.random.key(seed), _net, x, y, norm=norm, eps=eps,
                params=_net_params(seed % 7 + 1), version="fast")
  assert aa._compiled.cache_info().currsize == before


@hypothesis.settings(max_examples=2, deadline=None)
@hypothesis.given(seed=st.integers(0, 2**31 - 1), u=st.floats(0.03, 0.1))
def test_linf_ball_exact_when_float32_rounds_the_radius_up(seed, u):
  """A radius just below a float32 (as 24/255 is): rounded to nearest it would grow by up
  to half an ulp, and points on the l_inf sphere would lie outside the ball of radius eps.
  Every point must be inside exactly (same compilation as the invariants test)."""
  f = np.float32(u)
  eps = float(f) - 0.25 * float(np.spacing(f))
  assert float(np.float32(eps)) > eps
  x = _images(jax.random.key(seed), SHAPE)
  params = _net_params(seed % 7)
  y = jnp.argmax(_net(params, x), -1)
  x_adv = aa.autoattack(jax.random.key(seed), _net, x, y, norm="linf", eps=eps,
                        params=params, version="fast")
  assert _in_ball(x_adv, x, "linf", eps).all(), _norm64(x_adv - np.asarray(x), "linf") - eps


@hypothesis.settings(max_examples=50, deadline=None)
@hypothesis.given(eps=st.floats(0.0, 1e3, allow_subnormal=False))
def test_radius_below_is_the_largest_float32_not_above(eps):
  e = aa._radius_below(eps, np.float32)
  assert e.dtype == np.float32 and float(e) <= eps
  assert float(np.nextafter(e, np.float32(np.inf))) > eps


@pytest.mark.parametrize("field", ["apgd_steps", "n_targets", "square_queries"])
def test_attack_config_bad_field_raises_naming_it(field):
  kw = dict(apgd_steps=1, apgd_t_steps=1, n_targets=1, fab_steps=1, fab_targets=1,
            square_queries=1)
  kw[field] = -1
  with pytest.raises(ValueError, match=rf"^{field}:"):
    aa.AttackConfig(**kw)


# ---------------------------------------------------------------------------- validation


@pytest.mark.parametrize("kwargs,name", [
    ({"eps": -0.1}, "eps"),
    ({"norm": "l3"}, "norm"),
    ({"version": "plus"}, "version"),
    ({"x": np.full(SHAPE, 1.5, np.float32)}, "x"),
    ({"y": np.full(SHAPE[0], K, np.int32)}, "y"),
    ({"batch_size": 0}, "batch_size"),
])
def test_autoattack_bad_input_raises_naming_argument(kwargs, name):
  args = {"x": np.full(SHAPE, 0.5, np.float32), "y": np.zeros(SHAPE[0], np.int32),
          "norm": "linf", "eps": 0.1, "params": _net_params(0)}
  args.update(kwargs)
  with pytest.raises(ValueError, match=rf"^{name}:"):
    aa.autoattack(jax.random.key(0), _net, **args)


@pytest.mark.parametrize("kwargs,name", [
    ({"eps": -0.1}, "eps"), ({"norm": "l0"}, "norm"), ({"steps": -1}, "steps"),
    ({"restarts": 0}, "restarts"), ({"l1_k_init": 0.0}, "l1_k_init")])
def test_apgd_bad_input_raises_naming_argument(kwargs, name):
  args = {"norm": "l2", "eps": 0.1}
  args.update(kwargs)
  loss = lambda xa, ya: jnp.sum(xa, axis=(1, 2, 3))
  with pytest.raises(ValueError, match=rf"^{name}:"):
    aa.apgd(jax.random.key(0), loss, np.full(SHAPE, 0.5, np.float32), None, **args)


@pytest.mark.parametrize("norm", NORMS)
def test_default_pgd_finds_the_far_side_when_the_box_blocks_the_near_one(norm):
  """The residual's side is not always the worst: with most pixels saturated against +w the
  loss grows little that way, and far more the other way. Default `pgd` (whose random start
  and first gradient point to +w) must still reach >= 0.99 of the exact worst case."""
  n, shape = 64, (8, 8, 3)
  key = jax.random.key(300 + NORMS.index(norm))
  k1, k2, k3, k4 = jax.random.split(key, 4)
  w = jax.random.normal(k1, shape)
  blocked = jax.random.uniform(k2, (n,) + shape) < 0.97
  x = jnp.where(blocked, (w > 0).astype(jnp.float32)[None], jax.random.uniform(k3, (n,) + shape))
  eps = {"linf": 8 / 255, "l2": 0.5, "l1": 4.0}[norm]
  f = lambda xa: jnp.sum(w[None] * xa, axis=(1, 2, 3))
  up = jnp.sum(w[None] * attacks.linear_worst_case(w, x, norm=norm, eps=eps), axis=(1, 2, 3))
  dn = -jnp.sum(w[None] * attacks.linear_worst_case(-w, x, norm=norm, eps=eps), axis=(1, 2, 3))
  # r > 0 on the scale of the near side's effect: the gradient points to +w throughout.
  r = jnp.abs(jax.random.normal(k4, (n,))) * jnp.mean(up)
  t = f(x) - r
  loss = lambda xa, t: (f(xa) - t) ** 2
  worst = np.asarray(jnp.maximum((r + up) ** 2, (r - dn) ** 2))
  assert (worst > 1.5 * np.asarray((r + up) ** 2)).mean() > 0.5  # the far side matters
  x_adv = jax.jit(functools.partial(attacks.pgd, loss_fn=loss, norm=norm, eps=eps, steps=50))(
      jax.random.key(2), x=x, y=t)
  _check_regression(x_adv, x, t, eps, loss, worst, norm, 0.99)

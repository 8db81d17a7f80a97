"""Tests of spurjax.attacks: ball/box membership, monotone loss, linear oracles, validation."""

import functools

import hypothesis
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import strategies as st

from spurjax import attacks
from spurjax import norms

NORMS = norms.NORMS
SHAPE = (4, 8, 8, 3)
K = 3
# Radii that matter in practice per norm, used as the upper end of the drawn eps.
EPS_MAX = {"linf": 16 / 255, "l2": 2.0, "l1": 20.0}


def _net_params():
  k1, k2 = jax.random.split(jax.random.key(42))
  d = int(np.prod(SHAPE[1:]))
  return (jax.random.normal(k1, (d, 16)) / np.sqrt(d) * 4.0,
          jax.random.normal(k2, (16, K)))


def _logits(x):
  """A fixed small nonlinear classifier, so the loss surface is not linear."""
  w1, w2 = _net_params()
  h = jnp.tanh(x.reshape(x.shape[0], -1) @ w1 - 2.0)
  return h @ w2


LOSS = attacks.make_loss_fn(_logits)


@functools.lru_cache(maxsize=None)
def _attack(norm, random_start):
  """One compilation per (norm, random_start); eps and data are dynamic."""
  return jax.jit(functools.partial(attacks.pgd, loss_fn=LOSS, norm=norm, steps=5,
                                   random_start=random_start))


_loss_jit = jax.jit(LOSS)


def _images(seed):
  """Images in [0, 1] with a quarter of the pixels saturated at 0 or 1 (box corners)."""
  rng = np.random.default_rng(seed)
  x = rng.uniform(0, 1, SHAPE).astype(np.float32)
  sat = rng.uniform(size=SHAPE) < 0.25
  x[sat] = rng.integers(0, 2, size=sat.sum()).astype(np.float32)
  y = rng.integers(0, K, SHAPE[0]).astype(np.int32)
  return x, y


def _norm64(d, norm):
  d = np.asarray(d, np.float64).reshape(d.shape[0], -1)
  return {"linf": np.abs(d).max(1), "l2": np.sqrt((d * d).sum(1)),
          "l1": np.abs(d).sum(1)}[norm]


@pytest.mark.parametrize("random_start", [True, False])
@pytest.mark.parametrize("norm", NORMS)
@hypothesis.settings(max_examples=8, deadline=None)
@hypothesis.given(seed=st.integers(0, 2**31 - 1),
                  eps_frac=st.one_of(st.just(0.0), st.just(1e-6), st.floats(0.0, 1.0)))
def test_pgd_in_ball_and_box(norm, random_start, seed, eps_frac):
  x, y = _images(seed)
  eps = np.float32(eps_frac * EPS_MAX[norm])
  x_adv = np.asarray(_attack(norm, random_start)(jax.random.key(seed), x=x, y=y, eps=eps))
  assert np.isfinite(x_adv).all()
  assert x_adv.min() >= 0.0 and x_adv.max() <= 1.0
  # Differences in float64 of the float32 values are exact: no slack for rounding.
  n = _norm64(x_adv - np.asarray(x, np.float64), norm)
  assert (n <= eps * (1 + 1e-6)).all(), (n, eps)
  if eps == 0:
    np.testing.assert_array_equal(x_adv, x)
  if not random_start:
    clean, adv = np.asarray(_loss_jit(x, y)), np.asarray(_loss_jit(x_adv, y))
    assert (adv >= clean).all(), (adv, clean)


@pytest.mark.parametrize("norm", NORMS)
def test_pgd_increases_loss(norm):
  """A real attack: five steps from zero raise the mean loss well above clean."""
  x, y = _images(7)
  x_adv = _attack(norm, False)(jax.random.key(0), x=x, y=y, eps=EPS_MAX[norm] / 2)
  assert float(jnp.mean(_loss_jit(x_adv, y))) > 1.2 * float(jnp.mean(_loss_jit(x, y)))


@pytest.mark.parametrize("norm", NORMS)
def test_zero_gradient_gives_finite_point(norm):
  """A flat loss has g = 0: the guarded normalisations must not divide by 0."""
  x, y = _images(3)
  flat = lambda xa, ya: 0.0 * jnp.sum(xa, axis=(1, 2, 3))
  grads = jax.grad(lambda xa: jnp.sum(flat(xa, y)))(jnp.asarray(x))
  assert not np.asarray(grads).any()
  x_adv = attacks.pgd(jax.random.key(1), flat, x, y, norm=norm, eps=EPS_MAX[norm],
                      steps=2)
  assert np.isfinite(np.asarray(x_adv)).all()
  assert (_norm64(np.asarray(x_adv) - np.asarray(x, np.float64), norm)
          <= EPS_MAX[norm] * (1 + 1e-6)).all()


@pytest.mark.parametrize("norm", NORMS)
def test_tiny_gradient_still_gives_full_steps(norm):
  """A gradient of size ~1e-25 (squares underflow in float32) is still a direction: a linear
  loss is pushed to the sphere, as it would be at any scale."""
  x = np.full(SHAPE, 0.5, np.float32)
  w = jax.random.normal(jax.random.key(0), SHAPE[1:])
  tiny = lambda xa, ya: 1e-25 * jnp.sum(w[None] * xa, axis=(1, 2, 3))
  eps = {"linf": 0.1, "l2": 0.5, "l1": 2.0}[norm]
  x_adv = attacks.pgd(jax.random.key(0), tiny, x, np.zeros(SHAPE[0]), norm=norm, eps=eps,
                      steps=5, random_start=False)
  np.testing.assert_allclose(_norm64(np.asarray(x_adv) - x, norm), eps, rtol=1e-3)


@pytest.mark.parametrize("norm", NORMS)
def test_projection_is_exact(norm):
  """The projection onto ball and box satisfies the variational inequality of a projection:
  <v - P(v), z - P(v)> <= 0 for every feasible z (independent of how P is computed)."""
  rng = np.random.default_rng(0)
  x = rng.uniform(0, 1, (6, 5, 5, 3)).astype(np.float32)
  x[:, 0] = 1.0
  eps = {"linf": 0.1, "l2": 1.0, "l1": 4.0}[norm]
  v = jnp.asarray(rng.normal(0, 0.6, x.shape).astype(np.float32))
  p = np.asarray(attacks._NORMS[norm].project(v, jnp.asarray(x), jnp.float32(eps)),
                 np.float64)
  v = np.asarray(v, np.float64)
  assert (_norm64(p, norm) <= eps * (1 + 1e-6)).all()
  assert ((x + p >= -1e-7) & (x + p <= 1 + 1e-7)).all()
  for _ in range(50):
    z = rng.normal(0, 1, x.shape)
    z *= eps * rng.uniform() / _norm64(z, norm)[:, None, None, None]
    z = np.clip(x + z, 0, 1) - x  # still in the ball: clipping shrinks every coordinate
    inner = ((v - p) * (z - p)).reshape(len(x), -1).sum(1)
    assert (inner <= 1e-4 * eps).all(), inner


def test_projection_l1_equals_duchi_without_box():
  """Away from the box the l1 projection is Duchi et al.'s sort-based formula."""
  rng = np.random.default_rng(1)
  x = np.full((3, 4, 4, 2), 0.5, np.float32)
  v = rng.normal(0, 0.1, x.shape).astype(np.float32)
  eps = 0.5
  p = np.asarray(attacks._NORMS["l1"].project(jnp.asarray(v), jnp.asarray(x), eps))
  for vi, pi in zip(v.reshape(3, -1).astype(np.float64), p.reshape(3, -1)):
    mu = np.sort(np.abs(vi))[::-1]
    css = np.cumsum(mu)
    rho = np.nonzero(mu * np.arange(1, len(mu) + 1) > css - eps)[0][-1] + 1
    theta = (css[rho - 1] - eps) / rho
    ref = np.sign(vi) * np.maximum(np.abs(vi) - theta, 0)
    np.testing.assert_allclose(pi, ref, atol=1e-6)


# ------------------------------------------------------------------------- linear oracles

LIN_SHAPE = (8, 12, 12, 3)
LIN_EPS = {"linf": 4 / 255, "l2": 0.5, "l1": 8.0}


def _linear_problem():
  kx, kw = jax.random.split(jax.random.key(0))
  x = jax.random.uniform(kx, LIN_SHAPE)
  w = jax.random.normal(kw, LIN_SHAPE[1:])
  return x, w


def test_linear_oracle_closed_form_without_box():
  """Without the box, max w.delta over the p-ball is eps ||w||_q (q the dual exponent)."""
  x, w = _linear_problem()
  wf = np.asarray(w, np.float64).ravel()
  dual = {"linf": np.abs(wf).sum(), "l2": np.sqrt((wf * wf).sum()), "l1": np.abs(wf).max()}
  for norm, eps in LIN_EPS.items():
    d = attacks.linear_worst_case(w, x, norm=norm, eps=eps, box=None)
    val = np.asarray(jnp.sum(w[None] * d, axis=(1, 2, 3)))
    np.testing.assert_allclose(val, eps * dual[norm], rtol=1e-5)


@pytest.mark.parametrize("norm", NORMS)
def test_linear_oracle_beats_random_feasible_points(norm):
  x, w = _linear_problem()
  eps = LIN_EPS[norm]
  d = np.asarray(attacks.linear_worst_case(w, x, norm=norm, eps=eps), np.float64)
  xn = np.asarray(x, np.float64)
  assert (_norm64(d, norm) <= eps * (1 + 1e-5)).all()
  assert ((xn + d >= -1e-6) & (xn + d <= 1 + 1e-6)).all()
  best = (np.asarray(w, np.float64) * d).reshape(len(d), -1).sum(1)
  rng = np.random.default_rng(0)
  for _ in range(20):
    z = rng.laplace(size=d.shape) * np.sign(np.asarray(w))  # biased towards +w
    z *= eps / _norm64(z, norm)[:, None, None, None]
    z = np.clip(xn + z, 0, 1) - xn
    assert ((np.asarray(w) * z).reshape(len(d), -1).sum(1) <= best + 1e-5).all()


@functools.lru_cache(maxsize=None)
def _linear_attack(norm, kind):
  x, w = _linear_problem()
  f = lambda xa: jnp.sum(w[None] * xa, axis=(1, 2, 3)) - jnp.sum(w * x[0])
  if kind == "classifier":  # logistic loss of the margin y f(x), y in {-1, +1}
    loss = lambda xa, y: jax.nn.softplus(-y * f(xa))
  else:  # squared error of a linear regression
    loss = lambda xa, t: (f(xa) - t) ** 2
  atk = jax.jit(functools.partial(attacks.pgd, loss_fn=loss, norm=norm, steps=100,
                                  random_start=False))
  return f, loss, atk


@pytest.mark.parametrize("constant_step", [False, True])
@pytest.mark.parametrize("kind", ["classifier", "regression"])
@pytest.mark.parametrize("norm", NORMS)
def test_pgd_reaches_linear_worst_case(norm, kind, constant_step):
  """PGD (100 steps, zero start) reaches >= 99% of the exact worst-case loss per example,
  with the default schedule (first step to the vertex) and with constant steps `2.5 eps /
  steps` from zero, which exercise the steepest-ascent directions themselves (the l1 SLIDE
  step used to freeze at an equal split of its top coordinates)."""
  x, w = _linear_problem()
  eps = LIN_EPS[norm]
  f, loss, atk = _linear_attack(norm, kind)
  if kind == "classifier":
    y = jnp.where(jnp.arange(LIN_SHAPE[0]) % 2 == 0, 1.0, -1.0)
    d = attacks.linear_worst_case(-y[:, None, None, None] * w[None], x, norm=norm, eps=eps)
    worst = loss(x + d, y)
  else:
    # The squared loss has a local maximum on each side; PGD from zero follows the sign of
    # the residual r, so |r| is drawn comparable to the attack's effect (as for a model that
    # errs), where the global maximum is on that side. The oracle still maximises over both.
    dp = attacks.linear_worst_case(w, x, norm=norm, eps=eps)
    dm = attacks.linear_worst_case(-w, x, norm=norm, eps=eps)
    effect = jnp.sum(w[None] * dp, axis=(1, 2, 3))
    sign = jnp.where(jnp.arange(LIN_SHAPE[0]) % 2 == 0, 1.0, -1.0)
    r = sign * effect * jnp.linspace(0.3, 1.0, LIN_SHAPE[0])
    y = f(x) - r
    worst = jnp.maximum(loss(x + dp, y), loss(x + dm, y))
  step = 2.5 * eps / 100 if constant_step else None
  x_adv = atk(jax.random.key(0), x=x, y=y, eps=eps, step_size=step)
  got = np.asarray(loss(x_adv, y))
  assert (_norm64(np.asarray(x_adv) - np.asarray(x, np.float64), norm)
          <= eps * (1 + 1e-6)).all()
  assert (got >= 0.99 * np.asarray(worst)).all(), got / np.asarray(worst)
  assert (got <= np.asarray(worst) * (1 + 1e-4)).all()  # the oracle is an upper bound


def test_fgsm_is_one_signed_step():
  x, w = _linear_problem()
  f, loss, _ = _linear_attack("linf", "classifier")
  y = jnp.ones(LIN_SHAPE[0])
  x_adv = attacks.fgsm(loss, x, y, eps=4 / 255)
  # d loss / dx = -sigmoid(-y f) y w, so the ascent sign is -sign(w) for y = +1.
  ref = jnp.clip(x - 4 / 255 * jnp.sign(w)[None], 0, 1)
  np.testing.assert_allclose(np.asarray(x_adv), np.asarray(ref), atol=1e-6)


# ---------------------------------------------------------------------------------- losses


def test_margin_and_cross_entropy():
  logits = jnp.array([[2.0, 1.0, -1.0], [0.0, 3.0, 1.0]])
  labels = jnp.array([0, 2])
  np.testing.assert_allclose(attacks.margin(logits, labels), [-1.0, 2.0])
  ref = -np.log(np.exp([2.0, 1.0]) / np.exp(logits).sum(1))
  np.testing.assert_allclose(attacks.cross_entropy(logits, labels), ref, rtol=1e-6)
  with pytest.raises(ValueError, match="loss"):
    attacks.make_loss_fn(lambda x: x, "hinge")


# ------------------------------------------------------------------------------ validation


@pytest.mark.parametrize("kwargs,name", [
    ({"eps": -0.1}, "eps"),
    ({"norm": "l3"}, "norm"),
    ({"x": np.full(SHAPE, 1.5, np.float32)}, "x"),
    ({"x": np.full(SHAPE, -0.1, np.float32)}, "x"),
    ({"x": np.full(SHAPE[1:], 0.5, np.float32)}, "x"),
    ({"y": np.array([0, 1, 2, 3], np.int32)}, "y"),
    ({"y": np.array([0, -1, 2, 1], np.int32)}, "y"),
    ({"steps": -1}, "steps"),
])
def test_bad_input_raises_naming_argument(kwargs, name):
  x, y = _images(0)
  args = {"x": x, "y": y, "norm": "linf", "eps": 0.1, "steps": 1, "num_classes": K}
  args.update(kwargs)
  with pytest.raises(ValueError, match=rf"^{name}:"):
    attacks.pgd(jax.random.key(0), LOSS, **args)

"""Gradients of spurjax.theory.adversarial_risk: central differences at smooth points, and
the documented subgradients at its kinks (s = 0 and w = 0). All in float64."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from spurjax import theory as T

NOISY = T.CoreSpuriousModel(4, 3, 1.2, 0.8, 0.6, 0.3)
NOISELESS = T.CoreSpuriousModel(4, 3, 1.2, 0.8, 0.6, 0.0)
DUAL_OF_ATTACK = {"l1": np.inf, "l2": 2, "linf": 1}   # n = ||w||_q
ATTACK_P = {"l1": 1, "l2": 2, "linf": np.inf}


# One compiled program per norm (eager evaluation would compile every primitive on its own).
_grad = jax.jit(jax.grad(T.adversarial_risk, argnums=1), static_argnames="norm")
_risk = jax.jit(T.adversarial_risk, static_argnames="norm")


@pytest.fixture(autouse=True)
def x64():
  with jax.enable_x64(True):
    yield


def _smooth_point(rng, d):
  """Entries of distinct magnitudes in [0.2, 1.2] with random signs: away from every kink
  of ||w||_1 (zeros) and ||w||_inf (ties)."""
  mags = np.sort(rng.uniform(0.2, 1.2, d))
  assert np.min(np.diff(mags)) > 1e-4
  return rng.permutation(mags) * rng.choice([-1.0, 1.0], d)


@pytest.mark.parametrize("norm", T.NORMS)
@pytest.mark.parametrize("model", [NOISY, NOISELESS], ids=["noisy", "noiseless"])
def test_gradient_matches_central_differences(norm, model):
  rng = np.random.default_rng(T.NORMS.index(norm))
  grad, risk = _grad, _risk
  h = 1e-5
  for _ in range(3):
    w = _smooth_point(rng, model.dim)
    eps = rng.uniform(0.05, 1.0)
    g = np.asarray(grad(model, jnp.asarray(w), eps, norm=norm))
    fd = np.array([(float(risk(model, jnp.asarray(w + h * e), eps, norm=norm))
                    - float(risk(model, jnp.asarray(w - h * e), eps, norm=norm))) / (2 * h)
                   for e in np.eye(model.dim)])
    # Truncation h^2 R''' / 6 and round-off 1e-16 / h are both below 1e-9.
    np.testing.assert_allclose(g, fd, rtol=0, atol=1e-8 * max(1.0, np.abs(fd).max()))


def _c(model):
  return np.asarray(T.moments(model)[1])


@pytest.mark.parametrize("norm", T.NORMS)
def test_subgradient_at_zero_weight(norm):
  """At w = 0, n = 0 and s = sqrt(v): dR = -2 c + 2 eps k s u with u in the subdifferential
  of ||.||_q at 0, the unit ball of the attack's own norm. For l2 the documented choice is
  u = 0 (gradient 0 of ||.||_2 at 0), so dR = -2 c exactly."""
  eps = 0.4
  g = np.asarray(_grad(NOISY, jnp.zeros(NOISY.dim), eps, norm=norm))
  c = _c(NOISY)
  s = np.sqrt(1 + NOISY.label_noise ** 2)
  u = (g + 2 * c) / (2 * eps * T.K * s)
  assert np.linalg.norm(u, ATTACK_P[norm]) <= 1 + 1e-12
  if norm == "l2":
    np.testing.assert_allclose(g, -2 * c, rtol=1e-14, atol=1e-15)


@pytest.mark.parametrize("norm", T.NORMS)
def test_subgradient_at_interpolation(norm):
  """Without label noise w = (theta / s_c, 0) interpolates (s = 0). The documented
  subgradient of s at 0 is 0, so dR = 2 eps^2 n dn: for l2, 2 eps^2 w exactly; for every
  norm dn/n-part is a subgradient of ||.||_q at w (<dn, w> = n, ||dn||_p <= 1)."""
  m = NOISELESS
  w = np.r_[np.full(m.d_core, 1 / (np.sqrt(m.d_core) * m.sigma_core)), np.zeros(m.d_spu)]
  assert float(T.standard_risk(m, jnp.asarray(w))) < 1e-28
  eps = 0.3
  # Eager, so that s^2 of the interpolating w is exactly 0: XLA's fused program may leave a
  # 1e-33, where s is smooth and its gradient a unit vector (a nearby point's gradient).
  g = np.asarray(jax.grad(T.adversarial_risk, argnums=1)(m, jnp.asarray(w), eps, norm))
  n = np.linalg.norm(w, DUAL_OF_ATTACK[norm])
  dn = g / (2 * eps ** 2 * n)
  np.testing.assert_allclose(dn @ w, n, rtol=1e-12)
  assert np.linalg.norm(dn, ATTACK_P[norm]) <= 1 + 1e-12
  if norm == "l2":
    np.testing.assert_allclose(g, 2 * eps ** 2 * w, rtol=1e-12)
  # Not the gradient one would get from the smooth part alone (s terms dropped): the kink
  # term is all there is, and it is not zero.
  assert np.abs(g).max() > 1e-3

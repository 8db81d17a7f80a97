"""spurjax.norms: names, one error format, the dual norm (Hoelder) and the /255 radius rule."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from spurjax import norms


@pytest.mark.parametrize("bad", ["l3", "L2", "", None, "none"])
def test_check_norm_names_the_field(bad):
  for n in norms.NORMS:
    norms.check_norm(n)
  with pytest.raises(ValueError, match=r"^adv_norm: unknown norm .*expected one of"):
    norms.check_norm(bad, "adv_norm")


def test_check_norm_allow_none():
  norms.check_norm(None, "adv_norm", allow_none=True)
  with pytest.raises(ValueError, match=r"^adv_norm: .*expected None or one of"):
    norms.check_norm("l0", "adv_norm", allow_none=True)


@pytest.mark.parametrize("norm", norms.NORMS)
def test_dual_norm_is_the_attack_maximum(norm):
  """eps ||w||_q = max_{||delta||_p <= eps} w^T delta, attained at the norm's vertex, and no
  random point of the ball exceeds it (Hoelder); also numpy's ord-q norm."""
  with jax.enable_x64(True):
    rng = np.random.default_rng()
    w = rng.normal(size=7)
    q = {"l1": np.inf, "l2": 2, "linf": 1}[norm]
    got = float(norms.dual_norm(jnp.asarray(w), norm))
    np.testing.assert_allclose(got, np.linalg.norm(w, q), rtol=1e-13)
    if norm == "linf":
      vertex = np.sign(w)
    elif norm == "l2":
      vertex = w / np.linalg.norm(w)
    else:
      vertex = np.zeros_like(w)
      vertex[np.argmax(np.abs(w))] = np.sign(w[np.argmax(np.abs(w))])
    np.testing.assert_allclose(w @ vertex, got, rtol=1e-13)
    p = {"l1": 1, "l2": 2, "linf": np.inf}[norm]
    d = rng.normal(size=(1000, 7))
    d /= np.linalg.norm(d, p, axis=1, keepdims=True)
    assert np.all(d @ w <= got * (1 + 1e-12))


def test_dual_norm_at_zero_and_empty():
  for n in norms.NORMS:
    assert float(norms.dual_norm(jnp.zeros(3), n)) == 0.0
    assert float(norms.dual_norm(jnp.zeros(0), n)) == 0.0
  g = jax.grad(lambda w: norms.dual_norm(w, "l2"))(jnp.zeros(3))
  assert np.all(np.isfinite(g)) and np.all(g == 0.0)


def test_pixel_radius_and_label():
  assert norms.pixel_radius("linf", 8) == 8 / 255
  assert norms.pixel_radius("l2", 0.5) == 0.5
  assert norms.pixel_radius("l1", 10) == 10.0
  assert norms.pixel_radius("none", 123) == 0.0
  with pytest.raises(ValueError, match="^norm:"):
    norms.pixel_radius("l5", 1.0)
  assert norms.radius_label("linf", 8 / 255) == "8/255"
  assert norms.radius_label("l2", 0.5) == "0.5"

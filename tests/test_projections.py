"""The ball-and-box projections of spurjax.attacks, checked by their optimality conditions and
against an independent float64 solver; the best-iterate rule of `pgd`; the random start.

The points projected here are drawn so that the ball *and* the box bind (a third of the
pixels saturated at 0 or 1, perturbations several times the radius): a projection that is
only feasible (scale to the ball, then clip) fails the conditions by a wide margin.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from spurjax import attacks

SHAPE = (6, 6, 6, 3)
EPS = {"l2": 1.0, "l1": 4.0, "linf": 0.1}
# float32 resolution of the projected values (entries are O(0.1..1)).
TOL = 1e-5


def _saturated_images(rng, shape=SHAPE):
  """Images in [0, 1] with a third of the pixels exactly at 0 or 1."""
  x = rng.uniform(0, 1, shape).astype(np.float32)
  sat = rng.uniform(size=shape) < 1 / 3
  x[sat] = rng.integers(0, 2, size=int(sat.sum())).astype(np.float32)
  return x


def _problem(norm, seed):
  rng = np.random.default_rng(seed)
  x = _saturated_images(rng)
  v = rng.normal(0, 1, x.shape).astype(np.float32)
  # Scale v so that its clipped version lies 2-4 times outside the ball: the ball binds.
  room = np.clip(v, -x, 1 - x).reshape(len(x), -1)
  size = {"l2": np.sqrt((room ** 2).sum(1)), "l1": np.abs(room).sum(1),
          "linf": np.abs(room).max(1)}[norm]
  v *= (EPS[norm] * rng.uniform(2, 4, len(x)) / np.maximum(size, 1e-3))[:, None, None, None]
  return x, np.clip(v, -1.5, 1.5).astype(np.float32)


def _project(norm, v, x):
  p = attacks._NORMS[norm].project(jnp.asarray(v), jnp.asarray(x), jnp.float32(EPS[norm]))
  return np.asarray(p, np.float64)


def _flat(a):
  return np.asarray(a, np.float64).reshape(len(a), -1)


@pytest.mark.parametrize("seed", [0, 1])
def test_l2_projection_kkt(seed):
  """u = clip(s v, -x, 1 - x) for one s in (0, 1] per example, and ||u||_2 = eps when s < 1
  (complementary slackness of the ball's multiplier mu = 1/s - 1 >= 0)."""
  x, v = _problem("l2", seed)
  u = _flat(_project("l2", v, x))
  v, x = _flat(v), _flat(x)
  lo, hi = -x, 1 - x
  for i in range(len(u)):
    free = (u[i] > lo[i] + 1e-6) & (u[i] < hi[i] - 1e-6) & (np.abs(v[i]) > 1e-3)
    assert free.sum() > 10
    s = u[i][free] / v[i][free]
    np.testing.assert_allclose(s, np.median(s), rtol=TOL)   # one multiplier
    s = float(np.median(s))
    assert 0 < s <= 1 + TOL
    np.testing.assert_allclose(u[i], np.clip(s * v[i], lo[i], hi[i]), atol=TOL)
    # The ball binds on these points (s < 1), so the projection uses the whole budget.
    assert s < 1 - 1e-3
    np.testing.assert_allclose(np.sqrt((u[i] ** 2).sum()), EPS["l2"], rtol=TOL)


@pytest.mark.parametrize("seed", [0, 1])
def test_l1_projection_kkt(seed):
  """u_i = sign(v_i) clip(|v_i| - theta, 0, r_i) with one theta >= 0 per example and
  ||u||_1 = eps when theta > 0: free coordinates sit exactly theta below |v_i|, zeros have
  |v_i| <= theta, capped ones |v_i| - r_i >= theta."""
  x, v = _problem("l1", seed)
  u = _flat(_project("l1", v, x))
  v, x = _flat(v), _flat(x)
  room = np.where(v > 0, 1 - x, x)
  for i in range(len(u)):
    au, av = np.abs(u[i]), np.abs(v[i])
    assert (u[i] * v[i] >= 0).all()                        # never against the sign of v
    assert (au <= room[i] + 1e-7).all()                    # inside the box
    movable = room[i] > 1e-6                               # room 0: u_i = 0, no condition
    zero = movable & (au <= 1e-6)
    capped = movable & ~zero & (au >= room[i] - 1e-6)
    free = movable & ~zero & ~capped
    assert free.sum() >= 1 and capped.sum() >= 1            # ball and box both bind
    theta = av[free] - au[free]
    np.testing.assert_allclose(theta, np.median(theta), atol=TOL)
    theta = float(np.median(theta))
    assert theta > 1e-3
    assert (av[zero] <= theta + TOL).all()
    assert (av[capped] - room[i][capped] >= theta - TOL).all()
    np.testing.assert_allclose(au.sum(), EPS["l1"], rtol=TOL)


def test_linf_projection_is_the_double_clip():
  x, v = _problem("linf", 0)
  u = _project("linf", v, x)
  np.testing.assert_array_equal(u, np.clip(np.clip(v, -EPS["linf"], EPS["linf"]), -x, 1 - x))


@pytest.mark.parametrize("norm", ["l2", "l1", "linf"])
def test_projection_matches_float64_qp(norm):
  """min ||u - v||^2 s.t. ||u||_p <= eps, -x <= u <= 1 - x, solved in float64 by cvxpy
  (SCS, a conic splitting method at 1e-12: nothing in common with the bisection; Clarabel's
  default tolerances leave 1e-5 errors, SCS's reach 1e-13)."""
  import cvxpy as cp
  x, v = _problem(norm, 3)
  got = _flat(_project(norm, v, x))
  vf, xf = _flat(v), _flat(x)
  p = {"l2": 2, "l1": 1, "linf": "inf"}[norm]
  for i in range(len(vf)):
    u = cp.Variable(vf.shape[1])
    prob = cp.Problem(cp.Minimize(cp.sum_squares(u - vf[i])),
                      [cp.norm(u, p) <= EPS[norm], u >= -xf[i], u <= 1 - xf[i]])
    prob.solve(solver=cp.SCS, eps_abs=1e-12, eps_rel=1e-12, max_iters=100_000)
    assert prob.status == cp.OPTIMAL
    # float32 resolution of entries of size <= 1 (the bisection itself is at 2^-32).
    np.testing.assert_allclose(got[i], u.value, atol=1e-6)


# ------------------------------------------------------------------------- best iterate

OVERSHOOT_SHAPE = (8, 6, 6, 3)
STEP = {"l2": 0.5, "linf": 0.02, "l1": 1.0}


def _overshoot_loss(w, target):
  """-(w . (x - 0.5) - target)^2: a concave loss whose maximiser lies well inside the ball,
  so fixed-size steps overshoot it and oscillate around it."""
  def loss(xa, t):
    del t
    return -(jnp.sum(w[None] * (xa - 0.5), axis=(1, 2, 3)) - target) ** 2
  return loss


def _overshoot_loss_and_step(norm):
  w = jax.random.normal(jax.random.key(5), OVERSHOOT_SHAPE[1:])
  # One step moves w . delta by a ||w||_q (q dual to p; for the SLIDE l1 step, the mean of
  # the two largest |w_i|); the target is a fifth of that, so every step overshoots it.
  wf = np.asarray(w, np.float64).ravel()
  one_step = STEP[norm] * {"l2": np.sqrt((wf ** 2).sum()), "linf": np.abs(wf).sum(),
                           "l1": np.sort(np.abs(wf))[-2:].mean()}[norm]
  return _overshoot_loss(w, 0.2 * one_step)


@pytest.mark.parametrize("norm,random_start", [("l2", False), ("linf", False), ("l1", False),
                                               ("l2", True)])
def test_pgd_returns_the_best_iterate_when_steps_overshoot(norm, random_start):
  """`pgd` returns, per example, the iterate with the highest loss (start and final point
  included): every loss evaluation inside the attack is recorded, and the returned point's
  loss is their maximum. From zero it is never below the clean loss, although here the last
  iterate is (the fixed step overshoots the maximiser and oscillates around it)."""
  x = jnp.full(OVERSHOOT_SHAPE, 0.5)
  y = jnp.zeros(OVERSHOOT_SHAPE[0])
  eps = {"l2": 2.0, "linf": 0.1, "l1": 8.0}[norm]
  loss = _overshoot_loss_and_step(norm)
  seen = []

  def recorded(xa, t):
    out = loss(xa, t)
    jax.debug.callback(lambda v: seen.append(np.asarray(v)), out, ordered=True)
    return out

  x_adv = jax.jit(functools.partial(attacks.pgd, loss_fn=recorded, norm=norm, steps=3,
                                    step_size=STEP[norm], random_start=random_start))(
                                        jax.random.key(2), x=x, y=y, eps=eps)
  jax.effects_barrier()
  assert len(seen) >= 4                                   # three steps and the final point
  got = np.asarray(loss(x_adv, y))
  # Recomputed outside the attack's program: equal up to float32 summation order.
  np.testing.assert_allclose(got, np.max(seen, axis=0), rtol=1e-5)
  if not random_start:
    clean = np.asarray(loss(x, y))
    np.testing.assert_allclose(seen[0], clean, rtol=1e-5)  # the first iterate is x itself
    assert (seen[-1] < clean - 1e-3).all()                   # the last one overshot
    assert (got >= clean).all()


# ------------------------------------------------------------------------- random start


@pytest.mark.parametrize("norm", ["l2", "l1", "linf"])
def test_default_random_start_is_inside_the_ball(norm):
  """`steps = 0` returns the random start itself: with default arguments it is drawn inside
  the ball, radius eps U[0, 1] (l2, l1) or uniform in the cube (l_inf), never the clean x."""
  n = 256
  x = jnp.full((n, 4, 4, 3), 0.5)
  eps = {"l2": 0.3, "l1": 1.0, "linf": 0.1}[norm]
  flat_loss = lambda xa, t: jnp.sum(xa, axis=(1, 2, 3)) * 0.0
  start = jax.jit(functools.partial(attacks.pgd, loss_fn=flat_loss, norm=norm, steps=0))
  x0 = start(jax.random.key(11), x=x, y=jnp.zeros(n), eps=eps)
  d = _flat(np.asarray(x0) - np.asarray(x))
  if norm == "linf":
    u = d.ravel() / eps
    assert stats.kstest((u + 1) / 2, "uniform").pvalue > 1e-3
  else:
    r = (np.sqrt((d ** 2).sum(1)) if norm == "l2" else np.abs(d).sum(1)) / eps
    assert r.max() <= 1 + 1e-6
    assert stats.kstest(r, "uniform").pvalue > 1e-3
    # Direction: no preferred sign per coordinate.
    assert abs(np.mean(np.sign(d))) < 0.05

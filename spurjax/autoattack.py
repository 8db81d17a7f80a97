"""Evaluation-grade attacks: APGD, FAB-T, Square and the AutoAttack ensemble, in JAX.

`apgd` is Auto-PGD (Croce & Hein, ICML 2020): from a start on the sphere, for k = 0..N-1

  z       = Proj(x_k + eta_k dir(g_k))
  x_{k+1} = Proj(x_k + a (z - x_k) + (1 - a)(x_k - x_{k-1})),   a = 0.75 (1 at k = 0),

with eta_0 = 2 eps (l_inf, l2) or 2 sqrt(d) eps (l1, d the input size; see below) and the
exact projection onto the ball intersected with the box of `spurjax.attacks`. At checkpoints w_j (first after 0.22 N steps, then
windows shrinking by 0.03 N down to 0.06 N) the step of an example halves and it restarts
from its best point when (1) its loss rose in at most rho = 0.75 of the window's steps, or
(2) its step did not shrink at the previous checkpoint and its best loss did not improve
since. l1 follows "Mind the box" (Croce & Hein, ICCV 2021): the step moves the top-k
coordinates of |g| (after dropping coordinates the box blocks), k adapted at each checkpoint
to the sparsity of the best point, and the step is reset to eps when that sparsity dropped,
divided by 1.5 otherwise (within [eps / 10, eps]). Two departures, both measured on linear
losses (where the optimum is known): within the top-k the step is proportional to g rather
than to sign(g), since equal sign steps keep an equal split between coordinates of unequal
gradient forever (the Euclidean projection removes the same amount from each), a fixed point
that is not an optimum; and the l1 step starts at 2 sqrt(d) eps instead of eps: a large step
followed by the exact projection lands on the greedy vertex of the linearisation, while
steps of size eps left 0.5-2.5% of a linear loss unreached after 100 iterations. Coordinates
at the box are not dropped from the step (their push is clipped away), so the optimum of a
linear loss is a fixed point.

`autoattack` is the standard ensemble (Croce & Hein 2020): APGD-CE, APGD-T (targeted DLR
loss against each of the 9 classes with the highest clean logits), FAB-T (Croce & Hein, ICML
2020, targeted, same 9 classes) and Square (Andriushchenko et al., ECCV 2020, 5000 queries),
each run on the points the previous ones left robust. Everything is one jitted program of
fixed shape per (architecture, norm, version, batch shape); model parameters are arguments,
so a second model of the same architecture reuses the compilation.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from spurjax import attacks as _atk
from spurjax import norms
from spurjax import parallel

VERSIONS = ("standard", "fast")


def _bshape(x):
  return (x.shape[0],) + (1,) * (x.ndim - 1)


def _radius_below(eps, dtype) -> np.ndarray:
  """The largest value of `dtype` that is <= `eps` (a concrete radius).

  Rounding eps to nearest may round it up (float32(24/255) exceeds 24/255 by 1.5e-8
  relative): points on that sphere would then lie outside the ball of radius eps by an ulp,
  as an exact check of the float32 images finds.
  """
  e = np.asarray(eps, dtype)
  if float(e) > float(eps):
    e = np.nextafter(e, np.zeros((), dtype))
  return e


# -------------------------------------------------------------------------------- losses


dlr = _atk.dlr
dlr_targeted = _atk.dlr_targeted


# ---------------------------------------------------------------------------------- APGD


def _checkpoints(steps: int) -> tuple[np.ndarray, np.ndarray]:
  """`(is_check (N,) bool, window (N,) int)`: checkpoint after step i and its window length.

  Windows as in the reference implementation: first 0.22 N steps, then each window
  0.03 N shorter, never below 0.06 N (all at least 1).
  """
  k = max(int(0.22 * steps), 1)
  dec, kmin = max(int(0.03 * steps), 1), max(int(0.06 * steps), 1)
  is_check = np.zeros(max(steps, 1), bool)
  window = np.ones(max(steps, 1), np.int32)
  count = 0
  for i in range(steps):
    count += 1
    if count == k:
      is_check[i], window[i] = True, k
      count, k = 0, max(k - dec, kmin)
  return is_check, window


def _sphere_start(key, x, eps, norm):
  """APGD's start: a random point on the sphere of radius eps (before the box)."""
  if norm == "linf":
    t = jax.random.uniform(key, x.shape, x.dtype, -1.0, 1.0)
    m = jnp.max(jnp.abs(t), axis=tuple(range(1, x.ndim)), keepdims=True)
    return eps * t / jnp.maximum(m, 1e-12)
  if norm == "l2":
    return eps * _atk._unit_l2(jax.random.normal(key, x.shape, x.dtype))
  t = jax.random.laplace(key, x.shape, x.dtype)
  return eps * t / jnp.maximum(_atk._per_example_sum(jnp.abs(t)), 1e-12)


def _l1_sparse_direction(g, x_adv, frac):
  """Top-`frac` (per example, `(B,)`) coordinates of |g| not blocked by the box, step
  proportional to g there, unit l1 norm (0 where g = 0)."""
  del x_adv
  b = g.shape[0]
  a = jnp.abs(g).reshape(b, -1)
  d = a.shape[1]
  # The k-th largest |g| (k = ceil(frac d)) by bisection on the count above a threshold.
  k = jnp.ceil(frac * d)[:, None]
  top = jnp.max(a, axis=1, keepdims=True)
  count = lambda t: -jnp.sum(a >= t, axis=1, keepdims=True).astype(a.dtype)
  _, kth = _bracket(count, -k, jnp.zeros_like(top), top)
  e = jnp.where((a >= kth) & (a > 0), g.reshape(b, -1), 0.0)
  # Scale before summing so tiny gradients do not underflow to a zero step.
  m = jnp.max(jnp.abs(e), axis=1, keepdims=True)
  e = e / jnp.where(m > 0, m, 1.0)
  s = jnp.sum(jnp.abs(e), axis=1, keepdims=True)
  return (e / jnp.where(s > 0, s, 1.0)).reshape(g.shape)


def _apgd_run(key, obj, x, eps, *, norm, steps, rho, momentum, l1_k_init, start=None):
  """One APGD run. `obj(x_adv) -> (losses (B,), fooled (B,) bool)`.

  Returns `(best_x, best_loss, found, found_x)`: the highest-loss iterate, its loss, whether
  some iterate was `fooled`, and the first such iterate (else the best one).
  """
  ops = _atk._NORMS[norm]
  shape = _bshape(x)
  d = int(np.prod(x.shape[1:]))
  eta0 = (2.0 * np.sqrt(d) if norm == "l1" else 2.0) * eps
  is_check, window = _checkpoints(steps)
  is_check, window = jnp.asarray(is_check), jnp.asarray(window)

  def loss_grad(delta):
    xa = _atk._inward_point(x, delta)
    losses, vjp, fooled = jax.vjp(obj, xa, has_aux=True)
    return xa, losses, vjp(jnp.ones_like(losses))[0], fooled

  if start is None:
    start = _sphere_start(key, x, eps, norm)
  delta = ops.project(start, x, eps)
  xa, loss0, g0, fooled0 = loss_grad(delta)
  b = x.shape[0]
  carry = dict(
      delta=delta, prev=delta, g=g0, loss=loss0,
      eta=jnp.full(shape, eta0, x.dtype),
      best=delta, best_loss=loss0, best_g=g0,
      n_inc=jnp.zeros((b,), jnp.int32), last_best=loss0,
      reduced=jnp.ones((b,), bool),
      found=fooled0, found_x=xa,
      frac=jnp.full((b,), l1_k_init, x.dtype), sp_old=jnp.full((b,), float(d), x.dtype))

  def body(i, c):
    a = jnp.where(i == 0, 1.0, momentum).astype(x.dtype)
    if norm == "l1":
      step = _l1_sparse_direction(c["g"], x + c["delta"], c["frac"])
    else:
      step = ops.direction(c["g"], x, eps)
    z = ops.project(c["delta"] + c["eta"] * step, x, eps)
    new = ops.project(c["delta"] + a * (z - c["delta"]) + (1 - a) * (c["delta"] - c["prev"]),
                      x, eps)
    xa, loss, g, fooled = loss_grad(new)
    newly = fooled & ~c["found"]
    found_x = jnp.where(newly.reshape(shape), xa, c["found_x"])
    found = c["found"] | fooled
    n_inc = c["n_inc"] + (loss > c["loss"]).astype(jnp.int32)
    better = loss > c["best_loss"]
    bm = better.reshape(shape)
    best = jnp.where(bm, new, c["best"])
    best_g = jnp.where(bm, g, c["best_g"])
    best_loss = jnp.where(better, loss, c["best_loss"])
    # Checkpoint (only where is_check[i]; else everything below is a no-op).
    chk = is_check[i]
    osc = n_inc.astype(x.dtype) <= rho * window[i].astype(x.dtype)
    stale = ~c["reduced"] & (c["last_best"] >= best_loss)
    reduce = chk & (osc | stale)
    rm = reduce.reshape(shape)
    eta, frac, sp_old = c["eta"], c["frac"], c["sp_old"]
    if norm == "l1":
      sp = jnp.sum((best != 0).reshape(b, -1), axis=1).astype(x.dtype)
      dropped = (sp / c["sp_old"] < 0.95).reshape(shape)
      eta_red = jnp.clip(jnp.where(dropped, eta0, eta / 1.5), eta0 / 10, eta0)
      eta = jnp.where(rm, eta_red, eta)
      frac = jnp.where(chk, jnp.clip(sp / d / 1.5, 1.0 / d, 1.0), frac)
      sp_old = jnp.where(chk, sp, sp_old)
    else:
      eta = jnp.where(rm, eta / 2, eta)
    return dict(
        delta=jnp.where(rm, best, new), prev=c["delta"], g=jnp.where(rm, best_g, g),
        loss=loss, eta=eta, best=best, best_loss=best_loss, best_g=best_g,
        n_inc=jnp.where(chk, 0, n_inc), last_best=jnp.where(chk, best_loss, c["last_best"]),
        reduced=jnp.where(chk, reduce, c["reduced"]), found=found, found_x=found_x,
        frac=frac, sp_old=sp_old)

  c = jax.lax.fori_loop(0, steps, body, carry)
  best_x = _atk._inward_point(x, c["best"])
  return best_x, c["best_loss"], c["found"], jnp.where(c["found"].reshape(shape),
                                                       c["found_x"], best_x)


def _check_common(x, eps, norm, steps, restarts):
  norms.check_norm(norm)
  if not isinstance(steps, (int, np.integer)) or steps < 0:
    raise ValueError(f"steps: must be a non-negative int, got {steps!r}")
  if not isinstance(restarts, (int, np.integer)) or restarts < 1:
    raise ValueError(f"restarts: must be an int >= 1, got {restarts!r}")
  _atk.validate_inputs(x, eps=eps)


def apgd(key: jax.Array, loss_fn: _atk.LossFn, x: jax.Array, y: Any, *, norm: str, eps,
         steps: int = 100, restarts: int = 2, rho: float = 0.75, momentum: float = 0.75,
         l1_k_init: float = 0.2, success_fn: Callable | None = None) -> jax.Array:
  """Auto-PGD (Croce & Hein 2020; l1: "Mind the box", 2021) maximising `loss_fn` per example.

  The schedule is described in the module docstring. Restart r >= 1 (of `restarts`) starts
  from the reflection `-delta*` of the best perturbation found so far (then projected onto
  ball and box); a loss like `(f(x) - t)^2` of a linear `f` has a local maximum on each side
  of the residual's sign, and a local ascent stays on the side it started on, so the second
  run explores the other one. On deep networks this is just another start. Not jitted: call
  it inside `jax.jit` (norm, steps, restarts static; eps may be traced).

  Args:
    key: PRNG key of the random start.
    loss_fn: `(x (B, H, W, C), y) -> (B,)` per-example loss to maximise (e.g.
      `make_loss_fn(logits_fn, "ce")`, `"dlr"`, or a targeted DLR with `dlr_targeted`).
    x: `(B, H, W, C)` clean images in [0, 1].
    y: labels/targets passed to `loss_fn` unchanged (any pytree).
    norm: "l1", "l2" or "linf".
    eps: radius >= 0.
    steps: iterations per run (N above).
    restarts: number of runs; the best (or first successful) result is kept per example.
    rho: the checkpoint's fraction of loss increases below which the step halves.
    momentum: a above.
    l1_k_init: l1 only: initial fraction of coordinates moved per step.
    success_fn: optional `(x_adv, y) -> (B,) bool`; where given, an example returns the
      first iterate for which it is True (e.g. misclassified) and the best-loss one otherwise.

  Returns:
    `(B, H, W, C)` adversarial images in the ball and the box, under `stop_gradient`.
  """
  _check_common(x, eps, norm, steps, restarts)
  if not 0.0 < l1_k_init <= 1.0:
    raise ValueError(f"l1_k_init: must lie in (0, 1], got {l1_k_init!r}")
  if not 0.0 <= momentum <= 1.0:
    raise ValueError(f"momentum: must lie in [0, 1], got {momentum!r}")
  x = jax.lax.stop_gradient(jnp.asarray(x))
  if _atk._is_concrete(eps):
    eps = _radius_below(eps, x.dtype)
  eps = jnp.asarray(eps, x.dtype)
  shape = _bshape(x)

  def obj(xa):
    losses = loss_fn(xa, y)
    fooled = (success_fn(xa, y) if success_fn is not None
              else jnp.zeros(losses.shape, bool))
    return losses, fooled

  best_x = found_x = x
  best_loss = jnp.full((x.shape[0],), -jnp.inf, x.dtype)
  found = jnp.zeros((x.shape[0],), bool)
  for r in range(restarts):
    k = jax.random.fold_in(key, r)
    bx, bl, fd, fx = _apgd_run(k, obj, x, eps, norm=norm, steps=steps, rho=rho,
                               momentum=momentum, l1_k_init=l1_k_init,
                               start=None if r == 0 else x - best_x)
    better = bl > best_loss
    best_x = jnp.where(better.reshape(shape), bx, best_x)
    best_loss = jnp.where(better, bl, best_loss)
    found_x = jnp.where((fd & ~found).reshape(shape), fx, found_x)
    found = found | fd
  out = jnp.where(found.reshape(shape), found_x, best_x)
  return jax.lax.stop_gradient(out)


# ----------------------------------------------------------------------------------- FAB


_SEARCH_ITERS = 32


def _bracket(h, c, lo, hi):
  """Bisection for `h` nondecreasing: `(lo, hi)` per row with h(lo) < c <= h(hi) kept."""
  def body(_, lh):
    l, u = lh
    mid = 0.5 * (l + u)
    below = h(mid) < c
    return jnp.where(below, mid, l), jnp.where(below, u, mid)
  return jax.lax.fori_loop(0, _SEARCH_ITERS, body, (lo, hi))


def _min_norm_reach(w, c, x, norm):
  """Exact `argmin ||d||_p` s.t. `w . d >= c`, `0 <= x + d <= 1`, per row of flat `(B, d)`
  arrays, `c (B,) >= 0`; where the box cannot reach `c`, the box maximiser of `w . d`.

  The minimisers form one-parameter families (the KKT conditions of the box-constrained
  problem), with `r_i` the room towards the box in the direction of `w_i`:
    l_inf: d_i = sign(w_i) min(t, r_i);   l2: d_i = sign(w_i) min(t |w_i|, r_i);
    l1:    d_i = sign(w_i) r_i for |w_i| > t (greedy in decreasing |w_i|), the rest partial.
  `h(t) = w . d(t)` is monotone and piecewise linear in t; t is bracketed by bisection
  (no sort: sorting is slow on CPU) and solved linearly on the final bracket, so
  `w . d = c` holds up to rounding.
  """
  aw = jnp.abs(w)
  sgn = jnp.sign(w)
  room = jnp.where(w > 0, 1.0 - x, jnp.where(w < 0, x, 0.0))
  c = c[:, None]
  if norm == "l1":
    def h(t):  # decreasing in t: use -t as the parameter
      return jnp.sum(jnp.where(aw > -t, aw * room, 0.0), axis=1, keepdims=True)
    top = jnp.max(aw, axis=1, keepdims=True)
    lo, hi = _bracket(h, c, -top, jnp.zeros_like(top))
    # Coordinates with |w| > -lo are full; those with |w| in (-hi, -lo] share the rest.
    full = aw > -lo
    mid = (aw > -hi) & ~full
    h_full = jnp.sum(jnp.where(full, aw * room, 0.0), axis=1, keepdims=True)
    h_mid = jnp.sum(jnp.where(mid, aw * room, 0.0), axis=1, keepdims=True)
    frac = jnp.clip((c - h_full) / jnp.where(h_mid > 0, h_mid, 1.0), 0.0, 1.0)
    m = jnp.where(full, room, jnp.where(mid, frac * room, 0.0))
    return sgn * m
  if norm == "linf":
    def d_of(t):
      return jnp.minimum(t, room)
    t_hi0 = jnp.ones_like(c)
  else:
    def d_of(t):
      return jnp.minimum(t * aw, room)
    # Unboxed solution c / ||w||^2 is a lower bound; doublings find an upper one.
    t0 = c / jnp.maximum(jnp.sum(aw * aw, axis=1, keepdims=True), 1e-30)
    grow = jax.lax.fori_loop(
        0, 30, lambda _, t: jnp.where(jnp.sum(aw * d_of(t), 1, keepdims=True) < c, 2 * t, t),
        t0)
    t_hi0 = grow

  def h(t):
    return jnp.sum(aw * d_of(t), axis=1, keepdims=True)

  lo, hi = _bracket(h, c, jnp.zeros_like(t_hi0), t_hi0)
  h_lo, h_hi = h(lo), h(hi)
  t = lo + (hi - lo) * jnp.clip((c - h_lo) / jnp.where(h_hi > h_lo, h_hi - h_lo, 1.0), 0, 1)
  t = jnp.where(h_hi < c, hi, t)  # unreachable: everything capped
  return sgn * d_of(t)


def _fab_run(logits_fn, x, y, target, eps, *, norm, steps, alpha_max=0.1, eta=1.05,
             beta=0.9):
  """FAB-T (Croce & Hein, ICML 2020) towards class `target (B,)` from `x`, no random start.

  Each step linearises f = z_t - z_y at the iterate x_k, projects x_k and x onto the
  hyperplane {f + g . (p - x_k) = 0} within the box (exact minimal-norm steps d_1, d_2), and
  moves to clip((x_k + eta d_1)(1 - a) + (x + eta d_2) a, 0, 1) with
  a = min(||d_1|| / (||d_1|| + ||d_2||), alpha_max); a misclassified iterate is recorded if
  closer to x than the best so far and pulled back to x + beta (x_k - x).

  Returns `(best (B, ...), best_norm (B,))`, best_norm inf where nothing was found.
  """
  b = x.shape[0]
  shape = _bshape(x)
  flat = lambda v: v.reshape(b, -1)
  xf = flat(x)

  def f_and_grad(xa):
    def f(xa):
      z = logits_fn(xa)
      z_y = jnp.take_along_axis(z, y[:, None], axis=-1)[:, 0]
      z_t = jnp.take_along_axis(z, target[:, None], axis=-1)[:, 0]
      return z_t - z_y
    val, vjp = jax.vjp(f, xa)
    return val, vjp(jnp.ones_like(val))[0]

  def proj(g, c, p):
    s = jnp.where(c < 0, -1.0, 1.0)[:, None]
    return _min_norm_reach(s * g, jnp.abs(c), p, norm)

  def body(_, carry):
    x1, best, best_n = carry
    f1, g1 = f_and_grad(x1)
    g1f, x1f = flat(g1), flat(x1)
    d1 = proj(g1f, -f1, x1f)
    d2 = proj(g1f, -(f1 + jnp.sum(g1f * (xf - x1f), axis=1)), xf)
    a0, a1 = _atk.lp_norm(d1, norm), _atk.lp_norm(d2, norm)
    alpha = jnp.clip(a0 / jnp.maximum(a0 + a1, 1e-12), 0.0, alpha_max)[:, None]
    xn = jnp.clip((x1f + eta * d1) * (1 - alpha) + (xf + eta * d2) * alpha, 0.0, 1.0)
    xn = xn.reshape(x.shape)
    adv = jnp.argmax(logits_fn(xn), axis=-1) != y
    n = _atk.lp_norm(xn - x, norm)
    better = adv & (n < best_n)
    best = jnp.where(better.reshape(shape), xn, best)
    best_n = jnp.where(better, n, best_n)
    xn = jnp.where(adv.reshape(shape), x + beta * (xn - x), xn)
    return xn, best, best_n

  init = (x, x, jnp.full((b,), jnp.inf, x.dtype))
  _, best, best_n = jax.lax.fori_loop(0, steps, body, init)
  return best, best_n


# -------------------------------------------------------------------------------- Square


def _p_selection(p_init, it, n_queries, rescale):
  """Square's schedule of the fraction of pixels changed: p_init halved at iterations 10, 50,
  200, 500, 1000, 2000, 4000, 6000, 8000 (with `rescale`, iterations counted as if the
  budget were 10000 queries)."""
  i = (it * 10000) // n_queries if rescale else it
  bounds = jnp.asarray([10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000])
  return p_init / 2.0 ** jnp.sum(i > bounds)


def _square_run(key, logits_fn, x, y, eps, active, *, norm, n_queries, p_init=0.8,
                rescale=False):
  """Square attack (Andriushchenko et al., ECCV 2020) on the margin z_y - max_{j!=y} z_j.

  l_inf: vertical-stripe start at +-eps, then each query redraws one random s x s window
  (s = round(sqrt(p h w)), p from `_p_selection`) to +-eps per channel, accepted if the
  margin drops (Andriushchenko et al.'s l_inf scheme). l2/l1: the same windows, but the
  proposal adds a window of per-channel signs scaled to norm eps, rescales the sum into the
  ball and clips it to the box (a square-shaped random search, not the paper's l2 proposal
  distribution).
  Runs until `n_queries` or until no `active` example has a positive margin.

  Returns `(x_best (B, ...), margin (B,))`; margin < 0 means misclassified.
  """
  b, h, w, ch = x.shape
  ops = _atk._NORMS[norm]
  shape = _bshape(x)

  def margin(xa):
    return -_atk.margin(logits_fn(xa), y)

  k0, key = jax.random.split(key)
  if norm == "linf":
    start = eps * jax.random.rademacher(k0, (b, 1, w, ch), x.dtype)
    start = jnp.broadcast_to(start, x.shape)
  else:
    start = _sphere_start(k0, x, eps, norm)
  delta = ops.project(start, x, eps)
  xb = _atk._inward_point(x, delta)
  m = margin(xb)
  rows = jnp.arange(h)[None, :, None, None]
  cols = jnp.arange(w)[None, None, :, None]

  def cond(c):
    i, _, m = c
    return (i < n_queries) & jnp.any(active & (m > 0))

  def body(c):
    i, xb, m = c
    p = _p_selection(p_init, i, n_queries, rescale)
    s = jnp.clip(jnp.round(jnp.sqrt(p * h * w)), 1, min(h, w)).astype(jnp.int32)
    # One draw per query: window corner (2) and the sign of each channel.
    u = jax.random.uniform(jax.random.fold_in(key, i), (b, 1, 1, 2 + ch), x.dtype)
    r0 = jnp.floor(u[..., :1] * (h - s + 1)).astype(jnp.int32)
    c0 = jnp.floor(u[..., 1:2] * (w - s + 1)).astype(jnp.int32)
    signs = jnp.where(u[..., 2:] < 0.5, -1.0, 1.0).astype(x.dtype)
    win = (rows >= r0) & (rows < r0 + s) & (cols >= c0) & (cols < c0 + s)
    cur = xb - x
    if norm == "linf":
      prop = jnp.where(win, eps * signs, cur)
    else:
      v = jnp.where(win, signs, 0.0)
      v = v * (eps / jnp.maximum(_atk.lp_norm(v, norm), 1e-12)).reshape(shape)
      prop = cur + v
      # Rescaling into the ball, then clipping to the box (which only shrinks the norm),
      # gives a feasible proposal without the bisection of the exact projection.
      n = _atk.lp_norm(prop, norm).reshape(shape)
      prop = prop * jnp.minimum(1.0, eps / jnp.maximum(n, 1e-12))
    if norm != "linf":
      prop = jnp.clip(prop, -x, 1.0 - x)
    else:
      prop = ops.project(prop, x, eps)
    xn = _atk._inward_point(x, prop)
    mn = margin(xn)
    acc = (mn < m) & (m > 0)
    return (i + 1, jnp.where(acc.reshape(shape), xn, xb), jnp.where(acc, mn, m))

  _, xb, m = jax.lax.while_loop(cond, body, (jnp.asarray(0), xb, m))
  return xb, m


# ---------------------------------------------------------------------------- the ensemble


@dataclasses.dataclass(frozen=True)
class AttackConfig:
  """Settings of one AutoAttack ensemble (hashable: one compilation per distinct config).

  A 0 switches an attack off: `apgd_steps` (APGD-CE), `n_targets` or `apgd_t_steps`
  (APGD-T), `fab_targets` or `fab_steps` (FAB-T), `square_queries` (Square). Attacks
  switched off report 0 successes. Passing a config as `autoattack(version=...)` runs one
  attack alone or with other budgets (e.g. to attribute a difference to one attack).

  Fields:
    apgd_steps: APGD-CE iterations (one run, no restart).
    apgd_t_steps: APGD-T iterations per target class (one run each).
    n_targets: APGD-T target classes: those with the highest clean logits after the top one.
    fab_steps: FAB-T iterations per target class.
    fab_targets: FAB-T target classes, chosen as for APGD-T.
    square_queries: Square's query budget (margin loss, p_init = 0.8).
    square_rescale: rescale Square's p schedule to a 10000-query budget (the reference
      implementation's `resc_schedule`; False in its standard ensemble).
  """
  apgd_steps: int
  apgd_t_steps: int
  n_targets: int
  fab_steps: int
  fab_targets: int
  square_queries: int
  square_rescale: bool = False

  def __post_init__(self):
    for f in dataclasses.fields(self):
      v = getattr(self, f.name)
      if f.name == "square_rescale":
        if not isinstance(v, bool):
          raise ValueError(f"square_rescale: must be a bool, got {v!r}")
      elif not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < 0:
        raise ValueError(f"{f.name}: must be a non-negative int, got {v!r}")


_VERSIONS = {
    # Croce & Hein's "standard" AutoAttack for l_inf and l2, as their reference code sets it
    # (AutoAttack.set_version("standard")): APGD-CE 100 iterations, 1 restart; APGD-T 100
    # iterations, 9 targets, 1 restart; FAB-T 100 iterations, 9 targets, 1 restart; Square
    # 5000 queries, p_init 0.8, no schedule rescaling.
    "standard": AttackConfig(apgd_steps=100, apgd_t_steps=100, n_targets=9, fab_steps=100,
                             fab_targets=9, square_queries=5000),
    # Training-time monitoring: the two gradient attacks, shorter, three targets.
    "fast": AttackConfig(apgd_steps=50, apgd_t_steps=50, n_targets=3, fab_steps=0,
                         fab_targets=0, square_queries=0),
}
ATTACK_NAMES = ("apgd-ce", "apgd-t", "fab-t", "square")


def _ensemble(apply, norm, cfg, params, key, x, y, valid, eps):
  """The jitted body of `autoattack` for one batch (`cfg` an `AttackConfig`); see there.
  Returns `(x_adv, counts)`, counts `(6,)` int: clean errors, successes of each of
  `ATTACK_NAMES`, robust."""
  logits_fn = lambda xa: apply(params, xa)
  shape = _bshape(x)
  z0 = logits_fn(x)
  k = z0.shape[-1]
  robust0 = (jnp.argmax(z0, axis=-1) == y) & valid
  order = jnp.argsort(-z0, axis=-1)  # targets: the classes after the top one
  ks = jax.random.split(key, 4)
  no = jnp.zeros(x.shape[0], bool)

  def stage(robust, x_adv, run):
    x_c, fooled = jax.lax.cond(jnp.any(robust), run, lambda: (x, no))
    new = robust & fooled
    return robust & ~new, jnp.where(new.reshape(shape), x_c, x_adv), jnp.sum(new)

  def misclassified(z):
    return jnp.argmax(z, axis=-1) != y

  apgd_kw = dict(norm=norm, rho=0.75, momentum=0.75, l1_k_init=0.2)

  def ce_obj(xa):
    z = logits_fn(xa)
    return _atk.cross_entropy(z, y), misclassified(z)

  def run_ce():
    _, _, found, found_x = _apgd_run(ks[0], ce_obj, x, eps, steps=cfg.apgd_steps, **apgd_kw)
    return found_x, found

  zero = jnp.zeros((), jnp.int32)
  if cfg.apgd_steps:
    robust, x_adv, n_ce = stage(robust0, x, run_ce)
  else:
    robust, x_adv, n_ce = robust0, x, zero
  counts = [jnp.sum(valid & ~robust0), n_ce]

  n_t = min(cfg.n_targets, k - 1) if cfg.apgd_t_steps else 0

  def apgd_t(j, c):
    robust, x_adv, n = c
    target = order[:, j + 1]

    def obj(xa):
      z = logits_fn(xa)
      if k >= 4:
        loss = _atk.dlr_targeted(z, y, target)
      else:
        loss = (jnp.take_along_axis(z, target[:, None], -1)[:, 0]
                - jnp.take_along_axis(z, y[:, None], -1)[:, 0])
      return loss, misclassified(z)

    def run():
      _, _, found, found_x = _apgd_run(jax.random.fold_in(ks[1], j), obj, x, eps,
                                       steps=cfg.apgd_t_steps, **apgd_kw)
      return found_x, found

    robust, x_adv, m = stage(robust, x_adv, run)
    return robust, x_adv, n + m

  robust, x_adv, n_t_found = jax.lax.fori_loop(0, n_t, apgd_t, (robust, x_adv, zero))
  counts.append(n_t_found)

  n_f = min(cfg.fab_targets, k - 1)

  def fab_t(j, c):
    robust, x_adv, n = c
    target = order[:, j + 1]

    def run():
      best, best_n = _fab_run(logits_fn, x, y, target, eps, norm=norm, steps=cfg.fab_steps)
      # Exactly into ball and box (a no-op up to rounding where best_n <= eps), then verify.
      xa = _atk._inward_point(x, _atk._NORMS[norm].project(best - x, x, eps))
      return xa, (best_n <= eps) & misclassified(logits_fn(xa))

    robust, x_adv, m = stage(robust, x_adv, run)
    return robust, x_adv, n + m

  robust, x_adv, n_fab = jax.lax.fori_loop(0, n_f if cfg.fab_steps else 0, fab_t,
                                           (robust, x_adv, zero))
  counts.append(n_fab)

  if cfg.square_queries:
    def run_sq():
      xb, m = _square_run(ks[3], logits_fn, x, y, eps, robust, norm=norm,
                          n_queries=cfg.square_queries, rescale=cfg.square_rescale)
      return xb, m < 0
    robust, x_adv, n_sq = stage(robust, x_adv, run_sq)
  else:
    n_sq = zero
  counts.append(n_sq)
  counts.append(jnp.sum(robust))
  return x_adv, jnp.stack([jnp.asarray(c, jnp.int32) for c in counts])


@dataclasses.dataclass(frozen=True)
class _NNXApply:
  """`apply(state, x)` of an NNX graphdef: hashable, equal for equal architectures."""
  graphdef: Any

  def __call__(self, state, x):
    from flax import nnx
    return nnx.merge(self.graphdef, state)(x)


@dataclasses.dataclass(frozen=True)
class _NoParams:
  fn: Callable

  def __call__(self, params, x):
    del params
    return self.fn(x)


@functools.lru_cache(maxsize=64)
def _compiled(apply, norm, cfg):
  return jax.jit(functools.partial(_ensemble, apply, norm, cfg))


def _mesh() -> Mesh:
  return Mesh(np.asarray(jax.devices()), ("data",))


def autoattack(key: jax.Array, logits_fn, x, y, *, norm: str, eps,
               version: str | AttackConfig = "standard",
               params: Any = None, batch_size: int | None = None,
               return_counts: bool = False):
  """AutoAttack (Croce & Hein, ICML 2020): APGD-CE, APGD-T, FAB-T, Square in sequence.

  Each attack runs on the points that every previous one left correctly classified; a point
  is adversarial once `argmax logits(x_adv) != y` with `x_adv` in the ball and the box.
  Points misclassified already come back unchanged. "standard" uses the settings of the
  reference implementation's standard ensemble for l_inf and l2: APGD-CE (100 steps, one run:
  not `apgd`'s default of 2 restarts), APGD-T (targeted DLR, 100 steps, one run against each
  of the 9 classes with the highest clean logits after the top one), FAB-T (100 steps, same
  targets, one run) and Square (5000 queries, p_init 0.8, schedule not rescaled). l1 uses
  the same ensemble (the reference one runs APGD with 5 restarts and 5 targets there).
  torchattacks' `AutoAttack(version="standard")` is weaker than this: it leaves its APGD,
  APGD-T and FAB-T at their default 10 steps. "fast" (for monitoring during training):
  APGD-CE and APGD-T against 3 targets, 50 steps each. An `AttackConfig` sets other budgets.
  With fewer than 4 classes APGD-T maximises z_t - z_y instead of the targeted DLR.

  One jitted program per (architecture, norm, version, batch shape): model parameters are
  arguments, so evaluating a second model of the same architecture does not recompile. The
  batch is sharded over all devices (a 1-D mesh "data"; parameters replicated).

  Args:
    key: PRNG key (batch j uses `fold_in(key, j)`).
    logits_fn: an NNX classifier (its eval view is attacked; its state is the parameter
      argument), or `logits_fn(params, x) -> (B, K)` with `params`, or `logits_fn(x)`.
    x: `(N, H, W, C)` images in [0, 1].
    y: `(N,)` int labels in [0, K).
    norm: "l1", "l2" or "linf".
    eps: radius >= 0.
    version: "standard", "fast" or an `AttackConfig`.
    params: the parameters passed to `logits_fn(params, x)`; None for the other forms.
    batch_size: examples per jitted call (default: all N); the last batch is padded.
    return_counts: also return the dict of counts {"clean_errors", "apgd-ce", "apgd-t",
      "fab-t", "square", "robust"} (successes of each attack on the points still robust).

  Returns:
    `(N, H, W, C)` adversarial images (and the counts dict if `return_counts`).
  """
  norms.check_norm(norm)
  if isinstance(version, AttackConfig):
    cfg = version
  elif isinstance(version, str) and version in _VERSIONS:
    cfg = _VERSIONS[version]
  else:
    raise ValueError(f"version: unknown version {version!r}; expected one of {VERSIONS} "
                     "or an AttackConfig")
  from flax import nnx
  if isinstance(logits_fn, nnx.Module):
    from spurjax import models
    graphdef, state = nnx.split(models.eval_view(logits_fn))
    apply, params = _NNXApply(graphdef), state
  elif params is None:
    apply, params = _NoParams(logits_fn), ()
  else:
    apply = logits_fn
  x = np.asarray(x, np.float32)
  y = np.asarray(y)
  k = jax.eval_shape(lambda p, v: apply(p, v), params,
                     jax.ShapeDtypeStruct((1, *x.shape[1:]), jnp.float32)).shape[-1]
  _atk.validate_inputs(x, y, eps=eps, num_classes=k)
  if y.ndim != 1:
    raise ValueError(f"y: expected `(N,)` labels, got shape {y.shape}")
  if batch_size is not None and (not isinstance(batch_size, (int, np.integer))
                                 or batch_size < 1):
    raise ValueError(f"batch_size: must be an int >= 1, got {batch_size!r}")
  y = y.astype(np.int32)
  n = x.shape[0]
  mesh = _mesh()
  n_dev = mesh.devices.size
  bs = n if batch_size is None else min(batch_size, n)
  bs = max(-(-bs // n_dev) * n_dev, n_dev)
  fn = _compiled(apply, norm, cfg)
  data = NamedSharding(mesh, PartitionSpec("data"))
  repl = NamedSharding(mesh, PartitionSpec())
  params = jax.device_put(params, repl)
  outs, counts = [], np.zeros(6, np.int64)
  for j, m, valid, xb, yb in parallel.padded_batches(bs, x, y):
    xa, c = fn(params, jax.random.fold_in(key, j), jax.device_put(xb, data),
               jax.device_put(yb, data), jax.device_put(valid, data),
               jnp.asarray(_radius_below(eps, np.float32)))
    outs.append(np.asarray(xa)[:m])
    counts += np.asarray(c)
  x_adv = np.concatenate(outs) if outs else x
  if not return_counts:
    return x_adv
  names = ("clean_errors",) + ATTACK_NAMES + ("robust",)
  return x_adv, {nm: int(v) for nm, v in zip(names, counts)}

"""Projected gradient attacks in l1, l2 and l_inf on NHWC image batches in [0, 1].

Each norm is three pure functions, looked up by name in `_NORMS` (the norm is a static
string, never vmapped):

  init(key, x, eps)           a random start *inside* the ball (direction uniform, radius
                              eps * U[0, 1]; uniform in the cube for l_inf),
  direction(g, x, eps)        the steepest-ascent unit direction for the gradient `g`,
  project(delta, x, eps)      the exact Euclidean projection onto the ball intersected with
                              the box {0 <= x + delta <= 1},
  vertex(g, x, eps)           the linear maximiser argmax_u g . u over the ball and the box.

`pgd` iterates, for t = 1..steps (Madry et al. 2018),

  delta <- Proj_{B_eps and box}(delta + a * dir(grad_x sum_i loss_i(x + delta)))

in one `lax.fori_loop`, and returns, per example, the iterate with the highest loss. With the
default step size the first step is infinitely long, i.e. it goes to `vertex(+-g)` (both
ends evaluated, the better continued): a loss convex along that segment, such as a squared
error, peaks at one of its ends, and the random start alone may sit on the wrong side. The
projection onto the intersection (rather than onto the ball, then clipping) makes fixed points
optimal for linear losses: for l_inf both sets are coordinate-wise clips; for l2 and l1 the
KKT conditions reduce it to one scalar multiplier per example, found by bisection. For l1 this
is Duchi et al.'s (ICML 2008) soft threshold with per-coordinate caps, and equals it when the
box does not bind. (optax's `projection_l1_ball` returns NaN at radius 0; the bisection here
has no division.)

l1 steps are `vertex(g) / eps`: the step goes to the largest |g_i| while it has room towards
the box, then to the next (the fractional knapsack, thresholded by bisection, never sorted).
Tramer & Boneh's SLIDE step (NeurIPS 2019, equal moves on the top 1% of |g|) had fixed points
at an equal split of unequal coordinates that were not optima.

The returned point is `x + delta` rounded towards `x` (`_inward_point`), so that
||x_adv - x||_p <= eps holds for the float32 values themselves, not only up to rounding.

`linear_worst_case` gives the exact maximiser of `w . delta` over the ball intersected with
the box, which makes the worst-case loss of linear classifiers and linear regressions exact:
tests use it as an oracle for `pgd`.
"""

from __future__ import annotations

import functools
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from spurjax import evalset
from spurjax import norms as norms_lib

LossFn = Callable[[jax.Array, jax.Array], jax.Array]

# Sums of |u| below this are treated as zero (the l1 random direction is never that small).
_TINY = 1e-12


def _per_example_sum(v: jax.Array) -> jax.Array:
  """Sums all but the leading axis, keeping dims: `(B, ...) -> (B, 1, ..., 1)`."""
  return jnp.sum(v, axis=tuple(range(1, v.ndim)), keepdims=True)


def _uniform_radius(key: jax.Array, x: jax.Array, eps: jax.Array) -> jax.Array:
  """Radius `eps * u`, `u ~ U[0, 1]` per example, shaped `(B, 1, ..., 1)`."""
  shape = (x.shape[0],) + (1,) * (x.ndim - 1)
  return eps * jax.random.uniform(key, shape, x.dtype)


# ---------------------------------------------------------------------------------- l_inf


def _linf_init(key, x, eps):
  return eps * jax.random.uniform(key, x.shape, x.dtype, -1.0, 1.0)


def _linf_direction(g, x, eps):
  del x, eps
  return jnp.sign(g)


def _linf_vertex(g, x, eps):
  """`argmax_u g . u` over the l_inf ball and the box: `clip(eps sign(g), -x, 1 - x)`."""
  return jnp.clip(eps * jnp.sign(g), -x, 1.0 - x)


# ------------------------------------------------------------------------------------- l2


def _l2_norm(v):
  # sqrt(sum v^2 + 0) has an infinite derivative at 0; we never differentiate through it
  # (the result is under stop_gradient), but the value itself is guarded by the callers.
  return jnp.sqrt(_per_example_sum(v * v))


def _unit_l2(v):
  """v / ||v||_2 per example, and 0 where v = 0.

  Dividing by max|v| first keeps the sum of squares from underflowing for tiny gradients
  (a confident example's cross-entropy gradient can be ~1e-20, whose square is 0 in
  float32), so every nonzero gradient still gives a full-length step; the guards make
  v = 0 give 0 instead of 0/0.
  """
  m = jnp.max(jnp.abs(v), axis=tuple(range(1, v.ndim)), keepdims=True)
  v = v / jnp.where(m > 0, m, 1.0)
  n = _l2_norm(v)  # >= 1 where m > 0
  return v / jnp.where(n > 0, n, 1.0)


def _l2_init(key, x, eps):
  k_dir, k_rad = jax.random.split(key)
  u = _unit_l2(jax.random.normal(k_dir, x.shape, x.dtype))
  return u * _uniform_radius(k_rad, x, eps)


def _l2_direction(g, x, eps):
  del x, eps
  return _unit_l2(g)


# A step this many radii long along g/||g|| reaches past the box in every coordinate that
# matters, so its projection is the linear maximiser (below).
_FAR = 1e4


def _l2_vertex(g, x, eps):
  """`argmax_u g . u` over the l2 ball and the box, as the projection of a far step.

  KKT of the maximiser: u = clip(lam g, -x, 1 - x) with ||u||_2 = eps (or the whole box when
  it fits in the ball). The projection of `_FAR eps g/||g||` is clip(s _FAR eps g/||g||, ...)
  with the same norm, i.e. the same point, whenever the clipped far step leaves the ball.
  """
  return _project_l2_box(_FAR * eps * _unit_l2(g), x, eps)


# ------------------------------------------------------------------------------------- l1


def _l1_init(key, x, eps):
  k_dir, k_rad = jax.random.split(key)
  u = jax.random.laplace(k_dir, x.shape, x.dtype)
  u = u / jnp.maximum(_per_example_sum(jnp.abs(u)), _TINY)
  return u * _uniform_radius(k_rad, x, eps)


def _l1_vertex(g, x, eps):
  """Linear maximiser `argmax_u g . u` over {||u||_1 <= eps} and {0 <= x + u <= 1}.

  The fractional knapsack: spend eps on coordinates in decreasing |g_i|, each up to its room
  r_i towards the box in the direction of g_i. The order is never sorted: the |g| threshold
  t with sum_{|g_i| >= t} r_i = eps is bracketed by bisection (32 compare-and-sum passes over
  `(B, d)`); coordinates above the bracket get their whole room, those inside it share what
  is left in proportion to their room. `(B, ...) -> (B, ...)`.
  """
  shape = g.shape
  b = shape[0]
  g2, x2 = g.reshape(b, -1), x.reshape(b, -1)
  room = jnp.where(g2 > 0, 1.0 - x2, jnp.where(g2 < 0, x2, 0.0))
  a = jnp.where(room > 0, jnp.abs(g2), 0.0)
  moving = a > 0

  def fill(t):
    return jnp.sum(jnp.where(a >= t, room, 0.0), axis=1, keepdims=True)

  top = jnp.max(a, axis=1, keepdims=True)
  eps = jnp.broadcast_to(eps, (b, 1)).astype(g.dtype)
  lo, hi = _bisect(lambda t: fill(t) > eps, jnp.zeros_like(top), 2.0 * top + _TINY)
  full = moving & (a >= hi)
  part = moving & (a >= lo) & ~full
  s_full = jnp.sum(jnp.where(full, room, 0.0), axis=1, keepdims=True)
  s_part = jnp.sum(jnp.where(part, room, 0.0), axis=1, keepdims=True)
  frac = jnp.clip((eps - s_full) / jnp.where(s_part > 0, s_part, 1.0), 0.0, 1.0)
  fits = jnp.sum(jnp.where(moving, room, 0.0), axis=1, keepdims=True) <= eps
  m = jnp.where(full | (fits & moving), room, jnp.where(part, frac * room, 0.0))
  return (jnp.sign(g2) * m).reshape(shape)


def _l1_direction(g, x, eps):
  """Steepest ascent of the l1 ball with box caps: `_l1_vertex(g, x, eps) / eps`.

  All of the step goes to the largest |g_i| while it has room towards the box, then to the
  next: a unit-l1 direction whose coordinate set and sizes follow the gradient, so unequal
  gradients never keep an equal split (Tramer & Boneh's SLIDE step, equal moves on the top
  1% of |g|, has such fixed points). 0 at eps = 0.
  """
  safe = jnp.where(eps > 0, eps, 1.0)
  return jnp.where(eps > 0, _l1_vertex(g, x, eps) / safe, 0.0)


# Halvings of the multiplier's bracket: 2^-32 of its width is below float32 resolution, and
# the feasible end of the bracket is returned, so fewer halvings never leave the ball.
_BISECT_ITERS = 32


def _bisect(pred, lo, hi):
  """Bisection for a monotone predicate with pred(lo) True, pred(hi) False; keeps both."""
  def body(_, lh):
    l, h = lh
    mid = 0.5 * (l + h)
    p = pred(mid)
    return jnp.where(p, mid, l), jnp.where(p, h, mid)
  return jax.lax.fori_loop(0, _BISECT_ITERS, body, (lo, hi))


def _project_l2_box(delta, x, eps):
  """Exact projection of `delta` `(B, ...)` onto {||u||_2 <= eps} and {0 <= x + u <= 1}.

  KKT: u = clip(s v, -x, 1 - x) with s = 1 / (1 + mu) in (0, 1], mu >= 0 the multiplier
  of the ball; ||u|| is increasing in s, so s is found by bisection (s = 1 when the clipped
  point already lies in the ball). The returned s is the feasible end of the bracket.
  Computed on the `(B, d)` view (one reduction axis fuses better on XLA:CPU).
  """
  shape = delta.shape
  delta, x = delta.reshape(shape[0], -1), x.reshape(shape[0], -1)
  lo, hi = -x, 1.0 - x

  def size(s):  # s: (B, 1, ..., 1)
    return _l2_norm(jnp.clip(s * delta, lo, hi))

  one = jnp.ones((delta.shape[0],) + (1,) * (delta.ndim - 1), delta.dtype)
  inside = size(one) <= eps
  s_feasible, _ = _bisect(lambda s: size(s) <= eps, jnp.zeros_like(one), one)
  s = jnp.where(inside, one, s_feasible)
  return jnp.clip(s * delta, lo, hi).reshape(shape)


def _project_l1_box(delta, x, eps):
  """Exact projection of `delta` `(B, ...)` onto {||u||_1 <= eps} and {0 <= x + u <= 1}.

  Duchi et al.'s (2008) soft threshold with per-coordinate caps: u_i = sign(v_i)
  clip(|v_i| - theta, 0, r_i), r_i the room towards the box in the direction of v_i, and
  theta >= 0 the multiplier of the ball; ||u||_1 decreases in theta, so theta is found by
  bisection (theta = 0 when the clipped point is inside). Without binding caps this is exactly
  Duchi's projection; no division anywhere, so eps = 0 gives u = 0, not NaN. Computed on the
  `(B, d)` view: one reduction axis, which XLA:CPU fuses far better than three.
  """
  shape = delta.shape
  delta, x = delta.reshape(shape[0], -1), x.reshape(shape[0], -1)
  room = jnp.where(delta > 0, 1.0 - x, x)
  a = jnp.abs(delta)

  def size(theta):
    return jnp.sum(jnp.clip(a - theta, 0.0, room), axis=1, keepdims=True)

  zero = jnp.zeros((shape[0], 1), delta.dtype)
  top = jnp.max(a, axis=1, keepdims=True)
  inside = size(zero) <= eps
  _, theta = _bisect(lambda t: size(t) > eps, zero, top)  # hi end: ||u||_1 <= eps
  theta = jnp.where(inside, zero, theta)
  return (jnp.sign(delta) * jnp.clip(a - theta, 0.0, room)).reshape(shape)


def _project_linf_box(delta, x, eps):
  """Exact projection onto {||u||_inf <= eps} and the box: both are coordinate-wise clips."""
  return jnp.clip(jnp.clip(delta, -eps, eps), -x, 1.0 - x)


class _Norm(NamedTuple):
  init: Callable
  direction: Callable
  project: Callable
  vertex: Callable


_NORMS = {
    "linf": _Norm(_linf_init, _linf_direction, _project_linf_box, _linf_vertex),
    "l2": _Norm(_l2_init, _l2_direction, _project_l2_box, _l2_vertex),
    "l1": _Norm(_l1_init, _l1_direction, _project_l1_box, _l1_vertex),
}
NORMS = norms_lib.NORMS
assert set(_NORMS) == set(NORMS)


def lp_norm(delta: jax.Array, norm: str) -> jax.Array:
  """Per-example norm of `delta` `(B, ...)`: `(B,)`."""
  norms_lib.check_norm(norm)
  flat = delta.reshape(delta.shape[0], -1)
  if norm == "linf":
    return jnp.max(jnp.abs(flat), axis=1)
  if norm == "l2":
    return jnp.sqrt(jnp.sum(flat * flat, axis=1))
  return jnp.sum(jnp.abs(flat), axis=1)


# -------------------------------------------------------------------------------- losses


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Per-example cross-entropy `-log softmax(z)_y`; `(B, K), (B,) -> (B,)`."""
  logp = jax.nn.log_softmax(logits, axis=-1)
  return -jnp.take_along_axis(logp, labels[:, None], axis=-1)[:, 0]


def margin(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Per-example Carlini-Wagner margin `max_{j != y} z_j - z_y`; `(B, K), (B,) -> (B,)`.

  Positive exactly when the example is misclassified.
  """
  k = logits.shape[-1]
  onehot = jax.nn.one_hot(labels, k, dtype=logits.dtype)
  z_y = jnp.sum(logits * onehot, axis=-1)
  z_other = jnp.max(jnp.where(onehot > 0, -jnp.inf, logits), axis=-1)
  return z_other - z_y


def _top4(logits):
  return jax.lax.top_k(logits, min(4, logits.shape[-1]))[0]


def dlr(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Difference of logits ratio (Croce & Hein 2020); `(B, K), (B,) -> (B,)`, K >= 3.

  `DLR = -(z_y - max_{j != y} z_j) / (z_pi1 - z_pi3 + 1e-12)`, pi the logits sorted
  decreasingly; invariant to shifting and rescaling the logits, positive iff misclassified.
  """
  if logits.shape[-1] < 3:
    raise ValueError(f"logits: DLR needs at least 3 classes, got {logits.shape[-1]}")
  zs = _top4(logits)
  return margin(logits, labels) / (zs[:, 0] - zs[:, 2] + 1e-12)


def dlr_targeted(logits: jax.Array, labels: jax.Array, targets: jax.Array) -> jax.Array:
  """Targeted DLR (Croce & Hein 2020); `(B, K), (B,), (B,) -> (B,)`, K >= 4.

  `-(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2 + 1e-12)`; maximising it pushes the target
  class t above the true class y.
  """
  if logits.shape[-1] < 4:
    raise ValueError(f"logits: targeted DLR needs at least 4 classes, got {logits.shape[-1]}")
  zs = _top4(logits)
  z_y = jnp.take_along_axis(logits, labels[:, None], axis=-1)[:, 0]
  z_t = jnp.take_along_axis(logits, targets[:, None], axis=-1)[:, 0]
  return (z_t - z_y) / (zs[:, 0] - 0.5 * (zs[:, 2] + zs[:, 3]) + 1e-12)


LOSSES = {"ce": cross_entropy, "margin": margin, "dlr": dlr}


def make_loss_fn(logits_fn: Callable[[jax.Array], jax.Array], loss: str = "ce") -> LossFn:
  """Wraps a logits function into the `loss_fn(x, y) -> (B,)` that `pgd` ascends.

  Args:
    logits_fn: `x (B, H, W, C) -> logits (B, K)`; for a model pass its eval-mode view
      (`spurjax.models.eval_view`).
    loss: "ce" (cross-entropy, the default), "margin" or "dlr".
  """
  if loss not in LOSSES:
    raise ValueError(f"loss: unknown loss {loss!r}; expected one of {sorted(LOSSES)}")
  fn = LOSSES[loss]
  return lambda x, y: fn(logits_fn(x), y)


# ---------------------------------------------------------------------------- validation


def _is_concrete(v) -> bool:
  return not isinstance(v, jax.core.Tracer)


def validate_inputs(x, y=None, *, eps=None, num_classes: int | None = None) -> None:
  """Checks concrete (non-traced) attack inputs; traced values are skipped.

  Raises:
    ValueError naming the argument: `x` not rank 4 or outside [0, 1] or non-finite, `eps`
    negative or non-finite, `y` not one label per example, or (with `num_classes`) labels
    outside `[0, num_classes)`.
  """
  if jnp.ndim(x) != 4:
    raise ValueError(f"x: expected an NHWC image batch of rank 4, got shape {jnp.shape(x)}")
  if _is_concrete(x):
    xv = np.asarray(x)
    evalset.check_finite("x", xv)
    if xv.size and not (np.isfinite(xv).all() and xv.min() >= 0.0 and xv.max() <= 1.0):
      raise ValueError(f"x: images must lie in [0, 1]; got range [{xv.min()}, {xv.max()}]")
  if eps is not None and _is_concrete(eps):
    e = np.asarray(eps)
    if e.ndim != 0 or not np.isfinite(e) or e < 0:
      raise ValueError(f"eps: must be a finite scalar >= 0, got {eps!r}")
  if y is not None:
    if jnp.shape(y)[:1] != jnp.shape(x)[:1]:
      raise ValueError(f"y: expected one label per example, got shape {jnp.shape(y)} for x "
                       f"of shape {jnp.shape(x)}")
    if num_classes is not None and _is_concrete(y):
      yv = np.asarray(y)
      if not np.issubdtype(yv.dtype, np.integer):
        raise ValueError(f"y: class labels must be integers, got dtype {yv.dtype}")
      if yv.size and (yv.min() < 0 or yv.max() >= num_classes):
        raise ValueError(f"y: labels must lie in [0, {num_classes}); got range "
                         f"[{yv.min()}, {yv.max()}]")


# ---------------------------------------------------------------------------------- PGD


def default_step_size(eps, steps: int):
  """Madry et al.'s step `a = 2.5 eps / steps`, so the walk can cross the ball and back."""
  return 2.5 * eps / steps


def pgd(key: jax.Array, loss_fn: LossFn, x: jax.Array, y: jax.Array, *, norm: str,
        eps, steps: int, step_size=None, random_start: bool = True,
        l1_sparsity: float = 0.99, num_classes: int | None = None) -> jax.Array:
  """Projected gradient ascent on `sum_i loss_fn(x + delta, y)_i` within an l_p ball.

  For t = 1..steps:  delta <- clip(x + Proj_eps(delta + a dir_p(g)), 0, 1) - x,  with
  g = grad_delta sum_i loss_i(x + delta) and dir_p the steepest-ascent unit direction of the
  norm (sign(g) for l_inf, g/||g||_2 for l2, the ball-and-box linear maximiser over eps for
  l1). With `step_size=None` the first step is of infinite length: to the linear maximiser
  of +g and of -g over the ball and the box (both evaluated, the better one continued),
  then `steps - 1` steps of `2.5 eps / steps`. The gradient of
  the summed loss gives every example its own gradient, as examples are independent in eval
  mode. Not jitted itself: call it inside `jax.jit` (norm, steps, random_start, l1_sparsity
  static; eps and step_size may be traced).

  Args:
    key: PRNG key for the random start.
    loss_fn: `(x (B, H, W, C), y (B, ...)) -> (B,)` per-example loss to maximise, e.g.
      `make_loss_fn(logits_fn)` (cross-entropy) or `make_loss_fn(logits_fn, "margin")`.
    x: `(B, H, W, C)` clean images in [0, 1].
    y: `(B, ...)` labels or targets passed to `loss_fn`.
    norm: "l1", "l2" or "linf".
    eps: radius >= 0 (scalar).
    steps: number of ascent steps (static int >= 0).
    step_size: constant step `a` for all `steps` steps; None (default) for the schedule
      above (first step to the better vertex, then `2.5 eps / steps`).
    random_start: start from a point drawn inside the ball (direction uniform, radius
      `eps * U[0, 1]`, then clipped to the box) instead of from `x`.
    l1_sparsity: validated to lie in [0, 1) and otherwise unused: the l1 step is the exact
      ball-and-box steepest ascent, which picks its own coordinates (kept so that existing
      calls still work).
    num_classes: if given, concrete labels are checked to lie in `[0, num_classes)`.

  Returns:
    `(B, H, W, C)` adversarial images `x + delta` with `||delta_i||_p <= eps` and values in
    [0, 1], under `stop_gradient`: per example the iterate (start and final point included)
    with the highest loss, so without a random start the loss is never below the clean one.

  Raises:
    ValueError naming the argument for an unknown `norm`, negative `eps`, `steps < 0`, or
    (concrete) images outside [0, 1] / not rank 4, or labels out of range.
  """
  norms_lib.check_norm(norm)
  if not isinstance(steps, (int, np.integer)) or steps < 0:
    raise ValueError(f"steps: must be a non-negative int, got {steps!r}")
  if not 0.0 <= l1_sparsity < 1.0:
    raise ValueError(f"l1_sparsity: must lie in [0, 1), got {l1_sparsity!r}")
  validate_inputs(x, y, eps=eps, num_classes=num_classes)
  if step_size is not None and _is_concrete(step_size) and np.asarray(step_size) < 0:
    raise ValueError(f"step_size: must be >= 0, got {step_size!r}")

  ops = _NORMS[norm]
  x = jax.lax.stop_gradient(x)
  eps = jnp.asarray(eps, x.dtype)
  a = default_step_size(eps, max(steps, 1)) if step_size is None else jnp.asarray(
      step_size, x.dtype)
  if random_start:
    delta = ops.project(ops.init(key, x, eps), x, eps)
  else:
    delta = jnp.zeros_like(x)
  vertex_start = step_size is None and steps >= 1

  def loss_and_grad(x_adv):
    # vjp gives the per-example losses (to keep the best iterate) and the gradient of
    # their sum (each example's own gradient) in one forward-backward pass.
    losses, vjp = jax.vjp(lambda xa: loss_fn(xa, y), x_adv)
    return losses, vjp(jnp.ones_like(losses))[0]

  def keep_best(best_x, best_loss, x_adv, losses):
    better = losses > best_loss
    mask = better.reshape((-1,) + (1,) * (x.ndim - 1))
    return jnp.where(mask, x_adv, best_x), jnp.where(better, losses, best_loss)

  def body(_, carry):
    delta, best_x, best_loss = carry
    x_adv = _inward_point(x, delta)
    losses, g = loss_and_grad(x_adv)
    best_x, best_loss = keep_best(best_x, best_loss, x_adv, losses)
    delta = ops.project(delta + a * ops.direction(g, x, eps), x, eps)
    return delta, best_x, best_loss

  best_x, best_loss = x, jnp.full((x.shape[0],), -jnp.inf, x.dtype)
  if vertex_start:
    # First step of infinite length: to the vertex of the ball-and-box that maximises the
    # linearisation at the start; a loss convex along that segment peaks at one of its two
    # ends, so the other end (the vertex of -g) is evaluated too and the better one kept.
    x_adv = _inward_point(x, delta)
    losses, g = loss_and_grad(x_adv)
    best_x, best_loss = keep_best(best_x, best_loss, x_adv, losses)
    ends = [ops.project(ops.vertex(s * g, x, eps), x, eps) for s in (1.0, -1.0)]
    ends_loss = []
    for end in ends:
      x_end = _inward_point(x, end)
      ends_loss.append(loss_fn(x_end, y))
      best_x, best_loss = keep_best(best_x, best_loss, x_end, ends_loss[-1])
    flip = (ends_loss[1] > ends_loss[0]).reshape((-1,) + (1,) * (x.ndim - 1))
    delta = jnp.where(flip, ends[1], ends[0])
  delta, best_x, best_loss = jax.lax.fori_loop(0, steps - int(vertex_start), body,
                                               (delta, best_x, best_loss))
  x_last = _inward_point(x, delta)
  best_x, _ = keep_best(best_x, best_loss, x_last, loss_fn(x_last, y))
  return jax.lax.stop_gradient(best_x)


def _inward_point(x: jax.Array, delta: jax.Array) -> jax.Array:
  """`x + delta` rounded towards `x` and clipped to [0, 1].

  fl(x + delta) is within half an ulp of the exact sum but may lie farther from x than
  delta does; one `nextafter` step towards x puts it at most |delta_i| away, exactly, in
  every coordinate, so ||x_adv - x||_p <= ||delta||_p holds without rounding slack (a small
  eps spread over many pixels would otherwise overshoot the ball by ulps).
  """
  s = x + delta
  s = jnp.where(s == x, s, jnp.nextafter(s, x))
  return jnp.clip(s, 0.0, 1.0)


def fgsm(loss_fn: LossFn, x: jax.Array, y: jax.Array, *, eps, norm: str = "linf",
         num_classes: int | None = None) -> jax.Array:
  """Fast gradient (sign) method: one steepest-ascent step of length `eps` from `x`.

  `x_adv = clip(x + eps * sign(grad_x sum_i loss_i(x, y)), 0, 1)` for l_inf (Goodfellow et
  al. 2015); for l2/l1 the l2 / l1 steepest-ascent direction of the same length. Equal to
  `pgd(..., steps=1, step_size=eps, random_start=False)`.

  Args:
    loss_fn: `(x, y) -> (B,)` per-example loss.
    x: `(B, H, W, C)` images in [0, 1].
    y: `(B, ...)` labels.
    eps: radius >= 0.
    norm: "linf" (default), "l2" or "l1".
    num_classes: optional label range check.

  Returns:
    `(B, H, W, C)` adversarial images.
  """
  return pgd(jax.random.key(0), loss_fn, x, y, norm=norm, eps=eps, steps=1, step_size=eps,
             random_start=False, num_classes=num_classes)


# -------------------------------------------------------------------- exact linear oracle


def _linear_max_dot_one(w, x, eps, norm, lo, hi):
  """max_{delta} w . delta s.t. ||delta||_p <= eps, lo <= x + delta <= hi, for flat `(d,)`.

  The box gives each coordinate the room r_i = (hi - x_i) if w_i > 0 else (x_i - lo) in the
  helpful direction; moving against sign(w_i) never helps. Then
    l_inf: delta_i = sign(w_i) min(eps, r_i)                      (separable)
    l1:    fractional knapsack: spend eps on coordinates in decreasing |w_i|, each up to r_i
    l2:    delta_i = sign(w_i) min(lam |w_i|, r_i), lam >= 0 by bisection on ||delta||_2 = eps
           (KKT of the box-constrained problem), or all r_i if they fit inside the ball.
  """
  s = jnp.sign(w)
  aw = jnp.abs(w)
  room = jnp.where(w > 0, hi - x, jnp.where(w < 0, x - lo, 0.0))
  # No coordinate of an l_p ball (p >= 1) exceeds eps, so capping the room at eps changes
  # nothing and keeps it finite without a box.
  room = jnp.clip(room, 0.0, eps)
  if norm == "linf":
    m = jnp.minimum(eps, room)
  elif norm == "l1":
    order = jnp.argsort(-aw)
    r_sorted = room[order]
    before = jnp.cumsum(r_sorted) - r_sorted
    m_sorted = jnp.clip(eps - before, 0.0, r_sorted)
    m = jnp.zeros_like(room).at[order].set(m_sorted)
  else:
    def size(lam):
      return jnp.sqrt(jnp.sum(jnp.minimum(lam * aw, room) ** 2))

    lo_l, hi_l = jnp.zeros((), w.dtype), jnp.ones((), w.dtype)
    # Grow hi until it overshoots (or the whole box fits in the ball).
    hi_l = jax.lax.fori_loop(0, 200, lambda _, h: jnp.where(size(h) < eps, 2 * h, h), hi_l)

    def bisect(_, lh):
      l, h = lh
      mid = 0.5 * (l + h)
      big = size(mid) > eps
      return jnp.where(big, l, mid), jnp.where(big, mid, h)

    lo_l, hi_l = jax.lax.fori_loop(0, 200, bisect, (lo_l, hi_l))
    m = jnp.minimum(lo_l * aw, room)
  return s * m


def linear_worst_case(w: jax.Array, x: jax.Array, *, norm: str, eps,
                      box: tuple[float, float] | None = (0.0, 1.0)) -> jax.Array:
  """Exact `argmax_delta w . delta` over the l_p ball of radius `eps` and the box.

  With `f(x) = w . x + b`, a linear classifier's margin loss `l(y f(x))` (l decreasing, y in
  {-1, +1}) is maximised by `linear_worst_case(-y w, ...)`, and a regression loss
  `l(|f(x) - t|)` by the better of `linear_worst_case(+w)` and `linear_worst_case(-w)`.
  Without the box the optimum is `eps ||w||_q` with q the dual exponent.

  Args:
    w: `(B, ...)` or `(...)` (broadcast over the batch) ascent directions, same trailing
      shape as `x`.
    x: `(B, ...)` points.
    norm: "l1", "l2" or "linf".
    eps: radius >= 0.
    box: `(lo, hi)` bounds for `x + delta`, or None for no box.

  Returns:
    `(B, ...)` optimal perturbations `delta`.
  """
  norms_lib.check_norm(norm)
  if _is_concrete(eps) and np.asarray(eps) < 0:
    raise ValueError(f"eps: must be >= 0, got {eps!r}")
  b = x.shape[0]
  w = jnp.broadcast_to(w, x.shape).reshape(b, -1)
  xf = x.reshape(b, -1)
  lo, hi = (-jnp.inf, jnp.inf) if box is None else box
  eps = jnp.asarray(eps, x.dtype)
  one = functools.partial(_linear_max_dot_one, norm=norm, lo=lo, hi=hi)
  d = jax.vmap(lambda wi, xi: one(wi, xi, eps))(w, xf)
  return d.reshape(x.shape)


def __getattr__(name):
  # The evaluation-grade attacks live in `spurjax.autoattack` (which imports this module);
  # `attacks.apgd` and `attacks.autoattack` resolve there lazily, so either module can be
  # imported first.
  if name in ("apgd", "autoattack"):
    from spurjax import autoattack as _autoattack
    return getattr(_autoattack, name)
  raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

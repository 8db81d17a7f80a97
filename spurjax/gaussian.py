r"""Exact adversarial risk and minimizers for any jointly Gaussian linear regression.

The model is the joint Gaussian of (x, y), x in R^d, given by its (uncentred) second
moments: `sigma = E[x x^T]` `(d, d)`, `cross = E[x y]` `(d,)`, `var_y = E[y^2]` `()`, i.e.
the joint covariance

    J = [[sigma, cross], [cross^T, var_y]]     (d + 1, d + 1), positive semidefinite.

The symmetric core/spurious model of `spurjax.theory` is one instance
(`GaussianModel.from_core_spurious`); sample moments of data are another
(`GaussianModel.from_samples`).

Adversarial risk (the definition of `spurjax.theory`): for w and an attack
||delta||_p <= eps the worst-case squared loss is (|w^T x - y| + eps ||w||_q)^2, q dual to
p, so

    R(w; eps, p) = s^2 + 2 eps k s n + eps^2 n^2,   s^2 = w^T sigma w - 2 w^T cross + var_y,
    n = ||w||_q,  k = sqrt(2 / pi).

Exact minimizer. Optimality, 0 in (s + eps k n) ds + (eps k s + eps^2 n) dn, says the
minimizer also solves the penalised least squares

    w(mu) = argmin_w 1/2 s(w)^2 + mu n(w)   at   mu = Phi(s, n) = s (eps k s + eps^2 n) / (s + eps k n),

and along the path w(mu) the risk decreases while Phi < mu and increases once Phi > mu
(it is a convex function of the norm budget). The path is computed exactly:

  * l2 attack (n = ||.||_2): the ridge path w = (sigma + lam I)^{-1} cross, mu = lam n, from
    one eigendecomposition of sigma (s, n, mu in O(d) per lam), tabulated at 129 fixed
    nodes; the multiplier is bracketed by the nodes and found by safeguarded Newton.
  * l_inf attack (n = ||.||_1): the lasso homotopy (LARS with the lasso modification):
    piecewise linear in mu with exact breakpoints (a feature joins when its correlation
    |cross_j - sigma_j w| reaches mu, leaves when its weight reaches 0).
  * l1 attack (n = ||.||_inf): the l_inf-penalty homotopy: piecewise linear in mu; the
    coordinates split into capped ones (|w_i| = t = ||w||_inf, sign fixed) and free ones
    (zero gradient); a free coordinate joins the cap when |w_i| reaches t, a capped one
    leaves when its share lambda_i = sign_i (cross - sigma w)_i of mu reaches 0.

The homotopies walk from mu_0 = ||cross||_* (w = 0) down to 0. Each piece is solved from
the (Woodbury-updated, rank 2 or 4 per breakpoint) inverse of its system plus one step of
iterative refinement against the system itself, as w(mu) = p - mu q; along it s(mu)^2 is
a quadratic and n(mu) linear in mu, kept in closed form. The path does not depend on eps:
for a grid of radii (`eps` `(m,)`) it is walked once and every piece recorded; each radius
then finds its piece (the first whose lower end has Phi >= mu; a binary search, as
Phi - mu changes sign once along the path) and the multiplier on it by 64 bisection steps
on the sign of Phi - mu, each O(1). A single radius stops the walk
at its piece. The answer is the best of the bracket ends, the least-squares solution and
the origin. A homotopy takes at most `max_steps` breakpoints (static, default 4 d + 8);
if the multiplier lies beyond them the result is NaN, never a wrong finite answer.

Precision: compute under float64 (`jax.enable_x64(True)`) for round-off accuracy. The
minimizer needs `sigma` positive definite (otherwise it need not be unique);
`adversarial_risk` only needs J positive semidefinite. Eigenvalues of J below
`PSD_RTOL * ||J||` are treated as exact zeros (so that an interpolating predictor, s = 0,
gets s = 0 rather than sqrt(round-off)); below `-PSD_RTOL * ||J||` J is rejected.

Everything jits and vmaps (over eps, and over models of one size); the attack norm is
static. The solver is compiled once per (d, norm, shape of eps). Under vmap over models the
factorizations (eigh, Cholesky, inverse) run one model at a time (`_one_at_a_time`): a
batched LAPACK call on CPU can deadlock the XLA runtime when two run at once.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from spurjax import norms
from spurjax import theory

NORMS = norms.NORMS
K = theory.K
Minimizer = theory.Minimizer
PSD_RTOL = 1e-10  # relative tolerance on the joint covariance's eigenvalues (see above)
_BISECTION_STEPS = 64
_NEWTON_RTOL = 1e-10  # relative Newton step after which the ridge multiplier search stops


def _one_at_a_time(fn):
  """`fn` whose vmap is a loop over the batch (`lax.map`) instead of one batched call.

  For the dense factorizations (eigh, Cholesky, triangular solves, inverse). jaxlib's
  CPU LAPACK kernels split a batched call over the XLA intra-op thread pool and block the
  calling pool thread until the pieces finish; when as many such calls run concurrently
  (independent thunks) as the pool has threads, every pool thread waits for work queued
  behind it and the program hangs (seen here: 8 models at d = 50 on 2 cores, one run in
  5-9). Unbatched calls do not use the pool. The cost is the factorizations' batch
  parallelism, O(B d^3) sequential work next to the O(K B d^2) homotopy.
  """
  wrapped = jax.custom_batching.custom_vmap(fn)

  @wrapped.def_vmap
  def _rule(axis_size, in_batched, *args):
    args = tuple(a if b else jnp.broadcast_to(a, (axis_size,) + jnp.shape(a))
                 for a, b in zip(args, in_batched))
    out = jax.lax.map(lambda xs: wrapped(*xs), args)
    return out, jax.tree.map(lambda _: True, out)

  return wrapped


_eigh = _one_at_a_time(lambda a: tuple(jnp.linalg.eigh(a)))
_cholesky = _one_at_a_time(jnp.linalg.cholesky)
_cho_solve = _one_at_a_time(lambda chol, b: jax.scipy.linalg.cho_solve((chol, True), b))
_inv = _one_at_a_time(jnp.linalg.inv)


@functools.partial(jax.tree_util.register_dataclass,
                   data_fields=["sigma", "cross", "var_y"], meta_fields=[])
@dataclasses.dataclass(frozen=True)
class GaussianModel:
  """A jointly Gaussian (x, y) by its second moments (a pytree; all fields are leaves).

  Attributes:
    sigma: `(d, d)` E[x x^T], symmetric positive semidefinite.
    cross: `(d,)` E[x y].
    var_y: `()` E[y^2].

  The joint covariance [[sigma, cross], [cross^T, var_y]] must be positive semidefinite
  (within `PSD_RTOL`); the public functions check concrete inputs (`validate_gaussian`).
  """

  sigma: Any
  cross: Any
  var_y: Any

  @property
  def dim(self) -> int:
    """Input dimension d."""
    return int(jnp.shape(self.cross)[-1])

  @classmethod
  def from_core_spurious(cls, model: theory.CoreSpuriousModel) -> "GaussianModel":
    """The symmetric core/spurious model as a general one (moments in closed form)."""
    sigma, cross, var_y = theory.moments(model)
    return cls(sigma, cross, var_y)

  @classmethod
  def from_samples(cls, x: Any, y: Any, *, center: bool = False) -> "GaussianModel":
    """Sample second moments of data.

    Args:
      x: `(n, d)` inputs.
      y: `(n,)` labels.
      center: subtract the sample means first (moments of the centred data, for a model
        without intercept fitted to centred data). Default: raw moments
        sigma = x^T x / n, cross = x^T y / n, var_y = y^T y / n.

    Returns:
      The `GaussianModel` of the empirical distribution's moments (always PSD).
    """
    x = np.asarray(x, np.float64)
    y = np.asarray(y, np.float64)
    if x.ndim != 2 or x.shape[0] < 1 or x.shape[1] < 1:
      raise ValueError(f"x must have shape (n, d) with n, d >= 1, got {x.shape}")
    if y.shape != (x.shape[0],):
      raise ValueError(f"y must have shape (n,) = ({x.shape[0]},), got {y.shape}")
    if not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
      raise ValueError("x and y must be finite")
    if center:
      x = x - x.mean(axis=0)
      y = y - y.mean()
    n = x.shape[0]
    dtype = jnp.result_type(float)
    return cls(jnp.asarray(x.T @ x / n, dtype), jnp.asarray(x.T @ y / n, dtype),
               jnp.asarray(y @ y / n, dtype))


# ---------------------------------------------------------------------------------------
# Validation (concrete values only; tracers pass through).


def _joint(sigma: Any, cross: Any, var_y: Any) -> Any:
  xp = jnp if any(isinstance(a, jax.core.Tracer) for a in (sigma, cross, var_y)) else np
  return xp.block([[sigma, cross[:, None]], [cross[None, :], xp.reshape(var_y, (1, 1))]])


def validate_gaussian(model: GaussianModel, *, positive_definite: bool = False) -> None:
  """Checks shapes, finiteness, symmetry and PSD of the joint covariance.

  Raises ValueError naming the field (`sigma`, `cross`, `var_y`) and the allowed range.
  With `positive_definite`, `sigma` must also be positive definite (the minimizer needs it).
  """
  if not isinstance(model, GaussianModel):
    raise ValueError(f"model must be a GaussianModel, got {type(model).__name__}")
  sigma, cross, var_y = model.sigma, model.cross, model.var_y
  if jnp.ndim(cross) != 1 or jnp.shape(cross)[0] < 1:
    raise ValueError(f"cross must have shape (d,) with d >= 1, got {jnp.shape(cross)}")
  d = jnp.shape(cross)[0]
  if jnp.shape(sigma) != (d, d):
    raise ValueError(f"sigma must have shape (d, d) = ({d}, {d}), got {jnp.shape(sigma)}")
  if jnp.shape(var_y) != ():
    raise ValueError(f"var_y must be a scalar (shape ()), got shape {jnp.shape(var_y)}")
  if any(isinstance(a, jax.core.Tracer) for a in (sigma, cross, var_y)):
    return
  sigma = np.asarray(sigma, np.float64)
  cross = np.asarray(cross, np.float64)
  var_y = np.asarray(var_y, np.float64)
  for name, value in (("sigma", sigma), ("cross", cross), ("var_y", var_y)):
    if not np.all(np.isfinite(value)):
      raise ValueError(f"{name} must be finite, got a non-finite entry")
  joint = _joint(sigma, cross, var_y)
  scale = max(np.max(np.abs(joint)), np.finfo(np.float64).tiny)
  asym = np.max(np.abs(sigma - sigma.T))
  if asym > PSD_RTOL * scale:
    raise ValueError(f"sigma must be symmetric (within {PSD_RTOL:g} relative), "
                     f"max |sigma - sigma^T| = {asym:.3g}")
  if var_y < 0:
    raise ValueError(f"var_y must be >= 0, got {var_y}")
  sym = 0.5 * (joint + joint.T)
  lam = np.linalg.eigvalsh(sym)
  if lam[0] < -PSD_RTOL * max(lam[-1], scale):
    low = np.linalg.eigvalsh(0.5 * (sigma + sigma.T))[0]
    if low < -PSD_RTOL * max(lam[-1], scale):
      raise ValueError(f"sigma must be positive semidefinite, smallest eigenvalue {low:.3g}")
    raise ValueError("cross and var_y must make the joint covariance [[sigma, cross], "
                     "[cross^T, var_y]] positive semidefinite (var_y >= cross^T sigma^+ "
                     f"cross); its smallest eigenvalue is {lam[0]:.3g}")
  if positive_definite:
    low = np.linalg.eigvalsh(0.5 * (sigma + sigma.T))[0]
    if low <= PSD_RTOL * max(lam[-1], scale):
      raise ValueError("sigma must be positive definite for a unique minimizer, smallest "
                       f"eigenvalue {low:.3g}")


def _check_w(model: GaussianModel, w: Any) -> None:
  d = model.dim
  if jnp.shape(w) != (d,):
    raise ValueError(f"w must have shape (d,) = ({d},), got {jnp.shape(w)}")
  if not isinstance(w, jax.core.Tracer) and not np.all(np.isfinite(np.asarray(w, np.float64))):
    raise ValueError("w must be finite")


# ---------------------------------------------------------------------------------------
# Residual std, dual norms, the multiplier.


def _fields(model: GaussianModel) -> tuple[jax.Array, jax.Array, jax.Array]:
  dtype = jnp.result_type(float)
  sigma = jnp.asarray(model.sigma, dtype)
  return (0.5 * (sigma + sigma.T), jnp.asarray(model.cross, dtype),
          jnp.asarray(model.var_y, dtype))


def _joint_factor(sigma: jax.Array, cross: jax.Array, var_y: jax.Array) -> jax.Array:
  """B `(d + 1, d + 1)` with J = B B^T, eigenvalues below PSD_RTOL ||J|| set to 0.

  s(w) = ||B^T [w; -1]|| is then a sum of squares: exactly ~0 at interpolation (a quadratic
  form would leave sqrt(round-off) ~ 1e-8 there).
  """
  lam, u = _eigh(_joint(sigma, cross, var_y))
  lam = jnp.where(lam > PSD_RTOL * jnp.max(jnp.abs(lam)), lam, 0.0)
  return u * jnp.sqrt(lam)[None, :]


def _dual_norm(w: jax.Array, norm: str) -> jax.Array:
  """||w||_q, q dual to the attack norm p (l1 -> linf, l2 -> l2, linf -> l1)."""
  if norm == "l1":
    return jnp.max(jnp.abs(w))
  if norm == "l2":
    return theory._safe_l2(w)
  return jnp.sum(jnp.abs(w))


def adversarial_risk(model: GaussianModel, w: Any, eps: Any, norm: str) -> jax.Array:
  """Exact population adversarial risk of a linear predictor under a Gaussian model.

      R(w; eps, p) = E max_{||delta||_p <= eps} (w^T (x + delta) - y)^2
                   = s^2 + 2 eps k s n + eps^2 n^2,   k = sqrt(2 / pi),

  s^2 = w^T sigma w - 2 w^T cross + var_y (computed as ||B^T [w; -1]||^2 with J = B B^T),
  n = ||w||_q, q dual to p.

  Args:
    model: the Gaussian model (sigma `(d, d)`, cross `(d,)`, var_y `()`).
    w: `(d,)` predictor.
    eps: `()` attack radius >= 0.
    norm: "l1", "l2" or "linf" (static).

  Returns:
    `()` the risk; gradients in w are finite everywhere.
  """
  validate_gaussian(model)
  norms.check_norm(norm)
  theory._check_eps(eps)
  _check_w(model, w)
  sigma, cross, var_y = _fields(model)
  w = jnp.asarray(w, sigma.dtype)
  b = _joint_factor(sigma, cross, var_y)
  r = b.T @ jnp.concatenate([w, -jnp.ones((1,), w.dtype)])
  s = theory._safe_l2(r)
  return theory._risk_from(s, _dual_norm(w, norm), jnp.asarray(eps, w.dtype))


# ---------------------------------------------------------------------------------------
# The solver.


class _Prep(NamedTuple):
  sigma: jax.Array   # (d, d)
  cross: jax.Array   # (d,)
  var_y: jax.Array   # ()
  chol_t: jax.Array  # (d, d) L^T, L the lower Cholesky factor of sigma (stored transposed:
                     # L^T x is then a contiguous product, once per homotopy step)
  w_ls: jax.Array    # (d,) sigma^{-1} cross
  s_min: jax.Array   # () residual std of w_ls
  s_zero: jax.Array  # () residual std of w = 0 (sqrt(var_y), as a sum of squares)


def _prepare(sigma: jax.Array, cross: jax.Array, var_y: jax.Array) -> _Prep:
  chol = _cholesky(sigma)
  w_ls = _cho_solve(chol, cross)
  b = _joint_factor(sigma, cross, var_y)
  s_min = theory._safe_l2(b.T @ jnp.concatenate([w_ls, -jnp.ones((1,), w_ls.dtype)]))
  chol_t = chol.T
  r = chol_t @ w_ls
  return _Prep(sigma, cross, var_y, chol_t, w_ls, s_min,
               theory._safe_sqrt(s_min**2 + jnp.sum(r * r)))


def _s_of(prep: _Prep, w: jax.Array) -> jax.Array:
  """s(w) = sqrt(s_min^2 + ||L^T (w - w_ls)||^2): a sum of squares (sigma = L L^T)."""
  r = prep.chol_t @ (w - prep.w_ls)
  return theory._safe_sqrt(prep.s_min**2 + jnp.sum(r * r))


def _bisect(too_small, lo: jax.Array, hi: jax.Array) -> tuple[jax.Array, jax.Array]:
  def body(_, bracket):
    lo, hi = bracket
    mid = 0.5 * (lo + hi)
    up = too_small(mid)
    return jnp.where(up, mid, lo), jnp.where(up, hi, mid)
  return jax.lax.fori_loop(0, _BISECTION_STEPS, body, (lo, hi))


def _first_true(pred, n: int) -> jax.Array:
  """Smallest k in [0, n) with pred(k), n if none, for a pred that is False up to some k
  and True from there on (a sign change along a path): ceil(log2(n + 1)) evaluations of
  `pred` (int32 `()` -> bool `()`) instead of n."""
  def body(_, bracket):
    lo, hi = bracket   # pred False below lo; pred(hi) True or hi = n
    mid = (lo + hi) // 2
    t = pred(jnp.minimum(mid, n - 1)) & (mid < n)
    return jnp.where(t, lo, mid + 1), jnp.where(t, mid, hi)
  steps = int(np.ceil(np.log2(n + 1)))
  zero = jnp.zeros((), jnp.int32)
  return jax.lax.fori_loop(0, steps, body, (zero, zero + n))[1]


def _newton_root(f, lo: jax.Array, hi: jax.Array,
                 x: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Sign change of a smooth scalar f in [lo, hi] (f < 0 moves lo up), from x in it:
  Newton steps, a bisection step whenever Newton leaves the bracket.

  `f(x)` returns `(value, scale)`, scale the size of the terms whose difference is the
  value. Stops once a Newton step is below `_NEWTON_RTOL` relative (quadratic
  convergence leaves an error ~ step^2 after it), |value| is below 16 ulp of scale
  (round-off: the sign carries no more information) or the bracket is below 4 ulp, after
  at most `_BISECTION_STEPS` iterations. Returns `(lo, hi, x)`, x the last iterate.
  """
  tiny = jnp.finfo(lo.dtype).tiny
  ulp = jnp.finfo(lo.dtype).eps

  def cond(st):
    lo, hi, x, dx, noise, it = st
    return ((it < _BISECTION_STEPS) & (jnp.abs(dx) > _NEWTON_RTOL * jnp.abs(x) + tiny)
            & ~noise & (hi - lo > 4 * ulp * jnp.abs(hi)))

  def body(st):
    lo, hi, x, _, _, it = st
    (fx, scale), (dfx, _) = jax.jvp(f, (x,), (jnp.ones_like(x),))
    up = fx < 0
    lo, hi = jnp.where(up, x, lo), jnp.where(up, hi, x)
    ok = jnp.isfinite(fx) & (dfx != 0)
    xn = x - fx / jnp.where(ok, dfx, 1.0)
    xn = jnp.where(ok & (xn > lo) & (xn < hi), xn, 0.5 * (lo + hi))
    noise = jnp.abs(fx) <= 16 * ulp * scale
    return lo, hi, jnp.where(noise, x, xn), xn - x, noise, it + 1

  st = (lo, hi, x, jnp.full_like(x, jnp.inf), jnp.zeros(jnp.shape(x), bool),
        jnp.zeros((), jnp.int32))
  lo, hi, x, _, _, _ = jax.lax.while_loop(cond, body, st)
  return lo, hi, x


def _select(risks: list[jax.Array], rtol: float = 1e-12) -> tuple[jax.Array, jax.Array]:
  """Index and value of the smallest risk, earlier candidates preferred on round-off ties
  (the structured ones, least squares and the origin, come first)."""
  best_i = jnp.zeros((), jnp.int32)
  best = risks[0]
  for i, val in enumerate(risks[1:], 1):
    better = val < best - rtol * jnp.abs(best) - 1e-300
    best = jnp.where(better, val, best)
    best_i = jnp.where(better, i, best_i)
  return best_i, best


def _small_solve(a: jax.Array, b: jax.Array) -> jax.Array:
  """a^{-1} b for a small static size `(n, n)`, `(n, m)`: Gaussian elimination with
  partial pivoting, unrolled, no LAPACK call: inside the homotopy's loop a LAPACK solve
  would be a batched call under vmap (see `_one_at_a_time`), and for k <= 4 the unrolled
  elimination is cheaper than a library call anyway."""
  n = a.shape[0]
  m = jnp.concatenate([a, b], axis=1)
  rows = jnp.arange(n)
  for j in range(n):
    piv = jnp.argmax(jnp.where(rows >= j, jnp.abs(m[:, j]), -1.0))
    rj, rp = m[j], m[piv]
    m = m.at[piv].set(rj).at[j].set(rp)
    f = jnp.where(rows > j, m[:, j] / m[j, j], 0.0)
    m = m - f[:, None] * m[j][None, :]
  x = jnp.zeros_like(b)
  for j in reversed(range(n)):
    x = x.at[j].set((m[j, n:] - m[j, :n] @ x) / m[j, j])
  return x


def _woodbury(qinv: jax.Array, idx: jax.Array, new_rows: jax.Array,
              old_rows: jax.Array) -> jax.Array:
  """Inverse of Q + Delta from Qinv, Delta symmetric and nonzero only in rows/cols `idx`.

  With R = Delta[idx, :] `(k, m)` and E = I[:, idx]: Delta = E G^T + G E^T,
  G = R^T - E Delta[idx, idx] / 2, a rank-2k update (Woodbury, O(k m^2)):
  (Q + U C U^T)^{-1} = Qinv - Qinv U (C + U^T Qinv U)^{-1} U^T Qinv, U = [E, G],
  C = [[0, I], [I, 0]] (its own inverse).
  """
  k = idx.shape[0]
  r = new_rows - old_rows
  g = r.T - 0.5 * jax.nn.one_hot(idx, qinv.shape[0], dtype=qinv.dtype).T @ r[:, idx]
  qu = jnp.concatenate([qinv[:, idx], qinv @ g], axis=1)           # Qinv U  (m, 2k)
  utqu = jnp.concatenate([qu[idx], g.T @ qu], axis=0)              # U^T Qinv U
  eye = jnp.eye(k, dtype=qinv.dtype)
  zero = jnp.zeros((k, k), qinv.dtype)
  c = jnp.block([[zero, eye], [eye, zero]])
  out = qinv - qu @ _small_solve(c + utqu, qu.T)
  return 0.5 * (out + out.T)


def _refined_solve(qinv: jax.Array, qmv, rhs: jax.Array, mask) -> jax.Array:
  """x = Q^{-1} rhs from an approximate inverse (the Woodbury-updated one) and one step of
  iterative refinement against Q itself (`qmv`: x -> Q x): the round-off the updates
  accumulate along the path enters squared, so every piece is as accurate as a fresh
  solve. `mask` zeroes the coordinates that are exactly 0 by structure."""
  x = mask(qinv @ rhs)
  return mask(x + qinv @ (rhs - qmv(x)))


class _Piece(NamedTuple):
  """One linear piece of a homotopy: w(mu) = p - mu q for mu in [lo, hi], along which
  s(mu)^2 = e2 + (mu - m) (a2 (mu - m) - 2 c1) (e2 = s^2 at mu = m, the point of least s;
  expanded about it, no cancellation as s -> 0) and n(mu) = n0 - mu n1 (the dual norm is
  linear while signs and the active / free set are fixed). Leaves `()` or `(d,)`; a
  recorded path stacks them to `(K,)` / `(K, d)`."""
  hi: jax.Array
  lo: jax.Array
  p: jax.Array
  q: jax.Array
  m: jax.Array
  e2: jax.Array
  c1: jax.Array
  a2: jax.Array
  n0: jax.Array
  n1: jax.Array

  def s(self, mu: jax.Array) -> jax.Array:
    t = mu - self.m
    return theory._safe_sqrt(self.e2 + t * (self.a2 * t - 2.0 * self.c1))

  def n(self, mu: jax.Array) -> jax.Array:
    return jnp.maximum(self.n0 - mu * self.n1, 0.0)


def _make_piece(prep: _Prep, hi, lo, p, q, n0, n1) -> _Piece:
  r = prep.chol_t @ jnp.stack([p - prep.w_ls, q], axis=1)   # s^2 = s_min^2 + |r0 - mu r1|^2
  r0, r1 = r[:, 0], r[:, 1]
  a2 = jnp.sum(r1 * r1)
  m = jnp.where(a2 > 0, jnp.sum(r0 * r1) / jnp.where(a2 > 0, a2, 1.0), 0.0)
  e = r0 - m * r1
  return _Piece(hi, lo, p, q, m, prep.s_min**2 + jnp.sum(e * e), jnp.sum(e * r1), a2, n0, n1)


def _empty_piece(d: int, dtype: Any, shape: tuple[int, ...] = ()) -> _Piece:
  z = jnp.zeros(shape, dtype)
  v = jnp.zeros(shape + (d,), dtype)
  return _Piece(z, z, v, v, z, z, z, z, z, z)


def _mu_floor(mu0: jax.Array) -> jax.Array:
  """Breakpoints below 1000 ulp of mu_0 are round-off (e.g. ties of the least-squares
  solution that should meet at mu = 0); the piece above runs to mu = 0 instead, else the
  sign of Phi - mu at such a breakpoint (both ~1e-14) would be noise."""
  return 1e3 * jnp.finfo(mu0.dtype).eps * mu0


# The homotopies. Each step solves the current piece (its active / free set fixed) from
# scratch up to the approximate inverse, finds the next breakpoint, emits the piece and
# moves the set across the breakpoint with a Woodbury update of the inverse.


def _lasso_init(prep: _Prep) -> tuple[jax.Array, dict]:
  """Lasso homotopy for argmin 1/2 s^2 + mu ||w||_1 from mu_0 = ||cross||_inf to 0."""
  sigma, c = prep.sigma, prep.cross
  d = c.shape[0]
  mu0 = jnp.max(jnp.abs(c))
  j0 = jnp.argmax(jnp.abs(c))
  act = jnp.arange(d) == j0
  st = dict(mu=mu0, act=act, sgn=jnp.where(act, jnp.sign(c), 0.0),
            qinv=jnp.eye(d, dtype=c.dtype).at[j0, j0].set(1.0 / sigma[j0, j0]),
            last_add=j0, last_drop=jnp.asarray(-1, j0.dtype), drop_sign=jnp.zeros((), c.dtype))
  return mu0, st


def _lasso_step(prep: _Prep, floor: jax.Array, st: dict) -> tuple[dict, _Piece]:
  sigma, c = prep.sigma, prep.cross
  d = c.shape[0]
  idx = jnp.arange(d)
  mu, act, sgn, qinv = st["mu"], st["act"], st["sgn"], st["qinv"]
  # The piece: sigma_AA w_A = c_A - mu sgn_A, i.e. Q [p q] = [c_A sgn] with Q = sigma on
  # the active block and the identity elsewhere.
  mask = lambda x: jnp.where(act[:, None], x, 0.0)
  qmv = lambda x: jnp.where(act[:, None], sigma @ x, x)
  pq = _refined_solve(qinv, qmv, jnp.stack([jnp.where(act, c, 0.0), sgn], axis=1), mask)
  p, dz = pq[:, 0], pq[:, 1]          # w(mu) = p - mu dz: dz = dw / d(-mu)
  sp = sigma @ pq
  a = sp[:, 1]                        # g(mu - delta) = g - delta a
  g = c - sp[:, 0] + mu * a           # correlations c - sigma w at mu
  w = p - mu * dz
  inf = jnp.inf
  # A just-dropped feature sits at |g_j| = mu: it may not rejoin on the side it left.
  dropped = idx == st["last_drop"]
  ok_p = (1.0 - a > 0) & ~(dropped & (st["drop_sign"] > 0))
  ok_m = (1.0 + a > 0) & ~(dropped & (st["drop_sign"] < 0))
  dp = jnp.where(ok_p, (mu - g) / jnp.where(ok_p, 1.0 - a, 1.0), inf)
  dm = jnp.where(ok_m, (mu + g) / jnp.where(ok_m, 1.0 + a, 1.0), inf)
  dj = jnp.where(~act, jnp.maximum(jnp.minimum(dp, dm), 0.0), inf)
  rate = sgn * dz
  can_drop = act & (idx != st["last_add"]) & (rate < 0)
  dd = jnp.where(can_drop, jnp.maximum(sgn * w, 0.0) / jnp.where(can_drop, -rate, 1.0), inf)
  j, i = jnp.argmin(dj), jnp.argmin(dd)
  delta = jnp.minimum(jnp.minimum(dj[j], dd[i]), mu)
  delta = jnp.where(mu - delta <= floor, mu, delta)  # see _mu_floor
  mu_new = mu - delta
  piece = _make_piece(prep, mu, mu_new, p, dz, sgn @ p, sgn @ dz)
  join = dj[j] <= dd[i]
  k = jnp.where(join, j, i)
  act_new = act.at[k].set(join)
  g_k = g[k] - delta * a[k]
  sgn_new = sgn.at[k].set(jnp.where(join, jnp.sign(g_k), 0.0))

  def q_row(act):  # row k of Q
    return jnp.where(act[k], jnp.where(act, sigma[k], 0.0), (idx == k).astype(c.dtype))

  qinv_new = _woodbury(qinv, k[None], q_row(act_new)[None], q_row(act)[None])
  return dict(mu=mu_new, act=act_new, sgn=sgn_new, qinv=qinv_new,
              last_add=jnp.where(join, k, -1), last_drop=jnp.where(join, -1, k),
              drop_sign=sgn[k]), piece


def _linf_rows(sigma: jax.Array, free: jax.Array, sc: jax.Array, k: jax.Array) -> jax.Array:
  """Rows k and d `(2, d + 1)` of the padded reduced Gram matrix Q of the basis
  [e_i (i free), sc] (see `_linf_init`)."""
  d = sc.shape[0]
  sv = sigma @ sc
  tt = sc @ sv
  tt = jnp.where(tt > 0, tt, 1.0)  # only when cross = 0 (then w = 0 at every mu)
  row_k = jnp.where(free[k], jnp.concatenate([jnp.where(free, sigma[k], 0.0), sv[k][None]]),
                    jax.nn.one_hot(k, d + 1, dtype=sigma.dtype))
  row_t = jnp.concatenate([jnp.where(free, sv, 0.0), tt[None]])
  return jnp.stack([row_k, row_t])


def _linf_init(prep: _Prep) -> tuple[jax.Array, dict]:
  """l_inf-penalty homotopy for argmin 1/2 s^2 + mu ||w||_inf from mu_0 = ||cross||_1 to 0.
  Unknowns z = (w_F, t): the free weights and the cap; w = w_F + t sc (sc: signs on the
  capped set C). Q is `(d + 1, d + 1)`: [[sigma_FF, sigma_F. sc], [., sc^T sigma sc]] on
  the free block and the last slot, the identity elsewhere."""
  sigma, c = prep.sigma, prep.cross
  mu0 = jnp.sum(jnp.abs(c))
  free = c == 0
  sc = jnp.sign(c)
  sv = sigma @ sc
  tt = sc @ sv
  top = (jnp.where(free[:, None] & free[None, :], sigma, 0.0)
         + jnp.diag(jnp.where(free, 0.0, 1.0)))
  col = jnp.where(free, sv, 0.0)
  q = jnp.block([[top, col[:, None]], [col[None, :], jnp.where(tt > 0, tt, 1.0)[None, None]]])
  minus1 = jnp.asarray(-1, jnp.argmax(c).dtype)
  st = dict(mu=mu0, free=free, sc=sc, qinv=_inv(q), last_add=minus1,
            last_drop=minus1, drop_sign=jnp.zeros((), c.dtype))
  return mu0, st


def _linf_step(prep: _Prep, floor: jax.Array, st: dict) -> tuple[dict, _Piece]:
  sigma, c = prep.sigma, prep.cross
  d = c.shape[0]
  idx = jnp.arange(d)
  mu, free, sc, qinv = st["mu"], st["free"], st["sc"], st["qinv"]
  tt_pos = sc @ (sigma @ sc) > 0

  def expand(z):  # (d + 1, 2) -> w (d, 2)
    return jnp.where(free[:, None], z[:d], 0.0) + z[d][None, :] * sc[:, None]

  def qmv(z):
    sw = sigma @ expand(z)
    top = jnp.where(free[:, None], sw, z[:d])
    last = sc @ sw + jnp.where(tt_pos, 0.0, z[d])
    return jnp.concatenate([top, last[None]], axis=0)

  mask = lambda z: jnp.concatenate([jnp.where(free[:, None], z[:d], 0.0), z[d:]], axis=0)
  rhs = jnp.stack([jnp.concatenate([jnp.where(free, c, 0.0), (sc @ c)[None]]),
                   jax.nn.one_hot(d, d + 1, dtype=c.dtype)], axis=1)
  z = _refined_solve(qinv, qmv, rhs, mask)
  pw = expand(z)
  p, dw = pw[:, 0], pw[:, 1]          # w(mu) = p - mu dw, t(mu) = z_p[d] - mu dt
  dt = z[d, 1]
  sp = sigma @ pw
  a = sp[:, 1]                        # g(mu - delta) = g - delta a
  g = c - sp[:, 0] + mu * a
  w = p - mu * dw
  t = z[d, 0] - mu * dt
  inf = jnp.inf
  lam = sc * g                        # mu's share on each capped coordinate
  rate = -sc * a
  can_drop = ~free & (idx != st["last_add"]) & (rate < 0)
  dd = jnp.where(can_drop, jnp.maximum(lam, 0.0) / jnp.where(can_drop, -rate, 1.0), inf)
  # A just-released coordinate sits at |w_i| = t: it may not rejoin on the side it left.
  dropped = idx == st["last_drop"]
  up = (dw - dt > 0) & ~(dropped & (st["drop_sign"] > 0))
  dn = (-dw - dt > 0) & ~(dropped & (st["drop_sign"] < 0))
  d1 = jnp.where(up, (t - w) / jnp.where(up, dw - dt, 1.0), inf)
  d2 = jnp.where(dn, (t + w) / jnp.where(dn, -dw - dt, 1.0), inf)
  dj = jnp.where(free, jnp.maximum(jnp.minimum(d1, d2), 0.0), inf)
  j, i = jnp.argmin(dj), jnp.argmin(dd)
  delta = jnp.minimum(jnp.minimum(dj[j], dd[i]), mu)
  delta = jnp.where(mu - delta <= floor, mu, delta)  # see _mu_floor
  mu_new = mu - delta
  piece = _make_piece(prep, mu, mu_new, p, dw, z[d, 0], dt)
  join = dj[j] <= dd[i]
  k = jnp.where(join, j, i)
  w_k = w[k] + delta * dw[k]
  s_k = jnp.where(w_k >= 0, 1.0, -1.0)
  free_new = free.at[k].set(~join)
  sc_new = sc.at[k].set(jnp.where(join, s_k, 0.0))
  rows = jnp.stack([k, jnp.asarray(d, k.dtype)])
  qinv_new = _woodbury(qinv, rows, _linf_rows(sigma, free_new, sc_new, k),
                       _linf_rows(sigma, free, sc, k))
  return dict(mu=mu_new, free=free_new, sc=sc_new, qinv=qinv_new,
              last_add=jnp.where(join, k, -1), last_drop=jnp.where(join, -1, k),
              drop_sign=sc[k]), piece


def _path_steps(norm: str):
  """(init, step) of the homotopy for an attack norm: the lasso path (l_inf attack, n the
  l1 norm) or the l_inf-penalty path (l1 attack)."""
  return (_lasso_init, _lasso_step) if norm == "linf" else (_linf_init, _linf_step)


def _homotopy(prep: _Prep, norm: str, max_steps: int, eps: jax.Array | None = None):
  """Walks the homotopy of `norm` from mu_0 down.

  eps None: records every piece, `(_Piece` with leaves `(K,)` / `(K, d)`, count`)` with
  K = max_steps; nothing depends on eps. eps given `()`: stops at the first piece whose
  lower end has Phi(s, n) >= mu (the piece holding the multiplier) and returns
  `(piece, found)`; found is also True when no piece is needed (collapse: Phi >= mu_0
  already at w = 0; eps = 0: least squares), False when `max_steps` ran out first.
  """
  init, step = _path_steps(norm)
  mu0, st = init(prep)
  floor = _mu_floor(mu0)
  d, dtype = prep.cross.shape[0], prep.cross.dtype
  zero_step = jnp.zeros((), jnp.int32)

  if eps is None:
    def body(carry):
      n, st, rec = carry
      st, piece = step(prep, floor, st)
      rec = jax.tree.map(lambda buf, x: buf.at[n].set(x), rec, piece)
      return n + 1, st, rec

    carry = (zero_step, st, _empty_piece(d, dtype, (max_steps,)))
    n, _, rec = jax.lax.while_loop(
        lambda c: (c[0] < max_steps) & (c[1]["mu"] > 0), body, carry)
    return mu0, rec, n

  def body(carry):
    n, st, _, _ = carry
    st, piece = step(prep, floor, st)
    hit = theory._phi(piece.s(piece.lo), piece.n(piece.lo), eps) >= piece.lo
    return n + 1, st, piece, hit

  done = (eps * K * jnp.sqrt(prep.var_y) >= mu0) | (eps == 0)
  carry = (zero_step, st, _empty_piece(d, dtype), done)
  _, _, piece, found = jax.lax.while_loop(
      lambda c: (c[0] < max_steps) & (c[1]["mu"] > 0) & ~c[3], body, carry)
  return mu0, piece, found


def _walk_batch(prep: _Prep, norm: str, max_steps: int):
  """`_homotopy(prep, norm, max_steps)` for a batch of models (every leaf of `prep` with a
  leading axis `(B, ...)`), as vmap would do it but without rewriting the records.

  vmap of a while loop whose condition differs across the batch selects between the new
  and the old carry, leaf by leaf, at every step: for the `(B, K, d)` records of p and q
  that is four full passes per breakpoint (about a third of an l1 walk at d = 50, B = 16).
  Here the models that are done keep their state by a select on the state alone (its
  largest leaf is the `(B, d + 1, d + 1)` inverse, rewritten by every step anyway), and each
  step writes one row per model into the records."""
  init, step = _path_steps(norm)
  mu0, st = jax.vmap(init)(prep)
  floor = _mu_floor(mu0)
  b = mu0.shape[0]
  d, dtype = prep.cross.shape[-1], prep.cross.dtype
  rows = jnp.arange(b)

  def keep(active, new, old):
    return jnp.where(active.reshape((b,) + (1,) * (new.ndim - 1)), new, old)

  def body(carry):
    n, st, rec = carry
    active = (n < max_steps) & (st["mu"] > 0)
    new, piece = jax.vmap(step)(prep, floor, st)
    # (A step at mu = 0 is a no-op, so this select only guards against a degenerate one.)
    st = jax.tree.map(lambda x, y: keep(active, x, y), new, st)
    # Row n of a model that is done (n = its count < K) is past its path and never read;
    # a model with n = K cannot be passed by another (all active models step together).
    at = jnp.minimum(n, max_steps - 1)
    rec = jax.tree.map(lambda buf, x: buf.at[rows, at].set(x), rec, piece)
    return n + active.astype(n.dtype), st, rec

  carry = (jnp.zeros((b,), jnp.int32), st, _empty_piece(d, dtype, (b, max_steps)))
  n, _, rec = jax.lax.while_loop(
      lambda c: jnp.any((c[0] < max_steps) & (c[1]["mu"] > 0)), body, carry)
  return mu0, rec, n


@functools.lru_cache(maxsize=None)
def _recorder(norm: str, max_steps: int):
  """prep -> `_homotopy(prep, norm, max_steps)` (the whole path recorded), with
  `_walk_batch` as its vmap."""
  walk = jax.custom_batching.custom_vmap(lambda prep: _homotopy(prep, norm, max_steps))

  @walk.def_vmap
  def _rule(axis_size, in_batched, prep):
    prep = jax.tree.map(lambda a, batched: a if batched else
                        jnp.broadcast_to(a, (axis_size,) + jnp.shape(a)), prep, in_batched[0])
    out = _walk_batch(prep, norm, max_steps)
    return out, jax.tree.map(lambda _: True, out)

  return walk


def _on_piece(prep: _Prep, piece: _Piece, eps: jax.Array, use: jax.Array):
  """The multiplier on one piece (64 bisection steps on the sign of Phi - mu, O(1) each),
  then the best of least squares, the origin and the bracket ends: `(w (d,), risk ())`.
  `use` False: the piece is not needed (collapse, eps = 0), its ends are not candidates."""
  def too_small(mu):
    return mu < theory._phi(piece.s(mu), piece.n(mu), eps)

  lo, hi = _bisect(too_small, piece.lo, piece.hi)
  risk = lambda s, n: theory._risk_from(s, n, eps)
  inf = jnp.asarray(jnp.inf, eps.dtype)
  ends = [jnp.where(use, risk(piece.s(mu), piece.n(mu)), inf) for mu in (lo, hi)]
  return lo, hi, ends


def _finish(prep: _Prep, norm: str, piece: _Piece, eps: jax.Array, use: jax.Array,
            ok: jax.Array) -> tuple[jax.Array, jax.Array]:
  lo, hi, ends = _on_piece(prep, piece, eps, use)
  r_ls = theory._risk_from(prep.s_min, _dual_norm(prep.w_ls, norm), eps)
  r_0 = theory._risk_from(prep.s_zero, jnp.zeros_like(eps), eps)
  i, r = _select([r_ls, r_0] + ends)
  mu = jnp.where(i == 2, lo, hi)
  w = jnp.where(i == 0, prep.w_ls, jnp.where(i == 1, 0.0, piece.p - mu * piece.q))
  ok = ok | (eps == 0)  # eps = 0: the least-squares solution, whatever the homotopy did
  return jnp.where(ok, w, jnp.nan), jnp.where(ok, r, jnp.nan)


def _ridge_nodes(dtype: Any) -> jax.Array:
  """`(129,)` nodes in u = lam / (lam + scale), [0, 1]: 0, then geometric from 1e-19 to
  1/2, then 1 - u geometric from 1/2 to 10^-15.5, then 1 (both tails, where the
  multiplier of a small radius and of a radius near collapse lie, are resolved)."""
  head = np.logspace(-19.0, np.log10(0.5), 80)
  tail = 1.0 - np.logspace(np.log10(0.5), -15.5, 48)[1:]
  return jnp.asarray(np.r_[0.0, head, tail, 1.0], dtype)


class _Ridge(NamedTuple):
  """The ridge path of one model in sigma's eigenbasis, and tabulated at `_ridge_nodes`
  (nothing here depends on eps: a grid of radii shares it)."""
  lam_e: jax.Array  # (d,) eigenvalues of sigma, ascending
  vec: jax.Array    # (d, d) eigenvectors
  ct: jax.Array     # (d,) vec^T cross
  nodes: jax.Array  # (G,) u at the nodes
  s: jax.Array      # (G,) s at the nodes
  n: jax.Array      # (G,) ||w||_2 at the nodes
  lam_n: jax.Array  # (G,) mu = lam ||w||_2 at the nodes


def _ridge_coords(r: _Ridge, u: jax.Array) -> tuple[jax.Array, jax.Array]:
  """w in the eigenbasis at lam = scale u / (1 - u), and lam / (e + lam)."""
  scale = r.lam_e[-1]
  t = 1.0 - u
  den = r.lam_e * t + scale * u
  return r.ct * t / den, r.ct * scale * u / den


def _ridge_s_n_mu(prep: _Prep, r: _Ridge, u: jax.Array):
  """(s, n, mu) on the ridge path at u, O(d): s^2 = s_min^2 + sum c_i^2 lam^2 /
  (e_i (e_i + lam)^2), n = ||w||_2, mu = lam n."""
  wt, shrink = _ridge_coords(r, u)
  scale = r.lam_e[-1]
  return (theory._safe_sqrt(prep.s_min**2 + jnp.sum(shrink * shrink / r.lam_e)),
          theory._safe_l2(wt),
          scale * u * theory._safe_l2(r.ct / (r.lam_e * (1.0 - u) + scale * u)))


def _ridge_path(prep: _Prep) -> _Ridge:
  lam_e, vec = _eigh(prep.sigma)
  nodes = _ridge_nodes(prep.sigma.dtype)
  r = _Ridge(lam_e, vec, vec.T @ prep.cross, nodes, nodes, nodes, nodes)
  s, n, lam_n = jax.vmap(lambda u: _ridge_s_n_mu(prep, r, u))(nodes)
  return r._replace(s=s, n=n, lam_n=lam_n)


def _ridge(prep: _Prep, r: _Ridge, eps: jax.Array) -> tuple[jax.Array, jax.Array]:
  """l2 attack: on the ridge path w = (sigma + lam I)^{-1} cross, mu = lam ||w||, the sign
  change of f = mu - Phi(s, n): bracketed between the first node (after u = 0) with
  f >= 0 and the node before it, then safeguarded Newton from the secant point; the best
  of least squares, the origin, the bracket ends and the last iterate."""
  def f(u):
    s, n, mu = _ridge_s_n_mu(prep, r, u)
    phi = theory._phi(s, n, eps)
    return mu - phi, mu + phi

  f_node = lambda j: r.lam_n[j] - theory._phi(r.s[j], r.n[j], eps)
  g = r.nodes.shape[0]
  # u = 0 is never taken as the sign change (f(0) = 0 there without label noise, where the
  # root may still lie inside); no node with f >= 0: collapse, w = 0. f changes sign once
  # along the path (the risk is convex in the norm budget): a binary search over nodes.
  i = 1 + _first_true(lambda j: f_node(j + 1) >= 0, g - 1)
  collapse = i == g
  i = jnp.minimum(i, g - 1)
  lo, hi = r.nodes[i - 1], r.nodes[i]
  f_lo, f_hi = f_node(i - 1), f_node(i)
  lo = jnp.where(collapse, hi, jnp.where(eps == 0, 0.0, lo))
  hi = jnp.where(eps == 0, 0.0, hi)
  w_sec = jnp.clip(-f_lo / jnp.where(f_hi > f_lo, f_hi - f_lo, 1.0), 0.0, 1.0)
  x0 = lo + w_sec * (hi - lo)
  lo, hi, x = _newton_root(f, lo, hi, x0)
  risks = [theory._risk_from(prep.s_min, theory._safe_l2(prep.w_ls), eps),
           theory._risk_from(prep.s_zero, jnp.zeros_like(eps), eps)]
  risks += [theory._risk_from(*_ridge_s_n_mu(prep, r, u)[:2], eps) for u in (x, lo, hi)]
  k, risk = _select(risks)
  u = jnp.where(k == 2, x, jnp.where(k == 3, lo, hi))
  w = jnp.where(k == 0, prep.w_ls, jnp.where(k == 1, 0.0, r.vec @ _ridge_coords(r, u)[0]))
  return w, risk


@functools.partial(jax.jit, static_argnames=("norm", "max_steps"))
def _minimize(sigma: jax.Array, cross: jax.Array, var_y: jax.Array, eps: jax.Array,
              norm: str, max_steps: int) -> tuple[jax.Array, jax.Array]:
  """Exact (w, risk) for one model; eps `()` (w `(d,)`) or a grid `(m,)` (w `(m, d)`).

  A grid computes the model's path once and records every piece; each eps then costs a
  search over the pieces' lower ends and O(1) bisection steps on one piece. A single eps
  stops the path at its piece and records nothing."""
  prep = _prepare(sigma, cross, var_y)
  eps = jnp.asarray(eps, sigma.dtype)
  if norm == "l2":
    path = _ridge_path(prep)
    one = lambda e: _ridge(prep, path, e)
    return one(eps) if eps.ndim == 0 else jax.vmap(one)(eps)
  if eps.ndim == 0:
    mu0, piece, found = _homotopy(prep, norm, max_steps, eps)
    use = ~((eps * K * jnp.sqrt(prep.var_y) >= mu0) | (eps == 0))
    return _finish(prep, norm, piece, eps, use, found)
  mu0, rec, count = _recorder(norm, max_steps)(prep)
  s_lo = jax.vmap(lambda pc: pc.s(pc.lo))(rec)
  n_lo = jax.vmap(lambda pc: pc.n(pc.lo))(rec)

  def one(e):
    # The first piece (from the top) whose lower end has Phi >= mu holds the multiplier;
    # Phi - mu changes sign once along the path (the risk is convex in the norm budget),
    # so a binary search over the recorded pieces finds it (pieces past `count` count as
    # hits, then mean "none").
    k = _first_true(lambda j: (j >= count) | (theory._phi(s_lo[j], n_lo[j], e) >= rec.lo[j]),
                    max_steps)
    found = k < count
    collapse = e * K * jnp.sqrt(prep.var_y) >= mu0
    piece = jax.tree.map(lambda a: a[jnp.minimum(k, max_steps - 1)], rec)
    return _finish(prep, norm, piece, e, ~collapse & (e > 0), collapse | found)

  return jax.vmap(one)(eps)


def adversarial_minimizer(model: GaussianModel, eps: Any, norm: str, *,
                          max_steps: int | None = None) -> Minimizer:
  """Exact minimizer of the adversarial risk over linear predictors, any Gaussian model.

      w* = argmin_w s(w)^2 + 2 eps k s(w) n(w) + eps^2 n(w)^2   (see the module docstring)

  The minimizer lies on the path of argmin_w 1/2 s^2 + mu n at the self-consistent
  mu = Phi(s, n): the ridge path (l2 attack), the lasso homotopy (l_inf attack) or the
  l_inf-penalty homotopy (l1 attack), each computed exactly, then the multiplier on one
  piece of it (accurate to float64 round-off under x64).

  Args:
    model: a `GaussianModel` with sigma positive definite.
    eps: training radius >= 0, `()` or a grid `(m,)`. A grid walks the model's path once
      and solves every radius on it (much faster than a vmap over scalar radii, which
      walks the path once per radius, each stopping at its own piece).
    norm: attack norm "l1", "l2" or "linf" (static).
    max_steps: most homotopy breakpoints (static; default 4 d + 8). If the multiplier
      lies beyond the breakpoints computed, w and risk are NaN.

  Returns:
    A `Minimizer`: `w` `(d,)` and `risk` `()` (`(m, d)` and `(m,)` for a grid); the
    symmetric model's per-block fields (`w_core`, `w_spu`, `a`, `b`) are NaN, having no
    meaning here.
  """
  validate_gaussian(model, positive_definite=True)
  norms.check_norm(norm)
  theory._check_eps(eps)
  if jnp.ndim(eps) > 1:
    raise ValueError(f"eps must have shape () or (m,), got {jnp.shape(eps)}")
  d = model.dim
  if max_steps is None:
    max_steps = 4 * d + 8
  if isinstance(max_steps, bool) or not isinstance(max_steps, (int, np.integer)) or not (
      1 <= max_steps < 2**31):
    raise ValueError(f"max_steps must be an integer in [1, 2^31), got {max_steps!r}")
  sigma, cross, var_y = _fields(model)
  w, risk = _minimize(sigma, cross, var_y, jnp.asarray(eps, sigma.dtype), norm=norm,
                      max_steps=int(max_steps))
  nan = jnp.full_like(risk, jnp.nan)
  return Minimizer(w=w, w_core=nan, w_spu=nan, risk=risk, a=nan, b=nan)


def standard_minimizer(model: GaussianModel) -> Minimizer:
  """The least-squares solution w = sigma^{-1} cross (eps = 0)."""
  return adversarial_minimizer(model, 0.0, "l2")

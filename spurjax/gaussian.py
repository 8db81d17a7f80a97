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
    one eigendecomposition of sigma; the multiplier by bisection in lam.
  * l_inf attack (n = ||.||_1): the lasso homotopy (LARS with the lasso modification):
    piecewise linear in mu with exact breakpoints (a feature joins when its correlation
    |cross_j - sigma_j w| reaches mu, leaves when its weight reaches 0).
  * l1 attack (n = ||.||_inf): the l_inf-penalty homotopy: piecewise linear in mu; the
    coordinates split into capped ones (|w_i| = t = ||w||_inf, sign fixed) and free ones
    (zero gradient); a free coordinate joins the cap when |w_i| reaches t, a capped one
    leaves when its share lambda_i = sign_i (cross - sigma w)_i of mu reaches 0.

The homotopies walk from mu_0 = ||cross||_* (w = 0) down to 0 and record every piece;
this does not depend on eps, so a vmap over eps computes it once per model. For each eps
the multiplier lies on the first piece whose lower end has Phi >= mu; that linear piece
w(mu) = p - mu q is re-solved directly (no accumulated round-off from the rank-2k
Woodbury updates of the path), and 64 bisection steps on the sign of Phi - mu give the
multiplier to round-off. The answer is the best of the bracket ends, the least-squares
solution and the origin. A homotopy takes at most `max_steps` breakpoints (static,
default 4 d + 8); if the multiplier lies beyond them the result is NaN, never a wrong
finite answer.

Precision: compute under float64 (`jax.enable_x64(True)`) for round-off accuracy. The
minimizer needs `sigma` positive definite (otherwise it need not be unique);
`adversarial_risk` only needs J positive semidefinite. Eigenvalues of J below
`PSD_RTOL * ||J||` are treated as exact zeros (so that an interpolating predictor, s = 0,
gets s = 0 rather than sqrt(round-off)); below `-PSD_RTOL * ||J||` J is rejected.

Everything jits and vmaps (over eps, and over models of one size); the attack norm is
static. The solver is compiled once per (d, norm).
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
  lam, u = jnp.linalg.eigh(_joint(sigma, cross, var_y))
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
  chol: jax.Array    # (d, d) lower Cholesky factor of sigma
  w_ls: jax.Array    # (d,) sigma^{-1} cross
  s_min: jax.Array   # () residual std of w_ls


def _prepare(sigma: jax.Array, cross: jax.Array, var_y: jax.Array) -> _Prep:
  chol = jnp.linalg.cholesky(sigma)
  w_ls = jax.scipy.linalg.cho_solve((chol, True), cross)
  b = _joint_factor(sigma, cross, var_y)
  s_min = theory._safe_l2(b.T @ jnp.concatenate([w_ls, -jnp.ones((1,), w_ls.dtype)]))
  return _Prep(sigma, cross, var_y, chol, w_ls, s_min)


def _s_of(prep: _Prep, w: jax.Array) -> jax.Array:
  """s(w) = sqrt(s_min^2 + ||L^T (w - w_ls)||^2): a sum of squares (sigma = L L^T)."""
  r = prep.chol.T @ (w - prep.w_ls)
  return theory._safe_sqrt(prep.s_min**2 + jnp.sum(r * r))


def _bisect(too_small, lo: jax.Array, hi: jax.Array) -> tuple[jax.Array, jax.Array]:
  def body(_, bracket):
    lo, hi = bracket
    mid = 0.5 * (lo + hi)
    up = too_small(mid)
    return jnp.where(up, mid, lo), jnp.where(up, hi, mid)
  return jax.lax.fori_loop(0, _BISECTION_STEPS, body, (lo, hi))


def _best(cands: list[jax.Array], risk, rtol: float = 1e-12) -> tuple[jax.Array, jax.Array]:
  """The candidate with the smallest risk, earlier ones preferred on round-off ties."""
  best_w = cands[0]
  best = risk(best_w)
  for w in cands[1:]:
    val = risk(w)
    better = val < best - rtol * jnp.abs(best) - 1e-300
    best = jnp.where(better, val, best)
    best_w = jnp.where(better, w, best_w)
  return best_w, best


def _woodbury(qinv: jax.Array, idx: jax.Array, new_rows: jax.Array,
              old_rows: jax.Array) -> jax.Array:
  """Inverse of Q + Delta from Qinv, Delta symmetric and nonzero only in rows/cols `idx`.

  With R = Delta[idx, :] `(k, m)` and E = I[:, idx]: Delta = E G^T + G E^T,
  G = R^T - E Delta[idx, idx] / 2, a rank-2k update (Woodbury, O(k m^2)).
  """
  m, k = qinv.shape[0], idx.shape[0]
  r = new_rows - old_rows
  e = jax.nn.one_hot(idx, m, dtype=qinv.dtype).T          # (m, k)
  g = r.T - 0.5 * e @ r[:, idx]
  u = jnp.concatenate([e, g], axis=1)                     # (m, 2k)
  eye = jnp.eye(k, dtype=qinv.dtype)
  zero = jnp.zeros((k, k), qinv.dtype)
  c = jnp.block([[zero, eye], [eye, zero]])               # its own inverse
  qu = qinv @ u
  out = qinv - qu @ jnp.linalg.solve(c + u.T @ qu, qu.T)
  return 0.5 * (out + out.T)


class _Path(NamedTuple):
  """The pieces of a piecewise-linear homotopy, top (mu_0) first; `(K,)` / `(K, d)`.

  Piece k spans mu in [lo[k], hi[k]]; at its lower end s = s_lo[k], n = n_lo[k]; its
  active set (lasso) or free set (l_inf penalty) is `mask[k]`, its signs `sgn[k]`.
  Nothing here depends on eps: under vmap over eps the path is computed once."""
  mu0: jax.Array
  hi: jax.Array
  lo: jax.Array
  s_lo: jax.Array
  n_lo: jax.Array
  mask: jax.Array
  sgn: jax.Array
  count: jax.Array  # pieces recorded


def _empty_path(mu0: jax.Array, k: int, d: int, dtype: Any) -> _Path:
  z = jnp.zeros((k,), dtype)
  return _Path(mu0, z, z, z, z, jnp.zeros((k, d), bool), jnp.zeros((k, d), dtype),
               jnp.zeros((), jnp.int32))


def _record(path: _Path, k: jax.Array, hi, lo, s_lo, n_lo, mask, sgn) -> _Path:
  return _Path(path.mu0, path.hi.at[k].set(hi), path.lo.at[k].set(lo),
               path.s_lo.at[k].set(s_lo), path.n_lo.at[k].set(n_lo),
               path.mask.at[k].set(mask), path.sgn.at[k].set(sgn), k + 1)


def _mu_floor(mu0: jax.Array) -> jax.Array:
  """Breakpoints below 1000 ulp of mu_0 are round-off (e.g. ties of the least-squares
  solution that should meet at mu = 0); the piece above runs to mu = 0 instead, else the
  sign of Phi - mu at such a breakpoint (both ~1e-14) would be noise."""
  return 1e3 * jnp.finfo(mu0.dtype).eps * mu0


def _lasso_path(prep: _Prep, max_steps: int) -> _Path:
  """Lasso homotopy for argmin 1/2 s^2 + mu ||w||_1 from mu_0 = ||cross||_inf to 0."""
  sigma, c = prep.sigma, prep.cross
  d = c.shape[0]
  idx = jnp.arange(d)
  mu0 = jnp.max(jnp.abs(c))
  floor = _mu_floor(mu0)
  j0 = jnp.argmax(jnp.abs(c))
  active = idx == j0
  sign = jnp.where(active, jnp.sign(c), 0.0)
  qinv = jnp.eye(d, dtype=c.dtype).at[j0, j0].set(1.0 / sigma[j0, j0])
  w = jnp.zeros_like(c)

  def q_rows(act, i):  # row i of the padded matrix: sigma on the active block, I elsewhere
    return jnp.where(act[i], jnp.where(act, sigma[i], 0.0), (idx == i).astype(c.dtype))

  def cond(st):
    return (st["step"] < max_steps) & (st["mu"] > 0)

  def body(st):
    mu, w, act, sgn, qinv = st["mu"], st["w"], st["act"], st["sgn"], st["qinv"]
    dz = qinv @ sgn                     # dw / d(-mu) on the active set, 0 elsewhere
    g = c - sigma @ w
    a = sigma @ dz                      # g(delta) = g - delta a
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
    w_new = w + delta * dz
    rec = _record(st["rec"], st["step"], mu, mu_new, _s_of(prep, w_new),
                  jnp.sum(jnp.abs(w_new)), act, sgn)
    join = dj[j] <= dd[i]
    k = jnp.where(join, j, i)
    act_new = act.at[k].set(join)
    g_k = g[k] - delta * a[k]
    sgn_new = sgn.at[k].set(jnp.where(join, jnp.sign(g_k), 0.0))
    w_new2 = w_new.at[k].set(jnp.where(join, w_new[k], 0.0))
    kk = k[None]
    qinv_new = _woodbury(qinv, kk, q_rows(act_new, k)[None], q_rows(act, k)[None])
    return dict(
        step=st["step"] + 1, mu=mu_new, w=w_new2, act=act_new, sgn=sgn_new, qinv=qinv_new,
        last_add=jnp.where(join, k, -1), last_drop=jnp.where(join, -1, k),
        drop_sign=sgn[k], rec=rec)

  st = dict(step=jnp.zeros((), jnp.int32), mu=mu0, w=w, act=active,
            sgn=sign, qinv=qinv, last_add=j0, last_drop=jnp.asarray(-1, j0.dtype),
            drop_sign=jnp.zeros((), c.dtype), rec=_empty_path(mu0, max_steps, d, c.dtype))
  return jax.lax.while_loop(cond, body, st)["rec"]


def _lasso_solve_piece(prep: _Prep, mask: jax.Array, sgn: jax.Array):
  """The lasso piece w(mu) = M^{-1} (c_A - mu sign_A) = p - mu q, solved directly."""
  sigma, c = prep.sigma, prep.cross
  m = jnp.where(mask[:, None] & mask[None, :], sigma, 0.0) + jnp.diag(jnp.where(mask, 0.0, 1.0))
  pq = jnp.linalg.solve(m, jnp.stack([jnp.where(mask, c, 0.0), sgn], axis=1))
  return pq[:, 0], pq[:, 1]


def _linf_q(sigma: jax.Array, free: jax.Array, sc: jax.Array) -> jax.Array:
  """Padded reduced Gram matrix `(d + 1, d + 1)` of the basis [e_i (i free), sc]."""
  sv = sigma @ sc
  top = jnp.where(free[:, None] & free[None, :], sigma, 0.0) + jnp.diag(jnp.where(free, 0.0, 1.0))
  col = jnp.where(free, sv, 0.0)
  tt = sc @ sv
  tt = jnp.where(tt > 0, tt, 1.0)  # only when cross = 0 (then w = 0 at every mu)
  return jnp.block([[top, col[:, None]], [col[None, :], tt[None, None]]])


def _linf_path(prep: _Prep, max_steps: int) -> _Path:
  """l_inf-penalty homotopy for argmin 1/2 s^2 + mu ||w||_inf from mu_0 = ||cross||_1 to 0.
  Unknowns: the free weights w_F and the cap t; w = w_F + t sc (sc: signs on C)."""
  sigma, c = prep.sigma, prep.cross
  d = c.shape[0]
  idx = jnp.arange(d)
  mu0 = jnp.sum(jnp.abs(c))
  floor = _mu_floor(mu0)
  free = c == 0
  sc = jnp.sign(c)
  qinv = jnp.linalg.inv(_linf_q(sigma, free, sc))
  tslot = jnp.asarray(d)

  def cond(st):
    return (st["step"] < max_steps) & (st["mu"] > 0)

  def body(st):
    mu, w, t, free, sc, qinv = st["mu"], st["w"], st["t"], st["free"], st["sc"], st["qinv"]
    dz = qinv[:, d]                     # dz / d(-mu)
    dt = dz[d]
    dw = jnp.where(free, dz[:d], 0.0) + dt * sc
    g = c - sigma @ w
    a = sigma @ dw                      # g(delta) = g - delta a
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
    w_new = w + delta * dw
    t_new = t + delta * dt
    rec = _record(st["rec"], st["step"], mu, mu_new, _s_of(prep, w_new), t_new, free, sc)
    join = dj[j] <= dd[i]
    k = jnp.where(join, j, i)
    s_k = jnp.where(w_new[k] >= 0, 1.0, -1.0)
    free_new = free.at[k].set(~join)
    sc_new = sc.at[k].set(jnp.where(join, s_k, 0.0))
    w_new2 = w_new.at[k].set(jnp.where(join, s_k * t_new, w_new[k]))
    rows = jnp.stack([k, tslot])
    q_old, q_new = _linf_q(sigma, free, sc), _linf_q(sigma, free_new, sc_new)
    qinv_new = _woodbury(qinv, rows, q_new[rows], q_old[rows])
    return dict(
        step=st["step"] + 1, mu=mu_new, w=w_new2, t=t_new, free=free_new, sc=sc_new,
        qinv=qinv_new, last_add=jnp.where(join, k, -1), last_drop=jnp.where(join, -1, k),
        drop_sign=sc[k], rec=rec)

  minus1 = jnp.asarray(-1, jnp.argmax(c).dtype)
  st = dict(step=jnp.zeros((), jnp.int32), mu=mu0, w=jnp.zeros_like(c),
            t=jnp.zeros((), c.dtype), free=free, sc=sc, qinv=qinv, last_add=minus1,
            last_drop=minus1, drop_sign=jnp.zeros((), c.dtype),
            rec=_empty_path(mu0, max_steps, d, c.dtype))
  return jax.lax.while_loop(cond, body, st)["rec"]


def _linf_solve_piece(prep: _Prep, free: jax.Array, sc: jax.Array):
  """The l_inf-penalty piece w(mu) = p - mu q (w = w_F + t sc), solved directly."""
  sigma, c = prep.sigma, prep.cross
  d = c.shape[0]
  q = _linf_q(sigma, free, sc)
  rhs = jnp.stack([jnp.concatenate([jnp.where(free, c, 0.0), (sc @ c)[None]]),
                   jnp.zeros((d + 1,), c.dtype).at[d].set(1.0)], axis=1)
  pq = jnp.linalg.solve(q, rhs)

  def expand(z):
    return jnp.where(free, z[:d], 0.0) + z[d] * sc

  return expand(pq[:, 0]), expand(pq[:, 1])


@functools.partial(jax.jit, static_argnames=("norm", "max_steps"))
def _minimize(sigma: jax.Array, cross: jax.Array, var_y: jax.Array, eps: jax.Array,
              norm: str, max_steps: int) -> tuple[jax.Array, jax.Array]:
  """Exact (w, risk) for one model and radius (vmap outward: everything but the final
  piece search is independent of eps, so a vmap over eps computes it once)."""
  prep = _prepare(sigma, cross, var_y)
  eps = jnp.asarray(eps, sigma.dtype)

  def risk(w):
    return theory._risk_from(_s_of(prep, w), _dual_norm(w, norm), eps)

  zero = jnp.zeros_like(cross)
  if norm == "l2":
    lam_e, vec = jnp.linalg.eigh(sigma)
    ct = vec.T @ cross
    scale = lam_e[-1]

    def coords(u):  # w in the eigenbasis at lam = scale u / (1 - u), and lam / (e + lam)
      t = 1.0 - u
      den = lam_e * t + scale * u
      return ct * t / den, ct * scale * u / den

    def too_small(u):
      wt, shrink = coords(u)
      n = jnp.sqrt(jnp.sum(wt * wt))
      s = theory._safe_sqrt(prep.s_min**2 + jnp.sum(shrink * shrink / lam_e))
      lam_n = scale * u * jnp.sqrt(jnp.sum((ct / (lam_e * (1.0 - u) + scale * u))**2))
      return lam_n < theory._phi(s, n, eps)

    lo, hi = _bisect(too_small, jnp.zeros_like(eps), jnp.ones_like(eps))
    ends = [vec @ coords(lo)[0], vec @ coords(hi)[0]]
    ok = jnp.asarray(True)
  else:
    path = (_lasso_path if norm == "linf" else _linf_path)(prep, max_steps)
    # The first piece (from the top) whose lower end has Phi >= mu holds the multiplier;
    # collapse (Phi >= mu already at w = 0) is the degenerate piece [mu_0, mu_0].
    valid = jnp.arange(max_steps) < path.count
    hit = valid & (theory._phi(path.s_lo, path.n_lo, eps) >= path.lo)
    k = jnp.argmax(hit)
    collapse = eps * K * jnp.sqrt(prep.var_y) >= path.mu0
    solve_piece = _lasso_solve_piece if norm == "linf" else _linf_solve_piece
    p, q = solve_piece(prep, path.mask[k], path.sgn[k])
    lo0 = jnp.where(collapse, path.mu0, path.lo[k])
    hi0 = jnp.where(collapse, path.mu0, path.hi[k])

    r0, r1 = prep.chol.T @ (p - prep.w_ls), prep.chol.T @ q  # s(mu) in O(d), see _s_of

    def too_small(mu):
      r = r0 - mu * r1
      s = theory._safe_sqrt(prep.s_min**2 + jnp.sum(r * r))
      return mu < theory._phi(s, _dual_norm(p - mu * q, norm), eps)

    lo, hi = _bisect(too_small, lo0, hi0)
    ends = [p - lo * q, p - hi * q]
    ok = collapse | jnp.any(hit)
  w, r = _best([prep.w_ls, zero] + ends, risk)
  # eps = 0: the least-squares solution, whatever the homotopy did.
  ok = ok | (eps == 0)
  nan = jnp.full_like(w, jnp.nan)
  return jnp.where(ok, w, nan), jnp.where(ok, r, jnp.nan)


def adversarial_minimizer(model: GaussianModel, eps: Any, norm: str, *,
                          max_steps: int | None = None) -> Minimizer:
  """Exact minimizer of the adversarial risk over linear predictors, any Gaussian model.

      w* = argmin_w s(w)^2 + 2 eps k s(w) n(w) + eps^2 n(w)^2   (see the module docstring)

  The minimizer lies on the path of argmin_w 1/2 s^2 + mu n at the self-consistent
  mu = Phi(s, n): the ridge path (l2 attack), the lasso homotopy (l_inf attack) or the
  l_inf-penalty homotopy (l1 attack), each computed exactly, then the multiplier by
  bisection on one linear piece (accurate to float64 round-off under x64).

  Args:
    model: a `GaussianModel` with sigma positive definite.
    eps: `()` training radius >= 0.
    norm: attack norm "l1", "l2" or "linf" (static).
    max_steps: most homotopy breakpoints (static; default 4 d + 8). If the multiplier
      lies beyond the breakpoints computed, w and risk are NaN.

  Returns:
    A `Minimizer`: `w` `(d,)` and `risk` `()`; the symmetric model's per-block fields
    (`w_core`, `w_spu`, `a`, `b`) are NaN, having no meaning here.
  """
  validate_gaussian(model, positive_definite=True)
  norms.check_norm(norm)
  theory._check_eps(eps)
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

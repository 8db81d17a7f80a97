"""The core/spurious Gaussian linear-regression model: exact adversarial risk and minimizers.

The model (Moayeri, Banihashem & Feizi, NeurIPS 2022, section 3; spurjax `docs/theory.md`):

    u ~ N(0, I_dc), xi ~ N(0, 1), z ~ N(0, I_ds) independent, theta = 1_dc / sqrt(d_c)
    x_c = s_c u,   y = theta^T u + s_n xi,   v = Var(y) = 1 + s_n^2
    x_s = s_s (r y / sqrt(v) 1_ds + sqrt(1 - r^2) z)

For a linear predictor w and an attack ||delta||_p <= eps the worst-case squared loss is
(|w^T x - y| + eps ||w||_q)^2 (q dual to p), whose expectation is exactly

    R(w; eps, p) = s^2 + 2 eps k s n + eps^2 n^2,   s^2 = E(w^T x - y)^2,  n = ||w||_q,
    k = sqrt(2 / pi).

By symmetry a minimizer has w_c = a theta, w_s = b 1_ds / sqrt(d_s); `adversarial_minimizer`
solves the reduced convex problem in (a, b) exactly from its optimality conditions: the
minimizer minimizes the penalised least squares 1/2 s(z)^2 + mu n(z) at the self-consistent
multiplier mu = Phi(s, n) = s (eps k s + eps^2 n) / (s + eps k n).

  * l2 attack: along the ridge path z(lam) = (P + lam I)^{-1} q (mu = lam n) dR/dn has the
    sign of Phi - mu, which changes once, so 64 bisection steps find the multiplier to
    round-off.
  * l1 / l_inf attacks: after reflecting b so that rho >= 0 the minimizer lies in the
    quadrant a, b >= 0, whose smooth pieces (interior / region lines, the edges a = 0 or
    b = 0, the l1 tie line) are lines z(mu) with s^2 = s0^2 + c mu^2 and n = n0 - c mu; on
    each the risk is convex in mu, minimized in closed form when s0 = 0 and otherwise by 8
    bracket-safeguarded Newton steps on mu - Phi (`_line_min`). The best candidate wins.

Exact zeros (w_spu = 0 below the thresholds, a = 0 in the all-spurious l_inf phase,
collapse to w = 0) come out exactly: structured candidates are listed first and win ties.

Precision: the functions compute in the default float dtype. Enable float64
(`jax.config.update("jax_enable_x64", True)` or `with jax.enable_x64(True):`) for results
accurate to round-off; the sims and tests do. In float32 expect ~1e-6 relative.

Everything here is pure and un-jitted; jit and vmap at the call site. `d_core`, `d_spu` and
the attack `norm` are static; eps and the float fields of the model can be traced/vmapped.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from spurjax import norms

NORMS = norms.NORMS
K = math.sqrt(2.0 / math.pi)  # E|N(0, 1)|
_BISECTION_STEPS = 64  # halves the bracket to 2^-64 of its width: below float64 round-off
_NEWTON_STEPS = 8  # safeguarded Newton steps per line piece (see `_line_min`)


@functools.partial(
    jax.tree_util.register_dataclass,
    data_fields=["sigma_core", "sigma_spu", "rho", "label_noise"],
    meta_fields=["d_core", "d_spu"],
)
@dataclasses.dataclass(frozen=True)
class CoreSpuriousModel:
  """Parameters of the core/spurious Gaussian model (a pytree; float fields are leaves).

  Attributes:
    d_core: number of core features d_c >= 1 (static).
    d_spu: number of spurious features d_s >= 0 (static).
    sigma_core: std s_c > 0 of each core feature.
    sigma_spu: std s_s > 0 of each spurious feature.
    rho: correlation r in [-1, 1] of each spurious feature with the label.
    label_noise: std s_n >= 0 of the label noise.

  The float fields may be arrays (for `jax.vmap`); validation happens in the public
  functions (`validate_model`), not at construction, so that the class can serve as a
  `vmap` `in_axes` prefix tree.
  """

  d_core: int
  d_spu: int
  sigma_core: Any
  sigma_spu: Any
  rho: Any
  label_noise: Any = 0.0

  @property
  def dim(self) -> int:
    """Total input dimension d_c + d_s."""
    return self.d_core + self.d_spu

  def replace(self, **changes: Any) -> "CoreSpuriousModel":
    """A copy with some fields changed (e.g. `model.replace(rho=0.0)` for a test domain)."""
    return dataclasses.replace(self, **changes)


class Minimizer(NamedTuple):
  """An exact minimizer of the adversarial risk.

  Fields:
    w: `(d_c + d_s,)` the minimizer, core block first.
    w_core: `()` the weight on each core feature (a / sqrt(d_c)).
    w_spu: `()` the weight on each spurious feature (b / sqrt(d_s); 0 when d_s = 0).
    risk: `()` the minimal adversarial risk R(w; eps, norm).
    a: `()` reduced core coordinate, w_c = a theta.
    b: `()` reduced spurious coordinate, w_s = b 1 / sqrt(d_s).
  """

  w: jax.Array
  w_core: jax.Array
  w_spu: jax.Array
  risk: jax.Array
  a: jax.Array
  b: jax.Array


# ---------------------------------------------------------------------------------------
# Validation at the public boundary (concrete values only; tracers pass through).


def _is_concrete(x: Any) -> bool:
  return not isinstance(x, jax.core.Tracer)


def _check_range(name: str, x: Any, *, lo: float | None = None, hi: float | None = None,
                 lo_open: bool = False, allowed: str) -> None:
  """Raises ValueError naming `name` unless finite and within [lo, hi] (or (lo, hi])."""
  if not _is_concrete(x):
    return
  arr = np.asarray(x, dtype=np.float64)
  bad = ~np.isfinite(arr)
  if lo is not None:
    bad |= (arr <= lo) if lo_open else (arr < lo)
  if hi is not None:
    bad |= arr > hi
  if np.any(bad):
    shown = arr if arr.ndim == 0 else arr[bad].ravel()[:3]
    raise ValueError(f"{name} must be {allowed}, got {shown}")


def validate_model(model: CoreSpuriousModel) -> None:
  """Checks every field of `model`; raises ValueError naming the first bad one."""
  if not isinstance(model, CoreSpuriousModel):
    raise ValueError(f"model must be a CoreSpuriousModel, got {type(model).__name__}")
  for name in ("d_core", "d_spu"):
    value = getattr(model, name)
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
      raise ValueError(f"{name} must be an integer, got {value!r}")
  if model.d_core < 1:
    raise ValueError(f"d_core must be an integer >= 1, got {model.d_core}")
  if model.d_spu < 0:
    raise ValueError(f"d_spu must be an integer >= 0, got {model.d_spu}")
  _check_range("sigma_core", model.sigma_core, lo=0.0, lo_open=True, allowed="finite and > 0")
  _check_range("sigma_spu", model.sigma_spu, lo=0.0, lo_open=True, allowed="finite and > 0")
  _check_range("rho", model.rho, lo=-1.0, hi=1.0, allowed="in [-1, 1]")
  _check_range("label_noise", model.label_noise, lo=0.0, allowed="finite and >= 0")


def _check_nondegenerate(model: CoreSpuriousModel) -> None:
  """|rho| = 1 without label noise makes x_s an exact copy of y: the minimizer is then a
  whole segment (not unique), so the solver asks for |rho| < 1 or label_noise > 0."""
  if model.d_spu == 0 or not (_is_concrete(model.rho) and _is_concrete(model.label_noise)):
    return
  rho = np.asarray(model.rho, np.float64)
  noise = np.asarray(model.label_noise, np.float64)
  if np.any((np.abs(rho) == 1.0) & (noise == 0.0)):
    raise ValueError("rho must be in (-1, 1) when label_noise = 0: at |rho| = 1 the spurious "
                     "features copy the label and the minimizer is not unique")


def _check_eps(eps: Any, name: str = "eps") -> None:
  _check_range(name, eps, lo=0.0, allowed="finite and >= 0")


def _check_w(model: CoreSpuriousModel, w: Any) -> None:
  shape = jnp.shape(w)
  if shape != (model.dim,):
    raise ValueError(f"w must have shape (d_core + d_spu,) = ({model.dim},), got {shape}")
  if _is_concrete(w) and not np.all(np.isfinite(np.asarray(w, dtype=np.float64))):
    raise ValueError("w must be finite")


# ---------------------------------------------------------------------------------------
# Sampling and moments.


def _fields(model: CoreSpuriousModel) -> tuple[jax.Array, ...]:
  """The float fields as arrays of the default float dtype (float64 under x64)."""
  dtype = jnp.result_type(float)
  s_c = jnp.asarray(model.sigma_core, dtype)
  s_s = jnp.asarray(model.sigma_spu, dtype)
  # With no spurious features rho is meaningless; 0 keeps the reduced problem regular.
  r = jnp.zeros((), dtype) if model.d_spu == 0 else jnp.asarray(model.rho, dtype)
  s_n = jnp.asarray(model.label_noise, dtype)
  return s_c, s_s, r, s_n


def sample(key: jax.Array, model: CoreSpuriousModel, n: int) -> tuple[jax.Array, jax.Array]:
  """Draws `n` i.i.d. examples from the model.

  Args:
    key: PRNG key.
    model: the data model.
    n: number of examples (static, >= 1).

  Returns:
    `(x, y)`: `x` of shape `(n, d_c + d_s)` (core features first), `y` of shape `(n,)`.
  """
  validate_model(model)
  if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
    raise ValueError(f"n must be an integer >= 1, got {n!r}")
  dtype = jnp.result_type(float)
  s_c = jnp.asarray(model.sigma_core, dtype)
  s_s = jnp.asarray(model.sigma_spu, dtype)
  r = jnp.asarray(model.rho, dtype)
  s_n = jnp.asarray(model.label_noise, dtype)
  k_u, k_xi, k_z = jax.random.split(key, 3)
  u = jax.random.normal(k_u, (n, model.d_core), dtype)
  xi = jax.random.normal(k_xi, (n,), dtype)
  z = jax.random.normal(k_z, (n, model.d_spu), dtype)
  y = u.sum(axis=1) / math.sqrt(model.d_core) + s_n * xi
  v = 1.0 + s_n**2
  x_c = s_c * u
  x_s = s_s * (r * (y / jnp.sqrt(v))[:, None] + jnp.sqrt(1.0 - r**2) * z)
  return jnp.concatenate([x_c, x_s], axis=1), y


def moments(model: CoreSpuriousModel) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Population moments in closed form.

  Returns:
    `(sigma, c, var_y)`: `sigma = E[x x^T]` of shape `(d, d)`, `c = E[x y]` of shape `(d,)`,
    `var_y = 1 + s_n^2`, with d = d_c + d_s and

        Sigma_cc = s_c^2 I,  Sigma_ss = s_s^2 (r^2 11^T + (1 - r^2) I),
        Sigma_cs = s_c s_s r / sqrt(v) theta 1^T,  c_c = s_c theta,  c_s = s_s r sqrt(v) 1.
  """
  validate_model(model)
  dtype = jnp.result_type(float)
  s_c = jnp.asarray(model.sigma_core, dtype)
  s_s = jnp.asarray(model.sigma_spu, dtype)
  r = jnp.asarray(model.rho, dtype)
  s_n = jnp.asarray(model.label_noise, dtype)
  dc, ds = model.d_core, model.d_spu
  v = 1.0 + s_n**2
  theta = jnp.full((dc,), 1.0 / math.sqrt(dc), dtype)
  ones = jnp.ones((ds,), dtype)
  s_cc = s_c**2 * jnp.eye(dc, dtype=dtype)
  s_ss = s_s**2 * (r**2 * jnp.outer(ones, ones) + (1.0 - r**2) * jnp.eye(ds, dtype=dtype))
  s_cs = s_c * s_s * r / jnp.sqrt(v) * jnp.outer(theta, ones)
  sigma = jnp.block([[s_cc, s_cs], [s_cs.T, s_ss]])
  c = jnp.concatenate([s_c * theta, s_s * r * jnp.sqrt(v) * ones])
  return sigma, c, v


# ---------------------------------------------------------------------------------------
# Numerically safe pieces.


def _safe_sqrt(x: jax.Array) -> jax.Array:
  """sqrt with derivative 0 (a valid subgradient choice) instead of inf/NaN at x = 0."""
  positive = x > 0
  return jnp.where(positive, jnp.sqrt(jnp.where(positive, x, 1.0)), 0.0)


def _safe_l2(x: jax.Array) -> jax.Array:
  """||x||_2 with gradient 0 at x = 0 (the subgradient of minimal norm)."""
  return _safe_sqrt(jnp.sum(x * x))


def _risk_from(s: jax.Array, n: jax.Array, eps: jax.Array) -> jax.Array:
  """R = s^2 + 2 eps k s n + eps^2 n^2."""
  return s * s + 2.0 * eps * K * s * n + (eps * n) ** 2


# ---------------------------------------------------------------------------------------
# Adversarial risk of any linear predictor.


def _residual_sq(model: CoreSpuriousModel, w: jax.Array) -> jax.Array:
  """s^2 = E(w^T x - y)^2 as a sum of squares (no cancellation near s = 0).

  With gamma = s_s r (1^T w_s) / sqrt(v), the residual is
  (s_c w_c + (gamma - 1) theta)^T u + (gamma - 1) s_n xi + s_s sqrt(1 - r^2) w_s^T z.
  """
  dtype = jnp.result_type(float)
  s_c = jnp.asarray(model.sigma_core, dtype)
  s_s = jnp.asarray(model.sigma_spu, dtype)
  r = jnp.asarray(model.rho, dtype)
  s_n = jnp.asarray(model.label_noise, dtype)
  v = 1.0 + s_n**2
  w_c, w_s = w[:model.d_core], w[model.d_core:]
  gamma = s_s * r * jnp.sum(w_s) / jnp.sqrt(v)
  core = s_c * w_c + (gamma - 1.0) / math.sqrt(model.d_core)
  return (jnp.sum(core * core) + ((gamma - 1.0) * s_n) ** 2
          + s_s**2 * (1.0 - r**2) * jnp.sum(w_s * w_s))


def adversarial_risk(model: CoreSpuriousModel, w: jax.Array, eps: Any, norm: str) -> jax.Array:
  """Exact population adversarial risk of a linear predictor.

      R(w; eps, p) = E max_{||delta||_p <= eps} (w^T (x + delta) - y)^2
                   = s^2 + 2 eps k s n + eps^2 n^2,   k = sqrt(2 / pi),

  with s^2 = w^T Sigma w - 2 w^T c + v the residual variance and n = ||w||_q, q dual to p.
  eps = 0 gives the standard risk; evaluating with a model of another `rho` gives the risk
  in that test domain.

  Args:
    model: the data model.
    w: `(d_c + d_s,)` predictor, core block first.
    eps: `()` attack radius >= 0.
    norm: attack norm, one of "l1", "l2", "linf" (static).

  Returns:
    `()` the risk. Gradients in `w` are finite everywhere (0 is used as the subgradient of
    s at s = 0 and of ||.||_2 at 0).
  """
  if not isinstance(model, CoreSpuriousModel):  # a general spurjax.gaussian.GaussianModel
    return _gaussian().adversarial_risk(model, w, eps, norm)
  validate_model(model)
  norms.check_norm(norm)
  _check_eps(eps)
  w = jnp.asarray(w, jnp.result_type(float))
  _check_w(model, w)
  s = _safe_sqrt(_residual_sq(model, w))
  n = norms.dual_norm(w, norm)
  return _risk_from(s, n, jnp.asarray(eps, w.dtype))


def standard_risk(model: CoreSpuriousModel, w: jax.Array) -> jax.Array:
  """Standard (eps = 0) population risk E(w^T x - y)^2 = s^2; `w` of shape `(d,)`."""
  return adversarial_risk(model, w, 0.0, "l2")


# ---------------------------------------------------------------------------------------
# The reduced two-variable problem.


class _Reduced(NamedTuple):
  """The problem in (a, b): s^2 = z^T P z - 2 q^T z + v with z = (a, b)."""

  s_c: jax.Array
  s_n: jax.Array
  g: jax.Array      # beta = g b,  g = s_s r sqrt(d_s / v)
  e: jax.Array      # s_s sqrt(1 - r^2): std of the spurious noise direction
  v: jax.Array
  p11: jax.Array
  p12: jax.Array
  p22: jax.Array
  q1: jax.Array
  q2: jax.Array
  det: jax.Array    # det P = s_c^2 (g^2 s_n^2 + e^2), in a cancellation-free form
  rdc: jax.Array    # sqrt(d_c), traced so that one compilation serves every dimension
  rds: jax.Array    # sqrt(d_s)


def _reduce(model: CoreSpuriousModel) -> _Reduced:
  s_c, s_s, r, s_n = _fields(model)
  v = 1.0 + s_n**2
  g = s_s * r * jnp.sqrt(model.d_spu / v)
  e = s_s * jnp.sqrt(jnp.maximum(1.0 - r**2, 0.0))
  return _Reduced(
      s_c=s_c, s_n=s_n, g=g, e=e, v=v,
      p11=s_c**2, p12=s_c * g, p22=g * g * v + e * e,
      q1=s_c, q2=g * v,
      det=s_c**2 * (g * g * s_n**2 + e * e),
      rdc=jnp.sqrt(jnp.asarray(model.d_core, s_c.dtype)),
      rds=jnp.sqrt(jnp.asarray(model.d_spu, s_c.dtype)))


def _reduced_s2(red: _Reduced, a: jax.Array, b: jax.Array) -> jax.Array:
  """s^2(a, b) as a sum of squares (exactly 0 at interpolation, no cancellation)."""
  beta = red.g * b
  return (a * red.s_c - 1.0 + beta) ** 2 + (red.s_n * (beta - 1.0)) ** 2 + (red.e * b) ** 2


def _reduced_s(red: _Reduced, a: jax.Array, b: jax.Array) -> jax.Array:
  """s(a, b), the residual std."""
  return _safe_sqrt(_reduced_s2(red, a, b))


def _reduced_n(red: _Reduced, norm: str, has_spu: bool, a: jax.Array,
               b: jax.Array) -> jax.Array:
  """||w||_q in reduced coordinates."""
  if norm == "l2":
    return _safe_sqrt(a * a + b * b)
  if norm == "linf":  # q = 1
    return red.rdc * jnp.abs(a) + red.rds * jnp.abs(b)
  # norm == "l1": q = inf
  if not has_spu:
    return jnp.abs(a) / red.rdc
  return jnp.maximum(jnp.abs(a) / red.rdc, jnp.abs(b) / red.rds)


def _solve(red: _Reduced, u1: jax.Array, u2: jax.Array) -> tuple[jax.Array, jax.Array]:
  """z_LS - P^{-1} u, written so that z_LS = P^{-1} q has no cancellation.

  z_LS = (e^2 / (s_c (g^2 s_n^2 + e^2)),  g s_n^2 / (g^2 s_n^2 + e^2)).
  """
  # den = det = 0 only for |rho| = 1 without label noise, which the public functions reject
  # for concrete input; the guards keep traced input of that kind finite.
  den = red.g * red.g * red.s_n**2 + red.e * red.e
  den = jnp.where(den > 0, den, 1.0)
  det = jnp.where(red.det > 0, red.det, 1.0)
  a_ls = red.e * red.e / (red.s_c * den)
  b_ls = red.g * red.s_n**2 / den
  a = a_ls - (red.p22 * u1 - red.p12 * u2) / det
  b = b_ls - (red.p11 * u2 - red.p12 * u1) / det
  return a, b


def _phi(s: jax.Array, n: jax.Array, eps: jax.Array) -> jax.Array:
  """Self-consistent multiplier Phi(s, n) = s (eps k s + eps^2 n) / (s + eps k n)."""
  den = s + eps * K * n
  safe = den > 0
  return jnp.where(safe, s * (eps * K * s + eps * eps * n) / jnp.where(safe, den, 1.0), 0.0)


def _best(cands: list[tuple[jax.Array, jax.Array]],
          score: Callable[[jax.Array, jax.Array], jax.Array], atol: jax.Array,
          rtol: float = 1e-12) -> tuple[jax.Array, jax.Array]:
  """The candidate (a, b) with the smallest score, preferring earlier candidates.

  A later candidate replaces the current best only if its score is lower by more than
  `rtol` (relative) plus `atol` (absolute, far below any meaningful risk): callers list the structured candidates (origin, exact zeros, the
  closed-form standard solution) first, so that a round-off tie cannot replace an exact
  zero weight by a 1e-17. A running `where` instead of stack + argmin vectorises under vmap.
  """
  best_a, best_b = cands[0]
  best = score(best_a, best_b)
  for a, b in cands[1:]:
    val = score(a, b)
    better = val < best - rtol * jnp.abs(best) - atol
    best = jnp.where(better, val, best)
    best_a = jnp.where(better, a, best_a)
    best_b = jnp.where(better, b, best_b)
  return best_a, best_b


def _soft(x: jax.Array, t: jax.Array) -> jax.Array:
  return jnp.sign(x) * jnp.maximum(jnp.abs(x) - t, 0.0)


def _path_point(red: _Reduced, norm: str, has_spu: bool,
                mu: jax.Array) -> tuple[jax.Array, jax.Array]:
  """argmin_z 1/2 s(z)^2 + mu n(z) for the l1 / l_inf attacks, by enumerating pieces.

  The penalised problem is strictly convex (P > 0); its minimizer lies in one smooth piece
  (sign pattern / dominant coordinate / tie line / origin) and is there the minimizer of
  that piece's smooth extension, which is closed form. Every candidate is a feasible point,
  so the smallest true objective among them is the minimum.
  """
  zero = jnp.zeros_like(mu)
  cands = [(zero, zero)]
  if norm == "linf" or not has_spu:
    # Weighted lasso: n = w_a |a| + w_b |b|.
    w_a = red.rdc if norm == "linf" else 1.0 / red.rdc
    w_b = red.rds if norm == "linf" else zero
    cands.append((_soft(red.q1, mu * w_a) / red.p11, zero))
    if has_spu:
      cands.append((zero, _soft(red.q2, mu * w_b) / red.p22))
    for sa in (1.0, -1.0):
      for sb in (1.0, -1.0):
        cands.append(_solve(red, mu * w_a * sa, mu * w_b * sb))
  else:
    # l1 attack: n = max(al |a|, be |b|).
    al, be = 1.0 / red.rdc, 1.0 / red.rds
    for sgn in (1.0, -1.0):
      cands.append(_solve(red, mu * al * sgn, zero))   # |a| al > |b| be: b free
      cands.append(_solve(red, zero, mu * be * sgn))   # |b| be > |a| al: a free
    for sa in (1.0, -1.0):
      for sb in (1.0, -1.0):
        d1, d2 = sa / al, sb / be                      # tie line, n = t
        quad = red.p11 * d1 * d1 + 2.0 * red.p12 * d1 * d2 + red.p22 * d2 * d2
        t = jnp.maximum(red.q1 * d1 + red.q2 * d2 - mu, 0.0) / quad
        cands.append((t * d1, t * d2))

  def objective(a, b):  # 1/2 s^2 + mu n, without the square root
    return 0.5 * _reduced_s2(red, a, b) + mu * _reduced_n(red, norm, has_spu, a, b)

  return _best(cands, objective, atol=1e-20 * red.v)


def _ridge_point(red: _Reduced, scale: jax.Array,
                 u: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Ridge path z(lam) = (P + lam I)^{-1} q at lam = scale u / (1 - u), u in [0, 1].

  Numerator and denominator are multiplied by (1 - u)^2 so that u = 1 (lam = inf) gives
  z = 0 without inf / inf, and written so that z(0) = z_LS has no cancellation.

  Returns:
    `(a, b, lam_n)` with lam_n = lam ||z||_2, the multiplier of the constraint ||z|| <= n.
  """
  t = 1.0 - u
  ta = red.s_c * red.e * red.e * t + scale * u * red.q1
  tb = red.s_c**2 * red.g * red.s_n**2 * t + scale * u * red.q2
  den = red.det * t * t + scale * u * t * (red.p11 + red.p22) + (scale * u) ** 2
  den = jnp.where(den > 0, den, 1.0)  # 0 only at u = 0 in the degenerate case (see _solve)
  return t * ta / den, t * tb / den, scale * u * _safe_sqrt(ta * ta + tb * tb) / den


@functools.partial(jax.jit, static_argnames=("norm", "has_spu"))
def _minimize_reduced_bisection(red: _Reduced, eps: jax.Array, norm: str,
                      has_spu: bool) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Exact (a, b, risk) by 64-step bisection on the path multiplier (vmap outward).

  The previous l1 / l_inf solver, kept as an independent reference for the tests and
  `benchmarks/theory_bench.py` (it evaluates 7-9 path candidates in each step).

  Jitted here, with the dimensions traced, so that eager callers compile it once per norm
  rather than once per (d_c, d_s); under an outer jit/vmap it is simply inlined.
  """
  eps = jnp.asarray(eps, red.s_c.dtype)

  def risk(a, b):
    return _risk_from(_reduced_s(red, a, b), _reduced_n(red, norm, has_spu, a, b), eps)

  if norm == "l2":
    # Ridge path; bisect on u in [0, 1) with lam = scale u / (1 - u), lam = inf <-> z = 0.
    scale = red.p11 + red.p22

    def point(u):
      return _ridge_point(red, scale, u)[:2]

    def too_small(u):  # lam n < Phi  <=>  dR/dn > 0 : move towards smaller n (larger lam)
      a, b, lam_n = _ridge_point(red, scale, u)
      return lam_n < _phi(_reduced_s(red, a, b), _safe_sqrt(a * a + b * b), eps)

    lo, hi = jnp.zeros_like(eps), jnp.ones_like(eps)
  else:
    # Path of argmin 1/2 s^2 + mu n for mu in [0, mu_0]; z(mu_0) = 0 (mu_0: dual norm of q).
    if norm == "linf" or not has_spu:
      w_a = red.rdc if norm == "linf" else 1.0 / red.rdc
      mu0 = jnp.abs(red.q1) / w_a
      if has_spu:
        mu0 = jnp.maximum(mu0, jnp.abs(red.q2) / red.rds)
    else:
      mu0 = red.rdc * jnp.abs(red.q1) + red.rds * jnp.abs(red.q2)

    def point(mu):
      return _path_point(red, norm, has_spu, mu)

    def too_small(mu):
      a, b = point(mu)
      n = _reduced_n(red, norm, has_spu, a, b)
      return mu < _phi(_reduced_s(red, a, b), n, eps)

    lo, hi = jnp.zeros_like(eps), mu0 * jnp.ones_like(eps)

  def body(_, bracket):
    lo, hi = bracket
    mid = 0.5 * (lo + hi)
    up = too_small(mid)
    return jnp.where(up, mid, lo), jnp.where(up, hi, mid)

  lo, hi = jax.lax.fori_loop(0, _BISECTION_STEPS, body, (lo, hi))
  zero = jnp.zeros_like(eps)
  # The exact boundary solutions (z_LS, origin) first, then the bracket ends.
  cands = [_solve(red, zero, zero), (zero, zero), point(lo), point(hi)]
  a, b = _best(cands, risk, atol=1e-20 * red.v)
  return a, b, risk(a, b)



def _line_min(s0sq: jax.Array, n0: jax.Array, c: jax.Array, eps: jax.Array) -> jax.Array:
  """argmin over mu in [0, n0 / c] of g(mu) = S^2 + 2 eps k S N + eps^2 N^2, with

      S = sqrt(s0^2 + c mu^2),  N = n0 - c mu,   c > 0, n0 >= 0, s0 >= 0.

  Every smooth piece of the l1 / l_inf problems is such a line (below). g is convex on the
  interval (N >= 0) and g' has the sign of f(mu) = mu (S + eps k N) - S (eps k S + eps^2 N),
  i.e. of mu - Phi(S, N). For s0 = 0, g is a quadratic in mu and its minimizer is closed
  form; for s0 > 0 the root of f is found by Newton's method safeguarded by the bracket
  [lo, hi] (f(lo) <= 0 <= f(hi)), started from the s0 = 0 solution. f is smooth and
  increasing at its root (f' = g'' S / 2c > 0), so the steps converge quadratically; a
  step that leaves the bracket is replaced by bisection. `_NEWTON_STEPS` steps reach
  float64 round-off over the tested parameter ranges (checked against the 64-step
  bisection solver in tests/test_theory.py).
  """
  ek = eps * K
  c = jnp.where(c > 0, c, 1.0)
  hi = n0 / c
  rc = jnp.sqrt(c)
  # s0 = 0: g(mu) = c mu^2 + 2 eps k sqrt(c) mu N + eps^2 N^2, minimum at
  # mu = n0 eps (eps sqrt(c) - k) / (sqrt(c) (1 - 2 k eps sqrt(c) + eps^2 c)).
  w = eps * rc
  mu0 = jnp.clip(n0 * eps * (w - K) / (rc * (1.0 - 2.0 * K * w + w * w)), 0.0, hi)
  mu, lo = mu0, jnp.zeros_like(hi)

  def f_df(mu):
    s = _safe_sqrt(s0sq + c * mu * mu)
    n = n0 - c * mu
    f = mu * (s + ek * n) - s * (ek * s + eps * eps * n)
    ds = jnp.where(s > 0, c * mu / jnp.where(s > 0, s, 1.0), rc)
    df = (s + ek * n + mu * (ds - ek * c) - ds * (ek * s + eps * eps * n)
          - s * (ek * ds - eps * eps * c))
    return f, df

  def body(_, state):
    mu, lo, hi = state
    f, df = f_df(mu)
    lo = jnp.where(f <= 0, mu, lo)
    hi = jnp.where(f <= 0, hi, mu)
    step = mu - f / jnp.where(df > 0, df, 1.0)
    # Inclusive bounds: a converged iterate (step == mu == lo) must stay put.
    ok = (df > 0) & (step >= lo) & (step <= hi)
    return jnp.where(ok, step, 0.5 * (lo + hi)), lo, hi

  mu, _, _ = jax.lax.fori_loop(0, _NEWTON_STEPS, body, (mu, lo, hi))
  # g still decreasing at the end of the interval (N = 0): the minimum is there.
  mu = jnp.where(f_df(hi)[0] <= 0, hi, mu)
  # s0 = 0 exactly: the closed form is the answer (and needs no iteration).
  return jnp.where(s0sq > 0, mu, mu0)


def _pieces_l1_linf(red: _Reduced, eps: jax.Array, norm: str,
                    has_spu: bool) -> list[tuple[jax.Array, jax.Array]]:
  """The candidate minimizers of the l1 / l_inf problems, one per smooth piece.

  Requires g >= 0 (i.e. rho >= 0; the caller reflects b -> -b). Then z_LS >= 0, and the
  minimizer (the point of smallest s at its norm, a lasso or box-constrained least-squares
  point) lies in the closed quadrant a, b >= 0. There the pieces are lines along which
  s^2 = s0^2 + c mu^2 and n = n0 - c mu (`_line_min`):
    * l_inf attack (n = sqrt(d_c) a + sqrt(d_s) b, linear on the quadrant): the interior
      stationary line z = z_LS - mu P^{-1} omega, omega = (sqrt(d_c), sqrt(d_s)), and the
      edges b = 0 and a = 0 (each an exact zero);
    * l1 attack (n = max(a / sqrt(d_c), b / sqrt(d_s))): the two lines of the regions where
      one term of the max dominates, omega = (1 / sqrt(d_c), 0) and (0, 1 / sqrt(d_s)), and
      the tie line z = t (sqrt(d_c), sqrt(d_s)), n = t.
  On each line R is a convex function of mu (n >= 0) and its minimizer is found by
  `_line_min`; every candidate is a feasible point, so the smallest true risk among them
  is the minimum. Structured candidates (exact zeros) come first.
  """
  zero = jnp.zeros_like(eps)
  cands = []

  def edge_a(alpha):  # b = 0, n = alpha a
    a_e = red.q1 / red.p11
    mu = _line_min(_reduced_s2(red, a_e, zero), alpha * a_e, alpha * alpha / red.p11, eps)
    return jnp.maximum((red.q1 - mu * alpha) / red.p11, 0.0), zero

  def edge_b(beta):  # a = 0, n = beta b
    b_e = red.q2 / red.p22
    mu = _line_min(_reduced_s2(red, zero, b_e), beta * b_e, beta * beta / red.p22, eps)
    return zero, jnp.maximum((red.q2 - mu * beta) / red.p22, 0.0)

  def line(o1, o2):  # z = z_LS - mu P^{-1} omega, n = omega^T z
    a_ls, b_ls = _solve(red, zero, zero)
    det = jnp.where(red.det > 0, red.det, 1.0)
    c = (red.p22 * o1 * o1 - 2.0 * red.p12 * o1 * o2 + red.p11 * o2 * o2) / det
    mu = _line_min(_reduced_s2(red, a_ls, b_ls), o1 * a_ls + o2 * b_ls, c, eps)
    return _solve(red, mu * o1, mu * o2)

  if not has_spu:
    return [edge_a(red.rdc if norm == "linf" else 1.0 / red.rdc)]
  if norm == "linf":
    return [edge_a(red.rdc), edge_b(red.rds), line(red.rdc, red.rds)]
  # l1 attack.
  d1, d2 = red.rdc, red.rds                      # tie line z = t d, n = t
  quad = red.p11 * d1 * d1 + 2.0 * red.p12 * d1 * d2 + red.p22 * d2 * d2
  t_ls = (red.q1 * d1 + red.q2 * d2) / quad
  mu = _line_min(_reduced_s2(red, t_ls * d1, t_ls * d2), t_ls, 1.0 / quad, eps)
  t = jnp.maximum(t_ls - mu / quad, 0.0)
  return [(t * d1, t * d2), line(1.0 / red.rdc, zero), line(zero, 1.0 / red.rds)]


@functools.partial(jax.jit, static_argnames=("norm", "has_spu"))
def _minimize_reduced(red: _Reduced, eps: jax.Array, norm: str,
                      has_spu: bool) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Exact (a, b, risk) for one reduced problem and radius (vmap outward).

  l2: the ridge-path bisection (`_minimize_reduced_bisection`). l1 / l_inf: one convex line
  search per smooth piece (`_pieces_l1_linf`) instead of bisecting the path multiplier
  with 7-9 candidates per step (8-19x faster, `benchmarks/theory_bench.py`). Jitted here,
  with the dimensions traced, so that eager callers compile it once per norm rather than
  once per (d_c, d_s); under an outer jit/vmap it is simply inlined.
  """
  if norm == "l2":
    return _minimize_reduced_bisection(red, eps, norm, has_spu)
  eps = jnp.asarray(eps, red.s_c.dtype)
  # R(a, b; g) = R(a, -b; -g): solve with g >= 0 and reflect b back.
  sign = jnp.where(red.g < 0, -1.0, 1.0)
  pos = red._replace(g=red.g * sign, p12=red.p12 * sign, q2=red.q2 * sign)

  def risk(a, b):
    return _risk_from(_reduced_s(pos, a, b), _reduced_n(pos, norm, has_spu, a, b), eps)

  zero = jnp.zeros_like(eps)
  cands = [_solve(pos, zero, zero), (zero, zero)] + _pieces_l1_linf(pos, eps, norm, has_spu)
  a, b = _best(cands, risk, atol=1e-20 * pos.v)
  return a, b * sign, risk(a, b)


def adversarial_minimizer(model: CoreSpuriousModel, eps: Any, norm: str) -> Minimizer:
  """Exact minimizer of the population adversarial risk over linear predictors.

      w* = argmin_w R(w; eps, p),  R = s^2 + 2 eps k s n + eps^2 n^2  (see module docstring)

  Built on the optimality conditions (bisection on the self-consistent multiplier of the
  penalised path, closed-form path pieces), accurate to float64 round-off under x64.

  Args:
    model: the data model (scalar float fields; vmap for batches).
    eps: `()` training radius >= 0.
    norm: attack norm "l1", "l2" or "linf" (static).

  Returns:
    A `Minimizer` (w `(d,)`, per-coordinate w_core and w_spu, risk, reduced a and b).
  """
  if not isinstance(model, CoreSpuriousModel):  # a general spurjax.gaussian.GaussianModel
    return _gaussian().adversarial_minimizer(model, eps, norm)
  validate_model(model)
  _check_nondegenerate(model)
  norms.check_norm(norm)
  _check_eps(eps)
  dtype = jnp.result_type(float)
  a, b, risk = _minimize_reduced(_reduce(model), jnp.asarray(eps, dtype), norm=norm,
                                 has_spu=model.d_spu > 0)
  return _assemble(model, a, b, risk)


def _assemble(model: CoreSpuriousModel, a: jax.Array, b: jax.Array,
              risk: jax.Array) -> Minimizer:
  w_core = a / math.sqrt(model.d_core)
  w_spu = b / math.sqrt(model.d_spu) if model.d_spu else jnp.zeros_like(b)
  w = jnp.concatenate([jnp.broadcast_to(w_core, (model.d_core,)),
                       jnp.broadcast_to(w_spu, (model.d_spu,))])
  return Minimizer(w=w, w_core=w_core, w_spu=w_spu, risk=risk, a=a, b=b)


def standard_minimizer(model: CoreSpuriousModel) -> Minimizer:
  """The standard (eps = 0) least-squares solution w_LS = Sigma^{-1} c."""
  return adversarial_minimizer(model, 0.0, "l2")


# ---------------------------------------------------------------------------------------
# Closed-form thresholds.


def robust_interpolation_radius(model: CoreSpuriousModel, norm: str) -> jax.Array:
  """eps*: the largest radius at which the standard solution stays optimal.

  With label noise (s_n > 0) eps* = 0. Without (derivation in docs/theory.md), with
  q_s = s_s^2 (1 + r^2 (d_s - 1)), m = s_c s_s r sqrt(d_s), det = s_c^2 s_s^2 (1 - r^2):

      l2:   eps*_2 = k s_c sqrt((1 - r^2) / (1 + r^2 (d_s - 1)))
      l1:   eps*_1 = sqrt(d_c) eps*_2
      linf: t* = r s_s sqrt(d_c) / s_c;  |t*| <= 1: eps* = k s_c / sqrt(d_c);
            else eps* = k / sqrt(Q(sign t*)),
            Q(t) = (q_s d_c - 2 m sqrt(d_c d_s) t + s_c^2 d_s t^2) / det.

  Returns:
    `()` eps* for the attack norm.
  """
  validate_model(model)
  norms.check_norm(norm)
  s_c, s_s, r, s_n = _fields(model)
  d_c, d_s = model.d_core, model.d_spu
  eps2 = K * s_c * jnp.sqrt((1.0 - r**2) / (1.0 + r**2 * (d_s - 1)))
  if norm == "l2":
    out = eps2
  elif norm == "l1":
    out = math.sqrt(d_c) * eps2
  else:
    t_star = r * s_s * math.sqrt(d_c) / s_c
    q_s = s_s**2 * (1.0 + r**2 * (d_s - 1))
    m = s_c * s_s * r * math.sqrt(d_s)
    det = s_c**2 * s_s**2 * (1.0 - r**2)
    t = jnp.sign(t_star)
    big_q = (q_s * d_c - 2.0 * m * math.sqrt(d_c * d_s) * t + s_c**2 * d_s * t * t) / det
    out = jnp.where(jnp.abs(t_star) <= 1.0, K * s_c / math.sqrt(d_c),
                    K / jnp.sqrt(jnp.where(jnp.abs(t_star) <= 1.0, 1.0, big_q)))
  return jnp.where(s_n > 0, 0.0, out)


def collapse_radius(model: CoreSpuriousModel, norm: str) -> jax.Array:
  """eps_0 = ||c||_p / (k sqrt(v)): w = 0 is optimal iff eps >= eps_0 (any label noise).

  ||c||_p is the attack's own l_p norm of c = Cov(x, y) = (s_c theta, s_s r sqrt(v) 1).
  """
  validate_model(model)
  norms.check_norm(norm)
  s_c, s_s, r, s_n = _fields(model)
  d_c, d_s = model.d_core, model.d_spu
  v = 1.0 + s_n**2
  c_core = s_c / math.sqrt(d_c)            # each core entry of c
  c_spu = s_s * jnp.abs(r) * jnp.sqrt(v)   # each spurious entry of c
  if norm == "l1":
    c_norm = d_c * c_core + d_s * c_spu
  elif norm == "l2":
    c_norm = jnp.sqrt(d_c * c_core**2 + d_s * c_spu**2)
  else:
    c_norm = c_core if d_s == 0 else jnp.maximum(c_core, c_spu)
  return c_norm / (K * jnp.sqrt(v))


def linf_spurious_phase(model: CoreSpuriousModel) -> jax.Array:
  """The l_inf scale law (s_n = 0): True iff some eps gives spurious weight, i.e.

      |r| s_s > s_c / sqrt(d_c)

  (a spurious coordinate carries more label signal than a core one). Returns `()` bool.
  """
  validate_model(model)
  s_c, s_s, r, _ = _fields(model)
  if model.d_spu == 0:
    return jnp.zeros((), bool)
  return jnp.abs(r) * s_s > s_c / math.sqrt(model.d_core)


# ---------------------------------------------------------------------------------------
# Reliance and shift.


def spurious_weight_share(model: CoreSpuriousModel, w: jax.Array) -> jax.Array:
  """||w_s||_2 / ||w||_2 in [0, 1] (defined as 0 at w = 0); `w` of shape `(d,)`."""
  w = jnp.asarray(w, jnp.result_type(float))
  _check_w(model, w)
  total = _safe_l2(w)
  spu = _safe_l2(w[model.d_core:])
  return jnp.where(total > 0, spu / jnp.where(total > 0, total, 1.0), 0.0)


def shift_gap(model: CoreSpuriousModel, w: jax.Array, rho_test: Any, eps: Any = 0.0,
              norm: str = "l2") -> jax.Array:
  """R(w; eps, p | rho_test) - R(w; eps, p | rho): the risk change when the spurious
  correlation shifts at test time (eps = 0, the default: the standard risk).

  Args:
    model: the training-domain model.
    w: `(d,)` predictor.
    rho_test: `()` correlation in the test domain, in [-1, 1].
    eps, norm: optional attack in the test domain.

  Returns:
    `()` the shift gap; 0 for any w with w_s = 0 (the spurious block is then unused).
  """
  validate_model(model)
  _check_range("rho_test", rho_test, lo=-1.0, hi=1.0, allowed="in [-1, 1]")
  test = model.replace(rho=rho_test)
  return adversarial_risk(test, w, eps, norm) - adversarial_risk(model, w, eps, norm)


# ---------------------------------------------------------------------------------------
# General Gaussian models (spurjax.gaussian builds on this module, so it is imported lazily).


def _gaussian() -> Any:
  from spurjax import gaussian
  return gaussian


def __getattr__(name: str) -> Any:
  """`spurjax.theory.GaussianModel` is `spurjax.gaussian.GaussianModel`."""
  if name == "GaussianModel":
    return _gaussian().GaussianModel
  raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

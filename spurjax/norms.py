"""Attack norms: their names, duals, one validation and error format, and the radius units.

See `docs/theory.md` for how the dual norm enters the adversarial risk.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

__all__ = ["NORMS", "DUAL", "check_norm", "dual_norm", "pixel_radius", "radius_label"]

NORMS = ("l1", "l2", "linf")
DUAL = {"l1": "linf", "l2": "l2", "linf": "l1"}  # q = p*, 1/p + 1/q = 1
_PER_255 = 255.0  # l_inf radii are quoted in units of 1/255 of the [0, 1] pixel range


def check_norm(norm: Any, field: str = "norm", *, allow_none: bool = False) -> None:
  """Raises `ValueError("<field>: unknown norm ...; expected one of ...")` unless `norm` is
  one of `NORMS` (or None when `allow_none`)."""
  if allow_none and norm is None:
    return
  if norm not in NORMS:
    allowed = f"None or one of {NORMS}" if allow_none else f"one of {NORMS}"
    raise ValueError(f"{field}: unknown norm {norm!r}; expected {allowed}")


def _safe_l2(x: jax.Array) -> jax.Array:
  """||x||_2 with gradient 0 at x = 0 (the subgradient of minimal norm)."""
  s = jnp.sum(x * x)
  positive = s > 0
  return jnp.where(positive, jnp.sqrt(jnp.where(positive, s, 1.0)), 0.0)


def dual_norm(w: jax.Array, norm: str) -> jax.Array:
  """`||w||_q` of a vector `w (d,)` for the attack norm p, q = p*: l1 -> max |w_i|,
  l2 -> sqrt(sum w_i^2) (gradient 0 at w = 0), linf -> sum |w_i|. Returns `()`; 0 when d = 0.

  `norm` is static. max_{||delta||_p <= eps} w^T delta = eps ||w||_q (Hoelder).
  """
  if norm == "l1":
    return jnp.max(jnp.abs(w)) if w.size else jnp.zeros((), w.dtype)
  if norm == "l2":
    return _safe_l2(w)
  return jnp.sum(jnp.abs(w))


def pixel_radius(norm: str, value: float) -> float:
  """A radius as quoted to its value in [0, 1] pixel units.

  l_inf radii are quoted in units of 1/255 (`8` -> 8/255, the CIFAR/ImageNet convention);
  l1 and l2 radii are already in pixel units; the norm "none" (standard training) has radius 0.
  """
  if norm == "none":
    return 0.0
  check_norm(norm)
  return float(value) / (_PER_255 if norm == "linf" else 1.0)


def radius_label(norm: str, eps: float) -> str:
  """Human-readable radius in pixel units `eps`: l_inf as `"8/255"`, others as `"0.5"`."""
  if norm == "linf":
    return f"{eps * _PER_255:.3g}/255"
  return f"{eps:.3g}"

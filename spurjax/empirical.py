"""Finite-sample adversarial training of linear regression, against the population theory.

For a linear predictor the inner maximisation is exact: max_{||delta||_p <= eps}
(w^T (x + delta) - y)^2 = (|w^T x - y| + eps ||w||_q)^2, so empirical adversarial training
minimises the convex objective

    R_n(w) = 1/n sum_i (|w^T x_i - y_i| + eps ||w||_q)^2

which `fit_adversarial_linear` does with an optax optimizer (Adam, cosine-decayed step) in
one jitted `lax.fori_loop`. vmap it over seeds and radii.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from spurjax import norms


class FitResult(NamedTuple):
  """Fields: w `(d,)` the fitted predictor; train_risk `()` its empirical adversarial risk."""

  w: jax.Array
  train_risk: jax.Array


def empirical_adversarial_risk(w: jax.Array, x: jax.Array, y: jax.Array, eps: Any,
                               norm: str) -> jax.Array:
  """R_n(w) = mean_i (|w^T x_i - y_i| + eps ||w||_q)^2; `w (d,)`, `x (n, d)`, `y (n,)`."""
  n_w = norms.dual_norm(w, norm)
  return jnp.mean((jnp.abs(x @ w - y) + eps * n_w) ** 2)


def fit_adversarial_linear(x: jax.Array, y: jax.Array, eps: Any, norm: str, *,
                           steps: int = 2000, learning_rate: float = 0.05) -> FitResult:
  """Minimises the empirical adversarial risk with Adam and a cosine-decayed step size.

  Args:
    x: `(n, d)` inputs.
    y: `(n,)` targets.
    eps: `()` training radius >= 0.
    norm: attack norm "l1", "l2" or "linf" (static).
    steps: optimizer steps (static).
    learning_rate: initial Adam step size, decayed to 0 by a cosine schedule.

  Returns:
    `FitResult(w, train_risk)`, starting from w = 0.
  """
  norms.check_norm(norm)
  if x.ndim != 2 or y.shape != x.shape[:1]:
    raise ValueError(f"x must be (n, d) and y (n,), got {x.shape} and {y.shape}")
  opt = optax.adam(optax.cosine_decay_schedule(learning_rate, steps))
  loss = lambda w: empirical_adversarial_risk(w, x, y, eps, norm)
  w0 = jnp.zeros(x.shape[1], x.dtype)

  def step(_, carry):
    w, state = carry
    updates, state = opt.update(jax.grad(loss)(w), state, w)
    return optax.apply_updates(w, updates), state

  w, _ = jax.lax.fori_loop(0, steps, step, (w0, opt.init(w0)))
  return FitResult(w=w, train_risk=loss(w))

"""Linear probes: multinomial logistic regression on frozen backbone features.

The published Waterbirds (2 classes) and RIVAL10 (10 classes) protocols evaluate ImageNet
backbones through a new linear head fitted on frozen penultimate features. `fit_probe`
does that:

1. features `F = feature_fn(images)` `(N, D)` are computed once, in batches (optionally
   cached to an `.npz` file by `extract_features`), and standardized with the training
   mean and std (for conditioning; folded back into the head at the end);
2. the examples are split (random permutation, `key`) into train and validation parts;
3. for each L2 penalty `lam` on `l2_grid`, the convex objective
     `L(W, b) = mean_i CE(softmax(F_i W + b), y_i) + (lam / 2) ||W||_F^2`
   (bias not penalized) is minimized on the train part by full-batch L-BFGS
   (`optax.lbfgs`, zoom line search) to a gradient norm below `tol`;
4. the penalty with the best validation accuracy (ties: lower validation loss) is kept and,
   with `refit=True`, the probe is refitted on all examples with it.

The result carries the head `(W, b)` in the units of the raw features, `apply_fn(images)`
(logits of backbone + head) and, when the backbone is an `nnx.Module` with `.features`,
a composed `ProbedModel`.
"""

from __future__ import annotations

import os
from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from spurjax.evalset import check_finite
from spurjax.io import atomic_write

DEFAULT_L2_GRID = (1e-5, 1e-4, 1e-3, 1e-2, 1e-1)


class ProbeResult(NamedTuple):
  """What `fit_probe` returns."""
  weight: jax.Array            # (D, K) head weights on raw features
  bias: jax.Array              # (K,)
  l2: float                    # the selected penalty
  val_accuracy: dict           # {penalty: validation accuracy}
  train_accuracy: float        # accuracy of the final head on the examples it was fitted to
  objective: float             # final value of L(W, b) (standardized features)
  apply_fn: Callable[[jax.Array], jax.Array]  # images (B, H, W, 3) -> logits (B, K)
  model: Any                   # ProbedModel if the backbone is an nnx.Module, else None


class ProbedModel(nnx.Module):
  """A frozen backbone composed with a linear head: `head(backbone.features(x))`.

  `(B, H, W, 3) -> (B, K)`; `features(x)` is the backbone's. Only `head` should be trained
  further (the backbone's parameters are still `nnx.Param`s: filter them out if needed).
  """

  def __init__(self, backbone: nnx.Module, weight: jax.Array, bias: jax.Array):
    self.backbone = backbone
    d, k = weight.shape
    self.head = nnx.Linear(d, k, rngs=nnx.Rngs(0))
    self.head.kernel[...] = jnp.asarray(weight, jnp.float32)
    self.head.bias[...] = jnp.asarray(bias, jnp.float32)

  def features(self, x: jax.Array) -> jax.Array:
    return self.backbone.features(x)

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.head(self.backbone.features(x))


def extract_features(feature_fn: Callable[[jax.Array], jax.Array], images,
                     *, batch_size: int = 256, cache_path: str | os.PathLike | None = None
                     ) -> np.ndarray:
  """`feature_fn` over `images` `(N, ...)` in batches -> `(N, D)` float32 NumPy.

  With `cache_path`, a file written earlier for the same number of images is read instead
  (an `.npz` holding `features` and `n`); otherwise it is written atomically afterwards.
  """
  n = len(images)
  if batch_size < 1:
    raise ValueError(f"batch_size: must be >= 1, got {batch_size}")
  if cache_path is not None and os.path.exists(cache_path):
    with np.load(cache_path, allow_pickle=False) as z:
      if int(z["n"]) == n:
        return np.asarray(z["features"], np.float32)
  fn = jax.jit(feature_fn)
  out = []
  for i in range(0, n, batch_size):
    batch = images[i:i + batch_size]
    check_finite(f"images[{i}:{i + batch_size}]", batch)
    out.append(np.asarray(fn(jnp.asarray(batch)), np.float32))
  feats = np.concatenate(out, axis=0)
  if feats.ndim != 2:
    raise ValueError(f"feature_fn: must return (B, D) features, got shape {feats.shape[1:]}")
  if cache_path is not None:
    with atomic_write(cache_path, "wb") as f:
      np.savez(f, features=feats, n=np.asarray(n))
  return feats


def probe_objective(params, feats: jax.Array, labels: jax.Array, l2: float,
                    mask: jax.Array | None = None) -> jax.Array:
  """`mean_{i: mask_i} CE(F_i W + b, y_i) + (l2 / 2) ||W||^2` for `params = (W (D, K),
  b (K,))`, `feats` `(N, D)`, `labels` `(N,)`, optional 0/1 `mask` `(N,)` (default all)."""
  w, b = params
  ce = optax.softmax_cross_entropy_with_integer_labels(feats @ w + b[None], labels)
  ce = ce.mean() if mask is None else jnp.sum(mask * ce) / jnp.sum(mask)
  return ce + 0.5 * l2 * jnp.sum(w * w)


def fit_logistic(feats, labels, *, num_classes: int, l2: float, tol: float = 1e-6,
                 max_iter: int = 2000, mask=None):
  """Minimizes `probe_objective` by full-batch L-BFGS from zero.

  Args:
    feats: `(N, D)` features (standardized works best).
    labels: `(N,)` ints in [0, num_classes).
    num_classes: K.
    l2: penalty >= 0.
    tol: stop when the gradient's global norm is below this.
    max_iter: iteration cap.
    mask: optional 0/1 `(N,)` selecting the examples in the mean (same shapes for every
      subset, so one compilation serves the split and the refit).

  Returns:
    `((W (D, K), b (K,)), objective value, iterations)`.
  """
  if not (np.isfinite(l2) and l2 >= 0):
    raise ValueError(f"l2: must be finite and >= 0, got {l2}")
  feats = jnp.asarray(feats, jnp.float32)
  labels = jnp.asarray(labels, jnp.int32)
  mask = (jnp.ones(labels.shape, jnp.float32) if mask is None
          else jnp.asarray(mask, jnp.float32))
  p, value, it = _lbfgs(feats, labels, mask, jnp.float32(l2), jnp.float32(tol), num_classes,
                        max_iter)
  return p, float(value), int(it)


@jax.jit(static_argnums=(5, 6))
def _lbfgs(feats, labels, mask, l2, tol, num_classes, max_iter):
  """L-BFGS loop; data and penalty are arguments so one compilation serves every `l2`."""
  d = feats.shape[1]
  params = (jnp.zeros((d, num_classes), feats.dtype), jnp.zeros((num_classes,), feats.dtype))
  fun = lambda p: probe_objective(p, feats, labels, l2, mask)
  opt = optax.lbfgs()
  value_and_grad = optax.value_and_grad_from_state(fun)

  def step(carry):
    p, state, _, it = carry
    value, grad = value_and_grad(p, state=state)
    updates, state = opt.update(grad, state, p, value=value, grad=grad, value_fn=fun)
    p = optax.apply_updates(p, updates)
    return p, state, optax.tree_utils.tree_norm(grad), it + 1

  def cond(carry):
    _, _, gnorm, it = carry
    return (it < max_iter) & (gnorm >= tol)

  p, _, _, it = jax.lax.while_loop(
      cond, step, (params, opt.init(params), jnp.asarray(jnp.inf, feats.dtype), 0))
  return p, fun(p), it


def _accuracy(params, feats, labels) -> float:
  w, b = params
  logits = np.asarray(feats) @ np.asarray(w) + np.asarray(b)[None]
  return float(np.mean(np.argmax(logits, -1) == np.asarray(labels)))


def fit_probe(key: jax.Array, feature_fn, images, labels, *, num_classes: int,
              l2_grid: Sequence[float] = DEFAULT_L2_GRID, val_fraction: float = 0.2,
              refit: bool = True, batch_size: int = 256, tol: float = 1e-6,
              max_iter: int = 2000, features: np.ndarray | None = None,
              cache_path: str | os.PathLike | None = None) -> ProbeResult:
  """Fits a multinomial logistic-regression probe on frozen features (see module doc).

  Args:
    key: PRNG key for the train/validation split.
    feature_fn: an `nnx.Module` with `.features` (then `result.model` composes it with the
      head), or a callable `(B, H, W, 3) -> (B, D)`.
    images: `(N, H, W, 3)` (ignored if `features` is given).
    labels: `(N,)` ints in [0, num_classes).
    num_classes: K >= 2.
    l2_grid: candidate penalties `lam >= 0` (one entry: no selection).
    val_fraction: share of examples held out for the selection, in (0, 1).
    refit: refit on all examples with the selected penalty.
    batch_size: feature-extraction batch.
    tol, max_iter: L-BFGS stopping rule (gradient norm, iterations).
    features: precomputed `(N, D)` features (skips extraction).
    cache_path: `.npz` feature cache (see `extract_features`).

  Returns:
    A `ProbeResult`.
  """
  labels = np.asarray(labels)
  if not isinstance(num_classes, int) or num_classes < 2:
    raise ValueError(f"num_classes: must be an int >= 2, got {num_classes!r}")
  if labels.ndim != 1 or labels.size < 2:
    raise ValueError(f"labels: expected (N,) with N >= 2, got shape {labels.shape}")
  if not np.issubdtype(labels.dtype, np.integer) or labels.min() < 0 or \
     labels.max() >= num_classes:
    raise ValueError(f"labels: must be ints in [0, {num_classes}), got range "
                     f"[{labels.min()}, {labels.max()}] of dtype {labels.dtype}")
  if not 0.0 < val_fraction < 1.0:
    raise ValueError(f"val_fraction: must be in (0, 1), got {val_fraction}")
  grid = [float(l) for l in l2_grid]
  if not grid or any(not np.isfinite(l) or l < 0 for l in grid):
    raise ValueError(f"l2_grid: must be non-empty, finite and >= 0, got {list(l2_grid)}")
  backbone = feature_fn if isinstance(feature_fn, nnx.Module) else None
  fn = backbone.features if backbone is not None else feature_fn
  if features is None:
    features = extract_features(fn, images, batch_size=batch_size, cache_path=cache_path)
  feats = np.asarray(features, np.float32)
  if feats.ndim != 2 or feats.shape[0] != labels.size:
    raise ValueError(f"features: expected ({labels.size}, D), got {feats.shape}")
  n = labels.size
  n_val = int(round(val_fraction * n))
  if not 1 <= n_val < n:
    raise ValueError(f"val_fraction: {val_fraction} leaves no train or no validation "
                     f"example out of {n}")
  perm = np.asarray(jax.random.permutation(key, n))
  val, tr = perm[:n_val], perm[n_val:]
  tr_mask = np.zeros(n, np.float32)
  tr_mask[tr] = 1.0
  mu, sd = feats[tr].mean(0), feats[tr].std(0) + 1e-6
  z = (feats - mu[None]) / sd[None]
  scores = {}
  best = None
  for lam in grid:
    params, obj, _ = fit_logistic(z, labels, num_classes=num_classes, l2=lam, tol=tol,
                                  max_iter=max_iter, mask=tr_mask)
    acc = _accuracy(params, z[val], labels[val])
    loss = float(probe_objective(params, jnp.asarray(z[val]), jnp.asarray(labels[val]), 0.0))
    scores[lam] = acc
    if best is None or (acc, -loss) > (best[1], -best[2]):
      best = (lam, acc, loss, params, obj)
  lam = best[0]
  if refit:
    mu, sd = feats.mean(0), feats.std(0) + 1e-6
    z = (feats - mu[None]) / sd[None]
    params, obj, _ = fit_logistic(z, labels, num_classes=num_classes, l2=lam, tol=tol,
                                  max_iter=max_iter)
    fit_idx = np.arange(n)
  else:
    params, obj = best[3], best[4]
    fit_idx = tr
  train_acc = _accuracy(params, z[fit_idx], labels[fit_idx])
  # Fold the standardization into the head: ((f - mu) / sd) W + b = f W' + b'.
  w = params[0] / jnp.asarray(sd)[:, None]
  b = params[1] - jnp.asarray(mu) @ w
  apply_fn = lambda x: fn(x) @ w + b[None]
  model = ProbedModel(backbone, w, b) if backbone is not None else None
  return ProbeResult(w, b, lam, scores, train_acc, obj, apply_fn, model)

"""Tests of spurjax.probe against an independent solver (scipy L-BFGS-B in float64)."""

import importlib.util
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.optimize

from spurjax import pretrained
from spurjax import probe

HERE = os.path.dirname(os.path.abspath(__file__))
_spec = importlib.util.spec_from_file_location(
    "make_torch_fixtures", os.path.join(HERE, "data", "make_torch_fixtures.py"))
mtf = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(mtf)


def scipy_logistic(z, y, k, lam, mask=None):
  """Reference minimizer of mean CE + lam/2 ||W||^2 (bias free), float64 L-BFGS-B."""
  z = np.asarray(z, np.float64)
  if mask is not None:
    z, y = z[mask], y[mask]
  n, d = z.shape

  def f(v):
    w, b = v[:d * k].reshape(d, k), v[d * k:]
    logits = z @ w + b
    logits = logits - logits.max(1, keepdims=True)
    lse = np.log(np.exp(logits).sum(1))
    p = np.exp(logits - lse[:, None])
    value = np.mean(lse - logits[np.arange(n), y]) + 0.5 * lam * np.sum(w * w)
    p[np.arange(n), y] -= 1.0
    p /= n
    return value, np.concatenate([(z.T @ p + lam * w).ravel(), p.sum(0)])

  r = scipy.optimize.minimize(f, np.zeros(d * k + k), jac=True, method="L-BFGS-B",
                              options=dict(maxiter=10000, gtol=1e-9, ftol=1e-15))
  return r.x[:d * k].reshape(d, k), r.x[d * k:], r.fun


def teacher_task(key, n, d, k, noise=1.5):
  """Gaussian features `(n, d)` and labels from a random linear teacher + Gumbel noise."""
  kf, kt, kn = jax.random.split(key, 3)
  f = np.asarray(jax.random.normal(kf, (n, d)))
  t = np.asarray(jax.random.normal(kt, (d, k)))
  y = np.argmax(f @ t + noise * np.asarray(jax.random.gumbel(kn, (n, k))), -1)
  return f.astype(np.float32), y


def test_fit_logistic_reaches_the_scipy_optimum():
  seed = np.random.SeedSequence().entropy % 2**31   # fresh draw each run
  f, y = teacher_task(jax.random.key(seed), 300, 12, 4)
  for lam in (1e-3, 1e-1):
    (w, b), value, _ = probe.fit_logistic(f, y, num_classes=4, l2=lam, tol=1e-6)
    w_ref, b_ref, value_ref = scipy_logistic(f, y, 4, lam)
    assert abs(value - value_ref) <= 1e-5 * abs(value_ref), (seed, lam)
    # Strongly convex for lam > 0: the minimizer is unique, so the weights agree too.
    err = np.linalg.norm(np.asarray(w) - w_ref) / np.linalg.norm(w_ref)
    assert err <= 1e-3, (seed, lam, err)


def _reference_probe(feats, labels, k, grid, val, tr):
  """The same protocol as fit_probe, written independently with scipy."""
  mu, sd = feats[tr].mean(0), feats[tr].std(0) + 1e-6
  z = (feats - mu) / sd
  best = None
  for lam in grid:
    w, b, _ = scipy_logistic(z[tr], labels[tr], k, lam)
    acc = np.mean(np.argmax(z[val] @ w + b, -1) == labels[val])
    logits = z[val] @ w + b
    logits = logits - logits.max(1, keepdims=True)
    loss = np.mean(np.log(np.exp(logits).sum(1)) - logits[np.arange(len(val)), labels[val]])
    if best is None or (acc, -loss) > (best[1], -best[2]):
      best = (lam, acc, loss)
  mu, sd = feats.mean(0), feats.std(0) + 1e-6
  w, b, _ = scipy_logistic((feats - mu) / sd, labels, k, best[0])
  return best[0], w / sd[:, None], b - (mu / sd) @ w


def test_probe_on_fixture_features_matches_scipy_within_half_a_point():
  """Frozen features of a committed fixture ResNet-18 on random images; labels from a
  teacher on those features. Held-out accuracy of fit_probe vs the scipy pipeline."""
  backbone = pretrained.load(os.path.join(HERE, "data", "torch_fixtures",
                                          "resnet18_torchvision_zip.pt"))
  seed = np.random.SeedSequence().entropy % 2**31
  key = jax.random.key(seed)
  kx, kt, kn, ks = jax.random.split(key, 4)
  n, n_test, k = 300, 300, 3
  images = np.asarray(jax.random.uniform(kx, (n + n_test, 32, 32, 3)))
  feats = probe.extract_features(backbone.features, images, batch_size=300)
  assert feats.shape == (n + n_test, backbone.spec.num_features)
  zf = (feats - feats.mean(0)) / (feats.std(0) + 1e-6)
  teacher = np.asarray(jax.random.normal(kt, (zf.shape[1], k)))
  labels = np.argmax(zf @ teacher + 0.5 * np.asarray(jax.random.gumbel(kn, (n + n_test, k))),
                     -1)
  grid = (1e-4, 1e-2, 1.0)
  res = probe.fit_probe(ks, backbone, images[:n], labels[:n], num_classes=k, l2_grid=grid,
                        features=feats[:n])
  perm = np.asarray(jax.random.permutation(ks, n))
  lam_ref, w_ref, b_ref = _reference_probe(feats[:n].astype(np.float64), labels[:n], k, grid,
                                           perm[:60], perm[60:])
  acc = np.mean(np.argmax(feats[n:] @ np.asarray(res.weight) + np.asarray(res.bias), -1)
                == labels[n:])
  acc_ref = np.mean(np.argmax(feats[n:] @ w_ref + b_ref, -1) == labels[n:])
  assert res.l2 == lam_ref, seed
  assert abs(acc - acc_ref) <= 0.005, (seed, acc, acc_ref)
  assert acc > 1.5 / k   # the probe learned something
  # The composed model and apply_fn give the same logits as features @ W + b.
  x = images[n:n + 4]
  direct = feats[n:n + 4] @ np.asarray(res.weight) + np.asarray(res.bias)
  np.testing.assert_allclose(np.asarray(res.model(x)), direct, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(np.asarray(res.apply_fn(x)), direct, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(np.asarray(res.model.features(x)), feats[n:n + 4], rtol=1e-4,
                             atol=1e-4)


def test_features_are_computed_once_and_cached(tmp_path):
  calls = []

  def feature_fn(x):
    calls.append(x.shape)
    return jnp.mean(x, axis=(1, 2))

  images = np.random.default_rng(0).random((10, 4, 4, 3), dtype=np.float32)
  cache = tmp_path / "feats.npz"
  f1 = probe.extract_features(feature_fn, images, batch_size=4, cache_path=cache)
  assert calls == [(4, 4, 4, 3), (2, 4, 4, 3)]   # traced once per batch shape
  assert cache.exists() and os.listdir(tmp_path) == ["feats.npz"]
  f2 = probe.extract_features(feature_fn, images, batch_size=4, cache_path=cache)
  assert len(calls) == 2                          # second call read the cache
  np.testing.assert_array_equal(f1, f2)
  np.testing.assert_allclose(f1, images.mean(axis=(1, 2)), rtol=1e-6)


def test_bad_inputs():
  f = np.zeros((10, 3), np.float32)
  y = np.arange(10) % 2
  key = jax.random.key(0)
  ident = lambda x: x
  with pytest.raises(ValueError, match="^labels:"):
    probe.fit_probe(key, ident, f, y + 5, num_classes=2, features=f)
  with pytest.raises(ValueError, match="^num_classes:"):
    probe.fit_probe(key, ident, f, y, num_classes=1, features=f)
  with pytest.raises(ValueError, match="^val_fraction:"):
    probe.fit_probe(key, ident, f, y, num_classes=2, val_fraction=1.0, features=f)
  with pytest.raises(ValueError, match="^l2_grid:"):
    probe.fit_probe(key, ident, f, y, num_classes=2, l2_grid=(-1.0,), features=f)
  with pytest.raises(ValueError, match="^features:"):
    probe.fit_probe(key, ident, f, y[:5], num_classes=2, features=f)

"""Tests of spurjax.reliance: formulas by hand, oracle classifiers, missing metrics."""

import jax
import jax.numpy as jnp
from hypothesis import given, settings, strategies as st
import numpy as np
import pytest

from spurjax import data
from spurjax import evalset
from spurjax import reliance

CONFIG = data.DataConfig(image_size=16, num_classes=4, p=1.0, marker=True)


@pytest.fixture(scope="module")
def eval_set():
  return data.make_eval_set(jax.random.key(0), CONFIG, 120, n_groups=80, n_shifted=80)


def region_oracle(e, region):
  """A classifier that only looks at one region of each image it knows.

  It predicts the label of the evaluation image j for which more than half of the pixels of
  region_j are unchanged in the input (to 1e-4); when there is none it answers class 0.
  Region "fg" is the object mask; "bg" is the far background (soft mask exactly 0), so the
  bg oracle never reads the object or its soft halo. Noise on its region changes every pixel
  there and breaks it; noise elsewhere, or another object pasted on part of its region
  (Mixed-*), cannot.
  """
  x_ref = jnp.asarray(e.images)
  regions = {"fg": e.masks, "bg": (e.soft_masks == 0).astype(np.float32),
             "marker": e.marker_masks}
  r = jnp.asarray(regions[region])
  den = jnp.maximum(r.sum((1, 2)), 1.0)
  onehot = jax.nn.one_hot(jnp.asarray(e.labels), e.num_classes)

  def apply_fn(x):
    same = jnp.all(jnp.abs(x[:, None] - x_ref[None]) < 1e-4, axis=-1)   # (B, N, H, W)
    frac = jnp.sum(same * r[None], axis=(2, 3)) / den.reshape(1, -1)
    j = jnp.argmax(frac, axis=1)
    hit = (jnp.max(frac, axis=1) > 0.5)[:, None]
    fallback = jax.nn.one_hot(jnp.zeros_like(j), e.num_classes)
    return jnp.where(hit, onehot[j], fallback)

  return apply_fn


def lookup_classifier(images, preds, num_classes):
  """Predicts preds[j] for the stored image j nearest to the input (exact on stored images)."""
  ref = jnp.asarray(images).reshape(len(preds), -1)
  out = jax.nn.one_hot(jnp.asarray(preds), num_classes)

  def apply_fn(x):
    d = jnp.sum((x.reshape(x.shape[0], 1, -1) - ref[None]) ** 2, axis=-1)
    return out[jnp.argmin(d, axis=1)]

  return apply_fn


# --------------------------------------------------------------------------- formulas
def test_scores_by_hand():
  assert reliance.rfs_score(0.5, 0.7) == pytest.approx(0.2 / 0.8)
  assert reliance.rfs_score(0.9, 0.7) == pytest.approx(-0.2 / 0.4)
  assert reliance.rfs_score(0.0, 1.0) == pytest.approx(1.0)
  assert reliance.rcs_score(1.0, 0.6) == pytest.approx(0.4 / 0.4)
  assert reliance.rcs_score(0.3, 0.1) == pytest.approx(0.2 / 0.4)
  for a in (0.0, 1.0):
    assert reliance.rfs_score(a, a) == 0.0
    assert reliance.rcs_score(a, a) == 0.0
  with pytest.raises(ValueError, match="a_hi"):
    reliance.normalized_gap(1.2, 0.5)


@settings(max_examples=50, deadline=None)
@given(st.floats(0, 1), st.floats(0, 1))
def test_score_bounds_and_antisymmetry(a, b):
  s = reliance.rfs_score(a, b)
  assert -1 - 1e-12 <= s <= 1 + 1e-12
  assert s == pytest.approx(-reliance.rfs_score(b, a), abs=1e-12)


def test_balanced_accuracy_by_hand():
  preds = np.array([0, 0, 1, 1, 1, 2])
  labels = np.array([0, 1, 1, 1, 1, 0])
  # class 0: 1/2, class 1: 3/4, class 2 absent -> (0.5 + 0.75) / 2.
  assert reliance.balanced_accuracy(preds, labels, 3) == pytest.approx(0.625)
  with pytest.raises(ValueError, match="labels"):
    reliance.balanced_accuracy(preds, labels + 2, 3)


def test_noise_is_shared_between_regions_and_l2_energy_is_equal():
  key = jax.random.key(0)
  x = jnp.full((2, 8, 8, 3), 0.5)
  m = jnp.zeros((2, 8, 8)).at[:, 2:5, 2:6].set(1.0)
  n = jax.random.normal(key, x.shape)
  x_in, x_out = reliance.noisy_pair(n, x, m, 0.01)
  # Gaussian mode: the two perturbations are the two halves of the same sigma * n.
  np.testing.assert_allclose((x_in - x) + (x_out - x), 0.01 * n, atol=1e-6)
  assert float(jnp.abs((x_in - x) * (1 - m[..., None])).max()) == 0.0
  assert float(jnp.abs((x_out - x) * m[..., None]).max()) == 0.0
  # l2 mode: both regions get the same energy E = sigma sqrt(f H W C).
  x_in, x_out = reliance.noisy_pair(n, x, m, 0.01, "l2", l2_fraction=0.25)
  energy = 0.01 * np.sqrt(0.25 * 8 * 8 * 3)
  for d in (x_in - x, x_out - x):
    np.testing.assert_allclose(jnp.sqrt(jnp.sum(d * d, axis=(1, 2, 3))), energy, rtol=1e-4)
  np.testing.assert_allclose(jnp.sign(x_in - x) * m[..., None], jnp.sign(n) * m[..., None])
  # An empty region gets no noise (and no NaN).
  x_in, _ = reliance.noisy_pair(n, x, jnp.zeros((2, 8, 8)), 0.1, "l2")
  np.testing.assert_array_equal(x_in, x)


# --------------------------------------------------------------------------- oracles
@pytest.fixture(scope="module")
def oracle_metrics(eval_set):
  return {r: reliance.evaluate(jax.random.key(1), region_oracle(eval_set, r), eval_set,
                               batch_size=64)
          for r in ("fg", "bg")}


def test_foreground_oracle(oracle_metrics):
  out = oracle_metrics["fg"]
  assert out["clean_acc"] == 1.0
  assert out["rfs"] > 0.9 and out["rfs_l2"] > 0.9
  assert out["rfs_a_bg"] == 1.0 and out["rfs_a_fg"] < 0.6
  assert out["core_acc"] == 1.0 and out["rcs"] > 0.9
  assert abs(out["bg_gap"]) < 0.05
  assert out["acc_only_fg"] == 1.0 and out["acc_mixed_rand"] == 1.0


def test_background_oracle(oracle_metrics):
  out = oracle_metrics["bg"]
  assert out["clean_acc"] == 1.0
  assert out["rfs"] < -0.9 and out["rfs_l2"] < -0.9
  assert out["rfs_a_fg"] == 1.0
  assert out["spur_acc"] == 1.0 and out["rcs"] < -0.9
  assert out["bg_gap"] > 0.9
  assert out["acc_mixed_same"] == 1.0 and out["acc_mixed_next"] == 0.0
  assert oracle_metrics["fg"]["marker_noise_acc"] == 1.0


def test_marker_oracle(eval_set):
  """A classifier reading only the marker is broken by noise on the marker mask alone."""
  apply_fn = region_oracle(eval_set, "marker")
  out = reliance.salient(jax.random.key(3), apply_fn, eval_set.images, eval_set.labels,
                         eval_set.soft_masks, eval_set.num_classes,
                         marker_masks=eval_set.marker_masks)
  assert out["marker_noise_acc"] <= 0.25 + 1e-9   # only the class-0 fallback is right
  clean = reliance.clean_accuracy(apply_fn, eval_set.images, eval_set.labels,
                                  eval_set.num_classes)
  assert clean["clean_bal_acc"] > out["marker_noise_acc"] + 0.4   # measured 0.83 vs 0.25


def test_all_required_keys_and_plain_floats(oracle_metrics):
  for out in oracle_metrics.values():
    for k in reliance.REQUIRED_KEYS:
      assert isinstance(out[k], float), k
    for s in reliance.RFS_SIGMAS:
      assert f"rfs_s{round(s * 255):03d}" in out
    assert all(v is None or np.isfinite(v) for v in out.values())


def test_constant_classifier_gives_zero_reliance(eval_set):
  k = eval_set.num_classes
  apply_fn = lambda x: jnp.zeros((x.shape[0], k)).at[:, 0].set(1.0)
  out = reliance.evaluate(jax.random.key(2), apply_fn, eval_set, rfs_modes=("gaussian",),
                          sigmas=(0.2, 0.5))
  frac0 = float(np.mean(eval_set.labels == 0))
  assert out["clean_acc"] == pytest.approx(frac0)
  assert out["clean_bal_acc"] == pytest.approx(1 / k)
  assert out["rfs"] == 0.0 and out["rcs"] == 0.0 and out["bg_gap"] == 0.0
  # label_map sends class 0 to y = 0: groups 0, 1 right, groups 2, 3 wrong.
  assert out["wb_acc_g0"] == 1.0 and out["wb_acc_g3"] == 0.0 and out["worst_group_acc"] == 0.0


def test_missing_protocols_are_none():
  e = evalset.EvalSet(images=np.random.default_rng(0).random((6, 8, 8, 3), np.float32),
                      labels=np.array([0, 1, 0, 1, 0, 1]), num_classes=2)
  out = reliance.evaluate(jax.random.key(0), lambda x: x.mean((1, 2))[:, :2], e)
  assert isinstance(out["clean_acc"], float)
  for k in reliance.REQUIRED_KEYS[1:]:
    assert k in out and out[k] is None, k


def test_same_key_same_metrics(eval_set):
  apply_fn = region_oracle(eval_set, "fg")
  kw = dict(sigmas=(0.3,), rfs_modes=("gaussian",), batch_size=64)
  a = reliance.evaluate(jax.random.key(4), apply_fn, eval_set, **kw)
  b = reliance.evaluate(jax.random.key(4), apply_fn, eval_set, **kw)
  assert a == b


# --------------------------------------------------------------------------- by hand
def _const_images(n, size=4):
  return (np.arange(n, dtype=np.float32)[:, None, None, None] / n
          * np.ones((1, size, size, 3), np.float32))


def test_group_accuracy_by_hand():
  y = np.array([0, 0, 0, 0, 1, 1, 1, 1, 1, 1])
  place = np.array([0, 0, 1, 1, 0, 0, 1, 1, 1, 1])
  pred = np.array([0, 0, 0, 1, 0, 0, 1, 1, 1, 0])
  # g0: 2/2, g1: 1/2, g2: 0/2, g3: 3/4.
  images = _const_images(10)
  groups = evalset.GroupSplit(images, y, place,
                              train_group_fractions=np.array([0.4, 0.1, 0.1, 0.4]))
  out = reliance.group_accuracy(lookup_classifier(images, pred, 2), groups, batch_size=4)
  assert [out[f"wb_acc_g{g}"] for g in range(4)] == [1.0, 0.5, 0.0, 0.75]
  assert out["worst_group_acc"] == 0.0
  assert out["wb_mean_acc"] == pytest.approx(6 / 10)
  assert out["wb_weighted_acc"] == pytest.approx(0.4 * 1 + 0.1 * 0.5 + 0.1 * 0 + 0.4 * 0.75)
  # A 4-class classifier read through label_map = superclasses (0, 0, 1, 1).
  groups4 = evalset.GroupSplit(images, y, place, label_map=np.array([0, 0, 1, 1]))
  out4 = reliance.group_accuracy(lookup_classifier(images, pred * 2 + 1 - pred, 4), groups4)
  assert out4["worst_group_acc"] == 0.0 and out4["wb_mean_acc"] == pytest.approx(0.6)
  assert out4["wb_weighted_acc"] is None


def test_in9_and_shift_by_hand():
  images = _const_images(8)
  labels = np.array([0, 1, 2, 0, 1, 2, 0, 1])
  same = np.array([0, 1, 2, 0, 1, 2, 0, 0])   # 7/8 right
  rand = np.array([1, 1, 0, 0, 2, 0, 0, 2])   # 3/8 right (items 1, 3, 6)
  variants = {"mixed_same": evalset.Variant(images * 0.5, labels),
              "mixed_rand": evalset.Variant(images * 0.5 + 0.5, labels)}
  preds = np.concatenate([same, rand])
  clf = lookup_classifier(np.concatenate([images * 0.5, images * 0.5 + 0.5]), preds, 3)
  out = reliance.in9(clf, variants, 3)
  assert out["acc_mixed_same"] == pytest.approx(7 / 8)
  assert out["acc_mixed_rand"] == pytest.approx(3 / 8)
  assert out["bg_gap"] == pytest.approx(0.5)
  assert "acc_only_fg" not in out
  sh = reliance.shift_accuracy(clf, images * 0.5, labels,
                               evalset.ShiftSplit(images * 0.5 + 0.5, labels), 3)
  assert sh["shift_drop"] == pytest.approx(0.5)
  assert sh["shift_drop_rel"] == pytest.approx(0.5 / (7 / 8))


def test_rfs_by_hand_with_a_mask_reading_classifier():
  """A classifier that is right iff the masked pixels are untouched: a_bg = 1, a_fg = 0."""
  images = np.full((6, 8, 8, 3), 0.5, np.float32)
  masks = np.zeros((6, 8, 8), np.float32)
  masks[:, :4] = 1
  labels = np.array([0, 1, 2, 0, 1, 2])

  def apply_fn(x):
    clean = jnp.all(jnp.abs(x[:, :4] - 0.5) < 1e-6, axis=(1, 2, 3))
    right = jax.nn.one_hot(jnp.asarray(labels)[: x.shape[0]], 3)
    return jnp.where(clean[:, None], right, jnp.roll(right, 1, axis=1))

  out = reliance.rfs(jax.random.key(0), apply_fn, images, labels, masks, 3, batch_size=6)
  assert out["rfs_a_fg"] == 0.0 and out["rfs_a_bg"] == 1.0 and out["rfs"] == 1.0
  out = reliance.salient(jax.random.key(0), apply_fn, images, labels, masks, 3, batch_size=6)
  assert out["core_acc"] == 1.0 and out["spur_acc"] == 0.0 and out["rcs"] == 1.0
  # Always right or always wrong under any noise: accuracy 1 or 0 gives RFS = RCS = 0.
  for shift in (0, 1):
    fixed = lambda x, shift=shift: jnp.roll(jax.nn.one_hot(jnp.asarray(labels), 3), shift, 1)
    out = reliance.evaluate(jax.random.key(0), fixed, evalset.EvalSet(
        images, labels, 3, masks=masks, soft_masks=masks), sigmas=(0.1, 0.8))
    assert out["rfs_a_fg"] == out["rfs_a_bg"] == 1 - shift
    assert out["rfs"] == 0.0 and out["rfs_l2"] == 0.0 and out["rcs"] == 0.0
  with pytest.raises(ValueError, match="trials"):
    reliance.salient(jax.random.key(0), apply_fn, images, labels, masks, 3, trials=2)
  with pytest.raises(ValueError, match="masks"):
    reliance.rfs(jax.random.key(0), apply_fn, images, labels, masks[:, :4], 3)


def test_rival10_official_l2_mode_and_keys():
  """l2_abs: each masked noise has l2 norm exactly sigma per image (RIVAL10's l2 mode),
  before clipping; per-level keys name the radius, and the double-divided sigmas get their
  own keys."""
  k1, k2 = jax.random.split(jax.random.key(np.random.randint(2**31)))
  x = jnp.full((3, 8, 8, 3), 0.5)
  m = (jax.random.uniform(k1, (3, 8, 8)) < 0.3).astype(jnp.float32)
  noise = jax.random.normal(k2, x.shape)
  x_in, x_out = reliance.noisy_pair(noise, x, m, 0.4, "l2_abs")
  for got, region in ((x_in, m), (x_out, 1 - m)):
    d = np.asarray(got - x)
    np.testing.assert_allclose(np.sqrt((d ** 2).sum((1, 2, 3))), 0.4, rtol=1e-5)
    assert np.all(d[np.asarray(region) == 0] == 0)
  radii = reliance.RFS_L2_RADII
  assert [reliance._sigma_key(radii, i, "l2_abs") for i in (0, 7)] == ["r025", "r200"]
  official = reliance.RFS_SIGMAS_OFFICIAL
  assert [reliance._sigma_key(official, i, "gaussian") for i in (0, 6)] == ["s030o", "s210o"]
  assert reliance._sigma_key(reliance.RFS_SIGMAS, 1, "gaussian") == "s060"
  assert reliance.RFS_L2_RADII == (25.0, 50.0, 75.0, 100.0, 125.0, 150.0, 175.0, 200.0)

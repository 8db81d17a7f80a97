"""Tests of spurjax.data: shapes, determinism, statistics, masks, variants, learnability."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from spurjax import data
from spurjax import evalset

# One small configuration shared by most tests keeps the number of compilations low.
SMALL = data.DataConfig(image_size=16, num_classes=4, p=0.7, marker=True)
N_STATS = 2000


@pytest.fixture(scope="module")
def stats_batches():
  """Large-ish batches of every domain at the small configuration (one compilation)."""
  return {d: data.sample_batch(jax.random.key(11), SMALL, N_STATS, d) for d in data.DOMAINS}


@pytest.fixture(scope="module")
def small_eval():
  return data.make_eval_set(jax.random.key(3), SMALL, 120, n_groups=80, n_shifted=80)


@pytest.mark.parametrize("size", [32, 64])
def test_batch_shapes_ranges_and_masks(size):
  config = data.DataConfig(image_size=size, num_classes=10)
  b = data.sample_batch(jax.random.key(0), config, 24)
  assert b.images.shape == (24, size, size, 3) and b.images.dtype == jnp.float32
  assert b.labels.shape == (24,) and b.labels.dtype == jnp.int32
  assert b.masks.shape == b.soft_masks.shape == (24, size, size)
  images, masks, soft = map(np.asarray, (b.images, b.masks, b.soft_masks))
  assert images.min() >= 0.0 and images.max() <= 1.0
  assert set(np.unique(masks)) <= {0.0, 1.0}
  assert masks.reshape(24, -1).sum(1).min() > 0.02 * size * size   # every object visible
  # Soft mask: in [0, 1], exactly 1 on the object, max 1, wider than the object.
  assert soft.min() >= 0.0 and soft.max() <= 1.0
  np.testing.assert_array_equal(soft[masks == 1], 1.0)
  assert (soft > 0).sum() > masks.sum()
  # Boxes are tight: the mask lies inside, and touches every side.
  for i in range(24):
    y0, x0, y1, x1 = np.asarray(b.boxes[i])
    rows, cols = np.flatnonzero(masks[i].any(1)), np.flatnonzero(masks[i].any(0))
    assert (y0, x0, y1, x1) == (rows[0], cols[0], rows[-1] + 1, cols[-1] + 1)


def test_same_key_same_images_and_different_key_differs():
  # Sizes as in the fixtures, so that no new compilation is needed.
  a = data.sample_batch(jax.random.key(5), SMALL, N_STATS, "uncorrelated")
  b = data.sample_batch(jax.random.key(5), SMALL, N_STATS, "uncorrelated")
  c = data.sample_batch(jax.random.key(6), SMALL, N_STATS, "uncorrelated")
  np.testing.assert_array_equal(np.asarray(a.images), np.asarray(b.images))
  np.testing.assert_array_equal(np.asarray(a.labels), np.asarray(b.labels))
  assert not np.array_equal(np.asarray(a.images), np.asarray(c.images))
  e1 = data.make_eval_set(jax.random.key(9), SMALL, 120, n_groups=80, n_shifted=80)
  e2 = data.make_eval_set(jax.random.key(9), SMALL, 120, n_groups=80, n_shifted=80)
  np.testing.assert_array_equal(e1.images, e2.images)
  np.testing.assert_array_equal(e1.variants["mixed_rand"].images,
                                e2.variants["mixed_rand"].images)
  np.testing.assert_array_equal(e1.groups.images, e2.groups.images)


def _within(freq, p, n, z=4.0):
  se = np.sqrt(p * (1 - p) / n)
  return abs(freq - p) <= z * se + 1e-9


def test_background_class_agreement_equals_p(stats_batches):
  k = SMALL.num_classes
  for domain, p in (("train", SMALL.p), ("uncorrelated", 1 / k), ("shifted", 1 / k)):
    b = stats_batches[domain]
    agree = float(np.mean(np.asarray(b.bg_ids) == np.asarray(b.labels)))
    assert _within(agree, p, N_STATS), (domain, agree, p)
  # Labels are balanced, and with p = 1/K the style is independent of the class.
  b = stats_batches["uncorrelated"]
  counts = np.histogram2d(np.asarray(b.labels), np.asarray(b.bg_ids), bins=k)[0]
  expected = N_STATS / k ** 2
  chi2 = ((counts - expected) ** 2 / expected).sum()
  assert chi2 < 40.0   # 9 degrees of freedom: P(chi2 > 40) < 1e-5.
  # Marker colour matches the class with marker_p in train, 1/K elsewhere.
  for domain, p in (("train", SMALL.marker_p), ("uncorrelated", 1 / k)):
    b = stats_batches[domain]
    agree = float(np.mean(np.asarray(b.marker_ids) == np.asarray(b.labels)))
    assert _within(agree, p, N_STATS), (domain, agree, p)


def test_waterbirds_split_statistics_and_groups(stats_batches):
  k = SMALL.num_classes
  for domain, p in (("waterbirds_train", 0.95), ("waterbirds_test", 0.5)):
    b = stats_batches[domain]
    y, place = np.asarray(b.labels), np.asarray(b.places)
    assert set(np.unique(y)) == {0, 1}
    assert _within(float(np.mean(place == y)), p, N_STATS), domain
    np.testing.assert_array_equal(np.asarray(b.groups), 2 * y + place)
    # y is the superclass of the shape, place the superclass of the background style.
    np.testing.assert_array_equal(y, np.asarray(b.shape_ids) * 2 // k)
    np.testing.assert_array_equal(place, np.asarray(b.bg_ids) * 2 // k)
  assert np.all(np.asarray(stats_batches["train"].groups) == -1)


def test_shifted_domain_changes_pose(stats_batches):
  def stats(b):
    boxes = np.asarray(b.boxes, np.float64)
    s = SMALL.image_size
    centre = np.stack([(boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2], 1)
    offset = np.linalg.norm(centre - s / 2, axis=1) / s
    area = np.asarray(b.masks).reshape(len(boxes), -1).mean(1)
    return offset, area

  off_t, area_t = stats(stats_batches["uncorrelated"])
  off_s, area_s = stats(stats_batches["shifted"])
  assert off_s.mean() > off_t.mean() + 0.08
  # Shifted objects are either smaller or larger than any training object.
  assert np.mean((area_s < area_t.min()) | (area_s > area_t.max())) > 0.5
  assert area_s.std() > 2 * area_t.std()


def test_masks_align_with_object(stats_batches, small_eval):
  b = stats_batches["train"]
  images, masks, colors = map(np.asarray, (b.images, b.masks, b.colors))
  for i in range(50):
    on = masks[i] == 1
    np.testing.assert_allclose(images[i][on], np.broadcast_to(colors[i], (on.sum(), 3)),
                               atol=1e-6)
  # Off the object, the image is exactly its background (the Only-BG-T variant).
  e = small_eval
  off = (1 - e.masks)[..., None]
  np.testing.assert_allclose(e.images * off, e.variants["only_bg_t"].images * off, atol=1e-6)
  # The marker lies in the background and shows the marker colour, not the background.
  mm = np.asarray(b.marker_masks)
  assert mm.sum() > 0 and np.all(mm * masks == 0)


def test_fg_scale_and_contrast_knobs():
  # p, bg_contrast and fg_scale are pytree leaves: changing them does not recompile.
  base = data.sample_batch(jax.random.key(1), SMALL, N_STATS)
  big = data.sample_batch(jax.random.key(1), SMALL.replace(fg_scale=1.5), N_STATS)
  flat = data.sample_batch(jax.random.key(1), SMALL.replace(bg_contrast=0.0), N_STATS)
  ratio = float(big.masks.mean() / base.masks.mean())
  assert 1.8 < ratio < 2.7   # area scales as fg_scale**2 = 2.25
  bg = (1 - np.asarray(flat.masks) - np.asarray(flat.marker_masks))[..., None]
  # Zero contrast leaves a flat tint: no variation within a background.
  bgvals = np.asarray(flat.images) * bg
  for i in range(8):
    vals = bgvals[i][bg[i, ..., 0] == 1]
    assert np.ptp(vals, axis=0).max() < 1e-6


def test_in9_variants_are_what_they_claim(small_eval):
  e = small_eval
  v = {name: e.variants[name].images for name in evalset.IN9_VARIANTS}
  m = e.masks[..., None]
  y = e.labels
  k = e.num_classes
  np.testing.assert_array_equal(v["original"], e.images)
  assert np.all(v["only_fg"] * (1 - m) == 0)                       # no background at all
  np.testing.assert_allclose(v["only_fg"] * m, e.images * m)
  assert np.all(v["no_fg"] * m == 0)
  for i in range(len(y)):
    y0, x0, y1, x1 = e.boxes[i]
    assert np.all(v["only_bg_b"][i, y0:y1, x0:x1] == 0)
  for name in ("mixed_same", "mixed_rand", "mixed_next"):
    src = e.variant_sources[name]
    np.testing.assert_allclose(v[name] * m, e.images * m, atol=1e-6)   # same object
    np.testing.assert_allclose(v[name] * (1 - m), v["only_bg_t"][src] * (1 - m), atol=1e-6)
  assert np.all(y[e.variant_sources["mixed_same"]] == y)
  assert np.all(e.variant_sources["mixed_same"] != np.arange(len(y)))
  assert np.all(y[e.variant_sources["mixed_rand"]] != y)              # other classes
  assert len(np.unique(y[e.variant_sources["mixed_rand"]] - y)) > 1    # not always k + 1
  assert np.all(y[e.variant_sources["mixed_next"]] == (y + 1) % k)


def test_eval_set_is_complete(small_eval):
  e = small_eval
  assert len(e) == 120 and e.images.dtype == np.float32
  assert e.soft_masks is not None and e.marker_masks is not None and e.boxes.shape == (120, 4)
  assert set(e.variants) == set(evalset.IN9_VARIANTS)
  assert len(e.groups.labels) == 80 and set(np.unique(e.groups.labels)) == {0, 1}
  np.testing.assert_array_equal(e.groups.label_map, [0, 0, 1, 1])
  np.testing.assert_allclose(e.groups.train_group_fractions, [0.475, 0.025, 0.025, 0.475])
  assert e.shifted.images.shape == (80, 16, 16, 3)


def test_validation_names_the_field():
  with pytest.raises(ValueError, match="image_size"):
    data.sample_batch(jax.random.key(0), data.DataConfig(image_size=20), 4)
  with pytest.raises(ValueError, match="num_classes"):
    data.sample_batch(jax.random.key(0), data.DataConfig(num_classes=13), 4)
  with pytest.raises(ValueError, match="DataConfig.p"):
    data.sample_batch(jax.random.key(0), SMALL.replace(p=1.5), 4)
  with pytest.raises(ValueError, match="bg_contrast"):
    data.sample_batch(jax.random.key(0), SMALL.replace(bg_contrast=-0.1), 4)
  with pytest.raises(ValueError, match="domain"):
    data.sample_batch(jax.random.key(0), SMALL, 4, "imagenet")
  with pytest.raises(ValueError, match="batch_size"):
    data.sample_batch(jax.random.key(0), SMALL, 0)
  with pytest.raises(ValueError, match="n:"):
    data.make_eval_set(jax.random.key(0), SMALL, 1)
  with pytest.raises(ValueError, match="EvalSet.masks"):
    evalset.EvalSet(images=np.zeros((2, 8, 8, 3)), labels=np.zeros(2, int), num_classes=2,
                    masks=np.zeros((2, 4, 4)))


# --------------------------------------------------------------------------- learnability
def _init_cnn(key, num_classes):
  ks = jax.random.split(key, 4)
  def conv(k, cin, cout):
    return jax.random.normal(k, (3, 3, cin, cout)) * np.sqrt(2.0 / (9 * cin))
  return {"c1": conv(ks[0], 3, 8), "c2": conv(ks[1], 8, 16), "c3": conv(ks[2], 16, 32),
          "b1": jnp.zeros(8), "b2": jnp.zeros(16), "b3": jnp.zeros(32),
          "w": jax.random.normal(ks[3], (32, num_classes)) * 0.05,
          "b": jnp.zeros(num_classes)}


def _cnn(params, x):
  for i in (1, 2, 3):
    x = jax.lax.conv_general_dilated(x, params[f"c{i}"], (1, 1), "SAME",
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
    x = jax.nn.relu(x + params[f"b{i}"].reshape(1, 1, 1, -1))
    if i < 3:
      x = jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")
  x = x.max(axis=(1, 2))
  return x @ params["w"] + params["b"].reshape(1, -1)


def test_shapes_are_learnable_on_uncorrelated_domain():
  """A tiny CNN trained 300 steps on p = 1/K data must far beat chance (1/K = 0.1)."""
  config = data.DataConfig(image_size=32, num_classes=10)
  tx = optax.adam(3e-3)
  params = _init_cnn(jax.random.key(0), config.num_classes)
  opt_state = tx.init(params)

  @jax.jit
  def step(params, opt_state, key):
    batch = data.sample_batch(key, config, 64, "uncorrelated")   # generated inside the step

    def loss_fn(p):
      logits = _cnn(p, batch.images)
      return optax.softmax_cross_entropy_with_integer_labels(logits, batch.labels).mean()

    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  key = jax.random.key(1)
  for t in range(300):
    params, opt_state, loss = step(params, opt_state, jax.random.fold_in(key, t))
  test = data.sample_batch(jax.random.key(2), config, 500, "uncorrelated")
  acc = float(jnp.mean(jnp.argmax(_cnn(params, test.images), -1) == test.labels))
  assert acc > 0.45, acc   # measured 0.69 with these seeds


# --------------------------------------------------------------------------- shift and tint knobs
def test_shift_severity_zero_is_the_training_distribution():
  # Each factor is (1 - s) training draw + s shifted draw: at s = 0 the "shifted" domain is
  # the training domain, image for image (same key).
  key = jax.random.key(21)
  train = data.sample_batch(key, SMALL, N_STATS, "train")
  zero = data.sample_batch(key, SMALL.replace(shift_severity=0.0), N_STATS, "shifted")
  np.testing.assert_array_equal(np.asarray(zero.images), np.asarray(train.images))
  np.testing.assert_array_equal(np.asarray(zero.bg_ids), np.asarray(train.bg_ids))


def test_shift_factors_change_only_what_they_name(stats_batches):
  key = jax.random.key(11)   # the key of stats_batches
  train = stats_batches["train"]
  size_only = data.sample_batch(key, SMALL.replace(shift_factors=("size",)), N_STATS,
                                "shifted")
  bg_only = data.sample_batch(key, SMALL.replace(shift_factors=("background",)), N_STATS,
                              "shifted")
  # Background alone: the same objects, uncorrelated backgrounds (P(style = y) = 1/K).
  np.testing.assert_array_equal(np.asarray(bg_only.masks), np.asarray(train.masks))
  agree = float(np.mean(np.asarray(bg_only.bg_ids) == np.asarray(bg_only.labels)))
  assert _within(agree, 1 / SMALL.num_classes, N_STATS), agree
  # Size alone: the training backgrounds and centres, objects smaller or larger than any
  # training object.
  np.testing.assert_array_equal(np.asarray(size_only.bg_ids), np.asarray(train.bg_ids))
  area_t = np.asarray(train.masks).mean((1, 2))
  area_s = np.asarray(size_only.masks).mean((1, 2))
  assert np.mean((area_s < area_t.min()) | (area_s > area_t.max())) > 0.5


def test_shift_severity_interpolates_the_background_correlation():
  s = float(np.random.default_rng().uniform(0.1, 0.9))
  cfg = SMALL.replace(shift_severity=s)
  b = data.sample_batch(jax.random.key(int(1e6 * s)), cfg, N_STATS, "shifted")
  agree = float(np.mean(np.asarray(b.bg_ids) == np.asarray(b.labels)))
  p = (1 - s) * SMALL.p + s / SMALL.num_classes
  assert _within(agree, p, N_STATS, z=5.5), (s, agree, p)


def test_tint_amp_scales_the_tint_exactly():
  key = jax.random.key(int(np.random.default_rng().integers(1 << 30)))
  flat = SMALL.replace(bg_contrast=0.0)   # batch size N_STATS: compiled by the fixture
  a = data.sample_batch(key, flat, N_STATS)
  b = data.sample_batch(key, flat.replace(tint_amp=0.3), N_STATS)
  c = data.sample_batch(key, flat.replace(tint_amp=0.0), N_STATS)
  bg = ((1 - np.asarray(a.masks)) * (1 - np.asarray(a.marker_masks)))[..., None] > 0
  bg = np.broadcast_to(bg, a.images.shape)
  xa, xb, xc = (np.asarray(z.images)[bg] for z in (a, b, c))
  np.testing.assert_array_equal(xc, 0.5)                           # no tint at 0
  np.testing.assert_allclose(xb - 0.5, 2.0 * (xa - 0.5), atol=1e-6)  # 0.3 = 2 x 0.15
  assert np.abs(xa - 0.5).max() > 0.1


@pytest.mark.parametrize("field,value", [("shift_severity", 1.5), ("shift_severity", -0.1),
                                         ("tint_amp", 0.6), ("shift_factors", ("fog",)),
                                         ("shift_factors", ())])
def test_shift_and_tint_knobs_are_validated(field, value):
  with pytest.raises(ValueError, match=f"DataConfig.{field}"):
    data.sample_batch(jax.random.key(0), SMALL.replace(**{field: value}), 4)


def test_marker_side_and_fixed_corner():
  # One static config (one compilation): a 4-pixel marker always in corner 0 (top left,
  # inset 1 pixel), drawn under the object only where the object is absent.
  cfg = SMALL.replace(marker_side=4, marker_corner=0)
  b = data.sample_batch(jax.random.key(int(np.random.default_rng().integers(1 << 30))), cfg,
                        256)
  square = np.zeros((16, 16))
  square[1:5, 1:5] = 1
  mm, masks = np.asarray(b.marker_masks), np.asarray(b.masks)
  np.testing.assert_array_equal(mm, square[None] * (1 - masks))
  with pytest.raises(ValueError, match="DataConfig.marker_corner"):
    data.sample_batch(jax.random.key(0), SMALL.replace(marker_corner=4), 4)
  with pytest.raises(ValueError, match="DataConfig.marker_side"):
    data.sample_batch(jax.random.key(0), SMALL.replace(marker_side=9), 4)

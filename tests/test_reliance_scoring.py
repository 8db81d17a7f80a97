"""RFS / Salient aggregation and class balancing in spurjax.reliance, against hand counts.

A lookup classifier reads, from the noisy image alone, which example it sees, which region
was noised and at which noise level, and answers from a table whose errors depend on the
class, the region and the level. With imbalanced labels, balanced and plain accuracy differ,
and the summary RFS (from the sigma-averaged a_fg, a_bg) differs from the mean of the
per-sigma RFS: the documented conventions are checked against counts done by hand here.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from spurjax import evalset
from spurjax import reliance

S = 16                                 # image side; left half is the foreground mask
K = 3
COUNTS = (13, 8, 3)                    # imbalanced classes
N = sum(COUNTS)
SIGMAS = (0.02, 0.08, 0.25)            # noise levels, told apart by the noisy half's std
LEVEL_CUTS = (0.04, 0.14)              # between 0.02 and 0.08, and 0.08 and 0.25 (clipped)
FG, BG, CLEAN = 0, 1, 2                # which region carries noise


def _dataset():
  """Example i is constant c_i = 0.25 + 0.5 i / N on both halves; labels shuffled."""
  rng = np.random.default_rng(0)
  labels = rng.permutation(np.repeat(np.arange(K), COUNTS)).astype(np.int32)
  c = (0.25 + 0.5 * np.arange(N) / N).astype(np.float32)
  images = np.broadcast_to(c[:, None, None, None], (N, S, S, 3)).copy()
  masks = np.zeros((N, S, S), np.float32)
  masks[:, :, : S // 2] = 1.0
  return images, labels, masks


def _tables(labels, seed):
  """correct[i, region, level]: P(correct) depends on the class, the region and the level
  (high at the lowest noise, low at the highest, so the per-sigma normalisations differ)."""
  rng = np.random.default_rng(seed)
  base = np.array([0.85, 0.55, 0.25])[None, None, :]
  p = np.clip(base + rng.uniform(-0.15, 0.15, (K, 3, len(SIGMAS))), 0.05, 0.95)
  correct = rng.uniform(size=(N, 3, len(SIGMAS))) < p[labels]
  pred = np.where(correct, labels[:, None, None], (labels[:, None, None] + 1) % K)
  return correct, pred.astype(np.int32)


def _lookup_classifier(pred_table):
  table = jnp.asarray(pred_table)

  def apply_fn(x):
    left, right = x[:, :, : S // 2], x[:, :, S // 2:]
    sd = jnp.stack([jnp.std(left, axis=(1, 2, 3)), jnp.std(right, axis=(1, 2, 3))], 1)
    noisy = jnp.argmax(sd, axis=1)                       # 0: the foreground half was noised
    region = jnp.where(jnp.max(sd, axis=1) < 0.005, CLEAN, noisy)
    clean_half = jnp.where((noisy == 0)[:, None, None, None], right, left)
    idx = jnp.clip(jnp.round((jnp.mean(clean_half, axis=(1, 2, 3)) - 0.25) * N / 0.5),
                   0, N - 1).astype(jnp.int32)
    level = sum((jnp.max(sd, axis=1) > cut).astype(jnp.int32) for cut in LEVEL_CUTS)
    return jax.nn.one_hot(table[idx, region, level], K)

  return apply_fn


def _plain(correct):
  return float(np.mean(correct))


def _balanced(correct, labels):
  """Per-class accuracy averaged over the classes present, counted by hand."""
  per_class = []
  for k in range(K):
    sel = [i for i in range(N) if labels[i] == k]
    if sel:
      per_class.append(sum(bool(correct[i]) for i in sel) / len(sel))
  return sum(per_class) / len(per_class)


def _gap(hi, lo):
  a = (hi + lo) / 2
  return 0.0 if min(a, 1 - a) == 0 else (hi - lo) / (2 * min(a, 1 - a))


@pytest.mark.parametrize("seed", [1])
def test_rfs_and_salient_follow_the_documented_aggregation(seed):
  images, labels, masks = _dataset()
  correct, pred = _tables(labels, seed)
  apply_fn = _lookup_classifier(pred)
  # The classifier does what the table says on every kind of input (clean, each region and
  # level), so the expected values below are exact counts.
  key = jax.random.key(seed)
  predict = jax.jit(lambda x: jnp.argmax(apply_fn(x), 1))
  pair = jax.jit(reliance.noisy_pair)
  for level, sigma in enumerate(SIGMAS):
    noise = jax.random.normal(jax.random.fold_in(key, level), images.shape)
    x_fg, x_bg = pair(noise, jnp.asarray(images), jnp.asarray(masks), sigma)
    got_fg, got_bg = np.asarray(predict(x_fg)), np.asarray(predict(x_bg))
    np.testing.assert_array_equal(got_fg, pred[:, FG, level])
    np.testing.assert_array_equal(got_bg, pred[:, BG, level])
  np.testing.assert_array_equal(np.asarray(predict(jnp.asarray(images))), pred[:, CLEAN, 0])

  data = evalset.EvalSet(images=images, labels=labels, num_classes=K, masks=masks,
                         soft_masks=masks)
  out = reliance.evaluate(key, apply_fn, data, batch_size=10, sigmas=SIGMAS,
                          rfs_modes=("gaussian",), salient_trials=5)

  a_fg = [_balanced(correct[:, FG, k], labels) for k in range(len(SIGMAS))]
  a_bg = [_balanced(correct[:, BG, k], labels) for k in range(len(SIGMAS))]
  for k, sigma in enumerate(SIGMAS):
    assert out[f"rfs_s{round(sigma * 255):03d}"] == pytest.approx(_gap(a_bg[k], a_fg[k]),
                                                                  abs=1e-12)
  mean_fg, mean_bg = np.mean(a_fg), np.mean(a_bg)
  assert out["rfs_a_fg"] == pytest.approx(mean_fg, abs=1e-12)
  assert out["rfs_a_bg"] == pytest.approx(mean_bg, abs=1e-12)
  summary = _gap(mean_bg, mean_fg)
  assert out["rfs"] == pytest.approx(summary, abs=1e-12)

  # Salient (sigma 0.25 = level 2): core accuracy with noise off the core mask.
  core = _balanced(correct[:, BG, 2], labels)
  spur = _balanced(correct[:, FG, 2], labels)
  assert out["core_acc"] == pytest.approx(core, abs=1e-12)
  assert out["spur_acc"] == pytest.approx(spur, abs=1e-12)
  assert out["rcs"] == pytest.approx(_gap(core, spur), abs=1e-12)
  assert out["clean_acc"] == pytest.approx(_plain(correct[:, CLEAN, 0]), abs=1e-12)
  assert out["clean_bal_acc"] == pytest.approx(_balanced(correct[:, CLEAN, 0], labels),
                                               abs=1e-12)

  # The conventions matter on this data: the alternatives give other numbers.
  per_sigma_mean = np.mean([_gap(b, f) for f, b in zip(a_fg, a_bg)])
  assert abs(per_sigma_mean - summary) > 0.01
  plain_fg = [_plain(correct[:, FG, k]) for k in range(len(SIGMAS))]
  assert max(abs(p - b) for p, b in zip(plain_fg, a_fg)) > 0.01
  assert max(abs(_plain(correct[:, BG, 2]) - core),
             abs(_plain(correct[:, FG, 2]) - spur)) > 0.01

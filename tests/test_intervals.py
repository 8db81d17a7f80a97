"""Tests of spurjax.intervals: records reproduce the metrics, t-intervals, the bootstrap."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from spurjax import data
from spurjax import intervals
from spurjax import reliance

CONFIG = data.DataConfig(image_size=16, num_classes=4, p=0.7)


def _linear_classifier(seed):
  """A random linear classifier of the centred pixels: noise-sensitive, so trials differ."""
  w = jax.random.normal(jax.random.key(seed), (16 * 16 * 3, CONFIG.num_classes))
  return lambda x: (x.reshape(x.shape[0], -1) - 0.5) @ w


def test_records_reproduce_every_metric_of_evaluate_exactly():
  seed = int(np.random.default_rng().integers(1 << 30))
  es = data.make_eval_set(jax.random.key(seed), CONFIG, 64, n_groups=48, n_shifted=40)
  metrics, records = reliance.evaluate(jax.random.key(seed + 1), _linear_classifier(seed), es,
                                       salient_sigma=0.1, rfs_modes=("gaussian",),
                                       return_records=True)
  again = intervals.metrics_from_records(records, CONFIG.num_classes)
  assert {"rfs", "rcs", "bg_gap", "worst_group_acc", "shift_drop"} <= set(again)
  for key, value in again.items():
    assert value == metrics[key], (key, value, metrics[key])
  # The noise made some images right in some trials only (so the counts are not trivial).
  assert np.any((records["salient_core"] > 0) & (records["salient_core"] < 5))


def test_t_interval_value_and_coverage():
  mean, hw = intervals.t_interval([1.0, 2.0, 3.0])
  assert mean == 2.0
  # t with 2 degrees of freedom has CDF 1/2 + t / (2 sqrt(2 + t^2)): t_{.975} solves
  # t / sqrt(2 + t^2) = 0.95, i.e. t^2 = 2 0.95^2 / (1 - 0.95^2).
  t975 = np.sqrt(2 * 0.95 ** 2 / (1 - 0.95 ** 2))
  np.testing.assert_allclose(hw, t975 / np.sqrt(3), rtol=1e-12)
  assert intervals.t_interval([0.5])[1] is None
  # Coverage of normal samples of size 3: 0.95 up to 6 binomial standard errors.
  reps = 20000
  x = np.random.default_rng().normal(0.3, 2.0, (reps, 3))
  m, h = intervals.t_interval(x, axis=1)
  cover = float(np.mean(np.abs(m - 0.3) <= h))
  assert abs(cover - 0.95) <= 6 * np.sqrt(0.95 * 0.05 / reps), cover
  with pytest.raises(ValueError, match="confidence"):
    intervals.t_interval([1.0, 2.0], confidence=1.5)


def test_bootstrap_spread_is_the_plug_in_standard_error():
  # Resampling n Bernoulli outcomes with replacement: the mean of two models' accuracies has
  # bootstrap sd sqrt(var_pop((c1 + c2) / 2) / n) exactly; the sample sd of B draws matches
  # it to a relative standard error of ~1 / sqrt(2 (B - 1)).
  rng = np.random.default_rng()
  n, b = 300, 2000
  labels = rng.integers(0, 4, n)
  recs = [{"labels": labels, "clean": rng.random(n) < q} for q in rng.uniform(0.3, 0.9, 2)]
  draws = intervals.bootstrap_draws(recs, 4, seed=int(rng.integers(1 << 30)), n_boot=b)
  avg = (recs[0]["clean"].astype(float) + recs[1]["clean"]) / 2
  sd = np.sqrt(avg.var() / n)
  assert abs(draws["clean_acc"].std(ddof=1) / sd - 1) <= 6 / np.sqrt(2 * (b - 1))
  assert abs(draws["clean_acc"].mean() - avg.mean()) <= 6 * sd / np.sqrt(b)
  lo, hi = intervals.bootstrap_interval(recs, 4, seed=1, n_boot=200)["clean_acc"]
  assert lo < avg.mean() < hi


def test_bootstrap_keeps_paired_parts_paired():
  rng = np.random.default_rng()
  n = 80
  same = rng.random(n) < 0.6
  rec = {"labels": rng.integers(0, 4, n), "clean": same, "in9_mixed_same": same,
         "in9_mixed_rand": same.copy(), "shift_correct": rng.random(50) < 0.4}
  draws = intervals.bootstrap_draws([rec], 4, n_boot=50)
  np.testing.assert_array_equal(draws["bg_gap"], 0.0)      # same images in both variants
  assert draws["shift_acc"].std() > 0
  other = dict(rec, shift_correct=rec["shift_correct"][:40])
  with pytest.raises(ValueError, match="shift"):
    intervals.bootstrap_draws([rec, other], 4, n_boot=2)

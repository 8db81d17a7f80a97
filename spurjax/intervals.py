"""95% intervals for the reliance metrics: over training seeds and over test images.

Two sources of uncertainty, reported separately:
- seeds (training randomness): the Student-t interval of the mean over n seeds,
  mean +- t_{(1 + c) / 2, n - 1} s / sqrt(n), s the sample standard deviation (ddof 1);
- test images (finite evaluation sets): a percentile bootstrap. Each draw resamples, with
  replacement, the images of every evaluation part independently (the main test set, with
  its ImageNet-9 variants and noisy copies resampled by the same index, so paired metrics
  such as BG-Gap stay paired; the Waterbirds split; the shifted set; the uncorrelated set),
  recomputes every metric from the per-image records of `spurjax.reliance.evaluate(...,
  return_records=True)` for each model, and averages over the models given (the seeds of
  one setting, all scored on the same images). The interval is the (1 - c) / 2 and
  (1 + c) / 2 quantiles of the draws.

`metrics_from_records` recomputes the metrics with exactly the formulas of
`spurjax.reliance` (balanced accuracies pooled over trials, RFS/RCS normalized gaps, BG-Gap,
worst-group accuracy, shift drop); on the identity index it reproduces `evaluate` exactly.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
from scipy import stats

from spurjax import reliance

# Parts of the records and which index resamples them.
_MAIN_KEYS = ("labels", "clean", "rfs_fg", "rfs_bg", "rfs_l2_fg", "rfs_l2_bg",
              "salient_core", "salient_spur")


def t_interval(values: Any, confidence: float = 0.95, axis: int = -1
               ) -> tuple[np.ndarray, np.ndarray | None]:
  """Mean and Student-t half-width over `axis`: t_{(1 + c) / 2, n - 1} s / sqrt(n).

  Args:
    values: array of n >= 1 values along `axis` (e.g. one metric over seeds).
    confidence: c in (0, 1).
    axis: the axis of the replicates.

  Returns:
    (mean, half_width); half_width is None when n < 2 (no spread to estimate).
  """
  if not 0.0 < float(confidence) < 1.0:
    raise ValueError(f"confidence: must be in (0, 1), got {confidence}")
  v = np.asarray(values, np.float64)
  if v.size == 0 or not np.all(np.isfinite(v)):
    raise ValueError(f"values: need finite values, got {v}")
  n = v.shape[axis]
  mean = v.mean(axis=axis)
  if n < 2:
    return mean, None
  s = v.std(axis=axis, ddof=1)
  return mean, stats.t.ppf(0.5 + 0.5 * float(confidence), n - 1) * s / np.sqrt(n)


def _balanced(counts: np.ndarray, labels: np.ndarray, trials: int, k: int) -> float:
  """Per-class mean of counts / trials, averaged over the classes present."""
  total = np.bincount(labels, minlength=k)
  correct = np.bincount(labels, weights=counts, minlength=k)
  present = total > 0
  return float(np.mean(correct[present] / (trials * total[present])))


def metrics_from_records(records: Mapping[str, np.ndarray], num_classes: int, *,
                         index: np.ndarray | None = None,
                         group_index: np.ndarray | None = None,
                         shift_index: np.ndarray | None = None,
                         uncorr_index: np.ndarray | None = None) -> dict[str, float]:
  """The reliance metrics recomputed from per-image records, optionally on resampled images.

  Args:
    records: from `reliance.evaluate(..., return_records=True)`, optionally with
      "uncorr_correct" `(U,)` bool (accuracy on an uncorrelated-background set).
    num_classes: K.
    index: `(N,)` indices into the main test set (default: all images, in order); the
      ImageNet-9 variants of the same length are resampled with it too.
    group_index, shift_index, uncorr_index: the same for the Waterbirds split `(M,)`, the
      shifted set `(M',)` and the uncorrelated set `(U,)`.

  Returns:
    Those of clean_acc, rfs, rfs_a_fg, rfs_a_bg, rfs_l2, rfs_l2_a_fg, rfs_l2_a_bg, core_acc,
    spur_acc, rcs, acc_<variant>, bg_gap, worst_group_acc, wb_mean_acc, shift_id_acc,
    shift_acc, shift_drop and uncorr_acc whose records are present.
  """
  k = int(num_classes)
  n = len(records["labels"])
  idx = np.arange(n) if index is None else np.asarray(index)
  lab = np.asarray(records["labels"], np.int64)[idx]
  out: dict[str, float] = {}
  out["clean_acc"] = float(np.mean(records["clean"][idx]))
  for prefix in ("rfs", "rfs_l2"):
    if f"{prefix}_fg" not in records:
      continue
    t = int(records[f"{prefix}_trials"])
    fg, bg = records[f"{prefix}_fg"][:, idx], records[f"{prefix}_bg"][:, idx]
    a_fg = float(np.mean([_balanced(c, lab, t, k) for c in fg]))
    a_bg = float(np.mean([_balanced(c, lab, t, k) for c in bg]))
    out.update({f"{prefix}_a_fg": a_fg, f"{prefix}_a_bg": a_bg,
                prefix: reliance.rfs_score(a_fg, a_bg)})
  if "salient_core" in records:
    t = int(records["salient_trials"])
    core = _balanced(records["salient_core"][idx], lab, t, k)
    spur = _balanced(records["salient_spur"][idx], lab, t, k)
    out.update(core_acc=core, spur_acc=spur, rcs=reliance.rcs_score(core, spur))
  for key, value in records.items():
    if key.startswith("in9_"):
      v = np.asarray(value)
      out["acc_" + key[4:]] = float(np.mean(v[idx] if len(v) == n else v))
  if "acc_mixed_same" in out and "acc_mixed_rand" in out:
    out["bg_gap"] = out["acc_mixed_same"] - out["acc_mixed_rand"]
  if "wb_correct" in records:
    m = len(records["wb_correct"])
    gi = np.arange(m) if group_index is None else np.asarray(group_index)
    correct, g = records["wb_correct"][gi], np.asarray(records["wb_groups"])[gi]
    accs = [float(correct[g == j].mean()) for j in range(4) if np.any(g == j)]
    out["worst_group_acc"] = min(accs)
    out["wb_mean_acc"] = float(correct.mean())
  if "shift_correct" in records:
    m = len(records["shift_correct"])
    si = np.arange(m) if shift_index is None else np.asarray(shift_index)
    out["shift_id_acc"] = out["clean_acc"]
    out["shift_acc"] = float(np.mean(records["shift_correct"][si]))
    out["shift_drop"] = out["shift_id_acc"] - out["shift_acc"]
  if "uncorr_correct" in records:
    u = len(records["uncorr_correct"])
    ui = np.arange(u) if uncorr_index is None else np.asarray(uncorr_index)
    out["uncorr_acc"] = float(np.mean(records["uncorr_correct"][ui]))
  return out


def bootstrap_draws(records_list: Sequence[Mapping[str, np.ndarray]], num_classes: int, *,
                    seed: int = 0, n_boot: int = 1000) -> dict[str, np.ndarray]:
  """Bootstrap draws over test images of the metrics averaged over models.

  Args:
    records_list: per-image records of one or more models scored on the same evaluation
      set (same parts, same sizes), e.g. the seeds of one setting.
    num_classes: K.
    seed: seed of the resampling (numpy PCG64).
    n_boot: number of draws B.

  Returns:
    metric -> `(B,)` draws of the model-average of the metric (see the module docstring).
  """
  if not records_list:
    raise ValueError("records_list: need at least one model's records")
  if not isinstance(n_boot, int) or n_boot < 2:
    raise ValueError(f"n_boot: must be an int >= 2, got {n_boot!r}")
  sizes = {}
  for name, key in (("main", "labels"), ("groups", "wb_correct"), ("shift", "shift_correct"),
                    ("uncorr", "uncorr_correct")):
    lens = {len(r[key]) for r in records_list if key in r}
    if len(lens) > 1:
      raise ValueError(f"records_list: the models were scored on different {name} sets "
                       f"(sizes {sorted(lens)})")
    sizes[name] = lens.pop() if lens else 0
  rng = np.random.default_rng(seed)
  draws: dict[str, list] = {}
  for _ in range(n_boot):
    idx = {name: rng.integers(0, m, m) if m else None for name, m in sizes.items()}
    per_model = [metrics_from_records(r, num_classes, index=idx["main"],
                                      group_index=idx["groups"], shift_index=idx["shift"],
                                      uncorr_index=idx["uncorr"]) for r in records_list]
    for metric in per_model[0]:
      draws.setdefault(metric, []).append(np.mean([pm[metric] for pm in per_model]))
  return {k: np.asarray(v) for k, v in draws.items()}


def bootstrap_interval(records_list: Sequence[Mapping[str, np.ndarray]], num_classes: int, *,
                       confidence: float = 0.95, seed: int = 0, n_boot: int = 1000
                       ) -> dict[str, tuple[float, float]]:
  """Percentile bootstrap interval over test images of each model-averaged metric.

  Returns:
    metric -> (lo, hi), the (1 - c) / 2 and (1 + c) / 2 quantiles of `bootstrap_draws`.
  """
  if not 0.0 < float(confidence) < 1.0:
    raise ValueError(f"confidence: must be in (0, 1), got {confidence}")
  draws = bootstrap_draws(records_list, num_classes, seed=seed, n_boot=n_boot)
  q = (0.5 - 0.5 * float(confidence), 0.5 + 0.5 * float(confidence))
  return {k: (float(np.quantile(v, q[0])), float(np.quantile(v, q[1])))
          for k, v in draws.items()}

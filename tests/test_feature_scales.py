"""sims.feature_scales: outputs of the small preset and the per-feature claims in them."""

import csv
import json
import os

from absl import app
import numpy as np
import pytest

from sims import _common


def _sim(*args):
  _common.run_main("sims.feature_scales", args)


def test_small_preset(tmp_path):
  _sim("--preset=small", f"--workdir={tmp_path}")
  for f in ("feature_scales.png", "feature_scales.csv", "manifest.json"):
    assert (tmp_path / f).stat().st_size > 0, f
  assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]
  with open(tmp_path / "feature_scales.csv") as f:
    rows = list(csv.DictReader(f))
  with open(tmp_path / "manifest.json") as f:
    manifest = json.load(f)
  config = manifest["config"]
  from sims import feature_scales as fs  # the exact moments, for the claims
  sigma, cross, _ = fs.moments(config)
  names = fs.feature_names(config)
  w_of = lambda r: np.asarray([float(r[f"w_{n}"]) for n in names])
  by_norm = {n: [r for r in rows if r["norm"] == n] for n in ("l1", "l2", "linf")}
  # eps = 0: every norm gives least squares.
  w_ls = np.linalg.solve(sigma, cross)
  for sel in by_norm.values():
    np.testing.assert_allclose(w_of(sel[0]), w_ls, rtol=1e-9)
  # l_inf: the last feature standing is the one with the largest |E[x_i y]|.
  last = manifest["last_eps_with_weight"]["linf"]
  best = names[int(np.argmax(np.abs(cross)))]
  assert all(last[best] > (last[n] or 0.0) for n in names if n != best), last
  # l1 and l2: the spurious weight share grows with eps (claim ii).
  for norm in ("l1", "l2"):
    share = [float(r["spurious_weight_share"]) for r in by_norm[norm]]
    assert share[-1] > share[0] + 0.1, (norm, share)
  # l1: ever more features share the largest |w_i| (the cap of the l_inf-penalty path; in
  # this model none leaves it), spurious ones included.
  capped = [np.isclose(np.abs(w_of(r)), np.abs(w_of(r)).max(), rtol=1e-9)
            for r in by_norm["l1"][1:]]
  counts = [int(c.sum()) for c in capped]
  assert counts == sorted(counts) and counts[-1] >= 3, counts
  assert capped[-1][len(config["core_scales"]):].any(), capped[-1]


def test_bad_flags_give_usage_error(tmp_path):
  with pytest.raises(app.UsageError, match="--spu_rhos"):
    _sim(f"--workdir={tmp_path}", "--spu_rhos=0.5,0.2")

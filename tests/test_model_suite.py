"""The model suite and its report (sims.model_suite, sims.background_reliance), and the two
image sims built on it (sims.preserved_correlation, sims.scale_law): outputs of the small
presets, kill-and-resume without retraining, the same table as an uninterrupted run, and
usage errors for bad flags.

The sims run in this process (`sims._common.run_main`), so each program is compiled once
per test worker.
"""

import csv
import hashlib
import json
import os
import re

from absl import app
import pytest

from sims import _common
REQUIRED = ("model", "arch", "norm", "eps", "seed", "clean_acc", "pgd_acc_l1", "pgd_acc_l2",
            "pgd_acc_linf", "rfs", "core_acc", "spur_acc", "rcs", "bg_gap",
            "worst_group_acc", "shift_drop")


def _sim(name, *args):
  _common.run_main(f"sims.{name}", args)


def _rows(path):
  with open(path) as f:
    return list(csv.DictReader(f))


def _snapshot(directory):
  """path -> (mtime_ns, sha256) of every file under `directory`."""
  out = {}
  for base, _, files in os.walk(directory):
    for name in files:
      p = os.path.join(base, name)
      with open(p, "rb") as f:
        out[os.path.relpath(p, directory)] = (os.stat(p).st_mtime_ns,
                                              hashlib.sha256(f.read()).hexdigest())
  return out


def _status(workdir):
  with open(os.path.join(workdir, "suite_status.json")) as f:
    return {m["model"]: m["status"] for m in json.load(f)["models"]}


STD = "small_cnn_none_eps0_seed0"
L2 = "small_cnn_l2_eps0.5_seed0"
LINF = "small_cnn_linf_eps0.03137_seed0"


def test_suite_killed_resumes_without_retraining_and_gives_the_same_table(tmp_path):
  work = str(tmp_path / "interrupted")
  # Run 1: the standard model completes, the l2 model is "killed" at step 15 (its last
  # checkpoint is step 10), the l_inf model never starts.
  _sim("model_suite", "--preset=small", f"--workdir={work}", "--max_models=1",
       "--kill_after_steps=15")
  assert _status(work) == {STD: "trained", L2: "interrupted", LINF: "pending"}
  assert os.listdir(os.path.join(work, "models", L2, "checkpoints")) == ["10"]
  assert not os.path.exists(os.path.join(work, "models", LINF))
  done_before = _snapshot(os.path.join(work, "models", STD))
  assert "metrics.jsonl" in done_before and "config.json" in done_before

  # Run 2: same command without the limit finishes the suite, leaves the standard model alone.
  _sim("model_suite", "--preset=small", f"--workdir={work}")
  assert _status(work) == {STD: "skipped", L2: "trained", LINF: "trained"}
  assert _snapshot(os.path.join(work, "models", STD)) == done_before
  with open(os.path.join(work, "models", L2, "metrics.jsonl")) as f:
    steps = [json.loads(line)["step"] for line in f]
  assert steps == [10, 20, 30]  # the killed run's step-15 tail was redone once, not twice

  # Run 3: a finished suite trains nothing.
  _sim("model_suite", "--preset=small", f"--workdir={work}")
  assert set(_status(work).values()) == {"skipped"}

  _sim("background_reliance", "--preset=small", f"--workdir={work}")
  for name in ("reliance.csv", "reliance.md", "reliance.png", "manifest.json", "suite.json"):
    assert os.path.getsize(os.path.join(work, name)) > 0, name
  assert not [p for p in os.listdir(work) if p.endswith(".tmp")]
  rows = _rows(os.path.join(work, "reliance.csv"))
  assert set(REQUIRED) <= set(rows[0])
  # AutoAttack columns exist; the small preset skips them (aa_version "none").
  assert {r["aa_acc_linf"] for r in rows} == {""}
  assert [(r["model"], r["norm"]) for r in rows] == [(STD, "none"), (L2, "l2"), (LINF, "linf")]
  for r in rows:
    for k in REQUIRED[5:]:
      v = float(r[k])
      lo = -1.0 if k in ("rfs", "rcs", "bg_gap", "shift_drop") else 0.0
      assert lo <= v <= 1.0, (r["model"], k, v)
  with open(os.path.join(work, "manifest.json")) as f:
    manifest = json.load(f)
  assert {"reliance.csv", "reliance.png", "reliance.md"} <= set(manifest["outputs"])
  assert manifest["models"] == 3
  with open(os.path.join(work, "reliance.md")) as f:
    table = f.read()
  assert table.count("\n| small_cnn |") == 3

  # The uninterrupted run of the same suite gives the same table, number for number.
  ref = str(tmp_path / "uninterrupted")
  _sim("model_suite", "--preset=small", f"--workdir={ref}")
  _sim("background_reliance", "--preset=small", f"--workdir={ref}")
  assert _rows(os.path.join(ref, "reliance.csv")) == rows


@pytest.mark.parametrize("name,extra", [("preserved_correlation", ()), ("scale_law", ())])
def test_small_image_sims_write_their_outputs(tmp_path, name, extra):
  _sim(name, "--preset=small", f"--workdir={tmp_path}", *extra)
  for f in (f"{name}.csv", f"{name}.png", "manifest.json"):
    assert (tmp_path / f).stat().st_size > 0, f
  rows = _rows(tmp_path / f"{name}.csv")
  if name == "preserved_correlation":
    assert sorted(float(r["train_p"]) for r in rows) == [0.25, 0.9]
    for r in rows:
      assert 0.0 <= float(r["pgd_acc_preserved"]) <= float(r["clean_acc_preserved"]) + 1e-9
  else:
    assert {float(r["bg_contrast"]) for r in rows} == {0.1, 0.6}
    for r in rows:
      rates = [float(r[k]) for k in ("shape_rate", "bg_rate", "marker_rate")]
      assert all(0.0 <= v <= 1.0 for v in rates) and sum(rates) <= 1.0 + 1e-9
    # The measured texture amplitude grows with the contrast, the marker's does not.
    by_c = {float(r["bg_contrast"]): r for r in rows}
    assert float(by_c[0.6]["bg_amp"]) > 3 * float(by_c[0.1]["bg_amp"])
    assert abs(float(by_c[0.6]["marker_amp"]) - float(by_c[0.1]["marker_amp"])) < 0.1


@pytest.mark.parametrize("name,args,message", [
    ("model_suite", ["--norms=l3"], "--norms"),
    ("model_suite", ["--eps_l2=0.5,abc"], "--eps_l2"),
    ("model_suite", ["--seeds=-1"], "--seeds"),
    ("model_suite", ["--image_size=12"], "--image_size"),
    ("model_suite", ["--kill_after_steps=3"], "--kill_after_steps"),
    ("model_suite", ["--preset=huge"], "--preset"),
    ("model_suite", ["--steps=0"], "--steps"),
    ("background_reliance", ["--n_eval=2"], "--n_eval"),
    ("background_reliance", ["--workdir=/nonexistent/suite"], "--workdir"),
    ("scale_law", ["--contrasts=2"], "--contrasts"),
    ("preserved_correlation", ["--norms=l0"], "--norms"),
])
def test_bad_flags_are_usage_errors(name, args, message):
  """A usage error naming the flag (what absl.app.run prints, exit status 1)."""
  with pytest.raises(app.UsageError, match=re.escape(message)):
    _sim(name, *args)


def test_suite_refuses_a_workdir_of_other_settings(tmp_path):
  (tmp_path / "suite.json").write_text(json.dumps({"image_size": 64}))
  with pytest.raises(app.UsageError, match="--workdir") as error:
    _sim("model_suite", "--preset=small", f"--workdir={tmp_path}", "--norms=linf",
         "--nostandard", "--max_models=0")
  assert "image_size" in str(error.value)

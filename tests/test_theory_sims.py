"""The theory sims (shift tradeoff, spurious helps, finite sample): claims, outputs, flags,
atomic writes, and a two-process run on JAX's distributed runtime.

The sims run in this process (`sims._common.run_main`); only the distributed run starts
processes of its own."""

import csv
import os
import re
import socket
import subprocess
import sys

from absl import app
import jax
import numpy as np
import pytest

from sims import _common
from spurjax import empirical
from spurjax import io
from spurjax import theory as T

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _env(extra=None):
  env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
  env.update(extra or {})
  return env


def _sim(name, *args):
  _common.run_main(f"sims.{name}", args)


def _rows(path):
  with open(path) as f:
    return list(csv.DictReader(f))


@pytest.fixture(autouse=True)
def x64():
  with jax.enable_x64(True):
    yield


@pytest.mark.parametrize("name", ["shift_tradeoff", "spurious_helps", "finite_sample"])
def test_small_preset_outputs(tmp_path, name):
  _sim(name, "--preset=small", f"--workdir={tmp_path}")
  for f in (f"{name}.png", f"{name}.csv", "manifest.json"):
    assert (tmp_path / f).stat().st_size > 0, f
  rows = _rows(tmp_path / f"{name}.csv")
  assert rows
  if name == "shift_tradeoff":
    # Claim 3 in the sim's own output: zero gap while w_spu = 0, positive once w_spu > 0
    # (for the shifted domains rho' = 0 and -rho).
    for r in rows:
      gap, w_spu = float(r["shift_gap"]), float(r["w_spu"])
      if float(r["rho_test"]) == 0.9:
        assert abs(gap) < 1e-12
      elif w_spu == 0.0:
        assert gap == 0.0
      else:
        assert gap > 0.0
  if name == "spurious_helps":
    for r in rows:
      assert float(r["risk_spurious"]) <= float(r["risk_no_spurious"]) * (1 + 1e-12)
      assert float(r["risk_spurious"]) <= float(r["risk_rho0"]) * (1 + 1e-12)
  assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]


def test_shift_gap_zero_for_standard_positive_once_spurious():
  model = T.CoreSpuriousModel(4, 3, 1.0, 0.7, 0.9, 0.0)
  for norm in T.NORMS:
    eps_star = float(T.robust_interpolation_radius(model, norm))
    std = T.adversarial_minimizer(model, 0.0, norm)
    assert float(T.shift_gap(model, std.w, 0.0)) == 0.0
    assert float(T.shift_gap(model, std.w, -0.9)) == 0.0
    for eps in np.linspace(0.0, 1.5, 31):
      sol = T.adversarial_minimizer(model, eps, norm)
      gap = float(T.shift_gap(model, sol.w, 0.0))
      if float(sol.w_spu) != 0.0:
        assert gap > 0.0, (norm, eps)
        assert eps > eps_star
      else:
        assert gap == 0.0


def test_spurious_features_help_adversarial_risk_strictly_past_eps_star():
  """Claim 4: preserved correlation gives adversarial risk <= without, < past eps*
  (up to the collapse radius of the spurious model, where both are Var(y))."""
  for model in (T.CoreSpuriousModel(4, 3, 1.0, 0.7, 0.9, 0.0),
                T.CoreSpuriousModel(2, 5, 1.5, 1.0, -0.7, 0.2)):
    without = model.replace(d_spu=0)
    rho0 = model.replace(rho=0.0)
    for norm in T.NORMS:
      eps_star = float(T.robust_interpolation_radius(model, norm))
      eps0 = float(T.collapse_radius(model, norm))
      for eps in np.linspace(0.0, 2.0, 41):
        r_spu = float(T.adversarial_minimizer(model, eps, norm).risk)
        r_without = float(T.adversarial_minimizer(without, eps, norm).risk)
        r_rho0 = float(T.adversarial_minimizer(rho0, eps, norm).risk)
        assert r_spu <= r_without * (1 + 1e-12) and r_spu <= r_rho0 * (1 + 1e-12)
        np.testing.assert_allclose(r_rho0, r_without, rtol=1e-10)
        has_spu = float(T.adversarial_minimizer(model, eps, norm).w_spu) != 0.0
        if has_spu and eps < eps0:
          assert r_spu < r_without * (1 - 1e-9), (norm, eps)
        if eps <= eps_star and model.label_noise == 0:
          np.testing.assert_allclose(r_spu, r_without, rtol=1e-12)


def test_finite_sample_converges_at_root_n():
  """Weight error of empirical adversarial training shrinks like n^-1/2 (log-log slope in
  [-0.75, -0.35], mean over 4 fixed seeds) towards the exact population minimizer."""
  model = T.CoreSpuriousModel(4, 3, 1.0, 0.7, 0.9, 0.0)
  eps, norm = 0.6, "l2"
  star = T.adversarial_minimizer(model, eps, norm)
  ns, errs = [100, 1000, 10000], []
  for n in ns:
    def one(seed, n=n):
      x, y = T.sample(jax.random.key(seed), model, n)
      return empirical.fit_adversarial_linear(x, y, eps, norm, steps=1500).w
    w = jax.jit(jax.vmap(one))(np.arange(4))
    errs.append(float(np.mean(np.linalg.norm(np.asarray(w) - np.asarray(star.w), axis=1))))
  slope = float(np.polyfit(np.log(ns), np.log(errs), 1)[0])
  assert -0.75 <= slope <= -0.35, (slope, errs)
  assert errs[-1] < 0.02


def test_empirical_risk_matches_population_for_large_n():
  """The empirical risk is exactly the sample mean of (|w^T x - y| + eps ||w||_q)^2, and
  within 6 standard errors (of that mean, from the sample) of the population risk; a fresh
  draw each run: 3 checks fail a correct pair w.p. 3 * 2e-9 (the former rtol = 0.01 was
  about 2 standard errors)."""
  model = T.CoreSpuriousModel(3, 2, 1.0, 2.0, 0.8, 0.3)
  w = np.array([0.3, -0.1, 0.4, 0.2, 0.1])
  seed = int(np.random.SeedSequence().entropy % 2**31)
  x, y = T.sample(jax.random.key(seed), model, 200_000)
  resid = np.asarray(x) @ w - np.asarray(y)
  for norm in T.NORMS:
    emp = float(empirical.empirical_adversarial_risk(w, x, y, 0.5, norm))
    pop = float(T.adversarial_risk(model, w, 0.5, norm))
    loss = (np.abs(resid) + 0.5 * np.linalg.norm(w, {"l1": np.inf, "l2": 2, "linf": 1}[norm]))**2
    np.testing.assert_allclose(emp, loss.mean(), rtol=1e-10)
    se = loss.std() / np.sqrt(len(loss))
    assert abs(emp - pop) <= 6 * se, (seed, norm, emp, pop, se)


@pytest.mark.parametrize("name, flag", [
    ("finite_sample", "--n_list="),
    ("finite_sample", "--n_list=-5,100"),
    ("finite_sample", "--eps_list=-1"),
    ("finite_sample", "--norms=l7"),
    ("shift_tradeoff", "--rho_test=2"),
    ("shift_tradeoff", "--rho_test=a,b"),
    ("shift_tradeoff", "--n_eps=1"),
    ("spurious_helps", "--eps_max=0"),
    ("spurious_helps", "--sigma_spu=-1"),
])
def test_bad_flags_are_usage_errors(tmp_path, name, flag):
  """A usage error naming the flag (what absl.app.run prints, exit status 1)."""
  with pytest.raises(app.UsageError, match=re.escape(flag.split("=")[0])):
    _sim(name, f"--workdir={tmp_path}", flag)
  assert not os.path.exists(tmp_path / f"{name}.csv")


def test_atomic_write_leaves_old_file_on_failure(tmp_path):
  path = tmp_path / "table.csv"
  io.write_csv(path, [dict(a=1, b=2)])
  before = path.read_text()
  with pytest.raises(RuntimeError):
    with io.atomic_write(path) as f:
      f.write("a,b\n3,")
      raise RuntimeError("killed mid-write")
  assert path.read_text() == before
  assert os.listdir(tmp_path) == ["table.csv"]


def test_rerun_in_same_workdir_replaces_outputs(tmp_path):
  for _ in range(2):
    _sim("spurious_helps", "--preset=small", f"--workdir={tmp_path}", "--norms=l2", "--n_eps=5")
  assert sorted(os.listdir(tmp_path)) == ["manifest.json", "spurious_helps.csv",
                                         "spurious_helps.png"]


def _free_port():
  """A port that was free a moment ago (another process may take it before the coordinator
  binds it: the caller retries on a bind failure)."""
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _run_two_processes(args, workdir, attempts=3):
  """Runs the sim as processes 0 and 1 of a jax.distributed job; on a coordinator port taken
  between `_free_port` and the bind, retries with a fresh port."""
  logs = [os.path.join(os.path.dirname(workdir), f"process_{i}.log") for i in range(2)]
  for _ in range(attempts):
    port = _free_port()
    procs = []
    for i in range(2):
      with open(logs[i], "w") as log:  # files, not pipes: no process blocks on a full pipe
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "sims.phase_diagram", *args, f"--workdir={workdir}",
             f"--coordinator_address=localhost:{port}", "--num_processes=2",
             f"--process_id={i}"], env=_env(), cwd=ROOT, stdout=log, stderr=log))
    if procs[0].wait(timeout=300) != 0:
      procs[1].kill()  # it would wait for the coordinator until its own timeout
    procs[1].wait(timeout=300)
    if procs[0].returncode == 0 and procs[1].returncode == 0:
      return
    errors = open(logs[0]).read() if procs[0].returncode else open(logs[1]).read()
    # A taken coordinator port reads "Failed to start RPC server"; anything else is a failure.
    if not re.search(r"Failed to start RPC server|[Aa]ddress already in use", errors):
      break
  raise AssertionError(errors[-3000:])


def test_two_processes_on_jax_distributed_match_single_process(tmp_path):
  """Two CPU processes on localhost, one device each; process 0 writes the merged grid; the
  same grid from one process (run in this one) is equal."""
  args = ["--preset=small", "--norms=linf", "--n_eps=5", "--n_ratio=4", "--n_rho=3"]
  multi = tmp_path / "multi"
  _run_two_processes(args, multi)
  single = tmp_path / "single"
  _sim("phase_diagram", *args, f"--workdir={single}")
  a, b = _rows(multi / "phase_diagram.csv"), _rows(single / "phase_diagram.csv")
  assert len(a) == len(b) > 0
  for ra, rb in zip(a, b):
    assert ra["norm"] == rb["norm"] and ra["diagram"] == rb["diagram"]
    np.testing.assert_allclose([float(ra[k]) for k in ("eps", "w_core", "w_spu", "risk")],
                               [float(rb[k]) for k in ("eps", "w_core", "w_spu", "risk")],
                               rtol=1e-12, atol=1e-15)
  import json
  manifest = json.loads((multi / "manifest.json").read_text())
  assert manifest["process_count"] == 2

"""The phase-diagram sim end to end (small preset, as a user runs it), its flag errors (in
this process), and device sharding."""

import csv
import json
import os
import re
import subprocess
import sys
import textwrap

from absl import app
import jax
import numpy as np
import pytest

from sims import _common

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(args, env_extra=None, timeout=300):
  env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
  env.update(env_extra or {})
  return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env,
                        timeout=timeout, cwd=ROOT)


def test_small_preset_writes_outputs(tmp_path):
  proc = _run(["-m", "sims.phase_diagram", "--preset=small", f"--workdir={tmp_path}"])
  assert proc.returncode == 0, proc.stderr[-2000:]
  for name in ("phase_diagram.png", "phase_diagram.csv", "manifest.json"):
    assert (tmp_path / name).stat().st_size > 0
  with open(tmp_path / "phase_diagram.csv") as f:
    rows = list(csv.DictReader(f))
  assert len(rows) == 3 * (21 * 17 + 21 * 17)
  assert set(rows[0]) == {"diagram", "norm", "eps", "scale_ratio", "rho", "w_core", "w_spu",
                          "weight_share", "risk", "shift_gap"}
  manifest = json.loads((tmp_path / "manifest.json").read_text())
  assert manifest["config"]["n_eps"] == 21 and manifest["x64"] is True
  assert manifest["wall_time_s"] > 0 and "jax" in manifest["versions"]
  # Content: at eps = 0 no spurious weight; the l_inf panel has an all-spurious region.
  for r in rows:
    if float(r["eps"]) == 0.0:
      assert float(r["w_spu"]) == 0.0
  linf = [r for r in rows if r["norm"] == "linf" and r["diagram"] == "ratio"]
  assert any(float(r["w_core"]) == 0.0 and float(r["w_spu"]) > 0 for r in linf)
  # No temporary files are left behind.
  assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]


@pytest.mark.parametrize("flag", ["--n_eps=1", "--eps_max=-1", "--norms=l3",
                                  "--ratio_min=2 --ratio_max=1", "--rho=1.5", "--d_core=0",
                                  "--preset=huge"])
def test_bad_flags_give_usage_error(tmp_path, flag):
  """A usage error naming the flag (absl.app.run prints it, exit status 1), nothing written."""
  name = flag.split("=")[0]
  with pytest.raises(app.UsageError, match=re.escape(name)):
    _common.run_main("sims.phase_diagram", [f"--workdir={tmp_path}", *flag.split()])
  assert os.listdir(tmp_path) == []


def test_bad_flag_from_the_command_line_is_a_usage_message(tmp_path):
  """The same error as `python -m` reports it: a one-line message, no traceback."""
  proc = _run(["-m", "sims.phase_diagram", f"--workdir={tmp_path}", "--eps_max=0"])
  assert proc.returncode == 1
  assert "Traceback" not in proc.stderr
  assert "FATAL Flags parsing error" in proc.stderr and "--eps_max" in proc.stderr


def test_grid_map_sharded_over_4_devices_equals_single_device():
  """Forces 4 CPU devices in a subprocess; the sharded grid equals this process's result."""
  from spurjax import parallel
  from spurjax import theory as T
  code = textwrap.dedent("""
      import json, sys
      import chex
      chex.set_n_cpu_devices(4)  # before jax starts its CPU backend
      import jax, numpy as np
      jax.config.update("jax_enable_x64", True)
      from spurjax import parallel, theory as T
      assert len(jax.devices()) == 4, jax.devices()
      eps = np.linspace(0, 1.5, 13)   # 13 points: not a multiple of 4, exercises padding
      s_s = np.linspace(0.2, 3.0, 13)
      fn = lambda e, s: T.adversarial_minimizer(
          T.CoreSpuriousModel(4, 3, 1.0, s, 0.9, 0.0), e, "linf").w
      out = parallel.grid_map(fn, eps, s_s)
      print(json.dumps(out.tolist()))
  """)
  proc = _run(["-c", code])
  assert proc.returncode == 0, proc.stderr[-2000:]
  sharded = np.array(json.loads(proc.stdout.strip().splitlines()[-1]))
  with jax.enable_x64(True):
    eps = np.linspace(0, 1.5, 13)
    s_s = np.linspace(0.2, 3.0, 13)
    single = parallel.grid_map(lambda e, s: T.adversarial_minimizer(
        T.CoreSpuriousModel(4, 3, 1.0, s, 0.9, 0.0), e, "linf").w, eps, s_s)
  np.testing.assert_allclose(sharded, single, rtol=1e-13, atol=1e-15)
  assert sharded.shape == (13, 7)

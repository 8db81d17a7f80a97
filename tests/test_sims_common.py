"""sims._common's in-process runner: sims define no flags on import, each run gets its own
flags with its own defaults, and the global JAX settings are restored afterwards."""

import importlib
import json
import pkgutil
import threading

from absl import app
from absl import flags
import jax
import pytest

import sims
from sims import _common

SIMS = sorted(m.name for m in pkgutil.iter_modules(sims.__path__) if not m.name.startswith("_"))


def _global_x64():
  out = []
  reader = threading.Thread(target=lambda: out.append(bool(jax.config.jax_enable_x64)))
  reader.start()
  reader.join()
  return out[0]


def _sim_defined():
  return {m: [f.name for f in fl] for m, fl in flags.FLAGS.flags_by_module_dict().items()
          if m.split(".")[0] == "sims" and fl}


def test_importing_every_sim_defines_no_flag():
  """(Libraries they import, absl.logging and chex, define flags of their own.)"""
  for name in SIMS:
    module = importlib.import_module(f"sims.{name}")
    assert callable(module.define_flags) and callable(module.main), name
  assert _sim_defined() == {}
  with _common.sim_flags("sims.model_suite"):
    assert "kill_after_steps" in _sim_defined()["sims.model_suite"]
  assert _sim_defined() == {}


def test_sims_sharing_flag_names_get_their_own_defaults_one_after_the_other():
  before = set(flags.FLAGS)
  with _common.sim_flags("sims.phase_diagram") as (_, rest):
    assert rest[1:] == []
    assert (flags.FLAGS.workdir, flags.FLAGS.eps_max) == ("results/phase_diagram", 1.5)
  assert set(flags.FLAGS) == before
  with _common.sim_flags("sims.feature_scales", ["--eps_max=3"]) as _:
    assert (flags.FLAGS.workdir, flags.FLAGS.eps_max) == ("results/feature_scales", 3.0)
    assert flags.FLAGS["eps_max"].present
  with _common.sim_flags("sims.phase_diagram", ["--workdir=w"]) as _:
    assert (flags.FLAGS.workdir, flags.FLAGS.eps_max) == ("w", 1.5)  # not feature_scales' 3
  assert set(flags.FLAGS) == before


def test_a_bad_flag_is_a_usage_error_and_leaves_no_flag_behind():
  before = set(flags.FLAGS)
  with pytest.raises(app.UsageError, match="--n_eps"):
    _common.run_main("sims.spurious_helps", ["--n_eps=1"])
  with pytest.raises(app.UsageError, match="no_such_flag"):
    _common.run_main("sims.spurious_helps", ["--no_such_flag=1"])
  assert set(flags.FLAGS) == before


def test_run_main_restores_the_global_x64_setting(tmp_path):
  """The theory sim switches float64 on (--x64 defaults to True) for its run only."""
  saved = _global_x64()
  jax.config.update("jax_enable_x64", False)
  try:
    _common.run_main("sims.phase_diagram", [f"--workdir={tmp_path}", "--norms=l2",
                                            "--n_eps=2", "--n_ratio=2", "--n_rho=2"])
    assert _global_x64() is False
  finally:
    jax.config.update("jax_enable_x64", saved)
  manifest = json.loads((tmp_path / "manifest.json").read_text())
  assert manifest["x64"] is True and manifest["config"]["n_eps"] == 2
  assert manifest["command"].split()[1].endswith("phase_diagram.py")

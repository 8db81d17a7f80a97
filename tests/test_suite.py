"""spurjax.suite: the grid of models, suite.json ownership, skip/resume, field-named errors."""

import json
import os

import jax
import numpy as np
import pytest

from spurjax import norms
from spurjax import suite

TINY = dict(image_size=8, num_classes=2, p=0.7, bg_contrast=0.3, fg_scale=1.5, marker=False,
            marker_p=0.9, width=2, steps=2, batch_size=4, optimizer="sgd", lr=0.05,
            adv_steps=1, checkpoint_every=2)
GRID = dict(archs=["small_cnn"], seeds=[0, 1], norms=["l2", "linf"],
            radii={"l1": [10.0], "l2": [0.5], "linf": [8.0]}, standard=True, image_size=32,
            num_classes=10, lr=0.1)


def test_grid_specs_order_and_names():
  radii = {"l2": [0.25, 0.5], "linf": [norms.pixel_radius("linf", 8)]}
  specs = suite.grid_specs(["small_cnn"], [3, 4], ["l2", "linf"], radii)
  assert [(s.norm, s.eps, s.seed) for s in specs] == [
      ("none", 0.0, 3), ("l2", 0.25, 3), ("l2", 0.5, 3), ("linf", 8 / 255, 3),
      ("none", 0.0, 4), ("l2", 0.25, 4), ("l2", 0.5, 4), ("linf", 8 / 255, 4)]
  assert specs[3].name == "small_cnn_linf_eps0.03137_seed3"
  assert len({s.name for s in specs}) == len(specs)
  assert [s.norm for s in suite.grid_specs(["small_cnn"], [0], ["l1"], {"l1": [5.0]},
                                           standard=False)] == ["l1"]


@pytest.mark.parametrize("field,value", [
    ("archs", ["vgg"]), ("archs", []), ("norms", ["l3"]), ("seeds", [-1]), ("seeds", ["x"]),
    ("seeds", []), ("image_size", 12), ("num_classes", 99), ("lr", 0.0),
])
def test_check_grid_names_the_field(field, value):
  suite.check_grid(**GRID)  # the base grid is valid
  with pytest.raises(ValueError, match=f"^{field}:"):
    suite.check_grid(**dict(GRID, **{field: value}))


def test_check_grid_radii_and_empty_grid():
  with pytest.raises(ValueError, match="^eps_l2:"):
    suite.check_grid(**dict(GRID, radii={"l2": [0.5, "abc"]}))
  with pytest.raises(ValueError, match="^eps_linf:"):
    suite.check_grid(**dict(GRID, radii={"linf": [0.0]}))
  with pytest.raises(ValueError, match="^norms:"):
    suite.check_grid(**dict(GRID, norms=[], standard=False))


def test_suite_file_is_written_once_and_guards_the_workdir(tmp_path):
  work = str(tmp_path)
  with pytest.raises(FileNotFoundError, match="^workdir:"):
    suite.read_suite_file(work)
  suite.check_suite_file(work, dict(TINY, extra="ignored"))
  assert suite.read_suite_file(work) == TINY
  suite.check_suite_file(work, TINY)  # same settings: accepted
  with pytest.raises(suite.SuiteMismatchError, match=r"^workdir: .*'image_size'"):
    suite.check_suite_file(work, dict(TINY, image_size=16))
  assert issubclass(suite.SuiteMismatchError, ValueError)


def test_train_models_skips_complete_and_lists_them(tmp_path):
  work = str(tmp_path)
  specs = suite.grid_specs(["small_cnn"], [0, 1], [], {})  # standard: one compile
  status = suite.train_models(TINY, work, specs, max_models=1)
  assert [r["status"] for r in status] == ["trained", "pending"]
  assert suite.is_complete(suite.model_dir(work, specs[0]), TINY["steps"])
  assert not suite.is_complete(suite.model_dir(work, specs[1]), TINY["steps"])
  assert [n for n, _ in suite.list_models(work)] == [specs[0].name]
  status = suite.train_models(TINY, work, specs, max_models=0)
  assert [r["status"] for r in status] == ["skipped", "pending"]
  cfg = dict(suite.list_models(work))[specs[0].name]
  assert cfg.adv_norm is None and cfg.seed == 0 and cfg.steps == TINY["steps"]
  with open(os.path.join(work, "suite.json")) as f:
    assert json.load(f)["steps"] == TINY["steps"]


def test_eval_key_is_fixed_per_purpose():
  a = jax.random.key_data(suite.eval_key(0, "clean"))
  np.testing.assert_array_equal(a, jax.random.key_data(suite.eval_key(0, "clean")))
  assert not np.array_equal(a, jax.random.key_data(suite.eval_key(0, "conflict")))
  assert not np.array_equal(a, jax.random.key_data(suite.eval_key(1, "clean")))

"""Training workdirs: orbax checkpoints and the write-once `config.json`.

Layout of a workdir: `config.json` (written once; a rerun with another config is refused),
`metrics.jsonl`, `checkpoints/<step>/`. `spurjax.train` resumes from the latest step.
"""

from __future__ import annotations

import json
import os

import jax
import orbax.checkpoint as ocp

from spurjax import io

__all__ = ["manager", "restore", "write_config"]


def manager(workdir: str) -> ocp.CheckpointManager:
  """The orbax manager of `workdir/checkpoints/<step>/` (the 2 latest steps kept)."""
  return ocp.CheckpointManager(
      os.path.join(os.path.abspath(workdir), "checkpoints"),
      options=ocp.CheckpointManagerOptions(max_to_keep=2, create=True))


def restore(mngr: ocp.CheckpointManager, template, step: int, sharding=None):
  """Restores checkpoint `step` into arrays shaped like the pytree `template`.

  Each leaf is restored with `sharding` if given, else with the template leaf's own.
  """
  leaves, treedef = jax.tree.flatten(template)
  abstract = [jax.ShapeDtypeStruct(l.shape, l.dtype, sharding=sharding or l.sharding)
              for l in leaves]
  restored = mngr.restore(step, args=ocp.args.StandardRestore(abstract))
  return jax.tree.unflatten(treedef, list(restored))


def write_config(workdir: str, config) -> None:
  """Writes `workdir/config.json` once (atomically); a different config later is refused.

  Args:
    workdir: the run directory.
    config: any object with `to_dict()` (e.g. `train.TrainConfig`).

  Raises:
    ValueError: `workdir` already holds a different config.
  """
  path = os.path.join(workdir, "config.json")
  if os.path.exists(path):
    with open(path) as f:
      old = json.load(f)
    if old != json.loads(json.dumps(config.to_dict())):
      raise ValueError(f"config: {workdir} holds a run with a different config; "
                       f"use a new workdir (old: {old})")
  else:
    io.write_json(path, config.to_dict())

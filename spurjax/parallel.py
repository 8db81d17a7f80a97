"""Sharding of vmapped grids over every device of every process, in one code path.

A sweep is a flat batch of independent points: `grid_map(fn, *args)` pads it to a multiple
of the global device count, lays it out along a 1-D `jax.sharding.Mesh` over
`jax.devices()` (all devices of all processes once `jax.distributed` is initialised),
runs `jit(vmap(fn))` as one SPMD program and gathers the result on every host. With one
CPU device this is a plain `jit(vmap(fn))`.
"""

from __future__ import annotations

import functools
import os
from typing import Any, Callable

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

AXIS = "grid"


def grid_mesh() -> Mesh:
  """A 1-D mesh named "grid" over all global devices."""
  return Mesh(np.asarray(jax.devices()), (AXIS,))


@functools.lru_cache(maxsize=128)
def _compiled(fn: Callable[..., Any]) -> Callable[..., Any]:
  """jit(vmap(fn)), cached per function object so repeated sweeps do not retrace."""
  return jax.jit(jax.vmap(fn))


def grid_map(fn: Callable[..., Any], *args: Any) -> Any:
  """Evaluates `vmap(fn)(*args)` sharded over all devices; returns numpy arrays.

  Args:
    fn: a function of single points (pytrees of arrays without the batch axis).
    *args: pytrees whose array leaves share a leading batch size `N` (host arrays; every
      process must pass the same values, as the sims do by building grids
      deterministically).

  Returns:
    The pytree of outputs of `fn`, each leaf a numpy array of shape `(N, ...)`, on every
    process.
  """
  leaves = jax.tree_util.tree_leaves(args)
  if not leaves:
    raise ValueError("grid_map needs at least one array argument")
  n = int(np.shape(leaves[0])[0])
  for leaf in leaves:
    if np.shape(leaf)[:1] != (n,):
      raise ValueError(f"every argument needs the same leading size {n}, got "
                       f"{np.shape(leaf)}")
  if n == 0:
    raise ValueError("grid_map needs a non-empty grid")
  mesh = grid_mesh()
  n_dev = mesh.devices.size
  padded = -(-n // n_dev) * n_dev

  def pad(x):
    x = np.asarray(x)
    if padded == n:
      return x
    # Pad with copies of the last point: valid input, so no NaN or error in the padding.
    return np.concatenate([x, np.repeat(x[-1:], padded - n, axis=0)], axis=0)

  host = jax.tree_util.tree_map(pad, args)

  def to_global(x):
    sharding = NamedSharding(mesh, PartitionSpec(AXIS, *([None] * (x.ndim - 1))))
    return jax.make_array_from_callback(x.shape, sharding, lambda idx: x[idx])

  global_args = jax.tree_util.tree_map(to_global, host)
  out = _compiled(fn)(*global_args)
  if jax.process_count() > 1:
    out = multihost_utils.process_allgather(out, tiled=True)
  return jax.tree_util.tree_map(lambda x: np.asarray(x)[:n], out)


def maybe_initialize_distributed(coordinator_address: str | None = None,
                                 num_processes: int | None = None,
                                 process_id: int | None = None) -> bool:
  """Starts JAX's own multi-process runtime (`jax.distributed`) when asked to.

  Either pass all three arguments (the sims' `--coordinator_address`, `--num_processes`,
  `--process_id` flags) or set `JAX_COORDINATOR_ADDRESS`, `JAX_NUM_PROCESSES` and
  `JAX_PROCESS_ID`; on managed clusters (Cloud TPU, SLURM, ...) `jax.distributed` also
  detects them itself when `SPURJAX_DISTRIBUTED=1`. Does nothing otherwise.

  Returns:
    True if the distributed runtime was initialised.
  """
  address = coordinator_address or os.environ.get("JAX_COORDINATOR_ADDRESS")
  if num_processes is None and os.environ.get("JAX_NUM_PROCESSES"):
    num_processes = int(os.environ["JAX_NUM_PROCESSES"])
  if process_id is None and os.environ.get("JAX_PROCESS_ID"):
    process_id = int(os.environ["JAX_PROCESS_ID"])
  if address or os.environ.get("SPURJAX_DISTRIBUTED") == "1":
    # CPU processes exchange results (process_allgather) through gloo; GPU/TPU ignore it.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
  if address:
    if num_processes is None or process_id is None:
      raise ValueError("a coordinator address needs num_processes and process_id too")
    if not 0 <= process_id < num_processes:
      raise ValueError(f"process_id must be in [0, {num_processes}), got {process_id}")
    jax.distributed.initialize(address, num_processes=num_processes, process_id=process_id)
    return True
  if os.environ.get("SPURJAX_DISTRIBUTED") == "1":
    jax.distributed.initialize()
    return True
  return False


def is_writer() -> bool:
  """True on the process that writes outputs (process 0)."""
  return jax.process_index() == 0


def padded_batches(batch_size: int, *arrays: np.ndarray):
  """Fixed-size batches of `arrays` (equal leading size N), the last one zero-padded.

  Every batch has exactly `batch_size` rows, so a jitted consumer compiles once whatever N.

  Yields:
    `(j, m, valid, *batches)`: the batch index j, the number m <= batch_size of real rows,
    `valid` `(batch_size,)` bool (True on the m real rows) and each array's batch
    `(batch_size, ...)`, rows m.. zero.
  """
  n = arrays[0].shape[0]
  for j, i in enumerate(range(0, max(n, 1), batch_size)):
    parts = [a[i:i + batch_size] for a in arrays]
    m = parts[0].shape[0]
    if m < batch_size:
      parts = [np.concatenate([p, np.zeros((batch_size - m, *p.shape[1:]), p.dtype)])
               for p in parts]
    yield (j, m, np.arange(batch_size) < m, *parts)

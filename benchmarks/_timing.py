"""Timing shared by the hand-run benchmarks."""

from __future__ import annotations

import time
from typing import Callable, Hashable, Mapping


def interleaved(fns: Mapping[Hashable, Callable[[], object]], repeats: int,
                warmup: int = 2) -> dict[Hashable, list[float]]:
  """Seconds of each `fns[key]()` (which blocks) over `repeats` rounds, after `warmup`
  calls each (so that no compilation is timed); in every round each function runs once,
  in turn, so that a change of load on a shared machine hits all of them alike.
  Returns `{key: [seconds per round]}`."""
  for fn in fns.values():
    for _ in range(warmup):
      fn()
  ts = {key: [] for key in fns}
  for _ in range(repeats):
    for key, fn in fns.items():
      t = time.perf_counter()
      fn()
      ts[key].append(time.perf_counter() - t)
  return ts

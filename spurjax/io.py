"""Atomic result files: CSV, JSON, JSON lines and figures that a crash cannot half-write.

Every writer goes through `atomic_write`: data goes to a temporary file in the destination
directory, is flushed and fsync'ed, then `os.replace`d over the target, which POSIX makes
atomic. An interrupted run therefore leaves either the old file or the new one, never a
truncated one.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import tempfile
from typing import Any, Iterable, Iterator, Mapping, Sequence

import numpy as np


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "w") -> Iterator[Any]:
  """Opens a temporary sibling of `path` and renames it onto `path` on success.

  Args:
    path: destination file; its directory is created if missing.
    mode: "w" (text) or "wb" (bytes).

  Yields:
    A file object. If the block raises, the temporary file is removed and `path` is untouched.
  """
  path = os.fspath(path)
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=directory, prefix="." + os.path.basename(path) + ".",
                             suffix=".tmp")
  try:
    with os.fdopen(fd, mode) as f:
      yield f
      f.flush()
      os.fsync(f.fileno())
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; give the usual mode
    os.replace(tmp, path)
  except BaseException:
    with contextlib.suppress(FileNotFoundError):
      os.remove(tmp)
    raise


def _umask() -> int:
  mask = os.umask(0)
  os.umask(mask)
  return mask


def _plain(x: Any) -> Any:
  """Converts numpy/jax scalars and arrays to JSON-serialisable Python objects."""
  if isinstance(x, Mapping):
    return {str(k): _plain(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [_plain(v) for v in x]
  if hasattr(x, "tolist"):  # np.ndarray, np.generic, jax.Array
    return np.asarray(x).tolist()
  return x


def write_json(path: str | os.PathLike, obj: Any) -> None:
  """Writes `obj` (numpy/jax values allowed) as indented JSON, atomically."""
  with atomic_write(path) as f:
    json.dump(_plain(obj), f, indent=1, sort_keys=False)
    f.write("\n")


def write_csv(path: str | os.PathLike, rows: Sequence[Mapping[str, Any]],
              fieldnames: Sequence[str] | None = None) -> None:
  """Writes a list of dict rows as CSV with a header, atomically.

  Args:
    path: destination.
    rows: one mapping per row; values may be numpy/jax scalars.
    fieldnames: column order; defaults to the keys of the first row.
  """
  if fieldnames is None:
    fieldnames = list(rows[0].keys()) if rows else []
  buf = io.StringIO()
  writer = csv.DictWriter(buf, fieldnames=list(fieldnames), lineterminator="\n")
  writer.writeheader()
  for row in rows:
    writer.writerow({k: _plain(row.get(k, "")) for k in fieldnames})
  with atomic_write(path) as f:
    f.write(buf.getvalue())


def read_csv(path: str | os.PathLike) -> list[dict[str, str]]:
  """Reads a CSV written by `write_csv` into a list of string dicts."""
  with open(path, newline="") as f:
    return list(csv.DictReader(f))


def append_jsonl(path: str | os.PathLike, records: Iterable[Mapping[str, Any]]) -> None:
  """Appends JSON-lines records (one object per line), flushing and fsync'ing.

  Appending is not atomic, but each line is written whole with one `write` call, and
  `read_jsonl` ignores a torn last line, so a crash loses at most the line being written.
  """
  os.makedirs(os.path.dirname(os.path.abspath(os.fspath(path))), exist_ok=True)
  text = "".join(json.dumps(_plain(r)) + "\n" for r in records)
  with open(path, "a") as f:
    f.write(text)
    f.flush()
    os.fsync(f.fileno())


def read_jsonl(path: str | os.PathLike) -> list[dict[str, Any]]:
  """Reads JSON lines, skipping a torn (unparsable) final line left by a crash."""
  if not os.path.exists(path):
    return []
  out = []
  with open(path) as f:
    lines = f.read().splitlines()
  for i, line in enumerate(lines):
    if not line.strip():
      continue
    try:
      out.append(json.loads(line))
    except json.JSONDecodeError:
      if i == len(lines) - 1:
        break
      raise
  return out


def save_figure(fig: Any, path: str | os.PathLike, dpi: int = 120) -> None:
  """Saves a matplotlib figure atomically (PNG by the path's extension)."""
  fmt = os.path.splitext(os.fspath(path))[1].lstrip(".") or "png"
  with atomic_write(path, "wb") as f:
    fig.savefig(f, format=fmt, dpi=dpi, bbox_inches="tight")

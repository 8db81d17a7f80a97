"""Pretrained ImageNet ResNets from PyTorch checkpoints, read without torch and without
running anything the file names.

`load(path, arch=None, *, num_classes=None)` returns an eval-mode
`spurjax.imagenet_models.ImageNetResNet` (`model(images) -> logits`, `model.features`),
from any of:
- torch's zip format (`torch.save` since 1.6): `<prefix>/data.pkl` plus raw storages at
  `<prefix>/data/<key>`; the prefix is whatever the first zip entry starts with (the file
  name without extension, or `archive` for buffers);
- torch's legacy format: pickles of the magic number, the protocol version (1001), a
  sys-info dict and the object, then a pickled list of storage keys, then per key an int64
  element count and the raw little-endian bytes;
- `.safetensors` (a torch state dict, or this module's own native format, see `save`).

**Safety.** A torch checkpoint is a pickle, and unpickling runs whatever callables the file
names. `_SafeUnpickler` never imports anything: torch's tensor-rebuild functions and
storage types map to NumPy, `collections.OrderedDict` and `_codecs.encode` (str -> bytes
only) are allowed, and every other global becomes an inert placeholder class that records
its name and arguments and does nothing. The dill-pickled extras of robustness-library
files therefore load as placeholders, and a payload naming `os.system` is never called.
Tensor views are bounds-checked against their storage before any strided read.

**Layouts** (after unwrapping `{'model': sd}` / `{'state_dict': sd}` and a DataParallel
`module.` prefix):
- torchvision: `conv1.weight`, `layer1.0.bn1.running_mean`, ..., `fc.bias`;
- robustness library / robust-models-transfer: `normalizer.new_mean|new_std` `(3, 1, 1)`,
  `model.<torchvision>` (or `model.model.<torchvision>` for the `DummyModel`-wrapped
  torchvision builds), and a duplicate under `attacker.*` that is ignored;
- RobustBench: `model.<torchvision>` plus optional `normalize.mean|std` `(1, 3, 1, 1)`
  (ImageNet's values when absent).

Conversion (torch -> Flax NNX): conv kernels OIHW -> HWIO, linear weights transposed,
BatchNorm `weight, bias, running_mean, running_var` -> `scale, bias, mean, var`,
`num_batches_tracked` dropped.

`save(model, path)` writes the converted model natively: one safetensors file (flat NNX
state, float32) whose text metadata holds a JSON header (format, version, arch, widths,
num_classes; the normalizer is part of the state). Safetensors because it is a flat, typed,
pickle-free format that is read with one mmap and no parsing of Python objects, which is
what a suite of twenty models re-read at every run needs.

`write_torch_checkpoint(path, obj, legacy=False)` writes nested dicts of NumPy arrays in
torch's zip or legacy format without torch (for fixtures and tests).
"""

from __future__ import annotations

import _codecs
import collections
import io as _io
import json
import mmap
import os
import pickle
import struct
import sys
import warnings
import zipfile
from typing import Any, Mapping

import numpy as np

from spurjax import imagenet_models
from spurjax.io import atomic_write

TORCH_MAGIC_NUMBER = 0x1950a86a20f9469cfc6c
TORCH_PROTOCOL_VERSION = 1001
NATIVE_FORMAT = "spurjax.imagenet_resnet"
NATIVE_VERSION = 1

_STORAGE_DTYPES = {
    "DoubleStorage": np.float64, "FloatStorage": np.float32, "HalfStorage": np.float16,
    "LongStorage": np.int64, "IntStorage": np.int32, "ShortStorage": np.int16,
    "CharStorage": np.int8, "ByteStorage": np.uint8, "BoolStorage": np.bool_,
}
try:  # bfloat16 checkpoints: ml_dtypes ships with jax
  import ml_dtypes
  _STORAGE_DTYPES["BFloat16Storage"] = ml_dtypes.bfloat16
except ImportError:  # pragma: no cover
  pass
_DTYPE_STORAGES = {np.dtype(v): k for k, v in _STORAGE_DTYPES.items()}


# ------------------------------------------------------------------------ safe unpickling


class Placeholder:
  """Inert stand-in for a global the checkpoint names (anything but tensors and dicts).

  Subclasses are made per global, with `module` and `name` class attributes; calling or
  instantiating one stores the arguments, `__setstate__` stores the state. Nothing else
  happens: no import, no call.
  """
  module = "?"
  name = "?"

  def __new__(cls, *args, **kwargs):
    obj = object.__new__(cls)
    obj.__dict__["args"] = args
    obj.__dict__["state"] = None
    obj.__dict__["items"] = []
    return obj

  def __init__(self, *args, **kwargs):
    pass

  def __setstate__(self, state):
    self.__dict__["state"] = state

  def __setitem__(self, key, value):
    self.__dict__["items"].append((key, value))

  def append(self, value):
    self.__dict__["items"].append(value)

  def extend(self, values):
    self.__dict__["items"].extend(values)

  def __repr__(self):
    return f"<placeholder {self.module}.{self.name}>"


def _placeholder_class(module: str, name: str) -> type:
  return type(f"Placeholder[{module}.{name}]", (Placeholder,),
              {"module": module, "name": name})


class _StorageType:
  """What a torch storage type (`torch.FloatStorage`, ...) unpickles to."""

  def __init__(self, name: str):
    self.name = name
    self.dtype = np.dtype(_STORAGE_DTYPES[name])


class _StorageRef:
  """A storage named by a persistent id: key, dtype, element count, optional view."""

  def __init__(self, key: str, dtype: np.dtype, numel: int, view=None):
    self.key, self.dtype, self.numel, self.view = key, dtype, numel, view


class _TensorRef:
  """A tensor to cut out of a storage once the storages' bytes are located."""

  def __init__(self, storage: _StorageRef, offset: int, size, stride):
    self.storage, self.offset = storage, offset
    self.size, self.stride = tuple(size), tuple(stride)


def _rebuild_tensor(storage, storage_offset, size, stride, *unused):
  """`torch._utils._rebuild_tensor_v2(storage, offset, size, stride, requires_grad,
  backward_hooks, metadata)` (and v1, v3): a reference resolved later."""
  if not isinstance(storage, _StorageRef):
    return _placeholder_class("torch._utils", "_rebuild_tensor")(storage)
  if (not isinstance(storage_offset, int) or not isinstance(size, (tuple, list))
      or not isinstance(stride, (tuple, list))):
    raise pickle.UnpicklingError("malformed tensor record")
  return _TensorRef(storage, storage_offset, size, stride)


def _rebuild_parameter(data, *unused):
  """`torch._utils._rebuild_parameter(data, requires_grad, hooks[, state])`: the data."""
  return data


def _rebuild_from_type_v2(func, new_type, args, state):
  """`torch._tensor._rebuild_from_type_v2`: applies an *allowed* rebuild function only."""
  if func in (_rebuild_tensor, _rebuild_parameter) and isinstance(args, tuple):
    return func(*args)
  return _placeholder_class("torch._tensor", "_rebuild_from_type_v2")(func, args)


def _safe_encode(obj, encoding="utf-8", errors="strict"):
  """`_codecs.encode` restricted to str -> bytes in a text encoding (how protocol-2
  pickles store bytes)."""
  if (isinstance(obj, str) and isinstance(encoding, str)
      and encoding.lower().replace("_", "-") in ("latin1", "latin-1", "utf-8", "utf8",
                                                  "ascii")
      and errors == "strict"):
    return _codecs.encode(obj, encoding)
  return _placeholder_class("_codecs", "encode")(obj)


_ALLOWED_GLOBALS = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("_codecs", "encode"): _safe_encode,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("torch._tensor", "_rebuild_from_type_v2"): _rebuild_from_type_v2,
}


class _SafeUnpickler(pickle.Unpickler):
  """Unpickler whose `find_class` never imports: allow-list, storage types, placeholders."""

  def __init__(self, file, persistent_load_fn):
    super().__init__(file, encoding="latin1")
    self._persistent_load_fn = persistent_load_fn

  def find_class(self, module, name):
    if (module, name) in _ALLOWED_GLOBALS:
      return _ALLOWED_GLOBALS[(module, name)]
    if module == "torch" and name in _STORAGE_DTYPES:
      return _StorageType(name)
    return _placeholder_class(str(module), str(name))

  def persistent_load(self, pid):
    return self._persistent_load_fn(pid)


def _storage_pid(pid, legacy: bool) -> _StorageRef:
  """Parses `('storage', type, key, location, numel[, view_metadata])`."""
  if not isinstance(pid, tuple) or len(pid) != (6 if legacy else 5) or pid[0] != "storage":
    raise pickle.UnpicklingError(f"unsupported persistent id {pid!r:.80}")
  stype, key, numel = pid[1], str(pid[2]), pid[4]
  if not isinstance(stype, _StorageType):
    raise pickle.UnpicklingError(f"unsupported storage type {stype!r:.80}")
  if not isinstance(numel, int) or numel < 0:
    raise pickle.UnpicklingError(f"bad storage size {numel!r:.80}")
  view = pid[5] if legacy else None
  if view is not None and not (isinstance(view, tuple) and len(view) == 3
                               and all(isinstance(v, int) for v in view[1:])):
    raise pickle.UnpicklingError("bad storage view")
  return _StorageRef(key, stype.dtype, numel, view)


def _cut(ref: _TensorRef, buf: np.ndarray, path: str) -> np.ndarray:
  """Cuts a tensor out of the storage buffer `buf` (1-D, storage dtype), bounds-checked."""
  st = ref.storage
  base = 0
  if st.view is not None:
    base, vsize = st.view[1], st.view[2]
    if base < 0 or vsize < 0 or base + vsize > buf.size:
      raise ValueError(f"{path}: storage view out of bounds (truncated or corrupt file)")
  if any(not isinstance(s, int) or s < 0 for s in ref.size + ref.stride) or ref.offset < 0:
    raise ValueError(f"{path}: negative tensor size or stride (corrupt file)")
  if len(ref.size) != len(ref.stride):
    raise ValueError(f"{path}: tensor size and stride differ in length (corrupt file)")
  numel = int(np.prod(ref.size, dtype=np.int64))
  start = base + ref.offset
  if numel == 0:
    return np.zeros(ref.size, st.dtype)
  last = start + sum((n - 1) * s for n, s in zip(ref.size, ref.stride))
  if last >= buf.size:
    raise ValueError(f"{path}: tensor reads past the end of its storage "
                     f"(truncated or corrupt file)")
  contiguous = tuple(int(np.prod(ref.size[i + 1:], dtype=np.int64))
                     for i in range(len(ref.size)))
  if all(s == c or n == 1 for s, c, n in zip(ref.stride, contiguous, ref.size)):
    return buf[start:start + numel].reshape(ref.size)
  item = buf.itemsize
  return np.array(np.lib.stride_tricks.as_strided(
      buf[start:], shape=ref.size, strides=tuple(s * item for s in ref.stride),
      writeable=False))


def _resolve(obj, get_buffer, path: str, depth: int = 0):
  """Replaces every `_TensorRef` in nested dicts/lists/tuples by its NumPy array."""
  if depth > 64:
    return obj
  if isinstance(obj, _TensorRef):
    return _cut(obj, get_buffer(obj.storage), path)
  if isinstance(obj, dict):
    out = type(obj)() if type(obj) in (dict, collections.OrderedDict) else {}
    for k, v in obj.items():
      out[k] = _resolve(v, get_buffer, path, depth + 1)
    return out
  if isinstance(obj, (list, tuple)):
    return type(obj)(_resolve(v, get_buffer, path, depth + 1) for v in obj)
  return obj


def _mmap(path: str):
  with open(path, "rb") as f:
    size = os.fstat(f.fileno()).st_size
    if size == 0:
      return b""
    return mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)


def _read_zip(path: str) -> Any:
  """torch zip format -> object with NumPy arrays."""
  try:
    zf = zipfile.ZipFile(path)
    names = zf.namelist()
  except (zipfile.BadZipFile, OSError, EOFError) as e:
    raise ValueError(f"{path}: not a readable zip checkpoint (truncated?): {e}") from None
  with zf:
    if not names:
      raise ValueError(f"{path}: empty zip archive, not a torch checkpoint")
    prefix = names[0].split("/", 1)[0]
    pkl = f"{prefix}/data.pkl"
    if pkl not in names:
      raise ValueError(f"{path}: zip archive without {pkl!r}: not a torch checkpoint")
    byteorder = "little"
    if f"{prefix}/byteorder" in names:
      byteorder = zf.read(f"{prefix}/byteorder").decode("ascii", "replace").strip()
    return _read_zip_records(path, zf, names, prefix, pkl, byteorder)


def _read_zip_records(path, zf, names, prefix, pkl, byteorder):
  mm = _mmap(path)
  buffers: dict[str, np.ndarray] = {}

  def get_buffer(st: _StorageRef) -> np.ndarray:
    if st.key in buffers:
      return buffers[st.key]
    name = f"{prefix}/data/{st.key}"
    try:
      info = zf.getinfo(name)
    except KeyError:
      raise ValueError(f"{path}: storage {name!r} missing (truncated or corrupt file)") from None
    nbytes = st.numel * st.dtype.itemsize
    if info.file_size < nbytes:
      raise ValueError(f"{path}: storage {name!r} holds {info.file_size} bytes, "
                       f"expected {nbytes} (truncated or corrupt file)")
    if info.compress_type == zipfile.ZIP_STORED:
      # Zero-copy: the raw bytes sit right after the local header.
      hdr = info.header_offset
      if hdr + 30 > len(mm) or mm[hdr:hdr + 4] != b"PK\x03\x04":
        raise ValueError(f"{path}: bad zip local header for {name!r}")
      n_name, n_extra = struct.unpack("<HH", mm[hdr + 26:hdr + 30])
      start = hdr + 30 + n_name + n_extra
      if start + nbytes > len(mm):
        raise ValueError(f"{path}: storage {name!r} runs past the end of the file "
                         f"(truncated)")
      arr = np.frombuffer(mm, dtype=st.dtype, count=st.numel, offset=start)
    else:
      arr = np.frombuffer(zf.read(name), dtype=st.dtype, count=st.numel)
    if byteorder == "big":
      arr = arr.byteswap()
    buffers[st.key] = arr
    return arr

  try:
    data = zf.read(pkl)
    obj = _SafeUnpickler(_io.BytesIO(data), lambda pid: _storage_pid(pid, False)).load()
  except ValueError:
    raise
  except Exception as e:  # any parse failure of untrusted bytes
    raise ValueError(f"{path}: cannot parse {pkl!r} ({type(e).__name__}: {e})") from None
  return _resolve(obj, get_buffer, path)


def _read_legacy(path: str) -> Any:
  """torch legacy (pre-zip) format -> object with NumPy arrays."""
  mm = _mmap(path)
  f = _io.BytesIO(mm) if isinstance(mm, bytes) else _MMapReader(mm)
  storages: dict[str, _StorageRef] = {}

  def pid_fn(pid):
    st = _storage_pid(pid, True)
    storages.setdefault(st.key, st)
    return st

  def no_pid(pid):
    raise pickle.UnpicklingError("persistent id outside the main pickle")

  try:
    magic = _SafeUnpickler(f, no_pid).load()
    if magic != TORCH_MAGIC_NUMBER:
      raise ValueError(f"{path}: not a torch checkpoint (no zip header, wrong magic number)")
    proto = _SafeUnpickler(f, no_pid).load()
    if proto != TORCH_PROTOCOL_VERSION:
      raise ValueError(f"{path}: unsupported legacy protocol version {proto!r}")
    sys_info = _SafeUnpickler(f, no_pid).load()
    obj = _SafeUnpickler(f, pid_fn).load()
    keys = _SafeUnpickler(f, no_pid).load()
  except ValueError:
    raise
  except Exception as e:
    raise ValueError(f"{path}: not a readable torch checkpoint "
                     f"({type(e).__name__}: {e}); truncated or corrupt?") from None
  little = not (isinstance(sys_info, dict) and sys_info.get("little_endian") is False)
  if not isinstance(keys, list):
    raise ValueError(f"{path}: corrupt legacy checkpoint (storage key list)")
  pos = f.tell()
  buffers: dict[str, np.ndarray] = {}
  for key in keys:
    key = str(key)
    if key not in storages:
      raise ValueError(f"{path}: storage {key!r} listed but never used (corrupt file)")
    st = storages[key]
    if pos + 8 > len(mm):
      raise ValueError(f"{path}: file ends before storage {key!r} (truncated)")
    (numel,) = struct.unpack("<q" if little else ">q", mm[pos:pos + 8])
    pos += 8
    nbytes = numel * st.dtype.itemsize
    if numel < 0 or pos + nbytes > len(mm):
      raise ValueError(f"{path}: storage {key!r} runs past the end of the file (truncated)")
    arr = np.frombuffer(mm, dtype=st.dtype, count=numel, offset=pos)
    buffers[key] = arr if little else arr.byteswap()
    pos += nbytes

  def get_buffer(st: _StorageRef) -> np.ndarray:
    if st.key not in buffers:
      raise ValueError(f"{path}: storage {st.key!r} has no data (truncated or corrupt)")
    return buffers[st.key]

  return _resolve(obj, get_buffer, path)


class _MMapReader:
  """Minimal file interface (read, readline, tell) over an mmap, for the unpickler."""

  def __init__(self, mm):
    self._mm, self._pos = mm, 0

  def read(self, n=-1):
    end = len(self._mm) if n is None or n < 0 else min(self._pos + n, len(self._mm))
    out = self._mm[self._pos:end]
    self._pos = end
    return out

  def readinto(self, b):
    data = self.read(len(b))
    b[:len(data)] = data
    return len(data)

  def readline(self):
    end = self._mm.find(b"\n", self._pos)
    end = len(self._mm) if end < 0 else end + 1
    return self.read(end - self._pos)

  def peek(self, n=1):
    return self._mm[self._pos:self._pos + n]

  def tell(self):
    return self._pos


def read_checkpoint(path: str | os.PathLike) -> Any:
  """Reads a torch checkpoint (zip or legacy) or a `.safetensors` file, safely.

  Args:
    path: the file.

  Returns:
    The saved object with tensors as read-only NumPy arrays (memory-mapped where possible),
    `Placeholder` instances for every other global the pickle names; for safetensors a
    dict of arrays.

  Raises:
    ValueError naming `path`: missing, empty, not a checkpoint, truncated or corrupt.
  """
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise ValueError(f"{path}: no such file")
  with open(path, "rb") as f:
    head = f.read(16)
  if not head:
    raise ValueError(f"{path}: empty file, not a checkpoint")
  if head[:4] == b"PK\x03\x04":
    return _read_zip(path)
  if _looks_like_safetensors(head):
    return _read_safetensors(path)[0]
  if head[:1] == b"\x80":  # pickle PROTO opcode: torch's legacy format
    return _read_legacy(path)
  raise ValueError(f"{path}: not a checkpoint (neither torch zip, torch legacy pickle nor "
                   f"safetensors)")


def _looks_like_safetensors(head: bytes) -> bool:
  return len(head) >= 9 and head[8:9] == b"{" and struct.unpack("<Q", head[:8])[0] < 1 << 30


def _read_safetensors(path: str) -> tuple[dict[str, np.ndarray], dict[str, str]]:
  from safetensors import safe_open
  try:
    with safe_open(path, framework="numpy") as f:
      meta = f.metadata() or {}
      tensors = {k: f.get_tensor(k) for k in f.keys()}
  except Exception as e:  # SafetensorError and friends: untrusted bytes
    raise ValueError(f"{path}: not a readable safetensors file (truncated or corrupt?): "
                     f"{e}") from None
  return tensors, meta


# --------------------------------------------------------------------------- layouts


def _is_state_dict(obj) -> bool:
  return (isinstance(obj, Mapping) and len(obj) > 0
          and all(isinstance(k, str) for k in obj)
          and any(isinstance(v, np.ndarray) for v in obj.values()))


def extract_state_dict(obj: Any, path: str = "<checkpoint>"
                       ) -> tuple[dict[str, np.ndarray], tuple[np.ndarray, np.ndarray] | None,
                                  list[str]]:
  """Finds the torchvision state dict inside any known layout.

  Unwraps `{'model': sd}` / `{'state_dict': sd}` (robustness, generic trainers), a
  `module.` prefix (DataParallel), then `model.` prefixes (robustness `AttackerModel`,
  its `DummyModel`, RobustBench's `normalize + model` wrapper). The robustness duplicate
  `attacker.*` is dropped.

  Args:
    obj: what `read_checkpoint` returned.
    path: for error messages.

  Returns:
    `(state_dict, normalizer, ignored)`: torchvision-named arrays; `(mean (3,), std (3,))`
    from `normalizer.new_mean/new_std` or `normalize.mean/std`, or None; ignored keys.
  """
  for _ in range(4):
    # Wrapper keys first: a robustness dict may hold 0-d tensors (e.g. `nat_prec1`) next to
    # `model`, so "has a tensor value" does not make it a state dict.
    inner = [k for k in ("model", "state_dict", "model_state_dict")
             if isinstance(obj, Mapping) and isinstance(obj.get(k), Mapping)]
    if inner:
      obj = obj[inner[0]]
      continue
    if _is_state_dict(obj):
      break
    raise ValueError(f"{path}: no state dict found (expected a dict of tensors, or one "
                     f"under 'model' or 'state_dict'); top level is {_describe(obj)}")
  sd = {k: v for k, v in obj.items()}
  for k, v in sd.items():
    if not isinstance(v, np.ndarray):
      raise ValueError(f"{path}: state dict entry {k!r} is not a tensor ({_describe(v)})")
  ignored = []
  if all(k.startswith("module.") for k in sd):
    sd = {k[len("module."):]: v for k, v in sd.items()}
  for k in [k for k in sd if k.startswith("attacker.")]:
    ignored.append(k)
    del sd[k]
  norm = None
  for m, s in (("normalizer.new_mean", "normalizer.new_std"),
               ("normalize.mean", "normalize.std")):
    if m in sd and s in sd:
      mean, std = sd.pop(m), sd.pop(s)
      if mean.size != 3 or std.size != 3:
        raise ValueError(f"{path}: {m!r} / {s!r} must hold 3 values, got shapes "
                         f"{mean.shape} / {std.shape}")
      norm = (np.asarray(mean, np.float32).reshape(3), np.asarray(std, np.float32).reshape(3))
  while sd and all(k.startswith("model.") for k in sd):
    sd = {k[len("model."):]: v for k, v in sd.items()}
  for k in [k for k in sd if k.endswith("num_batches_tracked")]:
    del sd[k]
  return sd, norm, ignored


def _describe(obj) -> str:
  if isinstance(obj, Mapping):
    keys = list(obj)[:8]
    return f"a dict with keys {keys}{' ...' if len(obj) > 8 else ''}"
  return type(obj).__name__


def infer_spec(sd: Mapping[str, np.ndarray], path: str = "<checkpoint>"
               ) -> imagenet_models.ResNetSpec:
  """Infers the architecture and widths from torchvision keys and shapes.

  Block type from `layer1.0.conv3` (bottleneck) or its absence (basic), blocks per stage
  from the largest `layer{i}.{j}` index, widths from kernel shapes, `width_per_group =
  64 mid / planes` of stage 1 (64: resnet50/101, 128: wide_resnet50_2, 256:
  wide_resnet50_4), `num_classes` from `fc.weight`.

  Raises:
    ValueError naming `path` when the keys match no supported ResNet.
  """
  need = ("conv1.weight", "fc.weight", "layer1.0.conv1.weight")
  miss = [k for k in need if k not in sd]
  if miss:
    raise ValueError(f"{path}: unknown arch: keys {miss} are missing, so this is not a "
                     f"torchvision ResNet (first keys: {sorted(sd)[:6]})")
  block = "bottleneck" if "layer1.0.conv3.weight" in sd else "basic"
  depths = []
  for i in range(1, 5):
    idx = {int(k.split(".")[1]) for k in sd
           if k.startswith(f"layer{i}.") and k.split(".")[1].isdigit()}
    depths.append(max(idx) + 1 if idx else 0)
  depths = tuple(depths)
  last = "conv3" if block == "bottleneck" else "conv2"
  try:
    planes = tuple(int(sd[f"layer{i}.0.{last}.weight"].shape[0])
                   // (4 if block == "bottleneck" else 1) for i in range(1, 5))
    mid = int(sd["layer1.0.conv1.weight"].shape[0])
  except (KeyError, IndexError):
    raise ValueError(f"{path}: unknown arch: incomplete ResNet stages "
                     f"(blocks per stage {depths})") from None
  wpg = 64 if block == "basic" else (mid * 64) // planes[0]
  candidates = [a for a, (b, d, w) in imagenet_models.ARCH_SPECS.items()
                if b == block and d == depths and w == wpg]
  if not candidates:
    raise ValueError(f"{path}: unknown arch: {block} blocks {depths} with width_per_group "
                     f"{wpg} match none of {sorted(imagenet_models.ARCH_SPECS)}")
  try:
    return imagenet_models.ResNetSpec(candidates[0], int(sd["fc.weight"].shape[0]),
                                      int(sd["conv1.weight"].shape[0]), planes, wpg)
  except ValueError as e:
    raise ValueError(f"{path}: unknown arch: {e}") from None


def _torch_key(path: tuple) -> tuple[str, str]:
  """NNX state path -> (torch key, kind) with kind in conv/linear/plain."""
  *mod, leaf = [str(p) for p in path]
  prefix = ".".join(mod)
  name = {"scale": "weight", "mean": "running_mean", "var": "running_var"}.get(leaf, leaf)
  if leaf == "kernel":
    name = "weight"
  return (f"{prefix}.{name}" if prefix else name), leaf


def model_from_state_dict(sd: Mapping[str, np.ndarray], spec: imagenet_models.ResNetSpec,
                          normalizer=None, *, path: str = "<checkpoint>",
                          strict: bool = True):
  """Builds an `ImageNetResNet` for `spec` holding the torchvision state dict `sd`.

  Raises:
    ValueError naming `path` that lists *all* missing and unexpected keys (unexpected ones
    only if `strict`), or names the key and both shapes on a shape mismatch.
  """
  import jax.numpy as jnp
  from flax import nnx

  abstract = imagenet_models.skeleton(spec)
  graphdef, state = nnx.split(abstract)
  flat = nnx.to_flat_state(state)
  expected = {}
  for p, var in flat:
    if tuple(p) in (("mean",), ("std",)):
      continue
    key, leaf = _torch_key(tuple(p))
    expected[key] = (tuple(p), leaf, tuple(var.shape))
  missing = sorted(set(expected) - set(sd))
  unexpected = sorted(set(sd) - set(expected))
  if missing or (unexpected and strict):
    raise ValueError(f"{path}: state dict does not match {spec.arch} "
                     f"(stem {spec.stem_width}, planes {list(spec.planes)}, "
                     f"width_per_group {spec.width_per_group}, {spec.num_classes} classes): "
                     f"missing keys {missing}; unexpected keys {unexpected}")
  if unexpected:
    warnings.warn(f"{path}: ignoring unexpected keys {unexpected}")
  values = {}
  for key, (p, leaf, shape) in expected.items():
    a = sd[key]
    if leaf == "kernel" and a.ndim == 4:
      a = a.transpose(2, 3, 1, 0)  # OIHW -> HWIO
    elif leaf == "kernel" and a.ndim == 2:
      a = a.T
    if tuple(a.shape) != shape:
      torch_shape = tuple(sd[key].shape)
      want = (shape[3], shape[2], shape[0], shape[1]) if len(shape) == 4 else (
          tuple(reversed(shape)) if leaf == "kernel" else shape)
      raise ValueError(f"{path}: shape mismatch at {key!r}: checkpoint has {torch_shape}, "
                       f"{spec.arch} expects {want}")
    values[p] = jnp.asarray(np.asarray(a, np.float32))
  mean, std = normalizer if normalizer is not None else (
      np.asarray(imagenet_models.IMAGENET_MEAN, np.float32),
      np.asarray(imagenet_models.IMAGENET_STD, np.float32))
  values[("mean",)] = jnp.asarray(mean, jnp.float32)
  values[("std",)] = jnp.asarray(std, jnp.float32)
  state = nnx.from_flat_state([(p, var.replace(values[tuple(p)])) for p, var in flat])
  return nnx.merge(graphdef, state)


# ------------------------------------------------------------------------------ API


def load(path: str | os.PathLike, arch: str | None = None, *, num_classes: int | None = None,
         strict: bool = True):
  """Loads a pretrained ImageNet ResNet, in eval mode.

  Args:
    path: a torch checkpoint (zip or legacy: `.pt`, `.pth`, `.ckpt`, `.pth.tar`), a
      `.safetensors` state dict, or a file written by `save`.
    arch: expected architecture (`imagenet_models.IMAGENET_ARCHS`); None infers it from
      the keys and shapes. Checked against the file when given.
    num_classes: expected logits; checked against `fc.weight` when given.
    strict: if False, keys the architecture does not use are listed in a warning instead
      of raising (RobustBench's `Engstrom2019Robustness` needs this).

  Returns:
    An eval-mode `ImageNetResNet` view: `model(x)` maps `(B, H, W, 3)` images in [0, 1]
    to logits `(B, num_classes)`, `model.features(x)` to `(B, num_features)`.

  Raises:
    ValueError naming `path`: not a checkpoint, truncated, unknown arch or mismatching
    `arch`/`num_classes`, all missing and unexpected keys, or a shape mismatch.
  """
  from spurjax import models
  path = os.fspath(path)
  if arch is not None and arch not in imagenet_models.ARCH_SPECS:
    raise ValueError(f"arch: unknown architecture {arch!r}; expected one of "
                     f"{sorted(imagenet_models.ARCH_SPECS)} or None")
  if num_classes is not None and (not isinstance(num_classes, int) or num_classes < 1):
    raise ValueError(f"num_classes: must be a positive int or None, got {num_classes!r}")
  native = _read_native(path)
  if native is not None:
    model = native
  else:
    sd, norm, _ = extract_state_dict(read_checkpoint(path), path)
    spec = infer_spec(sd, path)
    _check_expected(spec, arch, num_classes, path)
    model = model_from_state_dict(sd, spec, norm, path=path, strict=strict)
  _check_expected(model.spec, arch, num_classes, path)
  return models.eval_view(model)


def _check_expected(spec, arch, num_classes, path):
  if arch is not None and spec.arch != arch:
    raise ValueError(f"{path}: holds a {spec.arch}, not the requested arch {arch!r}")
  if num_classes is not None and spec.num_classes != num_classes:
    raise ValueError(f"{path}: has {spec.num_classes} classes, not the requested "
                     f"num_classes={num_classes}")


def save(model, path: str | os.PathLike) -> None:
  """Writes a converted `ImageNetResNet` natively (safetensors + JSON header), atomically.

  The file holds every NNX variable (parameters, BatchNorm statistics, normalizer) as
  float32 under its dotted NNX path, and the metadata entry `spurjax` =
  `{"format", "version", "spec": {arch, num_classes, stem_width, planes,
  width_per_group}}`. `load(path)` reads it back without any pickle.
  """
  from flax import nnx
  import safetensors.numpy
  spec = getattr(model, "spec", None)
  if not isinstance(spec, imagenet_models.ResNetSpec):
    raise ValueError(f"model: expected an ImageNetResNet, got {type(model).__name__}")
  tensors = {".".join(str(q) for q in p): np.ascontiguousarray(np.asarray(v[...]))
             for p, v in nnx.to_flat_state(nnx.state(model))}
  header = {"format": NATIVE_FORMAT, "version": NATIVE_VERSION, "spec": spec.to_dict()}
  data = safetensors.numpy.save(tensors, metadata={"spurjax": json.dumps(header)})
  with atomic_write(path, "wb") as f:
    f.write(data)


def _read_native(path: str):
  """The model in a file written by `save`, or None if `path` is something else."""
  if not os.path.isfile(path):
    raise ValueError(f"{path}: no such file")
  with open(path, "rb") as f:
    head = f.read(16)
  if not _looks_like_safetensors(head):
    return None
  tensors, meta = _read_safetensors(path)
  if "spurjax" not in meta:
    return None  # a torch state dict stored as safetensors
  import jax.numpy as jnp
  from flax import nnx
  try:
    header = json.loads(meta["spurjax"])
    if header.get("format") != NATIVE_FORMAT or header.get("version") != NATIVE_VERSION:
      raise ValueError(f"format {header.get('format')!r} version {header.get('version')!r}")
    spec = imagenet_models.ResNetSpec.from_dict(header["spec"])
  except (ValueError, KeyError, TypeError, AttributeError) as e:
    raise ValueError(f"{path}: bad spurjax header: {e}") from None
  abstract = imagenet_models.skeleton(spec)
  graphdef, state = nnx.split(abstract)
  flat = nnx.to_flat_state(state)
  names = {".".join(str(q) for q in p): (p, v) for p, v in flat}
  missing, unexpected = sorted(set(names) - set(tensors)), sorted(set(tensors) - set(names))
  if missing or unexpected:
    raise ValueError(f"{path}: native file does not match its header: missing keys "
                     f"{missing}; unexpected keys {unexpected}")
  pairs = []
  for name, (p, v) in names.items():
    if tuple(tensors[name].shape) != tuple(v.shape):
      raise ValueError(f"{path}: shape mismatch at {name!r}: file has "
                       f"{tuple(tensors[name].shape)}, header implies {tuple(v.shape)}")
    pairs.append((p, v.replace(jnp.asarray(tensors[name], jnp.float32))))
  return nnx.merge(graphdef, nnx.from_flat_state(pairs))


# --------------------------------------------------------------------- torch writer


class _Global:
  """Marker pickled as the bare global `module.name` (no import needed)."""

  def __init__(self, module: str, name: str):
    self.module, self.name = module, name

  def __call__(self, *args):  # pickle requires a reduce function to be callable
    raise TypeError(f"{self.module}.{self.name} is a pickle marker, not a function")


class _Storage:
  def __init__(self, key: str, array: np.ndarray):
    self.key, self.array = key, array


class _TorchPickler(pickle._Pickler):  # the Python pickler lets us emit bare GLOBALs
  dispatch = dict(pickle._Pickler.dispatch)

  def __init__(self, file, legacy: bool):
    super().__init__(file, protocol=2)
    self.legacy = legacy
    self.storages: list[_Storage] = []

  def _save_global_marker(self, obj: _Global):
    self.write(pickle.GLOBAL + f"{obj.module}\n{obj.name}\n".encode("ascii"))

  dispatch[_Global] = _save_global_marker

  def persistent_id(self, obj):
    if isinstance(obj, _Storage):
      stype = _Global("torch", _DTYPE_STORAGES[obj.array.dtype])
      pid = ("storage", stype, obj.key, "cpu", int(obj.array.size))
      return pid + (None,) if self.legacy else pid
    return None

  def reducer_override(self, obj):
    if isinstance(obj, np.ndarray):
      a = _c_order(obj)
      if a.dtype not in _DTYPE_STORAGES:
        raise ValueError(f"obj: arrays of dtype {a.dtype} have no torch storage type")
      st = _Storage(str(len(self.storages)), a)
      self.storages.append(st)
      stride = tuple(int(np.prod(a.shape[i + 1:], dtype=np.int64)) for i in range(a.ndim))
      return (_Global("torch._utils", "_rebuild_tensor_v2"),
              (st, 0, tuple(int(s) for s in a.shape), stride, False,
               collections.OrderedDict()))
    return NotImplemented


def _plain_scalars(obj):
  """NumPy scalars -> Python scalars (a pickled NumPy scalar would name a numpy global)."""
  if isinstance(obj, np.generic):
    return obj.item()
  if isinstance(obj, collections.OrderedDict):
    return collections.OrderedDict((k, _plain_scalars(v)) for k, v in obj.items())
  if isinstance(obj, Mapping):
    return {k: _plain_scalars(v) for k, v in obj.items()}
  if isinstance(obj, (list, tuple)):
    return type(obj)(_plain_scalars(v) for v in obj)
  return obj


def _check_writable(obj, where="obj", depth=0):
  if depth > 32:
    raise ValueError(f"{where}: nested too deeply")
  if isinstance(obj, np.ndarray):
    if obj.dtype not in _DTYPE_STORAGES:
      raise ValueError(f"{where}: dtype {obj.dtype} has no torch storage type")
    return
  if isinstance(obj, Mapping):
    for k, v in obj.items():
      if not isinstance(k, (str, int)):
        raise ValueError(f"{where}: keys must be str or int, got {type(k).__name__}")
      _check_writable(v, f"{where}[{k!r}]", depth + 1)
    return
  if isinstance(obj, (list, tuple)):
    for i, v in enumerate(obj):
      _check_writable(v, f"{where}[{i}]", depth + 1)
    return
  if obj is None or isinstance(obj, (bool, int, float, str, bytes, np.generic)):
    return
  raise ValueError(f"{where}: cannot write a {type(obj).__name__} (allowed: NumPy arrays, "
                   f"dicts, lists, tuples, str, bytes, int, float, bool, None)")


def write_torch_checkpoint(path: str | os.PathLike, obj: Any, *, legacy: bool = False,
                           prefix: str | None = None) -> None:
  """Writes `obj` the way `torch.save(obj, path)` would, without torch, atomically.

  `obj` is nested dicts (`collections.OrderedDict` kept as such), lists and tuples of
  NumPy arrays (float16/32/64, int8-64, uint8, bool; they become torch tensors), str,
  bytes, int, float, bool and None; e.g. a state dict, or the robustness library's
  `{'model': sd, 'epoch': 90, ...}`.

  Args:
    path: destination.
    obj: the object.
    legacy: False: torch's zip format (`<prefix>/data.pkl`, `<prefix>/byteorder`,
      `<prefix>/data/<k>` 64-byte aligned, `<prefix>/version`); True: the legacy format
      (magic number, protocol 1001, sys info, pickle, storage keys, then per storage an
      int64 element count and its bytes).
    prefix: zip record prefix; default the file name without its last extension, as
      torch writes it.
  """
  path = os.fspath(path)
  _check_writable(obj)
  obj = _plain_scalars(obj)
  buf = _io.BytesIO()
  pickler = _TorchPickler(buf, legacy)
  pickler.dump(obj)
  body = buf.getvalue()
  if legacy:
    with atomic_write(path, "wb") as f:
      for head in (TORCH_MAGIC_NUMBER, TORCH_PROTOCOL_VERSION,
                   {"protocol_version": TORCH_PROTOCOL_VERSION, "little_endian": True,
                    "type_sizes": {"short": 2, "int": 4, "long": 4}}):
        pickle.dump(head, f, protocol=2)
      f.write(body)
      pickle.dump([s.key for s in pickler.storages], f, protocol=2)
      for s in pickler.storages:
        f.write(struct.pack("<q", s.array.size))
        f.write(_le_bytes(s.array))
    return
  if prefix is None:
    prefix = os.path.splitext(os.path.basename(path))[0] or "archive"
  records = [("data.pkl", body), ("byteorder", b"little")]
  records += [(f"data/{s.key}", _le_bytes(s.array)) for s in pickler.storages]
  records += [("version", b"3\n"), (".data/serialization_id", b"0" * 40)]
  with atomic_write(path, "wb") as f:
    with zipfile.ZipFile(f, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
      for name, data in records:
        info = zipfile.ZipInfo(f"{prefix}/{name}", date_time=(1980, 1, 1, 0, 0, 0))
        info.compress_type = zipfile.ZIP_STORED
        # Pad the local header's extra field so the data starts 64-byte aligned, as torch
        # does (lets readers memory-map storages).
        start = f.tell() + 30 + len(info.filename.encode())
        if len(data) >= 0xFFFFFFFF:
          start += 20  # zip64 extra field written by zipfile
        pad = (-(start + 4)) % 64
        info.extra = b"FB" + struct.pack("<H", pad) + b"Z" * pad
        zf.writestr(info, data)


def _c_order(a: np.ndarray) -> np.ndarray:
  """C-contiguous, keeping 0-d arrays 0-d (np.ascontiguousarray makes them 1-d)."""
  return a if a.flags.c_contiguous else a.copy(order="C")


def _le_bytes(a: np.ndarray) -> memoryview | bytes:
  a = _c_order(a)
  if a.dtype.byteorder == ">" or (a.dtype.byteorder == "=" and sys.byteorder == "big"):
    a = a.byteswap()
  return a.reshape(-1).view(np.uint8).data


# -------------------------------------------------------------------- folder conversion

CHECKPOINT_SUFFIXES = (".pth.tar", ".ckpt", ".pth", ".pt", ".tar", ".safetensors")


def native_name(filename: str) -> str:
  """`resnet50_l2_eps3.ckpt` -> `resnet50_l2_eps3.safetensors` (known suffix replaced)."""
  for suffix in CHECKPOINT_SUFFIXES:
    if filename.endswith(suffix):
      return filename[:-len(suffix)] + ".safetensors"
  return filename + ".safetensors"


def convert_folder(src: str | os.PathLike, dst: str | os.PathLike, *, arch: str | None = None,
                   overwrite: bool = False, progress=None) -> list[dict]:
  """Converts every checkpoint in `src` (not recursive) to the native format in `dst`.

  Files whose native output already exists are skipped (unless `overwrite`); each output
  is written atomically, so an interrupted run leaves only complete files and a rerun
  resumes. A file that fails to load is reported, not fatal.

  Args:
    src: folder of `.pt/.pth/.ckpt/.pth.tar/.tar/.safetensors` checkpoints.
    dst: output folder (created; may equal `src`, native outputs are never inputs).
    arch: expected architecture of every file, or None to infer per file.
    overwrite: convert even if the output exists.
    progress: optional callable `(i, n, row)` called after each file.

  Returns:
    One dict per file: `source, output, status` ("converted", "skipped" or "error"),
    `arch, num_classes, seconds, source_mb, error`.
  """
  import time
  src, dst = os.fspath(src), os.fspath(dst)
  if not os.path.isdir(src):
    raise ValueError(f"src: {src} is not a directory")
  names = sorted(n for n in os.listdir(src)
                 if n.endswith(CHECKPOINT_SUFFIXES) and not n.startswith(".")
                 and os.path.isfile(os.path.join(src, n)))
  if os.path.abspath(src) == os.path.abspath(dst):
    outputs = {native_name(n) for n in names if not n.endswith(".safetensors")}
    names = [n for n in names if n not in outputs]
  rows = []
  for i, name in enumerate(names):
    path, out = os.path.join(src, name), os.path.join(dst, native_name(name))
    row = {"source": name, "output": os.path.basename(out), "status": "skipped", "arch": "",
           "num_classes": "", "seconds": 0.0,
           "source_mb": round(os.path.getsize(path) / 2**20, 2), "error": ""}
    if overwrite or not os.path.exists(out):
      t0 = time.perf_counter()
      try:
        model = load(path, arch)
        save(model, out)
        row.update(status="converted", arch=model.spec.arch,
                   num_classes=model.spec.num_classes)
      except ValueError as e:
        row.update(status="error", error=str(e))
      row["seconds"] = round(time.perf_counter() - t0, 2)
    rows.append(row)
    if progress is not None:
      progress(i + 1, len(names), row)
  return rows

"""Tests of spurjax.pretrained: torch checkpoints (written by torch, committed under
tests/data/torch_fixtures/) load into models whose logits equal torch's, in every layout and
both pickle formats, without running the pickle's payload; the torch-free writer; the
native format; every bad-file case is a ValueError naming the path and writes nothing.

Tests marked by `pytest.importorskip("torch")` also compare full-size nets and the full
layout x format x arch matrix with torch directly."""

import collections
import importlib.util
import os
import pickle
import sys
import zipfile

import jax
import numpy as np
import pytest

from spurjax import imagenet_models
from spurjax import pretrained

HERE = os.path.dirname(os.path.abspath(__file__))
FIX = os.path.join(HERE, "data", "torch_fixtures")
_spec = importlib.util.spec_from_file_location(
    "make_torch_fixtures", os.path.join(HERE, "data", "make_torch_fixtures.py"))
mtf = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(mtf)   # our own fixture script; importable without torch
sys.modules.setdefault("make_torch_fixtures", mtf)   # so torch.save can pickle its classes
LOGITS = dict(np.load(os.path.join(FIX, "logits.npz")))
TOL = 1e-5   # max |diff| / max |logit|, float32

COMMITTED = [(arch, lay, fmt) for arch, pairs in mtf.COMMITTED.items() for lay, fmt in pairs]


def _fixture(arch, lay, fmt):
  return os.path.join(FIX, f"{arch}_{lay}_{fmt}.pt")


def _rel_err(out, ref):
  return float(np.abs(np.asarray(out) - ref).max() / np.abs(ref).max())


@pytest.mark.parametrize("arch,lay,fmt", COMMITTED)
def test_committed_fixtures_match_torch_logits(arch, lay, fmt):
  """At 64 px every stride-2 layer sees an even size, where XLA's SAME padding would differ
  from torch's (at 97 px all sizes are odd and SAME happens to agree)."""
  path = _fixture(arch, lay, fmt)
  models = [pretrained.load(path)]                                   # arch inferred
  if fmt == "zip":                         # and given (for one format: loading is slow)
    models.append(pretrained.load(path, arch, num_classes=10))
  x = mtf.fixture_images(64)
  for model in models:
    assert model.spec.arch == arch
    assert _rel_err(model(x), LOGITS[f"{arch}_{lay}_64"]) <= TOL


@pytest.mark.parametrize("arch,lay,fmt", [("resnet18", "robustness", "legacy"),
                                          ("resnet50", "torchvision", "zip"),
                                          ("wide_resnet50_2", "robustbench", "zip")])
def test_odd_size_and_features(arch, lay, fmt):
  model = pretrained.load(_fixture(arch, lay, fmt))
  x = mtf.fixture_images(97)
  assert _rel_err(model(x), LOGITS[f"{arch}_{lay}_97"]) <= TOL
  assert model.features(x).shape == (2, model.spec.num_features)


def test_layout_normalizers_are_read():
  """robustness / RobustBench files carry their own mean and std; plain ones get ImageNet's."""
  rob = pretrained.load(_fixture("resnet18", "robustness", "zip"))
  rb = pretrained.load(_fixture("resnet18", "robustbench", "legacy"))
  tv = pretrained.load(_fixture("resnet18", "torchvision", "zip"))
  np.testing.assert_array_equal(np.asarray(rob.mean[...]), np.float32(mtf.ROBUST_MEAN))
  np.testing.assert_array_equal(np.asarray(rb.std[...]), np.float32(mtf.ROBUST_STD))
  np.testing.assert_array_equal(np.asarray(tv.mean[...]), np.float32(mtf.IMAGENET_MEAN))


@pytest.mark.parametrize("fmt", ["zip", "legacy"])
def test_payload_never_runs(fmt, tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  path = os.path.join(FIX, f"payload_{fmt}.pt")
  obj = pretrained.read_checkpoint(path)
  # The payload is really there: a call of os.system (posix.system) with the command.
  payload = obj["payload"]
  assert isinstance(payload, pretrained.Placeholder)
  assert payload.name == "system" and payload.module in ("posix", "os", "nt")
  assert payload.args == (f"touch {mtf.MARKER}",)
  assert isinstance(obj["args"], pretrained.Placeholder)   # the "dill" extras: inert
  model = pretrained.load(path)
  assert model.spec.arch == "resnet18"
  assert not os.path.exists(tmp_path / mtf.MARKER)
  assert os.listdir(tmp_path) == []


def test_unpickler_never_resolves_other_globals():
  """Any global outside the allow-list is a placeholder class, even harmless builtins."""
  up = pretrained._SafeUnpickler(__import__("io").BytesIO(b""), lambda pid: None)
  for module, name in [("builtins", "eval"), ("os", "system"), ("subprocess", "Popen"),
                       ("builtins", "getattr"), ("torch", "load"), ("numpy", "load")]:
    got = up.find_class(module, name)
    assert isinstance(got, type) and issubclass(got, pretrained.Placeholder)
    assert got(1, 2).args == (1, 2)
  data = pickle.dumps(eval, protocol=2)  # names builtins.eval
  obj = pretrained._SafeUnpickler(__import__("io").BytesIO(data), lambda pid: None).load()
  assert obj.name == "eval"


def test_out_of_bounds_tensor_views_are_rejected():
  buf = np.arange(10, dtype=np.float32)
  st = pretrained._StorageRef("0", buf.dtype, 10)
  ok = pretrained._cut(pretrained._TensorRef(st, 2, (2, 3), (1, 2)), buf, "p")
  np.testing.assert_array_equal(ok, buf[2:8].reshape(3, 2).T)
  for offset, size, stride in [(5, (2, 3), (3, 1)), (0, (11,), (1,)), (0, (2,), (-1,)),
                               (-1, (2,), (1,))]:
    with pytest.raises(ValueError, match="^p:"):
      pretrained._cut(pretrained._TensorRef(st, offset, size, stride), buf, "p")


def _state_dict(arch="resnet18", lay="torchvision", fmt="zip"):
  sd, norm, _ = pretrained.extract_state_dict(
      pretrained.read_checkpoint(_fixture(arch, lay, fmt)))
  return {k: np.array(v) for k, v in sd.items()}, norm


@pytest.mark.parametrize("legacy", [False, True])
def test_writer_roundtrip_in_robustness_layout(legacy, tmp_path):
  sd, _ = _state_dict()
  wrapped = collections.OrderedDict()
  wrapped["module.normalizer.new_mean"] = np.float32(mtf.ROBUST_MEAN).reshape(3, 1, 1)
  wrapped["module.normalizer.new_std"] = np.float32(mtf.ROBUST_STD).reshape(3, 1, 1)
  for k, v in sd.items():
    wrapped["module.model." + k] = v
    wrapped["module.attacker.model." + k] = v
  # nat_prec1 as a 0-d tensor: the top level then has a tensor value but is no state dict
  obj = {"model": wrapped, "epoch": 90, "optimizer": {"lr": 0.1},
         "nat_prec1": np.array(7.0, np.float32)}
  path = str(tmp_path / "robust.ckpt")
  pretrained.write_torch_checkpoint(path, obj, legacy=legacy)
  assert os.listdir(tmp_path) == ["robust.ckpt"]
  back = pretrained.read_checkpoint(path)
  assert back["epoch"] == 90 and back["nat_prec1"].shape == () and back["nat_prec1"] == 7.0
  model = pretrained.load(path, "resnet18")
  x = mtf.fixture_images(64)
  assert _rel_err(model(x), LOGITS["resnet18_robustness_64"]) <= TOL
  if not legacy:
    with zipfile.ZipFile(path) as zf:
      names = zf.namelist()
      assert names[0] == "robust/data.pkl"
      for info in zf.infolist():
        if "/data/" in info.filename:
          assert (info.header_offset + 30 + len(info.filename) + len(info.extra)) % 64 == 0


def test_writer_zip_prefix_archive_and_safetensors(tmp_path):
  import safetensors.numpy
  sd, _ = _state_dict()
  p1 = str(tmp_path / "a.pth")
  pretrained.write_torch_checkpoint(p1, {"state_dict": sd}, prefix="archive")
  with zipfile.ZipFile(p1) as zf:
    assert zf.namelist()[0] == "archive/data.pkl"
  p2 = str(tmp_path / "b.safetensors")
  safetensors.numpy.save_file({"model." + k: v for k, v in sd.items()}, p2)
  x = mtf.fixture_images(64)
  for p in (p1, p2):
    assert _rel_err(pretrained.load(p)(x), LOGITS["resnet18_torchvision_64"]) <= TOL


def test_writer_rejects_what_torch_cannot_hold(tmp_path):
  with pytest.raises(ValueError, match=r"obj\['a'\]: cannot write a object"):
    pretrained.write_torch_checkpoint(tmp_path / "x.pt", {"a": object()})
  with pytest.raises(ValueError, match="complex"):
    pretrained.write_torch_checkpoint(tmp_path / "x.pt", {"a": np.ones(2, np.complex64)})
  assert os.listdir(tmp_path) == []


def test_native_save_load_roundtrip(tmp_path):
  model = pretrained.load(_fixture("resnet50", "dummy", "legacy"))
  path = str(tmp_path / "r50.safetensors")
  pretrained.save(model, path)
  assert os.listdir(tmp_path) == ["r50.safetensors"]
  again = pretrained.load(path)
  assert again.spec == model.spec
  x = mtf.fixture_images(64)
  np.testing.assert_array_equal(np.asarray(again(x)), np.asarray(model(x)))
  np.testing.assert_array_equal(np.asarray(again.mean[...]), np.float32(mtf.ROBUST_MEAN))
  from safetensors import safe_open
  with safe_open(path, framework="numpy") as f:
    header = __import__("json").loads(f.metadata()["spurjax"])
  assert header["format"] == pretrained.NATIVE_FORMAT and header["spec"]["arch"] == "resnet50"
  with pytest.raises(ValueError, match="not the requested arch 'resnet18'"):
    pretrained.load(path, "resnet18")


# ------------------------------------------------------------------------ bad files


def _write_bytes(path, data):
  with open(path, "wb") as f:
    f.write(data)


def _bad_cases(d):
  """name -> (path, kwargs, regex the message must match besides the path)."""
  src = _fixture("resnet18", "torchvision", "zip")
  src_legacy = _fixture("resnet18", "torchvision", "legacy")
  raw = open(src, "rb").read()
  raw_legacy = open(src_legacy, "rb").read()
  cases = {}
  _write_bytes(f"{d}/text.pt", b"hello, I am not a checkpoint\n")
  cases["text"] = (f"{d}/text.pt", {}, "not a checkpoint")
  _write_bytes(f"{d}/empty.pth", b"")
  cases["empty"] = (f"{d}/empty.pth", {}, "empty file")
  _write_bytes(f"{d}/trunc_zip.pt", raw[:len(raw) // 2])
  cases["truncated zip"] = (f"{d}/trunc_zip.pt", {}, "truncated")
  _write_bytes(f"{d}/trunc_legacy.pt", raw_legacy[:int(len(raw_legacy) * 0.9)])
  cases["truncated legacy"] = (f"{d}/trunc_legacy.pt", {}, "truncated")
  _write_bytes(f"{d}/trunc_pickle.pt", raw_legacy[:300])
  cases["truncated legacy pickle"] = (f"{d}/trunc_pickle.pt", {}, "truncated")
  with zipfile.ZipFile(f"{d}/plain.zip", "w") as zf:
    zf.writestr("stuff/readme.txt", "hi")
  cases["zip without data.pkl"] = (f"{d}/plain.zip", {}, "data.pkl")
  cases["missing file"] = (f"{d}/nope.pt", {}, "no such file")
  pretrained.write_torch_checkpoint(f"{d}/linear.pt", {"weight": np.ones((3, 2), np.float32),
                                                       "bias": np.ones(3, np.float32)})
  cases["unknown arch"] = (f"{d}/linear.pt", {}, "unknown arch")
  sd, _ = _state_dict()
  miss = {k: v for k, v in sd.items() if k not in ("layer1.0.bn1.running_var", "fc.bias")}
  pretrained.write_torch_checkpoint(f"{d}/missing.pt", miss)
  cases["missing keys"] = (f"{d}/missing.pt", {},
                           r"missing keys \['fc.bias', 'layer1.0.bn1.running_var'\]")
  extra = dict(sd, **{"extra.a": np.ones(1, np.float32), "extra.b": np.ones(1, np.float32)})
  pretrained.write_torch_checkpoint(f"{d}/unexpected.pt", extra, legacy=True)
  cases["unexpected keys"] = (f"{d}/unexpected.pt", {},
                              r"unexpected keys \['extra.a', 'extra.b'\]")
  bad = dict(sd, **{"layer2.1.bn1.weight": np.ones(5, np.float32)})
  pretrained.write_torch_checkpoint(f"{d}/shape.pt", bad)
  cases["shape mismatch"] = (f"{d}/shape.pt", {},
                             r"'layer2.1.bn1.weight': checkpoint has \(5,\), resnet18 "
                             r"expects \(4,\)")
  cases["arch mismatch"] = (src, {"arch": "resnet50"}, "not the requested arch 'resnet50'")
  cases["num_classes mismatch"] = (src, {"num_classes": 1000}, "has 10 classes")
  pretrained.write_torch_checkpoint(f"{d}/notensors.pt", {"epoch": 3, "model": {"a": 1}})
  cases["no state dict"] = (f"{d}/notensors.pt", {}, "no state dict found")
  return cases


CASE_NAMES = ["text", "empty", "truncated zip", "truncated legacy", "truncated legacy pickle",
              "zip without data.pkl", "missing file", "unknown arch", "missing keys",
              "unexpected keys", "shape mismatch", "arch mismatch", "num_classes mismatch",
              "no state dict"]


def test_bad_files_raise_value_errors_naming_the_path(tmp_path):
  cases = _bad_cases(str(tmp_path))
  assert sorted(cases) == sorted(CASE_NAMES)
  for name, (path, kwargs, pattern) in cases.items():
    before = sorted(os.listdir(tmp_path))
    with pytest.raises(ValueError) as err:
      pretrained.load(path, **kwargs)
    msg = str(err.value)
    assert msg.startswith(path + ":"), (name, msg)
    assert __import__("re").search(pattern, msg), (name, msg)
    assert sorted(os.listdir(tmp_path)) == before, name   # nothing written


def test_non_strict_lists_unexpected_keys_in_a_warning(tmp_path):
  sd, _ = _state_dict()
  path = str(tmp_path / "extra.pt")
  pretrained.write_torch_checkpoint(path, dict(sd, **{"extra.a": np.ones(1, np.float32)}))
  with pytest.warns(UserWarning, match=r"ignoring unexpected keys \['extra.a'\]"):
    model = pretrained.load(path, strict=False)
  x = mtf.fixture_images(64)
  assert _rel_err(model(x), LOGITS["resnet18_torchvision_64"]) <= TOL


def test_bad_arguments():
  with pytest.raises(ValueError, match="^arch: unknown architecture 'vgg16'"):
    pretrained.load(_fixture("resnet18", "torchvision", "zip"), "vgg16")
  with pytest.raises(ValueError, match="^num_classes:"):
    pretrained.load(_fixture("resnet18", "torchvision", "zip"), num_classes=0)
  with pytest.raises(ValueError, match="^model:"):
    pretrained.save(object(), "/nonexistent/x.safetensors")


# ---------------------------------------------------------------------- with torch


def test_torch_reads_what_the_writer_writes(tmp_path):
  torch = pytest.importorskip("torch")
  rng = np.random.default_rng(0)
  arrays = {"f32": rng.normal(size=(3, 4)).astype(np.float32),
            "f16": rng.normal(size=(5,)).astype(np.float16),
            "f64": rng.normal(size=(2, 2, 2)),
            "i64": np.arange(7), "u8": np.arange(5, dtype=np.uint8),
            "bool": np.array([True, False]), "scalar": np.array(3.5, np.float32),
            "strided": rng.normal(size=(4, 6)).astype(np.float32)[:, ::2].T,
            "empty": np.zeros((0, 3), np.float32)}
  obj = {"model": collections.OrderedDict(arrays), "epoch": 5, "extras": [1, "a", None, (2.5,)]}
  for legacy in (False, True):
    path = str(tmp_path / f"w{int(legacy)}.pt")
    pretrained.write_torch_checkpoint(path, obj, legacy=legacy)
    back = torch.load(path, weights_only=True)
    assert isinstance(back["model"], collections.OrderedDict)
    assert back["epoch"] == 5 and back["extras"] == [1, "a", None, (2.5,)]
    for k, v in arrays.items():
      np.testing.assert_array_equal(back["model"][k].numpy(), v)


def test_reader_reads_what_torch_writes(tmp_path):
  torch = pytest.importorskip("torch")
  base = torch.arange(24, dtype=torch.float32)
  sd = {"view": base[3:15].view(3, 4), "t": base.view(4, 6).t(), "slice": base[::5],
        "bf16": torch.randn(4).to(torch.bfloat16), "long": torch.arange(3),
        "half": torch.randn(2, 2).half(), "empty": torch.zeros(0, 2)}
  for legacy in (False, True):
    path = str(tmp_path / f"t{int(legacy)}.pth.tar")
    torch.save({"state_dict": sd}, path, _use_new_zipfile_serialization=not legacy)
    back = pretrained.read_checkpoint(path)["state_dict"]
    for k, v in sd.items():
      ref = v.float().numpy() if k == "bf16" else v.numpy()
      np.testing.assert_array_equal(np.asarray(back[k], ref.dtype), ref)


def test_payload_runs_with_an_unrestricted_loader(tmp_path, monkeypatch):
  """The payload fixture is live: an unpickler that resolves `os.system` for real (as
  plain pickle, dill or torch.load(weights_only=False) would) creates the marker, so
  test_payload_never_runs can fail."""
  monkeypatch.chdir(tmp_path)

  class Anything:
    def __init__(self, *args, **kwargs):
      pass

    def __setstate__(self, state):
      pass

  class Permissive(pickle.Unpickler):
    def find_class(self, module, name):
      if module.startswith("torch") or module == "__main__":
        return type(name, (Anything,), {})
      return super().find_class(module, name)   # the real os.system

    def persistent_load(self, pid):
      return None

  with zipfile.ZipFile(os.path.join(FIX, "payload_zip.pt")) as zf:
    data = zf.read(zf.namelist()[0])
  assert not os.path.exists(tmp_path / mtf.MARKER)
  Permissive(__import__("io").BytesIO(data)).load()
  assert os.path.exists(tmp_path / mtf.MARKER)


def test_full_layout_format_matrix_matches_torch(tmp_path):
  pytest.importorskip("torch")
  # resnet18's full matrix is committed (and tested without torch); here the other two.
  plan = {a: pairs for a, pairs in mtf.FULL.items() if a not in ("resnet18",)}
  logits = mtf.write_fixtures(str(tmp_path), plan, sizes=(64,))
  x = mtf.fixture_images(64)
  worst = 0.0
  for arch, pairs in plan.items():
    for lay, fmt in pairs:
      path = str(tmp_path / f"{arch}_{lay}_{fmt}.pt")
      # arch inferred for every file, given for the zip ones (loading is the slow part)
      for given in (None, arch) if fmt == "zip" else (None,):
        model = pretrained.load(path, given)
        assert model.spec.arch == arch
        err = _rel_err(model(x), logits[f"{arch}_{lay}_64"])
        assert err <= TOL, (arch, lay, fmt, err)
        worst = max(worst, err)
  print(f"small nets, {sum(map(len, plan.values()))} files: worst rel err {worst:.2e}")


@pytest.mark.parametrize("arch", ["resnet18", "resnet50", "wide_resnet50_2"])
def test_full_size_nets_match_torch(arch, tmp_path):
  """Full-size nets with random weights and random BatchNorm statistics, through a real
  torch.save file, at 224 and the odd sizes 97 and 225."""
  torch = pytest.importorskip("torch")
  net = mtf.randomize(mtf.ResNet(arch), seed=7)
  path = str(tmp_path / f"{arch}.pth")
  torch.save({"model": {"module.model." + k: v for k, v in net.state_dict().items()}}, path)
  model = pretrained.load(path)
  assert model.spec == imagenet_models.ResNetSpec(arch)
  from flax import nnx
  graphdef, state = nnx.split(model)
  fwd = jax.jit(lambda s, x: nnx.merge(graphdef, s)(x))
  for size in (224, 97, 225):
    x = np.random.default_rng(size).random((1, size, size, 3), dtype=np.float32)
    ref = mtf.torch_logits(net, x, mtf.IMAGENET_MEAN, mtf.IMAGENET_STD)
    err = _rel_err(fwd(state, x), ref)
    print(f"{arch} {size}px: max|diff|/max|logit| = {err:.2e} (max|logit| "
          f"{np.abs(ref).max():.2f})")
    assert err <= TOL, (arch, size, err)


def test_convert_folder_skips_done_files_and_reports_errors(tmp_path):
  src, dst = tmp_path / "src", tmp_path / "dst"
  src.mkdir()
  import shutil
  shutil.copy(_fixture("resnet18", "dummy", "legacy"), src / "resnet18_l2_eps3.ckpt")
  (src / "broken.pth.tar").write_bytes(b"\x80\x02garbage")
  (src / "notes.txt").write_text("not a checkpoint name: ignored")
  seen = []
  rows = pretrained.convert_folder(src, dst, progress=lambda i, n, r: seen.append((i, n)))
  assert seen == [(1, 2), (2, 2)]
  status = {r["source"]: r["status"] for r in rows}
  assert status == {"broken.pth.tar": "error", "resnet18_l2_eps3.ckpt": "converted"}
  assert str(src / "broken.pth.tar") in rows[0]["error"]
  assert sorted(os.listdir(dst)) == ["resnet18_l2_eps3.safetensors"]
  model = pretrained.load(dst / "resnet18_l2_eps3.safetensors")
  x = mtf.fixture_images(64)
  assert _rel_err(model(x), LOGITS["resnet18_dummy_64"]) <= TOL
  mtime = os.path.getmtime(dst / "resnet18_l2_eps3.safetensors")
  again = pretrained.convert_folder(src, dst)
  assert [r["status"] for r in again] == ["error", "skipped"]
  assert os.path.getmtime(dst / "resnet18_l2_eps3.safetensors") == mtime

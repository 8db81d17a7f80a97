"""sims.pretrained_reliance: checkpoint-name parsing, the models CSV, usage errors, and the
(model, benchmark) orchestration: outputs, probe caching, resume after an interruption.

The orchestration tests substitute small linear "models" and procedural evaluation sets for
the real checkpoints and benchmark trees (`FakeBackend`), so they test the sim's own logic
(item files, resume, row assembly, outputs) in seconds; the end-to-end test on the fixture
trees and checkpoints written by `sims.make_fixture_benchmarks` runs the real pieces.
"""

import csv
import dataclasses
import json
import os
import re

from absl import app
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sims import _common
from sims import pretrained_reliance as pr


# --------------------------------------------------------------------------- names
@pytest.mark.parametrize("name, arch, norm, eps", [
    ("resnet50_l2_eps3.ckpt", "resnet50", "l2", 3.0),
    ("resnet18_linf_eps4.0.ckpt", "resnet18", "linf", 4.0 / 255),
    ("wide_resnet50_2_l2_eps0.ckpt", "wide_resnet50_2", "l2", 0.0),
    ("resnet18_l2_eps0.03.ckpt", "resnet18", "l2", 0.03),
    ("resnet50_linf_eps0.5.pth.tar", "resnet50", "linf", 0.5 / 255),
    ("dir/resnet101_l2_eps0.25.pt", "resnet101", "l2", 0.25),
])
def test_parse_checkpoint_name(name, arch, norm, eps):
  got = pr.parse_checkpoint_name(name)
  assert got[:2] == (arch, norm)
  assert got[2] == pytest.approx(eps, rel=1e-12)


@pytest.mark.parametrize("name, message", [
    ("resnet50_l3_eps3.ckpt", "does not read as"),
    ("resnet50_l2_eps.ckpt", "does not read as"),
    ("resnet50_l2_eps3", "not a checkpoint name"),
    ("resnet50_l2_eps3.zip", "not a checkpoint name"),
    ("densenet161_l2_eps3.ckpt", "unknown arch 'densenet161'"),
    ("resnet50_l2_eps-1.ckpt", "does not read as"),
    ("l2_eps3.ckpt", "does not read as"),
])
def test_bad_checkpoint_names_raise_naming_the_file(name, message):
  with pytest.raises(ValueError, match=message) as e:
    pr.parse_checkpoint_name("/some/dir/" + name)
  assert name in str(e.value)


def _touch(path):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "wb") as f:
    f.write(b"x")
  return path


def test_list_models_from_glob_and_csv(tmp_path):
  for n in ("resnet18_l2_eps3.ckpt", "resnet18_linf_eps4.0.ckpt"):
    _touch(str(tmp_path / "ck" / n))
  _touch(str(tmp_path / "other" / "std.pth"))
  csv_path = tmp_path / "models.csv"
  csv_path.write_text("path,arch,norm,eps,source\nother/std.pth,resnet50,none,0,torchvision\n"
                      "ck/resnet18_l2_eps3.ckpt,resnet18,linf,8,again\n")
  models = pr.list_models(str(tmp_path / "ck" / "*.ckpt"), str(csv_path))
  assert [m.name for m in models] == ["resnet18_l2_eps3", "resnet18_linf_eps4.0", "std",
                                      "resnet18_l2_eps3_2"]
  assert [(m.arch, m.norm, m.eps_label, m.source) for m in models] == [
      ("resnet18", "l2", "3", "robust-models-transfer"),
      ("resnet18", "linf", "4.0/255", "robust-models-transfer"),
      ("resnet50", "none", "0", "torchvision"), ("resnet18", "linf", "8/255", "again")]
  assert models[1].eps == pytest.approx(4 / 255) and models[3].eps == pytest.approx(8 / 255)
  assert models[2].path == str(tmp_path / "other" / "std.pth")


@pytest.mark.parametrize("content, message", [
    ("path,arch,norm,eps\nx.ckpt,resnet18,l2,3\n", r"missing column\(s\) \['source'\]"),
    ("path,arch,norm,eps,source\nx.ckpt,resnet18,l3,3,s\n", "line 2: norm must be"),
    ("path,arch,norm,eps,source\nx.ckpt,vgg16,l2,3,s\n", "line 2: unknown arch 'vgg16'"),
    ("path,arch,norm,eps,source\nx.ckpt,resnet18,l2,abc,s\n", "line 2: eps 'abc' is not"),
    ("path,arch,norm,eps,source\nx.ckpt,resnet18,l2,-1,s\n", "line 2: eps must be"),
    ("path,arch,norm,eps,source\nx.ckpt,resnet18,none,3,s\n", "norm none needs eps 0"),
    ("path,arch,norm,eps,source\nmissing.ckpt,resnet18,l2,3,s\n", "checkpoint not found"),
])
def test_bad_models_csv_raises_naming_the_file(tmp_path, content, message):
  _touch(str(tmp_path / "x.ckpt"))
  p = tmp_path / "models.csv"
  p.write_text(content)
  with pytest.raises(ValueError, match=message) as e:
    pr.list_models(None, str(p))
  assert str(p) in str(e.value)


def test_list_models_errors(tmp_path):
  with pytest.raises(ValueError, match="--checkpoints: no file matches"):
    pr.list_models(str(tmp_path / "*.ckpt"), None)
  with pytest.raises(ValueError, match="no model"):
    pr.list_models(None, None)
  _touch(str(tmp_path / "resnet18_l2_eps3.ckpt"))
  _touch(str(tmp_path / "foo.ckpt"))
  with pytest.raises(ValueError, match="foo.ckpt: name does not read"):
    pr.list_models(str(tmp_path / "*.ckpt"), None)


def test_columns_include_those_of_background_reliance():
  """The metric columns of sims.background_reliance (importing a sim defines no flags)."""
  from sims import background_reliance as br
  cols = list(br.METRICS) + list(br.EXTRA)
  assert cols and set(cols) <= set(pr.FIELDS)
  for b, owned in pr.OWNED.items():
    assert set(owned) <= set(pr.FIELDS), b


# --------------------------------------------------------------------------- orchestration
K, S, D = 4, 16, 6


class FakeBackend(pr.Backend):
  """Linear models `x -> tanh(flat(x) @ P) @ W` and procedural evaluation sets; counts
  every load, probe fit and item evaluation."""

  def __init__(self):
    from spurjax import data
    cfg = data.DataConfig(image_size=S, num_classes=K)
    self.es = data.make_eval_set(jax.random.key(0), cfg, 24)
    self.calls = {"load_model": 0, "fit_head": 0, "load_benchmark": 0}

  # One function object per model across runs, so that jit's cache serves later runs.
  _FNS: dict = {}

  def load_model(self, entry, cache_dir):
    self.calls["load_model"] += 1
    r = np.random.default_rng(sum(map(ord, entry.name)))
    return (entry.name, jnp.asarray(r.normal(size=(S * S * 3, D)) / 8, jnp.float32),
            jnp.asarray(r.normal(size=(D, K)), jnp.float32))

  def features_fn(self, model):
    name, p, _ = model
    return self._FNS.setdefault((name, "f"), lambda x: jnp.tanh(x.reshape(x.shape[0], -1) @ p))

  def logits_fn(self, model):
    feat, w = self.features_fn(model), model[2]
    return self._FNS.setdefault((model[0], "l"), lambda x: feat(x) @ w)

  def load_benchmark(self, name, roots, split=None):
    self.calls["load_benchmark"] += 1
    es = self.es
    if name == "waterbirds":
      g = dataclasses.replace(es.groups, label_map=None)
      return pr.subset(type(es)(images=g.images, labels=g.labels, num_classes=2, groups=g),
                       0 if split == 2 else 20)
    if name == "rival10":
      return type(es)(images=es.images, labels=es.labels, num_classes=10, masks=es.masks)
    if name == "in9":
      return type(es)(images=es.images, labels=es.labels, num_classes=K, variants=es.variants)
    if name == "salient":
      return type(es)(images=es.images, labels=es.labels, num_classes=K,
                      soft_masks=es.soft_masks)
    if name == "objectnet":
      return type(es)(images=es.images, labels=es.labels, num_classes=K, shifted=es.shifted)
    return type(es)(images=es.images, labels=es.labels, num_classes=K)

  def fit_head(self, features, labels, num_classes, *, seed, l2_grid=()):
    self.calls["fit_head"] += 1
    y = np.eye(num_classes)[labels]
    a = np.concatenate([features, np.ones((len(features), 1))], 1)
    sol = np.linalg.lstsq(a, y, rcond=None)[0]
    return sol[:-1], sol[-1]

  def attacks(self):
    return {"pgd": fgsm}


def fgsm(model, logits_fn, *, norm, eps, config):
  """A one-step attack (the real PGD runs in the end-to-end test): x + eps d(g), d the
  steepest-ascent unit direction of `norm` for the cross-entropy gradient g."""
  from spurjax import attacks

  def attack(key, x, y):
    g = jax.grad(lambda z: attacks.make_loss_fn(logits_fn)(z, y).sum())(x)
    if norm == "linf":
      d = jnp.sign(g)
    else:
      d = g / jnp.maximum(jnp.sqrt(jnp.sum(g * g, axis=(1, 2, 3), keepdims=True)), 1e-12)
    return jnp.clip(x + eps * d, 0.0, 1.0)

  return jax.jit(attack)


CONFIG = dict(pr.PRESETS["small"], max_images=12, attack_norms=["l2", "linf"])

# The small preset's item settings, pinned so that a change is a deliberate one.
SMALL = dict(batch_size=8, max_images=8, max_train=16, n_robust=4, pgd_steps=2,
             attack_norms=["linf"], rfs_sigmas=[90.0, 180.0], rfs_modes=["gaussian"],
             probe_l2=[0.001])
# The same list settings as configs stored them before they were list flags (comma strings,
# as typed on the command line).
OLD_FORM = dict(attack_norms="l2,linf", rfs_sigmas="90,180", rfs_modes="gaussian",
                probe_l2="0.001")


def _fake_setup(tmp_path, benches=("in9", "waterbirds", "rival10", "salient_masks",
                                     "objectnet", "imagenet")):
  for n in ("resnet18_linf_eps4.0.ckpt", "resnet50_l2_eps0.ckpt"):
    _touch(str(tmp_path / "ck" / n))
  roots = {k: None for k in pr.PATH_FLAGS if k not in ("checkpoints", "models_csv")}
  for k in benches:
    roots[k] = str(tmp_path / "bench" / k)
    os.makedirs(os.path.join(roots[k], "val") if k == "imagenet" else roots[k])
  return pr.list_models(str(tmp_path / "ck" / "*.ckpt"), None), roots


def _read(path):
  with open(path) as f:
    return list(csv.DictReader(f))


class Stop(Exception):
  pass


def test_interrupted_run_resumes_and_gives_the_same_table(tmp_path):
  models, roots = _fake_setup(tmp_path, ("in9", "waterbirds", "imagenet"))
  items = len(models) * 3
  ref = FakeBackend()
  paths = pr.run(CONFIG, str(tmp_path / "ref"), roots, models, backend=ref)
  rows = _read(paths["csv"])
  assert [r["model"] for r in rows] == ["resnet18_linf_eps4.0", "resnet50_l2_eps0"]
  assert all(r["bg_gap"] and r["worst_group_acc"] and r["pgd_acc_l2"] for r in rows)
  assert ref.calls["fit_head"] == len(models)

  # Interrupted run: "killed" after its 4th item (the second model's imagenet item).
  work = str(tmp_path / "work")
  first, done = FakeBackend(), []

  def stop(model, bench):
    done.append((model, bench))
    if len(done) == 4:
      raise Stop()

  with pytest.raises(Stop):
    pr.run(CONFIG, work, roots, models, backend=first, after_item=stop)
  assert not os.path.exists(os.path.join(work, "reliance.csv"))
  stored = sorted(os.path.relpath(os.path.join(b, f), os.path.join(work, "results"))
                  for b, _, fs in os.walk(os.path.join(work, "results")) for f in fs)
  assert len(stored) == 4 and not any(s.endswith(".tmp") for s in stored)
  # A result file lost (as if killed while writing it) is recomputed too, from the cached
  # probe head.
  os.remove(os.path.join(work, "results", "resnet18_linf_eps4.0", "waterbirds.json"))
  second, redone = FakeBackend(), []
  paths2 = pr.run(CONFIG, work, roots, models, backend=second,
                  after_item=lambda m, b: redone.append((m, b)))
  lost = ("resnet18_linf_eps4.0", "waterbirds")
  assert len(redone) == items - 3 and lost in redone
  assert not set(redone) & (set(done) - {lost})
  # The probe of the first model (fitted before the kill) is not refitted.
  assert first.calls["fit_head"] + second.calls["fit_head"] == ref.calls["fit_head"]
  assert open(paths2["csv"]).read() == open(paths["csv"]).read()
  assert open(paths2["md"]).read() == open(paths["md"]).read()

  # A third run evaluates nothing; changed settings re-evaluate only the items they touch.
  third = []
  pr.compute(CONFIG, work, roots, models, backend=FakeBackend(),
             after_item=lambda m, b: third.append(b))
  assert third == []
  pr.compute(dict(CONFIG, pgd_steps=3), work, roots, models, backend=FakeBackend(),
             after_item=lambda m, b: third.append(b))
  assert third == ["imagenet"] * len(models)


def test_bad_roots_raise_naming_the_flag(tmp_path):
  models, roots = _fake_setup(tmp_path)
  with pytest.raises(ValueError, match="--in9: not found"):
    pr.run(CONFIG, str(tmp_path / "w"), dict(roots, in9=str(tmp_path / "nope")), models)
  with pytest.raises(ValueError, match="--salient_masks: needs --imagenet"):
    pr.check_roots(dict(roots, imagenet=None))
  with pytest.raises(ValueError, match="no benchmark"):
    pr.compute(CONFIG, str(tmp_path / "w"), {k: None for k in roots}, models)


def test_list_settings_in_either_form_are_one_config():
  new = pr.canonical_config(CONFIG)
  old = pr.canonical_config(dict(CONFIG, **OLD_FORM))
  assert new == old and old["rfs_sigmas"] == [90.0, 180.0] and old["probe_l2"] == [0.001]
  assert pr.canonical_config(dict(CONFIG, rfs_sigmas="", probe_l2=" "))["rfs_sigmas"] == []
  assert pr.canonical_config(dict(CONFIG, rfs_sigmas=(90, "180")))["rfs_sigmas"] == [90., 180.]
  with pytest.raises(ValueError, match="--rfs_sigmas"):
    pr.check_config(dict(CONFIG, rfs_sigmas="90,abc"))
  with pytest.raises(ValueError, match="--rfs_sigmas"):
    pr.check_config(dict(CONFIG, rfs_sigmas=[0.0]))
  with pytest.raises(ValueError, match="--attack_norms"):
    pr.check_config(dict(CONFIG, attack_norms="l2,l7"))


def test_a_workdir_stored_in_the_old_comma_form_resumes_without_recomputing(tmp_path,
                                                                            monkeypatch):
  """Item keys and probe identities written when the list settings were comma strings
  (rewritten here into that form, as the older code wrote them) match the list settings: a
  rerun evaluates and fits nothing. (Evaluation is stubbed: this is about the identities.)"""
  models, roots = _fake_setup(tmp_path, ("rival10", "imagenet"))
  work = str(tmp_path / "w")
  evaluated = []

  def evaluate(runner, entry, bench):
    evaluated.append((entry.name, bench))
    return {"clean_acc": 0.5}

  monkeypatch.setattr(pr._Runner, "evaluate", evaluate)
  backend = FakeBackend()
  pr.compute(CONFIG, work, roots, models, backend=backend)
  assert len(evaluated) == 2 * len(models)
  runner = pr._Runner(pr.canonical_config(CONFIG), work, roots, backend)
  heads = [runner.head(m, "rival10", runner.model(m)) for m in models]
  assert backend.calls["fit_head"] == len(models)

  rewritten = 0
  for base, _, files in os.walk(os.path.join(work, "results")):
    for f in files:
      path = os.path.join(base, f)
      stored = json.load(open(path))
      for k in set(OLD_FORM) & set(stored["key"]["eval"]):
        stored["key"]["eval"][k] = OLD_FORM[k]  # the older `{k: config[k] for k in keys}`
        rewritten += 1
      with open(path, "w") as out:
        json.dump(stored, out)
  for base, _, files in os.walk(os.path.join(work, "probes")):
    for f in files:
      with np.load(os.path.join(base, f)) as z:
        parts = dict(z)
      ident = json.loads(str(parts["ident"]))
      assert ident["probe_l2"] == [0.001]
      ident["probe_l2"] = OLD_FORM["probe_l2"]  # the older `str(config["probe_l2"])`
      parts["ident"] = np.asarray(json.dumps(ident, sort_keys=True))
      np.savez(os.path.join(base, f), **parts)
      rewritten += 1
  # Per model: attack_norms (imagenet), rfs_sigmas, rfs_modes, probe_l2 (rival10), a probe.
  assert rewritten == 5 * len(models)

  evaluated.clear()
  again = FakeBackend()
  pr.compute(CONFIG, work, roots, models, backend=again)
  assert evaluated == []
  runner = pr._Runner(pr.canonical_config(CONFIG), work, roots, again)
  for m, (w, b) in zip(models, heads):
    w2, b2 = runner.head(m, "rival10", runner.model(m))
    np.testing.assert_array_equal(w2, w)
    np.testing.assert_array_equal(b2, b)
  assert again.calls["fit_head"] == 0
  # A changed list setting still re-evaluates the items it touches, and refits.
  pr.compute(dict(CONFIG, rfs_sigmas=[90.0]), work, roots, models, backend=again)
  assert sorted(evaluated) == sorted((m.name, "rival10") for m in models)
  runner = pr._Runner(pr.canonical_config(dict(CONFIG, probe_l2=[0.01])), work, roots, again)
  runner.head(models[0], "rival10", runner.model(models[0]))
  assert again.calls["fit_head"] == 1


def _sim(*args):
  _common.run_main("sims.pretrained_reliance", args)


def test_usage_errors(tmp_path):
  _touch(str(tmp_path / "resnet18_l2_eps3.ckpt"))
  _touch(str(tmp_path / "bad_name.ckpt"))
  os.makedirs(tmp_path / "in9")
  cases = [
      ([f"--checkpoints={tmp_path}/*.ckpt", f"--in9={tmp_path}/in9"], "bad_name.ckpt"),
      ([f"--checkpoints={tmp_path}/resnet*.ckpt"], "no benchmark"),
      ([f"--checkpoints={tmp_path}/resnet*.ckpt", f"--in9={tmp_path}/nope"], "--in9: not found"),
      ([f"--checkpoints={tmp_path}/resnet*.ckpt", f"--in9={tmp_path}/in9",
        "--attack_norms=l3"], "--attack_norms"),
  ] + [
      ([f"--checkpoints={tmp_path}/resnet*.ckpt", f"--in9={tmp_path}/in9", flag],
       flag.split("=")[0])
      for flag in ("--attack_norms=", "--rfs_modes=gaussian,l3", "--rfs_sigmas=300",
                   "--rfs_sigmas=90,x", "--probe_l2=-1", "--probe_l2=inf")
  ] + [
      ([f"--in9={tmp_path}/in9"], "no model"),
  ]
  for args, message in cases:
    with pytest.raises(app.UsageError, match=re.escape(message)):
      _sim(f"--workdir={tmp_path}/w", *args)
    assert not os.path.exists(tmp_path / "w")


# --------------------------------------------------------------------------- end to end
@pytest.fixture
def allow_rank_promotion():
  """spurjax.imagenet_models normalizes `(B, H, W, 3) - (3,)`, which the suite-wide
  `jax_numpy_rank_promotion='raise'` rejects; allowed here until the model broadcasts
  explicitly."""
  with jax.numpy_rank_promotion("allow"):
    yield


@pytest.fixture(scope="module")
def fixture_dir(tmp_path_factory):
  from sims import make_fixture_benchmarks as mf
  d = str(tmp_path_factory.mktemp("fixture_benchmarks"))
  out = mf.run(mf.PRESETS["small"], d)
  return d, out


def test_make_fixture_benchmarks_writes_loadable_checkpoints_and_trees(fixture_dir,
                                                                      allow_rank_promotion):
  from sims import make_fixture_benchmarks as mf
  from spurjax import pretrained
  d, out = fixture_dir
  assert sorted(os.path.basename(p) for p in out["checkpoints"]) == sorted(mf.CHECKPOINTS)
  for p in out["checkpoints"]:
    arch, fmt, key = mf.CHECKPOINTS[os.path.basename(p)]
    with open(p, "rb") as f:
      head = f.read(4)
    assert (head == b"PK\x03\x04") == (fmt == "zip"), p
    raw = pretrained.read_checkpoint(p)
    assert key in raw and any(k.startswith("module.attacker.model.") for k in raw[key])
    model = pretrained.load(p, None, num_classes=1000)   # arch inferred from the keys
    assert model.spec.arch == arch
    if arch == "resnet18":
      resnet18 = model
  x = np.random.default_rng(0).random((2, 64, 64, 3), dtype=np.float32)
  logits = np.asarray(resnet18(x))
  assert logits.shape == (2, 1000) and np.all(np.isfinite(logits))
  for k in ("in9", "waterbirds", "rival10", "salient_masks", "objectnet", "imagenet"):
    assert os.path.isdir(out["benchmarks"][k]), k
  assert os.path.isdir(os.path.join(d, "imagenet", "val"))
  assert "sims.pretrained_reliance" in out["command"]
  with pytest.raises(ValueError, match="already holds a fixture"):
    mf.run(mf.PRESETS["small"], d)


def test_end_to_end_on_the_fixture_and_resume(fixture_dir, tmp_path, allow_rank_promotion):
  d, out = fixture_dir
  for k, v in SMALL.items():
    assert pr.PRESETS["small"][k] == v, k
  b = out["benchmarks"]
  roots = {k: b.get(k) for k in pr.PATH_FLAGS if k not in ("checkpoints", "models_csv")}
  models = pr.list_models(os.path.join(d, "checkpoints", "resnet18_linf_*.ckpt"), None)
  work = str(tmp_path / "w")
  paths = pr.run(pr.PRESETS["small"], work, roots, models)
  rows = _read(paths["csv"])
  assert len(rows) == 1
  r = rows[0]
  assert (r["model"], r["arch"], r["norm"], r["eps_label"]) == (
      "resnet18_linf_eps4.0", "resnet18", "linf", "4.0/255")
  assert float(r["eps"]) == pytest.approx(4 / 255) and list(r) == list(pr.FIELDS)
  for col in sum(pr.OWNED.values(), ()):
    if col in ("pgd_acc_l1", "pgd_acc_l2", "aa_acc_l1", "aa_acc_l2", "rfs_l2"):
      assert r[col] == "", col   # Not requested by the small preset.
    elif col.startswith("wb_acc_g") and r[col] == "":
      continue  # A group absent from the subset.
    else:
      v = float(r[col])
      assert np.isfinite(v) and (col == "shift_drop_rel" or -1 <= v <= 1), (col, v)
  assert r["uncorr_acc"] == ""
  assert max(float(r["pgd_acc_linf"]), float(r["aa_acc_linf"])) <= float(r["clean_acc"])
  md = open(paths["md"]).read()
  assert md.count("\n| resnet") == 1 and "4.0/255" in md
  manifest = json.load(open(paths["manifest"]))
  assert set(manifest["outputs"]) == {"reliance.csv", "reliance.png", "manifest.json",
                                      "reliance.md"}
  assert manifest["benchmarks"] == list(pr.BENCHMARKS)
  assert os.path.getsize(paths["png"]) > 10_000
  assert os.path.exists(os.path.join(work, "converted", "resnet18_linf_eps4.0.safetensors"))
  for bench in ("waterbirds", "rival10"):
    assert os.path.exists(os.path.join(work, "probes", "resnet18_linf_eps4.0", bench + ".npz"))
  table = open(paths["csv"]).read(), open(paths["md"]).read()
  # As if killed before the in9 and objectnet items: their result files are missing.
  res = os.path.join(work, "results", "resnet18_linf_eps4.0")
  for bench in ("in9", "objectnet"):
    os.remove(os.path.join(res, bench + ".json"))
  kept = {f: os.stat(os.path.join(res, f)).st_mtime_ns for f in os.listdir(res)}
  probes = {f: os.stat(os.path.join(work, "probes", "resnet18_linf_eps4.0", f)).st_mtime_ns
            for f in ("waterbirds.npz", "rival10.npz")}
  redone = []
  paths = pr.run(pr.PRESETS["small"], work, roots, models,
                 after_item=lambda m, bench: redone.append(bench))
  assert sorted(redone) == ["in9", "objectnet"]
  assert {f: os.stat(os.path.join(res, f)).st_mtime_ns for f in kept} == kept
  assert {f: os.stat(os.path.join(work, "probes", "resnet18_linf_eps4.0", f)).st_mtime_ns
          for f in probes} == probes
  assert (open(paths["csv"]).read(), open(paths["md"]).read()) == table

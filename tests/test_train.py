"""Tests of spurjax.train: robustness of adversarial training, attack strength ordering,
resume, BatchNorm on the adversarial batch, non-finite loss, data parallelism."""

import json
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from spurjax import attacks
from spurjax import io
from spurjax import models
from spurjax import train

K = 4
S = 16
EPS = 8 / 255
# Per-class colour tint of amplitude 0.03 < EPS: perfectly predictive, easy to learn through
# global pooling, and erasable by an eps-attack (a non-robust feature). The class's bright
# square (contrast 0.3 >> EPS, position jittered in the class's quadrant) is the robust one.
TINT = np.array([[1, 1, -1], [-1, 1, 1], [1, -1, 1], [-1, -1, -1]], np.float32) * 0.03


def make_data(key, n):
  """`n` images `(n, 16, 16, 3)` in [0, 1] and labels `(n,)` of a learnable 4-class task."""
  ky, kn, kp = jax.random.split(key, 3)
  y = jax.random.randint(ky, (n,), 0, K)
  x = 0.5 + 0.15 * jax.random.normal(kn, (n, S, S, 3))
  off = jax.random.randint(kp, (n, 2), 0, 3)
  top = (y // 2) * 8 + off[:, 0]
  left = (y % 2) * 8 + off[:, 1]
  r = jnp.arange(S)
  rows = (r[None, :] >= top[:, None]) & (r[None, :] < top[:, None] + 5)
  cols = (r[None, :] >= left[:, None]) & (r[None, :] < left[:, None] + 5)
  square = (rows[:, :, None] & cols[:, None, :])[..., None]
  x = x + 0.3 * square + jnp.asarray(TINT)[y][:, None, None, :]
  return jnp.clip(x, 0.0, 1.0), y


_make_batch = jax.jit(lambda key: make_data(key, 32))


def batch_fn(key, step):
  del step
  return _make_batch(key)


def config(**kw):
  base = dict(arch="small_cnn", num_classes=K, width=8, image_shape=(S, S, 3), steps=200,
              batch_size=32, lr=0.05, adv_eps=EPS, adv_steps=3, checkpoint_every=1000,
              log_every=50)
  base.update(kw)
  return train.TrainConfig(**base)


@pytest.fixture(scope="module")
def test_set():
  return make_data(jax.random.key(123), 256)


@pytest.fixture(scope="module")
def standard(tmp_path_factory):
  return train.train(config(), str(tmp_path_factory.mktemp("std")), batch_fn)


@pytest.fixture(scope="module")
def robust_workdir(tmp_path_factory):
  return str(tmp_path_factory.mktemp("adv"))


@pytest.fixture(scope="module")
def robust(robust_workdir):
  return train.train(config(adv_norm="linf"), robust_workdir, batch_fn)


def _pgd_acc(model, x, y, eps, **kw):
  return train.evaluate_accuracy(model, x, y, norm="linf", eps=eps, steps=10,
                                 key=jax.random.key(1), **kw)


def test_standard_model_learns(standard, test_set):
  assert train.evaluate_accuracy(standard.model, *test_set) >= 0.95
  assert [r["step"] for r in standard.history] == [50, 100, 150, 200]


def test_pgd_is_stronger_than_fgsm(standard, test_set):
  pgd = _pgd_acc(standard.model, *test_set, EPS)
  fgsm = train.evaluate_accuracy(standard.model, *test_set, norm="linf", eps=EPS,
                                 attack="fgsm")
  assert pgd < fgsm, (pgd, fgsm)


def test_accuracy_falls_monotonically_with_eps(standard, test_set):
  accs = [_pgd_acc(standard.model, *test_set, e / 255) for e in (0, 2, 4, 8, 16)]
  assert all(a >= b for a, b in zip(accs, accs[1:])), accs
  assert accs[0] >= 0.95 and accs[-1] <= 0.2, accs


def test_adversarial_training_beats_standard_under_pgd(standard, robust, test_set):
  std = _pgd_acc(standard.model, *test_set, EPS)
  adv = _pgd_acc(robust.model, *test_set, EPS)
  assert adv > std + 0.3, (adv, std)
  assert train.evaluate_accuracy(robust.model, *test_set) >= 0.9


def test_load_model_restores_final_state(robust, robust_workdir):
  loaded = train.load_model(robust_workdir)
  for a, b in zip(jax.tree.leaves(nnx.state(loaded)), jax.tree.leaves(nnx.state(robust.model))):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert train.load_config(robust_workdir) == config(adv_norm="linf")
  with open(os.path.join(robust_workdir, "config.json")) as f:
    assert json.load(f)["adv_norm"] == "linf"


def test_resume_gives_identical_parameters(tmp_path):
  cfg = config(adv_norm="l2", adv_eps=0.5, adv_steps=2, steps=10, checkpoint_every=4,
               log_every=2)
  full = train.train(cfg, str(tmp_path / "full"), batch_fn)
  calls = []

  def recording_batch_fn(key, step):
    calls.append(step)
    return batch_fn(key, step)

  part = str(tmp_path / "part")
  killed = train.train(cfg, part, recording_batch_fn, stop_after=7)
  assert killed.step == 7 and calls == list(range(7))
  calls.clear()
  resumed = train.train(cfg, part, recording_batch_fn)
  assert calls == list(range(4, 10))  # resumed from the step-4 checkpoint
  for a, b in zip(jax.tree.leaves(nnx.state(full.model)),
                  jax.tree.leaves(nnx.state(resumed.model))):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert [r["step"] for r in resumed.history] == [2, 4, 6, 8, 10]
  assert [r["loss"] for r in resumed.history] == [r["loss"] for r in full.history]
  # Finished: a rerun does no step and returns the same model.
  calls.clear()
  metrics = os.path.join(part, "metrics.jsonl")
  before = (os.stat(metrics).st_mtime_ns, open(metrics).read())
  again = train.train(cfg, part, recording_batch_fn)
  assert calls == [] and again.step == 10
  assert (os.stat(metrics).st_mtime_ns, open(metrics).read()) == before  # left untouched
  with pytest.raises(ValueError, match="^config:"):
    train.train(config(steps=11), part, batch_fn)


def test_batchnorm_statistics_come_from_the_adversarial_batch():
  cfg = config(adv_norm="linf", adv_eps=0.25, adv_steps=2, steps=1)
  graphdef, state = train._init(cfg)
  model = nnx.merge(graphdef, jax.tree.map(jnp.copy, state["params"]),
                    jax.tree.map(jnp.copy, state["rest"]))  # the step donates `state`
  x, y = batch_fn(jax.random.key(5), 0)
  key = jax.random.key(9)
  new_state, _ = train._step_fn(graphdef, cfg, train.data_mesh())(state, x, y, key)
  loss_fn = attacks.make_loss_fn(models.eval_view(model))
  x_adv = jax.jit(lambda x, y: attacks.pgd(key, loss_fn, x, y, norm="linf", eps=0.25,
                                           steps=2))(x, y)
  conv = model.block1.conv
  m = models.BN_MOMENTUM
  expect_adv = (1 - m) * np.asarray(jnp.mean(conv(x_adv), axis=(0, 1, 2)))
  expect_clean = (1 - m) * np.asarray(jnp.mean(conv(x), axis=(0, 1, 2)))
  got = np.asarray(new_state["rest"]["block1"]["bn"]["mean"][...])
  np.testing.assert_allclose(got, expect_adv, rtol=1e-4, atol=1e-6)
  assert not np.allclose(got, expect_clean, rtol=1e-2, atol=1e-4)


def test_non_finite_loss_stops_loudly(tmp_path):
  """A learning rate of 1e30 overflows the parameters; the run must stop, naming the step,
  with only the finite steps before it in the metrics."""
  with pytest.raises(FloatingPointError, match=r"training loss is (nan|-?inf) at step \d+"):
    train.train(config(steps=6, log_every=1, lr=1e30, schedule="constant"), str(tmp_path),
                batch_fn)
  lines = io.read_jsonl(tmp_path / "metrics.jsonl")
  assert len(lines) < 6 and all(np.isfinite(r["loss"]) for r in lines)


def test_bad_inputs_raise_naming_argument(standard, test_set, tmp_path):
  x, y = test_set
  with pytest.raises(ValueError, match="^y:"):
    train.evaluate_accuracy(standard.model, x, y + K)
  with pytest.raises(ValueError, match="^x:"):
    train.evaluate_accuracy(standard.model, x * 2.0, y)
  with pytest.raises(ValueError, match="^eps:"):
    train.evaluate_accuracy(standard.model, x, y, norm="linf", eps=-1.0,
                            key=jax.random.key(0))
  with pytest.raises(ValueError, match="^norm:"):
    train.evaluate_accuracy(standard.model, x, y, norm="l0", eps=0.1, key=jax.random.key(0))
  with pytest.raises(ValueError, match="^adv_norm:"):
    config(adv_norm="l0")
  with pytest.raises(ValueError, match="^adv_eps:"):
    config(adv_eps=-0.1)
  with pytest.raises(ValueError, match="^y:"):
    train.train(config(), str(tmp_path), lambda k, s: (batch_fn(k, s)[0],
                                                       batch_fn(k, s)[1] + K))


_MULTI_DEVICE_SCRIPT = textwrap.dedent("""
    import json, sys
    import chex
    chex.set_n_cpu_devices(4)  # before jax starts its CPU backend
    import jax, numpy as np
    from flax import nnx
    sys.path.insert(0, sys.argv[1])
    from tests.test_train import batch_fn, config
    from spurjax import train
    assert jax.device_count() == 4 and train.data_mesh().size == 4
    cfg = config(adv_norm="linf", adv_steps=1, steps=4, checkpoint_every=4, log_every=1)
    r = train.train(cfg, sys.argv[2], batch_fn)
    np.savez(sys.argv[3], *[np.asarray(a) for a in jax.tree.leaves(nnx.state(r.model))])
    """)


def test_data_parallel_matches_single_device(tmp_path):
  """The same run sharded over 4 (virtual CPU) devices ends with the same parameters."""
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  out = tmp_path / "params.npz"
  proc = subprocess.run([sys.executable, "-c", _MULTI_DEVICE_SCRIPT, root,
                         str(tmp_path / "multi"), str(out)], env=env, cwd=root,
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  single = train.train(config(adv_norm="linf", adv_steps=1, steps=4, checkpoint_every=4,
                              log_every=1),
                       str(tmp_path / "single"), batch_fn)
  multi = np.load(out)
  leaves = jax.tree.leaves(nnx.state(single.model))
  assert len(leaves) == len(multi.files)
  for i, a in enumerate(leaves):
    np.testing.assert_allclose(multi[f"arr_{i}"], np.asarray(a), rtol=1e-4, atol=1e-5)

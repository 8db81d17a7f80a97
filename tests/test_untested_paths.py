"""Paths no other test runs: l1 adversarial training with the margin attack loss, the
optimizer options, evaluate_accuracy with a padded last batch, the torn-line rule of
read_jsonl, the distributed start-up errors, data.batches, the l1 / l_inf empirical fit
against an independent solver, and `sims.scale_law --norms=l1` (once a KeyError)."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from spurjax import attacks
from spurjax import data
from spurjax import empirical
from spurjax import io
from spurjax import models
from spurjax import parallel
from spurjax import theory as T
from spurjax import train


# ---------------------------------------------------------------------------- training

S, K, B = 8, 3, 8


def _batch_fn(key, step):
  del step
  kx, ky = jax.random.split(key)
  return jax.random.uniform(kx, (B, S, S, 3)), jax.random.randint(ky, (B,), 0, K)


def test_l1_adversarial_training_with_margin_loss_follows_the_protocol(tmp_path):
  """Step s trains on x_adv = pgd(fold_in(attack_key, s), margin(eval_view(model)), l1):
  the logged loss of step 1 equals that recomputed by hand from the initial model and
  differs from the clean loss, and the train step compiled once for both steps."""
  cfg = train.TrainConfig(arch="small_cnn", num_classes=K, width=4, image_shape=(S, S, 3),
                          steps=2, batch_size=B, lr=0.05, adv_norm="l1", adv_eps=3.0,
                          adv_steps=3, adv_loss="margin", log_every=1, checkpoint_every=2)
  result = train.train(cfg, str(tmp_path / "run"), _batch_fn)
  assert [r["step"] for r in result.history] == [1, 2]

  graphdef, state = train._init(cfg)
  data_key, attack_key = train._keys(cfg)
  x, y = _batch_fn(jax.random.fold_in(data_key, 0), 0)

  def first_loss(params, rest, x, y, loss_name, clean):
    model = nnx.merge(graphdef, params, rest)
    if not clean:
      loss_fn = attacks.make_loss_fn(models.eval_view(model), loss_name)
      x = attacks.pgd(jax.random.fold_in(attack_key, 0), loss_fn, x, y, norm="l1", eps=3.0,
                      steps=3)
    train_mode = nnx.merge(graphdef, params, rest)  # batch statistics of the attacked batch
    return jnp.mean(attacks.cross_entropy(train_mode(x), y))

  first_loss = jax.jit(first_loss, static_argnums=(4, 5))
  by_hand = float(first_loss(state["params"], state["rest"], x, y, "margin", False))
  logged = result.history[0]["loss"]
  assert logged == pytest.approx(by_hand, rel=1e-5)
  clean = float(first_loss(state["params"], state["rest"], x, y, "margin", True))
  assert abs(clean - by_hand) > 1e-3 * abs(by_hand)
  step = train._step_fn(graphdef, cfg, train.data_mesh())
  assert step._cache_size() == 1


def test_piecewise_schedule_with_warmup():
  """Linear warm-up from 0 to lr over warmup_steps, then x0.1 at 50% and 75% of the
  remaining steps."""
  cfg = train.TrainConfig(steps=110, lr=0.1, schedule="piecewise", warmup_steps=10)
  _, sched = train.make_optimizer(cfg)
  got = np.array([float(sched(s)) for s in range(110)])
  want = np.array([0.1 * s / 10 if s < 10 else
                   0.1 * 0.1 ** ((s - 10 >= 50) + (s - 10 >= 75)) for s in range(110)])
  np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-9)


def test_adam_option_with_weight_decay():
  """optimizer="adam": weight decay is added to the gradient, then Adam; the first update is
  -lr (g + wd p) / (|g + wd p| + 1e-8) (bias-corrected moments equal g and g^2)."""
  cfg = train.TrainConfig(steps=10, lr=0.01, optimizer="adam", schedule="constant",
                          weight_decay=0.1)
  tx, _ = train.make_optimizer(cfg)
  p = {"w": jnp.array([1.0, -2.0, 0.5, 0.0])}
  g = {"w": jnp.array([0.3, 0.1, -0.2, 1e-3])}
  upd, st = tx.update(g, tx.init(p), p)
  gd = np.asarray(g["w"]) + 0.1 * np.asarray(p["w"])
  np.testing.assert_allclose(upd["w"], -0.01 * gd / (np.abs(gd) + 1e-8), rtol=1e-5)
  # Second step, by Adam's recursion (b1 = 0.9, b2 = 0.999).
  p2 = optax.apply_updates(p, upd)
  g2 = {"w": jnp.array([-0.1, 0.2, 0.05, 0.0])}
  upd2, _ = tx.update(g2, st, p2)
  gd2 = np.asarray(g2["w"]) + 0.1 * np.asarray(p2["w"])
  m = (0.1 * 0.9 * gd + 0.1 * gd2) / (1 - 0.9 ** 2)
  v = (0.001 * 0.999 * gd ** 2 + 0.001 * gd2 ** 2) / (1 - 0.999 ** 2)
  # float32 bias correction 1 - 0.999^2 = 2e-3 carries a relative rounding error of 3e-5.
  np.testing.assert_allclose(upd2["w"], -0.01 * m / (np.sqrt(v) + 1e-8), rtol=1e-4)


class _Linear(nnx.Module):
  def __init__(self, d, k, rngs):
    self.lin = nnx.Linear(d, k, rngs=rngs)

  def __call__(self, x):
    return self.lin(x.reshape(x.shape[0], -1))


def test_evaluate_accuracy_with_a_padded_last_batch():
  """n = 7 in batches of 3: the two zero rows padding the last batch are not counted, even
  though the model labels a zero image with the padding label 0."""
  model = _Linear(4 * 4 * 3, 3, nnx.Rngs(0))
  model.lin.bias[...] = jnp.array([0.5, 0.0, 0.0])
  x = np.asarray(jax.random.uniform(jax.random.key(3), (7, 4, 4, 3)))
  assert int(jnp.argmax(model(jnp.zeros((1, 4, 4, 3))), -1)[0]) == 0
  # Labels: the model's own predictions, two of them changed to 1 or 2 (never 0, the label
  # of the padding rows).
  y = np.argmax(np.asarray(model(jnp.asarray(x))), -1)
  y[:2] = np.where(y[:2] == 1, 2, 1)
  clean = float(np.mean(np.argmax(np.asarray(model(jnp.asarray(x))), -1) == y))
  assert train.evaluate_accuracy(model, x, y, batch_size=3) == pytest.approx(clean, abs=0)
  # The deterministic (zero-start) attack is per example: batching does not change it.
  x_adv = attacks.pgd(jax.random.key(0), attacks.make_loss_fn(model), jnp.asarray(x),
                      jnp.asarray(y), norm="linf", eps=0.5, steps=3, random_start=False)
  adv = float(np.mean(np.argmax(np.asarray(model(x_adv)), -1) == y))
  kw = dict(norm="linf", eps=0.5, steps=3, random_start=False)
  assert train.evaluate_accuracy(model, x, y, batch_size=3, **kw) == pytest.approx(adv, abs=0)
  assert adv < clean


# ------------------------------------------------------------------------------- io


def test_read_jsonl_skips_only_a_torn_last_line(tmp_path):
  path = tmp_path / "m.jsonl"
  io.append_jsonl(path, [{"step": 1}, {"step": 2}])
  with open(path, "a") as f:
    f.write('\n{"step": 3, "lo')                # a crash in the middle of a write
  assert io.read_jsonl(path) == [{"step": 1}, {"step": 2}]
  path.write_text('{"step": 1}\n{"st\n{"step": 3}\n')
  with pytest.raises(json.JSONDecodeError):      # corruption elsewhere is not hidden
    io.read_jsonl(path)
  assert io.read_jsonl(tmp_path / "missing.jsonl") == []


# ------------------------------------------------------------------------- distributed


@pytest.fixture
def fake_distributed(monkeypatch):
  """Records jax.distributed.initialize calls instead of starting a runtime, and restores
  the CPU collectives setting the function changes."""
  for var in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID",
              "SPURJAX_DISTRIBUTED"):
    monkeypatch.delenv(var, raising=False)
  calls = []
  monkeypatch.setattr(jax.distributed, "initialize",
                      lambda *a, **k: calls.append((a, k)))
  old = jax.config.jax_cpu_collectives_implementation
  yield calls
  jax.config.update("jax_cpu_collectives_implementation", old)


@pytest.mark.parametrize("args,env,message", [
    (("host:1234", None, None), {}, "num_processes and process_id"),
    (("host:1234", 2, None), {}, "num_processes and process_id"),
    (("host:1234", 2, 2), {}, r"process_id must be in \[0, 2\)"),
    (("host:1234", 2, -1), {}, r"process_id must be in \[0, 2\)"),
    ((None, None, None), {"JAX_COORDINATOR_ADDRESS": "host:1", "JAX_NUM_PROCESSES": "3"},
     "num_processes and process_id"),
    ((None, None, None), {"JAX_COORDINATOR_ADDRESS": "host:1", "JAX_NUM_PROCESSES": "3",
                          "JAX_PROCESS_ID": "3"}, r"process_id must be in \[0, 3\)"),
])
def test_distributed_start_up_errors(fake_distributed, monkeypatch, args, env, message):
  for k, v in env.items():
    monkeypatch.setenv(k, v)
  with pytest.raises(ValueError, match=message):
    parallel.maybe_initialize_distributed(*args)
  assert fake_distributed == []


def test_distributed_start_up_when_asked(fake_distributed, monkeypatch):
  assert parallel.maybe_initialize_distributed() is False
  assert parallel.maybe_initialize_distributed("host:1234", 2, 1) is True
  assert fake_distributed[-1] == (("host:1234",), {"num_processes": 2, "process_id": 1})
  monkeypatch.setenv("SPURJAX_DISTRIBUTED", "1")
  assert parallel.maybe_initialize_distributed() is True
  assert fake_distributed[-1] == ((), {})


# --------------------------------------------------------------------------------- data


def test_batches_are_sample_batch_of_folded_keys():
  cfg = data.DataConfig(image_size=16, num_classes=4, marker=True, p=0.8)
  key = jax.random.key(4)
  it = data.batches(key, cfg, 120)
  for t in range(2):
    got, want = next(it), data.sample_batch(jax.random.fold_in(key, t), cfg, 120)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
      np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  with pytest.raises(ValueError, match="batch_size"):
    next(data.batches(key, cfg, 0))


# ---------------------------------------------------------------------------- empirical


@pytest.mark.parametrize("norm", ["l1", "linf"])
def test_fit_adversarial_linear_matches_a_conic_solver(norm):
  """min_w 1/n sum_i (|w^T x_i - y_i| + eps ||w||_q)^2 is convex (a square of a non-negative
  convex function); cvxpy (SCS at 1e-10) solves it independently."""
  import cvxpy as cp
  model = T.CoreSpuriousModel(3, 3, 1.0, 0.8, 0.7, 0.3)
  eps = {"l1": 0.3, "linf": 0.1}[norm]
  with jax.enable_x64(True):
    x, y = T.sample(jax.random.key(0), model, 200)
    fit = empirical.fit_adversarial_linear(x, y, eps, norm)
    w_fit, risk_fit = np.asarray(fit.w), float(fit.train_risk)
  xn, yn = np.asarray(x), np.asarray(y)
  w = cp.Variable(6)
  q = {"l1": "inf", "linf": 1}[norm]
  obj = cp.sum(cp.square(cp.abs(xn @ w - yn) + eps * cp.norm(w, q))) / len(yn)
  prob = cp.Problem(cp.Minimize(obj))
  prob.solve(solver=cp.SCS, eps_abs=1e-10, eps_rel=1e-10, max_iters=200_000)
  assert prob.status == cp.OPTIMAL
  dual = np.linalg.norm(w.value, np.inf if q == "inf" else 1)
  ref = np.mean((np.abs(xn @ w.value - yn) + eps * dual) ** 2)
  # Adam with a cosine-decayed step (2000 steps) reaches the optimum to 1.4e-6 relative in
  # the risk and 6e-5 in the weights (measured, both norms).
  assert risk_fit == pytest.approx(ref, rel=1e-5)
  np.testing.assert_allclose(w_fit, w.value, atol=2e-4)


# --------------------------------------------------------------------------------- sims


def test_scale_law_accepts_l1():
  """`--norms=l1` resolves a radius (eps_l1) for every l1 model; it once raised KeyError."""
  from sims import _common
  with _common.sim_flags("sims.scale_law", ["--preset=small", "--norms=none,l1"]) as (sl, _):
    config = _common.resolve_config(sl.PRESETS, sl.CONFIG_FLAGS)
    specs = [[s.norm, s.eps] for s in sl.specs_of(config)]
    sl.suite_config(config)
  assert [s for s in specs if s[0] == "l1"] and all(
      e == (10.0 if n == "l1" else 0.0) for n, e in specs)

"""Evaluating a second model of the same architecture and input shape compiles nothing:
`reliance.evaluate` and `train.evaluate_accuracy` pass the parameters as arguments.

The protocols' jitted functions are internal, so compilations are counted (JAX's compile
events); where the test owns the traced function, `chex.assert_max_traces` bounds its traces.
"""

import contextlib

import chex
import jax
import numpy as np
from flax import nnx

from spurjax import evalset
from spurjax import evaluation
from spurjax import models
from spurjax import reliance
from spurjax import train

K = 2


@contextlib.contextmanager
def count_compiles():
  """Counts XLA backend compilations (every jit, eager op or retrace that compiles)."""
  names = []

  def listener(event, duration, **kwargs):
    del duration
    if event == "/jax/core/compile/backend_compile_duration":
      names.append(kwargs.get("fun_name", "?"))

  jax.monitoring.register_event_duration_secs_listener(listener)
  try:
    yield names
  finally:
    jax.monitoring.unregister_event_duration_listener(listener)


def test_second_model_compiles_nothing():
  rng = np.random.default_rng()
  n, size = 6, 8
  masks = (rng.uniform(size=(n, size, size)) < 0.3).astype(np.float32)
  es = evalset.EvalSet(rng.uniform(size=(n, size, size, 3)).astype(np.float32),
                       np.arange(n) % K, K, masks=masks, soft_masks=masks)
  first = models.make_model("small_cnn", K, rngs=nnx.Rngs(0), width=4)
  # A second model of the same architecture whose logits are exactly minus the first's
  # (head negated), built on the host without compiling anything: with K = 2 every
  # prediction flips, so its accuracy is 1 - the first's.
  graphdef, state = nnx.split(first)
  second = nnx.merge(graphdef, jax.tree.map(np.array, state))
  second.head.kernel[...] = -np.asarray(second.head.kernel[...])
  second.head.bias[...] = -np.asarray(second.head.bias[...])
  kw = dict(batch_size=4, sigmas=(0.2,), salient_trials=5)

  def run(model):
    out = reliance.evaluate(jax.random.key(1), model, es, **kw)
    # The PGD evaluation is the same jitted function with other static arguments; its
    # compile (~10x the clean one) is left out to keep the test short.
    out["clean"] = train.evaluate_accuracy(model, es.images, es.labels, batch_size=4)
    return out

  # The protocols' jits cleared first, so that their programs, if an earlier test in this
  # process (an xdist worker runs many) compiled them, are compiled again here and counted.
  for jitted in (reliance._predict_params, reliance._pair_params, evaluation._correct):
    jitted.clear_cache()
  with count_compiles() as warm:
    out_first = run(first)
  # Each part compiled once: predict, the two noise modes, the accuracy step.
  assert len(warm) >= 4, warm
  with count_compiles() as names:
    out_second = run(second)
  assert names == [], names
  # It did evaluate the second model's parameters: every prediction flipped.
  for name in ("clean_acc", "clean"):
    np.testing.assert_allclose(out_second[name], 1.0 - out_first[name], atol=1e-12)
  np.testing.assert_allclose(out_second["rfs_a_fg"], 1.0 - out_first["rfs_a_fg"], atol=1e-12)
  assert out_first.keys() == out_second.keys()


def test_class_map_scores_every_model_form_alike_without_recompiling():
  """With `EvalSet.class_map`, an NNX model, an (apply_fn, params) pair and a pure apply_fn
  give the same metrics, and a second NNX model of the same architecture compiles nothing."""
  rng = np.random.default_rng()
  n, size, c = 8, 8, 5
  k = int(rng.integers(2, 4))
  # A top-1 map in which no model class keeps its own index (class j -> j + 1 mod k, one
  # random class unmapped), so scoring the raw logits would give other numbers.
  owner = (np.arange(c) + 1) % k
  owner[rng.integers(c)] = -1
  members = np.stack([owner == j for j in range(k)])
  cmap = evalset.ClassMap(members, "top1")
  model = models.make_model("small_cnn", c, rngs=nnx.Rngs(int(rng.integers(1 << 30))), width=4)
  graphdef, state = nnx.split(models.eval_view(model))
  apply_params = lambda params, x: nnx.merge(graphdef, params)(x)
  images = rng.uniform(size=(n, size, size, 3)).astype(np.float32)
  mapped = owner[np.argmax(np.asarray(apply_params(state, images)), axis=-1)]
  # Labels: the mapped prediction where there is one (random where it is unmapped).
  labels = np.where(mapped >= 0, mapped, rng.integers(0, k, size=n))
  masks = (rng.uniform(size=(n, size, size)) < 0.3).astype(np.float32)
  es = evalset.EvalSet(images, labels, k, masks=masks, class_map=cmap)
  kw = dict(batch_size=4, sigmas=(0.2,), rfs_modes=("gaussian",))
  outs = [reliance.evaluate(jax.random.key(3), m, es, **kw)
          for m in (model, (apply_params, state), lambda x: apply_params(state, x))]
  # The mapped clean accuracy by hand: top-1 over the c logits, then the map (-1 wrong).
  np.testing.assert_allclose(outs[0]["clean_acc"], np.mean(mapped == labels), atol=1e-12)
  for other in outs[1:]:
    assert other == outs[0]
  second = nnx.merge(*nnx.split(model))
  second.head.bias[...] = np.asarray(second.head.bias[...]) + rng.normal(size=c)
  with count_compiles() as names:
    reliance.evaluate(jax.random.key(3), second, es, **kw)
  assert names == [], names


def test_a_params_pair_traces_its_apply_fn_once_for_every_protocol_sigma_and_model():
  """An `(apply_fn(params, images), params)` pair: the protocols (clean accuracy, RFS) and
  noise levels at one input shape share one trace of apply_fn, and so does a second
  parameter set (chex raises on a second trace)."""
  rng = np.random.default_rng()
  n, size, c = 8, 8, 3
  model = models.make_model("small_cnn", c, rngs=nnx.Rngs(int(rng.integers(1 << 30))), width=4)
  graphdef, state = nnx.split(models.eval_view(model))

  @chex.assert_max_traces(n=1)
  def apply_params(params, x):
    return nnx.merge(graphdef, params)(x)

  masks = (rng.uniform(size=(n, size, size)) < 0.3).astype(np.float32)
  es = evalset.EvalSet(rng.uniform(size=(n, size, size, 3)).astype(np.float32),
                       np.arange(n) % c, c, masks=masks)
  kw = dict(batch_size=4, sigmas=(0.2, 0.4), rfs_modes=("gaussian",))
  first = reliance.evaluate(jax.random.key(1), (apply_params, state), es, **kw)
  # The second model: head negated, so its logits are minus the first's.
  second = jax.tree.map(np.array, state)
  second["head"]["kernel"][...] = -second["head"]["kernel"][...]
  second["head"]["bias"][...] = -second["head"]["bias"][...]
  out = reliance.evaluate(jax.random.key(1), (apply_params, second), es, **kw)
  assert out.keys() == first.keys()
  preds = [reliance.predictions((apply_params, s), es.images, batch_size=4)
           for s in (state, second)]
  assert np.all(preds[0] != preds[1])  # It did use the second parameters.

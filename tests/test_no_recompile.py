"""Evaluating a second model of the same architecture and input shape compiles nothing:
`reliance.evaluate` and `train.evaluate_accuracy` pass the parameters as arguments."""

import contextlib

import jax
import numpy as np
from flax import nnx

from spurjax import evalset
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

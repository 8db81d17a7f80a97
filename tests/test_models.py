"""Tests of spurjax.models: shapes, eval/train views, factory, FLOP count."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from spurjax import models


@pytest.mark.parametrize("arch,width", [("small_cnn", 4), ("resnet18", 2)])
def test_make_model_shapes(arch, width):
  x = jax.random.uniform(jax.random.key(0), (3, 16, 16, 3))
  # Built and run inside one jit: one compilation instead of hundreds of eager dispatches.
  out = jax.jit(lambda x: models.eval_view(
      models.make_model(arch, 5, width=width, rngs=nnx.Rngs(0)))(x))(x)
  assert out.shape == (3, 5) and np.isfinite(np.asarray(out)).all()


def test_make_model_rejects_unknown_names():
  with pytest.raises(ValueError, match="^arch:"):
    models.make_model("vgg", 10, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="^num_classes:"):
    models.make_model("small_cnn", 1, rngs=nnx.Rngs(0))


def test_default_widths():
  """The CPU network is the issue's 3-conv 32-64-128 CNN."""
  model = nnx.eval_shape(lambda: models.make_model("small_cnn", 10, rngs=nnx.Rngs(0)))
  assert [m.conv.kernel.shape[-1] for m in (model.block1, model.block2, model.block3)] == [
      32, 64, 128]


def test_eval_view_uses_running_averages_and_train_mode_updates_them():
  model = models.make_model("small_cnn", 4, width=4, rngs=nnx.Rngs(0))
  x = jax.random.uniform(jax.random.key(1), (8, 16, 16, 3))
  before = jax.tree.map(np.asarray, nnx.state(model, nnx.BatchStat))
  view = models.eval_view(model)
  # Eval mode: an example's logits do not depend on the rest of the batch, stats untouched.
  full = np.asarray(view(x))
  np.testing.assert_allclose(np.asarray(view(x[:1])), full[:1], rtol=1e-5, atol=1e-6)
  after_eval = jax.tree.map(np.asarray, nnx.state(model, nnx.BatchStat))
  jax.tree.map(np.testing.assert_array_equal, before, after_eval)
  # Train mode: batch statistics, so logits change with the batch, and stats move.
  train = models.train_view(model)
  t_full = np.asarray(train(x))
  assert not np.allclose(np.asarray(train(x[:2]))[:1], t_full[:1], atol=1e-4)
  mean1 = np.asarray(model.block1.bn.mean[...])
  assert np.abs(mean1).max() > 0
  # The view shares its variables with the model: updated stats change eval outputs.
  assert not np.allclose(np.asarray(view(x)), full, atol=1e-4)


def test_forward_flops_matches_hand_count():
  model = models.make_model("small_cnn", 10, rngs=nnx.Rngs(0))
  h = w = 64
  c1, c2, c3 = 32, 64, 128
  convs = 2 * 9 * (h * w * 3 * c1 + (h // 2) * (w // 2) * c1 * c2
                   + (h // 4) * (w // 4) * c2 * c3)
  assert models.forward_flops(model, (h, w, 3)) == convs + 2 * c3 * 10


def test_count_params():
  model = models.make_model("small_cnn", 10, width=4, in_channels=3, rngs=nnx.Rngs(0))
  # convs (no bias with BN) + BN scale/bias + head
  expected = (27 * 4 + 36 * 8 + 72 * 16) + 2 * (4 + 8 + 16) + (16 * 10 + 10)
  assert models.count_params(model) == expected


def test_im2col_conv_equals_xla_conv():
  """The im2col formulation computes the same function, values and gradients, as nnx.Conv."""
  a = models.make_model("small_cnn", 4, width=4, conv_impl="im2col", rngs=nnx.Rngs(0))
  b = models.make_model("small_cnn", 4, width=4, conv_impl="xla", rngs=nnx.Rngs(0))
  pa, pb = nnx.state(a, nnx.Param), nnx.state(b, nnx.Param)
  jax.tree.map(lambda u, v: np.testing.assert_array_equal(np.asarray(u), np.asarray(v)), pa, pb)
  x = jax.random.uniform(jax.random.key(2), (2, 12, 12, 3))

  @jax.jit
  def run(x):
    fa = lambda x: models.eval_view(a)(x).sum()
    fb = lambda x: models.eval_view(b)(x).sum()
    return models.eval_view(a)(x), models.eval_view(b)(x), jax.grad(fa)(x), jax.grad(fb)(x)

  ya, yb, ga, gb = run(x)
  np.testing.assert_allclose(np.asarray(ya), np.asarray(yb), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(np.asarray(ga), np.asarray(gb), rtol=1e-4, atol=1e-7)
  assert not np.allclose(np.asarray(ga), 0)


def test_max_pool_2x2_equals_flax_max_pool():
  x = jax.random.normal(jax.random.key(3), (2, 6, 8, 3))
  np.testing.assert_array_equal(np.asarray(models.max_pool_2x2(x)),
                                np.asarray(nnx.max_pool(x, (2, 2), strides=(2, 2))))
  g = jax.grad(lambda x: jnp.sum(models.max_pool_2x2(x) ** 2))(x)
  g_ref = jax.grad(lambda x: jnp.sum(nnx.max_pool(x, (2, 2), strides=(2, 2)) ** 2))(x)
  np.testing.assert_allclose(np.asarray(g), np.asarray(g_ref), rtol=1e-6)  # no ties here

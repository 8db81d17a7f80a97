"""Tests of spurjax.imagenet_models: torchvision parameter counts and names, torch's output
sizes and padding, eval/train views, the normalizer, training through spurjax.train.

Agreement of the logits with torch is tested in test_pretrained.py (committed torch
fixtures; full-size nets when torch is importable)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from spurjax import imagenet_models
from spurjax import models
from spurjax import train

# torchvision's documented parameter counts (torchvision.models docs, "num_params").
# (resnet101, 44_549_160, is left out only because building it takes 5 s.)
TORCHVISION_PARAMS = {"resnet18": 11_689_512, "resnet34": 21_797_672,
                      "resnet50": 25_557_032, "wide_resnet50_2": 68_883_240}


def _abstract(arch, **kw):
  return nnx.eval_shape(lambda: models.imagenet_resnet(arch, rngs=nnx.Rngs(0), **kw))


@pytest.mark.parametrize("arch", sorted(TORCHVISION_PARAMS))
def test_parameter_counts_match_torchvision(arch):
  assert models.count_params(_abstract(arch)) == TORCHVISION_PARAMS[arch]


def test_wide_resnet50_4_is_resnet50_with_width_per_group_256():
  m = _abstract("wide_resnet50_4", stem_width=8, planes=(4, 4, 8, 8))
  assert m.spec.width_per_group == 256 and m.spec.depths == (3, 4, 6, 3)
  # conv1 of a stage-1 bottleneck: int(4 * 256 / 64) = 16 channels; output still 4 * 4.
  assert m.layer1[0].conv1.kernel.shape == (1, 1, 8, 16)
  assert m.layer1[0].conv3.kernel.shape == (1, 1, 16, 16)
  assert m.fc.kernel.shape == (32, 1000)
  assert imagenet_models.ARCH_SPECS["resnet101"][1] == (3, 4, 23, 3)


def test_torchvision_names_and_normalizer_is_not_trainable():
  m = _abstract("resnet50", stem_width=4, planes=(2, 2, 2, 2))
  paths = {".".join(map(str, p)) for p, _ in nnx.to_flat_state(nnx.state(m))}
  for key in ("conv1.kernel", "bn1.scale", "bn1.mean", "bn1.var", "layer1.0.conv3.kernel",
              "layer1.0.downsample.0.kernel", "layer1.0.downsample.1.bias",
              "layer4.2.bn3.var", "fc.kernel", "fc.bias", "mean", "std"):
    assert key in paths, key
  params = {".".join(map(str, p)) for p, _ in nnx.to_flat_state(nnx.state(m, nnx.Param))}
  assert "mean" not in params and "std" not in params
  assert "layer2.0.downsample.0.kernel" in params
  assert not any(p.startswith("layer2.1.downsample") for p in params)


def _torch_out(n, k, s, p):
  return (n + 2 * p - k) // s + 1


@pytest.mark.parametrize("size", [97, 224, 225, 32])
def test_spatial_sizes_follow_torch(size):
  n = _torch_out(size, 7, 2, 3)     # stem
  n = _torch_out(n, 3, 2, 1)        # max-pool
  for _ in range(3):
    n = _torch_out(n, 3, 2, 1)      # stride-2 3x3 convs of stages 2-4

  def run(x):
    m = models.imagenet_resnet("resnet18", rngs=nnx.Rngs(0), stem_width=4,
                               planes=(2, 2, 2, 2))
    y = imagenet_models.max_pool_3x3_s2(jax.nn.relu(m.bn1(m.conv1(x))))
    for layer in (m.layer1, m.layer2, m.layer3, m.layer4):
      for block in layer:
        y = block(y)
    return y

  x = jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)
  assert jax.eval_shape(run, x).shape == (1, n, n, 2)


def test_padding_is_symmetric_like_torch_not_same():
  """The 7x7/2 stem at an even size equals a direct convolution with torch's (3, 3)
  padding and differs from one with XLA SAME's (2, 3) padding."""
  conv1 = imagenet_models._conv(3, 2, 7, 2, nnx.Rngs(0))          # the stem's conv
  x = np.asarray(jax.random.uniform(jax.random.key(3), (1, 8, 8, 3)))
  y = np.asarray(conv1(jnp.asarray(x)))[0]                         # (4, 4, 2)
  w = np.asarray(conv1.kernel[...])                                 # (7, 7, 3, 2)

  def direct(lo, hi):
    xp = np.pad(x[0], ((lo, hi), (lo, hi), (0, 0)))
    return np.array([[np.einsum("hwc,hwco->o", xp[2 * i:2 * i + 7, 2 * j:2 * j + 7], w)
                      for j in range(4)] for i in range(4)])

  np.testing.assert_allclose(y, direct(3, 3), rtol=1e-5, atol=1e-5)
  assert np.abs(direct(2, 3) - direct(3, 3)).max() > 1e-2


def test_max_pool_pads_with_minus_infinity():
  x = -jnp.ones((1, 4, 4, 1))
  y = imagenet_models.max_pool_3x3_s2(x)
  assert y.shape == (1, 2, 2, 1) and np.all(np.asarray(y) == -1.0)


def test_features_eval_view_and_normalizer():
  """Built and run inside one jit (one compilation): features feed fc, eval-mode logits of
  an example do not depend on the batch, and the normalizer's values matter."""

  def run(x):
    m = models.imagenet_resnet("resnet18", 7, rngs=nnx.Rngs(0), stem_width=4,
                               planes=(2, 2, 2, 4))
    view = models.eval_view(m)
    feats, logits = view.features(x), view(x)
    alone = view(x[:1])
    m.mean[...] = jnp.asarray([0.1, 0.2, 0.3])
    return feats, logits, view.fc(feats), alone, view(x)

  x = jax.random.uniform(jax.random.key(0), (3, 32, 32, 3))
  feats, logits, from_feats, alone, renormed = jax.jit(run)(x)
  assert feats.shape == (3, 4) and logits.shape == (3, 7)
  np.testing.assert_allclose(np.asarray(from_feats), np.asarray(logits), atol=1e-5)
  np.testing.assert_allclose(np.asarray(alone), np.asarray(logits[:1]), atol=1e-5)
  assert np.abs(np.asarray(renormed - logits)).max() > 1e-4


def test_bad_specs_raise():
  with pytest.raises(ValueError, match="^arch:"):
    models.imagenet_resnet("resnet19", rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="^planes:"):
    models.imagenet_resnet("resnet18", rngs=nnx.Rngs(0), planes=(1, 2, 3))
  with pytest.raises(ValueError, match="^width_per_group:"):
    models.imagenet_resnet("resnet18", rngs=nnx.Rngs(0), width_per_group=128)
  with pytest.raises(ValueError, match="^in_channels:"):
    models.make_model("imagenet_resnet18", 10, rngs=nnx.Rngs(0), in_channels=1)
  m = models.eval_view(models.imagenet_resnet("resnet18", rngs=nnx.Rngs(0), stem_width=2,
                                              planes=(2, 2, 2, 2)))
  with pytest.raises(ValueError, match="^images:"):
    m.features(jnp.zeros((1, 8, 8, 1)))


def test_trainable_with_spurjax_train(tmp_path):
  """make_model's "imagenet_*" names run through spurjax.train and reduce the loss."""
  key = jax.random.key(0)
  y = jax.random.randint(key, (16,), 0, 2)
  # Class = overall brightness: learnable in a few steps.
  x = jnp.clip(0.3 + 0.4 * y[:, None, None, None]
               + 0.1 * jax.random.normal(key, (16, 16, 16, 3)), 0, 1)
  cfg = train.TrainConfig(arch="imagenet_resnet18", num_classes=2, width=2,
                          image_shape=(16, 16, 3), steps=6, batch_size=16, lr=0.05,
                          optimizer="adam", schedule="constant", weight_decay=0.0,
                          adv_steps=0, checkpoint_every=100, log_every=1)
  res = train.train(cfg, str(tmp_path), lambda k, s: (x, y))
  losses = [h["loss"] for h in res.history]
  assert np.all(np.isfinite(losses)) and losses[-1] < losses[0]
  assert isinstance(res.model, imagenet_models.ImageNetResNet)

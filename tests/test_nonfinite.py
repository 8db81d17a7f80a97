"""A NaN or infinite input pixel raises a ValueError naming the input, at every entry point
where images come in (attacks, training evaluation, reliance protocols, probe features)."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from spurjax import attacks
from spurjax import evalset
from spurjax import probe
from spurjax import reliance
from spurjax import train

N, S, K = 6, 8, 3


def _apply(x):
  return jnp.stack([x.mean(axis=(1, 2, 3)), x.std(axis=(1, 2, 3)), x[:, 0, 0, 0]], axis=-1)


class _Linear(nnx.Module):
  """The smallest NNX classifier (a SmallCNN's eager init takes long on a loaded machine)."""

  def __init__(self, rngs):
    self.lin = nnx.Linear(S * S * 3, K, rngs=rngs)

  def __call__(self, x):
    return self.lin(x.reshape(x.shape[0], -1))


def _poisoned(value):
  """Images in [0, 1] with one entry, at a fresh random position, set to `value`."""
  rng = np.random.default_rng()
  x = rng.uniform(size=(N, S, S, 3)).astype(np.float32)
  idx = tuple(int(rng.integers(d)) for d in x.shape)
  x[idx] = value
  return x, idx, rng.integers(K, size=N)


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_check_finite_names_field_and_index(value):
  x, idx, _ = _poisoned(value)
  with pytest.raises(ValueError, match=r"^pixels: non-finite value .* at index " + re.escape(
      str(idx))):
    evalset.check_finite("pixels", x)
  evalset.check_finite("pixels", np.nan_to_num(x, nan=0.5, posinf=1.0, neginf=0.0))
  evalset.check_finite("labels", np.arange(4))  # integers are always finite


def test_check_finite_never_syncs_inside_jit():
  """Traced values pass unchecked (the check belongs at the concrete API boundary)."""
  out = jax.jit(lambda x: (evalset.check_finite("x", x), x * 2)[1])(jnp.full((2,), jnp.nan))
  assert np.all(np.isnan(out))


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_reliance_rejects_nonfinite_pixels(value):
  x, _, y = _poisoned(value)
  with pytest.raises(ValueError, match=r"^images\[0:\d+\]: non-finite value"):
    reliance.clean_accuracy(_apply, x, y, K)
  with pytest.raises(ValueError, match=r"^images\[\d+:\d+\]: non-finite"):
    reliance.predictions(_apply, x, batch_size=4)
  clean = np.nan_to_num(x, nan=0.5, posinf=1.0)
  assert set(reliance.clean_accuracy(_apply, clean, y, K)) == {"clean_acc", "clean_bal_acc"}


def test_attacks_and_evaluation_reject_a_nan_pixel():
  x, _, y = _poisoned(np.nan)
  with pytest.raises(ValueError, match=r"^x: non-finite value nan"):
    attacks.validate_inputs(x, y, eps=0.1, num_classes=K)
  model = _Linear(nnx.Rngs(0))
  with pytest.raises(ValueError, match=r"^x: non-finite value nan"):
    train.evaluate_accuracy(model, x, y)
  with pytest.raises(ValueError, match=r"^images\[0:\d+\]: non-finite value nan"):
    probe.extract_features(lambda b: b.reshape(b.shape[0], -1), x)

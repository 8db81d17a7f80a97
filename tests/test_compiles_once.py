"""The "compiled once" claims, counted: the jit caches of the theory kernel, the data
renderer, the grid map and the evaluation step grow only where the docstrings say.

Where the traced function is the test's own (grid_map's `fn`), `chex.assert_max_traces`
bounds its traces. The other jitted functions are internal to the library, so their counts
are taken as the growth of the jit's cache (`_cache_size()`): earlier tests in the same
process that compiled the same programs do not matter.
"""

import chex
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from spurjax import data
from spurjax import evaluation
from spurjax import parallel
from spurjax import theory as T
from spurjax import train


def test_theory_kernel_compiles_once_per_norm_not_per_dimension():
  """`_minimize_reduced` traces the dimensions: a new (d_core, d_spu) pair never recompiles
  it; only the norm (and whether there are spurious features) is static."""
  kernel = T._minimize_reduced
  with jax.enable_x64(True):
    before = kernel._cache_size()
    for dims in ((2, 3), (5, 1)):
      for norm in T.NORMS:
        T.adversarial_minimizer(T.CoreSpuriousModel(*dims, 1.0, 0.8, 0.5, 0.1), 0.3, norm)
    first = kernel._cache_size() - before
    assert first <= len(T.NORMS)
    for dims in ((3, 7), (6, 2)):
      for norm in T.NORMS:
        T.adversarial_minimizer(T.CoreSpuriousModel(*dims, 1.3, 0.5, -0.4, 0.0), 0.7, norm)
    assert kernel._cache_size() - before == first


B = 120


def test_data_renderer_compiles_once_per_statics_and_batch_size():
  """All domains share one compilation (the domain is traced), and so do changes of p,
  bg_contrast, fg_scale and the other float fields; image_size is static."""
  render = data._render
  # The statics and batch size of tests/test_data.py's evaluation set: compiled once there.
  base = data.DataConfig(image_size=16, num_classes=4, marker=True, p=0.6)
  key = jax.random.key(0)
  data.sample_batch(key, base, B)
  before = render._cache_size()
  for domain in data.DOMAINS:
    data.sample_batch(key, base, B, domain)
  for cfg in (base.replace(p=0.9), base.replace(bg_contrast=0.1), base.replace(fg_scale=1.4),
              base.replace(marker_p=0.2, wb_p_train=0.7, wb_p_test=0.3)):
    data.sample_batch(key, cfg, B)
  it = data.batches(key, base.replace(p=0.3), B)
  next(it), next(it)
  assert render._cache_size() == before


def test_eval_set_renders_all_parts_with_one_compilation():
  cfg = data.DataConfig(image_size=16, num_classes=4, marker=True)
  before = data._render._cache_size()
  data.make_eval_set(jax.random.key(1), cfg, B, n_groups=B - 40, n_shifted=B - 50,
                     variants=False)
  assert data._render._cache_size() - before <= 1


def test_grid_map_does_not_retrace_repeated_sweeps():
  @chex.assert_max_traces(n=1)  # a second trace of fn raises AssertionError
  def fn(a, b):
    return jnp.sin(a) * b

  for scale in (1.0, 2.0, 3.0):
    out = parallel.grid_map(fn, np.linspace(0, 1, 6) * scale, np.arange(6.0))
    np.testing.assert_allclose(out, np.sin(np.linspace(0, 1, 6) * scale) * np.arange(6.0),
                               rtol=1e-6)
  assert parallel._compiled(fn)._cache_size() == 1


class _Linear(nnx.Module):
  def __init__(self, d, k, rngs):
    self.lin = nnx.Linear(d, k, rngs=rngs)

  def __call__(self, x):
    return self.lin(x.reshape(x.shape[0], -1))


def test_evaluate_accuracy_compiles_once_across_radii_and_a_padded_last_batch():
  """The radius is dynamic and the last batch is padded to the batch size: evaluating at
  several radii, with n not a multiple of the batch, is one compilation."""
  model = _Linear(4 * 4 * 3, 3, nnx.Rngs(0))
  x = np.asarray(jax.random.uniform(jax.random.key(0), (7, 4, 4, 3)))
  y = np.arange(7) % 3
  train.evaluate_accuracy(model, x, y, norm="l2", eps=0.1, steps=2, key=jax.random.key(1),
                          batch_size=3)
  before = evaluation._correct._cache_size()
  for eps in (0.0, 0.3, 1.0):
    train.evaluate_accuracy(model, x, y, norm="l2", eps=eps, steps=2, key=jax.random.key(1),
                            batch_size=3)
  assert evaluation._correct._cache_size() == before

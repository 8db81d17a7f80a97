"""Clean and adversarial accuracy of a classifier, batched and compiled once per shape."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from spurjax import attacks
from spurjax import models
from spurjax import norms
from spurjax import parallel

__all__ = ["evaluate_accuracy"]


@functools.partial(jax.jit, static_argnames=("graphdef", "norm", "steps", "attack", "loss",
                                             "random_start"))
def _correct(graphdef, state, x, y, valid, key, eps, step_size, *, norm, steps, attack,
             loss, random_start):
  model = nnx.merge(graphdef, state)
  if norm is not None:
    loss_fn = attacks.make_loss_fn(model, loss)
    if attack == "fgsm":
      x = attacks.fgsm(loss_fn, x, y, eps=eps, norm=norm)
    else:
      x = attacks.pgd(key, loss_fn, x, y, norm=norm, eps=eps, steps=steps,
                      step_size=step_size, random_start=random_start)
  hit = jnp.argmax(model(x), axis=-1) == y
  return jnp.sum(jnp.where(valid, hit, False))


def evaluate_accuracy(model: nnx.Module, images, labels, *, norm: str | None = None,
                      eps=0.0, steps: int = 10, key: jax.Array | None = None,
                      step_size=None, attack: str = "pgd", loss: str = "ce",
                      random_start: bool = True, batch_size: int = 256) -> float:
  """Clean (norm None) or adversarial accuracy of `model` in eval mode.

  acc = (1/N) sum_i [argmax f(x_i') = y_i], x_i' = x_i (clean), the `steps`-step PGD point
  (`attack="pgd"`, loss "ce" by default) or the FGSM point (`attack="fgsm"`), in the
  `norm`-ball of radius `eps`. Batches of `batch_size` (the last one padded and masked, so
  one compilation serves all); the PGD key of batch j is `fold_in(key, j)`.

  Args:
    model: an NNX classifier (its eval view is used).
    images: `(N, H, W, C)` in [0, 1].
    labels: `(N,)` ints in [0, K).
    norm: None, "l1", "l2" or "linf".
    eps: attack radius (dynamic: no recompilation per radius).
    steps: PGD steps.
    key: PRNG key; required for a random-start PGD.
    step_size: constant PGD step, None for `attacks.pgd`'s default schedule.
    attack: "pgd" or "fgsm".
    loss: "ce" or "margin".
    random_start: PGD random start.
    batch_size: evaluation batch size.

  Returns:
    The accuracy in [0, 1] as a Python float.
  """
  view = models.eval_view(model)
  graphdef, state = nnx.split(view)
  k = jax.eval_shape(lambda x: view(x), jax.ShapeDtypeStruct((1, *np.shape(images)[1:]),
                                                             jnp.float32)).shape[-1]
  attacks.validate_inputs(images, labels, eps=eps, num_classes=k)
  if norm is not None:
    norms.check_norm(norm)
  if attack not in ("pgd", "fgsm"):
    raise ValueError(f"attack: expected 'pgd' or 'fgsm', got {attack!r}")
  if norm is not None and attack == "pgd" and random_start and key is None:
    raise ValueError("key: a random-start PGD evaluation needs a PRNG key")
  key = jax.random.key(0) if key is None else key
  images = np.asarray(images, np.float32)
  labels = np.asarray(labels, np.int32)
  n = images.shape[0]
  bs = min(batch_size, n)
  total = 0
  for j, _, valid, x, y in parallel.padded_batches(bs, images, labels):
    total += int(_correct(graphdef, state, x, y, valid, jax.random.fold_in(key, j),
                          jnp.float32(eps),
                          None if step_size is None else jnp.float32(step_size),
                          norm=norm, steps=steps, attack=attack, loss=loss,
                          random_start=random_start))
  return total / n

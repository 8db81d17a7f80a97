"""The five background-reliance protocols (docs/benchmarks.md), for any classifier.

A classifier maps images `(B, H, W, 3)` float32 in [0, 1] to logits `(B, C)`. Every
function here takes it as a Flax NNX model (evaluated in eval mode, parameters passed as
arguments of jitted functions shared by all models, so a second model of the same
architecture and input shape compiles nothing), as a pair `(apply_fn(params, images),
params)`, or as a pure `apply_fn(images) -> logits` (jitted once per function object).

Protocols (all noise in [0, 1] pixel space, before any normalization; "balanced" = per-class
accuracy averaged over the classes present):
1. RIVAL10 RFS. Per trial one n ~ N(0, I) is shared by both versions:
   x_fg = clip(x + sigma m n, 0, 1), x_bg = clip(x + sigma (1 - m) n, 0, 1), m the binary mask.
   a_fg, a_bg = balanced accuracies (pooled over trials);
   RFS = (a_bg - a_fg) / (2 min(a, 1 - a)), a = (a_fg + a_bg) / 2; RFS = 0 when a is 0 or 1.
   Per sigma in {30, 60, ..., 210}/255 and a summary RFS from a_fg, a_bg averaged over the
   sigmas (not the mean of per-sigma RFS). l2 mode: the masked noise m n (resp. (1 - m) n) is
   rescaled to l2 norm E = sigma sqrt(l2_fraction H W 3) per image, the norm Gaussian-mode
   noise has on a region covering `l2_fraction` of the image, so both regions get equal energy.
2. Salient ImageNet. Soft core mask M: core_acc = balanced accuracy on
   clip(x + sigma (1 - M) n, 0, 1), spur_acc on clip(x + sigma M n, 0, 1), sigma = 0.25,
   `salient_trials` (>= 5) trials, one n shared per trial; RCS = (core_acc - spur_acc) /
   (2 min(a, 1 - a)) as for RFS. With a marker mask: `marker_noise_acc`, balanced accuracy
   with the same noise on the marker mask alone.
3. ImageNet-9: plain accuracy on each variant; BG-Gap = acc(mixed_same) - acc(mixed_rand).
4. Waterbirds: accuracy of each group g = 2 y + place, worst-group accuracy (min over the
   groups present), `wb_mean_acc` = plain mean over the test samples, and `wb_weighted_acc` =
   sum_g P_train(g) acc_g (the convention of Sagawa et al.) when training fractions are known.
5. ObjectNet-style: `shift_id_acc` (plain accuracy on `images`), `shift_acc` (on the shifted
   set), `shift_drop` = shift_id_acc - shift_acc and `shift_drop_rel` = shift_drop /
   shift_id_acc.

Missing metrics: a metric the evaluation set cannot support (no masks, no variants, ...) is
reported as `None` (never 0 and never NaN); the keys of `REQUIRED_KEYS` are always present.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from spurjax import evalset as evalset_lib
from spurjax import parallel

RFS_SIGMAS = tuple(s / 255.0 for s in range(30, 211, 30))
SALIENT_SIGMA = 0.25
REQUIRED_KEYS = ("clean_acc", "rfs", "core_acc", "spur_acc", "rcs", "bg_gap",
                 "worst_group_acc", "shift_drop")
NOISE_MODES = ("gaussian", "l2")
# RIVAL10's own noise protocol (mmoayeri/RIVAL10 compute_noise_robustness.py): "linf" mode is
# Gaussian noise of std eps / 255, eps in {30, ..., 210} (= RFS_SIGMAS, as intended; the
# official code divides by 255 twice, an effective std of eps / 65025, offered as
# RFS_SIGMAS_OFFICIAL); "l2" mode rescales each masked noise to l2 norm eps per image,
# eps in RFS_L2_RADII (mode "l2_abs" here; "l2" above is our energy-matched variant).
RFS_SIGMAS_OFFICIAL = tuple(s / 65025.0 for s in range(30, 211, 30))
RFS_L2_RADII = tuple(float(r) for r in range(25, 201, 25))
RFS_MODES = NOISE_MODES + ("l2_abs",)

ApplyFn = Callable[[jax.Array], jax.Array]


# --------------------------------------------------------------------------- formulas
def normalized_gap(a_hi: float, a_lo: float) -> float:
  """(a_hi - a_lo) / (2 min(a, 1 - a)) with a = (a_hi + a_lo) / 2; 0 when a is 0 or 1.

  This is RFS with (a_hi, a_lo) = (a_bg, a_fg) and RCS with (core_acc, spur_acc). The
  normalization makes the score span [-1, 1] at any mean accuracy a.
  """
  for name, v in (("a_hi", a_hi), ("a_lo", a_lo)):
    if not 0.0 <= float(v) <= 1.0:
      raise ValueError(f"{name}: accuracy must be in [0, 1], got {v}")
  a = 0.5 * (float(a_hi) + float(a_lo))
  denom = 2.0 * min(a, 1.0 - a)
  if denom <= 0.0:
    return 0.0
  return float((float(a_hi) - float(a_lo)) / denom)


def rfs_score(a_fg: float, a_bg: float) -> float:
  """Relative foreground sensitivity (a_bg - a_fg) / (2 min(a, 1 - a)), a = mean."""
  return normalized_gap(a_bg, a_fg)


def rcs_score(core_acc: float, spur_acc: float) -> float:
  """Relative core sensitivity (core_acc - spur_acc) / (2 min(a, 1 - a)), a = mean."""
  return normalized_gap(core_acc, spur_acc)


def balanced_accuracy(preds: Any, labels: Any, num_classes: int) -> float:
  """Per-class accuracy averaged over the classes present in `labels`.

  Args:
    preds: `(N,)` predicted classes.
    labels: `(N,)` true classes in [0, num_classes).
    num_classes: K.
  """
  preds, labels = np.asarray(preds), np.asarray(labels)
  if preds.shape != labels.shape or preds.ndim != 1:
    raise ValueError(f"preds/labels: expected equal (N,) shapes, got {preds.shape}, "
                     f"{labels.shape}")
  counter = _Counter(num_classes)
  counter.add(preds, labels)
  return counter.balanced()


def noisy_pair(noise: jax.Array, x: jax.Array, m: jax.Array, sigma: Any,
               mode: str = "gaussian", l2_fraction: float = 0.25
               ) -> tuple[jax.Array, jax.Array]:
  """Noise on the mask and noise off the mask, from the same draw `noise`.

  gaussian: x_in = clip(x + sigma m n, 0, 1), x_out = clip(x + sigma (1 - m) n, 0, 1).
  l2: the masked noises are rescaled to l2 norm E = sigma sqrt(l2_fraction H W C) per image
  (a region with no pixels gets no noise).

  Args:
    noise: `(B, H, W, C)` standard normal draw, shared by both outputs.
    x: `(B, H, W, C)` images in [0, 1].
    m: `(B, H, W)` mask in [0, 1] (binary or soft), broadcast over channels.
    sigma: scalar noise level (may be traced).
    mode: "gaussian", "l2" or "l2_abs" (static); "l2_abs": each masked noise is rescaled
      to l2 norm sigma per image (RIVAL10's official l2 mode, sigma in RFS_L2_RADII).
    l2_fraction: region fraction defining E in l2 mode.

  Returns:
    (x_in, x_out), both `(B, H, W, C)`: noise on m and noise on 1 - m.
  """
  if mode not in RFS_MODES:
    raise ValueError(f"mode: must be one of {RFS_MODES}, got {mode!r}")
  m = m[..., None]
  d_in, d_out = m * noise, (1.0 - m) * noise
  if mode == "gaussian":
    d_in, d_out = sigma * d_in, sigma * d_out
  else:
    energy = (sigma if mode == "l2_abs" else
              sigma * jnp.sqrt(l2_fraction * float(np.prod(x.shape[1:]))))

    def rescale(d):
      norm = jnp.sqrt(jnp.sum(d * d, axis=(1, 2, 3), keepdims=True))
      # Guard the empty region: 0 / 0 would be NaN; it gets no noise instead.
      safe = jnp.where(norm > 0, norm, 1.0)
      return jnp.where(norm > 0, d * (energy / safe), 0.0)

    d_in, d_out = rescale(d_in), rescale(d_out)
  return jnp.clip(x + d_in, 0.0, 1.0), jnp.clip(x + d_out, 0.0, 1.0)


def _sigma_key(sigmas: Sequence[float], i: int, mode: str) -> str:
  """Per-level key: "r025" (l2_abs radius), "s030" (sigma * 255), or, when sigma * 255
  values would collide (e.g. RFS_SIGMAS_OFFICIAL), "s030o" (sigma * 65025)."""
  if mode == "l2_abs":
    return f"r{round(float(sigmas[i])):03d}"
  keys = [round(float(s) * 255) for s in sigmas]
  if len(set(keys)) == len(keys):
    return f"s{keys[i]:03d}"
  return f"s{round(float(sigmas[i]) * 65025):03d}o"


# --------------------------------------------------------------------------- machinery
class _Counter:
  """Per-class correct/total counts, accumulated over batches."""

  def __init__(self, num_classes: int):
    self.k = int(num_classes)
    self.correct = np.zeros(self.k, np.int64)
    self.total = np.zeros(self.k, np.int64)

  def add(self, preds: np.ndarray, labels: np.ndarray) -> None:
    labels = np.asarray(labels).astype(np.int64)
    if labels.size and (labels.min() < 0 or labels.max() >= self.k):
      raise ValueError(f"labels: must be in [0, {self.k}), got range "
                       f"[{labels.min()}, {labels.max()}]")
    ok = (np.asarray(preds) == labels).astype(np.int64)
    self.correct += np.bincount(labels, weights=ok, minlength=self.k).astype(np.int64)
    self.total += np.bincount(labels, minlength=self.k)

  def plain(self) -> float:
    return float(self.correct.sum() / max(self.total.sum(), 1))

  def balanced(self) -> float:
    present = self.total > 0
    if not present.any():
      raise ValueError("labels: empty evaluation set")
    return float(np.mean(self.correct[present] / self.total[present]))


def _n(x: Any) -> int:
  return int(x.shape[0]) if hasattr(x, "shape") else len(x)


def _batches(batch_size: int, *arrays: Any):
  """`(start, m, *batches)` over `arrays` (equal leading size N, any array-like with slicing,
  lazy ones included): `parallel.padded_batches`' fixed-size, zero-padded batches as float32
  numpy, so one compilation serves all; a NaN or infinite entry raises ValueError naming the
  rows (checked per batch: lazy arrays stay lazy). Nothing is yielded when N = 0."""
  arrays = tuple(a if hasattr(a, "shape") else np.asarray(a) for a in arrays)
  for j, m, _, *parts in parallel.padded_batches(batch_size, *arrays):
    if m == 0:
      return
    start = j * batch_size
    out = []
    for field, part in zip(("images", "masks"), parts):
      a = np.asarray(part, dtype=np.float32)
      evalset_lib.check_finite(f"{field}[{start}:{start + m}]", a)
      out.append(a)
    yield (start, m, *out)


def _check_logits(logits: jax.Array, x: jax.Array) -> None:
  if logits.ndim != 2 or logits.shape[0] != x.shape[0]:
    raise ValueError(f"apply_fn: expected logits of shape (B, C), got {logits.shape}")


def _pair_preds(predict: Callable[[jax.Array], jax.Array], key: jax.Array, x: jax.Array,
                m: jax.Array, sigma: jax.Array, mode: str, l2_fraction: float):
  noise = jax.random.normal(key, x.shape, x.dtype)
  x_in, x_out = noisy_pair(noise, x, m, sigma, mode, l2_fraction)
  return predict(x_in), predict(x_out)


class _ParamFn:
  """Static (hashable) description of `logits = fn(params, images)` for the shared jits.

  Two NNX models of one architecture have equal graph definitions, hence equal `_ParamFn`s:
  the jit cache of `_predict_params` / `_pair_params` then serves both, and only the
  parameters (an argument) change.
  """

  def __init__(self, kind: str, obj: Any, class_map: evalset_lib.ClassMap | None = None):
    self.kind, self.obj, self.class_map = kind, obj, class_map

  def __call__(self, params: Any, x: jax.Array) -> jax.Array:
    if self.kind == "nnx":
      from flax import nnx
      logits = nnx.merge(self.obj, params)(x)
    else:
      logits = self.obj(params, x)
    return logits if self.class_map is None else self.class_map.scores(logits)

  def __eq__(self, other: Any) -> bool:
    return (isinstance(other, _ParamFn) and self.kind == other.kind
            and self.class_map is other.class_map
            and (self.obj == other.obj if self.kind == "nnx" else self.obj is other.obj))

  def __hash__(self) -> int:
    return hash((self.kind, self.obj if self.kind == "nnx" else id(self.obj),
                 id(self.class_map)))


@functools.partial(jax.jit, static_argnames="fn")
def _predict_params(fn: _ParamFn, params: Any, x: jax.Array) -> jax.Array:
  logits = fn(params, x)
  _check_logits(logits, x)
  return jnp.argmax(logits, axis=-1)


@functools.partial(jax.jit, static_argnames=("fn", "mode", "l2_fraction"))
def _pair_params(fn: _ParamFn, params: Any, key: jax.Array, x: jax.Array, m: jax.Array,
                 sigma: jax.Array, mode: str, l2_fraction: float):
  return _pair_preds(lambda z: _predict_params(fn, params, z), key, x, m, sigma, mode,
                     l2_fraction)


class _Model:
  """Prediction functions of one classifier, compiled once per input shape.

  A pure `apply_fn(images)` closes over its parameters, so it gets its own jitted functions
  (cached per function object by `_model_for`). An NNX model or an `(apply_fn(params,
  images), params)` pair goes through the module-level jits with the parameters as an
  argument: a second model of the same architecture and input shape compiles nothing.
  """

  def __init__(self, apply_fn: ApplyFn | None, l2_fraction: float,
               param_fn: _ParamFn | None = None, params: Any = None):
    self.apply_fn = apply_fn
    if param_fn is not None:
      self.predict = functools.partial(_predict_params, param_fn, params)
      self.pair = lambda key, x, m, sigma, mode: _pair_params(
          param_fn, params, key, x, m, sigma, mode=mode, l2_fraction=float(l2_fraction))
      return

    def predict(x):
      logits = apply_fn(x)
      _check_logits(logits, x)
      return jnp.argmax(logits, axis=-1)

    def pair(key, x, m, sigma, mode):
      return _pair_preds(predict, key, x, m, sigma, mode, l2_fraction)

    self.predict = jax.jit(predict)
    self.pair = jax.jit(pair, static_argnames="mode")


@functools.lru_cache(maxsize=4)
def _cached_model(apply_fn: ApplyFn, l2_fraction: float) -> _Model:
  return _Model(apply_fn, l2_fraction)


def _model_for(model: Any, l2_fraction: float,
               class_map: evalset_lib.ClassMap | None = None) -> _Model:
  """The `_Model` of a classifier given as an NNX module (its eval view), a pair
  `(apply_fn(params, images), params)` or a pure `apply_fn(images)`; with `class_map` its
  logits are mapped by `class_map.scores` before the arg-max.

  A pure apply_fn reuses its compiled functions when evaluated again (e.g. on several
  evaluation sets); the small cache keeps the last few classifiers alive.
  """
  from flax import nnx
  if isinstance(model, nnx.Module):
    from spurjax import models
    graphdef, state = nnx.split(models.eval_view(model))
    return _Model(None, l2_fraction, _ParamFn("nnx", graphdef, class_map), state)
  if isinstance(model, tuple) and len(model) == 2 and callable(model[0]):
    return _Model(None, l2_fraction, _ParamFn("fn", model[0], class_map), model[1])
  if not callable(model):
    raise ValueError("model: expected an nnx.Module, a callable apply_fn(images) -> logits "
                     f"or a pair (apply_fn(params, images), params), got {type(model)}")
  if class_map is not None:
    try:
      model = _mapped_apply(model, class_map)
    except TypeError:  # An unhashable apply_fn: map it without caching.
      model = (lambda f, cm: lambda x: cm.scores(f(x)))(model, class_map)
  try:
    hash(model)
  except TypeError:
    return _Model(model, l2_fraction)
  return _cached_model(model, l2_fraction)


@functools.lru_cache(maxsize=4)
def _mapped_apply(apply_fn: ApplyFn, class_map: evalset_lib.ClassMap) -> ApplyFn:
  """`apply_fn` followed by `class_map.scores`: `(B, H, W, 3) -> (B, K + 1)` scores whose
  arg-max is the mapped prediction (cached so the compiled model is reused)."""
  return lambda x: class_map.scores(apply_fn(x))


def _predict_all(model: _Model, images: Any, batch_size: int) -> np.ndarray:
  out = np.empty(_n(images), np.int64)
  for start, m, x in _batches(batch_size, images):
    out[start:start + m] = np.asarray(model.predict(x))[:m]
  return out


def predictions(model: Any, images: Any, *, batch_size: int = 250) -> np.ndarray:
  """Predicted classes argmax_c f(x)_c of a classifier (any form of the module docstring).

  Args:
    model: NNX model, `(apply_fn(params, images), params)` or pure `apply_fn(images)`.
    images: `(N, H, W, 3)` in [0, 1].
    batch_size: evaluation batch size (the last batch is zero-padded: one compilation).

  Returns:
    `(N,)` int64 predicted classes.
  """
  _check_batch_size(batch_size)
  return _predict_all(_model_for(model, 0.25), images, min(batch_size, max(_n(images), 1)))


def _pair_counters(key: jax.Array, model: _Model, images: Any, labels: np.ndarray,
                   masks: Any, num_classes: int, sigma: float, mode: str, trials: int,
                   batch_size: int, per_image: list | None = None
                   ) -> tuple[_Counter, _Counter]:
  """Counts for noise on the mask (first) and off the mask (second), pooled over trials.

  With `per_image` (a list), appends the `(N,)` int64 numbers of correct trials per image
  for noise on the mask and off the mask.
  """
  c_in, c_out = _Counter(num_classes), _Counter(num_classes)
  n = _n(images)
  k_in, k_out = np.zeros(n, np.int64), np.zeros(n, np.int64)
  for t in range(trials):
    for start, valid, x, m in _batches(batch_size, images, masks):
      k = jax.random.fold_in(jax.random.fold_in(key, t), start // batch_size)
      p_in, p_out = model.pair(k, x, m, jnp.float32(sigma), mode)
      p_in, p_out = np.asarray(p_in)[:valid], np.asarray(p_out)[:valid]
      lab = labels[start:start + valid]
      c_in.add(p_in, lab)
      c_out.add(p_out, lab)
      k_in[start:start + valid] += p_in == lab
      k_out[start:start + valid] += p_out == lab
  if per_image is not None:
    per_image.extend([k_in, k_out])
  return c_in, c_out


def _check_batch_size(batch_size: int) -> None:
  if not isinstance(batch_size, int) or batch_size < 1:
    raise ValueError(f"batch_size: must be a positive int, got {batch_size!r}")


def _labels(labels: Any, n: int, field: str) -> np.ndarray:
  lab = np.asarray(labels).astype(np.int64)
  if lab.shape != (n,):
    raise ValueError(f"{field}: expected shape ({n},), got {lab.shape}")
  return lab


# --------------------------------------------------------------------------- protocols
def clean_accuracy(apply_fn: ApplyFn, images: Any, labels: Any, num_classes: int, *,
                   batch_size: int = 250, _model: _Model | None = None) -> dict[str, float]:
  """Plain and balanced accuracy on `images` `(N, H, W, 3)` with `labels` `(N,)`.

  Returns:
    {"clean_acc": plain accuracy, "clean_bal_acc": balanced accuracy}.
  """
  _check_batch_size(batch_size)
  model = _model or _model_for(apply_fn, 0.25)
  lab = _labels(labels, _n(images), "labels")
  c = _Counter(num_classes)
  c.add(_predict_all(model, images, batch_size), lab)
  return {"clean_acc": c.plain(), "clean_bal_acc": c.balanced()}


def rfs(key: jax.Array, apply_fn: ApplyFn, images: Any, labels: Any, masks: Any,
        num_classes: int, *, sigmas: Sequence[float] = RFS_SIGMAS, trials: int = 1,
        mode: str = "gaussian", l2_fraction: float = 0.25, batch_size: int = 250,
        _model: _Model | None = None, _records: dict | None = None) -> dict[str, float]:
  """RIVAL10 relative foreground sensitivity (protocol 1 of the module docstring).

  Args:
    key: PRNG key; the noise of (sigma index i, trial t, batch b) is drawn from
      fold_in(fold_in(fold_in(key, i), t), b), identical in both modes.
    apply_fn: the classifier, in any form of the module docstring.
    images: `(N, H, W, 3)` in [0, 1]; labels: `(N,)`; masks: `(N, H, W)` binary.
    num_classes: K.
    sigmas: noise levels (default {30, ..., 210}/255).
    trials: noise draws per sigma.
    mode: "gaussian", "l2" or "l2_abs" (see `noisy_pair`; RIVAL10's official modes are
      "gaussian" with RFS_SIGMAS (or RFS_SIGMAS_OFFICIAL) and "l2_abs" with RFS_L2_RADII).
    l2_fraction: defines the l2-mode energy (see `noisy_pair`).
    batch_size: evaluation batch size.

  Returns:
    Keys (prefix `rfs` for gaussian, `rfs_l2` for l2, `rfs_l2abs` for l2_abs): `<p>`
    summary RFS, `<p>_a_fg`, `<p>_a_bg` (averaged over sigmas) and one per level:
    `<p>_s030`, ... (sigma * 255, rounded; `_s030o` = sigma * 65025 for
    RFS_SIGMAS_OFFICIAL) or `<p>_r025`, ... (l2_abs radius).
  """
  _check_batch_size(batch_size)
  if mode not in RFS_MODES:
    raise ValueError(f"mode: must be one of {RFS_MODES}, got {mode!r}")
  if not isinstance(trials, int) or trials < 1:
    raise ValueError(f"trials: must be a positive int, got {trials!r}")
  if not sigmas or any(float(s) < 0 for s in sigmas):
    raise ValueError(f"sigmas: must be a non-empty list of non-negative levels, got {sigmas}")
  model = _model or _model_for(apply_fn, float(l2_fraction))
  n = _n(images)
  lab = _labels(labels, n, "labels")
  if evalset_lib._shape(masks) != evalset_lib._shape(images)[:3]:
    raise ValueError(f"masks: expected shape {evalset_lib._shape(images)[:3]}, got "
                     f"{evalset_lib._shape(masks)}")
  prefix = {"gaussian": "rfs", "l2": "rfs_l2", "l2_abs": "rfs_l2abs"}[mode]
  out, a_fg, a_bg = {}, [], []
  per_image: list = []
  for i, sigma in enumerate(sigmas):
    c_fg, c_bg = _pair_counters(jax.random.fold_in(key, i), model, images, lab, masks,
                                num_classes, float(sigma), mode, trials, batch_size, per_image)
    a_fg.append(c_fg.balanced())
    a_bg.append(c_bg.balanced())
    out[f"{prefix}_{_sigma_key(sigmas, i, mode)}"] = rfs_score(a_fg[-1], a_bg[-1])
  out[f"{prefix}_a_fg"] = float(np.mean(a_fg))
  out[f"{prefix}_a_bg"] = float(np.mean(a_bg))
  out[prefix] = rfs_score(out[f"{prefix}_a_fg"], out[f"{prefix}_a_bg"])
  if _records is not None:
    _records[f"{prefix}_fg"] = np.stack(per_image[0::2])
    _records[f"{prefix}_bg"] = np.stack(per_image[1::2])
    _records[f"{prefix}_trials"] = np.asarray(trials)
  return out


def salient(key: jax.Array, apply_fn: ApplyFn, images: Any, labels: Any, soft_masks: Any,
            num_classes: int, *, sigma: float = SALIENT_SIGMA, trials: int = 5,
            marker_masks: Any = None, batch_size: int = 250,
            _model: _Model | None = None, _records: dict | None = None
            ) -> dict[str, float | None]:
  """Salient-ImageNet core and spurious accuracy and RCS (protocol 2).

  Args:
    key: PRNG key (trial t, batch b use fold_in(fold_in(key, t), b)).
    apply_fn: classifier.
    images: `(N, H, W, 3)`; labels: `(N,)`; soft_masks: `(N, H, W)` core masks in [0, 1].
    num_classes: K.
    sigma: noise level (0.25).
    trials: noise draws, >= 5.
    marker_masks: optional `(N, H, W)` binary marker masks.
    batch_size: evaluation batch size.

  Returns:
    {"core_acc", "spur_acc", "rcs", "marker_noise_acc"} (the last None without markers).
  """
  _check_batch_size(batch_size)
  if not isinstance(trials, int) or trials < 5:
    raise ValueError(f"trials: the protocol needs at least 5 trials, got {trials!r}")
  if float(sigma) <= 0:
    raise ValueError(f"sigma: must be positive, got {sigma}")
  model = _model or _model_for(apply_fn, 0.25)
  n = _n(images)
  lab = _labels(labels, n, "labels")
  k_core, k_marker = jax.random.split(key)
  per_image: list = []
  c_spur, c_core = _pair_counters(k_core, model, images, lab, soft_masks, num_classes,
                                  float(sigma), "gaussian", trials, batch_size, per_image)
  if _records is not None:
    _records["salient_spur"], _records["salient_core"] = per_image
    _records["salient_trials"] = np.asarray(trials)
  out: dict[str, float | None] = {"core_acc": c_core.balanced(), "spur_acc": c_spur.balanced()}
  out["rcs"] = rcs_score(out["core_acc"], out["spur_acc"])
  out["marker_noise_acc"] = None
  if marker_masks is not None:
    c_marker, _ = _pair_counters(k_marker, model, images, lab, marker_masks, num_classes,
                                 float(sigma), "gaussian", trials, batch_size)
    out["marker_noise_acc"] = c_marker.balanced()
  return out


def in9(apply_fn: ApplyFn, variants: Mapping[str, evalset_lib.Variant], num_classes: int, *,
        batch_size: int = 250, _model: _Model | None = None,
        _records: dict | None = None) -> dict[str, float | None]:
  """ImageNet-9 accuracies per variant and BG-Gap (protocol 3).

  Returns:
    {"acc_<variant>": plain accuracy for each variant given, "bg_gap": acc_mixed_same -
    acc_mixed_rand (None unless both are given)}.
  """
  _check_batch_size(batch_size)
  model = _model or _model_for(apply_fn, 0.25)
  out: dict[str, float | None] = {}
  for name in evalset_lib.IN9_VARIANTS:
    if name not in variants:
      continue
    v = variants[name]
    c = _Counter(num_classes)
    preds = _predict_all(model, v.images, batch_size)
    lab = _labels(v.labels, _n(v.images), f"variants[{name!r}].labels")
    c.add(preds, lab)
    out[f"acc_{name}"] = c.plain()
    if _records is not None:
      _records[f"in9_{name}"] = preds == lab
  out["bg_gap"] = (out["acc_mixed_same"] - out["acc_mixed_rand"]
                   if "acc_mixed_same" in out and "acc_mixed_rand" in out else None)
  return out


def group_accuracy(apply_fn: ApplyFn, groups: evalset_lib.GroupSplit, *,
                   batch_size: int = 250, _model: _Model | None = None,
                   _records: dict | None = None) -> dict[str, float | None]:
  """Waterbirds group accuracies (protocol 4); y_pred = label_map[argmax logits].

  Returns:
    {"wb_acc_g0".."wb_acc_g3" (None for an absent group), "worst_group_acc" (min over present
    groups), "wb_mean_acc" (plain mean over test samples), "wb_weighted_acc" (sum_g
    P_train(g) acc_g; None without training fractions or with an absent group)}.
  """
  _check_batch_size(batch_size)
  model = _model or _model_for(apply_fn, 0.25)
  n = _n(groups.images)
  y = _labels(groups.labels, n, "groups.labels")
  place = _labels(groups.places, n, "groups.places")
  preds = _predict_all(model, groups.images, batch_size)
  if groups.label_map is not None:
    lm = np.asarray(groups.label_map).astype(np.int64)
    if preds.size and preds.max() >= lm.shape[0]:
      raise ValueError(f"groups.label_map: has {lm.shape[0]} entries but the classifier "
                       f"predicted class {preds.max()}")
    preds = lm[preds]
  correct = preds == y
  g = 2 * y + place
  if _records is not None:
    _records["wb_correct"], _records["wb_groups"] = correct, g
  out: dict[str, float | None] = {}
  accs = []
  for gi in range(4):
    sel = g == gi
    out[f"wb_acc_g{gi}"] = float(correct[sel].mean()) if sel.any() else None
    if sel.any():
      accs.append(out[f"wb_acc_g{gi}"])
  out["worst_group_acc"] = float(min(accs)) if accs else None
  out["wb_mean_acc"] = float(correct.mean()) if n else None
  out["wb_weighted_acc"] = None
  if groups.train_group_fractions is not None and len(accs) == 4:
    f = np.asarray(groups.train_group_fractions, np.float64)
    out["wb_weighted_acc"] = float(sum(f[i] * out[f"wb_acc_g{i}"] for i in range(4)))
  return out


def shift_accuracy(apply_fn: ApplyFn, images: Any, labels: Any,
                   shifted: evalset_lib.ShiftSplit, num_classes: int, *,
                   batch_size: int = 250, _model: _Model | None = None,
                   _records: dict | None = None) -> dict[str, float | None]:
  """ObjectNet-style accuracy drop (protocol 5), plain accuracies.

  Returns:
    {"shift_id_acc", "shift_acc", "shift_drop" = id - shifted, "shift_drop_rel" =
    drop / id (None when id accuracy is 0)}.
  """
  _check_batch_size(batch_size)
  model = _model or _model_for(apply_fn, 0.25)
  c_id, c_sh = _Counter(num_classes), _Counter(num_classes)
  c_id.add(_predict_all(model, images, batch_size), _labels(labels, _n(images), "labels"))
  sh_preds = _predict_all(model, shifted.images, batch_size)
  sh_labels = _labels(shifted.labels, _n(shifted.images), "shifted.labels")
  c_sh.add(sh_preds, sh_labels)
  if _records is not None:
    _records["shift_correct"] = sh_preds == sh_labels
  a_id, a_sh = c_id.plain(), c_sh.plain()
  return {"shift_id_acc": a_id, "shift_acc": a_sh, "shift_drop": a_id - a_sh,
          "shift_drop_rel": (a_id - a_sh) / a_id if a_id > 0 else None}


def evaluate(key: jax.Array, model: Any, data: evalset_lib.EvalSet, *,
             batch_size: int = 250, sigmas: Sequence[float] = RFS_SIGMAS,
             rfs_trials: int = 1, rfs_modes: Sequence[str] = NOISE_MODES,
             l2_fraction: float = 0.25, salient_sigma: float = SALIENT_SIGMA,
             salient_trials: int = 5, return_records: bool = False):
  """Runs every protocol that `data` supports and returns one flat dict of metrics.

  Protocols and formulas: see the module docstring. Each protocol runs when its inputs are
  present: RFS needs `data.masks`, Salient needs `data.soft_masks`, ImageNet-9 needs
  `data.variants`, Waterbirds needs `data.groups`, the shift needs `data.shifted`. Metrics of
  protocols that cannot run are `None`; the keys of `REQUIRED_KEYS` are always present.

  Args:
    key: PRNG key for the noise of RFS and Salient.
    model: the classifier, one of
      * an `nnx.Module` (evaluated in its eval view): its parameters are passed to jitted
        functions shared by every model, so a second model of the same architecture and
        input shape compiles nothing;
      * a pair `(apply_fn(params, images) -> logits, params)`: the same, for any pure
        function (compiles once per function object and input shape);
      * a pure `apply_fn(images) -> logits` `(B, H, W, 3) -> (B, C)` (closing over its
        parameters): jitted once per function object and input shape.
    data: an `EvalSet` (from `spurjax.data.make_eval_set` or a `spurjax.loaders` loader);
      with `data.class_map`, the model returns its own C logits (e.g. 1000) and every
      protocol scores their mapping to the K classes (`evalset.ClassMap`).
    batch_size: evaluation batch size (the last batch is zero-padded, so one compilation).
    sigmas: RFS noise levels.
    rfs_trials: RFS noise draws per sigma.
    rfs_modes: subset of ("gaussian", "l2").
    l2_fraction: l2-mode energy fraction.
    salient_sigma: Salient noise level (0.25).
    salient_trials: Salient noise draws (>= 5).
    return_records: also return the per-image records (see `Returns`).

  Returns:
    Flat dict str -> float or None: clean_acc, clean_bal_acc; rfs, rfs_a_fg, rfs_a_bg,
    rfs_s030..rfs_s210 (and the rfs_l2* twins); core_acc, spur_acc, rcs, marker_noise_acc;
    acc_<variant> for the eight variants, bg_gap; wb_acc_g0..3, worst_group_acc, wb_mean_acc,
    wb_weighted_acc; shift_id_acc, shift_acc, shift_drop, shift_drop_rel.
    With `return_records`, the pair (metrics, records): records maps to numpy arrays of
    per-image outcomes, from which `spurjax.intervals.metrics_from_records` recomputes the
    metrics exactly (and on resampled images, for a bootstrap): "labels" `(N,)`, "clean"
    `(N,)` bool; "rfs_fg" / "rfs_bg" `(L, N)` correct trials per RFS level and image (and
    "rfs_l2_*"), "rfs_trials"; "salient_core" / "salient_spur" `(N,)` correct trials,
    "salient_trials"; "in9_<variant>" `(N_v,)` bool; "wb_correct", "wb_groups" `(M,)`;
    "shift_correct" `(M',)` bool.
  """
  if not isinstance(data, evalset_lib.EvalSet):
    raise ValueError(f"data: expected an EvalSet, got {type(data)}")
  for m in rfs_modes:
    if m not in RFS_MODES:
      raise ValueError(f"rfs_modes: unknown mode {m!r}; known: {RFS_MODES}")
  _check_batch_size(batch_size)
  sizes = [len(data)] + [_n(v.images) for v in (data.variants or {}).values()] + [
      _n(p.images) for p in (data.groups, data.shifted) if p is not None]
  batch_size = min(batch_size, max(sizes))  # No padding beyond the largest part.
  # The one hook for class maps: every protocol scores the mapped predictions, in which K
  # ("no benchmark class") is always wrong.
  clf = _model_for(model, float(l2_fraction), data.class_map)
  apply_fn = clf.apply_fn
  k = data.num_classes
  k_rfs, k_sal = jax.random.split(key)
  out: dict[str, float | None] = {name: None for name in REQUIRED_KEYS}
  rec = {} if return_records else None
  out.update(clean_accuracy(apply_fn, data.images, data.labels, k, batch_size=batch_size,
                            _model=clf))
  if rec is not None:
    rec["labels"] = _labels(data.labels, len(data), "labels")
    rec["clean"] = _predict_all(clf, data.images, batch_size) == rec["labels"]
  if data.masks is not None:
    for mode in rfs_modes:
      out.update(rfs(k_rfs, apply_fn, data.images, data.labels, data.masks, k, sigmas=sigmas,
                     trials=rfs_trials, mode=mode, l2_fraction=l2_fraction,
                     batch_size=batch_size, _model=clf, _records=rec))
  if data.soft_masks is not None:
    out.update(salient(k_sal, apply_fn, data.images, data.labels, data.soft_masks, k,
                       sigma=salient_sigma, trials=salient_trials,
                       marker_masks=data.marker_masks, batch_size=batch_size, _model=clf,
                       _records=rec))
  if data.variants is not None:
    out.update(in9(apply_fn, data.variants, k, batch_size=batch_size, _model=clf,
                   _records=rec))
  if data.groups is not None:
    out.update(group_accuracy(apply_fn, data.groups, batch_size=batch_size, _model=clf,
                              _records=rec))
  if data.shifted is not None:
    out.update(shift_accuracy(apply_fn, data.images, data.labels, data.shifted, k,
                              batch_size=batch_size, _model=clf, _records=rec))
  return (out, rec) if return_records else out

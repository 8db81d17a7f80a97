r"""The study's table for pretrained ImageNet models: five benchmarks and robust accuracy.

For every model (torch checkpoints named like robust-models-transfer's, or listed in a CSV)
and every benchmark given on the command line:
- `imagenet` (`--imagenet`, its `val/` folder: the 1000 class folders of ImageNet-1k val,
  class index = sorted folder order, resize 256 + center-crop 224): `clean_acc` and robust
  accuracy at one radius per norm of `attack_norms` with `pgd_steps`-step PGD
  (`pgd_acc_<norm>`, random start, cross-entropy, default step schedule) and AutoAttack
  (`aa_acc_<norm>`, `spurjax.attacks.autoattack`; `aa_version` "standard" = APGD-CE,
  APGD-T, FAB-T, Square, "fast" = APGD-CE and APGD-T, "none" skips it), on `n_robust`
  images. AutoAttack is the robust accuracy to report; PGD is kept as its own column;
- `in9` (`--in9`): ImageNet-9 variant accuracies and BG-Gap, 1000 logits scored through
  `in_to_in9` (the loader's mapping);
- `salient` (`--salient_masks` + `--imagenet` (`train/`), `--salient_annotations`): core and
  spurious accuracy and RCS with the 1000 logits;
- `objectnet` (`--objectnet`, with `--imagenet` val as the in-distribution reference when
  given): the accuracy drop, 1000 logits projected onto ObjectNet's 113 classes;
- `waterbirds` (`--waterbirds`) and `rival10` (`--rival10`): a linear probe on the frozen
  pooled features (`spurjax.probe.fit_probe`), fitted once per model on the benchmark's
  train split (Waterbirds split 0, RIVAL10 train) and cached; then worst-group accuracy
  (Waterbirds) and RFS in Gaussian and l2 mode (RIVAL10) of backbone + probe.
All protocols are `spurjax.reliance.evaluate` (formulas in its docstring).

  python -m sims.pretrained_reliance --checkpoints='models/*.ckpt' --in9=DIR \
      --waterbirds=DIR --rival10=DIR --salient_masks=DIR --imagenet=DIR \
      --salient_annotations=FILE --objectnet=DIR --workdir=results/pretrained

Models: `--checkpoints` is a glob of files named `{arch}_{l2|linf}_eps{eps}.{ckpt,pt,pth,
pth.tar,safetensors}` (l_inf eps in units of 1/255, as published); `--models_csv` a CSV
with columns path, arch, norm (l2, linf or none), eps (same units) and source (paths relative
to the CSV's folder). Eps is stored in pixel units in `reliance.csv` (l_inf eps / 255).

Outputs in --workdir: reliance.csv (one row per model: model, arch, norm, eps, eps_label,
source, then the metric columns of `sims.background_reliance` and the extra columns below;
a benchmark not given leaves its columns empty), reliance.md, reliance.png (one panel per
metric against the training radius, one line per norm and architecture, eps-0 models as
horizontal lines), manifest.json. Resumable per (model, benchmark): each item's metrics go
to `results/<model>/<benchmark>.json` atomically together with the settings that produced
them; a rerun evaluates only missing or stale items. Converted models are cached with
`spurjax.pretrained.save` under `converted/`, probe heads under `probes/`.
"""

from __future__ import annotations

import dataclasses
import glob as glob_lib
import json
import os
import re
import time
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from sims import _common
from spurjax import norms as norms_lib

BENCHMARKS = ("imagenet", "in9", "salient", "objectnet", "waterbirds", "rival10")
ATTACK_NORMS = norms_lib.NORMS
CHECKPOINT_EXTENSIONS = (".pth.tar", ".ckpt", ".pt", ".pth", ".safetensors")
# The architectures that spurjax builds (`spurjax.imagenet_models.IMAGENET_ARCHS`).
KNOWN_ARCHS = ("resnet18", "resnet34", "resnet50", "resnet101", "wide_resnet50_2",
               "wide_resnet50_4")
NAME_RE = re.compile(r"^(?P<arch>[a-z0-9_]+?)_(?P<norm>l2|linf)_eps(?P<eps>\d+(?:\.\d+)?)$")
MODELS_CSV_COLUMNS = ("path", "arch", "norm", "eps", "source")

# The columns of sims.background_reliance (METRICS + EXTRA), in its order.
METRICS = ("clean_acc", "pgd_acc_l1", "pgd_acc_l2", "pgd_acc_linf", "aa_acc_l1", "aa_acc_l2",
           "aa_acc_linf", "rfs", "core_acc", "spur_acc", "rcs", "bg_gap", "worst_group_acc",
           "shift_drop")
EXTRA = ("uncorr_acc", "rfs_l2", "rfs_a_fg", "rfs_a_bg", "acc_only_fg", "acc_only_bg_t",
         "acc_no_fg", "acc_mixed_same", "acc_mixed_rand", "acc_mixed_next", "wb_mean_acc",
         "shift_id_acc", "shift_acc")
# Columns of this sim only.
OWN = ("acc_original", "acc_only_bg_b",
       "wb_acc_g0", "wb_acc_g1", "wb_acc_g2", "wb_acc_g3", "rival10_acc", "waterbirds_acc",
       "shift_drop_rel")
FIELDS = ("model", "arch", "norm", "eps", "eps_label", "source") + METRICS + EXTRA + OWN

# Which benchmark owns which column (only these are taken from its evaluation).
OWNED = {
    "imagenet": ("clean_acc", "pgd_acc_l1", "pgd_acc_l2", "pgd_acc_linf", "aa_acc_l1",
                 "aa_acc_l2", "aa_acc_linf"),
    "in9": ("acc_original", "acc_only_fg", "acc_no_fg", "acc_only_bg_b", "acc_only_bg_t",
            "acc_mixed_same", "acc_mixed_rand", "acc_mixed_next", "bg_gap"),
    "salient": ("core_acc", "spur_acc", "rcs"),
    "objectnet": ("shift_id_acc", "shift_acc", "shift_drop", "shift_drop_rel"),
    "waterbirds": ("worst_group_acc", "wb_mean_acc", "wb_acc_g0", "wb_acc_g1", "wb_acc_g2",
                   "wb_acc_g3", "waterbirds_acc"),
    "rival10": ("rfs", "rfs_l2", "rfs_a_fg", "rfs_a_bg", "rival10_acc"),
}
# The EvalSet parts each benchmark's protocol reads (the others are dropped, so that e.g.
# ImageNet-9's foreground masks do not start an RFS run that no column reports).
PARTS = {"imagenet": (), "in9": ("variants",), "salient": ("soft_masks", "marker_masks"),
         "objectnet": ("shifted",), "waterbirds": ("groups",), "rival10": ("masks",)}
OPTIONAL_PARTS = ("masks", "soft_masks", "boxes", "marker_masks", "variants",
                  "variant_sources", "groups", "shifted")
# Probe benchmarks: (train split, eval split, number of classes).
PROBES = {"waterbirds": (0, 2, 2), "rival10": ("train", "test", 10)}

PANELS = ("clean_acc", "pgd_acc_l2", "pgd_acc_linf", "aa_acc_l2", "aa_acc_linf", "rfs",
          "core_acc", "spur_acc", "rcs", "bg_gap", "worst_group_acc", "shift_drop")
TITLES = {"clean_acc": "clean accuracy (ImageNet val)",
          "pgd_acc_l2": r"PGD accuracy, $\ell_2$", "pgd_acc_linf": r"PGD accuracy, $\ell_\infty$",
          "aa_acc_l2": r"AutoAttack accuracy, $\ell_2$",
          "aa_acc_linf": r"AutoAttack accuracy, $\ell_\infty$",
          "rfs": "RFS (RIVAL10; + = fg)", "core_acc": "core accuracy (Salient)",
          "spur_acc": "spurious accuracy (Salient)", "rcs": "RCS (Salient; + = core)",
          "bg_gap": "BG-Gap (ImageNet-9; + = bg)",
          "worst_group_acc": "worst-group acc. (Waterbirds)",
          "shift_drop": "accuracy drop (ObjectNet)"}

_DEFAULT = dict(batch_size=64, max_images=0, max_train=0, n_robust=500, pgd_steps=20,
                attack_norms=["l2", "linf"], eps_eval_l1=75.0, eps_eval_l2=3.0,
                eps_eval_linf=4.0, aa_version="standard", rfs_sigmas=[],
                rfs_modes=["gaussian", "l2"], salient_trials=5, probe_l2=[], eval_seed=1234)
PRESETS = {"default": _DEFAULT,
           "small": dict(_DEFAULT, batch_size=8, max_images=8, max_train=16, n_robust=4,
                         pgd_steps=2, attack_norms=["linf"], aa_version="fast",
                         rfs_sigmas=[90.0, 180.0], rfs_modes=["gaussian"], probe_l2=[0.001])}
# The list settings and their item type. Configs written before these were list flags hold
# comma strings ("l2,linf", "90,180", ""): `canonical_config` reads both forms alike, so
# their workdirs resume.
LIST_SETTINGS = {"attack_norms": str, "rfs_modes": str, "rfs_sigmas": float, "probe_l2": float}
RFS_MODES = ("gaussian", "l2")
CONFIG_FLAGS = tuple(_DEFAULT)
PATH_FLAGS = ("checkpoints", "models_csv", "in9", "waterbirds", "rival10", "salient_masks",
              "imagenet", "salient_annotations", "objectnet")


# --------------------------------------------------------------------------- models
@dataclasses.dataclass(frozen=True)
class ModelEntry:
  """One model to evaluate: checkpoint `path`, `arch`, training `norm` ("l2", "linf" or
  "none"), training radius `eps` in pixel units (l_inf: published value / 255), the
  published spelling `eps_label` and where the weights come from (`source`)."""
  name: str
  path: str
  arch: str
  norm: str
  eps: float
  eps_label: str
  source: str


def _stem(path: str) -> str:
  base = os.path.basename(path)
  for ext in CHECKPOINT_EXTENSIONS:
    if base.lower().endswith(ext):
      return base[:-len(ext)]
  raise ValueError(f"{path}: not a checkpoint name (extensions: "
                   f"{', '.join(CHECKPOINT_EXTENSIONS)})")


def _eps(norm: str, value: str, where: str) -> tuple[float, str]:
  try:
    v = float(value)
  except ValueError:
    raise ValueError(f"{where}: eps {value!r} is not a number") from None
  if not np.isfinite(v) or v < 0:
    raise ValueError(f"{where}: eps must be a finite number >= 0, got {value!r}")
  if norm == "linf":
    return norms_lib.pixel_radius(norm, v), f"{value}/255"
  return v, ("0" if norm == "none" else value)


def parse_checkpoint_name(path: str) -> tuple[str, str, float]:
  """(arch, norm, eps) from a robust-models-transfer file name `{arch}_{norm}_eps{eps}.ckpt`.

  l2 radii are in pixel units of [0, 1] images (`resnet50_l2_eps3.ckpt`: eps 3.0); l_inf
  radii are published in units of 1/255 (`resnet18_linf_eps4.0.ckpt`: eps 4/255).

  Raises:
    ValueError naming the file when the name does not follow the pattern or names an
    architecture spurjax does not build (`KNOWN_ARCHS`).
  """
  stem = _stem(path)
  m = NAME_RE.match(stem)
  if not m:
    raise ValueError(f"{path}: name does not read as {{arch}}_{{l2|linf}}_eps{{eps}} "
                     "(e.g. resnet50_l2_eps3.ckpt, resnet18_linf_eps4.0.ckpt)")
  if m["arch"] not in KNOWN_ARCHS:
    raise ValueError(f"{path}: unknown arch {m['arch']!r}; spurjax builds {KNOWN_ARCHS}")
  eps, _ = _eps(m["norm"], m["eps"], path)
  return m["arch"], m["norm"], eps


def _unique(name: str, taken: set) -> str:
  out, i = name, 1
  while out in taken:
    i += 1
    out = f"{name}_{i}"
  taken.add(out)
  return out


def list_models(checkpoints: str | None, models_csv: str | None) -> list[ModelEntry]:
  """The models named by a checkpoint glob and/or a models CSV (module docstring).

  Raises:
    ValueError naming the file or CSV row for a bad name, a missing column, an unknown
    norm or arch, a bad eps or a missing checkpoint; when no model is found.
  """
  out: list[ModelEntry] = []
  taken: set = set()
  if checkpoints:
    paths = sorted(glob_lib.glob(os.path.expanduser(checkpoints)))
    if not paths:
      raise ValueError(f"--checkpoints: no file matches {checkpoints!r}")
    for p in paths:
      arch, norm, eps = parse_checkpoint_name(p)
      label = _eps(norm, NAME_RE.match(_stem(p))["eps"], p)[1]
      out.append(ModelEntry(_unique(_stem(p), taken), os.path.abspath(p), arch, norm, eps,
                            label, "robust-models-transfer"))
  if models_csv:
    if not os.path.isfile(models_csv):
      raise ValueError(f"--models_csv: file not found: {models_csv}")
    import csv
    with open(models_csv, newline="") as f:
      reader = csv.DictReader(f)
      missing = [c for c in MODELS_CSV_COLUMNS if c not in (reader.fieldnames or ())]
      if missing:
        raise ValueError(f"{models_csv}: missing column(s) {missing}; needs "
                         f"{MODELS_CSV_COLUMNS}")
      base = os.path.dirname(os.path.abspath(models_csv))
      for i, r in enumerate(reader, start=2):
        where = f"{models_csv} line {i}"
        norm = r["norm"].strip()
        if norm not in ("l2", "linf", "none"):
          raise ValueError(f"{where}: norm must be l2, linf or none, got {norm!r}")
        arch = r["arch"].strip()
        if arch not in KNOWN_ARCHS:
          raise ValueError(f"{where}: unknown arch {arch!r}; spurjax builds {KNOWN_ARCHS}")
        eps, label = _eps(norm, r["eps"].strip(), where)
        if norm == "none" and eps != 0:
          raise ValueError(f"{where}: norm none needs eps 0, got {r['eps']!r}")
        path = os.path.join(base, os.path.expanduser(r["path"].strip()))
        if not os.path.isfile(path):
          raise ValueError(f"{where}: checkpoint not found: {path}")
        out.append(ModelEntry(_unique(_stem(path), taken), os.path.abspath(path), arch,
                              norm, eps, label, r["source"].strip() or "models_csv"))
  if not out:
    raise ValueError("no model: give --checkpoints and/or --models_csv")
  return out


def _file_id(path: str) -> dict[str, Any]:
  """Identity of a file for cache keys: absolute path, size and modification time."""
  st = os.stat(path)
  return {"path": os.path.abspath(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


# --------------------------------------------------------------------------- backend
class Backend:
  """The spurjax pieces the sim calls; tests substitute their own.

  A "model" is whatever `load_model` returns; `logits_fn(model)` gives a pure function
  `(B, H, W, 3) -> (B, 1000)` and `features_fn(model)` `(B, H, W, 3) -> (B, D)`.
  """

  def load_model(self, entry: ModelEntry, cache_dir: str):
    """`spurjax.pretrained.load` once, then the converted copy (`pretrained.save`)."""
    from spurjax import io
    from spurjax import pretrained
    converted = os.path.join(cache_dir, entry.name + ".safetensors")
    sidecar = converted + ".json"
    ident = {"source": _file_id(entry.path), "arch": entry.arch}
    if os.path.exists(sidecar) and os.path.exists(converted):
      with open(sidecar) as f:
        if json.load(f) == json.loads(json.dumps(ident)):
          return pretrained.load(converted, entry.arch)
    model = pretrained.load(entry.path, entry.arch)
    pretrained.save(model, converted)
    io.write_json(sidecar, ident)
    return model

  def logits_fn(self, model) -> Callable:
    from flax import nnx
    graphdef, state = nnx.split(model)
    return lambda x: nnx.merge(graphdef, state)(x)

  def features_fn(self, model) -> Callable:
    from flax import nnx
    graphdef, state = nnx.split(model)
    return lambda x: nnx.merge(graphdef, state).features(x)

  def load_benchmark(self, name: str, roots: Mapping[str, str | None], split: Any = None):
    """The `EvalSet` of benchmark `name` (split: the probe's train split, else the test)."""
    from spurjax import loaders
    if name == "in9":
      return loaders.load_imagenet9(roots["in9"], model_classes="imagenet1k")
    if name == "waterbirds":
      return loaders.load_waterbirds(roots["waterbirds"], split=2 if split is None else split)
    if name == "rival10":
      return loaders.load_rival10(roots["rival10"], split=split or "test",
                                  model_classes="rival10")
    if name == "salient":
      return loaders.load_salient_imagenet(roots["salient_masks"], roots["imagenet"],
                                           annotations=roots.get("salient_annotations"))
    if name == "objectnet":
      return loaders.load_objectnet(roots["objectnet"], model_classes="imagenet1k",
                                    imagenet_val=imagenet_val_dir(roots.get("imagenet")))
    if name == "imagenet":
      val = imagenet_val_dir(roots["imagenet"])
      wnids = loaders.imagenet_wnids()
      index = {w: i for i, w in enumerate(wnids)}
      present = sorted(d for d in os.listdir(val) if os.path.isdir(os.path.join(val, d)))
      unknown = [d for d in present if d not in index]
      if unknown:
        raise ValueError(f"{val}: class folders {unknown[:5]} are not ImageNet-1k wnids")
      return loaders.load_image_folder(val, class_mapping={w: index[w] for w in present},
                                       num_classes=1000)
    raise ValueError(f"benchmark: unknown {name!r}; known {BENCHMARKS}")

  def fit_head(self, features: np.ndarray, labels: np.ndarray, num_classes: int, *,
               seed: int, l2_grid: Sequence[float] = ()) -> tuple[np.ndarray, np.ndarray]:
    """A linear probe `(W (D, K), b (K,))` on frozen features: `spurjax.probe.fit_probe`
    (multinomial logistic regression, L2 penalty chosen on a validation split from
    `l2_grid`, default `probe.DEFAULT_L2_GRID`)."""
    import jax
    from spurjax import probe
    grid = tuple(l2_grid) or probe.DEFAULT_L2_GRID
    res = probe.fit_probe(jax.random.key(seed), None, None, np.asarray(labels, np.int64),
                          num_classes=num_classes, features=features, l2_grid=grid)
    return np.asarray(res.weight), np.asarray(res.bias)

  def attacks(self) -> dict[str, Callable]:
    """name -> factory `(model, logits_fn, *, norm, eps, config) -> attack`, where
    `attack(key, x, y)` maps a batch `(B, H, W, 3)`, `(B,)` to adversarial images."""
    from spurjax import attacks
    out = {"pgd": pgd_attack}
    try:
      attacks.autoattack  # noqa: B018  (resolved lazily where spurjax has it)
    except AttributeError:
      return out
    out["aa"] = autoattack_attack
    return out


def pgd_attack(model, logits_fn, *, norm, eps, config):
  """`pgd_steps`-step PGD (cross-entropy, random start, default step schedule), jitted."""
  import jax
  from spurjax import attacks
  loss_fn = attacks.make_loss_fn(logits_fn)
  steps = int(config["pgd_steps"])
  return jax.jit(lambda k, x, y: attacks.pgd(k, loss_fn, x, y, norm=norm, eps=eps,
                                             steps=steps))


def autoattack_attack(model, logits_fn, *, norm, eps, config):
  """`spurjax.attacks.autoattack` (`aa_version`). An NNX model is passed whole, so
  models of one architecture share one compiled program."""
  from flax import nnx
  from spurjax import attacks
  target = model if isinstance(model, nnx.Module) else logits_fn
  return lambda k, x, y: attacks.autoattack(k, target, x, y, norm=norm, eps=eps,
                                            version=config["aa_version"],
                                            batch_size=int(config["batch_size"]))


def imagenet_val_dir(root: str | None) -> str | None:
  """`<root>/val` when it exists (the ImageNet-1k val class folders), else None."""
  if not root:
    return None
  val = os.path.join(root, "val")
  return val if os.path.isdir(val) else None


# --------------------------------------------------------------------------- evaluation
def _spread(n: int, k: int) -> np.ndarray:
  """`k` indices spread evenly over range(n) (all of them when k is 0 or >= n); the sets are
  sorted by class, so an even spread keeps every class."""
  if k <= 0 or k >= n:
    return np.arange(n)
  return np.unique(np.linspace(0, n - 1, k).round().astype(np.int64))


def _rows_of(x: Any, idx: np.ndarray) -> Any:
  return None if x is None else np.asarray(x[idx]) if hasattr(x, "shape") else [
      x[i] for i in idx]


def subset(es, k: int):
  """The first-`k`-per-part evenly spread subset of an `EvalSet` (every part, every mapping
  field kept); `k` = 0 keeps everything (lazy parts stay lazy)."""
  if k <= 0:
    return es
  n = len(es)
  idx = _spread(n, k)
  changes = {f: _rows_of(getattr(es, f), idx)
             for f in ("images", "labels", "masks", "soft_masks", "boxes", "marker_masks")
             if getattr(es, f) is not None}
  if es.variants is not None:
    changes["variants"] = {}
    for name, v in es.variants.items():
      vi = _spread(len(v.labels), k)
      changes["variants"][name] = dataclasses.replace(v, images=_rows_of(v.images, vi),
                                                      labels=_rows_of(v.labels, vi))
    changes["variant_sources"] = None
  for part, fields in (("groups", ("images", "labels", "places")),
                       ("shifted", ("images", "labels"))):
    p = getattr(es, part)
    if p is not None:
      pi = _spread(len(p.labels), k)
      changes[part] = dataclasses.replace(p, **{f: _rows_of(getattr(p, f), pi)
                                                for f in fields})
  return dataclasses.replace(es, **changes)


def _batches(n: int, bs: int):
  for start in range(0, n, bs):
    yield start, min(n, start + bs)


def _pad(a: np.ndarray, bs: int) -> np.ndarray:
  if a.shape[0] == bs:
    return a
  return np.concatenate([a, np.zeros((bs - a.shape[0],) + a.shape[1:], a.dtype)])


def compute_features(features_fn: Callable, images: Any, batch_size: int) -> np.ndarray:
  """`features_fn` over `images` `(N, H, W, 3)` in padded batches -> `(N, D)` float32."""
  import jax
  fn = jax.jit(features_fn)
  out = []
  n = images.shape[0] if hasattr(images, "shape") else len(images)
  for start, stop in _batches(n, batch_size):
    x = _pad(np.asarray(images[start:stop], np.float32), batch_size)
    out.append(np.asarray(fn(x))[:stop - start])
  return np.concatenate(out).astype(np.float32)


def robust_accuracy(key, logits_fn: Callable, attack: Callable, images: Any, labels: Any, *,
                    batch_size: int, index: np.ndarray | None = None) -> float:
  """Accuracy of `logits_fn` on `attack`'s adversarial images.

  Args:
    key: PRNG key; batch b is attacked with fold_in(key, b).
    logits_fn: `(B, H, W, 3) -> (B, C)`.
    attack: `attack(key, x (B, H, W, 3), y (B,)) -> x_adv (B, H, W, 3)`.
    images: `(N, H, W, 3)` in [0, 1], array or lazy (read batch by batch, so memory stays
      at one batch); labels: `(N,)`.
    batch_size: rows per attacked batch (the last one zero-padded, so one compilation).
    index: rows of `images` to attack (default all).

  Returns:
    The fraction of attacked rows whose adversarial image is still classified correctly.
  """
  import jax
  import jax.numpy as jnp
  predict = jax.jit(lambda x: jnp.argmax(logits_fn(x), axis=-1))
  labels = np.asarray(labels).astype(np.int32)
  index = np.arange(labels.shape[0]) if index is None else np.asarray(index)
  hits = 0
  for b, (start, stop) in enumerate(_batches(index.shape[0], batch_size)):
    rows = index[start:stop]
    x = _pad(np.asarray(images[rows], np.float32), batch_size)
    y = _pad(labels[rows], batch_size)
    adv = attack(jax.random.fold_in(key, b), x, y)
    pred = np.asarray(predict(jnp.asarray(adv, jnp.float32)))[:stop - start]
    hits += int((pred == y[:stop - start]).sum())
  return hits / max(index.shape[0], 1)


def eval_radius(config: Mapping[str, Any], norm: str) -> float:
  """The evaluation radius of `norm` in pixel units (l_inf flag in units of 1/255)."""
  return norms_lib.pixel_radius(norm, config[f"eps_eval_{norm}"])


def _as_list(value: Any, kind: type) -> list:
  """A list setting as a list of `kind`: from a list, or from a comma string (the stored
  form of older configs; blank items dropped, "" is the empty list)."""
  if isinstance(value, str):
    value = [v.strip() for v in value.split(",") if v.strip()]
  return [kind(v) for v in (value or ())]


def canonical_config(config: Mapping[str, Any]) -> dict[str, Any]:
  """`config` with each of `LIST_SETTINGS` as a list of its type: `"l2,linf"` and
  `["l2", "linf"]` give the same config, `"90,180"` and `[90, 180.0]` both `[90.0, 180.0]`.

  Raises:
    ValueError: naming the flag, for an item that is not of its type.
  """
  out = dict(config)
  for name, kind in LIST_SETTINGS.items():
    if name in out:
      try:
        out[name] = _as_list(out[name], kind)
      except (TypeError, ValueError):
        raise ValueError(f"--{name}: a comma-separated list of {kind.__name__}s, got "
                         f"{config[name]!r}") from None
  return out


def _canonical_json(value: Any) -> Any:
  """A stored item key or probe identity with its config settings in canonical form."""
  if isinstance(value, dict):
    return {k: (_as_list(v, LIST_SETTINGS[k]) if k in LIST_SETTINGS else _canonical_json(v))
            for k, v in value.items()}
  return value


def _norms(config) -> list[str]:
  return _as_list(config["attack_norms"], str)


def _reliance_kwargs(config: Mapping[str, Any]) -> dict[str, Any]:
  from spurjax import reliance
  sig = [s / 255.0 for s in _as_list(config["rfs_sigmas"], float)]
  return dict(batch_size=int(config["batch_size"]), sigmas=sig or reliance.RFS_SIGMAS,
              rfs_modes=tuple(_as_list(config["rfs_modes"], str)),
              salient_trials=int(config["salient_trials"]))


class _Runner:
  """Evaluates (model, benchmark) items with shared caches of loaded sets and models."""

  def __init__(self, config, workdir, roots, backend: Backend):
    self.config, self.workdir, self.roots, self.backend = config, workdir, roots, backend
    self._sets: dict[tuple, Any] = {}
    self._model: tuple[str, Any] | None = None
    self._fns: dict[str, Callable] = {}

  def evalset(self, name: str, split: Any = None, limit: int | None = None):
    k = (name, split)
    if k not in self._sets:
      es = self.backend.load_benchmark(name, self.roots, split)
      self._sets[k] = subset(es, int(self.config["max_images"] if limit is None else limit))
    return self._sets[k]

  def model(self, entry: ModelEntry):
    if self._model is None or self._model[0] != entry.name:
      self._model, self._fns = None, {}  # Drop the previous model before the next one.
      m = self.backend.load_model(entry, os.path.join(self.workdir, "converted"))
      self._model = (entry.name, m)
    return self._model[1]

  def fn(self, entry: ModelEntry, kind: str) -> Callable:
    """The model's `logits` or `features` function, one object per model so that the
    protocols' compiled functions are reused across benchmarks."""
    model = self.model(entry)
    if kind not in self._fns:
      self._fns[kind] = (self.backend.logits_fn(model) if kind == "logits"
                         else self.backend.features_fn(model))
    return self._fns[kind]

  def key(self, *names):
    import jax
    k = jax.random.key(int(self.config["eval_seed"]))
    for n in names:
      k = jax.random.fold_in(k, sum(ord(c) * 131 ** i for i, c in enumerate(n)) % (2**31))
    return k

  def head(self, entry: ModelEntry, bench: str, model):
    """The cached probe head `(W, b)` of (model, bench); fitted on the train split once."""
    from spurjax import io
    train_split, _, k = PROBES[bench]
    path = os.path.join(self.workdir, "probes", entry.name, bench + ".npz")
    l2_grid = _as_list(self.config["probe_l2"], float)
    ident = json.dumps({"model": _file_id(entry.path),
                        "train": self.roots[bench], "split": train_split,
                        "max_train": int(self.config["max_train"]),
                        "probe_l2": l2_grid,
                        "seed": int(self.config["eval_seed"])}, sort_keys=True)
    if os.path.exists(path):
      with np.load(path) as z:
        stored = _canonical_json(json.loads(str(z["ident"])))
        if stored == json.loads(ident):
          return z["w"], z["b"]
    es = self.evalset(bench, train_split, limit=int(self.config["max_train"]))
    feats = compute_features(self.fn(entry, "features"), es.images,
                             int(self.config["batch_size"]))
    w, b = self.backend.fit_head(feats, np.asarray(es.labels), k,
                                 seed=int(self.config["eval_seed"]),
                                 l2_grid=tuple(l2_grid))
    w, b = np.asarray(w, np.float32), np.asarray(b, np.float32)
    if w.shape != (feats.shape[1], k) or b.shape != (k,):
      raise ValueError(f"probe head of {entry.name} on {bench}: shapes {w.shape}, {b.shape}, "
                       f"expected ({feats.shape[1]}, {k}), ({k},)")
    with io.atomic_write(path, "wb") as f:
      np.savez(f, w=w, b=b, ident=np.asarray(ident))
    return w, b

  def evaluate(self, entry: ModelEntry, bench: str) -> dict[str, Any]:
    """The metrics (`OWNED[bench]` plus the full protocol output) of one item."""
    from spurjax import reliance
    model = self.model(entry)
    cfg = self.config
    if bench == "imagenet":
      es = self.evalset("imagenet")
      logits_fn = self.fn(entry, "logits")
      out = dict(reliance.clean_accuracy(logits_fn, es.images, es.labels, es.num_classes,
                                         batch_size=min(int(cfg["batch_size"]), len(es))))
      idx = _spread(len(es), int(cfg["n_robust"]))
      for name, factory in self.backend.attacks().items():
        if name == "aa" and cfg["aa_version"] == "none":
          continue
        for norm in _norms(cfg):
          attack = factory(model, logits_fn, norm=norm, eps=eval_radius(cfg, norm),
                           config=cfg)
          out[f"{name}_acc_{norm}"] = robust_accuracy(
              self.key(name, norm), logits_fn, attack, es.images, es.labels,
              batch_size=int(cfg["batch_size"]), index=idx)
      return out
    if bench in PROBES:
      import jax.numpy as jnp
      w, b = self.head(entry, bench, model)
      feat = self.fn(entry, "features")
      w, b = jnp.asarray(w), jnp.asarray(b)[None, :]
      apply_fn = lambda x: feat(x) @ w + b
    else:
      apply_fn = self.fn(entry, "logits")
    es = self.evalset(bench, PROBES[bench][1] if bench in PROBES else None)
    es = dataclasses.replace(es, **{p: None for p in OPTIONAL_PARTS
                                    if p not in PARTS[bench] and getattr(es, p) is not None})
    out = dict(reliance.evaluate(self.key(bench), apply_fn, es, **_reliance_kwargs(cfg)))
    if bench == "rival10":
      out["rival10_acc"] = out["clean_acc"]
    if bench == "waterbirds":
      out["waterbirds_acc"] = out["clean_acc"]
    return out


def _item_key(config, entry: ModelEntry, bench: str, roots) -> dict[str, Any]:
  """The settings an item's metrics depend on (a rerun with other settings recomputes)."""
  keys = ["batch_size", "max_images", "eval_seed"]
  if bench == "imagenet":
    keys += ["n_robust", "pgd_steps", "attack_norms", "aa_version"] + [
        f"eps_eval_{n}" for n in _norms(config)]
  if bench in ("rival10", "salient"):
    keys += ["rfs_sigmas", "rfs_modes", "salient_trials"]
  if bench in PROBES:
    keys += ["max_train", "probe_l2"]
  bench_roots = {"imagenet": ("imagenet",), "in9": ("in9",),
                 "salient": ("salient_masks", "imagenet", "salient_annotations"),
                 "objectnet": ("objectnet", "imagenet"), "waterbirds": ("waterbirds",),
                 "rival10": ("rival10",)}[bench]
  return json.loads(json.dumps({
      "model": _file_id(entry.path), "arch": entry.arch,
      "roots": {r: roots.get(r) and os.path.abspath(roots[r]) for r in bench_roots},
      "eval": {k: config[k] for k in keys}}))


def benchmarks_given(roots: Mapping[str, str | None]) -> list[str]:
  """The benchmarks whose inputs are all given (`BENCHMARKS` order)."""
  out = []
  if imagenet_val_dir(roots.get("imagenet")):
    out.append("imagenet")
  for b, need in (("in9", "in9"), ("salient", "salient_masks"), ("objectnet", "objectnet"),
                  ("waterbirds", "waterbirds"), ("rival10", "rival10")):
    if roots.get(need):
      out.append(b)
  return out


def check_roots(roots: Mapping[str, str | None]) -> None:
  """ValueError naming the flag for a missing path or a Salient set without ImageNet."""
  for flag, path in roots.items():
    if path and not os.path.exists(path):
      raise ValueError(f"--{flag}: not found: {path}")
  if roots.get("salient_masks") and not roots.get("imagenet"):
    raise ValueError("--salient_masks: needs --imagenet (its train/ folder holds the images)")
  if roots.get("imagenet") and not imagenet_val_dir(roots["imagenet"]) and not roots.get(
      "salient_masks"):
    raise ValueError(f"--imagenet: no val/ folder in {roots['imagenet']}")


def compute(config: Mapping[str, Any], workdir: str, roots: Mapping[str, str | None],
            models: Sequence[ModelEntry], *, backend: Backend | None = None,
            after_item: Callable[[str, str], None] | None = None) -> list[dict[str, Any]]:
  """One row per model (`FIELDS`); items cached in `results/<model>/<bench>.json`.

  Args:
    config: resolved settings (`_DEFAULT` keys).
    workdir: output folder.
    roots: benchmark paths by flag name (`PATH_FLAGS` minus the model flags).
    models: the models to evaluate.
    backend: the spurjax pieces (default `Backend()`); tests pass their own.
    after_item: called with (model name, benchmark) after each item's file is written.
  """
  from absl import logging
  from spurjax import io
  backend = backend or Backend()
  config = canonical_config(config)
  benches = benchmarks_given(roots)
  if not benches:
    raise ValueError("no benchmark: give at least one of --in9, --waterbirds, --rival10, "
                     "--salient_masks (with --imagenet), --objectnet, --imagenet (val/)")
  runner = _Runner(config, workdir, roots, backend)
  items = [(m, b) for m in models for b in benches]
  results: dict[tuple[str, str], dict] = {}
  todo = []
  for m, b in items:
    path = os.path.join(workdir, "results", m.name, b + ".json")
    key = _item_key(config, m, b, roots)
    stored = None
    if os.path.exists(path):
      with open(path) as f:
        stored = json.load(f)
    if stored is not None and _canonical_json(stored.get("key")) == key:
      results[(m.name, b)] = stored["metrics"]
    else:
      todo.append((m, b, path, key))
  logging.info("%d models x %d benchmarks: %d items cached, %d to evaluate", len(models),
               len(benches), len(items) - len(todo), len(todo))
  t0 = time.perf_counter()
  for i, (m, b, path, key) in enumerate(todo):
    t = time.perf_counter()
    metrics = runner.evaluate(m, b)
    io.write_json(path, {"key": key, "metrics": metrics,
                         "seconds": round(time.perf_counter() - t, 3)})
    results[(m.name, b)] = json.loads(json.dumps(io._plain(metrics)))
    elapsed = time.perf_counter() - t0
    eta = elapsed / (i + 1) * (len(todo) - i - 1)
    logging.info("%s / %s: %.1fs; %d/%d items done, ETA %.0fs", m.name, b,
                 time.perf_counter() - t, i + 1, len(todo), eta)
    if after_item is not None:
      after_item(m.name, b)
  rows = []
  for m in models:
    row = {"model": m.name, "arch": m.arch, "norm": m.norm, "eps": m.eps,
           "eps_label": m.eps_label, "source": m.source}
    row.update({c: None for c in METRICS + EXTRA + OWN})
    for b in benches:
      got = results[(m.name, b)]
      row.update({c: got.get(c) for c in OWNED[b]})
    rows.append(row)
  order = {"none": 0, "l2": 1, "linf": 2}
  rows.sort(key=lambda r: (r["arch"], order[r["norm"]], r["eps"], r["model"]))
  return rows


# --------------------------------------------------------------------------- outputs
MD_COLUMNS = ("clean_acc", "pgd_acc_l2", "pgd_acc_linf", "aa_acc_l2", "aa_acc_linf", "rfs",
              "core_acc", "spur_acc", "rcs", "bg_gap", "worst_group_acc", "shift_drop")


def markdown(config: Mapping[str, Any], rows: Sequence[Mapping[str, Any]]) -> str:
  """The Markdown table: one line per model, the main metrics (n/a: not measured)."""
  head = ["model", "arch", "norm", "eps"] + list(MD_COLUMNS)
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for r in rows:
    cells = [r["model"], r["arch"], r["norm"], r["eps_label"]]
    cells += ["n/a" if r[c] is None else f"{float(r[c]):.3f}" for c in MD_COLUMNS]
    lines.append("| " + " | ".join(cells) + " |")
  norms = _norms(config)
  radii = ", ".join(f"{n} {config[f'eps_eval_{n}']:g}" + ("/255" if n == "linf" else "")
                    for n in norms)
  note = (f"\nRobust accuracy on {config['n_robust'] or 'all'} ImageNet val images at {radii}: "
          f"pgd = {config['pgd_steps']}-step PGD (cross-entropy, random start); aa = "
          f"AutoAttack ({config['aa_version']}), the robust accuracy to report. Waterbirds and "
          "RIVAL10 use a linear probe on frozen features fitted on their train split. "
          f"Images per benchmark part: {config['max_images'] or 'all'}.\n")
  return "\n".join(lines) + "\n" + note


def figure(config: Mapping[str, Any], rows: Sequence[Mapping[str, Any]]):
  """One panel per metric of `PANELS` against the training radius (published units: l2
  eps, l_inf eps x 255), one line per (norm, arch); eps-0 models as horizontal lines."""
  _common.use_agg()
  import matplotlib.pyplot as plt
  archs = sorted({r["arch"] for r in rows})
  styles = ["-", "--", ":", "-."]
  fig, axes = plt.subplots(3, 4, figsize=(12.5, 8.4), constrained_layout=True)
  for ax, metric in zip(axes.flat, PANELS):
    if all(r[metric] is None for r in rows):
      ax.text(0.5, 0.5, "not measured", ha="center", va="center", transform=ax.transAxes,
              color="0.5")
    for ai, arch in enumerate(archs):
      ls = styles[ai % len(styles)]
      for r in rows:
        if r["arch"] == arch and r["eps"] == 0 and r[metric] is not None:
          ax.axhline(float(r[metric]), color="k", ls=ls, lw=1.0, label=f"eps 0 ({arch})")
          break
      for norm in ("l2", "linf"):
        pts = sorted((r for r in rows if r["arch"] == arch and r["norm"] == norm
                      and r["eps"] > 0 and r[metric] is not None), key=lambda r: r["eps"])
        if not pts:
          continue
        x = [r["eps"] * (255.0 if norm == "linf" else 1.0) for r in pts]
        ax.plot(x, [float(r[metric]) for r in pts], color=_common.NORM_COLORS[norm], ls=ls,
                marker="o", ms=4, label=f"{_common.NORM_LABELS[norm]} ({arch})")
    ax.set_xscale("log")
    ax.set_title(TITLES[metric], fontsize=10)
    ax.grid(alpha=0.3)
  for ax in axes[-1]:
    ax.set_xlabel(r"training radius ($\ell_2$; $\ell_\infty$ in /255)")
  handles = {}
  for ax in axes.flat:
    for h, lab in zip(*ax.get_legend_handles_labels()):
      handles.setdefault(lab, h)
  if handles:
    axes.flat[0].legend(handles.values(), handles.keys(), fontsize=7)
  fig.suptitle(f"Pretrained ImageNet models ({len(rows)}): benchmark metrics against the "
               "training radius", fontsize=10)
  return fig


def run(config: Mapping[str, Any], workdir: str, roots: Mapping[str, str | None],
        models: Sequence[ModelEntry], *, backend: Backend | None = None,
        after_item: Callable[[str, str], None] | None = None) -> dict[str, str]:
  """Evaluates every (model, benchmark); writes reliance.csv/.md/.png and manifest.json."""
  from spurjax import io
  check_roots(roots)
  config = canonical_config(config)
  start = time.perf_counter()
  rows = compute(config, workdir, roots, models, backend=backend, after_item=after_item)
  md = os.path.join(workdir, "reliance.md")
  with io.atomic_write(md) as f:
    f.write(markdown(config, rows))
  extra = {"models": [dataclasses.asdict(m) for m in models],
           "roots": {k: v for k, v in roots.items() if v},
           "benchmarks": benchmarks_given(roots)}
  paths = _common.write_outputs(workdir, "reliance", rows=rows, fieldnames=FIELDS,
                                figure=figure(config, rows), config=dict(config), seed=None,
                                start=start, extra=extra)
  with open(paths["manifest"]) as f:
    manifest = json.load(f)
  manifest["outputs"].append("reliance.md")
  io.write_json(paths["manifest"], manifest)
  paths["md"] = md
  return paths


# --------------------------------------------------------------------------- entry point
def define_flags() -> None:
  """The absl flags of the entry point (defined only when run as a program, so that tests
  can import this module beside other sims)."""
  from absl import flags
  _common.define_common_flags("results/pretrained", PRESETS, x64_default=False)
  flags.DEFINE_string("checkpoints", None, "Glob of checkpoints named "
                      "{arch}_{l2|linf}_eps{eps}.ckpt (l_inf eps in /255).")
  flags.DEFINE_string("models_csv", None, "CSV of models: path,arch,norm,eps,source.")
  flags.DEFINE_string("in9", None, "ImageNet-9 root (holds original/, mixed_rand/, ...).")
  flags.DEFINE_string("waterbirds", None, "Waterbirds root (holds metadata.csv).")
  flags.DEFINE_string("rival10", None, "RIVAL10 root (holds train/ and test/).")
  flags.DEFINE_string("salient_masks", None, "Salient ImageNet mask root (wordnet_dict.py).")
  flags.DEFINE_string("imagenet", None, "ImageNet root: train/ (Salient images), val/ "
                      "(clean and robust accuracy, ObjectNet reference).")
  flags.DEFINE_string("salient_annotations", None, "discover_spurious_features.csv.")
  flags.DEFINE_string("objectnet", None, "ObjectNet root (images/, mappings/).")
  flags.DEFINE_integer("batch_size", None, "Evaluation batch size.", lower_bound=1)
  flags.DEFINE_integer("max_images", None, "Images per benchmark part (0: all).",
                       lower_bound=0)
  flags.DEFINE_integer("max_train", None, "Probe training images (0: all).", lower_bound=0)
  flags.DEFINE_integer("n_robust", None, "ImageNet val images attacked (0: all).",
                       lower_bound=0)
  flags.DEFINE_integer("pgd_steps", None, "PGD steps.", lower_bound=1)
  _common.define_enum_list("attack_norms", None, ATTACK_NORMS, "Attack norms.")
  flags.DEFINE_float("eps_eval_l1", None, "l1 evaluation radius.", lower_bound=0)
  flags.DEFINE_float("eps_eval_l2", None, "l2 evaluation radius.", lower_bound=0)
  flags.DEFINE_float("eps_eval_linf", None, "l_inf evaluation radius in units of 1/255.",
                     lower_bound=0)
  flags.DEFINE_enum("aa_version", None, ["standard", "fast", "none"],
                    "AutoAttack version of the aa_acc_<norm> columns (none: skip them).")
  _common.define_float_list("rfs_sigmas", None, "RFS noise levels in /255, each in "
                            "(0, 255] (empty: 30, 60, ..., 210).")
  _common.define_enum_list("rfs_modes", None, RFS_MODES, "RFS modes.")
  flags.DEFINE_integer("salient_trials", None, "Salient noise trials (>= 5).", lower_bound=5)
  _common.define_float_list("probe_l2", None, "Probe L2 penalties to choose from, each "
                            ">= 0 (empty: spurjax.probe.DEFAULT_L2_GRID).", lower_bound=0)
  flags.DEFINE_integer("eval_seed", None, "Seed of the noise, attacks and probes.",
                       lower_bound=0)


def check_config(config: Mapping[str, Any]) -> None:
  """ValueError naming the flag for a bad list value (a list or, as older configs store
  them, a comma string)."""
  config = canonical_config(config)
  norms = config["attack_norms"]
  if not norms or any(n not in ATTACK_NORMS for n in norms):
    raise ValueError(f"--attack_norms: a non-empty subset of {', '.join(ATTACK_NORMS)}, "
                     f"got {norms}")
  modes = config["rfs_modes"]
  if not modes or any(m not in RFS_MODES for m in modes):
    raise ValueError(f"--rfs_modes: a non-empty subset of {', '.join(RFS_MODES)}, got {modes}")
  if any(not 0 < s <= 255 for s in config["rfs_sigmas"]):
    raise ValueError(f"--rfs_sigmas: each in (0, 255], got {config['rfs_sigmas']}")
  if any(not np.isfinite(v) or v < 0 for v in config["probe_l2"]):
    raise ValueError(f"--probe_l2: finite penalties >= 0, got {config['probe_l2']}")


def main(argv):
  from absl import app
  from absl import flags
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  f = flags.FLAGS
  config = _common.resolve_config(PRESETS, CONFIG_FLAGS)
  roots = {k: getattr(f, k) for k in PATH_FLAGS if k not in ("checkpoints", "models_csv")}
  try:
    check_config(config)
    check_roots(roots)
    models = list_models(f.checkpoints, f.models_csv)
    if not benchmarks_given(roots):
      raise ValueError("no benchmark: give at least one of --in9, --waterbirds, --rival10, "
                       "--salient_masks (with --imagenet), --objectnet, --imagenet (val/)")
  except ValueError as e:
    raise app.UsageError(str(e)) from e
  _common.start_runtime()
  run(config, f.workdir, roots, models)


if __name__ == "__main__":
  from absl import app as _app
  define_flags()
  _app.run(main)

r"""Image-level scale law (beyond the paper): which spurious cue do l2 and l_inf training use?

The theory (docs/theory.md) says l_inf adversarial training keeps a feature when its
per-coordinate scale is large, while l2 training weighs a feature by its total (l2) energy,
so it favours spread-out features. On images: the background texture is spread out (most
pixels, per-pixel amplitude ~ bg_contrast / 2), the marker cue is concentrated (a few
pixels of a saturated colour, large per-pixel amplitude). For a linear cue of per-pixel
amplitude a over n pixel entries, an l_inf attack of radius eps can erase it when eps >= a,
an l2 attack when eps >= a sqrt(n) (its energy). This sim sweeps the background contrast with
the marker present (both cues correlated with the class: the background with p = 0.6, the
marker with marker_p = 0.9, so that neither cue wins by reliability alone), trains
standard, l2 and l_inf models, and measures on conflict test images (background style and
marker colour both differ from the class and from each other) how often the prediction
follows the shape, the background, or the marker.

  python -m sims.scale_law [--preset=small] [--workdir=results/scale_law]
  python -m sims.scale_law --preset=marker --workdir=results/marker   # the marker experiment

The background's per-style tint scales with the contrast (`tint_amp = tint_per_contrast * c`,
0.3 c by default, so c = 0.5 has the data default 0.15; `--tint_per_contrast=0` keeps the
fixed 0.15 tint of earlier runs), so one number sets the scale of the whole background cue.

Marker variants (`--variants`, each a separate set of models): "base" (side max(2, S // 8),
random corner), "fixed_corner" (always corner 0: 4x the per-coordinate label signal of the
marker, same amplitude and area), "big" (side 2 max(2, S // 8): 4x the area, same amplitude,
same random corner). The "marker" preset trains them at one contrast.

The cue scales are measured on the images themselves: the texture's perturbation is
x(contrast c) - x(contrast 0) and the marker's is x(marker) - x(no marker) for the same key;
we report their mean per-pixel amplitude (mean |delta| over the cue's pixels) and their l2
energy (||delta||_2 per image), and mark where each radius can erase each cue.

Outputs: scale_law.csv (one row per contrast, norm, seed), scale_law.png, manifest.json.
"""

from __future__ import annotations

import time
from typing import Any

from absl import app
from absl import flags
from absl import logging
import numpy as np

from sims import _common
from spurjax import suite

VARIANTS = ("base", "fixed_corner", "big")
_DEFAULT = dict(contrasts=[0.05, 0.2, 0.6, 1.0], norms=["none", "l2", "linf"], eps_l2=1.0,
                eps_linf=8.0, eps_l1=10.0, seeds=[0], p=0.6, marker_p=0.9, image_size=16,
                num_classes=10, fg_scale=1.5, width=16, steps=300, batch_size=64, lr=0.05,
                adv_steps=4, n_eval=500, eval_seed=1234, tint_per_contrast=0.3,
                variants=["base"])
PRESETS = {"default": _DEFAULT,
           # The marker experiment: the two changed markers at c = 0.6 (where l_inf
           # training dropped the marker in the first sweep); the "base" models of that
           # contrast are the default sweep's (same settings and seed).
           "marker": dict(_DEFAULT, contrasts=[0.6], norms=["none", "linf"],
                          variants=["fixed_corner", "big"]),
           "small": dict(_DEFAULT, contrasts=[0.1, 0.6], norms=["none", "linf"],
                         num_classes=4, width=8, steps=30, batch_size=32, adv_steps=2,
                         n_eval=64)}
# Note: a background style also carries a per-class tint (a spread, low-amplitude colour
# offset that does not scale with the contrast); only the texture's amplitude is swept.
CONFIG_FLAGS = tuple(_DEFAULT)
FIELDS = ("model", "variant", "bg_contrast", "tint_amp", "norm", "eps", "seed", "clean_acc",
          "shape_rate", "bg_rate", "marker_rate", "bg_amp", "bg_energy", "marker_amp",
          "marker_energy", "tint_lin", "marker_lin", "texture_lin", "eps_erases_bg",
          "eps_erases_marker")

FLAGS = flags.FLAGS


def define_flags() -> None:
  """Defines the absl flags (when run, not on import: tests import several sims at once)."""
  _common.define_common_flags("results/scale_law", PRESETS, x64_default=False)
  _common.define_float_list("contrasts", None, "Background contrasts to sweep, in [0, 1].")
  flags.DEFINE_list("norms", None, "Training norms: none, l2, linf (l1 also accepted).")
  flags.DEFINE_float("p", None, "P(background = class) in training.", lower_bound=0,
                     upper_bound=1)
  flags.DEFINE_float("marker_p", None, "P(marker = class) in training.", lower_bound=0,
                     upper_bound=1)
  flags.DEFINE_integer("num_classes", None, "Classes K.", lower_bound=3, upper_bound=12)
  flags.DEFINE_float("tint_per_contrast", None, "Tint amplitude per unit contrast (0: fixed "
                     "0.15).", lower_bound=0, upper_bound=0.5)
  flags.DEFINE_list("variants", None, f"Marker variants, from {VARIANTS}.")
  _common.define_experiment_flags()

radius = _common.radius


def suite_config(config: dict[str, Any]) -> dict[str, Any]:
  """Shared settings for `spurjax.suite` (bg_contrast is set per model)."""
  return _common.experiment_settings(config, p=config["p"], bg_contrast=config["contrasts"][0],
                                    marker=True, marker_p=config["marker_p"])


def variant_data(config: dict[str, Any], c: float, variant: str) -> tuple:
  """The data overrides of one (contrast, marker variant): contrast, tint, marker."""
  out = [("bg_contrast", c)]
  if config.get("tint_per_contrast", 0.0):
    out.append(("tint_amp", float(config["tint_per_contrast"]) * c))
  if variant == "fixed_corner":
    out.append(("marker_corner", 0))
  elif variant == "big":
    out.append(("marker_side", 2 * max(2, int(config["image_size"]) // 8)))
  elif variant != "base":
    raise ValueError(f"--variants: unknown variant {variant!r}; known: {VARIANTS}")
  return tuple(out)


def specs_of(config: dict[str, Any]) -> list[suite.ModelSpec]:
  """One model per (variant, contrast, norm, seed), tagged `c<contrast>` (+ `_<variant>`)."""
  return [suite.ModelSpec("small_cnn", norm, radius(config, norm), seed,
                           tag=f"c{c:g}" + ("" if v == "base" else f"_{v}"),
                           data=variant_data(config, c, v))
          for v in config.get("variants", ["base"]) for c in config["contrasts"]
          for norm in config["norms"] for seed in config["seeds"]]


def linear_signal(delta: np.ndarray, labels: np.ndarray, num_classes: int) -> float:
  """Largest per-coordinate linear label signal of a cue: max over coordinates i of the
  between-class standard deviation of E[delta_i | y] (delta `(N, S, S, 3)`, labels `(N,)`)."""
  means = np.stack([delta[labels == k].mean(0) for k in range(num_classes)
                    if np.any(labels == k)])
  return float(means.std(0).max())


def cue_scales(key, settings: dict[str, Any], n: int) -> dict[str, float]:
  """Measured per-pixel amplitude and l2 energy of the texture and the marker (see doc)."""
  from spurjax import data
  cfg = suite.data_config(settings)
  b = data.sample_batch(key, cfg, n)
  flat = data.sample_batch(key, cfg.replace(bg_contrast=0.0), n)
  no_tint = data.sample_batch(key, cfg.replace(bg_contrast=0.0, tint_amp=0.0), n)
  no_marker = data.sample_batch(key, cfg.replace(marker=False), n)
  x = np.asarray(b.images)
  d_bg = x - np.asarray(flat.images)
  d_mk = x - np.asarray(no_marker.images)
  d_tint = np.asarray(flat.images) - np.asarray(no_tint.images)
  labels = np.asarray(b.labels)
  bg_pix = (1 - np.asarray(b.masks)) * (1 - np.asarray(b.marker_masks))
  mk_pix = np.asarray(b.marker_masks)

  def amp(d, m):
    m3 = np.broadcast_to(m[..., None], d.shape)
    return float(np.abs(d)[m3 > 0].mean())

  return {"bg_amp": amp(d_bg, bg_pix),
          "bg_energy": float(np.sqrt((d_bg ** 2).sum(axis=(1, 2, 3))).mean()),
          "marker_amp": amp(d_mk, mk_pix),
          "marker_energy": float(np.sqrt((d_mk ** 2).sum(axis=(1, 2, 3))).mean()),
          "tint_lin": linear_signal(d_tint, labels, cfg.num_classes),
          "marker_lin": linear_signal(d_mk, labels, cfg.num_classes),
          "texture_lin": linear_signal(d_bg, labels, cfg.num_classes)}


def run(config: dict[str, Any], workdir: str) -> dict[str, str]:
  """Trains (or reuses) the sweep's models, measures cue following, writes outputs."""
  from spurjax import data
  from spurjax import reliance
  from spurjax import train
  start = time.perf_counter()
  suite.quiet_orbax()
  shared = suite_config(config)
  specs = specs_of(config)
  suite.train_models(shared, workdir, specs)
  n = int(config["n_eval"])
  rows = []
  for v, c in ((v, c) for v in config.get("variants", ["base"]) for c in config["contrasts"]):
    settings = dict(shared, **dict(variant_data(config, c, v)))
    scales = cue_scales(suite.eval_key(config["eval_seed"], "scales"), settings,
                        max(n, 2000))
    # Conflict set: background and marker never match the class (p = marker_p = 0).
    conflict = data.sample_batch(suite.eval_key(config["eval_seed"], "conflict"),
                                 suite.data_config(dict(settings, p=0.0, marker_p=0.0)), n)
    keep = np.asarray(conflict.bg_ids) != np.asarray(conflict.marker_ids)
    xc = np.asarray(conflict.images)[keep]
    ids = {k: np.asarray(getattr(conflict, f))[keep]
           for k, f in (("shape", "labels"), ("bg", "bg_ids"), ("marker", "marker_ids"))}
    clean = data.sample_batch(suite.eval_key(config["eval_seed"], "clean"),
                              suite.data_config(settings), n)
    for spec in (s for s in specs if s.data == variant_data(config, c, v)):
      model = train.load_model(suite.model_dir(workdir, spec))
      # The model itself: reliance's jitted functions take its parameters as arguments,
      # so only the first model of an architecture compiles.
      pred = reliance.predictions(model, xc)
      row = {"model": spec.name, "variant": v, "bg_contrast": c,
             "tint_amp": dict(spec.data).get("tint_amp", 0.15), "norm": spec.norm,
             "eps": spec.eps, "seed": spec.seed,
             "clean_acc": reliance.clean_accuracy(model, clean.images,
                                                  clean.labels, config["num_classes"],
                                                  batch_size=min(250, n))["clean_acc"],
             **{f"{k}_rate": float(np.mean(pred == v)) for k, v in ids.items()}, **scales}
      eps = spec.eps
      if spec.norm == "linf":
        row["eps_erases_bg"], row["eps_erases_marker"] = (eps >= scales["bg_amp"],
                                                          eps >= scales["marker_amp"])
      elif spec.norm == "l2":
        row["eps_erases_bg"], row["eps_erases_marker"] = (eps >= scales["bg_energy"],
                                                          eps >= scales["marker_energy"])
      else:
        row["eps_erases_bg"] = row["eps_erases_marker"] = None
      logging.info("%s: shape %.3f bg %.3f marker %.3f", spec.name, row["shape_rate"],
                   row["bg_rate"], row["marker_rate"])
      rows.append(row)
  return _common.write_outputs(workdir, "scale_law", rows=rows, fieldnames=FIELDS,
                               figure=figure(config, rows), config=config, seed=None,
                               start=start)


def figure(config: dict[str, Any], rows: list[dict[str, Any]]):
  """Per norm: fraction of conflict images classified by shape / background / marker."""
  _common.use_agg()
  import matplotlib.pyplot as plt
  norms = config["norms"]
  fig, axes = plt.subplots(1, len(norms), figsize=(4.3 * len(norms), 3.8), squeeze=False,
                           constrained_layout=True)
  colors = {"shape": "tab:blue", "bg": "tab:orange", "marker": "tab:purple"}
  for ax, norm in zip(axes[0], norms):
    sel = [r for r in rows if r["norm"] == norm and r.get("variant", "base") == "base"]
    if not sel:
      continue
    cs = sorted({r["bg_contrast"] for r in sel})
    for cue, col in colors.items():
      v = np.array([[r[f"{cue}_rate"] for r in sel if r["bg_contrast"] == c] for c in cs])
      ax.errorbar(cs, v.mean(1), yerr=v.std(1, ddof=1) if v.shape[1] > 1 else None,
                  color=col, marker="o", capsize=3, label=f"follows {cue}")
    if norm in ("l2", "linf"):
      # Contrast at which the radius can erase the texture (the cue scales are linear in c).
      ref = sorted(sel, key=lambda r: r["bg_contrast"])[-1]
      per_c = ref["bg_amp" if norm == "linf" else "bg_energy"] / ref["bg_contrast"]
      c_star = radius(config, norm) / per_c
      ax.axvline(c_star, color="tab:orange", ls=":", lw=1.2)
      ax.text(c_star, 0.95, " eps erases\n texture below", fontsize=7, va="top",
              color="tab:orange")
    title = "standard" if norm == "none" else (
        f"{_common.NORM_LABELS[norm]} eps={radius(config, norm):.3g}")
    ax.set_title(title)
    ax.set_xscale("log")
    ax.set_xlabel("background contrast")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
  axes[0, 0].set_ylabel("fraction of conflict test images")
  axes[0, 0].legend(fontsize=7)
  fig.suptitle("Which cue does the model follow when shape, background and marker disagree?",
               fontsize=10)
  return fig


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  config = _common.resolve_config(PRESETS, CONFIG_FLAGS)
  try:
    _common.check(bool(config["seeds"]), "--seeds: empty")
    _common.check(bool(config["contrasts"]) and all(0 <= c <= 1 for c in config["contrasts"]),
                  f"--contrasts: values must be in [0, 1], got {config['contrasts']}")
    for n in config["norms"]:
      _common.check(n in ("none",) + suite.NORMS, f"--norms: unknown norm {n!r}")
    for v in config["variants"]:
      _common.check(v in VARIANTS, f"--variants: unknown variant {v!r}; known: {VARIANTS}")
    _common.check(config["image_size"] % 8 == 0, "--image_size: must be a multiple of 8")
  except flags.ValidationError as e:
    raise app.UsageError(str(e)) from e
  _common.start_runtime()
  run(config, FLAGS.workdir)


if __name__ == "__main__":
  define_flags()
  app.run(main)

r"""Evaluates a model suite on the five background-reliance protocols, PGD and AutoAttack.

For every complete model under `<workdir>/models/` (written by `sims.model_suite` with the
same --workdir), on one fixed evaluation set of the suite's procedural data (same images for
every model):
- `spurjax.reliance.evaluate`: clean accuracy; RIVAL10 RFS (Gaussian and l2 mode); Salient
  core/spurious accuracy and RCS; ImageNet-9 variant accuracies and BG-Gap; Waterbirds
  worst-group accuracy; ObjectNet-style shift drop (docs/benchmarks.md);
- `uncorr_acc`: accuracy on the "uncorrelated" domain (P(background = class) = 1/K);
- `pgd_acc_<norm>`: accuracy under a `pgd_steps`-step PGD (random start, cross-entropy,
  default step schedule) at one fixed radius per norm: l1 `eps_eval_l1`, l2 `eps_eval_l2`,
  l_inf `eps_eval_linf` / 255, on the in-distribution test images;
- `aa_acc_<norm>`: robust accuracy under `spurjax.autoattack.autoattack` (version
  `aa_version`: "standard" = APGD-CE, APGD-T, FAB-T, Square; "fast" = APGD-CE and APGD-T
  only; "none" skips it) at the same radii on the same images. This is the robust accuracy
  to report; PGD is kept as its own column (it is an upper bound that can be loose).

  python -m sims.background_reliance [--preset=small|default|paper] [--workdir=results/suite]

Outputs in --workdir: reliance.csv (one row per model and seed), reliance.md (mean +- std
over seeds per setting), reliance.png (one panel per metric against the training radius in
units of the evaluation radius, one line per norm, the standard model as a horizontal line
and band, error bars = std over seeds), manifest.json. Per-model results are cached in
`models/<name>/reliance.json` together with the evaluation settings, so a rerun only
evaluates new models.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

from absl import app
from absl import flags
from absl import logging
import numpy as np

from sims import _common
from spurjax import norms
from spurjax import suite as _suite

_DEFAULT = dict(n_eval=500, pgd_steps=10, eps_eval_l1=10.0, eps_eval_l2=0.5, eps_eval_linf=4.0,
                eval_seed=1234, batch_size=250, aa_version="fast")
PRESETS = {"default": _DEFAULT,
           # AutoAttack is skipped in the CI-sized preset: its compilation alone outweighs
           # the rest of the evaluation there.
           "small": dict(_DEFAULT, n_eval=48, pgd_steps=3, batch_size=48, aa_version="none"),
           "paper": dict(_DEFAULT, n_eval=2000, pgd_steps=20, aa_version="standard")}
CONFIG_FLAGS = tuple(_DEFAULT)

FLAGS = flags.FLAGS
_common.define_common_flags("results/suite", PRESETS, x64_default=False)
flags.DEFINE_integer("n_eval", None, "Test images per protocol part.", lower_bound=8)
flags.DEFINE_integer("pgd_steps", None, "PGD steps of the robust-accuracy evaluation.",
                     lower_bound=1)
flags.DEFINE_float("eps_eval_l1", None, "l1 evaluation radius.", lower_bound=0)
flags.DEFINE_float("eps_eval_l2", None, "l2 evaluation radius.", lower_bound=0)
flags.DEFINE_float("eps_eval_linf", None, "l_inf evaluation radius in units of 1/255.",
                   lower_bound=0)
flags.DEFINE_integer("eval_seed", None, "Seed of the evaluation data, noise and PGD starts.",
                     lower_bound=0)
flags.DEFINE_integer("batch_size", None, "Evaluation batch size.", lower_bound=1)
flags.DEFINE_enum("aa_version", None, ["standard", "fast", "none"],
                  "AutoAttack version of the aa_acc_<norm> columns (none: skip them).")

METRICS = ("clean_acc", "pgd_acc_l1", "pgd_acc_l2", "pgd_acc_linf", "aa_acc_l1", "aa_acc_l2",
           "aa_acc_linf", "rfs", "core_acc",
           "spur_acc", "rcs", "bg_gap", "worst_group_acc", "shift_drop")
EXTRA = ("uncorr_acc", "rfs_l2", "rfs_a_fg", "rfs_a_bg", "acc_only_fg", "acc_only_bg_t",
         "acc_no_fg", "acc_mixed_same", "acc_mixed_rand", "acc_mixed_next", "wb_mean_acc",
         "shift_id_acc", "shift_acc")
FIELDS = ("model", "arch", "norm", "eps", "seed") + METRICS + EXTRA
PANELS = ("clean_acc", "pgd_acc_l1", "pgd_acc_l2", "pgd_acc_linf", "uncorr_acc", "rfs",
          "core_acc", "spur_acc", "rcs", "bg_gap", "worst_group_acc", "shift_drop")
TITLES = {"clean_acc": "clean accuracy", "pgd_acc_l1": r"PGD accuracy, $\ell_1$",
          "pgd_acc_l2": r"PGD accuracy, $\ell_2$", "pgd_acc_linf": r"PGD accuracy, $\ell_\infty$",
          "uncorr_acc": "accuracy, uncorrelated bg", "rfs": "RFS (RIVAL10; + = fg)",
          "core_acc": "core accuracy (Salient)", "spur_acc": "spurious accuracy (Salient)",
          "rcs": "RCS (Salient; + = core)", "bg_gap": "BG-Gap (ImageNet-9; + = bg)",
          "worst_group_acc": "worst-group acc. (Waterbirds)",
          "shift_drop": "shift drop (ObjectNet-style)"}


def eval_radius(config: dict[str, Any], norm: str) -> float:
  """The evaluation radius of `norm` in pixel units."""
  return norms.pixel_radius(norm, config[f"eps_eval_{norm}"])


def eval_sets(suite: dict[str, Any], config: dict[str, Any]):
  """The `EvalSet` of the suite's data and the "uncorrelated"-domain images and labels."""
  from spurjax import data
  dcfg = _suite.data_config(suite)
  n = int(config["n_eval"])
  es = data.make_eval_set(_suite.eval_key(config["eval_seed"], "evalset"), dcfg, n)
  unc = data.make_eval_set(_suite.eval_key(config["eval_seed"], "uncorrelated"), dcfg, n,
                           domain="uncorrelated", n_groups=0, n_shifted=0, variants=False)
  return es, (unc.images, unc.labels)


def evaluate_model(model, es, uncorrelated, config: dict[str, Any]) -> dict[str, Any]:
  """All metrics of one model (see the module docstring).

  Args:
    model: a trained NNX classifier (train mode; its eval view is used).
    es: the `EvalSet` of `eval_sets` (images `(N, S, S, 3)` and every protocol part).
    uncorrelated: `(images (N, S, S, 3), labels (N,))` of the "uncorrelated" domain.
    config: the evaluation settings (radii, PGD steps, seed, batch size).

  Returns:
    Flat dict metric -> float or None: everything `spurjax.reliance.evaluate` returns plus
    `uncorr_acc`, `pgd_acc_<norm>` and `aa_acc_<norm>` (None with aa_version "none").
  """
  from spurjax import autoattack
  from spurjax import reliance
  from spurjax import train
  bs = int(config["batch_size"])
  # The NNX model itself (not a closure over its parameters): the jitted evaluation
  # functions are shared by every model of the suite, so only the first one compiles.
  out = dict(reliance.evaluate(_suite.eval_key(config["eval_seed"], "reliance"), model, es,
                               batch_size=bs))
  out["uncorr_acc"] = reliance.clean_accuracy(model, uncorrelated[0], uncorrelated[1],
                                              es.num_classes, batch_size=bs)["clean_acc"]
  for norm in _suite.NORMS:
    out[f"pgd_acc_{norm}"] = train.evaluate_accuracy(
        model, es.images, es.labels, norm=norm, eps=eval_radius(config, norm),
        steps=int(config["pgd_steps"]), key=_suite.eval_key(config["eval_seed"], f"pgd_{norm}"),
        batch_size=bs)
  version = config.get("aa_version", "fast")
  for norm in _suite.NORMS:
    if version == "none":
      out[f"aa_acc_{norm}"] = None
      continue
    _, counts = autoattack.autoattack(
        _suite.eval_key(config["eval_seed"], f"aa_{norm}"), model, es.images, es.labels,
        norm=norm, eps=eval_radius(config, norm), version=version, batch_size=bs,
        return_counts=True)
    out[f"aa_acc_{norm}"] = counts["robust"] / len(es.labels)
  return out


def _cache_key(suite: dict[str, Any], config: dict[str, Any], step: int) -> dict[str, Any]:
  keys = ("n_eval", "pgd_steps", "eps_eval_l1", "eps_eval_l2", "eps_eval_linf", "eval_seed",
          "batch_size", "aa_version")
  return json.loads(json.dumps({"eval": {k: config[k] for k in keys}, "step": step,
                                "data": {k: suite[k] for k in _suite.DATA_FIELDS}}))


def compute(config: dict[str, Any], workdir: str) -> list[dict[str, Any]]:
  """One row per complete model of the suite in `workdir` (`FIELDS`)."""
  from spurjax import io
  from spurjax import train
  _suite.quiet_orbax()
  suite = _suite.read_suite_file(workdir)
  listed = _suite.list_models(workdir)
  if not listed:
    raise FileNotFoundError(f"--workdir: no complete model under {workdir}/models; "
                            "run sims.model_suite first")
  es = uncorrelated = None
  rows = []
  t_all = time.perf_counter()
  for i, (name, cfg) in enumerate(listed):
    path = os.path.join(workdir, "models", name)
    key = _cache_key(suite, config, cfg.steps)
    cache = os.path.join(path, "reliance.json")
    metrics = None
    if os.path.exists(cache):
      with open(cache) as f:
        stored = json.load(f)
      if stored.get("key") == key:
        metrics = stored["metrics"]
    if metrics is None:
      if es is None:
        es, uncorrelated = eval_sets(suite, config)
      t = time.perf_counter()
      metrics = evaluate_model(train.load_model(path), es, uncorrelated, config)
      io.write_json(cache, {"key": key, "metrics": metrics})
      logging.info("model %d/%d %s: evaluated in %.1fs (clean %.3f, bg_gap %.3f, "
                   "pgd_linf %.3f, aa_linf %s)", i + 1, len(listed), name,
                   time.perf_counter() - t, metrics["clean_acc"], metrics["bg_gap"],
                   metrics["pgd_acc_linf"], metrics["aa_acc_linf"])
    else:
      logging.info("model %d/%d %s: cached", i + 1, len(listed), name)
    _common.log_progress(i + 1, len(listed), "evaluation")
    row = {"model": name, "arch": cfg.arch, "norm": cfg.adv_norm or "none",
           "eps": cfg.adv_eps if cfg.adv_norm else 0.0, "seed": cfg.seed}
    row.update({k: metrics.get(k) for k in METRICS + EXTRA})
    rows.append(row)
  logging.info("evaluated %d models in %.1fs", len(rows), time.perf_counter() - t_all)
  order = {"none": 0, "l1": 1, "l2": 2, "linf": 3}
  rows.sort(key=lambda r: (r["arch"], order[r["norm"]], r["eps"], r["seed"]))
  return rows


def aggregate(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
  """Mean and sample std (ddof 1; 0 for one seed) over seeds per (arch, norm, eps)."""
  groups: dict[tuple, list] = {}
  for r in rows:
    groups.setdefault((r["arch"], r["norm"], r["eps"]), []).append(r)
  out = []
  for (arch, norm, eps), rs in groups.items():
    agg = {"arch": arch, "norm": norm, "eps": eps, "n_seeds": len(rs)}
    for m in METRICS + EXTRA:
      v = np.array([r[m] for r in rs if r[m] is not None], float)
      agg[m] = float(v.mean()) if v.size else None
      agg[m + "_std"] = float(v.std(ddof=1)) if v.size > 1 else (0.0 if v.size else None)
    out.append(agg)
  return out


def eps_label(norm: str, eps: float) -> str:
  """Human radius: l_inf in units of 1/255."""
  if norm == "none":
    return "-"
  return norms.radius_label(norm, eps)


def markdown(config: dict[str, Any], agg: list[dict[str, Any]]) -> str:
  """The Markdown table: mean +- std over seeds of every metric per setting."""
  cols = ("clean_acc", "pgd_acc_l1", "pgd_acc_l2", "pgd_acc_linf", "aa_acc_l1", "aa_acc_l2",
          "aa_acc_linf", "uncorr_acc", "rfs",
          "core_acc", "spur_acc", "rcs", "bg_gap", "worst_group_acc", "shift_drop")
  head = ["arch", "norm", "eps", "seeds"] + list(cols)
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for a in agg:
    cells = [a["arch"], a["norm"], eps_label(a["norm"], a["eps"]), str(a["n_seeds"])]
    for c in cols:
      cells.append("n/a" if a[c] is None else
                   f"{a[c]:.3f}" + (f" ± {a[c + '_std']:.3f}" if a["n_seeds"] > 1 else ""))
    lines.append("| " + " | ".join(cells) + " |")
  version = config.get("aa_version", "fast")
  aa_note = (f"aa_acc: AutoAttack ({version}) robust accuracy at the same radii"
             if version != "none" else "aa_acc: skipped (aa_version none)")
  note = (f"\nPGD: {config['pgd_steps']} steps at l1 {config['eps_eval_l1']:g}, l2 "
          f"{config['eps_eval_l2']:g}, l_inf {config['eps_eval_linf']:g}/255; "
          f"{config['n_eval']} test images per protocol part; ± = sample std over seeds.\n"
          f"{aa_note}; pgd_acc: the PGD above (an upper bound that can be loose).\n")
  return "\n".join(lines) + "\n" + note


def figure(config: dict[str, Any], rows: list[dict[str, Any]]):
  """One panel per metric against training radius / evaluation radius (see module doc)."""
  _common.use_agg()
  import matplotlib.pyplot as plt
  agg = aggregate(rows)
  archs = sorted({a["arch"] for a in agg})
  styles = ["-", "--", ":"]
  fig, axes = plt.subplots(3, 4, figsize=(12.5, 8.4), constrained_layout=True)
  for ax, metric in zip(axes.flat, PANELS):
    for ai, arch in enumerate(archs):
      std = [a for a in agg if a["arch"] == arch and a["norm"] == "none"]
      if std and std[0][metric] is not None:
        m, s = std[0][metric], std[0][metric + "_std"] or 0.0
        ax.axhline(m, color="k", ls=styles[ai % 3], lw=1.2,
                   label="standard" + (f" ({arch})" if len(archs) > 1 else ""))
        ax.axhspan(m - s, m + s, color="k", alpha=0.08)
      for norm in _suite.NORMS:
        pts = sorted((a for a in agg if a["arch"] == arch and a["norm"] == norm),
                     key=lambda a: a["eps"])
        pts = [a for a in pts if a[metric] is not None]
        if not pts:
          continue
        x = [a["eps"] / eval_radius(config, norm) for a in pts]
        ax.errorbar(x, [a[metric] for a in pts], yerr=[a[metric + "_std"] for a in pts],
                    color=_common.NORM_COLORS[norm], ls=styles[ai % 3], marker="o", ms=4,
                    capsize=3, label=_common.NORM_LABELS[norm]
                    + (f" ({arch})" if len(archs) > 1 else ""))
    ax.set_xscale("log", base=2)
    ax.set_title(TITLES[metric], fontsize=10)
    ax.grid(alpha=0.3)
  for ax in axes[-1]:
    ax.set_xlabel("training radius / evaluation radius")
  axes.flat[0].legend(fontsize=7)
  n_seeds = max(a["n_seeds"] for a in agg)
  fig.suptitle(
      f"Background reliance of adversarially trained models ({len(rows)} models, up to "
      f"{n_seeds} seeds; error bars/band: std over seeds). Evaluation radii: l1 "
      f"{config['eps_eval_l1']:g}, l2 {config['eps_eval_l2']:g}, "
      f"linf {config['eps_eval_linf']:g}/255", fontsize=10)
  return fig


def run(config: dict[str, Any], workdir: str) -> dict[str, str]:
  """Evaluates the suite in `workdir`; writes reliance.csv/.md/.png and manifest.json."""
  from spurjax import io
  start = time.perf_counter()
  rows = compute(config, workdir)
  paths = _common.write_outputs(workdir, "reliance", rows=rows, fieldnames=FIELDS,
                                figure=figure(config, rows), config=config, seed=None,
                                start=start, extra={"models": len(rows)})
  paths["md"] = os.path.join(workdir, "reliance.md")
  with io.atomic_write(paths["md"]) as f:
    f.write(markdown(config, aggregate(rows)))
  # The manifest lists the Markdown table as well.
  with open(paths["manifest"]) as f:
    manifest = json.load(f)
  manifest["outputs"].append("reliance.md")
  manifest["suite"] = _suite.read_suite_file(workdir)
  io.write_json(paths["manifest"], manifest)
  return paths


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  config = _common.resolve_config(PRESETS, CONFIG_FLAGS)
  if not os.path.exists(os.path.join(FLAGS.workdir, "suite.json")):
    raise app.UsageError(f"--workdir: no suite.json in {FLAGS.workdir}; run "
                         "`python -m sims.model_suite --workdir=...` first")
  _common.start_runtime()
  try:
    run(config, FLAGS.workdir)
  except FileNotFoundError as e:
    raise app.UsageError(str(e)) from e


if __name__ == "__main__":
  app.run(main)

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

Protocol settings for procedural data (calibrated once, benchmarks/calibrate_protocols.py):
Salient noise `salient_sigma` (0.06), RFS levels `rfs_sigma_max` * (1..7) / 7 (0.05), the
shifted domain at `shift_severity` (0.5), `n_groups` (1000) Waterbirds-style images.

Intervals (`spurjax.intervals`): per setting, the 95% t-interval of the seed mean and the
95% percentile bootstrap over test images (`n_boot` draws; each draw resamples every
evaluation part and recomputes each seed's metrics from its per-image records).

Outputs in --workdir: reliance.csv (one row per model and seed, with each model's own
bootstrap interval `<metric>_boot_lo/hi`), reliance_summary.csv (per setting: mean, t- and
bootstrap intervals of `INTERVAL_METRICS`), reliance.md (mean +- t half-width [bootstrap
half-width] per setting), reliance.png (one panel per metric against the training radius in
units of the evaluation radius, one line per norm, the standard model as a horizontal line
and band, error bars = 95% t-interval over seeds), manifest.json. Per-model results are
cached in `models/<name>/reliance.json` and `reliance_records.npz` together with the
evaluation settings, so a rerun only evaluates new models.
"""

from __future__ import annotations

import fnmatch
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

# Noise levels and shift severity of the procedural protocols, calibrated once on one
# standard model (benchmarks/calibrate_protocols.py, rule in its docstring): the Salient sigma
# and the largest RFS level (levels rfs_sigma_max * (1..7) / 7) and the shift severity at
# which that model stays at or above the midpoint of chance and its clean accuracy.
_DEFAULT = dict(n_eval=500, pgd_steps=10, eps_eval_l1=10.0, eps_eval_l2=0.5, eps_eval_linf=4.0,
                eval_seed=1234, batch_size=250, aa_version="fast", salient_sigma=0.06,
                rfs_sigma_max=0.05, shift_severity=0.5, n_groups=1000, n_boot=1000)
PRESETS = {"default": _DEFAULT,
           # AutoAttack is skipped in the CI-sized preset: its compilation alone outweighs
           # the rest of the evaluation there.
           "small": dict(_DEFAULT, n_eval=48, pgd_steps=3, batch_size=48, aa_version="none",
                         n_groups=48, n_boot=50),
           "paper": dict(_DEFAULT, n_eval=2000, pgd_steps=20, aa_version="standard")}
CONFIG_FLAGS = tuple(_DEFAULT)

FLAGS = flags.FLAGS


def define_flags() -> None:
  """Defines the absl flags (when run, not on import: tests import several sims at once)."""
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
  flags.DEFINE_float("salient_sigma", None, "Salient noise level.", lower_bound=0)
  flags.DEFINE_float("rfs_sigma_max", None, "Largest RFS noise level (levels: max * i / 7).",
                     lower_bound=0)
  flags.DEFINE_float("shift_severity", None, "Severity of the shifted domain.", lower_bound=0,
                     upper_bound=1)
  flags.DEFINE_integer("n_groups", None, "Waterbirds-style test images.", lower_bound=8)
  flags.DEFINE_integer("n_boot", None, "Bootstrap draws over test images.", lower_bound=2)
  flags.DEFINE_list("evaluate_only", [], "Glob patterns of model names: evaluate (and cache) "
                    "only these; other models are reported from their cache or skipped. Lets "
                    "several processes share the evaluation of one suite.")

METRICS = ("clean_acc", "pgd_acc_l1", "pgd_acc_l2", "pgd_acc_linf", "aa_acc_l1", "aa_acc_l2",
           "aa_acc_linf", "rfs", "core_acc",
           "spur_acc", "rcs", "bg_gap", "worst_group_acc", "shift_drop")
EXTRA = ("uncorr_acc", "rfs_l2", "rfs_a_fg", "rfs_a_bg", "acc_only_fg", "acc_only_bg_t",
         "acc_no_fg", "acc_mixed_same", "acc_mixed_rand", "acc_mixed_next", "wb_mean_acc",
         "shift_id_acc", "shift_acc")
# Metrics with 95% intervals: t over seeds, percentile bootstrap over test images.
INTERVAL_METRICS = ("clean_acc", "uncorr_acc", "rfs", "rfs_a_fg", "rfs_a_bg", "rfs_l2",
                    "core_acc", "spur_acc", "rcs", "bg_gap", "worst_group_acc", "shift_acc",
                    "shift_drop")
BOOT_FIELDS = tuple(f"{m}_boot_{e}" for m in INTERVAL_METRICS for e in ("lo", "hi"))
FIELDS = ("model", "arch", "norm", "eps", "seed") + METRICS + EXTRA + BOOT_FIELDS
SUMMARY_FIELDS = ("arch", "norm", "eps", "n_seeds") + tuple(
    f"{m}_{e}" for m in INTERVAL_METRICS
    for e in ("mean", "t_lo", "t_hi", "t_hw", "boot_lo", "boot_hi", "boot_hw"))
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


def rfs_sigmas(config: dict[str, Any]) -> tuple[float, ...]:
  """The seven RFS levels rfs_sigma_max * (1, ..., 7) / 7."""
  return tuple(float(config["rfs_sigma_max"]) * i / 7 for i in range(1, 8))


def eval_sets(suite: dict[str, Any], config: dict[str, Any]):
  """The `EvalSet` of the suite's data (shifted part at `shift_severity`, `n_groups`
  Waterbirds-style images) and the "uncorrelated"-domain images and labels."""
  from spurjax import data
  dcfg = _suite.data_config(suite).replace(shift_severity=float(config["shift_severity"]))
  n = int(config["n_eval"])
  es = data.make_eval_set(_suite.eval_key(config["eval_seed"], "evalset"), dcfg, n,
                          n_groups=int(config["n_groups"]))
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
    (metrics, records): metrics is a flat dict metric -> float or None, everything
    `spurjax.reliance.evaluate` returns (RFS at `rfs_sigmas(config)`, Salient at
    `salient_sigma`) plus `uncorr_acc`, `pgd_acc_<norm>` and `aa_acc_<norm>` (None with
    aa_version "none"); records are its per-image outcomes (`spurjax.intervals`), with
    "uncorr_correct".
  """
  from spurjax import autoattack
  from spurjax import reliance
  from spurjax import train
  bs = int(config["batch_size"])
  # The NNX model itself (not a closure over its parameters): the jitted evaluation
  # functions are shared by every model of the suite, so only the first one compiles.
  out, records = reliance.evaluate(_suite.eval_key(config["eval_seed"], "reliance"), model,
                                   es, batch_size=bs, sigmas=rfs_sigmas(config),
                                   salient_sigma=float(config["salient_sigma"]),
                                   return_records=True)
  out = dict(out)
  records["uncorr_correct"] = (reliance.predictions(model, uncorrelated[0], batch_size=bs)
                               == np.asarray(uncorrelated[1]))
  out["uncorr_acc"] = float(np.mean(records["uncorr_correct"]))
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
  return out, records


def _cache_key(suite: dict[str, Any], config: dict[str, Any], step: int) -> dict[str, Any]:
  keys = ("n_eval", "pgd_steps", "eps_eval_l1", "eps_eval_l2", "eps_eval_linf", "eval_seed",
          "batch_size", "aa_version", "salient_sigma", "rfs_sigma_max", "shift_severity",
          "n_groups")
  return json.loads(json.dumps({"eval": {k: config[k] for k in keys}, "step": step,
                                "data": {k: suite[k] for k in _suite.DATA_FIELDS}}))


def _load_records(path: str) -> dict[str, np.ndarray] | None:
  if not os.path.exists(path):
    return None
  with np.load(path, allow_pickle=False) as z:
    return {k: z[k] for k in z.files}


def _save_records(path: str, records: dict[str, np.ndarray]) -> None:
  from spurjax import io
  with io.atomic_write(path, "wb") as f:
    np.savez_compressed(f, **{k: np.asarray(v) for k, v in records.items()})


def compute(config: dict[str, Any], workdir: str) -> list[dict[str, Any]]:
  """One row per complete model of the suite in `workdir` (`FIELDS`).

  Each row also carries its per-image records under the key "_records" (not a CSV field);
  the `<metric>_boot_lo/hi` columns are the model's own bootstrap interval over test images.
  """
  from spurjax import intervals
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
  only = list(config.get("evaluate_only") or [])
  for i, (name, cfg) in enumerate(listed):
    path = os.path.join(workdir, "models", name)
    may_evaluate = not only or any(fnmatch.fnmatch(name, pat) for pat in only)
    key = _cache_key(suite, config, cfg.steps)
    cache = os.path.join(path, "reliance.json")
    rec_path = os.path.join(path, "reliance_records.npz")
    metrics = records = None
    if os.path.exists(cache):
      with open(cache) as f:
        stored = json.load(f)
      records = _load_records(rec_path)
      if stored.get("key") == key and records is not None:
        metrics = stored["metrics"]
    if metrics is None and not may_evaluate:
      logging.info("model %d/%d %s: not cached and not in --evaluate_only; skipped", i + 1,
                   len(listed), name)
      continue
    if metrics is None:
      if es is None:
        es, uncorrelated = eval_sets(suite, config)
      t = time.perf_counter()
      metrics, records = evaluate_model(train.load_model(path), es, uncorrelated, config)
      _save_records(rec_path, records)
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
    boot = intervals.bootstrap_interval([records], int(suite["num_classes"]),
                                        seed=int(config["eval_seed"]),
                                        n_boot=int(config["n_boot"]))
    for m in INTERVAL_METRICS:
      row[f"{m}_boot_lo"], row[f"{m}_boot_hi"] = boot[m] if m in boot else (None, None)
    row["_records"] = records
    rows.append(row)
  logging.info("evaluated %d models in %.1fs", len(rows), time.perf_counter() - t_all)
  order = {"none": 0, "l1": 1, "l2": 2, "linf": 3}
  rows.sort(key=lambda r: (r["arch"], order[r["norm"]], r["eps"], r["seed"]))
  return rows


def aggregate(rows: list[dict[str, Any]], config: dict[str, Any] | None = None,
              num_classes: int | None = None) -> list[dict[str, Any]]:
  """Per (arch, norm, eps): mean and sample std (ddof 1; 0 for one seed) over seeds, and for
  `INTERVAL_METRICS` the 95% t-interval over seeds (`_t_lo`, `_t_hi`, `_t_hw`; None for one
  seed) and the 95% bootstrap interval over test images of the seed mean (`_boot_lo`,
  `_boot_hi`, `_boot_hw`; `spurjax.intervals`, the same resampled images for every seed;
  needs the rows' "_records", `config` and `num_classes`). Every metric also gets `_t_hw`."""
  from spurjax import intervals
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
      hw = intervals.t_interval(v)[1] if v.size else None
      agg[m + "_t_hw"] = None if hw is None else float(hw)
    boot = {}
    if (config is not None and num_classes is not None
        and all(r.get("_records") is not None for r in rs)):
      boot = intervals.bootstrap_interval([r["_records"] for r in rs], int(num_classes),
                                          seed=int(config["eval_seed"]),
                                          n_boot=int(config["n_boot"]))
    for m in INTERVAL_METRICS:
      v = np.array([r[m] for r in rs if r.get(m) is not None], float)
      mean, hw = intervals.t_interval(v) if v.size else (None, None)
      agg[m + "_mean"] = None if mean is None else float(mean)
      agg[m + "_t_hw"] = None if hw is None else float(hw)
      agg[m + "_t_lo"] = None if hw is None else float(mean - hw)
      agg[m + "_t_hi"] = None if hw is None else float(mean + hw)
      lo, hi = boot.get(m, (None, None))
      agg[m + "_boot_lo"], agg[m + "_boot_hi"] = lo, hi
      agg[m + "_boot_hw"] = None if lo is None else 0.5 * (hi - lo)
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
  cols = cols + ("shift_acc", "rfs_a_fg", "rfs_a_bg")
  head = ["arch", "norm", "eps", "seeds"] + list(cols)
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for a in agg:
    cells = [a["arch"], a["norm"], eps_label(a["norm"], a["eps"]), str(a["n_seeds"])]
    for c in cols:
      if a[c] is None:
        cells.append("n/a")
        continue
      cell = f"{a[c]:.3f}"
      if a.get(c + "_t_hw") is not None:
        cell += f" ± {a[c + '_t_hw']:.3f}"
      if a.get(c + "_boot_hw") is not None:
        cell += f" [{a[c + '_boot_hw']:.3f}]"
      cells.append(cell)
    lines.append("| " + " | ".join(cells) + " |")
  version = config.get("aa_version", "fast")
  aa_note = (f"aa_acc: AutoAttack ({version}) robust accuracy at the same radii"
             if version != "none" else "aa_acc: skipped (aa_version none)")
  note = (f"\nPGD: {config['pgd_steps']} steps at l1 {config['eps_eval_l1']:g}, l2 "
          f"{config['eps_eval_l2']:g}, l_inf {config['eps_eval_linf']:g}/255; "
          f"{config['n_eval']} test images per protocol part ({config['n_groups']} "
          f"Waterbirds-style); ± = 95% t-interval half-width over seeds; [b] = 95% bootstrap "
          f"half-width over test images ({config['n_boot']} draws) of the seed mean.\n"
          f"Salient sigma {config['salient_sigma']:g}; RFS sigmas {config['rfs_sigma_max']:g}"
          f" x (1..7)/7; shift severity {config['shift_severity']:g}.\n"
          f"{aa_note}; pgd_acc: the PGD above (an upper bound that can be loose).\n")
  return "\n".join(lines) + "\n" + note


def figure(config: dict[str, Any], rows: list[dict[str, Any]]):
  """One panel per metric against training radius / evaluation radius (see module doc)."""
  _common.use_agg()
  import matplotlib.pyplot as plt
  agg = aggregate(rows)
  for a in agg:
    for m in PANELS:
      a[m + "_err"] = a.get(m + "_t_hw") or 0.0
  archs = sorted({a["arch"] for a in agg})
  styles = ["-", "--", ":"]
  fig, axes = plt.subplots(3, 4, figsize=(12.5, 8.4), constrained_layout=True)
  for ax, metric in zip(axes.flat, PANELS):
    for ai, arch in enumerate(archs):
      std = [a for a in agg if a["arch"] == arch and a["norm"] == "none"]
      if std and std[0][metric] is not None:
        m, s = std[0][metric], std[0][metric + "_err"]
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
        ax.errorbar(x, [a[metric] for a in pts], yerr=[a[metric + "_err"] for a in pts],
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
      f"{n_seeds} seeds; error bars/band: 95% t-interval over seeds). Evaluation radii: l1 "
      f"{config['eps_eval_l1']:g}, l2 {config['eps_eval_l2']:g}, "
      f"linf {config['eps_eval_linf']:g}/255", fontsize=10)
  return fig


def run(config: dict[str, Any], workdir: str) -> dict[str, str]:
  """Evaluates the suite in `workdir`; writes reliance.csv/.md/.png and manifest.json."""
  from spurjax import io
  start = time.perf_counter()
  rows = compute(config, workdir)
  if config.get("evaluate_only"):
    logging.info("--evaluate_only: %d models cached; rerun without it for the report",
                 len(rows))
    return {}
  paths = _common.write_outputs(workdir, "reliance", rows=rows, fieldnames=FIELDS,
                                figure=figure(config, rows), config=config, seed=None,
                                start=start, extra={"models": len(rows)})
  suite = _suite.read_suite_file(workdir)
  agg = aggregate(rows, config, int(suite["num_classes"]))
  paths["md"] = os.path.join(workdir, "reliance.md")
  with io.atomic_write(paths["md"]) as f:
    f.write(markdown(config, agg))
  paths["summary"] = os.path.join(workdir, "reliance_summary.csv")
  io.write_csv(paths["summary"], agg, SUMMARY_FIELDS)
  # The manifest lists the Markdown table as well.
  with open(paths["manifest"]) as f:
    manifest = json.load(f)
  manifest["outputs"] += ["reliance.md", "reliance_summary.csv"]
  manifest["suite"] = _suite.read_suite_file(workdir)
  io.write_json(paths["manifest"], manifest)
  return paths


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  config = _common.resolve_config(PRESETS, CONFIG_FLAGS)
  config["evaluate_only"] = list(FLAGS.evaluate_only)
  if not os.path.exists(os.path.join(FLAGS.workdir, "suite.json")):
    raise app.UsageError(f"--workdir: no suite.json in {FLAGS.workdir}; run "
                         "`python -m sims.model_suite --workdir=...` first")
  _common.start_runtime()
  try:
    run(config, FLAGS.workdir)
  except FileNotFoundError as e:
    raise app.UsageError(str(e)) from e


if __name__ == "__main__":
  define_flags()
  app.run(main)

r"""Claim (iv): spurious correlations help adversarial robustness when they are preserved.

The same adversarial training (norm, radius, steps, seed) on data with the spurious
background correlation, P(background = class) = `p_spur` (0.9), and without it, p = 1/K;
both models are attacked by PGD at their training radius (and clean) on test data where the
correlation is preserved (the "train" domain of the p = `p_spur` data), and, for contrast,
on uncorrelated test data (p = 1/K). The theory (docs/theory.md, claim (iv); `sims.
spurious_helps`) says the optimal adversarial risk is lower with the correlation, i.e.
robust accuracy on preserved-correlation test data should be higher for the model trained
with it.

  python -m sims.preserved_correlation [--preset=small] [--workdir=results/preserved]

Outputs: preserved_correlation.csv (one row per norm, training p and seed),
preserved_correlation.png, manifest.json; models under <workdir>/models/.
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

_DEFAULT = dict(
    norms=["l2", "linf"], eps_l1=10.0, eps_l2=0.5, eps_linf=4.0, seeds=[0, 1], p_spur=0.9,
    image_size=16, num_classes=10, bg_contrast=0.3, fg_scale=1.5, width=16, steps=300,
    batch_size=64, lr=0.05, adv_steps=4, n_eval=500, pgd_steps=10, eval_seed=1234)
PRESETS = {"default": _DEFAULT,
           "small": dict(_DEFAULT, norms=["linf"], seeds=[0], num_classes=4, width=8,
                         steps=30, batch_size=32, adv_steps=2, n_eval=64, pgd_steps=3)}
CONFIG_FLAGS = tuple(_DEFAULT)
FIELDS = ("model", "norm", "eps", "seed", "train_p", "clean_acc_preserved",
          "pgd_acc_preserved", "clean_acc_uncorrelated", "pgd_acc_uncorrelated")

FLAGS = flags.FLAGS


def define_flags() -> None:
  """Defines the absl flags (when run, not on import: tests import several sims at once)."""
  _common.define_common_flags("results/preserved", PRESETS, x64_default=False)
  flags.DEFINE_list("norms", None, "Training norms (l1, l2, linf); training = attack radius.")
  flags.DEFINE_float("p_spur", None, "P(background = class) with the correlation.",
                     lower_bound=0, upper_bound=1)
  flags.DEFINE_integer("num_classes", None, "Classes K (the uncorrelated p is 1/K).",
                       lower_bound=2, upper_bound=12)
  flags.DEFINE_float("bg_contrast", None, "Background contrast.", lower_bound=0, upper_bound=1)
  flags.DEFINE_integer("pgd_steps", None, "PGD steps of the evaluation.", lower_bound=1)
  _common.define_experiment_flags()


def suite_config(config: dict[str, Any]) -> dict[str, Any]:
  """The shared settings `spurjax.suite` needs."""
  return _common.experiment_settings(config, p=config["p_spur"],
                                    bg_contrast=config["bg_contrast"], marker=False,
                                    marker_p=0.9)


radius = _common.radius


def specs_of(config: dict[str, Any]) -> list[suite.ModelSpec]:
  """Per norm and seed: a model with the correlation (p_spur) and one without (1/K)."""
  out = []
  for norm in config["norms"]:
    for seed in config["seeds"]:
      for tag, p in (("corr", config["p_spur"]), ("nocorr", 1.0 / config["num_classes"])):
        out.append(suite.ModelSpec("small_cnn", norm, radius(config, norm), seed, tag=tag,
                                    data=(("p", p),)))
  return out


def run(config: dict[str, Any], workdir: str) -> dict[str, str]:
  """Trains (or reuses) the models, evaluates them, writes CSV, PNG and manifest."""
  from spurjax import data
  from spurjax import train
  start = time.perf_counter()
  suite.quiet_orbax()
  shared = suite_config(config)
  specs = specs_of(config)
  suite.train_models(shared, workdir, specs)
  dcfg = suite.data_config(shared)
  n = int(config["n_eval"])
  sets = {}
  for domain in ("train", "uncorrelated"):
    b = data.sample_batch(suite.eval_key(config["eval_seed"], domain), dcfg, n, domain)
    sets["preserved" if domain == "train" else "uncorrelated"] = (np.asarray(b.images),
                                                                  np.asarray(b.labels))
  rows = []
  for spec in specs:
    model = train.load_model(suite.model_dir(workdir, spec))
    row = {"model": spec.name, "norm": spec.norm, "eps": spec.eps, "seed": spec.seed,
           "train_p": dict(spec.data)["p"]}
    for name, (x, y) in sets.items():
      row[f"clean_acc_{name}"] = train.evaluate_accuracy(model, x, y)
      row[f"pgd_acc_{name}"] = train.evaluate_accuracy(
          model, x, y, norm=spec.norm, eps=spec.eps, steps=int(config["pgd_steps"]),
          key=suite.eval_key(config["eval_seed"], f"pgd_{name}"))
    logging.info("%s: %s", spec.name, {k: v for k, v in row.items() if "acc" in k})
    rows.append(row)
  return _common.write_outputs(workdir, "preserved_correlation", rows=rows,
                               fieldnames=FIELDS, figure=figure(config, rows),
                               config=config, seed=None, start=start)


def figure(config: dict[str, Any], rows: list[dict[str, Any]]):
  """Bars: robust (and clean) accuracy on preserved / uncorrelated test data, per norm."""
  _common.use_agg()
  import matplotlib.pyplot as plt
  norms = config["norms"]
  fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), constrained_layout=True)
  for ax, domain in zip(axes, ("preserved", "uncorrelated")):
    for i, norm in enumerate(norms):
      for j, (p_name, corr) in enumerate((("with correlation", True), ("p = 1/K", False))):
        sel = [r for r in rows if r["norm"] == norm and (r["train_p"] > 1.0 /
                                                         config["num_classes"]) == corr]
        for k, metric in enumerate(("clean_acc", "pgd_acc")):
          v = np.array([r[f"{metric}_{domain}"] for r in sel])
          x = i * 5 + j * 2 + k * 0.8
          ax.bar(x, v.mean(), 0.75, yerr=v.std(ddof=1) if v.size > 1 else 0,
                 color=("tab:red" if corr else "tab:gray"), alpha=1.0 if k else 0.4,
                 capsize=3, label=(f"{metric.replace('_acc', '')}, trained {p_name}"
                                   if i == 0 else None))
    ax.set_xticks([i * 5 + 1.4 for i in range(len(norms))])
    ax.set_xticklabels([f"{_common.NORM_LABELS[n]} eps=" + (f"{config['eps_linf']:g}/255"
                                                           if n == "linf" else
                                                           f"{radius(config, n):g}")
                        for n in norms])
    ax.set_ylabel("accuracy")
    ax.set_title("test data: correlation preserved (p = p_spur)" if domain == "preserved"
                 else "test data: correlation removed (p = 1/K)")
    ax.set_ylim(0, 1)
  axes[0].legend(fontsize=7)
  fig.suptitle(f"Claim (iv): adversarial training with (p={config['p_spur']}) and without "
               f"(p=1/K) the spurious background; PGD at the training radius", fontsize=10)
  return fig


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  config = _common.resolve_config(PRESETS, CONFIG_FLAGS)
  try:
    for n in config["norms"]:
      _common.check(n in suite.NORMS, f"--norms: unknown norm {n!r}")
    _common.check(bool(config["norms"]), "--norms: empty")
    _common.check(bool(config["seeds"]), "--seeds: empty")
    _common.check(config["image_size"] % 8 == 0, "--image_size: must be a multiple of 8")
  except flags.ValidationError as e:
    raise app.UsageError(str(e)) from e
  _common.start_runtime()
  run(config, FLAGS.workdir)


if __name__ == "__main__":
  define_flags()
  app.run(main)

"""One-time calibration of the procedural protocols' noise levels and shift severity.

  python -m benchmarks.calibrate_protocols [--outdir=results/calibration] [--n=500]

Trains ONE standard SmallCNN with the default settings of `sims.model_suite` (data and
training), but with its own seed (100, not one of the suite's seeds), then measures on
in-distribution test images of the suite's data:
- Salient: core_acc (noise off the soft mask) and spur_acc (noise on it), 5 trials, for each
  sigma of `SIGMAS`;
- RFS: a_fg (noise on the object) and a_bg (noise on the background), 1 trial, per sigma;
- shift: accuracy on the "shifted" domain for each severity of `SEVERITIES` (all factors),
  and for each factor alone at severity 1 and at the chosen severity.

Rule, fixed before the sweep (a protocol is most informative where the reference model is
neither at chance nor unaffected): with m = (1/K + clean accuracy) / 2, the midpoint between
chance and the clean accuracy,
- Salient sigma = the largest grid sigma at which min(core_acc, spur_acc) >= m;
- RFS: sigma_max = the largest grid sigma at which min(a_fg, a_bg) >= m, and the RFS levels
  are sigma_max * (1, ..., 7) / 7 (seven levels like RIVAL10's {30, ..., 210}/255, so the
  level-averaged accuracies are above m);
- shift severity = the largest grid severity at which the shifted accuracy >= m.
Nothing here looks at an adversarially trained model. Writes calibration.json in --outdir
and prints the table; the chosen values are the defaults of `sims.background_reliance`.
"""

import json
import os
import time

from absl import app
from absl import flags
import numpy as np

from sims import model_suite  # its default preset (importing a sim defines no flags)

SIGMAS = (0.01, 0.02, 0.03, 0.04, 0.05, 0.06, 0.08, 0.10, 0.12, 0.16, 0.25)
SEVERITIES = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
SEED = 100

_WORKDIR = flags.DEFINE_string("outdir", "results/calibration", "Model and output directory.")
_N = flags.DEFINE_integer("n", 500, "Test images.")


def largest_at_least(grid, values, threshold):
  """The largest grid point whose value is >= threshold (None if none is)."""
  ok = [g for g, v in zip(grid, values) if v >= threshold]
  return max(ok) if ok else None


def main(argv):
  del argv
  import jax
  from spurjax import suite as _suite
  from spurjax import data
  from spurjax import reliance
  from spurjax import train
  start = time.perf_counter()
  config = dict(model_suite.PRESETS["default"])
  spec = _suite.ModelSpec("small_cnn", "none", 0.0, SEED)
  _suite.train_models(config, _WORKDIR.value, [spec])
  model = train.load_model(_suite.model_dir(_WORKDIR.value, spec))
  dcfg = _suite.data_config(_suite.data_settings(config))
  k = dcfg.num_classes
  n = _N.value
  key = jax.random.key(2024)
  b = data.sample_batch(jax.random.fold_in(key, 0), dcfg, n, "train")
  images, labels = np.asarray(b.images), np.asarray(b.labels)
  clean = reliance.clean_accuracy(model, images, labels, k)["clean_acc"]
  mid = 0.5 * (1.0 / k + clean)
  out = {"clean_acc": clean, "midpoint": mid, "n": n, "model_seed": SEED,
         "salient": [], "rfs": [], "shift": [], "shift_factor": []}
  for s in SIGMAS:
    sal = reliance.salient(jax.random.fold_in(key, 1), model, images, labels,
                           np.asarray(b.soft_masks), k, sigma=s, trials=5)
    r = reliance.rfs(jax.random.fold_in(key, 2), model, images, labels, np.asarray(b.masks),
                     k, sigmas=[s], trials=1)
    out["salient"].append({"sigma": s, "core_acc": sal["core_acc"],
                           "spur_acc": sal["spur_acc"]})
    out["rfs"].append({"sigma": s, "a_fg": r["rfs_a_fg"], "a_bg": r["rfs_a_bg"]})
    print(f"sigma {s:.3f}: salient core {sal['core_acc']:.3f} spur {sal['spur_acc']:.3f}; "
          f"rfs a_fg {r['rfs_a_fg']:.3f} a_bg {r['rfs_a_bg']:.3f}", flush=True)

  def shift_acc(severity, factors=data.SHIFT_FACTORS):
    cfg = dcfg.replace(shift_severity=float(severity), shift_factors=tuple(factors))
    sb = data.sample_batch(jax.random.fold_in(key, 3), cfg, n, "shifted")
    return reliance.clean_accuracy(model, np.asarray(sb.images), np.asarray(sb.labels),
                                   k)["clean_acc"]

  for sev in SEVERITIES:
    out["shift"].append({"severity": sev, "shift_acc": shift_acc(sev)})
    print(f"severity {sev:.1f}: shifted accuracy {out['shift'][-1]['shift_acc']:.3f}",
          flush=True)
  salient_sigma = largest_at_least(SIGMAS, [min(r["core_acc"], r["spur_acc"])
                                            for r in out["salient"]], mid)
  rfs_sigma_max = largest_at_least(SIGMAS, [min(r["a_fg"], r["a_bg"]) for r in out["rfs"]],
                                   mid)
  severity = largest_at_least(SEVERITIES, [r["shift_acc"] for r in out["shift"]], mid)
  for f in data.SHIFT_FACTORS:
    row = {"factor": f, "at_1": shift_acc(1.0, (f,))}
    if severity is not None:
      row["at_chosen"] = shift_acc(severity, (f,))
    out["shift_factor"].append(row)
    print(f"factor {f} alone: {row}", flush=True)
  out["chosen"] = {"salient_sigma": salient_sigma, "rfs_sigma_max": rfs_sigma_max,
                   "shift_severity": severity}
  out["wall_time_s"] = round(time.perf_counter() - start, 1)
  print(f"clean {clean:.3f}, midpoint {mid:.3f}; chosen: {out['chosen']}")
  os.makedirs(_WORKDIR.value, exist_ok=True)
  from spurjax import io
  io.write_json(os.path.join(_WORKDIR.value, "calibration.json"), out)


if __name__ == "__main__":
  app.run(main)

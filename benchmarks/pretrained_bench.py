"""ResNet-50 inference throughput, JAX vs torch, and checkpoint load time / peak memory.

  python benchmarks/pretrained_bench.py [--batch_size=16] [--image_size=224] [--reps=5]
      [--threads=0] [--skip_torch] [--workdir=/tmp/pretrained_bench]

1. Inference: the same random-weight ResNet-50 (random BatchNorm statistics), converted
   from a torch state dict, timed in JAX (`jit` of the eval-mode model, float32) and in
   torch (`eval()`, `no_grad`, float32, NCHW) on the same batch, in the same process.
   torch gets `--threads` intra-op threads (0: os.cpu_count()); XLA's CPU client uses one
   thread per core by default, so both use every core. Median of `--reps` timed calls after
   a warm-up call (JAX's first call includes compilation, reported separately).
2. Loading: a ~100 MB ResNet-50 checkpoint in the robustness layout, written with the
   torch-free `pretrained.write_torch_checkpoint` in both torch formats, and its native
   conversion (`pretrained.save`); each is loaded by `pretrained.load` in a fresh
   subprocess that reports the wall time and the increase of its peak RSS over the RSS
   just before the call (after jax and a tiny warm-up load), against the file size.
"""

import json
import os
import subprocess
import sys
import time

from absl import app
from absl import flags
import jax
import numpy as np

from spurjax import imagenet_models
from spurjax import models
from spurjax import pretrained

_BATCH = flags.DEFINE_integer("batch_size", 16, "Images per inference call.")
_SIZE = flags.DEFINE_integer("image_size", 224, "Image side.")
_REPS = flags.DEFINE_integer("reps", 5, "Timed calls (median reported).")
_THREADS = flags.DEFINE_integer("threads", 0, "torch intra-op threads (0: all cores).")
_SKIP_TORCH = flags.DEFINE_bool("skip_torch", False, "JAX only.")
_WORKDIR = flags.DEFINE_string("workdir", "/tmp/pretrained_bench", "Scratch folder.")

_CHILD = r"""
import json, sys, time
import numpy as np
from spurjax import pretrained
path, warm = sys.argv[1], sys.argv[2]
pretrained.load(warm)   # initialises jax and flax
def status_mb(field):
  # VmHWM (peak RSS) is reset by exec; getrusage's ru_maxrss is not (it would include
  # the parent's RSS at fork time).
  with open("/proc/self/status") as f:
    return next(int(l.split()[1]) for l in f if l.startswith(field)) / 1024
before = status_mb("VmRSS")
t0 = time.perf_counter()
model = pretrained.load(path)
np.asarray(model.fc.kernel[...])
seconds = time.perf_counter() - t0
peak = status_mb("VmHWM")
print(json.dumps({"seconds": seconds, "rss_before_mb": before, "peak_mb": peak,
                  "increase_mb": peak - before}))
"""


def _median_time(fn, reps):
  times = []
  for _ in range(reps):
    t0 = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t0)
  return float(np.median(times))


def _state_dict(arch="resnet50", seed=0):
  """Random torchvision-named ResNet state dict as NumPy (torch-free) and its spec."""
  spec = imagenet_models.ResNetSpec(arch)
  model = models.imagenet_resnet(arch, rngs=__import__("flax").nnx.Rngs(seed))
  rng = np.random.default_rng(seed)
  sd = {}
  from flax import nnx
  for p, v in nnx.to_flat_state(nnx.state(model)):
    if tuple(p) in (("mean",), ("std",)):
      continue
    key, leaf = pretrained._torch_key(tuple(p))
    a = np.asarray(v[...])
    if leaf == "kernel":
      a = a.transpose(3, 2, 0, 1) if a.ndim == 4 else a.T
    elif leaf == "mean":
      a = 0.1 * rng.standard_normal(a.shape).astype(np.float32)
    elif leaf == "var":
      a = (0.5 + rng.random(a.shape)).astype(np.float32)
    sd[key] = np.ascontiguousarray(a)
  return sd, spec


def bench_inference(report):
  sd, spec = _state_dict()
  jmodel = pretrained.model_from_state_dict(sd, spec)
  view = models.eval_view(jmodel)
  from flax import nnx
  graphdef, state = nnx.split(view)
  fwd = jax.jit(lambda s, x: nnx.merge(graphdef, s)(x))
  x = np.random.default_rng(1).random((_BATCH.value, _SIZE.value, _SIZE.value, 3),
                                      dtype=np.float32)
  t0 = time.perf_counter()
  out = np.asarray(fwd(state, x))
  report["jax_first_call_s"] = time.perf_counter() - t0
  t = _median_time(lambda: fwd(state, x).block_until_ready(), _REPS.value)
  report["jax_images_per_s"] = _BATCH.value / t
  print(f"JAX  ResNet-50 {_SIZE.value}px batch {_BATCH.value}: {_BATCH.value / t:.1f} images/s"
        f" (first call incl. compile {report['jax_first_call_s']:.1f} s)")
  if _SKIP_TORCH.value:
    return
  try:
    import torch
  except ImportError:
    print("torch not importable: JAX only")
    return
  threads = _THREADS.value or os.cpu_count()
  torch.set_num_threads(threads)
  sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests", "data"))
  import make_torch_fixtures as mtf
  tnet = mtf.ResNet("resnet50").eval()
  missing, unexpected = tnet.load_state_dict({k: torch.from_numpy(v.copy())
                                             for k, v in sd.items()}, strict=False)
  assert not unexpected and all(k.endswith("num_batches_tracked") for k in missing)
  xt = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
  m = torch.tensor(imagenet_models.IMAGENET_MEAN).view(1, 3, 1, 1)
  s = torch.tensor(imagenet_models.IMAGENET_STD).view(1, 3, 1, 1)

  def run_torch():
    with torch.no_grad():
      return tnet((xt - m) / s)

  ref = run_torch().numpy()
  t = _median_time(run_torch, _REPS.value)
  report["torch_images_per_s"] = _BATCH.value / t
  report["torch_threads"] = threads
  report["jax_over_torch"] = report["jax_images_per_s"] / report["torch_images_per_s"]
  report["max_rel_diff"] = float(np.abs(out - ref).max() / np.abs(ref).max())
  print(f"torch ResNet-50 ({threads} threads): {_BATCH.value / t:.1f} images/s; "
        f"JAX / torch = {report['jax_over_torch']:.2f}x; "
        f"max|diff|/max|logit| = {report['max_rel_diff']:.1e}")


def bench_loading(report):
  work = _WORKDIR.value
  os.makedirs(work, exist_ok=True)
  sd, spec = _state_dict()
  robust = {"model": {"module.normalizer.new_mean": np.zeros((3, 1, 1), np.float32),
                      "module.normalizer.new_std": np.ones((3, 1, 1), np.float32),
                      **{"module.model." + k: v for k, v in sd.items()}},
            "epoch": 90, "nat_prec1": 0.0}
  warm = os.path.join(work, "warm.pt")
  small, _ = _small_state_dict()
  pretrained.write_torch_checkpoint(warm, small)
  files = {}
  for legacy in (False, True):
    p = os.path.join(work, f"resnet50_{'legacy' if legacy else 'zip'}.ckpt")
    pretrained.write_torch_checkpoint(p, robust, legacy=legacy)
    files["torch legacy" if legacy else "torch zip"] = p
  native = os.path.join(work, "resnet50.safetensors")
  pretrained.save(pretrained.load(files["torch zip"]), native)
  files["native"] = native
  root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
  for name, p in files.items():
    out = subprocess.run([sys.executable, "-c", _CHILD, p, warm], capture_output=True,
                         text=True, cwd=root, env=dict(os.environ, PYTHONPATH=root))
    if out.returncode:
      raise RuntimeError(out.stderr[-2000:])
    r = json.loads(out.stdout.strip().splitlines()[-1])
    r["file_mb"] = os.path.getsize(p) / 2**20
    r["increase_over_file"] = r["increase_mb"] / r["file_mb"]
    report[f"load_{name}"] = r
    print(f"load {name:12s} {r['file_mb']:6.1f} MB: {r['seconds']:.2f} s, peak RSS +"
          f"{r['increase_mb']:.0f} MB over the pre-load RSS ({r['increase_over_file']:.2f}x "
          f"the file; absolute peak {r['peak_mb']:.0f} MB)")


def _small_state_dict():
  spec = imagenet_models.ResNetSpec("resnet18", 10, 4, (2, 2, 2, 2))
  m = imagenet_models.skeleton(spec)
  from flax import nnx
  sd = {}
  for p, v in nnx.to_flat_state(nnx.state(m)):
    if tuple(p) in (("mean",), ("std",)):
      continue
    key, leaf = pretrained._torch_key(tuple(p))
    a = np.asarray(v[...], np.float32) + (1.0 if leaf == "var" else 0.0)
    sd[key] = a.transpose(3, 2, 0, 1) if a.ndim == 4 else (a.T if a.ndim == 2 else a)
  return {k: np.ascontiguousarray(v) for k, v in sd.items()}, spec


def main(argv):
  del argv
  report = {"devices": [str(d) for d in jax.devices()], "cpu_count": os.cpu_count()}
  print(f"devices: {report['devices']}, {os.cpu_count()} CPUs")
  bench_inference(report)
  bench_loading(report)
  path = os.path.join(_WORKDIR.value, "report.json")
  with open(path, "w") as f:
    json.dump(report, f, indent=1)
  print(f"report: {path}")


if __name__ == "__main__":
  app.run(main)

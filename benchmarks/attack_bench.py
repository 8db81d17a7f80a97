"""Throughput of spurjax's PGD and adversarial-training step against PyTorch + torchattacks.

Run by hand, never as a test:

  python benchmarks/attack_bench.py [--sizes 32,64] [--batch 128] [--repeats 5]
      [--workloads pgd_linf,pgd_l2,train_step] [--json out.json]

For the small CNN (3 convs, 32-64-128 channels) at each image size: images/s of a 10-step
l_inf PGD (eps 8/255), a 10-step l2 PGD (eps 0.5) and one adversarial-training step (10-step
l_inf PGD in eval mode + SGD update in train mode), batch 128; the same network and workload
in PyTorch with torchattacks when torch is importable (`pip install torch==2.13.0` and
`pip install --no-deps torchattacks`, the optional `bench` extra); the ratio JAX / torch; and
the achieved model GFLOP/s against a float32 matmul peak measured in the same run.

JAX and torch run interleaved: in each of `--repeats` rounds every JAX workload runs once and
then its torch twin, so that the load of a shared machine hits both alike; figures are
medians over the rounds, and each ratio is printed with the range of its per-round ratios
and the load average before and after.

FLOPs counted (2 per multiply-add, convs and matmuls): a PGD step is a forward and an
input-gradient backward pass, 2F per image, F = `models.forward_flops`; PGD with `s` steps is
`2 s F + F` (spurjax re-evaluates the final point to keep the best iterate; torchattacks does
not, so its count is `2 s F`); a training step adds forward + weight and input gradients, 3F.

XLA CPU options are read from XLA_FLAGS as usual; `--xla_flags` appends to it before JAX
starts, for trying library fusions (see `--help`).
"""

from __future__ import annotations

import argparse
import os
import sys
import time


def _parse():
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--sizes", default="32,64", help="comma-separated image sizes")
  p.add_argument("--batch", type=int, default=128)
  p.add_argument("--steps", type=int, default=10, help="PGD steps")
  p.add_argument("--width", type=int, default=32, help="small CNN base width")
  p.add_argument("--repeats", type=int, default=5,
                 help="timed rounds (each workload once per round, JAX and torch alternated)")
  p.add_argument("--workloads", default=",".join(("pgd_linf", "pgd_l2", "train_step")),
                 help="comma-separated subset of pgd_linf, pgd_l2, train_step")
  p.add_argument("--json", default=None, help="write the figures as one JSON object here")
  p.add_argument("--no-torch", action="store_true", help="skip the PyTorch column")
  p.add_argument("--xla_flags", default="", help="appended to XLA_FLAGS before JAX starts")
  p.add_argument("--arch", default="small_cnn", help="small_cnn or resnet18 (GPU)")
  return p.parse_args()


ARGS = _parse() if __name__ == "__main__" else None
if ARGS is not None and ARGS.xla_flags:
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + ARGS.xla_flags).strip()

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402  (after XLA_FLAGS)
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402
from jax.sharding import NamedSharding, PartitionSpec as P  # noqa: E402

from benchmarks import _timing  # noqa: E402
from spurjax import attacks  # noqa: E402
from spurjax import io  # noqa: E402
from spurjax import models  # noqa: E402
from spurjax import train  # noqa: E402

EPS = {"linf": 8 / 255, "l2": 0.5}


def _time(fn, repeats):
  """Median seconds of `fn()` (which blocks) over `repeats` calls after one warm-up."""
  fn()
  ts = []
  for _ in range(repeats):
    t = time.perf_counter()
    fn()
    ts.append(time.perf_counter() - t)
  return float(np.median(ts))


def matmul_peak_gflops(n=2048, repeats=5):
  """Float32 GFLOP/s of an n x n matmul in XLA on this machine (2 n^3 FLOPs)."""
  a = jax.random.normal(jax.random.key(0), (n, n))
  f = jax.jit(lambda a: a @ a)
  t = _time(lambda: f(a).block_until_ready(), repeats)
  return 2 * n ** 3 / t / 1e9


WORKLOADS = ("pgd_linf", "pgd_l2", "train_step")


def jax_workloads(size, batch, steps, width, arch, names):
  """`({name: blocking callable}, {name: model FLOPs per call}, forward FLOPs per image)` of
  spurjax's PGD (`pgd_linf`, `pgd_l2`) and adversarial-training step (`train_step`: the
  jitted, donated `train` step, 10-step l_inf PGD + SGD update), compiled."""
  shape = (size, size, 3)
  model = models.make_model(arch, 10, width=width, rngs=nnx.Rngs(0))
  flops = models.forward_flops(model, shape)
  graphdef, state = nnx.split(models.eval_view(model))
  x = jax.random.uniform(jax.random.key(1), (batch, *shape))
  y = jax.random.randint(jax.random.key(2), (batch,), 0, 10)
  fns, work = {}, {}
  for norm in ("linf", "l2"):
    if f"pgd_{norm}" not in names:
      continue

    @jax.jit
    def attack(state, x, y, key, norm=norm):
      m = nnx.merge(graphdef, state)
      return attacks.pgd(key, attacks.make_loss_fn(m), x, y, norm=norm, eps=EPS[norm],
                         steps=steps)
    fns[f"pgd_{norm}"] = (lambda attack=attack:
                          attack(state, x, y, jax.random.key(3)).block_until_ready())
    work[f"pgd_{norm}"] = batch * (2 * steps + 1) * flops
  if "train_step" in names:
    cfg = train.TrainConfig(arch=arch, num_classes=10, width=width, image_shape=shape,
                            batch_size=batch, adv_norm="linf", adv_eps=EPS["linf"],
                            adv_steps=steps, steps=10 ** 6)
    gd, tstate = train._init(cfg)  # pylint: disable=protected-access
    mesh = train.data_mesh()
    step = train._step_fn(gd, cfg, mesh)  # pylint: disable=protected-access
    # Placed as `train.train` places it: a state with another sharding than the step's
    # output would compile the step a second time on the second call.
    holder = [jax.device_put(tstate, NamedSharding(mesh, P()))]

    def one_step():
      holder[0], metrics = step(holder[0], x, y, jax.random.key(4))
      jax.block_until_ready(metrics)
    fns["train_step"] = one_step
    work["train_step"] = batch * (2 * steps + 3) * flops
  return fns, work, flops


def torch_workloads(size, batch, steps, width, names):
  """`{name: blocking callable}`: the same network (conv-BN-ReLU x3, 2x2 max-pools, global
  average pool, linear head) and workloads in PyTorch + torchattacks, NCHW."""
  import torch  # pylint: disable=import-outside-toplevel
  import torchattacks  # pylint: disable=import-outside-toplevel
  from torch import nn  # pylint: disable=import-outside-toplevel

  def block(cin, cout):
    return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout, momentum=0.1),
            nn.ReLU()]

  w = width
  net = nn.Sequential(*block(3, w), nn.MaxPool2d(2), *block(w, 2 * w), nn.MaxPool2d(2),
                      *block(2 * w, 4 * w), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                      nn.Linear(4 * w, 10))
  torch.manual_seed(0)
  x = torch.rand(batch, 3, size, size)
  y = torch.randint(0, 10, (batch,))
  fns = {}
  for norm, cls in (("linf", torchattacks.PGD), ("l2", torchattacks.PGDL2)):
    kw = {"eps": EPS[norm], "alpha": 2.5 * EPS[norm] / steps, "steps": steps,
          "random_start": True}
    atk = cls(net, **kw)

    def attack(atk=atk):
      net.eval()
      atk(x, y)
    if f"pgd_{norm}" in names:
      fns[f"pgd_{norm}"] = attack
  opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9, nesterov=True,
                        weight_decay=5e-4)
  atk = torchattacks.PGD(net, eps=EPS["linf"], alpha=2.5 * EPS["linf"] / steps, steps=steps,
                         random_start=True)

  def one_step():
    net.eval()
    x_adv = atk(x, y)
    net.train()
    opt.zero_grad()
    loss = nn.functional.cross_entropy(net(x_adv), y)
    loss.backward()
    opt.step()
  if "train_step" in names:
    fns["train_step"] = one_step
  return fns


def figures(size, args, names, have_torch, peak):
  """Times the JAX and (if `have_torch`) torch workloads at `size`, interleaved: in each of
  `args.repeats` rounds every JAX workload runs once and then its torch twin. Figures are
  medians over the rounds; `*_ratio` is JAX img/s over torch img/s from those medians, and
  `*_ratio_rounds` the per-round ratios (their spread is the run's own noise)."""
  jfns, work, flops = jax_workloads(size, args.batch, args.steps, args.width, args.arch, names)
  tfns = (torch_workloads(size, args.batch, args.steps, args.width, names)
          if have_torch and args.arch == "small_cnn" else {})
  fns = {}
  for k in names:
    fns["jax " + k] = jfns[k]
    if k in tfns:
      fns["torch " + k] = tfns[k]
  load0 = os.getloadavg()[0]
  ts = _timing.interleaved(fns, args.repeats)
  fig = {"forward_gflop_per_image": flops / 1e9, "repeats": args.repeats,
         "load_average": [load0, os.getloadavg()[0]]}
  for k in names:
    tj = float(np.median(ts["jax " + k]))
    fig[f"{k}_img_per_s"] = args.batch / tj
    fig[f"{k}_gflops"] = work[k] / tj / 1e9
    fig[f"{k}_peak_fraction"] = fig[f"{k}_gflops"] / peak
    if "torch " + k in ts:
      fig[f"torch_{k}_img_per_s"] = args.batch / float(np.median(ts["torch " + k]))
      fig[f"{k}_ratio"] = fig[f"{k}_img_per_s"] / fig[f"torch_{k}_img_per_s"]
      fig[f"{k}_ratio_rounds"] = [b / a for a, b in zip(ts["jax " + k], ts["torch " + k])]
  if tfns:
    import torch  # pylint: disable=import-outside-toplevel
    fig["torch_threads"] = torch.get_num_threads()
    fig["torch_version"] = torch.__version__
  return fig


def main(args):
  sizes = [int(s) for s in args.sizes.split(",")]
  names = [k for k in args.workloads.split(",") if k]
  bad = [k for k in names if k not in WORKLOADS]
  if bad or not names:
    raise ValueError(f"--workloads: expected a comma-separated subset of {WORKLOADS}, got "
                     f"{args.workloads!r}")
  if args.repeats < 1:
    raise ValueError(f"--repeats: must be >= 1, got {args.repeats}")
  have_torch = False
  if not args.no_torch:
    try:
      import torch  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import
      import torchattacks  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import
      have_torch = True
    except ImportError as e:
      print(f"torch/torchattacks not importable ({e}); skipping the PyTorch column. "
            "Install: pip install torch==2.13.0 && pip install --no-deps torchattacks")
  peak = matmul_peak_gflops()
  result = {"devices": [str(d) for d in jax.devices()], "xla_flags":
            os.environ.get("XLA_FLAGS", ""), "batch": args.batch, "pgd_steps": args.steps,
            "arch": args.arch, "width": args.width, "matmul_peak_gflops": peak, "sizes": {}}
  print(f"devices {result['devices']}; matmul peak {peak:.1f} GFLOP/s; "
        f"XLA_FLAGS={result['xla_flags']!r}")
  for size in sizes:
    fig = figures(size, args, names, have_torch, peak)
    result["sizes"][str(size)] = fig
    print(f"\n{args.arch} {size}x{size}, batch {args.batch}, {args.steps}-step PGD "
          f"({fig['forward_gflop_per_image']:.3f} GFLOP/image forward), JAX and torch "
          f"interleaved, median of {args.repeats}; load average "
          f"{fig['load_average'][0]:.1f} -> {fig['load_average'][1]:.1f}")
    for k in names:
      line = (f"  {k:10s} jax {fig[f'{k}_img_per_s']:8.1f} img/s "
              f"({fig[f'{k}_gflops']:6.1f} GFLOP/s, {100 * fig[f'{k}_peak_fraction']:4.0f}% "
              f"of matmul peak)")
      if f"torch_{k}_img_per_s" in fig:
        r = fig[f"{k}_ratio_rounds"]
        line += (f"   torch {fig[f'torch_{k}_img_per_s']:8.1f} img/s   "
                 f"ratio {fig[f'{k}_ratio']:.2f} (rounds {min(r):.2f}-{max(r):.2f})")
      print(line)
  # The flat keys: the largest size's figures at the top level.
  top = result["sizes"][str(sizes[-1])]
  for k in names:
    result[k + "_img_per_s"] = top[k + "_img_per_s"]
    result["torch_" + k + "_img_per_s"] = top.get("torch_" + k + "_img_per_s")
    result[k + "_ratio"] = top.get(k + "_ratio")
  if args.json:
    io.write_json(args.json, result)
    print(f"\nwrote {args.json}")


if __name__ == "__main__":
  main(ARGS)

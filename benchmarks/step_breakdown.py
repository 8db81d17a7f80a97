"""Where a PGD step of the small CNN spends its time on XLA:CPU, against the matmul peak.

Run by hand, never as a test:

  python benchmarks/step_breakdown.py [--sizes 32,64] [--batch 128] [--width 32]

One PGD step is a forward pass and an input-gradient backward pass of the eval-mode model.
With `Im2colConv` every convolution is one GEMM on im2col patches, `(B H W, 9 Cin) x
(9 Cin, Cout)` forward and `(B H W, Cout) x (Cout, 9 Cin)` for the input gradient, so the
step splits into
  * the GEMMs alone (the exact shapes of the model, timed as one jitted function), and
  * everything else (patch extraction and its transpose, a sum of 9 shifted slices; eval
    BatchNorm, ReLU and their gradients; the 2x2 max-pool and its mask; the head),
and each part is reported as a fraction of the step and in GFLOP/s against a float32
matmul peak (2048^2 x 2048) measured in the same run. All figures are medians of
`--repeats` timed calls; ratios within one run are meaningful on a loaded machine, absolute
figures are not. Then the l1 PGD step's extra work (knapsack direction, l1-ball-and-box
projection) against the l2 step's (`--l1_only`), and the l1 against the l2 adversarial
training step (`--train`). `--conv_variants` times other formulations of the convolutions
(custom VJPs, XLA's convolution) in and out of a `fori_loop`.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

from benchmarks import _timing  # noqa: E402
from spurjax import attacks  # noqa: E402
from spurjax import models  # noqa: E402


def _time(fn, repeats):
  """Median seconds of `fn()` (which blocks) over `repeats` calls after one warm-up."""
  fn()
  ts = []
  for _ in range(repeats):
    t = time.perf_counter()
    fn()
    ts.append(time.perf_counter() - t)
  return float(np.median(ts))


def gemm_shapes(size, width):
  """(M, K, N) of the three im2col convolutions of `SmallCNN` at `size` x `size`."""
  w = width
  return [(size * size, 27, w), ((size // 2) ** 2, 9 * w, 2 * w),
          ((size // 4) ** 2, 18 * w, 4 * w)]


def l1_parts(size, batch, repeats):
  """The l1 PGD step's extra work (direction and projection) against the l2 step's."""
  # pylint: disable=protected-access
  g = jax.random.normal(jax.random.key(0), (batch, size, size, 3))
  x = jax.random.uniform(jax.random.key(1), (batch, size, size, 3))
  d = 0.01 * jax.random.normal(jax.random.key(2), (batch, size, size, 3))
  fs = {
      "l1 direction (knapsack)": (jax.jit(lambda g, x: attacks._l1_direction(g, x, 10.0)), g, x),
      "l2 direction": (jax.jit(lambda g, x: attacks._l2_direction(g, x, 0.5)), g, x),
      "l1 projection": (jax.jit(lambda d, x: attacks._project_l1_box(d, x, 10.0)), d, x),
      "l2 projection": (jax.jit(lambda d, x: attacks._project_l2_box(d, x, 0.5)), d, x),
  }
  print(f"\nl1 vs l2 PGD-step extras at {size}x{size}, batch {batch} (ms):")
  for name, (f, *args) in fs.items():
    t = _time(lambda: jax.block_until_ready(f(*args)), repeats)
    print(f"  {name:24s} {t * 1e3:8.2f}")


def train_steps(size, batch, repeats, adv_steps=7):
  """Median time of one l1 and one l2 adversarial training step (small CNN), alternated in
  the same run so that load affects both alike; prints l1 / l2."""
  # pylint: disable=protected-access
  from jax.sharding import NamedSharding, PartitionSpec as P  # noqa: E402
  from spurjax import train  # noqa: E402
  shape = (size, size, 3)
  x = jax.random.uniform(jax.random.key(1), (batch, *shape))
  y = jax.random.randint(jax.random.key(2), (batch,), 0, 10)
  runs = {}
  for norm, eps in (("l2", 0.5), ("l1", 10.0)):
    cfg = train.TrainConfig(num_classes=10, width=32, image_shape=shape, batch_size=batch,
                            adv_norm=norm, adv_eps=eps, adv_steps=adv_steps, steps=10 ** 6)
    gd, state = train._init(cfg)
    mesh = train.data_mesh()
    # Placed as `train.train` places it; otherwise the second call compiles again.
    runs[norm] = (train._step_fn(gd, cfg, mesh),
                  [jax.device_put(state, NamedSharding(mesh, P()))])
  ts = {n: [] for n in runs}
  for i in range(repeats + 1):
    for norm, (step, holder) in runs.items():
      t = time.perf_counter()
      holder[0], metrics = step(holder[0], x, y, jax.random.key(i))
      jax.block_until_ready(metrics)
      if i:  # the first call compiles
        ts[norm].append(time.perf_counter() - t)
  med = {n: float(np.median(v)) for n, v in ts.items()}
  print(f"\nadversarial training step, small_cnn {size}x{size}, batch {batch}, {adv_steps} PGD "
        f"steps, median of {repeats} (load average {os.getloadavg()[0]:.1f}): l2 "
        f"{med['l2'] * 1e3:.0f} ms, l1 {med['l1'] * 1e3:.0f} ms, l1 / l2 = "
        f"{med['l1'] / med['l2']:.2f}")


def _conv_variants():
  """Formulations of a stride-1 SAME 3x3 convolution `(B, H, W, Cin) x (3, 3, Cin, Cout)`,
  each a function `(x, kernel) -> y` differentiable in `x`:
    * `im2col`: `models.Im2colConv`'s formula, input gradient by autodiff (`dy @ K^T` on
      the `(9 Cin, Cout)` kernel, then the transpose of the patch extraction);
    * `im2col, dx on K^T`: the same forward with a custom VJP whose input-gradient GEMM is
      a `dot_general` on the kernel stored as `(Cout, 9 Cin)` (no transposed operand);
    * `im2col, dx by XLA conv`: the same forward, input gradient as XLA's convolution of
      `dy` with the flipped, transposed kernel;
    * `XLA conv`: `lax.conv_general_dilated` forward and (autodiff) backward."""
  from jax import lax  # pylint: disable=import-outside-toplevel

  def patches(x):
    b, h, w, c = x.shape
    xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    return jnp.concatenate([xp[:, i:i + h, j:j + w, :] for i in range(3) for j in range(3)],
                           -1).reshape(b * h * w, 9 * c)

  def im2col(x, k):
    b, h, w, _ = x.shape
    return (patches(x) @ k.reshape(-1, k.shape[-1])).reshape(b, h, w, k.shape[-1])

  def xla_conv(x, k):
    return lax.conv_general_dilated(x, k, (1, 1), "SAME",
                                    dimension_numbers=("NHWC", "HWIO", "NHWC"))

  def col2im(dp, shape):  # transpose of `patches`
    b, h, w, c = shape
    dp = dp.reshape(b, h, w, 9, c)
    out = sum(jnp.pad(dp[..., 3 * i + j, :], ((0, 0), (i, 2 - i), (j, 2 - j), (0, 0)))
              for i in range(3) for j in range(3))
    return out[:, 1:h + 1, 1:w + 1, :]

  def custom(dx_of):
    @jax.custom_vjp
    def f(x, k):
      return im2col(x, k)

    def bwd(res, dy):
      x, k = res
      return dx_of(x, k, dy), jnp.zeros_like(k)  # only the input gradient is timed
    f.defvjp(lambda x, k: (im2col(x, k), (x, k)), bwd)
    return f

  def dx_kt(x, k, dy):
    kt = k.reshape(-1, k.shape[-1]).T  # (Cout, 9 Cin)
    dp = lax.dot_general(dy.reshape(-1, k.shape[-1]), kt, (((1,), (0,)), ((), ())))
    return col2im(dp, x.shape)

  def dx_conv(x, k, dy):
    del x
    return xla_conv(dy, jnp.flip(k, (0, 1)).transpose(0, 1, 3, 2))

  return {"im2col": im2col, "im2col, dx on K^T": custom(dx_kt),
          "im2col, dx by XLA conv": custom(dx_conv), "XLA conv": xla_conv}


def conv_variants(size, batch, width, repeats, loop_steps=5):
  """Forward + input gradient of each conv of the small CNN in each formulation of
  `_conv_variants`, once as a single jitted call and once per iteration of a
  `lax.fori_loop` of `loop_steps` steps (as PGD runs it); all interleaved, medians, ms."""
  variants = _conv_variants()
  print(f"\nconv formulations, fwd + input gradient, batch {batch}, ms per step "
        f"(single call / inside a {loop_steps}-step fori_loop), median of {repeats}, "
        f"load average {os.getloadavg()[0]:.1f}:")
  w = width
  for s, cin, cout in ((size, 3, w), (size // 2, w, 2 * w), (size // 4, 2 * w, 4 * w)):
    x = jax.random.normal(jax.random.key(0), (batch, s, s, cin))
    k = 0.1 * jax.random.normal(jax.random.key(1), (3, 3, cin, cout))
    fns, ref = {}, None
    for name, f in variants.items():
      def once(x, k, f=f):
        y, vjp = jax.vjp(lambda z: f(z, k), x)
        return vjp(jnp.tanh(y))[0]

      def loop(x, k, once=once):
        return jax.lax.fori_loop(0, loop_steps, lambda i, z: z + 1e-3 * once(z, k), x)
      once_j, loop_j = jax.jit(once), jax.jit(loop)
      g = np.asarray(once_j(x, k))
      ref = g if ref is None else ref
      assert np.allclose(g, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max()), name
      fns[(name, "once")] = lambda once_j=once_j: once_j(x, k).block_until_ready()
      fns[(name, "loop")] = lambda loop_j=loop_j: loop_j(x, k).block_until_ready()
    ts = _timing.interleaved(fns, repeats, warmup=1)
    line = f"  {s}x{s}, {cin} -> {cout}:"
    for name in variants:
      line += (f"  {name} {1e3 * np.median(ts[(name, 'once')]):.1f} / "
               f"{1e3 * np.median(ts[(name, 'loop')]) / loop_steps:.1f};")
    print(line, flush=True)


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--sizes", default="32,64")
  p.add_argument("--batch", type=int, default=128)
  p.add_argument("--width", type=int, default=32)
  p.add_argument("--repeats", type=int, default=7)
  p.add_argument("--l1_only", action="store_true", help="only the l1-vs-l2 extras")
  p.add_argument("--train", action="store_true",
                 help="only the l1 vs l2 adversarial training step")
  p.add_argument("--conv_variants", action="store_true",
                 help="only the conv formulations (im2col, custom VJPs, XLA conv), in and "
                 "out of a fori_loop")
  args = p.parse_args()
  if args.conv_variants:
    for size in (int(s) for s in args.sizes.split(",")):
      conv_variants(size, args.batch, args.width, args.repeats)
    return
  if args.l1_only or args.train:
    for size in (int(s) for s in args.sizes.split(",")):
      if args.l1_only:
        l1_parts(size, args.batch, args.repeats)
      if args.train:
        train_steps(size, args.batch, args.repeats)
    return
  n = 2048
  a = jax.random.normal(jax.random.key(0), (n, n))
  mm = jax.jit(lambda a: a @ a)
  peak = 2 * n ** 3 / _time(lambda: mm(a).block_until_ready(), args.repeats) / 1e9
  print(f"devices {jax.devices()}; load average {os.getloadavg()[0]:.1f}; "
        f"matmul peak {peak:.1f} GFLOP/s")
  for size in (int(s) for s in args.sizes.split(",")):
    b = args.batch
    model = models.make_model("small_cnn", 10, width=args.width, rngs=nnx.Rngs(0))
    flops = models.forward_flops(model, (size, size, 3))
    graphdef, state = nnx.split(models.eval_view(model))
    x = jax.random.uniform(jax.random.key(1), (b, size, size, 3))
    y = jax.random.randint(jax.random.key(2), (b,), 0, 10)

    @jax.jit
    def forward(state, x):
      return nnx.merge(graphdef, state)(x)

    @jax.jit
    def pgd_step(state, x, y):
      loss = attacks.make_loss_fn(nnx.merge(graphdef, state))
      return jax.grad(lambda z: jnp.sum(loss(z, y)))(x)

    shapes = [(b * m, k, c) for m, k, c in gemm_shapes(size, args.width)]
    ops = [(jax.random.normal(jax.random.key(3), (m, k)),
            jax.random.normal(jax.random.key(4), (k, c)),
            jax.random.normal(jax.random.key(5), (m, c))) for m, k, c in shapes]

    @jax.jit
    def gemms(ops):  # forward GEMMs and the input-gradient GEMMs of one step
      return [(lhs @ rhs, dy @ rhs.T) for lhs, rhs, dy in ops]

    @jax.jit
    def gemms_fwd(ops):
      return [lhs @ rhs for lhs, rhs, _ in ops]

    t_fwd = _time(lambda: forward(state, x).block_until_ready(), args.repeats)
    t_step = _time(lambda: pgd_step(state, x, y).block_until_ready(), args.repeats)
    t_gemm = _time(lambda: jax.block_until_ready(gemms(ops)), args.repeats)
    t_gemm_fwd = _time(lambda: jax.block_until_ready(gemms_fwd(ops)), args.repeats)
    gemm_flops = sum(2 * m * k * c for m, k, c in shapes)
    print(f"\nsmall_cnn {size}x{size}, batch {b}, width {args.width}: "
          f"{flops / 1e9:.4f} GFLOP/image forward")
    print(f"  forward           {t_fwd * 1e3:8.1f} ms  {b * flops / t_fwd / 1e9:7.1f} GFLOP/s "
          f"({100 * b * flops / t_fwd / 1e9 / peak:3.0f}% of peak)")
    print(f"  PGD step (fwd+dx) {t_step * 1e3:8.1f} ms  "
          f"{2 * b * flops / t_step / 1e9:7.1f} GFLOP/s "
          f"({100 * 2 * b * flops / t_step / 1e9 / peak:3.0f}% of peak)")
    print(f"  its GEMMs alone   {t_gemm * 1e3:8.1f} ms  {2 * gemm_flops / t_gemm / 1e9:7.1f} "
          f"GFLOP/s ({100 * 2 * gemm_flops / t_gemm / 1e9 / peak:3.0f}% of peak); "
          f"{100 * t_gemm / t_step:3.0f}% of the step")
    for (m, k, c), (lhs, rhs, dy) in zip(shapes, ops):
      f1 = jax.jit(lambda lhs, rhs: lhs @ rhs)
      f2 = jax.jit(lambda dy, rhs: dy @ rhs.T)
      t1 = _time(lambda: f1(lhs, rhs).block_until_ready(), args.repeats)
      t2 = _time(lambda: f2(dy, rhs).block_until_ready(), args.repeats)
      print(f"    GEMM M={m:7d} K={k:4d} N={c:4d}: fwd {2 * m * k * c / t1 / 1e9:6.1f}, "
            f"dx {2 * m * k * c / t2 / 1e9:6.1f} GFLOP/s")
    print(f"  forward GEMMs     {t_gemm_fwd * 1e3:8.1f} ms = {100 * t_gemm_fwd / t_fwd:3.0f}% "
          f"of the forward")
    l1_parts(size, b, args.repeats)


if __name__ == "__main__":
  main()

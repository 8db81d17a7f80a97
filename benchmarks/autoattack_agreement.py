"""spurjax's `autoattack` against torchattacks' AutoAttack on the same trained SmallCNN.

Run by hand, never as a test (needs torch and torchattacks, the `bench` extra):

  python benchmarks/autoattack_agreement.py [--n 200] [--steps 300] [--norms linf,l2]

1. Trains a SmallCNN (l_inf adversarial training, `spurjax.train`, `--steps` steps) on the
   procedural spurious-image data (`spurjax.data`, 16x16, 10 classes).
2. Builds a plain-torch copy of the network from the JAX parameters (Conv2d, BatchNorm2d in
   eval mode, MaxPool2d, Linear) and checks that the logits agree.
3. On the same `--n` test images, per norm (torchattacks implements l_inf and l2 only):
   at radii where the trained model is partly robust (defaults l_inf 24/255, l2 2.0;
   at 8/255 and 0.5 no attack flips any point of this easy data), the
   robust accuracy and images/s of spurjax `autoattack(version="standard")`, of
   torchattacks `AutoAttack(version="standard")`, and of spurjax PGD-50 (random start, CE).
   spurjax's time is the second call (the first compiles); torchattacks has no compilation.

Prints a Markdown table; `--json` also writes the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

from spurjax import attacks  # noqa: E402
from spurjax import autoattack as aa  # noqa: E402
from spurjax import data  # noqa: E402
from spurjax import models  # noqa: E402
from spurjax import train  # noqa: E402

TRAIN_EPS = 8 / 255  # l_inf adversarial training radius


def _parse():
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--n", type=int, default=200, help="test images")
  p.add_argument("--steps", type=int, default=300, help="training steps")
  p.add_argument("--size", type=int, default=16, help="image size")
  p.add_argument("--width", type=int, default=16, help="SmallCNN base width")
  p.add_argument("--norms", default="linf,l2")
  p.add_argument("--eps_linf", type=float, default=24.0, help="l_inf radius in 1/255")
  p.add_argument("--eps_l2", type=float, default=2.0, help="l2 radius")
  p.add_argument("--workdir", default="/tmp/spurjax_aa_bench", help="training workdir")
  p.add_argument("--json", default=None)
  return p.parse_args()


def torch_copy(model):
  """A plain-torch `nn.Module` computing the same logits as an eval-mode SmallCNN."""
  import torch
  from torch import nn

  def conv_bn(block):
    k = np.asarray(block.conv.kernel[...])  # (kh, kw, cin, cout)
    conv = nn.Conv2d(k.shape[2], k.shape[3], k.shape[0], padding=k.shape[0] // 2,
                     bias=block.bn is None)
    conv.weight.data = torch.tensor(k.transpose(3, 2, 0, 1).copy())
    if block.bn is None:
      conv.bias.data = torch.tensor(np.asarray(block.conv.bias[...]))
      return nn.Sequential(conv, nn.ReLU())
    bn = nn.BatchNorm2d(k.shape[3], eps=block.bn.epsilon)
    bn.weight.data = torch.tensor(np.asarray(block.bn.scale[...]))
    bn.bias.data = torch.tensor(np.asarray(block.bn.bias[...]))
    bn.running_mean.data = torch.tensor(np.asarray(block.bn.mean[...]))
    bn.running_var.data = torch.tensor(np.asarray(block.bn.var[...]))
    return nn.Sequential(conv, bn, nn.ReLU())

  class Net(nn.Module):
    def __init__(self):
      super().__init__()
      self.b1, self.b2, self.b3 = conv_bn(model.block1), conv_bn(model.block2), conv_bn(
          model.block3)
      self.pool = nn.MaxPool2d(2)
      kern = np.asarray(model.head.kernel[...])
      self.head = nn.Linear(kern.shape[0], kern.shape[1])
      self.head.weight.data = torch.tensor(kern.T.copy())
      self.head.bias.data = torch.tensor(np.asarray(model.head.bias[...]))

    def forward(self, x):  # NCHW
      x = self.pool(self.b1(x))
      x = self.pool(self.b2(x))
      x = self.b3(x)
      return self.head(x.mean(dim=(2, 3)))

  return Net().eval()


def main():
  args = _parse()
  import torch
  import torchattacks
  torch.manual_seed(0)
  dcfg = data.DataConfig(image_size=args.size, num_classes=10)
  s = args.size
  config = train.TrainConfig(arch="small_cnn", num_classes=10, width=args.width,
                             image_shape=(s, s, 3), steps=args.steps, batch_size=64,
                             adv_norm="linf", adv_eps=TRAIN_EPS, adv_steps=5,
                             checkpoint_every=args.steps, log_every=50, seed=0)

  def batch_fn(key, step):
    del step
    b = data.sample_batch(key, dcfg, 64, "train")
    return b.images, b.labels

  t = time.perf_counter()
  train.train(config, args.workdir, batch_fn)
  t_train = time.perf_counter() - t
  model = train.load_model(args.workdir)
  test = data.sample_batch(jax.random.key(12345), dcfg, args.n, "train")  # held-out key
  x, y = np.asarray(test.images, np.float32), np.asarray(test.labels, np.int32)
  view = models.eval_view(model)
  graphdef, state = nnx.split(view)
  logits_jax = jax.jit(lambda st, v: nnx.merge(graphdef, st)(v))
  net = torch_copy(view)
  xt = torch.tensor(x.transpose(0, 3, 1, 2).copy())
  yt = torch.tensor(y.astype(np.int64))
  with torch.no_grad():
    diff = np.abs(net(xt).numpy() - np.asarray(logits_jax(state, x))).max()
  clean = float(np.mean(np.asarray(jnp.argmax(logits_jax(state, x), -1)) == y))
  rows = []
  radii = {"linf": args.eps_linf / 255, "l2": args.eps_l2}
  for norm in args.norms.split(","):
    eps = radii[norm]
    key = jax.random.key(0)
    aa.autoattack(key, model, x, y, norm=norm, eps=eps)  # compile
    t = time.perf_counter()
    xa, counts = aa.autoattack(key, model, x, y, norm=norm, eps=eps, return_counts=True)
    t_sj = time.perf_counter() - t
    acc_sj = float(np.mean(np.asarray(jnp.argmax(logits_jax(state, xa), -1)) == y))
    # Every returned point is checked: inside the ball (norm of the float32
    # difference) and the box.
    dist = np.asarray(attacks.lp_norm(jnp.asarray(xa - x, jnp.float32), norm))
    assert dist.max() <= eps * (1 + 1e-6) and 0.0 <= xa.min() and xa.max() <= 1.0, dist.max()
    t = time.perf_counter()
    atk = torchattacks.AutoAttack(net, norm={"linf": "Linf", "l2": "L2"}[norm], eps=eps,
                                  version="standard", n_classes=10, seed=0)
    xta = atk(xt, yt)
    t_ta = time.perf_counter() - t
    with torch.no_grad():
      acc_ta = float((net(xta).argmax(1) == yt).float().mean())
    xta_np = xta.numpy().transpose(0, 2, 3, 1)
    dist_ta = float(np.max(np.asarray(attacks.lp_norm(jnp.asarray(xta_np - x), norm))))
    pgd_acc = train.evaluate_accuracy(model, x, y, norm=norm, eps=eps, steps=50,
                                      key=jax.random.key(1))
    rows.append(dict(norm=norm, eps=eps, n=args.n, clean=clean, pgd50=pgd_acc,
                     spurjax_aa=acc_sj, torchattacks_aa=acc_ta,
                     spurjax_img_s=args.n / t_sj, torchattacks_img_s=args.n / t_ta,
                     speed_ratio=t_ta / t_sj, counts=counts,
                     max_dist_over_eps=dict(spurjax=float(dist.max() / eps),
                                            torchattacks=dist_ta / eps)))
    print(rows[-1], flush=True)
  print(f"trained {args.steps} steps in {t_train:.0f}s; torch copy max |logit diff| "
        f"{diff:.2e}; devices: {jax.devices()}")
  print("| norm | eps | n | clean | PGD-50 | spurjax AA | torchattacks AA | spurjax img/s | "
        "torchattacks img/s | speed ratio |")
  print("|---|---|---|---|---|---|---|---|---|---|")
  for r in rows:
    print(f"| {r['norm']} | {r['eps']:.4g} | {r['n']} | {r['clean']:.3f} | {r['pgd50']:.3f} | "
          f"{r['spurjax_aa']:.3f} | {r['torchattacks_aa']:.3f} | {r['spurjax_img_s']:.2f} | "
          f"{r['torchattacks_img_s']:.2f} | {r['speed_ratio']:.2f}x |")
    print(f"  spurjax counts: {r['counts']}", flush=True)
  if args.json:
    with open(args.json, "w") as f:
      json.dump({"rows": rows, "logit_diff": float(diff), "train_s": t_train}, f, indent=1)


if __name__ == "__main__":
  main()

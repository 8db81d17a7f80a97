"""spurjax's `autoattack` against torchattacks' AutoAttack on the same trained SmallCNN.

Run by hand, never as a test (needs torch and torchattacks, the `bench` extra):

  python benchmarks/autoattack_agreement.py [--n 100] [--steps 200] [--norms linf,l2]
      [--components] [--json PATH]

1. Trains a SmallCNN (l_inf adversarial training, `spurjax.train`, `--steps` steps) on the
   procedural spurious-image data (`spurjax.data`, 16x16, 10 classes); a finished workdir
   is reused.
2. Builds a plain-torch copy of the network from the JAX parameters (Conv2d, BatchNorm2d in
   eval mode, MaxPool2d, Linear) and checks that the logits agree, on the clean images and
   on spurjax's adversarial ones.
3. On the same `--n` test images, per norm (torchattacks implements l_inf and l2 only), at
   radii where the trained model is partly robust (defaults l_inf 24/255, l2 2.0; at 8/255
   and 0.5 no attack flips any point of this easy data):
   - spurjax `autoattack(version="standard")`: robust accuracy, images/s (the second call;
     the first compiles), and a check of every returned point as torch sees it: float32
     distance to x (computed in float64) <= eps, inside [0, 1], misclassified by the torch
     copy;
   - torchattacks `AutoAttack(version="standard")` as shipped: its APGD, APGD-T and FAB
     keep their default `steps=10` (AutoAttack does not pass 100), Square 5000 queries with
     `resc_schedule=True`;
   - torchattacks' components assembled with the reference implementation's standard
     settings (APGD-CE, APGD-T and FAB-T with 100 steps, 9 targets, 1 restart; Square 5000
     queries, no schedule rescaling) in its `MultiAttack`: the like-for-like comparison;
   - spurjax PGD-50 (random start, CE);
   - counts of points where spurjax's point is valid and misclassified by the torch copy
     while a torchattacks ensemble reports the point robust (and the reverse).
4. `--components`: each attack alone from the clean images (spurjax through an
   `AttackConfig` with the other attacks off, torchattacks' class alone), at 10 and 100
   steps for the gradient attacks: robust accuracy after each, to attribute a difference.

Prints Markdown tables; `--json` also writes the figures.
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

from spurjax import autoattack as aa  # noqa: E402
from spurjax import data  # noqa: E402
from spurjax import models  # noqa: E402
from spurjax import train  # noqa: E402

TRAIN_EPS = 8 / 255  # l_inf adversarial training radius


def _parse():
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--n", type=int, default=100, help="test images")
  p.add_argument("--steps", type=int, default=200, help="training steps")
  p.add_argument("--size", type=int, default=16, help="image size")
  p.add_argument("--width", type=int, default=16, help="SmallCNN base width")
  p.add_argument("--norms", default="linf,l2")
  p.add_argument("--eps_linf", type=float, default=24.0, help="l_inf radius in 1/255")
  p.add_argument("--eps_l2", type=float, default=2.0, help="l2 radius")
  p.add_argument("--components", action="store_true",
                 help="also run each attack alone, spurjax and torchattacks")
  p.add_argument("--torch_threads", type=int, default=1,
                 help="torch intra-op threads (2 threads on a loaded 2-core machine thrashed: "
                 "torchattacks' standard AutoAttack ran > 30 min instead of minutes)")
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


TA_NORM = {"linf": "Linf", "l2": "L2"}


def ta_published(net, norm, eps, steps=100, n_classes=10):
  """torchattacks' components with the reference implementation's standard settings."""
  import torchattacks as ta
  kw = dict(eps=eps, norm=TA_NORM[norm], seed=0, n_restarts=1)
  return ta.MultiAttack([
      ta.APGD(net, loss="ce", steps=steps, **kw),
      ta.APGDT(net, steps=steps, n_classes=n_classes, **kw),
      ta.FAB(net, steps=steps, multi_targeted=True, n_classes=n_classes, **kw),
      ta.Square(net, n_queries=5000, resc_schedule=False, **kw)])


def ta_component(net, name, norm, eps, steps, n_classes=10):
  import torchattacks as ta
  kw = dict(eps=eps, norm=TA_NORM[norm], seed=0, n_restarts=1)
  if name == "apgd-ce":
    return ta.APGD(net, loss="ce", steps=steps, **kw)
  if name == "apgd-t":
    return ta.APGDT(net, steps=steps, n_classes=n_classes, **kw)
  if name == "fab-t":
    return ta.FAB(net, steps=steps, multi_targeted=True, n_classes=n_classes, **kw)
  return ta.Square(net, n_queries=steps, resc_schedule=False, **kw)


def sj_component(name, steps):
  off = dict(apgd_steps=0, apgd_t_steps=0, n_targets=0, fab_steps=0, fab_targets=0,
             square_queries=0)
  on = {"apgd-ce": dict(apgd_steps=steps), "apgd-t": dict(apgd_t_steps=steps, n_targets=9),
        "fab-t": dict(fab_steps=steps, fab_targets=9),
        "square": dict(square_queries=steps)}[name]
  return aa.AttackConfig(**{**off, **on})


def check_points(x, xa, y, eps, norm, net):
  """Every point as torch sees it: float32 values, distance computed in float64."""
  import torch
  d = (xa.astype(np.float64) - x.astype(np.float64)).reshape(len(x), -1)
  dist = {"linf": np.abs(d).max(1), "l2": np.sqrt((d * d).sum(1)), "l1": np.abs(d).sum(1)}[norm]
  in_ball = dist <= eps
  in_box = (xa >= 0).reshape(len(x), -1).all(1) & (xa <= 1).reshape(len(x), -1).all(1)
  with torch.no_grad():
    z = net(torch.tensor(xa.transpose(0, 3, 1, 2).copy())).numpy()
  return dict(in_ball=in_ball, in_box=in_box, wrong_torch=z.argmax(1) != y,
              max_dist_over_eps=float(dist.max() / eps), logits=z)


def main():
  args = _parse()
  import torch
  import torchattacks
  torch.manual_seed(0)
  torch.set_num_threads(args.torch_threads)
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
    diff = float(np.abs(net(xt).numpy() - np.asarray(logits_jax(state, x))).max())
  clean = float(np.mean(np.asarray(jnp.argmax(logits_jax(state, x), -1)) == y))
  print(f"trained {args.steps} steps in {t_train:.0f}s; clean {clean:.3f}; torch copy max "
        f"|logit diff| on clean images {diff:.2e}; torch {torch.__version__} threads "
        f"{torch.get_num_threads()}, torchattacks {torchattacks.__version__}, "
        f"jax devices {jax.devices()}", flush=True)
  rows, comps = [], []
  radii = {"linf": args.eps_linf / 255, "l2": args.eps_l2}
  for norm in args.norms.split(","):
    eps = radii[norm]
    key = jax.random.key(0)
    aa.autoattack(key, model, x, y, norm=norm, eps=eps)  # compile
    t = time.perf_counter()
    xa, counts = aa.autoattack(key, model, x, y, norm=norm, eps=eps, return_counts=True)
    t_sj = time.perf_counter() - t
    rob_sj = np.asarray(jnp.argmax(logits_jax(state, xa), -1)) == y
    chk = check_points(x, xa, y, eps, norm, net)
    valid = chk["in_ball"] & chk["in_box"]
    sj_wins = valid & chk["wrong_torch"]  # valid and misclassified by the torch copy
    adv_diff = float(np.abs(chk["logits"] - np.asarray(logits_jax(state, xa))).max())
    row = dict(norm=norm, eps=eps, n=args.n, clean=clean, spurjax_aa=float(rob_sj.mean()),
               spurjax_img_s=args.n / t_sj, counts=counts,
               logit_diff_adv=adv_diff, spurjax_valid=int(valid.sum()),
               spurjax_max_dist_over_eps=chk["max_dist_over_eps"],
               spurjax_fooled_jax=int((~rob_sj).sum()),
               spurjax_fooled_torch_valid=int(sj_wins.sum()),
               jax_torch_pred_disagree=int((rob_sj == chk["wrong_torch"]).sum()))
    print(row, flush=True)
    print(f"spurjax: {t_sj:.0f}s", flush=True)
    for label, make in (
        ("ta_shipped", lambda: torchattacks.AutoAttack(net, norm=TA_NORM[norm], eps=eps,
                                                       version="standard", n_classes=10,
                                                       seed=0)),
        ("ta_published", lambda: ta_published(net, norm, eps))):
      atk = make()
      t = time.perf_counter()
      xta = atk(xt, yt)
      dt = time.perf_counter() - t
      xta_np = xta.detach().numpy().transpose(0, 2, 3, 1)
      print(f"{label}: {dt:.0f}s", flush=True)
      cta = check_points(x, xta_np, y, eps, norm, net)
      ta_rob = ~cta["wrong_torch"]
      row[label] = float(ta_rob.mean())
      row[label + "_img_s"] = args.n / dt
      row[label + "_speed_ratio"] = dt / t_sj
      row[label + "_max_dist_over_eps"] = cta["max_dist_over_eps"]
      row[label + "_invalid_fooled"] = int((cta["wrong_torch"] & ~(cta["in_ball"]
                                                                  & cta["in_box"])).sum())
      # Points spurjax breaks (valid, torch copy misclassifies) that torchattacks leaves.
      row[label + "_only_spurjax"] = int((sj_wins & ta_rob).sum())
      row[label + "_only_ta"] = int((~sj_wins & ~ta_rob & (np.asarray(
          jnp.argmax(logits_jax(state, x), -1)) == y)).sum())
      print({k: v for k, v in row.items() if k.startswith(label)}, flush=True)
    row["pgd50"] = train.evaluate_accuracy(model, x, y, norm=norm, eps=eps, steps=50,
                                           key=jax.random.key(1))
    rows.append(row)
    if args.components:
      for name in aa.ATTACK_NAMES:
        for steps in ((5000,) if name == "square" else (10, 100)):
          xc = aa.autoattack(key, model, x, y, norm=norm, eps=eps,
                             version=sj_component(name, steps))
          acc_c = float(np.mean(~check_points(x, xc, y, eps, norm, net)["wrong_torch"]))
          t = time.perf_counter()
          xtc = ta_component(net, name, norm, eps, steps)(xt, yt)
          dt = time.perf_counter() - t
          cta = check_points(x, xtc.detach().numpy().transpose(0, 2, 3, 1), y, eps, norm, net)
          comps.append(dict(norm=norm, attack=name, steps=steps, spurjax=acc_c,
                            torchattacks=float(np.mean(~cta["wrong_torch"])),
                            torchattacks_s=dt))
          print(comps[-1], flush=True)
  print("\n| norm | eps | n | clean | PGD-50 | spurjax AA | torchattacks AA (shipped, 10 steps) "
        "| torchattacks AA (100 steps) | spurjax img/s | torchattacks img/s (shipped / 100) |")
  print("|---|---|---|---|---|---|---|---|---|---|")
  for r in rows:
    print(f"| {r['norm']} | {r['eps']:.4g} | {r['n']} | {r['clean']:.3f} | {r['pgd50']:.3f} | "
          f"{r['spurjax_aa']:.3f} | {r['ta_shipped']:.3f} | {r['ta_published']:.3f} | "
          f"{r['spurjax_img_s']:.2f} | {r['ta_shipped_img_s']:.2f} / "
          f"{r['ta_published_img_s']:.2f} |")
    print(f"  spurjax counts: {r['counts']}; valid {r['spurjax_valid']}/{r['n']}, max dist/eps "
          f"{r['spurjax_max_dist_over_eps']:.7f}, fooled (jax) {r['spurjax_fooled_jax']}, "
          f"valid and fooled (torch copy) {r['spurjax_fooled_torch_valid']}, max |logit diff| "
          f"on them {r['logit_diff_adv']:.1e}; broken by spurjax only / torchattacks only: "
          f"shipped {r['ta_shipped_only_spurjax']} / {r['ta_shipped_only_ta']}, 100 steps "
          f"{r['ta_published_only_spurjax']} / {r['ta_published_only_ta']}", flush=True)
  if comps:
    print("\n| norm | attack alone | steps/queries | spurjax robust acc | torchattacks robust acc |")
    print("|---|---|---|---|---|")
    for c in comps:
      print(f"| {c['norm']} | {c['attack']} | {c['steps']} | {c['spurjax']:.3f} | "
            f"{c['torchattacks']:.3f} |")
  if args.json:
    with open(args.json, "w") as f:
      json.dump({"rows": rows, "components": comps, "logit_diff": diff, "train_s": t_train},
                f, indent=1)


if __name__ == "__main__":
  main()

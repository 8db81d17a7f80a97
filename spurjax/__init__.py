"""spurjax: adversarial robustness versus natural distributional robustness, in JAX.

Reproduces and extends Moayeri, Banihashem & Feizi, "Explicit Tradeoffs between Adversarial
and Natural Distributional Robustness" (NeurIPS 2022).

Modules:
  theory: the exact core/spurious Gaussian linear-regression model (closed forms, minimizers).
  parallel: sharding of vmapped grids over all local devices (and processes).
  attacks, models, train: l1/l2/l_inf PGD, Flax NNX CNNs, (adversarial) training with resume.
"""

__version__ = "0.1.0"

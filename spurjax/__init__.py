"""spurjax: adversarial robustness versus natural distributional robustness, in JAX.

Reproduces and extends Moayeri, Banihashem & Feizi, "Explicit Tradeoffs between Adversarial
and Natural Distributional Robustness" (NeurIPS 2022).

Modules:
  theory: the exact core/spurious Gaussian linear-regression model (closed forms, minimizers).
  gaussian: exact adversarial risk and minimizers for any jointly Gaussian (x, y) (moments).
  norms: attack norm names, dual norms, the one norm check and the l_inf /255 radius rule.
  parallel: sharding of vmapped grids over all local devices (and processes), padded batches.
  empirical: finite-sample adversarial training of linear models (optax).
  data: the procedural spurious-image dataset (shapes on class-correlated textures), batches
    for training (`sample_batch`) and complete evaluation sets (`make_eval_set`).
  evalset: the `EvalSet` structure shared by the generator and the real-data loaders.
  reliance: the five background-reliance protocols and `evaluate(key, model, eval_set)`.
  loaders: ImageNet-9, Waterbirds, RIVAL10, Salient ImageNet and ObjectNet, read as published.
  fixture_trees: small trees in those five published layouts, drawn from `data`.
  attacks, models, train: l1/l2/l_inf PGD, Flax NNX CNNs, (adversarial) training with resume.
  checkpoints, evaluation: a training workdir's checkpoints and config; clean and robust
    accuracy (`train.evaluate_accuracy` re-exports it).
  suite: many models trained with skip/resume in one workdir (suite.json, models/<name>/).
  imagenet_models, pretrained, probe: torchvision-exact ImageNet ResNets, safe import of
    PyTorch checkpoints (robustness library, RobustBench, torchvision), linear probes.
  autoattack: APGD, FAB-T, Square and the AutoAttack ensemble (evaluation-grade robust
    accuracy; also importable as `attacks.apgd`, `attacks.autoattack`).
"""

__version__ = "0.1.0"

"""Model flags shared by the theory sims (one definition, one validation)."""

from __future__ import annotations

from absl import flags

MODEL_FLAGS = ("d_core", "d_spu", "sigma_core", "sigma_spu", "rho", "label_noise")


def define_model_flags(*, d_spu_lower: int = 1) -> None:
  """--d_core, --d_spu, --sigma_core, --sigma_spu, --rho, --label_noise (worked example)."""
  flags.DEFINE_integer("d_core", 4, "Core features d_c.", lower_bound=1)
  flags.DEFINE_integer("d_spu", 3, "Spurious features d_s.", lower_bound=d_spu_lower)
  flags.DEFINE_float("sigma_core", 1.0, "Core feature scale (> 0).", lower_bound=0.0)
  flags.DEFINE_float("sigma_spu", 0.7, "Spurious feature scale (> 0).", lower_bound=0.0)
  flags.DEFINE_float("rho", 0.9, "Training-domain spurious correlation.", lower_bound=-1.0,
                     upper_bound=1.0)
  flags.DEFINE_float("label_noise", 0.0, "Label noise std.", lower_bound=0.0)
  flags.register_validator("sigma_core", lambda v: v > 0, "--sigma_core must be > 0")
  flags.register_validator("sigma_spu", lambda v: v > 0, "--sigma_spu must be > 0")


def define_eps_flags(eps_max: float = 1.5) -> None:
  """--norms, --n_eps (preset default), --eps_max."""
  flags.DEFINE_multi_enum("norms", ["l1", "l2", "linf"], ["l1", "l2", "linf"],
                          "Attack norms.")
  flags.DEFINE_integer("n_eps", None, "Grid points in eps (preset if unset).", lower_bound=2)
  flags.DEFINE_float("eps_max", eps_max, "Largest training radius (> 0).", lower_bound=0.0)
  flags.register_validator("eps_max", lambda v: v > 0, "--eps_max must be > 0")


def model_from(config):
  """The CoreSpuriousModel described by a config dict."""
  from spurjax import theory as T
  return T.CoreSpuriousModel(config["d_core"], config["d_spu"], config["sigma_core"],
                             config["sigma_spu"], config["rho"], config["label_noise"])

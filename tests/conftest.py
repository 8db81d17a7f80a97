"""Test-wide JAX settings: rank promotion is an error, so shape bugs cannot hide.

Theory tests switch float64 on locally (`jax.enable_x64(True)`); image tests stay float32.
"""

import jax

jax.config.update("jax_numpy_rank_promotion", "raise")

"""Test-wide settings.

JAX: rank promotion is an error, so shape bugs cannot hide. Theory tests switch float64 on
locally (`jax.enable_x64(True)`); image tests stay float32.

Hypothesis: no per-example deadline. The default (200 ms) measures wall time, which a loaded
CI machine running a test file per core (`-n auto`) exceeds on correct code, and the first
example of a jitted test includes its compilation. Examples stay random (never derandomized).
"""

import hypothesis
import jax

jax.config.update("jax_numpy_rank_promotion", "raise")

hypothesis.settings.register_profile("spurjax", deadline=None)
hypothesis.settings.load_profile("spurjax")

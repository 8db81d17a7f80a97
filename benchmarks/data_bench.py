"""Times the procedural generator: N images of side S with masks, soft masks and boxes.

  python benchmarks/data_bench.py [--n=10000] [--image_size=64] [--batch_size=1000]

Prints the compile time and the steady-state time to generate N images (every output array
is materialized with block_until_ready). Reported figures: see docs/benchmarks.md.
"""

import time

from absl import app
from absl import flags
import jax

from spurjax import data

_N = flags.DEFINE_integer("n", 10000, "Number of images.")
_SIZE = flags.DEFINE_integer("image_size", 64, "Image side (multiple of 8).")
_BATCH = flags.DEFINE_integer("batch_size", 500, "Images per jitted call.")
_MARKER = flags.DEFINE_bool("marker", True, "Draw the marker cue too.")


def main(argv):
  del argv
  config = data.DataConfig(image_size=_SIZE.value, marker=_MARKER.value)
  key = jax.random.key(0)
  t0 = time.perf_counter()
  jax.block_until_ready(data.sample_batch(key, config, _BATCH.value))
  compile_s = time.perf_counter() - t0
  t0 = time.perf_counter()
  done = 0
  step = 0
  while done < _N.value:
    jax.block_until_ready(data.sample_batch(jax.random.fold_in(key, step), config,
                                            _BATCH.value))
    done += _BATCH.value
    step += 1
  gen_s = time.perf_counter() - t0
  print(f"devices: {jax.devices()}")
  print(f"first call (compile + {_BATCH.value} images): {compile_s:.2f} s")
  print(f"{done} images of {_SIZE.value}x{_SIZE.value} with masks, soft masks, boxes"
        f"{' and markers' if _MARKER.value else ''}: {gen_s:.2f} s "
        f"({done / gen_s:.0f} images/s)")


if __name__ == "__main__":
  app.run(main)

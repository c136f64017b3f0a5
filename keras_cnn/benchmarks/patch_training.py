"""Training speed in target voxels/s: patches through the dense twin against per-voxel crops.

  python -m keras_cnn.benchmarks.patch_training
  python -m keras_cnn.benchmarks.patch_training --patch_sizes=16,32 --steps=10

Prints one JSON object per line: first the per-voxel baseline (`unit` "voxel": one
target per (2r+1)^3 crop, `--voxel_batch` crops per step), then one line per patch size
(`unit` "patch": P^3 targets per example, `--patch_batch` patches per step) with
`target_voxels_per_s`, `step_s` (median of `--steps` timed steps after 2 untimed ones)
and `speedup` (target voxels/s over the baseline's, same model, same run). The model is
the CPU default preset's network ('valid' padding), compiled as `keras_cnn.train`
compiles it, under the precision `--precision` picks; inputs are random (this measures
the step, not the input pipeline, which `keras_cnn.benchmarks.pipeline` covers).
"""

import json

from absl import app
from absl import flags

from keras_cnn import benchmarks

FLAGS = flags.FLAGS


def define_flags() -> None:
  flags.DEFINE_list("patch_sizes", ["16", "32"], "Patch sides P to measure.")
  flags.DEFINE_integer(
      "patch_batch", 4, "Patches per step (P=16; scaled by (16/P)^3, "
      "at least 1, for larger patches).")
  flags.DEFINE_integer("voxel_batch", 64, "Crops per step of the per-voxel baseline.")
  flags.DEFINE_integer("steps", 8, "Timed steps per line.")
  flags.DEFINE_enum("precision", "auto", ["auto", "float32", "mixed_bfloat16"],
                    "Keras dtype policy (auto: keras_cnn.distribute.default_precision).")


def main(argv) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  import keras
  import numpy as np

  from keras_cnn import dense
  from keras_cnn import distribute
  from keras_cnn import model as model_lib
  from keras_cnn import training

  precision = (distribute.default_precision() if FLAGS.precision == "auto" else FLAGS.precision)
  keras.config.set_dtype_policy(precision)
  config = model_lib.ModelConfig()
  rng = np.random.default_rng(0)
  jit = training.resolve_jit_compile("auto")

  def inputs(batch, side):
    shape = (batch,) + (side,) * 3 + (1,)
    return {
        "n_igm": rng.normal(size=shape).astype(np.float32),
        "n_src": rng.poisson(0.2, size=shape).astype(np.float32)
    }

  model = model_lib.build_model(config)
  training.compile_model(model, 1e-3, jit)
  x = inputs(FLAGS.voxel_batch, config.crop_size)
  y = rng.random((FLAGS.voxel_batch, 1)).astype(np.float32)
  step_s = benchmarks.median_seconds(lambda: model.train_on_batch(x, y), FLAGS.steps)
  baseline = FLAGS.voxel_batch / step_s
  common = {
      "network": "default",
      "radius": config.radius,
      "precision": precision,
      "backend": keras.backend.backend()
  }
  print(
      json.dumps({
          **common, "unit": "voxel",
          "batch": FLAGS.voxel_batch,
          "step_s": round(step_s, 4),
          "target_voxels_per_s": round(baseline, 1)
      }), flush=True)
  for size in (int(p) for p in FLAGS.patch_sizes):
    batch = max(1, round(FLAGS.patch_batch * (16 / size) ** 3))
    model = model_lib.build_model(config)
    twin = dense.DenseTwin(model, flat_output=True)
    training.compile_model(twin, 1e-3, jit)
    x = inputs(batch, size + 2 * config.radius)
    y = rng.random((batch * size ** 3, 1)).astype(np.float32)
    step_s = benchmarks.median_seconds(lambda: twin.train_on_batch(x, y), FLAGS.steps)
    rate = batch * size ** 3 / step_s
    print(
        json.dumps({
            **common, "unit": "patch",
            "patch_size": size,
            "batch": batch,
            "step_s": round(step_s, 4),
            "target_voxels_per_s": round(rate, 1),
            "speedup": round(rate / baseline, 1)
        }), flush=True)


if __name__ == "__main__":
  define_flags()
  app.run(main)

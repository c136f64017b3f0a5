"""Training speed in target voxels/s: patches through the dense twin against per-voxel
crops, and against the original PyTorch network trained one voxel per crop.

  python -m keras_cnn.benchmarks.patch_training
  python -m keras_cnn.benchmarks.patch_training --networks=week2_valid --patch_sizes=16 \\
      --patch_batch=1 --voxel_batch=2 --steps=3

Each network is a preset's (`flags/<name>.flags`: `default`, `week2_valid`), built by
`keras_cnn.model` exactly as `train` builds it. Per network, one JSON object per line:
- `unit` "pytorch_original": the original PyTorch implementation
  (`keras_cnn.benchmarks.torch_reference`, 'same' padding, the preset's radius, kernel,
  filters, stride and pooling; float32, eager, Adam, MSE) trained on `--voxel_batch`
  crops per step, one target voxel each: how the original project trained;
- `unit` "voxel": keras_cnn's model trained the same way (one target per crop);
- `unit` "patch": P^3 targets per example, `--patch_batch` patches per step (scaled by
  (16/P)^3, at least 1, for larger patches), through the dense twin as `train` does.
Every line has `network`, `target_voxels_per_s` (from the median of `--steps` timed steps
after 2 untimed ones), `precision`, and `matmul_fraction`: useful FLOPs (3 x forward, for
forward and backward: every tap of a 'valid' crop or of the twin per target voxel, the
in-bounds taps of a 'same' crop) per second over the float32 matmul rate of this machine
measured in the same run (the best of numpy and tensorflow, `--threads` cores). Keras
lines have `speedup_over_pytorch`. Inputs are random: this measures the step, not the
input pipeline (`keras_cnn.benchmarks.pipeline` does).
"""

import json
import os

from absl import app
from absl import flags

from keras_cnn import benchmarks

FLAGS = flags.FLAGS


def define_flags() -> None:
  flags.DEFINE_list("networks", ["default"], "Presets (flags/<name>.flags) to measure.")
  flags.DEFINE_list("patch_sizes", ["16", "32"], "Patch sides P to measure.")
  flags.DEFINE_integer(
      "patch_batch", 4, "Patches per step (P=16; scaled by (16/P)^3, "
      "at least 1, for larger patches).")
  flags.DEFINE_integer("voxel_batch", 64, "Crops per step of the per-voxel lines.")
  flags.DEFINE_integer("steps", 8, "Timed steps per line.")
  flags.DEFINE_bool("pytorch", True, "Time the original PyTorch network too.")
  flags.DEFINE_enum("precision", "auto", ["auto", "float32", "mixed_bfloat16"],
                    "Keras dtype policy (auto: keras_cnn.distribute.default_precision).")


def _pytorch_step(config, batch: int, threads: int):
  """One training step of the original PyTorch net at `config`'s sizes, as a callable."""
  import numpy as np
  import torch

  from keras_cnn.benchmarks import torch_reference

  torch.set_num_threads(threads)
  torch.manual_seed(0)
  net = torch_reference.build_original_pytorch(config.radius, config.filters, config.kernel_size,
                                               config.stride_conv, config.kernel_pooling)
  net.train()
  optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
  rng = np.random.default_rng(0)
  shape = (batch, 1) + (config.crop_size,) * 3
  n_igm = torch.from_numpy(rng.normal(size=shape).astype(np.float32))
  n_src = torch.from_numpy(rng.poisson(0.2, size=shape).astype(np.float32))
  y = torch.from_numpy(rng.random((batch, 1)).astype(np.float32))

  def step():
    optimizer.zero_grad(set_to_none=True)
    loss = torch.nn.functional.mse_loss(net(n_igm, n_src), y)
    loss.backward()
    optimizer.step()

  return step


def main(argv) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  import keras
  import numpy as np

  from keras_cnn import dense
  from keras_cnn import distribute
  from keras_cnn import model as model_lib
  from keras_cnn import training
  from keras_cnn.benchmarks import flops

  for name in FLAGS.networks:
    if not os.path.exists(benchmarks.preset_path(name)):
      raise app.UsageError(f"--networks: no preset flags/{name}.flags")
  precision = (distribute.default_precision() if FLAGS.precision == "auto" else FLAGS.precision)
  keras.config.set_dtype_policy(precision)
  threads = len(os.sched_getaffinity(0))
  matmul_gflops = max(flops.numpy_matmul_gflops(),
                      flops.best_gflops(flops.backend_matmul("tensorflow")))
  print(json.dumps({
      "matmul_gflops_float32": round(matmul_gflops, 1),
      "threads": threads
  }), flush=True)
  rng = np.random.default_rng(0)
  jit = training.resolve_jit_compile("auto")

  def inputs(batch, side):
    shape = (batch,) + (side,) * 3 + (1,)
    return {
        "n_igm": rng.normal(size=shape).astype(np.float32),
        "n_src": rng.poisson(0.2, size=shape).astype(np.float32)
    }

  def fraction(flop_per_target, rate):
    return round(3 * flop_per_target * rate / (matmul_gflops * 1e9), 4)

  for name in FLAGS.networks:
    config = benchmarks.preset_model_config(benchmarks.preset_settings(
        benchmarks.preset_path(name)))
    common = {"network": name, "radius": config.radius, "backend": keras.backend.backend()}
    pytorch_rate = None
    if FLAGS.pytorch:
      step_s = benchmarks.median_seconds(_pytorch_step(config, FLAGS.voxel_batch, threads),
                                         FLAGS.steps)
      pytorch_rate = FLAGS.voxel_batch / step_s
      useful = flops.model_flops(config.radius, config.filters, config.kernel_size,
                                 config.stride_conv, config.kernel_pooling, config.dense_units,
                                 config.tail_units)["forward"]
      print(
          json.dumps({
              **common, "unit": "pytorch_original",
              "precision": "float32",
              "batch": FLAGS.voxel_batch,
              "step_s": round(step_s, 4),
              "target_voxels_per_s": round(pytorch_rate, 2),
              "matmul_fraction": fraction(useful, pytorch_rate)
          }), flush=True)

    def report(unit, batch, targets, step_s, flop_per_target, **extra):
      rate = targets / step_s
      line = {
          **common, "unit": unit,
          "precision": precision,
          **extra, "batch": batch,
          "step_s": round(step_s, 4),
          "target_voxels_per_s": round(rate, 2),
          "matmul_fraction": fraction(flop_per_target, rate)
      }
      if pytorch_rate:
        line["speedup_over_pytorch"] = round(rate / pytorch_rate, 1)
      print(json.dumps(line), flush=True)
      return rate

    model = model_lib.build_model(config)
    training.compile_model(model, 1e-3, jit)
    x = inputs(FLAGS.voxel_batch, config.crop_size)
    y = rng.random((FLAGS.voxel_batch, 1)).astype(np.float32)
    step_s = benchmarks.median_seconds(lambda: model.train_on_batch(x, y), FLAGS.steps)
    baseline = report("voxel", FLAGS.voxel_batch, FLAGS.voxel_batch, step_s,
                      flops.per_voxel_flops(config))
    for size in (int(p) for p in FLAGS.patch_sizes):
      batch = max(1, round(FLAGS.patch_batch * (16 / size) ** 3))
      model = model_lib.build_model(config)
      twin = dense.DenseTwin(model, flat_output=True)
      training.compile_model(twin, 1e-3, jit)
      x = inputs(batch, size + 2 * config.radius)
      y = rng.random((batch * size ** 3, 1)).astype(np.float32)
      step_s = benchmarks.median_seconds(lambda: twin.train_on_batch(x, y), FLAGS.steps)
      rate = batch * size ** 3 / step_s
      report("patch", batch, batch * size ** 3, step_s, flops.dense_flops_per_voxel(config),
             patch_size=size, speedup=round(rate / baseline, 1))


if __name__ == "__main__":
  define_flags()
  app.run(main)

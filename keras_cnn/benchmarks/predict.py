"""Prediction speed: the dense engine against the per-voxel engine, on the same 'valid' model.

  python -m keras_cnn.benchmarks.predict                       # both networks, 128^3 + 256^3
  python -m keras_cnn.benchmarks.predict --networks=default --full_boxes=
  python -m keras_cnn.benchmarks.predict --networks=week2_valid --week2_box=64 \
      --week2_memory_budget_gb=8 --full_boxes=128 --full_box_network=week2_valid

Prints one JSON object per (network, engine) with the keys `network` ("default": the
model of flags/default.flags, the CPU preset; "week2_valid": that of
flags/week2_valid.flags, r=24, k5, 128 filters, pooling 2, 'valid'), `engine`
("dense" or "per_voxel"), `voxels_per_s`,
`flops_per_voxel` (`keras_cnn.benchmarks.flops`), `matmul_fraction` (useful FLOP/s
over a float32 4096^2 matmul's FLOP/s, measured in the same run; the dense engine's
halo work is not counted as useful) and, on the dense lines, `speedup` over the
per-voxel line of the same network. Then one line per full box (`full_box`: side)
with the `--full_box_network` through the dense engine, run in its own process:
`wall_s`, `peak_rss_mb`, `fields_mb` (the two input fields) and
`rss_over_fields_plus_2gb` (peak RSS / (3 x fields + 2 GB); <= 1 is the target).

Weights are random (speed does not depend on them); the per-voxel rate is measured on a
sample of voxels with their crops already cut (the engine's best case); the dense rate
on a whole random box through `keras_cnn.inference.predict_volume_dense`, after one
untimed call that traces and warms up.
"""

import json
import os
import resource
import subprocess
import sys
import time

from absl import app
from absl import flags

FLAGS = flags.FLAGS

# Network name -> the preset flagfile (flags/<name>.flags) whose model it measures.
NETWORKS = {"default": "default", "week2_valid": "week2_valid"}
# Box side for the dense rate, voxels and batch for the per-voxel rate, per network.
DENSE_BOX = {"default": 96, "week2_valid": 32}
PER_VOXEL_SAMPLE = {"default": (512, 64), "week2_valid": (8, 4)}


def define_flags() -> None:
  flags.DEFINE_list("networks", list(NETWORKS), f"Networks to measure, of {list(NETWORKS)}.")
  flags.DEFINE_list(
      "full_boxes", ["128", "256"],
      "Sides of the full boxes painted with --full_box_network (own process "
      "each, for its peak RSS); empty for none.")
  flags.DEFINE_enum("full_box_network", "default", list(NETWORKS),
                    "Network that paints the full boxes.")
  flags.DEFINE_integer("week2_box", DENSE_BOX["week2_valid"],
                       "Box side of week2_valid's dense rate (larger boxes allow larger tiles).")
  flags.DEFINE_float("memory_budget_gb", 1.5, "Dense engine memory budget (tile size).")
  flags.DEFINE_float("week2_memory_budget_gb", 4.0,
                     "Dense engine memory budget for week2_valid (128 filters).")
  flags.DEFINE_integer("full_box_child", 0, "Internal: paint one box of this side and exit.")


def _config(network: str):
  from keras_cnn import benchmarks
  settings = benchmarks.preset_settings(benchmarks.preset_path(NETWORKS[network]))
  return benchmarks.preset_model_config(settings)


def _random_fields(side: int, seed: int = 0):
  import numpy as np
  rng = np.random.default_rng(seed)
  n_igm = rng.lognormal(0.0, 0.5, (side,) * 3).astype(np.float32) - 1.0
  n_src = (rng.random((side,) * 3, dtype=np.float32) < 0.01).astype(np.float32)
  return n_igm, n_src


def _dense_rate(model, side: int, budget: float) -> float:
  from keras_cnn import dense
  from keras_cnn import inference

  twin = dense.DenseTwin(model)
  n_igm, n_src = _random_fields(side)
  inference.predict_volume_dense(model, n_igm, n_src, memory_budget_gb=budget, progress=False,
                                 twin=twin)
  t0 = time.perf_counter()
  inference.predict_volume_dense(model, n_igm, n_src, memory_budget_gb=budget, progress=False,
                                 twin=twin)
  return side ** 3 / (time.perf_counter() - t0)


def _per_voxel_rate(model, radius: int, count: int, batch: int) -> float:
  import numpy as np

  from keras_cnn import pipeline

  n_igm, n_src = _random_fields(64)
  centres = np.random.default_rng(0).integers(0, 64, size=(count, 3))
  igm, src = pipeline.periodic_crops([n_igm, n_src], centres, radius)
  batches = [{
      "n_igm": igm[i:i + batch, ..., None],
      "n_src": src[i:i + batch, ..., None]
  } for i in range(0, count, batch)]
  model.predict_on_batch(batches[0])
  t0 = time.perf_counter()
  for inputs in batches:
    model.predict_on_batch(inputs)
  return count / (time.perf_counter() - t0)


def _budget(network: str) -> float:
  return FLAGS.week2_memory_budget_gb if network == "week2_valid" else FLAGS.memory_budget_gb


def _full_box(side: int, network: str) -> dict:
  """Paints one random box of `side`^3 with `network` (in a child process)."""
  from keras_cnn import inference
  from keras_cnn.model import build_model

  budget = _budget(network)
  model = build_model(_config(network))
  n_igm, n_src = _random_fields(side)
  t0 = time.perf_counter()
  inference.predict_volume_dense(model, n_igm, n_src, memory_budget_gb=budget, progress=False)
  wall = time.perf_counter() - t0
  peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
  fields_mb = (n_igm.nbytes + n_src.nbytes) / 2 ** 20
  return {
      "full_box": side,
      "network": network,
      "engine": "dense",
      "memory_budget_gb": budget,
      "wall_s": round(wall, 2),
      "voxels_per_s": round(side ** 3 / wall),
      "peak_rss_mb": round(peak_mb),
      "fields_mb": round(fields_mb),
      "rss_over_fields_plus_2gb": round(peak_mb / (3 * fields_mb + 2048), 3)
  }


def main(argv) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  if FLAGS.full_box_child:
    print(json.dumps(_full_box(FLAGS.full_box_child, FLAGS.full_box_network)), flush=True)
    return
  unknown = sorted(set(FLAGS.networks) - set(NETWORKS))
  if unknown:
    raise app.UsageError(f"--networks: unknown {unknown}; choose from {list(NETWORKS)}")
  import keras

  from keras_cnn.benchmarks import flops
  from keras_cnn.model import build_model

  backend = keras.backend.backend()
  matmul_gflops = flops.best_gflops(flops.backend_matmul(backend))
  for network in FLAGS.networks:
    config = _config(network)
    model = build_model(config)
    count, batch = PER_VOXEL_SAMPLE[network]
    per_voxel = _per_voxel_rate(model, config.radius, count, batch)
    budget = _budget(network)
    box = FLAGS.week2_box if network == "week2_valid" else DENSE_BOX[network]
    dense_rate = _dense_rate(model, box, budget)
    for engine, rate, work in (("per_voxel", per_voxel, flops.per_voxel_flops(config)),
                               ("dense", dense_rate, flops.dense_flops_per_voxel(config))):
      line = {
          "network": network,
          "engine": engine,
          "backend": backend,
          "voxels_per_s": round(rate, 2),
          "flops_per_voxel": work,
          "matmul_gflops": round(matmul_gflops, 1),
          "matmul_fraction": round(work * rate / (matmul_gflops * 1e9), 4)
      }
      if engine == "dense":
        line.update(speedup=round(dense_rate / per_voxel, 1), box=box, memory_budget_gb=budget)
      print(json.dumps(line), flush=True)
  for side in FLAGS.full_boxes:
    proc = subprocess.run([
        sys.executable, "-m", "keras_cnn.benchmarks.predict", f"--full_box_child={side}",
        f"--memory_budget_gb={FLAGS.memory_budget_gb}",
        f"--week2_memory_budget_gb={FLAGS.week2_memory_budget_gb}",
        f"--full_box_network={FLAGS.full_box_network}"
    ], capture_output=True, text=True, env={
        **os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"
    }, check=False)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode or not lines:
      print(json.dumps({"full_box": int(side), "error": proc.stderr[-2000:]}), flush=True)
    else:
      print(lines[-1], flush=True)


if __name__ == "__main__":
  define_flags()
  app.run(main)

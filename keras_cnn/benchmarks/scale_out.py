"""Scale-out: the dense engine on a local Dask cluster of 1, 2, ... worker processes.

  python -m keras_cnn.benchmarks.scale_out                                  # 512^3, 256^3
  python -m keras_cnn.benchmarks.scale_out --n_cells=48 --overhead_cells=48  # a quick check

Builds the "default" network (the model of flags/default.flags, the CPU preset; random
weights: speed does not depend on them), writes a random box of --n_cells^3 as .npy
files, and prints one JSON object per line:

- `kind: "scale_out"`, one per --workers entry: the box painted through
  `keras_cnn.scale` with --scheduler=processes and that many workers (one thread each)
  into a .npy map: `workers`, `wall_s` (painting only: the cluster is started and every
  worker has loaded the model and traced one tile's pass before), `voxels_per_s`,
  `peak_rss_mb_per_worker` (the largest of the workers' peak RSS), `speedup` over the
  first entry;
- `kind: "overhead"`: one --overhead_cells^3 box painted by the in-process dense engine
  (`inference.predict_volume_dense`) and by the Dask path with one worker, both warm:
  `in_process_s`, `dask_s`, `overhead` (dask_s / in_process_s - 1).
"""

import json
import os
import resource
import tempfile
import time

from absl import app
from absl import flags

FLAGS = flags.FLAGS


def define_flags() -> None:
  flags.DEFINE_integer("n_cells", 512, "Side of the box painted with 1, 2, ... workers.")
  flags.DEFINE_integer("overhead_cells", 256,
                       "Side of the box of the in-process / Dask comparison (0: skip).")
  flags.DEFINE_list("workers", ["1", "2"], "Worker processes of each scale-out line.")
  flags.DEFINE_float("memory_budget_gb", 1.5, "Dense engine memory budget (tile size).")


def _model(folder: str) -> str:
  import keras

  from keras_cnn import benchmarks
  from keras_cnn import model as model_lib

  keras.utils.set_random_seed(0)
  settings = benchmarks.preset_settings(benchmarks.preset_path("default"))
  model = model_lib.build_model(benchmarks.preset_model_config(settings))
  path = os.path.join(folder, "default.keras")
  model.save(path)
  return path


def _box(folder: str, side: int):
  """BoxFields of a random box of `side`^3 saved as memory-mapped .npy files."""
  import numpy as np

  from keras_cnn import scale

  rng = np.random.default_rng(side)
  paths = {}
  for field in ("rho", "nsrc"):
    path = os.path.join(folder, f"{field}_{side}.npy")
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(side,) * 3)
    for x in range(side):  # a plane at a time: the benchmark's own memory stays small
      out[x] = (rng.lognormal(0.0, 0.5, (side, side)) if field == "rho" else (rng.random(
          (side, side)) < 0.01))
    out.flush()
    paths[field] = path
  rho = scale.FieldSource(paths["rho"], (side,) * 3, path=paths["rho"])
  n_src = scale.FieldSource(paths["nsrc"], (side,) * 3, path=paths["nsrc"])
  mean = float(np.load(paths["rho"], mmap_mode="r").mean(dtype=np.float64))
  return scale.BoxFields(rho, n_src, mean, None, 8.0, f"random_{side}")


def _peak_rss_mb() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _paint_seconds(fields, folder, model_path, twin, scheduler, budget) -> float:
  from keras_cnn import scale

  t0 = time.perf_counter()
  with scale.npy_output(os.path.join(folder, "map.npy"), fields.shape, overwrite=True) as target:
    scale.paint(fields, target, twin, scheduler, model_path=model_path, memory_budget_gb=budget,
                progress=False)
  return time.perf_counter() - t0


def main(argv) -> None:
  del argv
  from keras_cnn import dense
  from keras_cnn import inference
  from keras_cnn import scale

  budget = FLAGS.memory_budget_gb
  with tempfile.TemporaryDirectory() as folder:
    model_path = _model(folder)
    twin = dense.DenseTwin(inference.load_model(model_path))
    fields = _box(folder, FLAGS.n_cells)
    base = None
    for count in [int(w) for w in FLAGS.workers]:
      with scale.open_scheduler("processes", count) as scheduler:
        scale.warm_up(scheduler, model_path, inference.tile_shape(fields.shape, twin, budget))
        seconds = _paint_seconds(fields, folder, model_path, twin, scheduler, budget)
        rss = scheduler.client.run(_peak_rss_mb)
      base = base or seconds
      print(
          json.dumps({
              "kind": "scale_out",
              "n_cells": FLAGS.n_cells,
              "workers": count,
              "wall_s": round(seconds, 3),
              "voxels_per_s": round(FLAGS.n_cells ** 3 / seconds, 1),
              "peak_rss_mb_per_worker": round(max(rss.values()), 1),
              "speedup": round(base / seconds, 3)
          }), flush=True)
    if FLAGS.overhead_cells:
      import numpy as np

      side = FLAGS.overhead_cells
      box = _box(folder, side)
      n_igm = np.load(box.rho.path) / np.float32(box.rho_mean) - np.float32(1.0)
      n_src = np.load(box.n_src.path)
      run = lambda: inference.predict_volume_dense(twin.per_voxel, n_igm, n_src, memory_budget_gb=
                                                   budget, progress=False, twin=twin)
      run()
      t0 = time.perf_counter()
      run()
      in_process = time.perf_counter() - t0
      with scale.open_scheduler("processes", 1) as scheduler:
        scale.warm_up(scheduler, model_path, inference.tile_shape(box.shape, twin, budget))
        dask_s = _paint_seconds(box, folder, model_path, twin, scheduler, budget)
      print(
          json.dumps({
              "kind": "overhead",
              "n_cells": side,
              "in_process_s": round(in_process, 3),
              "dask_s": round(dask_s, 3),
              "overhead": round(dask_s / in_process - 1.0, 3)
          }), flush=True)


if __name__ == "__main__":
  define_flags()
  app.run(main)

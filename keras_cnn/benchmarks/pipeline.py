"""Crop throughput of `keras_cnn.pipeline` against the original method and a copy bound.

    python -m keras_cnn.benchmarks.pipeline                  # full run (~6 min on 2 busy cores)
    python -m keras_cnn.benchmarks.pipeline --min_seconds=0.3 --fit_steps=3  # smoke run
    python -m keras_cnn.benchmarks.pipeline --memory_check   # 512^3 peak-RSS check only

Prints one JSON object per line. Per radius (300^3 box, r = 4, 12, 24), all in
crops of one field per second, both input fields cut for every centre:
- `crops_per_s`: `pipeline.periodic_crops` on batches of random centres, into
  a reused batch buffer like the copy bound (one thread, like every baseline);
- `augmented_crops_per_s`: the same with a random cube symmetry per example;
- `dataset_crops_per_s`: the whole training `tf.data` stream (augmented, fresh
  buffers, its default parallelism);
- `seed_method_crops_per_s`: `get_neighborhood` of the original project (week 2), per point;
- `copy_bound_crops_per_s`: a NumPy copy of a contiguous slice of a wrap-padded
  field into the batch buffer (the practical memory-bandwidth bound).
Then one line comparing `model.fit` of the default preset fed by the pipeline
(`fit_pipeline_ex_per_s`) with one cached batch repeated (`fit_cached_ex_per_s`).
Every rate is the best of `--repeats` timed runs, to resist a busy machine.
`--memory_check` instead cuts batches from a 512^3 snapshot and prints its peak RSS.
"""

import json
import os
import resource
import time

from absl import app
from absl import flags
import keras
import numpy as np

from keras_cnn import cli_flags

cli_flags.define_model_flags()
cli_flags.define_data_flags()

_BOX_CELLS = flags.DEFINE_integer("box_cells", 300, "Side of the random test box.")
_RADII = flags.DEFINE_list("radii", ["4", "12", "24"], "Crop radii to time.")
_MIN_SECONDS = flags.DEFINE_float("min_seconds", 2.0, "Minimum duration of each timed run.")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timed runs per method; the best counts.")
_CROP_BATCH = flags.DEFINE_integer("crop_batch", 64, "Centres per periodic_crops call.")
_SEED_MAX_CROPS = flags.DEFINE_integer(
    "seed_max_crops", 4000, "Cap on the centres cut by the (slow) original method per run.")
_RUN_FIT = flags.DEFINE_boolean("run_fit", True, "Also time model.fit (pipeline vs cached).")
_FIT_PRESET = flags.DEFINE_string(
    "fit_preset", "flags/default.flags",
    "Flagfile whose model sizes and --batch_size the fit line uses; '' (or a missing "
    "file) uses the model/data flags as given (their defaults are the CPU preset).")
_FIT_STEPS = flags.DEFINE_integer("fit_steps", 20, "Steps per timed fit epoch.")
_FIT_EPOCHS = flags.DEFINE_integer("fit_epochs", 2,
                                   "Timed epochs per fit call (after one warm-up epoch).")
_FIT_ROUNDS = flags.DEFINE_integer("fit_rounds", 2,
                                   "Alternating rounds of (cached, pipeline) fit calls.")
_MEMORY_CHECK = flags.DEFINE_boolean("memory_check", False,
                                     "Only run the large-box peak-memory check.")
_MEMORY_CELLS = flags.DEFINE_integer("memory_cells", 512, "Box side of the memory check.")
_MEMORY_RADIUS = flags.DEFINE_integer("memory_radius", 24, "Crop radius of the memory check.")
_CENTRE_SEED = flags.DEFINE_integer("centre_seed", 0, "Seed of fields and centres.")

for _name in ("box_cells", "min_seconds", "repeats", "crop_batch", "seed_max_crops", "fit_steps",
              "fit_epochs", "fit_rounds", "memory_cells"):
  flags.register_validator(_name, lambda v: v > 0, message=f"--{_name} must be > 0")


def seed_get_neighborhood(T, x0, y0, z0, r):  # pylint: disable=invalid-name
  """The original method (week 2 of the original project): per-point list indexing, one
  axis at a time.

  `T` has shape (1, 1, N, N, N); a window crossing the upper face continues at 0,
  one crossing the lower face uses negative indices.
  """
  edge = T.shape[3]
  idx = list(range(x0 - r, min(edge, x0 + r + 1))) + list(range(0, max(0, x0 + r + 1 - edge)))
  idy = list(range(y0 - r, min(edge, y0 + r + 1))) + list(range(0, max(0, y0 + r + 1 - edge)))
  idz = list(range(z0 - r, min(edge, z0 + r + 1))) + list(range(0, max(0, z0 + r + 1 - edge)))
  Tm = T[0, 0, :, :, :]  # pylint: disable=invalid-name
  neigh = Tm[idx, :, :][:, idy, :][:, :, idz]
  neigh = np.expand_dims(neigh, axis=0)
  neigh = np.expand_dims(neigh, axis=0)
  return neigh


def _timed_loop(step, min_seconds: float, max_items: float = float("inf")):
  """Calls step() -> items until min_seconds passed or max_items were done."""
  items = 0
  start = time.perf_counter()
  while True:
    items += step()
    elapsed = time.perf_counter() - start
    if elapsed >= min_seconds or items >= max_items:
      return items, elapsed


def random_fields(cells: int, seed: int, count: int = 3):
  """`count` float32 cubes of side `cells`, generated without float64 temporaries."""
  rng = np.random.default_rng(seed)
  fields = []
  for _ in range(count):
    field = np.empty((cells,) * 3, np.float32)
    rng.random(out=field, dtype=np.float32)
    fields.append(field)
  return fields


def crop_rates(fields, radius: int, min_seconds: float, repeats: int, crop_batch: int,
               seed_max_crops: int, seed: int = 0) -> dict:
  """Crops/s of one field, for the pipeline and the two baselines, on the same centres."""
  from keras_cnn import pipeline  # tensorflow import only when timing

  n_igm, n_src, x_hii = fields
  cells = n_igm.shape[0]
  size = 2 * radius + 1
  rng = np.random.default_rng([seed, radius])
  pool = rng.integers(0, cells, size=(64 * crop_batch, 3))
  symmetries = rng.integers(0, pipeline.NUM_SYMMETRIES, size=len(pool))
  num_batches = len(pool) // crop_batch
  pair = [n_igm, n_src]
  crop_buffers = [np.empty((crop_batch,) + (size,) * 3, np.float32) for _ in pair]

  def ours(augment):
    counter = iter(range(1 << 62))

    def step():
      b = next(counter) % num_batches
      chunk = slice(b * crop_batch, (b + 1) * crop_batch)
      pipeline.periodic_crops(pair, pool[chunk], radius, symmetries[chunk] if augment else None,
                              out=crop_buffers)
      return 2 * crop_batch

    return _timed_loop(step, min_seconds)

  padded = [np.pad(f, radius, mode="wrap") for f in pair]
  buffers = [np.empty((crop_batch,) + (size,) * 3, np.float32) for _ in pair]
  pool_list = pool.tolist()

  def copy_bound():
    counter = iter(range(1 << 62))

    def step():
      b = next(counter) % num_batches
      for i, (x, y, z) in enumerate(pool_list[b * crop_batch:(b + 1) * crop_batch]):
        for out, field in zip(buffers, padded):
          out[i] = field[x:x + size, y:y + size, z:z + size]
      return 2 * crop_batch

    return _timed_loop(step, min_seconds)

  seed_fields = [f[None, None] for f in pair]

  def seed_method():
    counter = iter(range(1 << 62))

    def step():
      x, y, z = pool_list[next(counter) % len(pool_list)]
      for field in seed_fields:
        seed_get_neighborhood(field, x, y, z, radius)
      return 2

    return _timed_loop(step, min_seconds, max_items=2 * seed_max_crops)

  dataset = pipeline.make_dataset([(n_igm, n_src, x_hii)], radius, crop_batch, training=True,
                                  seed=seed, augment=True)

  def whole_dataset():
    iterator = iter(dataset)
    next(iterator)  # start-up (threads, first batch) is not steady-state throughput
    return _timed_loop(lambda: (next(iterator), 2 * crop_batch)[1], min_seconds)

  # Rounds interleave the methods so that each sees the same machine load.
  methods = {
      "crops_per_s": lambda: ours(False),
      "augmented_crops_per_s": lambda: ours(True),
      "dataset_crops_per_s": whole_dataset,
      "seed_method_crops_per_s": seed_method,
      "copy_bound_crops_per_s": copy_bound,
  }
  result = {"radius": radius}
  result.update({key: 0.0 for key in methods})
  for _ in range(repeats):
    for key, run_once in methods.items():
      items, seconds = run_once()
      result[key] = max(result[key], items / seconds)
  padded.clear()  # the wrap-padded copies are not needed past this point
  bound_share = result["crops_per_s"] / result["copy_bound_crops_per_s"]
  speedup = result["crops_per_s"] / result["seed_method_crops_per_s"]
  bound_target = 0.5 if radius >= 24 else 0.25 if radius <= 4 else None
  result.update({
      "fraction_of_copy_bound": round(bound_share, 3),
      "speedup_vs_seed_method": round(speedup, 1),
      "targets_met": bool(speedup >= 10 and (bound_target is None or bound_share >= bound_target)),
      "box": list(n_igm.shape),
      "crop_batch": crop_batch,
  })
  for key, value in result.items():
    if key.endswith("_per_s"):
      result[key] = round(value, 1)
  return result


class _EpochTimer(keras.callbacks.Callback):
  """Records the wall time of every epoch."""

  def __init__(self):
    super().__init__()
    self.seconds = []
    self._start = 0.0

  def on_epoch_begin(self, epoch, logs=None):
    self._start = time.perf_counter()

  def on_epoch_end(self, epoch, logs=None):
    self.seconds.append(time.perf_counter() - self._start)


def fit_rates(fields, config, batch_size: int, steps: int, epochs: int, rounds: int,
              seed: int = 0) -> dict:
  """model.fit examples/s: pipeline-fed vs one cached batch repeated, same model."""
  import tensorflow as tf

  from keras_cnn import model as model_lib
  from keras_cnn import pipeline

  keras.utils.set_random_seed(seed)
  dataset = pipeline.make_dataset([tuple(fields)], config.radius, batch_size, training=True,
                                  seed=seed, augment=True)
  cached = tf.data.Dataset.from_tensors(next(iter(dataset))).repeat()
  model = model_lib.build_model(config)
  model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="mse")
  best = {"pipeline": 0.0, "cached": 0.0}
  for _ in range(rounds):
    for name, data in (("cached", cached), ("pipeline", dataset)):
      timer = _EpochTimer()
      model.fit(data, epochs=1 + epochs, steps_per_epoch=steps, callbacks=[timer], verbose=0)
      rate = max(steps * batch_size / s for s in timer.seconds[1:])
      best[name] = max(best[name], rate)
  return {
      "fit_pipeline_ex_per_s": round(best["pipeline"], 2),
      "fit_cached_ex_per_s": round(best["cached"], 2),
      "pipeline_over_cached": round(best["pipeline"] / best["cached"], 3),
      "target_met": bool(best["pipeline"] >= 0.9 * best["cached"]),
      "backend": keras.backend.backend(),
      "radius": config.radius,
      "kernel_size": config.kernel_size,
      "filters": config.filters,
      "batch_size": batch_size,
      "steps": steps,
  }


def _peak_rss_bytes() -> int:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def _rss_bytes() -> int:
  with open("/proc/self/statm") as statm:
    return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def memory_check(cells: int, radius: int, batch_size: int = 32, batches: int = 8,
                 seed: int = 0) -> dict:
  """Peak RSS while the pipeline cuts batches of a cells^3 snapshot (3 fields).

  Training uses stratified sampling (its index lists are the pipeline's only
  memory beyond the fields: 4 bytes per training voxel). `target_met` compares
  the growth of the peak over the RSS before the fields were made (tensorflow's
  libraries and runtime, ~1 GB) with twice the fields' bytes.
  """
  import tensorflow as tf  # imported before the baseline so it does not count as data

  from keras_cnn import pipeline

  tf.constant(0.0)
  rss_before = _rss_bytes()
  fields = random_fields(cells, seed)
  field_bytes = sum(f.nbytes for f in fields)
  regions = pipeline.split_regions(fields[0].shape, radius)
  train = pipeline.make_dataset([tuple(fields)], radius, batch_size, training=True, seed=seed,
                                region=regions["train"], stratify_bins=4)
  for _, batch in zip(range(batches), train):
    del batch
  val = pipeline.make_dataset([tuple(fields)], radius, batch_size, training=False, seed=seed,
                              region="validation", num_examples=batches * batch_size)
  for batch in val:
    del batch
  volume = pipeline.volume_dataset(fields[0], fields[1], radius, batch_size, x_start=cells - 1,
                                   x_stop=cells)
  for _, batch in zip(range(batches), volume):
    del batch
  peak = _peak_rss_bytes()
  return {
      "memory_check_cells": cells,
      "radius": radius,
      "stratify_bins": 4,
      "fields_bytes": field_bytes,
      "rss_before_fields_bytes": rss_before,
      "peak_rss_bytes": peak,
      "peak_rss_over_fields": round(peak / field_bytes, 3),
      "peak_rss_minus_baseline_over_fields": round((peak - rss_before) / field_bytes, 3),
      "target_met": bool(peak - rss_before < 2 * field_bytes),
  }


def _find_preset(path: str) -> str:
  """`path` as given, or relative to the repository root; '' if neither exists."""
  if not path or os.path.exists(path):
    return path
  root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  candidate = os.path.join(root, path)
  return candidate if os.path.exists(candidate) else ""


def _preset_values(path: str):
  """The model config and batch size of flagfile `path` (or of the current flags)."""
  flag_values = flags.FLAGS
  if path:
    args = flag_values.read_flags_from_files([f"--flagfile={path}"])
    flag_values(["preset"] + args, known_only=True)
  return cli_flags.model_config_from_flags(flag_values), flag_values.batch_size


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  if _MEMORY_CHECK.value:
    print(
        json.dumps(memory_check(_MEMORY_CELLS.value, _MEMORY_RADIUS.value,
                                seed=_CENTRE_SEED.value)), flush=True)
    return
  fields = random_fields(_BOX_CELLS.value, _CENTRE_SEED.value)
  for radius in (int(r) for r in _RADII.value):
    print(
        json.dumps(
            crop_rates(fields, radius, _MIN_SECONDS.value, _REPEATS.value, _CROP_BATCH.value,
                       _SEED_MAX_CROPS.value, seed=_CENTRE_SEED.value)), flush=True)
  if _RUN_FIT.value:
    preset = _find_preset(_FIT_PRESET.value)
    config, batch_size = _preset_values(preset)
    result = fit_rates(fields, config, batch_size, _FIT_STEPS.value, _FIT_EPOCHS.value,
                       _FIT_ROUNDS.value, seed=_CENTRE_SEED.value)
    result["preset"] = _FIT_PRESET.value if preset else "flag values (no preset file)"
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
  app.run(main)

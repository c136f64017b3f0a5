"""`python -m keras_cnn.predict`: paint the x_HII map of a whole box with a saved model.

Every voxel is predicted from its periodic (2r+1)^3 neighbourhood in the raw fields
(targets are not needed) and the map is written as float32 (Nx, Ny, Nz):

  python -m keras_cnn.predict --model=saved_models/<name>.keras \\
      --data_dir=boxes/ --redshift=8.397 --out=xhii_pred.npy

`--dataset=synthetic --split=test` paints a built-in synthetic box instead.

Big boxes: many processes or machines. `--num_shards=K --shard_index=i` predicts
only the i-th of K x-slabs (`shard_bounds`: sizes differ by at most one plane) and
writes that slab, shape (stop - start, Ny, Nz). Launch one process per shard, e.g.
on one 16-core machine with 4 processes of 4 threads each:

  K=4
  export OMP_NUM_THREADS=4 TF_NUM_INTRAOP_THREADS=4
  for i in $(seq 0 $((K - 1))); do
    python -m keras_cnn.predict --model=model.keras --data_dir=boxes/ \\
        --redshift=8.397 --batch_size=256 \\
        --num_shards=$K --shard_index=$i --out=xhii_shard$i.npy &
  done
  wait

(or one shard per cluster job, e.g. `--shard_index=$SLURM_ARRAY_TASK_ID`), then
concatenate along x in shard order:

  python -c "import numpy as np; np.save('xhii_pred.npy', np.concatenate(
      [np.load(f'xhii_shard{i}.npy') for i in range(4)], axis=0))"

On one kind of machine and software the result is bit-for-bit the single-process
map: batches never straddle an x-plane (see `predict_volume`), so each voxel is
computed in the same batch whatever the sharding. Each output file appears only
when complete (temporary file, then `os.replace`), so a shard whose file exists
has finished.
"""

import os
import sys
from typing import Optional, Tuple

from absl import app
from absl import flags
from absl import logging
import numpy as np

from keras_cnn import cli_flags
from keras_cnn import io_utils

FLAGS = flags.FLAGS
cli_flags.define_predict_flags()
flags.adopt_module_key_flags(cli_flags)

DEFAULT_BATCH_SIZE = 256


def shard_bounds(nx: int, num_shards: int, shard_index: int) -> Tuple[int, int]:
  """Half-open x-range [start, stop) of shard `shard_index` of `num_shards`.

  Shards are contiguous, in order, and their sizes differ by at most one plane
  (the first nx % num_shards shards get one more), like `np.array_split`.
  """
  if nx < 1:
    raise ValueError(f"box must have at least one x-plane, got Nx = {nx}")
  if not 1 <= num_shards <= nx:
    raise ValueError(
        f"--num_shards={num_shards} must be in [1, Nx = {nx}] (one x-plane per shard at most)")
  if not 0 <= shard_index < num_shards:
    raise ValueError(
        f"--shard_index={shard_index} is out of range for --num_shards={num_shards}: "
        f"it must be in [0, {num_shards - 1}]")
  base, extra = divmod(nx, num_shards)
  start = shard_index * base + min(shard_index, extra)
  return start, start + base + (1 if shard_index < extra else 0)


def model_radius(model) -> int:
  """Crop radius r of a model whose inputs are (2r+1)^3 crops."""
  sides = set()
  for tensor in model.inputs:
    shape = tuple(tensor.shape[1:4])
    if len(set(shape)) != 1 or shape[0] is None or shape[0] % 2 == 0:
      raise ValueError(f"model input {tensor.name!r} has shape {tuple(tensor.shape)}; "
                       "expected (batch, 2r+1, 2r+1, 2r+1, 1)")
    sides.add(shape[0])
  if len(sides) != 1:
    raise ValueError(f"model inputs have different crop sides {sorted(sides)}")
  return (sides.pop() - 1) // 2


def load_model(path: str):
  """A saved `.keras` model, loaded with safe_mode=True."""
  import keras

  from keras_cnn import model as _  # registers SourceTransform  # noqa: F401

  if not os.path.isfile(path):
    raise FileNotFoundError(f"--model={path}: no such file")
  return keras.saving.load_model(path, safe_mode=True)


def _plane_batches(plane_size: int, batch_size: int, x_start: int, x_stop: int):
  """(x, first voxel of the plane in the batch) of every batch, plane by plane."""
  return np.array([(x, lo) for x in range(x_start, x_stop)
                   for lo in range(0, plane_size, batch_size)], dtype=np.int64)


def _crop_dataset(n_igm: np.ndarray, n_src: np.ndarray, radius: int, batch_size: int,
                  batches: np.ndarray, parallel_calls: int = 2):
  """tf.data stream of fixed-size input batches ({"n_igm", "n_src"}, valid count)."""
  import tensorflow as tf

  from keras_cnn import pipeline

  _, ny, nz = n_igm.shape
  plane_size = ny * nz
  side = 2 * radius + 1

  def make_batch(batch_index):
    x, lo = (int(v) for v in batches[int(batch_index)])
    count = min(batch_size, plane_size - lo)
    flat = np.arange(lo, lo + batch_size) % plane_size  # padding repeats the plane
    centres = np.stack([np.full(batch_size, x), flat // nz, flat % nz], axis=-1)
    igm, src = pipeline.periodic_crops([n_igm, n_src], centres, radius)
    return igm[..., None], src[..., None], np.int64(count)

  def to_element(batch_index):
    igm, src, count = tf.numpy_function(
        make_batch, [batch_index], [tf.float32, tf.float32, tf.int64], stateful=False)
    shape = (batch_size, side, side, side, 1)
    return {"n_igm": tf.ensure_shape(igm, shape), "n_src": tf.ensure_shape(src, shape)}, count

  dataset = tf.data.Dataset.range(len(batches)).map(
      to_element, num_parallel_calls=parallel_calls, deterministic=True)
  return dataset.prefetch(tf.data.AUTOTUNE)


def predict_volume(model, n_igm, n_src, batch_size: int = DEFAULT_BATCH_SIZE,
                   x_start: int = 0, x_stop: Optional[int] = None,
                   progress: bool = True) -> np.ndarray:
  """x_HII of every voxel of the x-slab [x_start, x_stop) of a periodic box.

  Crops are cut on the fly (`keras_cnn.pipeline.periodic_crops`) and wrap around
  all faces, so a slab's values need no halo. Batches hold `batch_size` voxels of
  one x-plane each (the last batch of a plane is padded and its padding dropped):
  every batch has one shape (one compilation under jax) and a voxel's batch does
  not depend on the slab, so slabs concatenate to exactly the whole-box map.

  Args:
    model: a model with inputs {"n_igm", "n_src"} of shape (2r+1,)*3 + (1,).
    n_igm: overdensity rho / mean(rho) - 1, shape (Nx, Ny, Nz).
    n_src: source counts, same shape.
    batch_size: crops per forward pass.
    x_start: first x-plane to predict.
    x_stop: one past the last x-plane (None: Nx).
    progress: show a progress bar on stderr.

  Returns:
    float32 array (x_stop - x_start, Ny, Nz).
  """
  from tqdm import tqdm

  n_igm = np.asarray(n_igm, dtype=np.float32)
  n_src = np.asarray(n_src, dtype=np.float32)
  if n_igm.ndim != 3 or n_src.shape != n_igm.shape:
    raise ValueError(f"n_igm and n_src must be 3-D of one shape, got {n_igm.shape} and "
                     f"{n_src.shape}")
  if batch_size < 1:
    raise ValueError(f"batch_size must be >= 1, got {batch_size}")
  nx, ny, nz = n_igm.shape
  x_stop = nx if x_stop is None else int(x_stop)
  if not 0 <= x_start < x_stop <= nx:
    raise ValueError(f"x-slab [{x_start}, {x_stop}) must satisfy 0 <= start < stop <= "
                     f"Nx = {nx}")
  radius = model_radius(model)
  plane_size = ny * nz
  batch_size = min(batch_size, plane_size)
  batches = _plane_batches(plane_size, batch_size, x_start, x_stop)
  dataset = _crop_dataset(n_igm, n_src, radius, batch_size, batches)
  out = np.empty((x_stop - x_start, plane_size), np.float32)
  with tqdm(total=out.size, unit="voxel", unit_scale=True, file=sys.stderr,
            disable=not progress, desc="x_HII", mininterval=1.0) as bar:
    for (x, lo), (inputs, count) in zip(batches.tolist(), dataset.as_numpy_iterator()):
      values = np.asarray(model.predict_on_batch(inputs), np.float32).reshape(-1)
      out[x - x_start, lo:lo + count] = values[:count]
      bar.update(int(count))
  return out.reshape(x_stop - x_start, ny, nz)


def save_array(array: np.ndarray, path: str) -> str:
  """np.save to `path` via a temporary file in the same folder and os.replace."""
  with io_utils.atomic_open(path, "wb") as stream:
    np.save(stream, array, allow_pickle=False)
  return path


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  cli_flags.require_flags("model", "out")
  from keras_cnn import inputs as inputs_lib

  model = load_model(FLAGS.model)
  radius = model_radius(model)
  snapshots = inputs_lib.load_box(
      FLAGS.data_dir, FLAGS.redshift, FLAGS.dataset, split=FLAGS.split,
      tfds_data_dir=FLAGS.tfds_data_dir, n_cells=FLAGS.n_cells, mean_xhii=FLAGS.mean_xhii,
      data_seed=FLAGS.data_seed, radius=radius, require_target=False)
  if FLAGS.box_index >= len(snapshots):
    raise app.UsageError(f"--box_index={FLAGS.box_index} but the data hold "
                         f"{len(snapshots)} box(es)")
  snapshot = snapshots[FLAGS.box_index]
  try:
    start, stop = shard_bounds(snapshot.shape[0], FLAGS.num_shards, FLAGS.shard_index)
  except ValueError as error:
    raise app.UsageError(str(error)) from error
  logging.info("Predicting x-planes [%d, %d) of %s, shape %s, with r=%d.", start, stop,
               snapshot.name, snapshot.shape, radius)
  x_hii = predict_volume(model, snapshot.n_igm, snapshot.n_src, batch_size=FLAGS.batch_size,
                         x_start=start, x_stop=stop, progress=FLAGS.progress)
  save_array(x_hii, FLAGS.out)
  where = ("the whole box" if FLAGS.num_shards == 1 else
           f"shard {FLAGS.shard_index} of {FLAGS.num_shards}: x-planes [{start}, {stop}) "
           f"of a box of shape {tuple(snapshot.shape)}")
  print(f"Wrote x_HII map of shape {tuple(x_hii.shape)} float32 ({where}) to {FLAGS.out}")


if __name__ == "__main__":
  app.run(main)

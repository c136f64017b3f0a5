"""Inference library: x_HII maps of whole boxes and their scores, from a saved model.

Two engines give the same map (float tolerance):
- `dense` (models built with padding 'valid'): the dense twin (`keras_cnn.dense`) paints
  a tile of voxels per pass; tiles carry a periodic halo of r cells and are sized from
  a memory budget.
- `per_voxel` (every model; the only one for 'same' padding): each voxel is the model on
  its own periodic (2r+1)^3 crop.
`engine="auto"` picks dense whenever it is exact.

Sharding: `shard_bounds` cuts a box into x-slabs for separate processes. Both engines
compute every voxel in a piece of work (a batch of one x-plane, or a tile of a tiling
fixed by the whole box) that does not depend on the sharding, so on one kind of machine
and software the slabs concatenate to exactly the single-process map.
"""

import dataclasses
import logging
import os
import sys
from typing import List, Optional, Sequence, Tuple

import numpy as np

from keras_cnn import conditioning
from keras_cnn import config
from keras_cnn import conventions
from keras_cnn import dense
from keras_cnn import errors
from keras_cnn import io_utils

ENGINES = config.ENGINES
DEFAULT_BATCH_SIZE = config.APPLY_BATCH_SIZE  # crops per batch of the per-voxel engine
DEFAULT_MEMORY_BUDGET_GB = 1.5

model_radius = dense.model_radius


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
    raise ValueError(f"--shard_index={shard_index} is out of range for --num_shards={num_shards}: "
                     f"it must be in [0, {num_shards - 1}]")
  base, extra = divmod(nx, num_shards)
  start = shard_index * base + min(shard_index, extra)
  return start, start + base + (1 if shard_index < extra else 0)


class NotANetwork(ValueError):
  """A model file that is empty, truncated, legacy HDF5, or a Keras model of another kind."""


_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


def _check_archive(path: str) -> None:
  """NotANetwork unless `path` looks like a complete .keras archive (a zip file)."""
  import zipfile

  with open(path, "rb") as stream:
    head = stream.read(8)
  if not head:
    raise NotANetwork("the file is empty (0 bytes); a keras_cnn model is a .keras file "
                      "written by keras_cnn.train")
  if head == _HDF5_SIGNATURE:
    raise NotANetwork("a legacy Keras HDF5 (.h5) file; keras_cnn models are .keras files "
                      "written by keras_cnn.train")
  if not zipfile.is_zipfile(path):
    raise NotANetwork("not a .keras archive (the file is truncated, or of another kind)")


def check_network(model) -> None:
  """NotANetwork unless `model` is a keras_cnn network: inputs n_igm and n_src (and
  the condition, if any) of one (2r+1)^3 crop side, the source_transform layer, and one
  x_HII per example."""
  inputs = getattr(model, "inputs", None) or []
  names = sorted(str(getattr(t, "name", "")).split(":")[0] for t in inputs)
  expected = [["n_igm", "n_src"], sorted(["n_igm", "n_src", conditioning.INPUT_NAME])]
  if names not in expected:
    raise NotANetwork(f"a Keras model, but not a keras_cnn network (inputs "
                      f"{', '.join(names) or 'none'}; expected n_igm and n_src)")
  try:
    model.get_layer("source_transform")
    model_radius(model)
  except ValueError as error:
    raise NotANetwork(f"a Keras model, but not a keras_cnn network ({error})") from None
  if tuple(model.outputs[0].shape[1:]) != (1,) or len(model.outputs) != 1:
    raise NotANetwork("a Keras model, but not a keras_cnn network (its output is not one "
                      "x_HII per example)")


def load_model(path: str):
  """A saved `.keras` model of a keras_cnn network, loaded with safe_mode=True.

  Raises:
    FileNotFoundError: no such file.
    NotANetwork: an empty, truncated or legacy file, or a model of another kind.
  """
  import keras

  from keras_cnn import model as _  # registers SourceTransform  # noqa: F401

  if not os.path.isfile(path):
    raise FileNotFoundError(f"--model={path}: no such file")
  _check_archive(path)
  model = keras.saving.load_model(path, safe_mode=True)
  check_network(model)
  return model


def check_condition(model, condition: Optional[float]) -> None:
  """ValueError unless `condition` is given exactly when the model is conditioned."""
  kind = conditioning.of_model(model)
  if kind != "none" and condition is None:
    raise ValueError(f"the model is conditioned on the box's {kind.replace('_', ' ')}: pass its "
                     "value as `condition` (`keras_cnn.conditioning.value`)")
  if kind == "none" and condition is not None:
    raise ValueError(f"the model takes no condition, got condition={condition}")


def predict_volume(model, n_igm, n_src, batch_size: int = DEFAULT_BATCH_SIZE, x_start: int = 0,
                   x_stop: Optional[int] = None, progress: bool = True,
                   condition: Optional[float] = None) -> np.ndarray:
  """x_HII of every voxel of the x-slab [x_start, x_stop), one crop per voxel.

  Crops come from `keras_cnn.pipeline.volume_dataset(..., whole_planes=True)` and
  wrap around all faces, so a slab's values need no halo; batches hold voxels of
  one x-plane each, so slabs concatenate to exactly the whole-box map.

  Args:
    model: a model with inputs {"n_igm", "n_src"} of shape (2r+1,)*3 + (1,).
    n_igm: overdensity rho / mean(rho) - 1, shape (Nx, Ny, Nz).
    n_src: source counts, same shape.
    batch_size: crops per forward pass.
    x_start: first x-plane to predict.
    x_stop: one past the last x-plane (None: Nx).
    progress: show a progress bar on stderr.
    condition: the box's value for a conditioned model (`keras_cnn.conditioning`).

  Returns:
    float32 array (x_stop - x_start, Ny, Nz).
  """
  from tqdm import tqdm

  from keras_cnn import pipeline

  n_igm, n_src, x_stop = _check_volume(n_igm, n_src, x_start, x_stop)
  check_condition(model, condition)
  if batch_size < 1:
    raise ValueError(f"batch_size must be >= 1, got {batch_size}")
  _, ny, nz = n_igm.shape
  radius = model_radius(model)
  plane_size = ny * nz
  batch_size = min(batch_size, plane_size)
  batches = pipeline.plane_batches(plane_size, batch_size, x_start, x_stop)
  dataset = pipeline.volume_dataset(n_igm, n_src, radius, batch_size, x_start, x_stop,
                                    whole_planes=True, condition=condition)
  out = np.empty((x_stop - x_start, plane_size), np.float32)
  with tqdm(total=out.size, unit="voxel", unit_scale=True, file=sys.stderr, disable=not progress,
            desc="x_HII", mininterval=1.0) as bar:
    for (x, lo), (inputs, count) in zip(batches.tolist(), dataset.as_numpy_iterator()):
      values = np.asarray(model.predict_on_batch(inputs), np.float32).reshape(-1)
      out[x - x_start, lo:lo + count] = values[:count]
      bar.update(int(count))
  return out.reshape(x_stop - x_start, ny, nz)


def resolve_engine(model, engine: str = "auto") -> str:
  """'dense' or 'per_voxel': the engine that `engine` asks for on this model."""
  if engine not in ENGINES:
    raise ValueError(f"--engine must be one of {ENGINES}, got {engine!r}")
  padding = dense.model_padding(model)
  if engine == "auto":
    return "dense" if padding == "valid" else "per_voxel"
  if engine == "dense" and padding != "valid":
    raise ValueError(f"--engine=dense needs a model trained with --padding=valid; this model uses "
                     f"padding={padding!r}: use --engine=per_voxel (or auto)")
  return engine


def bytes_per_position(twin: dense.DenseTwin) -> int:
  """Peak memory per input position of a tile's pass, float32: about two live feature
  maps of both branches (2 x filters channels) and one and a half of the head (units of
  `dense`), with a margin over what `keras_cnn.benchmarks.predict` measures."""
  return 4 * (2 * twin.head_channels + 3 * twin.head_units // 2 + 4)


def tile_shape(box_shape: Sequence[int], twin: dense.DenseTwin,
               memory_budget_gb: float = DEFAULT_MEMORY_BUDGET_GB) -> Tuple[int, int, int]:
  """Largest tile (per axis at most the box) whose input with halo fits the budget."""
  if memory_budget_gb <= 0:
    raise ValueError(f"--memory_budget_gb must be > 0, got {memory_budget_gb}")
  halo = 2 * twin.radius
  budget = memory_budget_gb * 2 ** 30 / bytes_per_position(twin)
  side = 1
  while side < max(box_shape) and np.prod([min(n, side + 1) + halo for n in box_shape]) <= budget:
    side += 1
  shape = []
  for n in box_shape:
    count = -(-n // min(n, side))  # tiles along the axis, then balanced sizes
    shape.append(-(-n // count))
  return tuple(shape)


def _tiles(n: int, side: int) -> List[Tuple[int, int, int]]:
  """(tile start, owned start, owned stop) along an axis of length n; every tile has
  `side` cells and the last one ends at n (it may overlap its neighbour)."""
  count = -(-n // side)
  tiles = []
  for i in range(count):
    start = min(i * side, n - side)
    tiles.append((start, i * side, min((i + 1) * side, n)))
  return tiles


def predict_volume_dense(model, n_igm, n_src, x_start: int = 0, x_stop: Optional[int] = None,
                         memory_budget_gb: float = DEFAULT_MEMORY_BUDGET_GB, progress: bool = True,
                         twin=None, condition: Optional[float] = None) -> np.ndarray:
  """x_HII of the x-slab [x_start, x_stop) of a periodic box through the dense twin.

  The box is cut into equal tiles (`tile_shape`, fixed by the whole box so a slab's
  voxels come from the same tiles as in the whole-box map); each tile's input is the
  tile plus a periodic halo of r cells, gathered with wrap-around indices.

  Args:
    model: a per-voxel model built with padding 'valid'.
    n_igm: overdensity rho / mean(rho) - 1, shape (Nx, Ny, Nz).
    n_src: source counts, same shape.
    x_start: first x-plane to predict.
    x_stop: one past the last x-plane (None: Nx).
    memory_budget_gb: bound on the memory of one tile's pass.
    progress: show a progress bar (tiles) on stderr.
    twin: a `DenseTwin` of `model` to reuse (None: built here).
    condition: the box's value for a conditioned model (`keras_cnn.conditioning`).

  Returns:
    float32 array (x_stop - x_start, Ny, Nz).
  """
  from tqdm import tqdm

  n_igm, n_src, x_stop = _check_volume(n_igm, n_src, x_start, x_stop)
  check_condition(model, condition)
  twin = dense.DenseTwin(model) if twin is None else twin
  tiles = dense_tiles(n_igm.shape, tile_shape(n_igm.shape, twin, memory_budget_gb), twin.radius,
                      x_start, x_stop)
  out = np.empty((x_stop - x_start,) + n_igm.shape[1:], np.float32)
  with tqdm(total=len(tiles), unit="tile", file=sys.stderr, disable=not progress, desc="x_HII",
            mininterval=1.0) as bar:
    for tile in tiles:
      index = np.ix_(*tile.indices)
      values = paint_tile(twin, n_igm[index], n_src[index], condition)
      owned = tile.owned
      out[(slice(owned[0].start - x_start, owned[0].stop - x_start),) + owned[1:]] = \
          values[tile.crop]
      bar.update(1)
  return out


@dataclasses.dataclass(frozen=True)
class DenseTile:
  """One pass of the dense engine: the tile's input, with its periodic halo, and the
  voxels of the map it owns.

  Attributes:
    indices: per axis, the box indices of the input (tile plus halo, wrapped around).
    owned: per axis, the slice of the map that this tile paints.
    crop: per axis, the slice of the tile's output that lands on `owned`.
  """

  indices: Tuple[np.ndarray, np.ndarray, np.ndarray]
  owned: Tuple[slice, slice, slice]
  crop: Tuple[slice, slice, slice]


def dense_tiles(box_shape: Sequence[int], tile: Sequence[int], radius: int, x_start: int = 0,
                x_stop: Optional[int] = None) -> List[DenseTile]:
  """The tiles of the dense engine that paint the x-slab [x_start, x_stop), in order.

  The tiling is fixed by the whole box (every tile has the shape `tile`; the last one
  of an axis ends at the box's end and may overlap its neighbour), so any engine that
  runs these passes paints the same bits as `predict_volume_dense`.
  """
  x_stop = box_shape[0] if x_stop is None else x_stop
  tiles = []
  per_axis = [_tiles(n, side) for n, side in zip(box_shape, tile)]
  per_axis[0] = [t for t in per_axis[0] if t[2] > x_start and t[1] < x_stop]
  logging.info("Dense engine: tiles of %s voxels (+ halo of %d), %d tile(s).", tuple(tile), radius,
               int(np.prod([len(a) for a in per_axis])))
  for tx, ox0, ox1 in per_axis[0]:
    lo, hi = max(ox0, x_start), min(ox1, x_stop)
    for ty, oy0, oy1 in per_axis[1]:
      for tz, oz0, oz1 in per_axis[2]:
        starts = (tx, ty, tz)
        indices = tuple(
            np.arange(s - radius, s + side + radius) % n
            for s, side, n in zip(starts, tile, box_shape))
        owned = (slice(lo, hi), slice(oy0, oy1), slice(oz0, oz1))
        crop = tuple(slice(o.start - s, o.stop - s) for o, s in zip(owned, starts))
        tiles.append(DenseTile(indices, owned, crop))
  return tiles


def paint_tile(twin: dense.DenseTwin, n_igm_tile: np.ndarray, n_src_tile: np.ndarray,
               condition: Optional[float] = None) -> np.ndarray:
  """x_HII of a tile (float32, each side 2r less than the input's): one dense pass over
  the tile's fields with their halo (`DenseTile.indices`)."""
  inputs = {
      "n_igm": np.asarray(n_igm_tile, np.float32)[None, ..., None],
      "n_src": np.asarray(n_src_tile, np.float32)[None, ..., None]
  }
  if condition is not None:
    inputs[conditioning.INPUT_NAME] = conditioning.column(condition, 1)
  return np.asarray(twin.predict_on_batch(inputs), np.float32)[0, ..., 0]


def _check_volume(n_igm, n_src, x_start: int, x_stop: Optional[int]):
  n_igm = np.asarray(n_igm, dtype=np.float32)
  n_src = np.asarray(n_src, dtype=np.float32)
  if n_igm.ndim != 3 or n_src.shape != n_igm.shape:
    raise ValueError(f"n_igm and n_src must be 3-D of one shape, got {n_igm.shape} and "
                     f"{n_src.shape}")
  nx = n_igm.shape[0]
  x_stop = nx if x_stop is None else int(x_stop)
  if not 0 <= x_start < x_stop <= nx:
    raise ValueError(f"x-slab [{x_start}, {x_stop}) must satisfy 0 <= start < stop <= "
                     f"Nx = {nx}")
  return n_igm, n_src, x_stop


def predict_map(model, n_igm, n_src, engine: str = "auto", x_start: int = 0,
                x_stop: Optional[int] = None, batch_size: int = DEFAULT_BATCH_SIZE,
                memory_budget_gb: float = DEFAULT_MEMORY_BUDGET_GB, progress: bool = True,
                condition: Optional[float] = None) -> np.ndarray:
  """x_HII of the x-slab [x_start, x_stop) through the engine `engine` resolves to
  (`condition`: the box's value for a conditioned model)."""
  chosen = resolve_engine(model, engine)
  logging.info("Engine: %s (padding %r).", chosen, dense.model_padding(model))
  if chosen == "dense":
    return predict_volume_dense(model, n_igm, n_src, x_start=x_start, x_stop=x_stop,
                                memory_budget_gb=memory_budget_gb, progress=progress,
                                condition=condition)
  return predict_volume(model, n_igm, n_src, batch_size=batch_size, x_start=x_start, x_stop=x_stop,
                        progress=progress, condition=condition)


def save_array(array: np.ndarray, path: str, overwrite: bool = True) -> str:
  """np.save to `path` via a temporary file in the same folder.

  Without `overwrite` the path is claimed: a file that appeared there meanwhile (another
  process's) is kept, and `keras_cnn.errors.UserError` raised (`io_utils.commit_new`).
  """
  try:
    with io_utils.atomic_open(path, "wb", exclusive=not overwrite) as stream:
      np.save(stream, array, allow_pickle=False)
  except FileExistsError:
    if overwrite:
      raise
    raise errors.UserError(f"{path} was written by another process while this command ran; "
                           "it is kept: choose another path, or pass --overwrite to "
                           "replace it") from None
  return path


def sampled_predictions(model, fields, radius: int, batch_size: int, num_examples: int, seed: int,
                        region=None, progress: bool = False,
                        conditions: Optional[Sequence[float]] = None):
  """(y_true, y_pred) on a fixed random set of `num_examples` voxels (or all, if fewer).

  Args:
    model: a per-voxel model (inputs {"n_igm", "n_src"} of side 2r+1).
    fields: (n_igm, n_src, x_hii) triples, as `keras_cnn.pipeline.make_dataset` takes.
    radius: the model's crop radius.
    batch_size: crops per forward pass.
    num_examples: voxels to score.
    seed: seed of the voxels.
    region: x-slab of every box to draw from (`pipeline.make_dataset`); None: whole boxes.
    progress: progress bar on stderr.
    conditions: one value per box for a conditioned model.
  """
  from tqdm import tqdm

  from keras_cnn import pipeline

  dataset = pipeline.make_dataset(fields, radius, batch_size, training=False, seed=seed,
                                  region=region, num_examples=num_examples, conditions=conditions)
  y_true, y_pred = [], []
  with tqdm(total=num_examples, unit="voxel", unit_scale=True, file=sys.stderr,
            disable=not progress, desc="x_HII", mininterval=1.0) as bar:
    for inputs, targets in dataset.as_numpy_iterator():
      y_true.append(np.asarray(targets, np.float32).ravel())
      y_pred.append(np.asarray(model.predict_on_batch(inputs), np.float32).ravel())
      bar.update(len(y_true[-1]))
  return np.concatenate(y_true), np.concatenate(y_pred)


def evaluate_model(model, snapshots: Sequence, out_dir: str, batch_size: int = 256,
                   max_full_voxels: int = 128 ** 3, num_examples: int = 16384, seed: int = 0,
                   cell_size_mpc: float = conventions.CELL_SIZE_MPC,
                   history_csv: Optional[str] = None, power_spectrum: str = "auto",
                   progress: bool = True, engine: str = "auto",
                   memory_budget_gb: float = DEFAULT_MEMORY_BUDGET_GB,
                   condition_value: Optional[float] = None) -> dict:
  """Scores `model` on whole boxes and writes metrics.json and figures to `out_dir`.

  Args:
    model: a trained model (inputs {"n_igm", "n_src"} of side 2r+1).
    snapshots: `keras_cnn.data.snapshot.Snapshot`s with targets; any box shape.
    out_dir: output folder (created).
    batch_size: crops per forward pass.
    max_full_voxels: per-voxel engine: boxes up to this size are predicted whole;
      larger ones are scored on `num_examples` random voxels (no map, slices or
      physics scores but the ionized-map ones). The dense engine always predicts whole
      boxes.
    num_examples: voxels per large box.
    seed: seed of those voxels and of the bubble-size rays.
    cell_size_mpc: comoving cell side (figures' axes, k and bubble sizes).
    history_csv: a training history to plot (None: no history figure).
    power_spectrum: "auto", "tools21cm" or "numpy": the implementation of the physics
      scores of whole boxes (`keras_cnn.metrics.compare_maps`: power spectra, dT_b,
      bubble sizes), or "off" to skip them.
    progress: progress bars on stderr.
    engine: "auto", "dense" or "per_voxel" (see `resolve_engine`).
    memory_budget_gb: dense engine: memory bound of one tile's pass.
    condition_value: a conditioned model's input for every box instead of each box's
      own (`keras_cnn.conditioning.value`: its redshift, cosmic time or mean x_HII).

  Returns:
    The metrics written to out_dir/metrics.json (JSON-safe: no NaN): the regression
    metrics and the ionized-map scores of every scored voxel, and the physics scores
    of the whole boxes (`keras_cnn.metrics.MAP_SCORE_KEYS`, combined over boxes by
    `aggregate_map_scores`; None without a whole box).
  """
  from keras_cnn import reports
  from keras_cnn import scoring

  if not snapshots:
    raise ValueError("evaluate_model needs at least one snapshot")
  for snapshot in snapshots:
    if snapshot.x_hii is None:
      raise ValueError(f"{snapshot.name}: field 'x_hii' is missing; evaluation needs targets")
  kind = conditioning.of_model(model)
  conditions = [conditioning.value(kind, s, condition_value) for s in snapshots]
  radius = model_radius(model)
  chosen = resolve_engine(model, engine)
  logging.info("Engine: %s (padding %r).", chosen, dense.model_padding(model))
  whole = lambda snapshot: chosen == "dense" or int(np.prod(snapshot.shape)) <= max_full_voxels

  boxes, titles, suffixes, voxels = [], [], [], []
  for i, snapshot in enumerate(snapshots):
    size = int(np.prod(snapshot.shape))
    if not whole(snapshot):
      logging.info("%s: %d voxels > %d, scoring %d random voxels.", snapshot.name, size,
                   max_full_voxels, num_examples)
      voxels.append(
          sampled_predictions(model, [(snapshot.n_igm, snapshot.n_src, snapshot.x_hii)], radius,
                              batch_size, num_examples, seed + i, progress=progress,
                              conditions=None if kind == "none" else [conditions[i]]))
      continue
    logging.info("%s: predicting all %d voxels.", snapshot.name, size)
    pred_map = predict_map(model, snapshot.n_igm, snapshot.n_src, engine=chosen,
                           batch_size=batch_size, memory_budget_gb=memory_budget_gb,
                           progress=progress, condition=conditions[i])
    boxes.append(
        scoring.WholeBox(np.asarray(snapshot.x_hii, np.float32), pred_map, snapshot.n_igm,
                         snapshot.redshift))
    titles.append(snapshot.name)
    suffixes.append("" if len(snapshots) == 1 else f"_{i}")

  scores = scoring.score(boxes, voxels, cell_size_mpc=cell_size_mpc, method=power_spectrum,
                         seed=seed)
  result = dict(scores.metrics)
  result["num_boxes"] = len(snapshots)
  result["full_volume"] = all(whole(s) for s in snapshots)
  result["engine"] = chosen
  if kind != "none":
    result["conditioning"] = kind
    result["condition_values"] = conditions
  reports.write_evaluation(out_dir, scores, result, boxes, titles, suffixes,
                           cell_size_mpc=cell_size_mpc, history_csv=history_csv)
  return result


def history_beside(model_path: str) -> Optional[str]:
  """The history.csv in the model's folder (a train workdir), if there is one."""
  path = os.path.join(os.path.dirname(os.path.abspath(model_path)), conventions.HISTORY_FILE)
  return path if os.path.isfile(path) else None

"""tf.data input pipeline: periodic crops cut on the fly from whole fields.

The fields of every snapshot stay in memory as NumPy arrays, exactly once: no
wrap-padded copy, no pre-extracted crops, and never a graph constant (a 512^3
float32 field is 0.5 GB; graph constants stop at 2 GB). Each batch is made by a
`tf.numpy_function` that cuts the crops of a batch of centres straight into the
batch buffer: along each axis a periodic neighbourhood is at most two contiguous
ranges of the box, so one crop is at most 8 slice copies per field, and both
input fields are cut in the same loop over centres. A symmetry of the cube
(augmentation) costs nothing extra: the crop is written into a transposed and
reflected *view* of the output, so the copy itself applies it.

Training streams are infinite and keyed by (seed, batch index): each batch draws
new centres, so `model.fit(steps_per_epoch=...)` sees new centres every epoch,
and the same seed gives the same stream. Evaluation datasets are finite, fixed
and in C order (snapshot, x, y, z).

Splits: several snapshots are independent realizations, so give each split its
own snapshots. With a single box, `keras_cnn.data.regions.split_regions` cuts it into x-slabs for
train/validation/test separated by guard bands of >= r cells (also across the
periodic wrap), so no crop centred in one region reaches a voxel of another.

Boxes larger than memory: the pipeline only reads the fields by slicing, so
arrays opened with `np.load(path, mmap_mode="r")` (or `np.memmap`) work
unchanged; the operating system pages in the slabs that crops touch. Evaluate or
predict such a box slab by slab (`volume_dataset(..., x_start, x_stop)`, as the
predict shards do) and keep training centres in a region that fits the page
cache, or store the box in x-chunks and pass each chunk with a halo of r cells.
"""

import functools
import itertools
import threading
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import tensorflow as tf

from keras_cnn import conventions
from keras_cnn import errors
from keras_cnn.data.regions import SPLIT_FRACTIONS, Region, split_regions  # noqa: F401

INPUT_NAMES = ("n_igm", "n_src")
CONDITION_NAME = "condition"  # conditioned models' third input (`keras_cnn.conditioning`)
TARGET_NAME = "x_hii"

# Streams of the random generator keyed by (seed, stream, index).
_STREAM_BATCH = 0
_STREAM_FIXED_SET = 1

_PERMUTATIONS = tuple(itertools.permutations(range(3)))
NUM_SYMMETRIES = len(_PERMUTATIONS) * 8  # 6 axis orders x 2^3 reflections = 48

Field = np.ndarray


def symmetry(index: int) -> Tuple[Tuple[int, int, int], Tuple[bool, bool, bool]]:
  """The `index`-th symmetry of the cube as (axis permutation, reflected axes).

  Index 0 is the identity. The transform of a crop `c` is
  `np.flip(np.transpose(c, perm), [axes where reflected])` (see `apply_symmetry`).
  """
  if not 0 <= index < NUM_SYMMETRIES:
    raise ValueError(f"symmetry index must be in [0, {NUM_SYMMETRIES}), got {index}")
  perm = _PERMUTATIONS[index // 8]
  flips = tuple(bool((index >> bit) & 1) for bit in range(3))
  return perm, flips


def apply_symmetry(crop: np.ndarray, index: int) -> np.ndarray:
  """Reference transform of one cubic crop (D, D, D) by symmetry `index` (a copy)."""
  perm, flips = symmetry(index)
  out = np.transpose(crop, perm)
  axes = [axis for axis, flip in enumerate(flips) if flip]
  return np.ascontiguousarray(np.flip(out, axes) if axes else out)


def _symmetry_view(out: np.ndarray, index: int) -> np.ndarray:
  """View V of a batch buffer (B, D, D, D) such that writing V[b] = c stores T(c)."""
  perm, flips = symmetry(index)
  flipped = out[(slice(None),) +
                tuple(slice(None, None, -1) if flip else slice(None) for flip in flips)]
  inverse = np.argsort(perm)
  return flipped.transpose((0,) + tuple(int(1 + axis) for axis in inverse))


@functools.lru_cache(maxsize=64)
def _axis_segments(n: int, lead: int, size: int) -> Tuple[tuple, ...]:
  """For every position c in 0..n-1: the (source slice, destination slice) pairs of
  its periodic window [c - lead, c - lead + size) on an axis of length n (two pairs
  when it wraps; more only when the window is longer than the axis)."""
  table = []
  for centre in range(n):
    pos = (centre - lead) % n
    done = 0
    pairs = []
    while done < size:
      length = min(n - pos, size - done)
      pairs.append((slice(pos, pos + length), slice(done, done + length)))
      done += length
      pos = 0
    table.append(tuple(pairs))
  return tuple(table)


class _Cutter:
  """Cuts periodic windows of several same-shaped fields; caches the axis tables.

  The window of position c is [c - lead, c - lead + size) on every axis: a crop
  centred on c by default (lead r, size 2r+1).
  """

  def __init__(self, shape: Sequence[int], radius: int, size: Optional[int] = None,
               lead: Optional[int] = None):
    if radius < 0:
      raise ValueError(f"radius must be >= 0, got {radius}")
    self.shape = tuple(int(n) for n in shape)
    self.radius = int(radius)
    self.size = 2 * self.radius + 1 if size is None else int(size)
    lead = self.radius if lead is None else int(lead)
    self.tables = [_axis_segments(n, lead, self.size) for n in self.shape]

  def cut(self, snapshots: Sequence[Sequence[Field]], which: Optional[np.ndarray],
          centres: np.ndarray, symmetries: Optional[np.ndarray],
          outs: Sequence[np.ndarray]) -> None:
    """Writes crop b of field f of snapshot which[b] into outs[f][b]."""
    count = len(centres)
    if count == 0:
      return
    if symmetries is None:
      views = [[out] for out in outs]
      sym_list = [0] * count
    else:
      present = np.unique(symmetries)
      views = []
      for out in outs:
        per_sym = [None] * NUM_SYMMETRIES
        for index in present.tolist():
          per_sym[index] = _symmetry_view(out, index)
        views.append(per_sym)
      sym_list = symmetries.tolist()
    which_list = [0] * count if which is None else which.tolist()
    tab_x, tab_y, tab_z = self.tables
    num_fields = len(outs)
    for b, (cx, cy, cz) in enumerate(centres.tolist()):
      fields = snapshots[which_list[b]]
      k = sym_list[b]
      seg_x, seg_y, seg_z = tab_x[cx], tab_y[cy], tab_z[cz]
      if len(seg_x) == 1 and len(seg_y) == 1 and len(seg_z) == 1:
        src = (seg_x[0][0], seg_y[0][0], seg_z[0][0])
        for f in range(num_fields):
          views[f][k][b] = fields[f][src]
        continue
      for (sx, dx), (sy, dy), (sz, dz) in itertools.product(seg_x, seg_y, seg_z):
        for f in range(num_fields):
          views[f][k][b, dx, dy, dz] = fields[f][sx, sy, sz]


def _as_field(array, name: str) -> np.ndarray:
  """float32 3-D array without copying when it already is one (memmaps stay mapped)."""
  if array is None:
    raise ValueError(f"field {name} is missing (None)")
  field = np.asarray(array, dtype=np.float32)
  if field.ndim != 3:
    raise ValueError(f"field {name} must be 3-D, got shape {field.shape}")
  return field


def periodic_crops(fields: Union[np.ndarray, Sequence[np.ndarray]], centres: np.ndarray,
                   radius: int, symmetries: Optional[np.ndarray] = None,
                   out: Optional[Sequence[np.ndarray]] = None):
  """Exact periodic neighbourhoods of side 2r+1 of each field at integer centres.

  `crop[b, i, j, k] = F[(x_b - r + i) % Nx, (y_b - r + j) % Ny, (z_b - r + k) % Nz]`,
  then transformed by `apply_symmetry(., symmetries[b])` if symmetries are given
  (the same transform for every field of example b).

  Args:
    fields: one 3-D array, or a sequence of 3-D arrays of the same shape.
    centres: integer array (B, 3) of voxel indices (any integers: taken mod N).
    radius: r >= 0.
    symmetries: optional integer array (B,) of symmetry indices in [0, 48).
    out: optional float32 buffers (B, D, D, D), one per field (a single array for
      a single field), reused instead of fresh arrays.

  Returns:
    float32 array (B, D, D, D) for a single field, else a list of them, D = 2r+1.
  """
  single = isinstance(fields, np.ndarray)
  field_list = [fields] if single else list(fields)
  if not field_list:
    raise ValueError("periodic_crops needs at least one field")
  field_list = [_as_field(f, f"#{i}") for i, f in enumerate(field_list)]
  shape = field_list[0].shape
  for i, field in enumerate(field_list):
    if field.shape != shape:
      raise ValueError(f"all fields must have the same shape: field #{i} has {field.shape}, "
                       f"field #0 has {shape}")
  centres = np.asarray(centres)
  if centres.ndim != 2 or centres.shape[1] != 3:
    raise ValueError(f"centres must have shape (B, 3), got {centres.shape}")
  centres = np.mod(centres.astype(np.int64), shape)
  if symmetries is not None:
    symmetries = np.asarray(symmetries, dtype=np.int64).reshape(-1)
    if symmetries.shape[0] != centres.shape[0]:
      raise ValueError(f"symmetries must have one entry per centre ({centres.shape[0]}), "
                       f"got {symmetries.shape[0]}")
    if symmetries.size and (symmetries.min() < 0 or symmetries.max() >= NUM_SYMMETRIES):
      raise ValueError(f"symmetry indices must be in [0, {NUM_SYMMETRIES})")
  cutter = _Cutter(shape, radius)
  size = cutter.size
  shape_out = (len(centres), size, size, size)
  if out is None:
    outs = [np.empty(shape_out, np.float32) for _ in field_list]
  else:
    outs = [out] if isinstance(out, np.ndarray) else list(out)
    if len(outs) != len(field_list) or any(
        o.shape != shape_out or o.dtype != np.float32 for o in outs):
      raise ValueError(f"out must hold {len(field_list)} float32 arrays of shape {shape_out}")
  cutter.cut([field_list], None, centres, symmetries, outs)
  return outs[0] if single else outs


def _resolve_region(region, shape, radius) -> Region:
  length = shape[0]
  if region is None:
    return 0, length
  if isinstance(region, str):
    if region not in conventions.SPLITS:
      raise ValueError(
          f"region must be one of {conventions.SPLITS} or (start, stop), got {region!r}")
    return split_regions(shape, radius)[region]
  start, stop = (int(v) for v in region)
  if not 0 <= start < stop <= length:
    raise ValueError(f"region {region} must satisfy 0 <= start < stop <= Nx = {length}")
  return start, stop


class _Source:
  """The snapshots of one dataset, their regions, and centre sampling."""

  def __init__(self, fields, radius: int, region, need_targets: bool = True,
               conditions: Optional[Sequence[float]] = None):
    if len(fields) == 3 and all(
        f is None or (isinstance(f, np.ndarray) and f.ndim == 3) for f in fields):
      fields = [tuple(fields)]  # one (n_igm, n_src, x_hii) triple
    fields = list(fields)
    if not fields:
      raise ValueError("fields must hold at least one (n_igm, n_src, x_hii) triple")
    self.snapshots = []
    self.regions = []
    for s, triple in enumerate(fields):
      if len(triple) != 3:
        raise ValueError(
            f"fields[{s}] must be an (n_igm, n_src, x_hii) triple, got {len(triple)} items")
      names = INPUT_NAMES + (TARGET_NAME,)
      arrays = []
      for name, array in zip(names, triple):
        if array is None and name == TARGET_NAME and not need_targets:
          arrays.append(None)
          continue
        arrays.append(_as_field(array, f"{name} of fields[{s}]"))
      shape = arrays[0].shape
      for name, array in zip(names[1:], arrays[1:]):
        if array is not None and array.shape != shape:
          raise ValueError(
              f"field {name} of fields[{s}] has shape {array.shape} but n_igm has {shape}")
      self.snapshots.append(arrays)
      self.regions.append(_resolve_region(region, shape, radius))
    if conditions is not None and len(conditions) != len(self.snapshots):
      raise ValueError(f"conditions must hold one value per snapshot ({len(self.snapshots)}), "
                       f"got {len(conditions)}")
    self.conditions = None if conditions is None else np.asarray(conditions, np.float32)
    shapes = {arrays[0].shape for arrays in self.snapshots}
    self.cutters = {shape: _Cutter(shape, radius) for shape in shapes}
    self.radius = int(radius)
    self.size = 2 * self.radius + 1
    # Global voxel index g: snapshot s owns [offsets[s], offsets[s+1]), C order
    # over its region (x - x_start, y, z).
    self.region_shapes = [(stop - start,) + arrays[0].shape[1:]
                          for (start, stop), arrays in zip(self.regions, self.snapshots)]
    counts = [int(np.prod(shape)) for shape in self.region_shapes]
    self.offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    self.total = int(self.offsets[-1])
    self._strata = {}
    self._strata_lock = threading.Lock()

  def locate(self, index: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Global voxel indices -> (snapshot ids, centres (B, 3))."""
    index = np.asarray(index, dtype=np.int64)
    which = np.searchsorted(self.offsets, index, side="right") - 1
    centres = np.empty((len(index), 3), np.int64)
    for s in np.unique(which).tolist():
      mask = which == s
      local = np.unravel_index(index[mask] - self.offsets[s], self.region_shapes[s])
      centres[mask] = np.stack(local, axis=-1)
      centres[mask, 0] += self.regions[s][0]
    return which, centres

  def _bin_chunks(self, bins: int):
    """(global index of the chunk's first voxel, x_HII bin ids) over plane chunks
    of every region, small enough to keep temporaries at a few tens of MB."""
    for s, arrays in enumerate(self.snapshots):
      start, stop = self.regions[s]
      plane = int(np.prod(arrays[0].shape[1:]))
      chunk = max(1, (1 << 20) // plane)
      for x in range(start, stop, chunk):
        upper = min(stop, x + chunk)
        ids = np.clip((arrays[2][x:upper] * bins).astype(np.int64), 0, bins - 1).ravel()
        yield self.offsets[s] + (x - start) * plane, ids

  def strata(self, bins: int) -> List[np.ndarray]:
    """Sorted global voxel indices of each non-empty x_HII bin (equal widths on
    [0, 1]). Two passes (count, then fill) so the peak is the result itself:
    4 bytes per voxel of the regions (8 beyond 2^31 voxels)."""
    with self._strata_lock:  # parallel batch calls must not build it twice
      if bins not in self._strata:
        self._strata[bins] = self._build_strata(bins)
      return self._strata[bins]

  def _build_strata(self, bins: int) -> List[np.ndarray]:
    counts = np.zeros(bins, np.int64)
    for _, ids in self._bin_chunks(bins):
      counts += np.bincount(ids, minlength=bins)
    dtype = np.int32 if self.total < np.iinfo(np.int32).max else np.int64
    strata = [np.empty(n, dtype) for n in counts.tolist()]
    filled = np.zeros(bins, np.int64)
    for base, ids in self._bin_chunks(bins):
      order = np.argsort(ids, kind="stable")
      bounds = np.searchsorted(ids[order], np.arange(bins + 1))
      for k in range(bins):
        hits = order[bounds[k]:bounds[k + 1]]
        strata[k][filled[k]:filled[k] + len(hits)] = hits + base
        filled[k] += len(hits)
    return [stratum for stratum in strata if len(stratum)]

  def sample(self, rng: np.random.Generator, count: int, stratify_bins: int,
             replace: bool = True) -> np.ndarray:
    """`count` global voxel indices, uniform or uniform over x_HII bins."""
    if stratify_bins <= 0:
      if replace:
        return rng.integers(0, self.total, size=count, dtype=np.int64)
      return rng.choice(self.total, size=min(count, self.total), replace=False)
    strata = self.strata(stratify_bins)
    if replace:
      chosen = rng.integers(0, len(strata), size=count)
      out = np.empty(count, np.int64)
      for k in np.unique(chosen).tolist():
        mask = chosen == k
        out[mask] = strata[k][rng.integers(0, len(strata[k]), size=int(mask.sum()))]
      return out
    per_bin = np.full(len(strata), count // len(strata))
    per_bin[:count % len(strata)] += 1
    picks = [
        rng.choice(stratum, size=min(n, len(stratum)), replace=False)
        for stratum, n in zip(strata, per_bin.tolist())
    ]
    return np.concatenate(picks).astype(np.int64)

  def condition_column(self, which: np.ndarray) -> List[np.ndarray]:
    """[(B, 1) condition of each example's snapshot], or [] without conditions."""
    if self.conditions is None:
      return []
    return [self.conditions[which][:, None]]

  def make_batch(self, index: np.ndarray, symmetries: Optional[np.ndarray], with_targets: bool):
    which, centres = self.locate(index)
    count = len(index)
    outs = [np.empty((count,) + (self.size,) * 3, np.float32) for _ in INPUT_NAMES]
    shapes = {arrays[0].shape for arrays in self.snapshots}
    for shape in shapes:
      cutter = self.cutters[shape]
      if len(shapes) == 1:
        cutter.cut(self.snapshots, which, centres, symmetries, outs)
        continue
      mask = np.flatnonzero([self.snapshots[s][0].shape == shape for s in which])
      part = [np.empty((len(mask),) + out.shape[1:], np.float32) for out in outs]
      cutter.cut(self.snapshots, which[mask], centres[mask],
                 None if symmetries is None else symmetries[mask], part)
      for out, piece in zip(outs, part):
        out[mask] = piece
    result = [out[..., None] for out in outs] + self.condition_column(which)
    if with_targets:
      targets = np.empty((count, 1), np.float32)
      for s in np.unique(which).tolist():
        mask = which == s
        c = centres[mask]
        targets[mask, 0] = self.snapshots[s][2][c[:, 0], c[:, 1], c[:, 2]]
      result.append(targets)
    return result


def _input_dict(arrays, crop_shape, conditioned: bool) -> Dict[str, tf.Tensor]:
  """The model's input dict from the first arrays a batch function returned."""
  inputs = {name: tf.ensure_shape(array, crop_shape) for name, array in zip(INPUT_NAMES, arrays)}
  if conditioned:
    inputs[CONDITION_NAME] = tf.ensure_shape(arrays[len(INPUT_NAMES)], (crop_shape[0], 1))
  return inputs


def _to_dataset(batches: tf.data.Dataset, fn, batch_size: Optional[int], size: int,
                with_targets: bool, parallel_calls: int,
                conditioned: bool = False) -> tf.data.Dataset:
  """Maps batch indices through `fn` (NumPy) into ({inputs}, targets) elements."""
  crop_shape = (batch_size,) + (size,) * 3 + (1,)
  dtypes = [tf.float32] * (len(INPUT_NAMES) + int(conditioned) + int(with_targets))

  def to_element(batch_index):
    arrays = tf.numpy_function(fn, [batch_index], dtypes, stateful=False)
    inputs = _input_dict(arrays, crop_shape, conditioned)
    if with_targets:
      return inputs, tf.ensure_shape(arrays[-1], (batch_size, 1))
    return inputs

  dataset = batches.map(to_element, num_parallel_calls=parallel_calls, deterministic=True)
  return dataset.prefetch(tf.data.AUTOTUNE)


def make_dataset(fields, radius: int, batch_size: int, *, training: bool, seed: int = 0,
                 augment: bool = True, region=None, num_examples: Optional[int] = None,
                 stratify_bins: int = 0, start_batch: int = 0, parallel_calls: int = 2,
                 conditions: Optional[Sequence[float]] = None) -> tf.data.Dataset:
  """Batches of ({"n_igm", "n_src"}: (B, D, D, D, 1), x_hii: (B, 1)), float32.

  Args:
    fields: a list of (n_igm, n_src, x_hii) triples of 3-D arrays, one per snapshot
      (overdensity, raw sources, ionized fraction); a single triple also works.
    radius: crop radius r; D = 2r+1.
    batch_size: examples per batch.
    training: True: an infinite stream of uniformly random centres over the region,
      a new draw for every batch, keyed by (seed, batch index). False: a finite,
      fixed, ordered set (all voxels of the region in C order, or `num_examples`
      of them drawn once by `seed`), no augmentation; the last batch may be short.
    seed: seed of every random choice.
    augment: training only: each example gets a random one of the 48 cube
      symmetries, the same for both inputs.
    region: None (whole boxes), "train" / "validation" / "test" (slabs of
      `split_regions(shape, radius)`), or an x-range (start, stop) for every box.
    num_examples: evaluation: size of the fixed set (None: every voxel).
      Training: size of a fixed pool of centres drawn once (like pre-extracted
      crops) that batches sample from; None: the whole region.
    stratify_bins: if > 0, drawn centres (training, or an evaluation set of
      `num_examples`) are spread uniformly over this many equal-width x_HII bins
      (then uniform within a bin) instead of uniformly over voxels.
    start_batch: training: index of the first batch of the stream (to resume a
      run where it stopped: epochs_done * steps_per_epoch).
    parallel_calls: batches cut concurrently.
    conditions: one value per snapshot for a conditioned model: the inputs then
      also hold "condition" (B, 1), each example's snapshot's value.

  Returns:
    A `tf.data.Dataset`, usable by `model.fit` / `evaluate` under every backend.
  """
  if batch_size < 1:
    raise ValueError(f"batch_size must be >= 1, got {batch_size}")
  if stratify_bins < 0:
    raise ValueError(f"stratify_bins must be >= 0, got {stratify_bins}")
  if start_batch < 0:
    raise ValueError(f"start_batch must be >= 0, got {start_batch}")
  if num_examples is not None and num_examples < 1:
    raise ValueError(f"num_examples must be >= 1 or None, got {num_examples}")
  source = _Source(fields, radius, region, conditions=conditions)
  conditioned = conditions is not None
  if stratify_bins and (training or num_examples is not None):
    source.strata(stratify_bins)  # once, before the parallel batch calls start
  fixed = None
  if num_examples is not None:
    rng = np.random.default_rng([seed, _STREAM_FIXED_SET])
    fixed = np.sort(source.sample(rng, num_examples, stratify_bins, replace=False))

  if training:

    def batch_fn(batch_index):
      rng = np.random.default_rng([seed, _STREAM_BATCH, int(batch_index)])
      if fixed is None:
        index = source.sample(rng, batch_size, stratify_bins)
      else:
        index = fixed[rng.integers(0, len(fixed), size=batch_size)]
      syms = rng.integers(0, NUM_SYMMETRIES, size=batch_size) if augment else None
      return source.make_batch(index, syms, with_targets=True)

    return _to_dataset(tf.data.Dataset.counter(start=start_batch), batch_fn, batch_size,
                       source.size, True, parallel_calls, conditioned)

  count = source.total if fixed is None else len(fixed)

  def eval_fn(batch_index):
    lo = int(batch_index) * batch_size
    hi = min(count, lo + batch_size)
    index = (np.arange(lo, hi, dtype=np.int64) if fixed is None else fixed[lo:hi])
    return source.make_batch(index, None, with_targets=True)

  num_batches = -(-count // batch_size)
  return _to_dataset(tf.data.Dataset.range(num_batches), eval_fn, None, source.size, True,
                     parallel_calls, conditioned)


def plane_batches(plane_size: int, batch_size: int, x_start: int, x_stop: int) -> np.ndarray:
  """(x, first voxel of the plane) of each batch of `volume_dataset(..., whole_planes=True)`."""
  return np.array(
      [(x, lo) for x in range(x_start, x_stop) for lo in range(0, plane_size, batch_size)],
      dtype=np.int64).reshape(-1, 2)


def volume_dataset(n_igm, n_src, radius: int, batch_size: int, x_start: int = 0,
                   x_stop: Optional[int] = None, whole_planes: bool = False,
                   parallel_calls: int = 2, condition: Optional[float] = None) -> tf.data.Dataset:
  """Input dicts for every voxel of the x-slab [x_start, x_stop), in C order.

  `model.predict(volume_dataset(...))` returns (n, 1) with n = (x_stop - x_start)
  * Ny * Nz; reshape it to (x_stop - x_start, Ny, Nz) to paint the slab of the map.

  With `whole_planes=True` every batch holds `batch_size` voxels of one x-plane
  (the last batch of a plane is filled up with voxels of the same plane) and the
  elements are (inputs, count of real voxels): every batch has one shape (one
  compilation under jax) and a voxel's batch does not depend on the slab, so slabs
  predicted apart concatenate to exactly the whole-box map. `plane_batches` gives
  the (x, first voxel) of each batch.

  `condition`: the box's value for a conditioned model (input "condition", (B, 1)).
  """
  if batch_size < 1:
    raise ValueError(f"batch_size must be >= 1, got {batch_size}")
  n_igm = _as_field(n_igm, "n_igm")
  x_stop = n_igm.shape[0] if x_stop is None else int(x_stop)
  source = _Source([(n_igm, n_src, None)], radius, (x_start, x_stop), need_targets=False,
                   conditions=None if condition is None else [condition])
  conditioned = condition is not None
  count = source.total
  if not whole_planes:

    def batch_fn(batch_index):
      lo = int(batch_index) * batch_size
      index = np.arange(lo, min(count, lo + batch_size), dtype=np.int64)
      return source.make_batch(index, None, with_targets=False)

    num_batches = -(-count // batch_size)
    return _to_dataset(tf.data.Dataset.range(num_batches), batch_fn, None, source.size, False,
                       parallel_calls, conditioned)

  plane_size = int(np.prod(n_igm.shape[1:]))
  batch_size = min(batch_size, plane_size)
  batches = plane_batches(plane_size, batch_size, x_start, x_stop)

  def plane_fn(batch_index):
    x, lo = (int(v) for v in batches[int(batch_index)])
    flat = np.arange(lo, lo + batch_size) % plane_size  # the fill repeats the plane
    index = (x - x_start) * plane_size + flat
    return source.make_batch(index, None,
                             with_targets=False) + [np.float32(min(batch_size, plane_size - lo))]

  crop_shape = (batch_size,) + (source.size,) * 3 + (1,)

  def to_element(batch_index):
    arrays = tf.numpy_function(plane_fn, [batch_index], [tf.float32] * (3 + int(conditioned)),
                               stateful=False)
    return _input_dict(arrays, crop_shape, conditioned), tf.cast(arrays[-1], tf.int64)

  dataset = tf.data.Dataset.range(len(batches)).map(to_element, num_parallel_calls=parallel_calls,
                                                    deterministic=True)
  return dataset.prefetch(tf.data.AUTOTUNE)


def _patch_corner_region(region, shape, radius: int, patch_size: int):
  """Half-open x-range of patch corners whose whole P-block lies in `region`."""
  if region is None:
    return None  # whole periodic boxes: any corner
  start, stop = _resolve_region(region, shape, radius)
  if stop - start < patch_size:
    raise errors.UserError(
        f"a region of {stop - start} x-planes ([{start}, {stop})) is narrower than "
        f"--patch_size={patch_size}: use a smaller --patch_size, a bigger box, or "
        "independent snapshots for validation and test")
  return start, stop - patch_size + 1


def make_patch_dataset(fields, radius: int, patch_size: int, batch_size: int, *, training: bool,
                       seed: int = 0, augment: bool = True, region=None,
                       num_patches: Optional[int] = None, start_batch: int = 0,
                       parallel_calls: int = 2,
                       conditions: Optional[Sequence[float]] = None) -> tf.data.Dataset:
  """Batches of patches: a P^3 block of targets with its (P+2r)^3 periodic context.

  Elements are ({"n_igm", "n_src"}: (B, P+2r, P+2r, P+2r, 1), x_hii: (B * P^3, 1)):
  the targets are flattened in (patch, x, y, z) C order, the order in which the
  flattening dense twin (`keras_cnn.dense.DenseTwin(..., flat_output=True)`) returns
  its predictions. A patch whose corner is c covers voxels [c, c + P) on each axis
  (periodic) and its context [c - r, c + P + r). With a slab `region`, whole blocks
  stay inside the slab, so the guard bands of `split_regions` keep every context out
  of the other splits.

  Args:
    fields: (n_igm, n_src, x_hii) triples, one per snapshot (see `make_dataset`).
    radius: crop radius r of the model.
    patch_size: P, target voxels per patch side.
    batch_size: patches per batch.
    training: True: infinite stream keyed by (seed, batch index), new corners for
      every batch. False: `num_patches` corners drawn once by `seed`, in order.
    seed: seed of every random choice.
    augment: training only: one of the 48 cube symmetries per patch, applied to the
      whole block (context and targets alike).
    region: None (whole boxes), "train" / "validation" / "test", or (start, stop).
    num_patches: evaluation: how many patches (required when training is False).
    start_batch: training: index of the first batch (to resume).
    parallel_calls: batches cut concurrently.
    conditions: one value per snapshot for a conditioned model (input "condition",
      (B, 1): each patch's snapshot's value).
  """
  if patch_size < 1:
    raise ValueError(f"patch_size must be >= 1, got {patch_size}")
  if batch_size < 1:
    raise ValueError(f"batch_size must be >= 1, got {batch_size}")
  if not training and (num_patches is None or num_patches < 1):
    raise ValueError(f"num_patches must be >= 1 for evaluation, got {num_patches}")
  probe = _Source(fields, radius, None)
  corners = _patch_corner_region(region, probe.snapshots[0][0].shape, radius, patch_size)
  source = _Source(fields, radius, corners, conditions=conditions)
  conditioned = conditions is not None
  shapes = {arrays[0].shape for arrays in source.snapshots}
  context = patch_size + 2 * radius
  cutters = {
      shape: (_Cutter(shape, radius, size=context,
                      lead=radius), _Cutter(shape, radius, size=patch_size,
                                            lead=0)) for shape in shapes
  }
  target_fields = [[arrays[2]] for arrays in source.snapshots]

  def make_batch(index, symmetries):
    which, corner = source.locate(index)
    count = len(index)
    inputs = [np.empty((count,) + (context,) * 3, np.float32) for _ in INPUT_NAMES]
    targets = np.empty((count,) + (patch_size,) * 3, np.float32)
    for shape in shapes:
      mask = np.flatnonzero([source.snapshots[s][0].shape == shape for s in which])
      if len(mask) == count:
        parts, part_targets, picked = inputs, targets, None
      else:
        parts = [np.empty((len(mask),) + out.shape[1:], np.float32) for out in inputs]
        part_targets = np.empty((len(mask),) + targets.shape[1:], np.float32)
        picked = mask
      sel = slice(None) if picked is None else picked
      syms = None if symmetries is None else symmetries[sel]
      cut_in, cut_out = cutters[shape]
      cut_in.cut(source.snapshots, which[sel], corner[sel], syms, parts)
      cut_out.cut(target_fields, which[sel], corner[sel], syms, [part_targets])
      if picked is not None:
        for out, piece in zip(inputs, parts):
          out[picked] = piece
        targets[picked] = part_targets
    return ([out[..., None] for out in inputs] + source.condition_column(which) +
            [targets.reshape(-1, 1)])

  input_shape = (None,) + (context,) * 3 + (1,)

  def to_dataset(batches, fn):

    def to_element(batch_index):
      arrays = tf.numpy_function(fn, [batch_index], [tf.float32] * (3 + int(conditioned)),
                                 stateful=False)
      return _input_dict(arrays, input_shape, conditioned), tf.ensure_shape(arrays[-1], (None, 1))

    return batches.map(to_element, num_parallel_calls=parallel_calls,
                       deterministic=True).prefetch(tf.data.AUTOTUNE)

  if training:

    def train_fn(batch_index):
      rng = np.random.default_rng([seed, _STREAM_BATCH, int(batch_index)])
      index = source.sample(rng, batch_size, 0)
      syms = rng.integers(0, NUM_SYMMETRIES, size=batch_size) if augment else None
      return make_batch(index, syms)

    return to_dataset(tf.data.Dataset.counter(start=start_batch), train_fn)

  rng = np.random.default_rng([seed, _STREAM_FIXED_SET])
  fixed = np.sort(source.sample(rng, num_patches, 0, replace=False))

  def eval_fn(batch_index):
    lo = int(batch_index) * batch_size
    return make_batch(fixed[lo:lo + batch_size], None)

  return to_dataset(tf.data.Dataset.range(-(-len(fixed) // batch_size)), eval_fn)

"""Boxes larger than one machine: inputs read tile by tile, maps written tile by tile,
and the dense engine on a Dask cluster.

Inputs (`BoxFields`) are read lazily, one tile plus its periodic halo at a time:
- `.npy` files are memory-mapped (as `keras_cnn.data.snapshot.load_snapshot` reads them);
- a Zarr store (a folder named `*.zarr`) holds one array per field and snapshot, named
  like the `.npy` files without the suffix: `rho_z{z:.3f}` (density), `nsrc_z{z:.3f}`
  (sources) and, optionally, `xHII_z{z:.3f}` (the simulation's x_HII), all of one 3-D
  shape, any real dtype, any chunking (chunks of about a tile's side read least).
The overdensity and the mean-scaled sources are computed per tile from the box means,
so the box itself is never held in memory.

Outputs (`npy_output`, `zarr_output`) are written tile by tile to a temporary name and
appear under their own name only when complete: a `.npy` file, or an array of a Zarr
store chunked along the tile grid.

Schedulers (`open_scheduler`): "none" paints the tiles in this process, in order;
"threads" on Dask's local threads; "processes" on a `distributed.LocalCluster` of
`workers` processes of one thread; any other value is the address of a running
`dask.distributed` scheduler (e.g. one that dask-jobqueue started on a cluster). Every
scheduler runs the same passes on the same tiles (`inference.dense_tiles`, fixed by the
box), so on one kind of machine and software the maps are equal bit for bit.
"""

import contextlib
import dataclasses
import functools
import logging
import os
import secrets
import shutil
import sys
import threading
from typing import Iterator, Optional, Sequence, Tuple

import numpy as np

from keras_cnn import dense
from keras_cnn import errors
from keras_cnn import inference
from keras_cnn import io_utils

ZARR_SUFFIX = ".zarr"
LOCAL_SCHEDULERS = ("none", "threads", "processes")
# Field -> the name prefix of its array in a Zarr store (that of its .npy file).
ZARR_PREFIXES = {"rho": "rho", "n_src": "nsrc", "x_hii": "xHII"}


def is_zarr(path: Optional[str]) -> bool:
  """Whether `path` names a Zarr store (it ends in .zarr)."""
  return bool(path) and path.rstrip("/").endswith(ZARR_SUFFIX)


def zarr_array_name(field: str, redshift: float) -> str:
  """The name of the array of `field` ("rho", "n_src" or "x_hii") at `redshift`."""
  return f"{ZARR_PREFIXES[field]}_z{redshift:.3f}"


@functools.lru_cache(maxsize=32)
def _open_npy(path: str):
  return np.load(path, mmap_mode="r", allow_pickle=False)


def _open_zarr(store: str, name: str):
  import zarr

  return zarr.open_array(store, path=name, mode="r")


@dataclasses.dataclass(frozen=True)
class FieldSource:
  """One field of a box, read a tile at a time.

  Attributes:
    label: the file or array named in messages.
    shape: the field's shape.
    path: a .npy file (memory-mapped) or a Zarr store; None for an array in memory.
    array_name: the array in the Zarr store at `path`.
    array: the field in memory (when it came from a file that cannot be mapped).
  """

  label: str
  shape: Tuple[int, int, int]
  path: Optional[str] = None
  array_name: Optional[str] = None
  array: Optional[np.ndarray] = dataclasses.field(default=None, repr=False, compare=False)

  def read(self, indices: Sequence[np.ndarray]) -> np.ndarray:
    """float32 values at the outer product of the per-axis `indices`."""
    if self.array is not None:
      return np.asarray(self.array[np.ix_(*indices)], np.float32)
    if self.array_name is not None:
      return np.asarray(_open_zarr(self.path, self.array_name).oindex[tuple(indices)], np.float32)
    return np.asarray(_open_npy(self.path)[np.ix_(*indices)], np.float32)

  def as_dask(self):
    """The field as a lazy dask array (checks and box means)."""
    import dask.array as da

    if self.array is not None:
      return da.from_array(self.array)
    if self.array_name is not None:
      return da.from_zarr(_open_zarr(self.path, self.array_name))
    return da.from_array(_open_npy(self.path))


def source_of(array: np.ndarray, path: Optional[str], label: str) -> FieldSource:
  """The FieldSource of a field that `load_snapshot` read: its .npy file when the array
  is a float32 memory map of it, else the array itself."""
  shape = tuple(int(n) for n in array.shape)
  if (path and path.endswith(".npy") and isinstance(array, np.memmap) and
      array.dtype == np.float32):
    return FieldSource(label, shape, path=os.path.abspath(path))
  return FieldSource(label, shape, array=np.asarray(array, np.float32))


@dataclasses.dataclass(frozen=True)
class BoxFields:
  """The two inputs of one box as the model takes them, read tile by tile.

  The overdensity of a tile is rho / rho_mean - 1 and its sources, for a model with a
  mean-scaled source transform, n_src / src_mean (all zeros when the box holds no
  source), with the same float32 operations as `keras_cnn.data.snapshot.overdensity`
  and `scale_sources` on the whole box.
  """

  rho: FieldSource
  n_src: FieldSource
  rho_mean: float
  src_mean: Optional[float]  # None: the sources as they are
  redshift: float
  name: str

  @property
  def shape(self) -> Tuple[int, int, int]:
    return self.rho.shape

  def tile(self, indices: Sequence[np.ndarray]) -> Tuple[np.ndarray, np.ndarray]:
    """(n_igm, n_src) at the outer product of the per-axis `indices`."""
    rho = self.rho.read(indices)
    n_igm = (rho / np.float32(self.rho_mean) - np.float32(1.0)).astype(np.float32, copy=False)
    n_src = self.n_src.read(indices)
    if self.src_mean is not None:
      if self.src_mean > 0.0:
        n_src = (n_src / np.float32(self.src_mean)).astype(np.float32, copy=False)
      else:
        n_src = np.zeros_like(n_src)
    return n_igm, n_src


def fields_of_snapshot(snapshot, mean_scaled: bool) -> BoxFields:
  """The BoxFields of a snapshot that `load_snapshot` read and checked (its .npy files
  stay memory-mapped); `mean_scaled`: the model takes the sources over their box mean."""
  paths = snapshot.paths or {}
  rho = source_of(snapshot.rho, paths.get("rho"), paths.get("rho", snapshot.name))
  n_src = source_of(snapshot.n_src, paths.get("n_src"), paths.get("n_src", snapshot.name))
  rho_mean = float(np.asarray(snapshot.rho, np.float32).mean(dtype=np.float64))
  src_mean = (float(np.asarray(snapshot.n_src, np.float32).mean(
      dtype=np.float64)) if mean_scaled else None)
  return BoxFields(rho, n_src, rho_mean, src_mean, float(snapshot.redshift), snapshot.name)


def zarr_redshifts(store: str) -> list:
  """Sorted redshifts of the density arrays (rho_z{z:.3f}) of a Zarr store."""
  import zarr

  if not os.path.isdir(store):
    raise errors.SnapshotError(f"{store}: no such Zarr store (a folder)")
  try:
    group = zarr.open_group(store, mode="r")
    names = list(group.array_keys())
  except Exception as error:  # zarr raises several kinds for a folder that is no store
    raise errors.SnapshotError(f"{store}: not a readable Zarr store ({error})") from None
  found = []
  for name in names:
    if name.startswith("rho_z"):
      try:
        found.append(float(name[len("rho_z"):]))
      except ValueError:
        continue
  return sorted(found)


def _zarr_source(store: str, field: str, redshift: float) -> Optional[FieldSource]:
  import zarr

  name = zarr_array_name(field, redshift)
  label = os.path.join(store, name)
  try:
    array = _open_zarr(store, name)
  except (FileNotFoundError, KeyError, zarr.errors.ArrayNotFoundError):
    return None
  if array.dtype.kind not in "biuf":
    raise errors.SnapshotError(f"{label}: field '{field}' has dtype {array.dtype}, expected "
                               "real numbers")
  if len(array.shape) != 3 or min(array.shape) < 1:
    raise errors.SnapshotError(f"{label}: field '{field}' has shape {tuple(array.shape)}, "
                               "expected a 3-D box")
  return FieldSource(label, tuple(int(n) for n in array.shape), path=os.path.abspath(store),
                     array_name=name)


def zarr_fields(store: str, redshift: float, mean_scaled: bool,
                radius: Optional[int] = None) -> Tuple[BoxFields, Optional[FieldSource]]:
  """(BoxFields, the x_HII array or None) of one snapshot of a Zarr store, checked chunk
  by chunk as `load_snapshot` checks files: shapes, finite values, no negative density
  or sources, a density not zero everywhere, a box that holds a crop of `radius`.

  Raises:
    keras_cnn.errors.SnapshotError: one line naming the array and the problem.
  """
  import dask
  import dask.array as da

  sources = {field: _zarr_source(store, field, redshift) for field in ("rho", "n_src", "x_hii")}
  for field in ("rho", "n_src"):
    if sources[field] is None:
      raise errors.SnapshotError(
          f"{os.path.join(store, zarr_array_name(field, redshift))}: missing array for field "
          f"'{field}' (a Zarr store holds rho_z{{z:.3f}} and nsrc_z{{z:.3f}} arrays)")
  shape = sources["rho"].shape
  for field, source in sources.items():
    if source is not None and source.shape != shape:
      raise errors.SnapshotError(f"{source.label}: field '{field}' has shape {source.shape}, but "
                                 f"'rho' has shape {shape}; all fields must share one shape")
  if radius is not None and 2 * radius + 1 > min(shape):
    raise errors.SnapshotError(f"{sources['rho'].label}: box shape {shape} is too small for "
                               f"a crop of 2r+1 = {2 * radius + 1} cells")
  stats = {}
  for field in ("rho", "n_src"):
    values = sources[field].as_dask().astype(np.float32)
    stats[field] = (da.isfinite(values).all(), (values < 0).sum(), values.mean(dtype=np.float64))
  (rho_ok, rho_neg, rho_mean), (src_ok, src_neg,
                                src_mean) = dask.compute(stats["rho"], stats["n_src"])
  for field, ok, negative in (("rho", rho_ok, rho_neg), ("n_src", src_ok, src_neg)):
    if not ok:
      raise errors.SnapshotError(f"{sources[field].label}: field '{field}' has non-finite values")
    if negative:
      raise errors.SnapshotError(f"{sources[field].label}: field '{field}' is negative in "
                                 f"{int(negative)} cells; it must be >= 0")
  if not float(rho_mean) > 0.0:
    raise errors.SnapshotError(f"{sources['rho'].label}: field 'rho' is zero everywhere; the "
                               "overdensity is undefined")
  fields = BoxFields(sources["rho"], sources["n_src"], float(rho_mean),
                     float(src_mean) if mean_scaled else None, float(redshift), store)
  return fields, sources["x_hii"]


def mean_of(source: FieldSource) -> float:
  """The volume mean of a field (float64), chunk by chunk."""
  return float(source.as_dask().astype(np.float32).mean(dtype=np.float64).compute())


# --- outputs: complete or absent -------------------------------------------------------


class NpyTarget:
  """A .npy file being written: `target[slices] = values` writes through a memory map
  (picklable, so Dask workers on one file system write their own tiles)."""

  def __init__(self, path: str, shape: Tuple[int, int, int]):
    self.path = path
    self.shape = tuple(shape)

  def __setitem__(self, key, values) -> None:
    out = np.load(self.path, mmap_mode="r+")
    out[key] = values
    out.flush()
    del out


def _claim_failed(path: str):
  return errors.UserError(f"{path} was written by another process while this command ran; "
                          "it is kept: choose another path, or pass --overwrite to replace it")


@contextlib.contextmanager
def npy_output(path: str, shape: Sequence[int], overwrite: bool = False) -> Iterator[NpyTarget]:
  """Yields the target of a float32 .npy file of `shape` at `path`, written under a
  temporary name that takes `path` when the block ends without error (and is removed
  otherwise). Without `overwrite`, a file that appeared at `path` meanwhile is kept and
  `keras_cnn.errors.UserError` raised."""
  folder = os.path.dirname(os.path.abspath(path))
  os.makedirs(folder, exist_ok=True)
  handle, tmp = io_utils.make_temp(folder, prefix=f".{os.path.basename(path)}.")
  os.close(handle)
  try:
    created = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=tuple(shape))
    del created
    yield NpyTarget(tmp, tuple(shape))
    with open(tmp, "rb+") as stream:
      os.fsync(stream.fileno())
    if overwrite:
      os.replace(tmp, path)
    else:
      try:
        io_utils.commit_new(tmp, path)
      except FileExistsError:
        raise _claim_failed(path) from None
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise


@contextlib.contextmanager
def zarr_output(store: str, name: str, shape: Sequence[int], chunks: Sequence[int],
                overwrite: bool = False):
  """Yields a new float32 Zarr array, chunked `chunks`, that becomes the array `name` of
  the store `store` (a folder, created) when the block ends without error.

  The array is written under a hidden temporary name and renamed into place, so a
  reader never sees a half-written map; an existing `name` is replaced only with
  `overwrite` (else `keras_cnn.errors.UserError`)."""
  import zarr

  group = zarr.open_group(store, mode="a")
  tmp_name = f".{name}.{secrets.token_hex(4)}.tmp"
  tmp_path = os.path.join(store, tmp_name)
  final = os.path.join(store, name)
  try:
    array = group.create_array(tmp_name, shape=tuple(shape), chunks=tuple(chunks), dtype="float32",
                               fill_value=np.nan)
    yield array
    if os.path.lexists(final):
      if not overwrite:
        raise _claim_failed(final)
      old = os.path.join(store, f".{name}.{secrets.token_hex(4)}.old")
      os.rename(final, old)
      os.rename(tmp_path, final)
      shutil.rmtree(old)
    else:
      os.rename(tmp_path, final)
  except BaseException:
    if os.path.exists(tmp_path):
      shutil.rmtree(tmp_path)
    raise


# --- schedulers ----------------------------------------------------------------------


@dataclasses.dataclass
class Scheduler:
  """Where tiles are painted: `kind` "none" (this process), "threads", or "distributed"
  (`client`: a `dask.distributed.Client`)."""

  kind: str
  workers: Optional[int] = None
  client: object = None

  def describe(self) -> str:
    if self.kind == "distributed":
      return f"dask.distributed at {self.client.scheduler.address}"
    if self.kind == "threads":
      return f"Dask threads ({self.workers or os.cpu_count()})"
    return "this process"


def check_scheduler(scheduler: str, workers: int) -> None:
  """ValueError for a --scheduler / --workers pair that cannot work."""
  if not scheduler:
    raise ValueError("--scheduler must be none, threads, processes or the address of a "
                     "dask.distributed scheduler (e.g. tcp://10.0.0.5:8786)")
  if workers < 0:
    raise ValueError(f"--workers must be >= 0 (0: one per core), got {workers}")
  if scheduler == "none" and workers > 1:
    raise ValueError(f"--workers={workers} needs --scheduler=threads or processes (with "
                     "--scheduler=none the tiles are painted in this process)")


@contextlib.contextmanager
def open_scheduler(scheduler: str = "none", workers: int = 0) -> Iterator[Scheduler]:
  """Yields the Scheduler that `scheduler` names (see the module docstring); a local
  cluster it starts is shut down at the end. `workers`: 0 for one per core."""
  check_scheduler(scheduler, workers)
  if scheduler == "none":
    yield Scheduler("none")
    return
  if scheduler == "threads":
    yield Scheduler("threads", workers or None)
    return
  from distributed import Client
  from distributed import LocalCluster

  if scheduler == "processes":
    import dask

    count = workers or os.cpu_count() or 1
    # Dask's nanny sets OMP_NUM_THREADS=1 (and MKL's, OpenBLAS's) in the workers it
    # starts; the convolutions of a tile would then be split, and rounded, otherwise
    # than in this process. The workers keep this process's settings instead, so every
    # scheduler paints the same bits.
    environ = {
        name: value
        for name, value in dask.config.get("distributed.nanny.pre-spawn-environ", {}).items()
        if name not in THREAD_VARIABLES
    }
    with dask.config.set({"distributed.nanny.pre-spawn-environ": environ}):
      with LocalCluster(n_workers=count, threads_per_worker=1, processes=True,
                        dashboard_address=None) as cluster, Client(cluster) as client:
        yield Scheduler("distributed", count, client)
    return
  try:
    client = Client(scheduler, timeout=30)
  except (OSError, TimeoutError, ValueError) as error:
    raise errors.UserError(f"--scheduler={scheduler}: no dask.distributed scheduler answers "
                           f"there ({error})") from None
  with client:
    yield Scheduler("distributed", len(client.scheduler_info().get("workers", {})), client)


_LOCAL = threading.local()
# Thread counts of the numerical libraries that Dask's nanny would set to 1.
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def _twin_of(model_path: str, tile: Tuple[int, int, int]) -> dense.DenseTwin:
  """The dense twin of the model file for tiles of shape `tile`, made once per worker
  thread (a twin traces its pass for the first tile shape it sees, so each shape has
  its own)."""
  cache = getattr(_LOCAL, "cache", None)
  if cache is None:
    cache = _LOCAL.cache = {}
  if model_path not in cache:
    cache[model_path] = inference.load_model(model_path)
  if (model_path, tile) not in cache:
    cache[(model_path, tile)] = dense.DenseTwin(cache[model_path])
  return cache[(model_path, tile)]


def _warm(model_path: str, tile: Tuple[int, int, int]) -> None:
  twin = _twin_of(model_path, tile)
  halo = tuple(side + 2 * twin.radius for side in tile)
  inference.paint_tile(twin, np.zeros(halo, np.float32), np.zeros(halo, np.float32),
                       0.0 if twin.conditioning != "none" else None)


def warm_up(scheduler: Scheduler, model_path: str, tile: Tuple[int, int, int]) -> None:
  """Loads the model and traces one pass of `tile` on every worker of a distributed
  scheduler (before timing it)."""
  if scheduler.kind != "distributed":
    return
  client = scheduler.client
  futures = [
      client.submit(_warm, os.path.abspath(model_path), tuple(tile), workers=[address], pure=False,
                    allow_other_workers=False) for address in client.scheduler_info()["workers"]
  ]
  client.gather(futures)


def _tile_starts(owned: Sequence[Tuple[int, int]], shape: Sequence[int],
                 tile: Sequence[int]) -> Tuple[int, ...]:
  """Where the tile that owns the block `owned` starts (`inference.dense_tiles`)."""
  return tuple(min(lo, n - side) for (lo, _), n, side in zip(owned, shape, tile))


def _paint_block(fields: BoxFields, model_path: str, tile: Tuple[int, int, int], radius: int,
                 condition: Optional[float], block_info=None) -> np.ndarray:
  """One Dask block: the tile that owns it, painted from its inputs plus halo."""
  owned = block_info[None]["array-location"]
  starts = _tile_starts(owned, fields.shape, tile)
  indices = [
      np.arange(s - radius, s + side + radius) % n
      for s, side, n in zip(starts, tile, fields.shape)
  ]
  values = inference.paint_tile(_twin_of(model_path, tuple(tile)), *fields.tile(indices), condition)
  return values[tuple(slice(lo - s, hi - s) for (lo, hi), s in zip(owned, starts))]


def tile_chunks(shape: Sequence[int], twin: dense.DenseTwin,
                memory_budget_gb: float = inference.DEFAULT_MEMORY_BUDGET_GB) -> Tuple[int, ...]:
  """The chunks of a Zarr map that `paint` writes: one per tile (`inference.tile_shape`)."""
  return tuple(inference.tile_shape(shape, twin, memory_budget_gb))


def _grid_chunks(shape: Sequence[int], tile: Sequence[int]) -> Tuple[Tuple[int, ...], ...]:
  """Per axis, the sizes of the voxels the tiles own (the last one may be smaller)."""
  return tuple(
      tuple(min(side, n - start) for start in range(0, n, side)) for n, side in zip(shape, tile))


def paint(fields: BoxFields, target, twin: dense.DenseTwin, scheduler: Scheduler,
          model_path: Optional[str] = None,
          memory_budget_gb: float = inference.DEFAULT_MEMORY_BUDGET_GB, progress: bool = True,
          condition: Optional[float] = None) -> Tuple[int, int, int]:
  """Paints the x_HII of the whole box into `target` (an array, `NpyTarget` or Zarr
  array of the box's shape) through the dense engine; returns the tile shape.

  Args:
    fields: the box's inputs.
    target: where the map goes, written one owned block of a tile at a time.
    twin: the dense twin of the model (sets the tiling; paints the tiles with "none").
    scheduler: from `open_scheduler`.
    model_path: the model's .keras file, which Dask workers load (any scheduler but
      "none").
    memory_budget_gb: bound on the memory of one tile's pass (`inference.tile_shape`).
    progress: a progress bar of the tiles on stderr.
    condition: the box's value for a conditioned model.
  """
  from tqdm import tqdm

  tile = inference.tile_shape(fields.shape, twin, memory_budget_gb)
  radius = twin.radius
  if scheduler.kind == "none":
    tiles = inference.dense_tiles(fields.shape, tile, radius)
    with tqdm(total=len(tiles), unit="tile", file=sys.stderr, disable=not progress, desc="x_HII",
              mininterval=1.0) as bar:
      for item in tiles:
        values = inference.paint_tile(twin, *fields.tile(item.indices), condition)
        target[item.owned] = values[item.crop]
        bar.update(1)
    return tile
  if model_path is None:
    raise ValueError("painting on Dask workers needs model_path, the .keras file they load")
  chunks = getattr(target, "chunks", None)
  if chunks is not None and tuple(int(c) for c in chunks) != tuple(tile):
    # Workers write whole chunks without a lock: a chunk shared by two tiles could lose one.
    raise ValueError(f"a Zarr target painted by Dask workers must be chunked like the tiles "
                     f"{tuple(tile)}, got chunks {tuple(chunks)} (see `tile_chunks`)")
  import dask
  import dask.array as da

  # Blocks are the voxels each tile owns, and each task reads its own tile with the
  # periodic halo from the inputs (map_blocks over halo'd tiles). Not map_overlap: its
  # last chunk along an axis would be a smaller tile than the in-process engine's (whose
  # last tile overlaps its neighbour instead), which may round differently, and it would
  # move halos between tasks, where reading them from memory-mapped or Zarr inputs costs
  # one tile.
  shared = dask.delayed(fields, traverse=False, pure=True)
  blocks = da.map_blocks(_paint_block, dtype=np.float32, chunks=_grid_chunks(fields.shape, tile),
                         meta=np.empty((0, 0, 0), np.float32), fields=shared,
                         model_path=os.path.abspath(model_path), tile=tile, radius=radius,
                         condition=condition)
  logging.info("Dask: %d tile(s) of %s voxels (+ halo of %d) on %s.", blocks.npartitions, tile,
               radius, scheduler.describe())
  stored = da.store(blocks, target, lock=False, compute=False)
  if scheduler.kind == "threads":
    from dask.diagnostics import ProgressBar

    with ProgressBar(out=sys.stderr) if progress else contextlib.nullcontext():
      dask.compute(stored, scheduler="threads", num_workers=scheduler.workers)
    return tile
  future = scheduler.client.compute(stored)
  if progress:
    from distributed import progress as show_progress

    with contextlib.redirect_stdout(sys.stderr):  # bars go to stderr, results to stdout
      show_progress(future, notebook=False)
  future.result()
  return tile

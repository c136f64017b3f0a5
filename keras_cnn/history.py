"""Whole reionization histories: every snapshot of a folder (or Zarr store) painted by
one model, one map per snapshot.

`paint_history` writes into a folder the maps `xHII_z{z:.3f}.npy` (the names the
package reads as x_HII; see `keras_cnn.data.formats`), or into a Zarr store (an `--out`
ending in `.zarr`) the arrays `xHII_z{z:.3f}` chunked along the tile grid, and beside
them `index.json`: a list of records {"redshift", "file", "mean_xhii", "seconds"},
rewritten atomically after each snapshot. Each map appears only when complete, so a
rerun of the same command skips the snapshots already painted and goes on.

Inputs are read tile by tile (`keras_cnn.scale`): memory-mapped `.npy` files, or a Zarr
store of `rho_z{z:.3f}` and `nsrc_z{z:.3f}` arrays. A conditioned model gets each
snapshot's own value (its redshift, cosmic time, or mean x_HII from its x_HII field),
or the one value given.
"""

import dataclasses
import json
import logging
import os
import time
import types
from typing import Iterator, List, Optional, Tuple

import numpy as np

from keras_cnn import conditioning
from keras_cnn import dense
from keras_cnn import domain
from keras_cnn import errors
from keras_cnn import inference
from keras_cnn import io_utils
from keras_cnn import model as model_lib
from keras_cnn import scale
from keras_cnn.data import formats
from keras_cnn.data import snapshot as snapshot_lib
from keras_cnn.data import transforms

INDEX_FILE = "index.json"


def map_name(redshift: float, zarr: bool = False) -> str:
  """The name of the map of the snapshot at `redshift`: a file, or a Zarr array."""
  name = f"xHII_z{redshift:.3f}"
  return name if zarr else name + ".npy"


@dataclasses.dataclass(frozen=True)
class PaintOptions:
  """How to paint: the engine and scheduler, and the command's other choices.

  Attributes:
    engine: "auto", "dense" or "per_voxel" (`inference.resolve_engine`); every
      scheduler but "none" needs the dense engine.
    scheduler: "none", "threads", "processes" or a dask.distributed address
      (`keras_cnn.scale.open_scheduler`).
    workers: Dask workers (0: one per core).
    memory_budget_gb: bound on the memory of one tile's pass.
    batch_size: crops per pass of the per-voxel engine.
    progress: progress bars on stderr.
    condition_value: a conditioned model's input for every snapshot instead of each
      snapshot's own.
    strict_domain: refuse, rather than warn about, inputs far from the training inputs.
    overwrite: repaint maps that exist (else they are kept and skipped).
    data_format: the layout of a folder's files (`formats.DATA_FORMATS`).
    box_size_mpc: C2-Ray source masses in solar masses (`load_snapshot`).
  """

  engine: str = "auto"
  scheduler: str = "none"
  workers: int = 0
  memory_budget_gb: float = inference.DEFAULT_MEMORY_BUDGET_GB
  batch_size: int = inference.DEFAULT_BATCH_SIZE
  progress: bool = True
  condition_value: Optional[float] = None
  strict_domain: bool = False
  overwrite: bool = False
  data_format: str = "auto"
  box_size_mpc: Optional[float] = None


def select_redshifts(data_dir: str, wanted: snapshot_lib.RedshiftSelection,
                     data_format: str = "auto") -> List[float]:
  """The redshifts of the snapshots of a folder or Zarr store that `wanted` names (a
  redshift, a sequence, "all", or None for the only one), in its order."""
  if not scale.is_zarr(data_dir):
    return snapshot_lib.select_redshifts(data_dir, wanted, data_format)
  available = scale.zarr_redshifts(data_dir)
  listed = ", ".join(formats.format_redshift(z) for z in available) or "none"
  if not available:
    raise errors.SnapshotError(f"{data_dir}: no density arrays (rho_z{{z:.3f}}) in this Zarr "
                               "store")
  if isinstance(wanted, str) and wanted == snapshot_lib.ALL_REDSHIFTS:
    return available
  if wanted is None:
    if len(available) > 1:
      raise errors.SnapshotError(f"{data_dir}: several redshifts ({listed}); pick one with "
                                 "--redshift (or several: a comma list, or all)")
    return available
  values = [wanted] if isinstance(wanted, (int, float)) else list(wanted)
  found = []
  for value in values:
    nearest = min(available, key=lambda z: abs(z - float(value)))
    if abs(nearest - float(value)) > formats.REDSHIFT_TOLERANCE:
      raise errors.SnapshotError(f"{data_dir}: no snapshot at --redshift="
                                 f"{formats.format_redshift(float(value))}; available: {listed}")
    if nearest not in found:
      found.append(nearest)
  return found


def check_out(out: str, redshifts: List[float], overwrite: bool,
              data_dir: Optional[str] = None) -> None:
  """Refuses an --out for `paint_history` that would replace the user's files: a file,
  the input store, a folder (or store) that holds other files and no index of an
  earlier history, or a map name that the folder's own density and sources would read
  as their x_HII."""
  zarr = scale.is_zarr(out)
  if data_dir and os.path.realpath(out) == os.path.realpath(data_dir) and zarr:
    raise errors.UserError(f"--out={out} is the input store --data_dir; its maps would be read "
                           "as the snapshots' x_HII: choose another store")
  if os.path.lexists(out) and not os.path.isdir(out):
    raise errors.UserError(f"--out={out} is a file; several snapshots are painted into a "
                           "folder (or a .zarr store): choose a new folder")
  if not zarr:
    for redshift in redshifts:
      targeted = formats.snapshot_targeted_by(os.path.join(out, map_name(redshift)))
      if targeted is not None:
        raise errors.UserError(
            f"--out={out} holds the density and sources of z={formats.format_redshift(redshift)}, "
            f"so {map_name(redshift)} written there would be read as that snapshot's x_HII "
            "target; choose another folder")
  if os.path.isdir(out) and os.listdir(out) and not overwrite:
    ours = {INDEX_FILE, "zarr.json"} if zarr else {INDEX_FILE}
    if not ours & set(os.listdir(out)):
      raise errors.UserError(f"--out={out} is a folder that already holds other files; choose "
                             "a new folder, or pass --overwrite to write the maps into it")


def read_index(out: str) -> List[dict]:
  """The records of `out`/index.json ([] when it is absent)."""
  path = os.path.join(out, INDEX_FILE)
  if not os.path.isfile(path):
    return []
  with open(path) as stream:
    try:
      records = json.load(stream)
    except json.JSONDecodeError as error:
      raise errors.UserError(f"{path} is not a readable index ({error}); move it away to "
                             "repaint the history") from None
  return records if isinstance(records, list) else []


def _write_index(out: str, records: List[dict]) -> None:
  records = sorted(records, key=lambda r: -r["redshift"])
  io_utils.write_text(os.path.join(out, INDEX_FILE), json.dumps(records, indent=1) + "\n")


@dataclasses.dataclass
class _Box:
  """One snapshot ready to paint: its lazy inputs, or the whole snapshot in memory."""

  fields: Optional[scale.BoxFields]
  snapshot: Optional[snapshot_lib.Snapshot]
  condition: Optional[float]
  shape: Tuple[int, int, int]


def _open_box(model, data_dir: str, redshift: float, engine: str, options: PaintOptions,
              model_name: str) -> _Box:
  radius = inference.model_radius(model)
  kind = conditioning.of_model(model)
  mean_scaled = model_lib.source_transform_of(model) in transforms.MEAN_SCALED
  if scale.is_zarr(data_dir):
    fields, x_hii = scale.zarr_fields(data_dir, redshift, mean_scaled, radius=radius)
    logging.info(
        "%s: inputs from a Zarr store are not compared with the model's training "
        "inputs.", data_dir)
    given = options.condition_value
    if kind == "mean_xhii" and given is None and x_hii is not None:
      given = scale.mean_of(x_hii)
    condition = conditioning.value(
        kind, types.SimpleNamespace(redshift=redshift, x_hii=None, name=data_dir), given)
    if engine == "dense":
      return _Box(fields, None, condition, fields.shape)
    whole = lambda source: np.asarray(source.read([np.arange(n) for n in source.shape]))
    snapshot = snapshot_lib.Snapshot(rho=whole(fields.rho), n_src=whole(fields.n_src), x_hii=None,
                                     redshift=redshift, name=data_dir)
    snapshot = snapshot_lib.for_model(snapshot, model_lib.source_transform_of(model))
    return _Box(None, snapshot, condition, fields.shape)
  raw = snapshot_lib.load_snapshot(data_dir, redshift=redshift, require_target=False, radius=radius,
                                   data_format=options.data_format,
                                   box_size_mpc=options.box_size_mpc)
  condition = conditioning.value(kind, raw, options.condition_value)
  snapshot = snapshot_lib.for_model(raw, model_lib.source_transform_of(model))
  domain.check_inputs(model, [snapshot], strict=options.strict_domain, model_name=model_name)
  if engine == "dense":  # the raw fields: the tiles take the box means themselves
    return _Box(scale.fields_of_snapshot(raw, mean_scaled), None, condition, raw.shape)
  return _Box(None, snapshot, condition, snapshot.shape)


def _twin(model, twins: dict, shape) -> dense.DenseTwin:
  """One dense twin per box shape: a twin traces its pass for the first tile shape."""
  if tuple(shape) not in twins:
    twins[tuple(shape)] = dense.DenseTwin(model)
  return twins[tuple(shape)]


def _paint_box(box: _Box, target, model, twins: dict, model_path: str, scheduler: scale.Scheduler,
               engine: str, options: PaintOptions) -> None:
  if engine == "dense":
    scale.paint(box.fields, target, _twin(model, twins, box.shape), scheduler,
                model_path=model_path, memory_budget_gb=options.memory_budget_gb,
                progress=options.progress, condition=box.condition)
    return
  target[...] = inference.predict_map(model, box.snapshot.n_igm, box.snapshot.n_src,
                                      engine="per_voxel", batch_size=options.batch_size,
                                      progress=options.progress, condition=box.condition)


def _map_mean(path: str, zarr_array: Optional[str] = None) -> float:
  if zarr_array is None:
    return float(np.load(path, mmap_mode="r").mean(dtype=np.float64))
  return scale.mean_of(scale.FieldSource(path, (0, 0, 0), path=path, array_name=zarr_array))


def _resolve(model, options: PaintOptions) -> str:
  engine = inference.resolve_engine(model, options.engine)
  if engine != "dense" and options.scheduler != "none":
    raise errors.UserError(f"--scheduler={options.scheduler} paints tiles of the dense engine, "
                           f"which needs a model trained with --padding=valid (this one: "
                           f"{dense.model_padding(model)!r}); use --scheduler=none")
  return engine


def _chunks(model, twins: dict, shape, engine: str, options: PaintOptions):
  if engine != "dense":
    return tuple(min(n, 64) for n in shape)
  return scale.tile_chunks(shape, _twin(model, twins, shape), options.memory_budget_gb)


def paint_history(model, model_path: str, data_dir: str, redshifts: List[float], out: str,
                  options: PaintOptions = PaintOptions()) -> Iterator[Tuple[dict, bool]]:
  """Paints the snapshots at `redshifts` of `data_dir` into `out` (see the module
  docstring); yields (the snapshot's index record, whether it was painted now) per
  snapshot, in order, after its map and the index are written.

  Args:
    model: the loaded model (from `inference.load_model`).
    model_path: its .keras file (Dask workers load it).
    data_dir: a folder of snapshot files, or a Zarr store (`keras_cnn.scale`).
    redshifts: from `select_redshifts`.
    out: a folder, or a Zarr store (a path ending in .zarr).
    options: engine, scheduler and the rest.

  Raises:
    keras_cnn.errors.UserError: bad inputs or output, one line.
  """
  check_out(out, redshifts, options.overwrite, data_dir)
  engine = _resolve(model, options)
  zarr = scale.is_zarr(out)
  twins = {}
  os.makedirs(out, exist_ok=True)
  records = {round(r["redshift"], 3): r for r in read_index(out)}
  with scale.open_scheduler(options.scheduler, options.workers) as scheduler:
    for number, redshift in enumerate(redshifts, 1):
      name = map_name(redshift, zarr)
      path = os.path.join(out, name)
      key = round(redshift, 3)
      if os.path.exists(path) and not options.overwrite:
        if key not in records:  # painted, but stopped before the index was written
          records[key] = dict(redshift=redshift, file=name,
                              mean_xhii=_map_mean(out, name) if zarr else _map_mean(path),
                              seconds=None)
          _write_index(out, list(records.values()))
        logging.info("[%d/%d] z=%s: %s exists, kept.", number, len(redshifts),
                     formats.format_redshift(redshift), path)
        yield records[key], False
        continue
      logging.info("[%d/%d] z=%s: painting %s.", number, len(redshifts),
                   formats.format_redshift(redshift), path)
      start = time.perf_counter()
      box = _open_box(model, data_dir, redshift, engine, options, model_path)
      if zarr:
        chunks = _chunks(model, twins, box.shape, engine, options)
        output = scale.zarr_output(out, name, box.shape, chunks, overwrite=options.overwrite)
      else:
        output = scale.npy_output(path, box.shape, overwrite=options.overwrite)
      with output as target:
        _paint_box(box, target, model, twins, model_path, scheduler, engine, options)
      mean = _map_mean(out, name) if zarr else _map_mean(path)
      records[key] = dict(redshift=redshift, file=name, mean_xhii=mean,
                          seconds=round(time.perf_counter() - start, 3))
      _write_index(out, list(records.values()))
      yield records[key], True


def paint_one(model, model_path: str, data_dir: str, redshift: Optional[float], out: str,
              options: PaintOptions = PaintOptions()) -> dict:
  """Paints one snapshot into the .npy file `out` through `keras_cnn.scale` (lazy inputs,
  any scheduler); returns its record (as in index.json)."""
  engine = _resolve(model, options)
  redshift = select_redshifts(data_dir, redshift, options.data_format)[0]
  start = time.perf_counter()
  with scale.open_scheduler(options.scheduler, options.workers) as scheduler:
    box = _open_box(model, data_dir, redshift, engine, options, model_path)
    with scale.npy_output(out, box.shape, overwrite=options.overwrite) as target:
      _paint_box(box, target, model, {}, model_path, scheduler, engine, options)
  return dict(redshift=redshift, file=out, mean_xhii=_map_mean(out),
              seconds=round(time.perf_counter() - start, 3))

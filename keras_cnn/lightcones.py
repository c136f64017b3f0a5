"""Lightcones of a painted reionization history, built with tools21cm.

A painted history is a folder of x_HII maps `xHII_z{z:.3f}.npy`, one per redshift (what
`predict` writes for several redshifts; an `index.json` beside them is not needed). With
the density fields of the same snapshots (a snapshot folder, `keras_cnn.data.snapshot`),
`read_history` checks every map against its box and measures the global history, the
mean x_HII at each redshift of the maps and of the simulation's targets where the
folder holds them; `build_lightcones` stacks the coeval boxes into the x_HII and 21-cm
brightness-temperature lightcones with `tools21cm.make_lightcone` (extra `astro`):

- the line of sight runs along one axis of the boxes; slice i of the lightcone lies at
  comoving distance i cells beyond that of the lowest redshift, so the redshift grows
  along it, and takes slice i mod N of the two boxes whose redshifts bracket its own,
  interpolated in redshift (tools21cm's "linear", "step", "sigmoid" or "step_cell");
- dT_b of each box is `keras_cnn.metrics.brightness_temperature` of its map and
  overdensity, then interpolated like x_HII.

tools21cm stacks cubic boxes only. `save_lightcones` writes the arrays to one .npz file
and `plot_lightcones` draws the figures; each file appears only when complete.
"""

import contextlib
import dataclasses
import functools
import os
import sys
import warnings
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from keras_cnn import conventions
from keras_cnn import io_utils
from keras_cnn import metrics
from keras_cnn import plots
from keras_cnn.data import formats
from keras_cnn.data import snapshot as snapshot_lib
from keras_cnn.errors import UserError

LIGHTCONE_FILE = "lightcone.npz"
LIGHTCONE_PNG = "lightcone.png"
GLOBAL_HISTORY_PNG = "global_history.png"
# Interpolations between two coeval boxes that tools21cm.make_lightcone offers.
INTERPOLATIONS = ("linear", "step", "sigmoid", "step_cell")
MAP_NAME = "xHII_z{z:.3f}.npy"


@dataclasses.dataclass
class PaintedHistory:
  """The checked maps of a history and the snapshots they paint, by increasing redshift.

  Attributes:
    redshifts: the maps' redshifts, increasing.
    map_paths: the x_HII map of each redshift.
    density_files: the density file of each redshift in the snapshot folder.
    shape: the boxes' shape (one for all).
    mean_xhii: volume-averaged x_HII of each map.
    mean_xhii_true: that of the snapshot's own x_HII target; NaN where it has none.
  """

  redshifts: np.ndarray
  map_paths: List[str]
  density_files: List[formats.FieldFile]
  shape: Tuple[int, ...]
  mean_xhii: np.ndarray
  mean_xhii_true: np.ndarray


def find_maps(maps_dir: str) -> List[Tuple[float, str]]:
  """(redshift, path) of the x_HII maps of `maps_dir`, by increasing redshift.

  Raises:
    UserError: no such folder, no map in it, or maps at fewer than two redshifts.
  """
  if not os.path.isdir(maps_dir):
    raise UserError(f"--maps={maps_dir}: no such folder (expected a folder of x_HII maps "
                    f"{MAP_NAME})")
  found = [(s.redshift, s.files["x_hii"].path)
           for s in formats.scan(maps_dir, "npy")
           if "x_hii" in s.files]
  if not found:
    names = sorted(os.listdir(maps_dir))
    shown = ", ".join(names[:8]) + (f" and {len(names) - 8} more" if len(names) > 8 else "")
    raise UserError(f"--maps={maps_dir}: no x_HII maps {MAP_NAME} in the folder; found: "
                    f"{shown or 'no files'}")
  if len(found) < 2:
    raise UserError(f"--maps={maps_dir}: a lightcone needs maps at 2 or more redshifts, found "
                    f"one ({os.path.basename(found[0][1])})")
  return found


def _match(data_dir: str, snapshots: Sequence[formats.SnapshotFiles], redshift: float,
           map_path: str) -> formats.SnapshotFiles:
  """The snapshot of `data_dir` at `redshift`, with a density file."""
  near = [s for s in snapshots if abs(s.redshift - redshift) <= formats.REDSHIFT_TOLERANCE]
  if not near or "rho" not in near[0].files:
    listed = ", ".join(formats.format_redshift(s.redshift) for s in snapshots if "rho" in s.files)
    raise UserError(f"{map_path}: --data_dir={data_dir} has no density at "
                    f"z={formats.format_redshift(redshift)} (densities at: {listed or 'none'})")
  return near[0]


def read_history(maps_dir: str, data_dir: str, data_format: str = "auto",
                 box_size_mpc: Optional[float] = None) -> PaintedHistory:
  """Checks the maps of `maps_dir` against the snapshots of `data_dir`, before any work.

  Every map must be a 3-D box of the shape of its snapshot's density, finite and within
  [0, 1] (up to float round-off); every snapshot must pass `load_snapshot`'s checks; all
  boxes must share one cubic shape. Each snapshot is read once here.

  Args:
    maps_dir: folder of x_HII maps `xHII_z{z:.3f}.npy`, at least two redshifts.
    data_dir: the snapshot folder the maps were painted from (matched by redshift).
    data_format: the layout of `data_dir` (`keras_cnn.data.formats.DATA_FORMATS`).
    box_size_mpc: CubeP3M box side in cMpc/h, for C2-Ray source lists.

  Raises:
    UserError: one line naming the file (or flag) and the problem.
  """
  maps = find_maps(maps_dir)
  snapshots = formats.scan(data_dir, data_format)
  redshifts, map_paths, density_files, means, means_true = [], [], [], [], []
  shape = None
  for redshift, map_path in maps:
    chosen = _match(data_dir, snapshots, redshift, map_path)
    box = snapshot_lib.load_snapshot(data_dir, chosen.redshift, require_target=False,
                                     data_format=data_format, box_size_mpc=box_size_mpc)
    painted = formats.read_npy(map_path, "x_hii")
    if painted.shape != box.shape:
      raise UserError(f"{map_path}: the map has shape {painted.shape} but the density of "
                      f"z={formats.format_redshift(box.redshift)} in --data_dir={data_dir} has "
                      f"shape {box.shape}; a map paints the box of its redshift")
    if shape is None:
      shape = box.shape
      if len(set(shape)) != 1:
        raise UserError(f"{map_path}: boxes of shape {shape}; tools21cm builds lightcones of "
                        "cubic boxes only")
    elif box.shape != shape:
      raise UserError(f"{map_path}: the box has shape {box.shape} but that of "
                      f"{os.path.basename(map_paths[0])} has shape {shape}; a lightcone "
                      "stacks boxes of one shape")
    paths = dict(box.paths or {}, x_hii=map_path)
    checked = dataclasses.replace(box, x_hii=painted, paths=paths)
    snapshot_lib.validate_snapshot(checked)
    redshifts.append(float(redshift))
    map_paths.append(map_path)
    density_files.append(chosen.files["rho"])
    means.append(float(np.clip(painted, 0.0, 1.0).mean(dtype=np.float64)))
    means_true.append(np.nan if box.x_hii is None else float(box.x_hii.mean(dtype=np.float64)))
  return PaintedHistory(redshifts=np.asarray(redshifts), map_paths=map_paths,
                        density_files=density_files, shape=tuple(shape),
                        mean_xhii=np.asarray(means), mean_xhii_true=np.asarray(means_true))


def check_z_range(z_range: Optional[Sequence[float]],
                  redshifts: Sequence[float]) -> Optional[Tuple[float, float]]:
  """`z_range` as (low, high) within the maps' `redshifts`; None keeps all of them.

  Raises:
    UserError: not two increasing values within the maps' redshift range.
  """
  if z_range is None:
    return None
  lowest, highest = float(min(redshifts)), float(max(redshifts))
  values = tuple(float(v) for v in z_range)
  if len(values) != 2 or not values[0] < values[1]:
    raise UserError(f"--z_range needs two increasing redshifts, low,high; got "
                    f"{','.join(map(str, values))}")
  if values[0] < lowest - formats.REDSHIFT_TOLERANCE or values[1] > highest + \
      formats.REDSHIFT_TOLERANCE:
    raise UserError(f"--z_range={values[0]:g},{values[1]:g} reaches beyond the maps, which span "
                    f"z = {formats.format_redshift(lowest)} to {formats.format_redshift(highest)}")
  return max(values[0], lowest), min(values[1], highest)


@contextlib.contextmanager
def _quiet_tools21cm():
  """tools21cm prints progress on stdout (which may carry a result line) and warns about
  its own renamed arguments."""
  with contextlib.redirect_stdout(sys.stderr), warnings.catch_warnings():
    warnings.simplefilter("ignore", FutureWarning)
    yield


def build_lightcones(history: PaintedHistory, axis: int = 0,
                     cell_size_mpc: float = conventions.CELL_SIZE_MPC,
                     z_range: Optional[Sequence[float]] = None,
                     interpolation: str = "linear") -> Dict[str, np.ndarray]:
  """The x_HII and dT_b lightcones of a history along `axis`.

  Args:
    history: from `read_history`.
    axis: the axis of the boxes along the line of sight (0, 1 or 2).
    cell_size_mpc: comoving cell side in cMpc: the spacing of the lightcone's slices.
    z_range: (low, high) redshifts of the lightcone; None spans all the maps.
    interpolation: one of `INTERPOLATIONS`.

  Returns:
    {"xhii": (N, N, L) float32 in [0, 1], "dtb": (N, N, L) float32 in mK (the last axis
    along the line of sight, the first two the box's other axes in order),
    "redshift": (L,) increasing, "comoving_distance_mpc": (L,), the distance from the
    observer of each slice}, plus the global history: "map_redshift", "mean_xhii",
    "mean_xhii_true" (NaN without target) and "lightcone_mean_xhii" (L,), the mean of
    each x_HII slice.
  """
  import tools21cm as t2c  # optional extra "astro"

  if axis not in (0, 1, 2):
    raise UserError(f"--axis must be 0, 1 or 2, got {axis}")
  if interpolation not in INTERPOLATIONS:
    raise UserError(f"--interpolation must be one of {', '.join(INTERPOLATIONS)}, got "
                    f"{interpolation!r}")
  if not cell_size_mpc > 0:
    raise UserError(f"--cell_size_mpc must be > 0, got {cell_size_mpc}")
  z_low, z_high = check_z_range(z_range, history.redshifts) or (None, None)

  @functools.lru_cache(maxsize=3)
  def read_xhii(index: int) -> np.ndarray:
    painted = formats.read_npy(history.map_paths[index], "x_hii")
    return np.clip(painted, 0.0, 1.0).astype(np.float32)

  @functools.lru_cache(maxsize=3)
  def read_dtb(index: int) -> np.ndarray:
    rho = formats.read_field(history.density_files[index])
    delta = snapshot_lib.overdensity(rho)
    with _quiet_tools21cm():
      dtb = metrics.brightness_temperature(read_xhii(index), delta, float(history.redshifts[index]))
    return dtb.astype(np.float32)

  keys = list(range(len(history.redshifts)))
  box_length = float(history.shape[axis]) * float(cell_size_mpc)
  cones = {}
  for name, reader in (("xhii", read_xhii), ("dtb", read_dtb)):
    with _quiet_tools21cm():
      cone, redshift = t2c.make_lightcone(keys, z_low=z_low, z_high=z_high,
                                          file_redshifts=history.redshifts, los_axis=axis,
                                          interpolation=interpolation, reading_function=reader,
                                          box_length_mpc=box_length)
    cones[name] = np.asarray(cone, np.float32)
  redshift = np.asarray(redshift, np.float64)
  with _quiet_tools21cm():
    distance = np.atleast_1d(np.asarray(t2c.cosmo.z_to_cdist(redshift), np.float64))
  cones["xhii"] = np.clip(cones["xhii"], 0.0, 1.0)
  return {
      "xhii": cones["xhii"],
      "dtb": cones["dtb"],
      "redshift": redshift,
      "comoving_distance_mpc": distance,
      "map_redshift": history.redshifts,
      "mean_xhii": history.mean_xhii,
      "mean_xhii_true": history.mean_xhii_true,
      "lightcone_mean_xhii": cones["xhii"].mean(axis=(0, 1), dtype=np.float64),
  }


def save_lightcones(cones: Dict[str, np.ndarray], path: str, axis: int,
                    cell_size_mpc: float) -> str:
  """Writes `cones` (from `build_lightcones`), the line-of-sight axis and the cell size to
  the .npz file `path`, atomically; returns the path."""
  with io_utils.atomic_open(path, "wb") as stream:
    np.savez(stream, los_axis=np.int64(axis), cell_size_mpc=np.float64(cell_size_mpc), **cones)
  return path


def plot_lightcones(cones: Dict[str, np.ndarray], out_dir: str, cell_size_mpc: float) -> List[str]:
  """Writes LIGHTCONE_PNG (a slice of both lightcones) and GLOBAL_HISTORY_PNG to `out_dir`."""
  return [
      plots.plot_lightcone(cones["xhii"], cones["dtb"],
                           cones["redshift"], cones["comoving_distance_mpc"],
                           os.path.join(out_dir, LIGHTCONE_PNG), cell_size_mpc=cell_size_mpc),
      plots.plot_global_history(cones["map_redshift"], cones["mean_xhii"], cones["mean_xhii_true"],
                                os.path.join(out_dir, GLOBAL_HISTORY_PNG),
                                lightcone=(cones["redshift"], cones["lightcone_mean_xhii"])),
  ]

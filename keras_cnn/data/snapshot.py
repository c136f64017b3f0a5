"""One snapshot of a reionization box: density, sources and ionized fraction, and its files.

The caller-side preprocessing is defined here once: `overdensity(rho)`.
Everything else (source transform, standardization) happens inside the model.

On disk a snapshot is a folder holding the original project's files,
`rho_z{z:.3f}.npy`, `nsrc_z{z:.3f}.npy` and `xHII_z{z:.3f}.npy`, or the files of
C2-Ray, pyC2Ray or 21cmFAST (`keras_cnn.data.formats`); several redshifts may share a
folder. `load_snapshot` checks them before any training starts and raises
`SnapshotError` with a one-line message naming the file, the field and the problem.
"""

import dataclasses
import functools
import os
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
from absl import logging

from keras_cnn import io_utils
from keras_cnn.data import formats
from keras_cnn.data import transforms
from keras_cnn.errors import SnapshotError

# Field name -> file prefix (the original C2-Ray naming).
FILE_PREFIXES = {"rho": "rho", "n_src": "nsrc", "x_hii": "xHII"}

# Which snapshots of a folder: None (its only one), one redshift, several, or "all".
RedshiftSelection = Union[None, float, str, Tuple[float, ...]]
ALL_REDSHIFTS = "all"

# x_HII this far outside [0, 1] is float round-off of the simulation code: clipped, not refused.
X_HII_ROUND_OFF = 1e-6


@dataclasses.dataclass
class Snapshot:
  """Fields of one periodic box, float32, all of the same 3-D shape.

  Attributes:
    rho: gas density in any positive unit (g/cm^3 in C2-Ray files).
    n_src: ionizing sources per cell (non-negative, mostly zeros).
    x_hii: ionized fraction in [0, 1]; None when only predicting.
    redshift: snapshot redshift.
    name: where it came from (a path, or "synthetic(seed=...)"), used in messages.
    paths: {field: the file it was read from}, when read from files.
  """

  rho: np.ndarray
  n_src: np.ndarray
  x_hii: Optional[np.ndarray]
  redshift: float
  name: str = ""
  paths: Optional[Dict[str, str]] = None

  @property
  def shape(self):
    return self.rho.shape

  @functools.cached_property
  def n_igm(self) -> np.ndarray:
    """The model's left input: the IGM overdensity (computed once per snapshot)."""
    return overdensity(self.rho)


def overdensity(rho: np.ndarray) -> np.ndarray:
  """rho / mean(rho) - 1, the only transform a caller applies before the model."""
  rho = np.asarray(rho, dtype=np.float32)
  mean = float(rho.mean(dtype=np.float64))
  return (rho / np.float32(mean) - np.float32(1.0)).astype(np.float32, copy=False)


def scale_sources(n_src: np.ndarray) -> np.ndarray:
  """n_src / mean(n_src) over the whole box: the source input of a model trained with
  --source_transform=mean_scaled (a box without sources stays all zeros)."""
  n_src = np.asarray(n_src, dtype=np.float32)
  mean = float(n_src.mean(dtype=np.float64))
  if not mean > 0.0:
    return np.zeros_like(n_src)
  return (n_src / np.float32(mean)).astype(np.float32, copy=False)


def for_model(snapshot: Snapshot, source_transform: str) -> Snapshot:
  """`snapshot` as a model with `source_transform` takes it: its sources over their box
  mean for the mean-scaled kinds (a new Snapshot sharing the other fields), else itself."""
  if source_transform not in transforms.MEAN_SCALED:
    return snapshot
  scaled = dataclasses.replace(snapshot, n_src=scale_sources(snapshot.n_src))
  if "n_igm" in snapshot.__dict__:  # the overdensity is computed once per box
    scaled.__dict__["n_igm"] = snapshot.__dict__["n_igm"]
  return scaled


def snapshot_filename(field: str, redshift: float) -> str:
  """The original file name of `field` ("rho", "n_src" or "x_hii") at `redshift`."""
  return f"{FILE_PREFIXES[field]}_z{redshift:.3f}.npy"


def _field_label(snapshot: Snapshot, field: str) -> str:
  """The file a field came from when the snapshot is a folder, else the snapshot name."""
  if snapshot.paths and field in snapshot.paths:
    return snapshot.paths[field]
  if snapshot.name and os.path.isdir(snapshot.name):
    return os.path.join(snapshot.name, snapshot_filename(field, snapshot.redshift))
  return snapshot.name or "<in-memory snapshot>"


def _listing(data_dir: str, limit: int = 12) -> str:
  """The names in `data_dir`, for messages: at most `limit`, then how many more."""
  names = sorted(os.listdir(data_dir))
  shown = ", ".join(names[:limit]) or "no files"
  return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def list_redshifts(data_dir: str, data_format: str = "auto") -> List[float]:
  """Sorted redshifts that have at least one field file in `data_dir`.

  Files are matched across fields by value, within `formats.REDSHIFT_TOLERANCE`.
  """
  return [snap.redshift for snap in formats.scan(data_dir, data_format)]


def parse_redshifts(text: str, allow_all: bool = True) -> RedshiftSelection:
  """A --redshift value: "all", one redshift (a float) or a comma list (a tuple).

  Raises:
    ValueError: not numbers, or a redshift that is negative or not finite.
  """
  text = str(text).strip()
  if allow_all and text.lower() == ALL_REDSHIFTS:
    return ALL_REDSHIFTS
  parts = [part.strip() for part in text.split(",")]
  if not text or not all(parts):
    raise ValueError(f"expected a comma list of redshifts{' or all' if allow_all else ''}, "
                     f"got {text!r}")
  try:
    values = tuple(float(part) for part in parts)
  except ValueError:
    raise ValueError(f"expected a comma list of redshifts{' or all' if allow_all else ''}, "
                     f"got {text!r}") from None
  bad = [v for v in values if not (v >= 0.0 and v != float("inf"))]
  if bad:
    raise ValueError(f"redshifts must be finite and >= 0, got {bad[0]}")
  return values[0] if len(values) == 1 else values


def select_redshifts(data_dir: str, wanted: RedshiftSelection, data_format: str = "auto",
                     flag: str = "--redshift") -> List[float]:
  """The redshifts of the snapshots of `data_dir` that `wanted` names, in its order.

  Args:
    data_dir: the folder.
    wanted: None (the folder's only snapshot), a redshift, a sequence of them, or "all".
      Values are matched within `formats.REDSHIFT_TOLERANCE`; one snapshot named twice
      is returned once.
    data_format: one of `formats.DATA_FORMATS`.
    flag: the flag that `wanted` came from, for messages.

  Raises:
    SnapshotError: no snapshot files, several where one was expected, or a redshift
      without a snapshot.
  """
  snapshots = formats.scan(data_dir, data_format)
  if isinstance(wanted, str) and wanted == ALL_REDSHIFTS:
    if not snapshots:
      _pick_snapshot(data_dir, snapshots, None, data_format)  # raises: no files
    return [snap.redshift for snap in snapshots]
  if wanted is None or isinstance(wanted, (int, float)):
    values = [wanted]
  else:
    values = list(wanted)
  found = []
  for value in values:
    redshift = _pick_snapshot(data_dir, snapshots, value, data_format, flag).redshift
    if redshift not in found:
      found.append(redshift)
  return found


def _pick_snapshot(data_dir: str, snapshots: Sequence["formats.SnapshotFiles"],
                   redshift: Optional[float], data_format: str,
                   flag: str = "--redshift") -> "formats.SnapshotFiles":
  listed = ", ".join(formats.format_redshift(s.redshift) for s in snapshots)
  if not snapshots:
    others = "" if data_format == "auto" else f" (--data_format={data_format})"
    raise SnapshotError(f"{data_dir}: no snapshot files{others}; expected rho_z{{z:.3f}}.npy, "
                        "nsrc_z{z:.3f}.npy, xHII_z{z:.3f}.npy or C2-Ray, pyC2Ray or 21cmFAST files "
                        f"(see --data_format); found: {_listing(data_dir)}")
  if redshift is None:
    if len(snapshots) > 1:
      raise SnapshotError(
          f"{data_dir}: several redshifts ({listed}); pick one with --redshift (or several: "
          "a comma list, or all)")
    return snapshots[0]
  nearest = min(snapshots, key=lambda s: abs(s.redshift - float(redshift)))
  if abs(nearest.redshift - float(redshift)) > formats.REDSHIFT_TOLERANCE:
    raise SnapshotError(
        f"{data_dir}: no snapshot at {flag}={formats.format_redshift(float(redshift))}; "
        f"available: {listed}")
  return nearest


def _missing_field(data_dir: str, snapshots: Sequence["formats.SnapshotFiles"],
                   chosen: "formats.SnapshotFiles", field: str) -> "SnapshotError":
  """The error for a field without a file at the chosen redshift."""
  found = [chosen.files[f] for f in formats.FIELDS if f in chosen.files]
  layout = found[0].data_format if found else "npy"
  expected = formats.expected_names(layout, chosen.redshift)
  path = os.path.join(data_dir, expected[field]) if layout != "21cmfast" else data_dir
  elsewhere = [s.files[field] for s in snapshots if field in s.files]
  hint = ""
  if elsewhere:
    near = min(elsewhere, key=lambda f: abs(f.redshift - chosen.redshift))
    hint = (f" (the nearest file of '{field}' is {os.path.basename(near.label)} at "
            f"z={formats.format_redshift(near.redshift)})")
  names = ", ".join(os.path.basename(f.label) for f in found) or "no files"
  return SnapshotError(f"{path}: missing file for field '{field}'; expected "
                       f"{', '.join(expected[f] for f in formats.FIELDS)}; found: {names}{hint}")


# Folder listings already logged by `load_snapshot` in this process.
_LOGGED_LISTINGS = set()


def load_snapshot(data_dir: str, redshift: Optional[float] = None, require_target: bool = True,
                  radius: Optional[int] = None, data_format: str = "auto",
                  box_size_mpc: Optional[float] = None) -> Snapshot:
  """Reads and checks one snapshot of a folder.

  Args:
    data_dir: folder with rho_z{z:.3f}.npy, nsrc_z{z:.3f}.npy and xHII_z{z:.3f}.npy, or
      with C2-Ray, pyC2Ray or 21cmFAST files (see `keras_cnn.data.formats`).
    redshift: which snapshot, when the folder holds several (matched by value, within
      `formats.REDSHIFT_TOLERANCE`).
    require_target: False when only predicting (the x_HII file may be absent).
    radius: the model's crop radius; checks 2r+1 <= N on every axis.
    data_format: one of `formats.DATA_FORMATS`; "auto" detects the layout field by field.
    box_size_mpc: CubeP3M box side in cMpc/h: C2-Ray source-list masses in solar masses
      rather than grid units.

  Returns:
    A validated Snapshot; its name is `data_dir`, its redshift that of the files.

  Raises:
    SnapshotError: one line naming the file, the field and the problem.
  """
  snapshots = formats.scan(data_dir, data_format)
  listing = (os.path.abspath(data_dir), data_format, tuple(s.describe() for s in snapshots))
  if listing not in _LOGGED_LISTINGS:  # once per folder, not once per snapshot read from it
    _LOGGED_LISTINGS.add(listing)
    for line in listing[2]:
      logging.info("%s: %s", data_dir, line)
  chosen = _pick_snapshot(data_dir, snapshots, redshift, data_format)
  fields = ("rho", "n_src", "x_hii") if require_target else ("rho", "n_src")
  for field in fields:
    if field not in chosen.files:
      raise _missing_field(data_dir, snapshots, chosen, field)
  arrays = {}
  # Source lists are gridded on the mesh of the density, so the density comes first.
  for field in ("rho", "x_hii", "n_src"):
    if field in chosen.files:
      item = chosen.files[field]
      mesh = arrays["rho"].shape if field == "n_src" else None
      arrays[field] = formats.read_field(item, mesh=mesh, box_size_mpc=box_size_mpc)
  snapshot = Snapshot(rho=arrays["rho"], n_src=arrays["n_src"], x_hii=arrays.get("x_hii"),
                      redshift=chosen.redshift, name=data_dir, paths={
                          field: item.label for field, item in chosen.files.items()
                      })
  validate_snapshot(snapshot, radius=radius, require_target=require_target)
  return clip_round_off(snapshot)


def clip_round_off(snapshot: Snapshot) -> Snapshot:
  """The snapshot with x_HII values within X_HII_ROUND_OFF of [0, 1] clipped into it (the
  count is logged); the same object when there are none."""
  x_hii = snapshot.x_hii
  if x_hii is None:
    return snapshot
  outside = int(((x_hii < 0) | (x_hii > 1)).sum())
  if not outside:
    return snapshot
  logging.info("%s: clipped %d x_HII values within %g of [0, 1] (float round-off) into it",
               _field_label(snapshot, "x_hii"), outside, X_HII_ROUND_OFF)
  return dataclasses.replace(snapshot, x_hii=np.clip(x_hii, 0, 1).astype(x_hii.dtype, copy=False))


def _check_dtype(array: np.ndarray, label: str, field: str) -> None:
  kind = array.dtype.kind
  if kind == "O":
    raise SnapshotError(f"{label}: field '{field}' is an object/pickled array; expected numbers")
  if kind not in "biuf":
    raise SnapshotError(f"{label}: field '{field}' has dtype {array.dtype}, expected real numbers")


def validate_snapshot(snapshot: Snapshot, radius: Optional[int] = None,
                      require_target: bool = True) -> None:
  """Checks shapes, values and the crop radius of a snapshot.

  Non-cubic periodic boxes are valid. Raises SnapshotError (a ValueError) whose
  one-line message names the file (or snapshot), the field and the problem.

  Args:
    snapshot: the fields to check.
    radius: the model's crop radius; None skips the 2r+1 <= N check.
    require_target: whether x_hii must be present.
  """
  fields = {"rho": snapshot.rho, "n_src": snapshot.n_src}
  if snapshot.x_hii is not None:
    fields["x_hii"] = snapshot.x_hii
  elif require_target:
    raise SnapshotError(
        f"{_field_label(snapshot, 'x_hii')}: field 'x_hii' is missing (the target is needed "
        f"for training and evaluation; expected {snapshot_filename('x_hii', snapshot.redshift)})")

  reference_shape = None
  for field, array in fields.items():
    label = _field_label(snapshot, field)
    if array is None:
      raise SnapshotError(f"{label}: field '{field}' is missing")
    array = np.asarray(array)
    _check_dtype(array, label, field)
    if array.size == 0:
      raise SnapshotError(f"{label}: field '{field}' is empty (shape {array.shape})")
    if array.ndim != 3:
      raise SnapshotError(f"{label}: field '{field}' is {array.ndim}-D with shape {array.shape}, "
                          "expected a 3-D box")
    if reference_shape is None:
      reference_shape = array.shape
    elif array.shape != reference_shape:
      raise SnapshotError(f"{label}: field '{field}' has shape {array.shape}, but 'rho' has shape "
                          f"{reference_shape}; all fields must share one shape")
    finite = np.isfinite(array)
    if not finite.all():
      nans = int(np.isnan(array).sum())
      infs = int(array.size - finite.sum()) - nans
      raise SnapshotError(f"{label}: field '{field}' has {nans + infs} non-finite values "
                          f"({nans} NaN, {infs} Inf) of {array.size}")
    if field in ("rho", "n_src"):
      negative = int((array < 0).sum())
      if negative:
        what = "density" if field == "rho" else "source"
        raise SnapshotError(
            f"{label}: field '{field}' has negative {what} in {negative} of {array.size} cells "
            f"(min {float(array.min()):.4g}); it must be >= 0")
    if field == "rho" and not float(array.mean(dtype=np.float64)) > 0.0:
      raise SnapshotError(f"{label}: field 'rho' is zero everywhere; the overdensity is undefined")
    if field == "x_hii":
      tolerance = X_HII_ROUND_OFF
      outside = int(((array < -tolerance) | (array > 1 + tolerance)).sum())
      if outside:
        raise SnapshotError(
            f"{label}: field 'x_hii' is outside [0, 1] in {outside} of {array.size} cells "
            f"(min {array.min()!s}, max {array.max()!s}); values within {tolerance:g} of it would "
            "be clipped as round-off")

  if radius is not None:
    if radius < 0:
      raise SnapshotError(f"--radius must be >= 0, got {radius}")
    crop = 2 * radius + 1
    for axis, cells in enumerate(reference_shape):
      if crop > cells:
        raise SnapshotError(
            f"{_field_label(snapshot, 'rho')}: box shape {reference_shape} is too small for "
            f"--radius={radius}: a crop needs 2r+1 = {crop} cells but axis {axis} has {cells}")


def save_snapshot(snapshot: Snapshot, data_dir: str) -> Dict[str, str]:
  """Writes a snapshot in the original naming, all files or none.

  Each field goes to a temporary file in `data_dir` first; only when all are written
  are they renamed into place (os.replace is atomic), so a crash leaves no
  half-written snapshot file behind.

  Args:
    snapshot: validated before writing (x_hii may be None: then no xHII file).
    data_dir: created if missing.

  Returns:
    {field: path written}.
  """
  validate_snapshot(snapshot, require_target=False)
  os.makedirs(data_dir, exist_ok=True)
  fields = {"rho": snapshot.rho, "n_src": snapshot.n_src, "x_hii": snapshot.x_hii}
  pending = {}
  try:
    for field, array in fields.items():
      if array is None:
        continue
      handle, tmp_path = io_utils.make_temp(data_dir, prefix=f".{FILE_PREFIXES[field]}_",
                                            suffix=".npy.tmp")
      pending[field] = tmp_path
      with os.fdopen(handle, "wb") as stream:
        np.save(stream, np.asarray(array, dtype=np.float32), allow_pickle=False)
        stream.flush()
        os.fsync(stream.fileno())
  except BaseException:
    for tmp_path in pending.values():
      if os.path.exists(tmp_path):
        os.remove(tmp_path)
    raise
  written = {}
  for field, tmp_path in pending.items():
    path = os.path.join(data_dir, snapshot_filename(field, snapshot.redshift))
    os.replace(tmp_path, path)
    written[field] = path
  return written

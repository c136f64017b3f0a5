"""One snapshot of a reionization box: the three fields of DESIGN.md, and its files.

The caller-side preprocessing is defined here once: `overdensity(rho)`.
Everything else (source transform, standardization) happens inside the model.

On disk a snapshot is a folder holding the original project's files,
`rho_z{z:.3f}.npy`, `nsrc_z{z:.3f}.npy` and `xHII_z{z:.3f}.npy` (several redshifts
may share a folder). `load_snapshot` checks them before any training starts and
raises `SnapshotError` with a one-line message naming the file, the field and the
problem.
"""

import dataclasses
import functools
import os
import re
import tempfile
from typing import Dict, List, Optional

import numpy as np

from keras_cnn import errors

# Field name -> file prefix (the original C2-Ray naming).
FILE_PREFIXES = {"rho": "rho", "n_src": "nsrc", "x_hii": "xHII"}
_FILE_PATTERN = re.compile(r"^(rho|nsrc|xHII)_z(\d+(?:\.\d+)?)\.npy$")


class SnapshotError(errors.UserError):
  """A snapshot that cannot be used; the message names file, field and problem."""


@dataclasses.dataclass
class Snapshot:
  """Fields of one periodic box, float32, all of the same 3-D shape.

  Attributes:
    rho: gas density in any positive unit (g/cm^3 in C2-Ray files).
    n_src: ionizing sources per cell (non-negative, mostly zeros).
    x_hii: ionized fraction in [0, 1]; None when only predicting.
    redshift: snapshot redshift.
    name: where it came from (a path, or "synthetic(seed=...)"), used in messages.
  """

  rho: np.ndarray
  n_src: np.ndarray
  x_hii: Optional[np.ndarray]
  redshift: float
  name: str = ""

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


def snapshot_filename(field: str, redshift: float) -> str:
  """The original file name of `field` ("rho", "n_src" or "x_hii") at `redshift`."""
  return f"{FILE_PREFIXES[field]}_z{redshift:.3f}.npy"


def _field_label(snapshot: Snapshot, field: str) -> str:
  """The file a field came from when the snapshot is a folder, else the snapshot name."""
  if snapshot.name and os.path.isdir(snapshot.name):
    return os.path.join(snapshot.name, snapshot_filename(field, snapshot.redshift))
  return snapshot.name or "<in-memory snapshot>"


def _npy_files(data_dir: str) -> List[str]:
  return sorted(f for f in os.listdir(data_dir) if f.endswith(".npy"))


def list_redshifts(data_dir: str) -> List[float]:
  """Sorted redshifts that have at least one of the three files in `data_dir`."""
  if not os.path.isdir(data_dir):
    raise SnapshotError(f"{data_dir}: no such folder (expected a folder of "
                        "rho_z{z:.3f}.npy, nsrc_z{z:.3f}.npy, xHII_z{z:.3f}.npy)")
  found = set()
  for filename in os.listdir(data_dir):
    match = _FILE_PATTERN.match(filename)
    if match:
      found.add(f"{float(match.group(2)):.3f}")
  return sorted(float(z) for z in found)


def _pick_redshift(data_dir: str, redshift: Optional[float]) -> float:
  available = list_redshifts(data_dir)
  listed = ", ".join(f"{z:.3f}" for z in available)
  if not available:
    existing = ", ".join(_npy_files(data_dir)) or "no .npy files"
    raise SnapshotError(
        f"{data_dir}: no snapshot files; expected rho_z{{z:.3f}}.npy, nsrc_z{{z:.3f}}.npy, "
        f"xHII_z{{z:.3f}}.npy; found: {existing}")
  if redshift is None:
    if len(available) > 1:
      raise SnapshotError(
          f"{data_dir}: several redshifts ({listed}); pick one with --redshift")
    return available[0]
  wanted = f"{float(redshift):.3f}"
  if wanted not in {f"{z:.3f}" for z in available}:
    raise SnapshotError(
        f"{data_dir}: no snapshot at --redshift={wanted}; available: {listed}")
  return float(wanted)


def _load_field(path: str, field: str) -> np.ndarray:
  """Reads one .npy as float32 without unpickling; memory-maps to avoid a float64 copy."""
  try:
    array = np.load(path, mmap_mode="r", allow_pickle=False)
  except ValueError as error:
    if "Python objects" in str(error) or "allow_pickle" in str(error):
      raise SnapshotError(
          f"{path}: field '{field}' is an object/pickled array; save a numeric array "
          "(np.save(path, array.astype(np.float32)))") from None
    raise SnapshotError(f"{path}: field '{field}' is not a readable .npy file ({error})") from None
  except (OSError, EOFError) as error:
    raise SnapshotError(f"{path}: field '{field}' cannot be read ({error})") from None
  if not isinstance(array, np.ndarray):
    raise SnapshotError(f"{path}: field '{field}' is an .npz archive, expected a single .npy array")
  _check_dtype(array, path, field)
  return np.array(array, dtype=np.float32)


def _check_dtype(array: np.ndarray, label: str, field: str) -> None:
  kind = array.dtype.kind
  if kind == "O":
    raise SnapshotError(f"{label}: field '{field}' is an object/pickled array; expected numbers")
  if kind not in "biuf":
    raise SnapshotError(
        f"{label}: field '{field}' has dtype {array.dtype}, expected real numbers")


def load_snapshot(data_dir: str, redshift: Optional[float] = None, require_target: bool = True,
                  radius: Optional[int] = None) -> Snapshot:
  """Reads and checks one snapshot folder in the original naming.

  Args:
    data_dir: folder with rho_z{z:.3f}.npy, nsrc_z{z:.3f}.npy and xHII_z{z:.3f}.npy.
    redshift: which snapshot, when the folder holds several (matched to 3 decimals).
    require_target: False when only predicting (xHII file may be absent).
    radius: the model's crop radius; checks 2r+1 <= N on every axis.

  Returns:
    A validated Snapshot; its name is `data_dir`.

  Raises:
    SnapshotError: one line naming the file, the field and the problem.
  """
  redshift = _pick_redshift(data_dir, redshift)
  fields = ("rho", "n_src", "x_hii") if require_target else ("rho", "n_src")
  expected = [snapshot_filename(f, redshift) for f in FILE_PREFIXES]
  arrays = {}
  for field in FILE_PREFIXES:
    path = os.path.join(data_dir, snapshot_filename(field, redshift))
    if not os.path.exists(path):
      if field not in fields:
        continue
      raise SnapshotError(
          f"{path}: missing file for field '{field}'; expected {', '.join(expected)}; "
          f"found: {', '.join(_npy_files(data_dir)) or 'no .npy files'}")
    arrays[field] = _load_field(path, field)
  snapshot = Snapshot(rho=arrays["rho"], n_src=arrays["n_src"], x_hii=arrays.get("x_hii"),
                      redshift=redshift, name=data_dir)
  validate_snapshot(snapshot, radius=radius, require_target=require_target)
  return snapshot


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
      raise SnapshotError(
          f"{label}: field '{field}' is {array.ndim}-D with shape {array.shape}, "
          "expected a 3-D box")
    if reference_shape is None:
      reference_shape = array.shape
    elif array.shape != reference_shape:
      raise SnapshotError(
          f"{label}: field '{field}' has shape {array.shape}, but 'rho' has shape "
          f"{reference_shape}; all fields must share one shape")
    finite = np.isfinite(array)
    if not finite.all():
      nans = int(np.isnan(array).sum())
      infs = int(array.size - finite.sum()) - nans
      raise SnapshotError(
          f"{label}: field '{field}' has {nans + infs} non-finite values "
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
      outside = int(((array < 0) | (array > 1)).sum())
      if outside:
        raise SnapshotError(
            f"{label}: field 'x_hii' is outside [0, 1] in {outside} of {array.size} cells "
            f"(min {float(array.min()):.4g}, max {float(array.max()):.4g})")

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
      handle, tmp_path = tempfile.mkstemp(
          dir=data_dir, prefix=f".{FILE_PREFIXES[field]}_", suffix=".npy.tmp")
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

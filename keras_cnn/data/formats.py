"""Snapshot files on disk: which file of a folder holds which field at which redshift.

`scan` sorts the files of a folder into snapshots, field by field, and `read_field`
reads one field as a float32 array indexed (x, y, z). Layouts (`--data_format`):

- `npy`: the original naming, `rho_z<z>.npy` (density), `nsrc_z<z>.npy` (sources),
  `xHII_z<z>.npy` (ionized fraction), C or Fortran order as the .npy header says.
- `c2ray`: C2-Ray and its CubeP3M inputs.
  `xfrac3d_<z>.bin`: x_HII as written by C2-Ray, a Fortran unformatted sequential
  file: one record of 3 int32 mesh sizes, one record of the mesh in Fortran order,
  float64 (float32 in old runs), either byte order; also read without record markers.
  A record over 2 GiB (which gfortran splits into subrecords) is not read.
  `<z>n_all.dat`: CubeP3M density, 3 int32 mesh sizes then float32 in Fortran order
  (no record markers), in simulation units (the model only sees rho / mean - 1).
  `<z>-coarsest_wsubgrid_sources.dat` (or `<z>-coarsest_sources.dat`): C2-Ray source
  list, text: the number of sources, then one source per line,
  `i j k mass_massive mass_small` with 1-based cell indices (4 columns
  `i j k mass` are accepted too). Sources are gridded onto the mesh of the density by
  summing the masses of every source of a cell (both columns), in CubeP3M grid-mass
  units, or in solar masses with `box_size_mpc`.
- `pyc2ray`: `xfrac_z<z>.dat` or `xfrac_<z>.dat`, x_HII as pyC2Ray writes it with
  `tools21cm.save_cbin(bits=64, order='F')`: 3 int32 mesh sizes then float64 in Fortran
  order; `xfrac_z<z>.npy` (pyC2Ray's .npy output); density and sources as in `c2ray`.
- `21cmfast`: HDF5 files (`*.h5`, `*.hdf5`) written by 21cmFAST v3 (arrays in
  `/<Struct>/<name>`, redshift in the root attributes) or v4 (arrays in
  `/<Struct>/OutputFields/<name>`, redshift in the attributes of `/<Struct>`):
  `PerturbedField/density` (the overdensity delta; rho = 1 + delta),
  `IonizedBox/xH_box` or `IonizedBox/neutral_fraction` (x_HII = 1 - x_H) and
  `HaloBox/n_ion` (or `HaloBox/halo_mass` when n_ion is absent) as the sources.
- `auto` (default): all of the above, chosen field by field, so one folder may mix
  layouts (C2-Ray binaries for density and x_HII beside an `nsrc_z<z>.npy`).

Redshifts are matched by value: files whose redshifts differ by at most
`REDSHIFT_TOLERANCE` belong to one snapshot; two files of one field that close are an
error. The tolerance is half the last digit of the three decimals that C2-Ray and this
package write into file names, so `8.397` and `8.3974` are one snapshot, `8.397` and
`8.4` two.

Every file is checked before it is read: it must be a regular file (a FIFO, socket,
device or folder is never opened), its header must describe exactly the bytes the file
holds, and the array must fit in the available memory; otherwise `SnapshotError`
names the file, the field and the problem in one line. When tools21cm (the `astro`
extra) is importable, the C2-Ray, CubeP3M and pyC2Ray binaries are read with its
readers (`XfracFile`, `DensityFile`, `read_cbin`); otherwise with NumPy readers of the
same layouts. Source lists are always read here: `tools21cm.SourceFile` keeps one
source per cell (a later source overwrites an earlier one), reads one mass column and
grids cubic meshes only.
"""

import dataclasses
import math
import os
import re
import stat
import warnings
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from absl import logging

from keras_cnn.errors import SnapshotError

DATA_FORMATS = ("auto", "npy", "c2ray", "pyc2ray", "21cmfast")
FIELDS = ("rho", "n_src", "x_hii")
REDSHIFT_TOLERANCE = 5e-4

_Z = r"(\d+(?:\.\d+)?)"
# (file name pattern, field, layout, the --data_format values that read it).
_NAMED_LAYOUTS = (
    (re.compile(rf"^rho_z{_Z}\.npy$"), "rho", "npy", ("npy",)),
    (re.compile(rf"^nsrc_z{_Z}\.npy$"), "n_src", "npy", ("npy",)),
    (re.compile(rf"^xHII_z{_Z}\.npy$"), "x_hii", "npy", ("npy",)),
    (re.compile(rf"^xfrac3d_{_Z}\.bin$"), "x_hii", "c2ray_xfrac", ("c2ray",)),
    (re.compile(rf"^{_Z}n_all\.dat$"), "rho", "cubep3m_density", ("c2ray", "pyc2ray")),
    (re.compile(rf"^{_Z}-coarsest(?:_wsubgrid)?_sources\.dat$"), "n_src", "c2ray_sources",
     ("c2ray", "pyc2ray")),
    (re.compile(rf"^xfrac_z?{_Z}\.dat$"), "x_hii", "pyc2ray_cbin", ("pyc2ray",)),
    (re.compile(rf"^xfrac_z?{_Z}\.npy$"), "x_hii", "npy", ("pyc2ray",)),
)
_HDF5_SUFFIXES = (".h5", ".hdf5")
# 21cmFAST struct -> (field, dataset names in order of preference).
_21CMFAST_STRUCTS = {
    "PerturbedField": ("rho", ("density",)),
    "IonizedBox": ("x_hii", ("xH_box", "neutral_fraction")),
    "HaloBox": ("n_src", ("n_ion", "halo_mass")),
}
# How each layout names the files of one snapshot, for messages about a missing field.
EXPECTED_NAMES = {
    "npy": ("rho_z{z}.npy", "nsrc_z{z}.npy", "xHII_z{z}.npy"),
    "c2ray": ("{z}n_all.dat", "{z}-coarsest_wsubgrid_sources.dat", "xfrac3d_{z}.bin"),
    "pyc2ray": ("{z}n_all.dat", "{z}-coarsest_wsubgrid_sources.dat", "xfrac_z{z}.dat"),
    "21cmfast": ("a PerturbedField .h5 file", "a HaloBox .h5 file", "an IonizedBox .h5 file"),
}
_FORMAT_OF_LAYOUT = {
    "npy": "npy",
    "c2ray_xfrac": "c2ray",
    "cubep3m_density": "c2ray",
    "c2ray_sources": "c2ray",
    "pyc2ray_cbin": "pyc2ray",
    "21cmfast": "21cmfast"
}


@dataclasses.dataclass(frozen=True)
class FieldFile:
  """One field of one snapshot on disk.

  Attributes:
    field: "rho", "n_src" or "x_hii".
    redshift: the redshift its name (or its HDF5 attributes) gives.
    path: the file.
    layout: how it is stored (a key of `_FORMAT_OF_LAYOUT`).
    group: the 21cmFAST struct holding the field (HDF5 files only).
  """

  field: str
  redshift: float
  path: str
  layout: str
  group: str = ""

  @property
  def label(self) -> str:
    """The file, and for HDF5 the struct inside it, as named in messages."""
    return f"{self.path} ({self.group})" if self.group else self.path

  @property
  def data_format(self) -> str:
    """The `--data_format` that names the file (pyC2Ray's xfrac .npy files: 'pyc2ray')."""
    if self.layout == "npy" and os.path.basename(self.path).startswith("xfrac"):
      return "pyc2ray"
    return _FORMAT_OF_LAYOUT[self.layout]


@dataclasses.dataclass
class SnapshotFiles:
  """The files of one redshift: at most one per field."""

  redshift: float
  files: Dict[str, FieldFile]

  def describe(self) -> str:
    """One line: the redshift and the file of every field found."""
    parts = [
        f"{field}: {os.path.basename(self.files[field].label)}" for field in FIELDS
        if field in self.files
    ]
    return f"z={format_redshift(self.redshift)}: " + ", ".join(parts)


def format_redshift(redshift: float) -> str:
  """Three decimals (the file-name convention), more when the value has more."""
  text = f"{redshift:.3f}"
  if abs(float(text) - redshift) < 1e-9:
    return text
  return f"{redshift:.6f}".rstrip("0")


def expected_names(data_format: str, redshift: float) -> Dict[str, str]:
  """{field: file name} that `data_format` uses at `redshift` (for messages)."""
  names = EXPECTED_NAMES.get(data_format, EXPECTED_NAMES["npy"])
  return {field: name.format(z=format_redshift(redshift)) for field, name in zip(FIELDS, names)}


# --------------------------------------------------------------------------------------
# Scanning a folder.


def scan(data_dir: str, data_format: str = "auto") -> List[SnapshotFiles]:
  """The snapshots of `data_dir` in layout `data_format`, sorted by redshift.

  Args:
    data_dir: the folder.
    data_format: one of `DATA_FORMATS`; "auto" accepts every layout, field by field.

  Returns:
    One SnapshotFiles per redshift that has at least one field.

  Raises:
    SnapshotError: no such folder, an unreadable HDF5 file, or two files of one field
      whose redshifts are closer than `REDSHIFT_TOLERANCE`.
  """
  if data_format not in DATA_FORMATS:
    raise SnapshotError(f"--data_format={data_format}: expected one of "
                        f"{', '.join(DATA_FORMATS)}")
  if not os.path.isdir(data_dir):
    raise SnapshotError(f"{data_dir}: no such folder (expected a folder of "
                        "rho_z{z:.3f}.npy, nsrc_z{z:.3f}.npy, xHII_z{z:.3f}.npy or of "
                        "C2-Ray, pyC2Ray or 21cmFAST files, see --data_format)")
  try:
    names = sorted(os.listdir(data_dir))
  except OSError as error:
    raise SnapshotError(f"{data_dir}: cannot list the folder ({error.strerror})") from None
  found: List[FieldFile] = []
  for name in names:
    path = os.path.join(data_dir, name)
    for pattern, field, layout, formats in _NAMED_LAYOUTS:
      match = pattern.match(name)
      if match and data_format in formats + ("auto",):
        found.append(FieldFile(field, float(match.group(1)), path, layout))
    if name.endswith(_HDF5_SUFFIXES) and data_format in ("auto", "21cmfast"):
      found.extend(_scan_hdf5(path, data_format))
  return _group_by_redshift(found)


def target_redshift(name: str) -> Optional[float]:
  """The redshift in `name` if it is the file name of an x_HII target in some layout
  (xHII_z{z}.npy, xfrac3d_{z}.bin, xfrac_z{z}.dat, ...), else None."""
  for pattern, field, _, _ in _NAMED_LAYOUTS:
    match = pattern.match(name)
    if match and field == "x_hii":
      return float(match.group(1))
  return None


def snapshot_targeted_by(path: str) -> Optional[SnapshotFiles]:
  """The snapshot that would read the file `path` as its x_HII target: `path` has a
  target's name and its folder holds the density and sources of that redshift. None
  otherwise (an output folder of predicted maps holds no inputs)."""
  redshift = target_redshift(os.path.basename(path))
  folder = os.path.dirname(os.path.abspath(path))
  if redshift is None or not os.path.isdir(folder):
    return None
  try:
    snapshots = scan(folder)
  except SnapshotError:
    return None
  for snapshot in snapshots:
    if (abs(snapshot.redshift - redshift) <= REDSHIFT_TOLERANCE and "rho" in snapshot.files and
        "n_src" in snapshot.files):
      return snapshot
  return None


def _scan_hdf5(path: str, data_format: str) -> List[FieldFile]:
  """The 21cmFAST fields of one HDF5 file; other HDF5 files hold none."""
  try:
    import h5py
  except ImportError:
    if data_format == "21cmfast":
      raise SnapshotError(f"{path}: reading 21cmFAST files needs h5py "
                          "(pip install 'keras_cnn[astro]')") from None
    logging.warning("%s: skipped (reading HDF5 files needs h5py)", path)
    return []
  require_regular_file(path)
  found = []
  try:
    with h5py.File(path, "r") as handle:
      for struct, (field, _) in _21CMFAST_STRUCTS.items():
        group = handle.get(struct)
        if not isinstance(group, h5py.Group):
          continue
        redshift = group.attrs.get("redshift", handle.attrs.get("redshift"))
        try:
          redshift = float(np.asarray(redshift).reshape(()))
        except (TypeError, ValueError):
          redshift = None
        if redshift is None or not math.isfinite(redshift):
          raise SnapshotError(f"{path}: 21cmFAST {struct} has no numeric 'redshift' "
                              f"attribute (looked in /{struct} and /)")
        found.append(FieldFile(field, redshift, path, "21cmfast", group=struct))
  except OSError as error:
    raise SnapshotError(f"{path}: not a readable HDF5 file ({error})") from None
  return found


def _group_by_redshift(found: Sequence[FieldFile]) -> List[SnapshotFiles]:
  """Snapshots of files whose redshifts agree within REDSHIFT_TOLERANCE."""
  by_field: Dict[str, List[FieldFile]] = {}
  for item in found:
    by_field.setdefault(item.field, []).append(item)
  for field, items in by_field.items():
    items.sort(key=lambda item: item.redshift)
    for first, second in zip(items, items[1:]):
      if second.redshift - first.redshift <= REDSHIFT_TOLERANCE:
        raise SnapshotError(
            f"{first.label}: field '{field}' has two files at redshifts closer than "
            f"{REDSHIFT_TOLERANCE:g}: {os.path.basename(first.label)} "
            f"(z={format_redshift(first.redshift)}) and {os.path.basename(second.label)} "
            f"(z={format_redshift(second.redshift)}); keep one, or choose a layout with "
            "--data_format")
  groups: List[List[FieldFile]] = []
  for item in sorted(found, key=lambda item: item.redshift):
    if groups and item.redshift - groups[-1][0].redshift <= REDSHIFT_TOLERANCE:
      groups[-1].append(item)
      continue
    if groups and item.redshift - groups[-1][-1].redshift <= REDSHIFT_TOLERANCE:
      last = groups[-1][-1]
      raise SnapshotError(
          f"{item.label}: redshift {format_redshift(item.redshift)} is within "
          f"{REDSHIFT_TOLERANCE:g} of {os.path.basename(last.label)} "
          f"(z={format_redshift(last.redshift)}) but not of the rest of its snapshot; "
          "the files cannot be matched into snapshots unambiguously")
    groups.append([item])
  snapshots = []
  for group in groups:
    files = {item.field: item for item in group}
    # The snapshot's redshift: that of its density file, else of x_HII, else of sources.
    anchor = next(files[field] for field in ("rho", "x_hii", "n_src") if field in files)
    snapshots.append(SnapshotFiles(anchor.redshift, files))
  return snapshots


# --------------------------------------------------------------------------------------
# File checks shared by every reader.

_FILE_KINDS = ((stat.S_ISDIR, "folder"), (stat.S_ISFIFO, "FIFO (named pipe)"),
               (stat.S_ISSOCK, "socket"), (stat.S_ISCHR, "character device"), (stat.S_ISBLK,
                                                                               "block device"))


def _what(field: Optional[str]) -> str:
  return f": field '{field}'" if field else ":"


def require_regular_file(path: str, field: Optional[str] = None) -> int:
  """The size of `path` in bytes; refuses anything but a regular file without opening it."""
  try:
    status = os.stat(path)
  except FileNotFoundError:
    raise SnapshotError(f"{path}{_what(field)} no such file") from None
  except OSError as error:
    raise SnapshotError(f"{path}{_what(field)} cannot be read ({error.strerror})") from None
  if not stat.S_ISREG(status.st_mode):
    kind = next((name for test, name in _FILE_KINDS if test(status.st_mode)), "special file")
    prefix = f"{path}: field '{field}' is" if field else f"{path}: is"
    raise SnapshotError(f"{prefix} a {kind}, not a regular file")
  return status.st_size


def available_memory() -> Optional[int]:
  """Bytes this process can still allocate, or None when the system does not say.

  MemAvailable of /proc/meminfo (free plus reclaimable memory), else the free physical
  pages of sysconf; capped by the room left under a cgroup v2 memory limit.
  """
  available = None
  try:
    with open("/proc/meminfo", encoding="ascii") as stream:
      for line in stream:
        if line.startswith("MemAvailable:"):
          available = int(line.split()[1]) * 1024
          break
  except (OSError, ValueError, IndexError):
    pass
  if available is None:
    try:
      available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, AttributeError):
      pass
  try:
    with open("/sys/fs/cgroup/memory.max", encoding="ascii") as stream:
      limit = stream.read().strip()
    with open("/sys/fs/cgroup/memory.current", encoding="ascii") as stream:
      current = int(stream.read().strip())
    if limit != "max":
      room = max(int(limit) - current, 0)
      available = room if available is None else min(available, room)
  except (OSError, ValueError):
    pass
  return available


def _gb(num_bytes: int) -> str:
  return f"{num_bytes} bytes ({num_bytes / 1e9:.3g} GB)"


def check_memory(label: str, field: str, shape: Tuple[int, ...], dtype: np.dtype,
                 needed: int) -> None:
  """Refuses, before allocating, a field whose loading needs more than the free memory."""
  available = available_memory()
  if available is not None and needed > available:
    raise SnapshotError(
        f"{label}: field '{field}' declares shape {tuple(shape)} of {np.dtype(dtype)}: "
        f"loading it needs {_gb(needed)} of memory but {_gb(available)} are available")


def _cells(shape: Sequence[int]) -> int:
  return math.prod(int(n) for n in shape)


def _check_dtype(dtype: np.dtype, label: str, field: str) -> None:
  if dtype.hasobject:
    raise SnapshotError(
        f"{label}: field '{field}' is an object/pickled array; save a numeric array "
        "(np.save(path, array.astype(np.float32)))")
  if dtype.kind not in "biuf":
    raise SnapshotError(f"{label}: field '{field}' has dtype {dtype}, expected real numbers")


# --------------------------------------------------------------------------------------
# Readers.


def read_field(item: FieldFile, mesh: Optional[Tuple[int, ...]] = None,
               box_size_mpc: Optional[float] = None) -> np.ndarray:
  """One field as a float32 array indexed (x, y, z).

  Args:
    item: the file (from `scan`).
    mesh: the shape of the box; needed for source lists, which do not store it.
    box_size_mpc: CubeP3M box side in cMpc/h; converts source-list masses from grid
      units to solar masses (needs tools21cm). None keeps grid units.

  Returns:
    The field; a float32 .npy file is memory-mapped copy-on-write (not read into memory
    up front), every other file is read into a new array.

  Raises:
    SnapshotError: the file cannot be used; the message names it and the problem.
  """
  if item.layout == "npy":
    return read_npy(item.path, item.field)
  if item.layout == "c2ray_sources":
    if mesh is None:
      raise SnapshotError(f"{item.path}: field 'n_src': a source list needs the mesh of the "
                          "density to be gridded")
    return read_c2ray_sources(item.path, mesh, box_size_mpc)
  if item.layout == "21cmfast":
    return read_21cmfast(item)
  return read_mesh_binary(item.path, item.field, item.layout)


def read_npy(path: str, field: str) -> np.ndarray:
  """A .npy file, checked from its header before any array is allocated."""
  size = require_regular_file(path, field)
  try:
    with open(path, "rb") as stream:
      try:
        version = np.lib.format.read_magic(stream)
      except ValueError:
        raise SnapshotError(
            f"{path}: field '{field}' is not a NumPy .npy file (it does not start with the "
            ".npy magic string; save arrays with np.save)") from None
      try:
        if version == (1, 0):
          shape, fortran_order, dtype = np.lib.format.read_array_header_1_0(stream)
        elif version == (2, 0):
          shape, fortran_order, dtype = np.lib.format.read_array_header_2_0(stream)
        else:
          raise ValueError(f"unsupported .npy format version {version[0]}.{version[1]}")
      except (ValueError, SyntaxError, EOFError) as error:
        raise SnapshotError(
            f"{path}: field '{field}' is not a readable .npy file (header: {error})") from None
      offset = stream.tell()
  except OSError as error:
    raise SnapshotError(f"{path}: field '{field}' cannot be read ({error.strerror})") from None
  _check_dtype(dtype, path, field)
  if any(n < 0 for n in shape):
    raise SnapshotError(f"{path}: field '{field}' is not a readable .npy file "
                        f"(header declares shape {shape})")
  cells = _cells(shape)
  declared, held = cells * dtype.itemsize, size - offset
  if held != declared:
    problem = "truncated" if held < declared else "longer than its header says"
    raise SnapshotError(
        f"{path}: field '{field}' is not a readable .npy file ({problem}: the header "
        f"declares shape {shape} of {dtype}, {declared} bytes, but the file holds {held} "
        "bytes after the header)")
  mapped = dtype == np.float32
  # A copy costs float32 per cell; a mapped file only the boolean masks of the checks.
  check_memory(path, field, shape, dtype, cells if mapped else cells * 4)
  if cells == 0:
    return np.zeros(shape, np.float32)
  try:
    array = np.load(path, mmap_mode="c" if mapped else "r", allow_pickle=False)
    return array if mapped else np.array(array, dtype=np.float32)
  except (ValueError, OSError, EOFError) as error:
    raise SnapshotError(f"{path}: field '{field}' is not a readable .npy file ({error})") from None


@dataclasses.dataclass(frozen=True)
class MeshLayout:
  """Where the array of a 3-int32-header binary lies.

  Attributes:
    shape: the mesh sizes (x, y, z) of the header.
    dtype: float32 or float64, with the file's byte order.
    offset: bytes before the first value.
    records: whether header and data are Fortran records (with 4-byte length markers).
  """

  shape: Tuple[int, int, int]
  dtype: np.dtype
  offset: int
  records: bool


def mesh_layout(path: str, field: str) -> MeshLayout:
  """The layout of a C2-Ray / CubeP3M / cbin binary, from its header and its size.

  Fortran records are recognized by their markers (12 around the header, the data's
  byte count around the data); without markers the file must hold exactly 12 header
  bytes and the mesh of float32 or float64 values.
  """
  size = require_regular_file(path, field)
  try:
    with open(path, "rb") as stream:
      head = stream.read(24)
      trailer = b""
      if size >= 28:
        stream.seek(size - 4)
        trailer = stream.read(4)
  except OSError as error:
    raise SnapshotError(f"{path}: field '{field}' cannot be read ({error.strerror})") from None
  if len(head) < 12:
    raise SnapshotError(f"{path}: field '{field}' is not a C2-Ray/CubeP3M binary: {size} bytes "
                        "is shorter than the 3 int32 mesh sizes of its header")
  plain = None
  for order in "<>":
    ints = [int(v) for v in np.frombuffer(head[:len(head) // 4 * 4], dtype=f"{order}i4")]
    end = int(np.frombuffer(trailer, dtype=f"{order}i4")[0]) if trailer else -1
    if len(ints) == 6 and ints[0] == 12 and ints[4] == 12 and min(ints[1:4]) > 0:
      cells = _cells(ints[1:4])
      for itemsize in (8, 4):
        if ints[5] == cells * itemsize == end and size == 28 + cells * itemsize:
          return MeshLayout(tuple(ints[1:4]), np.dtype(f"{order}f{itemsize}"), 24, True)
    if min(ints[:3]) > 0 and plain is None:
      cells = _cells(ints[:3])
      for itemsize in (8, 4):
        if size == 12 + cells * itemsize:
          plain = MeshLayout(tuple(ints[:3]), np.dtype(f"{order}f{itemsize}"), 12, False)
          break
  if plain is not None:
    return plain
  mesh = tuple(int(v) for v in np.frombuffer(head[:12], dtype="<i4"))
  if min(mesh) <= 0:
    expected = "positive mesh sizes"
  else:
    cells = _cells(mesh)
    expected = (f"{12 + cells * 4} bytes (float32) or {12 + cells * 8} bytes (float64), "
                "16 more with Fortran record markers")
  raise SnapshotError(
      f"{path}: field '{field}' is not a C2-Ray/CubeP3M binary: its header reads as mesh "
      f"sizes {mesh}, so it should hold {expected}, but it holds {size} bytes")


def read_mesh_binary(path: str, field: str, layout_name: str) -> np.ndarray:
  """A C2-Ray xfrac, CubeP3M density or pyC2Ray cbin file, as float32 in C order."""
  layout = mesh_layout(path, field)
  cells = _cells(layout.shape)
  t2c = tools21cm()
  native = layout.dtype.isnative
  # tools21cm reads the whole file in its own dtype before the float32 copy.
  needed = cells * 4 + (cells * layout.dtype.itemsize * 2 if t2c and native else 0)
  check_memory(path, field, layout.shape, layout.dtype, needed)
  if t2c is not None and native:
    array = _read_with_tools21cm(t2c, path, field, layout_name, layout)
  else:
    array = np.memmap(path, dtype=layout.dtype, mode="r", offset=layout.offset, shape=layout.shape,
                      order="F")
  logging.debug("%s: %s mesh %s %s, %s", path, layout_name, layout.shape, layout.dtype,
                "tools21cm" if t2c is not None and native else "numpy")
  return np.ascontiguousarray(array, dtype=np.float32)


def tools21cm():
  """The tools21cm module when it is installed (the `astro` extra), else None."""
  try:
    import tools21cm as t2c  # pylint: disable=import-outside-toplevel
  except ImportError:
    return None
  return t2c


def _read_with_tools21cm(t2c, path: str, field: str, layout_name: str,
                         layout: MeshLayout) -> np.ndarray:
  """The same layout read by tools21cm's own readers."""
  bits = layout.dtype.itemsize * 8
  try:
    if layout_name == "c2ray_xfrac" and (bits == 64 or not layout.records):
      return t2c.XfracFile(path, old_format=bits == 32, binary_format=not layout.records).xi
    if layout_name == "cubep3m_density" and bits == 32 and not layout.records:
      return t2c.DensityFile(path).raw_density
    # float32 xfrac files with record markers, and every cbin file.
    return t2c.read_cbin(path, bits=bits, order="F", records=layout.records)
  except (ValueError, OSError, EOFError) as error:
    raise SnapshotError(f"{path}: field '{field}' cannot be read by tools21cm ({error})") from None


def grid_mass_to_msun(box_size_mpc: float) -> float:
  """Solar masses per CubeP3M grid-mass unit of a box of `box_size_mpc` cMpc/h (tools21cm)."""
  t2c = tools21cm()
  if t2c is None:
    raise SnapshotError(f"--box_size_mpc={box_size_mpc:g}: converting C2-Ray source masses "
                        "to solar masses needs tools21cm (pip install 'keras_cnn[astro]')")
  previous = t2c.conv.boxsize
  try:
    t2c.conv.set_sim_constants(box_size_mpc)
    return float(t2c.conv.M_grid * t2c.const.solar_masses_per_gram)
  except Exception as error:  # tools21cm raises a bare Exception for unknown boxes
    raise SnapshotError(f"--box_size_mpc={box_size_mpc:g}: {error}") from None
  finally:
    t2c.conv.set_sim_constants(previous)


def read_c2ray_sources(path: str, mesh: Tuple[int, ...],
                       box_size_mpc: Optional[float] = None) -> np.ndarray:
  """A C2-Ray source list gridded onto `mesh`: the summed source mass of every cell."""
  size = require_regular_file(path, "n_src")
  if len(mesh) != 3:
    raise SnapshotError(f"{path}: field 'n_src': the density is not a 3-D box "
                        f"(shape {tuple(mesh)}), so the sources cannot be gridded")
  # The grid (float64 sums, float32 result) and the parsed table of the text.
  check_memory(path, "n_src", tuple(mesh), np.dtype(np.float64), _cells(mesh) * 12 + size * 4)
  what = "is not a C2-Ray source list"
  try:
    with open(path, "rb") as stream:
      first = stream.readline(256)
      try:
        declared = int(first.split()[0])
      except (IndexError, ValueError):
        raise SnapshotError(f"{path}: field 'n_src' {what} (its first line must start with "
                            f"the number of sources, got {first[:40]!r})") from None
      if declared < 0:
        raise SnapshotError(f"{path}: field 'n_src' {what} (it declares {declared} sources)")
      try:
        with warnings.catch_warnings():
          warnings.simplefilter("ignore", UserWarning)  # "input contained no data"
          table = np.loadtxt(stream, dtype=np.float64, ndmin=2, encoding="ascii")
      except (ValueError, UnicodeDecodeError) as error:
        raise SnapshotError(f"{path}: field 'n_src' {what} ({error})") from None
  except OSError as error:
    raise SnapshotError(f"{path}: field 'n_src' cannot be read ({error.strerror})") from None
  if table.size == 0:
    table = np.zeros((0, 5))
  if table.shape[0] != declared or table.shape[1] not in (4, 5):
    raise SnapshotError(f"{path}: field 'n_src' {what}: it declares {declared} sources but holds "
                        f"{table.shape[0]} lines of {table.shape[1]} numbers; expected one line "
                        "'i j k mass_massive mass_small' (or 'i j k mass') per source")
  cells = table[:, :3]
  if not np.all(np.isfinite(table)):
    bad = int(np.argmax(~np.all(np.isfinite(table), axis=1)))
    raise SnapshotError(f"{path}: field 'n_src': source {bad + 1} has a non-finite value")
  outside = ((cells != np.round(cells)) | (cells < 1) | (cells > np.asarray(mesh))).any(axis=1)
  if outside.any():
    bad = int(np.argmax(outside))
    raise SnapshotError(
        f"{path}: field 'n_src': source {bad + 1} lies at cell "
        f"({', '.join(f'{v:g}' for v in cells[bad])}), outside the mesh {tuple(mesh)} of the "
        "density (cells are numbered from 1)")
  masses = table[:, 3:].sum(axis=1)
  if box_size_mpc is not None:
    masses = masses * grid_mass_to_msun(box_size_mpc)
  grid = np.zeros(tuple(mesh), np.float64)
  index = tuple((cells - 1).astype(np.intp).T)
  np.add.at(grid, index, masses)
  return grid.astype(np.float32)


def read_21cmfast(item: FieldFile) -> np.ndarray:
  """A field of a 21cmFAST HDF5 file, transformed to this package's convention."""
  import h5py  # pylint: disable=import-outside-toplevel

  require_regular_file(item.path, item.field)
  _, names = _21CMFAST_STRUCTS[item.group]
  try:
    with h5py.File(item.path, "r") as handle:
      group = handle[item.group]
      fields = group["OutputFields"] if "OutputFields" in group else group
      name = next((n for n in names if isinstance(fields.get(n), h5py.Dataset)), None)
      if name is None:
        raise SnapshotError(
            f"{item.label}: field '{item.field}': no dataset {' or '.join(names)} in "
            f"{fields.name} (found: {', '.join(sorted(fields.keys())) or 'nothing'})")
      dataset = fields[name]
      _check_dtype(dataset.dtype, item.label, item.field)
      cells = _cells(dataset.shape)
      check_memory(item.label, item.field, dataset.shape, dataset.dtype,
                   cells * (4 + dataset.dtype.itemsize))
      array = np.asarray(dataset[()], dtype=np.float32)
  except OSError as error:
    raise SnapshotError(f"{item.label}: field '{item.field}' cannot be read ({error})") from None
  logging.debug("%s: %s/%s", item.path, item.group, name)
  if item.field == "rho":
    return np.float32(1.0) + array  # 21cmFAST stores the overdensity delta
  if item.field == "x_hii":
    return np.float32(1.0) - array  # and the neutral fraction
  return array

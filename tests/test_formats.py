"""Snapshot layouts of other codes: each written here by a tiny writer, read by load_snapshot.

Every box is non-cubic and filled with distinct values (arange), so a transposed or
reflected read cannot pass. The C2-Ray, CubeP3M and pyC2Ray binaries are read twice:
with tools21cm's readers (skipped when it is not installed) and with the NumPy readers.
"""

import logging
import os
import struct

import numpy as np
import pytest

from keras_cnn.data import formats
from keras_cnn.data import snapshot as snapshot_lib
from keras_cnn.data.snapshot import SnapshotError

SHAPE = (5, 6, 7)
Z = 8.397


def _box():
  """rho > 0, x_HII in [0, 1) and a source list, all different in every cell."""
  values = np.arange(np.prod(SHAPE), dtype=np.float64).reshape(SHAPE)
  rho = 1.0 + values
  x_hii = values / values.size
  # 1-based (i, j, k), mass_massive, mass_small; two sources share cell (1, 2, 3).
  sources = [(1, 2, 3, 4.0, 0.5), (5, 6, 7, 2.0, 0.0), (1, 2, 3, 1.0, 0.25), (3, 1, 7, 0.0, 8.0)]
  return rho, x_hii, sources


def _gridded(sources, columns=5):
  grid = np.zeros(SHAPE, np.float64)
  for source in sources:
    i, j, k = source[:3]
    grid[i - 1, j - 1, k - 1] += sum(source[3:columns])
  return grid.astype(np.float32)


def _record(payload: bytes) -> bytes:
  marker = struct.pack("<i", len(payload))
  return marker + payload + marker


def write_xfrac3d(path, x_hii, dtype=np.float64, records=True):
  """C2-Ray: a record of 3 int32 mesh sizes, a record of the mesh in Fortran order."""
  header = np.array(x_hii.shape, np.int32).tobytes()
  data = x_hii.astype(dtype).tobytes(order="F")
  with open(path, "wb") as stream:
    stream.write(_record(header) + _record(data) if records else header + data)


def write_cbin(path, array, dtype=np.float32):
  """CubeP3M density and pyC2Ray cbin: 3 int32 mesh sizes, values in Fortran order."""
  with open(path, "wb") as stream:
    stream.write(np.array(array.shape, np.int32).tobytes() + array.astype(dtype).tobytes("F"))


def write_sources(path, sources, columns=5, blank_lines=False):
  """C2-Ray source list: the count, then 'i j k mass_massive mass_small' per line."""
  with open(path, "w", encoding="ascii") as stream:
    stream.write(f"{len(sources)}\n")
    for source in sources:
      stream.write(" ".join(f"{v:g}" for v in source[:columns]) + "\n")
      if blank_lines:
        stream.write("\n")


def write_21cmfast(path, struct_name, arrays, redshift, version=3):
  """21cmFAST v3 (/<Struct>/<name>, redshift at /) or v4 (/<Struct>/OutputFields/<name>)."""
  h5py = pytest.importorskip("h5py")
  with h5py.File(path, "w") as handle:
    group = handle.create_group(struct_name)
    if version == 3:
      handle.attrs["redshift"] = redshift
      handle.attrs["random_seed"] = 1
      fields = group
    else:
      handle.attrs["21cmFAST-version"] = "4.0.0"
      group.attrs["redshift"] = redshift
      group.create_group("InputParameters").attrs["random_seed"] = 1
      fields = group.create_group("OutputFields")
    for name, array in arrays.items():
      fields.create_dataset(name, data=array)


@pytest.fixture(params=["numpy", "tools21cm"])
def reader(request, monkeypatch):
  """Runs a test with tools21cm's readers and again with the NumPy readers."""
  if request.param == "tools21cm":
    pytest.importorskip("tools21cm", reason="tools21cm (the 'astro' extra) is not installed")
  else:
    monkeypatch.setattr(formats, "tools21cm", lambda: None)
  return request.param


def _assert_box(snap, rho, x_hii, n_src):
  for name, got, want in (("rho", snap.rho, rho), ("x_hii", snap.x_hii, x_hii),
                          ("n_src", snap.n_src, n_src)):
    assert got.shape == SHAPE and got.dtype == np.float32, name
    np.testing.assert_array_equal(got, np.asarray(want, np.float32), err_msg=name)


# --- C2-Ray and CubeP3M.


@pytest.mark.parametrize("dtype, records", [(np.float64, True), (np.float32, True),
                                            (np.float64, False), (np.float32, False)],
                         ids=["f8-records", "f4-records", "f8-plain", "f4-plain"])
def test_c2ray_round_trip(tmp_path, reader, dtype, records):
  rho, x_hii, sources = _box()
  write_xfrac3d(tmp_path / "xfrac3d_8.397.bin", x_hii, dtype, records)
  write_cbin(tmp_path / "8.397n_all.dat", rho)
  write_sources(tmp_path / "8.397-coarsest_wsubgrid_sources.dat", sources)
  for data_format in ("auto", "c2ray"):
    snap = snapshot_lib.load_snapshot(str(tmp_path), data_format=data_format)
    _assert_box(snap, rho, x_hii.astype(dtype), _gridded(sources))
    assert snap.redshift == Z
    assert snap.paths["x_hii"] == str(tmp_path / "xfrac3d_8.397.bin")


@pytest.mark.parametrize("columns, blank_lines", [(5, False), (4, True)])
def test_c2ray_source_list_variants(tmp_path, columns, blank_lines):
  rho, x_hii, sources = _box()
  write_xfrac3d(tmp_path / "xfrac3d_8.397.bin", x_hii)
  write_cbin(tmp_path / "8.397n_all.dat", rho)
  write_sources(tmp_path / "8.397-coarsest_sources.dat", sources, columns, blank_lines)
  snap = snapshot_lib.load_snapshot(str(tmp_path))
  np.testing.assert_array_equal(snap.n_src, _gridded(sources, columns))


def test_big_endian_fortran_records(tmp_path):
  rho, x_hii, sources = _box()
  header = np.array(SHAPE, ">i4").tobytes()
  data = x_hii.astype(">f8").tobytes(order="F")
  with open(tmp_path / "xfrac3d_8.397.bin", "wb") as stream:
    for payload in (header, data):
      stream.write(struct.pack(">i", len(payload)) + payload + struct.pack(">i", len(payload)))
  write_cbin(tmp_path / "8.397n_all.dat", rho)
  write_sources(tmp_path / "8.397-coarsest_wsubgrid_sources.dat", sources)
  _assert_box(snapshot_lib.load_snapshot(str(tmp_path)), rho, x_hii, _gridded(sources))


# --- pyC2Ray.


@pytest.mark.parametrize("name", ["xfrac_z8.397.dat", "xfrac_8.397.dat", "xfrac_z8.397.npy"])
def test_pyc2ray_round_trip(tmp_path, reader, name):
  rho, x_hii, sources = _box()
  if name.endswith(".npy"):
    np.save(tmp_path / name, np.asfortranarray(x_hii))
  else:
    write_cbin(tmp_path / name, x_hii, np.float64)
  write_cbin(tmp_path / "8.397n_all.dat", rho)
  write_sources(tmp_path / "8.397-coarsest_wsubgrid_sources.dat", sources)
  for data_format in ("auto", "pyc2ray"):
    snap = snapshot_lib.load_snapshot(str(tmp_path), data_format=data_format)
    _assert_box(snap, rho, x_hii, _gridded(sources))


# --- 21cmFAST.


@pytest.mark.parametrize("version, xh_name", [(3, "xH_box"), (4, "xH_box"),
                                              (4, "neutral_fraction")])
def test_21cmfast_round_trip(tmp_path, version, xh_name):
  rho, x_hii, _ = _box()
  delta = (rho / rho.mean() - 1.0).astype(np.float32)
  neutral = (1.0 - x_hii).astype(np.float32)
  n_ion = (np.arange(np.prod(SHAPE)) % 7).reshape(SHAPE).astype(np.float32)
  redshift = 8.3974  # 21cmFAST keeps the full value in an attribute
  write_21cmfast(tmp_path / "PerturbedField_abc_r1.h5", "PerturbedField", {
      "density": delta,
      "velocity_z": -delta
  }, redshift, version)
  write_21cmfast(tmp_path / "IonizedBox_abc_r1.h5", "IonizedBox", {
      xh_name: neutral,
      "Gamma12_box": neutral
  }, redshift, version)
  write_21cmfast(tmp_path / "HaloBox_abc_r1.h5", "HaloBox", {
      "n_ion": n_ion,
      "halo_mass": n_ion + 1
  }, redshift, version)
  for data_format in ("auto", "21cmfast"):
    snap = snapshot_lib.load_snapshot(str(tmp_path), data_format=data_format)
    _assert_box(snap, np.float32(1) + delta, np.float32(1) - neutral, n_ion)
    assert snap.redshift == redshift
    assert snap.paths["x_hii"] == f"{tmp_path / 'IonizedBox_abc_r1.h5'} (IonizedBox)"
  # Matched by value with a file spelled to three decimals.
  os.remove(tmp_path / "HaloBox_abc_r1.h5")
  np.save(tmp_path / "nsrc_z8.397.npy", n_ion)
  assert snapshot_lib.list_redshifts(str(tmp_path)) == [redshift]
  np.testing.assert_array_equal(snapshot_lib.load_snapshot(str(tmp_path)).n_src, n_ion)


def test_21cmfast_halo_mass_when_n_ion_is_absent(tmp_path):
  rho, x_hii, _ = _box()
  write_21cmfast(tmp_path / "a.h5", "PerturbedField", {"density": rho - 1}, Z)
  write_21cmfast(tmp_path / "b.hdf5", "IonizedBox", {"xH_box": 1 - x_hii}, Z)
  write_21cmfast(tmp_path / "c.h5", "HaloBox", {"halo_mass": rho}, Z)
  np.testing.assert_array_equal(
      snapshot_lib.load_snapshot(str(tmp_path)).n_src, rho.astype(np.float32))


def test_21cmfast_problems_name_the_file(tmp_path):
  h5py = pytest.importorskip("h5py")
  rho, x_hii, _ = _box()
  write_21cmfast(tmp_path / "a.h5", "PerturbedField", {"density": rho - 1}, Z)
  write_21cmfast(tmp_path / "b.h5", "IonizedBox", {"xH_box": 1 - x_hii}, Z)
  write_21cmfast(tmp_path / "c.h5", "HaloBox", {"count": rho}, Z)
  with h5py.File(tmp_path / "model.h5", "w") as handle:  # other HDF5 files are ignored
    handle.create_dataset("weights", data=np.ones(3))
  with pytest.raises(
      SnapshotError, match=r"c\.h5 \(HaloBox\): field 'n_src': no dataset n_ion "
      r"or halo_mass in /HaloBox \(found: count\)"):
    snapshot_lib.load_snapshot(str(tmp_path))
  with h5py.File(tmp_path / "c.h5", "w") as handle:
    handle.create_group("HaloBox").create_dataset("n_ion", data=rho)
  with pytest.raises(SnapshotError, match=r"c\.h5: 21cmFAST HaloBox has no numeric 'redshift' "
                     "attribute"):
    snapshot_lib.load_snapshot(str(tmp_path))
  with open(tmp_path / "c.h5", "wb") as stream:
    stream.write(b"not HDF5 at all")
  with pytest.raises(SnapshotError, match=r"c\.h5: not a readable HDF5 file"):
    snapshot_lib.load_snapshot(str(tmp_path))


# --- Folders that mix layouts.


def test_mixed_folder_reads_each_field_from_its_own_layout(tmp_path, caplog):
  rho, x_hii, _ = _box()
  n_src = np.arange(np.prod(SHAPE), dtype=np.float32).reshape(SHAPE) % 3
  write_xfrac3d(tmp_path / "xfrac3d_8.397.bin", x_hii)
  write_cbin(tmp_path / "8.397n_all.dat", rho)
  np.save(tmp_path / "nsrc_z8.397.npy", n_src)
  caplog.set_level(logging.INFO, logger="absl")  # whatever --verbosity says
  snap = snapshot_lib.load_snapshot(str(tmp_path))
  _assert_box(snap, rho, x_hii, n_src)
  assert (f"{tmp_path}: z=8.397: rho: 8.397n_all.dat, n_src: nsrc_z8.397.npy, "
          "x_hii: xfrac3d_8.397.bin") in caplog.text
  # One layout only: the .npy sources are not part of the C2-Ray layout.
  with pytest.raises(SnapshotError) as error:
    snapshot_lib.load_snapshot(str(tmp_path), data_format="c2ray")
  assert str(error.value) == (
      f"{tmp_path / '8.397-coarsest_wsubgrid_sources.dat'}: missing file for field 'n_src'; "
      "expected 8.397n_all.dat, 8.397-coarsest_wsubgrid_sources.dat, xfrac3d_8.397.bin; "
      "found: 8.397n_all.dat, xfrac3d_8.397.bin")


def test_two_layouts_of_one_field_are_an_error_unless_one_is_chosen(tmp_path):
  rho, x_hii, _ = _box()
  n_src = np.zeros(SHAPE, np.float32)
  for prefix, array in (("rho", rho), ("nsrc", n_src), ("xHII", x_hii)):
    np.save(tmp_path / f"{prefix}_z8.397.npy", array)
  write_cbin(tmp_path / "8.397n_all.dat", rho * 2)
  with pytest.raises(
      SnapshotError, match=r"8\.397n_all\.dat: field 'rho' has two files at "
      r"redshifts closer than 0\.0005: 8\.397n_all\.dat \(z=8\.397\) and "
      r"rho_z8\.397\.npy \(z=8\.397\); keep one, or choose a layout with "
      "--data_format"):
    snapshot_lib.load_snapshot(str(tmp_path))
  snap = snapshot_lib.load_snapshot(str(tmp_path), data_format="npy")
  np.testing.assert_array_equal(snap.rho, rho.astype(np.float32))


# --- Broken files: one line naming the file and the problem.


def test_binary_of_the_wrong_size(tmp_path):
  rho, x_hii, sources = _box()
  write_xfrac3d(tmp_path / "xfrac3d_8.397.bin", x_hii)
  write_cbin(tmp_path / "8.397n_all.dat", rho)
  write_sources(tmp_path / "8.397-coarsest_wsubgrid_sources.dat", sources)
  with open(tmp_path / "8.397n_all.dat", "ab") as stream:
    stream.write(b"\0\0")
  with pytest.raises(SnapshotError) as error:
    snapshot_lib.load_snapshot(str(tmp_path))
  assert str(error.value) == (
      f"{tmp_path / '8.397n_all.dat'}: field 'rho' is not a C2-Ray/CubeP3M binary: its header "
      "reads as mesh sizes (5, 6, 7), so it should hold 852 bytes (float32) or 1692 bytes "
      "(float64), 16 more with Fortran record markers, but it holds 854 bytes")


def test_binary_declaring_more_than_memory(tmp_path, monkeypatch):
  _, x_hii, _ = _box()
  rho = np.ones(SHAPE)
  write_xfrac3d(tmp_path / "xfrac3d_8.397.bin", x_hii)
  with open(tmp_path / "8.397n_all.dat", "wb") as stream:
    stream.write(np.array((4096, 4096, 1600), np.int32).tobytes())
    stream.truncate(12 + 4 * 4096 * 4096 * 1600)  # sparse, 100 GiB
  np.save(tmp_path / "nsrc_z8.397.npy", rho)
  monkeypatch.setattr(formats, "available_memory", lambda: 2 ** 30)
  try:
    with pytest.raises(
        SnapshotError, match=r"8\.397n_all\.dat: field 'rho' declares shape "
        r"\(4096, 4096, 1600\) of float32: loading it needs \d+ bytes \(\d+ GB\) "
        r"of memory but 1073741824 bytes \(1\.07 GB\) are available"):
      snapshot_lib.load_snapshot(str(tmp_path))
  finally:
    os.remove(tmp_path / "8.397n_all.dat")


def test_fifo_binary_is_refused(tmp_path):
  os.mkfifo(tmp_path / "xfrac3d_8.397.bin")
  write_cbin(tmp_path / "8.397n_all.dat", np.ones(SHAPE))
  np.save(tmp_path / "nsrc_z8.397.npy", np.ones(SHAPE))
  with pytest.raises(SnapshotError, match=r"xfrac3d_8\.397\.bin: field 'x_hii' is a FIFO"):
    snapshot_lib.load_snapshot(str(tmp_path))


@pytest.mark.parametrize("text, message", [
    ("2\n1 1 1 1.0 0.0\n", r"declares 2 sources but holds 1 lines of 5 numbers"),
    ("1\n1 1 8 1.0 0.0\n", r"source 1 lies at cell \(1, 1, 8\), outside the mesh \(5, 6, 7\)"),
    ("1\n0 1 1 1.0 0.0\n", r"source 1 lies at cell \(0, 1, 1\), outside the mesh"),
    ("1\n1.5 1 1 1.0 0.0\n", r"source 1 lies at cell \(1\.5, 1, 1\)"),
    ("sources\n", r"is not a C2-Ray source list \(its first line must start with the number"),
    ("1\n1 1 1 one 0\n", r"is not a C2-Ray source list \("),
    ("1\n1 1 1 -1.0 0.0\n", r"field 'n_src' has negative source in 1 of 210 cells"),
])
def test_bad_source_lists(tmp_path, text, message):
  rho, x_hii, _ = _box()
  write_xfrac3d(tmp_path / "xfrac3d_8.397.bin", x_hii)
  write_cbin(tmp_path / "8.397n_all.dat", rho)
  path = tmp_path / "8.397-coarsest_wsubgrid_sources.dat"
  path.write_text(text, encoding="ascii")
  with pytest.raises(SnapshotError, match=message) as error:
    snapshot_lib.load_snapshot(str(tmp_path))
  assert str(error.value).startswith(str(path)) and "\n" not in str(error.value)


# --- tools21cm: its writers make the layouts above, and it converts source masses.


def test_tools21cm_writers_make_the_documented_layouts(tmp_path, monkeypatch):
  t2c = pytest.importorskip("tools21cm", reason="tools21cm (the 'astro' extra) is not installed")
  monkeypatch.setattr(formats, "tools21cm", lambda: None)  # read with the NumPy readers
  rho, x_hii, sources = _box()
  t2c.XfracFile().write_to_file(str(tmp_path / "xfrac3d_8.397.bin"), x_hii, binary_format=True)
  t2c.DensityFile().write_to_file(str(tmp_path / "8.397n_all.dat"), raw_density=rho)
  write_sources(tmp_path / "8.397-coarsest_wsubgrid_sources.dat", sources)
  _assert_box(snapshot_lib.load_snapshot(str(tmp_path)), rho, x_hii, _gridded(sources))
  os.remove(tmp_path / "xfrac3d_8.397.bin")
  t2c.save_cbin(str(tmp_path / "xfrac_z8.397.dat"), x_hii, bits=64, order="F")
  _assert_box(snapshot_lib.load_snapshot(str(tmp_path)), rho, x_hii, _gridded(sources))


def test_box_size_gives_source_masses_in_solar_masses(tmp_path):
  rho, x_hii, sources = _box()
  write_xfrac3d(tmp_path / "xfrac3d_8.397.bin", x_hii)
  write_cbin(tmp_path / "8.397n_all.dat", rho)
  write_sources(tmp_path / "8.397-coarsest_wsubgrid_sources.dat", sources)
  t2c = formats.tools21cm()
  if t2c is None:
    with pytest.raises(
        SnapshotError, match=r"--box_size_mpc=244: converting C2-Ray source "
        "masses to solar masses needs tools21cm"):
      snapshot_lib.load_snapshot(str(tmp_path), box_size_mpc=244)
    return
  before = t2c.conv.M_grid
  snap = snapshot_lib.load_snapshot(str(tmp_path), box_size_mpc=114)
  assert t2c.conv.M_grid == before  # tools21cm's module constants are restored
  t2c.conv.set_sim_constants(114)
  try:
    per_grid_mass = t2c.conv.M_grid * t2c.const.solar_masses_per_gram
  finally:
    t2c.conv.set_sim_constants(244)
  grid = np.zeros(SHAPE)
  for i, j, k, massive, small in sources:
    grid[i - 1, j - 1, k - 1] += (massive + small) * per_grid_mass
  np.testing.assert_allclose(snap.n_src, grid.astype(np.float32), rtol=1e-6)
  with pytest.raises(SnapshotError, match=r"--box_size_mpc=100: Invalid boxsize"):
    snapshot_lib.load_snapshot(str(tmp_path), box_size_mpc=100)


# --- The command-line flags reach the loader.


class _FlagValues(dict):
  """Just what `cli.load_box_from_flags` reads of parsed flags."""

  __getattr__ = dict.__getitem__


def test_format_flags_are_passed_to_the_loader(tmp_path):
  from keras_cnn import cli

  rho, x_hii, _ = _box()
  for prefix, array in (("rho", rho), ("nsrc", np.zeros(SHAPE)), ("xHII", x_hii)):
    np.save(tmp_path / f"{prefix}_z8.397.npy", array)
  write_cbin(tmp_path / "8.397n_all.dat", rho * 2)  # a second density file: auto refuses
  flag_values = _FlagValues(data_dir=str(tmp_path), redshift=None, dataset="synthetic",
                            split="test", tfds_data_dir=None, n_cells=8, mean_xhii=0.5, data_seed=0,
                            data_format="auto", box_size_mpc=None)
  with pytest.raises(SnapshotError, match="choose a layout with --data_format"):
    cli.load_box_from_flags(radius=1, require_target=True, flag_values=flag_values)
  for data_format, want in (("npy", rho), ("c2ray", None)):
    flag_values["data_format"] = data_format
    if want is None:
      with pytest.raises(SnapshotError, match="missing file for field 'n_src'"):
        cli.load_box_from_flags(radius=1, require_target=True, flag_values=flag_values)
      continue
    (box,) = cli.load_box_from_flags(radius=1, require_target=True, flag_values=flag_values)
    np.testing.assert_array_equal(box.rho, want.astype(np.float32))


def test_bad_format_flag_values_are_rejected():
  from absl import flags
  from absl.testing import flagsaver

  from keras_cnn import cli_flags

  cli_flags.define_format_flags()
  with flagsaver.flagsaver():
    for arg, message in (("--box_size_mpc=-1", "--box_size_mpc must be a finite number > 0"),
                         ("--data_format=gadget", "value should be one of")):
      flags.FLAGS.unparse_flags()
      with pytest.raises(flags.IllegalFlagValueError, match=message):
        flags.FLAGS(["prog", arg])
    flags.FLAGS.unparse_flags()

"""Loading, checking and saving user snapshots in the original C2-Ray naming."""

import os

import numpy as np
import pytest

from keras_cnn.data import snapshot as snapshot_lib
from keras_cnn.data.snapshot import Snapshot, SnapshotError

Z = 8.397


def _fields(shape=(8, 8, 8), seed=0):
  rng = np.random.default_rng(seed)
  return {
      "rho": rng.uniform(1e-28, 5e-28, shape),
      "nsrc": rng.poisson(0.2, shape).astype(np.float64),
      "xHII": rng.uniform(0.0, 1.0, shape),
  }


def _write(folder, fields=None, redshift=Z):
  folder.mkdir(parents=True, exist_ok=True)
  for prefix, array in (fields or _fields()).items():
    np.save(folder / f"{prefix}_z{redshift:.3f}.npy", array, allow_pickle=True)
  return str(folder)


def _object_array():
  array = np.empty((2, 2, 2), dtype=object)
  array[...] = {"not": "numbers"}
  return array


def _with(prefix, value):
  fields = _fields()
  fields[prefix] = value
  return fields


def _poke(prefix, index, value):
  fields = _fields()
  fields[prefix] = fields[prefix].copy()
  for i, v in zip(index, value):
    fields[prefix][i] = v
  return fields


BAD_FIELDS = [
    ("different shapes", _with("xHII", np.full((8, 8, 4), 0.5)),
     r"xHII_z8\.397\.npy: field 'x_hii' has shape \(8, 8, 4\), but 'rho' has shape \(8, 8, 8\)"),
    ("not 3-D", _with("rho", np.ones((8, 64))),
     r"rho_z8\.397\.npy: field 'rho' is 2-D with shape \(8, 64\), expected a 3-D box"),
    ("NaN and Inf", _poke("nsrc", [(0, 0, 0), (1, 1, 1), (2, 2, 2)], [np.nan, np.nan, np.inf]),
     r"nsrc_z8\.397\.npy: field 'n_src' has 3 non-finite values \(2 NaN, 1 Inf\) of 512"),
    ("negative density", _poke("rho", [(0, 0, 0)], [-1e-28]),
     r"rho_z8\.397\.npy: field 'rho' has negative density in 1 of 512 cells \(min -1e-28\)"),
    ("negative sources", _poke("nsrc", [(0, 0, 0), (0, 0, 1)], [-1.0, -2.0]),
     r"nsrc_z8\.397\.npy: field 'n_src' has negative source in 2 of 512 cells"),
    ("x_HII outside [0, 1]", _poke("xHII", [(0, 0, 0), (3, 3, 3)], [-0.1, 1.2]),
     r"xHII_z8\.397\.npy: field 'x_hii' is outside \[0, 1\] in 2 of 512 cells "
     r"\(min -0\.1, max 1\.2\)"),
    ("object array", _with("rho", _object_array()),
     r"rho_z8\.397\.npy: field 'rho' is an object/pickled array"),
    ("empty array", _with("xHII", np.zeros(
        (0, 8, 8))), r"xHII_z8\.397\.npy: field 'x_hii' is empty \(shape \(0, 8, 8\)\)"),
    ("complex numbers", _with("rho", np.ones((8, 8, 8), np.complex64)),
     r"rho_z8\.397\.npy: field 'rho' has dtype complex64, expected real numbers"),
    ("zero density", _with("rho", np.zeros(
        (8, 8, 8))), r"rho_z8\.397\.npy: field 'rho' is zero everywhere"),
]


@pytest.mark.parametrize("fields, message", [c[1:] for c in BAD_FIELDS],
                         ids=[c[0] for c in BAD_FIELDS])
def test_bad_field_is_named_in_one_line(tmp_path, fields, message):
  data_dir = _write(tmp_path / "box", fields)
  with pytest.raises(SnapshotError, match=message) as error:
    snapshot_lib.load_snapshot(data_dir)
  assert "\n" not in str(error.value)
  assert str(error.value).startswith(data_dir)


def test_missing_file_lists_expected_and_found(tmp_path):
  fields = _fields()
  del fields["nsrc"]
  data_dir = _write(tmp_path / "box", fields)
  with pytest.raises(SnapshotError) as error:
    snapshot_lib.load_snapshot(data_dir)
  assert str(error.value) == (
      f"{os.path.join(data_dir, 'nsrc_z8.397.npy')}: missing file for field 'n_src'; "
      "expected rho_z8.397.npy, nsrc_z8.397.npy, xHII_z8.397.npy; "
      "found: rho_z8.397.npy, xHII_z8.397.npy")


def test_missing_target_only_matters_for_training(tmp_path):
  fields = _fields()
  del fields["xHII"]
  data_dir = _write(tmp_path / "box", fields)
  with pytest.raises(SnapshotError, match=r"xHII_z8\.397\.npy: missing file for field 'x_hii'"):
    snapshot_lib.load_snapshot(data_dir)
  snap = snapshot_lib.load_snapshot(data_dir, require_target=False)
  assert snap.x_hii is None and snap.rho.shape == (8, 8, 8)


def test_truncated_file(tmp_path):
  data_dir = _write(tmp_path / "box")
  path = os.path.join(data_dir, "rho_z8.397.npy")
  with open(path, "rb") as stream:
    head = stream.read(100)
  with open(path, "wb") as stream:
    stream.write(head)
  with pytest.raises(SnapshotError, match=r"rho_z8\.397\.npy: field 'rho' is not a readable \.npy"):
    snapshot_lib.load_snapshot(data_dir)


def test_folder_problems(tmp_path):
  with pytest.raises(SnapshotError, match="nowhere: no such folder"):
    snapshot_lib.load_snapshot(str(tmp_path / "nowhere"))
  (tmp_path / "empty").mkdir()
  np.save(tmp_path / "empty" / "density.npy", np.ones(3))
  with pytest.raises(
      SnapshotError, match=r"no snapshot files; expected rho_z\{z:\.3f\}\.npy.*"
      r"found: density\.npy"):
    snapshot_lib.load_snapshot(str(tmp_path / "empty"))


def test_redshift_selection(tmp_path):
  folder = tmp_path / "box"
  _write(folder, _fields(seed=1), redshift=8.397)
  _write(folder, _fields(seed=2), redshift=7.305)
  data_dir = str(folder)
  assert snapshot_lib.list_redshifts(data_dir) == [7.305, 8.397]
  with pytest.raises(SnapshotError,
                     match=r"several redshifts \(7\.305, 8\.397\); pick one with --redshift"):
    snapshot_lib.load_snapshot(data_dir)
  with pytest.raises(SnapshotError,
                     match=r"no snapshot at --redshift=6\.905; available: 7\.305, 8\.397"):
    snapshot_lib.load_snapshot(data_dir, redshift=6.905)
  snap = snapshot_lib.load_snapshot(data_dir, redshift=7.3050001)
  assert snap.redshift == 7.305
  np.testing.assert_array_equal(snap.rho, _fields(seed=2)["rho"].astype(np.float32))


def test_load_converts_to_float32(tmp_path):
  fields = _fields()
  fields["nsrc"] = fields["nsrc"].astype(np.int64)
  snap = snapshot_lib.load_snapshot(_write(tmp_path / "box", fields))
  for field in ("rho", "n_src", "x_hii"):
    assert getattr(snap, field).dtype == np.float32 and getattr(snap, field).flags.writeable
  assert snap.name == str(tmp_path / "box") and snap.redshift == Z


@pytest.mark.parametrize("radius, ok", [(3, True), (4, False)])
def test_non_cubic_box_and_radius(tmp_path, radius, ok):
  data_dir = _write(tmp_path / "box", _fields(shape=(12, 16, 7)))
  if ok:
    assert snapshot_lib.load_snapshot(data_dir, radius=radius).shape == (12, 16, 7)
  else:
    with pytest.raises(
        SnapshotError, match=r"rho_z8\.397\.npy: box shape \(12, 16, 7\) is too "
        r"small for --radius=4: a crop needs 2r\+1 = 9 cells but axis 2 has 7"):
      snapshot_lib.load_snapshot(data_dir, radius=radius)


def test_validate_in_memory_snapshot_names_it():
  snap = Snapshot(rho=np.ones((4, 4, 4), np.float32), n_src=np.zeros((4, 4, 4), np.float32),
                  x_hii=None, redshift=Z, name="synthetic(seed=3)")
  snapshot_lib.validate_snapshot(snap, require_target=False)
  with pytest.raises(SnapshotError, match=r"synthetic\(seed=3\): field 'x_hii' is missing"):
    snapshot_lib.validate_snapshot(snap)


def test_save_then_load_round_trips(tmp_path):
  fields = {k: v.astype(np.float32) for k, v in _fields(shape=(6, 8, 10)).items()}
  snap = Snapshot(rho=fields["rho"], n_src=fields["nsrc"], x_hii=fields["xHII"], redshift=7.305)
  written = snapshot_lib.save_snapshot(snap, str(tmp_path / "out"))
  assert sorted(os.listdir(tmp_path /
                           "out")) == ["nsrc_z7.305.npy", "rho_z7.305.npy", "xHII_z7.305.npy"]
  assert written["rho"] == str(tmp_path / "out" / "rho_z7.305.npy")
  loaded = snapshot_lib.load_snapshot(str(tmp_path / "out"))
  for field in ("rho", "n_src", "x_hii"):
    assert getattr(loaded, field).tobytes() == getattr(snap, field).tobytes()


def test_save_refuses_bad_data_and_writes_nothing_on_failure(tmp_path, monkeypatch):
  good = {k: v.astype(np.float32) for k, v in _fields().items()}
  snap = Snapshot(rho=good["rho"], n_src=good["nsrc"], x_hii=good["xHII"] * 2.0, redshift=Z)
  with pytest.raises(SnapshotError, match="outside"):
    snapshot_lib.save_snapshot(snap, str(tmp_path / "out"))
  assert not (tmp_path / "out").exists()

  snap.x_hii = good["xHII"]
  real_save = np.save
  calls = []

  def failing_save(*args, **kwargs):
    calls.append(1)
    if len(calls) == 3:
      raise OSError("disk full")
    real_save(*args, **kwargs)

  monkeypatch.setattr(np, "save", failing_save)
  with pytest.raises(OSError, match="disk full"):
    snapshot_lib.save_snapshot(snap, str(tmp_path / "out"))
  assert os.listdir(tmp_path / "out") == []


def test_overdensity_has_zero_mean():
  rho = _fields()["rho"].astype(np.float32)
  delta = snapshot_lib.overdensity(rho)
  assert delta.dtype == np.float32
  assert abs(float(delta.mean())) < 1e-6


# --- Files that are not what their name says: refused before they are opened or read.


@pytest.fixture
def no_hang():
  """Fails a test that blocks (e.g. by opening a FIFO) instead of hanging the suite."""
  import signal

  def _timeout(signum, frame):
    raise TimeoutError("the loader blocked")

  previous = signal.signal(signal.SIGALRM, _timeout)
  signal.alarm(20)
  yield
  signal.alarm(0)
  signal.signal(signal.SIGALRM, previous)


def test_fifo_is_refused_without_being_opened(tmp_path, no_hang):
  fields = _fields()
  del fields["rho"]
  data_dir = _write(tmp_path / "box", fields)
  os.mkfifo(os.path.join(data_dir, "rho_z8.397.npy"))
  with pytest.raises(SnapshotError) as error:
    snapshot_lib.load_snapshot(data_dir)
  assert str(error.value) == (f"{os.path.join(data_dir, 'rho_z8.397.npy')}: field 'rho' is a "
                              "FIFO (named pipe), not a regular file")


def test_folder_named_like_a_field_is_refused(tmp_path):
  fields = _fields()
  del fields["xHII"]
  data_dir = _write(tmp_path / "box", fields)
  os.mkdir(os.path.join(data_dir, "xHII_z8.397.npy"))
  with pytest.raises(SnapshotError, match=r"xHII_z8\.397\.npy: field 'x_hii' is a folder, not a "
                     "regular file"):
    snapshot_lib.load_snapshot(data_dir)


@pytest.mark.parametrize(
    "content",
    [b"density in g/cm^3\n1.0 2.0 3.0\n", b"", b"\x80\x04\x95pickle", b"PK\x03\x04 an npz archive"],
    ids=["text", "empty", "pickle", "npz"])
def test_non_npy_content_is_refused(tmp_path, content):
  data_dir = _write(tmp_path / "box")
  path = os.path.join(data_dir, "nsrc_z8.397.npy")
  with open(path, "wb") as stream:
    stream.write(content)
  with pytest.raises(SnapshotError) as error:
    snapshot_lib.load_snapshot(data_dir)
  assert str(error.value).startswith(f"{path}: field 'n_src' is not a NumPy .npy file")
  assert "\n" not in str(error.value)


def _npy_header(path, shape, descr="<f8"):
  """Writes only the .npy header of an array of `shape`; returns the header length."""
  with open(path, "wb") as stream:
    np.lib.format.write_array_header_1_0(stream, {
        "descr": descr,
        "fortran_order": False,
        "shape": shape
    })
    return stream.tell()


BIG_SHAPE = (2048, 2048, 3200)  # 100 GiB of float64


def test_header_larger_than_the_file_is_refused(tmp_path):
  data_dir = _write(tmp_path / "box")
  path = os.path.join(data_dir, "rho_z8.397.npy")
  _npy_header(path, BIG_SHAPE)
  with open(path, "ab") as stream:
    stream.write(b"\0" * 4096)
  with pytest.raises(SnapshotError) as error:
    snapshot_lib.load_snapshot(data_dir)
  assert str(error.value) == (
      f"{path}: field 'rho' is not a readable .npy file (truncated: the header declares shape "
      "(2048, 2048, 3200) of float64, 107374182400 bytes, but the file holds 4096 bytes after "
      "the header)")


def test_sparse_file_larger_than_memory_is_refused_before_allocation(tmp_path, monkeypatch):
  from keras_cnn.data import formats

  data_dir = _write(tmp_path / "box")
  path = os.path.join(data_dir, "rho_z8.397.npy")
  offset = _npy_header(path, BIG_SHAPE)
  try:
    with open(path, "r+b") as stream:
      stream.truncate(offset + 8 * int(np.prod(BIG_SHAPE)))  # sparse: no blocks written
    monkeypatch.setattr(formats, "available_memory", lambda: 8 * 2 ** 30)
    monkeypatch.setattr(np, "load", None)  # reading would be a bug: fail loudly
    with pytest.raises(SnapshotError) as error:
      snapshot_lib.load_snapshot(data_dir)
  finally:
    os.remove(path)
  assert str(error.value) == (
      f"{path}: field 'rho' declares shape (2048, 2048, 3200) of float64: loading it needs "
      "53687091200 bytes (53.7 GB) of memory but 8589934592 bytes (8.59 GB) are available")


def test_available_memory_is_known_on_linux():
  from keras_cnn.data import formats

  available = formats.available_memory()
  assert available is None or available > 0


def test_bytes_beyond_the_array_are_refused(tmp_path):
  data_dir = _write(tmp_path / "box")
  path = os.path.join(data_dir, "xHII_z8.397.npy")
  with open(path, "ab") as stream:
    stream.write(b"\0" * 8)
  with pytest.raises(
      SnapshotError, match=r"xHII_z8\.397\.npy: field 'x_hii' is not a readable "
      r"\.npy file \(longer than its header says: .* 4096 bytes, but the file "
      r"holds 4104 bytes"):
    snapshot_lib.load_snapshot(data_dir)


def test_float32_npy_is_memory_mapped_copy_on_write(tmp_path):
  fields = {k: v.astype(np.float32) for k, v in _fields().items()}
  data_dir = _write(tmp_path / "box", fields)
  snap = snapshot_lib.load_snapshot(data_dir)
  assert isinstance(snap.rho, np.memmap) and snap.rho.flags.writeable
  snap.rho[0, 0, 0] = 1.0  # stays in this process
  on_disk = np.load(os.path.join(data_dir, "rho_z8.397.npy"))
  np.testing.assert_array_equal(on_disk, fields["rho"])
  np.testing.assert_array_equal(snap.x_hii, fields["xHII"])


# --- Redshifts: matched by value, not by their three-decimal spelling.


def test_nearby_redshifts_are_not_confused(tmp_path):
  folder = tmp_path / "box"
  folder.mkdir()
  for redshift, seed in (("8.4", 1), ("8.3974", 2)):
    for prefix, array in _fields(seed=seed).items():
      np.save(folder / f"{prefix}_z{redshift}.npy", array)
  data_dir = str(folder)
  assert snapshot_lib.list_redshifts(data_dir) == [8.3974, 8.4]
  with pytest.raises(SnapshotError, match=r"several redshifts \(8\.3974, 8\.400\)"):
    snapshot_lib.load_snapshot(data_dir)
  for redshift, seed in ((8.4, 1), (8.3974, 2)):
    snap = snapshot_lib.load_snapshot(data_dir, redshift=redshift)
    assert snap.redshift == redshift
    np.testing.assert_array_equal(snap.rho, _fields(seed=seed)["rho"].astype(np.float32))
  with pytest.raises(SnapshotError, match=r"no snapshot at --redshift=8\.399; available: "
                     r"8\.3974, 8\.400"):
    snapshot_lib.load_snapshot(data_dir, redshift=8.399)


def test_fields_match_across_spellings_within_the_tolerance(tmp_path):
  folder = tmp_path / "box"
  folder.mkdir()
  fields = _fields()
  np.save(folder / "rho_z8.3974.npy", fields["rho"])
  np.save(folder / "nsrc_z8.397.npy", fields["nsrc"])
  np.save(folder / "xHII_z8.3971.npy", fields["xHII"])
  assert snapshot_lib.list_redshifts(str(folder)) == [8.3974]
  snap = snapshot_lib.load_snapshot(str(folder), redshift=8.397)
  assert snap.redshift == 8.3974
  assert snap.paths["x_hii"] == str(folder / "xHII_z8.3971.npy")


def test_two_files_of_one_field_within_the_tolerance_are_an_error(tmp_path):
  data_dir = _write(tmp_path / "box")
  np.save(os.path.join(data_dir, "rho_z8.3972.npy"), _fields()["rho"])
  with pytest.raises(SnapshotError) as error:
    snapshot_lib.list_redshifts(data_dir)
  assert str(error.value) == (
      f"{os.path.join(data_dir, 'rho_z8.397.npy')}: field 'rho' has two files at redshifts "
      "closer than 0.0005: rho_z8.397.npy (z=8.397) and rho_z8.3972.npy (z=8.3972); keep one, "
      "or choose a layout with --data_format")


def test_chained_redshifts_are_an_error(tmp_path):
  folder = tmp_path / "box"
  folder.mkdir()
  fields = _fields()
  np.save(folder / "rho_z8.3970.npy", fields["rho"])
  np.save(folder / "xHII_z8.3974.npy", fields["xHII"])
  np.save(folder / "nsrc_z8.3978.npy", fields["nsrc"])
  with pytest.raises(
      SnapshotError, match=r"nsrc_z8\.3978\.npy: redshift 8\.3978 is within "
      r"0\.0005 of xHII_z8\.3974\.npy \(z=8\.3974\) but not of the rest"):
    snapshot_lib.load_snapshot(str(folder))


def test_missing_field_names_the_nearest_file_of_that_field(tmp_path):
  fields = _fields()
  nsrc = fields.pop("nsrc")
  data_dir = _write(tmp_path / "box", fields)
  np.save(os.path.join(data_dir, "nsrc_z8.398.npy"), nsrc)
  with pytest.raises(SnapshotError) as error:
    snapshot_lib.load_snapshot(data_dir, redshift=8.397)
  assert str(error.value).endswith(
      "found: rho_z8.397.npy, xHII_z8.397.npy (the nearest file of 'n_src' is "
      "nsrc_z8.398.npy at z=8.398)")

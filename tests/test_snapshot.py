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
    ("empty array", _with("xHII", np.zeros((0, 8, 8))),
     r"xHII_z8\.397\.npy: field 'x_hii' is empty \(shape \(0, 8, 8\)\)"),
    ("complex numbers", _with("rho", np.ones((8, 8, 8), np.complex64)),
     r"rho_z8\.397\.npy: field 'rho' has dtype complex64, expected real numbers"),
    ("zero density", _with("rho", np.zeros((8, 8, 8))),
     r"rho_z8\.397\.npy: field 'rho' is zero everywhere"),
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
  with pytest.raises(SnapshotError, match=r"no snapshot files; expected rho_z\{z:\.3f\}\.npy.*"
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
    with pytest.raises(SnapshotError, match=r"rho_z8\.397\.npy: box shape \(12, 16, 7\) is too "
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
  assert sorted(os.listdir(tmp_path / "out")) == [
      "nsrc_z7.305.npy", "rho_z7.305.npy", "xHII_z7.305.npy"]
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

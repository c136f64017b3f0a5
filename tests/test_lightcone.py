"""`python -m keras_cnn.lightcone` and `keras_cnn.lightcones`: lightcones of a painted
history, built with tools21cm."""

import json
import os

import numpy as np
import pytest
from absl import app
from absl import flags

pytest.importorskip("tools21cm")

from keras_cnn import cli_flags  # noqa: E402
from keras_cnn import lightcone  # noqa: E402
from keras_cnn import lightcones  # noqa: E402
from keras_cnn import metrics  # noqa: E402
from keras_cnn.data import simulate  # noqa: E402
from keras_cnn.data import snapshot as snapshot_lib  # noqa: E402
from keras_cnn.errors import UserError  # noqa: E402

CELLS = 16
HISTORY = ((7.0, 0.8), (8.0, 0.5), (9.0, 0.2))  # (redshift, mean x_HII)


@pytest.fixture(scope="module")
def history(tmp_path_factory):
  """(data_dir, maps_dir): three simulated snapshots, and maps equal to their targets (a
  perfect emulator) with an index.json as predict writes it."""
  root = tmp_path_factory.mktemp("history")
  data_dir, maps_dir = str(root / "boxes"), str(root / "painted")
  os.makedirs(maps_dir)
  records = []
  for seed, (redshift, mean_xhii) in enumerate(HISTORY):
    box = simulate.simulate_snapshot(n_cells=CELLS, seed=seed, redshift=redshift,
                                     mean_xhii=mean_xhii)
    snapshot_lib.save_snapshot(box, data_dir)
    name = snapshot_lib.snapshot_filename("x_hii", redshift)
    np.save(os.path.join(maps_dir, name), box.x_hii)
    records.append({
        "redshift": redshift,
        "file": name,
        "mean_xhii": float(box.x_hii.mean()),
        "seconds": 0.1
    })
  with open(os.path.join(maps_dir, "index.json"), "w") as stream:
    json.dump(records, stream)
  return data_dir, maps_dir


def _run(*args):
  """Runs the command's main in this process on flags of its own."""
  flag_values = flags.FlagValues()
  cli_flags.define_lightcone_flags(flag_values)
  flag_values(["lightcone", *args])
  lightcone.main(["lightcone"], flag_values)


@pytest.fixture(scope="module")
def built(history, tmp_path_factory):
  """The output folder of the command on `history` along axis 0, and the npz loaded."""
  data_dir, maps_dir = history
  out = str(tmp_path_factory.mktemp("lightcone") / "out")
  _run(f"--maps={maps_dir}", f"--data_dir={data_dir}", f"--out={out}")
  with np.load(os.path.join(out, lightcones.LIGHTCONE_FILE)) as saved:
    return out, dict(saved)


def test_lightcone_spans_the_maps_with_redshift_growing_along_the_line_of_sight(built):
  out, cone = built
  assert cone["xhii"].shape[:2] == (CELLS, CELLS)
  assert cone["dtb"].shape == cone["xhii"].shape
  length = cone["xhii"].shape[2]
  assert cone["redshift"].shape == cone["comoving_distance_mpc"].shape == (length,)
  assert cone["redshift"][0] == pytest.approx(7.0)
  assert cone["redshift"][-1] < 9.0
  assert (np.diff(cone["redshift"]) > 0).all()
  # one slice per cell of comoving distance, from 7 to 9 a few hundred cMpc
  np.testing.assert_allclose(np.diff(cone["comoving_distance_mpc"]), 2.381, rtol=1e-3)
  assert length > 2 * CELLS
  assert 0.0 <= cone["xhii"].min() and cone["xhii"].max() <= 1.0
  assert np.isfinite(cone["dtb"]).all() and cone["dtb"].min() >= 0.0
  assert int(cone["los_axis"]) == 0
  for name in (lightcones.LIGHTCONE_PNG, lightcones.GLOBAL_HISTORY_PNG):
    assert os.path.getsize(os.path.join(out, name)) > 0


def test_a_perfect_emulator_has_the_true_global_history(built, history):
  _, cone = built
  data_dir, _ = history
  np.testing.assert_array_equal(cone["map_redshift"], [z for z, _ in HISTORY])
  truth = [snapshot_lib.load_snapshot(data_dir, z).x_hii.mean(dtype=np.float64) for z, _ in HISTORY]
  np.testing.assert_allclose(cone["mean_xhii"], truth, rtol=1e-12)
  np.testing.assert_allclose(cone["mean_xhii_true"], truth, rtol=1e-12)
  # reionization runs forward in time: less ionized at higher redshift along the cone
  assert cone["lightcone_mean_xhii"][0] > cone["lightcone_mean_xhii"][-1]


def test_the_first_slice_is_the_lowest_redshift_box_along_the_chosen_axis(history):
  data_dir, maps_dir = history
  found = lightcones.read_history(maps_dir, data_dir)
  box = snapshot_lib.load_snapshot(data_dir, 7.0)
  for axis in (0, 2):
    cone = lightcones.build_lightcones(found, axis=axis, z_range=(7.0, 7.5))
    assert cone["redshift"][-1] < 7.5
    np.testing.assert_allclose(cone["xhii"][:, :, 0], np.take(box.x_hii, 0, axis=axis), atol=1e-6)
    dtb = metrics.brightness_temperature(box.x_hii, box.n_igm, 7.0)
    np.testing.assert_allclose(cone["dtb"][:, :, 0], np.take(dtb, 0, axis=axis), rtol=1e-5)


def test_the_global_history_is_that_of_the_maps_not_of_the_targets(history, tmp_path):
  data_dir, maps_dir = history
  painted = str(tmp_path / "painted")
  os.makedirs(painted)
  for redshift, _ in HISTORY:
    name = snapshot_lib.snapshot_filename("x_hii", redshift)
    target = np.load(os.path.join(maps_dir, name))
    np.save(os.path.join(painted, name), np.clip(target + 0.1, 0, 1))
  found = lightcones.read_history(painted, data_dir)
  assert (found.mean_xhii > found.mean_xhii_true).all()
  np.testing.assert_allclose(found.mean_xhii_true, [m for _, m in HISTORY], atol=0.01)


def test_bad_histories_fail_before_any_work_with_one_line(history, tmp_path):
  data_dir, maps_dir = history
  one = tmp_path / "one"
  one.mkdir()
  np.save(one / "xHII_z7.000.npy", np.load(os.path.join(maps_dir, "xHII_z7.000.npy")))
  with pytest.raises(UserError, match=r"--maps=.*one: a lightcone needs maps at 2 or more"):
    lightcones.read_history(str(one), data_dir)
  with pytest.raises(UserError, match=r"--maps=.*empty: no x_HII maps xHII_z"):
    (tmp_path / "empty").mkdir()
    lightcones.read_history(str(tmp_path / "empty"), data_dir)
  small = tmp_path / "small"
  small.mkdir()
  for redshift, _ in HISTORY:
    np.save(small / snapshot_lib.snapshot_filename("x_hii", redshift), np.zeros((8, 8, 8)))
  with pytest.raises(
      UserError, match=r"xHII_z7.000.npy: the map has shape \(8, 8, 8\) but the "
      r"density of z=7.000 .* has shape \(16, 16, 16\)"):
    lightcones.read_history(str(small), data_dir)
  elsewhere = tmp_path / "elsewhere"
  elsewhere.mkdir()
  for redshift in (7.0, 10.0):
    np.save(elsewhere / snapshot_lib.snapshot_filename("x_hii", redshift), np.zeros((16,) * 3))
  with pytest.raises(UserError, match=r"xHII_z10.000.npy: --data_dir=.* has no density at z=10"):
    lightcones.read_history(str(elsewhere), data_dir)
  flat = str(tmp_path / "flat")
  for seed, (redshift, mean_xhii) in enumerate(HISTORY[:2]):
    snapshot_lib.save_snapshot(
        simulate.simulate_snapshot(n_cells=(CELLS, CELLS, 8), seed=seed, redshift=redshift,
                                   mean_xhii=mean_xhii), flat)
  with pytest.raises(
      UserError, match=r"boxes of shape \(16, 16, 8\); tools21cm builds "
      "lightcones of cubic boxes only"):
    lightcones.read_history(flat, flat)
  with pytest.raises(UserError, match=r"--z_range=6,8 reaches beyond the maps"):
    _run(f"--maps={maps_dir}", f"--data_dir={data_dir}", f"--out={tmp_path / 'o'}", "--z_range=6,8")
  assert not (tmp_path / "o").exists()


def test_command_writes_the_lightcone(history, tmp_path, run_module):
  data_dir, maps_dir = history
  out = tmp_path / "out"
  result = run_module("keras_cnn.lightcone", f"--maps={maps_dir}", f"--data_dir={data_dir}",
                      f"--out={out}", "--axis=1", "--z_range=7.5,8.5")
  assert result.returncode == 0, result.stderr
  assert "Wrote x_HII and dT_b lightcones" in result.stdout
  with np.load(out / lightcones.LIGHTCONE_FILE) as cone:
    assert int(cone["los_axis"]) == 1
    assert 7.5 == pytest.approx(cone["redshift"][0]) and cone["redshift"][-1] < 8.5
  assert sorted(os.listdir(out)) == sorted(
      [lightcones.LIGHTCONE_FILE, lightcones.LIGHTCONE_PNG, lightcones.GLOBAL_HISTORY_PNG])


def test_usage_errors_name_the_flag(history, tmp_path):
  data_dir, maps_dir = history
  with pytest.raises(UserError, match=r"--maps=.*none: no such folder"):
    _run(f"--maps={tmp_path / 'none'}", f"--data_dir={data_dir}", f"--out={tmp_path / 'o'}")
  with pytest.raises(app.UsageError, match="--out"):
    _run(f"--maps={maps_dir}", f"--data_dir={data_dir}")
  with pytest.raises(flags.IllegalFlagValueError):
    _run(f"--maps={maps_dir}", f"--data_dir={data_dir}", f"--out={tmp_path}", "--axis=3")

"""history: `predict --redshift=all` paints every snapshot into a folder (or Zarr store)
of maps with an index, goes on after a stop, and keeps the input folder safe."""

import json
import os

from absl import app
import keras
import numpy as np
import pytest

pytest.importorskip("dask")
zarr = pytest.importorskip("zarr")

from keras_cnn import inference  # noqa: E402
from keras_cnn import predict  # noqa: E402
from keras_cnn.data import snapshot as snapshot_lib  # noqa: E402
from keras_cnn.model import ModelConfig, build_model  # noqa: E402

from helpers import tiny_snapshot  # noqa: E402

SHAPE = (9, 8, 7)
REDSHIFTS = (7.5, 8.25)
CONFIG = ModelConfig(radius=3, kernel_size=3, filters=2, stride_conv=1, kernel_pooling=1,
                     padding="valid", dense_units=(8, 7, 6, 5, 4), tail_units=(3, 2),
                     conditioning="redshift")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
  """(model path, data folder): a 'valid' model conditioned on the redshift, and one box
  saved at two redshifts (so the maps differ only through the condition)."""
  folder = tmp_path_factory.mktemp("history")
  keras.utils.set_random_seed(0)
  model = build_model(CONFIG, n_igm_stats=(0.0, 0.5), n_src_stats=(0.5, 0.7),
                      condition_stats=(7.9, 0.4))
  model_path = str(folder / "conditioned.keras")
  model.save(model_path)
  data_dir = str(folder / "boxes")
  for redshift in REDSHIFTS:
    snapshot_lib.save_snapshot(tiny_snapshot(SHAPE, with_target=False, redshift=redshift), data_dir)
  return model_path, data_dir


def _predict(parse_flags, model_path, data_dir, out, *extra):
  parse_flags("predict", f"--model={model_path}", f"--data_dir={data_dir}", "--redshift=all",
              f"--out={out}", "--noprogress", *extra)
  predict.main(["predict"])


def test_every_snapshot_gets_its_map_and_a_rerun_goes_on(setup, tmp_path, parse_flags, capsys):
  model_path, data_dir = setup
  out = str(tmp_path / "maps")
  _predict(parse_flags, model_path, data_dir, out)
  assert sorted(os.listdir(out)) == ["index.json", "xHII_z7.500.npy", "xHII_z8.250.npy"]
  model = inference.load_model(model_path)
  box = tiny_snapshot(SHAPE, with_target=False)
  maps = {}
  for redshift in REDSHIFTS:
    maps[redshift] = np.load(os.path.join(out, f"xHII_z{redshift:.3f}.npy"))
    expected = inference.predict_volume_dense(model, box.n_igm, box.n_src, progress=False,
                                              condition=redshift)
    np.testing.assert_array_equal(maps[redshift], expected)  # each snapshot's own condition
  assert not np.array_equal(maps[7.5], maps[8.25])
  index = json.load(open(os.path.join(out, "index.json")))
  assert [r["file"] for r in index] == ["xHII_z8.250.npy", "xHII_z7.500.npy"]
  assert index[0]["mean_xhii"] == pytest.approx(float(maps[8.25].mean()), rel=1e-6)
  assert all(r["seconds"] > 0 for r in index)
  assert "[2/2] z=8.250" in capsys.readouterr().out

  # A stop after the first map: the rerun paints only the missing one.
  os.remove(os.path.join(out, "xHII_z8.250.npy"))
  kept = os.stat(os.path.join(out, "xHII_z7.500.npy")).st_mtime_ns
  _predict(parse_flags, model_path, data_dir, out)
  printed = capsys.readouterr().out
  assert "z=7.500" in printed and "kept (already painted)" in printed
  assert os.stat(os.path.join(out, "xHII_z7.500.npy")).st_mtime_ns == kept
  np.testing.assert_array_equal(np.load(os.path.join(out, "xHII_z8.250.npy")), maps[8.25])


def test_a_zarr_store_of_maps(setup, tmp_path, parse_flags):
  model_path, data_dir = setup
  out = str(tmp_path / "maps.zarr")
  _predict(parse_flags, model_path, data_dir, out, "--scheduler=threads", "--workers=2")
  store = zarr.open_group(out, mode="r")
  assert sorted(store.array_keys()) == ["xHII_z7.500", "xHII_z8.250"]
  model = inference.load_model(model_path)
  box = tiny_snapshot(SHAPE, with_target=False)
  expected = inference.predict_volume_dense(model, box.n_igm, box.n_src, progress=False,
                                            condition=7.5)
  np.testing.assert_array_equal(store["xHII_z7.500"][...], expected)
  assert [r["file"] for r in json.load(open(os.path.join(out, "index.json")))
         ] == ["xHII_z8.250", "xHII_z7.500"]


def test_the_input_folder_and_other_files_are_refused(setup, tmp_path, parse_flags):
  model_path, data_dir = setup
  before = sorted(os.listdir(data_dir))
  for extra in ([], ["--overwrite"]):
    with pytest.raises(Exception, match="would be read as that snapshot's x_HII target"):
      _predict(parse_flags, model_path, data_dir, data_dir, *extra)
  assert sorted(os.listdir(data_dir)) == before
  busy = tmp_path / "busy"
  busy.mkdir()
  (busy / "notes.txt").write_text("mine")
  with pytest.raises(Exception, match="already holds other files"):
    _predict(parse_flags, model_path, data_dir, str(busy))
  with pytest.raises(app.UsageError, match="paints one map per snapshot into a folder"):
    _predict(parse_flags, model_path, data_dir, str(tmp_path / "one.npy"))
  assert os.listdir(busy) == ["notes.txt"]


def test_one_snapshot_through_dask_into_a_file(setup, tmp_path, parse_flags, capsys):
  """One redshift, a Zarr input and --scheduler=threads: one .npy map, as before."""
  model_path, data_dir = setup
  store = str(tmp_path / "boxes.zarr")
  group = zarr.open_group(store, mode="w")
  box = tiny_snapshot(SHAPE, with_target=False)
  group.create_array("rho_z8.250", data=box.rho, chunks=(4, 4, 4))
  group.create_array("nsrc_z8.250", data=box.n_src, chunks=(4, 4, 4))
  out = str(tmp_path / "map.npy")
  parse_flags("predict", f"--model={model_path}", f"--data_dir={store}", "--redshift=8.25",
              f"--out={out}", "--noprogress", "--scheduler=threads", "--workers=2")
  predict.main(["predict"])
  assert f"to {out}" in capsys.readouterr().out
  expected = inference.predict_volume_dense(inference.load_model(model_path), box.n_igm, box.n_src,
                                            progress=False, condition=8.25)
  np.testing.assert_array_equal(np.load(out), expected)
  for extra, message in ((["--workers=2"], "--workers=2 needs --scheduler=threads or processes"),
                         (["--num_shards=2"], "--num_shards cuts one box by hand")):
    parse_flags("predict", f"--model={model_path}", f"--data_dir={data_dir}", "--redshift=all",
                f"--out={tmp_path / 'other'}", *extra)
    with pytest.raises(app.UsageError, match=message):
      predict.main(["predict"])

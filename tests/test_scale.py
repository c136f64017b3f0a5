"""scale: lazy inputs (memory maps, Zarr), outputs written tile by tile, and Dask
schedulers paint the same map, bit for bit, as the in-process dense engine."""

import os

import numpy as np
import pytest

pytest.importorskip("dask")
zarr = pytest.importorskip("zarr")

from keras_cnn import dense  # noqa: E402
from keras_cnn import errors  # noqa: E402
from keras_cnn import inference  # noqa: E402
from keras_cnn import scale  # noqa: E402
from keras_cnn.data import snapshot as snapshot_lib  # noqa: E402

from helpers import REDSHIFT, tiny_snapshot  # noqa: E402
from test_dense import random_valid_model  # noqa: E402

SHAPE = (10, 9, 8)  # non-cubic; tiles of 4 leave a last tile that overlaps its neighbour
SIZES = dict(radius=3, kernel_size=3, filters=2)
# A budget that cuts SHAPE into tiles of (4, 3, 4): along x the last tile overlaps its neighbour.
BUDGET = 1e-4


@pytest.fixture(scope="module")
def box():
  return tiny_snapshot(SHAPE, with_target=False)


@pytest.fixture(scope="module")
def saved(tmp_path_factory, box):
  """(model path, model, npy folder, zarr store) of one tiny 'valid' model and box."""
  folder = tmp_path_factory.mktemp("scale")
  model, _ = random_valid_model(SIZES, box.n_igm, box.n_src)
  model_path = str(folder / "valid.keras")
  model.save(model_path)
  data_dir = str(folder / "box")
  snapshot_lib.save_snapshot(box, data_dir)
  store = str(folder / "box.zarr")
  group = zarr.open_group(store, mode="w")
  for field, values in (("rho", box.rho), ("n_src", box.n_src)):
    array = group.create_array(scale.zarr_array_name(field, REDSHIFT), shape=SHAPE,
                               chunks=(4, 4, 4), dtype="float32")
    array[...] = values
  return model_path, inference.load_model(model_path), data_dir, store


@pytest.fixture(scope="module")
def reference(saved, box):
  """The in-process dense engine's map of the box in memory."""
  _, model, _, _ = saved
  return inference.predict_volume_dense(model, snapshot_lib.overdensity(box.rho), box.n_src,
                                        memory_budget_gb=BUDGET, progress=False)


def _paint(model_path, model, fields, scheduler="none", workers=0):
  out = np.full(fields.shape, np.nan, np.float32)
  with scale.open_scheduler(scheduler, workers) as chosen:
    tile = scale.paint(fields, out, dense.DenseTwin(model), chosen, model_path=model_path,
                       memory_budget_gb=BUDGET, progress=False)
  assert all(side < n for side, n in zip(tile, SHAPE))  # several tiles per axis
  return out


def test_memory_mapped_and_zarr_inputs_paint_the_in_process_map(saved, reference):
  model_path, model, data_dir, store = saved
  loaded = snapshot_lib.load_snapshot(data_dir, REDSHIFT, require_target=False)
  from_npy = scale.fields_of_snapshot(loaded, mean_scaled=False)
  assert from_npy.rho.path is not None and from_npy.rho.array is None  # read from the file
  np.testing.assert_array_equal(_paint(model_path, model, from_npy), reference)
  from_zarr, x_hii = scale.zarr_fields(store, REDSHIFT, mean_scaled=False, radius=3)
  assert x_hii is None
  np.testing.assert_array_equal(_paint(model_path, model, from_zarr, "threads", 1), reference)


@pytest.mark.slow
def test_a_local_cluster_of_two_processes_paints_the_same_bits(saved, reference):
  """--scheduler=processes --workers=2: a distributed.LocalCluster(n_workers=2,
  threads_per_worker=1, processes=True) paints the in-process map exactly."""
  model_path, model, _, store = saved
  fields, _ = scale.zarr_fields(store, REDSHIFT, mean_scaled=False)
  out = str(os.path.join(os.path.dirname(store), "cluster.zarr"))
  with scale.open_scheduler("processes", 2) as chosen:
    cluster = chosen.client.cluster
    assert type(cluster).__name__ == "LocalCluster" and len(cluster.workers) == 2
    assert {w["nthreads"] for w in chosen.client.scheduler_info()["workers"].values()} == {1}
    twin = dense.DenseTwin(model)
    with pytest.raises(ValueError, match="chunked like the tiles"):
      with scale.zarr_output(out, "xHII_z8.397", SHAPE, chunks=SHAPE) as target:
        scale.paint(fields, target, twin, chosen, model_path=model_path, memory_budget_gb=BUDGET,
                    progress=False)
    with scale.zarr_output(out, "xHII_z8.397", SHAPE, scale.tile_chunks(SHAPE, twin,
                                                                        BUDGET)) as target:
      scale.paint(fields, target, twin, chosen, model_path=model_path, memory_budget_gb=BUDGET,
                  progress=False)
  painted = zarr.open_array(out, path="xHII_z8.397", mode="r")[...]
  assert np.array_equal(painted, reference)


def test_outputs_appear_only_when_complete(tmp_path):
  path = str(tmp_path / "map.npy")
  with pytest.raises(RuntimeError):
    with scale.npy_output(path, SHAPE) as target:
      target[0:2] = 1.0
      raise RuntimeError("stopped")
  assert os.listdir(tmp_path) == []
  with scale.npy_output(path, SHAPE) as target:
    target[...] = 0.5
  assert np.load(path).shape == SHAPE and np.all(np.load(path) == 0.5)
  with pytest.raises(errors.UserError, match="written by another process"):
    with scale.npy_output(path, SHAPE) as target:
      target[...] = 1.0
  assert np.all(np.load(path) == 0.5)
  store = str(tmp_path / "maps.zarr")
  with pytest.raises(RuntimeError):
    with scale.zarr_output(store, "xHII_z8.397", SHAPE, (4, 4, 4)) as target:
      target[...] = 1.0
      raise RuntimeError("stopped")
  assert sorted(os.listdir(store)) == ["zarr.json"]
  with scale.zarr_output(store, "xHII_z8.397", SHAPE, (4, 4, 4)) as target:
    target[...] = 0.25
  assert np.all(zarr.open_array(store, path="xHII_z8.397", mode="r")[...] == 0.25)


def test_bad_zarr_inputs_fail_with_one_line(tmp_path, box):
  store = str(tmp_path / "bad.zarr")
  group = zarr.open_group(store, mode="w")
  group.create_array("rho_z8.397", shape=SHAPE, dtype="float32")[...] = box.rho
  with pytest.raises(errors.SnapshotError, match=r"nsrc_z8.397: missing array for field 'n_src'"):
    scale.zarr_fields(store, REDSHIFT, mean_scaled=False)
  bad = group.create_array("nsrc_z8.397", shape=SHAPE, dtype="float32")
  values = box.n_src.copy()
  values[1, 2, 3] = -1.0
  bad[...] = values
  with pytest.raises(errors.SnapshotError, match=r"nsrc_z8.397: field 'n_src' is negative in 1"):
    scale.zarr_fields(store, REDSHIFT, mean_scaled=False)
  with pytest.raises(ValueError, match="--workers=2 needs --scheduler=threads or processes"):
    scale.check_scheduler("none", 2)


def test_tiles_hold_the_inputs_the_model_takes(saved, box):
  """A tile's overdensity and mean-scaled sources equal those of the whole box in memory."""
  _, _, data_dir, store = saved
  whole = [np.arange(n) for n in SHAPE]
  shifted = [(np.arange(n) + 3) % n for n in SHAPE]  # wraps around every face
  loaded = snapshot_lib.load_snapshot(data_dir, REDSHIFT, require_target=False)
  for fields in (scale.fields_of_snapshot(loaded, mean_scaled=True),
                 scale.zarr_fields(store, REDSHIFT, mean_scaled=True)[0]):
    n_igm, n_src = fields.tile(whole)
    np.testing.assert_array_equal(n_igm, snapshot_lib.overdensity(box.rho))
    np.testing.assert_allclose(n_src, snapshot_lib.scale_sources(box.n_src), rtol=1e-6)
    np.testing.assert_array_equal(fields.tile(shifted)[0], n_igm[np.ix_(*shifted)])

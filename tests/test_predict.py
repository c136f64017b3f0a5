"""predict: each voxel is the model on its periodic crop; shards rebuild the map exactly."""

import os
import subprocess
import sys

from absl import app
from absl import flags
import keras
import numpy as np
import pytest

from keras_cnn import inference
from keras_cnn import predict
from keras_cnn.data import snapshot as snapshot_lib
from keras_cnn.model import ModelConfig, build_model

from helpers import REPO, REDSHIFT, tiny_snapshot

TINY = ModelConfig(radius=2, kernel_size=3, filters=2, stride_conv=1, kernel_pooling=1,
                   padding="same")
SHAPE = (10, 9, 8)  # non-cubic: every axis wraps with its own period
BATCH = 32  # not a divisor of a plane (72 voxels): padded batches are exercised


def tiny_model(seed=0) -> keras.Model:
  """A random tiny model whose output spans a good part of (0, 1) on `tiny_snapshot`.

  Untrained, its sigmoid may sit almost constant (or saturate, depending on the
  backend's initializer stream); the last layer is rescaled so the logits of the
  test box have mean 0 and std 2, and a wrong crop cannot pass by accident.
  """
  keras.utils.set_random_seed(seed)
  model = build_model(TINY, n_igm_stats=(0.0, 0.3), n_src_stats=(0.3, 0.2))
  box = tiny_snapshot(SHAPE)
  features = keras.Model(model.inputs,
                         model.get_layer("dense_6").output).predict_on_batch({
                             "n_igm": reference_crops(box.n_igm, TINY.radius),
                             "n_src": reference_crops(box.n_src, TINY.radius)
                         })
  last = model.get_layer("dense_7")
  kernel = np.asarray(keras.ops.convert_to_numpy(last.kernel), np.float64)
  logits = np.asarray(features, np.float64) @ kernel
  scale = 2.0 / max(float(logits.std()), 1e-12)
  last.kernel.assign((kernel * scale).astype(np.float32))
  last.bias.assign(np.array([-float(logits.mean()) * scale], np.float32))
  return model


def reference_crops(field: np.ndarray, radius: int) -> np.ndarray:
  """crop[x, y, z] = F[(x - r + i) % Nx, ...] with np.take(mode="wrap"), C order."""
  crops = []
  offsets = np.arange(-radius, radius + 1)
  for x, y, z in np.ndindex(field.shape):
    crop = np.take(field, x + offsets, axis=0, mode="wrap")
    crop = np.take(crop, y + offsets, axis=1, mode="wrap")
    crops.append(np.take(crop, z + offsets, axis=2, mode="wrap"))
  return np.stack(crops)[..., None]


@pytest.fixture(scope="module")
def model():
  return tiny_model()


@pytest.fixture(scope="module")
def box():
  return tiny_snapshot(SHAPE)


@pytest.fixture(scope="module")
def full_map(model, box):
  return inference.predict_volume(model, box.n_igm, box.n_src, batch_size=BATCH, progress=False)


@pytest.mark.backend
def test_every_voxel_is_the_model_on_its_periodic_crop(model, box, full_map):
  assert full_map.shape == SHAPE and full_map.dtype == np.float32
  expected = model.predict_on_batch({
      "n_igm": reference_crops(box.n_igm, TINY.radius),
      "n_src": reference_crops(box.n_src, TINY.radius)
  })
  expected = np.asarray(expected).reshape(SHAPE)
  assert np.ptp(expected) > 0.5  # the comparison below can tell voxels apart
  np.testing.assert_allclose(full_map, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.backend
@pytest.mark.parametrize("num_shards", [3, 10])
def test_slabs_concatenate_to_exactly_the_whole_map(model, box, full_map, num_shards):
  slabs = []
  for index in range(num_shards):
    start, stop = inference.shard_bounds(SHAPE[0], num_shards, index)
    slabs.append(
        inference.predict_volume(model, box.n_igm, box.n_src, batch_size=BATCH, x_start=start,
                                 x_stop=stop, progress=False))
  np.testing.assert_array_equal(np.concatenate(slabs, axis=0), full_map)


@pytest.mark.parametrize("nx,num_shards,expected", [
    (10, 1, [(0, 10)]),
    (10, 2, [(0, 5), (5, 10)]),
    (10, 3, [(0, 4), (4, 7), (7, 10)]),
    (7, 7, [(i, i + 1) for i in range(7)]),
    (300, 8, [(0, 38), (38, 76), (76, 114), (114, 152), (152, 189), (189, 226), (226, 263),
              (263, 300)]),
])
def test_shard_bounds_tile_the_box(nx, num_shards, expected):
  bounds = [inference.shard_bounds(nx, num_shards, i) for i in range(num_shards)]
  assert bounds == expected
  split = np.array_split(np.arange(nx), num_shards)
  assert bounds == [(int(part[0]), int(part[-1]) + 1) for part in split]


@pytest.mark.parametrize("nx,num_shards,index,message", [
    (10, 2, 2, "--shard_index=2 is out of range for --num_shards=2: it must be in [0, 1]"),
    (10, 2, -1, "--shard_index=-1 is out of range for --num_shards=2"),
    (10, 0, 0, "--num_shards=0 must be in [1, Nx = 10]"),
    (10, 11, 0, "--num_shards=11 must be in [1, Nx = 10]"),
])
def test_bad_shards_fail_with_a_clear_message(nx, num_shards, index, message):
  with pytest.raises(ValueError) as error:
    inference.shard_bounds(nx, num_shards, index)
  assert message in str(error.value)


@pytest.mark.parametrize("args,message", [
    (["--num_shards=2", "--shard_index=2"], r"--shard_index must be in \[0, --num_shards\)"),
    (["--num_shards=2", "--shard_index=-1"], r"--shard_index must be in \[0, --num_shards\)"),
    (["--num_shards=0"], "--num_shards must be >= 1"),
])
def test_bad_shard_flags_are_rejected_at_parse_time(parse_flags, args, message):
  with pytest.raises(flags.IllegalFlagValueError, match=message):
    parse_flags("predict", "--model=m.keras", "--out=x.npy", *args)


def test_predict_volume_checks_its_arguments(model, box):
  with pytest.raises(ValueError, match=r"x-slab \[5, 11\)"):
    inference.predict_volume(model, box.n_igm, box.n_src, x_start=5, x_stop=11, progress=False)
  with pytest.raises(ValueError, match="one shape"):
    inference.predict_volume(model, box.n_igm, box.n_src[:5], progress=False)
  assert inference.model_radius(model) == TINY.radius


@pytest.mark.backend
def test_shards_from_separate_processes_match_one_process(tmp_path, box):
  """Two `python -m keras_cnn.predict` shards, run concurrently, rebuild the map."""
  model_path = str(tmp_path / "tiny.keras")
  tiny_model().save(model_path)
  data_dir = str(tmp_path / "box")
  snapshot_lib.save_snapshot(
      snapshot_lib.Snapshot(rho=box.rho, n_src=box.n_src, x_hii=None, redshift=REDSHIFT),
      data_dir)  # no target file: predict must not need one
  env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "OMP_NUM_THREADS": "1"}
  procs = []
  for index in range(2):
    out = str(tmp_path / "maps" / f"xhii_shard{index}.npy")
    procs.append((out,
                  subprocess.Popen([
                      sys.executable, "-m", "keras_cnn.predict", f"--model={model_path}",
                      f"--data_dir={data_dir}", f"--redshift={REDSHIFT}", f"--batch_size={BATCH}",
                      "--num_shards=2", f"--shard_index={index}", f"--out={out}", "--noprogress"
                  ], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)))
  shards = []
  for index, (out, proc) in enumerate(procs):
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr[-3000:]
    assert stdout.strip().endswith(out), stdout
    assert f"shard {index} of 2" in stdout and "(5, 9, 8)" in stdout
    shards.append(np.load(out))
  assert [s.dtype for s in shards] == [np.float32, np.float32]
  assert sorted(os.listdir(tmp_path / "maps")) == ["xhii_shard0.npy", "xhii_shard1.npy"]
  loaded = inference.load_model(model_path)
  whole = inference.predict_volume(loaded, snapshot_lib.overdensity(box.rho), box.n_src,
                                   batch_size=BATCH, progress=False)
  np.testing.assert_array_equal(np.concatenate(shards, axis=0), whole)


def test_missing_output_is_a_usage_error(parse_flags):
  parse_flags("predict", "--model=m.keras")
  with pytest.raises(app.UsageError, match="--out must be given"):
    predict.main(["predict"])


def test_existing_output_and_inputs_are_never_replaced(tmp_path, box, parse_flags):
  model_path = str(tmp_path / "tiny.keras")
  tiny_model().save(model_path)
  data_dir = str(tmp_path / "box")
  files = snapshot_lib.save_snapshot(box, data_dir)
  existing = tmp_path / "map.npy"
  existing.write_bytes(b"user data")
  cases = [(str(existing), [], "already exists; pass --overwrite"),
           (model_path, ["--overwrite"], "is one of this command's inputs"),
           (files["rho"], ["--overwrite"], "is one of this command's inputs")]
  for out, extra, message in cases:
    parse_flags("predict", f"--model={model_path}", f"--data_dir={data_dir}",
                f"--redshift={REDSHIFT}", f"--out={out}", "--noprogress", *extra)
    with pytest.raises(app.UsageError, match=message):
      predict.main(["predict"])
  assert existing.read_bytes() == b"user data"
  parse_flags("predict", f"--model={model_path}", f"--data_dir={data_dir}",
              f"--redshift={REDSHIFT}", f"--out={existing}", "--noprogress", "--overwrite")
  predict.main(["predict"])
  assert np.load(existing).shape == box.shape


def test_a_model_file_carrying_code_is_refused(tmp_path, parse_flags):
  """safe_mode=True: a Lambda layer (arbitrary Python) in a .keras file is not run."""
  inputs = keras.Input((3,))
  model = keras.Model(inputs, keras.layers.Lambda(lambda x: x * 2.0)(inputs))
  path = str(tmp_path / "lambda.keras")
  model.save(path)
  with pytest.raises(ValueError, match="safe_mode"):
    inference.load_model(path)
  parse_flags("predict", f"--model={path}", f"--out={tmp_path / 'o.npy'}")
  with pytest.raises(app.UsageError, match="not a loadable keras_cnn model"):
    predict.main(["predict"])

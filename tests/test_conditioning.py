"""--conditioning: one value per snapshot (redshift, cosmic time, mean x_HII) fed to the head."""

import json
import os

import keras
import numpy as np
import pytest

from keras_cnn import conditioning
from keras_cnn import dense
from keras_cnn import errors
from keras_cnn import inference
from keras_cnn import model as model_lib
from keras_cnn import pipeline
from keras_cnn.data import simulate
from keras_cnn.data import snapshot as snapshot_lib
from tests.conftest import tiny_snapshot

# Strides and pooling both fold phases into the dense twin's batch axis.
CONFIG = model_lib.ModelConfig(radius=7, kernel_size=3, filters=3, stride_conv=2, kernel_pooling=1,
                               dense_units=(8, 8, 8, 8, 8), tail_units=(4, 4), padding="valid",
                               conditioning="redshift")


def _model(config=CONFIG):
  keras.utils.set_random_seed(0)
  return model_lib.build_model(config, condition_stats=(8.0, 1.0))


def _crops(fields, centres, radius):
  return pipeline.periodic_crops(fields, np.asarray(centres), radius)


@pytest.mark.backend
def test_the_condition_changes_the_map_and_the_dense_twin_matches_per_voxel():
  model = _model()
  assert conditioning.of_model(model) == "redshift"
  assert [layer.name for layer in model.layers if "condition" in layer.name
         ] == ["condition", "normalize_condition", "concatenate_condition"]
  twin = dense.DenseTwin(model)
  rng = np.random.default_rng(0)
  side = 5 + 2 * CONFIG.radius
  igm = rng.normal(size=(2, side, side, side, 1)).astype(np.float32)
  src = rng.poisson(0.5, size=(2, side, side, side, 1)).astype(np.float32)
  redshifts = np.array([[7.0], [9.5]], np.float32)  # another value per tile of the batch
  tiles = keras.ops.convert_to_numpy(twin({"n_igm": igm, "n_src": src, "condition": redshifts}))
  crop = CONFIG.crop_size
  for b in range(2):
    for t in [(0, 0, 0), (4, 2, 3), (1, 4, 0)]:
      window = tuple(slice(i, i + crop) for i in t)
      single = model.predict_on_batch({
          "n_igm": igm[b][window][None],
          "n_src": src[b][window][None],
          "condition": redshifts[b:b + 1]
      })
      np.testing.assert_allclose(tiles[b][t], single[0], atol=2e-5)
  same_fields = twin({
      "n_igm": igm[:1].repeat(2, 0),
      "n_src": src[:1].repeat(2, 0),
      "condition": redshifts
  })
  same_fields = keras.ops.convert_to_numpy(same_fields)
  assert np.abs(same_fields[0] - same_fields[1]).max() > 1e-4


@pytest.mark.backend
def test_a_conditioned_model_saves_loads_and_refuses_a_missing_condition(tmp_path):
  model = _model()
  path = str(tmp_path / "conditioned.keras")
  model.save(path)
  loaded = inference.load_model(path)
  assert conditioning.of_model(loaded) == "redshift"
  layer = loaded.get_layer(conditioning.LAYER_NAME)
  assert (layer.mean, layer.std) == (8.0, 1.0)
  box = tiny_snapshot((9, 9, 9))
  a = inference.predict_map(loaded, box.n_igm, box.n_src, progress=False, condition=8.0)
  b = inference.predict_map(model, box.n_igm, box.n_src, engine="per_voxel", progress=False,
                            condition=8.0)
  np.testing.assert_allclose(a, b, atol=2e-5)
  with pytest.raises(ValueError, match="conditioned on the box's redshift"):
    inference.predict_map(loaded, box.n_igm, box.n_src, progress=False)
  plain = model_lib.build_model(CONFIG.__class__(**{**CONFIG.__dict__, "conditioning": "none"}))
  assert conditioning.of_model(plain) == "none"
  with pytest.raises(ValueError, match="takes no condition"):
    inference.predict_map(plain, box.n_igm, box.n_src, progress=False, condition=8.0)


def test_the_condition_keeps_float32_under_mixed_bfloat16():
  """8.397 and 8.375 are one number in bfloat16; the twin must tell them apart."""
  previous = keras.config.dtype_policy()
  keras.config.set_dtype_policy("mixed_bfloat16")
  try:
    model = _model()
    twin = dense.DenseTwin(model)
    side = 1 + 2 * CONFIG.radius
    rng = np.random.default_rng(1)
    fields = {
        "n_igm": rng.normal(size=(1, side, side, side, 1)).astype(np.float32),
        "n_src": rng.poisson(0.5, size=(1, side, side, side, 1)).astype(np.float32)
    }
    # A weight on the condition large enough that 0.022 in z moves the output visibly.
    dense_layer = model.get_layer("dense")
    kernel = keras.ops.convert_to_numpy(dense_layer.kernel)
    kernel[-1] = 50.0
    dense_layer.kernel.assign(kernel)
    outputs = [
        float(np.asarray(twin({
            **fields, "condition": np.array([[z]], np.float32)
        })).ravel()[0]) for z in (8.397, 8.375)
    ]
  finally:
    keras.config.set_dtype_policy(previous)
  assert outputs[0] != outputs[1]


def test_values_per_kind():
  box = tiny_snapshot((6, 6, 6), redshift=8.397)
  assert conditioning.value("none", box) is None
  assert conditioning.value("redshift", box) == pytest.approx(8.397)
  assert conditioning.value("mean_xhii", box) == pytest.approx(float(box.x_hii.mean()), rel=1e-6)
  assert conditioning.value("redshift", box, given=7.0) == 7.0
  # Age of the universe: about 13.8 Gyr today, about 0.6 Gyr at z = 8.4, decreasing in z.
  assert conditioning.cosmic_time_myr(0.0) == pytest.approx(13800, rel=0.01)
  assert conditioning.value("time", box) == pytest.approx(600, rel=0.05)
  ages = [conditioning.cosmic_time_myr(z) for z in (6.0, 7.0, 8.0, 10.0)]
  assert ages == sorted(ages, reverse=True)
  no_target = tiny_snapshot((6, 6, 6), with_target=False)
  with pytest.raises(errors.UserError, match="--condition_value"):
    conditioning.value("mean_xhii", no_target)
  with pytest.raises(errors.UserError, match="at least two different values"):
    conditioning.training_stats("redshift", [8.397, 8.397])
  mean, std = conditioning.training_stats("redshift", [7.0, 9.0])
  assert (mean, std) == (8.0, 1.0)


@pytest.mark.parametrize("patches", [False, True])
def test_every_example_carries_its_own_snapshots_value(patches):
  """Boxes filled with 0, 1, 2: each example's condition is 10x its box's fill."""
  shape = (8, 8, 8)
  fields = [(np.full(shape, float(s),
                     np.float32), np.zeros(shape, np.float32), np.full(shape, s / 4.0, np.float32))
            for s in range(3)]
  conditions = [0.0, 10.0, 20.0]
  if patches:
    dataset = pipeline.make_patch_dataset(fields, 2, 3, 6, training=True, seed=1,
                                          conditions=conditions)
  else:
    dataset = pipeline.make_dataset(fields, 2, 16, training=True, seed=1, conditions=conditions)
  inputs, _ = next(iter(dataset.take(1).as_numpy_iterator()))
  fills = inputs["n_igm"].reshape(len(inputs["n_igm"]), -1)[:, 0]
  assert len(set(fills.tolist())) > 1  # several boxes in the batch
  np.testing.assert_array_equal(inputs["condition"][:, 0], 10.0 * fills)


def _write_history(root, n=16):
  """train: z 9.0 / 7.5 (x_HII 0.3 / 0.7); validation the same, another seed; test z 8.2."""
  folders = {}
  for split, seed, points in (("train", 1, ((9.0, 0.3), (7.5, 0.7))),
                              ("validation", 2, ((9.0, 0.3), (7.5, 0.7))), ("test", 3, ((8.2,
                                                                                         0.5),))):
    folders[split] = str(root / split)
    for z, mean in points:
      snapshot_lib.save_snapshot(
          simulate.simulate_snapshot(n, seed=seed, redshift=z, mean_xhii=mean), folders[split])
  return folders


RUN = ("--radius=3", "--kernel_size=3", "--filters=2", "--stride_conv=1", "--padding=valid",
       "--train_unit=patch", "--patch_size=4", "--batch_size=2", "--epochs=1",
       "--steps_per_epoch=2", "--validation_patches=2", "--time_budget_minutes=0", "--redshift=all")


def test_train_predict_and_evaluate_with_conditioning(run_module, tmp_path):
  folders = _write_history(tmp_path)
  data = [
      f"--train_dirs={folders['train']}", f"--validation_dirs={folders['validation']}",
      f"--test_dirs={folders['test']}"
  ]
  workdir = str(tmp_path / "run")
  result = run_module("keras_cnn.train", f"--workdir={workdir}", "--conditioning=redshift", *RUN,
                      *data)
  assert result.returncode == 0, result.stderr[-3000:]
  model_path = os.path.join(workdir, "model.keras")
  assert conditioning.of_model(inference.load_model(model_path)) == "redshift"

  out = str(tmp_path / "eval")
  result = run_module("keras_cnn.evaluate", f"--model={model_path}",
                      f"--data_dir={folders['test']}", f"--out={out}", "--power_spectrum=off")
  assert result.returncode == 0, result.stderr[-3000:]
  metrics = json.loads(result.stdout.strip().splitlines()[-1])
  assert metrics["conditioning"] == "redshift"
  assert metrics["condition_values"] == [pytest.approx(8.2)]

  maps = {}
  for z in ("8.2", "6.0"):
    maps[z] = str(tmp_path / f"pred_{z}.npy")
    result = run_module("keras_cnn.predict", f"--model={model_path}",
                        f"--data_dir={folders['test']}", f"--out={maps[z]}", "--progress=false",
                        *([] if z == "8.2" else [f"--condition_value={z}"]))
    assert result.returncode == 0, result.stderr[-3000:]
  assert not np.array_equal(np.load(maps["8.2"]), np.load(maps["6.0"]))

  # One training redshift cannot teach what the redshift does: refused before any file.
  lone = str(tmp_path / "lone")
  result = run_module("keras_cnn.train", f"--workdir={lone}", "--conditioning=redshift", *RUN,
                      f"--data_dir={folders['test']}", f"--validation_dirs={folders['validation']}",
                      f"--test_dirs={folders['train']}")
  assert result.returncode == 2, result.stderr[-2000:]
  assert result.stderr.strip().splitlines()[-1].startswith("Error: --conditioning=redshift needs")
  assert not os.path.exists(lone)


def test_condition_value_with_an_unconditioned_model_is_a_usage_error(run_module, tmp_path,
                                                                      snapshot_dir):
  config = CONFIG.__class__(**{**CONFIG.__dict__, "conditioning": "none"})
  path = str(tmp_path / "plain.keras")
  model_lib.build_model(config).save(path)
  result = run_module("keras_cnn.predict", f"--model={path}",
                      f"--data_dir={snapshot_dir(tiny_snapshot((8, 8, 8)))}",
                      f"--out={tmp_path / 'x.npy'}", "--condition_value=7")
  assert result.returncode != 0
  assert "takes no condition" in result.stderr
  assert not os.path.exists(tmp_path / "x.npy")

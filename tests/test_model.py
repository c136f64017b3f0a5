"""The network: original names and counts, shapes across sizes, save/load, cross-backend."""

import collections
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

from keras_cnn import model as model_lib
from keras_cnn.model import LEFT_BLOCKS, RIGHT_BLOCKS, ModelConfig, build_model, fusion_layer_name

# Parameters of the week-2 network (r=24, kernel 5, 128 filters), trainable and not
# (BatchNormalization moving statistics). Also quoted in docs/network.md.
WEEK2_PARAMS = 22_427_809
WEEK2_FLATTEN = 55_296

EXPECTED_NAMES = ([
    f"{kind}_{i}" for i in (6, 7, 8, 15, 16, 17)
    for kind in ("conv3d", "batch_normalization", "leaky_re_lu", "average_pooling_3d")
] + ["concatenate", "flatten", "dropout", "dense"] + [f"dense_{i}" for i in range(1, 8)] +
                  [f"dropout_{i}" for i in range(1, 6)] +
                  [f"leaky_re_lu_{i}" for i in range(18, 23)] + ["n_igm", "n_src"])


@pytest.fixture(scope="module")
def week2():
  return build_model(model_lib.WEEK2)


def test_week2_layer_counts(week2):
  counts = collections.Counter(type(layer).__name__ for layer in week2.layers)
  assert counts["Conv3D"] == 6
  assert counts["BatchNormalization"] == 6
  assert counts["LeakyReLU"] == 11
  assert counts["AveragePooling3D"] == 6
  assert counts["Dense"] == 8
  assert counts["Dropout"] == 6
  assert counts["Concatenate"] == 1
  assert counts["Flatten"] == 1
  assert counts["InputLayer"] == 2


def test_week2_names_and_sizes(week2):
  names = {layer.name for layer in week2.layers}
  missing = [n for n in EXPECTED_NAMES if n not in names]
  assert not missing
  assert week2.get_layer("flatten").output.shape[-1] == WEEK2_FLATTEN
  assert model_lib.flattened_width(model_lib.WEEK2) == WEEK2_FLATTEN
  assert week2.get_layer("dense").kernel.shape == (WEEK2_FLATTEN, 256)
  assert week2.count_params() == WEEK2_PARAMS
  assert week2.get_layer("dense_7").activation.__name__ == "sigmoid"
  assert week2.get_layer("dropout").rate == 0.8
  assert week2.get_layer("dropout_3").rate == 0.5
  assert week2.get_layer("conv3d_6").kernel.shape == (5, 5, 5, 1, 128)


def test_inputs_feed_the_original_branches(week2):
  """n_igm reaches conv3d_6 (left), n_src reaches conv3d_15 (right)."""

  def upstream_input(layer_name):
    node = week2.get_layer(layer_name)
    seen = node.input
    while True:
      history = seen._keras_history
      layer = history.operation
      if isinstance(layer, keras.layers.InputLayer):
        return layer.name
      seen = layer.input

  assert upstream_input("conv3d_6") == "n_igm"
  assert upstream_input("conv3d_15") == "n_src"


@pytest.mark.parametrize("fusion, joined", [("late", ()), ("early", (0,)), ("every", (0, 1, 2))])
def test_fusion_joins_the_branches_where_asked(fusion, joined):
  """Each fused block's Conv3D takes both branches' channels; the names stay the original's."""
  config = ModelConfig(fusion=fusion, block_filters=(4, 6, 8))
  model = build_model(config)
  channels_in = (1, 4, 6)
  for b, (i, j) in enumerate(zip(LEFT_BLOCKS, RIGHT_BLOCKS)):
    expected = 2 * channels_in[b] if b in joined else channels_in[b]
    for conv in (f"conv3d_{i}", f"conv3d_{j}"):
      assert model.get_layer(conv).kernel.shape[-2] == expected
  names = {layer.name for layer in model.layers}
  assert {fusion_layer_name(b) for b in joined} <= names
  assert not {fusion_layer_name(b) for b in range(3) if b not in joined} & names
  assert model.get_layer("dense_7").output.shape == (None, 1)


SHAPE_CASES = [
    # radius, kernel, filters, stride_conv, pooling, flatten width
    (24, 5, 128, 1, 2, 2 * 128 * 6 ** 3),
    (4, 3, 8, 1, 2, 2 * 8 * 1 ** 3),
    (12, 3, 16, 1, 2, 2 * 16 * 3 ** 3),
    (16, 5, 8, 2, 1, 2 * 8 * 5 ** 3),
    (24, 5, 8, 2, 2, 2 * 8 * 1 ** 3),
    (2, 3, 4, 1, 1, 2 * 4 * 5 ** 3),
    (5, 7, 4, 1, 1, 2 * 4 * 11 ** 3),
    (0, 3, 4, 1, 1, 2 * 4),  # centre voxel only: the local baseline
]


@pytest.mark.parametrize("radius,kernel,filters,stride,pool,width", SHAPE_CASES)
def test_output_shapes(radius, kernel, filters, stride, pool, width):
  config = ModelConfig(radius=radius, kernel_size=kernel, filters=filters, stride_conv=stride,
                       kernel_pooling=pool, padding="same")
  model = build_model(config)
  side = 2 * radius + 1
  for name in ("n_igm", "n_src"):
    assert tuple(model.get_layer(name).batch_shape) == (None, side, side, side, 1)
  assert model.get_layer("flatten").output.shape[-1] == width
  assert model.output_shape == (None, 1)


FAILING_CASES = [
    (dict(radius=3, kernel_pooling=2), "shrinks to nothing"),
    (dict(radius=24, stride_conv=4, kernel_pooling=2), "--stride_conv / --kernel_pooling"),
    (dict(radius=-1), "--radius must be >= 0"),
    (dict(kernel_size=4), "--kernel_size must be odd"),
    (dict(filters=0), "--filters must be >= 1"),
    (dict(dropout_input=1.0), "--dropout_input must be in [0, 1)"),
    (dict(dense_units=(8, 8)), "--dense_units needs 5 positive widths"),
    (dict(source_transform="sqrt"), "--source_transform must be one of"),
    (dict(excursion_radii=(0, -1)), "--excursion_radii needs distinct radii >= 0"),
    (dict(excursion_radii=(2, 2)), "--excursion_radii needs distinct radii"),
]


@pytest.mark.parametrize("overrides,message", FAILING_CASES)
def test_bad_configs_fail_at_build_time(overrides, message):
  with pytest.raises(ValueError) as err:
    build_model(ModelConfig(**{"radius": 4, **overrides}))
  assert message in str(err.value)


def _tiny_inputs(side, seed=0, batch=3):
  rng = np.random.default_rng(seed)
  return {
      "n_igm": rng.normal(size=(batch, side, side, side, 1)).astype("float32"),
      "n_src": rng.poisson(0.3, size=(batch, side, side, side, 1)).astype("float32")
  }


def test_normalization_travels_in_the_saved_file(tmp_path):
  config = ModelConfig(radius=3, kernel_size=3, filters=4, stride_conv=1, kernel_pooling=1,
                       padding="same", source_transform="log1p")
  model = build_model(config, n_igm_stats=(0.2, 4.0), n_src_stats=(0.1, 0.5))
  path = tmp_path / "m.keras"
  model.save(path)
  loaded = keras.saving.load_model(path, safe_mode=True)
  x = _tiny_inputs(7)
  np.testing.assert_array_equal(model.predict(x, verbose=0), loaded.predict(x, verbose=0))
  norm = loaded.get_layer("normalize_n_igm").get_config()
  assert (norm["mean"], norm["variance"]) == (0.2, 4.0)
  assert loaded.get_layer("source_transform").kind == "log1p"
  pred = loaded.predict(x, verbose=0)
  assert pred.shape == (3, 1) and np.all((pred >= 0) & (pred <= 1))


def test_excursion_kernels_are_symmetric_spheres_of_the_given_radius():
  kernels = model_lib.excursion_kernels([0.0, 1.5, 4.0, 6.0], crop_radius=6)
  assert kernels.shape == (4, 13, 13, 13)
  np.testing.assert_allclose(kernels.sum(axis=(1, 2, 3)), 1.0, rtol=1e-12)
  assert kernels[0, 6, 6, 6] == 1.0  # radius 0: the cell itself
  offsets = np.arange(-6, 7)
  distance = np.sqrt(offsets[:, None, None] ** 2 + offsets[None, :, None] ** 2 +
                     offsets[None, None, :] ** 2)
  for kernel, radius in zip(kernels[1:], (1.5, 4.0, 6.0)):
    for axes in ((0, 1, 2), (1, 0, 2), (2, 1, 0)):  # the cube symmetries
      np.testing.assert_allclose(np.transpose(kernel, axes), kernel, atol=1e-12)
      np.testing.assert_allclose(np.flip(kernel, axes[0]), kernel, atol=1e-12)
    assert kernel[distance > radius + 1].sum() == 0.0
    assert kernel[distance <= radius + 0.5].sum() > 0.9  # a sphere, not a cube
    volume = (distance <= radius).sum()
    assert 0.5 * volume < 1.0 / np.square(kernel).sum() < 2.0 * volume  # cells it averages


def test_excursion_features_see_the_spheres_and_travel_in_the_saved_file(tmp_path):
  config = ModelConfig(radius=3, kernel_size=3, filters=2, stride_conv=1, kernel_pooling=1,
                       excursion_radii=(0, 1, 3))
  model = build_model(config, source_mean=0.5)
  x = _tiny_inputs(7)
  x["n_igm"] = np.abs(x["n_igm"]) - 0.5  # overdensities above -1
  layer = model.get_layer("excursion_set")
  got = keras.ops.convert_to_numpy(layer([x["n_igm"], x["n_src"]]))
  assert got.shape == (3, 7)
  # Radius 0 is the voxel itself; the last feature is the largest log-ratio.
  np.testing.assert_allclose(got[:, 0], np.log(1.0 + x["n_igm"][:, 3, 3, 3, 0]), rtol=1e-5)
  np.testing.assert_allclose(got[:, 3], np.log(x["n_src"][:, 3, 3, 3, 0] / 0.5 + 1e-2), rtol=1e-5)
  np.testing.assert_allclose(got[:, 6], (got[:, 3:6] - got[:, 0:3]).max(axis=1), rtol=1e-6)
  # A uniform box has the same mean over every sphere.
  uniform = [np.full((2, 7, 7, 7, 1), 0.3, np.float32), np.full((2, 7, 7, 7, 1), 2.0, np.float32)]
  flat = keras.ops.convert_to_numpy(layer(uniform))
  np.testing.assert_allclose(flat[:, :3], np.log(1.3), rtol=1e-5)
  np.testing.assert_allclose(flat[:, 3:6], np.log(4.0 + 1e-2), rtol=1e-5)
  # The features reach the output: the head's rows for them move the prediction.
  dense = model.get_layer("dense")
  kernel = keras.ops.convert_to_numpy(dense.kernel)
  before = model.predict(x, verbose=0)
  kernel[-7:] *= 5.0
  dense.kernel.assign(kernel)
  after = model.predict(x, verbose=0)
  assert np.abs(after - before).max() > 1e-4
  path = tmp_path / "m.keras"
  model.save(path)
  loaded = keras.saving.load_model(path, safe_mode=True)
  assert loaded.get_layer("excursion_set").get_config()["source_mean"] == 0.5
  np.testing.assert_array_equal(after, loaded.predict(x, verbose=0))


def test_source_transform_matches_numpy_twin():
  values = np.array([0.0, 1.0, 10.0, 1e4], dtype="float32")
  layer = model_lib.SourceTransform("log1p")
  np.testing.assert_allclose(keras.ops.convert_to_numpy(layer(values)),
                             model_lib.apply_source_transform(values, "log1p"), rtol=1e-6)


_CROSS_SCRIPT = r"""
import sys, numpy as np, keras
import keras_cnn.model as m
tf_model, inputs, workdir = sys.argv[1:4]
x = dict(np.load(inputs))
backend = keras.backend.backend()
np.save(f"{workdir}/from_tensorflow_on_{backend}.npy",
        keras.saving.load_model(tf_model, safe_mode=True).predict(x, verbose=0))
own = m.build_model(m.ModelConfig(radius=3, kernel_size=3, filters=4, stride_conv=1,
                                  kernel_pooling=1, padding='same'),
                    n_igm_stats=(0.5, 2.0), n_src_stats=(0.3, 1.5))
own.save(f"{workdir}/{backend}.keras")
np.save(f"{workdir}/{backend}_on_{backend}.npy", own.predict(x, verbose=0))
"""


@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_saved_model_is_shared_across_backends(tmp_path, backend):
  """A tensorflow-saved model predicts the same under `backend`, and back."""
  pytest.importorskip(backend)
  assert keras.backend.backend() == "tensorflow"
  x = _tiny_inputs(7, seed=1)
  np.savez(tmp_path / "x.npz", **x)
  model = build_model(
      ModelConfig(radius=3, kernel_size=3, filters=4, stride_conv=1, kernel_pooling=1,
                  padding="same"), n_igm_stats=(0.5, 2.0), n_src_stats=(0.3, 1.5))
  model.save(tmp_path / "tensorflow.keras")
  subprocess.run([
      sys.executable, "-c", _CROSS_SCRIPT,
      str(tmp_path / "tensorflow.keras"),
      str(tmp_path / "x.npz"),
      str(tmp_path)
  ], env={
      **os.environ, "KERAS_BACKEND": backend
  }, check=True, capture_output=True, timeout=600)
  there = np.load(tmp_path / f"from_tensorflow_on_{backend}.npy")
  np.testing.assert_allclose(there, model.predict(x, verbose=0), atol=1e-5)
  back = keras.saving.load_model(tmp_path / f"{backend}.keras", safe_mode=True)
  np.testing.assert_allclose(back.predict(x, verbose=0),
                             np.load(tmp_path / f"{backend}_on_{backend}.npy"), atol=1e-5)

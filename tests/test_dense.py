"""The dense twin paints every voxel of a tile exactly as the per-voxel model would."""

import keras
import numpy as np
import pytest

from keras_cnn import dense
from keras_cnn import inference
from keras_cnn import pipeline
from keras_cnn.model import ModelConfig, build_model, receptive_offset

HEAD = dict(dense_units=(8, 7, 6, 5, 4), tail_units=(3, 2))
BASE = dict(stride_conv=1, kernel_pooling=1)

# (model sizes, box shape): strides, pooling, both, kernels 1 and 3, both source
# transforms, odd and even sides, non-cubic boxes and boxes smaller than the crop.
EXACTNESS_CASES = [
    (dict(radius=3, kernel_size=3, filters=2), (7, 6, 5)),
    (dict(radius=7, kernel_size=3, filters=3, stride_conv=2, source_transform="none"), (8, 8, 8)),
    (dict(radius=11, kernel_size=3, filters=2, kernel_pooling=2), (9, 6, 7)),
    (dict(radius=15, kernel_size=3, filters=4, stride_conv=2), (6, 5, 8)),
    (dict(radius=32, kernel_size=1, filters=2, stride_conv=2, kernel_pooling=2), (5, 4, 3)),
    (dict(radius=4, kernel_size=3, filters=5, source_transform="none"), (3, 11, 5)),
    # Per-block strides and filters: a full-resolution first block, wider later blocks.
    (dict(radius=13, kernel_size=3, block_filters=(2, 3, 4), block_strides=(1, 2, 2)), (7, 5, 6)),
    # Branches that meet at the input, or before every block.
    (dict(radius=7, kernel_size=3, filters=3, stride_conv=2, fusion="early"), (6, 7, 5)),
    (dict(radius=11, kernel_size=3, block_filters=(2, 3, 2), kernel_pooling=2,
          fusion="every"), (5, 6, 4)),
    # The head also sees the excursion-set features: with strides, and with pooling.
    (dict(radius=7, kernel_size=3, filters=3, stride_conv=2, fusion="early",
          excursion_radii=(0, 2, 7)), (6, 7, 5)),
    (dict(radius=11, kernel_size=3, filters=2, kernel_pooling=2,
          excursion_radii=(11, 1, 4)), (5, 6, 4)),
]


def random_fields(shape, seed=0):
  rng = np.random.default_rng(seed)
  n_igm = rng.lognormal(0.0, 0.5, shape).astype(np.float32) - 1.0
  n_src = (rng.poisson(0.3, shape) * rng.exponential(5.0, shape)).astype(np.float32)
  return n_igm, n_src


def per_voxel_map(model, n_igm, n_src, radius):
  centres = np.stack(np.meshgrid(*[np.arange(n) for n in n_igm.shape], indexing="ij"),
                     axis=-1).reshape(-1, 3)
  igm, src = pipeline.periodic_crops([n_igm, n_src], centres, radius)
  out = model.predict({"n_igm": igm[..., None], "n_src": src[..., None]}, batch_size=128, verbose=0)
  return np.asarray(out, np.float32).reshape(n_igm.shape)


def random_valid_model(sizes, n_igm, n_src, seed=0):
  """A 'valid' model with random BatchNorm statistics whose output spans (0, 1).

  Each BatchNorm gets moving statistics near those of its input on these fields, as a
  trained model's would be (then randomly perturbed), so the features deep in the network
  still vary from voxel to voxel; with arbitrary statistics they can flatten to a
  near-constant, and rescaling the head would then magnify float32 round-off past the
  tolerance. Untrained, the sigmoid would sit almost constant and hide a wrong crop; the
  head's layers are rescaled so the logits on these fields have mean 0 and std 1.
  """
  keras.utils.set_random_seed(seed)
  config = ModelConfig(**{"padding": "valid", **HEAD, **BASE, **sizes})
  model = build_model(config, n_igm_stats=(0.1, 0.4), n_src_stats=(0.5, 1.5))
  rng = np.random.default_rng(seed)
  centres = np.stack(np.meshgrid(*[np.arange(n) for n in n_igm.shape], indexing="ij"),
                     axis=-1).reshape(-1, 3)
  igm, src = pipeline.periodic_crops([n_igm, n_src], centres, config.radius)
  crops = {"n_igm": igm[..., None], "n_src": src[..., None]}
  norms = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
  # Layer by layer, in build order: each sees the statistics set before it. One probe
  # model on a few crops serves every step (its variables change between calls).
  sample = {key: value[::max(1, len(centres) // 24)] for key, value in crops.items()}
  probe = keras.Model(model.inputs, [layer.input for layer in norms])
  for k, layer in enumerate(norms):
    seen = probe.predict(sample, batch_size=len(sample["n_igm"]), verbose=0)[k]
    channels = np.asarray(seen, np.float64).reshape(-1, seen.shape[-1])
    mean, std = channels.mean(axis=0), channels.std(axis=0) + 1e-3
    layer.moving_mean.assign(mean + rng.normal(0.0, 0.1, mean.shape) * std)
    layer.moving_variance.assign(std ** 2 * rng.uniform(0.5, 2.0, std.shape))
  # The head, layer by layer in float64: each Dense is rescaled so that its units'
  # pre-activations have mean 0 and, together, std 1 on these crops. Its small widths
  # would otherwise shrink the signal (not the round-off) on its way to the logits; the
  # last layer's logits end with mean 0 and std 1, spanning the sigmoid.
  names = [layer.name for layer in model.layers]
  head_input = "concatenate_excursion" if "concatenate_excursion" in names else "dropout"
  features = keras.Model(model.inputs, model.get_layer(head_input).output)
  x = np.asarray(features.predict(crops, verbose=0), np.float64)
  n_dense = len(config.dense_units) + len(config.tail_units) + 1
  for i in range(n_dense):
    layer = model.get_layer("dense" if i == 0 else f"dense_{i}")
    kernel = np.asarray(keras.ops.convert_to_numpy(layer.kernel), np.float64)
    bias = np.asarray(keras.ops.convert_to_numpy(layer.bias), np.float64)
    z = x @ kernel + bias
    # One scale per layer (a unit of almost constant output is not magnified).
    mean, std = z.mean(axis=0), max(float(np.sqrt(z.var(axis=0).mean())), 1e-12)
    layer.kernel.assign((kernel / std).astype(np.float32))
    layer.bias.assign(((bias - mean) / std).astype(np.float32))
    x = (z - mean) / std
    if i < len(config.dense_units):
      x = np.where(x > 0, x, config.leaky_relu_slope * x)
  return model, config


def wrapped_tile(field, radius):
  index = np.ix_(*[np.arange(-radius, n + radius) % n for n in field.shape])
  return field[index][None, ..., None]


@pytest.mark.backend
@pytest.mark.parametrize("sizes, shape", EXACTNESS_CASES)
def test_dense_twin_equals_per_voxel_model(sizes, shape):
  n_igm, n_src = random_fields(shape)
  model, config = random_valid_model(sizes, n_igm, n_src)
  expected = per_voxel_map(model, n_igm, n_src, config.radius)
  assert expected.std() > 0.05  # a wrong crop cannot pass by accident
  twin = dense.DenseTwin(model)
  got = twin({
      "n_igm": wrapped_tile(n_igm, config.radius),
      "n_src": wrapped_tile(n_src, config.radius)
  })
  got = np.asarray(keras.ops.convert_to_numpy(got))
  assert got.shape == (1,) + shape + (1,)
  np.testing.assert_allclose(got[0, ..., 0], expected, atol=1e-5, rtol=0)


@pytest.mark.backend
def test_tiled_dense_engine_matches_per_voxel_engine_and_shards():
  """Many small tiles (a tiny memory budget) and x-shards rebuild the per-voxel map."""
  shape = (11, 9, 10)
  n_igm, n_src = random_fields(shape, seed=1)
  model, config = random_valid_model(dict(radius=7, kernel_size=3, filters=3, stride_conv=2), n_igm,
                                     n_src, seed=1)
  twin = dense.DenseTwin(model)
  budget = 4e5 / 2 ** 30  # a few tiles per axis
  tile = inference.tile_shape(shape, twin, budget)
  assert all(t < n for t, n in zip(tile, shape))
  whole = inference.predict_volume_dense(model, n_igm, n_src, memory_budget_gb=budget,
                                         progress=False)
  per_voxel = inference.predict_volume(model, n_igm, n_src, batch_size=64, progress=False)
  np.testing.assert_allclose(whole, per_voxel, atol=1e-5, rtol=0)
  slabs = [
      inference.predict_volume_dense(model, n_igm, n_src, *inference.shard_bounds(shape[0], 3, i),
                                     memory_budget_gb=budget, progress=False) for i in range(3)
  ]
  np.testing.assert_array_equal(np.concatenate(slabs, axis=0), whole)


@pytest.mark.parametrize(
    "sizes, offset",
    [
        (dict(radius=15, kernel_size=3, stride_conv=2), 0.0),  # 31 -> 15 -> 7 -> 3: centred
        (dict(radius=16, kernel_size=3, stride_conv=2), 1.0),  # 33 -> 16: two cells unused
        # week-2 sizes: 49 -> 45 -> 22 -> 18 -> 9 -> 5 -> 2 uses 44 of 49 cells
        (dict(radius=24, kernel_size=5, kernel_pooling=2), 2.5),
        (dict(radius=24, kernel_size=5, kernel_pooling=2, padding="same"), 0.0),
    ])
def test_receptive_offset(sizes, offset):
  config = ModelConfig(**{"padding": "valid", **BASE, **sizes})
  assert receptive_offset(config) == offset


def test_fold_and_unfold_are_inverse():
  x = np.arange(2 * 6 * 4 * 8 * 3, dtype=np.float32).reshape(2, 6, 4, 8, 3)
  folded = dense.fold_phases(x, 2)
  assert tuple(folded.shape) == (16, 3, 2, 4, 3)
  # batch block of phase (1, 0, 1) holds x[:, 1::2, 0::2, 1::2]
  block = (1 * 2 + 0) * 2 + 1
  np.testing.assert_array_equal(keras.ops.convert_to_numpy(folded[block * 2:(block + 1) * 2]),
                                x[:, 1::2, 0::2, 1::2])
  np.testing.assert_array_equal(keras.ops.convert_to_numpy(dense.unfold_phases(folded, 2)), x)


def test_engine_choice_follows_padding():
  same = build_model(
      ModelConfig(radius=3, kernel_size=3, filters=2, stride_conv=1, kernel_pooling=1,
                  padding="same"))
  valid = build_model(
      ModelConfig(radius=3, kernel_size=3, filters=2, stride_conv=1, kernel_pooling=1,
                  padding="valid"))
  assert inference.resolve_engine(same) == "per_voxel"
  assert inference.resolve_engine(valid) == "dense"
  assert inference.resolve_engine(valid, "per_voxel") == "per_voxel"
  with pytest.raises(ValueError, match="--engine=dense needs a model trained with "
                     "--padding=valid"):
    inference.resolve_engine(same, "dense")
  with pytest.raises(ValueError, match="use --engine=per_voxel"):
    dense.DenseTwin(same)


def test_tile_fits_the_budget_and_covers_the_box():
  model = build_model(
      ModelConfig(radius=16, kernel_size=3, filters=16, stride_conv=2, kernel_pooling=1,
                  padding="valid"))
  twin = dense.DenseTwin(model)
  for budget in (0.25, 1.0, 4.0):
    tile = inference.tile_shape((300, 300, 300), twin, budget)
    assert len(set(tile)) == 1
    inputs = np.prod([t + 32 for t in tile])
    assert inputs * inference.bytes_per_position(twin) <= budget * 2 ** 30
    tiles = inference._tiles(300, tile[0])  # pylint: disable=protected-access
    owned = np.concatenate([np.arange(lo, hi) for _, lo, hi in tiles])
    np.testing.assert_array_equal(owned, np.arange(300))
    assert all(start + tile[0] <= 300 and start <= lo for start, lo, _ in tiles)

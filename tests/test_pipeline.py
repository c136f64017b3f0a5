"""Tests of keras_cnn.pipeline: exact periodic crops, symmetries, splits, datasets."""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_cnn import errors
from keras_cnn import model as model_lib
from keras_cnn import pipeline


def reference_crop(field, centre, radius):
  """Slow, obviously right periodic crop: np.take(mode="wrap") along each axis."""
  out = field
  for axis, c in enumerate(centre):
    out = np.take(out, np.arange(c - radius, c + radius + 1), axis=axis, mode="wrap")
  return out


def random_field(shape, seed):
  return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def triple(shape, seed=0):
  rng = np.random.default_rng(seed)
  return (rng.standard_normal(shape).astype(np.float32), rng.poisson(0.1, shape).astype(np.float32),
          rng.random(shape, dtype=np.float32))


def corner_and_edge_centres(shape):
  nx, ny, nz = shape
  corners = [(x, y, z) for x in (0, nx - 1) for y in (0, ny - 1) for z in (0, nz - 1)]
  edges = [(0, ny // 2, nz - 1), (nx // 2, 0, 0), (nx - 1, ny - 1, nz // 2), (1, ny - 2, 1)]
  return np.array(corners + edges)


@pytest.mark.parametrize(
    "shape, radius",
    [
        ((16, 16, 16), 3),
        ((12, 17, 9), 4),  # non-cubic; 2r+1 = 9 is the whole z axis
        ((7, 11, 5), 4),  # crop longer than two axes: the window wraps more than once
        ((20, 20, 20), 0),
    ])
def test_crops_match_reference(shape, radius):
  fields = [random_field(shape, 1), random_field(shape, 2)]
  rng = np.random.default_rng(3)
  centres = np.concatenate([rng.integers(0, shape, size=(20, 3)), corner_and_edge_centres(shape)])
  crops = pipeline.periodic_crops(fields, centres, radius)
  assert len(crops) == 2
  for field, crop in zip(fields, crops):
    assert crop.shape == (len(centres),) + (2 * radius + 1,) * 3
    assert crop.dtype == np.float32
    for b, centre in enumerate(centres):
      np.testing.assert_array_equal(crop[b], reference_crop(field, centre, radius))


def test_single_field_out_of_range_centres_and_out_buffer():
  field = random_field((10, 11, 12), 0)
  centres = np.array([[-1, 11, 25], [3, -14, 0]])
  crop = pipeline.periodic_crops(field, centres, 2)
  assert isinstance(crop, np.ndarray)
  for b, centre in enumerate(centres):
    np.testing.assert_array_equal(crop[b], reference_crop(field, centre, 2))
  buffer = np.zeros_like(crop)
  assert pipeline.periodic_crops(field, centres, 2, out=buffer) is buffer
  np.testing.assert_array_equal(buffer, crop)


def test_seed_method_agrees():
  from keras_cnn.benchmarks import pipeline as bench

  field = random_field((13, 13, 13), 4)
  for centre in [(0, 0, 0), (12, 5, 11), (6, 6, 6), (1, 12, 2)]:
    seed_crop = bench.seed_get_neighborhood(field[None, None], *centre, 3)[0, 0]
    np.testing.assert_array_equal(seed_crop, reference_crop(field, centre, 3))


@pytest.mark.parametrize("kwargs, message", [
    (dict(fields=[np.zeros((4, 4, 4)), np.zeros((4, 4, 5))], centres=np.zeros(
        (1, 3), int)), "same shape"),
    (dict(fields=np.zeros((4, 4)), centres=np.zeros((1, 3), int)), "must be 3-D"),
    (dict(fields=np.zeros((4, 4, 4)), centres=np.zeros((1, 2), int)), r"shape \(B, 3\)"),
    (dict(fields=np.zeros((4, 4, 4)), centres=np.zeros(
        (1, 3), int), symmetries=[48]), r"\[0, 48\)"),
])
def test_periodic_crops_errors(kwargs, message):
  with pytest.raises(ValueError, match=message):
    pipeline.periodic_crops(radius=1, **kwargs)


def test_all_48_symmetries_distinct_and_value_preserving():
  cube = random_field((5, 5, 5), 7)
  images = [pipeline.apply_symmetry(cube, k) for k in range(pipeline.NUM_SYMMETRIES)]
  assert len({image.tobytes() for image in images}) == 48
  for image in images:
    np.testing.assert_array_equal(np.sort(image, axis=None), np.sort(cube, axis=None))
    assert image[2, 2, 2] == cube[2, 2, 2]  # the centre voxel (the target) stays put
  np.testing.assert_array_equal(images[0], cube)


def test_augmented_crops_apply_same_symmetry_to_both_fields():
  shape = (15, 14, 13)
  fields = [random_field(shape, 1), random_field(shape, 2)]
  centres = np.random.default_rng(0).integers(0, shape, size=(48, 3))
  centres[:8] = corner_and_edge_centres(shape)[:8]
  symmetries = np.arange(48)
  plain = pipeline.periodic_crops(fields, centres, 3)
  augmented = pipeline.periodic_crops(fields, centres, 3, symmetries)
  for f in range(2):
    for b, k in enumerate(symmetries):
      np.testing.assert_array_equal(augmented[f][b], pipeline.apply_symmetry(plain[f][b], k))
      np.testing.assert_array_equal(np.sort(augmented[f][b], axis=None),
                                    np.sort(plain[f][b], axis=None))


@pytest.mark.parametrize("length, radius, guard", [(300, 24, None), (64, 4, None), (40, 3, 6),
                                                   (16, 2, None), (64, 12, None), (128, 15, None)])
def test_split_regions_disjoint_with_guard_bands(length, radius, guard):
  regions = pipeline.split_regions((length, 8, 8), radius, guard=guard)
  assert list(regions) == ["train", "validation", "test"]
  for name in ("validation", "test"):  # at least 10% of the voxels each
    assert regions[name][1] - regions[name][0] >= 0.1 * length
  owner = np.full(length, "", dtype=object)
  for name, (start, stop) in regions.items():
    assert 0 <= start < stop <= length
    assert not any(owner[start:stop]), "regions overlap"
    owner[start:stop] = name
  # Every x that a crop centred in one region touches (periodically) is either in
  # that region or in a guard band: never in another region.
  for name, (start, stop) in regions.items():
    touched = np.arange(start - radius, stop + radius) % length
    assert set(owner[touched]) <= {name, ""}
  # Guard bands, including the one across the periodic wrap, are >= r wide.
  starts = sorted(start for start, _ in regions.values())
  stops = sorted(stop for _, stop in regions.values())
  gaps = [starts[1] - stops[0], starts[2] - stops[1], length - stops[2] + starts[0]]
  assert min(gaps) >= radius


def test_split_regions_fractions_and_errors():
  regions = pipeline.split_regions((300, 300, 300), 24)
  sizes = {name: stop - start for name, (start, stop) in regions.items()}
  assert sizes == {"train": 168, "validation": 30, "test": 30}
  with pytest.raises(ValueError, match="train would keep 0 cells.*--radius=4 or less"):
    pipeline.split_regions((20, 20, 20), 8)
  with pytest.raises(ValueError, match="guard band"):
    pipeline.split_regions((64, 64, 64), 4, guard=3)
  regions = pipeline.split_regions((16, 4, 4), 3, names=("train", "validation"))
  assert regions == {"train": (0, 8), "validation": (11, 13)}  # 3 + 3 guard cells


def test_a_64_box_at_the_default_radius_is_refused_with_what_to_pass_instead():
  """10% slabs for validation and test and guards of r = 15 leave 5 of 64 planes to
  train: refused, naming the flags that work."""
  with pytest.raises(errors.UserError) as error:
    pipeline.split_regions((64, 64, 64), 15)
  message = str(error.value)
  assert "\n" not in message
  assert "validation 7, test 7" in message and "train would keep 5 cells" in message
  for flag in ("--validation_dirs", "--test_dirs", "--validation_redshifts", "--test_redshifts",
               "--radius=12 or less"):
    assert flag in message
  regions = pipeline.split_regions((64, 64, 64), 12)
  assert {
      name: stop - start for name, (start, stop) in regions.items()
  } == {
      "train": 14,
      "validation": 7,
      "test": 7
  }


def test_training_crops_never_reach_other_regions():
  shape = (40, 12, 12)
  radius = 3
  regions = pipeline.split_regions(shape, radius)
  marker = np.zeros(shape, np.float32)
  for name in ("validation", "test"):
    start, stop = regions[name]
    marker[start:stop] = 1.0
  fields = [(marker, marker, np.zeros(shape, np.float32))]
  ds = pipeline.make_dataset(fields, radius, 64, training=True, seed=1, region="train")
  for inputs, _ in ds.take(20).as_numpy_iterator():
    assert inputs["n_igm"].max() == 0.0 and inputs["n_src"].max() == 0.0
  for name in ("validation", "test"):
    other = pipeline.make_dataset(fields, radius, 64, training=False, region=name)
    n_voxels = (regions[name][1] - regions[name][0]) * 144
    assert sum(len(y) for _, y in other.as_numpy_iterator()) == n_voxels


def _first_batches(ds, count):
  return [(x["n_igm"], x["n_src"], y) for x, y in ds.take(count).as_numpy_iterator()]


def test_dataset_element_spec_and_values():
  shape = (12, 10, 9)
  n_igm, n_src, x_hii = triple(shape)
  ds = pipeline.make_dataset([(n_igm, n_src, x_hii)], 2, 8, training=True, augment=False)
  inputs_spec, target_spec = ds.element_spec
  assert set(inputs_spec) == {"n_igm", "n_src"}
  for spec in inputs_spec.values():
    assert spec.shape == (8, 5, 5, 5, 1) and spec.dtype == tf.float32
  assert target_spec.shape == (8, 1) and target_spec.dtype == tf.float32
  inputs, target = next(ds.as_numpy_iterator())
  # Without augmentation the crop centre is the target voxel; find it and check.
  for b in range(8):
    centre_value = inputs["n_igm"][b, 2, 2, 2, 0]
    (x,), (y,), (z,) = np.nonzero(n_igm == centre_value)
    assert target[b, 0] == x_hii[x, y, z]
    np.testing.assert_array_equal(inputs["n_src"][b, ..., 0], reference_crop(n_src, (x, y, z), 2))


def test_training_stream_deterministic_and_new_each_batch():
  fields = [triple((10, 10, 10))]
  make = lambda seed, start=0: pipeline.make_dataset(  # noqa: E731
      fields, 2, 4, training=True, seed=seed, start_batch=start)
  first = _first_batches(make(0), 3)
  again = _first_batches(make(0), 3)
  for a, b in zip(first, again):
    for u, v in zip(a, b):
      np.testing.assert_array_equal(u, v)
  other = _first_batches(make(1), 1)[0]
  assert not np.array_equal(other[0], first[0][0])
  assert not np.array_equal(first[0][0], first[1][0])
  resumed = _first_batches(make(0, start=2), 1)[0]
  np.testing.assert_array_equal(resumed[0], first[2][0])
  assert make(0).cardinality() == tf.data.INFINITE_CARDINALITY


def test_eval_dataset_fixed_ordered_and_finite():
  shape = (9, 6, 5)
  n_igm, n_src, x_hii = triple(shape)
  ds = pipeline.make_dataset([(n_igm, n_src, x_hii)], 1, 16, training=False)
  assert int(ds.cardinality()) == -(-9 * 6 * 5 // 16)
  targets = np.concatenate([y for _, y in ds.as_numpy_iterator()])[:, 0]
  np.testing.assert_array_equal(targets, x_hii.ravel())  # every voxel, C order
  sub = pipeline.make_dataset([(n_igm, n_src, x_hii)], 1, 16, training=False, num_examples=40,
                              region=(2, 7), seed=3)
  a = np.concatenate([x["n_igm"] for x, _ in sub.as_numpy_iterator()])
  b = np.concatenate([x["n_igm"] for x, _ in sub.as_numpy_iterator()])
  assert a.shape == (40, 3, 3, 3, 1)
  np.testing.assert_array_equal(a, b)
  centre_x = [np.nonzero(n_igm == v)[0][0] for v in a[:, 1, 1, 1, 0]]
  assert np.all(np.diff(centre_x) >= 0) and min(centre_x) >= 2 and max(centre_x) < 7


def test_several_snapshots_are_all_used():
  small = triple((6, 6, 6), seed=1)
  big = triple((8, 7, 6), seed=2)
  big = (big[0] + 100.0, big[1], big[2])  # tells the snapshots apart
  ds = pipeline.make_dataset([small, big], 1, 32, training=True, seed=0)
  values = np.concatenate([x["n_igm"][:, 1, 1, 1, 0] for x, _ in ds.take(4).as_numpy_iterator()])
  assert (values > 50).any() and (values < 50).any()
  ev = pipeline.make_dataset([small, big], 1, 50, training=False)
  targets = np.concatenate([y for _, y in ev.as_numpy_iterator()])[:, 0]
  np.testing.assert_array_equal(targets, np.concatenate([small[2].ravel(), big[2].ravel()]))


def test_stratified_sampling_balances_bins():
  shape = (20, 20, 20)
  n_igm, n_src, _ = triple(shape)
  x_hii = np.zeros(shape, np.float32)
  x_hii[:2] = 1.0  # 10 % ionized
  fields = [(n_igm, n_src, x_hii)]
  plain = pipeline.make_dataset(fields, 1, 256, training=True, seed=0)
  strat = pipeline.make_dataset(fields, 1, 256, training=True, seed=0, stratify_bins=2)
  plain_mean = np.mean([y.mean() for _, y in plain.take(4).as_numpy_iterator()])
  strat_mean = np.mean([y.mean() for _, y in strat.take(4).as_numpy_iterator()])
  assert plain_mean < 0.2
  assert 0.4 < strat_mean < 0.6


def test_training_pool_of_num_examples():
  shape = (10, 10, 10)
  n_igm, n_src, x_hii = triple(shape)
  ds = pipeline.make_dataset([(n_igm, n_src, x_hii)], 1, 64, training=True, num_examples=5,
                             augment=False)
  values = np.concatenate([x["n_igm"][:, 1, 1, 1, 0] for x, _ in ds.take(3).as_numpy_iterator()])
  assert len(np.unique(values)) <= 5


def test_volume_dataset_covers_slab_in_c_order():
  shape = (7, 6, 5)
  n_igm, n_src, _ = triple(shape)
  ds = pipeline.volume_dataset(n_igm, n_src, 2, 16, x_start=3, x_stop=6)
  assert set(ds.element_spec) == {"n_igm", "n_src"}
  centres = np.concatenate([x["n_igm"][:, 2, 2, 2, 0] for x in ds.as_numpy_iterator()])
  np.testing.assert_array_equal(centres, n_igm[3:6].ravel())


@pytest.mark.parametrize("kwargs, message", [
    (dict(fields=[triple((6, 6, 6))[:2] +
                  (np.zeros((6, 6, 5), np.float32),)]), "x_hii of fields\\[0\\] has shape"),
    (dict(fields=[triple((6, 6, 6))], batch_size=0), "batch_size"),
    (dict(fields=[triple((6, 6, 6))], region=(4, 9)), "region"),
    (dict(fields=[triple((6, 6, 6))], region="holdout"), "region must be one of"),
])
def test_make_dataset_errors(kwargs, message):
  args = dict(radius=1, batch_size=4, training=True)
  args.update(kwargs)
  with pytest.raises(ValueError, match=message):
    pipeline.make_dataset(**args)


@pytest.mark.backend
def test_fit_and_predict_on_pipeline_new_centres_each_epoch():
  radius = 4
  config = model_lib.ModelConfig(radius=radius, kernel_size=3, filters=2, stride_conv=1,
                                 kernel_pooling=2, padding="same", dense_units=(8, 8, 8, 8, 8),
                                 tail_units=(4, 4))
  shape = (16, 12, 10)
  fields = [triple(shape)]
  steps = 3

  def position_as_target(position, element):
    # The target becomes the position of the batch in the stream that fit reads,
    # so the logged mean target tells which batches each epoch consumed.
    inputs, _ = element
    return inputs, tf.fill((4, 1), tf.cast(position, tf.float32))

  def mean_target(y_true, y_pred):
    del y_pred
    return keras.ops.mean(y_true)

  train = pipeline.make_dataset(fields, radius, 4, training=True, seed=0)
  val = pipeline.make_dataset(fields, radius, 4, training=False, num_examples=8)
  model = model_lib.build_model(config)
  model.compile(optimizer="adam", loss="mse", metrics=[mean_target])
  history = model.fit(train.enumerate().map(position_as_target), epochs=2, steps_per_epoch=steps,
                      validation_data=val, verbose=0)
  assert np.isfinite(history.history["loss"]).all()
  # Epoch 2 continues the stream (batches 3..5) instead of restarting it (0..2).
  np.testing.assert_allclose(history.history["mean_target"], [1.0, 4.0])
  predictions = model.predict(
      pipeline.volume_dataset(fields[0][0], fields[0][1], radius, 64, x_start=0, x_stop=2),
      verbose=0)
  assert predictions.shape == (2 * 12 * 10, 1)
  assert np.all((predictions >= 0) & (predictions <= 1))


@pytest.mark.slow
def test_512_box_peak_memory_below_twice_fields():
  result = subprocess.run([
      sys.executable, "-m", "keras_cnn.benchmarks.pipeline", "--memory_check", "--memory_cells=512"
  ], capture_output=True, text=True, check=True, timeout=600, env={
      **os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"
  })
  line = [text for text in result.stdout.splitlines() if text.startswith("{")][-1]
  report = json.loads(line)
  assert report["fields_bytes"] == 3 * 512 ** 3 * 4
  # Growth of the peak over tensorflow's own baseline (~1 GB of libraries).
  growth = report["peak_rss_bytes"] - report["rss_before_fields_bytes"]
  assert growth < 2 * report["fields_bytes"], report


def test_fields_are_not_graph_constants():
  fields = [triple((64, 64, 64))]  # 1 MiB per field
  ds = pipeline.make_dataset(fields, 2, 8, training=True)
  assert len(ds._as_serialized_graph().numpy()) < 100_000  # pylint: disable=protected-access


def test_memory_mapped_fields(tmp_path):
  n_igm, n_src, x_hii = triple((10, 9, 8))
  paths = []
  for name, array in (("n_igm", n_igm), ("n_src", n_src), ("x_hii", x_hii)):
    paths.append(tmp_path / f"{name}.npy")
    np.save(paths[-1], array)
  mapped = tuple(np.load(path, mmap_mode="r") for path in paths)
  ds = pipeline.make_dataset([mapped], 2, 90, training=False)
  targets = np.concatenate([y for _, y in ds.as_numpy_iterator()])[:, 0]
  np.testing.assert_array_equal(targets, x_hii.ravel())
  crops = pipeline.periodic_crops(list(mapped[:2]), np.array([[0, 8, 7]]), 2)
  np.testing.assert_array_equal(crops[1][0], reference_crop(n_src, (0, 8, 7), 2))


@pytest.mark.parametrize("augment", [False, True])
def test_patches_hold_their_targets_at_the_centre_of_their_context(augment):
  """With x_HII equal to the density field, each target block must be the inner P^3
  of its (P+2r)^3 context, whatever symmetry the patch got; contexts wrap periodically."""
  rng = np.random.default_rng(0)
  field = rng.random((9, 7, 8), dtype=np.float32)
  radius, size = 3, 4
  dataset = pipeline.make_patch_dataset([(field, field * 0 + 1, field)], radius, size, 5,
                                        training=True, seed=3, augment=augment)
  inputs, targets = next(iter(dataset.as_numpy_iterator()))
  assert inputs["n_igm"].shape == (5, 10, 10, 10, 1)
  blocks = targets.reshape(5, size, size, size)
  inner = inputs["n_igm"][:, radius:radius + size, radius:radius + size, radius:radius + size, 0]
  np.testing.assert_array_equal(blocks, inner)
  if not augment:  # the context is the periodic window at the patch corner
    corner = [int(np.flatnonzero(np.isclose(field, inner[0, 0, 0, 0]))[0])]
    x, y, z = np.unravel_index(corner[0], field.shape)
    index = np.ix_(
        *[np.arange(c - radius, c + size + radius) % n for c, n in zip((x, y, z), field.shape)])
    np.testing.assert_array_equal(inputs["n_igm"][0, ..., 0], field[index])


def test_patches_stay_inside_their_slab():
  shape = (80, 6, 6)
  x_index = np.broadcast_to(np.arange(80, dtype=np.float32)[:, None, None], shape).copy()
  radius, size = 3, 4
  regions = pipeline.split_regions(shape, radius)
  for split in ("train", "validation"):
    dataset = pipeline.make_patch_dataset([(x_index, x_index, x_index)], radius, size, 8,
                                          training=split == "train", seed=1, region=split,
                                          num_patches=6)
    _, targets = next(iter(dataset.as_numpy_iterator()))
    start, stop = regions[split]
    assert start <= targets.min() and targets.max() < stop, split
  with pytest.raises(ValueError, match="narrower than --patch_size=20"):
    pipeline.make_patch_dataset([(x_index, x_index, x_index)], radius, 20, 2, training=True,
                                region="validation")

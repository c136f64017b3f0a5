"""The record of the training inputs in a shared model, and the check of new boxes."""

import dataclasses
import os

import keras
import numpy as np
import pytest

from keras_cnn import domain
from keras_cnn import model as model_lib
from keras_cnn import training
from keras_cnn.data import simulate
from keras_cnn.data import snapshot as snapshot_lib

from test_train import TINY

UNITS = "sources per cell"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """(path of a model trained tiny on synthetic data, the model loaded safely)."""
  workdir = str(tmp_path_factory.mktemp("run"))
  config = dataclasses.replace(TINY, epochs=1, steps_per_epoch=1, source_units=UNITS)
  training.train_and_evaluate(config, workdir)
  path = os.path.join(workdir, "model.keras")
  return path, keras.saving.load_model(path, safe_mode=True)


def _box(seed=11, source_scale=1.0):
  box = simulate.simulate_snapshot(16, seed=seed, sources=TINY.data.synthetic_sources)
  return dataclasses.replace(box, n_src=box.n_src * np.float32(source_scale),
                             name=f"box{seed}x{source_scale:g}")


def test_the_record_travels_in_the_saved_file(trained):
  _, model = trained
  record = domain.read_record(model)
  assert record["source_units"] == UNITS and record["version"] == domain.RECORD_VERSION
  train_box = simulate.synthetic_splits(n_cells=16, seed=0,
                                        sources=TINY.data.synthetic_sources)["train"][0]
  want = domain.input_statistics([(train_box.n_igm, train_box.n_src)])
  assert record["sources"]["mean"] == pytest.approx(want["sources"]["mean"])
  assert record["sources"]["nonzero_fraction"] == pytest.approx(want["sources"]["nonzero_fraction"])
  assert record["overdensity"]["variance"] == pytest.approx(want["overdensity"]["variance"])
  assert set(record["sources"]["quantiles"]) == {"0.5", "0.9", "0.99", "0.999"}
  assert record["voxels"] == 16 ** 3 and record["redshifts"] == [pytest.approx(8.397)]


def test_statistics_match_numpy_over_a_slab():
  rng = np.random.default_rng(0)
  igm = rng.normal(size=(12, 5, 4)).astype(np.float32)
  src = (rng.random((12, 5, 4)) < 0.2).astype(np.float32) * 3
  stats = domain.input_statistics([(igm, src)], region=(2, 9))
  assert stats["voxels"] == 7 * 20
  assert stats["overdensity"]["variance"] == pytest.approx(float(igm[2:9].var(dtype=np.float64)))
  assert stats["sources"]["mean"] == pytest.approx(float(src[2:9].mean()))
  assert stats["sources"]["nonzero_fraction"] == pytest.approx(np.count_nonzero(src[2:9]) / 140)
  assert stats["overdensity"]["quantiles"]["0.5"] == pytest.approx(float(np.median(igm[2:9])))


def test_sources_in_other_units_are_named_with_their_numbers(trained):
  path, model = trained
  record = domain.read_record(model)
  far = _box(source_scale=1e3)
  (message,) = domain.check_inputs(model, [far], model_name=path)
  new_mean = float(far.n_src.mean(dtype=np.float64))
  assert f"source mean {new_mean:.4g} vs {record['sources']['mean']:.4g} in training" in message
  assert "more than 10x" in message and f"'{UNITS}'" in message
  assert "non-zero" not in message and "overdensity" not in message  # only the units differ
  with pytest.raises(domain.DomainError,
                     match=r"source mean .*\(refused by --strict_domain\)$") as error:
    domain.check_inputs(model, [far], strict=True, model_name=path)
  assert "\n" not in str(error.value)


def test_a_box_like_the_training_boxes_passes(trained):
  _, model = trained
  assert domain.check_inputs(model, [_box(seed=12)], strict=True) == []


def test_a_smoother_density_and_sparser_sources_are_caught(trained):
  _, model = trained
  box = _box(seed=13)
  record = domain.read_record(model)
  mean = float(box.rho.mean())
  smooth = dataclasses.replace(box, rho=(mean + (box.rho - mean) * 0.3).astype(np.float32))
  (message,) = domain.check_inputs(model, [smooth])
  assert "overdensity variance" in message
  assert "source mean" not in message and "non-zero" not in message
  sparse_src = np.zeros_like(box.n_src)
  sparse_src[0, 0, 0] = float(box.n_src.sum())
  sparse = dataclasses.replace(box, n_src=sparse_src)
  (message,) = domain.check_inputs(model, [sparse])
  assert "fraction of non-zero source cells" in message
  assert record["sources"]["nonzero_fraction"] > 10 / 16 ** 3


def test_a_model_without_record_is_said_once_and_used(monkeypatch):
  messages = []
  monkeypatch.setattr(domain, "_warned_no_record", False)
  monkeypatch.setattr(domain.logging, "warning", lambda *args: messages.append(args))
  old = model_lib.build_model(
      model_lib.ModelConfig(radius=2, kernel_size=3, filters=2, stride_conv=1, padding="same"))
  assert domain.read_record(old) is None
  for _ in range(2):
    assert domain.check_inputs(old, [_box(source_scale=1e3)], strict=True) == []
  assert len(messages) == 1 and "carries no record" in messages[0][0]


def test_predict_warns_on_stderr_and_strict_domain_stops_it(trained, tmp_path, run_module):
  path, _ = trained
  data_dir = str(tmp_path / "far")
  snapshot_lib.save_snapshot(_box(source_scale=1e3), data_dir)
  out = tmp_path / "x.npy"
  result = run_module("keras_cnn.predict", f"--model={path}", f"--data_dir={data_dir}",
                      f"--out={out}", "--noprogress")
  assert result.returncode == 0, result.stderr[-2000:]
  assert "source mean" in result.stderr and "more than 10x" in result.stderr
  strict = run_module("keras_cnn.predict", f"--model={path}", f"--data_dir={data_dir}",
                      f"--out={tmp_path / 'y.npy'}", "--noprogress", "--strict_domain")
  assert strict.returncode == 2
  errors = [line for line in strict.stderr.splitlines() if line.startswith("Error:")]
  assert len(errors) == 1 and "source mean" in errors[0]
  assert not (tmp_path / "y.npy").exists()


# --- --source_transform=mean_scaled: sources over their box mean, in any unit.


def test_scale_sources_divides_by_the_box_mean():
  n_src = np.array([[[0.0, 2.0], [6.0, 0.0]]], np.float32)
  np.testing.assert_allclose(snapshot_lib.scale_sources(n_src), n_src / 2.0)
  assert not snapshot_lib.scale_sources(np.zeros((2, 2, 2), np.float32)).any()
  box = _box()
  assert snapshot_lib.for_model(box, "log1p") is box
  scaled = snapshot_lib.for_model(box, "mean_scaled")
  assert float(scaled.n_src.mean(dtype=np.float64)) == pytest.approx(1.0, rel=1e-5)
  assert scaled.rho is box.rho
  np.testing.assert_allclose(scaled.n_src, box.n_src / box.n_src.mean(dtype=np.float64), rtol=1e-6)


def test_a_mean_scaled_model_takes_sources_in_any_unit(tmp_path):
  from keras_cnn import inference

  keras.utils.set_random_seed(0)
  config = model_lib.ModelConfig(radius=3, kernel_size=3, filters=2, stride_conv=1, padding="valid",
                                 dense_units=(8, 8, 8, 8, 8), tail_units=(4, 4),
                                 source_transform="mean_scaled")
  model = model_lib.build_model(config, n_src_stats=(0.5, 0.3))
  path = str(tmp_path / "m.keras")
  model.save(path)
  loaded = keras.saving.load_model(path, safe_mode=True)
  assert model_lib.source_transform_of(loaded) == "mean_scaled"
  maps = []
  for scale in (1.0, 1e3):
    box = snapshot_lib.for_model(_box(source_scale=scale), model_lib.source_transform_of(loaded))
    maps.append(inference.predict_map(loaded, box.n_igm, box.n_src, progress=False))
  np.testing.assert_allclose(maps[0], maps[1], rtol=1e-4, atol=1e-6)
  log1p = model_lib.build_model(dataclasses.replace(config, source_transform="log1p"),
                                n_src_stats=(0.5, 0.3))
  log1p.set_weights(model.get_weights())
  raw = [
      inference.predict_map(log1p, box.n_igm, box.n_src, progress=False)
      for box in (_box(), _box(source_scale=1e3))
  ]
  assert np.abs(raw[0] - raw[1]).max() > 1e-3  # the plain log1p model is not unit-free


def test_training_with_mean_scaled_sources_records_the_scaled_inputs(tmp_path):
  from keras_cnn.data import splits as splits_lib

  box = _box()
  shared = {split: splits_lib.SplitData([box], region=(0, 4)) for split in ("train", "test")}
  converted = splits_lib.for_model(shared, "mean_scaled")
  assert converted["train"].snapshots[0] is converted["test"].snapshots[0]
  config = dataclasses.replace(
      TINY, epochs=1, steps_per_epoch=1, model=dataclasses.replace(TINY.model,
                                                                   source_transform="mean_scaled"))
  workdir = str(tmp_path / "run")
  training.train_and_evaluate(config, workdir)
  model = keras.saving.load_model(os.path.join(workdir, "model.keras"), safe_mode=True)
  record = domain.read_record(model)
  assert record["sources"]["mean"] == pytest.approx(1.0, rel=1e-5)
  far = snapshot_lib.for_model(_box(source_scale=1e3), "mean_scaled")
  assert domain.check_inputs(model, [far], strict=True) == []


def test_the_simulator_s_source_unit_is_recorded_unless_given():
  """Left at its default, --source_units records the built-in simulator's unit; a given
  unit, or the user's own snapshots, keep theirs."""
  assert training.recorded_source_units(TINY) == "simulator photons"
  counts = dataclasses.replace(TINY, data=dataclasses.replace(TINY.data,
                                                              synthetic_sources="counts"))
  assert training.recorded_source_units(counts) == "simulator counts"
  assert training.recorded_source_units(dataclasses.replace(TINY, source_units=UNITS)) == UNITS
  own = dataclasses.replace(TINY, data=dataclasses.replace(TINY.data, data_dir="/data/c2ray"))
  assert training.recorded_source_units(own) == domain.DEFAULT_SOURCE_UNITS

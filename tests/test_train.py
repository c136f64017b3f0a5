"""End to end on a tiny synthetic box: artifacts, metrics, resume after a crash."""

import csv
import dataclasses
import json
import os

import keras
import numpy as np
import pytest

from keras_cnn import conventions
from keras_cnn import training
from keras_cnn.model import ModelConfig, build_model

TINY = training.TrainConfig(
    model=ModelConfig(radius=2, kernel_size=3, filters=2, stride_conv=1, kernel_pooling=1,
                      padding="same", dense_units=(8, 8, 8, 8, 8), tail_units=(4, 4)),
    data=training.DataConfig(n_cells=16), batch_size=8, epochs=3, steps_per_epoch=3,
    validation_examples=32, test_examples=64, patience=0, time_budget_minutes=0, train_unit="voxel")

ARTIFACTS = ("model.keras", "metrics.json", "history.csv", "flags.txt", "history.png",
             "pred_vs_true.png")


class CrashAtEpoch(keras.callbacks.Callback):
  """Stands in for a kill: the process dies when `epoch` begins."""

  def __init__(self, epoch):
    super().__init__()
    self.epoch = epoch

  def on_epoch_begin(self, epoch, logs=None):
    if epoch == self.epoch:
      raise KeyboardInterrupt(f"killed at epoch {epoch}")


def _history(workdir):
  with open(os.path.join(workdir, "history.csv")) as f:
    return list(csv.DictReader(f))


@pytest.mark.backend
def test_train_writes_every_artifact(tmp_path):
  workdir = str(tmp_path / "run")
  metrics = training.train_and_evaluate(TINY, workdir)
  for name in ARTIFACTS:
    assert os.path.getsize(os.path.join(workdir, name)) > 0, name
  assert os.path.isdir(os.path.join(workdir, "logs"))
  assert not os.path.exists(os.path.join(workdir, "backup"))  # finished runs clean up
  with open(os.path.join(workdir, "metrics.json")) as f:
    on_disk = json.load(f)
  assert on_disk == metrics
  assert set(metrics) >= {"r2", "mse", "mean_xhii_true", "mean_xhii_pred"}
  assert metrics["num_voxels"] == 64
  assert 0.0 <= metrics["mean_xhii_pred"] <= 1.0
  rows = _history(workdir)
  assert [int(r["epoch"]) for r in rows] == [0, 1, 2]
  assert {"loss", "val_loss", "r2", "val_r2"} <= set(rows[0])
  model = keras.saving.load_model(os.path.join(workdir, "model.keras"), safe_mode=True)
  assert model.get_layer("n_igm").batch_shape == (None, 5, 5, 5, 1)


def test_killed_run_resumes_at_the_next_epoch(tmp_path):
  workdir = str(tmp_path / "run")
  with pytest.raises(KeyboardInterrupt):
    training.train_and_evaluate(TINY, workdir, extra_callbacks=[CrashAtEpoch(1)])
  assert [int(r["epoch"]) for r in _history(workdir)] == [0]
  assert not os.path.exists(os.path.join(workdir, "metrics.json"))

  started = []

  class Record(keras.callbacks.Callback):

    def on_epoch_begin(self, epoch, logs=None):
      started.append(epoch)

  training.train_and_evaluate(TINY, workdir, extra_callbacks=[Record()])
  assert started == [1, 2]  # epoch 0 is not trained again
  assert [int(r["epoch"]) for r in _history(workdir)] == [0, 1, 2]
  assert os.path.exists(os.path.join(workdir, "metrics.json"))


def test_finished_workdir_is_not_trained_again(tmp_path):
  workdir = str(tmp_path / "run")
  first = training.train_and_evaluate(TINY, workdir)
  mtime = os.path.getmtime(os.path.join(workdir, "model.keras"))
  assert training.train_and_evaluate(TINY, workdir) == first
  assert os.path.getmtime(os.path.join(workdir, "model.keras")) == mtime


def test_main_prints_the_test_metrics(tmp_path, capsys):
  from absl import flags
  from keras_cnn import train
  flags.FLAGS([
      "train", f"--workdir={tmp_path}", "--n_cells=16", "--radius=2", "--kernel_size=3",
      "--filters=2", "--kernel_pooling=1", "--stride_conv=1", "--padding=same",
      "--train_unit=voxel", "--epochs=1", "--steps_per_epoch=2", "--batch_size=8",
      "--validation_examples=16", "--test_examples=16"
  ])
  try:
    train.main(["train"])
  finally:
    flags.FLAGS.unparse_flags()
  line = capsys.readouterr().out.strip().splitlines()[-1]
  assert json.loads(line)["num_voxels"] == 16
  assert "--radius=2" in open(tmp_path / "flags.txt").read()
  np.testing.assert_allclose(
      json.loads(line)["r2"],
      json.load(open(tmp_path / "metrics.json"))["r2"])


PATCH = dataclasses.replace(TINY, model=dataclasses.replace(TINY.model, radius=3, padding="valid"),
                            train_unit="patch", patch_size=4, batch_size=2, validation_patches=3)


@pytest.mark.backend
def test_patch_training_saves_a_per_voxel_model_both_engines_agree_on(tmp_path):
  from keras_cnn import inference
  from keras_cnn.data import simulate

  workdir = str(tmp_path / "run")
  metrics = training.train_and_evaluate(PATCH, workdir)
  # 'valid' models are scored on every voxel of the 16^3 test box
  assert metrics["num_voxels"] == 16 ** 3
  rows = _history(workdir)
  assert [int(r["epoch"]) for r in rows] == [0, 1, 2]
  assert all(np.isfinite(float(r["val_loss"])) for r in rows)
  model = inference.load_model(os.path.join(workdir, "model.keras"))
  assert isinstance(model, keras.Model) and model.name == "keras_cnn"
  assert model.get_layer("n_igm").batch_shape == (None, 7, 7, 7, 1)
  assert {"conv3d_6", "conv3d_17", "dense", "dense_7"} <= {layer.name for layer in model.layers}
  sources = TINY.data.synthetic_sources
  box = simulate.synthetic_splits(n_cells=16, seed=0, sources=sources)["test"][0]
  by_dense = inference.predict_map(model, box.n_igm, box.n_src, engine="dense", progress=False)
  by_voxel = inference.predict_map(model, box.n_igm, box.n_src, engine="per_voxel", progress=False)
  np.testing.assert_allclose(by_dense, by_voxel, atol=1e-5, rtol=0)
  assert metrics["r2"] == pytest.approx(
      1 - np.mean((by_dense - box.x_hii) ** 2) / np.var(box.x_hii), abs=1e-4)


def test_killed_patch_run_resumes(tmp_path):
  workdir = str(tmp_path / "run")
  with pytest.raises(KeyboardInterrupt):
    training.train_and_evaluate(PATCH, workdir, extra_callbacks=[CrashAtEpoch(2)])
  assert [int(r["epoch"]) for r in _history(workdir)] == [0, 1]
  training.train_and_evaluate(PATCH, workdir)
  assert [int(r["epoch"]) for r in _history(workdir)] == [0, 1, 2]
  assert os.path.exists(os.path.join(workdir, "model.keras"))


def test_cosine_schedule_decays_to_zero_over_the_steps():
  model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)])
  training.compile_model(model, 0.01, False, loss="bce")
  schedule = training.CosineSchedule(0.01, minutes=0, total_steps=4)
  schedule.set_model(model)
  schedule.on_train_begin()
  rates = []
  for step in range(5):
    schedule.on_train_batch_begin(step)
    rates.append(float(keras.ops.convert_to_numpy(model.optimizer.learning_rate)))
  np.testing.assert_allclose(rates, [
      0.01, 0.01 * (1 + np.cos(np.pi / 4)) / 2, 0.005, 0.01 * (1 + np.cos(3 * np.pi / 4)) / 2, 0.0
  ], atol=1e-7)
  with pytest.raises(ValueError, match="--loss must be one of"):
    training.compile_model(model, 0.01, False, loss="huber")


@pytest.mark.backend
def test_ema_run_validates_and_saves_the_averaged_weights(tmp_path):
  """With --ema_momentum the shared model holds the moving average of the weights, not
  the last raw weights, and the run resumes and finishes like any other."""
  config = dataclasses.replace(TINY, ema_momentum=0.5, epochs=2)
  model = build_model(config.model)
  training.compile_model(model, 0.05, False, ema_momentum=0.5)
  rng = np.random.default_rng(0)
  shape = (16,) + model.inputs[0].shape[1:]
  inputs = {"n_igm": rng.normal(size=shape), "n_src": rng.poisson(1.0, size=shape) * 1.0}
  path = str(tmp_path / "best.keras")
  model.fit(inputs, rng.random((16, 1)), validation_data=(inputs, rng.random((16, 1))), epochs=1,
            verbose=0, callbacks=[keras.callbacks.SwapEMAWeights(),
                                  training.SaveBest(path)])
  saved = keras.saving.load_model(path, safe_mode=True)
  average = [keras.ops.convert_to_numpy(v) for v in model.optimizer._model_variables_moving_average]
  saved_trainable = [keras.ops.convert_to_numpy(v) for v in saved.trainable_variables]
  for got, want in zip(saved_trainable, average):  # one epoch: the average at its end
    np.testing.assert_allclose(got, want, atol=1e-6)
  metrics = training.train_and_evaluate(config, str(tmp_path / "run"))
  assert np.isfinite(metrics["r2"])


def test_foreign_or_changed_workdirs_are_refused(tmp_path):
  from keras_cnn import errors

  foreign = tmp_path / "mine"
  foreign.mkdir()
  (foreign / "flags.txt").write_text("the user's own notes")
  with pytest.raises(errors.UserError, match="holds files keras_cnn did not write"):
    training.train_and_evaluate(TINY, str(foreign))
  assert (foreign / "flags.txt").read_text() == "the user's own notes"
  assert sorted(os.listdir(foreign)) == ["flags.txt"]

  workdir = str(tmp_path / "run")
  with pytest.raises(KeyboardInterrupt):
    training.train_and_evaluate(TINY, workdir, extra_callbacks=[CrashAtEpoch(1)])
  flags_before = open(os.path.join(workdir, "flags.txt")).read()
  changed = dataclasses.replace(TINY, learning_rate=0.01,
                                model=dataclasses.replace(TINY.model, filters=3))
  with pytest.raises(errors.UserError, match=r"--filters, --learning_rate differ"):
    training.train_and_evaluate(changed, workdir)
  assert open(os.path.join(workdir, "flags.txt")).read() == flags_before
  longer = dataclasses.replace(TINY, epochs=4)  # harmless: the same run, trained longer
  training.train_and_evaluate(longer, workdir)
  assert [int(r["epoch"]) for r in _history(workdir)] == [0, 1, 2, 3]


def _rewrite_manifest(workdir, drop=(), drop_top=()):
  path = os.path.join(workdir, conventions.MANIFEST_FILE)
  with open(path) as stream:
    manifest = json.load(stream)
  for key in drop:
    del manifest["settings"][key]
  for key in drop_top:
    del manifest[key]
  with open(path, "w") as stream:
    json.dump(manifest, stream)


def test_a_run_begun_by_an_older_version_resumes_unless_its_computation_changed(
    tmp_path, snapshot_dir):
  """Manifests written before a setting existed read it as the value those runs had."""
  from keras_cnn import errors
  from keras_cnn import runs

  workdir = str(tmp_path / "old")
  os.makedirs(workdir)
  runs.check_or_create(workdir, TINY)
  _rewrite_manifest(workdir, drop=("conditioning", "data_format", "train_dirs", "source_units"),
                    drop_top=("slab_layout",))
  assert runs.check_or_create(workdir, TINY)  # resumes: nothing it computes changed
  _rewrite_manifest(workdir, drop=("batch_norm_momentum",))  # those runs had Keras' 0.99
  with pytest.raises(errors.UserError, match=r"--batch_norm_momentum differ"):
    runs.check_or_create(workdir, TINY)

  on_folder = dataclasses.replace(TINY, data=training.DataConfig(data_dir=snapshot_dir()))
  workdir = str(tmp_path / "slabs")
  os.makedirs(workdir)
  runs.check_or_create(workdir, on_folder)
  assert runs.check_or_create(workdir, on_folder)
  _rewrite_manifest(workdir, drop_top=("slab_layout",))  # the release before: same slabs
  assert runs.check_or_create(workdir, on_folder)
  _rewrite_manifest(workdir, drop=("batch_norm_momentum", "source_units"))  # older: other slabs
  with pytest.raises(errors.UserError, match=r"other x-slabs"):
    runs.check_or_create(workdir, on_folder)


def test_patch_training_on_one_user_box_with_thin_slabs(tmp_path, snapshot_dir):
  """--data_dir with one box: validation/test slabs thinner than a patch still work."""
  from keras_cnn.data import simulate

  data_dir = snapshot_dir(simulate.synthetic_splits(n_cells=(24, 12, 12), seed=0)["train"][0])
  config = dataclasses.replace(PATCH, data=training.DataConfig(data_dir=data_dir), patch_size=6,
                               epochs=1)
  metrics = training.train_and_evaluate(config, str(tmp_path / "run"))
  # test slab: 10% of the 24 planes, rounded up, scored on every voxel
  assert metrics["num_voxels"] == 3 * 12 * 12


def test_train_reads_the_layout_flags_and_records_them(tmp_path, parse_flags, snapshot_dir):
  """--data_format and --box_size_mpc reach train's loader and define the run."""
  from keras_cnn import errors
  from keras_cnn import runs
  from keras_cnn import train
  from keras_cnn.data import simulate

  box = simulate.simulate_snapshot(16, seed=3)
  data_dir = snapshot_dir(box)
  with open(os.path.join(data_dir, "8.397n_all.dat"), "wb") as stream:  # a CubeP3M density
    stream.write(np.array(box.shape, np.int32).tobytes() + (box.rho * 2).tobytes("F"))
  values = parse_flags("train", f"--data_dir={data_dir}", "--data_format=npy", "--box_size_mpc=244")
  parsed = train.config_from_flags(values)
  assert (parsed.data.data_format, parsed.data.box_size_mpc) == ("npy", 244.0)
  settings = runs.manifest_for(parsed)["settings"]
  assert (settings["data_format"], settings["box_size_mpc"]) == ("npy", 244.0)

  detect = dataclasses.replace(TINY, data=training.DataConfig(data_dir=data_dir), epochs=1)
  with pytest.raises(errors.UserError, match="choose a layout with --data_format"):
    training.train_and_evaluate(detect, str(tmp_path / "auto"))
  npy = dataclasses.replace(detect, data=dataclasses.replace(detect.data, data_format="npy"))
  workdir = str(tmp_path / "npy")
  assert training.train_and_evaluate(npy, workdir)["num_voxels"] == TINY.test_examples
  with pytest.raises(errors.UserError, match="--data_format differ"):
    training.train_and_evaluate(detect, workdir)


def test_training_on_several_snapshots_scores_the_whole_test_snapshot(tmp_path, snapshot_dir):
  """--test_redshifts: test is a whole snapshot; train and validation share slabs of the
  other two redshifts of the folder."""
  from keras_cnn.data import simulate

  for z, mean_xhii in ((7.305, 0.7), (8.397, 0.5), (9.5, 0.3)):
    data_dir = snapshot_dir(simulate.simulate_snapshot(16, seed=4, redshift=z, mean_xhii=mean_xhii),
                            name="boxes")
  data = training.DataConfig(data_dir=data_dir, test_redshifts=(7.305,))
  config = dataclasses.replace(PATCH, data=data, epochs=1)
  workdir = str(tmp_path / "run")
  metrics = training.train_and_evaluate(config, workdir)
  assert metrics["num_voxels"] == 16 ** 3
  assert metrics["mean_xhii_true"] == pytest.approx(0.7, abs=0.01)
  with open(os.path.join(workdir, conventions.MANIFEST_FILE)) as stream:
    settings = json.load(stream)["settings"]
  assert settings["test_redshifts"] == [7.305] and settings["train_redshifts"] is None

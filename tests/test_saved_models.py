"""The shipped model: loads safely, has its card, and paints a useful map out of the box."""

import os
import subprocess
import sys

import keras
import numpy as np
import pytest

import keras_cnn  # noqa: F401  (registers the custom layers)
from keras_cnn import metrics as metrics_lib
from keras_cnn import inference
from keras_cnn.data import simulate

from helpers import REPO

SHIPPED = os.path.join(REPO, "saved_models", "default_r15_synthetic64.keras")


@pytest.fixture(scope="module")
def shipped():
  return keras.saving.load_model(SHIPPED, safe_mode=True)


def test_shipped_model_is_small_and_its_card_rebuilds_it(shipped, parse_flags):
  """The card's train command, parsed by train's own flags, builds the shipped network."""
  from keras_cnn import domain
  from keras_cnn import model as model_lib
  from keras_cnn import train
  from keras_cnn import training

  assert os.path.getsize(SHIPPED) < 8 * 2 ** 20
  card = open(SHIPPED.replace(".keras", ".md")).read()
  command = next(line for line in card.splitlines() if "python -m keras_cnn.train" in line)
  config = train.config_from_flags(
      parse_flags("train",
                  *command.split("keras_cnn.train")[1].split()))
  rebuilt = model_lib.build_model(config.model)
  assert rebuilt.count_params() == shipped.count_params()
  assert [layer.name for layer in rebuilt.layers] == [layer.name for layer in shipped.layers]
  assert model_lib.source_transform_of(shipped) == config.model.source_transform
  # ... and the unit its sources are in, which the card's data flags give.
  assert domain.read_record(shipped)["source_units"] == training.recorded_source_units(config)


def test_shipped_model_keeps_the_original_names(shipped):
  names = {layer.name for layer in shipped.layers}
  assert {"conv3d_6", "conv3d_17", "dense", "dense_7", "normalize_n_igm"} <= names
  assert shipped.get_layer("n_igm").batch_shape == (None, 31, 31, 31, 1)
  assert {layer.dtype_policy.name for layer in shipped.layers} == {"float32"}


def test_import_keras_cnn_alone_loads_a_shared_model():
  """A collaborator who receives a .keras file needs `import keras_cnn` and nothing else;
  the import registers the layers without loading the pipeline, training or plotting."""
  code = f"""
import sys
import keras
import keras_cnn
model = keras.saving.load_model({SHIPPED!r}, safe_mode=True)
print(model.get_layer("source_transform").kind, model.count_params())
heavy = ("keras_cnn.pipeline", "keras_cnn.training", "keras_cnn.inference", "keras_cnn.plots")
print([name for name in heavy if name in sys.modules])
"""
  result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          cwd=REPO, env={
                              **os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"
                          })
  assert result.returncode == 0, result.stderr[-2000:]
  described, heavy_loaded = result.stdout.strip().splitlines()[-2:]
  assert described == "none 316354"
  assert heavy_loaded == "[]"


@pytest.mark.backend
def test_shipped_model_predicts_an_unseen_box(shipped):
  """On a new realization (seed never used in training) it beats the local baseline."""
  box = simulate.simulate_snapshot(40, seed=12345, sources="photons")  # as it was trained
  assert inference.resolve_engine(shipped) == "dense"
  x_hii = inference.predict_map(shipped, box.n_igm, box.n_src, progress=False)
  assert x_hii.shape == (40, 40, 40) and x_hii.dtype == np.float32
  assert np.all((x_hii >= 0) & (x_hii <= 1))
  score = metrics_lib.regression_metrics(box.x_hii, x_hii)
  assert score["r2"] > 0.7 and abs(score["mean_xhii_pred"] - score["mean_xhii_true"]) < 0.05
  slab = inference.predict_map(shipped, box.n_igm, box.n_src, engine="per_voxel", x_start=0,
                               x_stop=2, progress=False)
  np.testing.assert_allclose(slab, x_hii[:2], atol=1e-5, rtol=0)


def test_predict_command_runs_on_the_shipped_model(tmp_path):
  out = tmp_path / "slab.npy"
  result = subprocess.run([
      sys.executable, "-m", "keras_cnn.predict", f"--model={SHIPPED}", "--dataset=synthetic",
      "--n_cells=40", "--num_shards=40", "--shard_index=7", f"--out={out}", "--noprogress"
  ], capture_output=True, text=True, timeout=300, env={
      **os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"
  })
  assert result.returncode == 0, result.stderr[-2000:]
  assert np.load(out).shape == (1, 40, 40)
  assert "Wrote x_HII map of shape (1, 40, 40)" in result.stdout

"""`python -m keras_cnn.benchmarks.learning_curve`: the best model at each mark, scored."""

import json
import os

import numpy as np

from helpers import TINY_FLAGS


def _curve(run_module, workdir):
  flags = [flag for flag in TINY_FLAGS if not flag.startswith("--epochs")]
  return run_module("keras_cnn.benchmarks.learning_curve", f"--workdir={workdir}",
                    "--marks=0.001,5", "--score_seeds=1", "--epochs=3", *flags, timeout=600)


def test_curve_keeps_and_scores_a_model_per_mark_and_a_rerun_only_rescores(tmp_path, run_module):
  from keras_cnn import inference

  workdir = str(tmp_path / "curve")
  result = _curve(run_module, workdir)
  assert result.returncode == 0, result.stderr[-2000:]
  lines = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
  assert [(line["minutes"], line["box"]) for line in lines] == [(0.001, "seed 1"), (5, "seed 1")]
  for line in lines:
    assert -10 < line["r2"] <= 1 and 0 <= line["ionized_accuracy"] <= 1
  assert "| minutes | test R^2 |" in result.stdout
  with open(os.path.join(workdir, "clock.json")) as stream:
    clock = json.load(stream)
  assert clock["epochs"] == 3 and 0 < clock["seconds"] < 300  # the epochs, not the 5 minutes

  # The first mark passed in epoch 1; the run ended (3 epochs) before the second, which
  # shares the run's final model.
  first = inference.load_model(os.path.join(workdir, "model_at_0.001min.keras"))
  last = inference.load_model(os.path.join(workdir, "model_at_5min.keras"))
  final = inference.load_model(os.path.join(workdir, "run", "model.keras"))
  assert first.input_shape == final.input_shape
  for a, b in zip(last.get_weights(), final.get_weights()):
    np.testing.assert_array_equal(a, b)

  again = _curve(run_module, workdir)
  assert again.returncode == 0, again.stderr[-2000:]
  with open(os.path.join(workdir, "clock.json")) as stream:
    assert json.load(stream) == clock  # nothing trained again
  assert [json.loads(line) for line in again.stdout.splitlines() if line.startswith("{")] == lines

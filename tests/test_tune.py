"""`python -m keras_cnn.tune`: a tiny search writes its table and a flagfile train takes."""

import csv
import dataclasses
import json
import os

import pytest
from helpers import TINY_FLAGS

from keras_cnn import training
from keras_cnn import tuning
from keras_cnn.model import ModelConfig, validate_config


def _rows(workdir):
  with open(os.path.join(workdir, "tuning.csv")) as stream:
    return list(csv.DictReader(stream))


def _tune(run_module, workdir, max_trials, *extra):
  return run_module("keras_cnn.tune", f"--workdir={workdir}", f"--max_trials={max_trials}",
                    "--trial_minutes=0.02", "--search=learning_rate,dropout", "--tuner=random",
                    *TINY_FLAGS, *extra, timeout=900)


def test_tiny_search_writes_table_and_best_flags_that_train_reads(tmp_path, run_module,
                                                                  parse_flags):
  workdir = str(tmp_path / "search")
  result = _tune(run_module, workdir, 2)
  assert result.returncode == 0, result.stderr[-2000:]
  rows = _rows(workdir)
  assert [row["trial"] for row in rows] == sorted(row["trial"] for row in rows)
  assert len(rows) == 2
  for row in rows:
    assert float(row["learning_rate"]) in tuning.LEVERS["learning_rate"].choices
    assert row["dropout"] in tuning.LEVERS["dropout"].choices
    assert int(row["epochs"]) == 1 and float(row["minutes"]) > 0
    assert -1.0 <= float(row["val_r2"]) <= 1.0
  best = max(rows, key=lambda row: float(row["val_r2"]))
  assert json.loads(result.stdout.strip().splitlines()[-1])["best"]["trial"] == best["trial"]

  from keras_cnn import train  # defines train's flags
  flags = parse_flags("train", f"--flagfile={os.path.join(workdir, 'best.flags')}")
  config = train.config_from_flags(flags)
  assert config.learning_rate == float(best["learning_rate"])
  first, hidden = (float(v) for v in best["dropout"].split(","))
  assert (config.model.dropout_input, config.model.dropout_hidden) == (first, hidden)
  assert config.model.radius == 3 and config.data.n_cells == 16 and config.patch_size == 4


@pytest.mark.slow
def test_search_goes_on_after_a_rerun_and_refuses_other_settings(tmp_path, run_module):
  workdir = str(tmp_path / "search")
  assert _tune(run_module, workdir, 1).returncode == 0
  first = _rows(workdir)
  result = _tune(run_module, workdir, 2)
  assert result.returncode == 0, result.stderr[-2000:]
  rows = _rows(workdir)
  assert len(rows) == 2 and rows[0] == first[0]  # the finished trial is kept, not rerun
  other = _tune(run_module, workdir, 3, "--learning_rate=0.01")
  assert other.returncode != 0
  assert "holds a search with other settings" in other.stderr.strip().splitlines()[-1]


def test_tune_help_names_every_lever():
  """--search's help lists the settings the search can vary, which are the levers."""
  from keras_cnn import config

  assert tuple(tuning.LEVERS) == config.SEARCHABLE
  assert set(config.DEFAULT_SEARCH) <= set(tuning.LEVERS)


def test_every_lever_choice_gives_a_network_that_builds():
  base = training.TrainConfig()
  for name, lever in tuning.LEVERS.items():
    for choice in lever.choices:
      validate_config(tuning.apply_choices(base, {name: choice}).model)  # raises if not
  config = tuning.apply_choices(base, {"block_filters": "16,32,64", "dropout": "0,0"})
  assert config.model.filters_per_block() == (16, 32, 64)
  assert config.model.dropout_input == 0.0 and config.model.dropout_hidden == 0.0
  assert tuning.apply_choices(base, {"learning_rate": 0.004}).learning_rate == 0.004


def test_config_flags_name_only_changed_settings():
  config = dataclasses.replace(training.TrainConfig(), learning_rate=0.002, augment=False,
                               model=dataclasses.replace(ModelConfig(), block_filters=(16, 32, 64)))
  assert tuning.config_flags(config) == [
      "--block_filters=16,32,64", "--learning_rate=0.002", "--noaugment"
  ]
  assert tuning.config_flags(training.TrainConfig()) == []

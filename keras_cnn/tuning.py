"""A hyperparameter search over the training config, on KerasTuner.

`search(base, workdir, ...)` runs trials of `keras_cnn.training.train_and_evaluate`, each
a full training run under the same wall-clock budget in its own workdir
(`workdir/trials/<trial id>`), and scores each trained model on every voxel of the
validation split through the dense twin (validation R^2, the objective). KerasTuner's
oracle (Bayesian optimization or random search) proposes the settings and keeps the
search's state in `workdir/oracle`, so a killed search started again with the same
command goes on: finished trials are kept, the interrupted one resumes from its last
epoch (its training workdir resumes like any other).

Written after every trial: `workdir/tuning.csv` (one row per finished trial: its
settings, epochs, minutes, validation R^2 and test R^2) and `workdir/best.flags`, the
flags of the best trial so far, which `python -m keras_cnn.train --flagfile=...` takes.
"""

import csv
import dataclasses
import io
import json
import logging
import os
import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import keras
import numpy as np

from keras_cnn import conditioning
from keras_cnn import config as config_lib
from keras_cnn import conventions
from keras_cnn import errors
from keras_cnn import io_utils
from keras_cnn import training

TUNING_CSV = "tuning.csv"
BEST_FLAGS = "best.flags"
MANIFEST = "keras_cnn_tune.json"
TRIALS_DIR = "trials"
ORACLE_DIR = "oracle"
TUNERS = config_lib.TUNERS


def _ints(text: str) -> Tuple[int, ...]:
  return tuple(int(v) for v in text.split(","))


def _floats_or_none(text: str) -> Tuple[float, ...]:
  return () if text == "none" else tuple(float(v) for v in text.split(","))


def _model(**fields) -> Callable:
  """A setter of ModelConfig fields from one choice (parsed by the field's parser)."""

  def apply(config: training.TrainConfig, value) -> training.TrainConfig:
    updates = {name: parse(value) for name, parse in fields.items()}
    return dataclasses.replace(config, model=dataclasses.replace(config.model, **updates))

  return apply


def _train(name: str) -> Callable:
  return lambda config, value: dataclasses.replace(config, **{name: value})


def _dropout(config: training.TrainConfig, value: str) -> training.TrainConfig:
  first, hidden = (float(v) for v in value.split(","))
  return dataclasses.replace(
      config, model=dataclasses.replace(config.model, dropout_input=first, dropout_hidden=hidden))


@dataclasses.dataclass(frozen=True)
class Lever:
  """One searchable setting: its choices and how a choice changes a TrainConfig."""

  choices: Sequence
  apply: Callable
  help: str


# Every setting the search can vary. Choices are strings where the setting is a list.
LEVERS: Dict[str, Lever] = {
    "learning_rate": Lever((5e-4, 1e-3, 2e-3, 4e-3), _train("learning_rate"), "peak learning rate"),
    "lr_schedule": Lever(training.LR_SCHEDULES, _train("lr_schedule"), "learning-rate schedule"),
    "loss": Lever(tuple(sorted(training.LOSSES)), _train("loss"), "training loss"),
    "batch_size": Lever((2, 4, 8), _train("batch_size"), "patches (or crops) per step"),
    "patch_size": Lever((8, 12, 16), _train("patch_size"), "side of a training patch"),
    "dropout": Lever(("0,0", "0.1,0.05", "0.2,0.1"), _dropout, "--dropout_input,--dropout_hidden"),
    "block_filters": Lever(("16,16,16", "16,32,32", "16,32,64", "32,32,32"),
                           _model(block_filters=_ints), "Conv3D filters per block"),
    "block_strides": Lever(("2,2,2", "1,2,2"), _model(block_strides=_ints),
                           "Conv3D strides per block"),
    "dense_units": Lever(("256,128,64,32,16", "128,128,64,32,16", "64,64,32,32,16"),
                         _model(dense_units=_ints), "widths of dense .. dense_4"),
    "radius": Lever((12, 15), _model(radius=int), "crop radius"),
    "source_transform": Lever(("none", "log1p"), _model(source_transform=str),
                              "source input transform"),
    "fusion": Lever(config_lib.FUSIONS, _model(fusion=str), "where the two branches meet"),
    # Radii up to 11 fit every crop radius above.
    "excursion_radii": Lever(("none", "0,1,2,3,4,6,8,11", "0,1,1.5,2,2.5,3,3.5,4,5,6,7,8,9.5,11"),
                             _model(excursion_radii=_floats_or_none),
                             "sphere radii of the excursion-set features"),
}
DEFAULT_SEARCH = config_lib.DEFAULT_SEARCH


def apply_choices(base: training.TrainConfig, choices: Dict[str, object]) -> training.TrainConfig:
  """`base` with each lever's chosen value applied."""
  config = base
  for name, value in choices.items():
    config = LEVERS[name].apply(config, value)
  return config


def _flag_value(value) -> Optional[str]:
  if value is None:
    return None
  if isinstance(value, (tuple, list)):
    return ",".join(_flag_value(v) for v in value) if value else None
  if isinstance(value, float):
    return repr(value)
  return str(value)


def config_flags(config: training.TrainConfig) -> List[str]:
  """Flag lines (`--name=value`) for every setting of `config` that differs from the
  defaults; the flags of `train` carry the field names of the config dataclasses."""
  lines = []
  pairs = [(config.model, training.TrainConfig().model), (config.data, training.DataConfig()),
           (config, training.TrainConfig())]
  for current, default in pairs:
    for field in dataclasses.fields(current):
      value, reference = getattr(current, field.name), getattr(default, field.name)
      if dataclasses.is_dataclass(value) or value == reference:
        continue
      if isinstance(value, bool):
        lines.append(f"--{'' if value else 'no'}{field.name}")
        continue
      text = _flag_value(value)
      if text is None:
        text = ""
      lines.append(f"--{field.name}={text}")
  return lines


def _check_workdir(workdir: str, identity: dict) -> None:
  """Refuses a folder that holds another search or files keras_cnn did not write."""
  path = os.path.join(workdir, MANIFEST)
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise errors.UserError(f"--workdir={workdir} is a file, not a folder")
  if os.path.isdir(workdir) and os.listdir(workdir):
    if not os.path.isfile(path):
      found = ", ".join(sorted(os.listdir(workdir))[:5])
      raise errors.UserError(f"--workdir={workdir} holds files keras_cnn did not write ({found}); "
                             "choose a new or empty --workdir")
    with open(path) as stream:
      recorded = json.load(stream)
    differ = sorted(k for k in set(recorded) | set(identity) if recorded.get(k) != identity.get(k))
    if differ:
      raise errors.UserError(f"--workdir={workdir} holds a search with other settings "
                             f"({', '.join(differ)} differ); choose a new --workdir")
    return
  os.makedirs(workdir, exist_ok=True)
  io_utils.write_text(path, json.dumps(identity, indent=2, sort_keys=True) + "\n")


def _table(rows: List[dict], names: Sequence[str]) -> str:
  columns = ["trial", *names, "epochs", "minutes", "val_r2", "test_r2"]
  stream = io.StringIO()
  writer = csv.DictWriter(stream, fieldnames=columns, lineterminator="\n", extrasaction="ignore")
  writer.writeheader()
  writer.writerows(rows)
  return stream.getvalue()


def search(base: training.TrainConfig, workdir: str, max_trials: int, trial_minutes: float,
           levers: Sequence[str] = DEFAULT_SEARCH, tuner: str = "bayesian",
           seed: int = 0) -> List[dict]:
  """Runs (or goes on with) a search; returns the rows of tuning.csv, best first.

  Args:
    base: the settings every trial starts from (data, network, training).
    workdir: the search's folder (see the module docstring).
    max_trials: trials in all, those of earlier tries included.
    trial_minutes: wall-clock training budget of each trial.
    levers: names of `LEVERS` to vary.
    tuner: "bayesian" (Gaussian-process Bayesian optimization) or "random".
    seed: the oracle's seed (trials train with `base.seed`).
  """
  import keras_tuner

  unknown = [name for name in levers if name not in LEVERS]
  if unknown or not levers:
    raise errors.UserError(f"--search: unknown or no levers {unknown}; choose from "
                           f"{', '.join(LEVERS)}")
  if tuner not in TUNERS:
    raise errors.UserError(f"--tuner must be one of {TUNERS}, got {tuner!r}")
  identity = {
      "levers": list(levers),
      "tuner": tuner,
      "trial_minutes": trial_minutes,
      "seed": seed,
      "base": config_flags(base),
  }
  _check_workdir(workdir, identity)
  rows: Dict[str, dict] = {}
  splits_cache: Dict[tuple, dict] = {}

  def validation_r2(config: training.TrainConfig, trial_dir: str) -> float:
    radius = config.model.radius
    key = (radius, config.model.source_transform)
    if key not in splits_cache:
      splits_cache[key] = training.load_run_splits(config)
    model = keras.saving.load_model(os.path.join(trial_dir, conventions.MODEL_FILE), safe_mode=True)
    validation = splits_cache[key]["validation"]
    kind = config.model.conditioning
    values = conditioning.values(kind, validation.snapshots) if kind != "none" else None
    scores = training.evaluate_split(model, validation, radius, config.batch_size,
                                     config.validation_examples, seed=config.seed + 1,
                                     conditions=values)
    return float(scores["r2"])

  class _Tuner(keras_tuner.Tuner):
    """Each trial is a whole training run; KerasTuner only proposes and records."""

    def run_trial(self, trial, *args, **kwargs):
      choices = {name: trial.hyperparameters.get(name) for name in levers}
      config = dataclasses.replace(apply_choices(base, choices), time_budget_minutes=trial_minutes)
      trial_dir = os.path.join(workdir, TRIALS_DIR, trial.trial_id)
      logging.info("Trial %s: %s", trial.trial_id,
                   ", ".join(f"{k}={v}" for k, v in choices.items()))
      start = time.monotonic()
      try:
        test = training.train_and_evaluate(config, trial_dir,
                                           flags_text="\n".join(config_flags(config)) + "\n")
        score = validation_r2(config, trial_dir)
      except (errors.UserError, ValueError) as error:  # sizes that cannot build, etc.
        logging.warning("Trial %s failed: %s", trial.trial_id, error)
        score, test = float("-inf"), {}
      history = io_utils.read_history(os.path.join(trial_dir, conventions.HISTORY_FILE))
      rows[trial.trial_id] = {
          "trial": trial.trial_id,
          **choices,
          "epochs": len(history),
          "minutes": round((time.monotonic() - start) / 60.0, 2),
          "val_r2": round(score, 4) if np.isfinite(score) else "",
          "test_r2": round(float(test["r2"]), 4) if "r2" in test else "",
      }
      _write_reports(workdir, rows, levers, base)
      logging.info("Trial %s: validation R^2 %.4f", trial.trial_id, score)
      return {"val_r2": score if np.isfinite(score) else -1e9}

    def save_model(self, trial_id, model, step=0):  # the trial's workdir holds its model
      pass

    def load_model(self, trial):
      raise NotImplementedError("load the trial's model.keras from its workdir")

  hyperparameters = keras_tuner.HyperParameters()
  for name in levers:
    hyperparameters.Choice(name, list(LEVERS[name].choices))
  objective = keras_tuner.Objective("val_r2", direction="max")
  oracle_class = (keras_tuner.oracles.BayesianOptimizationOracle
                  if tuner == "bayesian" else keras_tuner.oracles.RandomSearchOracle)
  oracle = oracle_class(objective=objective, max_trials=max_trials, hyperparameters=hyperparameters,
                        seed=seed)
  runner = _Tuner(oracle=oracle, directory=workdir, project_name=ORACLE_DIR, overwrite=False)
  _reload_rows(workdir, rows, levers)
  runner.search()
  return _sorted_rows(rows)


def _sorted_rows(rows: Dict[str, dict]) -> List[dict]:
  score = lambda row: row["val_r2"] if row["val_r2"] != "" else -np.inf
  return sorted(rows.values(), key=score, reverse=True)


def _reload_rows(workdir: str, rows: Dict[str, dict], levers: Sequence[str]) -> None:
  """Rows of trials finished by an earlier try (tuning.csv), so the table keeps them."""
  path = os.path.join(workdir, TUNING_CSV)
  if not os.path.exists(path):
    return
  with open(path) as stream:
    for row in csv.DictReader(stream):
      row["val_r2"] = float(row["val_r2"]) if row["val_r2"] else ""
      rows[row["trial"]] = row


def _write_reports(workdir: str, rows: Dict[str, dict], levers: Sequence[str],
                   base: training.TrainConfig) -> None:
  """tuning.csv (trials in order) and best.flags (the best trial's train flags)."""
  ordered = [rows[key] for key in sorted(rows)]
  io_utils.write_text(os.path.join(workdir, TUNING_CSV), _table(ordered, levers))
  best = _sorted_rows(rows)[0]
  if best["val_r2"] == "":
    return
  choices = {}
  for name in levers:
    value = best[name]
    kind = type(LEVERS[name].choices[0])
    choices[name] = kind(value) if not isinstance(value, kind) else value
  config = apply_choices(base, choices)
  header = (f"# Best of {len(rows)} trials: validation R^2 {best['val_r2']} after "
            f"{best['epochs']} epochs in {best['minutes']} min (trial {best['trial']}).\n"
            "# Use: python -m keras_cnn.train --flagfile=THIS_FILE --workdir=...\n")
  io_utils.write_text(os.path.join(workdir, BEST_FLAGS),
                      header + "\n".join(config_flags(config)) + "\n")

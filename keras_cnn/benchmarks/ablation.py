"""Ablation under a fixed wall-clock budget: which preset is the CPU default.

`python -m keras_cnn.benchmarks.ablation --budget_minutes=3 --workdir=/tmp/ablation`
(any training flag, e.g. --flagfile, sets the base row) trains each row on the synthetic
training realization for the same wall-clock budget
(`--time_budget_minutes`), scores it on the independent test realization, and prints
one JSON line per row. Every row changes one or two levers from `base` (the default
preset), and `local` is the centre-voxel-only baseline (r=0: the same network sees
one voxel of each field). `--rows=base,local` runs a subset.
"""

import dataclasses
import json
import os
import time

from absl import app
from absl import flags

from keras_cnn import conventions
from keras_cnn import io_utils
from keras_cnn import model as model_lib
from keras_cnn import train  # defines every training flag: the base row is the flags
from keras_cnn import training

FLAGS = flags.FLAGS

ROWS = {
    "base": {},
    "local": dict(radius=0, kernel_size=1, kernel_pooling=1),
    "r4": dict(radius=4),
    "r8": dict(radius=8),
    "r16_stride2": dict(radius=16, stride_conv=2, kernel_pooling=1),
    "r20_stride2": dict(radius=20, stride_conv=2, kernel_pooling=1),
    "r24_pool3": dict(radius=24, kernel_pooling=3),
    "filters8": dict(filters=8),
    "filters32": dict(filters=32),
    "kernel5": dict(kernel_size=5),
    "batch32": dict(batch_size=32),
    "batch128": dict(batch_size=128),
    "lr3e-4": dict(learning_rate=3e-4),
    "lr3e-3": dict(learning_rate=3e-3),
    "no_augment": dict(augment=False),
    "source_none": dict(source_transform="none"),
    "stratify8": dict(stratify_bins=8),
    "dropout_low": dict(dropout_input=0.2, dropout_hidden=0.1),
}

_ROWS = flags.DEFINE_list("rows", list(ROWS), f"Rows to run, from {sorted(ROWS)}.")
_BUDGET = flags.DEFINE_float("budget_minutes", 3.0, "Wall-clock training budget per row.")
flags.adopt_module_key_flags(train)


def row_config(base: training.TrainConfig, overrides: dict) -> training.TrainConfig:
  """`base` with `overrides` applied to the model or the training settings."""
  model_fields = {f.name for f in dataclasses.fields(model_lib.ModelConfig)}
  model_over = {k: v for k, v in overrides.items() if k in model_fields}
  train_over = {k: v for k, v in overrides.items() if k not in model_fields}
  return dataclasses.replace(base, model=dataclasses.replace(base.model, **model_over),
                             **train_over)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  unknown = [r for r in _ROWS.value if r not in ROWS]
  if unknown:
    raise app.UsageError(f"Unknown rows {unknown}; choose from {sorted(ROWS)}")
  base = dataclasses.replace(train.config_from_flags(FLAGS), time_budget_minutes=_BUDGET.value,
                             epochs=1000, patience=0)
  for name in _ROWS.value:
    config = row_config(base, ROWS[name])
    workdir = os.path.join(FLAGS.workdir, name)
    if os.path.exists(os.path.join(workdir, conventions.METRICS_FILE)):
      with open(os.path.join(workdir, conventions.METRICS_FILE)) as f:
        metrics = json.load(f)
      seconds = None
    else:
      start = time.monotonic()
      metrics = training.train_and_evaluate(config, workdir)
      seconds = time.monotonic() - start
    epochs = len(io_utils.read_history(os.path.join(workdir, conventions.HISTORY_FILE)))
    m = config.model
    print(
        json.dumps({
            "row": name,
            "radius": m.radius,
            "filters": m.filters,
            "kernel_size": m.kernel_size,
            "stride_conv": m.stride_conv,
            "kernel_pooling": m.kernel_pooling,
            "batch_size": config.batch_size,
            "learning_rate": config.learning_rate,
            "augment": config.augment,
            "source_transform": m.source_transform,
            "stratify_bins": config.stratify_bins,
            "epochs": epochs,
            "budget_minutes": _BUDGET.value,
            "wall_s": seconds,
            "r2": round(metrics["r2"], 4),
            "mse": metrics["mse"],
            "mean_xhii_true": round(metrics["mean_xhii_true"], 4),
            "mean_xhii_pred": round(metrics["mean_xhii_pred"], 4)
        }), flush=True)


if __name__ == "__main__":
  app.run(main)

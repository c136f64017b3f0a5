"""Test scores of one training configuration against its training wall time.

  python -m keras_cnn.benchmarks.learning_curve --workdir=runs/curve --marks=15,30,60,90 \\
      [any flag of `python -m keras_cnn.train`, e.g. --precision=float32 --patience=12]

One training run, with `train`'s flags and its wall-clock budget set to the last mark,
keeps a copy of its best model so far (best on validation: what `train` would have
shared had its budget ended there) at the first epoch end after each mark, as
`workdir/model_at_<mark>min.keras`. Each copy is then scored on every voxel of the
test split, with `evaluate`'s physics scores: on the test box of each realization in
--score_seeds for the embedded simulator (realizations the run never saw), else on the
run's own test split, which must be whole snapshots (--test_dirs or --test_redshifts).
One JSON line per (mark, box), then a Markdown table of the means over boxes. The
training run itself is `train`'s, in `workdir/run` (model, history, metrics and plots
as usual).

A killed run started again with the same command goes on from its last epoch; the
training clock is kept in `workdir/clock.json`, so the marks still count the
minutes trained in all.
"""

import dataclasses
import json
import os
import shutil
import statistics
import tempfile
import time

from absl import app
from absl import flags
from absl import logging

from keras_cnn import cli
from keras_cnn import cli_flags

FLAGS = flags.FLAGS
cli_flags.define_train_flags()
flags.adopt_module_key_flags(cli_flags)
flags.DEFINE_list(
    "marks", ["15", "30", "60"], "Training minutes at which the best model so far "
    "is kept and scored; the last replaces --time_budget_minutes.")
flags.DEFINE_list("score_seeds", ["1", "2", "3"], "Embedded simulator: realizations whose test "
                  "box scores every mark.")

RUN_DIR = "run"
CLOCK_FILE = "clock.json"
# Columns of the Markdown table: (metrics key, header).
COLUMNS = (("r2", "test R^2"), ("mean_xhii_error", "mean x_HII err"),
           ("ionized_accuracy", "ion. acc"), ("xhii_r_k_min", "r(k) min"),
           ("xhii_pk_ratio_max_dev", "max abs(P ratio - 1)"), ("bsd_peak_ratio", "BSD peak ratio"))


def snapshot_path(curve_dir: str, mark: float) -> str:
  return os.path.join(curve_dir, f"model_at_{mark:g}min.keras")


def _copy(source: str, target: str) -> None:
  """Copies atomically (`io_utils.atomic_open`): `target` is either complete or absent."""
  from keras_cnn import io_utils

  with open(source, "rb") as stream, io_utils.atomic_open(target) as out:
    shutil.copyfileobj(stream, out)


def keep_at_marks(best_path: str, curve_dir: str, marks):
  """A Keras callback that copies best.keras once per passed mark, keeps the training
  clock in `curve_dir`, and stops training at the last mark."""
  import keras

  from keras_cnn import io_utils

  class KeepAtMarks(keras.callbacks.Callback):

    def __init__(self):
      super().__init__()
      self.clock_path = os.path.join(curve_dir, CLOCK_FILE)
      self.trained = read_clock(curve_dir)["seconds"] if os.path.exists(self.clock_path) else 0.0
      self.start = None

    def on_train_begin(self, logs=None):
      self.start = time.monotonic()

    def on_epoch_end(self, epoch, logs=None):
      seconds = self.trained + time.monotonic() - self.start
      for mark in marks:
        target = snapshot_path(curve_dir, mark)
        if seconds >= 60 * mark and not os.path.exists(target) and os.path.exists(best_path):
          _copy(best_path, target)
          logging.info("Kept the best model after %.1f min as %s", seconds / 60, target)
      io_utils.write_text(self.clock_path,
                          json.dumps({
                              "seconds": seconds,
                              "epochs": epoch + 1
                          }) + "\n")
      if seconds >= 60 * marks[-1]:
        self.model.stop_training = True  # a resumed run stops at the last mark too

  return KeepAtMarks()


def read_clock(curve_dir: str) -> dict:
  """{"seconds": training seconds, "epochs": epochs} of the run so far."""
  with open(os.path.join(curve_dir, CLOCK_FILE)) as stream:
    return json.load(stream)


def _boxes(config):
  """[(label, snapshot)] scoring every mark, sources in the run's transform."""
  from keras_cnn import training
  from keras_cnn.data import splits as splits_lib
  from keras_cnn.data import snapshot as snapshot_lib

  data = config.data
  if data.data_dir or data.dataset != splits_lib.SYNTHETIC:
    test = training.load_run_splits(config)["test"]
    if test.region is not None:  # a slab of a box the run trained on: not whole-box scoring
      raise app.UsageError("the test split is a slab of a training box; give it snapshots of "
                           "its own (--test_dirs or --test_redshifts)")
    return [(f"test {i}", box) for i, box in enumerate(test.snapshots)]
  boxes = []
  for seed in FLAGS.score_seeds:
    for box in splits_lib.load_box(None, data.redshift, data.dataset, split="test",
                                   n_cells=data.n_cells, mean_xhii=data.mean_xhii,
                                   data_seed=int(seed), radius=config.model.radius,
                                   synthetic_sources=data.synthetic_sources):
      boxes.append((f"seed {seed}", snapshot_lib.for_model(box, config.model.source_transform)))
  return boxes


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  if not FLAGS["workdir"].present:
    raise app.UsageError("--workdir must be given (the run's folder)")
  try:
    marks = sorted(float(mark) for mark in FLAGS.marks)
  except ValueError as error:
    raise app.UsageError(f"--marks: {error}") from error
  if not marks or marks[0] <= 0:
    raise app.UsageError(f"--marks must be positive minutes, got {FLAGS.marks}")
  logging.set_verbosity(logging.INFO)
  from keras_cnn import conventions
  from keras_cnn import inference
  from keras_cnn import training

  config = dataclasses.replace(cli_flags.train_config_from_flags(), time_budget_minutes=marks[-1])
  cli.check_train_config(config, FLAGS.workdir)
  curve_dir = FLAGS.workdir
  run_dir = os.path.join(curve_dir, RUN_DIR)
  if not training.is_finished(run_dir):
    os.makedirs(curve_dir, exist_ok=True)
    keep = keep_at_marks(os.path.join(run_dir, conventions.BEST_FILE), curve_dir, marks)
    training.train_and_evaluate(config, run_dir, flags_text=cli_flags.train_flags_text(),
                                extra_callbacks=[keep])
  # A run that stopped early (patience) or ran past a mark within its last epoch shares
  # its final model for every mark not yet kept.
  if not os.path.exists(os.path.join(curve_dir, CLOCK_FILE)):
    raise app.UsageError(f"--workdir={FLAGS.workdir} has a finished run but no {CLOCK_FILE}; "
                         "choose a new folder")
  final = os.path.join(run_dir, conventions.MODEL_FILE)
  for mark in marks:
    if not os.path.exists(snapshot_path(curve_dir, mark)):
      _copy(final, snapshot_path(curve_dir, mark))
  clock = read_clock(curve_dir)
  boxes = _boxes(config)
  cell = conventions.CELL_SIZE_MPC
  rows = []
  for mark in marks:
    model = inference.load_model(snapshot_path(curve_dir, mark))
    scores = []
    for label, box in boxes:
      if config.data.box_size_mpc:
        cell = config.data.box_size_mpc / box.shape[0]
      with tempfile.TemporaryDirectory() as scratch:
        metrics = inference.evaluate_model(model, [box], scratch, cell_size_mpc=cell,
                                           progress=False)
      metrics["mean_xhii_error"] = abs(metrics["mean_xhii_pred"] - metrics["mean_xhii_true"])
      line = {"minutes": mark, "box": label}
      line.update({key: round(metrics[key], 4) for key, _ in COLUMNS if key in metrics})
      print(json.dumps(line), flush=True)
      scores.append(line)
    rows.append((mark, scores))
  print(f"\nTrained {clock['seconds'] / 60:.1f} min, {clock['epochs']} epochs in all; "
        f"means over {len(boxes)} test box(es):")
  present = [(key, name) for key, name in COLUMNS if key in rows[0][1][0]]
  print("\n| minutes | " + " | ".join(name for _, name in present) + " |\n|---|" +
        "---|" * len(present))
  for mark, scores in rows:
    means = [statistics.fmean(line[key] for line in scores) for key, _ in present]
    print(f"| {mark:g} | " + " | ".join(f"{value:.3f}" for value in means) + " |")


if __name__ == "__main__":
  cli.run(main)

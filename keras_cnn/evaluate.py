"""`python -m keras_cnn.evaluate`: score a saved model on any box.

  python -m keras_cnn.evaluate --model=runs/default/model.keras \\
      --data_dir=boxes/ --redshift=8.397 --out=eval/
  python -m keras_cnn.evaluate --model=... --dataset=synthetic --split=test --out=eval/

'valid' models are scored on every voxel of every box through the dense engine;
'same' models paint boxes of at most --max_full_voxels voxels whole and score larger
ones on a fixed random subset (`keras_cnn.inference.evaluate_model`).

Prints exactly one JSON line on stdout, the content of `out/metrics.json`, and writes
the figures and `power_spectrum.csv` beside it. Progress and logs go to stderr. An
existing non-empty --out folder is refused unless --overwrite, except one that holds
this same evaluation (its marker records the settings): an interrupted evaluation is
finished by running the same command again.
"""

import json
import os

from absl import app
from absl import flags
from absl import logging

from keras_cnn import cli
from keras_cnn import cli_flags
from keras_cnn import config
from keras_cnn import conventions
from keras_cnn import runs

FLAGS = flags.FLAGS
cli_flags.define_evaluate_flags()
flags.adopt_module_key_flags(cli_flags)

# Flags that change what an evaluation writes (the others change only how fast or how
# loudly it runs); recorded in the --out folder's marker.
DEFINING_FLAGS = ("redshift", "dataset", "split", "tfds_data_dir", "n_cells", "mean_xhii",
                  "data_seed", "data_format", "box_size_mpc", "engine", "max_full_voxels",
                  "num_examples", "sample_seed", "cell_size_mpc", "power_spectrum",
                  "condition_value", "history")


def evaluation_settings(flag_values=FLAGS) -> dict:
  """What defines this evaluation: the model file, the data and the defining flags."""
  data_dir = flag_values.data_dir
  settings = {
      "model": os.path.realpath(flag_values.model),
      "the model file": runs.file_fingerprint(flag_values.model),
      "data_dir": os.path.realpath(data_dir) if data_dir else None,
      "the files of --data_dir": runs.data_fingerprint(data_dir, files_only=True),
  }
  for name in DEFINING_FLAGS:
    value = flag_values[name].value
    settings[name] = list(value) if isinstance(value, tuple) else value
  return settings


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  cli.require_flags("model", "out")
  from keras_cnn import inference

  settings = cli_flags.apply_config_from_flags(config.EvaluateConfig)
  if FLAGS.history and not os.path.isfile(FLAGS.history):
    raise app.UsageError(f"--history={FLAGS.history}: no such file")
  cli.check_output_path(FLAGS.out, is_dir=True)
  if not os.path.isfile(FLAGS.model):
    raise app.UsageError(f"--model={FLAGS.model}: no such file")
  defining = evaluation_settings()
  if runs.check_evaluation_dir(FLAGS.out, defining, FLAGS.overwrite):
    logging.info("%s holds this evaluation already; replacing its files.", FLAGS.out)
  applied = cli.load_model_and_boxes(require_target=True)
  runs.mark_evaluation_dir(FLAGS.out, defining)
  metrics = inference.evaluate_model(
      applied.model, applied.snapshots, FLAGS.out, batch_size=settings.apply.batch_size,
      max_full_voxels=settings.max_full_voxels, num_examples=settings.num_examples,
      seed=settings.sample_seed, cell_size_mpc=settings.cell_size_mpc,
      history_csv=settings.history or inference.history_beside(FLAGS.model),
      power_spectrum=settings.power_spectrum, progress=settings.apply.progress,
      engine=settings.apply.engine, memory_budget_gb=settings.apply.memory_budget_gb,
      condition_value=settings.apply.condition_value)
  logging.info("Wrote %s and figures to %s", conventions.METRICS_FILE, FLAGS.out)
  print(json.dumps(metrics), flush=True)


if __name__ == "__main__":
  cli.run(main)

"""`python -m keras_cnn.train`: fit the emulator and write everything to --workdir.

This file is intentionally kept short: it turns flags into a `TrainConfig` and calls
`keras_cnn.training.train_and_evaluate`, which does the work.
"""

import json
import os

from absl import app
from absl import flags
from absl import logging

from keras_cnn import cli_flags
from keras_cnn import model as model_lib
from keras_cnn import training

FLAGS = flags.FLAGS
cli_flags.define_train_flags()
flags.adopt_module_key_flags(cli_flags)


def config_from_flags(flag_values=FLAGS) -> training.TrainConfig:
  """The TrainConfig that the parsed flags describe."""
  return training.TrainConfig(
      model=cli_flags.model_config_from_flags(flag_values), data=training.DataConfig(
          data_dir=flag_values.data_dir, redshift=flag_values.redshift, dataset=flag_values.dataset,
          tfds_data_dir=flag_values.tfds_data_dir, n_cells=flag_values.n_cells,
          mean_xhii=flag_values.mean_xhii, data_seed=flag_values.data_seed,
          data_format=flag_values.data_format, box_size_mpc=flag_values.box_size_mpc,
          **cli_flags.split_flags_from(flag_values)), batch_size=flag_values.batch_size or
      training.DEFAULT_BATCH_SIZE[flag_values.train_unit], epochs=flag_values.epochs,
      steps_per_epoch=flag_values.steps_per_epoch, learning_rate=flag_values.learning_rate,
      seed=flag_values.seed, augment=flag_values.augment, stratify_bins=flag_values.stratify_bins,
      validation_examples=flag_values.validation_examples, test_examples=flag_values.test_examples,
      patience=flag_values.patience, time_budget_minutes=flag_values.time_budget_minutes,
      train_unit=flag_values.train_unit, patch_size=flag_values.patch_size,
      validation_patches=flag_values.validation_patches, loss=flag_values.loss,
      lr_schedule=flag_values.lr_schedule, distribution=flag_values.distribution,
      jit_compile=flag_values.jit_compile, precision=flag_values.precision,
      source_units=flag_values.source_units, ema_momentum=flag_values.ema_momentum)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  logging.set_verbosity(logging.INFO)
  config = config_from_flags()
  if os.path.lexists(FLAGS.workdir) and not os.path.isdir(FLAGS.workdir):
    raise app.UsageError(f"--workdir={FLAGS.workdir} is a file, not a folder; choose a new or "
                         "empty folder")
  try:  # sizes that cannot build fail here, in one line, before a workdir exists
    model_lib.validate_config(config.model)
  except ValueError as error:
    raise app.UsageError(str(error)) from error
  # flags.txt works as --flagfile to rerun the same training.
  flags_text = "".join(
      f"{flag.serialize()}\n" for flag in FLAGS.get_flags_for_module(cli_flags) if flag.serialize())
  finished = training.is_finished(FLAGS.workdir)
  metrics = training.train_and_evaluate(config, FLAGS.workdir, flags_text=flags_text)
  if finished:
    print(f"{FLAGS.workdir} holds a finished run with these flags: its test metrics "
          "follow (choose a new --workdir to train again).")
  print(json.dumps(metrics))


if __name__ == "__main__":
  cli_flags.run(main)

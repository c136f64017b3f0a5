"""`python -m keras_cnn.train`: fit the emulator and write everything to --workdir.

This file is intentionally kept short: it turns flags into a `TrainConfig` and calls
`keras_cnn.training.train_and_evaluate`, which does the work.
"""

import json

from absl import app
from absl import flags
from absl import logging

from keras_cnn import cli
from keras_cnn import cli_flags
from keras_cnn import training

FLAGS = flags.FLAGS
cli_flags.define_train_flags()
flags.adopt_module_key_flags(cli_flags)

# The TrainConfig that the parsed flags describe (shared with `keras_cnn.tune`).
config_from_flags = cli_flags.train_config_from_flags


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  logging.set_verbosity(logging.INFO)
  config = config_from_flags()
  cli.check_train_config(config, FLAGS.workdir)
  # flags.txt works as --flagfile to rerun the same training.
  flags_text = cli_flags.train_flags_text()
  finished = training.is_finished(FLAGS.workdir)
  metrics = training.train_and_evaluate(config, FLAGS.workdir, flags_text=flags_text)
  if finished:
    print(f"{FLAGS.workdir} holds a finished run with these flags: its test metrics "
          "follow (choose a new --workdir to train again).")
  print(json.dumps(metrics))


if __name__ == "__main__":
  cli.run(main)

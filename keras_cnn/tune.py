"""`python -m keras_cnn.tune`: search the training settings on your data (KerasTuner).

    python -m keras_cnn.tune --workdir=runs/search --max_trials=12 --trial_minutes=5 \\
        [train's data flags, e.g. --data_dir=/data/c2ray --redshift=8.397]

Every flag of `train` sets what the trials start from; `--search` names the settings to
vary (`keras_cnn.tuning.LEVERS`). Writes `workdir/tuning.csv` and `workdir/best.flags`
(for `python -m keras_cnn.train --flagfile=workdir/best.flags`). The same command goes
on after a kill. This file is intentionally kept short: `keras_cnn.tuning` does the work.
"""

import json

from absl import app
from absl import flags
from absl import logging

from keras_cnn import cli
from keras_cnn import cli_flags
from keras_cnn import config
from keras_cnn import tuning

FLAGS = flags.FLAGS
cli_flags.define_train_flags()
flags.adopt_module_key_flags(cli_flags)
# The search's own settings (`keras_cnn.config.TuneConfig`).
cli_flags.define_config_flags(config.TuneConfig, module_name=__name__)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  if not FLAGS["workdir"].present:
    raise app.UsageError("--workdir must be given (the search's folder)")
  unknown = [name for name in FLAGS.search if name not in tuning.LEVERS]
  if unknown or not FLAGS.search:
    raise app.UsageError(f"--search: unknown or no settings {unknown}; choose from "
                         f"{', '.join(tuning.LEVERS)}")
  logging.set_verbosity(logging.INFO)
  base = cli_flags.train_config_from_flags()
  cli.check_train_config(base, FLAGS.workdir)
  settings = cli_flags.config_from_flags(config.TuneConfig)
  rows = tuning.search(base, FLAGS.workdir, settings.max_trials, settings.trial_minutes,
                       levers=list(settings.search), tuner=settings.tuner, seed=settings.tuner_seed)
  print(json.dumps({"best": rows[0] if rows else None, "trials": len(rows)}))


if __name__ == "__main__":
  cli.run(main)

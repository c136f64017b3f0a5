"""Flags and presets: every hyperparameter is a flag, presets parse, bad values fail early."""

import dataclasses
import os
import subprocess
import sys

import pytest
from absl import flags
from absl.testing import flagsaver

from keras_cnn import cli_flags
from keras_cnn import model as model_lib
from keras_cnn import train
from keras_cnn import training

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PRESETS = sorted(f for f in os.listdir(os.path.join(REPO, "flags")) if f.endswith(".flags"))


@pytest.fixture
def parse():
  """Parses args into the global FLAGS; the values are restored after the test."""
  with flagsaver.flagsaver():
    def _parse(*args):
      flags.FLAGS.unparse_flags()
      flags.FLAGS(["prog", *args])
      return flags.FLAGS
    yield _parse
    flags.FLAGS.unparse_flags()


def test_every_model_field_is_a_flag():
  fields = {f.name for f in dataclasses.fields(model_lib.ModelConfig)}
  assert fields <= set(flags.FLAGS)


@pytest.mark.parametrize("preset", PRESETS)
def test_presets_parse_and_build(parse, preset):
  values = parse(f"--flagfile={os.path.join(REPO, 'flags', preset)}")
  config = cli_flags.model_config_from_flags(values)
  model_lib.validate_config(config)
  assert train.config_from_flags(values).model == config


def test_week2_preset_is_the_original(parse):
  values = parse(f"--flagfile={os.path.join(REPO, 'flags', 'week2.flags')}")
  config = cli_flags.model_config_from_flags(values)
  assert (config.radius, config.kernel_size, config.filters) == (24, 5, 128)
  assert (config.dropout_input, config.dropout_hidden) == (0.8, 0.5)
  assert model_lib.flattened_width(config) == 55_296


@pytest.mark.parametrize("arg,message", [
    ("--kernel_size=4", "--kernel_size must be odd"),
    ("--radius=-1", "--radius must be >= 0"),
    ("--dropout_input=1.0", "--dropout_input must be in [0, 1)"),
    ("--dense_units=8,8", "--dense_units needs 5 positive integers"),
    ("--learning_rate=0", "--learning_rate must be > 0"),
])
def test_bad_flag_values_are_rejected(parse, arg, message):
  with pytest.raises(flags.IllegalFlagValueError, match=message.replace("[", r"\[").replace(
      "(", r"\(").replace(")", r"\)")):
    parse(arg)


def test_help_lists_every_flag():
  out = subprocess.run([sys.executable, "-m", "keras_cnn.train", "--kernel_size=5", "--help"],
                       capture_output=True, text=True, timeout=300,
                       env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}).stdout
  fields = [f.name for config in (model_lib.ModelConfig, training.DataConfig,
                                   training.TrainConfig)
            for f in dataclasses.fields(config) if f.name not in ("model", "data")]
  missing = [name for name in fields + ["workdir"]
             if f"--{name}" not in out and f"--[no]{name}" not in out]
  assert len(fields) > 30 and not missing

"""Flags and presets: every hyperparameter is a flag, presets parse, bad values fail early."""

import collections
import dataclasses
import json
import os
import subprocess
import sys

import pytest
from absl import flags

from keras_cnn import cli
from keras_cnn import config
from keras_cnn import evaluate  # noqa: F401  (defines --num_examples)
from keras_cnn import model as model_lib
from keras_cnn import predict  # noqa: F401  (defines --memory_budget_gb)
from keras_cnn import train
from keras_cnn import training

from helpers import PRESETS, PRESETS_DIR, REPO


@pytest.fixture
def parse(parse_flags):
  """Parses flags (no program name) into the global FLAGS, restored after the test."""
  return lambda *args: parse_flags("prog", *args)


def test_every_model_field_is_a_flag():
  fields = {f.name for f in dataclasses.fields(model_lib.ModelConfig)}
  assert fields <= set(flags.FLAGS)


def test_default_preset_file_equals_the_defaults(parse):
  """flags/default.flags, the flag defaults and the dataclass defaults are one preset."""
  preset = os.path.join(REPO, "flags", "default.flags")
  from_file = train.config_from_flags(parse(f"--flagfile={preset}"))
  from_defaults = train.config_from_flags(parse())
  assert from_file == from_defaults == training.TrainConfig()


@pytest.mark.parametrize("preset", PRESETS)
def test_every_preset_parses_and_builds_the_two_branch_network(parse, preset):
  """Every flagfile in flags/ is a complete train command: it parses, its settings pass
  the model's own checks, and it builds the network with the original layer counts (and
  the three Dense layers of the excursion-set features' own path where it has them)."""
  config = train.config_from_flags(parse(f"--flagfile={os.path.join(PRESETS_DIR, preset)}"))
  model_lib.validate_config(config.model)
  model = model_lib.build_model(config.model)
  counts = collections.Counter(type(layer).__name__ for layer in model.layers)
  assert {
      kind: counts[kind]
      for kind in ("Conv3D", "BatchNormalization", "AveragePooling3D", "Dense", "Dropout")
  } == {
      "Conv3D": 6,
      "BatchNormalization": 6,
      "AveragePooling3D": 6,
      "Dense": 8 + (len(model_lib.EXCURSION_UNITS) + 1 if config.model.spheres() else 0),
      "Dropout": 6
  }
  side = config.model.crop_size
  assert model.get_layer("n_igm").batch_shape == (None, side, side, side, 1)
  if config.train_unit == "patch":  # patches train through the dense twin
    assert config.model.padding == "valid"


def test_week2_preset_builds_the_original_network(parse):
  values = parse(f"--flagfile={os.path.join(PRESETS_DIR, 'week2.flags')}")
  config = train.config_from_flags(values)
  assert config.model == model_lib.WEEK2
  assert model_lib.flattened_width(config.model) == 55_296
  assert model_lib.build_model(config.model).count_params() == 22_427_809


def test_default_preset_paints_whole_tiles_with_exact_symmetries():
  """The defaults give a 'valid' model, which predict runs on the dense engine, with a
  centred receptive field, so the 48 cube symmetries of augmentation are exact."""
  from keras_cnn import inference

  config = training.TrainConfig()
  assert inference.resolve_engine(model_lib.build_model(config.model)) == "dense"
  assert model_lib.receptive_offset(config.model) == 0.0


@pytest.mark.parametrize("arg,message", [
    ("--kernel_size=4", "--kernel_size must be odd"),
    ("--radius=-1", "--radius must be >= 0"),
    ("--dropout_input=1.0", "--dropout_input must be in [0, 1)"),
    ("--dense_units=8,8", "--dense_units needs 5 positive integers"),
    ("--learning_rate=0", "--learning_rate must be a finite number > 0"),
    ("--learning_rate=inf", "--learning_rate must be a finite number > 0"),
    ("--seed=-1", "--seed must be >= 0"),
    ("--stratify_bins=-2", "--stratify_bins must be >= 0"),
    ("--time_budget_minutes=nan", "--time_budget_minutes must be a finite number >= 0"),
    ("--memory_budget_gb=0", "--memory_budget_gb must be a finite number > 0"),
    ("--data_seed=-3", "--data_seed must be >= 0"),
    ("--leaky_relu_slope=nan", "--leaky_relu_slope must be in [0, 1)"),
    ("--batch_norm_momentum=1", "--batch_norm_momentum must be in [0, 1)"),
])
def test_bad_flag_values_are_rejected(parse, arg, message):
  with pytest.raises(flags.IllegalFlagValueError,
                     match=message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
    parse(arg)


def test_help_lists_every_flag():
  out = subprocess.run([sys.executable, "-m", "keras_cnn.train", "--kernel_size=5", "--help"],
                       capture_output=True, text=True, timeout=300, env={
                           **os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"
                       }).stdout
  fields = [
      f.name
      for config in (model_lib.ModelConfig, training.DataConfig, training.TrainConfig)
      for f in dataclasses.fields(config)
      if f.name not in ("model", "data")
  ]
  missing = [
      name for name in fields + ["workdir"] if f"--{name}" not in out and f"--[no]{name}" not in out
  ]
  assert len(fields) > 30 and not missing


def test_library_modules_define_no_flags():
  """Only the entry points and cli_flags define flags; importing the library does not."""
  code = """
from absl import flags, logging
import keras, tensorflow, tensorflow_datasets  # third-party flags are not ours
before = set(flags.FLAGS)
import keras_cnn.model, keras_cnn.dense, keras_cnn.pipeline, keras_cnn.inference
import keras_cnn.training, keras_cnn.metrics, keras_cnn.plots, keras_cnn.distribute
import keras_cnn.data.snapshot, keras_cnn.data.splits, keras_cnn.data.simulate
import keras_cnn.data.formats, keras_cnn.domain, keras_cnn.runs, keras_cnn.conventions
import keras_cnn.io_utils, keras_cnn.errors
print(sorted(set(flags.FLAGS) - before))
"""
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                       env={
                           **os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"
                       })
  assert out.returncode == 0, out.stderr[-2000:]
  assert out.stdout.strip().splitlines()[-1] == "[]"


# Flags of each command that are no setting of a config dataclass; absl's own
# (--flagfile, --help, ...) are not keras_cnn's and are not counted.
COMMAND_ONLY = {
    "train": {"workdir"},
    "tune": {"workdir"},
    "evaluate": {"model", "out"},
    "predict": {"model", "out"},
    "lightcone": {"maps", "out"},
}
_TRAINING = (config.ModelConfig, config.DataConfig, config.TrainConfig)
# The config dataclasses whose settings each command has as flags.
COMMAND_CONFIGS = {
    "train": _TRAINING,
    "tune": _TRAINING + (config.TuneConfig,),
    "evaluate": (config.DataConfig, config.ApplyConfig, config.EvaluateConfig),
    "predict": (config.DataConfig, config.ApplyConfig, config.PredictConfig),
    "lightcone":
        (config.DataConfig, config.ApplyConfig, config.EvaluateConfig, config.LightconeConfig),
}
# Settings of those dataclasses that a command does not read: the splits' own snapshots
# are training's.
COMMAND_SKIPS = {
    "train": set(),
    "tune": set(),
    "evaluate": set(config.SPLIT_FIELDS),
    "predict": set(config.SPLIT_FIELDS),
    # lightcone reads the maps' snapshot folder, writes a folder and spaces its slices.
    "lightcone": {
        f.name
        for c in (config.DataConfig, config.ApplyConfig, config.EvaluateConfig)
        for f in config.settings_of(c)
    } - {"data_dir", "data_format", "box_size_mpc", "overwrite", "cell_size_mpc"},
}

_DUMP_FLAGS = """
import importlib, json, sys
from absl import flags
importlib.import_module("keras_cnn." + sys.argv[1])
found = {}
for name in flags.FLAGS:
  if not (flags.FLAGS.find_module_defining_flag(name) or "").startswith("keras_cnn"):
    continue
  flag = flags.FLAGS[name]
  found[name] = {"default": flag.default, "help": flag.help,
                 "choices": getattr(flag.parser, "enum_values", None)}
print(json.dumps({"flags": found, "trainer": "keras_cnn.training" in sys.modules}))
"""


def _as_flag_default(value):
  return [str(v) for v in value] if isinstance(value, tuple) else value


@pytest.mark.parametrize("command", sorted(COMMAND_ONLY))
def test_every_flag_of_a_command_is_a_setting_of_its_configs(command):
  """`python -m keras_cnn.<command>` defines exactly a flag per setting of its config
  dataclasses (same default, choices and help) and its listed own flags; evaluate and
  predict load no trainer."""
  out = subprocess.run([sys.executable, "-c", _DUMP_FLAGS, command], capture_output=True, text=True,
                       timeout=300, env={
                           **os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"
                       })
  assert out.returncode == 0, out.stderr[-2000:]
  dump = json.loads(out.stdout.strip().splitlines()[-1])
  defined = dump["flags"]
  settings = {
      field.name: field for config_class in COMMAND_CONFIGS[command]
      for field in config.settings_of(config_class)
      if field.name not in COMMAND_SKIPS[command]
  }
  assert set(defined) == set(settings) | COMMAND_ONLY[command]
  for name, field in settings.items():
    flag = defined[name]
    assert flag["default"] == _as_flag_default(config.flag_default(field)), name
    assert flag["help"].endswith(field.metadata["help"]), name  # enums: "<a|b>: " first
    choices = field.metadata.get("choices")
    assert flag["choices"] == (list(choices) if choices else None), name
  assert dump["trainer"] == (command in ("train", "tune"))


def test_settings_shared_by_several_configs_agree():
  """A flag serves every config that has its setting: their help, choices and flag
  default must be one."""
  seen = {}
  for config_class in (config.ModelConfig, config.DataConfig, config.TrainConfig,
                       config.ApplyConfig, config.EvaluateConfig, config.PredictConfig):
    for field in config.settings_of(config_class):
      spec = (config.flag_default(field), field.metadata["help"], field.metadata.get("choices"))
      assert seen.setdefault(field.name, spec) == spec, field.name


def test_evaluate_and_predict_settings_come_from_their_flags(parse):
  from keras_cnn import cli_flags

  values = parse("--engine=per_voxel", "--num_examples=7", "--shard_index=1", "--num_shards=3",
                 "--n_cells=12", "--noprogress")
  evaluation = cli_flags.apply_config_from_flags(config.EvaluateConfig, values)
  assert (evaluation.apply.engine, evaluation.num_examples) == ("per_voxel", 7)
  assert (evaluation.apply.data.n_cells, evaluation.apply.progress) == (12, False)
  assert evaluation.apply.batch_size == config.APPLY_BATCH_SIZE  # not given: the engine's
  prediction = cli_flags.apply_config_from_flags(config.PredictConfig, values)
  assert (prediction.shard_index, prediction.num_shards) == (1, 3)
  assert prediction.apply == evaluation.apply


@pytest.mark.parametrize("command,args,refused", [
    ("train", ["--test_examples=100"], "--test_examples=100"),
    pytest.param("train", ["--validation_examples=100"], "--validation_examples=100",
                 marks=pytest.mark.slow),
    pytest.param("train", ["--stratify_bins=4"], "--stratify_bins=4", marks=pytest.mark.slow),
    ("tune", ["--validation_examples=100", "--max_trials=1"], "--validation_examples=100"),
])
def test_a_flag_the_mode_ignores_is_refused_in_one_line(tmp_path, run_module, command, args,
                                                        refused):
  """The defaults ('valid' padding, patch training) score every test voxel and validate on
  patches: --test_examples, --validation_examples and --stratify_bins would change
  nothing, so giving them stops the command before it writes anything."""
  workdir = tmp_path / "run"
  result = run_module(f"keras_cnn.{command}", f"--workdir={workdir}", *args)
  assert result.returncode == 2, result.stderr[-2000:]
  assert "Traceback" not in result.stderr
  last = result.stderr.strip().splitlines()[-1]
  assert last.startswith(f"Error: {refused} would be ignored"), last
  assert not workdir.exists()


@pytest.mark.parametrize("arg",
                         ["--test_examples=100", "--validation_examples=100", "--stratify_bins=4"])
def test_each_flag_the_default_mode_ignores_is_refused(parse, arg):
  """In-process, every flag of the defaults' ignored settings (the command-line test
  above runs one end to end)."""
  from absl import app

  values = parse(arg)
  with pytest.raises(app.UsageError, match=f"^{arg} would be ignored: "):
    cli.refuse_ignored_flags(train.config_from_flags(values).ignored_settings(), values)


def test_flags_read_in_the_mode_or_left_at_their_default_pass(parse):
  """The same flags are read by 'same' models trained on voxels, and a rerun with a
  workdir's flags.txt (every flag, defaults included) passes in any mode."""
  for args in (("--padding=same", "--train_unit=voxel", "--test_examples=100",
                "--validation_examples=100", "--stratify_bins=4"),
               ("--test_examples=16384", "--validation_examples=4096", "--stratify_bins=0")):
    values = parse(*args)
    cli.refuse_ignored_flags(train.config_from_flags(values).ignored_settings(), values)
  values = parse("--padding=same", "--train_unit=voxel", "--test_examples=100")
  assert train.config_from_flags(values).test_examples == 100


@pytest.mark.parametrize("preset", PRESETS)
def test_benchmarks_read_each_preset_as_train_does(parse, preset):
  """The benchmarks time the network a preset trains (lists of floats included)."""
  from keras_cnn import benchmarks

  path = os.path.join(PRESETS_DIR, preset)
  config = train.config_from_flags(parse(f"--flagfile={path}"))
  assert benchmarks.preset_model_config(benchmarks.preset_settings(path)) == config.model

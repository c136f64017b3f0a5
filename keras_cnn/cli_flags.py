"""The absl flags of keras_cnn's commands, defined from the config dataclasses.

Every setting is a field of a dataclass in `keras_cnn.config` whose metadata holds its
help text, choices and checks; `define_config_flags` turns those fields into flags, so a
flag's name, default, choices and help are the field's. Entry points call the
`define_*` functions they need at import (absl's convention, so `--help` lists them)
and read flag values only inside `main`; `config_from_flags` builds a dataclass back
from the parsed values. Each function is idempotent, so several entry points can be
imported in one process (tests do). `flags/default.flags` repeats the defaults with
comments (a test keeps the two equal) and `flags/week2.flags` is the original
GPU-sized network. The runtime helpers of the commands are in `keras_cnn.cli`.
"""

import dataclasses
import typing
from typing import Dict, Iterable, Optional

from absl import flags

from keras_cnn import config
from keras_cnn.data import snapshot as snapshot_lib

FLAGS = flags.FLAGS


class _RedshiftParser(flags.ArgumentParser):
  """--redshift: one redshift, a comma list, or 'all'; --<split>_redshifts: a list."""

  def __init__(self, allow_all: bool, as_list: bool):
    self.allow_all = allow_all
    self.as_list = as_list
    self.syntactic_help = ("a redshift, a comma list of redshifts, or all"
                           if allow_all else "a comma list of redshifts")

  def parse(self, argument):
    if isinstance(argument, (int, float)):
      value = float(argument)
    elif isinstance(argument, (list, tuple)):
      value = tuple(float(v) for v in argument)
    else:
      value = snapshot_lib.parse_redshifts(argument, allow_all=self.allow_all)
    if self.as_list and isinstance(value, float):
      value = (value,)
    return value

  def flag_type(self):
    return "redshift list" if self.as_list else "redshift"


class _RedshiftSerializer(flags.ArgumentSerializer):

  def serialize(self, value):
    if isinstance(value, (list, tuple)):
      return ",".join(repr(float(v)) for v in value)
    return value if isinstance(value, str) else repr(float(value))


def _optional_tuple(value):
  return tuple(value) if value else None


# How each kind of field becomes a flag: (define(name, default, help, field, keywords),
# flag value -> field value); `keywords` go to absl's DEFINE_* (flag_values, module_name).
# A kind is named in a field's metadata ("kind") or follows from its type; a new kind is a
# new entry here.
_KINDS: Dict[str, tuple] = {
    "bool":
        (lambda name, default, help, f, kw: flags.DEFINE_boolean(name, default, help, **kw), None),
    "int":
        (lambda name, default, help, f, kw: flags.DEFINE_integer(name, default, help, **kw), None),
    "float":
        (lambda name, default, help, f, kw: flags.DEFINE_float(name, default, help, **kw), None),
    "str":
        (lambda name, default, help, f, kw: flags.DEFINE_string(name, default, help, **kw), None),
    "enum": (lambda name, default, help, f, kw: flags.DEFINE_enum(
        name, default, list(f.metadata["choices"]), help, **kw), None),
    "int_list": (lambda name, default, help, f, kw: flags.DEFINE_list(
        name, None if default is None else [str(v) for v in default], help, **kw),
                 lambda v: tuple(int(s) for s in v)),
    "float_list": (lambda name, default, help, f, kw: flags.DEFINE_list(
        name, None if default is None else [str(v) for v in default], help, **kw),
                   lambda v: tuple(float(s) for s in v) if v else None),
    # A list that may be empty (an empty flag value: no item), never None.
    "float_tuple": (lambda name, default, help, f, kw: flags.DEFINE_list(
        name, list(map(str, default)), help, **kw), lambda v: tuple(map(float, v or ()))),
    "str_list": (lambda name, default, help, f, kw: flags.DEFINE_list(
        name, None if default is None else list(default), help, **kw), _optional_tuple),
    "redshift": (lambda name, default, help, f, kw: flags.DEFINE(
        _RedshiftParser(allow_all=True, as_list=False), name, default, help, serializer=
        _RedshiftSerializer(), **kw), None),
    "redshift_list": (lambda name, default, help, f, kw: flags.DEFINE(
        _RedshiftParser(allow_all=False, as_list=True), name, default, help, serializer=
        _RedshiftSerializer(), **kw), _optional_tuple),
}


def _kind(field: dataclasses.Field) -> str:
  """The flag kind of a setting: its metadata's, an enum with choices, else by type."""
  if "kind" in field.metadata:
    return field.metadata["kind"]
  if "choices" in field.metadata:
    return "enum"
  annotation = field.type
  args = [a for a in typing.get_args(annotation) if a is not type(None)]
  if typing.get_origin(annotation) is typing.Union and len(args) == 1:
    annotation = args[0]  # Optional[X] -> X
  origin = typing.get_origin(annotation)
  if origin in (tuple, list, typing.get_origin(typing.Sequence[int])):
    item = typing.get_args(annotation)[0]
    return {int: "int_list", float: "float_list", str: "str_list"}[item]
  return {bool: "bool", int: "int", float: "float", str: "str"}[annotation]


def field_value(field: dataclasses.Field, flag_value):
  """The value of `field` that a parsed flag value gives."""
  convert = _KINDS[_kind(field)][1]
  return flag_value if convert is None or flag_value is None else convert(flag_value)


def _register_checks(field: dataclasses.Field, flag_values) -> None:
  for check in field.metadata.get("checks", ()):

    def valid(value, check=check):
      if value is None:
        return True
      try:
        return bool(check.test(field_value(field, value)))
      except (TypeError, ValueError):
        return False

    flags.register_validator(field.name, valid, message=f"--{field.name} {check.message}",
                             flag_values=flag_values)


def define_config_flags(config_class, names: Iterable[str] = None, flag_values=FLAGS,
                        module_name: Optional[str] = None) -> None:
  """Defines a flag for each setting of `config_class` (or those of `names`): its name,
  default, choices, help and checks are the field's. A flag already defined is kept,
  so commands that share a setting share its flag. The flags count as this module's
  (their key module for --help and train's flags.txt), or as `module_name`'s."""
  keywords = {"flag_values": flag_values}
  if module_name:
    keywords["module_name"] = module_name
  for field in config.settings_of(config_class):
    if (names is not None and field.name not in names) or field.name in flag_values:
      continue
    define = _KINDS[_kind(field)][0]
    define(field.name, config.flag_default(field), field.metadata["help"], field, keywords)
    _register_checks(field, flag_values)


def config_from_flags(config_class, flag_values=FLAGS, **overrides):
  """A `config_class` from the parsed flags: each setting from its flag, each nested
  config likewise; a setting without a flag (not defined by this command) keeps its
  default, and `overrides` replace fields."""
  values = {}
  for field in dataclasses.fields(config_class):
    if field.name in overrides:
      values[field.name] = overrides[field.name]
    elif dataclasses.is_dataclass(field.type):
      values[field.name] = config_from_flags(field.type, flag_values)
    elif "help" in field.metadata and field.name in flag_values:
      values[field.name] = field_value(field, flag_values[field.name].value)
  return config_class(**values)


def _data_fields(with_splits: bool):
  return [
      f.name
      for f in config.settings_of(config.DataConfig)
      if with_splits or f.name not in config.SPLIT_FIELDS
  ]


def define_model_flags(flag_values=FLAGS) -> None:
  """Network sizes (`keras_cnn.config.ModelConfig`)."""
  define_config_flags(config.ModelConfig, flag_values=flag_values)


def define_format_flags(flag_values=FLAGS) -> None:
  """The layout of --data_dir's files (train, evaluate and predict read them alike)."""
  define_config_flags(config.DataConfig, ("data_format", "box_size_mpc"), flag_values)


def define_data_flags(flag_values=FLAGS) -> None:
  """Where snapshots come from: a folder of snapshot files, a TFDS name, or the simulator;
  and --batch_size."""
  define_format_flags(flag_values)
  define_config_flags(config.DataConfig, _data_fields(with_splits=False), flag_values)
  define_config_flags(config.ApplyConfig, ("batch_size",), flag_values)


def define_split_flags(flag_values=FLAGS) -> None:
  """Whole snapshots of their own for train / validation / test (`keras_cnn.train`)."""
  define_config_flags(config.DataConfig, config.SPLIT_FIELDS, flag_values)


def define_train_flags(flag_values=FLAGS) -> None:
  """Every flag of `keras_cnn.train`: model, data, splits, optimization and output."""
  define_model_flags(flag_values)
  define_data_flags(flag_values)
  define_split_flags(flag_values)
  if "workdir" in flag_values:
    return
  flags.DEFINE_string("workdir", "runs/default", "Output folder (model, metrics, logs, plots).",
                      flag_values=flag_values)
  define_config_flags(config.TrainConfig, flag_values=flag_values)
  flags.register_multi_flags_validator(
      ["train_unit", "padding"], lambda v: v["train_unit"] != "patch" or v["padding"] == "valid",
      message="--train_unit=patch trains the dense twin, which needs --padding=valid",
      flag_values=flag_values)


def define_model_input_flags(flag_values=FLAGS) -> None:
  """Flags shared by evaluate and predict: the saved model to apply, and the data."""
  define_data_flags(flag_values)
  if "model" not in flag_values:
    flags.DEFINE_string("model", None, "Path of a trained .keras file.", flag_values=flag_values)


def _define_apply_flags(flag_values) -> None:
  """Flags of evaluate and predict beyond the data: model, split, output, progress."""
  define_model_input_flags(flag_values)
  if "out" in flag_values:
    return
  # Required, but checked in main (`cli.require_flags`) rather than marked: a required
  # mark travels with the flag into every FlagValues that tests build from FLAGS.
  flags.DEFINE_string(
      "out", None, "Required. evaluate: output folder (metrics.json, PNGs); "
      "predict: the .npy file of the x_HII map.", flag_values=flag_values)
  define_config_flags(config.ApplyConfig, flag_values=flag_values)


def define_predict_flags(flag_values=FLAGS) -> None:
  """`keras_cnn.predict`: which box, and which x-slab of it (shards)."""
  _define_apply_flags(flag_values)
  if "num_shards" in flag_values:
    return
  define_config_flags(config.PredictConfig, flag_values=flag_values)
  flags.register_multi_flags_validator(
      ["num_shards", "shard_index"],
      lambda v: v["num_shards"] is None or 0 <= v["shard_index"] < v["num_shards"],
      message="--shard_index must be in [0, --num_shards): shards are numbered from 0",
      flag_values=flag_values)


def define_evaluate_flags(flag_values=FLAGS) -> None:
  """`keras_cnn.evaluate`: how much of each box to score and what to plot."""
  _define_apply_flags(flag_values)
  define_config_flags(config.EvaluateConfig, flag_values=flag_values)


def model_config_from_flags(flag_values=FLAGS) -> config.ModelConfig:
  """The ModelConfig that the model flags describe."""
  return config_from_flags(config.ModelConfig, flag_values)


def train_flags_text(flag_values=FLAGS) -> str:
  """The given train flags, one `--name=value` line each: workdir/flags.txt, which works
  as --flagfile to rerun the same training."""
  import sys

  return "".join(
      f"{flag.serialize()}\n" for flag in flag_values.get_flags_for_module(sys.modules[__name__])
      if flag.serialize())


def train_config_from_flags(flag_values=FLAGS) -> config.TrainConfig:
  """The `TrainConfig` that the parsed train flags describe; --batch_size, when not
  given, by --train_unit."""
  return config_from_flags(
      config.TrainConfig, flag_values, batch_size=flag_values.batch_size or
      config.TRAIN_BATCH_SIZE[flag_values.train_unit])


def apply_config_from_flags(config_class, flag_values=FLAGS):
  """The `EvaluateConfig` or `PredictConfig` that the parsed flags describe; --batch_size,
  when not given, is the per-voxel engine's."""
  apply = config_from_flags(config.ApplyConfig, flag_values)
  apply = dataclasses.replace(apply, batch_size=apply.batch_size or config.APPLY_BATCH_SIZE)
  return config_from_flags(config_class, flag_values, apply=apply)


def define_lightcone_flags(flag_values=FLAGS) -> None:
  """`keras_cnn.lightcone`: the painted maps, their snapshot folder, the output folder
  and how the maps are stacked."""
  define_format_flags(flag_values)
  define_config_flags(config.DataConfig, ("data_dir",), flag_values)
  define_config_flags(config.ApplyConfig, ("overwrite",), flag_values)
  define_config_flags(config.EvaluateConfig, ("cell_size_mpc",), flag_values)
  if "maps" in flag_values:
    return
  flags.DEFINE_string(
      "maps", None, "Required. Folder of painted x_HII maps xHII_z{z:.3f}.npy, "
      "two or more redshifts.", flag_values=flag_values)
  if "out" not in flag_values:
    flags.DEFINE_string("out", None, "Required. Output folder (lightcone.npz, PNGs).",
                        flag_values=flag_values)
  define_config_flags(config.LightconeConfig, flag_values=flag_values)

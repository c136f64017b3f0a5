"""Every absl flag of keras_cnn's commands, defined in one place.

Entry points call the `define_*` functions they need at import (absl's convention,
so `--help` lists them) and read flag values only inside `main`. Each function is
idempotent, so several entry points can be imported in one process (tests do).
Flag defaults come from the config dataclasses (`ModelConfig`, `DataConfig`,
`TrainConfig`), which hold the CPU default preset; `flags/default.flags` repeats them
with comments (a test keeps the two equal) and `flags/week2.flags` is the original
GPU-sized network.
"""

import errno
import math
import os
import stat

from absl import flags

from keras_cnn import conditioning
from keras_cnn import config
from keras_cnn import conventions
from keras_cnn import model as model_lib
from keras_cnn.data import formats
from keras_cnn.data import snapshot as snapshot_lib

FLAGS = flags.FLAGS
_MODEL = model_lib.ModelConfig()  # the defaults of every model flag

BACKEND_SETTINGS = ("auto", "on", "off")


def _once(name: str) -> bool:
  """True if flag `name` still has to be defined."""
  return name not in FLAGS


def _positive(name: str):
  flags.register_validator(name, lambda v: v is None or v >= 1, message=f"--{name} must be >= 1")


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


def define_model_flags() -> None:
  """Network sizes (`keras_cnn.model.ModelConfig`)."""
  if not _once("radius"):
    return
  flags.DEFINE_integer(
      "radius", _MODEL.radius, "Crop radius r in cells; crops are (2r+1)^3 "
      "(0: the centre voxel only, with --kernel_pooling=1).")
  flags.DEFINE_integer("kernel_size", _MODEL.kernel_size, "Conv3D kernel side (odd).")
  flags.DEFINE_integer("filters", _MODEL.filters, "Conv3D filters in every block of both branches.")
  flags.DEFINE_integer("stride_conv", _MODEL.stride_conv,
                       "Conv3D stride ('same' padding: side -> ceil(side/stride)).")
  flags.DEFINE_integer("kernel_pooling", _MODEL.kernel_pooling,
                       "AveragePooling3D size and stride (1 disables pooling).")
  flags.DEFINE_float("dropout_input", _MODEL.dropout_input,
                     "Dropout rate of `dropout` after `flatten`.")
  flags.DEFINE_float("dropout_hidden", _MODEL.dropout_hidden,
                     "Dropout rate of `dropout_1` .. `dropout_5`.")
  flags.DEFINE_list("dense_units", [str(u) for u in _MODEL.dense_units],
                    "Widths of dense .. dense_4.")
  flags.DEFINE_list("tail_units", [str(u) for u in _MODEL.tail_units],
                    "Widths of dense_5, dense_6.")
  flags.DEFINE_float("leaky_relu_slope", _MODEL.leaky_relu_slope,
                     "LeakyReLU negative slope (torch default).")
  flags.DEFINE_float(
      "batch_norm_momentum", _MODEL.batch_norm_momentum,
      "Weight of the old value in BatchNormalization's moving mean and "
      "variance (torch's momentum=0.1 is 0.9 here).")
  flags.register_validator("leaky_relu_slope", lambda v: math.isfinite(v) and 0.0 <= v < 1.0,
                           message="--leaky_relu_slope must be in [0, 1)")
  flags.register_validator("batch_norm_momentum", lambda v: 0.0 <= v < 1.0,
                           message="--batch_norm_momentum must be in [0, 1)")
  flags.DEFINE_enum(
      "source_transform", _MODEL.source_transform, list(model_lib.SOURCE_TRANSFORMS),
      "Transform of the source field inside the model, before standardization: "
      "none (raw counts), log1p (compresses heavy-tailed sources) or mean_scaled "
      "(log1p of the sources over their box mean: unit-free).")
  flags.DEFINE_enum(
      "conditioning", _MODEL.conditioning, list(conditioning.KINDS),
      "A value per snapshot fed to the head beside the fields, so one model covers "
      "several redshifts: the snapshot's redshift, cosmic time (Myr) or mean x_HII "
      "(predict then needs --condition_value). Needs training snapshots with two or "
      "more different values. none: the original network.")
  flags.DEFINE_enum(
      "padding", _MODEL.padding, list(model_lib.PADDINGS),
      "Conv3D padding. 'valid' makes the network translation-equivariant: "
      "predict/evaluate then paint whole tiles per pass (the dense engine) "
      "and training can use patches (--train_unit=patch).")
  flags.DEFINE_list(
      "block_filters", [str(f) for f in _MODEL.block_filters],
      "Conv3D filters of blocks 1, 2, 3 (both branches), e.g. 16,32,64; empty: --filters "
      "in every block.")
  flags.DEFINE_list(
      "block_strides", [str(s) for s in _MODEL.block_strides],
      "Conv3D strides of blocks 1, 2, 3, e.g. 1,2,2 (the first block at full resolution); "
      "empty: --stride_conv in every block.")
  for name in ("block_filters", "block_strides"):
    flags.register_validator(
        name, lambda v: not v or (len(v) == 3 and all(s.isdigit() and int(s) > 0 for s in v)),
        message=f"--{name} needs 3 positive integers, comma separated, or nothing")
  flags.register_validator("radius", lambda v: v >= 0, message="--radius must be >= 0")
  for name in ("kernel_size", "filters", "stride_conv", "kernel_pooling"):
    _positive(name)
  flags.register_validator("kernel_size", lambda v: v % 2 == 1, message="--kernel_size must be odd")
  for name in ("dropout_input", "dropout_hidden"):
    flags.register_validator(name, lambda v: 0.0 <= v < 1.0, message=f"--{name} must be in [0, 1)")
  for name, count in (("dense_units", 5), ("tail_units", 2)):
    flags.register_validator(
        name, lambda v, count=count: len(v) == count and all(s.isdigit() and int(s) > 0 for s in v),
        message=f"--{name} needs {count} positive integers, comma separated")


def define_data_flags() -> None:
  """Where snapshots come from: a folder of snapshot files, a TFDS name, or the simulator."""
  define_format_flags()
  if not _once("data_dir"):
    return
  data = config.DataConfig()
  flags.DEFINE_string("data_dir", None,
                      "Folder of rho_z{z:.3f}.npy, nsrc_z{z:.3f}.npy, xHII_z{z:.3f}.npy.")
  flags.DEFINE(
      _RedshiftParser(allow_all=True, as_list=False), "redshift", data.redshift,
      "Snapshots of --data_dir: a redshift (needed if it holds several), a comma "
      "list, or all (matched by value). evaluate scores each; predict paints "
      "--box_index; train: see --test_redshifts. Without folders: the built-in "
      "simulator's redshift (one; default 8.397).", serializer=_RedshiftSerializer())
  flags.DEFINE_string(
      "dataset", data.dataset, "'synthetic' (the built-in simulator; independent realizations per "
      "split) or a TFDS name such as reionization_boxes/synthetic_64.")
  flags.DEFINE_string("tfds_data_dir", None, "TFDS data_dir (default: TFDS's own).")
  flags.DEFINE_integer("n_cells", data.n_cells, "Synthetic box side in cells.")
  flags.DEFINE_float("mean_xhii", data.mean_xhii, "Synthetic boxes' mean ionized fraction.")
  flags.DEFINE_integer("data_seed", data.data_seed, "Seed of the synthetic realizations.")
  flags.register_validator("data_seed", lambda v: v >= 0, message="--data_seed must be >= 0")
  flags.DEFINE_integer(
      "batch_size", None, "Examples per batch (default: train 4 patches or 64 crops, evaluate "
      "and predict 256 crops on the per-voxel engine).")
  _positive("n_cells")
  _positive("batch_size")
  flags.register_validator("mean_xhii", lambda v: 0.0 < v < 1.0,
                           message="--mean_xhii must be in (0, 1)")


def define_format_flags() -> None:
  """The layout of --data_dir's files (train, evaluate and predict read them alike)."""
  if not _once("data_format"):
    return
  data = config.DataConfig()
  flags.DEFINE_enum(
      "data_format", data.data_format, list(formats.DATA_FORMATS),
      "Layout of the --data_dir files: auto detects it field by field; npy "
      "(rho/nsrc/xHII_z{z}.npy), c2ray (xfrac3d_{z}.bin, {z}n_all.dat, "
      "{z}-coarsest_wsubgrid_sources.dat), pyc2ray (xfrac_z{z}.dat), 21cmfast "
      "(HDF5 PerturbedField, IonizedBox, HaloBox).")
  flags.DEFINE_float(
      "box_size_mpc", data.box_size_mpc,
      "CubeP3M box side in cMpc/h (a box tools21cm knows, e.g. 244): C2-Ray "
      "source masses in solar masses instead of grid units (needs tools21cm).")
  flags.register_validator("box_size_mpc", lambda v: v is None or (math.isfinite(v) and v > 0),
                           message="--box_size_mpc must be a finite number > 0")


def define_split_flags() -> None:
  """Whole snapshots of their own for train / validation / test (`keras_cnn.train`)."""
  if not _once("test_redshifts"):
    return
  for split in conventions.SPLITS:
    flags.DEFINE(
        _RedshiftParser(allow_all=False, as_list=True), f"{split}_redshifts", None,
        f"Comma list of redshifts of --data_dir whose whole snapshots are the "
        f"{split} split's own.", serializer=_RedshiftSerializer())
    flags.DEFINE_list(
        f"{split}_dirs", None,
        f"Comma list of folders (other realizations) whose snapshots, picked "
        f"by --redshift, are the {split} split's own. Splits without "
        "snapshots of their own share those of --data_dir: as x-slabs with "
        "guard bands of --radius cells when several do, whole when one does; "
        "when --data_dir has none left, they are x-slabs of the training snapshots.")


def split_flags_from(flag_values=FLAGS) -> dict:
  """The DataConfig fields of the split flags (None where not given)."""
  fields = {}
  for split in conventions.SPLITS:
    redshifts = flag_values[f"{split}_redshifts"].value
    folders = flag_values[f"{split}_dirs"].value
    fields[f"{split}_redshifts"] = tuple(redshifts) if redshifts else None
    fields[f"{split}_dirs"] = tuple(folders) if folders else None
  return fields


def define_train_flags() -> None:
  """Optimization, callbacks and output of `keras_cnn.train`."""
  define_model_flags()
  define_data_flags()
  define_split_flags()
  if not _once("workdir"):
    return
  from keras_cnn import training

  train = training.TrainConfig()
  flags.DEFINE_string("workdir", "runs/default", "Output folder (model, metrics, logs, plots).")
  flags.DEFINE_integer("epochs", train.epochs, "Maximum number of epochs.")
  flags.DEFINE_integer("steps_per_epoch", train.steps_per_epoch, "Training batches per epoch.")
  flags.DEFINE_float("learning_rate", train.learning_rate, "Adam learning rate.")
  flags.DEFINE_integer("seed", train.seed, "Seed of weights, crop centres and augmentation.")
  flags.DEFINE_boolean("augment", train.augment, "Random cube symmetry (48) per training example.")
  flags.DEFINE_integer("stratify_bins", train.stratify_bins,
                       "If > 0, draw training centres uniformly over this many x_HII bins.")
  flags.DEFINE_integer("validation_examples", train.validation_examples,
                       "Fixed validation crops per epoch.")
  flags.DEFINE_integer("test_examples", train.test_examples, "Fixed test crops for metrics.json.")
  flags.DEFINE_integer("patience", train.patience, "EarlyStopping patience in epochs (0: off).")
  flags.DEFINE_float("time_budget_minutes", train.time_budget_minutes,
                     "Stop training after this wall-clock time in minutes (0: no limit).")
  flags.DEFINE_enum(
      "train_unit", train.train_unit, ["voxel", "patch"],
      "voxel: one target voxel per (2r+1)^3 crop. patch: a --patch_size^3 block "
      "of targets per example with its periodic context, trained through the "
      "dense twin (needs --padding=valid); the saved model is the same "
      "per-voxel network.")
  flags.DEFINE_integer("patch_size", train.patch_size,
                       "Target voxels per patch side (--train_unit=patch).")
  flags.DEFINE_integer("validation_patches", train.validation_patches,
                       "Fixed validation patches per epoch (--train_unit=patch).")
  flags.DEFINE_enum("loss", train.loss, sorted(training.LOSSES),
                    "mse, or bce: binary cross-entropy on x_HII in [0, 1].")
  flags.DEFINE_float(
      "ema_momentum", train.ema_momentum,
      "Keep an exponential moving average of the weights with this momentum (e.g. 0.99; 0: "
      "off); validation, the saved model and its scores use the average.")
  flags.register_validator("ema_momentum", lambda v: 0.0 <= v < 1.0,
                           message="--ema_momentum must be in [0, 1)")
  flags.DEFINE_enum(
      "lr_schedule", train.lr_schedule, list(training.LR_SCHEDULES),
      "plateau: halve the learning rate when val_loss stalls. cosine: decay "
      "it to 0 over --time_budget_minutes (or over all epochs if no budget).")
  flags.DEFINE_enum("distribution", train.distribution, ["none", "data_parallel"],
                    "Train on every local device (see keras_cnn.distribute).")
  flags.DEFINE_enum("jit_compile", train.jit_compile, list(BACKEND_SETTINGS),
                    "XLA compilation of the train step; auto picks the fastest per backend.")
  flags.DEFINE_string(
      "source_units", train.source_units,
      "Units of the source field, free text (e.g. 'Msun per cell'), recorded "
      "in the saved model with statistics of the training inputs; evaluate "
      "and predict warn when a box's inputs lie far from them.")
  flags.DEFINE_enum(
      "precision", train.precision, ["auto", "float32", "mixed_bfloat16"],
      "Keras dtype policy; auto: mixed_bfloat16 under tensorflow on a CPU with "
      "AVX512-BF16/AMX (faster: docs/results.md), else float32.")
  for name in ("epochs", "steps_per_epoch", "validation_examples", "test_examples", "patch_size",
               "validation_patches"):
    _positive(name)
  flags.register_validator("learning_rate", lambda v: math.isfinite(v) and v > 0,
                           message="--learning_rate must be a finite number > 0")
  for name in ("seed", "stratify_bins", "patience"):
    flags.register_validator(name, lambda v: v >= 0, message=f"--{name} must be >= 0")
  flags.register_validator(
      "time_budget_minutes", lambda v: math.isfinite(v) and v >= 0,
      message="--time_budget_minutes must be a finite number >= 0 "
      "(0: no limit)")
  flags.register_multi_flags_validator(
      ["train_unit", "padding"], lambda v: v["train_unit"] != "patch" or v["padding"] == "valid",
      message="--train_unit=patch trains the dense twin, which needs --padding=valid")


def define_model_input_flags() -> None:
  """Flags shared by evaluate and predict: the saved model to apply."""
  define_data_flags()
  if not _once("model"):
    return
  flags.DEFINE_string("model", None, "Path of a trained .keras file.")


def model_config_from_flags(flag_values=FLAGS) -> model_lib.ModelConfig:
  """The ModelConfig that the model flags describe."""
  return model_lib.ModelConfig(
      radius=flag_values.radius,
      kernel_size=flag_values.kernel_size,
      filters=flag_values.filters,
      stride_conv=flag_values.stride_conv,
      kernel_pooling=flag_values.kernel_pooling,
      dropout_input=flag_values.dropout_input,
      dropout_hidden=flag_values.dropout_hidden,
      dense_units=tuple(int(u) for u in flag_values.dense_units),
      tail_units=tuple(int(u) for u in flag_values.tail_units),
      leaky_relu_slope=flag_values.leaky_relu_slope,
      batch_norm_momentum=flag_values.batch_norm_momentum,
      source_transform=flag_values.source_transform,
      padding=flag_values.padding,
      conditioning=flag_values.conditioning,
      block_filters=tuple(int(f) for f in flag_values.block_filters),
      block_strides=tuple(int(s) for s in flag_values.block_strides),
  )


def train_config_from_flags(flag_values=FLAGS):
  """The `keras_cnn.training.TrainConfig` that the parsed train flags describe."""
  from keras_cnn import training  # not at import time: predict and evaluate do not need it

  return training.TrainConfig(
      model=model_config_from_flags(flag_values), data=training.DataConfig(
          data_dir=flag_values.data_dir, redshift=flag_values.redshift, dataset=flag_values.dataset,
          tfds_data_dir=flag_values.tfds_data_dir, n_cells=flag_values.n_cells,
          mean_xhii=flag_values.mean_xhii, data_seed=flag_values.data_seed,
          data_format=flag_values.data_format, box_size_mpc=flag_values.box_size_mpc,
          **split_flags_from(flag_values)), batch_size=flag_values.batch_size or
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


def _define_apply_flags() -> None:
  """Flags of evaluate and predict beyond the data: model, split, output, progress."""
  define_model_input_flags()
  define_format_flags()
  if not _once("out"):
    return
  # Required, but checked in main (`require_flags`) rather than marked: a required
  # mark travels with the flag into every FlagValues that tests build from FLAGS.
  flags.DEFINE_string(
      "out", None, "Required. evaluate: output folder (metrics.json, PNGs); "
      "predict: the .npy file of the x_HII map.")
  flags.DEFINE_enum("split", "test", list(conventions.SPLITS),
                    "Split of --dataset to use (ignored with --data_dir).")
  flags.DEFINE_boolean("progress", True, "Show a progress bar on stderr.")
  flags.DEFINE_enum(
      "engine", "auto", ["auto", "dense", "per_voxel"],
      "auto: the dense engine (a tile per pass) for models trained with "
      "--padding=valid, else one crop per voxel.")
  flags.DEFINE_float("memory_budget_gb", 1.5,
                     "Dense engine: memory bound of one tile's pass; sets the tile size.")
  flags.DEFINE_boolean("overwrite", False, "Replace an existing --out.")
  flags.DEFINE_boolean(
      "strict_domain", False, "Stop with an error, rather than warn, when a box's source mean or "
      "fraction of non-zero source cells is more than 10x, or its "
      "overdensity variance more than 3x, off the model's training inputs.")
  flags.register_validator("memory_budget_gb", lambda v: math.isfinite(v) and v > 0,
                           message="--memory_budget_gb must be a finite number > 0")
  flags.DEFINE_float(
      "condition_value", None, "Models trained with --conditioning: the value to feed for "
      "every box instead of the box's own (its redshift, cosmic time in Myr, or mean x_HII "
      "from its target). Required to predict a box without a target with a model "
      "conditioned on the mean x_HII.")
  flags.register_validator("condition_value", lambda v: v is None or math.isfinite(v),
                           message="--condition_value must be a finite number")


def define_predict_flags() -> None:
  """`keras_cnn.predict`: which box, and which x-slab of it (shards)."""
  _define_apply_flags()
  if not _once("num_shards"):
    return
  flags.DEFINE_integer("num_shards", 1,
                       "Split the box into this many x-slabs (one process per slab).")
  flags.DEFINE_integer("shard_index", 0, "Which x-slab to predict, in [0, --num_shards).")
  flags.DEFINE_integer("box_index", 0, "Which box of the split to paint when it holds several.")
  _positive("num_shards")
  flags.register_validator("box_index", lambda v: v >= 0, message="--box_index must be >= 0")
  flags.register_multi_flags_validator(
      ["num_shards", "shard_index"],
      lambda v: v["num_shards"] is None or 0 <= v["shard_index"] < v["num_shards"],
      message="--shard_index must be in [0, --num_shards): shards are numbered from 0")


# Defaults of the flags of `define_scale_flags`.
DEFAULT_SCHEDULER = "none"
DEFAULT_WORKERS = 0


def define_scale_flags() -> None:
  """`keras_cnn.predict` beyond one machine's memory or cores (`keras_cnn.scale`): where
  the dense engine's tiles are painted."""
  if not _once("scheduler"):
    return
  flags.DEFINE_string(
      "scheduler", DEFAULT_SCHEDULER,
      "Where the dense engine paints tiles: none (this process, in order), threads (Dask "
      "threads), processes (a local Dask cluster of --workers processes), or the address of "
      "a dask.distributed scheduler (e.g. tcp://10.0.0.5:8786). Needs the extra 'scale'.")
  flags.DEFINE_integer("workers", DEFAULT_WORKERS,
                       "Dask workers of --scheduler=threads or processes "
                       "(0: one per core).")
  flags.register_validator("workers", lambda v: v >= 0, message="--workers must be >= 0")
  flags.register_validator("scheduler", lambda v: bool(v and v.strip()),
                           message="--scheduler must not be empty")


def define_evaluate_flags() -> None:
  """`keras_cnn.evaluate`: how much of each box to score and what to plot."""
  _define_apply_flags()
  if not _once("history"):
    return
  flags.DEFINE_string(
      "history", None, "history.csv of the training run to plot (default: the one beside "
      "--model, if any).")
  flags.DEFINE_integer(
      "max_full_voxels", 128 ** 3, "Boxes with at most this many voxels are predicted whole (maps, "
      "slices, power spectra); larger ones are scored on --num_examples "
      "random voxels.")
  flags.DEFINE_integer("num_examples", 16384,
                       "Random voxels scored per box larger than --max_full_voxels.")
  flags.DEFINE_integer("sample_seed", 0, "Seed of the random voxels of large boxes.")
  flags.register_validator("sample_seed", lambda v: v >= 0, message="--sample_seed must be >= 0")
  flags.DEFINE_float("cell_size_mpc", conventions.CELL_SIZE_MPC,
                     "Comoving cell side in cMpc (plot axes, power-spectrum k).")
  flags.DEFINE_enum(
      "power_spectrum", "auto", ["auto", "tools21cm", "numpy", "off"],
      "Power-spectrum implementation: auto uses tools21cm (extra 'astro') "
      "when installed, else the NumPy twin in keras_cnn.metrics.")
  _positive("max_full_voxels")
  _positive("num_examples")
  flags.register_validator("cell_size_mpc", lambda v: v > 0, message="--cell_size_mpc must be > 0")


def require_flags(*names: str, flag_values=FLAGS) -> None:
  """Raises app.UsageError naming every flag of `names` that has no value."""
  from absl import app

  missing = [f"--{name}" for name in names if flag_values[name].value in (None, "")]
  if missing:
    raise app.UsageError(f"{', '.join(missing)} must be given")


# Where no command writes: the kernel's views of processes and devices.
_SYSTEM_FOLDERS = ("/proc", "/sys")


def _check_writable_place(out: str, is_dir: bool) -> None:
  """Refuses an --out that cannot be written, before any work is done: under /proc or
  /sys, a folder where a file is wanted (or a path ending in '/'), a file where a
  folder is wanted, a special file, or a place whose nearest existing folder is not
  writable."""
  from absl import app

  target = os.path.realpath(out)
  for system in _SYSTEM_FOLDERS:
    if target == system or target.startswith(system + os.sep):
      raise app.UsageError(f"--out={out} is under {system}, where no output can be written; "
                           "choose a path in one of your folders")
  if not is_dir and out.endswith((os.sep, "/")):
    raise app.UsageError(f"--out={out} ends in '/' but names the .npy file to write; give a "
                         "file name")
  if os.path.isdir(out) and not is_dir:
    raise app.UsageError(f"--out={out} is a folder; give the path of the .npy file to write")
  if os.path.exists(out) and not os.path.isdir(out):
    if is_dir:
      raise app.UsageError(f"--out={out} is a file; evaluate writes a folder: choose a new or "
                           "empty folder")
    if not stat.S_ISREG(os.stat(out).st_mode):
      raise app.UsageError(f"--out={out} is not a regular file (a device, FIFO or socket); "
                           "choose another path")
  folder = os.path.dirname(os.path.abspath(out)) if not is_dir else os.path.abspath(out)
  while not os.path.lexists(folder):
    folder = os.path.dirname(folder)
  if not os.path.isdir(folder):
    raise app.UsageError(f"--out={out}: {folder} is not a folder")
  if not os.access(folder, os.W_OK | os.X_OK):
    raise app.UsageError(f"--out={out}: the folder {folder} is not writable")


def check_output_path(out: str, is_dir: bool, flag_values=FLAGS) -> None:
  """Refuses an --out that cannot be written or would replace the user's files.

  Never one of the command's inputs (the model, a file of --data_dir) nor a training
  workdir; otherwise an existing file (a dangling symbolic link included) or non-empty
  folder only with --overwrite, except a folder that holds an evaluation marker (the
  evaluation itself compares it). Checked before any work is done.
  """
  from absl import app

  _check_writable_place(out, is_dir)
  target = os.path.realpath(out)
  inputs = [flag_values.model] if "model" in flag_values else []
  data_dir = flag_values.data_dir if "data_dir" in flag_values else None
  if data_dir and os.path.isdir(data_dir):
    inputs += [  # its files; a folder inside it (an earlier --out) is no input
        os.path.join(data_dir, name)
        for name in os.listdir(data_dir)
        if not os.path.isdir(os.path.join(data_dir, name))
    ]
    inputs.append(data_dir)
  for path in inputs:
    if path and os.path.realpath(path) == target:
      raise app.UsageError(f"--out={out} is one of this command's inputs ({path}); "
                           "choose another path")
  if is_dir and os.path.exists(os.path.join(out, conventions.MANIFEST_FILE)):
    raise app.UsageError(f"--out={out} is a training workdir (its metrics.json and plots "
                         "are the run's); choose another folder")
  if flag_values.overwrite:
    return
  if is_dir and os.path.isdir(out) and os.listdir(out) and not os.path.isfile(
      os.path.join(out, conventions.EVALUATION_FILE)):
    raise app.UsageError(f"--out={out} is a folder that already holds files; pass "
                         "--overwrite to replace ours in it, or choose a new folder")
  if os.path.lexists(out) and not (is_dir and os.path.isdir(out)):
    raise app.UsageError(f"--out={out} already exists; pass --overwrite to replace it")


def load_model_or_exit(path: str):
  """The --model file, loaded safely and checked to be a keras_cnn network; a missing,
  empty, truncated, legacy or foreign file is a usage error that says which."""
  from absl import app

  from keras_cnn import inference

  try:
    return inference.load_model(path)
  except FileNotFoundError as error:
    raise app.UsageError(str(error)) from error
  except inference.NotANetwork as error:
    raise app.UsageError(f"--model={path}: {error}") from error
  except (ValueError, OSError, TypeError, KeyError) as error:
    raise app.UsageError(f"--model={path}: not a loadable keras_cnn model ({error})") from error


def condition_kind_or_exit(model, model_path: str, flag_values=FLAGS) -> str:
  """The model's conditioning kind; --condition_value with a model that takes none is a
  usage error."""
  from absl import app

  kind = conditioning.of_model(model)
  if kind == "none" and flag_values.condition_value is not None:
    raise app.UsageError(f"--condition_value={flag_values.condition_value}: the model "
                         f"{model_path} takes no condition (it was trained without "
                         "--conditioning)")
  return kind


def load_box_from_flags(radius: int, require_target: bool, flag_values=FLAGS):
  """The snapshots of the box the data flags name (evaluate and predict)."""
  from keras_cnn.data import splits as splits_lib

  return splits_lib.load_box(
      flag_values.data_dir, flag_values.redshift, flag_values.dataset, split=flag_values.split,
      tfds_data_dir=flag_values.tfds_data_dir, n_cells=flag_values.n_cells,
      mean_xhii=flag_values.mean_xhii, data_seed=flag_values.data_seed, radius=radius,
      require_target=require_target,
      data_format=flag_values.data_format if "data_format" in flag_values else "auto",
      box_size_mpc=flag_values.box_size_mpc if "box_size_mpc" in flag_values else None)


# Failures of the machine rather than of keras_cnn: full disk, quota, file-size limit,
# read-only or forbidden folder. Every file is written to a temporary name first, so a
# rerun of the same command goes on from what was committed.
_ENVIRONMENT_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES)


def _parse_or_exit(argv):
  """absl's flag parsing, with a bad flag as one `Error:` line and exit status 2."""
  import sys

  try:
    return FLAGS(argv)
  except flags.Error as error:
    sys.stderr.write(f"Error: {error}\n")
    sys.exit(2)


INTERRUPTED_EXIT = 130  # 128 + SIGINT, as shells report it


def run(main) -> None:
  """`app.run(main)`, with user errors as one line on stderr and exit status 2.

  A `keras_cnn.errors.UserError` (bad data, folders, model files), a usage error raised
  in `main` or a flag that does not parse is a mistake of the user, not a bug: it ends
  the command with its message alone. Ctrl-C ends it with one line and status 130;
  every file is written under a temporary name first, so nothing partial is left and
  the same command goes on. Set KERAS_CNN_TRACEBACK=1 to see the traceback anyway.
  """
  import sys

  from absl import app

  from keras_cnn import errors

  def guarded(argv):
    try:
      return main(argv)
    except (errors.UserError, app.UsageError) as error:
      if os.environ.get("KERAS_CNN_TRACEBACK"):
        raise
      sys.stderr.write(f"Error: {error}\n")
      sys.exit(2)
    except KeyboardInterrupt:
      if os.environ.get("KERAS_CNN_TRACEBACK"):
        raise
      sys.stderr.write("\ninterrupted; run the same command to go on\n")
      sys.exit(INTERRUPTED_EXIT)
    except OSError as error:
      if error.errno not in _ENVIRONMENT_ERRNOS or os.environ.get("KERAS_CNN_TRACEBACK"):
        raise
      where = f"{error.filename}: " if error.filename else ""
      sys.stderr.write(f"Error: {where}{error.strerror} (disk space, quota or permissions); "
                       "fix it, then rerun the same command to go on\n")
      sys.exit(2)

  app.run(guarded, flags_parser=_parse_or_exit)

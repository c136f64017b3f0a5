"""Every setting of every command, as frozen dataclasses that import no Keras.

`ModelConfig` (the network's sizes), `DataConfig` (where snapshots come from),
`TrainConfig` (a training run), `ApplyConfig` (what evaluate and predict share),
`EvaluateConfig`, `PredictConfig` and `TuneConfig` (a search's own). Each field is
declared with `setting`, which keeps beside its default the help text, the choices and
the checks of its flag; `keras_cnn.cli_flags` defines the flags of the commands from
these fields, so a default, a choice list or a help text is written once, here. Reading
the flags of a command therefore loads no trainer (`keras_cnn.training`).

The choice lists of the settings live here too (`TRAIN_UNITS`, `DISTRIBUTIONS`, ...);
the modules that use them refer to these.
"""

import dataclasses
import math
from typing import Callable, Dict, List, NamedTuple, Optional, Sequence, Tuple, Union

from keras_cnn import conditioning
from keras_cnn import conventions
from keras_cnn import domain
from keras_cnn.data import formats
from keras_cnn.data import splits as splits_lib
from keras_cnn.data import transforms

# Choices of the settings.
SOURCE_TRANSFORMS = transforms.SOURCE_TRANSFORMS
PADDINGS = ("same", "valid")
CONDITIONING_KINDS = conditioning.KINDS
DATA_FORMATS = formats.DATA_FORMATS
TRAIN_UNITS = ("voxel", "patch")
LOSSES = {"mse": "mean_squared_error", "bce": "binary_crossentropy"}  # name: Keras loss
LR_SCHEDULES = ("plateau", "cosine")
DISTRIBUTIONS = ("none", "data_parallel")
BACKEND_SETTINGS = ("auto", "on", "off")
PRECISIONS = ("auto", "float32", "mixed_bfloat16")
ENGINES = ("auto", "dense", "per_voxel")
POWER_SPECTRA = ("auto", "tools21cm", "numpy", "off")
TUNERS = ("bayesian", "random")
# Where the density and source branches meet: only in the head (the original network),
# already at the input (every Conv3D of both branches sees both fields), or before every
# block (each block's input holds both branches' features).
FUSIONS = ("late", "early", "every")
# The settings a search can vary, in the order of `keras_cnn.tuning.LEVERS`.
SEARCHABLE = ("learning_rate", "lr_schedule", "loss", "batch_size", "patch_size", "dropout",
              "block_filters", "block_strides", "dense_units", "radius", "source_transform",
              "fusion", "excursion_radii")
DEFAULT_SEARCH = ("learning_rate", "dropout", "block_filters", "dense_units", "loss")

BLOCKS = 3  # conv blocks per branch
# Sphere radii (cells) of the excursion-set features of the CPU default.
EXCURSION_RADII = (0.0, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0, 5.0, 6.0, 7.0, 8.0, 9.5, 11.0, 13.0,
                   15.0)
TRAIN_BATCH_SIZE = {"patch": 4, "voxel": 64}  # patches, or crops, per training batch
APPLY_BATCH_SIZE = 256  # crops per batch of the per-voxel engine (evaluate, predict)
DEFAULT_SCHEDULER = "none"  # predict paints in its own process (keras_cnn.scale)


class Check(NamedTuple):
  """A rule a setting's value must follow; `message` follows the flag's name."""

  test: Callable[[object], bool]
  message: str


def at_least(low) -> Check:
  return Check(lambda v: v >= low, f"must be >= {low}")


def _radii() -> Check:
  return Check(lambda v: all(float(u) >= 0 for u in v) and len(set(v)) == len(v),
               "needs distinct numbers >= 0, comma separated, or nothing")


POSITIVE = at_least(1)
NON_NEGATIVE = at_least(0)
NOT_EMPTY = Check(lambda v: bool(v and v.strip()), "must not be empty")
FINITE_POSITIVE = Check(lambda v: math.isfinite(v) and v > 0, "must be a finite number > 0")
FINITE = Check(math.isfinite, "must be a finite number")
NO_LIMIT_AT_0 = Check(lambda v: math.isfinite(v) and v >= 0,
                      "must be a finite number >= 0 (0: no limit)")
FRACTION = Check(lambda v: math.isfinite(v) and 0.0 <= v < 1.0, "must be in [0, 1)")


def _ints(count: int, or_nothing: bool = False) -> Check:
  nothing = " or nothing" if or_nothing else ""
  return Check(lambda v: (or_nothing and not v) or (len(v) == count and all(u > 0 for u in v)),
               f"needs {count} positive integers, comma separated{nothing}")


def setting(default, help: str, *, choices: Optional[Sequence[str]] = None,
            checks: Sequence[Check] = (), kind: Optional[str] = None,
            flag_default=dataclasses.MISSING):
  """A dataclass field with what its flag needs in the field's metadata.

  Args:
    default: the default value (of the field and of its flag).
    help: the flag's help text.
    choices: the allowed values (an enum flag).
    checks: rules the value must follow; a value of None passes them.
    kind: how the flag parses, where the field's type does not say it ("redshift",
      "redshift_list": `keras_cnn.cli_flags` has their parsers).
    flag_default: the flag's default where it differs from the field's: None for a
      value the command picks from other settings (e.g. the batch size per train unit).
  """
  metadata = {"help": help, "checks": tuple(checks)}
  if choices is not None:
    metadata["choices"] = tuple(choices)
  if kind is not None:
    metadata["kind"] = kind
  if flag_default is not dataclasses.MISSING:
    metadata["flag_default"] = flag_default
  return dataclasses.field(default=default, metadata=metadata)


def flag_default(field: dataclasses.Field):
  """The default of the flag of `field`."""
  return field.metadata.get("flag_default", field.default)


def settings_of(config_class) -> List[dataclasses.Field]:
  """The fields of `config_class` that are settings (nested configs left out)."""
  return [f for f in dataclasses.fields(config_class) if "help" in f.metadata]


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Every size of the network. The defaults are the CPU default preset (the flag
  defaults and `flags/default.flags`); `keras_cnn.model.WEEK2` is the original network."""

  # 31 -> 15 -> 7 -> 3 with kernel 3, stride 2: a centred receptive field
  radius: int = setting(
      15, "Crop radius r in cells; crops are (2r+1)^3 (0: the centre voxel only, with "
      "--kernel_pooling=1).", checks=[NON_NEGATIVE])
  kernel_size: int = setting(3, "Conv3D kernel side (odd).",
                             checks=[POSITIVE, Check(lambda v: v % 2 == 1, "must be odd")])
  filters: int = setting(16, "Conv3D filters in every block of both branches.", checks=[POSITIVE])
  stride_conv: int = setting(2, "Conv3D stride ('same' padding: side -> ceil(side/stride)).",
                             checks=[POSITIVE])
  kernel_pooling: int = setting(1, "AveragePooling3D size and stride (1 disables pooling).",
                                checks=[POSITIVE])
  dropout_input: float = setting(0.2, "Dropout rate of `dropout` after `flatten`.",
                                 checks=[FRACTION])
  dropout_hidden: float = setting(0.1, "Dropout rate of `dropout_1` .. `dropout_5`.",
                                  checks=[FRACTION])
  dense_units: Sequence[int] = setting((256, 128, 64, 32, 16), "Widths of dense .. dense_4.",
                                       checks=[_ints(5)])
  tail_units: Sequence[int] = setting((8, 4), "Widths of dense_5, dense_6.", checks=[_ints(2)])
  # torch.nn.LeakyReLU() default, as in the original network
  leaky_relu_slope: float = setting(0.01, "LeakyReLU negative slope (torch default).",
                                    checks=[FRACTION])
  # 0.9 is torch.nn.BatchNorm3d's momentum=0.1, as in the original network (Keras' own
  # default, 0.99, lets the statistics used for validation lag behind weights that still
  # move).
  batch_norm_momentum: float = setting(
      0.9, "Weight of the old value in BatchNormalization's moving mean and variance "
      "(torch's momentum=0.1 is 0.9 here).", checks=[FRACTION])
  source_transform: str = setting(
      "none", "Transform of the source field inside the model, before standardization: "
      "none (raw counts), log1p (compresses heavy-tailed sources) or mean_scaled "
      "(log1p of the sources over their box mean: unit-free).", choices=SOURCE_TRANSFORMS)
  # "same" is the original; "valid" makes the network translation-equivariant, so its
  # dense twin (keras_cnn.dense) paints a whole tile in one pass, exactly.
  padding: str = setting(
      "valid", "Conv3D padding. 'valid' makes the network translation-equivariant: "
      "predict/evaluate then paint whole tiles per pass (the dense engine) and training can "
      "use patches (--train_unit=patch).", choices=PADDINGS)
  conditioning: str = setting(
      "none", "A value per snapshot fed to the head beside the fields, so one model covers "
      "several redshifts: the snapshot's redshift, cosmic time (Myr) or mean x_HII "
      "(predict then needs --condition_value). Needs training snapshots with two or "
      "more different values. none: the original network.", choices=CONDITIONING_KINDS)
  # Per-block overrides, one value for each of the three blocks of a branch (empty: the
  # single `filters` / `stride_conv` in every block).
  block_filters: Sequence[int] = setting(
      (), "Conv3D filters of blocks 1, 2, 3 (both branches), e.g. 16,32,64; empty: --filters "
      "in every block.", checks=[_ints(BLOCKS, or_nothing=True)])
  block_strides: Sequence[int] = setting(
      (), "Conv3D strides of blocks 1, 2, 3, e.g. 1,2,2 (the first block at full resolution); "
      "empty: --stride_conv in every block.", checks=[_ints(BLOCKS, or_nothing=True)])
  fusion: str = setting(
      "early", "Where the two branches meet. late: only in the head (the original network). "
      "early: both branches' first Conv3D sees both fields (the ionization criterion "
      "compares sums of sources with sums of hydrogen over the same spheres). every: each "
      "block's input holds both branches' features (later blocks cost twice the FLOPs).",
      choices=FUSIONS)
  # A finer grid of radii at small R, where a bubble's edge is decided.
  excursion_radii: Sequence[float] = setting(
      EXCURSION_RADII, "Radii (cells) of spheres around the voxel over which the head also "
      "sees the log of the mean density and of the mean sources (and their largest "
      "difference): the sums an excursion-set criterion compares, at full resolution. Radii "
      "above --radius are left out. Empty: none (the original network).", checks=[_radii()],
      kind="float_tuple")

  @property
  def crop_size(self) -> int:
    return 2 * self.radius + 1

  def filters_per_block(self) -> Tuple[int, ...]:
    """Conv3D filters of blocks 1, 2, 3 (both branches)."""
    return tuple(int(f) for f in self.block_filters) or (self.filters,) * BLOCKS

  def spheres(self) -> Tuple[float, ...]:
    """The radii of `excursion_radii` the crop holds (those <= `radius`)."""
    return tuple(float(r) for r in self.excursion_radii if float(r) <= self.radius)

  def strides_per_block(self) -> Tuple[int, ...]:
    """Conv3D strides of blocks 1, 2, 3 (both branches)."""
    return tuple(int(s) for s in self.block_strides) or (self.stride_conv,) * BLOCKS


def _split_redshifts(split: str):
  return setting(
      None, f"Comma list of redshifts of --data_dir whose whole snapshots are the {split} "
      "split's own.", kind="redshift_list")


def _split_dirs(split: str):
  return setting(
      None, f"Comma list of folders (other realizations) whose snapshots, picked by "
      f"--redshift, are the {split} split's own. Splits without snapshots of their own share "
      "those of --data_dir: as x-slabs with guard bands of --radius cells when several do, "
      "whole when one does; when --data_dir has none left, they are x-slabs of the training "
      "snapshots.")


@dataclasses.dataclass(frozen=True)
class DataConfig:
  """Where the snapshots come from (see `keras_cnn.data.splits.load_splits`).

  `redshift` is None, one redshift, a tuple of them, or "all". The `<split>_redshifts`
  (of `data_dir`) and `<split>_dirs` (folders) give a split whole snapshots of its own
  (`SPLIT_FIELDS`: train only).
  """

  data_dir: Optional[str] = setting(
      None, "Folder of rho_z{z:.3f}.npy, nsrc_z{z:.3f}.npy, xHII_z{z:.3f}.npy.")
  redshift: Union[None, float, str, Tuple[float, ...]] = setting(
      None, "Snapshots of --data_dir: a redshift (needed if it holds several), a comma list, "
      "or all (matched by value). evaluate scores each; predict paints each into the --out "
      "folder; train: see --test_redshifts. Without folders: the built-in simulator's "
      "redshift (one; default 8.397).", kind="redshift")
  dataset: str = setting(
      splits_lib.SYNTHETIC, "'synthetic' (the built-in simulator; independent realizations "
      "per split) or a TFDS name such as reionization_boxes/synthetic_64.")
  tfds_data_dir: Optional[str] = setting(None, "TFDS data_dir (default: TFDS's own).")
  n_cells: int = setting(64, "Synthetic box side in cells.", checks=[POSITIVE])
  mean_xhii: float = setting(0.5, "Synthetic boxes' mean ionized fraction.",
                             checks=[Check(lambda v: 0.0 < v < 1.0, "must be in (0, 1)")])
  data_seed: int = setting(0, "Seed of the synthetic realizations.", checks=[NON_NEGATIVE])
  synthetic_sources: str = setting(
      "photons", "Built-in simulator: what n_src holds. photons: the source counts times the "
      "ionizing efficiency (solved per realization for --mean_xhii), what a radiative-transfer "
      "code is given; the ionization threshold is the same in every box. "
      "counts: the counts alone; the efficiency differs from box to box and is in no input, "
      "so a model learns its training boxes' (docs/results.md).", choices=("counts", "photons"))
  synthetic_train_boxes: int = setting(
      1, "Built-in simulator: independent realizations in the training split (validation "
      "and test keep one each; the first training box is the same for every count). Ignored, "
      "with a warning, for snapshots of folders or TFDS.", checks=[POSITIVE])
  data_format: str = setting(
      "auto", "Layout of the --data_dir files: auto detects it field by field; npy "
      "(rho/nsrc/xHII_z{z}.npy), c2ray (xfrac3d_{z}.bin, {z}n_all.dat, "
      "{z}-coarsest_wsubgrid_sources.dat), pyc2ray (xfrac_z{z}.dat), 21cmfast (HDF5 "
      "PerturbedField, IonizedBox, HaloBox).", choices=DATA_FORMATS)
  box_size_mpc: Optional[float] = setting(
      None, "CubeP3M box side in cMpc/h (a box tools21cm knows, e.g. 244): C2-Ray source "
      "masses in solar masses instead of grid units (needs tools21cm).", checks=[FINITE_POSITIVE])
  train_redshifts: Optional[Tuple[float, ...]] = _split_redshifts("train")
  validation_redshifts: Optional[Tuple[float, ...]] = _split_redshifts("validation")
  test_redshifts: Optional[Tuple[float, ...]] = _split_redshifts("test")
  train_dirs: Optional[Tuple[str, ...]] = _split_dirs("train")
  validation_dirs: Optional[Tuple[str, ...]] = _split_dirs("validation")
  test_dirs: Optional[Tuple[str, ...]] = _split_dirs("test")

  def split_redshifts(self) -> Dict[str, Tuple[float, ...]]:
    """{split: its own redshifts of data_dir}, for the splits that have some."""
    return {
        split: getattr(self, f"{split}_redshifts")
        for split in conventions.SPLITS
        if getattr(self, f"{split}_redshifts")
    }

  def split_dirs(self) -> Dict[str, Tuple[str, ...]]:
    """{split: its own folders}, for the splits that have some."""
    return {
        split: getattr(self, f"{split}_dirs")
        for split in conventions.SPLITS
        if getattr(self, f"{split}_dirs")
    }

  def folders(self) -> List[str]:
    """Every user folder the run reads: data_dir, then each split's folders."""
    found = [self.data_dir] if self.data_dir else []
    for folders in self.split_dirs().values():
      found.extend(folders)
    return found


# The DataConfig fields that only training reads (whole snapshots of a split's own, and
# how many simulator realizations it trains on).
SPLIT_FIELDS = tuple(f"{split}_{what}" for what in ("redshifts", "dirs")
                     for split in conventions.SPLITS) + ("synthetic_train_boxes",)

# The --batch_size flag serves every command; its default depends on the command.
_BATCH_SIZE_HELP = ("Examples per batch (default: train 4 patches or 64 crops, evaluate and "
                    "predict 256 crops on the per-voxel engine).")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """Everything a training run depends on; `keras_cnn.cli_flags` fills it from flags."""

  model: ModelConfig = ModelConfig()
  data: DataConfig = DataConfig()
  # patches of patch_size^3 target voxels, or crops (TRAIN_BATCH_SIZE by train_unit)
  batch_size: int = setting(4, _BATCH_SIZE_HELP, checks=[POSITIVE], flag_default=None)
  epochs: int = setting(200, "Maximum number of epochs.", checks=[POSITIVE])
  steps_per_epoch: int = setting(100, "Training batches per epoch.", checks=[POSITIVE])
  learning_rate: float = setting(1e-3, "Adam learning rate.", checks=[FINITE_POSITIVE])
  seed: int = setting(0, "Seed of weights, crop centres and augmentation.", checks=[NON_NEGATIVE])
  augment: bool = setting(True, "Random cube symmetry (48) per training example.")
  stratify_bins: int = setting(
      0, "If > 0, draw training centres uniformly over this many x_HII bins "
      "(--train_unit=voxel).", checks=[NON_NEGATIVE])
  validation_examples: int = setting(4096, "Fixed validation crops per epoch "
                                     "(--train_unit=voxel).", checks=[POSITIVE])
  test_examples: int = setting(
      16384, "Fixed test crops for metrics.json (--padding=same; 'valid' models are scored "
      "on every test voxel).", checks=[POSITIVE])
  patience: int = setting(6, "EarlyStopping patience in epochs (0: off).", checks=[NON_NEGATIVE])
  time_budget_minutes: float = setting(
      13.5, "Stop training after this wall-clock time in minutes (0: no limit).",
      checks=[NO_LIMIT_AT_0])
  train_unit: str = setting(
      "patch", "voxel: one target voxel per (2r+1)^3 crop. patch: a --patch_size^3 block of "
      "targets per example with its periodic context, trained through the dense twin (needs "
      "--padding=valid); the saved model is the same per-voxel network.", choices=TRAIN_UNITS)
  loss: str = setting("mse", "mse, or bce: binary cross-entropy on x_HII in [0, 1].",
                      choices=sorted(LOSSES))
  lr_schedule: str = setting(
      "plateau", "plateau: halve the learning rate when val_loss stalls. cosine: decay it to "
      "0 over --time_budget_minutes (or over all epochs if no budget).", choices=LR_SCHEDULES)
  patch_size: int = setting(16, "Target voxels per patch side (--train_unit=patch).",
                            checks=[POSITIVE])
  validation_patches: int = setting(16, "Fixed validation patches per epoch "
                                    "(--train_unit=patch).", checks=[POSITIVE])
  distribution: str = setting("none", "Train on every local device (see keras_cnn.distribute).",
                              choices=DISTRIBUTIONS)
  jit_compile: str = setting(
      "auto", "XLA compilation of the train step; auto picks the fastest per backend.",
      choices=BACKEND_SETTINGS)
  precision: str = setting(
      "auto", "Keras dtype policy; auto: mixed_bfloat16 under tensorflow on a CPU with "
      "AVX512-BF16/AMX (faster: docs/results.md), else float32.", choices=PRECISIONS)
  # recorded in the saved model
  source_units: str = setting(
      domain.DEFAULT_SOURCE_UNITS, "Units of the source field, free text (e.g. 'Msun per "
      "cell'), recorded in the saved model with statistics of the training inputs; evaluate "
      "and predict warn when a box's inputs lie far from them.")
  # Validation, the saved model and its test scores use the average; training goes on
  # with the raw weights.
  ema_momentum: float = setting(
      0.0, "Keep an exponential moving average of the weights with this momentum (e.g. 0.99; "
      "0: off); validation, the saved model and its scores use the average.", checks=[FRACTION])

  def ignored_settings(self) -> Dict[str, str]:
    """{setting: why} for the settings this run does not read, given the others."""
    ignored = {}
    if self.model.padding == "valid":
      ignored["test_examples"] = ("'valid' models are scored on every test voxel "
                                  "(--padding=valid)")
    if self.train_unit == "patch":
      ignored["validation_examples"] = ("patch training validates on --validation_patches "
                                        "patches (--train_unit=patch)")
      ignored["stratify_bins"] = ("patch training draws whole patches, not centres by x_HII "
                                  "bin (--train_unit=patch)")
    return ignored


@dataclasses.dataclass(frozen=True)
class ApplyConfig:
  """What evaluate and predict share: how a saved model is run on a box."""

  data: DataConfig = DataConfig()
  batch_size: Optional[int] = setting(None, _BATCH_SIZE_HELP, checks=[POSITIVE])
  split: str = setting("test", "Split of --dataset to use (ignored with --data_dir).",
                       choices=conventions.SPLITS)
  progress: bool = setting(True, "Show a progress bar on stderr.")
  engine: str = setting(
      "auto", "auto: the dense engine (a tile per pass) for models trained with "
      "--padding=valid, else one crop per voxel.", choices=ENGINES)
  memory_budget_gb: float = setting(
      1.5, "Dense engine: memory bound of one tile's pass; sets the tile size.",
      checks=[FINITE_POSITIVE])
  overwrite: bool = setting(False, "Replace an existing --out.")
  strict_domain: bool = setting(
      False, "Stop with an error, rather than warn, when a box's source mean or fraction of "
      "non-zero source cells is more than 10x, or its overdensity variance more than 3x, off "
      "the model's training inputs.")
  condition_value: Optional[float] = setting(
      None, "Models trained with --conditioning: the value to feed for every box instead of "
      "the box's own (its redshift, cosmic time in Myr, or mean x_HII from its target). "
      "Required to predict a box without a target with a model conditioned on the mean "
      "x_HII.", checks=[FINITE])


@dataclasses.dataclass(frozen=True)
class EvaluateConfig:
  """`keras_cnn.evaluate`: how much of each box to score and what to plot."""

  apply: ApplyConfig = ApplyConfig()
  history: Optional[str] = setting(
      None, "history.csv of the training run to plot (default: the one beside --model, if "
      "any).")
  max_full_voxels: int = setting(
      128 ** 3, "Boxes with at most this many voxels are predicted whole (maps, slices, power "
      "spectra); larger ones are scored on --num_examples random voxels.", checks=[POSITIVE])
  num_examples: int = setting(16384, "Random voxels scored per box larger than "
                              "--max_full_voxels.", checks=[POSITIVE])
  sample_seed: int = setting(0, "Seed of the random voxels of large boxes.", checks=[NON_NEGATIVE])
  cell_size_mpc: float = setting(conventions.CELL_SIZE_MPC,
                                 "Comoving cell side in cMpc (plot axes, power-spectrum k).",
                                 checks=[Check(lambda v: v > 0, "must be > 0")])
  power_spectrum: str = setting(
      "auto", "Power-spectrum implementation: auto uses tools21cm (extra 'astro') when "
      "installed, else the NumPy twin in keras_cnn.metrics.", choices=POWER_SPECTRA)


@dataclasses.dataclass(frozen=True)
class PredictConfig:
  """`keras_cnn.predict`: which box, and which x-slab of it (shards)."""

  apply: ApplyConfig = ApplyConfig()
  num_shards: int = setting(1, "Split the box into this many x-slabs (one process per slab).",
                            checks=[POSITIVE])
  shard_index: int = setting(0, "Which x-slab to predict, in [0, --num_shards).")
  box_index: int = setting(0, "Which box of the split to paint when it holds several.",
                           checks=[NON_NEGATIVE])
  scheduler: str = setting(
      DEFAULT_SCHEDULER,
      "Where the dense engine paints tiles: none (this process, in order), threads (Dask "
      "threads), processes (a local Dask cluster of --workers processes), or the address of "
      "a dask.distributed scheduler (e.g. tcp://10.0.0.5:8786). Needs the extra 'scale'.",
      checks=[NOT_EMPTY])
  workers: int = setting(0, "Dask workers of --scheduler=threads or processes (0: one per core).",
                         checks=[NON_NEGATIVE])


INTERPOLATIONS = ("linear", "step", "sigmoid", "step_cell")  # tools21cm's make_lightcone


@dataclasses.dataclass(frozen=True)
class LightconeConfig:
  """`keras_cnn.lightcone`: how the painted maps are stacked along the line of sight."""

  axis: int = setting(0, "Axis of the boxes along the line of sight (0, 1 or 2).",
                      checks=[Check(lambda v: 0 <= v <= 2, "must be 0, 1 or 2")])
  z_range: Optional[Tuple[float, ...]] = setting(
      None, "low,high: the redshifts the lightcone spans, within those of the maps "
      "(default: all of them).",
      checks=[Check(lambda v: len(v) == 2 and v[0] < v[1], "needs two redshifts, low,high")])
  interpolation: str = setting(
      "linear", "How a slice between two maps' redshifts mixes them (tools21cm's "
      "make_lightcone).", choices=INTERPOLATIONS)


@dataclasses.dataclass(frozen=True)
class TuneConfig:
  """`keras_cnn.tune`: how many trials, how long each, and what they vary (the trials
  start from a `TrainConfig`)."""

  max_trials: int = setting(12, "Trials in all (a rerun goes on to this number).",
                            checks=[POSITIVE])
  trial_minutes: float = setting(5.0, "Wall-clock training budget of each trial.",
                                 checks=[at_least(0.01)])
  search: Tuple[str, ...] = setting(DEFAULT_SEARCH,
                                    "Settings to vary: any of " + ", ".join(SEARCHABLE) + ".")
  tuner: str = setting("bayesian", "KerasTuner oracle: Bayesian optimization or random search.",
                       choices=TUNERS)
  tuner_seed: int = setting(0, "Seed of the oracle's proposals.")

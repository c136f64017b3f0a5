"""What the commands do around their work: required flags, output checks, loading the
model and the boxes, and the runner that turns user errors into one line.

The flags themselves are defined in `keras_cnn.cli_flags`; these helpers read their
parsed values (`flag_values`, the global FLAGS by default).
"""

import dataclasses
import errno
import os
import stat
from typing import Dict, List, Optional

from absl import flags

from keras_cnn import conditioning
from keras_cnn import conventions

FLAGS = flags.FLAGS


def refuse_ignored_flags(ignored: Dict[str, str], flag_values=FLAGS) -> None:
  """Raises app.UsageError for a flag of `ignored` ({name: why the run does not read
  it}, e.g. `TrainConfig.ignored_settings()`) that was given with a value other than its
  default, rather than ignore it silently. A default given explicitly (a rerun with the
  workdir's flags.txt) passes."""
  from absl import app

  for name, why in ignored.items():
    flag = flag_values[name]
    if flag.present and flag.value != flag.default:
      raise app.UsageError(f"--{name}={flag.value} would be ignored: {why}; leave it out")


def check_train_config(config, workdir: Optional[str] = None, flag_values=FLAGS) -> None:
  """Stops a training command (train, tune, benchmarks.learning_curve) before it writes
  anything, with app.UsageError: a flag that `config` (a `TrainConfig`) would ignore, a
  `workdir` that is a file, or network sizes that cannot build."""
  from absl import app

  from keras_cnn import model as model_lib

  refuse_ignored_flags(config.ignored_settings(), flag_values)
  if workdir and os.path.lexists(workdir) and not os.path.isdir(workdir):
    raise app.UsageError(f"--workdir={workdir} is a file, not a folder; choose a new or "
                         "empty folder")
  try:  # sizes that cannot build fail here, in one line, before a workdir exists
    model_lib.validate_config(config.model)
  except ValueError as error:
    raise app.UsageError(str(error)) from error


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
      box_size_mpc=flag_values.box_size_mpc if "box_size_mpc" in flag_values else None,
      synthetic_sources=(flag_values.synthetic_sources
                         if "synthetic_sources" in flag_values else "counts"))


@dataclasses.dataclass(frozen=True)
class Applied:
  """A saved model and the boxes to run it on (`load_model_and_boxes`).

  Attributes:
    model: the loaded Keras model.
    kind: its conditioning kind (`keras_cnn.conditioning.KINDS`).
    engine: the engine --engine resolves to for it ("dense" or "per_voxel").
    radius: its crop radius.
    snapshots: the boxes, with sources in the model's transform.
  """

  model: object
  kind: str
  engine: str
  radius: int
  snapshots: List[object]


def load_model_and_boxes(require_target: bool, box_index: Optional[int] = None,
                         flag_values=FLAGS) -> Applied:
  """What evaluate and predict do first, once --out is checked: load --model, check
  --condition_value and --engine against it, load the boxes the data flags name (only
  box `box_index` of them, if given) with the model's source transform, and check them
  against the model's training inputs. Every mistake is a usage or user error."""
  from absl import app

  from keras_cnn import domain
  from keras_cnn import inference
  from keras_cnn import model as model_lib
  from keras_cnn.data import snapshot as snapshot_lib

  model = load_model_or_exit(flag_values.model)
  kind = condition_kind_or_exit(model, flag_values.model, flag_values)
  try:
    engine = inference.resolve_engine(model, flag_values.engine)
  except ValueError as error:
    raise app.UsageError(str(error)) from error
  radius = inference.model_radius(model)
  snapshots = load_box_from_flags(radius, require_target, flag_values)
  if box_index is not None:
    if box_index >= len(snapshots):
      raise app.UsageError(f"--box_index={box_index} but the data hold "
                           f"{len(snapshots)} box(es)")
    snapshots = snapshots[box_index:box_index + 1]
  transform = model_lib.source_transform_of(model)
  snapshots = [snapshot_lib.for_model(s, transform) for s in snapshots]
  domain.check_inputs(model, snapshots, strict=flag_values.strict_domain,
                      model_name=flag_values.model)
  return Applied(model=model, kind=kind, engine=engine, radius=radius, snapshots=snapshots)


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

"""A training workdir's identity: a manifest of the flags that define the run, and a lock;
and an evaluation folder's marker.

The manifest (`keras_cnn_run.json`) marks a folder as one keras_cnn wrote. A folder
with files but no manifest is the user's and is never written into. A rerun whose
defining settings differ from the manifest's is refused with the names of the flags
that differ. A lock file keeps a second process out of a workdir while one trains.
An evaluation's --out folder carries a marker of its own (`keras_cnn_evaluation.json`)
in the same way, so an interrupted evaluation is finished by running it again.
"""

import dataclasses
import hashlib
import json
import os
import signal
from typing import Dict, Optional, Sequence, Union

from keras_cnn import conventions
from keras_cnn import errors
from keras_cnn import io_utils

# Settings that may change between the tries of one run: they do not change what the
# run computes per step, only how long it goes on or how fast it runs.
HARMLESS = ("epochs", "patience", "time_budget_minutes", "jit_compile")

# Settings added after the manifest itself, with the value that a run recorded before
# them had implicitly: a manifest without the key reads as that value, so a run begun by
# an older keras_cnn resumes unless what it computes changed (BatchNormalization used
# Keras' momentum 0.99 then, so those runs are told that --batch_norm_momentum differs).
IMPLIED = {
    "batch_norm_momentum": 0.99,
    "block_filters": [],
    "block_strides": [],
    "box_size_mpc": None,
    "ema_momentum": 0.0,
    "excursion_radii": [],
    "fusion": "late",
    "conditioning": "none",
    "data_format": "auto",
    "source_units": "simulator counts",
    "synthetic_sources": "counts",
    "synthetic_train_boxes": 1,
    "train_redshifts": None,
    "validation_redshifts": None,
    "test_redshifts": None,
    "train_dirs": None,
    "validation_dirs": None,
    "test_dirs": None,
}
# How a box shared by several splits is cut into x-slabs (`keras_cnn.data.regions.split_regions`).
# Version 2: validation and test get 10% each with guard bands of r. A run on a user folder
# recorded without it was cut another way, and its slabs must not change mid-run.
SLAB_LAYOUT = 2


def _flatten(config) -> Dict[str, object]:
  """{flag name: value} of a TrainConfig (nested dataclasses flattened)."""
  flat = {}
  for key, value in dataclasses.asdict(config).items():
    if isinstance(value, dict):
      flat.update(value)
    else:
      flat[key] = value
  return {k: list(v) if isinstance(v, tuple) else v for k, v in flat.items()}


def data_fingerprint(data_dirs: Union[None, str, Sequence[str]],
                     files_only: bool = False) -> Optional[str]:
  """Hash of the names, sizes and modification times of the files of the folders
  `data_dirs` (one folder or several, in order; None for the built-in simulator, whose
  data the settings alone define). `files_only` leaves out subfolders (an output folder
  inside the data folder changes as it is written)."""
  if isinstance(data_dirs, str) or data_dirs is None:
    data_dirs = [data_dirs]
  folders = [folder for folder in data_dirs if folder and os.path.isdir(folder)]
  if not folders:
    return None
  digest = hashlib.sha256()
  for i, folder in enumerate(folders):
    if i:  # one folder hashes as it always did
      digest.update(f"\0folder {i}\n".encode())
    for name in sorted(os.listdir(folder)):
      stat = os.stat(os.path.join(folder, name))
      if files_only and not os.path.isfile(os.path.join(folder, name)):
        continue
      digest.update(f"{name}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
  return digest.hexdigest()[:16]


def _slab_layout(recorded: dict) -> int:
  """The slab layout of a recorded manifest: written since version 2; before that, a
  manifest with a setting added after version 2 came in (batch_norm_momentum,
  source_units) was cut by version 2 as well."""
  if "slab_layout" in recorded:
    return int(recorded["slab_layout"])
  later = ("batch_norm_momentum", "source_units")
  return 2 if any(key in recorded.get("settings", {}) for key in later) else 1


def manifest_for(config) -> dict:
  settings = {k: v for k, v in _flatten(config).items() if k not in HARMLESS}
  return {
      "keras_cnn_run": 1,
      "settings": settings,
      "data_fingerprint": data_fingerprint(config.data.folders()),
      "slab_layout": SLAB_LAYOUT,
  }


def check_or_create(workdir: str, config) -> bool:
  """Refuses a foreign or changed workdir; writes the manifest of a new run.

  Returns:
    True if the workdir already held this run (a resume or a finished run).

  Raises:
    errors.UserError: the folder holds files keras_cnn did not write, or a run whose
      defining settings (or data) differ.
  """
  wanted = manifest_for(config)
  path = os.path.join(workdir, conventions.MANIFEST_FILE)
  if os.path.isdir(workdir) and os.listdir(workdir):
    if not os.path.isfile(path):
      found = ", ".join(sorted(os.listdir(workdir))[:5])
      raise errors.UserError(f"--workdir={workdir} holds files keras_cnn did not write ({found}); "
                             "choose a new or empty --workdir")
    try:
      with open(path) as stream:
        recorded = json.load(stream)
    except (OSError, ValueError) as error:
      raise errors.UserError(f"{path}: unreadable run manifest ({error}); "
                             "choose a new --workdir") from None
    old, new = {**IMPLIED, **recorded.get("settings", {})}, wanted["settings"]
    changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    finished = all(
        os.path.exists(os.path.join(workdir, name))
        for name in (conventions.METRICS_FILE, conventions.MODEL_FILE))
    if config.data.data_dir and not finished and _slab_layout(recorded) != SLAB_LAYOUT:
      raise errors.UserError(
          f"--workdir={workdir} holds a run begun by an older keras_cnn, which cut the boxes "
          "of --data_dir into other x-slabs; resuming would mix its splits: choose a new "
          "--workdir")
    if recorded.get("data_fingerprint") != wanted["data_fingerprint"]:
      changed.append("the files of --data_dir" if len(config.data.folders()) <
                     2 else "the files of the data folders")
    if changed:
      detail = ", ".join(f"--{k}" if not k.startswith("the ") else k for k in changed)
      raise errors.UserError(
          f"--workdir={workdir} holds a run with other settings ({detail} differ); "
          "rerun with the same flags to resume it, or choose a new --workdir")
    return True
  io_utils.write_text(path, json.dumps(wanted, indent=2, default=str) + "\n")
  return False


def file_fingerprint(path: str) -> str:
  """Hash of a file's size and modification time (a retrained model differs)."""
  stat = os.stat(path)
  return hashlib.sha256(f"{stat.st_size}\0{stat.st_mtime_ns}".encode()).hexdigest()[:16]


def _recorded_evaluation(out: str) -> Optional[dict]:
  """The settings in the evaluation marker of `out`; None without a marker, {} for an
  unreadable one."""
  path = os.path.join(out, conventions.EVALUATION_FILE)
  if not os.path.isfile(path):
    return None
  try:
    with open(path) as stream:
      recorded = json.load(stream)
    return dict(recorded["settings"])
  except (OSError, ValueError, KeyError, TypeError):
    return {}


def check_evaluation_dir(out: str, settings: Dict[str, object], overwrite: bool) -> bool:
  """Refuses an evaluation folder that holds another evaluation (unless `overwrite`).

  Returns:
    True if `out` holds this evaluation already (finished or interrupted): its files
    are replaced.
  """
  recorded = _recorded_evaluation(out)
  if recorded is None:
    return False
  wanted = json.loads(json.dumps(settings, default=str))
  if recorded == wanted:
    return True
  if overwrite:
    return False
  changed = sorted(k for k in set(recorded) | set(wanted) if recorded.get(k) != wanted.get(k))
  detail = ", ".join(f"--{k}" if not k.startswith("the ") else k for k in changed)
  raise errors.UserError(f"--out={out} holds an evaluation with other settings ({detail} "
                         "differ); rerun with the same flags to finish it, pass --overwrite "
                         "to replace it, or choose a new folder")


def mark_evaluation_dir(out: str, settings: Dict[str, object]) -> None:
  """Creates `out` if needed and records the evaluation's settings in it."""
  os.makedirs(out, exist_ok=True)
  io_utils.write_text(
      os.path.join(out, conventions.EVALUATION_FILE),
      json.dumps({
          "keras_cnn_evaluation": 1,
          "settings": settings
      }, indent=2, default=str) + "\n")


class WorkdirLock:
  """Exclusive use of a workdir by one process; a lock left by a dead process is taken
  over (a killed run must stay resumable)."""

  def __init__(self, workdir: str):
    self.path = os.path.join(workdir, conventions.LOCK_FILE)
    self.held = False

  def __enter__(self):
    for _ in range(2):
      try:
        handle = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
      except FileExistsError:
        owner = self._owner()
        if owner is not None and owner != os.getpid() and _alive(owner):
          raise errors.UserError(
              f"another keras_cnn process (pid {owner}) is training in "
              f"{os.path.dirname(self.path)}; wait for it or choose another --workdir") from None
        os.remove(self.path)  # stale: its process is gone
        continue
      with os.fdopen(handle, "w") as stream:
        stream.write(str(os.getpid()))
      self.held = True
      return self
    raise errors.UserError(f"{self.path}: cannot take the workdir lock")

  def _owner(self) -> Optional[int]:
    try:
      with open(self.path) as stream:
        return int(stream.read().strip() or -1)
    except (OSError, ValueError):
      return None

  def __exit__(self, *exc):
    if self.held and os.path.exists(self.path):
      os.remove(self.path)
    self.held = False


def _alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True
  return True


KILL_ENV = "KERAS_CNN_KILL_AFTER"


def kill_point(step: str) -> None:
  """Dies with SIGKILL right after `step` if KERAS_CNN_KILL_AFTER names it.

  A deterministic stand-in for `kill -9` at a chosen moment, for the tests that check
  every state of a run can be finished by running the same command again.
  """
  if os.environ.get(KILL_ENV) == step:
    os.kill(os.getpid(), signal.SIGKILL)

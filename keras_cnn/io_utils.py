"""Atomic writes (a file is either complete or absent, never half-written) and the
training history file."""

import contextlib
import csv
import errno
import os
import secrets
from typing import Dict, List, Tuple


def make_temp(folder: str, prefix: str, suffix: str = ".tmp") -> Tuple[int, str]:
  """(descriptor, path) of a new, empty file in `folder` under a unique hidden name.

  Unlike `tempfile.mkstemp` (always mode 0600), the file gets the mode a plain `open`
  would give (0666 less the umask), so collaborators who could read the user's other
  files can read this one once it is renamed into place.
  """
  for _ in range(100):
    path = os.path.join(folder, f"{prefix}{secrets.token_hex(4)}{suffix}")
    try:
      return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), path
    except FileExistsError:
      continue
  raise FileExistsError(errno.EEXIST, "no free temporary name", folder)


def commit_new(tmp_path: str, path: str) -> None:
  """Moves the complete file `tmp_path` to `path`, which must not exist yet.

  A rename would silently replace a file that another process wrote to `path` after
  this one checked it; a hard link fails instead. File systems without hard links get
  the path claimed with O_EXCL (an empty file, for the instant before the rename).

  Raises:
    FileExistsError: `path` exists (a dangling symbolic link included); `tmp_path` is
      removed, `path` kept.
  """
  try:
    _link_or_claim(tmp_path, path)
  except FileExistsError:
    os.remove(tmp_path)
    raise FileExistsError(errno.EEXIST, "written by another process while this command ran",
                          path) from None


def _link_or_claim(tmp_path: str, path: str) -> None:
  try:
    os.link(tmp_path, path)
  except FileExistsError:
    raise
  except OSError as error:  # no hard links here
    if error.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EMLINK, errno.EXDEV):
      raise
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    os.replace(tmp_path, path)
    return
  os.remove(tmp_path)


@contextlib.contextmanager
def atomic_open(path: str, mode: str = "wb", exclusive: bool = False):
  """Yields a stream to a temporary file beside `path` that replaces `path` on success.

  On any exception the temporary file is removed and `path` is left as it was. With
  `exclusive`, `path` must not exist when the file is committed (`commit_new`): of two
  processes writing one path, the second fails rather than replacing the first's file.
  """
  folder = os.path.dirname(os.path.abspath(path))
  os.makedirs(folder, exist_ok=True)
  handle, tmp_path = make_temp(folder, prefix=f".{os.path.basename(path)}.")
  try:
    with os.fdopen(handle, mode) as stream:
      yield stream
      stream.flush()
      os.fsync(stream.fileno())
    if exclusive:
      commit_new(tmp_path, path)
    else:
      os.replace(tmp_path, path)
  except BaseException:
    if os.path.exists(tmp_path):
      os.remove(tmp_path)
    raise


def write_text(path: str, text: str) -> None:
  """Writes `text` to `path` atomically."""
  with atomic_open(path, "w") as stream:
    stream.write(text)


def read_history(history_csv: str) -> List[Dict[str, str]]:
  """Rows of a Keras CSVLogger file (one per finished epoch); [] when it is absent
  or empty."""
  if not os.path.exists(history_csv):
    return []
  with open(history_csv, newline="") as stream:
    return list(csv.DictReader(stream))

"""Atomic writes (a file is either complete or absent, never half-written) and the
training history file."""

import contextlib
import csv
import os
import tempfile
from typing import Dict, List


@contextlib.contextmanager
def atomic_open(path: str, mode: str = "wb"):
  """Yields a stream to a temporary file beside `path` that replaces `path` on success.

  On any exception the temporary file is removed and `path` is left as it was.
  """
  folder = os.path.dirname(os.path.abspath(path))
  os.makedirs(folder, exist_ok=True)
  handle, tmp_path = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(path)}.",
                                      suffix=".tmp")
  try:
    with os.fdopen(handle, mode) as stream:
      yield stream
      stream.flush()
      os.fsync(stream.fileno())
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

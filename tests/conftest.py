"""Shared test setup: tensorflow unless KERAS_BACKEND says otherwise, quiet logs, and the
fixtures several test modules use (repo root, flag parsing, tiny snapshots on disk, the
real commands in a subprocess). Plain helpers are in helpers.py."""

import os
import subprocess
import sys

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest  # noqa: E402
from absl import flags  # noqa: E402
from absl.testing import flagsaver  # noqa: E402

from helpers import REPO, REDSHIFT, tiny_snapshot  # noqa: E402,F401  (fixtures use them)


@pytest.fixture
def repo_root() -> str:
  return REPO


@pytest.fixture
def parse_flags():
  """Parses args into the global FLAGS (program name first); restored after the test."""
  with flagsaver.flagsaver():

    def _parse(*args):
      flags.FLAGS.unparse_flags()
      flags.FLAGS(list(args))
      return flags.FLAGS

    yield _parse
    flags.FLAGS.unparse_flags()


@pytest.fixture
def snapshot_dir(tmp_path):
  """Writes a snapshot (default: `tiny_snapshot()`) to a new folder; returns the folder."""
  from keras_cnn.data import snapshot as snapshot_lib

  def _write(snapshot=None, name="box"):
    folder = str(tmp_path / name)
    snapshot_lib.save_snapshot(tiny_snapshot() if snapshot is None else snapshot, folder)
    return folder

  return _write


@pytest.fixture
def run_module():
  """Runs `python -m module args...` from the repo root as a user would; returns the
  CompletedProcess (stdout, stderr as text)."""

  def _run(module, *args, env=None, timeout=300):
    full_env = {
        **os.environ, "TF_CPP_MIN_LOG_LEVEL": "3",
        "PYTHONPATH": os.pathsep.join(filter(None, [REPO, os.environ.get("PYTHONPATH")]))
    }
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", module, *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, cwd=REPO, env=full_env)

  return _run

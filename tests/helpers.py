"""Plain helpers for the tests (fixtures live in conftest.py): the repository root, the
default redshift and a tiny random snapshot."""

import os

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REDSHIFT = 8.397
PRESETS_DIR = os.path.join(REPO, "flags")
PRESETS = sorted(name for name in os.listdir(PRESETS_DIR) if name.endswith(".flags"))
# A network and run small enough for a training command to finish in seconds.
TINY_FLAGS = ("--n_cells=16", "--radius=3", "--kernel_size=3", "--filters=2", "--stride_conv=1",
              "--dense_units=8,8,8,8,8", "--tail_units=4,4", "--patch_size=4",
              "--steps_per_epoch=2", "--epochs=1", "--validation_patches=2")


def tiny_snapshot(shape=(10, 9, 8), seed=0, with_target=True, redshift=REDSHIFT, name="tiny"):
  """A random box: log-normal density, Poisson sources, uniform x_HII (a Snapshot)."""
  from keras_cnn.data import snapshot as snapshot_lib

  rng = np.random.default_rng(seed)
  rho = rng.lognormal(0.0, 0.5, shape).astype(np.float32)
  n_src = rng.poisson(0.5, shape).astype(np.float32)
  x_hii = rng.random(shape, dtype=np.float32)
  return snapshot_lib.Snapshot(rho=rho, n_src=n_src, x_hii=x_hii if with_target else None,
                               redshift=redshift, name=name)

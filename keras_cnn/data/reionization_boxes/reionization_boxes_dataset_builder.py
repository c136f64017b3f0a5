"""TFDS builder for reionization snapshots: built-in synthetic boxes, or your own.

Each example is one periodic snapshot: `rho` (g/cm^3), `n_src` (sources per cell),
`x_hii` (ionized fraction), float32 boxes of the same shape, its `redshift`, and
`name`, the example key (e.g. "train_000_seed123" or "train/run1/z8.397").

Configs:
  synthetic_16, synthetic_64: `keras_cnn.data.simulate` realizations; the
    train/validation/test splits are independent realizations (different seeds),
    generated locally, no download.
  manual: snapshots in the original C2-Ray naming read from `manual_dir` (see
    MANUAL_DOWNLOAD_INSTRUCTIONS), one example per snapshot folder and redshift.
"""

import dataclasses
from typing import Dict, Iterator, List, Tuple

from etils import epath
import numpy as np
import tensorflow_datasets as tfds

from keras_cnn import conventions
from keras_cnn.data import simulate
from keras_cnn.data import snapshot as snapshot_lib

_SNAPSHOT_GLOB = "rho_z*.npy"
_EXPECTED_FILES = ("rho_z{z:.3f}.npy", "nsrc_z{z:.3f}.npy", "xHII_z{z:.3f}.npy")


@dataclasses.dataclass
class ReionizationBoxesConfig(tfds.core.BuilderConfig):
  """Which boxes: synthetic (n_cells > 0) or read from manual_dir (n_cells == 0).

  Attributes:
    n_cells: synthetic box side; 0 for the manual config (shape taken from files).
    seed: master seed; each realization gets its own derived seed.
    num_train: synthetic realizations in "train".
    num_validation: synthetic realizations in "validation".
    num_test: synthetic realizations in "test".
    redshift: synthetic snapshot redshift.
    mean_xhii: synthetic volume-averaged ionized fraction.
    mfp_mpc: synthetic photon mean free path (cMpc).
  """

  n_cells: int = 0
  seed: int = 0
  num_train: int = 1
  num_validation: int = 1
  num_test: int = 1
  redshift: float = 8.397
  mean_xhii: float = 0.5
  mfp_mpc: float = 50.0

  @property
  def is_manual(self) -> bool:
    return self.n_cells == 0

  def split_seeds(self) -> Dict[str, List[int]]:
    return simulate.split_seeds(self.seed, self.num_train, self.num_validation, self.num_test)


def _synthetic(name: str, n_cells: int, num_train: int) -> ReionizationBoxesConfig:
  return ReionizationBoxesConfig(
      name=name, n_cells=n_cells, num_train=num_train,
      description=(f"{n_cells}^3 synthetic boxes of {conventions.CELL_SIZE_MPC} cMpc cells "
                   f"at z=8.397, mean x_HII 0.5; {num_train} train, 1 validation, 1 test "
                   "realization, seed 0."))


class Builder(tfds.core.GeneratorBasedBuilder):
  """Reionization snapshots (density, sources, ionized fraction)."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {
      "1.0.0": "Initial release: synthetic_16, synthetic_64 and manual configs.",
  }
  BUILDER_CONFIGS = [
      _synthetic("synthetic_64", 64, num_train=4),
      _synthetic("synthetic_16", 16, num_train=2),
      ReionizationBoxesConfig(
          name="manual", description="Your own snapshots (C2-Ray naming) read from manual_dir."),
  ]
  DEFAULT_CONFIG_NAME = "synthetic_64"
  MANUAL_DOWNLOAD_INSTRUCTIONS = """
  Only the `manual` config reads files. Put snapshots in the original C2-Ray naming in
  `manual_dir` (default: ~/tensorflow_datasets/downloads/manual/), three float .npy
  files per redshift z, all of one 3-D shape (non-cubic boxes are fine):

    rho_z{z:.3f}.npy   gas density, >= 0 (e.g. rho_z8.397.npy)
    nsrc_z{z:.3f}.npy  ionizing sources per cell, >= 0 (e.g. nsrc_z8.397.npy)
    xHII_z{z:.3f}.npy  ionized fraction in [0, 1] (e.g. xHII_z8.397.npy)

  Either directly in `manual_dir` or in its sub-folders (one per realization): every
  snapshot then goes to the "train" split. To choose the splits yourself, use
  `manual_dir/train/`, `manual_dir/validation/` and `manual_dir/test/` (each laid
  out the same way). Every (folder, redshift) becomes one example.
  """

  def _info(self) -> tfds.core.DatasetInfo:
    config = self.builder_config
    shape = (None,) * 3 if config.is_manual else (config.n_cells,) * 3
    box = lambda: tfds.features.Tensor(shape=shape, dtype=np.float32, encoding=tfds.features.
                                       Encoding.ZLIB)
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict({
            "rho": box(),
            "n_src": box(),
            "x_hii": box(),
            "redshift": tfds.features.Scalar(dtype=np.float64),
            "name": tfds.features.Text(),
        }),
        supervised_keys=None,
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    config = self.builder_config
    if not config.is_manual:
      return {split: self._generate_examples(split) for split in conventions.SPLITS}
    manual_dir = epath.Path(dl_manager.manual_dir)
    split_dirs = {s: manual_dir / s for s in conventions.SPLITS if (manual_dir / s).is_dir()}
    if not split_dirs:
      split_dirs = {"train": manual_dir}
    found = {split: _snapshot_folders(path) for split, path in split_dirs.items()}
    if not any(found.values()):
      expected = ", ".join(str(manual_dir / pattern) for pattern in _EXPECTED_FILES)
      raise FileNotFoundError(
          f"No snapshot in manual_dir {manual_dir}: expected {expected} (or the same in "
          "sub-folders train/, validation/, test/, or one sub-folder per realization)")
    return {
        split: self._generate_manual_examples(manual_dir, folders)
        for split, folders in found.items()
    }

  def _generate_examples(self, split: str) -> Iterator[Tuple[str, dict]]:
    config = self.builder_config
    for index, seed in enumerate(config.split_seeds()[split]):
      snap = simulate.simulate_snapshot(config.n_cells, seed=seed, redshift=config.redshift,
                                        mean_xhii=config.mean_xhii, mfp_mpc=config.mfp_mpc)
      key = f"{split}_{index:03d}_seed{seed}"
      yield key, _as_example(snap, key)

  def _generate_manual_examples(self, manual_dir: epath.Path,
                                folders: List[epath.Path]) -> Iterator[Tuple[str, dict]]:
    for folder in folders:
      relative = folder.relative_to(manual_dir).as_posix()
      prefix = "" if relative == "." else f"{relative}/"
      for redshift in snapshot_lib.list_redshifts(str(folder)):
        snap = snapshot_lib.load_snapshot(str(folder), redshift=redshift, require_target=True)
        key = f"{prefix}z{redshift:.3f}"
        yield key, _as_example(snap, key)


def _snapshot_folders(root: epath.Path) -> List[epath.Path]:
  """`root` and its direct sub-folders that hold at least one rho_z*.npy, sorted."""
  candidates = [root] + sorted(p for p in root.iterdir() if p.is_dir())
  return [p for p in candidates if any(p.glob(_SNAPSHOT_GLOB))]


def _as_example(snap: snapshot_lib.Snapshot, key: str) -> dict:
  return {
      "name": key,
      "rho": np.asarray(snap.rho, dtype=np.float32),
      "n_src": np.asarray(snap.n_src, dtype=np.float32),
      "x_hii": np.asarray(snap.x_hii, dtype=np.float32),
      "redshift": float(snap.redshift),
  }

"""Resolves where snapshots come from into train / validation / test data.

Three sources, one result:
- `data_dir` (+ `redshift`): one user snapshot; the splits are x-slabs of it with
  guard bands >= r (`keras_cnn.pipeline.split_regions`);
- `dataset="synthetic"`: the built-in simulator, an independent realization per split;
- any other `dataset`: a TFDS name whose splits are independent snapshots.
"""

import dataclasses
import functools
from typing import Dict, List, Optional, Tuple

import numpy as np

from keras_cnn import conventions
from keras_cnn.data import snapshot as snapshot_lib

SYNTHETIC = "synthetic"


@dataclasses.dataclass
class SplitData:
  """The snapshots of one split and, for slab splits, the x-range of its centres."""

  snapshots: List[snapshot_lib.Snapshot]
  region: Optional[Tuple[int, int]] = None  # half-open x-range of the centres

  @functools.cached_property
  def fields(self) -> List[Tuple[np.ndarray, np.ndarray, Optional[np.ndarray]]]:
    """(n_igm, n_src, x_hii) per snapshot: the pipeline's input."""
    return [(s.n_igm, s.n_src, s.x_hii) for s in self.snapshots]

  def describe(self) -> str:
    names = ", ".join(s.name for s in self.snapshots)
    where = "" if self.region is None else f", centres x in [{self.region[0]}, {self.region[1]})"
    return f"{names}{where}"


def load_box(data_dir: Optional[str], redshift: Optional[float], dataset: str,
             split: str = "test", tfds_data_dir: Optional[str] = None,
             n_cells: int = 64, mean_xhii: float = 0.5, data_seed: int = 0,
             radius: Optional[int] = None,
             require_target: bool = True, data_format: str = "auto",
             box_size_mpc: Optional[float] = None) -> List[snapshot_lib.Snapshot]:
  """The whole snapshots of one split (a user folder ignores `split`).

  `data_format` and `box_size_mpc` apply to `data_dir` (see `snapshot_lib.load_snapshot`).
  """
  if data_dir:
    return [snapshot_lib.load_snapshot(data_dir, redshift=redshift, radius=radius,
                                       require_target=require_target,
                                       data_format=data_format, box_size_mpc=box_size_mpc)]
  if dataset == SYNTHETIC:
    from keras_cnn.data import simulate  # heavy imports only when simulating
    return simulate.synthetic_splits(n_cells=n_cells, seed=data_seed,
                                     mean_xhii=mean_xhii)[split]
  from keras_cnn.datasets import reionization_boxes  # TFDS only when asked for

  snapshots = reionization_boxes.load_tfds_snapshots(dataset, split, data_dir=tfds_data_dir)
  for snap in snapshots:
    snapshot_lib.validate_snapshot(snap, radius=radius, require_target=require_target)
  return snapshots


def load_splits(data_dir: Optional[str], redshift: Optional[float], dataset: str,
                radius: int, tfds_data_dir: Optional[str] = None, n_cells: int = 64,
                mean_xhii: float = 0.5, data_seed: int = 0, data_format: str = "auto",
                box_size_mpc: Optional[float] = None) -> Dict[str, SplitData]:
  """Train / validation / test data that share no voxel neighbourhoods.

  `data_format` and `box_size_mpc` apply to `data_dir` (see `snapshot_lib.load_snapshot`).
  """
  if data_dir:
    from keras_cnn import pipeline  # tensorflow import only when needed
    box = snapshot_lib.load_snapshot(data_dir, redshift=redshift, radius=radius,
                                     data_format=data_format, box_size_mpc=box_size_mpc)
    regions = pipeline.split_regions(box.shape, radius)
    # One Snapshot for all three slabs: its overdensity is computed once.
    return {split: SplitData([box], region=regions[split]) for split in conventions.SPLITS}
  if dataset == SYNTHETIC:
    from keras_cnn.data import simulate
    splits = simulate.synthetic_splits(n_cells=n_cells, seed=data_seed, mean_xhii=mean_xhii)
    for snaps in splits.values():
      for snap in snaps:
        snapshot_lib.validate_snapshot(snap, radius=radius)
    return {split: SplitData(splits[split]) for split in conventions.SPLITS}
  return {split: SplitData(load_box(None, None, dataset, split, tfds_data_dir, radius=radius))
          for split in conventions.SPLITS}


def normalization_stats(data: SplitData, source_transform: str):
  """(mean, variance) of the model's two inputs over the training centres' region."""
  from keras_cnn import model as model_lib

  igm, src = [], []
  for n_igm, n_src, _ in data.fields:
    if data.region is not None:
      n_igm, n_src = n_igm[slice(*data.region)], n_src[slice(*data.region)]
    igm.append(n_igm.ravel())
    src.append(model_lib.apply_source_transform(n_src, source_transform).ravel())
  igm, src = np.concatenate(igm), np.concatenate(src)
  return ((float(igm.mean()), max(float(igm.var()), 1e-12)),
          (float(src.mean()), max(float(src.var()), 1e-12)))

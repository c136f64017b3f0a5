"""Resolves where snapshots come from into train / validation / test data.

Three sources, one result:
- user folders: `data_dir` (+ `redshift`: one snapshot, several, or all) and, per split,
  whole snapshots of their own (`split_redshifts` of `data_dir`, `split_dirs`: other
  folders, e.g. other realizations). The splits without snapshots of their own share
  the selected snapshots of `data_dir` as x-slabs with guard bands >= r
  (`keras_cnn.data.regions.split_regions`); one split alone takes them whole; when no
  snapshot is left for them, they are x-slabs of the training snapshots;
- `dataset="synthetic"`: the built-in simulator, an independent realization per split;
- any other `dataset`: a TFDS name whose splits are independent snapshots.
"""

import dataclasses
import functools
import os
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
from absl import logging

from keras_cnn import conventions
from keras_cnn import errors
from keras_cnn.data import regions as regions_lib
from keras_cnn.data import snapshot as snapshot_lib
from keras_cnn.data import transforms

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
    names = ", ".join(f"{s.name} (z={s.redshift:.3f})" for s in self.snapshots)
    where = "" if self.region is None else f", centres x in [{self.region[0]}, {self.region[1]})"
    return f"{names}{where}"


def load_box(data_dir: Optional[str], redshift: snapshot_lib.RedshiftSelection, dataset: str,
             split: str = "test", tfds_data_dir: Optional[str] = None, n_cells: int = 64,
             mean_xhii: float = 0.5, data_seed: int = 0, radius: Optional[int] = None,
             require_target: bool = True, data_format: str = "auto",
             box_size_mpc: Optional[float] = None,
             synthetic_sources: str = "counts") -> List[snapshot_lib.Snapshot]:
  """The whole snapshots of one split (a user folder ignores `split`).

  `redshift` picks the snapshots of `data_dir` (see `snapshot_lib.select_redshifts`);
  `data_format` and `box_size_mpc` apply to it (see `snapshot_lib.load_snapshot`).
  """
  if data_dir:
    if redshift is None or isinstance(redshift, (int, float)):
      redshifts = [redshift]
    else:
      redshifts = snapshot_lib.select_redshifts(data_dir, redshift, data_format)
    return [
        snapshot_lib.load_snapshot(data_dir, redshift=z, radius=radius,
                                   require_target=require_target, data_format=data_format,
                                   box_size_mpc=box_size_mpc) for z in redshifts
    ]
  if dataset == SYNTHETIC:
    from keras_cnn.data import simulate  # heavy imports only when simulating
    return simulate.synthetic_splits(n_cells=n_cells, seed=data_seed,
                                     mean_xhii=mean_xhii, sources=synthetic_sources,
                                     **_simulator_redshift(redshift))[split]
  from keras_cnn.data import reionization_boxes  # TFDS only when asked for

  snapshots = reionization_boxes.load_tfds_snapshots(dataset, split, data_dir=tfds_data_dir)
  for snap in snapshots:
    snapshot_lib.validate_snapshot(snap, radius=radius, require_target=require_target)
  return snapshots


def _simulator_redshift(redshift: snapshot_lib.RedshiftSelection) -> dict:
  """The built-in simulator's redshift argument for --redshift: its default without one."""
  if redshift is None:
    return {}
  if isinstance(redshift, (int, float)):
    return {"redshift": float(redshift)}
  raise errors.UserError(
      f"--redshift={redshift if isinstance(redshift, str) else ','.join(map(str, redshift))}: "
      "the built-in simulator makes one redshift per run; pass one, or write snapshots at "
      "several to folders and give --data_dir or --train_dirs / --validation_dirs / --test_dirs")


def load_splits(data_dir: Optional[str], redshift: snapshot_lib.RedshiftSelection, dataset: str,
                radius: int, tfds_data_dir: Optional[str] = None, n_cells: int = 64,
                mean_xhii: float = 0.5, data_seed: int = 0, data_format: str = "auto",
                box_size_mpc: Optional[float] = None,
                split_redshifts: Optional[Mapping[str, Sequence[float]]] = None,
                split_dirs: Optional[Mapping[str,
                                             Sequence[str]]] = None, synthetic_train_boxes: int = 1,
                synthetic_sources: str = "counts") -> Dict[str, SplitData]:
  """Train / validation / test data that share no voxel neighbourhoods.

  Args:
    data_dir: a folder of snapshot files, or None.
    redshift: which snapshots of `data_dir` (and of each folder of `split_dirs`): None
      (the only one; with split flags, for `data_dir`: those no split names), a
      redshift, a sequence of them, or "all" (with split flags: those no split names).
    dataset: "synthetic" or a TFDS name, used when no user folder is given.
    radius: the model's crop radius (guard bands, and 2r+1 <= N on every axis).
    tfds_data_dir: TFDS data_dir.
    n_cells: synthetic box side.
    mean_xhii: synthetic boxes' mean ionized fraction.
    data_seed: seed of the synthetic realizations.
    data_format: the layout of the user folders (see `snapshot_lib.load_snapshot`).
    box_size_mpc: C2-Ray source masses in solar masses (see `snapshot_lib.load_snapshot`).
    split_redshifts: {split: redshifts of `data_dir` that are that split's own}.
    split_dirs: {split: folders whose snapshots (picked by `redshift`) are its own}.
    synthetic_train_boxes: built-in simulator realizations in the training split.
    synthetic_sources: what the built-in simulator's n_src holds ("counts", "photons").

  Returns:
    {split: SplitData}. A split's own snapshots are whole boxes (region None), but for
    training snapshots that the other splits are cut from.

  Raises:
    errors.UserError: a split would be empty, or one snapshot is named for two splits.
  """
  split_redshifts = {k: tuple(v) for k, v in (split_redshifts or {}).items() if v}
  split_dirs = {k: tuple(v) for k, v in (split_dirs or {}).items() if v}
  unknown = sorted((set(split_redshifts) | set(split_dirs)) - set(conventions.SPLITS))
  if unknown:
    raise ValueError(f"unknown split {unknown[0]!r}; expected one of {conventions.SPLITS}")
  if data_dir or split_redshifts or split_dirs or dataset != SYNTHETIC:
    if synthetic_train_boxes != 1:  # e.g. from a preset made on the built-in simulator
      logging.warning(
          "--synthetic_train_boxes=%d applies to the built-in simulator only; the training "
          "split is what the data flags give (more of it: --train_dirs, --train_redshifts)",
          synthetic_train_boxes)
  if data_dir or split_redshifts or split_dirs:
    return _user_splits(data_dir, redshift, radius, data_format, box_size_mpc, split_redshifts,
                        split_dirs)
  if dataset == SYNTHETIC:
    from keras_cnn.data import simulate
    splits = simulate.synthetic_splits(n_cells=n_cells, seed=data_seed, mean_xhii=mean_xhii,
                                       num_train=synthetic_train_boxes, sources=synthetic_sources,
                                       **_simulator_redshift(redshift))
    for snaps in splits.values():
      for snap in snaps:
        snapshot_lib.validate_snapshot(snap, radius=radius)
    return {split: SplitData(splits[split]) for split in conventions.SPLITS}
  return {
      split: SplitData(load_box(None, None, dataset, split, tfds_data_dir, radius=radius))
      for split in conventions.SPLITS
  }


def _z(redshift: float) -> str:
  from keras_cnn.data import formats

  return formats.format_redshift(redshift)


def _user_splits(data_dir: Optional[str], redshift: snapshot_lib.RedshiftSelection, radius: int,
                 data_format: str, box_size_mpc: Optional[float],
                 split_redshifts: Mapping[str, Sequence[float]],
                 split_dirs: Mapping[str, Sequence[str]]) -> Dict[str, SplitData]:
  """The splits of user folders (see `load_splits`)."""
  if split_redshifts and not data_dir:
    flag = f"--{next(iter(split_redshifts))}_redshifts"
    raise errors.UserError(f"{flag} names snapshots of --data_dir, which is not given")
  own: Dict[str, List[Tuple[str, float]]] = {split: [] for split in conventions.SPLITS}
  named_by: Dict[Tuple[str, float], str] = {}  # (folder, z) -> the flag that names it

  def claim(split: str, folder: str, z: float, flag: str) -> None:
    key = (os.path.realpath(folder), z)
    if key in named_by:
      raise errors.UserError(
          f"{folder}: the snapshot at z={_z(z)} is named by {named_by[key]} and by {flag}; "
          "a snapshot may serve one split only")
    named_by[key] = flag
    own[split].append((folder, z))

  for split in conventions.SPLITS:
    flag = f"--{split}_redshifts"
    for value in split_redshifts.get(split, ()):
      (z,) = snapshot_lib.select_redshifts(data_dir, value, data_format, flag=flag)
      claim(split, data_dir, z, f"{flag}={_z(value)}")
    for folder in split_dirs.get(split, ()):
      for z in snapshot_lib.select_redshifts(folder, redshift, data_format):
        claim(split, folder, z, f"--{split}_dirs={folder}")

  takers = [split for split in conventions.SPLITS if not own[split]]
  pool: List[float] = []
  if data_dir:
    rest = redshift == snapshot_lib.ALL_REDSHIFTS or (redshift is None and named_by)
    selected = snapshot_lib.select_redshifts(
        data_dir, snapshot_lib.ALL_REDSHIFTS if rest or redshift is None else redshift, data_format)
    if redshift is None and not named_by and len(selected) > 1:
      raise errors.UserError(
          f"{data_dir}: several redshifts ({', '.join(_z(z) for z in selected)}); train on "
          "one with --redshift, on several with --redshift=z1,z2 or --redshift=all (the "
          "splits share each as x-slabs), or give splits whole snapshots of their own with "
          "--validation_redshifts, --test_redshifts")
    for z in selected:
      key = (os.path.realpath(data_dir), z)
      if key not in named_by:
        pool.append(z)
      elif not rest:
        raise errors.UserError(
            f"{data_dir}: the snapshot at z={_z(z)} is named by --redshift and by "
            f"{named_by[key]}; a snapshot may serve one split only")
    if pool and not takers:
      logging.warning("%s: snapshots at z=%s serve no split (every split has its own)", data_dir,
                      ", ".join(_z(z) for z in pool))
  # Without a pool of shared snapshots, the splits without their own are carved from the
  # training snapshots, as the splits of a single box are.
  carve = bool(takers and not pool and own["train"] and "train" not in takers)
  if takers and not pool and not carve:
    split = takers[0]
    where = (f"every snapshot --redshift picks of --data_dir={data_dir} serves another split"
             if data_dir else "no --data_dir is given")
    raise errors.UserError(
        f"the {split} split would be empty ({where}); give it snapshots of its own with "
        f"--{split}_redshifts (of --data_dir) or --{split}_dirs")

  loaded: Dict[Tuple[str, float], snapshot_lib.Snapshot] = {}

  def load(folder: str, z: float) -> snapshot_lib.Snapshot:
    key = (os.path.realpath(folder), z)
    if key not in loaded:
      loaded[key] = snapshot_lib.load_snapshot(folder, redshift=z, radius=radius,
                                               data_format=data_format, box_size_mpc=box_size_mpc)
    return loaded[key]

  result = {
      split: SplitData([load(folder, z)
                        for folder, z in own[split]]) for split in conventions.SPLITS if own[split]
  }
  if carve:
    boxes = result["train"].snapshots
    lengths = sorted({box.shape[0] for box in boxes})
    if len(lengths) > 1:
      raise errors.UserError(
          f"the {' and '.join(takers)} split would be empty, and its x-slabs cannot be cut from "
          f"the training snapshots: they have {' and '.join(map(str, lengths))} cells along x; "
          f"give it snapshots of its own with --{takers[0]}_redshifts or --{takers[0]}_dirs")
    regions = regions_lib.split_regions(boxes[0].shape, radius, names=["train"] + takers)
    logging.info(
        "%s: no snapshots of their own; cut as x-slabs of the training snapshots, with guard "
        "bands of %d cells (training keeps x in [%d, %d))", " and ".join(takers), radius,
        *regions["train"])
    for split in ["train"] + takers:
      result[split] = SplitData(boxes, region=regions[split])
  elif takers:
    boxes = [load(data_dir, z) for z in pool]
    if len(takers) == 1:
      result[takers[0]] = SplitData(boxes)
    else:
      lengths = sorted({box.shape[0] for box in boxes})
      if len(lengths) > 1:
        raise errors.UserError(
            f"{data_dir}: {' and '.join(takers)} share its snapshots as x-slabs, but they "
            f"have {' and '.join(map(str, lengths))} cells along x; pick snapshots of one "
            "shape with --redshift, or give splits their own (--test_redshifts, "
            "--validation_dirs, ...)")
      regions = regions_lib.split_regions(boxes[0].shape, radius, names=takers)
      for split in takers:  # one Snapshot per box for all slabs: overdensity computed once
        result[split] = SplitData(boxes, region=regions[split])
  return {split: result[split] for split in conventions.SPLITS}


def for_model(splits: Dict[str, SplitData], source_transform: str) -> Dict[str, SplitData]:
  """The splits as a model with `source_transform` takes them (see
  `snapshot_lib.for_model`); a box shared by several splits stays one object."""
  done: Dict[int, snapshot_lib.Snapshot] = {}

  def convert(snapshot):
    if id(snapshot) not in done:
      done[id(snapshot)] = snapshot_lib.for_model(snapshot, source_transform)
    return done[id(snapshot)]

  return {
      split: SplitData([convert(s) for s in data.snapshots], region=data.region)
      for split, data in splits.items()
  }


def normalization_stats(data: SplitData, source_transform: str):
  """(mean, variance) of the model's two inputs over the training centres' region."""
  igm, src = [], []
  for n_igm, n_src, _ in data.fields:
    if data.region is not None:
      n_igm, n_src = n_igm[slice(*data.region)], n_src[slice(*data.region)]
    igm.append(n_igm.ravel())
    src.append(transforms.apply_source_transform(n_src, source_transform).ravel())
  igm, src = np.concatenate(igm), np.concatenate(src)
  return ((float(igm.mean()), max(float(igm.var()),
                                  1e-12)), (float(src.mean()), max(float(src.var()), 1e-12)))

"""Where the splits of one shared box lie: x-slabs separated by guard bands.

Pure geometry on NumPy: the split loader (`keras_cnn.data.splits`) cuts a box shared by
several splits with it, and the input pipeline (`keras_cnn.pipeline`) draws each split's
crop centres inside its slab.
"""

from typing import Dict, Optional, Sequence, Tuple

import numpy as np

from keras_cnn import conventions
from keras_cnn import errors

Region = Tuple[int, int]  # a half-open x-index range

SPLIT_FRACTIONS = {"train": 0.8, "validation": 0.1, "test": 0.1}


def split_regions(shape: Sequence[int], radius: int, fractions: Optional[Sequence[float]] = None,
                  guard: Optional[int] = None,
                  names: Sequence[str] = conventions.SPLITS) -> Dict[str, Region]:
  """x-slabs of one periodic box for train / validation / test, with guard bands.

  The x axis is laid out as `train | guard | validation | guard | test | guard`
  and the last guard band wraps onto the start of train, so every pair of regions
  is separated by `guard` cells (default: r) in both directions. With guard >= r
  no crop centred in one region contains a voxel of another region.

  Every region but the first gets its fraction of the whole box, rounded up (so
  validation and test hold at least 10% of the voxels each by default); the first
  (train) gets what the others and the guard bands leave. A box too small for that
  with a training slab at least as thick as the other slabs together is refused
  with the flags that would work instead.

  Args:
    shape: box shape (Nx, Ny, Nz); only Nx is split.
    radius: crop radius r.
    fractions: relative sizes of the regions of `names` (all > 0); None:
      `SPLIT_FRACTIONS`.
    guard: width of each guard band in cells, >= radius; None means radius.
    names: the regions, in x order (the first takes what the others leave); a subset
      of the splits when the others have snapshots of their own.

  Returns:
    {name: (start, stop)}: half-open x-index ranges.

  Raises:
    errors.UserError: the box is too small (the message says what to pass instead).
  """
  length = int(shape[0])
  names = list(names)
  guard = int(radius) if guard is None else int(guard)
  if guard < radius:
    raise ValueError(f"guard band ({guard} cells) must be >= radius ({radius})")
  if fractions is None:
    fractions = [SPLIT_FRACTIONS[name] for name in names]
  if len(fractions) != len(names) or len(names) < 2 or any(f <= 0 for f in fractions):
    raise ValueError(f"fractions must be {len(names)} positive numbers ({', '.join(names)}), got "
                     f"{fractions}")
  count = len(names)
  total = float(sum(fractions))
  sizes = [max(1, int(np.ceil(length * f / total - 1e-9))) for f in fractions[1:]]
  held_out = sum(sizes)
  first = length - held_out - count * guard
  if first < held_out:
    others = " and ".join(names[1:])
    slabs = ", ".join(f"{name} {size}" for name, size in zip(names[1:], sizes))
    instead = [
        f"give {others} snapshots of their own (a second box: " +
        ", ".join(f"--{name}_dirs" for name in names[1:]) + "; or other redshifts "
        "of --data_dir: " + ", ".join(f"--{name}_redshifts" for name in names[1:]) + ")"
    ]
    largest = (length - 2 * held_out) // count
    if guard == radius and 0 <= largest < radius:
      instead.append(f"use --radius={largest} or less")
    raise errors.UserError(
        f"a box of {length} cells along x is too small to cut {others} slabs of their "
        f"share of the box (x-cells: {slabs}) and a {names[0]} slab at least as thick as "
        f"those together, with guard bands of {guard} cells (the crop radius) between "
        f"them: {names[0]} would keep {max(first, 0)} cells; " + ", or ".join(instead))
  sizes = [first] + sizes
  regions = {}
  start = 0
  for name, size in zip(names, sizes):
    regions[name] = (start, start + size)
    start += size + guard
  return regions

"""Snapshot-wide conditioning: one number per box as an extra input to the head.

A model built with `ModelConfig(conditioning=kind)` takes, beside the two fields, an
input "condition" of shape (1,): the same value for every voxel of a box. It is
standardized inside the model (layer `normalize_condition`, which also records the
kind) and appended to the flattened features before `dense`, so one model can cover
a whole reionization history instead of one redshift. Kinds:

- "redshift": the snapshot's redshift;
- "time": the age of the universe at that redshift, in Myr (flat LambdaCDM with the
  simulator's Planck 2018 parameters; a smooth, monotonic function of z);
- "mean_xhii": the box's volume-averaged ionized fraction. Training and evaluation
  take it from the target box; predicting a box without a target needs it given
  (`predict --condition_value`), e.g. from a semi-numerical history of the same run.
- "none": no conditioning input (the original network).
"""

import math
from typing import Optional, Sequence, Tuple

import numpy as np

from keras_cnn import errors

KINDS = ("none", "redshift", "time", "mean_xhii")
INPUT_NAME = "condition"
LAYER_NAME = "normalize_condition"

# 1 / H0 in Myr for h = 1 (the Hubble time is this over h).
_HUBBLE_TIME_MYR_H = 9777.922


def cosmic_time_myr(redshift: float, h: float = 0.6736, omega_m: float = 0.3153) -> float:
  """Age of a flat LambdaCDM universe (matter + Lambda) at `redshift`, in Myr."""
  omega_l = 1.0 - omega_m
  scale = (1.0 + float(redshift)) ** -1.5
  return (2.0 / (3.0 * math.sqrt(omega_l)) * _HUBBLE_TIME_MYR_H / h *
          math.asinh(math.sqrt(omega_l / omega_m) * scale))


def value(kind: str, snapshot, given: Optional[float] = None) -> Optional[float]:
  """The conditioning value of `snapshot` for a model of this `kind` (None for "none").

  Args:
    kind: one of KINDS.
    snapshot: a `keras_cnn.data.snapshot.Snapshot`.
    given: a value to use instead of the snapshot's own (e.g. `--condition_value`).
  """
  if kind not in KINDS:
    raise ValueError(f"conditioning must be one of {KINDS}, got {kind!r}")
  if kind == "none":
    return None
  if given is not None:
    return float(given)
  if kind == "redshift":
    return float(snapshot.redshift)
  if kind == "time":
    return cosmic_time_myr(snapshot.redshift)
  if snapshot.x_hii is None:
    raise errors.UserError(
        f"{snapshot.name}: the model is conditioned on the box's mean x_HII, and this box has "
        "no x_HII field to take it from: pass --condition_value=<mean x_HII of the box>")
  return float(np.mean(snapshot.x_hii, dtype=np.float64))


def values(kind: str, snapshots: Sequence, given: Optional[float] = None) -> Optional[list]:
  """`value` of each snapshot, or None for kind "none"."""
  if kind == "none":
    return None
  return [value(kind, s, given) for s in snapshots]


def training_stats(kind: str, train_values: Sequence[float]) -> Tuple[float, float]:
  """(mean, standard deviation) that standardize the condition; the training
  snapshots must hold at least two different values."""
  array = np.asarray(train_values, np.float64)
  if len(np.unique(np.round(array, 6))) < 2:
    raise errors.UserError(
        f"--conditioning={kind} needs training snapshots with at least two different values of "
        f"the {kind.replace('_', ' ')} (got {sorted(set(array.round(4).tolist()))}): give "
        "--train_redshifts / --train_dirs several snapshots, or use --conditioning=none")
  return float(array.mean()), float(array.std())


def of_model(model) -> str:
  """The conditioning kind of a built or loaded model ("none" without the input)."""
  try:
    return model.get_layer(LAYER_NAME).kind
  except ValueError:
    return "none"


def column(condition: float, count: int) -> np.ndarray:
  """(count, 1) float32 column of one value: the condition input of a batch of one box."""
  return np.full((count, 1), condition, np.float32)

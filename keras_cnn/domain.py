"""The domain of a shared model: what its training inputs looked like, and a check of new ones.

A model only knows the overdensity and the sources of the boxes it was trained on; fed
sources in other units (solar masses instead of counts, say) or a much smoother or
rougher density field, it still returns a map, just a wrong one. Training therefore
records, inside the saved `.keras` file, the units the sources were given in
(`--source_units`, free text) and statistics of the training inputs
(`input_statistics`): the record is the config of the model's `input_domain` layer
(`keras_cnn.model.InputDomain`, an identity), so it survives `model.save` and
`keras.saving.load_model(safe_mode=True)`.

`check_inputs` compares the statistics of a new box with the record: a source mean or a
fraction of non-zero source cells more than `SOURCE_RATIO` times off, or an overdensity
variance more than `OVERDENSITY_VARIANCE_RATIO` times off, is a warning naming the
numbers (an error with `strict`). Models saved without a record are said to have none,
once, and are used as they are.
"""

import math
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from absl import logging

from keras_cnn import errors

RECORD_VERSION = 1
DEFAULT_SOURCE_UNITS = "simulator counts"
LAYER_NAME = "input_domain"
OVERDENSITY_QUANTILES = (0.01, 0.5, 0.99)
SOURCE_QUANTILES = (0.5, 0.9, 0.99, 0.999)
SOURCE_RATIO = 10.0  # source mean and non-zero fraction
OVERDENSITY_VARIANCE_RATIO = 3.0
_QUANTILE_SAMPLE = 1 << 22  # values per field that the quantiles are taken from

_warned_no_record = False


class DomainError(errors.UserError):
  """A box far from the inputs the model was trained on (with --strict_domain)."""


def _moments(arrays: Sequence[np.ndarray]) -> Tuple[float, float, float, int]:
  """(mean, variance, fraction of non-zero values, count) over all values, in float64,
  a few x-planes at a time (no full-size temporary)."""
  count, total, nonzero = 0, 0.0, 0
  for array in arrays:
    count += array.size
    total += float(np.sum(array, dtype=np.float64))
    nonzero += int(np.count_nonzero(array))
  mean = total / max(count, 1)
  squares = 0.0
  for array in arrays:
    step = max(1, (1 << 22) // max(1, int(np.prod(array.shape[1:]))))
    for start in range(0, array.shape[0], step):
      chunk = np.asarray(array[start:start + step], np.float64) - mean
      squares += float(np.sum(chunk * chunk))
  return mean, squares / max(count, 1), nonzero / max(count, 1), count


def _quantiles(arrays: Sequence[np.ndarray], levels: Sequence[float]) -> Dict[str, float]:
  """Quantiles of the values of `arrays`, from at most `_QUANTILE_SAMPLE` of them taken
  at a regular stride."""
  size = sum(array.size for array in arrays)
  stride = max(1, size // _QUANTILE_SAMPLE)
  sample = np.concatenate([np.asarray(array).reshape(-1)[::stride] for array in arrays])
  values = np.quantile(sample.astype(np.float64), levels)
  return {f"{level:g}": float(value) for level, value in zip(levels, values)}


def input_statistics(fields: Sequence[Tuple[np.ndarray, np.ndarray]],
                     region: Optional[Tuple[int, int]] = None) -> dict:
  """Statistics of the model's two raw inputs over some boxes.

  Args:
    fields: (n_igm, n_src) per box: the overdensity and the sources as the model takes
      them.
    region: a half-open x-range of every box to use (a training slab); None: all.

  Returns:
    {"overdensity": {mean, variance, quantiles}, "sources": {mean, variance,
    nonzero_fraction, quantiles}, "voxels": count}; quantiles map "0.5" etc. to values.
  """
  cut = (lambda a: a) if region is None else (lambda a: a[region[0]:region[1]])
  igm = [cut(np.asarray(n_igm)) for n_igm, _ in fields]
  src = [cut(np.asarray(n_src)) for _, n_src in fields]
  igm_mean, igm_var, _, count = _moments(igm)
  src_mean, src_var, src_nonzero, _ = _moments(src)
  return {
      "overdensity": {
          "mean": igm_mean,
          "variance": igm_var,
          "quantiles": _quantiles(igm, OVERDENSITY_QUANTILES)
      },
      "sources": {
          "mean": src_mean,
          "variance": src_var,
          "nonzero_fraction": src_nonzero,
          "quantiles": _quantiles(src, SOURCE_QUANTILES)
      },
      "voxels": count,
  }


def make_record(fields: Sequence[Tuple[np.ndarray,
                                       np.ndarray]], region: Optional[Tuple[int, int]] = None,
                source_units: str = DEFAULT_SOURCE_UNITS, redshifts: Sequence[float] = ()) -> dict:
  """The record a trained model carries: units, training-input statistics, redshifts."""
  return {
      "version": RECORD_VERSION,
      "source_units": str(source_units),
      "redshifts": [float(z) for z in redshifts],
      **input_statistics(fields, region)
  }


def read_record(model) -> Optional[dict]:
  """The record of a loaded model; None for a model saved without one."""
  try:
    layer = model.get_layer(LAYER_NAME)
  except ValueError:
    return None
  record = getattr(layer, "record", None)
  return record if isinstance(record, dict) and "sources" in record else None


def _ratio(new: float, trained: float) -> float:
  """How many times `new` and `trained` differ (>= 1; inf when only one is zero)."""
  if new == trained:
    return 1.0
  if min(new, trained) <= 0.0:
    return math.inf
  return max(new / trained, trained / new)


def compare(record: dict, stats: dict) -> List[str]:
  """The ways `stats` (of `input_statistics`) lie far from the training record."""
  problems = []
  checks = (("source mean", stats["sources"]["mean"], record["sources"]["mean"], SOURCE_RATIO),
            ("fraction of non-zero source cells", stats["sources"]["nonzero_fraction"],
             record["sources"]["nonzero_fraction"], SOURCE_RATIO),
            ("overdensity variance", stats["overdensity"]["variance"],
             record["overdensity"]["variance"], OVERDENSITY_VARIANCE_RATIO))
  for what, new, trained, limit in checks:
    ratio = _ratio(float(new), float(trained))
    if ratio > limit:
      times = "inf" if math.isinf(ratio) else f"{ratio:.3g}"
      problems.append(f"{what} {new:.4g} vs {trained:.4g} in training ({times}x apart, "
                      f"more than {limit:g}x)")
  return problems


def check_inputs(model, snapshots: Sequence, strict: bool = False,
                 model_name: str = "the model") -> List[str]:
  """Warns (or, with `strict`, raises) when a box's inputs lie far from the training
  inputs the model recorded.

  Args:
    model: a loaded model.
    snapshots: `keras_cnn.data.snapshot.Snapshot`s to be predicted or scored.
    strict: raise `DomainError` instead of warning.
    model_name: how messages name the model (its path).

  Returns:
    The warning messages (one per box far from the training inputs).

  Raises:
    DomainError: with `strict`, for the first box far from the training inputs.
  """
  global _warned_no_record
  record = read_record(model)
  if record is None:
    if not _warned_no_record:
      logging.warning(
          "%s carries no record of its training inputs (saved before keras_cnn "
          "recorded them): the inputs' units and statistics are not checked.", model_name)
      _warned_no_record = True
    return []
  messages = []
  for snapshot in snapshots:
    problems = compare(record, input_statistics([(snapshot.n_igm, snapshot.n_src)]))
    if not problems:
      continue
    message = (f"{snapshot.name} (z={snapshot.redshift:.3f}): inputs unlike those "
               f"{model_name} was trained on: {'; '.join(problems)}; its sources were in "
               f"'{record.get('source_units', DEFAULT_SOURCE_UNITS)}'")
    if strict:
      raise DomainError(message + " (refused by --strict_domain)")
    logging.warning("%s; its x_HII may be wrong (--strict_domain makes this an error).", message)
    messages.append(message)
  return messages

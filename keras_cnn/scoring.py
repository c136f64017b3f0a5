"""The one scorer of train and evaluate: predictions in, the metrics dict out.

`score` is pure (no files, no model): `training.evaluate_split` (the test split of a
training run, `metrics.json` of the workdir) and `inference.evaluate_model`
(`python -m keras_cnn.evaluate`) both call it, so both report the same keys computed
the same way. Figures, CSV and JSON are written by `keras_cnn.reports`.
"""

import dataclasses
import math
from typing import List, Sequence, Tuple

import numpy as np

from keras_cnn import conventions
from keras_cnn import metrics as metrics_lib


@dataclasses.dataclass
class WholeBox:
  """The true and predicted x_HII of a whole periodic box, with what its physics
  scores need (`keras_cnn.metrics.compare_maps`)."""

  true_map: np.ndarray
  pred_map: np.ndarray
  overdensity: np.ndarray
  redshift: float


@dataclasses.dataclass
class Scores:
  """What `score` returns: the metrics dict and what the report draws from."""

  metrics: dict  # JSON-safe
  comparisons: List[metrics_lib.MapComparison]  # one per whole box, in order
  y_true: np.ndarray  # every scored voxel, pooled
  y_pred: np.ndarray


def json_safe(value):
  """NaN and infinities are not JSON; they become null."""
  if isinstance(value, float) and not math.isfinite(value):
    return None
  return value


def score(boxes: Sequence[WholeBox] = (), voxels: Sequence[Tuple[np.ndarray, np.ndarray]] = (),
          cell_size_mpc: float = conventions.CELL_SIZE_MPC, method: str = "auto",
          seed: int = 0) -> Scores:
  """Scores predictions: the metrics dict, and the map comparisons and pooled voxels
  behind it.

  Args:
    boxes: whole boxes: every voxel is scored, and each gets the physics scores of
      whole maps (power spectra, 21-cm signal, bubble sizes).
    voxels: (y_true, y_pred) pairs of voxels that are not whole boxes (slabs, random
      voxels): pooled into the regression and ionized-map scores only.
    cell_size_mpc: comoving cell side (k and bubble sizes).
    method: "auto", "tools21cm" or "numpy" for the physics scores; "off" skips them.
    seed: seed of the bubble-size rays (box i uses seed + i).

  Returns:
    `Scores`; its metrics (JSON-safe) are `regression_metrics` and `ionized_map_scores`
    of every scored voxel, the physics scores of the whole boxes (`MAP_SCORE_KEYS`,
    combined by `aggregate_map_scores`; None without a whole box), `r_k_mean`,
    `pk_ratio_mean` and `power_spectrum_method`.
  """
  if not boxes and not voxels:
    raise ValueError("nothing to score: no boxes and no voxels")
  comparisons = []
  if method != "off":
    comparisons = [
        metrics_lib.compare_maps(box.true_map, box.pred_map, box.overdensity, box.redshift,
                                 cell_size_mpc, method=method, seed=seed + i)
        for i, box in enumerate(boxes)
    ]
  y_true = np.concatenate([np.asarray(b.true_map, np.float32).ravel() for b in boxes] +
                          [np.asarray(t, np.float32).ravel() for t, _ in voxels])
  y_pred = np.concatenate([np.asarray(b.pred_map, np.float32).ravel() for b in boxes] +
                          [np.asarray(p, np.float32).ravel() for _, p in voxels])
  result = metrics_lib.regression_metrics(y_true, y_pred)
  summaries = [metrics_lib.power_spectrum_summary(c.xhii_spectrum) for c in comparisons]
  for key in ("r_k_mean", "pk_ratio_mean"):
    values = [s[key] for s in summaries if s[key] is not None]
    result[key] = float(np.mean(values)) if values else None
  result["power_spectrum_method"] = comparisons[0].xhii_spectrum["method"] if comparisons else None
  result.update(metrics_lib.aggregate_map_scores([c.scores for c in comparisons]))
  result.update(metrics_lib.ionized_map_scores(y_true, y_pred))  # every scored voxel
  return Scores({
      key: json_safe(value) for key, value in result.items()
  }, comparisons, y_true, y_pred)

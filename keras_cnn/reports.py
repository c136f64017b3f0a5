"""The report of a scoring: figures, the power-spectrum CSV and metrics.json.

`keras_cnn.scoring.score` computes; this module only writes, every file atomically.
"""

import csv
import io
import json
import os
from typing import Dict, Optional, Sequence

import numpy as np

from keras_cnn import conventions
from keras_cnn import io_utils
from keras_cnn import plots
from keras_cnn import scoring


def write_power_spectra(path: str, spectra: Sequence[Dict[str, object]]) -> None:
  """One row per |k| shell of every box: the true, predicted and cross spectra, r(k)."""
  columns = ("k", "pk_true", "pk_pred", "pk_cross", "r_k", "n_modes")
  stream = io.StringIO()
  writer = csv.writer(stream, lineterminator="\n")
  writer.writerow(
      ["box", "k_per_cmpc", "pk_true_cmpc3", "pk_pred_cmpc3", "pk_cross_cmpc3", "r_k", "n_modes"])
  for box, spectrum in enumerate(spectra):
    for row in zip(*(np.asarray(spectrum[c], np.float64) for c in columns)):
      writer.writerow([box] + [f"{v:.6g}" for v in row])
  io_utils.write_text(path, stream.getvalue())


def write_evaluation(out_dir: str, scores: scoring.Scores, metrics: dict,
                     boxes: Sequence[scoring.WholeBox], titles: Sequence[str],
                     suffixes: Sequence[str], cell_size_mpc: float = conventions.CELL_SIZE_MPC,
                     history_csv: Optional[str] = None) -> None:
  """The files of `python -m keras_cnn.evaluate` in `out_dir` (created).

  Per whole box (named by `titles`, files suffixed by `suffixes`): slices, and with
  physics scores its power spectra and summary figure; then the predicted-vs-true
  histogram of every scored voxel, `power_spectrum.csv`, the training history figure
  when `history_csv` is given, and `metrics` as metrics.json.
  """
  os.makedirs(out_dir, exist_ok=True)
  for i, box in enumerate(boxes):
    plots.plot_slices(box.true_map, box.pred_map, os.path.join(out_dir, f"slices{suffixes[i]}.png"),
                      cell_size_mpc=cell_size_mpc)
    if scores.comparisons:
      comparison = scores.comparisons[i]
      plots.plot_power_spectra(comparison.xhii_spectrum,
                               os.path.join(out_dir, f"power_spectra{suffixes[i]}.png"),
                               title=titles[i])
      plots.plot_summary(box.true_map, box.pred_map, comparison,
                         os.path.join(out_dir, f"summary{suffixes[i]}.png"), cell_size_mpc,
                         title=f"{titles[i]}, z = {box.redshift:.3f}")
  plots.plot_pred_vs_true(scores.y_true, scores.y_pred,
                          os.path.join(out_dir, conventions.PRED_VS_TRUE_PNG), r2=metrics["r2"])
  if scores.comparisons:
    write_power_spectra(os.path.join(out_dir, conventions.POWER_SPECTRUM_FILE),
                        [c.xhii_spectrum for c in scores.comparisons])
  if history_csv:
    plots.plot_history(history_csv, os.path.join(out_dir, conventions.HISTORY_PNG))
  io_utils.write_text(os.path.join(out_dir, conventions.METRICS_FILE),
                      json.dumps(metrics, indent=2) + "\n")

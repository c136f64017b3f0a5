"""`python -m keras_cnn.evaluate`: score a saved model on any box.

  python -m keras_cnn.evaluate --model=runs/default/model.keras \\
      --data_dir=boxes/ --redshift=8.397 --out=eval/
  python -m keras_cnn.evaluate --model=... --dataset=synthetic --split=test --out=eval/

Boxes of at most --max_full_voxels voxels are painted whole (`predict.predict_volume`),
so every voxel is scored and the map's power spectrum is compared with the truth;
larger boxes are scored on a fixed random subset of voxels (`pipeline.make_dataset`).

Prints exactly one JSON line on stdout, the content of `out/metrics.json`
(`r2`, `mse`, `mean_xhii_true`, `mean_xhii_pred`, `num_voxels`, `num_boxes`,
`full_volume`, `r_k_mean`, `pk_ratio_mean`, `power_spectrum_method`), and writes the
figures `pred_vs_true.png`, `slices.png`, `power_spectra.png` (whole boxes; with
several boxes, one `slices_<i>.png` / `power_spectra_<i>.png` each),
`power_spectrum.csv`, and `history.png` when a history.csv is given or lies beside
the model. Progress and logs go to stderr.
"""

import csv
import io
import json
import math
import os
import sys
from typing import Dict, List, Optional, Sequence

from absl import app
from absl import flags
from absl import logging
import numpy as np

from keras_cnn import cli_flags
from keras_cnn import io_utils
from keras_cnn import plots

FLAGS = flags.FLAGS
cli_flags.define_evaluate_flags()
flags.adopt_module_key_flags(cli_flags)

METRICS_FILE = "metrics.json"
HISTORY_FILE = "history.csv"
POWER_SPECTRUM_FILE = "power_spectrum.csv"


def _json_safe(value):
  """NaN and infinities are not JSON; they become null."""
  if isinstance(value, float) and not math.isfinite(value):
    return None
  return value


def _sampled_predictions(model, snapshot, radius: int, batch_size: int, num_examples: int,
                         seed: int, progress: bool):
  """(y_true, y_pred) on a fixed random set of voxels of one box."""
  from tqdm import tqdm

  from keras_cnn import pipeline

  dataset = pipeline.make_dataset([(snapshot.n_igm, snapshot.n_src, snapshot.x_hii)],
                                  radius, batch_size, training=False, seed=seed,
                                  num_examples=num_examples)
  y_true, y_pred = [], []
  with tqdm(total=min(num_examples, int(np.prod(snapshot.shape))), unit="voxel",
            unit_scale=True, file=sys.stderr, disable=not progress, desc="x_HII",
            mininterval=1.0) as bar:
    for inputs, targets in dataset.as_numpy_iterator():
      y_true.append(np.asarray(targets, np.float32).ravel())
      y_pred.append(np.asarray(model.predict_on_batch(inputs), np.float32).ravel())
      bar.update(len(y_true[-1]))
  return np.concatenate(y_true), np.concatenate(y_pred)


def _write_power_spectra(path: str, spectra: Sequence[Dict[str, object]]) -> None:
  columns = ("k", "pk_true", "pk_pred", "pk_cross", "r_k", "n_modes")
  stream = io.StringIO()
  writer = csv.writer(stream, lineterminator="\n")
  writer.writerow(["box", "k_per_cmpc", "pk_true_cmpc3", "pk_pred_cmpc3", "pk_cross_cmpc3",
                   "r_k", "n_modes"])
  for box, spectrum in enumerate(spectra):
    for row in zip(*(np.asarray(spectrum[c], np.float64) for c in columns)):
      writer.writerow([box] + [f"{v:.6g}" for v in row])
  io_utils.write_text(path, stream.getvalue())


def evaluate_model(model, snapshots: Sequence, out_dir: str,
                   batch_size: int = 256, max_full_voxels: int = 128 ** 3,
                   num_examples: int = 16384, seed: int = 0,
                   cell_size_mpc: float = plots.DEFAULT_CELL_SIZE_MPC,
                   history_csv: Optional[str] = None, power_spectrum: str = "auto",
                   progress: bool = True) -> dict:
  """Scores `model` on whole boxes and writes metrics.json and figures to `out_dir`.

  Args:
    model: a trained model (inputs {"n_igm", "n_src"} of side 2r+1).
    snapshots: `keras_cnn.data.snapshot.Snapshot`s with targets; any box shape.
    out_dir: output folder (created).
    batch_size: crops per forward pass.
    max_full_voxels: boxes up to this size are predicted whole; larger ones are
      scored on `num_examples` random voxels (no map, slices or power spectrum).
    num_examples: voxels per large box.
    seed: seed of those voxels.
    cell_size_mpc: comoving cell side (figures' axes and k).
    history_csv: a training history to plot (None: no history figure).
    power_spectrum: "auto", "tools21cm", "numpy" (see `keras_cnn.metrics`) or "off".
    progress: progress bars on stderr.

  Returns:
    The metrics written to out_dir/metrics.json (JSON-safe: no NaN).
  """
  from keras_cnn import metrics as metrics_lib
  from keras_cnn import predict as predict_lib

  if not snapshots:
    raise ValueError("evaluate_model needs at least one snapshot")
  for snapshot in snapshots:
    if snapshot.x_hii is None:
      raise ValueError(f"{snapshot.name}: field 'x_hii' is missing; evaluation needs targets")
  os.makedirs(out_dir, exist_ok=True)
  radius = predict_lib.model_radius(model)
  suffix = (lambda i: "") if len(snapshots) == 1 else (lambda i: f"_{i}")

  y_true: List[np.ndarray] = []
  y_pred: List[np.ndarray] = []
  spectra = []
  for i, snapshot in enumerate(snapshots):
    size = int(np.prod(snapshot.shape))
    if size > max_full_voxels:
      logging.info("%s: %d voxels > %d, scoring %d random voxels.", snapshot.name, size,
                   max_full_voxels, num_examples)
      true_i, pred_i = _sampled_predictions(model, snapshot, radius, batch_size,
                                            num_examples, seed + i, progress)
      y_true.append(true_i)
      y_pred.append(pred_i)
      continue
    logging.info("%s: predicting all %d voxels.", snapshot.name, size)
    pred_map = predict_lib.predict_volume(model, snapshot.n_igm, snapshot.n_src,
                                          batch_size=batch_size, progress=progress)
    true_map = np.asarray(snapshot.x_hii, np.float32)
    y_true.append(true_map.ravel())
    y_pred.append(pred_map.ravel())
    plots.plot_slices(true_map, pred_map, os.path.join(out_dir, f"slices{suffix(i)}.png"),
                      cell_size_mpc=cell_size_mpc)
    if power_spectrum != "off":
      box_mpc = [n * cell_size_mpc for n in true_map.shape]
      spectrum = metrics_lib.power_spectrum_comparison(true_map, pred_map, box_mpc,
                                                       method=power_spectrum)
      spectra.append(spectrum)
      plots.plot_power_spectra(spectrum, os.path.join(out_dir, f"power_spectra{suffix(i)}.png"),
                               title=snapshot.name)

  y_true_all, y_pred_all = np.concatenate(y_true), np.concatenate(y_pred)
  result = metrics_lib.regression_metrics(y_true_all, y_pred_all)
  result["num_boxes"] = len(snapshots)
  result["full_volume"] = all(int(np.prod(s.shape)) <= max_full_voxels for s in snapshots)
  summaries = [metrics_lib.power_spectrum_summary(s) for s in spectra]
  for key in ("r_k_mean", "pk_ratio_mean"):
    values = [s[key] for s in summaries if s[key] is not None]
    result[key] = float(np.mean(values)) if values else None
  result["power_spectrum_method"] = spectra[0]["method"] if spectra else None
  result = {key: _json_safe(value) for key, value in result.items()}

  plots.plot_pred_vs_true(y_true_all, y_pred_all, os.path.join(out_dir, "pred_vs_true.png"),
                          r2=result["r2"])
  if spectra:
    _write_power_spectra(os.path.join(out_dir, POWER_SPECTRUM_FILE), spectra)
  if history_csv:
    plots.plot_history(history_csv, os.path.join(out_dir, "history.png"))
  io_utils.write_text(os.path.join(out_dir, METRICS_FILE), json.dumps(result, indent=2) + "\n")
  return result


def history_beside(model_path: str) -> Optional[str]:
  """The history.csv in the model's folder (a train workdir), if there is one."""
  path = os.path.join(os.path.dirname(os.path.abspath(model_path)), HISTORY_FILE)
  return path if os.path.isfile(path) else None


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  cli_flags.require_flags("model", "out")
  from keras_cnn import inputs as inputs_lib
  from keras_cnn import predict as predict_lib

  if FLAGS.history and not os.path.isfile(FLAGS.history):
    raise app.UsageError(f"--history={FLAGS.history}: no such file")
  model = predict_lib.load_model(FLAGS.model)
  radius = predict_lib.model_radius(model)
  snapshots = inputs_lib.load_box(
      FLAGS.data_dir, FLAGS.redshift, FLAGS.dataset, split=FLAGS.split,
      tfds_data_dir=FLAGS.tfds_data_dir, n_cells=FLAGS.n_cells, mean_xhii=FLAGS.mean_xhii,
      data_seed=FLAGS.data_seed, radius=radius, require_target=True)
  metrics = evaluate_model(
      model, snapshots, FLAGS.out, batch_size=FLAGS.batch_size,
      max_full_voxels=FLAGS.max_full_voxels, num_examples=FLAGS.num_examples,
      seed=FLAGS.sample_seed, cell_size_mpc=FLAGS.cell_size_mpc,
      history_csv=FLAGS.history or history_beside(FLAGS.model),
      power_spectrum=FLAGS.power_spectrum, progress=FLAGS.progress)
  logging.info("Wrote %s and figures to %s", METRICS_FILE, FLAGS.out)
  print(json.dumps(metrics), flush=True)


if __name__ == "__main__":
  app.run(main)

"""Where a model's squared error sits: on bubble edges or inside bubbles and neutral regions.

  python -m keras_cnn.benchmarks.edge_errors --model=saved_models/default_r15_synthetic64.keras

Paints the synthetic test realization (--n_cells, --data_seed) with the model and splits
the squared error of x_HII by cell: cells within --edge_cells cells of a bubble edge (an
ionized cell, x_HII > 0.5, next to a neutral one, or the reverse; periodic, 6-connected)
and the rest. One JSON object: `r2`, `edge_cells` (the distance), `edge_volume_fraction`,
`edge_error_share` (the edge cells' share of the summed squared error), and the mean
absolute error on and off the edges.
"""

import json

from absl import app
from absl import flags

FLAGS = flags.FLAGS


def define_flags() -> None:
  flags.DEFINE_string("model", None, "Required. A trained 'valid' .keras model.")
  flags.DEFINE_integer("n_cells", 64, "Box side.")
  flags.DEFINE_integer("data_seed", 0, "Seed of the synthetic splits (the test box is painted).")
  flags.DEFINE_integer("edge_cells", 1, "Cells at most this far from an edge count as edge cells.",
                       lower_bound=1)


def edge_mask(ionized, distance: int):
  """Cells within `distance` cells (6-connected steps, periodic) of a cell of the other
  state: an ionized cell beside a neutral one, or the reverse."""
  import numpy as np

  edge = np.zeros(ionized.shape, bool)
  for axis in range(3):
    for shift in (-1, 1):
      edge |= ionized != np.roll(ionized, shift, axis=axis)
  for _ in range(distance - 1):
    grown = edge.copy()
    for axis in range(3):
      for shift in (-1, 1):
        grown |= np.roll(edge, shift, axis=axis)
    edge = grown
  return edge


def main(argv) -> None:
  del argv
  if not FLAGS.model:
    raise app.UsageError("--model is required: a trained 'valid' .keras model")
  import keras
  import numpy as np

  import keras_cnn  # noqa: F401  (registers the custom layers)
  from keras_cnn import inference
  from keras_cnn import model as model_lib
  from keras_cnn.data import simulate
  from keras_cnn.data import snapshot as snapshot_lib

  model = keras.saving.load_model(FLAGS.model)
  box = simulate.synthetic_splits(n_cells=FLAGS.n_cells, seed=FLAGS.data_seed)["test"][0]
  inputs = snapshot_lib.for_model(box, model_lib.source_transform_of(model))
  pred = np.asarray(inference.predict_map(model, inputs.n_igm, inputs.n_src, progress=False))
  truth = np.asarray(box.x_hii, np.float32)
  pred = pred.reshape(truth.shape)
  error = (pred - truth) ** 2
  edge = edge_mask(truth > 0.5, FLAGS.edge_cells)
  print(
      json.dumps({
          "r2": round(1.0 - float(error.mean() / truth.var()), 4),
          "edge_cells": FLAGS.edge_cells,
          "edge_volume_fraction": round(float(edge.mean()), 4),
          "edge_error_share": round(float(error[edge].sum() / error.sum()), 4),
          "mean_abs_error_edge": round(float(np.abs(pred - truth)[edge].mean()), 4),
          "mean_abs_error_elsewhere": round(float(np.abs(pred - truth)[~edge].mean()), 4),
      }))


if __name__ == "__main__":
  define_flags()
  app.run(main)

"""What the unit-free source input costs, and what it buys when the units change.

  python -m keras_cnn.benchmarks.source_units \\
      --models=log1p=saved_models/default_r15_synthetic64.keras,mean_scaled=runs/ms/model.keras

Scores each model on the built-in simulator's test realization (the test split of the
default `train` command) with its source field multiplied by each of --scales: 1 is the
units the models were trained in; 1e3 and 1e-3 stand for another code's units (e.g. solar
masses of stars instead of source counts). Prints one JSON line per (model, scale) and a
Markdown table of R^2 / mean predicted x_HII, and whether the domain check
(`keras_cnn.domain.check_inputs`) warned about the box.
"""

import dataclasses
import json

from absl import app
from absl import flags

from keras_cnn import benchmarks

FLAGS = flags.FLAGS
flags.DEFINE_list("models", [], "label=path of each .keras model, in table order.")
flags.DEFINE_list("scales", ["1", "1e3", "1e-3"], "Factors applied to the source field.")
flags.DEFINE_integer("n_cells", 64, "Box side of the test realization.")
flags.DEFINE_integer("data_seed", 0, "Seed of the synthetic splits (the test box is scored).")


def main(argv) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  from absl import logging

  from keras_cnn import domain
  from keras_cnn import model as model_lib
  from keras_cnn.data import simulate
  from keras_cnn.data import snapshot as snapshot_lib

  logging.set_verbosity(logging.ERROR)  # the domain warnings are reported in the table
  box = simulate.synthetic_splits(n_cells=FLAGS.n_cells, seed=FLAGS.data_seed)["test"][0]
  scales = [float(s) for s in FLAGS.scales]
  rows = []
  for label, model in benchmarks.labelled_models(FLAGS.models):
    cells = []
    for scale in scales:
      scaled = dataclasses.replace(box, n_src=box.n_src * scale)
      as_taken = snapshot_lib.for_model(scaled, model_lib.source_transform_of(model))
      warned = bool(domain.check_inputs(model, [as_taken], model_name=label))
      metrics = benchmarks.score_box(model, scaled)
      line = {
          "model": label,
          "source_scale": scale,
          "r2": round(metrics["r2"], 4),
          "mean_xhii_true": round(metrics["mean_xhii_true"], 4),
          "mean_xhii_pred": round(metrics["mean_xhii_pred"], 4),
          "domain_warning": warned
      }
      print(json.dumps(line), flush=True)
      cells.append(f"{line['r2']:.3f} / {line['mean_xhii_pred']:.3f}" +
                   (" (warned)" if warned else ""))
    rows.append(f"| {label} | " + " | ".join(cells) + " |")
  header = " | ".join(f"sources x {s:g}" for s in scales)
  print(f"\n| model | {header} |\n|---|" + "---|" * len(scales))
  print("\n".join(rows))
  print(f"(each cell: R^2 / mean predicted x_HII; true mean {float(box.x_hii.mean()):.4f})")


if __name__ == "__main__":
  app.run(main)

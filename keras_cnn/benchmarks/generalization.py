"""How a trained model transfers to built-in-simulator boxes made with other settings.

  python -m keras_cnn.benchmarks.generalization \\
      --models=shipped=saved_models/default_r15_synthetic64.keras,mine=runs/default/model.keras

Every model trained by `python -m keras_cnn.train` on the embedded data saw boxes of the
simulator's defaults (64^3 cells of 2.381 cMpc, mean free path 50 cMpc, 0.2 sources per
cell in halos above 1e9 Msun, mean x_HII 0.5). This scores each model on independent
realizations (seeds other than the training ones) that change one setting at a time:
the mean free path, the mean x_HII (the ionizing efficiency), the source model, the cell
size (half and twice: the same cells holding other physical scales) and the box size.
One JSON line per (model, variant) with `r2`, `mean_xhii_true`, `mean_xhii_pred` and
`ionized_accuracy`, then a Markdown table.
"""

import json

from absl import app
from absl import flags

from keras_cnn import benchmarks

FLAGS = flags.FLAGS
flags.DEFINE_list("models", [], "label=path of each .keras model, in table order.")
flags.DEFINE_integer("seed", 101, "Realization seed of every variant (not a training seed).")
flags.DEFINE_enum(
    "synthetic_sources", "photons", ["counts", "photons"],
    "What the boxes' n_src holds, as the models were trained "
    "(`train --synthetic_sources`).")

# name -> keyword arguments of keras_cnn.data.simulate.simulate_snapshot.
VARIANTS = {
    "as trained": {},
    "mean free path 25 cMpc": dict(mfp_mpc=25.0),
    "mean free path 100 cMpc": dict(mfp_mpc=100.0),
    "mean x_HII 0.3": dict(mean_xhii=0.3),
    "mean x_HII 0.7": dict(mean_xhii=0.7),
    "sources 0.05 per cell": dict(sources_per_cell=0.05),
    "sources 1.0 per cell": dict(sources_per_cell=1.0),
    "halos above 1e10 Msun": dict(min_halo_mass_msun=1e10),
    "cells of 1.19 cMpc": dict(cell_size_mpc=1.1905),
    "cells of 4.76 cMpc": dict(cell_size_mpc=4.762),
    "box of 128^3 cells": dict(n_cells=128),
}


def main(argv) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  from absl import logging

  from keras_cnn.data import simulate

  logging.set_verbosity(logging.ERROR)
  models = list(benchmarks.labelled_models(FLAGS.models))
  table = {label: [] for label, _ in models}
  for variant, settings in VARIANTS.items():
    box = simulate.simulate_snapshot(**{
        "n_cells": 64,
        "seed": FLAGS.seed,
        "sources": FLAGS.synthetic_sources,
        **settings
    })
    for label, model in models:
      metrics = benchmarks.score_box(model, box)
      line = {
          "model": label,
          "variant": variant,
          "r2": round(metrics["r2"], 4),
          "mean_xhii_true": round(metrics["mean_xhii_true"], 4),
          "mean_xhii_pred": round(metrics["mean_xhii_pred"], 4),
          "ionized_accuracy": round(metrics["ionized_accuracy"], 4),
      }
      print(json.dumps(line), flush=True)
      table[label].append(f"{line['r2']:.3f} / {line['ionized_accuracy']:.3f}")
  print("\n| variant | " + " | ".join(table) + " |\n|---|" + "---|" * len(table))
  for i, variant in enumerate(VARIANTS):
    print(f"| {variant} | " + " | ".join(cells[i] for cells in table.values()) + " |")
  print("(each cell: R^2 / ionized-map accuracy)")


if __name__ == "__main__":
  app.run(main)

"""Several redshifts, one model: does conditioning help, and against what?

  python -m keras_cnn.benchmarks.history --out=/tmp/hist make_data
  python -m keras_cnn.train ...   # the commands `make_data` prints, one per model
  python -m keras_cnn.benchmarks.history --out=/tmp/hist score \\
      --models=none=/tmp/hist/runs/none/model.keras,redshift=...

`make_data` writes synthetic 64^3 snapshots (`simulate.simulate_snapshot`) at three points
of a reionization history, z = 9.0 / 8.397 / 7.5 with mean x_HII 0.3 / 0.5 / 0.7:
`train/` (realization 0) and `validation/` (realization 1) at the two outer points,
`test/` (realization 2) at the middle one, which no training box shows, and `test_seen/`
(realization 2) at the outer ones. It prints the train commands of the models to compare:
trained on both outer redshifts without and with conditioning (redshift, mean x_HII),
and one model per redshift (the same training box at that redshift only).

`score` evaluates every model on each of the three realization-2 boxes (the whole box,
`keras_cnn.inference.evaluate_model`; a conditioned model gets each box's own value) and
prints one JSON line per (model, box) and a Markdown table: R^2, mean predicted x_HII
and ionized-map accuracy per box.
"""

import json
import os

from absl import app
from absl import flags

from keras_cnn import benchmarks

FLAGS = flags.FLAGS
flags.DEFINE_string("out", None, "Folder of the snapshots (make_data writes it).")
flags.DEFINE_list(
    "models", [], "score: label=path of each .keras model, in table order (e.g. "
    "none=runs/none/model.keras).")
flags.DEFINE_integer("n_cells", 64, "make_data: box side.")

# (redshift, mean x_HII) of the history's three points.
POINTS = ((9.0, 0.3), (8.397, 0.5), (7.5, 0.7))
OUTER = (POINTS[0], POINTS[2])
FOLDERS = {
    "train": (0, OUTER),
    "validation": (1, OUTER),
    "test": (2, (POINTS[1],)),
    "test_seen": (2, OUTER)
}


def make_data(out: str, n_cells: int) -> None:
  from keras_cnn.data import simulate
  from keras_cnn.data import snapshot as snapshot_lib

  for folder, (seed, points) in FOLDERS.items():
    for redshift, mean_xhii in points:
      box = simulate.simulate_snapshot(n_cells, seed=seed, redshift=redshift, mean_xhii=mean_xhii)
      snapshot_lib.save_snapshot(box, os.path.join(out, folder))
  runs = os.path.join(out, "runs")
  both = (f"--train_dirs={out}/train --validation_dirs={out}/validation --test_dirs={out}/test "
          "--redshift=all")
  print("Snapshots written. Train the models to compare (one after the other, machine to "
        "itself):")
  for kind in ("none", "redshift", "mean_xhii"):
    print(f"python -m keras_cnn.train --workdir={runs}/{kind} {both} --conditioning={kind}")
  for redshift, _ in OUTER:  # the same training box as above, at one redshift only
    print(f"python -m keras_cnn.train --workdir={runs}/z{redshift} --train_dirs={out}/train "
          f"--validation_dirs={out}/validation --test_dirs={out}/test_seen "
          f"--redshift={redshift}")
  print("(one model per redshift at z = 8.397: the shipped "
        "saved_models/default_r15_synthetic64.keras, trained on the built-in data there)")


def score(out: str, models) -> None:
  from keras_cnn.data import snapshot as snapshot_lib

  boxes = []
  for redshift, _ in POINTS:
    folder = "test" if redshift == POINTS[1][0] else "test_seen"
    boxes.append(snapshot_lib.load_snapshot(os.path.join(out, folder), redshift))
  rows = []
  for label, model in benchmarks.labelled_models(models):
    cells = []
    for box in boxes:
      metrics = benchmarks.score_box(model, box)
      true_mean = float(box.x_hii.mean())
      pred_mean = metrics["mean_xhii_pred"]
      line = {
          "model": label,
          "redshift": box.redshift,
          "mean_xhii_true": round(true_mean, 4),
          "mean_xhii_pred": round(pred_mean, 4),
          "r2": round(metrics["r2"], 4),
          "ionized_accuracy": round(metrics["ionized_accuracy"], 4)
      }
      print(json.dumps(line), flush=True)
      cells.append(f"{line['r2']:.3f} / {pred_mean:.3f} / {line['ionized_accuracy']:.3f}")
    rows.append(f"| {label} | " + " | ".join(cells) + " |")
  header = " | ".join(f"z = {z:g} (x_HII {x})" for z, x in POINTS)
  print(f"\n| model | {header} |\n|---|---|---|---|")
  print("\n".join(rows))
  print("(each cell: R^2 / mean predicted x_HII / ionized-map accuracy)")


def main(argv) -> None:
  if len(argv) != 2 or argv[1] not in ("make_data", "score"):
    raise app.UsageError("usage: history --out=DIR make_data | score --models=label=path,...")
  if not FLAGS.out:
    raise app.UsageError("--out is required")
  if argv[1] == "make_data":
    make_data(FLAGS.out, FLAGS.n_cells)
  else:
    score(FLAGS.out, FLAGS.models)


if __name__ == "__main__":
  app.run(main)

"""How far the mean x_HII of a test box can be predicted from the training boxes alone.

  python -m keras_cnn.benchmarks.efficiency_spread --train_boxes=1,8 --score_seeds=1,2,3
  python -m keras_cnn.benchmarks.efficiency_spread --synthetic_sources=photons

The built-in simulator solves the ionizing efficiency zeta of each realization so that
its mean x_HII is exactly --mean_xhii; zeta differs from box to box (the realized
source counts and density differ), and nothing in a voxel's neighbourhood tells a
network which zeta its box has. A network that learned the simulator's rule perfectly
from N training boxes knows one efficiency, about the one that gives the N boxes
together their mean (`simulate.solve_efficiency` on the pooled boxes). This applies that
rule, with that efficiency, to the test box of each --score_seeds realization (as
`evaluate --data_seed=S --split=test` scores it) and reports the error of its mean x_HII
and its R^2: a floor that only more training boxes lower, not a better network.

One JSON object per (training box count, test seed): `train_boxes`, `score_seed`,
`zeta_train`, `zeta_test`, `mean_xhii_error`, `r2`; then one per count with the mean
absolute error over the seeds.
"""

import json

from absl import app
from absl import flags

FLAGS = flags.FLAGS
flags.DEFINE_list("train_boxes", ["1", "8"], "Training realization counts to compare.")
flags.DEFINE_list("score_seeds", ["1", "2", "3"], "--data_seed of the test boxes scored.")
flags.DEFINE_integer("data_seed", 0, "--data_seed of the training boxes.")
flags.DEFINE_integer("n_cells", 64, "Box side.")
flags.DEFINE_float("mean_xhii", 0.5, "Mean ionized fraction of every box.")
flags.DEFINE_enum(
    "synthetic_sources", "counts", ["counts", "photons"],
    "What the boxes' n_src holds, as `train --synthetic_sources` (photons: the "
    "efficiency is in the sources, and the floor vanishes).")


def main(argv) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  import numpy as np

  from keras_cnn import conventions
  from keras_cnn.data import simulate

  def rule(seed):
    """(max_ratio, cell_ratio, x_hii) of the realization of `seed`, as the simulator has them."""
    box = simulate.simulate_snapshot(FLAGS.n_cells, seed=seed, mean_xhii=FLAGS.mean_xhii,
                                     sources=FLAGS.synthetic_sources)
    max_ratio, cell_ratio = simulate.ionizing_ratio(box.rho, box.n_src, conventions.CELL_SIZE_MPC,
                                                    mfp_mpc=50.0)
    return max_ratio, cell_ratio, box.x_hii

  counts = sorted(int(n) for n in FLAGS.train_boxes)
  train_seeds = simulate.split_seeds(FLAGS.data_seed, num_train=max(counts))["train"]
  train = [rule(seed) for seed in train_seeds]
  tests = {int(s): rule(simulate.split_seeds(int(s))["test"][0]) for s in FLAGS.score_seeds}
  for count in counts:
    pooled = [np.concatenate([box[i].ravel() for box in train[:count]]) for i in (0, 1)]
    zeta = simulate.solve_efficiency(*pooled, FLAGS.mean_xhii)
    errors = []
    for seed, (max_ratio, cell_ratio, truth) in tests.items():
      pred = simulate.ionized_fraction(max_ratio, cell_ratio, zeta)
      errors.append(float(pred.mean() - truth.mean()))
      r2 = 1.0 - float(np.mean((pred - truth) ** 2) / np.var(truth))
      print(
          json.dumps({
              "train_boxes": count,
              "score_seed": seed,
              "zeta_train": round(zeta, 5),
              "zeta_test": round(simulate.solve_efficiency(max_ratio, cell_ratio, FLAGS.mean_xhii),
                                 5),
              "mean_xhii_error": round(errors[-1], 4),
              "r2": round(r2, 4),
          }), flush=True)
    print(
        json.dumps({
            "train_boxes": count,
            "mean_abs_mean_xhii_error": round(float(np.mean(np.abs(errors))), 4)
        }), flush=True)


if __name__ == "__main__":
  app.run(main)

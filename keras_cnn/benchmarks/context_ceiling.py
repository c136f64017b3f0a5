"""How much of the simulator's ionization rule a neighbourhood of radius r can see.

  python -m keras_cnn.benchmarks.context_ceiling

On the synthetic test realization (64^3, seed 0) the excursion-set rule is applied again
with the same efficiency but without the spheres larger than r cells; its R^2 against
the true x_HII bounds what any model limited to a radius-r neighbourhood misses through
the missing context alone. One JSON object per radius: `radius_cells`, `spheres_kept`,
`spheres_total`, `r2`.
"""

import json

from absl import app
from absl import flags

from keras_cnn.data import simulate
from keras_cnn import conventions

FLAGS = flags.FLAGS
flags.DEFINE_list("radii", ["8", "12", "15", "19", "23"], "Neighbourhood radii in cells.")
flags.DEFINE_integer("n_cells", 64, "Box side.")
flags.DEFINE_integer("data_seed", 0, "Seed of the synthetic splits (the test box is scored).")


def main(argv) -> None:
  del argv
  import numpy as np

  cell, mfp = conventions.CELL_SIZE_MPC, 50.0  # the simulator's defaults
  box = simulate.synthetic_splits(n_cells=FLAGS.n_cells, seed=FLAGS.data_seed)["test"][0]
  full, cell_ratio = simulate.ionizing_ratio(box.rho, box.n_src, cell, mfp)
  zeta = simulate.solve_efficiency(full, cell_ratio, float(box.x_hii.mean()))
  radii = simulate.smoothing_radii(cell, mfp)
  for radius in (int(r) for r in FLAGS.radii):
    ratio, _ = simulate.ionizing_ratio(box.rho, box.n_src, cell, mfp, max_sphere_mpc=radius * cell)
    pred = simulate.ionized_fraction(ratio, cell_ratio, zeta)
    r2 = 1.0 - float(np.mean((pred - box.x_hii) ** 2) / np.var(box.x_hii))
    print(
        json.dumps({
            "radius_cells": radius,
            "spheres_kept": int((radii <= radius * cell).sum()),
            "spheres_total": len(radii),
            "r2": round(r2, 4)
        }), flush=True)


if __name__ == "__main__":
  app.run(main)

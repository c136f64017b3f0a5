"""Is the simulator's x_HII non-local? Local vs neighbourhood predictors, out of sample.

Fits on one realization and scores (R^2) on an independent one (the "train" and
"test" seeds of `synthetic_splits`):

- local: the binned conditional mean E[x_HII | overdensity, n_src] of the centre
  voxel alone (overdensity quantile bins x source-count bins): the best predictor
  that only sees the voxel's own two values, up to binning.
- neighbourhood: ridge regression, with all pairwise products, on the two fields
  top-hat smoothed at a few radii (plus the centre values). No neural network.
- neighbourhood_budget: binned conditional mean of the largest sources/gas ratio over
  the same spheres (the photon budget an excursion-set argument would use).

It also measures whether log1p on the sources helps a simple (linear) model, local
and multiscale; the model applies the same transform (`keras_cnn.model.SourceTransform`).

    python -m keras_cnn.benchmarks.nonlocality [--n_cells=64]

prints one JSON line: n_cells, local_r2, neighbourhood_r2, and what they used.
"""

import json
import time
from typing import Callable, Sequence

import numpy as np

from keras_cnn.data import simulate
from keras_cnn.data.snapshot import Snapshot, overdensity

DEFAULT_RADII_CELLS = (1, 2, 4, 8, 16)


def r2_score(y_true: np.ndarray, y_pred: np.ndarray) -> float:
  """Coefficient of determination, 1 - SSE / SST."""
  y_true = np.asarray(y_true, dtype=np.float64).ravel()
  y_pred = np.asarray(y_pred, dtype=np.float64).ravel()
  return float(1.0 - np.sum((y_true - y_pred) ** 2) / np.sum((y_true - y_true.mean()) ** 2))


def binned_conditional_mean(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray,
                            num_bins: int) -> np.ndarray:
  """Predicts the train mean of y in the quantile bin of each column's joint cell.

  Args:
    train_x: (n, d) features; each column gets `num_bins` quantile bins (fewer if
      the column takes fewer distinct values, as source counts do).
    train_y: (n,) targets.
    test_x: (m, d) features to predict.
    num_bins: bins per column.

  Returns:
    (m,) predictions; empty joint cells fall back to the global train mean.
  """
  train_index = np.zeros(len(train_x), dtype=np.int64)
  test_index = np.zeros(len(test_x), dtype=np.int64)
  for column in range(train_x.shape[1]):
    edges = np.unique(np.quantile(train_x[:, column], np.linspace(0, 1, num_bins + 1)[1:-1]))
    train_index = train_index * (len(edges) + 1) + np.digitize(train_x[:, column], edges)
    test_index = test_index * (len(edges) + 1) + np.digitize(test_x[:, column], edges)
  cells, inverse = np.unique(train_index, return_inverse=True)
  sums = np.bincount(inverse, weights=train_y)
  counts = np.bincount(inverse)
  position = np.clip(np.searchsorted(cells, test_index), 0, len(cells) - 1)
  found = cells[position] == test_index
  return np.where(found, sums[position] / counts[position], float(np.mean(train_y)))


def ridge_predict(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, l2: float = 1e-3,
                  quadratic: bool = False) -> np.ndarray:
  """Standardized ridge regression (optionally with all pairwise products), clipped to [0, 1]."""
  if quadratic:
    rows, cols = np.triu_indices(train_x.shape[1])
    train_x = np.concatenate([train_x, train_x[:, rows] * train_x[:, cols]], axis=1)
    test_x = np.concatenate([test_x, test_x[:, rows] * test_x[:, cols]], axis=1)
  mean = train_x.mean(axis=0)
  scale = train_x.std(axis=0) + 1e-12
  design = np.c_[np.ones(len(train_x)), (train_x - mean) / scale]
  test_design = np.c_[np.ones(len(test_x)), (test_x - mean) / scale]
  gram = design.T @ design + l2 * len(design) * np.eye(design.shape[1])
  weights = np.linalg.solve(gram, design.T @ train_y)
  return np.clip(test_design @ weights, 0.0, 1.0)


def voxel_features(snapshot: Snapshot, radii_cells: Sequence[float],
                   source_transform: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
  """(N, 2 + 2 len(radii)): centre overdensity and sources, then both smoothed per radius."""
  delta = overdensity(snapshot.rho)
  sources = source_transform(snapshot.n_src).astype(np.float32)
  columns = [delta, sources]
  for radius in radii_cells:
    columns += [simulate.tophat_smooth(delta, radius), simulate.tophat_smooth(sources, radius)]
  return np.stack([c.ravel() for c in columns], axis=1).astype(np.float64)


def photon_budget(snapshot: Snapshot, radii_cells: Sequence[float]) -> np.ndarray:
  """max over the centre voxel and each sphere of sources / gas (both per mean cell)."""
  gas = (snapshot.rho / snapshot.rho.mean(dtype=np.float64)).astype(np.float32)
  floor = np.float32(1e-3)
  budget = snapshot.n_src / np.maximum(gas, floor)
  for radius in radii_cells:
    smooth_gas = np.maximum(simulate.tophat_smooth(gas, radius), floor)
    budget = np.maximum(budget, simulate.tophat_smooth(snapshot.n_src, radius) / smooth_gas)
  return budget.ravel()


def run_benchmark(n_cells: int = 64, seed: int = 0,
                  radii_cells: Sequence[float] = DEFAULT_RADII_CELLS, train_voxels: int = 65536,
                  local_bins: int = 32, budget_bins: int = 64, **simulate_kwargs) -> dict:
  """Scores local and neighbourhood predictors on an independent realization.

  Args:
    n_cells: box side of both realizations.
    seed: master seed (the train and test realizations of `synthetic_splits`).
    radii_cells: top-hat radii (in cells) of the neighbourhood features.
    train_voxels: random train voxels for the ridge fits (keeps the solve fast).
    local_bins: overdensity bins of the local conditional mean.
    budget_bins: bins of the photon-budget conditional mean.
    **simulate_kwargs: forwarded to `simulate_snapshot`.

  Returns:
    The benchmark record (see the module docstring).
  """
  start = time.perf_counter()
  seeds = simulate.split_seeds(seed, num_train=1, num_validation=0, num_test=1)
  train = simulate.simulate_snapshot(n_cells, seed=seeds["train"][0], **simulate_kwargs)
  test = simulate.simulate_snapshot(n_cells, seed=seeds["test"][0], **simulate_kwargs)
  simulate_seconds = time.perf_counter() - start
  train_y = train.x_hii.ravel().astype(np.float64)
  test_y = test.x_hii.ravel().astype(np.float64)
  subset = np.random.default_rng(seed).permutation(train_y.size)[:train_voxels]

  identity = lambda x: np.asarray(x, dtype=np.float32)
  features = {
      (name, split): voxel_features(snap, radii_cells, transform)
      for name, transform in (("raw", identity), ("log1p", np.log1p))
      for split, snap in (("train", train), ("test", test))
  }
  local = slice(0, 2)

  local_pred = binned_conditional_mean(features["raw", "train"][:, local], train_y,
                                       features["raw", "test"][:, local], local_bins)
  neighbourhood_pred = ridge_predict(features["log1p", "train"][subset], train_y[subset],
                                     features["log1p", "test"], quadratic=True)
  budget_pred = binned_conditional_mean(
      photon_budget(train, radii_cells)[:, None], train_y,
      photon_budget(test, radii_cells)[:, None], budget_bins)

  linear = {}
  for name in ("raw", "log1p"):
    for scope, columns in (("local", local), ("multiscale", slice(None))):
      linear[f"{scope}_linear_r2_{name}"] = round(
          r2_score(
              test_y,
              ridge_predict(features[name, "train"][subset][:, columns], train_y[subset],
                            features[name, "test"][:, columns])), 4)

  return {
      "n_cells": n_cells,
      "local_r2": round(r2_score(test_y, local_pred), 4),
      "neighbourhood_r2": round(r2_score(test_y, neighbourhood_pred), 4),
      "neighbourhood_budget_r2": round(r2_score(test_y, budget_pred), 4),
      "local_model": f"binned E[x_HII | overdensity ({local_bins} quantile bins), n_src "
                     "(count bins)] of the centre voxel",
      "neighbourhood_model": "ridge with pairwise products on centre + top-hat-smoothed "
                             "overdensity and log1p(n_src)",
      "neighbourhood_budget_model": f"binned ({budget_bins}) E[x_HII | max over spheres of "
                                    "sources/gas]",
      "radii_cells": list(radii_cells),
      **linear,
      "train_seed": seeds["train"][0],
      "test_seed": seeds["test"][0],
      "mean_xhii_test": round(float(test_y.mean()), 4),
      "train_voxels_ridge": int(min(train_voxels, train_y.size)),
      "simulate_seconds": round(simulate_seconds, 2),
      "seconds": round(time.perf_counter() - start, 2),
  }


def main(argv):
  from absl import app, flags  # local: the library above needs no absl
  FLAGS = flags.FLAGS
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  record = run_benchmark(n_cells=FLAGS.n_cells, seed=FLAGS.seed,
                         radii_cells=[float(r) for r in FLAGS.radii_cells],
                         train_voxels=FLAGS.train_voxels, mean_xhii=FLAGS.mean_xhii,
                         mfp_mpc=FLAGS.mfp_mpc, redshift=FLAGS.redshift)
  print(json.dumps(record), flush=True)


if __name__ == "__main__":
  from absl import app, flags

  flags.DEFINE_integer("n_cells", 64, "Box side (cells) of the train and test realizations.",
                       lower_bound=8)
  flags.DEFINE_integer("seed", 0, "Master seed of the two realizations.")
  flags.DEFINE_list("radii_cells", [str(r) for r in DEFAULT_RADII_CELLS],
                    "Top-hat radii (cells) of the neighbourhood features.")
  flags.DEFINE_integer("train_voxels", 65536, "Train voxels for the ridge fits.", lower_bound=100)
  flags.DEFINE_float("mean_xhii", 0.5, "Mean ionized fraction of the boxes.", lower_bound=0.01,
                     upper_bound=0.99)
  flags.DEFINE_float("mfp_mpc", 50.0, "Photon mean free path (cMpc).", lower_bound=0.0)
  flags.DEFINE_float("redshift", 8.397, "Snapshot redshift.", lower_bound=0.0)
  app.run(main)

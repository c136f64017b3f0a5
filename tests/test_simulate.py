"""The built-in simulator: determinism, the mean-x_HII solve, sources, shapes, speed."""

import time

import numpy as np
import pytest

from keras_cnn import conventions
from keras_cnn.benchmarks import nonlocality
from keras_cnn.data import simulate
from keras_cnn.data.snapshot import overdensity, validate_snapshot

FIELDS = ("rho", "n_src", "x_hii")


@pytest.mark.parametrize("n_cells", [16, (12, 16, 20)])
def test_same_seed_gives_identical_bytes(n_cells):
  first = simulate.simulate_snapshot(n_cells, seed=7)
  second = simulate.simulate_snapshot(n_cells, seed=7)
  for field in FIELDS:
    assert getattr(first, field).dtype == np.float32
    assert getattr(first, field).tobytes() == getattr(second, field).tobytes(), field


def test_different_seeds_give_different_boxes():
  first = simulate.simulate_snapshot(16, seed=1)
  second = simulate.simulate_snapshot(16, seed=2)
  for field in ("rho", "n_src"):
    assert not np.array_equal(getattr(first, field), getattr(second, field)), field


@pytest.mark.parametrize("mean_xhii", [0.1, 0.5, 0.9])
def test_mean_xhii_is_hit_within_001(mean_xhii):
  snap = simulate.simulate_snapshot(32, seed=3, mean_xhii=mean_xhii)
  assert abs(float(snap.x_hii.mean()) - mean_xhii) <= 0.01
  assert snap.x_hii.min() >= 0.0 and snap.x_hii.max() <= 1.0


def test_unreachable_mean_xhii_raises():
  # A mean free path shorter than a cell leaves only the source cells to ionize.
  snap = simulate.simulate_snapshot(16, seed=3)
  with pytest.raises(ValueError, match="cannot reach mean x_HII 0.9"):
    simulate.ionize(snap.rho, snap.n_src, mean_xhii=0.9, mfp_mpc=1.0)
  with pytest.raises(ValueError, match=r"mean_xhii must be in \(0, 1\)"):
    simulate.simulate_snapshot(16, mean_xhii=1.0)


def test_sources_are_sparse_counts_on_density_peaks():
  snap = simulate.simulate_snapshot(32, seed=4)
  n_src = snap.n_src
  assert (n_src >= 0).all()
  assert np.array_equal(n_src, np.round(n_src))
  zero_fraction = float((n_src == 0).mean())
  assert 0.6 < zero_fraction < 0.99
  delta = overdensity(snap.rho)
  assert delta[n_src > 0].mean() > delta.mean() + 0.3


def test_in_photons_one_threshold_ionizes_every_realization():
  """sources="photons": the counts times the box's own efficiency, the rest unchanged; the
  simulator's rule with efficiency 1 then gives every box's x_HII, while in counts each
  realization needs its own efficiency (what a model trained on counts cannot see)."""
  efficiencies = []
  for seed in (1, 2):
    counts = simulate.simulate_snapshot(32, seed=seed)
    photons = simulate.simulate_snapshot(32, seed=seed, sources="photons")
    assert np.array_equal(counts.x_hii, photons.x_hii) and np.array_equal(counts.rho, photons.rho)
    ratio = photons.n_src[counts.n_src > 0] / counts.n_src[counts.n_src > 0]
    assert np.allclose(ratio, ratio[0], rtol=1e-6)
    efficiencies.append(float(ratio[0]))
    max_ratio, cell_ratio = simulate.ionizing_ratio(photons.rho, photons.n_src,
                                                    conventions.CELL_SIZE_MPC, 50.0)
    assert np.array_equal(simulate.ionized_fraction(max_ratio, cell_ratio, 1.0), photons.x_hii)
  assert abs(efficiencies[0] / efficiencies[1] - 1) > 1e-3
  with pytest.raises(ValueError, match="sources must be one of"):
    simulate.simulate_snapshot(16, sources="luminosity")


def test_density_is_physical_and_grows_with_time():
  early = simulate.simulate_snapshot(32, seed=5, redshift=10.11)
  late = simulate.simulate_snapshot(32, seed=5, redshift=6.905)
  assert (early.rho > 0).all()
  mean = simulate.mean_baryon_density(10.11)
  assert 3e-28 < mean < 6e-28  # g/cm^3, the mean baryon density at z ~ 10
  assert early.rho.mean() == pytest.approx(mean, rel=0.05)
  assert overdensity(late.rho).std() > 1.2 * overdensity(early.rho).std()
  assert simulate.growth_factor(0.0) == pytest.approx(1.0)
  assert 0.13 < simulate.growth_factor(8.397) < 0.14


def test_non_cubic_box():
  snap = simulate.simulate_snapshot((16, 24, 32), seed=6)
  for field in FIELDS:
    assert getattr(snap, field).shape == (16, 24, 32)
  validate_snapshot(snap, radius=7)
  assert abs(float(snap.x_hii.mean()) - 0.5) <= 0.01


@pytest.mark.parametrize("n_cells", [0, 1, (16, 16), (16, 16, 16, 16)])
def test_bad_box_shape(n_cells):
  with pytest.raises(ValueError, match="n_cells must be"):
    simulate.simulate_snapshot(n_cells)


def test_synthetic_splits_are_independent_valid_realizations():
  splits = simulate.synthetic_splits(16, seed=0, num_train=2)
  assert {k: len(v) for k, v in splits.items()} == {"train": 2, "validation": 1, "test": 1}
  boxes = [s.rho.tobytes() for snaps in splits.values() for s in snaps]
  assert len(set(boxes)) == 4
  for snaps in splits.values():
    for snap in snaps:
      validate_snapshot(snap, radius=4)
  again = simulate.synthetic_splits(16, seed=0, num_train=2)
  assert again["test"][0].x_hii.tobytes() == splits["test"][0].x_hii.tobytes()
  other = simulate.synthetic_splits(16, seed=1, num_train=2)
  assert other["test"][0].rho.tobytes() != splits["test"][0].rho.tobytes()


def test_x_hii_is_not_a_function_of_the_centre_voxel():
  record = nonlocality.run_benchmark(n_cells=32, seed=0, train_voxels=8192)
  assert record["local_r2"] < 0.4
  assert record["neighbourhood_r2"] > record["local_r2"] + 0.2
  assert record["n_cells"] == 32


@pytest.mark.slow  # a wall-clock bound: a benchmark, not part of the default run
def test_64_cubed_is_fast():
  start = time.perf_counter()
  simulate.simulate_snapshot(64, seed=0)
  assert time.perf_counter() - start < 10.0


@pytest.mark.slow
def test_128_cubed_time_and_memory():
  import tracemalloc
  tracemalloc.start()
  start = time.perf_counter()
  snap = simulate.simulate_snapshot(128, seed=0)
  seconds = time.perf_counter() - start
  _, peak = tracemalloc.get_traced_memory()
  tracemalloc.stop()
  assert snap.shape == (128, 128, 128)
  assert seconds < 60.0
  assert peak < 4 * 2 ** 30

"""Physics scores of x_HII maps: ionized-map accuracy, bubble sizes, dT_b, k-limited scores."""

import json
import math

import numpy as np
import pytest

from keras_cnn import metrics

N = 32  # side of the geometric test boxes, in cells


def _sphere(radius_cells: float, n: int = N) -> np.ndarray:
  """x_HII = 1 in a ball of `radius_cells` around the centre cell of an n^3 box, else 0."""
  offsets = np.indices((n, n, n)) - n // 2
  return (np.sqrt((offsets ** 2).sum(axis=0)) <= radius_cells).astype(np.float64)


def _smooth_field(n: int, seed: int) -> np.ndarray:
  """A periodic random x_HII map with bubbles a few cells across."""
  rng = np.random.default_rng(seed)
  k = np.sqrt(sum(g ** 2 for g in np.meshgrid(*[np.fft.fftfreq(n)] * 3, indexing="ij")))
  field = np.fft.ifftn(np.fft.fftn(rng.standard_normal((n, n, n))) * np.exp(-(k * 12) ** 2))
  field = field.real / field.real.std()
  return 1.0 / (1.0 + np.exp(-4.0 * field))


# -- ionized map --------------------------------------------------------------------------


def test_ionized_accuracy_on_a_hand_computed_case():
  scores = metrics.ionized_map_scores([0.1, 0.6, 0.9, 0.4], [0.2, 0.7, 0.3, 0.51])
  assert scores == pytest.approx({
      "ionized_accuracy": 0.5,
      "ionized_fraction_true": 0.5,
      "ionized_fraction_pred": 0.5
  })
  with pytest.raises(ValueError, match="y_true has 2 values but y_pred has 1"):
    metrics.ionized_map_scores([0.1, 0.2], [0.3])


# -- bubble size distribution -------------------------------------------------------------


def test_rays_in_a_slab_follow_the_slab_law():
  """Ionized slab of thickness T: a ray from height u over a face at cos(angle) mu to the
  normal runs u / mu, so P(length <= s) = s / 2T for s <= T and 1 - T / 2s beyond; the
  median ray is T long and R dP/dR peaks at R = T."""
  thickness, cell = 8, 1.5
  slab = np.zeros((N, N, N))
  slab[3:3 + thickness] = 1.0
  lengths = metrics.ray_lengths(slab > 0.5, cell, num_rays=50_000, seed=1)
  assert lengths.shape == (50_000,) and lengths.min() >= 0.5 * cell
  length_t = thickness * cell
  for s, expected in ((0.5 * length_t, 0.25), (length_t, 0.5), (2 * length_t, 0.75)):
    assert np.mean(lengths <= s) == pytest.approx(expected, abs=0.01), s
  # rays nearly parallel to the slab pass the longest box side and stop there
  assert np.isinf(lengths).mean() == pytest.approx(length_t / (2 * N * cell), abs=0.01)
  bsd = metrics.bubble_size_distribution(slab, cell, num_rays=50_000, method="numpy")
  assert metrics.bsd_peak_radius(bsd) == pytest.approx(length_t, rel=0.1)


def test_rays_in_a_sphere_stay_inside_its_diameter():
  radius = 6
  sphere = _sphere(radius)
  lengths = metrics.ray_lengths(sphere > 0.5, 1.0, num_rays=50_000, seed=2)
  assert np.isfinite(lengths).all()
  assert lengths.max() <= 2 * radius + math.sqrt(3)  # a diameter, plus the voxel steps
  # from a uniform point of a ball along a random direction the mean distance is 3R/4
  assert lengths.mean() == pytest.approx(0.75 * radius, rel=0.05)
  bsd = metrics.bubble_size_distribution(sphere, 2.0, num_rays=50_000, method="numpy")
  assert bsd["truncated_fraction"] == pytest.approx(0.0, abs=1e-9)
  assert bsd["probability"].sum() == pytest.approx(1.0)
  assert bsd["probability"][bsd["edges"][:-1] > 2.0 * (2 * radius + 2)].sum() == 0.0
  assert 0.5 * radius * 2.0 < metrics.bsd_peak_radius(bsd) < 2 * radius * 2.0  # cMpc


def test_rays_wrap_around_the_periodic_box():
  """A ball cut by the box faces is one bubble: its rays are as long as the centred one's."""
  sphere = _sphere(5)
  cut = np.roll(sphere, (N // 2, N // 2, N // 2), axis=(0, 1, 2))
  centred_bsd, cut_bsd = (metrics.bubble_size_distribution(m, 1.0, num_rays=50_000, method="numpy")
                          for m in (sphere, cut))
  assert metrics.bsd_distance(centred_bsd, cut_bsd) < 0.01
  lengths = metrics.ray_lengths(cut > 0.5, 1.0, num_rays=20_000, seed=3)
  assert lengths.max() <= 2 * 5 + math.sqrt(3)
  assert lengths.mean() == pytest.approx(0.75 * 5, rel=0.05)


def test_bubble_size_distribution_edge_cases_and_seeds():
  neutral = np.zeros((8, 8, 8))
  bsd = metrics.bubble_size_distribution(neutral, 1.0, num_rays=100, method="numpy")
  assert not bsd["probability"].any() and math.isnan(bsd["truncated_fraction"])
  assert metrics.bsd_peak_radius(bsd) is None
  ionized = metrics.bubble_size_distribution(np.ones((8, 8, 8)), 1.0, num_rays=100, method="numpy")
  assert ionized["truncated_fraction"] == 1.0 and metrics.bsd_peak_radius(ionized) is None
  assert metrics.bsd_distance(bsd, ionized) is None
  field = _smooth_field(16, seed=4)
  first, again, other = (metrics.bubble_size_distribution(field, 2.0, num_rays=2000, seed=s,
                                                          method="numpy") for s in (0, 0, 1))
  np.testing.assert_array_equal(first["probability"], again["probability"])
  assert not np.array_equal(first["probability"], other["probability"])
  assert metrics.bsd_distance(first, again) == 0.0
  assert 0.0 < metrics.bsd_distance(first, other) < 0.1
  with pytest.raises(ValueError, match="method must be one of"):
    metrics.bubble_size_distribution(field, 2.0, method="fast")


def test_tools21cm_and_numpy_bubble_sizes_agree_on_a_centred_sphere():
  """tools21cm's mfp stops rays at the box faces and loses those shorter than one step;
  a ball well inside the box has the same peak either way."""
  if not metrics.tools21cm_available():
    pytest.skip("tools21cm (extra 'astro') is not installed")
  sphere = _sphere(6)
  ours = metrics.bubble_size_distribution(sphere, 2.0, num_rays=50_000, method="numpy")
  theirs = metrics.bubble_size_distribution(sphere, 2.0, num_rays=50_000, method="tools21cm")
  assert theirs["method"] == "tools21cm" and ours["method"] == "numpy"
  np.testing.assert_array_equal(theirs["edges"], ours["edges"])
  assert metrics.bsd_peak_radius(theirs) == pytest.approx(metrics.bsd_peak_radius(ours), rel=0.1)
  assert theirs["probability"][theirs["edges"][:-1] > 2.0 * 14].sum() == 0.0


# -- brightness temperature ----------------------------------------------------------------


def test_brightness_temperature_follows_the_formula():
  x_hii = np.array([[[0.0, 0.5, 1.0, 0.25]]])
  delta = np.array([[[0.0, 1.0, 3.0, -0.5]]])
  dtb = metrics.brightness_temperature(x_hii, delta, 9.0, method="numpy")
  np.testing.assert_allclose(dtb, [[[27.0, 27.0, 0.0, 27.0 * 0.75 * 0.5]]])
  at_z39 = metrics.brightness_temperature(x_hii, delta, 39.0, method="numpy")
  np.testing.assert_allclose(at_z39, 2.0 * dtb)
  with pytest.raises(ValueError, match="one shape"):
    metrics.brightness_temperature(x_hii, delta[..., :2], 9.0)


def test_tools21cm_brightness_temperature_differs_by_a_constant():
  if not metrics.tools21cm_available():
    pytest.skip("tools21cm (extra 'astro') is not installed")
  rng = np.random.default_rng(5)
  x_hii, delta = rng.random((6, 6, 6)), rng.lognormal(0.0, 0.5, (6, 6, 6)) - 1.0
  x_hii[0] = 1.0
  ours = metrics.brightness_temperature(x_hii, delta, 8.0, method="numpy")
  theirs = metrics.brightness_temperature(x_hii, delta, 8.0, method="tools21cm")
  assert not theirs[0].any()
  ratio = theirs[1:] / ours[1:]
  np.testing.assert_allclose(ratio, ratio.flat[0], rtol=1e-9)
  assert 0.5 < ratio.flat[0] < 2.0


# -- scores of whole maps ------------------------------------------------------------------


def test_spectrum_scores_use_only_large_scales():
  spectrum = {
      "k": np.array([0.1, 0.4, 0.5, 0.6]),
      "r_k": np.array([0.99, 0.9, np.nan, 0.1]),
      "pk_true": np.array([1.0, 1.0, 0.0, 1.0]),
      "pk_pred": np.array([1.05, 0.8, 1.0, 3.0])
  }
  assert metrics.spectrum_scores(spectrum) == pytest.approx({
      "r_k_min": 0.9,
      "pk_ratio_max_dev": 0.2
  })
  assert metrics.spectrum_scores(spectrum, k_max=0.05) == {
      "r_k_min": None,
      "pk_ratio_max_dev": None
  }


def _box(seed=6, n=16):
  rng = np.random.default_rng(seed)
  return _smooth_field(n, seed), rng.lognormal(0.0, 0.5, (n, n, n)) - 1.0


def test_a_perfect_prediction_scores_perfectly():
  truth, delta = _box()
  comparison = metrics.compare_maps(truth, truth.copy(), delta, 8.0, 2.381, method="numpy",
                                    num_rays=5000)
  scores = comparison.scores
  assert set(scores) == set(metrics.MAP_SCORE_KEYS)
  assert scores["ionized_accuracy"] == 1.0
  assert scores["ionized_fraction_true"] == scores["ionized_fraction_pred"] > 0.0
  for field in ("xhii", "dtb"):
    assert scores[f"{field}_r_k_min"] == pytest.approx(1.0)
    assert scores[f"{field}_pk_ratio_max_dev"] == pytest.approx(0.0, abs=1e-12)
  assert scores["dtb_mean_true_mk"] == scores["dtb_mean_pred_mk"] > 0.0
  assert scores["bsd_peak_ratio"] == 1.0 and scores["bsd_ks_distance"] == 0.0
  assert scores["bsd_peak_radius_true_mpc"] > 0.0
  assert scores["score_k_max_per_mpc"] == metrics.SCORE_K_MAX
  assert scores["bsd_method"] == scores["dtb_method"] == "numpy"
  assert (comparison.xhii_spectrum["k"] <= metrics.SCORE_K_MAX).any()
  json.dumps(scores, allow_nan=False)


def test_a_shuffled_prediction_loses_the_structure():
  truth, delta = _box()
  shuffled = np.random.default_rng(7).permutation(truth.ravel()).reshape(truth.shape)
  scores = metrics.map_scores(truth, shuffled, delta, 8.0, 2.381, method="numpy", num_rays=5000)
  assert scores["ionized_fraction_pred"] == scores["ionized_fraction_true"]
  fraction = scores["ionized_fraction_true"]
  # voxels agree by chance: both ionized or both neutral
  assert scores["ionized_accuracy"] == pytest.approx(fraction ** 2 + (1 - fraction) ** 2, abs=0.03)
  assert scores["xhii_r_k_min"] < 0.3 and scores["dtb_r_k_min"] < 0.3
  assert scores["xhii_pk_ratio_max_dev"] > 0.5
  assert scores["bsd_peak_ratio"] < 0.7 and scores["bsd_ks_distance"] > 0.2


def test_scores_stay_json_safe_for_constant_maps():
  truth, delta = _box(n=12)
  scores = metrics.map_scores(truth, np.full(truth.shape, 0.2), delta, 8.0, 2.381, method="numpy",
                              num_rays=1000)
  assert scores["xhii_r_k_min"] is None and scores["bsd_peak_radius_pred_mpc"] is None
  assert scores["bsd_peak_ratio"] is None and scores["bsd_ks_distance"] is None
  assert scores["ionized_fraction_pred"] == 0.0
  json.dumps(scores, allow_nan=False)


def test_boxes_aggregate_to_the_worst_target_score_and_mean_others():
  first = dict.fromkeys(metrics.MAP_SCORE_KEYS)
  first.update(xhii_r_k_min=0.9, xhii_pk_ratio_max_dev=0.05, bsd_peak_ratio=1.2, bsd_method="numpy")
  second = dict(first, xhii_r_k_min=0.97, xhii_pk_ratio_max_dev=0.2, bsd_peak_ratio=0.8)
  result = metrics.aggregate_map_scores([first, second])
  assert result["xhii_r_k_min"] == 0.9 and result["xhii_pk_ratio_max_dev"] == 0.2
  assert result["bsd_peak_ratio"] == pytest.approx(1.0) and result["bsd_method"] == "numpy"
  assert result["dtb_r_k_min"] is None
  assert metrics.aggregate_map_scores([]) == dict.fromkeys(metrics.MAP_SCORE_KEYS)

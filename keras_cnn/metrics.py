"""Scores of a predicted x_HII field against the true one.

`regression_metrics` gives the numbers of `metrics.json` (R^2, MSE, mean x_HII),
pooled over every scored voxel. `power_spectrum_comparison` compares the spatial
structure of a full predicted map with the true map: the spherically averaged power
spectra of both and their cross-correlation coefficient
r(k) = P_cross(k) / sqrt(P_true(k) P_pred(k)), which is 1 where the predicted
ionized regions sit exactly where the true ones do.

The power spectra come from `tools21cm` (extra `astro`: `pip install keras_cnn[astro]`)
when it is installed, otherwise from the NumPy twin below that follows the same
conventions, so either gives the same numbers:
- P(k) = |FT(f)|^2 * V / N^2 in cMpc^3, FT the unnormalized DFT of the field f over
  the N cells of a periodic box of volume V (tools21cm's `power_spectrum_nd`);
- the cross spectrum is Re(FT(f) conj(FT(g))) with the same normalization;
- modes are averaged in log-spaced shells of |k| (k in 1/cMpc, including the 2 pi)
  from the fundamental 2 pi / L to the Nyquist wavenumber pi N / L; shells that hold
  no mode are dropped (tools21cm's `fill_empty_bins=False`).

The physics scores of a whole box (`compare_maps`, `map_scores`) are those x_HII maps
are judged by: the accuracy of the ionized (x_HII > 0.5) map and the ionized volume
fractions; r(k) and P_pred / P_true of x_HII and of the 21-cm brightness temperature
dT_b (`brightness_temperature`) on the scales k <= `SCORE_K_MAX`; and the bubble size
distribution of the ionized regions by the mean-free-path method
(`bubble_size_distribution`). Each uses tools21cm when it is installed ("auto"), else
its NumPy twin here.
"""

import contextlib
import dataclasses
import math
import sys
from typing import Dict, Optional, Sequence, Union

import numpy as np

POWER_SPECTRUM_METHODS = ("auto", "tools21cm", "numpy")
DEFAULT_KBINS = 16
_ROUNDING_POWER = 1e-24  # (float64 eps)^2 times a wide margin


def _as_flat(values, name: str) -> np.ndarray:
  array = np.asarray(values, dtype=np.float64).ravel()
  if array.size == 0:
    raise ValueError(f"{name} is empty")
  if not np.isfinite(array).all():
    raise ValueError(f"{name} has {int((~np.isfinite(array)).sum())} non-finite values")
  return array


def regression_metrics(y_true, y_pred) -> Dict[str, float]:
  """R^2, MSE and mean ionized fraction of predictions, pooled over all voxels.

  R^2 = 1 - sum((y - p)^2) / sum((y - mean(y))^2). When the truth is constant
  (a fully neutral or fully ionized box) R^2 is undefined; it is then reported as
  1.0 for a perfect prediction and 0.0 otherwise (scikit-learn's `force_finite`).

  Args:
    y_true: true x_HII, any shape.
    y_pred: predicted x_HII, the same number of values.

  Returns:
    {"r2", "mse", "mean_xhii_true", "mean_xhii_pred", "num_voxels"} as Python numbers.
  """
  y_true = _as_flat(y_true, "y_true")
  y_pred = _as_flat(y_pred, "y_pred")
  if y_true.shape != y_pred.shape:
    raise ValueError(
        f"y_true has {y_true.size} values but y_pred has {y_pred.size}; they must match")
  residual = float(np.sum((y_true - y_pred) ** 2))
  total = float(np.sum((y_true - y_true.mean()) ** 2))
  if total > 0.0:
    r2 = 1.0 - residual / total
  else:
    r2 = 1.0 if residual == 0.0 else 0.0
  return {
      "r2": r2,
      "mse": residual / y_true.size,
      "mean_xhii_true": float(y_true.mean()),
      "mean_xhii_pred": float(y_pred.mean()),
      "num_voxels": int(y_true.size),
  }


def _box_dims(box_size_mpc, shape) -> np.ndarray:
  dims = np.broadcast_to(np.asarray(box_size_mpc, dtype=np.float64), (len(shape),))
  if not (dims > 0).all():
    raise ValueError(f"box_size_mpc must be > 0, got {box_size_mpc}")
  return dims.copy()


def k_bin_edges(shape: Sequence[int], box_dims, kbins: int = DEFAULT_KBINS) -> np.ndarray:
  """Log-spaced |k| shell edges (1/cMpc) from 2 pi / L_max to the Nyquist pi N / L."""
  dims = _box_dims(box_dims, shape)
  k_min = 2.0 * math.pi / float(dims.max())
  k_max = float(np.min(math.pi * np.asarray(shape) / dims))
  if not k_max > k_min:
    raise ValueError(f"box of shape {tuple(shape)} has no modes between the fundamental "
                     f"and the Nyquist wavenumber")
  return np.geomspace(k_min, k_max * (1.0 + 1e-9), int(kbins) + 1)


def _numpy_spectra(fields, dims: np.ndarray, edges: np.ndarray):
  """(P_11, P_22, P_12, n_modes) per shell, tools21cm's conventions in NumPy."""
  shape = fields[0].shape
  volume = float(np.prod(dims))
  scale = volume / float(np.prod(shape)) ** 2
  axes_k = [2.0 * math.pi * np.fft.fftfreq(n, d=length / n) for n, length in zip(shape, dims)]
  grids = np.meshgrid(*axes_k, indexing="ij")
  k = np.sqrt(sum(g ** 2 for g in grids)).ravel()
  ft1 = np.fft.fftn(fields[0]).ravel()
  ft2 = np.fft.fftn(fields[1]).ravel()
  n_modes = np.histogram(k, bins=edges)[0].astype(np.float64)

  def shell_mean(power):
    with np.errstate(invalid="ignore", divide="ignore"):
      return np.histogram(k, bins=edges, weights=power * scale)[0] / n_modes

  return (shell_mean(np.abs(ft1) ** 2), shell_mean(np.abs(ft2) ** 2),
          shell_mean((ft1 * np.conj(ft2)).real), n_modes)


def _tools21cm_spectra(fields, dims: np.ndarray, edges: np.ndarray):
  import tools21cm as t2c  # optional extra "astro"

  box = [float(d) for d in dims]
  # tools21cm reports progress with print(); stdout may carry a JSON line.
  with contextlib.redirect_stdout(sys.stderr):
    p11, _, n_modes = t2c.power_spectrum_1d(fields[0], kbins=edges, box_dims=box,
                                            return_n_modes=True, fill_empty_bins=False)
    p22 = t2c.power_spectrum_1d(fields[1], kbins=edges, box_dims=box, fill_empty_bins=False)[0]
    p12 = t2c.cross_power_spectrum_1d(fields[0], fields[1], kbins=edges, box_dims=box,
                                      fill_empty_bins=False)[0]
  return (np.asarray(p11, np.float64), np.asarray(p22, np.float64), np.asarray(p12, np.float64),
          np.asarray(n_modes, np.float64))


def tools21cm_available() -> bool:
  try:
    import tools21cm  # noqa: F401
  except ImportError:
    return False
  return True


def power_spectrum_comparison(true_map, pred_map, box_size_mpc: Union[float, Sequence[float]],
                              kbins: int = DEFAULT_KBINS,
                              method: str = "auto") -> Dict[str, object]:
  """Spherically averaged power spectra of the true and predicted x_HII maps.

  Args:
    true_map: true x_HII, a 3-D periodic box.
    pred_map: predicted x_HII of the same shape.
    box_size_mpc: comoving side of the box in cMpc (one number, or one per axis).
    kbins: number of log-spaced |k| shells.
    method: "tools21cm", "numpy", or "auto" (tools21cm when installed).

  Returns:
    {"k": shell centres (1/cMpc), "pk_true", "pk_pred", "pk_cross" (cMpc^3),
    "r_k": cross-correlation coefficient, "n_modes": modes per shell,
    "method": the implementation used}; arrays hold only non-empty shells. r(k) is
    NaN where a spectrum is zero (a constant map has no fluctuations to correlate).
  """
  if method not in POWER_SPECTRUM_METHODS:
    raise ValueError(f"method must be one of {POWER_SPECTRUM_METHODS}, got {method!r}")
  true_map = np.asarray(true_map, dtype=np.float64)
  pred_map = np.asarray(pred_map, dtype=np.float64)
  if true_map.ndim != 3 or true_map.shape != pred_map.shape:
    raise ValueError(f"maps must be 3-D of one shape, got {true_map.shape} and "
                     f"{pred_map.shape}")
  dims = _box_dims(box_size_mpc, true_map.shape)
  edges = k_bin_edges(true_map.shape, dims, kbins)
  if method == "auto":
    method = "tools21cm" if tools21cm_available() else "numpy"
  spectra = _tools21cm_spectra if method == "tools21cm" else _numpy_spectra
  p_true, p_pred, p_cross, n_modes = spectra((true_map, pred_map), dims, edges)
  keep = n_modes > 0
  with np.errstate(invalid="ignore", divide="ignore"):
    r_k = p_cross / np.sqrt(p_true * p_pred)
  # A constant map has P(k > 0) = 0 up to FFT rounding (~eps^2 V <f^2>); r(k) of
  # rounding noise would be meaningless, so it is NaN there.
  volume = float(np.prod(dims))
  for power, field in ((p_true, true_map), (p_pred, pred_map)):
    r_k[power <= _ROUNDING_POWER * volume * float(np.mean(field ** 2))] = np.nan
  r_k[~np.isfinite(r_k)] = np.nan
  return {
      "k": np.sqrt(edges[:-1] * edges[1:])[keep],
      "pk_true": p_true[keep],
      "pk_pred": p_pred[keep],
      "pk_cross": p_cross[keep],
      "r_k": r_k[keep],
      "n_modes": n_modes[keep],
      "method": method,
  }


def power_spectrum_summary(spectrum: Dict[str, object]) -> Dict[str, Optional[float]]:
  """Two scalars for metrics.json: mean r(k) and mean P_pred / P_true over the shells."""
  r_k = np.asarray(spectrum["r_k"], np.float64)
  with np.errstate(invalid="ignore", divide="ignore"):
    ratio = np.asarray(spectrum["pk_pred"], np.float64) / np.asarray(spectrum["pk_true"],
                                                                     np.float64)

  def finite_mean(values):
    values = values[np.isfinite(values)]
    return float(values.mean()) if values.size else None

  return {"r_k_mean": finite_mean(r_k), "pk_ratio_mean": finite_mean(ratio)}


# -- physics scores of whole maps ---------------------------------------------------------

IONIZED_THRESHOLD = 0.5
SCORE_K_MAX = 0.5  # 1/cMpc: the scale range the r(k) and P(k)-ratio targets apply to
DEFAULT_NUM_RAYS = 100_000
DEFAULT_BSD_BINS = 24
DTB_PREFACTOR_MK = 27.0


def _check_method(method: str) -> None:
  if method not in POWER_SPECTRUM_METHODS:
    raise ValueError(f"method must be one of {POWER_SPECTRUM_METHODS}, got {method!r}")


def _finite_or_none(value) -> Optional[float]:
  value = float(value)
  return value if math.isfinite(value) else None


def ionized_map_scores(y_true, y_pred, threshold: float = IONIZED_THRESHOLD) -> Dict[str, float]:
  """Agreement of the ionized (x_HII > threshold) and neutral voxels of two maps.

  Args:
    y_true: true x_HII, any shape.
    y_pred: predicted x_HII, the same number of values.
    threshold: x_HII above which a voxel counts as ionized.

  Returns:
    {"ionized_accuracy": fraction of voxels where (pred > threshold) == (true > threshold),
    "ionized_fraction_true", "ionized_fraction_pred": volume fractions above threshold}.
  """
  y_true = _as_flat(y_true, "y_true")
  y_pred = _as_flat(y_pred, "y_pred")
  if y_true.shape != y_pred.shape:
    raise ValueError(
        f"y_true has {y_true.size} values but y_pred has {y_pred.size}; they must match")
  ionized_true = y_true > threshold
  ionized_pred = y_pred > threshold
  return {
      "ionized_accuracy": float(np.mean(ionized_true == ionized_pred)),
      "ionized_fraction_true": float(ionized_true.mean()),
      "ionized_fraction_pred": float(ionized_pred.mean()),
  }


def bsd_bin_edges(shape: Sequence[int], cell_size_mpc: float, bins: int = DEFAULT_BSD_BINS,
                  max_length_mpc: Optional[float] = None) -> np.ndarray:
  """Log-spaced ray-length bin edges (cMpc) from half a cell (the shortest ray from a cell
  centre) to the longest ray followed."""
  if not cell_size_mpc > 0:
    raise ValueError(f"cell_size_mpc must be > 0, got {cell_size_mpc}")
  if max_length_mpc is None:
    max_length_mpc = max(shape) * cell_size_mpc
  low = 0.5 * cell_size_mpc
  if not max_length_mpc > low:
    raise ValueError(f"max_length_mpc={max_length_mpc} must exceed half a cell ({low})")
  return np.geomspace(low, max_length_mpc, int(bins) + 1)


def ray_lengths(ionized, cell_size_mpc: float, num_rays: int = DEFAULT_NUM_RAYS, seed: int = 0,
                max_length_mpc: Optional[float] = None) -> np.ndarray:
  """Mean-free-path rays of the ionized regions of a periodic box, in NumPy.

  Each ray starts at the centre of a uniformly chosen ionized cell (as in tools21cm),
  runs in an isotropic random direction, and ends where it enters the first neutral cell,
  so it is at least half a cell long; cells are crossed exactly (3-D digital differential
  analyser), the box wraps around on every face, and all rays advance together.

  Args:
    ionized: boolean 3-D map, True where a cell is ionized.
    cell_size_mpc: comoving side of a (cubic) cell.
    num_rays: rays to cast.
    seed: seed of the start points and directions.
    max_length_mpc: rays still in ionized cells at this length stop there (None: the
      longest box side).

  Returns:
    float64 (num_rays,) lengths in cMpc, +inf for the rays stopped at max_length_mpc;
    empty when no cell is ionized.
  """
  ionized = np.asarray(ionized, dtype=bool)
  if ionized.ndim != 3:
    raise ValueError(f"ionized map must be 3-D, got shape {ionized.shape}")
  if not cell_size_mpc > 0:
    raise ValueError(f"cell_size_mpc must be > 0, got {cell_size_mpc}")
  shape = np.asarray(ionized.shape, dtype=np.int64)
  max_cells = float(shape.max() if max_length_mpc is None else max_length_mpc / cell_size_mpc)
  starts = np.flatnonzero(ionized.ravel())
  if starts.size == 0:
    return np.empty(0, np.float64)
  if starts.size == ionized.size:
    return np.full(int(num_rays), np.inf)
  rng = np.random.default_rng(seed)
  cells = np.stack(np.unravel_index(rng.choice(starts, size=int(num_rays)), ionized.shape),
                   axis=-1).astype(np.int64)
  mu = rng.uniform(-1.0, 1.0, int(num_rays))
  phi = rng.uniform(0.0, 2.0 * math.pi, int(num_rays))
  sin_theta = np.sqrt(1.0 - mu ** 2)
  direction = np.stack([sin_theta * np.cos(phi), sin_theta * np.sin(phi), mu], axis=-1)
  step = np.where(direction >= 0.0, 1, -1).astype(np.int64)
  with np.errstate(divide="ignore"):
    t_delta = 1.0 / np.abs(direction)
  t_next = 0.5 * t_delta  # distance along the ray to the next cell face on each axis
  flat_map = ionized.ravel()
  strides = np.array([shape[1] * shape[2], shape[2], 1], dtype=np.int64)
  lengths = np.full(int(num_rays), np.inf)
  active = np.arange(int(num_rays))
  while active.size:
    rows = np.arange(active.size)
    axis = np.argmin(t_next, axis=1)
    t_cross = t_next[rows, axis]
    cells[rows, axis] = (cells[rows, axis] + step[rows, axis]) % shape[axis]
    t_next[rows, axis] += t_delta[rows, axis]
    within = t_cross <= max_cells
    neutral = ~flat_map[cells @ strides]
    ended = within & neutral
    lengths[active[ended]] = t_cross[ended]
    keep = within & ~neutral
    active, cells, t_next, step, t_delta = (active[keep], cells[keep], t_next[keep], step[keep],
                                            t_delta[keep])
  return lengths * cell_size_mpc


def _tools21cm_bin_fractions(x_hii: np.ndarray, cell_size_mpc: float, num_rays: int, seed: int,
                             threshold: float, edges: np.ndarray) -> np.ndarray:
  """Fraction of the rays of tools21cm's `mfp` ending in each bin of `edges` (cMpc)."""
  import tools21cm as t2c  # optional extra "astro"

  ionized = (x_hii > threshold).astype(np.float64)  # the threshold of the NumPy rays
  state = np.random.get_state()  # tools21cm draws from NumPy's global generator
  np.random.seed(seed % 2 ** 32)
  try:
    with contextlib.redirect_stdout(sys.stderr):
      radius, r_dp_dr = t2c.mfp(ionized, xth=0.5, boxsize=x_hii.shape[0] * cell_size_mpc,
                                iterations=int(num_rays), verbose=False)
  finally:
    np.random.set_state(state)
  steps = np.asarray(radius, np.float64) / cell_size_mpc
  r_dp_dr = np.asarray(r_dp_dr, np.float64)
  # tools21cm returns R dP/dR at R = k cells with dR one cell, where k + 1 is the step at
  # which a ray met neutral gas: the fraction of rays ending between k and k + 1 cells
  # (lost for k = 0, where R dP/dR is 0). Each fraction is spread evenly over its cell.
  keep = steps > 0
  steps, fraction = steps[keep], r_dp_dr[keep] / steps[keep]
  bounds = edges / cell_size_mpc
  overlap = np.clip(
      np.minimum(steps[:, None] + 1.0, bounds[None, 1:]) -
      np.maximum(steps[:, None], bounds[None, :-1]), 0.0, None)
  return fraction @ overlap


def bubble_size_distribution(x_hii, cell_size_mpc: float, num_rays: int = DEFAULT_NUM_RAYS,
                             bins: int = DEFAULT_BSD_BINS, seed: int = 0, method: str = "auto",
                             max_length_mpc: Optional[float] = None,
                             threshold: float = IONIZED_THRESHOLD) -> Dict[str, object]:
  """Size distribution of the ionized regions by the mean-free-path (MFP) method.

  Rays from random ionized cells in random directions are followed to the first neutral
  cell; the distribution of their lengths R is the bubble size distribution R dP/dR of
  tools21cm's `mfp`. "numpy" casts the rays of `ray_lengths` (periodic box, exact cell
  crossings); "tools21cm" calls `tools21cm.mfp` (extra `astro`), which marches the rays in
  steps of one cell through an interpolated map, stops them at the box faces (no
  wrap-around) and drops the rays that end within the first step; it needs a cubic box.
  "auto" uses tools21cm when it is installed and the box is cubic.

  Args:
    x_hii: ionized fraction, a 3-D box; cells with x_HII > threshold are ionized.
    cell_size_mpc: comoving cell side.
    num_rays: rays to cast.
    bins: number of log-spaced length bins (`bsd_bin_edges`).
    seed: seed of the rays.
    method: "auto", "tools21cm" or "numpy".
    max_length_mpc: the longest ray followed (None: the longest box side).
    threshold: x_HII above which a cell is ionized.

  Returns:
    {"r": bin centres (cMpc), "edges", "probability": fraction of all rays ending in
    each bin, "r_dp_dr": R dP/dR = probability / (bin width in ln R),
    "truncated_fraction": rays not ended within max_length_mpc (or dropped by
    tools21cm), "num_rays", "method"}. Without ionized cells every probability is 0
    and truncated_fraction is NaN.
  """
  _check_method(method)
  x_hii = np.asarray(x_hii, dtype=np.float64)
  if x_hii.ndim != 3:
    raise ValueError(f"x_hii must be a 3-D box, got shape {x_hii.shape}")
  cubic = len(set(x_hii.shape)) == 1
  if method == "auto":
    method = "tools21cm" if cubic and tools21cm_available() else "numpy"
  if method == "tools21cm" and not cubic:
    raise ValueError(f"tools21cm's mfp needs a cubic box, got shape {x_hii.shape}")
  edges = bsd_bin_edges(x_hii.shape, cell_size_mpc, bins, max_length_mpc)
  ionized = x_hii > threshold
  if not ionized.any():
    probability, truncated = np.zeros(len(edges) - 1), math.nan
  else:
    if method == "numpy":
      lengths = ray_lengths(ionized, cell_size_mpc, num_rays, seed, edges[-1])
      probability = np.histogram(lengths[np.isfinite(lengths)], bins=edges)[0] / lengths.size
    else:
      probability = _tools21cm_bin_fractions(x_hii, cell_size_mpc, num_rays, seed, threshold, edges)
    truncated = max(0.0, 1.0 - float(probability.sum()))
  return {
      "r": np.sqrt(edges[:-1] * edges[1:]),
      "edges": edges,
      "probability": probability,
      "r_dp_dr": probability / np.diff(np.log(edges)),
      "truncated_fraction": truncated,
      "num_rays": int(num_rays),
      "method": method,
  }


def bsd_peak_radius(bsd: Dict[str, object]) -> Optional[float]:
  """R (cMpc) at the maximum of R dP/dR, refined by a parabola through the top three bins
  in ln R; None when no ray ended."""
  values = np.asarray(bsd["r_dp_dr"], np.float64)
  if not values.size or not values.max() > 0:
    return None
  top = int(np.argmax(values))
  log_r = np.log(np.asarray(bsd["r"], np.float64))
  if 0 < top < values.size - 1:
    left, centre, right = values[top - 1:top + 2]
    curvature = left - 2.0 * centre + right
    shift = 0.5 * (left - right) / curvature if curvature < 0 else 0.0
    width = 0.5 * (log_r[top + 1] - log_r[top - 1])
    return float(np.exp(log_r[top] + np.clip(shift, -0.5, 0.5) * width))
  return float(np.exp(log_r[top]))


def bsd_distance(bsd_true: Dict[str, object], bsd_pred: Dict[str, object]) -> Optional[float]:
  """Kolmogorov-Smirnov distance of two distributions on the same bins: the largest gap
  between their cumulative ray fractions (rays truncated at the longest length count as
  longer than every bin); None when either map has no ionized cell."""
  if not (np.isfinite(bsd_true["truncated_fraction"]) and
          np.isfinite(bsd_pred["truncated_fraction"])):
    return None
  if not np.array_equal(bsd_true["edges"], bsd_pred["edges"]):
    raise ValueError("the two distributions have different bins")
  gap = np.cumsum(bsd_true["probability"]) - np.cumsum(bsd_pred["probability"])
  return float(np.abs(gap).max())


def brightness_temperature(x_hii, overdensity, redshift: float, method: str = "auto") -> np.ndarray:
  """21-cm differential brightness temperature in mK, for a spin temperature >> T_CMB.

  dT_b = 27 mK (1 - x_HII) (1 + delta) sqrt((1 + z) / 10),

  the standard form with the cosmology factors (Omega_b h^2 / 0.023) and
  (0.15 / (Omega_m h^2))^(1/2) set to 1. "tools21cm" calls `tools21cm.calc_dt`, the same
  (1 - x_HII)(1 + delta) shape with the z-dependent prefactor of tools21cm's cosmology
  (its density argument in g/cm^3 is (1 + delta) times its mean baryon density); "auto"
  uses it when installed. Ratios of two maps built with one method do not depend on the
  prefactor.

  Args:
    x_hii: ionized fraction.
    overdensity: delta = rho / mean(rho) - 1 (`Snapshot.n_igm`), the same shape.
    redshift: snapshot redshift z.
    method: "auto", "tools21cm" or "numpy".

  Returns:
    float64 array of dT_b in mK, the shape of x_hii.
  """
  _check_method(method)
  x_hii = np.asarray(x_hii, dtype=np.float64)
  density = 1.0 + np.asarray(overdensity, dtype=np.float64)
  if x_hii.shape != density.shape:
    raise ValueError(f"x_hii and overdensity must have one shape, got {x_hii.shape} and "
                     f"{density.shape}")
  if not redshift > -1.0:
    raise ValueError(f"redshift must be > -1, got {redshift}")
  if method == "auto":
    method = "tools21cm" if tools21cm_available() else "numpy"
  if method == "tools21cm":
    import tools21cm as t2c  # optional extra "astro"

    rho_mean = t2c.const.rho_crit_0 * t2c.const.OmegaB
    with contextlib.redirect_stdout(sys.stderr):
      return np.asarray(t2c.calc_dt(x_hii, density * rho_mean, float(redshift)), np.float64)
  return DTB_PREFACTOR_MK * (1.0 - x_hii) * density * math.sqrt((1.0 + redshift) / 10.0)


def spectrum_scores(spectrum: Dict[str, object],
                    k_max: float = SCORE_K_MAX) -> Dict[str, Optional[float]]:
  """Worst r(k) and worst P(k) ratio over the shells with centre k <= k_max (1/cMpc).

  Returns:
    {"r_k_min": smallest r(k), "pk_ratio_max_dev": largest |P_pred / P_true - 1|};
    None where no shell with k <= k_max has a finite value.
  """
  k = np.asarray(spectrum["k"], np.float64)
  r_k = np.asarray(spectrum["r_k"], np.float64)
  with np.errstate(invalid="ignore", divide="ignore"):
    deviation = np.abs(
        np.asarray(spectrum["pk_pred"], np.float64) / np.asarray(spectrum["pk_true"], np.float64) -
        1.0)
  low = k <= k_max
  r_k, deviation = r_k[low & np.isfinite(r_k)], deviation[low & np.isfinite(deviation)]
  return {
      "r_k_min": float(r_k.min()) if r_k.size else None,
      "pk_ratio_max_dev": float(deviation.max()) if deviation.size else None
  }


MAP_SCORE_KEYS = ("ionized_accuracy", "ionized_fraction_true", "ionized_fraction_pred",
                  "xhii_r_k_min", "xhii_pk_ratio_max_dev", "dtb_mean_true_mk", "dtb_mean_pred_mk",
                  "dtb_r_k_min", "dtb_pk_ratio_max_dev", "bsd_peak_radius_true_mpc",
                  "bsd_peak_radius_pred_mpc", "bsd_peak_ratio", "bsd_ks_distance",
                  "score_k_max_per_mpc", "bsd_method", "dtb_method")


@dataclasses.dataclass
class MapComparison:
  """Scores and curves of one predicted box against the true one (`compare_maps`)."""

  scores: Dict[str, object]
  xhii_spectrum: Dict[str, object]
  dtb_spectrum: Dict[str, object]
  bsd_true: Dict[str, object]
  bsd_pred: Dict[str, object]


def compare_maps(true_map, pred_map, overdensity, redshift: float, cell_size_mpc: float,
                 method: str = "auto", kbins: int = DEFAULT_KBINS, num_rays: int = DEFAULT_NUM_RAYS,
                 bsd_bins: int = DEFAULT_BSD_BINS, seed: int = 0,
                 k_max: float = SCORE_K_MAX) -> MapComparison:
  """Physics scores of a predicted x_HII box, with the curves they come from.

  Args:
    true_map: true x_HII of a whole periodic box (Nx, Ny, Nz).
    pred_map: predicted x_HII, the same shape.
    overdensity: delta = rho / mean(rho) - 1 of the box (`Snapshot.n_igm`).
    redshift: the snapshot's redshift.
    cell_size_mpc: comoving cell side.
    method: "auto", "tools21cm" or "numpy", for the power spectra, the brightness
      temperature and the bubble size distribution alike.
    kbins: log-spaced |k| shells of the power spectra.
    num_rays: mean-free-path rays per map.
    bsd_bins: log-spaced ray-length bins.
    seed: seed of the rays (the same rays' seed for both maps).
    k_max: the r(k) and P(k)-ratio scores use the shells with k <= k_max (1/cMpc).

  Returns:
    A `MapComparison`: `scores` holds the keys of `MAP_SCORE_KEYS` (JSON-safe: None
    where a score is undefined); the curves are the dicts of `power_spectrum_comparison`
    (x_HII and dT_b) and `bubble_size_distribution` (true and predicted maps).
  """
  _check_method(method)
  true_map = np.asarray(true_map, dtype=np.float64)
  pred_map = np.asarray(pred_map, dtype=np.float64)
  if true_map.ndim != 3 or true_map.shape != pred_map.shape:
    raise ValueError(f"maps must be 3-D of one shape, got {true_map.shape} and "
                     f"{pred_map.shape}")
  box_mpc = [n * cell_size_mpc for n in true_map.shape]
  scores: Dict[str, object] = dict(ionized_map_scores(true_map, pred_map))
  xhii_spectrum = power_spectrum_comparison(true_map, pred_map, box_mpc, kbins, method)
  scores.update({
      f"xhii_{key}": value for key, value in spectrum_scores(xhii_spectrum, k_max).items()
  })
  dtb_true = brightness_temperature(true_map, overdensity, redshift, method)
  dtb_pred = brightness_temperature(pred_map, overdensity, redshift, method)
  dtb_spectrum = power_spectrum_comparison(dtb_true, dtb_pred, box_mpc, kbins, method)
  scores["dtb_mean_true_mk"] = float(dtb_true.mean())
  scores["dtb_mean_pred_mk"] = float(dtb_pred.mean())
  scores.update({
      f"dtb_{key}": value for key, value in spectrum_scores(dtb_spectrum, k_max).items()
  })
  bsd_true, bsd_pred = (bubble_size_distribution(m, cell_size_mpc, num_rays, bsd_bins, seed, method)
                        for m in (true_map, pred_map))
  peak_true, peak_pred = bsd_peak_radius(bsd_true), bsd_peak_radius(bsd_pred)
  scores["bsd_peak_radius_true_mpc"] = peak_true
  scores["bsd_peak_radius_pred_mpc"] = peak_pred
  scores["bsd_peak_ratio"] = (peak_pred /
                              peak_true if peak_true and peak_pred is not None else None)
  scores["bsd_ks_distance"] = bsd_distance(bsd_true, bsd_pred)
  scores["score_k_max_per_mpc"] = float(k_max)
  scores["bsd_method"] = bsd_true["method"]
  scores["dtb_method"] = dtb_spectrum["method"]
  scores = {
      key: (_finite_or_none(value) if isinstance(value, float) else value)
      for key, value in scores.items()
  }
  return MapComparison(scores, xhii_spectrum, dtb_spectrum, bsd_true, bsd_pred)


def map_scores(true_map, pred_map, overdensity, redshift: float, cell_size_mpc: float,
               **kwargs) -> Dict[str, object]:
  """The flat, JSON-safe dict of physics scores of one box (`compare_maps`'s `scores`)."""
  return compare_maps(true_map, pred_map, overdensity, redshift, cell_size_mpc, **kwargs).scores


def aggregate_map_scores(per_box: Sequence[Dict[str, object]]) -> Dict[str, object]:
  """One value per key of `MAP_SCORE_KEYS` over several boxes.

  The target scores take the worst box (the smallest `*_r_k_min`, the largest
  `*_pk_ratio_max_dev`), the method names the first box, every other score the mean of
  the boxes that define it; None where no box does (and for every key without boxes).
  """
  result: Dict[str, object] = {}
  for key in MAP_SCORE_KEYS:
    values = [box[key] for box in per_box if box.get(key) is not None]
    if not values:
      result[key] = None
    elif isinstance(values[0], str):
      result[key] = values[0]
    elif key.endswith("_r_k_min"):
      result[key] = float(min(values))
    elif key.endswith("_max_dev"):
      result[key] = float(max(values))
    else:
      result[key] = float(np.mean(values))
  return result

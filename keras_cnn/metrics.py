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
"""

import contextlib
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
    p22 = t2c.power_spectrum_1d(fields[1], kbins=edges, box_dims=box,
                                fill_empty_bins=False)[0]
    p12 = t2c.cross_power_spectrum_1d(fields[0], fields[1], kbins=edges, box_dims=box,
                                      fill_empty_bins=False)[0]
  return (np.asarray(p11, np.float64), np.asarray(p22, np.float64),
          np.asarray(p12, np.float64), np.asarray(n_modes, np.float64))


def tools21cm_available() -> bool:
  try:
    import tools21cm  # noqa: F401
  except ImportError:
    return False
  return True


def power_spectrum_comparison(true_map, pred_map,
                              box_size_mpc: Union[float, Sequence[float]],
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

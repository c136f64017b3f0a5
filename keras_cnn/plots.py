"""PNG figures of a training run, of an evaluation and of a lightcone.

Figures are drawn on `matplotlib.figure.Figure` objects with the Agg canvas, never
through pyplot, so importing this module selects no backend and opens no window.
Every function writes its PNG atomically (a temporary file in the same folder,
then `os.replace`): a reader never sees a half-written image.
"""

from typing import Dict, Optional

import numpy as np
from matplotlib import colors
from matplotlib import ticker
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from keras_cnn import conventions
from keras_cnn import io_utils

XHII_LABEL = r"$x_\mathrm{HII}$"


def _new_figure(width: float, height: float) -> Figure:
  figure = Figure(figsize=(width, height), dpi=110, layout="constrained")
  FigureCanvasAgg(figure)
  return figure


def save_figure(figure: Figure, out_png: str) -> str:
  """Writes `figure` to `out_png` through a temporary file; returns the path."""
  with io_utils.atomic_open(out_png, "wb") as stream:
    figure.savefig(stream, format="png")
  return out_png


def history_columns(history_csv: str) -> Dict[str, np.ndarray]:
  """Columns of a Keras CSVLogger file as float arrays (empty cells become NaN)."""
  rows = io_utils.read_history(history_csv)
  if not rows:
    raise ValueError(f"{history_csv}: no epochs recorded")
  columns = {}
  for name in rows[0]:
    values = []
    for row in rows:
      try:
        values.append(float(row[name]))
      except (TypeError, ValueError):
        values.append(np.nan)
    columns[name] = np.asarray(values)
  return columns


def plot_history(history_csv: str, out_png: str) -> str:
  """Loss (MSE) and R^2 per epoch, training and validation, from history.csv."""
  history = history_columns(history_csv)
  if "epoch" in history:
    epochs = history["epoch"] + 1
  else:
    epochs = np.arange(1, len(next(iter(history.values()))) + 1)
  figure = _new_figure(10, 4)
  panels = figure.subplots(1, 2)
  for axes, key, label in ((panels[0], "loss", "MSE loss"), (panels[1], "r2", r"$R^2$")):
    for prefix, name, style in (("", "training", "-o"), ("val_", "validation", "-s")):
      column = history.get(prefix + key)
      if column is not None and np.isfinite(column).any():
        axes.plot(epochs, column, style, markersize=3, label=name)
    axes.set_xlabel("epoch")
    axes.set_ylabel(label)
    axes.grid(alpha=0.3)
    if axes.get_legend_handles_labels()[0]:
      axes.legend()
  positive = [c for k in ("loss", "val_loss") if (c := history.get(k)) is not None]
  if positive and all(np.nanmin(c) > 0 for c in positive if np.isfinite(c).any()):
    panels[0].set_yscale("log")
  panels[0].set_title("loss")
  panels[1].set_title(r"coefficient of determination $R^2$")
  return save_figure(figure, out_png)


def plot_pred_vs_true(y_true, y_pred, out_png: str, bins: int = 60,
                      r2: Optional[float] = None) -> str:
  """2-D histogram of predicted vs true x_HII with the 1:1 line; R^2 in the title."""
  y_true = np.asarray(y_true, dtype=np.float64).ravel()
  y_pred = np.asarray(y_pred, dtype=np.float64).ravel()
  if r2 is None:
    from keras_cnn import metrics as metrics_lib
    r2 = metrics_lib.regression_metrics(y_true, y_pred)["r2"]
  figure = _new_figure(5.5, 4.6)
  axes = figure.subplots()
  edges = np.linspace(0.0, 1.0, bins + 1)
  counts, _, _ = np.histogram2d(y_true, np.clip(y_pred, 0.0, 1.0), bins=[edges, edges])
  image = axes.pcolormesh(edges, edges, np.ma.masked_equal(counts.T, 0), cmap="viridis",
                          norm=colors.LogNorm(vmin=1, vmax=max(1.0, counts.max())))
  figure.colorbar(image, ax=axes, label="voxels per bin")
  axes.plot([0, 1], [0, 1], "r--", linewidth=1, label="1:1")
  axes.set_xlim(0, 1)
  axes.set_ylim(0, 1)
  axes.set_aspect("equal")
  axes.set_xlabel(f"true {XHII_LABEL}")
  axes.set_ylabel(f"predicted {XHII_LABEL}")
  axes.legend(loc="upper left")
  axes.set_title(f"$R^2$ = {r2:.4f}  ({y_true.size:,} voxels)")
  return save_figure(figure, out_png)


def _draw_slices(figure: Figure, panels, true_map, pred_map, cell_size_mpc: float, axis: int = 0,
                 index: Optional[int] = None) -> str:
  """True, predicted and residual x_HII of one slice on three panels; returns a caption."""
  true_map = np.asarray(true_map, dtype=np.float32)
  pred_map = np.asarray(pred_map, dtype=np.float32)
  if true_map.ndim != 3 or true_map.shape != pred_map.shape:
    raise ValueError(f"maps must be 3-D of one shape, got {true_map.shape} and "
                     f"{pred_map.shape}")
  index = true_map.shape[axis] // 2 if index is None else int(index)
  true_slice = np.take(true_map, index, axis=axis)
  pred_slice = np.take(pred_map, index, axis=axis)
  residual = pred_slice - true_slice
  names = [n for a, n in enumerate("xyz") if a != axis]
  extent = [0.0, true_slice.shape[0] * cell_size_mpc, 0.0, true_slice.shape[1] * cell_size_mpc]
  limit = max(float(np.abs(residual).max()), 1e-6)
  for axes, image, title, cmap, vmin, vmax, label in ((panels[0], true_slice, f"true {XHII_LABEL}",
                                                       "magma", 0.0, 1.0, XHII_LABEL),
                                                      (panels[1], pred_slice,
                                                       f"predicted {XHII_LABEL}", "magma", 0.0, 1.0,
                                                       XHII_LABEL),
                                                      (panels[2], residual,
                                                       "residual (predicted - true)", "RdBu_r",
                                                       -limit, limit, rf"$\Delta${XHII_LABEL}")):
    shown = axes.imshow(image.T, origin="lower", extent=extent, cmap=cmap, vmin=vmin, vmax=vmax,
                        interpolation="nearest")
    figure.colorbar(shown, ax=axes, label=label, shrink=0.85)
    axes.set_xlabel(f"{names[0]} [cMpc]")
    axes.set_ylabel(f"{names[1]} [cMpc]")
    axes.set_title(title)
  return f"slice {'xyz'[axis]} = {index * cell_size_mpc:.1f} cMpc (cell {index})"


def plot_slices(true_map, pred_map, out_png: str, cell_size_mpc: float = conventions.CELL_SIZE_MPC,
                axis: int = 0, index: Optional[int] = None) -> str:
  """True, predicted and residual (predicted - true) x_HII on one slice of the box.

  Args:
    true_map: true x_HII (Nx, Ny, Nz).
    pred_map: predicted x_HII, same shape.
    out_png: where to write.
    cell_size_mpc: comoving cell side, for the cMpc axes.
    axis: the axis the slice is perpendicular to.
    index: slice position along `axis`; None is the middle of the box.
  """
  figure = _new_figure(14, 4.4)
  caption = _draw_slices(figure, figure.subplots(1, 3), true_map, pred_map, cell_size_mpc, axis,
                         index)
  figure.suptitle(caption)
  return save_figure(figure, out_png)


def _draw_delta2(axes, spectrum: Dict[str, object]) -> None:
  """Dimensionless power Delta^2(k) of the true and predicted x_HII on log axes."""
  k = np.asarray(spectrum["k"], np.float64)
  to_delta2 = k ** 3 / (2.0 * np.pi ** 2)
  for key, label, style in (("pk_true", "true", "-o"), ("pk_pred", "predicted", "--s")):
    values = np.asarray(spectrum[key], np.float64) * to_delta2
    shown = values > 0
    if shown.any():
      axes.plot(k[shown], values[shown], style, markersize=3, label=label)
  axes.set_xscale("log")
  if axes.get_legend_handles_labels()[0]:
    axes.set_yscale("log")
    axes.legend()
  axes.set_xlabel(r"$k$ [cMpc$^{-1}$]")
  axes.set_ylabel(r"$\Delta^2_{xx}(k) = k^3 P(k) / 2\pi^2$")
  axes.set_title(f"power spectrum of {XHII_LABEL}")


def plot_power_spectra(spectrum: Dict[str, object], out_png: str,
                       title: Optional[str] = None) -> str:
  """Dimensionless power Delta^2(k) of true and predicted x_HII, and r(k).

  Args:
    spectrum: the dict of `keras_cnn.metrics.power_spectrum_comparison`.
    out_png: where to write.
    title: optional figure title.
  """
  k = np.asarray(spectrum["k"], np.float64)
  figure = _new_figure(10, 4)
  panels = figure.subplots(1, 2)
  _draw_delta2(panels[0], spectrum)
  panels[1].plot(k, np.asarray(spectrum["r_k"], np.float64), "-o", markersize=3)
  panels[1].axhline(1.0, color="grey", linewidth=0.8, linestyle=":")
  panels[1].set_xscale("log")
  panels[1].set_ylim(min(0.0, float(np.nanmin(spectrum["r_k"], initial=0.0))) - 0.05, 1.05)
  panels[1].set_xlabel(r"$k$ [cMpc$^{-1}$]")
  panels[1].set_ylabel(r"$r(k) = P_\times / \sqrt{P_\mathrm{true} P_\mathrm{pred}}$")
  panels[1].set_title("cross-correlation coefficient")
  for axes in panels:
    axes.grid(alpha=0.3, which="both")
  if title:
    figure.suptitle(title)
  return save_figure(figure, out_png)


def _format_score(value, digits: int = 3) -> str:
  return "n/a" if value is None else f"{value:.{digits}g}"


def plot_summary(true_map, pred_map, comparison, out_png: str, cell_size_mpc: float,
                 title: Optional[str] = None) -> str:
  """One figure of a predicted box: slices, power spectra, r(k) and bubble sizes.

  Top row: true, predicted and residual x_HII on the middle x-slice. Bottom row:
  Delta^2(k) of the true and predicted x_HII; r(k) of x_HII and of the 21-cm brightness
  temperature dT_b; the bubble size distributions R dP/dR of both maps. Dotted lines mark
  the scale limit of the scores and the r(k) target; the title quotes the scores.

  Args:
    true_map: true x_HII (Nx, Ny, Nz).
    pred_map: predicted x_HII, same shape.
    comparison: the `keras_cnn.metrics.MapComparison` of the two maps.
    out_png: where to write.
    cell_size_mpc: comoving cell side, for the cMpc axes.
    title: optional first line of the figure title.
  """
  scores = comparison.scores
  k_max = scores.get("score_k_max_per_mpc")
  figure = _new_figure(15, 8.8)
  panels = figure.subplots(2, 3)
  caption = _draw_slices(figure, panels[0], true_map, pred_map, cell_size_mpc)

  _draw_delta2(panels[1, 0], comparison.xhii_spectrum)
  r_axes = panels[1, 1]
  lowest = 0.0
  for spectrum, label, style in ((comparison.xhii_spectrum, XHII_LABEL, "-o"),
                                 (comparison.dtb_spectrum, r"$\delta T_b$", "--s")):
    r_k = np.asarray(spectrum["r_k"], np.float64)
    r_axes.plot(np.asarray(spectrum["k"], np.float64), r_k, style, markersize=3, label=label)
    lowest = min(lowest, float(np.nanmin(r_k, initial=0.0)))
  r_axes.axhline(1.0, color="grey", linewidth=0.8, linestyle=":")
  r_axes.axhline(0.95, color="tab:red", linewidth=0.8, linestyle=":", label="r = 0.95")
  r_axes.set_xscale("log")
  r_axes.set_ylim(lowest - 0.05, 1.05)
  r_axes.set_xlabel(r"$k$ [cMpc$^{-1}$]")
  r_axes.set_ylabel(r"$r(k) = P_\times / \sqrt{P_\mathrm{true} P_\mathrm{pred}}$")
  r_axes.set_title("cross-correlation coefficient")
  r_axes.legend(loc="best")
  if k_max is not None:
    for axes in panels[1, :2]:
      axes.axvline(k_max, color="grey", linewidth=0.8, linestyle="--")

  bsd_axes = panels[1, 2]
  for bsd, label, style in ((comparison.bsd_true, "true", "-o"), (comparison.bsd_pred, "predicted",
                                                                  "--s")):
    bsd_axes.plot(np.asarray(bsd["r"], np.float64), np.asarray(bsd["r_dp_dr"], np.float64), style,
                  markersize=3, label=label)
  bsd_axes.set_xscale("log")
  bsd_axes.set_xlabel(r"$R$ [cMpc]")
  bsd_axes.set_ylabel(r"$R\,\mathrm{d}P/\mathrm{d}R$")
  bsd_axes.set_title(f"bubble sizes (mean free path, {comparison.bsd_true['method']})")
  bsd_axes.legend()
  for axes in panels[1]:
    axes.grid(alpha=0.3, which="both")
    # plain labels at 1, 2 and 5 per decade: short boxes span less than one decade
    axes.xaxis.set_major_locator(ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
    axes.xaxis.set_major_formatter(ticker.FormatStrFormatter("%g"))
    axes.xaxis.set_minor_formatter(ticker.NullFormatter())

  k_label = "all k" if k_max is None else f"k <= {k_max:g}/cMpc"
  lines = [
      f"{caption}; ionized-map accuracy {_format_score(scores.get('ionized_accuracy'), 4)}, "
      f"ionized fraction true {_format_score(scores.get('ionized_fraction_true'))} / "
      f"pred {_format_score(scores.get('ionized_fraction_pred'))}",
      f"{k_label}: min r(k) x_HII {_format_score(scores.get('xhii_r_k_min'))}, "
      f"dT_b {_format_score(scores.get('dtb_r_k_min'))}; max |P ratio - 1| x_HII "
      f"{_format_score(scores.get('xhii_pk_ratio_max_dev'))}, dT_b "
      f"{_format_score(scores.get('dtb_pk_ratio_max_dev'))}; BSD peak "
      f"{_format_score(scores.get('bsd_peak_radius_true_mpc'))} -> "
      f"{_format_score(scores.get('bsd_peak_radius_pred_mpc'))} cMpc",
  ]
  figure.suptitle("\n".join(([title] if title else []) + lines))
  return save_figure(figure, out_png)


DTB_LABEL = r"$\delta T_b$ [mK]"


def plot_lightcone(xhii, dtb, redshift, comoving_distance_mpc, out_png: str,
                   cell_size_mpc: float = conventions.CELL_SIZE_MPC,
                   index: Optional[int] = None) -> str:
  """One slice through the x_HII and 21-cm lightcones: line of sight against transverse
  distance, comoving distance below and redshift above.

  Args:
    xhii: x_HII lightcone (N1, N2, L), the line of sight last.
    dtb: brightness-temperature lightcone in mK, the same shape.
    redshift: (L,) redshift of each slice, increasing.
    comoving_distance_mpc: (L,) comoving distance of each slice.
    out_png: where to write.
    cell_size_mpc: comoving cell side, for the transverse axis.
    index: the slice along the first axis; None is the middle.
  """
  xhii = np.asarray(xhii, np.float32)
  dtb = np.asarray(dtb, np.float32)
  redshift = np.asarray(redshift, np.float64)
  distance = np.asarray(comoving_distance_mpc, np.float64)
  if xhii.ndim != 3 or xhii.shape != dtb.shape or xhii.shape[2] != redshift.size:
    raise ValueError(f"lightcones must be 3-D of one shape with one redshift per slice, got "
                     f"{xhii.shape}, {dtb.shape} and {redshift.size} redshifts")
  index = xhii.shape[0] // 2 if index is None else int(index)
  step = float(np.median(np.diff(distance))) if distance.size > 1 else cell_size_mpc
  extent = [distance[0] - step / 2, distance[-1] + step / 2, 0.0, xhii.shape[1] * cell_size_mpc]
  figure = _new_figure(12, 6)
  panels = figure.subplots(2, 1, sharex=True)
  dtb_max = max(float(np.nanmax(dtb[index])), 1e-6)
  shown_panels = [
      (panels[0], xhii[index], f"ionized fraction {XHII_LABEL}", "magma", 0.0, 1.0, XHII_LABEL),
      (panels[1], dtb[index], r"21-cm brightness temperature $\delta T_b$", "viridis", 0.0, dtb_max,
       DTB_LABEL),
  ]
  for axes, image, title, cmap, vmin, vmax, label in shown_panels:
    shown = axes.imshow(image, origin="lower", extent=extent, cmap=cmap, vmin=vmin, vmax=vmax,
                        interpolation="nearest", aspect="auto")
    figure.colorbar(shown, ax=axes, label=label, pad=0.01)
    axes.set_ylabel("transverse distance [cMpc]")
    axes.set_title(title)
  if distance.size > 1:
    top = panels[0].secondary_xaxis(
        "top", functions=(lambda d: np.interp(d, distance, redshift),
                          lambda z: np.interp(z, redshift, distance)))
    top.set_xlabel("redshift $z$")
  panels[1].set_xlabel("comoving distance along the line of sight [cMpc]")
  figure.suptitle(f"lightcone slice {index} of {xhii.shape[0]} "
                  f"({index * cell_size_mpc:.1f} cMpc), z = {redshift[0]:.3f} to "
                  f"{redshift[-1]:.3f}")
  return save_figure(figure, out_png)


def plot_global_history(redshift, mean_xhii, mean_xhii_true, out_png: str, lightcone=None) -> str:
  """Mean x_HII against redshift: the painted maps, the simulation's targets where they
  exist (NaN elsewhere), and optionally the mean of each lightcone slice.

  Args:
    redshift: (M,) redshifts of the maps.
    mean_xhii: (M,) mean x_HII of each map.
    mean_xhii_true: (M,) mean x_HII of each target; NaN where there is none.
    out_png: where to write.
    lightcone: optional (redshift (L,), mean x_HII of each slice (L,)).
  """
  redshift = np.asarray(redshift, np.float64)
  mean_xhii = np.asarray(mean_xhii, np.float64)
  mean_xhii_true = np.asarray(mean_xhii_true, np.float64)
  figure = _new_figure(6.5, 4.4)
  axes = figure.subplots()
  if lightcone is not None:
    axes.plot(np.asarray(lightcone[0]), np.asarray(lightcone[1]), "-", color="tab:blue",
              linewidth=0.8, alpha=0.6, label="emulator, lightcone slices")
  axes.plot(redshift, mean_xhii, "o", color="tab:blue", label="emulator, painted boxes")
  known = np.isfinite(mean_xhii_true)
  if known.any():
    axes.plot(redshift[known], mean_xhii_true[known], "s", markerfacecolor="none", color="tab:red",
              markersize=8, label="simulation (targets)")
  axes.set_xlabel("redshift $z$")
  axes.set_ylabel(rf"mean {XHII_LABEL}")
  axes.set_ylim(-0.02, 1.02)
  axes.grid(alpha=0.3)
  axes.legend()
  axes.set_title("global reionization history")
  return save_figure(figure, out_png)

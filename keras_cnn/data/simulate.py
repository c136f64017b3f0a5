"""The built-in simulator: periodic reionization snapshots, deterministic by seed.

It is the embedded default data set, so a fresh machine can train without any
download. Three fields per box, those of `keras_cnn.data.snapshot.Snapshot`:

- `rho`: a log-normal baryon density (g/cm^3) whose underlying field has the
  LambdaCDM linear power spectrum at the snapshot redshift (Eisenstein & Hu 1998
  no-wiggle transfer function, scaled by the linear growth factor), realized with
  `powerbox.LogNormalPowerBox`.
- `n_src`: integer source counts per cell, Poisson-sampled from the conditional
  (extended Press-Schechter) collapsed fraction of halos above `min_halo_mass_msun`,
  so sources sit on density peaks and most cells hold none.
- `x_hii`: excursion-set photon counting in the spirit of 21cmFAST: a cell is fully
  ionized if, for some top-hat sphere of radius between one cell and the mean free
  path, `zeta * sources(R) >= hydrogen(R)`; other cells are partially ionized by their
  own sources, `zeta * n_src / (1 + delta)`. The efficiency `zeta` is solved by
  bisection so that the volume-averaged x_HII hits `mean_xhii`.

x_HII is therefore a deterministic but non-local function of the two input fields
(see `python -m keras_cnn.benchmarks.nonlocality`).
"""

import dataclasses
import math
import warnings
from typing import Optional, Sequence, Tuple, Union

import numpy as np
import scipy.fft
import scipy.integrate
import scipy.special

from keras_cnn.data.snapshot import Snapshot
from keras_cnn import conventions

# Critical density today over h^2, in g/cm^3 and in solar masses per Mpc^3.
RHO_CRIT0_G_CM3_H2 = 1.87834e-29
RHO_CRIT0_MSUN_MPC3_H2 = 2.77536627e11
# Linear collapse threshold of spherical collapse.
DELTA_COLLAPSE = 1.686
# Bisection stops once the box mean is this close to the requested mean x_HII.
XHII_TOLERANCE = 1e-3
# The solve is an error beyond this distance (the tests hold the simulator to it).
XHII_MAX_ERROR = 0.01

Shape = Union[int, Sequence[int]]


@dataclasses.dataclass(frozen=True)
class Cosmology:
  """Flat LambdaCDM parameters (Planck 2018 defaults)."""

  h: float = 0.6736
  omega_m: float = 0.3153
  omega_b: float = 0.0493
  n_s: float = 0.9649
  sigma_8: float = 0.8111
  t_cmb: float = 2.7255


PLANCK18 = Cosmology()


def box_shape(n_cells: Shape) -> Tuple[int, int, int]:
  """An int or a 3-sequence of ints -> a 3-tuple of positive cell counts."""
  if np.ndim(n_cells) == 0:
    shape = (int(n_cells),) * 3
  else:
    shape = tuple(int(n) for n in n_cells)
  if len(shape) != 3 or min(shape) < 2:
    raise ValueError(f"n_cells must be an int >= 2 or three ints >= 2, got {n_cells!r}")
  return shape


def transfer_eisenstein_hu(k: np.ndarray, cosmo: Cosmology = PLANCK18) -> np.ndarray:
  """Eisenstein & Hu (1998) no-wiggle transfer function; k in 1/Mpc (not h/Mpc)."""
  k = np.asarray(k, dtype=np.float64)
  h = cosmo.h
  omh2 = cosmo.omega_m * h ** 2
  obh2 = cosmo.omega_b * h ** 2
  f_b = cosmo.omega_b / cosmo.omega_m
  theta2 = (cosmo.t_cmb / 2.7) ** 2
  sound_horizon = 44.5 * np.log(9.83 / omh2) / np.sqrt(1.0 + 10.0 * obh2 ** 0.75)
  alpha = (1.0 - 0.328 * np.log(431.0 * omh2) * f_b + 0.38 * np.log(22.3 * omh2) * f_b ** 2)
  gamma_eff = cosmo.omega_m * h * (alpha + (1.0 - alpha) / (1.0 + (0.43 * k * sound_horizon) ** 4))
  q = k / h * theta2 / gamma_eff
  l0 = np.log(2.0 * np.e + 1.8 * q)
  c0 = 14.2 + 731.0 / (1.0 + 62.5 * q)
  return l0 / (l0 + c0 * q ** 2)


def growth_factor(redshift: float, cosmo: Cosmology = PLANCK18) -> float:
  """Linear growth factor D(z), normalized to D(0) = 1 (flat LambdaCDM)."""

  def unnormalized(a):
    omega_l = 1.0 - cosmo.omega_m
    e_of = lambda x: math.sqrt(cosmo.omega_m / x ** 3 + omega_l)
    integral, _ = scipy.integrate.quad(lambda x: (x * e_of(x)) ** -3, 0.0, a)
    return 2.5 * cosmo.omega_m * e_of(a) * integral

  return unnormalized(1.0 / (1.0 + redshift)) / unnormalized(1.0)


def _tophat_window(x):
  """Fourier transform of a unit top-hat sphere, W(kR), safe at x = 0."""
  x = np.asarray(x)
  small = x < 1e-3
  safe = np.where(small, 1.0, x)
  window = 3.0 * (np.sin(safe) - safe * np.cos(safe)) / safe ** 3
  return np.where(small, 1.0 - x ** 2 / 10.0, window)


def _sigma_of_radius(radius_mpc: float, pk) -> float:
  """RMS of a linear field with power spectrum `pk` in top-hat spheres of `radius_mpc`."""
  log_k = np.linspace(np.log(1e-5), np.log(1e3), 6000)
  k = np.exp(log_k)
  integrand = k ** 3 * pk(k) * _tophat_window(k * radius_mpc) ** 2 / (2.0 * np.pi ** 2)
  return float(np.sqrt(np.trapezoid(integrand, log_k)))


def linear_power_spectrum(redshift: float, cosmo: Cosmology = PLANCK18):
  """P(k, z) in Mpc^3 with k in 1/Mpc, normalized to sigma_8 at z = 0.

  Returns:
    (pk, pk_z0): callables of k for the snapshot redshift and for z = 0.
  """

  def shape(k):
    return k ** cosmo.n_s * transfer_eisenstein_hu(k, cosmo) ** 2

  sigma8_unit = _sigma_of_radius(8.0 / cosmo.h, shape)
  amplitude = (cosmo.sigma_8 / sigma8_unit) ** 2
  growth2 = growth_factor(redshift, cosmo) ** 2
  return (lambda k: amplitude * growth2 * shape(k)), (lambda k: amplitude * shape(k))


def mean_baryon_density(redshift: float, cosmo: Cosmology = PLANCK18) -> float:
  """Mean comoving-box baryon density at `redshift`, in g/cm^3 (proper)."""
  return RHO_CRIT0_G_CM3_H2 * cosmo.h ** 2 * cosmo.omega_b * (1.0 + redshift) ** 3


def _seed_for(seed: int, *stream: int) -> int:
  """A 32-bit seed for an independent stream, derived from `seed` and a path."""
  return int(np.random.SeedSequence([int(seed), *stream]).generate_state(1)[0])


def lognormal_overdensity(shape, cell_size_mpc: float, redshift: float, seed: int,
                          cosmo: Cosmology = PLANCK18) -> np.ndarray:
  """delta = rho / mean(rho) - 1 of a log-normal field with the linear P(k, z).

  powerbox's numpy FFT backend (`nthreads=1`) keeps the bytes independent of
  whether pyFFTW is installed.
  """
  import powerbox  # local: only the simulator needs it

  pk, _ = linear_power_spectrum(redshift, cosmo)
  box = powerbox.LogNormalPowerBox(shape=tuple(shape), size=tuple(n * cell_size_mpc for n in shape),
                                   pk=pk, seed=seed, nthreads=1)
  with warnings.catch_warnings():
    # Discretizing a realistic P(k) leaves a few tiny negative modes in the latent
    # Gaussian spectrum; powerbox zeroes them and warns, and raises if they matter.
    warnings.filterwarnings("ignore", message=r".*small violation", category=UserWarning)
    delta = box.delta_x()
  return np.asarray(delta, dtype=np.float64)


def sample_sources(delta: np.ndarray, rng: np.random.Generator, redshift: float,
                   sources_per_cell: float, min_halo_mass_msun: float,
                   cosmo: Cosmology = PLANCK18) -> np.ndarray:
  """Poisson source counts, biased to density peaks by conditional EPS.

  The expected count is proportional to the collapsed mass in halos above
  `min_halo_mass_msun`: (1 + delta) * erfc((delta_c - delta_L) / sqrt(2 (s_min^2 -
  s_cell^2))), where delta_L = log(1 + delta) minus its mean is the Gaussian
  (linear-like) field behind the log-normal and s_* are linear RMS values at z.
  """
  _, pk_z0 = linear_power_spectrum(redshift, cosmo)
  rho_m = RHO_CRIT0_MSUN_MPC3_H2 * cosmo.h ** 2 * cosmo.omega_m
  radius_min = (3.0 * min_halo_mass_msun / (4.0 * np.pi * rho_m)) ** (1.0 / 3.0)
  sigma_min = _sigma_of_radius(radius_min, pk_z0) * growth_factor(redshift, cosmo)
  log_density = np.log1p(delta)
  delta_lin = log_density - log_density.mean()
  spread2 = max(sigma_min ** 2 - float(delta_lin.var()), 1e-4)
  collapsed = (1.0 + delta) * scipy.special.erfc(
      (DELTA_COLLAPSE - delta_lin) / np.sqrt(2.0 * spread2))
  mean_collapsed = float(collapsed.mean())
  if not mean_collapsed > 0.0:
    raise ValueError(f"no halos above min_halo_mass_msun={min_halo_mass_msun:g} at z={redshift}: "
                     "lower it or the redshift")
  expected = collapsed * (sources_per_cell / mean_collapsed)
  return rng.poisson(expected).astype(np.float32)


def _wavenumbers(shape, cell_size_mpc: float) -> np.ndarray:
  """|k| in 1/Mpc on the rfftn grid of a box of `shape`, float32."""
  kx = 2.0 * np.pi * np.fft.fftfreq(shape[0], d=cell_size_mpc)
  ky = 2.0 * np.pi * np.fft.fftfreq(shape[1], d=cell_size_mpc)
  kz = 2.0 * np.pi * np.fft.rfftfreq(shape[2], d=cell_size_mpc)
  k2 = kx[:, None, None] ** 2 + ky[None, :, None] ** 2 + kz[None, None, :] ** 2
  return np.sqrt(k2).astype(np.float32)


def tophat_smooth(field: np.ndarray, radius_cells: float,
                  workers: Optional[int] = None) -> np.ndarray:
  """Periodic top-hat (sphere) average of `field` over `radius_cells` cells, float32."""
  field = np.asarray(field, dtype=np.float32)
  window = _tophat_window(_wavenumbers(field.shape, 1.0) * np.float32(radius_cells))
  return scipy.fft.irfftn(
      scipy.fft.rfftn(field, workers=workers) * window.astype(np.float32), s=field.shape,
      workers=workers)


def smoothing_radii(cell_size_mpc: float, mfp_mpc: float, radius_factor: float = 1.15):
  """Sphere radii from one cell up to the mean free path, geometric with `radius_factor`."""
  if mfp_mpc < cell_size_mpc:
    return np.array([cell_size_mpc])
  count = int(np.ceil(np.log(mfp_mpc / cell_size_mpc) / np.log(radius_factor))) + 1
  return np.geomspace(cell_size_mpc, mfp_mpc, count)


def ionizing_ratio(density: np.ndarray, n_src: np.ndarray, cell_size_mpc: float, mfp_mpc: float,
                   radius_factor: float = 1.15, workers: Optional[int] = None,
                   max_sphere_mpc: Optional[float] = None):
  """The two fields the ionization criterion needs, computed once per box.

  Args:
    density: any positive density field (normalized to its mean here).
    n_src: source counts or luminosities per cell.
    cell_size_mpc: comoving cell side.
    mfp_mpc: largest sphere radius (the photon mean free path).
    radius_factor: ratio of successive sphere radii.
    workers: FFT threads (scipy.fft; the result does not depend on it).
    max_sphere_mpc: leave out the spheres of the radius grid larger than this (to ask
      how much of the rule a finite neighbourhood sees); None keeps them all.

  Returns:
    (max_ratio, cell_ratio): max over radii of sources(R) / hydrogen(R), and the
    cell's own n_src / (1 + delta); float32 arrays of the box shape.
  """
  hydrogen = np.asarray(density, dtype=np.float64)
  hydrogen = (hydrogen / hydrogen.mean()).astype(np.float32)
  sources = np.asarray(n_src, dtype=np.float32)
  floor = np.float32(1e-3)
  cell_ratio = sources / np.maximum(hydrogen, floor)
  k = _wavenumbers(hydrogen.shape, cell_size_mpc)
  sources_k = scipy.fft.rfftn(sources, workers=workers)
  hydrogen_k = scipy.fft.rfftn(hydrogen, workers=workers)
  max_ratio = cell_ratio.copy()
  for radius in smoothing_radii(cell_size_mpc, mfp_mpc, radius_factor):
    if max_sphere_mpc is not None and radius > max_sphere_mpc:
      continue
    window = _tophat_window(k * np.float32(radius)).astype(np.float32)
    smooth_sources = scipy.fft.irfftn(sources_k * window, s=hydrogen.shape, workers=workers)
    smooth_hydrogen = scipy.fft.irfftn(hydrogen_k * window, s=hydrogen.shape, workers=workers)
    np.maximum(max_ratio, smooth_sources / np.maximum(smooth_hydrogen, floor), out=max_ratio)
  return max_ratio, cell_ratio


def ionized_fraction(max_ratio: np.ndarray, cell_ratio: np.ndarray, zeta: float) -> np.ndarray:
  """x_HII for efficiency `zeta`: 1 inside bubbles, else the cell's own partial value."""
  zeta = np.float32(zeta)
  return np.where(max_ratio * zeta >= 1.0, np.float32(1.0),
                  np.minimum(cell_ratio * zeta, np.float32(1.0))).astype(np.float32)


def solve_efficiency(max_ratio: np.ndarray, cell_ratio: np.ndarray, mean_xhii: float,
                     tolerance: float = XHII_TOLERANCE, max_iterations: int = 200) -> float:
  """Bisection (in log zeta) for the efficiency giving volume-mean x_HII = mean_xhii.

  Raises:
    ValueError: the target cannot be reached within XHII_MAX_ERROR (e.g. cells that
      no sphere up to the mean free path connects to a source stay neutral).
  """
  if not 0.0 < mean_xhii < 1.0:
    raise ValueError(f"mean_xhii must be in (0, 1), got {mean_xhii}")
  positive = max_ratio[max_ratio > 0]
  if positive.size == 0:
    raise ValueError("the box has no sources, so it cannot be ionized")
  mean_at = lambda z: float(ionized_fraction(max_ratio, cell_ratio, z).mean(dtype=np.float64))
  log_lo = np.log(0.5 / float(positive.max()))
  log_hi = np.log(1.0 / float(positive.min()))
  best = (np.inf, float(np.exp(log_hi)))
  for _ in range(max_iterations):
    log_mid = 0.5 * (log_lo + log_hi)
    value = mean_at(np.exp(log_mid))
    best = min(best, (abs(value - mean_xhii), float(np.exp(log_mid))))
    if best[0] <= tolerance:
      break
    if value < mean_xhii:
      log_lo = log_mid
    else:
      log_hi = log_mid
  if best[0] > XHII_MAX_ERROR:
    raise ValueError(f"cannot reach mean x_HII {mean_xhii} (closest {mean_at(best[1]):.4f}): "
                     "raise mfp_mpc or sources_per_cell, or lower mean_xhii")
  return best[1]


def ionize(density: np.ndarray, n_src: np.ndarray, mean_xhii: float = 0.5,
           cell_size_mpc: float = conventions.CELL_SIZE_MPC, mfp_mpc: float = 50.0,
           radius_factor: float = 1.15, workers: Optional[int] = None):
  """Excursion-set x_HII of any (density, sources) box, tuned to `mean_xhii`.

  Args:
    density: positive density field (any unit), 3-D, periodic.
    n_src: non-negative sources per cell, same shape.
    mean_xhii: target volume-averaged ionized fraction, in (0, 1).
    cell_size_mpc: comoving cell side in Mpc.
    mfp_mpc: photon mean free path: the largest sphere radius in Mpc.
    radius_factor: ratio of successive sphere radii.
    workers: FFT threads.

  Returns:
    (x_hii float32 array, zeta).
  """
  max_ratio, cell_ratio = ionizing_ratio(density, n_src, cell_size_mpc, mfp_mpc, radius_factor,
                                         workers)
  zeta = solve_efficiency(max_ratio, cell_ratio, mean_xhii)
  return ionized_fraction(max_ratio, cell_ratio, zeta), zeta


# What a synthetic box's n_src holds (`simulate_snapshot(sources=...)`).
SOURCE_KINDS = ("counts", "photons")


def simulate_snapshot(n_cells: Shape = 64, seed: int = 0, redshift: float = 8.397,
                      cell_size_mpc: float = conventions.CELL_SIZE_MPC, mean_xhii: float = 0.5,
                      mfp_mpc: float = 50.0, sources_per_cell: float = 0.2,
                      min_halo_mass_msun: float = 1e9, radius_factor: float = 1.15,
                      cosmology: Cosmology = PLANCK18, workers: Optional[int] = None,
                      sources: str = "counts") -> Snapshot:
  """One synthetic periodic snapshot; the same arguments give identical bytes.

  Args:
    n_cells: cells per side (int) or per axis (3 ints; non-cubic boxes are fine).
    seed: realization seed; density and sources use independent streams from it.
    redshift: sets the growth factor (density contrast) and the mean density.
    cell_size_mpc: comoving cell side (default: that of the original C2-Ray boxes).
    mean_xhii: volume-averaged ionized fraction the efficiency is solved for.
    mfp_mpc: photon mean free path, the largest ionizing sphere radius.
    sources_per_cell: mean source count per cell (most cells still hold none).
    min_halo_mass_msun: smallest source halo; larger means rarer, more biased sources.
    radius_factor: ratio of successive sphere radii in the excursion set.
    cosmology: flat LambdaCDM parameters.
    workers: FFT threads for the excursion set (does not change the result).
    sources: what n_src holds (`SOURCE_KINDS`): "counts", the source counts, whose
      efficiency (solved for `mean_xhii`, different in every realization) is not an
      input; or "photons", the counts times that efficiency, in which the ionization
      threshold is the same in every box.

  Returns:
    Snapshot with float32 rho (g/cm^3), n_src (counts or photons) and x_hii.
  """
  shape = box_shape(n_cells)
  if not 0.0 < mean_xhii < 1.0:
    raise ValueError(f"mean_xhii must be in (0, 1), got {mean_xhii}")
  if sources not in SOURCE_KINDS:
    raise ValueError(f"sources must be one of {SOURCE_KINDS}, got {sources!r}")
  delta = lognormal_overdensity(shape, cell_size_mpc, redshift, _seed_for(seed, 0), cosmology)
  rng = np.random.default_rng(_seed_for(seed, 1))
  n_src = sample_sources(delta, rng, redshift, sources_per_cell, min_halo_mass_msun, cosmology)
  rho = (mean_baryon_density(redshift, cosmology) * (1.0 + delta)).astype(np.float32)
  x_hii, zeta = ionize(rho, n_src, mean_xhii, cell_size_mpc, mfp_mpc, radius_factor, workers)
  if sources == "photons":
    n_src = (np.float32(zeta) * n_src).astype(np.float32)
  return Snapshot(rho=rho, n_src=n_src, x_hii=x_hii, redshift=float(redshift),
                  name=f"synthetic(seed={seed}, n_cells={shape}, z={redshift:.3f})")


def split_seeds(seed: int, num_train: int = 1, num_validation: int = 1, num_test: int = 1):
  """Seeds of the realizations of each split: disjoint streams derived from `seed`."""
  counts = {"train": num_train, "validation": num_validation, "test": num_test}
  return {
      split: [_seed_for(seed, 100 + s, i) for i in range(counts[split])]
      for s, split in enumerate(conventions.SPLITS)
  }


def synthetic_splits(n_cells: Shape = 64, seed: int = 0, num_train: int = 1,
                     num_validation: int = 1, num_test: int = 1, **kwargs) -> dict:
  """The embedded default data: independent realizations per split.

  Args:
    n_cells: box side (int) or shape (3 ints).
    seed: master seed; each realization gets its own seed derived from it.
    num_train: realizations in "train".
    num_validation: realizations in "validation".
    num_test: realizations in "test".
    **kwargs: forwarded to `simulate_snapshot` (redshift, mean_xhii, mfp_mpc, ...).

  Returns:
    {"train": [Snapshot, ...], "validation": [...], "test": [...]}.
  """
  seeds = split_seeds(seed, num_train, num_validation, num_test)
  return {
      split: [simulate_snapshot(n_cells, seed=s, **kwargs) for s in seeds[split]]
      for split in conventions.SPLITS
  }

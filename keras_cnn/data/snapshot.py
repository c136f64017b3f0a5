"""One snapshot of a reionization box: the three fields of DESIGN.md.

The caller-side preprocessing is defined here once: `overdensity(rho)`.
Everything else (source transform, standardization) happens inside the model.
"""

import dataclasses
from typing import Optional

import numpy as np


@dataclasses.dataclass
class Snapshot:
  """Fields of one periodic box, float32, all of the same 3-D shape.

  Attributes:
    rho: gas density in any positive unit (g/cm^3 in C2-Ray files).
    n_src: ionizing sources per cell (non-negative, mostly zeros).
    x_hii: ionized fraction in [0, 1]; None when only predicting.
    redshift: snapshot redshift.
    name: where it came from (a path, or "synthetic(seed=...)"), used in messages.
  """

  rho: np.ndarray
  n_src: np.ndarray
  x_hii: Optional[np.ndarray]
  redshift: float
  name: str = ""

  @property
  def shape(self):
    return self.rho.shape

  @property
  def n_igm(self) -> np.ndarray:
    """The model's left input: the IGM overdensity."""
    return overdensity(self.rho)


def overdensity(rho: np.ndarray) -> np.ndarray:
  """rho / mean(rho) - 1, the only transform a caller applies before the model."""
  rho = np.asarray(rho, dtype=np.float32)
  mean = float(rho.mean(dtype=np.float64))
  return (rho / np.float32(mean) - np.float32(1.0)).astype(np.float32, copy=False)

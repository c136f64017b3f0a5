"""The source transforms a model can apply to its source input, in NumPy.

`keras_cnn.model.SourceTransform` applies the same transform inside the network; this
NumPy twin fits the normalization statistics on the training boxes, so the data layer
needs no Keras.
"""

import numpy as np

SOURCE_TRANSFORMS = ("none", "log1p", "mean_scaled")
# Transforms whose source input is the box's sources over their box mean (applied by
# the caller: `keras_cnn.data.snapshot.scale_sources`), which makes the model unit-free.
MEAN_SCALED = ("mean_scaled",)
# Transforms that take log(1 + max(x, 0)) of their input.
LOG1P = ("log1p",) + MEAN_SCALED


def apply_source_transform(values, kind: str) -> np.ndarray:
  """NumPy twin of `keras_cnn.model.SourceTransform`."""
  if kind not in SOURCE_TRANSFORMS:
    raise ValueError(f"source_transform must be one of {SOURCE_TRANSFORMS}, got {kind!r}")
  values = np.asarray(values, dtype=np.float32)
  if kind in LOG1P:
    return np.log1p(np.maximum(values, 0.0))
  return values

"""The two-branch 3D CNN of the original project, as a Keras functional model.

Left branch (`conv3d_6..8`) sees the IGM overdensity, right branch (`conv3d_15..17`)
the ionizing sources; a Dense/Dropout head (`dense` .. `dense_7`) maps the concatenated
features to the ionized fraction x_HII of the centre voxel. Layer names are the
original project's, so weights and summaries can be compared line by line.

Input normalization lives inside the model (`source_transform`, `normalize_n_igm`,
`normalize_n_src`), so a saved `.keras` file takes raw-unit fields: the overdensity
`rho / mean(rho) - 1` (see `keras_cnn.data.snapshot.overdensity`) and raw source counts.
The identity layer `input_domain` on the source input carries, in its config, what the
training inputs were (`keras_cnn.domain`).

Optionally (`conditioning`, off by default) a third input "condition" of shape (1,),
one value per box (its redshift, cosmic time or mean x_HII: `keras_cnn.conditioning`),
is standardized (`normalize_condition`) and appended to the flattened features
(`concatenate_condition`) before `dense`. Optionally (`excursion_radii`) the head also
sees the log of the mean density and sources over spheres around the voxel (`excursion_set`,
`normalize_excursion`, appended by `concatenate_excursion`, and their own short path
to the logit, `excursion_path`).
"""

import contextlib
from typing import Optional, Sequence

import keras
import numpy as np
from keras import ops

from keras_cnn import conditioning
from keras_cnn import config as config_lib
from keras_cnn.data import transforms

LEFT_BLOCKS = (6, 7, 8)
# The optional excursion-set features (`ModelConfig.excursion_radii`), standardized.
EXCURSION_LAYER = "excursion_set"
EXCURSION_NORM = "normalize_excursion"
EXCURSION_UNITS = (128, 64)  # widths of the features' own path (`excursion_path`)
EXCURSION_LOGIT = "excursion_logit"
EXCURSION_ADD = "add_excursion"  # dense_7's logit + the path's, then the sigmoid
EXCURSION_SIGMOID = "sigmoid_excursion"
RIGHT_BLOCKS = (15, 16, 17)
SOURCE_TRANSFORMS = transforms.SOURCE_TRANSFORMS
MEAN_SCALED = transforms.MEAN_SCALED  # the caller divides the sources by their box mean
PADDINGS = config_lib.PADDINGS
# Every size of the network; its defaults are the CPU default preset.
ModelConfig = config_lib.ModelConfig

# The original project's week-2 network: r=24 (the mean free path), kernel 5, 128 filters,
# average pooling 2, dropout 0.8 / 0.5, 'same' padding (`flags/week2.flags`).
WEEK2 = ModelConfig(radius=24, kernel_size=5, filters=128, stride_conv=1, kernel_pooling=2,
                    dropout_input=0.8, dropout_hidden=0.5, padding="same", fusion="late",
                    excursion_radii=())


@keras.saving.register_keras_serializable(package="keras_cnn")
class SourceTransform(keras.layers.Layer):
  """Elementwise transform of the source field before normalization.

  Source counts are heavy-tailed (mostly zeros, a few bright cells); `log1p`
  compresses the tail so that normalization is not dominated by it.

  "mean_scaled" is `log1p` of sources the caller has divided by their box mean
  (`keras_cnn.data.snapshot.scale_sources`): a box mean is a property of the whole box,
  which no crop sees, so the division cannot happen in here; the kind, saved with the
  model, tells every command to apply it, and the model then takes sources in any unit.

  Args:
    kind: "log1p" (log(1 + max(x, 0))), "mean_scaled" (the same, on sources over their
      box mean) or "none" (identity).

  Example:
    >>> SourceTransform("log1p")(np.array([0.0, np.e - 1.0]))  # -> [0., 1.]
  """

  def __init__(self, kind: str = "log1p", **kwargs):
    super().__init__(**kwargs)
    if kind not in SOURCE_TRANSFORMS:
      raise ValueError(f"source_transform must be one of {SOURCE_TRANSFORMS}, got {kind!r}")
    self.kind = kind

  def call(self, inputs):
    if self.kind in transforms.LOG1P:
      return ops.log1p(ops.maximum(inputs, 0.0))
    return inputs

  def compute_output_shape(self, input_shape):
    return input_shape

  def get_config(self):
    return {**super().get_config(), "kind": self.kind}


@keras.saving.register_keras_serializable(package="keras_cnn")
class InputDomain(keras.layers.Layer):
  """Identity on the source input whose config records what the training inputs were.

  The record (`keras_cnn.domain.make_record`: the sources' units and statistics of
  both training inputs) is plain JSON in the layer's config, so it travels inside the
  saved `.keras` file and loads with `safe_mode=True`; `keras_cnn.domain.check_inputs`
  compares new boxes with it.

  Args:
    record: the record, or None when the model was built without training data.
  """

  def __init__(self, record: Optional[dict] = None, **kwargs):
    super().__init__(**kwargs)
    self.record = record

  def call(self, inputs):
    return inputs

  def compute_output_shape(self, input_shape):
    return input_shape

  def get_config(self):
    return {**super().get_config(), "record": self.record}


@keras.saving.register_keras_serializable(package="keras_cnn")
class Condition(keras.layers.Layer):
  """Standardizes the snapshot-wide condition, (value - mean) / std, and records its kind.

  Args:
    kind: what the value is (`keras_cnn.conditioning.KINDS`, not "none").
    mean: mean of the training snapshots' values.
    std: their standard deviation (> 0).
  """

  def __init__(self, kind: str = "redshift", mean: float = 0.0, std: float = 1.0, **kwargs):
    super().__init__(**kwargs)
    self.kind = kind
    self.mean = float(mean)
    self.std = float(std)

  def call(self, inputs):
    return (inputs - self.mean) / self.std

  def compute_output_shape(self, input_shape):
    return input_shape

  def get_config(self):
    return {**super().get_config(), "kind": self.kind, "mean": self.mean, "std": self.std}


apply_source_transform = transforms.apply_source_transform  # the NumPy twin of SourceTransform

# Floors inside the logarithms of `ExcursionFeatures`: a sphere emptied of hydrogen by
# noise, and a sphere without sources (its sources are in units of their training mean).
DENSITY_FLOOR = 1e-3
SOURCE_FLOOR = 1e-2


def _float64():
  """A context in which the backend computes in float64 (jax needs it switched on)."""
  if keras.backend.backend() == "jax":
    import jax

    return jax.enable_x64(True)
  return contextlib.nullcontext()


def _inverse_fft_kept(real, imag, radius: int):
  """Inverse FFT along the last axis, keeping the entries [radius, n - radius). Keras has
  only the forward 1-D transform: ifft(z) = conj(fft(conj(z))) / n."""
  n = int(real.shape[-1])
  real, imag = ops.fft((real, -imag))
  keep = slice(radius, n - radius)
  return real[..., keep] / n, -imag[..., keep] / n


def tophat_window(x):
  """Fourier transform of a sphere of unit volume at k * R = x (1 at x = 0)."""
  x = np.asarray(x, np.float64)
  safe = np.where(x > 1e-6, x, 1.0)
  return np.where(x > 1e-6, 3.0 * (np.sin(safe) - safe * np.cos(safe)) / safe ** 3, 1.0)


def excursion_kernels(radii: Sequence[float], crop_radius: int) -> np.ndarray:
  """The sphere filters of `ExcursionFeatures`: (len(radii), 2r+1, 2r+1, 2r+1), float64.

  Each is the sphere of radius R as a Fourier-space top-hat (21cmFAST's real-space
  top-hat filter) sampled on the grid, cut to the crop and to the cells within R + 1 of
  the centre, and normalized to sum 1: a weighted mean over the sphere. R = 0 is the
  cell itself.
  """
  side = 2 * crop_radius + 1
  n = 4 * (crop_radius + 1)  # the grid the band-limited sphere is sampled on
  freq = 2.0 * np.pi * np.fft.fftfreq(n)
  freq_z = 2.0 * np.pi * np.fft.rfftfreq(n)
  k = np.sqrt(freq[:, None, None] ** 2 + freq[None, :, None] ** 2 + freq_z[None, None, :] ** 2)
  offsets = np.arange(-crop_radius, crop_radius + 1)
  distance = np.sqrt(offsets[:, None, None] ** 2 + offsets[None, :, None] ** 2 +
                     offsets[None, None, :] ** 2)
  kernels = np.zeros((len(radii), side, side, side))
  for j, radius in enumerate(radii):
    if radius == 0:
      kernels[j, crop_radius, crop_radius, crop_radius] = 1.0
      continue
    sphere = np.fft.irfftn(tophat_window(k * radius), s=(n, n, n))
    kernel = sphere[np.ix_(offsets % n, offsets % n, offsets % n)]
    kernel = np.where(distance <= radius + 1.0, kernel, 0.0)
    kernels[j] = kernel / kernel.sum()
  return kernels


@keras.saving.register_keras_serializable(package="keras_cnn")
class ExcursionFeatures(keras.layers.Layer):
  """log of the mean density and of the mean sources over spheres around the voxel.

  An excursion-set criterion ionizes a cell when, for some sphere around it, the sources
  summed over the sphere beat the hydrogen in it: a threshold on the largest difference
  of these logarithms. The convolutions form such sums only through their strided blocks;
  this layer hands them to the head exactly, at the voxel itself, for each radius of
  `radii` (`excursion_kernels`). Output (batch, 2 * len(radii) + 1): log(1 + mean
  overdensity) per radius, log(mean sources + floor) per radius, then the largest
  difference of the two over the radii.

  Args:
    radii: sphere radii in cells, each <= the crop radius.
    source_mean: the training sources' mean (raw units): sources enter as multiples of it.
  """

  def __init__(self, radii: Sequence[float] = (), source_mean: float = 1.0, **kwargs):
    super().__init__(**kwargs)
    self.radii = [float(r) for r in radii]
    self.source_mean = float(source_mean)
    self._kernels = {}  # per crop radius: `excursion_kernels`, computed once
    self._spectra = {}

  @property
  def width(self) -> int:
    return 2 * len(self.radii) + 1

  def _logs(self, density_means, source_means):
    density = ops.log(ops.maximum(1.0 + density_means, DENSITY_FLOOR))
    sources = ops.log(ops.maximum(source_means, 0.0) / self.source_mean + SOURCE_FLOOR)
    largest = ops.max(sources - density, axis=-1, keepdims=True)
    return ops.concatenate([density, sources, largest], axis=-1)

  def kernels(self, radius: int) -> np.ndarray:
    """`excursion_kernels` of this layer's radii for crops of radius `radius`."""
    if radius not in self._kernels:
      self._kernels[radius] = excursion_kernels(self.radii, radius)
    return self._kernels[radius]

  def call(self, inputs):
    igm, src = (ops.cast(x, self.compute_dtype) for x in inputs)
    radius = (int(igm.shape[1]) - 1) // 2
    kernels = self.kernels(radius).reshape(len(self.radii), -1).T
    kernels = ops.convert_to_tensor(kernels.astype(np.float32))
    cells = (2 * radius + 1) ** 3
    return self._logs(ops.matmul(ops.reshape(igm, (-1, cells)), kernels),
                      ops.matmul(ops.reshape(src, (-1, cells)), kernels))

  def _spectrum(self, sides, radius: int):
    """The kernels' 3-D real FFTs on a grid of `sides`: real (the kernels are symmetric),
    as (len(radii), n3 // 2 + 1, n1, n2), the layout `_sphere_means` multiplies."""
    key = (tuple(sides), radius)
    if key not in self._spectra:
      padded = np.zeros((len(self.radii),) + tuple(sides))
      offsets = np.arange(-radius, radius + 1)
      index = np.ix_(*[offsets % n for n in sides])
      for j, kernel in enumerate(self.kernels(radius)):
        padded[j][index] = kernel
      spectrum = np.fft.rfftn(padded, axes=(1, 2, 3)).real
      self._spectra[key] = np.transpose(spectrum, (0, 3, 1, 2))
    return self._spectra[key]

  def _sphere_means(self, field, radius: int):
    """(B, n1, n2, n3, 1) -> (B, n1 - 2r, n2 - 2r, n3 - 2r, len(radii)) by FFT: the tile
    is not periodic, but the kept voxels' spheres stay inside it, so no wrap reaches them.
    The inverse transform runs one axis at a time and drops the halo after each, so the
    later passes (and the transposes between them) see only the kept voxels' rows."""
    sides = [int(n) for n in field.shape[1:4]]
    x = field[..., 0]
    real, imag = ops.rfft(x)  # along n3
    real, imag = (ops.transpose(t, (0, 3, 1, 2))[:, None] for t in (real, imag))
    real, imag = ops.fft2((real, imag))  # along n1, n2: (B, 1, n3 // 2 + 1, n1, n2)
    spectrum = ops.cast(self._spectrum(sides, radius), real.dtype)
    real, imag = real * spectrum, imag * spectrum  # (B, radii, n3 // 2 + 1, n1, n2)
    real, imag = _inverse_fft_kept(real, imag, radius)  # along n2
    real, imag = (ops.transpose(t, (0, 1, 2, 4, 3)) for t in (real, imag))
    real, imag = _inverse_fft_kept(real, imag, radius)  # along n1
    real, imag = (ops.transpose(t, (0, 1, 4, 3, 2)) for t in (real, imag))
    out = ops.irfft((real, imag), fft_length=sides[2])  # (B, radii, n1 - 2r, n2 - 2r, n3)
    out = out[..., radius:sides[2] - radius]
    return ops.transpose(out, (0, 2, 3, 4, 1))

  def tile(self, igm, src, radius: int):
    """The same features at every voxel of a tile with a halo of `radius` cells:
    (B, X + 2r, ...) -> (B, X, Y, Z, width) (`keras_cnn.dense.DenseTwin`)."""
    # The FFTs run in float64 where the backend has it (jax only with jax_enable_x64):
    # in float32 their round-off, relative to the tile's largest values, would show in the
    # logarithm of an empty sphere's sources.
    with _float64():
      means = [
          ops.cast(self._sphere_means(ops.cast(field, "float64"), radius), self.compute_dtype)
          for field in (igm, src)
      ]
    return self._logs(*means)

  def compute_output_shape(self, input_shape):
    return (input_shape[0][0], self.width)


def source_transform_of(model: keras.Model) -> str:
  """The `source_transform` kind of a built or loaded model."""
  return model.get_layer("source_transform").kind


def feature_map_sizes(config: ModelConfig) -> list:
  """Spatial side after each of the three conv+pool blocks."""
  side = config.crop_size
  sizes = []
  for stride in config.strides_per_block():
    if config.padding == "same":
      side = -(-side // stride)  # ceil(n / stride)
    elif side >= config.kernel_size:
      side = (side - config.kernel_size) // stride + 1
    else:
      side = 0
    side = side // config.kernel_pooling  # pool stride = pool size
    sizes.append(side)
  return sizes


def receptive_offset(config: ModelConfig) -> float:
  """How far (cells, per axis) the centre of the input a 'valid' model uses lies from
  the crop centre.

  A 'valid' convolution or a pooling that floors away a row leaves the far end of the
  crop unused, so the receptive field shifts towards the low corner and the 48 cube
  symmetries stop being exact symmetries of the model. 0 for 'same' models and for
  centred sizes (e.g. r=15, k=3, stride 2: 31 -> 15 -> 7 -> 3).
  """
  if config.padding == "same":
    return 0.0
  used = feature_map_sizes(config)[-1]
  for stride in reversed(config.strides_per_block()):
    used *= config.kernel_pooling
    used = (used - 1) * stride + config.kernel_size
  return (config.crop_size - used) / 2.0


def validate_config(config: ModelConfig) -> None:
  """Raises ValueError naming the flag to change when the config cannot build."""
  if config.radius < 0:
    raise ValueError(f"--radius must be >= 0, got {config.radius}")
  positive = ("kernel_size", "filters", "stride_conv", "kernel_pooling")
  for name in positive:
    if getattr(config, name) < 1:
      raise ValueError(f"--{name} must be >= 1, got {getattr(config, name)}")
  for name in ("block_filters", "block_strides"):
    values = list(getattr(config, name))
    if values and (len(values) != len(LEFT_BLOCKS) or any(int(v) < 1 for v in values)):
      raise ValueError(f"--{name} needs {len(LEFT_BLOCKS)} positive values (blocks 1, 2, 3) or "
                       f"none, got {values}")
  if config.kernel_size % 2 == 0:
    raise ValueError(
        f"--kernel_size must be odd (centred 'same' convolution), got {config.kernel_size}")
  for name in ("dropout_input", "dropout_hidden"):
    rate = getattr(config, name)
    if not 0.0 <= rate < 1.0:
      raise ValueError(f"--{name} must be in [0, 1), got {rate}")
  if len(config.dense_units) != 5 or any(u < 1 for u in config.dense_units):
    raise ValueError(
        f"--dense_units needs 5 positive widths (dense .. dense_4), got {list(config.dense_units)}")
  if len(config.tail_units) != 2 or any(u < 1 for u in config.tail_units):
    raise ValueError(
        f"--tail_units needs 2 positive widths (dense_5, dense_6), got {list(config.tail_units)}")
  if config.padding not in PADDINGS:
    raise ValueError(f"--padding must be one of {PADDINGS}, got {config.padding!r}")
  if config.source_transform not in SOURCE_TRANSFORMS:
    raise ValueError(
        f"--source_transform must be one of {SOURCE_TRANSFORMS}, got {config.source_transform!r}")
  if config.fusion not in config_lib.FUSIONS:
    raise ValueError(f"--fusion must be one of {config_lib.FUSIONS}, got {config.fusion!r}")
  if config.conditioning not in conditioning.KINDS:
    raise ValueError(
        f"--conditioning must be one of {conditioning.KINDS}, got {config.conditioning!r}")
  radii = [float(r) for r in config.excursion_radii]
  if any(r < 0 for r in radii) or len(set(radii)) != len(radii):
    raise ValueError(f"--excursion_radii needs distinct radii >= 0, got {radii}")
  sizes = feature_map_sizes(config)
  if sizes[-1] < 1:
    raise ValueError(
        f"crop of side {config.crop_size} (--radius={config.radius}) shrinks to nothing after "
        f"three blocks of --kernel_size={config.kernel_size}, "
        f"--stride_conv={config.stride_conv} (per block {list(config.strides_per_block())}), "
        f"--kernel_pooling={config.kernel_pooling} and "
        f"--padding={config.padding} (sides {sizes}): increase --radius or decrease "
        "--kernel_size / --stride_conv / --kernel_pooling")


def flattened_width(config: ModelConfig) -> int:
  """Width of `flatten`: both branches' final feature maps."""
  return 2 * config.filters_per_block()[-1] * feature_map_sizes(config)[-1] ** 3


def _block(x, i, filters, stride, config: ModelConfig):
  x = keras.layers.Conv3D(filters, config.kernel_size, strides=stride, padding=config.padding,
                          name=f"conv3d_{i}")(x)
  x = keras.layers.BatchNormalization(momentum=config.batch_norm_momentum,
                                      name=f"batch_normalization_{i}")(x)
  x = keras.layers.LeakyReLU(negative_slope=config.leaky_relu_slope, name=f"leaky_re_lu_{i}")(x)
  return keras.layers.AveragePooling3D(pool_size=config.kernel_pooling,
                                       name=f"average_pooling_3d_{i}")(x)


def training_excursion_stats(fields, radii: Sequence[float], radius: int, source_mean: float,
                             region=None, side: int = 64):
  """(means, variances) of `ExcursionFeatures` over the training boxes, per feature.

  Each box contributes its low corner of up to `side`^3 cells (within the x-range
  `region` when the box is shared between splits), read with its periodic halo.
  """
  layer = ExcursionFeatures(radii, source_mean, dtype="float32")
  rows = []
  for n_igm, n_src, _ in fields:
    start = 0 if region is None else region[0]
    stop = n_igm.shape[0] if region is None else region[1]
    extent = [min(side, stop - start)] + [min(side, n) for n in n_igm.shape[1:]]
    index = np.ix_(*[
        np.arange(a - radius, a + e + radius) % n
        for a, e, n in zip((start, 0, 0), extent, n_igm.shape)
    ])
    tiles = [np.asarray(f[index], np.float32)[None, ..., None] for f in (n_igm, n_src)]
    features = ops.convert_to_numpy(layer.tile(*tiles, radius))
    rows.append(features.reshape(-1, features.shape[-1]).astype(np.float64))
  rows = np.concatenate(rows)
  return rows.mean(axis=0).tolist(), np.maximum(rows.var(axis=0), 1e-6).tolist()


def excursion_path(features, config: ModelConfig):
  """The excursion-set features' own small head: its logit is added to `dense_7`'s.

  Beside the flattened feature maps (hundreds of inputs, under dropout) the head alone
  learns the sharp threshold these features carry several times more slowly; this short
  path gives them a direct route to the output.
  """
  x = features
  for i, units in enumerate(EXCURSION_UNITS):
    suffix = "" if i == 0 else f"_{i}"
    x = keras.layers.Dense(units, name=f"excursion_dense{suffix}")(x)
    x = keras.layers.LeakyReLU(negative_slope=config.leaky_relu_slope,
                               name=f"excursion_leaky_re_lu{suffix}")(x)
  return keras.layers.Dense(1, dtype="float32", name=EXCURSION_LOGIT)(x)


def fusion_layer_name(block: int) -> str:
  """Name of the Concatenate that joins both branches before block `block` (0-based)."""
  return "concatenate_fields" if block == 0 else f"concatenate_block_{block}"


def fuses_before(fusion: str, block: int) -> bool:
  """Whether both branches' inputs are joined before block `block` (0-based)."""
  return fusion == "every" or (fusion == "early" and block == 0)


def _branches(left, right, config: ModelConfig):
  """Both branches, block by block; `config.fusion` says where they see each other."""
  blocks = zip(LEFT_BLOCKS, RIGHT_BLOCKS, config.filters_per_block(), config.strides_per_block())
  for b, (i, j, filters, stride) in enumerate(blocks):
    if fuses_before(config.fusion, b):
      left = right = keras.layers.Concatenate(axis=-1, name=fusion_layer_name(b))([left, right])
    left = _block(left, i, filters, stride, config)
    right = _block(right, j, filters, stride, config)
  return left, right


def build_model(config: ModelConfig = ModelConfig(), n_igm_stats: Optional[Sequence[float]] = None,
                n_src_stats: Optional[Sequence[float]] = None, name: str = "keras_cnn",
                domain: Optional[dict] = None, condition_stats: Optional[Sequence[float]] = None,
                source_mean: Optional[float] = None,
                excursion_stats: Optional[Sequence] = None) -> keras.Model:
  """Builds the two-branch CNN.

  Args:
    config: network sizes; see `ModelConfig`.
    n_igm_stats: (mean, variance) of the training overdensity; (0, 1) if None.
    n_src_stats: (mean, variance) of the *transformed* training sources; (0, 1) if None.
    name: model name.
    domain: the record of the training inputs (`keras_cnn.domain.make_record`), kept
      in the config of the identity layer `input_domain`; None records nothing.
    condition_stats: (mean, std) of the training snapshots' condition values
      (`keras_cnn.conditioning.training_stats`); (0, 1) if None. Only with
      `config.conditioning` other than "none".
    source_mean: mean of the raw training sources, the unit of the sources in
      `excursion_set` (only with `config.spheres()`); 1 if None.
    excursion_stats: (means, variances) of the excursion-set features over the training
      boxes (`training_excursion_stats`); (0, 1) if None.

  Returns:
    A `keras.Model` with inputs {"n_igm", "n_src"} of shape (2r+1,)*3 + (1,) (and
    "condition" of shape (1,) when conditioned) and output `x_hii` (batch, 1) in [0, 1].
  """
  validate_config(config)
  shape = (config.crop_size,) * 3 + (1,)
  n_igm = keras.Input(shape=shape, name="n_igm")
  n_src = keras.Input(shape=shape, name="n_src")

  igm_mean, igm_var = n_igm_stats if n_igm_stats is not None else (0.0, 1.0)
  src_mean, src_var = n_src_stats if n_src_stats is not None else (0.0, 1.0)
  left = keras.layers.Normalization(axis=None, mean=float(igm_mean), variance=float(igm_var),
                                    name="normalize_n_igm")(n_igm)
  right = right_raw = InputDomain(domain, name="input_domain")(n_src)
  right = SourceTransform(config.source_transform, name="source_transform")(right)
  right = keras.layers.Normalization(axis=None, mean=float(src_mean), variance=float(src_var),
                                     name="normalize_n_src")(right)

  left, right = _branches(left, right, config)

  x = keras.layers.Concatenate(axis=-1, name="concatenate")([left, right])
  x = keras.layers.Flatten(name="flatten")(x)
  x = keras.layers.Dropout(config.dropout_input, name="dropout")(x)
  inputs = {"n_igm": n_igm, "n_src": n_src}
  excursion_logit = None
  if config.spheres():
    # float32 even under mixed_bfloat16: the edge of a bubble is a small difference of logs.
    features = ExcursionFeatures(config.spheres(), source_mean or 1.0, dtype="float32",
                                 name=EXCURSION_LAYER)([n_igm, right_raw])
    # Fixed statistics of the training boxes, not BatchNormalization: a batch of a few
    # patches, mostly ionized or mostly neutral, would move the threshold from step to step.
    mean, variance = excursion_stats if excursion_stats is not None else (0.0, 1.0)
    features = keras.layers.Normalization(axis=-1, mean=mean, variance=variance, dtype="float32",
                                          name=EXCURSION_NORM)(features)
    x = keras.layers.Concatenate(axis=-1, name="concatenate_excursion")([x, features])
    excursion_logit = excursion_path(features, config)
  if config.conditioning != "none":
    condition = keras.Input(shape=(1,), name=conditioning.INPUT_NAME)
    mean, std = condition_stats if condition_stats is not None else (0.0, 1.0)
    # float32 even under mixed_bfloat16: a cosmic time of ~600 Myr keeps its digits.
    scaled = Condition(config.conditioning, mean, std, dtype="float32",
                       name=conditioning.LAYER_NAME)(condition)
    x = keras.layers.Concatenate(axis=-1, name="concatenate_condition")([x, scaled])
    inputs[conditioning.INPUT_NAME] = condition
  for i, units in enumerate(config.dense_units):
    x = keras.layers.Dense(units, name="dense" if i == 0 else f"dense_{i}")(x)
    x = keras.layers.Dropout(config.dropout_hidden, name=f"dropout_{i + 1}")(x)
    x = keras.layers.LeakyReLU(negative_slope=config.leaky_relu_slope,
                               name=f"leaky_re_lu_{18 + i}")(x)
  first_tail = len(config.dense_units)
  for j, units in enumerate(config.tail_units):
    x = keras.layers.Dense(units, name=f"dense_{first_tail + j}")(x)
  # float32 output even under a mixed_bfloat16 policy: x_HII keeps its precision.
  last = f"dense_{first_tail + len(config.tail_units)}"
  if excursion_logit is None:
    x = keras.layers.Dense(1, activation="sigmoid", dtype="float32", name=last)(x)
  else:
    x = keras.layers.Dense(1, dtype="float32", name=last)(x)
    x = keras.layers.Add(dtype="float32", name=EXCURSION_ADD)([x, excursion_logit])
    x = keras.layers.Activation("sigmoid", dtype="float32", name=EXCURSION_SIGMOID)(x)
  x_hii = keras.layers.Identity(dtype="float32", name="x_hii")(x)
  return keras.Model(inputs, x_hii, name=name)

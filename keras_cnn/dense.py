"""The dense twin: the per-voxel network run fully convolutionally over a whole tile.

A model built with `padding="valid"` is translation-equivariant: the x_HII of voxel t
depends only on the crop that starts at t - r. So the convolutions of neighbouring
voxels' crops are shared, and one pass over a tile of the two fields plus a halo of r
cells on every side gives x_HII of every voxel of the tile, with the same weights:

- a stride or a pooling of the per-voxel model spaces the positions that later layers
  combine s cells apart (the a-trous view). Here the s^3 phases of that grid are folded
  into the batch axis instead (polyphase), so every convolution and pooling runs with
  stride 1 and no dilation: exact, differentiable, and the same on every backend;
- `flatten` + `dense` become one convolution whose kernel is the dense kernel reshaped
  to (m, m, m, 2 * filters, units); the later Dense layers act per position;
- the phases are unfolded at the end and the output cropped to the tile.

`DenseTwin` is a `keras.Model` that holds the per-voxel model and uses its variables,
so training the twin (patch training) trains the model that is saved and shared.
Inference: BatchNormalization uses its moving statistics and Dropout is off. Training:
BatchNormalization normalizes over every position of the batch of patches, and Dropout
drops entries of the shared feature maps (`dropout`) or of each position's head
activations (`dropout_1` ..) rather than of one crop's flattened vector.
"""

from typing import List, Sequence

import keras
import numpy as np
from keras import ops

from keras_cnn import conditioning
from keras_cnn import model as model_lib

INPUT_NAMES = ("n_igm", "n_src")


def model_padding(model: keras.Model) -> str:
  """'same' or 'valid': the padding of a per-voxel model's convolutions."""
  return model.get_layer(f"conv3d_{model_lib.LEFT_BLOCKS[0]}").padding


def model_radius(model: keras.Model) -> int:
  """Crop radius r of a per-voxel model whose field inputs are (2r+1)^3 crops."""
  sides = set()
  for tensor in model.inputs:
    if len(tensor.shape) == 2:  # the per-box condition (`keras_cnn.conditioning`)
      continue
    shape = tuple(tensor.shape[1:4])
    if len(set(shape)) != 1 or shape[0] is None or shape[0] % 2 == 0:
      raise ValueError(f"model input {tensor.name!r} has shape {tuple(tensor.shape)}; "
                       "expected (batch, 2r+1, 2r+1, 2r+1, 1)")
    sides.add(shape[0])
  if len(sides) != 1:
    raise ValueError(f"model inputs have different crop sides {sorted(sides)}")
  return (sides.pop() - 1) // 2


def _pad_to_multiple(x, factor: int):
  """Zero-pads the three spatial axes at their far end to a multiple of `factor`.

  The padded positions only feed outputs whose crops reach past the tile's halo,
  which are cropped away at the end.
  """
  sides = tuple(int(n) for n in x.shape[1:4])
  extra = [(-n) % factor for n in sides]
  if not any(extra):
    return x
  return ops.pad(x, [[0, 0]] + [[0, e] for e in extra] + [[0, 0]])


def fold_phases(x, factor: int):
  """(B, n1, n2, n3, C) -> (factor^3 * B, n1/f, n2/f, n3/f, C): phases into the batch.

  Position i * factor + phase of each axis goes to batch block
  ((phase_x * f + phase_y) * f + phase_z) * B + b, index i.
  """
  if factor == 1:
    return x
  x = _pad_to_multiple(x, factor)
  a1, a2, a3 = (int(n) // factor for n in x.shape[1:4])
  channels = int(x.shape[-1])
  x = ops.reshape(x, (-1, a1, factor, a2, factor, a3, factor, channels))
  x = ops.transpose(x, (2, 4, 6, 0, 1, 3, 5, 7))
  return ops.reshape(x, (-1, a1, a2, a3, channels))


def unfold_phases(x, factor: int):
  """Inverse of `fold_phases` (without its padding)."""
  if factor == 1:
    return x
  a1, a2, a3 = (int(n) for n in x.shape[1:4])
  channels = int(x.shape[-1])
  x = ops.reshape(x, (factor, factor, factor, -1, a1, a2, a3, channels))
  x = ops.transpose(x, (3, 4, 0, 5, 1, 6, 2, 7))
  return ops.reshape(x, (-1, a1 * factor, a2 * factor, a3 * factor, channels))


def head_conv(x, kernel):
  """'valid' stride-1 3-D convolution of x (B, X, Y, Z, C) with kernel (k, k, k, C, U).

  The `dense` layer of the head as a convolution: its kernel is large (k = the last
  feature grid's side) and U wide, while the input is small. Under tensorflow it runs as
  one matrix product of the k^3 C-wide patches (`tf.extract_volume_patches`) with the
  reshaped kernel, which oneDNN runs faster than its direct convolution for this shape
  (forward and backward; `python -m keras_cnn.benchmarks.step_profile` times it). Other
  backends use their convolution.
  """
  if keras.backend.backend() != "tensorflow":
    return ops.conv(x, kernel, strides=1, padding="valid")
  import tensorflow as tf

  k1, k2, k3, channels, units = kernel.shape
  patches = tf.extract_volume_patches(x, ksizes=[1, k1, k2, k3, 1], strides=[1] * 5,
                                      padding="VALID")
  rows = ops.reshape(patches, (-1, k1 * k2 * k3 * channels))
  out = ops.matmul(rows, ops.reshape(kernel, (k1 * k2 * k3 * channels, units)))
  out = tf.reshape(out, tf.concat([tf.shape(patches)[:4], [units]], axis=0))
  out.set_shape(patches.shape[:4] + [units])  # the static sides: the folds after this need them
  return out


@keras.saving.register_keras_serializable(package="keras_cnn")
class DenseTwin(keras.Model):
  """Fully convolutional twin of a 'valid' per-voxel model, sharing its weights.

  Args:
    per_voxel: a model from `keras_cnn.model.build_model` with padding 'valid' (or a
      loaded `.keras` file of one).
    flat_output: return (B * X * Y * Z, 1) in C order instead of (B, X, Y, Z, 1): one
      row per voxel, as training on patches compares them with the targets
      (`keras_cnn.pipeline.make_patch_dataset`).

  Inputs {"n_igm", "n_src"} of shape (B, X + 2r, Y + 2r, Z + 2r, 1): a tile of the
  raw fields (overdensity, sources) with a halo of r cells on every side, and for a
  conditioned model "condition" of shape (B, 1) (`keras_cnn.conditioning`). Output
  (B, X, Y, Z, 1): x_HII of every voxel of the tile, equal (float tolerance) to the
  per-voxel model applied to each voxel's crop.

  Example:
    >>> twin = DenseTwin(build_model(ModelConfig(radius=4, padding="valid", ...)))
    >>> twin({"n_igm": igm_tile, "n_src": src_tile})  # tiles of side X + 8
  """

  def __init__(self, per_voxel: keras.Model, flat_output: bool = False, **kwargs):
    super().__init__(**kwargs)
    self.flat_output = flat_output
    padding = model_padding(per_voxel)
    if padding != "valid":
      raise ValueError(
          f"the dense engine needs a model built with --padding=valid; this one uses "
          f"padding={padding!r} (its crops are zero-padded inside, so neighbouring voxels "
          "share no work): use --engine=per_voxel")
    self.per_voxel = per_voxel
    self.radius = model_radius(per_voxel)
    # Per block: the conv's stride (`ModelConfig.strides_per_block`).
    self.strides = [
        int(per_voxel.get_layer(f"conv3d_{i}").strides[0]) for i in model_lib.LEFT_BLOCKS
    ]
    # Per block: whether both branches' inputs are joined before it (`ModelConfig.fusion`).
    names = {layer.name for layer in per_voxel.layers}
    self.fused = [model_lib.fusion_layer_name(b) in names for b in range(len(self.strides))]
    pool = per_voxel.get_layer(f"average_pooling_3d_{model_lib.LEFT_BLOCKS[0]}")
    self.pooling = int(pool.pool_size[0])
    dense = per_voxel.get_layer("dense")
    self.head_side = int(per_voxel.get_layer("concatenate").output.shape[1])
    self.head_channels = int(per_voxel.get_layer("concatenate").output.shape[-1])
    self.head_units = int(dense.units)
    self.conditioning = conditioning.of_model(per_voxel)
    # Width of the excursion-set features (`ModelConfig.excursion_radii`): the rows of
    # `dense`'s kernel after the flattened feature maps (the condition's row follows);
    # 0 without them.
    self.excursion = (per_voxel.get_layer(model_lib.EXCURSION_LAYER).width
                      if model_lib.EXCURSION_LAYER in names else 0)
    # Their own path to the logit (`keras_cnn.model.excursion_path`), in order.
    self.excursion_layers = [
        layer for layer in per_voxel.layers
        if layer.name.startswith("excursion_") and layer.name != model_lib.EXCURSION_LAYER
    ]
    # Head layers after `dense`, in order.
    self.head_layers: List[keras.layers.Layer] = []
    seen_dense = False
    for layer in per_voxel.layers:
      if layer.name == "dense":
        seen_dense = True
        continue
      if not seen_dense or layer.name == "x_hii" or layer.name.startswith("excursion_"):
        continue
      if layer.name in (model_lib.EXCURSION_ADD, model_lib.EXCURSION_SIGMOID):
        continue  # `call` adds the excursion path's logit itself
      self.head_layers.append(layer)
    self.built = True  # every variable is the per-voxel model's, already built
    # Inputs pass as they come: each layer of the per-voxel model casts them to its own
    # compute dtype (under mixed_bfloat16 the condition stays float32, like the
    # per-voxel model's, so a time of ~600 Myr keeps its digits).
    self.autocast = False

  def folds(self) -> Sequence[int]:
    """Fold factors in order: stride then pooling, per block (1s skipped)."""
    return [f for stride in self.strides for f in (stride, self.pooling) if f > 1]

  def _layer(self, name):
    return self.per_voxel.get_layer(name)

  def _block(self, x, i, stride, training):
    conv = self._layer(f"conv3d_{i}")
    x = ops.conv(x, ops.cast(conv.kernel, x.dtype), strides=1, padding="valid")
    x = x + ops.cast(conv.bias, x.dtype)
    x = fold_phases(x, stride)
    x = self._layer(f"batch_normalization_{i}")(x, training=training)
    x = self._layer(f"leaky_re_lu_{i}")(x)
    if self.pooling > 1:
      x = ops.average_pool(x, self.pooling, strides=1, padding="valid")
      x = fold_phases(x, self.pooling)
    return x

  def _branches(self, left, right, training):
    # Both branches fold their phases alike, so their channels line up position by position.
    blocks = zip(model_lib.LEFT_BLOCKS, model_lib.RIGHT_BLOCKS, self.strides)
    for b, (i, j, stride) in enumerate(blocks):
      if self.fused[b]:
        left = right = ops.concatenate([left, right], axis=-1)
      left = self._block(left, i, stride, training)
      right = self._block(right, j, stride, training)
    return left, right

  def call(self, inputs, training=False):
    igm, src = inputs["n_igm"], inputs["n_src"]
    out_sides = [int(n) - 2 * self.radius for n in igm.shape[1:4]]
    if min(out_sides) < 1:
      raise ValueError(f"a tile of input shape {tuple(igm.shape)} holds no voxel: every "
                       f"spatial side must exceed 2r = {2 * self.radius}")
    left = self._layer("normalize_n_igm")(igm)
    right = self._layer("source_transform")(src)
    right = self._layer("normalize_n_src")(right)
    left, right = self._branches(left, right, training)
    x = ops.concatenate([left, right], axis=-1)
    x = self._layer("dropout")(x, training=training)
    dense = self._layer("dense")
    side = self.head_side
    weights = ops.cast(dense.kernel, x.dtype)
    flat_rows = side ** 3 * self.head_channels  # `flatten`'s width; the condition follows
    kernel = ops.reshape(weights[:flat_rows],
                         (side, side, side, self.head_channels, self.head_units))
    x = head_conv(x, kernel) + ops.cast(dense.bias, x.dtype)
    if self.conditioning != "none":
      # The condition's rows of `dense`: one shift of the pre-activation per box.
      condition = self._layer(conditioning.LAYER_NAME)(inputs[conditioning.INPUT_NAME])
      shift = ops.matmul(ops.cast(condition, x.dtype), weights[flat_rows + self.excursion:])
      # The batch axis holds every phase block of B boxes (`fold_phases`: b innermost).
      phases = int(np.prod([f ** 3 for f in self.folds()]))
      shift = ops.tile(shift, (phases, 1))
      x = x + ops.reshape(shift, (-1, 1, 1, 1, self.head_units))
    if self.excursion:
      features = self._excursion(igm, src, x)
      x = x + self._per_position(features, weights[flat_rows:flat_rows + self.excursion], x.dtype)
    for layer in self.head_layers:
      if isinstance(layer, keras.layers.Dropout):
        x = layer(x, training=training)
      else:
        x = layer(x)
    if self.excursion:
      logit = features
      for layer in self.excursion_layers:
        logit = layer(logit)
      x = self._layer(model_lib.EXCURSION_SIGMOID)(ops.cast(x, "float32") +
                                                   ops.cast(logit, "float32"))
    x = ops.cast(x, "float32")
    for factor in reversed(self.folds()):
      x = unfold_phases(x, factor)
    x = x[:, :out_sides[0], :out_sides[1], :out_sides[2], :]
    return ops.reshape(x, (-1, 1)) if self.flat_output else x

  def _per_position(self, features, rows, dtype):
    """features (B', h1, h2, h3, F) times rows (F, units), position by position."""
    sides = tuple(int(n) for n in features.shape[1:4])
    out = ops.matmul(ops.reshape(ops.cast(features, dtype), (-1, int(features.shape[-1]))),
                     ops.cast(rows, dtype))
    return ops.reshape(out, (-1,) + sides + (int(rows.shape[-1]),))

  def _excursion(self, igm, src, x):
    """The standardized excursion-set features at every position of the head's output
    x, in its folded layout: (B', h1, h2, h3, width), float32."""
    features = self._layer(model_lib.EXCURSION_LAYER).tile(igm,
                                                           self._layer("input_domain")(src),
                                                           self.radius)
    shape = tuple(int(n) for n in features.shape[1:])
    features = self._layer(model_lib.EXCURSION_NORM)(ops.reshape(features, (-1, shape[-1])))
    features = ops.reshape(features, (-1,) + shape)
    # Pad to the head's unfolded sides, then fold the phases as the branches did.
    total = int(np.prod(self.folds()))
    sides = [int(n) * total for n in x.shape[1:4]]
    extra = [[0, side - int(n)] for side, n in zip(sides, features.shape[1:4])]
    features = ops.pad(features, [[0, 0]] + extra + [[0, 0]])
    for factor in self.folds():
      features = fold_phases(features, factor)
    return features

  def compute_output_shape(self, input_shape):
    shape = input_shape["n_igm"]
    if self.flat_output:
      return (None, 1)
    return (shape[0],) + tuple(
        None if n is None else n - 2 * self.radius for n in shape[1:4]) + (1,)

  def get_config(self):
    return {
        **super().get_config(), "flat_output": self.flat_output,
        "per_voxel": keras.saving.serialize_keras_object(self.per_voxel)
    }

  @classmethod
  def from_config(cls, config):
    per_voxel = keras.saving.deserialize_keras_object(config.pop("per_voxel"))
    return cls(per_voxel, **config)

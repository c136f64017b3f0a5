"""Analytic FLOP counts of the network and the float32 matmul rate they are compared with.

A FLOP is a multiply or an add: 2 per multiply-add of a convolution tap or a dense
weight. Pooling, normalization and activations are not counted (a few percent).
"""

import math
import time
from typing import Dict, Sequence

from keras_cnn import model as model_lib

MATMUL_N = 4096


def _same_padding_taps(size: int, kernel: int, stride: int):
  """(useful taps summed over outputs, outputs) along one axis of a Keras 'same' conv."""
  out = -(-size // stride)
  pad_before = max((out - 1) * stride + kernel - size, 0) // 2
  useful = 0
  for i in range(out):
    start = i * stride - pad_before
    useful += max(0, min(size, start + kernel) - max(0, start))
  return useful, out


def _head_flops(width: int, dense_units: Sequence[int], tail_units: Sequence[int]) -> float:
  flops = 0.0
  for units in tuple(dense_units) + tuple(tail_units) + (1,):
    flops += 2.0 * width * units
    width = units
  return flops


def model_flops(
    radius: int, filters: int, kernel_size: int = 5, stride_conv: int = 1, kernel_pooling: int = 2,
    dense_units: Sequence[int] = (256, 128, 64, 32, 16), tail_units: Sequence[int] = (8, 4)
) -> Dict[str, float]:
  """FLOPs per example of the per-voxel network with 'same' padding.

  Returns:
    dict with `forward` (in-bounds taps only), `forward_nominal` (every tap, as if the
    zero padding were multiplied too), and `train`/`train_nominal` = 3 x forward.
  """
  side = 2 * radius + 1
  useful = nominal = 0.0
  c_in = 1
  for _ in range(3):
    taps, out = _same_padding_taps(side, kernel_size, stride_conv)
    useful += 2.0 * c_in * filters * taps ** 3
    nominal += 2.0 * c_in * filters * (out * kernel_size) ** 3
    side = out // kernel_pooling
    c_in = filters
  useful *= 2  # two branches
  nominal *= 2
  dense = _head_flops(2 * filters * side ** 3, dense_units, tail_units)
  return {
      "forward": useful + dense,
      "forward_nominal": nominal + dense,
      "train": 3 * (useful + dense),
      "train_nominal": 3 * (nominal + dense)
  }


def conv_output_sides(config: model_lib.ModelConfig) -> list:
  """Spatial side of each Conv3D output of one branch of the per-voxel model."""
  side = config.crop_size
  sides = []
  for stride in config.strides_per_block():
    if config.padding == "same":
      side = -(-side // stride)
    else:
      side = (side - config.kernel_size) // stride + 1
    sides.append(side)
    side //= config.kernel_pooling
  return sides


def _input_channels(config: model_lib.ModelConfig) -> list:
  """Input channels of each block's Conv3D in one branch (both fields or branches when fused)."""
  channels, c_in = [], 1
  for b, filters in enumerate(config.filters_per_block()):
    channels.append(2 * c_in if model_lib.fuses_before(config.fusion, b) else c_in)
    c_in = filters
  return channels


def _excursion_head_flops(config: model_lib.ModelConfig) -> float:
  """The excursion-set features' rows of `dense` and their own path
  (`keras_cnn.model.excursion_path`); 0 without them. Their sphere means are not counted:
  a matrix product with the crop per voxel, an FFT of the tile in the dense twin."""
  if not config.spheres():
    return 0.0
  width = 2 * len(config.spheres()) + 1
  units = (width,) + tuple(model_lib.EXCURSION_UNITS) + (1,)
  path = sum(a * b for a, b in zip(units[:-1], units[1:]))
  return 2.0 * (width * config.dense_units[0] + path)


def per_voxel_flops(config: model_lib.ModelConfig) -> float:
  """Forward FLOPs of one voxel through the per-voxel model (every tap counted)."""
  conv = 0.0
  for side, c_in, filters in zip(conv_output_sides(config), _input_channels(config),
                                 config.filters_per_block()):
    conv += 2.0 * c_in * filters * config.kernel_size ** 3 * side ** 3
  width = model_lib.flattened_width(config)
  return (2 * conv + _head_flops(width, config.dense_units, config.tail_units) +
          _excursion_head_flops(config))


def dense_flops_per_voxel(config: model_lib.ModelConfig) -> float:
  """Forward FLOPs per voxel of the dense twin, halo work not counted.

  Every layer of the twin runs once per voxel of the full-resolution grid: a Conv3D
  costs its k^3 taps per voxel, `flatten` + `dense` one m^3-tap convolution.
  """
  conv = 0.0
  for c_in, filters in zip(_input_channels(config), config.filters_per_block()):
    conv += 2.0 * c_in * filters * config.kernel_size ** 3
  return 2 * conv + _head_flops(model_lib.flattened_width(config), config.dense_units,
                                config.tail_units) + _excursion_head_flops(config)


def best_gflops(matmul, reps: int = 3) -> float:
  """GFLOP/s of the fastest of `reps` calls of a (MATMUL_N x MATMUL_N)^2 matmul."""
  matmul()
  best = math.inf
  for _ in range(reps):
    t0 = time.perf_counter()
    matmul()
    best = min(best, time.perf_counter() - t0)
  return 2.0 * MATMUL_N ** 3 / best / 1e9


def numpy_matmul_gflops() -> float:
  import numpy as np
  rng = np.random.default_rng(0)
  a = rng.standard_normal((MATMUL_N, MATMUL_N), dtype=np.float32)
  b = rng.standard_normal((MATMUL_N, MATMUL_N), dtype=np.float32)
  return best_gflops(lambda: a @ b)


def backend_matmul(backend: str):
  """A float32 matmul in the backend's own framework, blocking until done."""
  import numpy as np
  rng = np.random.default_rng(1)
  a = rng.standard_normal((MATMUL_N, MATMUL_N), dtype=np.float32)
  b = rng.standard_normal((MATMUL_N, MATMUL_N), dtype=np.float32)
  if backend == "tensorflow":
    import tensorflow as tf
    a, b = tf.constant(a), tf.constant(b)
    return lambda: tf.linalg.matmul(a, b).numpy()
  if backend == "jax":
    import jax
    a, b = jax.device_put(a), jax.device_put(b)
    f = jax.jit(lambda u, v: u @ v)
    return lambda: f(a, b).block_until_ready()
  import torch
  a, b = torch.from_numpy(a), torch.from_numpy(b)
  return lambda: torch.mm(a, b)

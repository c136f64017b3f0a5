"""The benchmarks' analytic FLOP counts agree with the layers the model really builds."""

import dataclasses

import keras
import pytest

from keras_cnn import model as model_lib
from keras_cnn.benchmarks import flops

CONFIGS = {
    "default": model_lib.ModelConfig(),
    "week2_small_same": dataclasses.replace(model_lib.WEEK2, radius=6, filters=4),
    "week2_small_valid": dataclasses.replace(model_lib.WEEK2, radius=20, filters=4,
                                             padding="valid"),
    "stride_and_pool": model_lib.ModelConfig(radius=32, kernel_size=3, filters=2, stride_conv=2,
                                             kernel_pooling=2, padding="same"),
    "early_fusion": model_lib.ModelConfig(fusion="early"),
    "every_fusion": model_lib.ModelConfig(block_filters=(8, 16, 16), fusion="every"),
    "excursion": model_lib.ModelConfig(excursion_radii=(0, 1, 2.5, 15)),
}


def _layers(model, kind):
  return [layer for layer in model.layers if isinstance(layer, kind)]


def _multiply_adds_from_layers(model) -> float:
  """Multiply-adds of one forward pass, read off each layer's kernel and output shape."""
  total = 0.0
  for layer in _layers(model, keras.layers.Conv3D):
    out_voxels = 1
    for side in layer.output.shape[1:4]:
      out_voxels *= side
    total += _size(layer.kernel.shape) * out_voxels
  for layer in _layers(model, keras.layers.Dense):
    total += _size(layer.kernel.shape)
  return total


def _size(shape) -> int:
  size = 1
  for n in shape:
    size *= int(n)
  return size


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_per_voxel_flops_match_the_built_layers(name):
  config = CONFIGS[name]
  model = model_lib.build_model(config)
  assert flops.per_voxel_flops(config) == pytest.approx(2 * _multiply_adds_from_layers(model))
  for blocks in (model_lib.LEFT_BLOCKS, model_lib.RIGHT_BLOCKS):
    sides = [model.get_layer(f"conv3d_{i}").output.shape[1] for i in blocks]
    assert flops.conv_output_sides(config) == sides


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_dense_twin_flops_count_every_kernel_once_per_voxel(name):
  config = CONFIGS[name]
  model = model_lib.build_model(config)
  kernels = _layers(model, keras.layers.Conv3D) + _layers(model, keras.layers.Dense)
  assert flops.dense_flops_per_voxel(config) == pytest.approx(
      2 * sum(_size(layer.kernel.shape) for layer in kernels))


def test_train_step_flops_of_the_original_network():
  config = dataclasses.replace(model_lib.WEEK2, radius=6, filters=4)
  counts = flops.model_flops(config.radius, config.filters, config.kernel_size)
  # Counting the zero-padded taps too gives the layers' full kernel work.
  assert counts["forward_nominal"] == pytest.approx(flops.per_voxel_flops(config))
  # 'same' padding multiplies zeros near the faces: fewer useful taps.
  assert counts["forward"] < counts["forward_nominal"]
  assert counts["train"] == pytest.approx(3 * counts["forward"])
  one_tap = flops.model_flops(config.radius, config.filters, kernel_size=1)
  assert one_tap["forward"] == pytest.approx(one_tap["forward_nominal"])


@pytest.mark.parametrize("name", ["week2_small_same", "stride_and_pool", "default"])
def test_pytorch_baseline_is_the_same_network_at_a_presets_sizes(name):
  """The PyTorch original that the training benchmarks compare with has, at any sizes,
  the trainable weights of keras_cnn's 'same' network with the branches joined in the
  head, and the useful FLOPs the benchmarks credit it with."""
  torch = pytest.importorskip("torch")
  from keras_cnn.benchmarks import torch_reference

  config = dataclasses.replace(CONFIGS[name], padding="same", fusion="late", excursion_radii=())
  net = torch_reference.build_original_pytorch(config.radius, config.filters, config.kernel_size,
                                               config.stride_conv, config.kernel_pooling)
  model = model_lib.build_model(config)
  trainable = sum(_size(weight.shape) for weight in model.trainable_weights)
  assert sum(p.numel() for p in net.parameters()) == trainable
  side = config.crop_size
  out = net.eval()(torch.zeros(2, 1, side, side, side), torch.zeros(2, 1, side, side, side))
  assert tuple(out.shape) == (2, 1)
  nominal = flops.model_flops(config.radius, config.filters, config.kernel_size, config.stride_conv,
                              config.kernel_pooling)["forward_nominal"]
  assert nominal == pytest.approx(flops.per_voxel_flops(config))

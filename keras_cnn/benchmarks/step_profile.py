"""Where the time of one patch-training step goes (TensorFlow, CPU).

  python -m keras_cnn.benchmarks.step_profile
  python -m keras_cnn.benchmarks.step_profile --precision=float32   # as an AVX2 float32 CPU runs it
  ONEDNN_MAX_CPU_ISA=AVX2 python -m keras_cnn.benchmarks.step_profile --precision=float32

The network and batch are the preset's (`--preset`, default flags/default.flags: its
model flags, --patch_size and --batch_size). The dense twin's forward pass is walked
stage by stage, as `keras_cnn.dense.DenseTwin.call` runs it: per block of each branch the
convolution, the polyphase fold, BatchNormalization (training mode), LeakyReLU and
pooling (with the branches joined where the preset's --fusion joins them); then
`dropout`, the `dense` convolution (`keras_cnn.dense.head_conv`), the excursion-set
features where the preset has them (their sphere means by FFT, standardized and folded:
forward only, as no gradient flows into them; then their rows of `dense` and their own
path to the logit), the per-position head, the unfold and the loss. Each stage is timed
alone (compiled with tf.function, median of --repeats) in its forward pass and in
forward + backward (gradients for its inputs and weights), next to the whole step
(`train_on_batch`, optimizer included), the optimizer's update alone, the input
pipeline's batches/s and a float32 matmul of the same run. The `dense` convolution is
also timed as the direct convolution it replaces (stage "head/dense_conv_direct",
`baseline_for`; its `share` is against the same sum).

One JSON object per line: `stage`, `forward_ms`, `train_ms` (forward + backward),
`share` (of the summed stage train_ms), `gflop` (forward FLOPs of the stage's
convolutions and matmuls) and `gflop_per_s` (3 x gflop over train_ms). Then `stage`
"step" (the real step, `step_ms`; the same step with the direct `dense` convolution,
`step_ms_direct_dense_conv`, timed in turns over 2 x --repeats rounds, and their ratio
`speedup_over_direct`;
`target_voxels_per_s`, `matmul_fraction`: useful twin FLOPs x 3 per target voxel times
voxels/s over the matmul rate), "optimizer" and "input_pipeline".
"""

import json
import os
import statistics
import time

from absl import app
from absl import flags

from keras_cnn import benchmarks

FLAGS = flags.FLAGS


def define_flags() -> None:
  flags.DEFINE_string("preset", benchmarks.preset_path("default"),
                      "Flagfile whose network, patch and batch sizes to use.")
  flags.DEFINE_enum("precision", "auto", ["auto", "float32", "mixed_bfloat16"],
                    "Keras dtype policy (auto: keras_cnn.distribute.default_precision).")
  flags.DEFINE_integer("repeats", 5, "Timed calls per stage (after 2 untimed ones).", lower_bound=1)


def _median_ms(fn, repeats: int) -> float:
  return 1e3 * benchmarks.median_seconds(fn, repeats)


def _conv_gflop(x_shape, kernel_shape) -> float:
  """Forward GFLOP of a 'valid' stride-1 Conv3D of input `x_shape` (B, n1, n2, n3, C)."""
  k1, k2, k3, c_in, c_out = kernel_shape
  out = [n - k + 1 for n, k in zip(x_shape[1:4], (k1, k2, k3))]
  return 2.0 * x_shape[0] * out[0] * out[1] * out[2] * k1 * k2 * k3 * c_in * c_out / 1e9


def main(argv) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  os.environ.setdefault("KERAS_BACKEND", "tensorflow")
  import keras
  import numpy as np
  import tensorflow as tf
  from keras import ops

  from keras_cnn import dense
  from keras_cnn import distribute
  from keras_cnn import model as model_lib
  from keras_cnn import pipeline
  from keras_cnn import training
  from keras_cnn.benchmarks import flops
  from keras_cnn.data import simulate
  from keras_cnn.data import snapshot as snapshot_lib

  if keras.backend.backend() != "tensorflow":
    raise app.UsageError("this profile runs under KERAS_BACKEND=tensorflow")
  settings = benchmarks.preset_settings(FLAGS.preset)
  config = benchmarks.preset_model_config(settings)
  patch = int(settings.get("patch_size", 16))
  batch = int(settings.get("batch_size", 4))
  precision = (distribute.default_precision() if FLAGS.precision == "auto" else FLAGS.precision)
  keras.config.set_dtype_policy(precision)
  matmul_gflops = flops.best_gflops(flops.backend_matmul("tensorflow"))

  keras.utils.set_random_seed(0)
  model = model_lib.build_model(config)
  twin = dense.DenseTwin(model, flat_output=True)
  training.compile_model(twin, 1e-3, False)
  side = patch + 2 * config.radius
  rng = np.random.default_rng(0)
  inputs = {
      "n_igm": rng.lognormal(0, 0.5, (batch, side, side, side, 1)).astype(np.float32) - 1,
      "n_src": rng.poisson(0.2, (batch, side, side, side, 1)).astype(np.float32),
  }
  targets = rng.random((batch * patch ** 3, 1)).astype(np.float32)
  repeats = FLAGS.repeats
  rows = []

  def stage(name, fn, x, variables=(), gflop=0.0, forward_only=False):
    """Times fn(x) forward and forward + backward (forward alone where the step takes no
    gradient through it); returns fn(x) for the next stage."""
    x = tf.convert_to_tensor(x)
    forward = tf.function(fn)
    if forward_only:
      forward_ms = _median_ms(lambda: forward(x).numpy(), repeats)
      rows.append({"stage": name, "forward_ms": forward_ms, "train_ms": forward_ms, "gflop": gflop})
      return forward(x)

    @tf.function
    def train(x):
      with tf.GradientTape() as tape:
        tape.watch(x)
        y = fn(x)
        total = tf.reduce_sum(tf.cast(y, tf.float32))
      return tape.gradient(total, [x, *variables])

    rows.append({
        "stage": name,
        "forward_ms": _median_ms(lambda: forward(x).numpy(), repeats),
        "train_ms": _median_ms(lambda: [g.numpy() for g in train(x) if g is not None], repeats),
        "gflop": gflop,
    })
    return forward(x)

  layer = model.get_layer
  compute = keras.config.dtype_policy().compute_dtype
  left = tf.cast(layer("normalize_n_igm")(inputs["n_igm"]), compute)
  right = tf.cast(layer("normalize_n_src")(layer("source_transform")(inputs["n_src"])), compute)

  def block(branch, i, stride, x):
    conv = layer(f"conv3d_{i}")
    kernel_shape = tuple(conv.kernel.shape)
    x = stage(
        f"{branch}/conv3d_{i}", lambda x, conv=conv: ops.conv(x, ops.cast(
            conv.kernel, x.dtype), padding="valid") + ops.cast(conv.bias, x.dtype), x,
        conv.trainable_variables, _conv_gflop(tuple(x.shape), kernel_shape))
    x = stage(f"{branch}/fold_{i}", lambda x, s=stride: dense.fold_phases(x, s), x)
    bn = layer(f"batch_normalization_{i}")
    x = stage(f"{branch}/batch_normalization_{i}", lambda x, bn=bn: bn(x, training=True), x,
              bn.trainable_variables)
    x = stage(f"{branch}/leaky_re_lu_{i}", layer(f"leaky_re_lu_{i}"), x)
    if twin.pooling > 1:
      x = stage(
          f"{branch}/average_pooling_{i}", lambda x: dense.fold_phases(
              ops.average_pool(x, twin.pooling, strides=1, padding="valid"), twin.pooling), x)
    return x

  blocks = zip(model_lib.LEFT_BLOCKS, model_lib.RIGHT_BLOCKS, twin.strides)
  for b, (i, j, stride) in enumerate(blocks):
    if twin.fused[b]:  # --fusion: both branches see both fields from this block on
      left = right = stage(f"concatenate_block_{b}",
                           lambda x, y=right: ops.concatenate([x, y], axis=-1), left)
    left = block("left", i, stride, left)
    right = block("right", j, stride, right)
  outputs = [left, right]
  x = ops.concatenate(outputs, axis=-1)
  x = stage("head/dropout", lambda x: layer("dropout")(x, training=True), x)
  dense_layer = layer("dense")
  kernel_shape = (twin.head_side,) * 3 + (twin.head_channels, twin.head_units)
  # `dense`'s rows for the flattened features (the excursion-set features' follow them).
  flat_kernel = dense_layer.kernel[:int(np.prod(kernel_shape[:4]))]
  # The direct convolution that head_conv replaces under tensorflow, for comparison
  # (not part of the step: left out of the shares below).
  stage(
      "head/dense_conv_direct",
      lambda x: ops.conv(x, ops.cast(ops.reshape(flat_kernel, kernel_shape), x.dtype), padding=
                         "valid") + ops.cast(dense_layer.bias, x.dtype), x,
      dense_layer.trainable_variables, _conv_gflop(tuple(x.shape), kernel_shape))
  comparison = rows.pop()
  x = stage(
      "head/dense_conv",
      lambda x: dense.head_conv(x, ops.cast(ops.reshape(flat_kernel, kernel_shape), x.dtype)) + ops.
      cast(dense_layer.bias, x.dtype), x, dense_layer.trainable_variables,
      _conv_gflop(tuple(x.shape), kernel_shape))

  if twin.excursion:
    features = stage("excursion/sphere_means_standardized_folded",
                     lambda igm: twin._excursion(igm, tf.convert_to_tensor(inputs["n_src"]), x),
                     inputs["n_igm"], forward_only=True)
    rows_of_dense = dense_layer.kernel[int(np.prod(kernel_shape[:4])):][:twin.excursion]
    path_variables = [v for el in twin.excursion_layers for v in el.trainable_variables]
    path_gflop = 2.0 * int(np.prod(features.shape[:4])) * (int(np.prod(rows_of_dense.shape)) + sum(
        int(np.prod(el.kernel.shape)) for el in twin.excursion_layers if hasattr(el, "kernel"))
                                                          ) / 1e9

    def excursion_rows_and_path(features):
      shifted = x + twin._per_position(features, rows_of_dense, x.dtype)
      logit = features
      for excursion_layer in twin.excursion_layers:
        logit = excursion_layer(logit)
      return ops.cast(shifted, "float32") + ops.mean(ops.cast(logit, "float32"))

    stage("excursion/rows_and_own_path", excursion_rows_and_path, features,
          [dense_layer.kernel, *path_variables], path_gflop)

  def head(x):
    for head_layer in twin.head_layers:
      if isinstance(head_layer, keras.layers.Dropout):
        x = head_layer(x, training=True)
      else:
        x = head_layer(x)
    return x

  head_variables = [v for hl in twin.head_layers for v in hl.trainable_variables]
  positions = int(np.prod(x.shape[:4]))
  head_gflop = 2.0 * positions * sum(
      int(np.prod(hl.kernel.shape)) for hl in twin.head_layers if hasattr(hl, "kernel")) / 1e9
  x = stage("head/per_position_layers", head, x, head_variables, head_gflop)

  def unfold_and_loss(x):
    x = ops.cast(x, "float32")
    for factor in reversed(twin.folds()):
      x = dense.unfold_phases(x, factor)
    x = ops.reshape(x[:, :patch, :patch, :patch, :], (-1, 1))
    return ops.mean((x - targets) ** 2)

  stage("head/unfold_and_loss", unfold_and_loss, x)

  summed = sum(row["train_ms"] for row in rows)
  comparison["baseline_for"] = "head/dense_conv"
  for row in rows + [comparison]:
    row["share"] = round(row["train_ms"] / summed, 3)
    row["gflop_per_s"] = round(3 * row["gflop"] / (row["train_ms"] / 1e3), 1) if row["gflop"] else 0
    row["forward_ms"] = round(row["forward_ms"], 2)
    row["train_ms"] = round(row["train_ms"], 2)
    row["gflop"] = round(row["gflop"], 3)
    row["precision"] = precision
    print(json.dumps(row), flush=True)

  # The same step with the `dense` convolution run directly (what head_conv replaces),
  # timed in turns with the real step so that both see the same machine state.
  head_conv = dense.head_conv
  dense.head_conv = lambda x, kernel: ops.conv(x, kernel, strides=1, padding="valid")
  try:
    direct = dense.DenseTwin(model, flat_output=True)
    training.compile_model(direct, 1e-3, False)
    direct.train_on_batch(inputs, targets)  # traced while the direct convolution is in place
  finally:
    dense.head_conv = head_conv
  step_times = {"step": [], "direct": []}
  for _ in range(2 + 2 * repeats):  # the first two rounds warm up
    for key, stepper in (("step", twin), ("direct", direct)):
      start = time.perf_counter()
      stepper.train_on_batch(inputs, targets)
      step_times[key].append(time.perf_counter() - start)
  step_ms, direct_ms = (1e3 * statistics.median(step_times[key][2:]) for key in ("step", "direct"))
  voxels_per_s = batch * patch ** 3 / (step_ms / 1e3)
  useful = 3 * flops.dense_flops_per_voxel(config) * voxels_per_s / 1e9
  grads = [tf.zeros_like(v) for v in twin.trainable_variables]
  apply = tf.function(lambda: twin.optimizer.apply(grads, twin.trainable_variables))
  optimizer_ms = _median_ms(apply, repeats)
  print(
      json.dumps({
          "stage": "step",
          "step_ms": round(step_ms, 1),
          "step_ms_direct_dense_conv": round(direct_ms, 1),
          "speedup_over_direct": round(direct_ms / step_ms, 3),
          "summed_stage_train_ms": round(summed, 1),
          "target_voxels_per_s": round(voxels_per_s),
          "useful_gflop_per_s": round(useful, 1),
          "matmul_gflop_per_s": round(matmul_gflops, 1),
          "matmul_fraction": round(useful / matmul_gflops, 3),
          "precision": precision,
          "patch_size": patch,
          "batch_size": batch
      }), flush=True)
  print(json.dumps({"stage": "optimizer", "train_ms": round(optimizer_ms, 2)}), flush=True)

  snapshot = simulate.simulate_snapshot(64, seed=0)
  fields = [(snapshot_lib.overdensity(snapshot.rho), snapshot.n_src, snapshot.x_hii)]
  iterator = iter(
      pipeline.make_patch_dataset(fields, config.radius, patch, batch, training=True, seed=0))
  batch_ms = _median_ms(lambda: next(iterator), max(repeats, 10))
  print(
      json.dumps({
          "stage": "input_pipeline",
          "batch_ms": round(batch_ms, 2),
          "share_of_step": round(batch_ms / step_ms, 3)
      }), flush=True)


if __name__ == "__main__":
  define_flags()
  app.run(main)

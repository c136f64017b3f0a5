"""Data-parallel training on every local device: `--distribution={none,data_parallel}`.

The batch size is always the GLOBAL batch: each step's batch is split over the replicas
(jax shards it along the batch axis, `tf.distribute` splits it per replica), and the loss
and gradients are those of the whole batch, so `--batch_size`, `--learning_rate` and the
results do not change with the number of devices (BatchNormalization statistics are
those of the global batch too: see `synchronized_batch_norm`).

Usage (build, compile and fit inside the scope; `initialize` first thing in `main`):

  distribute.initialize(FLAGS.distribution)       # before any tensor touches a device
  with distribute.distribution_scope(FLAGS.distribution) as info:
    distribute.check_global_batch(FLAGS.batch_size, info)
    model = build_model(...)
    model.compile(...)
    with distribute.synchronized_batch_norm(model, info), \\
        distribute.multi_worker_fit(model, info):
      model.fit(dataset_batched_with_the_global_batch, ...)

Per backend ("data_parallel"):
  jax         `keras.distribution.DataParallel` over `keras.distribution.list_devices()`
              (all GPUs/TPUs; on CPU one device unless
              `XLA_FLAGS=--xla_force_host_platform_device_count=N` is set before jax is
              imported). The distribution is process-global in Keras
              (`keras.distribution.set_distribution`); it stays set after the scope so that
              `fit`/`evaluate`/`predict` called later keep sharding their batches.
  tensorflow  `tf.distribute.MirroredStrategy` over every local GPU, else every logical
              CPU device (one unless `tf.config.set_logical_device_configuration` split
              it). A model built in the scope remembers the strategy; `fit` re-enters it.
  torch       `keras.distribution` does not support torch: training runs on one device and
              a warning says so.

Multi-host (one process per host, same command everywhere):
  jax         set on every host before launch
                KERAS_DISTRIBUTION_JOB_ADDRESSES=10.0.0.1:1234   (coordinator; a full
                                                                 comma list also works)
                KERAS_DISTRIBUTION_NUM_PROCESSES=2
                KERAS_DISTRIBUTION_PROCESS_ID=0                  (1 on the second host)
              `initialize` then calls `keras.distribution.initialize()`
              (`jax.distributed.initialize`); `list_devices()` becomes the global device
              list and Keras feeds each process its share of every global batch
              (`DataParallel.distribute_dataset`). On Cloud TPU, where jax discovers the
              cluster itself, setting KERAS_DISTRIBUTION_NUM_PROCESSES alone is enough.
  tensorflow  set TF_CONFIG on every host, e.g.
                TF_CONFIG='{"cluster": {"worker": ["10.0.0.1:12345", "10.0.0.2:12345"]},
                            "task": {"type": "worker", "index": 0}}'
              and `initialize` creates `tf.distribute.MultiWorkerMirroredStrategy()` (it
              must exist before TensorFlow runs any op, hence `initialize` first in main).
              Wrap `fit` in `multi_worker_fit(model, info)` too. Only worker 0 ("chief")
              should write files that others also write: give each worker its own workdir.
"""

import contextlib
import dataclasses
import json
import logging
import os
from typing import Iterator, Optional, Sequence

from keras_cnn import config
from keras_cnn import errors

DISTRIBUTIONS = config.DISTRIBUTIONS

# Process-wide state: a tf.distribute strategy (MultiWorkerMirroredStrategy in particular)
# and jax.distributed can be set up only once per process.
_STATE = {"initialized": None, "tf_strategy": None}


@dataclasses.dataclass(frozen=True)
class DistributionInfo:
  """What `distribution_scope` set up.

  Attributes:
    kind: "none" or "data_parallel".
    backend: the Keras backend.
    num_replicas: devices one global batch is split over (1 for "none").
    num_processes: processes (hosts) taking part.
    process_index: this process's index; 0 is the one that writes shared files.
    devices: names of the replica devices.
    strategy: the `tf.distribute.Strategy` (tensorflow), else None.
  """

  kind: str
  backend: str
  num_replicas: int = 1
  num_processes: int = 1
  process_index: int = 0
  devices: Sequence[str] = ()
  strategy: object = None

  @property
  def is_chief(self) -> bool:
    return self.process_index == 0


def _check_kind(kind: str) -> None:
  if kind not in DISTRIBUTIONS:
    raise ValueError(f"--distribution must be one of {DISTRIBUTIONS}, got {kind!r}")


def _backend() -> str:
  import keras  # local: importing this module must not pick a backend
  return keras.backend.backend()


def jax_multi_host_requested() -> bool:
  """True when the KERAS_DISTRIBUTION_* variables ask for more than one jax process."""
  num = os.environ.get("KERAS_DISTRIBUTION_NUM_PROCESSES")
  return ("KERAS_DISTRIBUTION_JOB_ADDRESSES" in os.environ) or (num is not None and int(num) > 1)


def tf_multi_worker_requested() -> bool:
  """True when TF_CONFIG describes a cluster of more than one task."""
  raw = os.environ.get("TF_CONFIG")
  if not raw:
    return False
  try:
    cluster = json.loads(raw).get("cluster", {})
  except json.JSONDecodeError as err:
    raise ValueError(f"TF_CONFIG is not valid JSON ({err}): {raw!r}") from err
  return sum(len(tasks) for tasks in cluster.values()) > 1


def _tf_local_devices() -> list:
  import tensorflow as tf
  gpus = tf.config.list_logical_devices("GPU")
  return [d.name for d in (gpus or tf.config.list_logical_devices("CPU"))]


def initialize(kind: str = "none") -> None:
  """Process start-up for `kind`; call first in `main`. Idempotent.

  "none" does nothing. "data_parallel" joins a multi-host cluster when the environment
  describes one (jax: KERAS_DISTRIBUTION_*; tensorflow: TF_CONFIG) and creates the
  tf.distribute strategy, both of which must happen before the backend runs anything.
  """
  _check_kind(kind)
  if kind == "none" or _STATE["initialized"] == kind:
    return
  backend = _backend()
  if backend == "jax" and jax_multi_host_requested():
    import keras
    keras.distribution.initialize()
    logging.info("jax multi-host: joined as process %s", _jax_process_index())
  elif backend == "tensorflow":
    import tensorflow as tf
    if tf_multi_worker_requested():
      _STATE["tf_strategy"] = tf.distribute.MultiWorkerMirroredStrategy()
    else:
      _STATE["tf_strategy"] = tf.distribute.MirroredStrategy(devices=_tf_local_devices())
  _STATE["initialized"] = kind


def _jax_process_index() -> int:
  import jax
  return jax.process_index()


def _jax_info(kind: str, devices: Optional[Sequence] = None) -> DistributionInfo:
  import jax
  import keras
  devices = list(devices) if devices is not None else keras.distribution.list_devices()
  keras.distribution.set_distribution(keras.distribution.DataParallel(devices=devices))
  return DistributionInfo(kind=kind, backend="jax", num_replicas=len(devices),
                          num_processes=jax.process_count(), process_index=jax.process_index(),
                          devices=tuple(map(str, devices)))


def _tf_info(kind: str, strategy) -> DistributionInfo:
  num_processes, process_index = 1, 0
  resolver = getattr(strategy, "cluster_resolver", None)
  if resolver is not None and resolver.cluster_spec().as_dict():
    cluster = resolver.cluster_spec().as_dict()
    num_processes = sum(len(tasks) for tasks in cluster.values())
    process_index = int(resolver.task_id or 0)
  return DistributionInfo(kind=kind, backend="tensorflow",
                          num_replicas=strategy.num_replicas_in_sync, num_processes=num_processes,
                          process_index=process_index,
                          devices=tuple(strategy.extended.worker_devices), strategy=strategy)


@contextlib.contextmanager
def distribution_scope(kind: str = "none",
                       devices: Optional[Sequence] = None) -> Iterator[DistributionInfo]:
  """Context in which to build and compile the model for `--distribution=kind`.

  Args:
    kind: "none" (the backend's default device) or "data_parallel" (every local device,
      or every device of the cluster after a multi-host `initialize`).
    devices: optional explicit replica devices (jax device strings/objects, or
      tensorflow device names); default: all, as described in the module docstring.

  Yields:
    A `DistributionInfo`; `num_replicas` is how many devices share each global batch.

  Raises:
    ValueError: for an unknown `kind`.
  """
  _check_kind(kind)
  backend = _backend()
  if kind == "none":
    yield DistributionInfo(kind=kind, backend=backend)
    return
  if backend == "torch":
    logging.warning("--distribution=data_parallel: keras.distribution does not support the "
                    "torch backend; training on a single device. Use KERAS_BACKEND=jax or "
                    "tensorflow for multi-device training.")
    yield DistributionInfo(kind=kind, backend=backend)
    return
  if backend == "jax":
    initialize(kind)
    info = _jax_info(kind, devices)
    logging.info("data_parallel (jax DataParallel): %d replicas, process %d of %d",
                 info.num_replicas, info.process_index, info.num_processes)
    yield info  # the Keras distribution stays set: fit() after the scope stays sharded
    return
  if backend == "tensorflow":
    import tensorflow as tf
    if devices is not None:
      strategy = tf.distribute.MirroredStrategy(devices=list(devices))
    else:
      initialize(kind)
      strategy = _STATE["tf_strategy"]
    info = _tf_info(kind, strategy)
    logging.info("data_parallel (%s): %d replicas on %s",
                 type(strategy).__name__, info.num_replicas, ", ".join(info.devices))
    with strategy.scope():
      yield info
    return
  raise ValueError(f"--distribution=data_parallel: unsupported backend {backend!r}")


class BatchSizeError(errors.UserError):
  """A global batch that does not split over the replicas (a flag error: one line)."""


def check_global_batch(batch_size: int, info: DistributionInfo) -> None:
  """Raises BatchSizeError naming --batch_size unless it splits evenly over the replicas."""
  if batch_size < info.num_replicas or batch_size % info.num_replicas:
    raise BatchSizeError(
        f"--batch_size={batch_size} is the global batch and must be a multiple of the "
        f"{info.num_replicas} replicas of --distribution={info.kind} ({info.backend})")


@contextlib.contextmanager
def synchronized_batch_norm(model, info: Optional[DistributionInfo] = None):
  """While active, BatchNormalization uses global-batch statistics under tf.distribute.

  Under `MirroredStrategy` Keras' BatchNormalization normalizes each replica's share of
  the batch with that share's statistics, so a distributed step differs from the single
  device one. This turns on `synchronized` (cross-replica moments) for the step functions
  traced inside the context and turns it off again on exit, so the saved model's config
  stays loadable under jax and torch (where `synchronized=True` is rejected). jax
  (one global SPMD program) and single-device runs already use global statistics: then
  this does nothing.

  Args:
    model: a Keras model.
    info: the `DistributionInfo` of the scope the model was built in; None = single device.
  """
  active = (info is not None and info.backend == "tensorflow" and info.num_replicas > 1)
  layers = []
  if active:
    import keras
    layers = [
        layer for layer in model._flatten_layers()  # pylint: disable=protected-access
        if isinstance(layer, keras.layers.BatchNormalization) and not layer.synchronized
    ]
  for layer in layers:
    layer.synchronized = True
  try:
    yield model
  finally:
    for layer in layers:
      layer.synchronized = False


def _is_multi_worker(info: Optional[DistributionInfo]) -> bool:
  if info is None or info.backend != "tensorflow" or info.strategy is None:
    return False
  import tensorflow as tf
  return isinstance(info.strategy, tf.distribute.MultiWorkerMirroredStrategy)


@contextlib.contextmanager
def multi_worker_fit(model, info: Optional[DistributionInfo] = None):
  """While active, `model.fit` (and `evaluate`) run under `MultiWorkerMirroredStrategy`.

  Keras 3's tensorflow trainer fails there in two places (keras-team/keras#20585):
  - before the first step it builds the metrics and optimizer from one batch that it
    first averages over the replicas with `strategy.reduce`, which the strategy refuses
    for a nested batch (inputs and target). Only the batch's shapes matter to that
    build, so here it is done from this process's own share of the batch;
  - after each step it averages the logs (loss, metrics: scalars) over the replicas
    along axis 0, which scalars do not have. Here they are averaged over the replicas
    as they are, so every process sees the same logs and its callbacks (best model,
    learning-rate schedule, early stopping) decide alike.
  The gradients are all-reduced by the strategy as usual. Elsewhere (one process, other
  strategies, other backends) this does nothing.

  Args:
    model: the Keras model whose `fit` is called (compiled in the strategy's scope).
    info: the `DistributionInfo` of that scope; None = single device.
  """
  if not _is_multi_worker(info):
    yield model
    return
  import tensorflow as tf
  from keras import tree
  from keras.src.backend.tensorflow import trainer as tf_trainer

  strategy = info.strategy

  def local_share(value):
    if isinstance(value, tf.distribute.DistributedValues):
      return strategy.experimental_local_results(value)[0]
    return value

  def build_from_local_share(iterator=None, data_batch=None):
    if iterator is not None:
      for _, _, batches in iterator:
        data_batch = tree.map_structure(local_share, next(batches))
        break
    with strategy.scope():
      model._symbolic_build(data_batch=data_batch)  # pylint: disable=protected-access

  keras_reduce = tf_trainer.reduce_per_replica

  def reduce_per_replica(values, strategy_, reduction):
    if reduction in ("auto", "mean"):

      def mean(value):
        if getattr(value, "shape", None) is not None and value.shape.rank == 0:
          return strategy_.reduce("MEAN", value, axis=None)
        return keras_reduce(value, strategy_, reduction)

      return tree.map_structure(mean, values)
    return keras_reduce(values, strategy_, reduction)

  model._maybe_symbolic_build = build_from_local_share  # pylint: disable=protected-access
  tf_trainer.reduce_per_replica = reduce_per_replica
  try:
    yield model
  finally:
    tf_trainer.reduce_per_replica = keras_reduce
    del model._maybe_symbolic_build  # pylint: disable=protected-access


def default_jit_compile() -> bool:
  """Fastest `jit_compile` for this backend and device.

  Measured with `python -m keras_cnn.benchmarks.train_step` (figures in docs/results.md):
  on CPU, Conv3D under XLA is several times slower than TensorFlow's oneDNN kernels, so
  tensorflow runs without XLA on CPU (and with it on GPUs, Keras' own choice); jax always
  compiles (its eager mode is op by op and slower still); torch runs eagerly
  (torch.compile was slower on CPU, plus minutes of compilation).
  """
  backend = _backend()
  if backend == "jax":
    return True
  if backend == "tensorflow":
    import tensorflow as tf
    return bool(tf.config.list_physical_devices("GPU"))
  return False


# oneDNN instruction-set caps (ONEDNN_MAX_CPU_ISA) under which it has no bf16 dot products.
_ISA_CAPS_WITHOUT_BF16 = ("SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX2_VNNI_2", "AVX512_CORE",
                          "AVX512_CORE_VNNI")


def cpu_has_bf16() -> bool:
  """True if oneDNN may use native bfloat16 dot products on this x86 CPU.

  That needs AVX512-BF16 or AMX-BF16 in /proc/cpuinfo, and no `ONEDNN_MAX_CPU_ISA`
  cap below them (a cap such as AVX2 makes the machine behave as one without bf16).
  """
  cap = os.environ.get("ONEDNN_MAX_CPU_ISA", "").strip().upper()
  if cap in _ISA_CAPS_WITHOUT_BF16:
    return False
  try:
    with open("/proc/cpuinfo") as f:
      flags_line = next((line for line in f if line.startswith("flags")), "")
  except OSError:
    return False
  return bool({"avx512_bf16", "amx_bf16"} & set(flags_line.split()))


def default_precision() -> str:
  """Fastest Keras dtype policy measured for this backend on CPU.

  tensorflow on a CPU with AVX512-BF16/AMX: "mixed_bfloat16" (oneDNN bf16 convolutions
  are faster than float32; docs/results.md, `keras_cnn.benchmarks.train_step`). Everything else
  "float32": torch's CPU
  avg_pool3d has no bfloat16 kernel (the step fails; with float32 pooling it is no
  faster), jax's XLA convolutions are not faster in bf16, and accelerators were not
  measured here.
  """
  backend = _backend()
  if backend == "tensorflow" and cpu_has_bf16():
    import tensorflow as tf
    if not tf.config.list_physical_devices("GPU"):
      return "mixed_bfloat16"
  return "float32"

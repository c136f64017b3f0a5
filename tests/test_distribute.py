"""Tests of keras_cnn.distribute: data-parallel fit on 2 virtual CPU devices.

Device counts are fixed when a backend starts (XLA_FLAGS for jax, logical devices for
tensorflow), so the 2-device checks run this file as a script in a fresh subprocess:
`python tests/test_distribute.py {tensorflow,jax,torch}` prints one JSON line.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from keras_cnn import distribute

from helpers import REPO

GLOBAL_BATCH = 8


def _tiny_config(padding="same"):
  """A tiny network; 'valid' drops the pooling (three 3^3 convolutions: 9 -> 3 cells)."""
  from keras_cnn.model import ModelConfig
  return ModelConfig(radius=4, kernel_size=3, filters=4, stride_conv=1,
                     kernel_pooling=2 if padding == "same" else 1, padding=padding,
                     dropout_input=0.0, dropout_hidden=0.0, dense_units=(8, 8, 8, 8, 8),
                     tail_units=(4, 2))


def _batch(config, seed=0):
  rng = np.random.default_rng(seed)
  shape = (GLOBAL_BATCH,) + (config.crop_size,) * 3 + (1,)
  x = {
      "n_igm": rng.normal(size=shape).astype("float32"),
      "n_src": rng.poisson(0.3, size=shape).astype("float32")
  }
  y = rng.uniform(size=(GLOBAL_BATCH, 1)).astype("float32")
  return x, y


def _compiled(config, weights=None):
  import keras
  from keras_cnn.model import build_model
  keras.utils.set_random_seed(0)
  model = build_model(config)
  if weights is not None:
    model.set_weights(weights)
  model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
  return model


def _fit_once(model, x, y):
  """(weights, logged loss) after one optimizer step through `fit`, the path that splits
  a global batch per replica."""
  import tensorflow as tf  # keras_cnn feeds tf.data on every backend
  dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(GLOBAL_BATCH)
  history = model.fit(dataset, epochs=1, verbose=0, shuffle=False)
  return model.get_weights(), float(history.history["loss"][-1])


def _one_step(model, x, y):
  return _fit_once(model, x, y)[0]


def _max_diff(a, b):
  return max(float(np.max(np.abs(u - v))) for u, v in zip(a, b))


def _child(backend: str) -> dict:
  """One step single-device vs data_parallel on the same global batch, then a short fit."""
  if backend == "tensorflow":
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
  import keras
  import tensorflow as tf

  config = _tiny_config()
  x, y = _batch(config)
  single = _compiled(config)
  initial = single.get_weights()
  expected = _one_step(single, x, y)

  distribute.initialize("data_parallel")
  with distribute.distribution_scope("data_parallel") as info:
    plain = _compiled(config, initial)
    model = _compiled(config, initial)
  # Per-replica BatchNormalization statistics (tf.distribute's default) change the step.
  unsynchronized = _one_step(plain, x, y)
  with distribute.synchronized_batch_norm(model, info):
    got = _one_step(model, x, y)
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).repeat().batch(GLOBAL_BATCH)
    history = model.fit(dataset, steps_per_epoch=2, epochs=1, verbose=0)
  synchronized_after = [
      layer.synchronized
      for layer in model.layers
      if isinstance(layer, keras.layers.BatchNormalization)
  ]
  return {
      "backend": keras.backend.backend(),
      "num_replicas": info.num_replicas,
      "max_abs_diff": _max_diff(expected, got),
      "max_abs_diff_unsynchronized_bn": _max_diff(expected, unsynchronized),
      "max_update": _max_diff(initial, expected),
      "fit_loss": float(history.history["loss"][-1]),
      "synchronized_after": any(synchronized_after)
  }


def _run_child(backend: str, extra_env=None) -> dict:
  env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="",
             **(extra_env or {}))
  env["PYTHONPATH"] = os.pathsep.join(filter(None, [REPO, env.get("PYTHONPATH")]))
  proc = subprocess.run([sys.executable, os.path.abspath(__file__), backend], env=env,
                        capture_output=True, text=True, timeout=600, cwd=REPO)
  assert proc.returncode == 0, f"child {backend} failed:\n{proc.stderr[-4000:]}"
  lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
  assert lines, f"child {backend} printed no result:\n{proc.stdout[-2000:]}"
  return json.loads(lines[-1])


def test_unknown_kind_names_the_flag():
  with pytest.raises(ValueError, match="--distribution"):
    with distribute.distribution_scope("model_parallel"):
      pass
  with pytest.raises(ValueError, match="--distribution"):
    distribute.initialize("ring")


def test_multi_host_detection(monkeypatch):
  for name in ("TF_CONFIG", "KERAS_DISTRIBUTION_JOB_ADDRESSES", "KERAS_DISTRIBUTION_NUM_PROCESSES"):
    monkeypatch.delenv(name, raising=False)
  assert not distribute.tf_multi_worker_requested()
  assert not distribute.jax_multi_host_requested()
  monkeypatch.setenv(
      "TF_CONFIG",
      json.dumps({
          "cluster": {
              "worker": ["a:1", "b:1"]
          },
          "task": {
              "type": "worker",
              "index": 1
          }
      }))
  assert distribute.tf_multi_worker_requested()
  monkeypatch.setenv("TF_CONFIG", "{not json")
  with pytest.raises(ValueError, match="TF_CONFIG"):
    distribute.tf_multi_worker_requested()
  monkeypatch.setenv("KERAS_DISTRIBUTION_NUM_PROCESSES", "1")
  assert not distribute.jax_multi_host_requested()
  monkeypatch.setenv("KERAS_DISTRIBUTION_NUM_PROCESSES", "4")
  assert distribute.jax_multi_host_requested()


def test_global_batch_must_split_over_replicas():
  info = distribute.DistributionInfo(kind="data_parallel", backend="jax", num_replicas=4)
  distribute.check_global_batch(8, info)
  for bad in (2, 6):
    with pytest.raises(ValueError, match="--batch_size"):
      distribute.check_global_batch(bad, info)


@pytest.mark.backend
def test_data_parallel_on_local_devices_in_process():
  """Whatever this process's backend and devices, data_parallel builds and fits."""
  import keras
  config = _tiny_config()
  x, y = _batch(config)
  try:
    with distribute.distribution_scope("data_parallel") as info:
      model = _compiled(config)
    with distribute.synchronized_batch_norm(model, info):
      loss = model.train_on_batch(x, y)
  finally:
    if keras.backend.backend() == "jax":
      keras.distribution.set_distribution(None)
  assert info.num_replicas >= 1 and info.backend == keras.backend.backend()
  assert np.isfinite(loss)
  # The measured choice on CPU (docs/results.md, training step per backend): XLA only under jax.
  assert distribute.default_jit_compile() is (keras.backend.backend() == "jax")
  assert distribute.default_precision() in ("float32", "mixed_bfloat16")


@pytest.mark.parametrize("backend,extra_env", [
    ("tensorflow", None),
    ("jax", {
        "XLA_FLAGS": "--xla_force_host_platform_device_count=2"
    }),
])
def test_two_device_step_equals_single_device_step(backend, extra_env):
  result = _run_child(backend, extra_env)
  assert result["backend"] == backend
  assert result["num_replicas"] == 2
  assert result["max_update"] > 1e-4  # the step did change the weights
  assert result["max_abs_diff"] < 1e-5, result
  assert np.isfinite(result["fit_loss"])
  assert not result["synchronized_after"]  # saved config stays loadable on jax/torch
  if backend == "tensorflow":  # the batch really was split: per-replica BN statistics differ
    assert result["max_abs_diff_unsynchronized_bn"] > 1e-4, result


def test_torch_falls_back_to_one_device():
  result = _run_child("torch")
  assert result["backend"] == "torch"
  assert result["num_replicas"] == 1
  assert result["max_abs_diff"] < 1e-5, result


def _worker() -> dict:
  """One worker of the TF_CONFIG cluster: one step of a 'valid' network on the global
  batch through `--distribution=data_parallel`, and the same step in this process alone."""
  distribute.initialize("data_parallel")  # the strategy exists before TensorFlow runs an op
  import tensorflow as tf
  config = _tiny_config(padding="valid")
  x, y = _batch(config)
  with distribute.distribution_scope("data_parallel") as info:
    model = _compiled(config)
    plain = _compiled(config)
  initial = model.get_weights()
  with distribute.synchronized_batch_norm(model, info), distribute.multi_worker_fit(model, info):
    got, loss = _fit_once(model, x, y)
  # Per-replica BatchNormalization statistics change the step only if the batch was split.
  with distribute.multi_worker_fit(plain, info):
    unsynchronized = _one_step(plain, x, y)
  # no strategy: this process alone
  expected, expected_loss = _fit_once(_compiled(config, initial), x, y)
  return {
      "multi_worker": isinstance(info.strategy, tf.distribute.MultiWorkerMirroredStrategy),
      "num_replicas": info.num_replicas,
      "num_processes": info.num_processes,
      "process_index": info.process_index,
      "pid": os.getpid(),
      "max_abs_diff": _max_diff(expected, got),
      "max_abs_diff_unsynchronized_bn": _max_diff(expected, unsynchronized),
      "max_update": _max_diff(initial, expected),
      "loss": loss,
      "expected_loss": expected_loss,
      "weights_sum": float(sum(np.abs(w).sum(dtype=np.float64) for w in got)),
  }


def _free_ports(count: int) -> list:
  import socket
  sockets = [socket.socket() for _ in range(count)]
  try:
    for sock in sockets:
      sock.bind(("localhost", 0))
    return [sock.getsockname()[1] for sock in sockets]
  finally:
    for sock in sockets:
      sock.close()


def _run_workers(command, folder, timeout=600) -> list:
  """Runs `command(index)` as worker 0 and worker 1 of a TF_CONFIG cluster on localhost;
  returns their (stdout, stderr). A worker that fails ends the other (which would wait
  for it forever)."""
  import time

  workers = [f"localhost:{port}" for port in _free_ports(2)]
  env = dict(os.environ, KERAS_BACKEND="tensorflow", TF_CPP_MIN_LOG_LEVEL="2",
             CUDA_VISIBLE_DEVICES="")
  env["PYTHONPATH"] = os.pathsep.join(filter(None, [REPO, env.get("PYTHONPATH")]))
  procs, logs = [], []
  for index in range(2):
    tf_config = {"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}}
    logs.append((open(os.path.join(folder, f"worker{index}.out"),
                      "w+"), open(os.path.join(folder, f"worker{index}.err"), "w+")))
    procs.append(
        subprocess.Popen(command(index), env=dict(env, TF_CONFIG=json.dumps(tf_config)),
                         stdout=logs[-1][0], stderr=logs[-1][1], text=True, cwd=REPO))
  deadline = time.monotonic() + timeout
  try:
    while any(proc.poll() is None for proc in procs):
      if any(proc.poll() for proc in procs) or time.monotonic() > deadline:
        break
      time.sleep(1)
  finally:
    for proc in procs:
      if proc.poll() is None:
        proc.kill()
      proc.wait()
  results = []
  for proc, (out, err) in zip(procs, logs):
    out.seek(0)
    err.seek(0)
    results.append((out.read(), err.read()))
    out.close()
    err.close()
    assert proc.returncode == 0, f"a worker failed ({proc.returncode}):\n{results[-1][1][-4000:]}"
  return results


@pytest.mark.slow
def test_two_worker_processes_step_equals_single_process_step(tmp_path):
  """Two processes on localhost joined by TF_CONFIG (MultiWorkerMirroredStrategy): one
  step on a global batch gives the weights of the same step in one process."""
  outputs = _run_workers(
      lambda index: [sys.executable, os.path.abspath(__file__), "worker"], str(tmp_path))
  results = []
  for out, err in outputs:
    lines = [line for line in out.splitlines() if line.startswith("{")]
    assert lines, f"worker printed no result:\n{out[-2000:]}\n{err[-2000:]}"
    results.append(json.loads(lines[-1]))
  assert sorted(r["process_index"] for r in results) == [0, 1]
  assert results[0]["pid"] != results[1]["pid"]
  for result in results:
    assert result["multi_worker"]
    assert result["num_processes"] == 2 and result["num_replicas"] == 2, result
    assert result["max_update"] > 1e-4  # the step did change the weights
    assert result["max_abs_diff"] < 1e-5, result
    assert result["max_abs_diff_unsynchronized_bn"] > 1e-4, result  # each took half the batch
    # the logged loss is that of the global batch, the same in both processes
    assert result["loss"] == pytest.approx(result["expected_loss"], rel=1e-5)
  assert results[0]["weights_sum"] == pytest.approx(results[1]["weights_sum"], rel=1e-6)


@pytest.mark.slow
def test_train_runs_on_two_worker_processes(tmp_path):
  """`python -m keras_cnn.train --distribution=data_parallel` with TF_CONFIG: both workers
  train one model on the global batches and end with the same metrics."""
  run = ("--n_cells=16", "--radius=4", "--kernel_size=3", "--filters=2", "--kernel_pooling=1",
         "--stride_conv=1", "--padding=valid", "--train_unit=patch", "--patch_size=4", "--epochs=2",
         "--steps_per_epoch=2", "--batch_size=2", "--validation_patches=2", "--precision=float32",
         "--time_budget_minutes=0")
  outputs = _run_workers(
      lambda index: [
          sys.executable, "-m", "keras_cnn.train", f"--workdir={tmp_path / f'w{index}'}",
          "--distribution=data_parallel", *run
      ], str(tmp_path))
  for _, err in outputs:
    assert "2 replica(s)" in err
  metrics = [json.loads((tmp_path / f"w{index}" / "metrics.json").read_text()) for index in (0, 1)]
  assert metrics[0]["r2"] == pytest.approx(metrics[1]["r2"], abs=1e-6)
  histories = [(tmp_path / f"w{index}" / "history.csv").read_text() for index in (0, 1)]
  assert histories[0] == histories[1]  # every process logged the global loss


if __name__ == "__main__":
  print(json.dumps(_worker() if sys.argv[1] == "worker" else _child(sys.argv[1])))


def test_an_isa_cap_without_bf16_means_float32(monkeypatch):
  """ONEDNN_MAX_CPU_ISA=AVX2 makes oneDNN run as on an AVX2-only CPU: no bf16 default."""
  monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
  assert not distribute.cpu_has_bf16()
  assert distribute.default_precision() == "float32"

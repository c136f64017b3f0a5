"""Training-step speed of keras_cnn per backend and setting, next to the original PyTorch net.

  python -m keras_cnn.benchmarks.train_step            # the full table (r=24 and r=4)
  python -m keras_cnn.benchmarks.train_step --radius=4 --backends=tensorflow \\
      --setting=jit_compile=false,precision=mixed_bfloat16 --setting=jit_compile=true

Prints one JSON object per (configuration, backend, setting) with the keys
`radius`, `filters`, `backend`, `setting`, `ex_per_s` (examples/s of the Keras train
step), `pytorch_ex_per_s` (the original PyTorch implementation of the same layers, same
batch size and threads, measured in the same run) and `matmul_fraction` (achieved model
FLOP/s over the FLOP/s of a large float32 matmul measured in the same run), plus details.

Method. Inputs are synthetic random crops (this measures the step, not the pipeline).
Every measurement runs in its own subprocess (KERAS_BACKEND is fixed at import), pinned
to the first `threads` CPUs, with `warmup` untimed steps (compilation) and `steps` timed
ones of `model.train_on_batch`; a run's examples/s uses its median step time. For each
configuration the PyTorch original runs first, then every Keras setting, `--repeats`
times, and PyTorch once more at the end: `ex_per_s` is the median over repeats and
`pytorch_ex_per_s` the best PyTorch run (a conservative ratio on a machine whose load
drifts: OpenMP runs slow down badly when another process takes a core; `cpu_util` says
how many cores a run kept busy, and `ex_per_core_s` = ex_per_s / cpu_util is the
contention-robust companion of ex_per_s, `speedup_per_core_s` its ratio to PyTorch's
median). The full default sweep is long on a small CPU (XLA settings at r=24 take
minutes per step); restrict it with --radius/--backends/--setting.

The baseline is `keras_cnn.benchmarks.torch_reference`, trained with MSE loss,
Adam(1e-3), NCDHW float32, eager.

FLOPs are counted analytically: 2 x multiply-adds of every convolution tap that reads
an in-bounds input voxel (taps over the zero padding are not useful work) plus the dense
layers, times 3 for forward + backward (`model_flops`). The `_nominal` variants count
every tap. The matmul reference is the best float32 (4096 x 4096) matmul, numpy's or the
framework's, measured in any subprocess of the configuration (one denominator for all
its lines); mixed_bfloat16 runs are still compared with that float32 rate.

Setting keys (`--setting=key=value,...`, repeatable; a `backend:` prefix limits one to a
backend): jit_compile (true/false), precision (float32/mixed_bfloat16), batch, threads,
data_format (channels_last/channels_first: a channels-first copy of the model built by
`keras.models.clone_model`, model.py unchanged), xla (default/ynn_conv/onednn_conv/
onednn: XLA CPU convolution libraries), inter_op (TF inter-op threads; 0 = default),
pool_float32 (AveragePooling3D in float32 under mixed_bfloat16, again via clone_model).
"""

import dataclasses
import json
import os
import statistics
import subprocess
import sys
import time
from typing import Dict, List, Optional, Sequence

from absl import app
from absl import flags
from absl import logging

from keras_cnn import distribute
from keras_cnn.benchmarks import torch_reference
from keras_cnn.benchmarks.flops import MATMUL_N, backend_matmul as _backend_matmul
from keras_cnn.benchmarks.flops import best_gflops as _best_gflops
from keras_cnn.benchmarks.flops import model_flops
from keras_cnn.benchmarks.flops import numpy_matmul_gflops as _numpy_matmul_gflops

BACKENDS = ("tensorflow", "jax", "torch")
PRECISIONS = ("float32", "mixed_bfloat16")
DATA_FORMATS = ("channels_last", "channels_first")
XLA_PRESETS = {
    "default": "",
    "ynn_conv": "--xla_cpu_experimental_ynn_fusion_type=individual_convolution",
    "onednn_conv": "--xla_cpu_experimental_onednn_fusion_type=individual_convolution",
    "onednn": "--xla_cpu_use_onednn=true",
}

# The levers measured by default, per backend (one factor at a time around the default).
DEFAULT_SETTINGS = {
    "tensorflow": ("jit_compile=false", "jit_compile=false,precision=mixed_bfloat16",
                   "jit_compile=false,precision=mixed_bfloat16,inter_op=1", "jit_compile=true",
                   "jit_compile=true,precision=mixed_bfloat16"),
    "jax": ("jit_compile=true", "jit_compile=true,precision=mixed_bfloat16",
            "jit_compile=true,xla=onednn_conv"),
    "torch": ("jit_compile=false", "jit_compile=false,precision=mixed_bfloat16",
              "jit_compile=false,precision=mixed_bfloat16,pool_float32=true",
              "jit_compile=false,data_format=channels_first", "jit_compile=true"),
}


@dataclasses.dataclass(frozen=True)
class Setting:
  """One point of the sweep; `name` is the `setting` of the JSON line."""

  jit_compile: bool = False
  precision: str = "float32"
  batch: int = 8
  threads: int = 2
  data_format: str = "channels_last"
  xla: str = "default"
  inter_op: int = 0
  pool_float32: bool = False

  @property
  def name(self) -> str:
    parts = [
        f"jit_compile={str(self.jit_compile).lower()}", f"precision={self.precision}",
        f"batch={self.batch}", f"threads={self.threads}", f"data_format={self.data_format}"
    ]
    if self.xla != "default":
      parts.append(f"xla={self.xla}")
    if self.inter_op:
      parts.append(f"inter_op={self.inter_op}")
    if self.pool_float32:
      parts.append("pool_float32=true")
    return ",".join(parts)


def parse_setting(text: str, batch: int, threads: int) -> Setting:
  """'jit_compile=true,precision=mixed_bfloat16' -> Setting (batch/threads as given)."""
  values = {"batch": batch, "threads": threads}
  for item in filter(None, (part.strip() for part in text.split(","))):
    key, sep, value = item.partition("=")
    if not sep:
      raise ValueError(f"--setting item {item!r} is not key=value")
    values[key] = value
  fields = {f.name: f for f in dataclasses.fields(Setting)}
  unknown = set(values) - set(fields)
  if unknown:
    raise ValueError(f"--setting: unknown keys {sorted(unknown)}; known: {sorted(fields)}")
  out = {}
  for key, value in values.items():
    if fields[key].type in (bool, "bool"):
      if str(value).lower() not in ("true", "false", "1", "0"):
        raise ValueError(f"--setting {key}={value}: expected true or false")
      out[key] = str(value).lower() in ("true", "1")
    elif fields[key].type in (int, "int"):
      out[key] = int(value)
    else:
      out[key] = str(value)
  setting = Setting(**out)
  if setting.precision not in PRECISIONS:
    raise ValueError(f"--setting precision must be one of {PRECISIONS}")
  if setting.data_format not in DATA_FORMATS:
    raise ValueError(f"--setting data_format must be one of {DATA_FORMATS}")
  if setting.xla not in XLA_PRESETS:
    raise ValueError(f"--setting xla must be one of {sorted(XLA_PRESETS)}")
  if setting.batch < 1 or setting.threads < 1:
    raise ValueError("--setting batch and threads must be >= 1")
  return setting


# ------------------------------------------------------------------- worker processes


def _pin(threads: int) -> None:
  cpus = sorted(os.sched_getaffinity(0))
  os.sched_setaffinity(0, cpus[:threads])


def _time_steps(step, warmup: int, steps: int) -> Dict[str, float]:
  t0 = time.perf_counter()
  for _ in range(warmup):
    step()
  warm_s = time.perf_counter() - t0
  times, cpu = [], []
  for _ in range(steps):
    t0, c0 = time.perf_counter(), time.process_time()
    step()
    times.append(time.perf_counter() - t0)
    cpu.append(time.process_time() - c0)
  # cpu_util: cores this process kept busy while timed (< threads when others share them).
  return {
      "step_s": times,
      "median_step_s": statistics.median(times),
      "warmup_s": warm_s,
      "cpu_util": sum(cpu) / sum(times)
  }


def _random_batch(radius: int, batch: int, channels_first: bool = False):
  import numpy as np
  rng = np.random.default_rng(0)
  side = 2 * radius + 1
  shape = (batch, 1, side, side, side) if channels_first else (batch, side, side, side, 1)
  n_igm = rng.standard_normal(shape, dtype=np.float32)
  n_src = rng.poisson(0.05, size=shape).astype(np.float32)
  y = rng.uniform(size=(batch, 1)).astype(np.float32)
  return n_igm, n_src, y


def _pytorch_worker(spec: dict) -> dict:
  """The original net, float32, eager: the baseline."""
  import torch
  torch.set_num_threads(spec["threads"])
  torch.manual_seed(0)
  model = torch_reference.build_original_pytorch(spec["radius"], spec["filters"],
                                                 spec["kernel_size"])
  model.train()
  optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
  loss_fn = torch.nn.MSELoss()
  n_igm, n_src, y = (torch.from_numpy(a)
                     for a in _random_batch(spec["radius"], spec["batch"], channels_first=True))

  def step():
    optimizer.zero_grad(set_to_none=True)
    loss = loss_fn(model(n_igm, n_src), y)
    loss.backward()
    optimizer.step()
    return float(loss)

  result = _time_steps(step, spec["warmup"], spec["steps"])
  a = torch.randn(MATMUL_N, MATMUL_N)
  b = torch.randn(MATMUL_N, MATMUL_N)
  result["matmul_gflops"] = {
      "torch": _best_gflops(lambda: torch.mm(a, b)),
      "numpy": _numpy_matmul_gflops()
  }
  return result


def _model_variant(model, channels_first: bool, pool_float32: bool):
  """The same network and layer names with other layouts/dtypes (model.py untouched).

  channels_first: every 3D layer channels-first and inputs (B, 1, s, s, s).
  pool_float32: AveragePooling3D layers run in float32 under a mixed policy (torch's CPU
    avg_pool3d has no bfloat16 kernel).
  """
  import keras

  def clone(layer):
    config = layer.get_config()
    if channels_first:
      if isinstance(layer, (keras.layers.Conv3D, keras.layers.AveragePooling3D)):
        config["data_format"] = "channels_first"
      elif isinstance(layer, (keras.layers.BatchNormalization, keras.layers.Concatenate)):
        config["axis"] = 1
    if pool_float32 and isinstance(layer, keras.layers.AveragePooling3D):
      config["dtype"] = "float32"
    return layer.__class__.from_config(config)

  inputs = None
  if channels_first:
    inputs = {
        name: keras.Input(shape=(1,) + tuple(tensor.shape[1:4]), name=name)
        for name, tensor in model.input.items()
    }
  return keras.models.clone_model(model, input_tensors=inputs, clone_function=clone)


def _keras_worker(spec: dict) -> dict:
  """keras_cnn's model under spec['backend'] (already in KERAS_BACKEND)."""
  setting = Setting(**spec["setting"])
  backend = spec["backend"]
  if backend == "tensorflow":
    import tensorflow as tf
    tf.config.threading.set_intra_op_parallelism_threads(setting.threads)
    if setting.inter_op:
      tf.config.threading.set_inter_op_parallelism_threads(setting.inter_op)
  elif backend == "torch":
    import torch
    torch.set_num_threads(setting.threads)
  import keras
  from keras_cnn.model import ModelConfig, build_model

  keras.utils.set_random_seed(0)
  if setting.precision != "float32":
    keras.config.set_dtype_policy(setting.precision)
  model = build_model(
      ModelConfig(radius=spec["radius"], kernel_size=spec["kernel_size"], filters=spec["filters"]))
  channels_first = setting.data_format == "channels_first"
  if channels_first or setting.pool_float32:
    model = _model_variant(model, channels_first, setting.pool_float32)
  model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="mse", jit_compile=setting.jit_compile)
  n_igm, n_src, y = _random_batch(spec["radius"], setting.batch, channels_first)
  x = {"n_igm": n_igm, "n_src": n_src}
  result = _time_steps(lambda: model.train_on_batch(x, y), spec["warmup"], spec["steps"])
  result["matmul_gflops"] = {
      backend: _best_gflops(_backend_matmul(backend)),
      "numpy": _numpy_matmul_gflops()
  }
  return result


def run_worker(spec: dict) -> dict:
  _pin(spec["threads"])
  load_before = os.getloadavg()[0]
  result = (_pytorch_worker(spec) if spec["kind"] == "pytorch" else _keras_worker(spec))
  result["load_avg"] = [round(load_before, 2), round(os.getloadavg()[0], 2)]
  return result


# ------------------------------------------------------------------------ orchestration

RESULT_PREFIX = "TRAIN_STEP_RESULT "


def _spawn(spec: dict, timeout_s: float) -> dict:
  """Runs `spec` in a fresh interpreter with the backend's environment."""
  env = dict(os.environ)
  env.update(TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="",
             OMP_NUM_THREADS=str(spec["threads"]), OPENBLAS_NUM_THREADS=str(spec["threads"]),
             MKL_NUM_THREADS=str(spec["threads"]))
  if spec["kind"] == "keras":
    env["KERAS_BACKEND"] = spec["backend"]
    xla = XLA_PRESETS[spec["setting"]["xla"]]
    env["XLA_FLAGS"] = " ".join(filter(None, [os.environ.get("XLA_FLAGS", ""), xla]))
    if spec["backend"] == "jax":
      env.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
  cmd = [sys.executable, "-m", "keras_cnn.benchmarks.train_step", "--worker=" + json.dumps(spec)]
  t0 = time.perf_counter()
  try:
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout_s)
  except subprocess.TimeoutExpired:
    return {"error": f"timed out after {timeout_s:.0f} s"}
  for line in proc.stdout.splitlines():
    if line.startswith(RESULT_PREFIX):
      result = json.loads(line[len(RESULT_PREFIX):])
      result["wall_s"] = round(time.perf_counter() - t0, 1)
      return result
  lines = [
      line.strip()
      for line in (proc.stderr or proc.stdout).splitlines()
      if line.strip() and not line.lstrip().startswith(("File ", "^", "I0000", "W0000"))
  ]
  return {"error": f"exit {proc.returncode}: " + " | ".join(lines[-3:])[-600:]}


def default_settings(backend: str, batch: int, threads: int) -> List[Setting]:
  return [parse_setting(text, batch, threads) for text in DEFAULT_SETTINGS[backend]]


def settings_for(backend: str, texts: Sequence[str], batch: int, threads: int) -> List[Setting]:
  """Settings of `backend` from --setting values ('[backend:]key=value,...')."""
  if not texts:
    return default_settings(backend, batch, threads)
  out = []
  for text in texts:
    prefix, sep, rest = text.partition(":")
    if sep and prefix in BACKENDS:
      if prefix != backend:
        continue
      text = rest
    out.append(parse_setting(text, batch, threads))
  return out


def _ex_per_s(result: dict, batch: int) -> Optional[float]:
  return batch / result["median_step_s"] if "median_step_s" in result else None


def run_configuration(radius: int, filters: int, kernel_size: int, batch: int,
                      backends: Sequence[str], setting_texts: Sequence[str], threads: int,
                      warmup: int, steps: int, timeout_s: float, emit,
                      repeats: int = 1) -> List[dict]:
  """Measures one (radius, filters) and emits one line per (backend, setting).

  Order: PyTorch, then every Keras setting, repeated `repeats` times, then PyTorch once
  more, so every Keras run has PyTorch runs of the same batch and threads around it.
  `ex_per_s` is the median over repeats, `pytorch_ex_per_s` the best PyTorch run, and
  every `matmul_fraction` of the configuration uses the same reference: the best
  float32 matmul measured in any of its subprocesses.
  """
  flops = model_flops(radius, filters, kernel_size)
  base = {
      "radius": radius,
      "filters": filters,
      "kernel_size": kernel_size,
      "warmup": warmup,
      "steps": steps
  }
  plan = [(backend, setting)
          for backend in backends
          for setting in settings_for(backend, setting_texts, batch, threads)]
  baseline_keys = sorted({(s.batch, s.threads) for _, s in plan})
  pytorch = {key: [] for key in baseline_keys}
  keras_runs = {i: [] for i in range(len(plan))}

  def pytorch_round():
    for batch_size, n_threads in baseline_keys:
      spec = dict(base, kind="pytorch", backend="pytorch", batch=batch_size, threads=n_threads)
      result = _spawn(spec, timeout_s)
      logging.info("pytorch r=%d batch=%d threads=%d: %s", radius, batch_size, n_threads,
                   _ex_per_s(result, batch_size) or result.get("error"))
      pytorch[(batch_size, n_threads)].append(result)

  for _ in range(repeats):
    pytorch_round()
    for i, (backend, setting) in enumerate(plan):
      spec = dict(base, kind="keras", backend=backend, setting=dataclasses.asdict(setting),
                  threads=setting.threads, batch=setting.batch)
      result = _spawn(spec, timeout_s)
      logging.info("%s %s: %s", backend, setting.name,
                   _ex_per_s(result, setting.batch) or result.get("error"))
      keras_runs[i].append(result)
  pytorch_round()

  everything = [r for runs in list(pytorch.values()) + list(keras_runs.values()) for r in runs]
  matmuls = [v for r in everything for v in r.get("matmul_gflops", {}).values()]
  ref_gflops = max(matmuls) if matmuls else None
  lines = []
  for i, (backend, setting) in enumerate(plan):
    runs = keras_runs[i]
    ok = [r for r in runs if "median_step_s" in r]
    torch_ok = [r for r in pytorch[(setting.batch, setting.threads)] if "median_step_s" in r]
    ex_runs = [_ex_per_s(r, setting.batch) for r in ok]
    torch_ex = [_ex_per_s(r, setting.batch) for r in torch_ok]
    ex = statistics.median(ex_runs) if ex_runs else None
    best_torch = max(torch_ex) if torch_ex else None
    # Examples per busy core-second: less sensitive to other processes on the machine.
    per_core = [_ex_per_s(r, setting.batch) / r["cpu_util"] for r in ok if r.get("cpu_util")]
    torch_per_core = [
        _ex_per_s(r, setting.batch) / r["cpu_util"] for r in torch_ok if r.get("cpu_util")
    ]
    ex_core = statistics.median(per_core) if per_core else None
    torch_core = statistics.median(torch_per_core) if torch_per_core else None
    line = {
        "radius": radius,
        "filters": filters,
        "backend": backend,
        "setting": setting.name,
        "ex_per_s": _round(ex),
        "pytorch_ex_per_s": _round(best_torch),
        "matmul_fraction": _ratio(ex, flops["train"] / 1e9, ref_gflops),
        "speedup_vs_pytorch": _ratio(ex, 1.0, best_torch),
        "matmul_fraction_nominal": _ratio(ex, flops["train_nominal"] / 1e9, ref_gflops),
        "ex_per_core_s": _round(ex_core),
        "pytorch_ex_per_core_s": _round(torch_core),
        "speedup_per_core_s": _ratio(ex_core, 1.0, torch_core),
        "model_gflops": _round(ex * flops["train"] / 1e9) if ex else None,
        "matmul_gflops": _round(ref_gflops),
        "train_gflop_per_example": _round(flops["train"] / 1e9),
        "ex_per_s_runs": [_round(v) for v in ex_runs],
        "pytorch_ex_per_s_runs": [_round(v) for v in torch_ex],
        "kernel_size": kernel_size,
        "batch": setting.batch,
        "threads": setting.threads,
        "warmup_s": [_round(r.get("warmup_s")) for r in ok],
        "step_s": [[_round(v) for v in r["step_s"]] for r in ok],
        "cpu_util": [_round(r.get("cpu_util"), 3) for r in ok],
        "pytorch_cpu_util": [_round(r.get("cpu_util"), 3) for r in torch_ok],
        "load_avg": [r.get("load_avg") for r in ok],
    }
    errors = [r["error"] for r in runs if "error" in r]
    if errors:
      line["error"] = errors[0]
    emit(line)
    lines.append(line)
  return lines


def _ratio(ex: Optional[float], scale: float, reference: Optional[float]):
  if not ex or not reference:
    return None
  return _round(ex * scale / reference)


def _round(value, digits: int = 4):
  if value is None:
    return None
  return float(f"{value:.{digits}g}")


# ------------------------------------------------------------------------------ flags

FLAGS = flags.FLAGS


def define_flags() -> None:
  flags.DEFINE_list("radius", ["24", "4"], "Crop radii to measure (crop side 2r+1).")
  flags.DEFINE_integer("filters", 128, "Conv3D filters per layer.", lower_bound=1)
  flags.DEFINE_integer("kernel_size", 5, "Conv3D kernel size.", lower_bound=1)
  flags.DEFINE_list(
      "batch_size", ["4", "64"],
      "Batch size per radius (one value: all radii); a setting's batch=N "
      "overrides it.")
  flags.DEFINE_list("backends", list(BACKENDS), "Keras backends to measure.")
  flags.DEFINE_multi_string(
      "setting", [], "Repeatable '[backend:]key=value,...' (keys: jit_compile, precision, batch, "
      "threads, data_format, xla, inter_op, pool_float32). Default: the per-backend sweep "
      "DEFAULT_SETTINGS of this module.")
  flags.DEFINE_integer("threads", len(os.sched_getaffinity(0)),
                       "CPU cores to pin each run to (and its intra-op threads).", lower_bound=1)
  flags.DEFINE_integer("warmup", 2, "Untimed steps per run (compilation).", lower_bound=1)
  flags.DEFINE_integer("steps", 3, "Timed steps per run.", lower_bound=1)
  flags.DEFINE_integer(
      "repeats", 1, "Rounds of (PyTorch, every Keras setting); PyTorch runs once more "
      "at the end. ex_per_s is the median over rounds.", lower_bound=1)
  flags.DEFINE_float("timeout_s", 1800.0, "Wall-clock limit of each subprocess.")
  flags.DEFINE_string("worker", None, "Internal: JSON spec of one subprocess run.")

  flags.register_validator("backends", lambda v: set(v) <= set(BACKENDS),
                           message=f"--backends must be a subset of {BACKENDS}")
  flags.register_validator("radius", lambda v: all(s.isdigit() and int(s) >= 4 for s in v),
                           message="--radius: integers >= 4 (three 2x poolings need a side >= 9)")
  flags.register_validator("batch_size", lambda v: all(s.isdigit() and int(s) >= 1 for s in v),
                           message="--batch_size: positive integers")


def main(argv) -> None:
  del argv
  if FLAGS.worker:
    result = run_worker(json.loads(FLAGS.worker))
    print(RESULT_PREFIX + json.dumps(result), flush=True)
    return
  radii = [int(v) for v in FLAGS.radius]
  batches = [int(v) for v in FLAGS.batch_size]
  if len(batches) not in (1, len(radii)):
    raise app.UsageError("--batch_size needs one value or one per --radius")
  if len(batches) == 1:
    batches *= len(radii)
  for text in FLAGS.setting:  # fail before any run
    prefix, sep, rest = text.partition(":")
    try:
      parse_setting(rest if sep and prefix in BACKENDS else text, 1, 1)
    except ValueError as err:
      raise app.UsageError(str(err)) from err
  logging.info("CPU bf16: %s; load average %.2f", distribute.cpu_has_bf16(), os.getloadavg()[0])
  for radius, batch in zip(radii, batches):
    run_configuration(radius, FLAGS.filters, FLAGS.kernel_size, batch, FLAGS.backends,
                      FLAGS.setting, FLAGS.threads, FLAGS.warmup, FLAGS.steps, FLAGS.timeout_s,
                      emit=lambda line: print(json.dumps(line), flush=True), repeats=FLAGS.repeats)


if __name__ == "__main__":
  define_flags()
  app.run(main)

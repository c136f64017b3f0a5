"""Benchmarks: `python -m keras_cnn.benchmarks.<name>` prints one JSON object per line."""

import os
import statistics
import tempfile
import time
from typing import Iterator, Sequence, Tuple


def labelled_models(specs: Sequence[str]) -> Iterator[Tuple[str, object]]:
  """(label, loaded model) of each --models entry "label=path", in order."""
  from absl import app

  from keras_cnn import inference

  for spec in specs:
    label, _, path = spec.partition("=")
    if not path:
      raise app.UsageError(f"--models entry {spec!r} is not label=path")
    yield label, inference.load_model(path)


def score_box(model, box) -> dict:
  """`evaluate`'s metrics of `model` on one whole box (sources as the model takes them;
  no physics scores, nothing kept on disk)."""
  from keras_cnn import inference
  from keras_cnn import model as model_lib
  from keras_cnn.data import snapshot as snapshot_lib

  box = snapshot_lib.for_model(box, model_lib.source_transform_of(model))
  with tempfile.TemporaryDirectory() as scratch:
    return inference.evaluate_model(model, [box], scratch, power_spectrum="off", progress=False)


def preset_path(name: str) -> str:
  """Path of the preset flagfile flags/<name>.flags of this checkout."""
  return os.path.join(os.path.dirname(__file__), "..", "..", "flags", f"{name}.flags")


def preset_settings(path: str) -> dict:
  """{flag name: value text} of a flagfile's `--name=value` lines."""
  settings = {}
  with open(path) as stream:
    for line in stream:
      line = line.strip()
      if line.startswith("--") and "=" in line:
        name, _, value = line[2:].partition("=")
        settings[name] = value
  return settings


def preset_model_config(settings: dict):
  """The ModelConfig a preset's model flags describe (other flags are ignored)."""
  import dataclasses
  import typing

  from keras_cnn import model as model_lib

  values = {}
  for field in dataclasses.fields(model_lib.ModelConfig):
    if field.name not in settings:
      continue
    text = settings[field.name]
    default = getattr(model_lib.ModelConfig(), field.name)
    if isinstance(default, tuple):
      item = (typing.get_args(field.type) or (int,))[0]  # Sequence[int] or Sequence[float]
      values[field.name] = tuple(item(v) for v in text.split(",") if v)
    else:
      values[field.name] = type(default)(text)
  return model_lib.ModelConfig(**values)


def median_seconds(fn, repeats: int, warmup: int = 2) -> float:
  """Median wall time of `repeats` calls of `fn`, after `warmup` untimed ones."""
  for _ in range(warmup):
    fn()
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t0)
  return statistics.median(times)

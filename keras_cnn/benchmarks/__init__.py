"""Benchmarks: `python -m keras_cnn.benchmarks.<name>` prints one JSON object per line."""

import tempfile
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

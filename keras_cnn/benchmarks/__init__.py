"""Benchmarks: `python -m keras_cnn.benchmarks.<name>` prints one JSON object per line."""

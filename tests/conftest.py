"""Test defaults: tensorflow unless KERAS_BACKEND says otherwise, quiet logs."""

import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

"""Reionization snapshots: the built-in simulator, user-snapshot loading and checks."""

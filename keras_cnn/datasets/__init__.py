"""TFDS builders for reionization snapshots."""

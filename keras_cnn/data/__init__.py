"""Reionization snapshots in NumPy: file formats, checks, split geometry, the built-in
simulator and the `reionization_boxes` TFDS dataset."""

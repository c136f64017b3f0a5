"""The `reionization_boxes` TFDS dataset, and a loader that returns Snapshots.

Importing this package registers the builder with TFDS (as `reionization_boxes`).
"""

from typing import List, Optional

from keras_cnn.data.snapshot import Snapshot
from keras_cnn.data.reionization_boxes.reionization_boxes_dataset_builder import Builder
from keras_cnn.data.reionization_boxes.reionization_boxes_dataset_builder import (
    ReionizationBoxesConfig)

__all__ = ["Builder", "DATASET_NAME", "ReionizationBoxesConfig", "load_tfds_snapshots"]

DATASET_NAME = "reionization_boxes"


def load_tfds_snapshots(name: str, split: str, data_dir: Optional[str] = None,
                        manual_dir: Optional[str] = None) -> List[Snapshot]:
  """Builds the dataset if needed (locally, never downloading) and returns its snapshots.

  Args:
    name: "reionization_boxes/<config>" (e.g. "reionization_boxes/synthetic_64"), or any
      registered TFDS name whose examples have rho, n_src, x_hii and redshift.
    split: a split name or TFDS slice ("train", "test[:1]", ...).
    data_dir: TFDS data folder (default ~/tensorflow_datasets).
    manual_dir: the user snapshots of the `manual` config.

  Returns:
    One Snapshot per example, in the stored order; its name says where it came from.
  """
  import tensorflow_datasets as tfds  # local: importing TF is slow

  download_config = tfds.download.DownloadConfig(manual_dir=manual_dir, try_download_gcs=False)
  base = name.split("/")[0].split(":")[0]
  if base == DATASET_NAME:
    config = name.split("/")[1].split(":")[0] if "/" in name else None
    builder = Builder(config=config, data_dir=data_dir)
  else:
    builder = tfds.builder(name, data_dir=data_dir)
  builder.download_and_prepare(download_config=download_config)
  dataset = builder.as_dataset(split=split, shuffle_files=False)
  snapshots = []
  for index, example in enumerate(tfds.as_numpy(dataset)):
    key = example["name"].decode() if "name" in example else str(index)
    snapshots.append(
        Snapshot(rho=example["rho"], n_src=example["n_src"], x_hii=example.get("x_hii"),
                 redshift=float(example["redshift"]), name=f"{name}:{split}:{key}"))
  return snapshots

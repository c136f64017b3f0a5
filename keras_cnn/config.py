"""Settings shared by the commands, as frozen dataclasses that import no Keras.

`DataConfig` says where a command's snapshots come from; flags are filled from its
defaults (`keras_cnn.cli_flags`), so reading them loads no model or trainer.
"""

import dataclasses
from typing import Dict, List, Optional, Tuple, Union

from keras_cnn import conventions
from keras_cnn.data import splits as splits_lib


@dataclasses.dataclass(frozen=True)
class DataConfig:
  """Where the snapshots come from (see `keras_cnn.data.splits.load_splits`).

  `redshift` is None, one redshift, a tuple of them, or "all". The `<split>_redshifts`
  (of `data_dir`) and `<split>_dirs` (folders) give a split whole snapshots of its own.
  """

  data_dir: Optional[str] = None
  redshift: Union[None, float, str, Tuple[float, ...]] = None
  dataset: str = splits_lib.SYNTHETIC
  tfds_data_dir: Optional[str] = None
  n_cells: int = 64
  mean_xhii: float = 0.5
  data_seed: int = 0
  data_format: str = "auto"  # one of `keras_cnn.data.formats.DATA_FORMATS`
  box_size_mpc: Optional[float] = None  # C2-Ray source masses in solar masses
  train_redshifts: Optional[Tuple[float, ...]] = None
  validation_redshifts: Optional[Tuple[float, ...]] = None
  test_redshifts: Optional[Tuple[float, ...]] = None
  train_dirs: Optional[Tuple[str, ...]] = None
  validation_dirs: Optional[Tuple[str, ...]] = None
  test_dirs: Optional[Tuple[str, ...]] = None

  def split_redshifts(self) -> Dict[str, Tuple[float, ...]]:
    """{split: its own redshifts of data_dir}, for the splits that have some."""
    return {
        split: getattr(self, f"{split}_redshifts")
        for split in conventions.SPLITS
        if getattr(self, f"{split}_redshifts")
    }

  def split_dirs(self) -> Dict[str, Tuple[str, ...]]:
    """{split: its own folders}, for the splits that have some."""
    return {
        split: getattr(self, f"{split}_dirs")
        for split in conventions.SPLITS
        if getattr(self, f"{split}_dirs")
    }

  def folders(self) -> List[str]:
    """Every user folder the run reads: data_dir, then each split's folders."""
    found = [self.data_dir] if self.data_dir else []
    for folders in self.split_dirs().values():
      found.extend(folders)
    return found

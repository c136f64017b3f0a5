"""The reionization_boxes TFDS builder: synthetic and manual configs on tiny boxes."""

import pathlib

import numpy as np
import pytest
import tensorflow_datasets as tfds

from keras_cnn.data import simulate
from keras_cnn.data import snapshot as snapshot_lib
from keras_cnn.data import reionization_boxes
from keras_cnn.data.reionization_boxes import reionization_boxes_dataset_builder as rb

# An equivalent of tfds.testing.DatasetBuilderTestCase (which needs `dill`, not a
# dependency): build into a temporary data_dir, then check registration, split sizes,
# feature shapes and dtypes, disjoint splits, key hygiene and a reload.
BUILD_CASES = [
    ("synthetic_16", {
        "train": 2,
        "validation": 1,
        "test": 1
    }, (16, 16, 16)),
    ("manual", {
        "train": 2,
        "validation": 1,
        "test": 1
    }, (8, 8, 6)),
]


def test_builder_is_registered():
  assert "reionization_boxes" in tfds.list_builders(with_community_datasets=False)
  assert rb.Builder.MANUAL_DOWNLOAD_INSTRUCTIONS.count("_z{z:.3f}.npy") == 3
  assert rb.Builder(config="synthetic_16").info.features["rho"].shape == (16, 16, 16)


@pytest.mark.parametrize("config, splits, shape", BUILD_CASES)
def test_build_on_dummy_data(tmp_path, config, splits, shape):
  dummy = pathlib.Path(rb.__file__).parent / "dummy_data"
  builder = rb.Builder(config=config, data_dir=str(tmp_path))
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=str(dummy), try_download_gcs=False))
  contents = {}
  for split, count in splits.items():
    examples = list(tfds.as_numpy(builder.as_dataset(split=split, shuffle_files=False)))
    assert len(examples) == count
    for example in examples:
      for field in ("rho", "n_src", "x_hii"):
        assert example[field].shape == shape and example[field].dtype == np.float32
      assert (example["n_src"] >= 0).all()
      assert 0 <= example["x_hii"].min() <= example["x_hii"].max() <= 1
      name = example["name"].decode()
      assert str(tmp_path) not in name and str(dummy) not in name, "key holds a local path"
    contents[split] = {e["name"].decode(): e["rho"].tobytes() for e in examples}
  names = [n for split in contents.values() for n in split]
  assert len(names) == len(set(names))
  boxes = [b for split in contents.values() for b in split.values()]
  assert len(boxes) == len(set(boxes)), "a box appears in two splits"
  reloaded = rb.Builder(config=config, data_dir=str(tmp_path))
  assert {s: reloaded.info.splits[s].num_examples for s in splits} == splits


def test_synthetic_examples_are_the_simulator_boxes(tmp_path):
  snaps = reionization_boxes.load_tfds_snapshots("reionization_boxes/synthetic_16", "validation",
                                                 data_dir=str(tmp_path))
  seed = simulate.split_seeds(0, 2, 1, 1)["validation"][0]
  expected = simulate.simulate_snapshot(16, seed=seed)
  assert len(snaps) == 1
  assert snaps[0].name.endswith(f"validation_000_seed{seed}")
  for field in ("rho", "n_src", "x_hii"):
    np.testing.assert_array_equal(getattr(snaps[0], field), getattr(expected, field))
  assert snaps[0].redshift == pytest.approx(8.397)


def _write(folder, seed, redshift, shape=(8, 6, 10)):
  snap = simulate.simulate_snapshot(shape, seed=seed, redshift=redshift, mfp_mpc=10.0)
  snapshot_lib.save_snapshot(snap, str(folder))
  return snap


def test_manual_config_reads_a_flat_folder_of_non_cubic_boxes(tmp_path):
  manual = tmp_path / "manual"
  first = _write(manual, seed=1, redshift=8.397)
  _write(manual, seed=2, redshift=7.305)
  _write(manual / "run2", seed=3, redshift=8.397)
  snaps = reionization_boxes.load_tfds_snapshots("reionization_boxes/manual", "train",
                                                 data_dir=str(tmp_path / "tfds"),
                                                 manual_dir=str(manual))
  keys = sorted(s.name.rsplit(":", 1)[1] for s in snaps)
  assert keys == ["run2/z8.397", "z7.305", "z8.397"]
  by_key = {s.name.rsplit(":", 1)[1]: s for s in snaps}
  assert by_key["z8.397"].shape == (8, 6, 10)
  np.testing.assert_array_equal(by_key["z8.397"].x_hii, first.x_hii)
  assert by_key["z7.305"].redshift == pytest.approx(7.305)


def test_manual_config_stops_on_a_bad_file(tmp_path):
  manual = tmp_path / "manual"
  _write(manual, seed=1, redshift=8.397)
  xhii = np.load(manual / "xHII_z8.397.npy")
  xhii[0, 0, 0] = 1.5
  np.save(manual / "xHII_z8.397.npy", xhii)
  with pytest.raises(snapshot_lib.SnapshotError,
                     match=r"xHII_z8\.397\.npy: field 'x_hii' is outside \[0, 1\]"):
    reionization_boxes.load_tfds_snapshots("reionization_boxes/manual", "train",
                                           data_dir=str(tmp_path / "tfds"), manual_dir=str(manual))


def test_manual_config_without_snapshots_lists_expected_files(tmp_path):
  manual = tmp_path / "manual"
  manual.mkdir()
  (manual / "notes.txt").write_text("no boxes here")
  with pytest.raises(
      FileNotFoundError,
      match=r"No snapshot in manual_dir .*manual: expected .*rho_z\{z:\.3f\}\.npy, "
      r".*nsrc_z\{z:\.3f\}\.npy, .*xHII_z\{z:\.3f\}\.npy"):
    reionization_boxes.load_tfds_snapshots("reionization_boxes/manual", "train",
                                           data_dir=str(tmp_path / "tfds"), manual_dir=str(manual))


def test_dataset_flag_path_loads_tfds_splits(tmp_path):
  """`--dataset=reionization_boxes/synthetic_16`, as docs/data.md documents it."""
  from keras_cnn.data import splits as splits_lib

  loaded = splits_lib.load_splits(None, None, "reionization_boxes/synthetic_16", radius=2,
                                  tfds_data_dir=str(tmp_path))
  assert set(loaded) == {"train", "validation", "test"}
  for split in loaded.values():
    assert split.region is None and split.snapshots
    assert split.snapshots[0].shape == (16, 16, 16)

"""Which snapshots each split gets: --redshift lists, --<split>_redshifts, --<split>_dirs."""

import os
from unittest import mock

import pytest
from absl import flags

from keras_cnn import errors
from keras_cnn import runs
from keras_cnn import training
from keras_cnn.data import simulate
from keras_cnn.data import snapshot as snapshot_lib
from keras_cnn.data import splits as splits_lib

from helpers import tiny_snapshot

# Three snapshots of one folder, told apart by their mean x_HII.
MEAN_XHII = {7.305: 0.7, 8.397: 0.5, 9.5: 0.3}
RADIUS = 2
N = 16


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
  """{"main": 3 redshifts, "real1", "real2": one realization each at z = 8.397}."""
  root = tmp_path_factory.mktemp("boxes")
  out = {"main": str(root / "main")}
  for z, mean in MEAN_XHII.items():
    snapshot_lib.save_snapshot(simulate.simulate_snapshot(N, seed=1, redshift=z, mean_xhii=mean),
                               out["main"])
  for seed in (2, 3):
    out[f"real{seed - 1}"] = str(root / f"real{seed - 1}")
    snapshot_lib.save_snapshot(simulate.simulate_snapshot(N, seed=seed), out[f"real{seed - 1}"])
  return out


def _load(data_dir=None, redshift=None, **split_flags):
  split_redshifts = {
      k[:-len("_redshifts")]: v for k, v in split_flags.items() if k.endswith("_redshifts")
  }
  split_dirs = {k[:-len("_dirs")]: v for k, v in split_flags.items() if k.endswith("_dirs")}
  return splits_lib.load_splits(data_dir, redshift, "synthetic", RADIUS,
                                split_redshifts=split_redshifts, split_dirs=split_dirs)


def _got(splits):
  """{split: ([(folder name, z), ...], whole)}."""
  return {
      split: ([(os.path.basename(s.name), round(s.redshift, 3))
               for s in data.snapshots], data.region is None) for split, data in splits.items()
  }


def test_one_box_alone_is_cut_into_guarded_slabs(folders):
  splits = _load(folders["real1"])
  assert _got(splits) == {
      split: ([("real1", 8.397)], False) for split in ("train", "validation", "test")
  }
  assert len({id(s) for data in splits.values() for s in data.snapshots}) == 1  # loaded once


def test_a_redshift_list_or_all_gives_every_split_slabs_of_each(folders):
  for redshift in ((9.5, 7.305), "all"):
    splits = _load(folders["main"], redshift)
    want = [7.305, 8.397, 9.5] if redshift == "all" else [9.5, 7.305]
    for data in splits.values():
      assert [round(s.redshift, 3) for s in data.snapshots] == want
      assert data.region is not None
    by_z = {round(s.redshift, 3): s for s in splits["train"].snapshots}
    for z, snapshot in by_z.items():  # the right files behind each redshift
      assert float(snapshot.x_hii.mean()) == pytest.approx(MEAN_XHII[z], abs=0.01)


def test_splits_with_their_own_snapshots_get_them_whole(folders):
  main = folders["main"]
  splits = _load(main, test_redshifts=(7.305,))
  assert _got(splits) == {
      "train": ([("main", 8.397), ("main", 9.5)], False),
      "validation": ([("main", 8.397), ("main", 9.5)], False),
      "test": ([("main", 7.305)], True)
  }
  train, validation = splits["train"].region, splits["validation"].region
  assert train[1] + RADIUS <= validation[0] and validation[1] + RADIUS <= N + train[0]

  splits = _load(main, train_redshifts=(9.5, 8.397), validation_redshifts=(7.3052,),
                 test_dirs=(folders["real1"],))
  assert _got(splits) == {
      "train": ([("main", 9.5), ("main", 8.397)], True),
      "validation": ([("main", 7.305)], True),
      "test": ([("real1", 8.397)], True)
  }


def test_splits_left_without_snapshots_are_cut_from_the_training_ones(folders, tmp_path):
  main = folders["main"]
  splits = _load(main, train_redshifts=(9.5, 8.397), test_redshifts=(7.305,))
  assert _got(splits) == {
      "train": ([("main", 9.5), ("main", 8.397)], False),
      "validation": ([("main", 9.5), ("main", 8.397)], False),
      "test": ([("main", 7.305)], True)
  }
  train, validation = splits["train"].region, splits["validation"].region
  assert train[1] + RADIUS <= validation[0] and validation[1] + RADIUS <= N + train[0]
  splits = _load(None, 8.397, train_dirs=(folders["real1"],))  # validation and test too
  assert _got(splits) == {
      split: ([("real1", 8.397)], False) for split in ("train", "validation", "test")
  }
  other = str(tmp_path / "other")  # training boxes of two x lengths: no common slabs
  snapshot_lib.save_snapshot(simulate.simulate_snapshot((N + 4, N, N), seed=4), other)
  with pytest.raises(
      errors.UserError, match=r"cannot be cut from the training snapshots: "
      r"they have 16 and 20 cells along x"):
    _load(None, 8.397, train_dirs=(folders["real1"], other), test_dirs=(folders["real2"],))


def test_realization_folders_per_split(folders):
  splits = _load(folders["main"], 8.397, validation_dirs=(folders["real1"],),
                 test_dirs=(folders["real2"],))
  assert _got(splits) == {
      "train": ([("main", 8.397)], True),
      "validation": ([("real1", 8.397)], True),
      "test": ([("real2", 8.397)], True)
  }
  splits = _load(None, 8.397, train_dirs=(folders["real1"],), validation_dirs=(folders["main"],),
                 test_dirs=(folders["real2"],))
  assert _got(splits) == {
      "train": ([("real1", 8.397)], True),
      "validation": ([("main", 8.397)], True),
      "test": ([("real2", 8.397)], True)
  }


@pytest.mark.parametrize("kwargs,message", [
    (dict(validation_redshifts=(7.305,), test_redshifts=(7.3052,)),
     r"z=7.305 is named by --validation_redshifts=7.305 and by --test_redshifts=7.3052; "
     "a snapshot may serve one split only"),
    (dict(redshift=8.397, test_redshifts=(8.397,)),
     r"z=8.397 is named by --redshift and by --test_redshifts=8.397"),
    (dict(validation_redshifts=(8.397, 9.5), test_redshifts=(7.305,)),
     r"the train split would be empty \(every snapshot --redshift picks of --data_dir=.* "
     r"serves another split\); give it snapshots of its own with --train_redshifts"),
    (dict(data_dir=None,
          test_dirs=("{real1}",)), r"the train split would be empty \(no --data_dir is given\)"),
    (dict(data_dir=None, test_redshifts=(7.305,)),
     r"--test_redshifts names snapshots of --data_dir, which is not given"),
    (dict(redshift=8.397,
          test_dirs=("{main}",)), r"z=8.397 is named by --redshift and by --test_dirs=.*main;"),
    (dict(
        data_dir=None, redshift=8.397, train_dirs=("{real1}",), validation_dirs=("{real2}",),
        test_dirs=("{real1}/.",)), r"named by --train_dirs=.*real1 and by --test_dirs=.*real1/\."),
    (dict(test_redshifts=(6.0,)),
     r"no snapshot at --test_redshifts=6.000; available: 7.305, 8.397, 9.500"),
    (dict(), r"several redshifts \(7.305, 8.397, 9.500\); train on one with --redshift, on "
     r"several with --redshift=z1,z2 or --redshift=all"),
    (dict(train_dirs=("{main}",), validation_dirs=("{real1}",), test_dirs=("{real2}",),
          data_dir=None), r"several redshifts .*; pick one with --redshift"),
])
def test_bad_split_choices_fail_in_one_line(folders, kwargs, message):
  kwargs = {
      k: tuple(v.format(**folders) for v in value) if k.endswith("_dirs") else value
      for k, value in kwargs.items()
  }
  data_dir = kwargs.pop("data_dir", folders["main"])
  with pytest.raises(errors.UserError, match=message) as error:
    _load(data_dir, **kwargs)
  assert "\n" not in str(error.value)


def test_the_fingerprint_covers_every_folder(folders, tmp_path):
  config = training.TrainConfig(
      data=training.DataConfig(data_dir=folders["main"], test_dirs=(folders["real1"],)))
  before = runs.manifest_for(config)["data_fingerprint"]
  assert before != runs.data_fingerprint(folders["main"])
  path = os.path.join(folders["real1"], "nsrc_z8.397.npy")
  stat = os.stat(path)
  os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1))
  try:
    assert runs.manifest_for(config)["data_fingerprint"] != before
  finally:
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
  assert runs.manifest_for(config)["data_fingerprint"] == before


def test_split_flags_parse_into_the_data_config(parse_flags):
  from keras_cnn import train

  values = parse_flags("train", "--data_dir=d", "--redshift=all", "--test_redshifts=7.305",
                       "--validation_dirs=a,b")
  data = train.config_from_flags(values).data
  assert (data.redshift, data.test_redshifts, data.validation_dirs) == ("all", (7.305,), ("a", "b"))
  assert data.train_redshifts is None and data.train_dirs is None
  assert train.config_from_flags(parse_flags("train", "--redshift=8.397")).data.redshift == 8.397
  values = parse_flags("train", "--redshift=9.5,7.305")
  assert train.config_from_flags(values).data.redshift == (9.5, 7.305)
  assert values["redshift"].serialize() == "--redshift=9.5,7.305"
  for bad in ("--redshift=z8", "--test_redshifts=all", "--redshift=-1", "--redshift=7,"):
    with pytest.raises(flags.IllegalFlagValueError):
      parse_flags("train", bad)


def test_evaluate_and_predict_read_several_snapshots_of_a_folder(folders):
  for redshift, want in ((None, [8.397]), ((9.5, 7.305), [9.5, 7.305]), ("all", [7.305, 8.397,
                                                                                 9.5])):
    folder = folders["real1"] if redshift is None else folders["main"]
    boxes = splits_lib.load_box(folder, redshift, "synthetic", radius=RADIUS)
    assert [round(box.redshift, 3) for box in boxes] == want


def test_one_small_box_at_the_default_radius_is_refused_in_one_line(snapshot_dir):

  folder = snapshot_dir(tiny_snapshot((64, 32, 32)))
  with pytest.raises(
      errors.UserError, match=r"train would keep 5 cells; give validation "
      r"and test snapshots of their own .*--radius=12 or less") as error:
    splits_lib.load_splits(folder, None, "synthetic", 15)
  assert "\n" not in str(error.value)
  splits = splits_lib.load_splits(folder, None, "synthetic", 12)
  assert {
      split: data.region for split, data in splits.items()
  } == {
      "train": (0, 14),
      "validation": (26, 33),
      "test": (45, 52)
  }


def test_the_built_in_simulator_takes_one_redshift():
  """--redshift without folders sets the simulator's redshift; a list is refused."""
  splits = splits_lib.load_splits(None, 9.0, "synthetic", RADIUS, n_cells=N, mean_xhii=0.3)
  assert {s.redshift for data in splits.values() for s in data.snapshots} == {9.0}
  default = splits_lib.load_splits(None, None, "synthetic", RADIUS, n_cells=N)
  assert {s.redshift for data in default.values() for s in data.snapshots} == {8.397}
  # the growth factor at z = 9 is smaller: a less contrasted density than at z = 8.397
  assert splits["test"].snapshots[0].n_igm.std() < default["test"].snapshots[0].n_igm.std()
  assert splits_lib.load_box(None, 9.0, "synthetic", n_cells=N)[0].redshift == 9.0
  with pytest.raises(errors.UserError, match="one redshift per run"):
    splits_lib.load_splits(None, (9.0, 7.5), "synthetic", RADIUS, n_cells=N)


def test_more_simulator_training_boxes_leave_validation_and_test_as_they_were(folders):
  """--synthetic_train_boxes=3: three independent training realizations, the first the
  one-box run's; validation and test unchanged. A warning for the user's own snapshots."""
  one = splits_lib.load_splits(None, None, "synthetic", RADIUS, n_cells=N)
  three = splits_lib.load_splits(None, None, "synthetic", RADIUS, n_cells=N,
                                 synthetic_train_boxes=3)
  boxes = [s.n_igm for s in three["train"].snapshots]
  assert len(boxes) == 3 and three["train"].region is None
  assert (boxes[0] == one["train"].snapshots[0].n_igm).all()
  assert not (boxes[1] == boxes[0]).all() and not (boxes[2] == boxes[1]).all()
  for split in ("validation", "test"):
    assert [s.n_igm.tolist() for s in three[split].snapshots
           ] == [s.n_igm.tolist() for s in one[split].snapshots]
  # A preset's count does not stop a run on the user's own snapshots: a warning, and the
  # same splits as without it.
  with mock.patch.object(splits_lib.logging, "warning") as warning:
    own = splits_lib.load_splits(folders["main"], 8.397, "synthetic", RADIUS,
                                 synthetic_train_boxes=2)
  assert "--synthetic_train_boxes=2 applies to the built-in simulator only" in (
      warning.call_args[0][0] % warning.call_args[0][1:])
  assert len(own["train"].snapshots) == len(_load(folders["main"], 8.397)["train"].snapshots)


def test_simulator_boxes_in_photons_reach_every_split_and_command():
  """--synthetic_sources=photons reaches train's splits and evaluate's and predict's box."""
  counts = splits_lib.load_splits(None, None, "synthetic", RADIUS, n_cells=N)
  photons = splits_lib.load_splits(None, None, "synthetic", RADIUS, n_cells=N,
                                   synthetic_sources="photons")
  test_box = splits_lib.load_box(None, None, "synthetic", n_cells=N, synthetic_sources="photons")
  for split in ("train", "validation", "test"):
    before, after = counts[split].snapshots[0], photons[split].snapshots[0]
    assert (before.x_hii == after.x_hii).all()
    assert after.n_src.sum() > 2 * before.n_src.sum()  # efficiencies are about 4 here
  assert (test_box[0].n_src == photons["test"].snapshots[0].n_src).all()

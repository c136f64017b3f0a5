"""Nothing a user owns is overwritten, every run can be finished, every error is one line.

Each test drives one mistake or interruption through the real command
(`python -m keras_cnn.<command>` in a subprocess), as a user would meet it, and checks
what the user would see: the exit status, the one line on stderr, and files untouched.
Kills are deterministic: `KERAS_CNN_KILL_AFTER=<step>` makes the process kill -9 itself
right after the named step.
"""

import configparser
import csv
import json
import os

import numpy as np
import pytest

from keras_cnn import conventions

from conftest import REPO, REDSHIFT, tiny_snapshot

# A run small enough to finish in seconds: r=2, 2 filters, 2 epochs of 2 steps.
TINY_RUN = ("--n_cells=16", "--radius=2", "--kernel_size=3", "--filters=2", "--kernel_pooling=1",
            "--stride_conv=1", "--padding=same", "--train_unit=voxel", "--epochs=2",
            "--steps_per_epoch=2", "--batch_size=8", "--validation_examples=16",
            "--test_examples=16", "--time_budget_minutes=0")


def _one_line_error(result, *fragments):
  """The command failed with exit status 2 and one `Error: ...` line naming `fragments`."""
  assert result.returncode == 2, (result.returncode, result.stderr[-2000:])
  assert "Traceback" not in result.stderr, result.stderr[-3000:]
  last = result.stderr.strip().splitlines()[-1]
  assert last.startswith("Error: "), result.stderr[-2000:]
  for fragment in fragments:
    assert fragment in last, last
  return last


def _history_epochs(workdir):
  with open(os.path.join(workdir, conventions.HISTORY_FILE), newline="") as stream:
    return [int(row["epoch"]) for row in csv.DictReader(stream)]


def _snapshot_of(folder):
  """{file name: bytes} of every file in `folder`."""
  return {
      name: open(os.path.join(folder, name), "rb").read()
      for name in sorted(os.listdir(folder))
      if os.path.isfile(os.path.join(folder, name))
  }


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
  """A finished tiny training workdir, made by the train command."""
  import subprocess
  import sys

  workdir = str(tmp_path_factory.mktemp("finished") / "run")
  env = {
      **os.environ, "TF_CPP_MIN_LOG_LEVEL": "3",
      "PYTHONPATH": os.pathsep.join(filter(None, [REPO, os.environ.get("PYTHONPATH")]))
  }
  result = subprocess.run(
      [sys.executable, "-m", "keras_cnn.train", f"--workdir={workdir}", *TINY_RUN],
      capture_output=True, text=True, timeout=300, cwd=REPO, env=env)
  assert result.returncode == 0, result.stderr[-3000:]
  return workdir


@pytest.fixture
def model_and_box(finished_run, snapshot_dir):
  """(the finished run's model, a folder with a tiny box and no target file)."""
  box = tiny_snapshot((12, 12, 12), with_target=False)
  return os.path.join(finished_run, conventions.MODEL_FILE), snapshot_dir(box)


# --- Outputs never replace what the command did not create ------------------------------


def test_predict_refuses_an_existing_file_and_its_own_inputs(tmp_path, run_module, model_and_box):
  model, data_dir = model_and_box
  existing = tmp_path / "map.npy"
  existing.write_bytes(b"the user's earlier map")
  inputs_before = _snapshot_of(data_dir)
  result = run_module("keras_cnn.predict", f"--model={model}", f"--data_dir={data_dir}",
                      f"--out={existing}", "--noprogress")
  _one_line_error(result, "already exists; pass --overwrite")
  rho = os.path.join(data_dir, f"rho_z{REDSHIFT:.3f}.npy")
  for target in (rho, model):
    result = run_module("keras_cnn.predict", f"--model={model}", f"--data_dir={data_dir}",
                        f"--out={target}", "--overwrite", "--noprogress")
    _one_line_error(result, "is one of this command's inputs")
  assert existing.read_bytes() == b"the user's earlier map"
  assert _snapshot_of(data_dir) == inputs_before


def test_evaluate_refuses_to_write_into_a_training_workdir(run_module, finished_run, snapshot_dir):
  before = _snapshot_of(finished_run)
  result = run_module("keras_cnn.evaluate",
                      f"--model={os.path.join(finished_run, conventions.MODEL_FILE)}",
                      f"--data_dir={snapshot_dir(tiny_snapshot((12, 12, 12)))}",
                      f"--out={finished_run}", "--overwrite", "--noprogress")
  _one_line_error(result, "is a training workdir")
  assert _snapshot_of(finished_run) == before


def test_train_refuses_a_folder_it_did_not_create(tmp_path, run_module):
  folder = tmp_path / "thesis"
  folder.mkdir()
  (folder / "flags.txt").write_text("my own notes")
  (folder / "metrics.json").write_text('{"mine": 1}')
  result = run_module("keras_cnn.train", f"--workdir={folder}", *TINY_RUN)
  _one_line_error(result, "holds files keras_cnn did not write")
  assert sorted(os.listdir(folder)) == ["flags.txt", "metrics.json"]
  assert (folder / "flags.txt").read_text() == "my own notes"


# --- A run has an identity ---------------------------------------------------------------


@pytest.mark.parametrize("changed, named", [
    ("--learning_rate=0.01", "--learning_rate"),
    ("--filters=3", "--filters"),
    ("--data_seed=1", "--data_seed"),
])
def test_rerun_with_other_defining_flags_is_refused(run_module, finished_run, changed, named):
  before = _snapshot_of(finished_run)
  result = run_module("keras_cnn.train", f"--workdir={finished_run}", *TINY_RUN, changed)
  _one_line_error(result, named, "differ")
  assert _snapshot_of(finished_run) == before  # flags.txt and metrics.json as they were


def test_finished_run_rerun_prints_its_metrics_and_says_so(run_module, finished_run):
  before = _snapshot_of(finished_run)
  result = run_module("keras_cnn.train", f"--workdir={finished_run}", *TINY_RUN)
  assert result.returncode == 0, result.stderr[-2000:]
  *notes, last = result.stdout.strip().splitlines()
  assert any("holds a finished run" in line for line in notes), result.stdout
  with open(os.path.join(finished_run, conventions.METRICS_FILE)) as stream:
    assert json.loads(last) == json.load(stream)
  assert _snapshot_of(finished_run) == before
  assert _history_epochs(finished_run) == [0, 1]


# --- Every state is resumable -----------------------------------------------------------


@pytest.mark.parametrize(
    "step", ["best_saved:0", "backup_weights:0", "backup_weights:1", "fit", "scoring", "plots"])
def test_killed_at_any_step_the_same_command_finishes(tmp_path, run_module, step):
  """kill -9 right after `step`, then the same command: every epoch logged once."""
  workdir = str(tmp_path / "run")
  command = [f"--workdir={workdir}", *TINY_RUN]
  killed = run_module("keras_cnn.train", *command, env={"KERAS_CNN_KILL_AFTER": step})
  assert killed.returncode == -9, killed.stderr[-2000:]
  again = run_module("keras_cnn.train", *command)
  assert again.returncode == 0, again.stderr[-2000:]
  assert json.loads(again.stdout.strip().splitlines()[-1])["num_voxels"] == 16
  assert _history_epochs(workdir) == [0, 1]
  leftovers = [n for n in os.listdir(workdir) if n.endswith(".tmp") or "tmp." in n]
  assert not leftovers and not os.path.exists(os.path.join(workdir, conventions.BEST_FILE))


def test_a_write_cut_short_by_a_full_disk_is_finished_by_the_next_run(tmp_path):
  """A file-size limit stands in for a full disk: the first big write (model or backup
  weights) fails mid-file; one line says so, and the same command then finishes."""
  import resource
  import subprocess
  import sys

  workdir = str(tmp_path / "run")
  command = [sys.executable, "-m", "keras_cnn.train", f"--workdir={workdir}", *TINY_RUN]
  env = {
      **os.environ, "TF_CPP_MIN_LOG_LEVEL": "3",
      "PYTHONPATH": os.pathsep.join(filter(None, [REPO, os.environ.get("PYTHONPATH")]))
  }

  def full_disk():
    resource.setrlimit(resource.RLIMIT_FSIZE, (16 * 1024, 16 * 1024))

  cut = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=REPO, env=env,
                       preexec_fn=full_disk)
  _one_line_error(cut, "File too large", "rerun the same command")
  assert not [n for n in os.listdir(workdir) if n.endswith(".tmp")]
  again = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=REPO, env=env)
  assert again.returncode == 0, again.stderr[-2000:]
  assert _history_epochs(workdir) == [0, 1]
  assert json.loads(again.stdout.strip().splitlines()[-1])["num_voxels"] == 16


def test_a_second_process_on_the_workdir_is_locked_out(tmp_path, run_module):
  """A live process holds the lock: the second command stops before touching anything."""
  workdir = str(tmp_path / "run")
  killed = run_module("keras_cnn.train", f"--workdir={workdir}", *TINY_RUN,
                      env={"KERAS_CNN_KILL_AFTER": "backup_weights:0"})
  assert killed.returncode == -9
  with open(os.path.join(workdir, conventions.LOCK_FILE), "w") as stream:
    stream.write(str(os.getpid()))  # this test process: alive, and not the command
  history_before = open(os.path.join(workdir, conventions.HISTORY_FILE)).read()
  result = run_module("keras_cnn.train", f"--workdir={workdir}", *TINY_RUN)
  _one_line_error(result, f"another keras_cnn process (pid {os.getpid()})")
  assert open(os.path.join(workdir, conventions.HISTORY_FILE)).read() == history_before


def test_the_documented_tfds_dataset_flag_works(tmp_path, run_module, finished_run):
  result = run_module("keras_cnn.evaluate",
                      f"--model={os.path.join(finished_run, conventions.MODEL_FILE)}",
                      "--dataset=reionization_boxes/synthetic_16",
                      f"--tfds_data_dir={tmp_path / 'tfds'}", f"--out={tmp_path / 'eval'}",
                      "--noprogress")
  assert result.returncode == 0, result.stderr[-3000:]
  assert json.loads(result.stdout.strip().splitlines()[-1])["num_voxels"] == 16 ** 3


# --- Errors are one line ------------------------------------------------------------------


def _write_npy_header(path, shape, dtype="<f4"):
  from numpy.lib import format as npy_format

  with open(path, "wb") as stream:
    npy_format.write_array_header_1_0(stream, {
        "descr": dtype,
        "fortran_order": False,
        "shape": tuple(shape)
    })


def _break(folder, field, how):
  """Spoils one field file of a saved snapshot the way `how` says."""
  prefix = {"rho": "rho", "n_src": "nsrc"}[field]
  path = os.path.join(folder, f"{prefix}_z{REDSHIFT:.3f}.npy")
  if how == "missing":
    os.remove(path)
  elif how == "nan":
    array = np.load(path)
    array[1, 2, 3] = np.nan
    np.save(path, array)
  elif how == "wrong_shape":
    np.save(path, np.ones((12, 12, 11), np.float32))
  elif how == "pickled":
    np.save(path, np.array([{"rho": 1}], dtype=object), allow_pickle=True)
  elif how == "text":
    with open(path, "w") as stream:
      stream.write("x y z rho\n0 0 0 1.0\n")
  elif how == "fifo":
    os.remove(path)
    os.mkfifo(path)
  elif how == "sparse_100gb":
    shape = (3000, 3000, 3000)  # 108 GB of float32, on disk as a sparse file
    _write_npy_header(path, shape)
    with open(path, "r+b") as stream:
      stream.seek(0, os.SEEK_END)
      stream.truncate(stream.tell() + 4 * int(np.prod(shape)))
  else:
    raise ValueError(how)
  return os.path.basename(path)


@pytest.mark.parametrize("field, how, message", [
    ("rho", "missing", "rho"),
    ("rho", "nan", "NaN"),
    ("n_src", "wrong_shape", "shape"),
    ("rho", "pickled", "object"),
    ("rho", "text", "not a NumPy .npy file"),
    ("n_src", "fifo", "not a regular file"),
    ("rho", "sparse_100gb", "memory"),
])
def test_a_bad_snapshot_file_is_one_line_naming_it(tmp_path, run_module, model_and_box, field, how,
                                                   message):
  model, data_dir = model_and_box
  name = _break(data_dir, field, how)
  out = tmp_path / "map.npy"
  result = run_module("keras_cnn.predict", f"--model={model}", f"--data_dir={data_dir}",
                      f"--out={out}", "--noprogress", timeout=120)  # a FIFO must not hang
  line = _one_line_error(result, message)
  if how != "missing":
    assert name in line
  assert not out.exists()


@pytest.mark.parametrize("flag, message", [
    ("--learning_rate=inf", "--learning_rate must be a finite number > 0"),
    ("--learning_rate=-0.001", "--learning_rate must be a finite number > 0"),
    ("--seed=-1", "--seed must be >= 0"),
    ("--stratify_bins=-2", "--stratify_bins"),
    ("--time_budget_minutes=nan", "--time_budget_minutes"),
])
def test_bad_flag_values_fail_before_anything_is_written(tmp_path, run_module, flag, message):
  workdir = tmp_path / "run"
  result = run_module("keras_cnn.train", f"--workdir={workdir}", *TINY_RUN, flag)
  assert result.returncode != 0
  assert "Traceback" not in result.stderr
  assert message in result.stderr
  assert not workdir.exists()


def test_garbage_model_file_is_one_line(tmp_path, run_module, model_and_box):
  _, data_dir = model_and_box
  garbage = tmp_path / "model.keras"
  garbage.write_bytes(b"not a zip archive")
  result = run_module("keras_cnn.predict", f"--model={garbage}", f"--data_dir={data_dir}",
                      f"--out={tmp_path / 'map.npy'}", "--noprogress")
  _one_line_error(result, "model.keras")


# --- Security -----------------------------------------------------------------------------


def test_keras_floor_excludes_releases_with_safe_mode_bypasses():
  config = configparser.ConfigParser()
  config.read(os.path.join(REPO, "setup.cfg"))
  requirements = config["options"]["install_requires"].split()
  assert "keras>=3.14" in requirements

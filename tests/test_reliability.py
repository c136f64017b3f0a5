"""Nothing a user owns is overwritten, every run can be finished, every error is one line.

Each test drives one mistake or interruption through the real command
(`python -m keras_cnn.<command>` in a subprocess), as a user would meet it, and checks
what the user would see: the exit status, the one line on stderr, and files untouched.
Kills are deterministic: `KERAS_CNN_KILL_AFTER=<step>` makes the process kill -9 itself
right after the named step. Ctrl-C is SIGINT sent to the command's process group once it
has logged that the work began. The fast tier (`-m "not slow"`) keeps one case of each
kind; the rest of each table is marked slow.
"""

import configparser
import csv
import json
import os
import pathlib
import signal
import subprocess
import sys

import numpy as np
import pytest

from keras_cnn import conventions

from helpers import REPO, REDSHIFT, tiny_snapshot

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


# One defining flag of each kind end to end; tests/test_train.py checks the comparison
# itself for every setting in-process.
@pytest.mark.parametrize("changed, named", [
    ("--learning_rate=0.01", "--learning_rate"),
    pytest.param("--filters=3", "--filters", marks=pytest.mark.slow),
    pytest.param("--data_seed=1", "--data_seed", marks=pytest.mark.slow),
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


@pytest.mark.parametrize("step", [
    pytest.param("best_saved:0", marks=pytest.mark.slow), "backup_weights:0",
    pytest.param("backup_weights:1", marks=pytest.mark.slow),
    pytest.param("fit", marks=pytest.mark.slow),
    pytest.param("scoring", marks=pytest.mark.slow),
    pytest.param("plots", marks=pytest.mark.slow)
])
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


def test_a_second_process_on_the_workdir_is_locked_out(run_module, finished_run):
  """A live process holds the lock: the second command stops before touching anything."""
  lock = os.path.join(finished_run, conventions.LOCK_FILE)
  before = _snapshot_of(finished_run)
  with open(lock, "w") as stream:
    stream.write(str(os.getpid()))  # this test process: alive, and not the command
  try:
    result = run_module("keras_cnn.train", f"--workdir={finished_run}", *TINY_RUN)
    _one_line_error(result, f"another keras_cnn process (pid {os.getpid()})")
  finally:
    os.remove(lock)
  assert _snapshot_of(finished_run) == before


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


# Each check has its in-process test in tests/test_snapshot.py; end to end, the default
# run keeps the cases where the command itself could go wrong (a FIFO could hang it, a
# sparse file could exhaust its memory) and one plain case.
@pytest.mark.parametrize("field, how, message", [
    ("rho", "missing", "rho"),
    pytest.param("rho", "nan", "NaN", marks=pytest.mark.slow),
    pytest.param("n_src", "wrong_shape", "shape", marks=pytest.mark.slow),
    pytest.param("rho", "pickled", "object", marks=pytest.mark.slow),
    pytest.param("rho", "text", "not a NumPy .npy file", marks=pytest.mark.slow),
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


# Every check has its in-process test (tests/test_flags.py); end to end, one per kind.
@pytest.mark.parametrize("flag, message", [
    ("--learning_rate=inf", "--learning_rate must be a finite number > 0"),
    pytest.param("--learning_rate=-0.001", "--learning_rate must be a finite number > 0",
                 marks=pytest.mark.slow),
    ("--seed=-1", "--seed must be >= 0"),
    pytest.param("--stratify_bins=-2", "--stratify_bins", marks=pytest.mark.slow),
    pytest.param("--time_budget_minutes=nan", "--time_budget_minutes", marks=pytest.mark.slow),
])
def test_bad_flag_values_fail_before_anything_is_written(tmp_path, run_module, flag, message):
  workdir = tmp_path / "run"
  result = run_module("keras_cnn.train", f"--workdir={workdir}", *TINY_RUN, flag)
  _one_line_error(result, message)
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


# --- Outputs are claimed, checked before the work, and readable by collaborators ----------


def _env():
  return {
      **os.environ, "TF_CPP_MIN_LOG_LEVEL": "3",
      "PYTHONPATH": os.pathsep.join(filter(None, [REPO, os.environ.get("PYTHONPATH")]))
  }


def _start(module, *args, **popen_kwargs):
  return subprocess.Popen([sys.executable, "-m", module, *map(str, args)], cwd=REPO, env=_env(),
                          text=True, **popen_kwargs)


def test_two_predicts_with_one_out_leave_one_map_and_one_error(tmp_path, model_and_box):
  model, data_dir = model_and_box
  (tmp_path / "maps").mkdir()
  out = tmp_path / "maps" / "map.npy"
  command = (f"--model={model}", f"--data_dir={data_dir}", f"--out={out}", "--noprogress")
  procs = [
      _start("keras_cnn.predict", *command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
      for _ in range(2)
  ]
  results = []
  for proc in procs:
    stdout, stderr = proc.communicate(timeout=300)
    results.append(subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr))
  assert sorted(r.returncode for r in results) == [0, 2], [r.stderr[-2000:] for r in results]
  loser = next(r for r in results if r.returncode == 2)
  _one_line_error(loser, str(out))
  assert np.load(out).shape == (12, 12, 12)
  assert os.listdir(tmp_path / "maps") == ["map.npy"]  # no temporary file left


def test_an_output_that_appears_meanwhile_is_kept(tmp_path):
  """The claim itself: the final commit fails when the path exists by then (here a
  dangling symbolic link, made while the command already runs)."""
  from keras_cnn import errors
  from keras_cnn import inference

  out = tmp_path / "map.npy"
  os.symlink(tmp_path / "nowhere", out)
  with pytest.raises(errors.UserError, match="written by another process"):
    inference.save_array(np.zeros((2, 2, 2), np.float32), str(out), overwrite=False)
  assert os.path.islink(out) and os.listdir(tmp_path) == ["map.npy"]
  inference.save_array(np.zeros((2, 2, 2), np.float32), str(out), overwrite=True)
  assert not os.path.islink(out) and np.load(out).shape == (2, 2, 2)


@pytest.mark.parametrize("out, message", [
    ("/sys/kernel/xhii.npy", "is under /sys"),
    pytest.param("/proc/self/xhii.npy", "is under /proc", marks=pytest.mark.slow),
    pytest.param("{tmp}", "is a folder", marks=pytest.mark.slow),
    pytest.param("{tmp}/maps/", "ends in '/'", marks=pytest.mark.slow),
    pytest.param("{tmp}/dangling.npy", "already exists; pass --overwrite", marks=pytest.mark.slow),
    pytest.param("{tmp}/a_file/xhii.npy", "is not a folder", marks=pytest.mark.slow),
])
def test_predict_out_is_checked_before_any_work(tmp_path, run_module, model_and_box, out, message):
  """Refused before the model is even read (it does not exist here): one line, exit 2."""
  _, data_dir = model_and_box
  os.symlink(tmp_path / "nowhere", tmp_path / "dangling.npy")
  (tmp_path / "a_file").write_text("not a folder")
  result = run_module("keras_cnn.predict", f"--model={tmp_path / 'missing.keras'}",
                      f"--data_dir={data_dir}", f"--out={out.format(tmp=tmp_path)}", "--noprogress")
  _one_line_error(result, message)


def test_predict_never_writes_a_target_beside_its_inputs(tmp_path, run_module, model_and_box):
  """A map named like the x_HII target of a data folder's snapshot would be scored as
  the truth by evaluate; an output folder of such maps (no inputs there) is fine."""
  model, data_dir = model_and_box
  name = f"xHII_z{REDSHIFT:.3f}.npy"
  inputs_before = _snapshot_of(data_dir)
  refused = run_module("keras_cnn.predict", f"--model={model}", f"--data_dir={data_dir}",
                       f"--out={os.path.join(data_dir, name)}", "--overwrite", "--noprogress")
  _one_line_error(refused, "x_HII target of the snapshot at z=8.397",
                  "choose another file name or folder")
  assert _snapshot_of(data_dir) == inputs_before
  out = tmp_path / "maps" / name
  written = run_module("keras_cnn.predict", f"--model={model}", f"--data_dir={data_dir}",
                       f"--out={out}", "--noprogress")
  assert written.returncode == 0, written.stderr[-2000:]
  assert np.load(out).shape == (12, 12, 12)


def test_outputs_honour_the_umask(tmp_path, model_and_box, finished_run):
  model, data_dir = model_and_box
  out = tmp_path / "map.npy"
  umask = os.umask(0o027)  # the command inherits it
  try:
    proc = _start("keras_cnn.predict", f"--model={model}", f"--data_dir={data_dir}", f"--out={out}",
                  "--noprogress", stdout=subprocess.PIPE, stderr=subprocess.PIPE)
  finally:
    os.umask(umask)
  _, stderr = proc.communicate(timeout=300)
  assert proc.returncode == 0, stderr[-2000:]
  assert os.stat(out).st_mode & 0o777 == 0o640
  for name in (conventions.METRICS_FILE, conventions.FLAGS_FILE, conventions.MODEL_FILE,
               conventions.PRED_VS_TRUE_PNG):  # written by train under this test's umask
    assert os.stat(os.path.join(finished_run, name)).st_mode & 0o777 == 0o666 & ~umask, name


@pytest.mark.parametrize("command", ["train", "evaluate"])
def test_a_workdir_or_evaluation_out_that_is_a_file_is_one_line(tmp_path, run_module, finished_run,
                                                                command):
  mine = tmp_path / "notes.txt"
  mine.write_text("mine")
  if command == "train":
    result = run_module("keras_cnn.train", f"--workdir={mine}", *TINY_RUN)
  else:
    result = run_module("keras_cnn.evaluate",
                        f"--model={os.path.join(finished_run, conventions.MODEL_FILE)}",
                        f"--out={mine}", "--overwrite", "--noprogress")
  _one_line_error(result, str(mine), "is a file")
  assert mine.read_text() == "mine"


# --- An interrupted evaluation is finished by the same command ----------------------------


def test_an_evaluation_folder_is_finished_by_the_same_command(tmp_path, run_module, finished_run,
                                                              snapshot_dir):
  data_dir = snapshot_dir(tiny_snapshot((12, 12, 12)))
  out = pathlib.Path(data_dir) / "evaluations" / "eval"  # inside the data: not an input
  command = (f"--model={os.path.join(finished_run, conventions.MODEL_FILE)}",
             f"--data_dir={data_dir}", f"--out={out}", "--noprogress", "--power_spectrum=off")
  first = run_module("keras_cnn.evaluate", *command)
  assert first.returncode == 0, first.stderr[-2000:]
  os.remove(out / conventions.METRICS_FILE)  # as Ctrl-C leaves it: figures, no metrics
  again = run_module("keras_cnn.evaluate", *command)
  assert again.returncode == 0, again.stderr[-2000:]
  assert json.loads(again.stdout.strip().splitlines()[-1]) == json.loads(first.stdout)
  assert (out / conventions.METRICS_FILE).exists()
  before = _snapshot_of(out)
  other = run_module("keras_cnn.evaluate", *command, "--sample_seed=1")
  _one_line_error(other, "holds an evaluation with other settings", "--sample_seed")
  assert _snapshot_of(out) == before
  foreign = tmp_path / "thesis"
  foreign.mkdir()
  (foreign / "notes.txt").write_text("mine")
  refused = run_module("keras_cnn.evaluate", *command[:2], f"--out={foreign}", "--noprogress")
  _one_line_error(refused, "already holds files")
  assert os.listdir(foreign) == ["notes.txt"]


# --- Ctrl-C: one line, exit 130, nothing partial, and the same command goes on ---------------

# Runs `python -m MODULE ARGS` with Python's own Ctrl-C handler, as from a terminal. A shell
# that starts the tests in the background (`pytest ... &`) starts them with SIGINT ignored,
# every child inherits that, and Python then leaves Ctrl-C ignored, as it should for a
# background job.
_AS_FROM_A_TERMINAL = ("import runpy, signal, sys; "
                       "signal.signal(signal.SIGINT, signal.default_int_handler); "
                       "runpy.run_module(sys.argv.pop(1), run_name='__main__', alter_sys=True)")


def _interrupted(module, args, started, timeout=300):
  """Runs the command as from a terminal, sends SIGINT to its process group once a line
  containing `started` is printed; returns (exit status, everything it printed)."""
  proc = subprocess.Popen([sys.executable, "-c", _AS_FROM_A_TERMINAL, module, *map(str, args)],
                          cwd=REPO, env=_env(), text=True, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, start_new_session=True)
  printed = []
  try:
    for line in proc.stdout:
      printed.append(line)
      if started in line:
        os.killpg(proc.pid, signal.SIGINT)
        break
    rest, _ = proc.communicate(timeout=timeout)
  finally:
    if proc.poll() is None:
      os.killpg(proc.pid, signal.SIGKILL)
  assert any(started in line for line in printed), "".join(printed)[-3000:]
  return proc.returncode, "".join(printed) + rest


def _assert_interrupted(status, printed):
  assert status == 130, printed[-3000:]
  assert "Traceback" not in printed, printed[-3000:]
  assert printed.strip().splitlines()[-1] == "interrupted; run the same command to go on"


def _slow_box(snapshot_dir, with_target):
  """A box that takes the per-voxel engine many seconds at one crop per batch."""
  return snapshot_dir(tiny_snapshot((24, 24, 24), with_target=with_target), name="big")


def test_ctrl_c_in_predict_is_one_line_and_leaves_nothing(tmp_path, finished_run, snapshot_dir):
  (tmp_path / "maps").mkdir()
  out = tmp_path / "maps" / "map.npy"
  status, printed = _interrupted("keras_cnn.predict", [
      f"--model={os.path.join(finished_run, conventions.MODEL_FILE)}",
      f"--data_dir={_slow_box(snapshot_dir, False)}", f"--out={out}", "--batch_size=1",
      "--noprogress"
  ], started="Predicting x-planes")
  _assert_interrupted(status, printed)
  assert not out.exists() and not os.listdir(out.parent)


@pytest.mark.slow
def test_ctrl_c_in_evaluate_then_the_same_command_finishes(tmp_path, run_module, finished_run,
                                                           snapshot_dir):
  out = tmp_path / "eval"
  command = [
      f"--model={os.path.join(finished_run, conventions.MODEL_FILE)}",
      f"--data_dir={_slow_box(snapshot_dir, True)}", f"--out={out}", "--noprogress"
  ]
  status, printed = _interrupted("keras_cnn.evaluate", command + ["--batch_size=1"],
                                 started="predicting all")
  _assert_interrupted(status, printed)
  assert not (out / conventions.METRICS_FILE).exists()
  assert not [n for n in os.listdir(out) if n.endswith(".tmp")]
  again = run_module("keras_cnn.evaluate", *command)  # the batch size changes no result
  assert again.returncode == 0, again.stderr[-2000:]
  assert json.loads(again.stdout.strip().splitlines()[-1])["num_voxels"] == 24 ** 3


@pytest.mark.slow
def test_ctrl_c_in_train_then_the_same_command_goes_on(tmp_path, run_module):
  workdir = tmp_path / "run"
  command = [f"--workdir={workdir}", *TINY_RUN]
  status, printed = _interrupted("keras_cnn.train", command + ["--epochs=200"], started="Epoch 2/")
  _assert_interrupted(status, printed)
  assert not os.path.exists(os.path.join(workdir, conventions.LOCK_FILE))
  again = run_module("keras_cnn.train", *command, "--epochs=3")  # --epochs may change
  assert again.returncode == 0, again.stderr[-2000:]
  assert _history_epochs(workdir) == [0, 1, 2]


# --- Model files that are not a keras_cnn network ----------------------------------------


def _foreign_model(path, kind):
  import keras

  if kind == "dense":
    inputs = keras.Input((3,))
    keras.Model(inputs, keras.layers.Dense(1)(inputs)).save(path)
  elif kind == "two_inputs":
    a, b = keras.Input((5, 5, 5, 1), name="a"), keras.Input((5, 5, 5, 1), name="b")
    joined = keras.layers.Flatten()(keras.layers.Concatenate()([a, b]))
    keras.Model({"a": a, "b": b}, keras.layers.Dense(1)(joined)).save(path)
  elif kind == "legacy_h5":
    inputs = keras.Input((3,))
    keras.Model(inputs, keras.layers.Dense(1)(inputs)).save(path)
  elif kind == "empty":
    open(path, "wb").close()
  elif kind == "truncated":
    with open(os.path.join(os.path.dirname(path), "..", "finished_model"), "rb") as stream:
      head = stream.read(2000)
    with open(path, "wb") as stream:
      stream.write(head)


@pytest.mark.parametrize("kind, name, message", [
    ("dense", "model.keras", "not a keras_cnn network"),
    pytest.param("two_inputs", "model.keras", "not a keras_cnn network", marks=pytest.mark.slow),
    pytest.param("legacy_h5", "model.h5", "legacy Keras HDF5", marks=pytest.mark.slow),
    pytest.param("empty", "model.keras", "empty (0 bytes)", marks=pytest.mark.slow),
    ("truncated", "model.keras", "truncated"),
])
def test_a_model_file_that_is_not_this_network_says_which(tmp_path, run_module, model_and_box, kind,
                                                          name, message):
  model, data_dir = model_and_box
  (tmp_path / "m").mkdir()
  with open(model, "rb") as source, open(tmp_path / "finished_model", "wb") as copy:
    copy.write(source.read())
  path = str(tmp_path / "m" / name)
  _foreign_model(path, kind)
  result = run_module("keras_cnn.predict", f"--model={path}", f"--data_dir={data_dir}",
                      f"--out={tmp_path / 'map.npy'}", "--noprogress")
  _one_line_error(result, path, message)
  assert not (tmp_path / "map.npy").exists()


# --- Data: round-off, and splits carved from the training snapshots ------------------------


def test_x_hii_round_off_is_clipped_and_real_excess_refused_with_its_digits(
    tmp_path, run_module, finished_run, snapshot_dir):
  box = tiny_snapshot((12, 12, 12))
  box.x_hii[0, 0, 0] = np.float32(1.0000001)
  command = (f"--model={os.path.join(finished_run, conventions.MODEL_FILE)}",
             f"--data_dir={snapshot_dir(box)}", "--noprogress", "--power_spectrum=off")
  clipped = run_module("keras_cnn.evaluate", *command, f"--out={tmp_path / 'eval'}")
  assert clipped.returncode == 0, clipped.stderr[-2000:]
  assert "clipped 1 x_HII values" in clipped.stderr
  box.x_hii[0, 0, 0] = 0.5
  data_dir = snapshot_dir(box, "beyond")
  box.x_hii[0, 0, 0] = np.float32(1.00001)
  np.save(os.path.join(data_dir, f"xHII_z{REDSHIFT:.3f}.npy"), box.x_hii)
  refused = run_module("keras_cnn.evaluate", *command[:1], f"--data_dir={data_dir}",
                       f"--out={tmp_path / 'eval2'}", "--noprogress")
  _one_line_error(refused, "outside [0, 1] in 1 of 1728 cells", "max 1.00001)")


def test_a_flag_that_does_not_parse_is_one_line(run_module, tmp_path):
  result = run_module("keras_cnn.predict", "--model=m.keras", f"--out={tmp_path / 'o.npy'}",
                      "--num_shards=two")
  _one_line_error(result, "--num_shards")
  unknown = run_module("keras_cnn.train", f"--workdir={tmp_path / 'run'}", "--epoch=3")
  _one_line_error(unknown, "epoch")
  assert not (tmp_path / "run").exists()


def test_training_snapshots_give_validation_slabs_when_none_is_left(tmp_path, run_module,
                                                                    snapshot_dir):
  """--train_redshifts=a,b --test_redshifts=c: validation is x-slabs of a and b."""
  folder = tmp_path / "history"
  for seed, z in enumerate((9.4, 7.95, REDSHIFT)):
    snapshot_dir(tiny_snapshot((16, 8, 8), seed=seed, redshift=z), name="history")
  workdir = tmp_path / "run"
  result = run_module("keras_cnn.train", f"--workdir={workdir}", *TINY_RUN, f"--data_dir={folder}",
                      "--train_redshifts=9.400,7.950", f"--test_redshifts={REDSHIFT}")
  assert result.returncode == 0, result.stderr[-3000:]
  assert "validation: no snapshots of their own; cut as x-slabs of the training" in result.stderr
  assert json.loads(result.stdout.strip().splitlines()[-1])["num_voxels"] == 16

"""Training library: fit the two-branch CNN, keep the best model, score the test split.

`train_and_evaluate(config, workdir)` is the whole job behind `python -m keras_cnn.train`;
it reads no flags. A run killed at any point and started again with the same workdir
resumes from the last finished epoch (`AtomicBackup`), or, when
fitting had ended, goes straight to scoring. The workdir's manifest and lock live in
`keras_cnn.runs`.
"""

import csv
import dataclasses
import io
import json
import logging
import os
import shutil
import time
from typing import Optional, Sequence

import keras
import numpy as np

from keras_cnn import conditioning
from keras_cnn import conventions
from keras_cnn import config as config_lib
from keras_cnn import dense
from keras_cnn import distribute
from keras_cnn import domain
from keras_cnn import errors
from keras_cnn.data import splits as splits_lib
from keras_cnn import io_utils
from keras_cnn import model as model_lib
from keras_cnn import runs

# Everything a training run depends on (`keras_cnn.config`).
TrainConfig = config_lib.TrainConfig
DataConfig = config_lib.DataConfig
TRAIN_UNITS = config_lib.TRAIN_UNITS
LOSSES = config_lib.LOSSES
LR_SCHEDULES = config_lib.LR_SCHEDULES
DEFAULT_BATCH_SIZE = config_lib.TRAIN_BATCH_SIZE  # patches, or crops, per batch


class SaveBest(keras.callbacks.Callback):
  """Writes the per-voxel model (float32, no optimizer) whenever val_loss improves.

  With patch training the model fitted is the dense twin; what is written is always
  the per-voxel functional model with the original layer names, whose variables the
  twin trains.
  """

  def __init__(self, path: str, best_so_far: Optional[float] = None):
    super().__init__()
    self.path = path
    self.best = np.inf if best_so_far is None else best_so_far

  def on_epoch_end(self, epoch, logs=None):
    value = (logs or {}).get("val_loss")
    if value is None or not np.isfinite(value) or value >= self.best:
      return
    self.best = float(value)
    swap = None
    if getattr(self.model.optimizer, "use_ema", False):  # save what was validated
      swap = keras.callbacks.SwapEMAWeights()
      swap.set_model(self.model)
      swap.on_test_begin()
    try:
      save_for_sharing(getattr(self.model, "per_voxel", self.model), self.path)
    finally:
      if swap is not None:
        swap.on_test_end()
    runs.kill_point(f"best_saved:{epoch}")


class AtomicBackup(keras.callbacks.Callback):
  """The resume point: weights and optimizer state after every finished epoch.

  Each epoch's weights go to a new file (written under a temporary name, then renamed),
  and only then does `state.json` (also renamed into place) point to it, so a kill or a
  full disk at any moment leaves the previous complete backup in force. Runs after the
  callbacks that log the epoch: an epoch counts as done once its backup is committed.
  """

  def __init__(self, backup_dir: str):
    super().__init__()
    self.backup_dir = backup_dir

  def on_epoch_end(self, epoch, logs=None):
    os.makedirs(self.backup_dir, exist_ok=True)
    name = f"epoch_{epoch + 1}.weights.h5"
    path = os.path.join(self.backup_dir, name)
    tmp = os.path.join(self.backup_dir, f".{os.getpid()}.tmp.weights.h5")
    try:
      self.model.save_weights(tmp, overwrite=True)
      os.replace(tmp, path)
    finally:
      if os.path.exists(tmp):
        os.remove(tmp)
    runs.kill_point(f"backup_weights:{epoch}")
    io_utils.write_text(os.path.join(self.backup_dir, conventions.BACKUP_STATE),
                        json.dumps({
                            "epochs_done": epoch + 1,
                            "weights": name
                        }) + "\n")
    for old in os.listdir(self.backup_dir):
      if old.endswith(".weights.h5") and old != name:
        os.remove(os.path.join(self.backup_dir, old))


def restore_backup(model: keras.Model, backup_dir: str) -> int:
  """Loads the committed backup into `model` (built, compiled); returns the epochs it
  holds (0 when there is none)."""
  state_path = os.path.join(backup_dir, conventions.BACKUP_STATE)
  if not os.path.exists(state_path):
    return 0
  with open(state_path) as stream:
    state = json.load(stream)
  if model.optimizer is not None and not model.optimizer.built:
    model.optimizer.build(model.trainable_variables)
  model.load_weights(os.path.join(backup_dir, state["weights"]))
  return int(state["epochs_done"])


def committed_epochs(backup_dir: str) -> int:
  """Epochs the committed backup holds (0 when there is none)."""
  state_path = os.path.join(backup_dir, conventions.BACKUP_STATE)
  if not os.path.exists(state_path):
    return 0
  with open(state_path) as stream:
    return int(json.load(stream)["epochs_done"])


def truncate_history(workdir: str, epochs: int) -> list:
  """Keeps the first `epochs` rows of history.csv (later rows belong to epochs whose
  backup never committed: they are trained again) and returns them."""
  path = os.path.join(workdir, conventions.HISTORY_FILE)
  rows = io_utils.read_history(path)
  if len(rows) > epochs:
    stream = io.StringIO()
    writer = csv.DictWriter(stream, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows[:epochs])
    io_utils.write_text(path, stream.getvalue() if epochs else "")
    rows = rows[:epochs]
  return rows


class TimeBudget(keras.callbacks.Callback):
  """Stops training once `minutes` of wall-clock time have elapsed (mid-epoch)."""

  def __init__(self, minutes: float):
    super().__init__()
    self.seconds = 60.0 * minutes
    self.start = None

  def on_train_begin(self, logs=None):
    self.start = time.monotonic()

  def on_train_batch_end(self, batch, logs=None):
    if self.seconds and time.monotonic() - self.start >= self.seconds:
      if not self.model.stop_training:
        logging.info("Time budget of %.1f min reached: last epoch.", self.seconds / 60)
      self.model.stop_training = True  # ends this epoch early; validation still runs


def resolve_jit_compile(setting: str):
  """'auto': XLA only where it is faster for Conv3D (not on CPU; see docs/results.md)."""
  if setting == "on":
    return True
  if setting == "off":
    return False
  return distribute.default_jit_compile()


def resolve_precision(setting: str) -> str:
  """'auto': the fastest Keras dtype policy measured for this backend and CPU."""
  if setting != "auto":
    return setting
  return distribute.default_precision()


def compile_model(model: keras.Model, learning_rate: float, jit_compile, loss: str = "mse",
                  ema_momentum: float = 0.0) -> None:
  """Adam with `loss` ('mse', or 'bce': binary cross-entropy on x_HII in [0, 1]), keeping
  an exponential moving average of the weights when `ema_momentum` > 0."""
  if loss not in LOSSES:
    raise ValueError(f"--loss must be one of {sorted(LOSSES)}, got {loss!r}")
  metrics = [keras.metrics.R2Score(name="r2")]
  if loss != "mse":
    metrics.append(keras.metrics.MeanSquaredError(name="mse"))
  optimizer = keras.optimizers.Adam(learning_rate, use_ema=ema_momentum > 0,
                                    ema_momentum=ema_momentum or 0.99)
  model.compile(optimizer=optimizer, loss=LOSSES[loss], metrics=metrics, jit_compile=jit_compile)


class CosineSchedule(keras.callbacks.Callback):
  """Cosine decay of the learning rate to zero over the run: over the wall-clock budget
  when there is one (the step count it allows is not known in advance), else over
  epochs x steps_per_epoch."""

  def __init__(self, learning_rate: float, minutes: float, total_steps: int, first_step: int = 0):
    super().__init__()
    self.learning_rate = learning_rate
    self.seconds = 60.0 * minutes
    self.total_steps = total_steps
    self.step = first_step
    self.start = None

  def on_train_begin(self, logs=None):
    self.start = time.monotonic()

  def on_train_batch_begin(self, batch, logs=None):
    if self.seconds:
      fraction = (time.monotonic() - self.start) / self.seconds
    else:
      fraction = self.step / max(1, self.total_steps)
    self.step += 1
    value = 0.5 * self.learning_rate * (1.0 + np.cos(np.pi * min(1.0, fraction)))
    self.model.optimizer.learning_rate.assign(value)


def _callbacks(config: TrainConfig, workdir: str, history: list):
  best_so_far = min((float(row["val_loss"]) for row in history), default=None)
  callbacks = [keras.callbacks.SwapEMAWeights()] if config.ema_momentum else []
  callbacks += [
      keras.callbacks.CSVLogger(os.path.join(workdir, conventions.HISTORY_FILE), append=True),
      # On resume, only a model better than the epochs already logged replaces best.keras.
      SaveBest(os.path.join(workdir, conventions.BEST_FILE), best_so_far),
      keras.callbacks.TensorBoard(os.path.join(workdir, "logs")),
      keras.callbacks.TerminateOnNaN(),
  ]
  if config.lr_schedule == "cosine":
    callbacks.append(
        CosineSchedule(config.learning_rate, config.time_budget_minutes,
                       config.epochs * config.steps_per_epoch,
                       first_step=len(history) * config.steps_per_epoch))
  else:
    callbacks.append(
        keras.callbacks.ReduceLROnPlateau(monitor="val_loss", factor=0.5,
                                          patience=max(1, config.patience // 2), min_lr=1e-6))
  if config.patience:
    callbacks.append(keras.callbacks.EarlyStopping(monitor="val_loss", patience=config.patience))
  if config.time_budget_minutes:
    callbacks.append(TimeBudget(config.time_budget_minutes))
  callbacks.append(AtomicBackup(os.path.join(workdir,
                                             conventions.BACKUP_DIR)))  # last: commits the epoch
  return callbacks


def train_and_evaluate(
    config: TrainConfig, workdir: str, flags_text: Optional[str] = None,
    extra_callbacks: Sequence[keras.callbacks.Callback] = ()) -> dict:
  """Trains, keeps the best model on validation, and scores the test split.

  Args:
    config: the run's settings.
    workdir: output folder; an existing one with a backup resumes.
    flags_text: the command line to record in workdir/flags.txt.
    extra_callbacks: more Keras callbacks for `fit` (after the standard ones).

  Returns:
    The test metrics (also in workdir/metrics.json).
  """

  created = not os.path.exists(workdir)
  fresh = created or (os.path.isdir(workdir) and not os.listdir(workdir))
  os.makedirs(workdir, exist_ok=True)
  resumed = runs.check_or_create(workdir, config)
  abandoned = False
  try:
    with runs.WorkdirLock(workdir):
      metrics_path = os.path.join(workdir, conventions.METRICS_FILE)
      if os.path.exists(metrics_path) and os.path.exists(
          os.path.join(workdir, conventions.MODEL_FILE)):
        logging.info("%s holds a finished run; use a new --workdir to train again.", workdir)
        with open(metrics_path) as f:
          return json.load(f)
      if not resumed:  # flags.txt works as --flagfile to rerun the same training
        io_utils.write_text(
            os.path.join(workdir, conventions.FLAGS_FILE), flags_text if flags_text is not None else
            json.dumps(dataclasses.asdict(config), indent=2, default=str))
      distribute.initialize(config.distribution)
      keras.utils.set_random_seed(config.seed)
      precision = resolve_precision(config.precision)
      previous_policy = keras.config.dtype_policy()
      keras.config.set_dtype_policy(precision)
      try:
        return _train(config, workdir, precision, extra_callbacks)
      except errors.UserError:
        # A new run refused before its first epoch (its data or flags) leaves no workdir
        # behind, so the corrected command is not held to the refused one's manifest.
        abandoned = fresh and committed_epochs(os.path.join(
            workdir, conventions.BACKUP_DIR)) == 0 and not os.path.exists(
                os.path.join(workdir, conventions.FIT_DONE_FILE))
        raise
      finally:
        keras.config.set_dtype_policy(previous_policy)
  finally:
    if abandoned and created:
      shutil.rmtree(workdir, ignore_errors=True)
    elif abandoned:  # the user's empty folder: empty again, and kept
      for name in os.listdir(workdir):
        path = os.path.join(workdir, name)
        if os.path.isdir(path):
          shutil.rmtree(path)
        else:
          os.remove(path)


def is_finished(workdir: str) -> bool:
  """True if `workdir` holds a finished run (its model and test metrics)."""
  return all(
      os.path.exists(os.path.join(workdir, name))
      for name in (conventions.METRICS_FILE, conventions.MODEL_FILE))


def recorded_source_units(config: TrainConfig) -> str:
  """--source_units as the saved model records it: left at its default on the built-in
  simulator's boxes, the simulator's unit ("simulator counts" or "simulator photons")."""
  data = config.data
  if (config.source_units == domain.DEFAULT_SOURCE_UNITS and not data.folders() and
      data.dataset == splits_lib.SYNTHETIC):
    return f"simulator {data.synthetic_sources}"
  return config.source_units


def load_run_splits(config: TrainConfig) -> dict:
  """{split: SplitData} of a run, with the sources as its model takes them."""
  data = config.data
  splits = splits_lib.load_splits(
      data.data_dir, data.redshift, data.dataset, config.model.radius,
      tfds_data_dir=data.tfds_data_dir, n_cells=data.n_cells, mean_xhii=data.mean_xhii,
      data_seed=data.data_seed, data_format=data.data_format, box_size_mpc=data.box_size_mpc,
      split_redshifts=data.split_redshifts(), split_dirs=data.split_dirs(),
      synthetic_train_boxes=data.synthetic_train_boxes, synthetic_sources=data.synthetic_sources)
  return splits_lib.for_model(splits, config.model.source_transform)


def _train(config: TrainConfig, workdir: str, precision: str,
           extra_callbacks: Sequence[keras.callbacks.Callback]) -> dict:
  radius = config.model.radius
  splits = load_run_splits(config)
  for split, split_data in splits.items():
    logging.info("%s: %s", split, split_data.describe())
  kind = config.model.conditioning
  conditions = {split: conditioning.values(kind, data.snapshots) for split, data in splits.items()}
  condition_stats = None
  if kind != "none":
    condition_stats = conditioning.training_stats(kind, conditions["train"])
    for split, split_values in conditions.items():
      logging.info("%s: conditioning on the %s: %s", split, kind,
                   ", ".join(f"{v:.4g}" for v in split_values))
  igm_stats, src_stats = splits_lib.normalization_stats(splits["train"],
                                                        config.model.source_transform)
  train = splits["train"]
  record = domain.make_record([(n_igm, n_src) for n_igm, n_src, _ in train.fields], train.region,
                              recorded_source_units(config),
                              [snapshot.redshift for snapshot in train.snapshots])

  best_path = os.path.join(workdir, conventions.BEST_FILE)
  model_path = os.path.join(workdir, conventions.MODEL_FILE)
  done_path = os.path.join(workdir, conventions.FIT_DONE_FILE)
  if os.path.exists(done_path):
    logging.info("%s: training finished earlier; scoring the test split.", workdir)
  else:
    backup_dir = os.path.join(workdir, conventions.BACKUP_DIR)
    history = truncate_history(workdir, committed_epochs(backup_dir))
    start_epoch = len(history)
    if start_epoch:
      logging.info("Resuming %s after %d finished epochs.", workdir, start_epoch)
    _fit(config, workdir, splits, history, start_epoch, precision, extra_callbacks, igm_stats,
         src_stats, record, conditions, condition_stats)
    io_utils.write_text(done_path, "fit finished; the best model is best.keras or model.keras\n")
    shutil.rmtree(os.path.join(workdir, conventions.BACKUP_DIR), ignore_errors=True)
    runs.kill_point("fit")
  if os.path.exists(best_path):
    os.replace(best_path, model_path)  # SaveBest already wrote it for sharing
  shared = keras.saving.load_model(model_path, safe_mode=True)  # score what is shared
  metrics = evaluate_split(shared, splits["test"], radius, config.batch_size, config.test_examples,
                           seed=config.seed + 2, conditions=conditions["test"])
  runs.kill_point("scoring")
  arrays = metrics.pop("_arrays")
  _write_plots(workdir, arrays)
  runs.kill_point("plots")
  io_utils.write_text(os.path.join(workdir, conventions.METRICS_FILE),
                      json.dumps(metrics, indent=2) + "\n")
  return metrics


def _fit(config: TrainConfig, workdir: str, splits, history, start_epoch: int, precision: str,
         extra_callbacks, igm_stats, src_stats, record: dict, conditions: dict,
         condition_stats) -> None:
  """Fits the model (or its dense twin, on patches) until a stopping rule fires."""
  from keras_cnn import pipeline

  radius = config.model.radius
  patches = config.train_unit == "patch"
  if patches:
    train_ds = pipeline.make_patch_dataset(splits["train"].fields, radius, config.patch_size,
                                           config.batch_size, training=True, seed=config.seed,
                                           augment=config.augment, region=splits["train"].region,
                                           start_batch=start_epoch * config.steps_per_epoch,
                                           conditions=conditions["train"])
    region = splits["validation"].region
    # A slab of one user box may be thinner than a patch: validate on slab-thin blocks.
    val_size = config.patch_size if region is None else min(config.patch_size, region[1] -
                                                            region[0])
    val_ds = pipeline.make_patch_dataset(splits["validation"].fields, radius, val_size,
                                         config.batch_size, training=False, seed=config.seed + 1,
                                         region=region, num_patches=config.validation_patches,
                                         conditions=conditions["validation"])
  else:
    train_ds = pipeline.make_dataset(splits["train"].fields, radius, config.batch_size,
                                     training=True, seed=config.seed, augment=config.augment,
                                     region=splits["train"].region,
                                     stratify_bins=config.stratify_bins,
                                     start_batch=start_epoch * config.steps_per_epoch,
                                     conditions=conditions["train"])
    val_ds = pipeline.make_dataset(splits["validation"].fields, radius, config.batch_size,
                                   training=False, seed=config.seed + 1,
                                   region=splits["validation"].region,
                                   num_examples=config.validation_examples,
                                   conditions=conditions["validation"])

  source_mean = excursion_stats = None  # the excursion-set features' source unit, statistics
  if config.model.spheres():
    source_mean = splits_lib.normalization_stats(splits["train"], "none")[1][0]
    excursion_stats = model_lib.training_excursion_stats(splits["train"].fields,
                                                         config.model.spheres(), radius,
                                                         source_mean, splits["train"].region)
  jit_compile = resolve_jit_compile(config.jit_compile)
  with distribute.distribution_scope(config.distribution) as info:
    distribute.check_global_batch(config.batch_size, info)
    model = model_lib.build_model(config.model, igm_stats, src_stats, domain=record,
                                  condition_stats=condition_stats, source_mean=source_mean,
                                  excursion_stats=excursion_stats)
    fitted = dense.DenseTwin(model, flat_output=True) if patches else model
    compile_model(fitted, config.learning_rate, jit_compile, config.loss, config.ema_momentum)
  logging.info("Backend %s, %d replica(s), precision %s, jit_compile=%s, training on %s.",
               keras.backend.backend(), info.num_replicas, precision, jit_compile,
               f"{config.patch_size}^3 patches (dense twin)" if patches else "voxels")
  offset = model_lib.receptive_offset(config.model)
  if offset:
    logging.warning(
        "The receptive field is off-centre by %.1f cells per axis (sizes floor "
        "away rows); centred sizes keep the 48 cube symmetries exact.", offset)
  model.summary(print_fn=logging.info)
  restored = restore_backup(fitted, os.path.join(workdir, conventions.BACKUP_DIR))
  if restored != start_epoch:
    raise RuntimeError(f"backup holds {restored} epochs but history.csv {start_epoch}")
  with distribute.synchronized_batch_norm(model, info), distribute.multi_worker_fit(fitted, info):
    fitted.fit(train_ds, epochs=config.epochs, initial_epoch=start_epoch,
               steps_per_epoch=config.steps_per_epoch, validation_data=val_ds,
               callbacks=_callbacks(config, workdir, history) + list(extra_callbacks), verbose=1,
               shuffle=False)


def save_for_sharing(model: keras.Model, path: str) -> None:
  """Saves weights and architecture, float32, without optimizer state (a third of the size).

  A model trained under mixed_bfloat16 keeps float32 variables; its shared file runs in
  float32 so it loads under torch too (no bfloat16 average pooling on CPU there).

  Resuming uses the backup (`AtomicBackup`), so the shared file needs no optimizer.
  Written to a temporary file first: `path` is either complete or absent.
  """
  config = model.get_config()
  for layer in config["layers"]:  # float32 everywhere: loads and runs on every backend
    if "dtype" in layer["config"]:
      layer["config"]["dtype"] = "float32"
  clean = keras.Model.from_config(config)
  clean.set_weights(model.get_weights())
  tmp = f"{path}.{os.getpid()}.tmp.keras"
  try:
    clean.save(tmp)
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


def evaluate_split(model: keras.Model, split: splits_lib.SplitData, radius: int, batch_size: int,
                   num_examples: int, seed: int,
                   conditions: Optional[Sequence[float]] = None) -> dict:
  """Metrics of `model` on `split`: every voxel of its boxes (or slab) through the dense
  engine for 'valid' models, else a fixed set of `num_examples` crops.

  The ionized-map scores pool every scored voxel; the physics scores of whole maps
  (`keras_cnn.metrics.compare_maps`, the keys of `evaluate`) need whole periodic boxes,
  so they are None for slabs of one box and for sampled crops. The train command has no
  cell-size flag: boxes are taken to have the cell of the simulator and the C2-Ray boxes.
  `conditions`: one value per snapshot for a conditioned model.
  """
  from keras_cnn import inference
  from keras_cnn import scoring

  boxes, voxels = [], []
  if dense.model_padding(model) == "valid":
    twin = dense.DenseTwin(model)
    for i, (snapshot, (n_igm, n_src, x_hii)) in enumerate(zip(split.snapshots, split.fields)):
      start, stop = split.region or (0, n_igm.shape[0])
      pred_map = inference.predict_volume_dense(
          model, n_igm, n_src, x_start=start, x_stop=stop, progress=False, twin=twin,
          condition=None if conditions is None else conditions[i])
      true_map = np.asarray(x_hii[start:stop], np.float32)
      if split.region is None:
        boxes.append(scoring.WholeBox(true_map, pred_map, n_igm, snapshot.redshift))
      else:
        voxels.append((true_map, pred_map))
  else:
    voxels.append(
        inference.sampled_predictions(model, split.fields, radius, batch_size, num_examples, seed,
                                      region=split.region, conditions=conditions))
  scores = scoring.score(boxes, voxels, cell_size_mpc=conventions.CELL_SIZE_MPC, seed=seed)
  result = dict(scores.metrics)
  result["_arrays"] = (scores.y_true, scores.y_pred,
                       [(box.true_map, box.pred_map, comparison)
                        for box, comparison in zip(boxes, scores.comparisons)])
  return result


def _write_plots(workdir: str, arrays) -> None:
  try:
    from keras_cnn import plots
  except ImportError as err:  # matplotlib is a dependency; a broken install only loses plots
    logging.warning("No plots: %s", err)
    return
  y_true, y_pred, comparisons = arrays
  plots.plot_history(os.path.join(workdir, conventions.HISTORY_FILE),
                     os.path.join(workdir, conventions.HISTORY_PNG))
  plots.plot_pred_vs_true(y_true, y_pred, os.path.join(workdir, conventions.PRED_VS_TRUE_PNG))
  for i, (true_map, pred_map, comparison) in enumerate(comparisons):
    name = "summary.png" if len(comparisons) == 1 else f"summary_{i}.png"
    plots.plot_summary(true_map, pred_map, comparison, os.path.join(workdir, name),
                       conventions.CELL_SIZE_MPC, title="test split")

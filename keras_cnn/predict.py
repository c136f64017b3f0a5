"""`python -m keras_cnn.predict`: paint the x_HII map of a whole box with a saved model.

  python -m keras_cnn.predict --model=saved_models/<name>.keras \\
      --data_dir=boxes/ --redshift=8.397 --out=xhii_pred.npy

Targets are not needed. A model trained with --padding=valid runs through the dense
engine (a tile per pass); 'same' models, or --engine=per_voxel, predict one crop per
voxel. `--num_shards=K --shard_index=i` paints only the i-th of K x-slabs (one process
or cluster job per slab, e.g. `--shard_index=$SLURM_ARRAY_TASK_ID`); the slabs,
concatenated along x in shard order, are exactly the single-process map:

  python -c "import numpy as np; np.save('xhii_pred.npy', np.concatenate(
      [np.load(f'xhii_shard{i}.npy') for i in range(4)], axis=0))"

`--redshift=all` (or a comma list) paints every snapshot of --data_dir into the folder
--out (`xHII_z{z:.3f}.npy` and index.json; a rerun goes on where it stopped); an --out or
--data_dir ending in .zarr is a Zarr store; `--scheduler=threads|processes|<address>`
paints the dense engine's tiles on Dask workers (`keras_cnn.history`, `keras_cnn.scale`,
docs/scale.md):

  python -m keras_cnn.predict --model=model.keras --data_dir=boxes/ --redshift=all \\
      --out=history/ --scheduler=processes --workers=4

The output file appears only when complete, and an existing file is never replaced
without --overwrite (an input file never); of two commands writing one --out, the
second to finish fails. A map is never written under a target's name (xHII_z{z}.npy,
xfrac...) beside the density and sources of that redshift, where train and evaluate
would read it as the simulation's x_HII.
"""

import os

from absl import app
from absl import flags
from absl import logging

from keras_cnn import cli
from keras_cnn import cli_flags
from keras_cnn import conditioning
from keras_cnn import config
from keras_cnn.data import formats
from keras_cnn.data import snapshot as snapshot_lib

FLAGS = flags.FLAGS
cli_flags.define_predict_flags()
flags.adopt_module_key_flags(cli_flags)


def _refuse_target_name(out: str) -> None:
  targeted = formats.snapshot_targeted_by(out)
  if targeted is not None:
    raise app.UsageError(
        f"--out={out} would be read as the x_HII target of the snapshot at "
        f"z={formats.format_redshift(targeted.redshift)} whose density and sources are in that "
        "folder, so evaluate and train would score the prediction against itself; choose "
        "another file name or folder")


def _several(redshift) -> bool:
  return isinstance(redshift, (tuple, list)) or redshift == snapshot_lib.ALL_REDSHIFTS


def _uses_scale(settings: config.PredictConfig) -> bool:
  """Whether the command paints through `keras_cnn.scale` (a history, Zarr or Dask)."""
  from keras_cnn import scale

  return bool(settings.scheduler != config.DEFAULT_SCHEDULER or scale.is_zarr(FLAGS.out) or
              scale.is_zarr(FLAGS.data_dir) or (FLAGS.data_dir and _several(FLAGS.redshift)))


def _predict_scaled(settings: config.PredictConfig) -> None:
  """Snapshots of --data_dir painted by `keras_cnn.history` (a folder or Zarr store of
  maps, or one .npy file), on the --scheduler's workers."""
  from keras_cnn import history
  from keras_cnn import scale

  if not FLAGS.data_dir:
    raise app.UsageError("--scheduler, Zarr and several redshifts paint the snapshots of "
                         "--data_dir (a folder, or a .zarr store); give --data_dir")
  if settings.num_shards > 1:
    raise app.UsageError("--num_shards cuts one box by hand; with --scheduler, Zarr or several "
                         "redshifts, spread the tiles with --scheduler=processes or a "
                         "dask.distributed scheduler instead")
  try:
    scale.check_scheduler(settings.scheduler, settings.workers)
    import dask.array  # noqa: F401
    import zarr  # noqa: F401
    if settings.scheduler not in ("none", "threads"):
      import distributed  # noqa: F401
  except ValueError as error:
    raise app.UsageError(str(error)) from error
  except ImportError as error:
    raise app.UsageError(f"--scheduler, Zarr and several redshifts need the extra 'scale' "
                         f"({error}): python -m pip install -e \".[scale]\"") from error
  redshifts = history.select_redshifts(FLAGS.data_dir, FLAGS.redshift, FLAGS.data_format)
  options = history.PaintOptions(
      engine=settings.apply.engine, scheduler=settings.scheduler, workers=settings.workers,
      memory_budget_gb=settings.apply.memory_budget_gb, batch_size=settings.apply.batch_size,
      progress=settings.apply.progress, condition_value=settings.apply.condition_value,
      strict_domain=settings.apply.strict_domain, overwrite=settings.apply.overwrite,
      data_format=FLAGS.data_format, box_size_mpc=FLAGS.box_size_mpc)
  if _several(FLAGS.redshift) or scale.is_zarr(FLAGS.out):
    if FLAGS.out.endswith(".npy"):
      raise app.UsageError(f"--out={FLAGS.out}: --redshift={','.join(map(str, redshifts))} "
                           "paints one map per snapshot into a folder (or a .zarr store); "
                           "give a folder")
    history.check_out(FLAGS.out, redshifts, settings.apply.overwrite, FLAGS.data_dir)
    model = cli.load_model_or_exit(FLAGS.model)
    cli.condition_kind_or_exit(model, FLAGS.model)
    for number, (record, painted) in enumerate(
        history.paint_history(model, FLAGS.model, FLAGS.data_dir, redshifts, FLAGS.out, options),
        1):
      what = f"painted in {record['seconds']:.1f} s" if painted else "kept (already painted)"
      print(
          f"[{number}/{len(redshifts)}] z={formats.format_redshift(record['redshift'])}: "
          f"{os.path.join(FLAGS.out, record['file'])}, mean x_HII {record['mean_xhii']:.4f}, "
          f"{what}", flush=True)
    print(f"Wrote {os.path.join(FLAGS.out, history.INDEX_FILE)} ({len(redshifts)} snapshot(s))")
    return
  cli.check_output_path(FLAGS.out, is_dir=False)
  _refuse_target_name(FLAGS.out)
  model = cli.load_model_or_exit(FLAGS.model)
  cli.condition_kind_or_exit(model, FLAGS.model)
  record = history.paint_one(model, FLAGS.model, FLAGS.data_dir, redshifts[0], FLAGS.out, options)
  print(f"Wrote x_HII map (z={formats.format_redshift(record['redshift'])}, mean x_HII "
        f"{record['mean_xhii']:.4f}, scheduler {settings.scheduler}) to {FLAGS.out}")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  cli.require_flags("model", "out")
  from keras_cnn import inference

  settings = cli_flags.apply_config_from_flags(config.PredictConfig)
  if _uses_scale(settings):
    return _predict_scaled(settings)
  cli.check_output_path(FLAGS.out, is_dir=False)
  _refuse_target_name(FLAGS.out)
  applied = cli.load_model_and_boxes(require_target=False, box_index=settings.box_index)
  (snapshot,) = applied.snapshots
  condition = conditioning.value(applied.kind, snapshot, settings.apply.condition_value)
  if condition is not None:
    logging.info("Conditioning on the %s: %.6g.", applied.kind, condition)
  try:
    start, stop = inference.shard_bounds(snapshot.shape[0], settings.num_shards,
                                         settings.shard_index)
  except ValueError as error:
    raise app.UsageError(str(error)) from error
  logging.info("Predicting x-planes [%d, %d) of %s, shape %s, with r=%d, engine %s.", start, stop,
               snapshot.name, snapshot.shape, applied.radius, applied.engine)
  x_hii = inference.predict_map(applied.model, snapshot.n_igm, snapshot.n_src,
                                engine=applied.engine, x_start=start, x_stop=stop,
                                batch_size=settings.apply.batch_size,
                                memory_budget_gb=settings.apply.memory_budget_gb,
                                progress=settings.apply.progress, condition=condition)
  inference.save_array(x_hii, FLAGS.out, overwrite=settings.apply.overwrite)
  where = ("the whole box" if settings.num_shards == 1 else
           f"shard {settings.shard_index} of {settings.num_shards}: x-planes [{start}, {stop}) "
           f"of a box of shape {tuple(snapshot.shape)}")
  print(f"Wrote x_HII map of shape {tuple(x_hii.shape)} float32 ({where}, {applied.engine} "
        f"engine) to {FLAGS.out}")


if __name__ == "__main__":
  cli.run(main)

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

from keras_cnn import cli_flags
from keras_cnn import conditioning
from keras_cnn import domain
from keras_cnn import model as model_lib
from keras_cnn.data import formats
from keras_cnn.data import snapshot as snapshot_lib

FLAGS = flags.FLAGS
cli_flags.define_predict_flags()
cli_flags.define_scale_flags()
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


def _uses_scale() -> bool:
  """Whether the command paints through `keras_cnn.scale` (a history, Zarr or Dask)."""
  from keras_cnn import scale

  return bool(FLAGS.scheduler != cli_flags.DEFAULT_SCHEDULER or scale.is_zarr(FLAGS.out) or
              scale.is_zarr(FLAGS.data_dir) or (FLAGS.data_dir and _several(FLAGS.redshift)))


def _predict_scaled() -> None:
  """Snapshots of --data_dir painted by `keras_cnn.history` (a folder or Zarr store of
  maps, or one .npy file), on the --scheduler's workers."""
  from keras_cnn import history
  from keras_cnn import inference
  from keras_cnn import scale

  if not FLAGS.data_dir:
    raise app.UsageError("--scheduler, Zarr and several redshifts paint the snapshots of "
                         "--data_dir (a folder, or a .zarr store); give --data_dir")
  if FLAGS.num_shards > 1:
    raise app.UsageError("--num_shards cuts one box by hand; with --scheduler, Zarr or several "
                         "redshifts, spread the tiles with --scheduler=processes or a "
                         "dask.distributed scheduler instead")
  try:
    scale.check_scheduler(FLAGS.scheduler, FLAGS.workers)
    import dask.array  # noqa: F401
    import zarr  # noqa: F401
    if FLAGS.scheduler not in ("none", "threads"):
      import distributed  # noqa: F401
  except ValueError as error:
    raise app.UsageError(str(error)) from error
  except ImportError as error:
    raise app.UsageError(f"--scheduler, Zarr and several redshifts need the extra 'scale' "
                         f"({error}): python -m pip install -e \".[scale]\"") from error
  redshifts = history.select_redshifts(FLAGS.data_dir, FLAGS.redshift, FLAGS.data_format)
  options = history.PaintOptions(engine=FLAGS.engine, scheduler=FLAGS.scheduler,
                                 workers=FLAGS.workers, memory_budget_gb=FLAGS.memory_budget_gb,
                                 batch_size=FLAGS.batch_size or inference.DEFAULT_BATCH_SIZE,
                                 progress=FLAGS.progress, condition_value=FLAGS.condition_value,
                                 strict_domain=FLAGS.strict_domain, overwrite=FLAGS.overwrite,
                                 data_format=FLAGS.data_format, box_size_mpc=FLAGS.box_size_mpc)
  if _several(FLAGS.redshift) or scale.is_zarr(FLAGS.out):
    if FLAGS.out.endswith(".npy"):
      raise app.UsageError(f"--out={FLAGS.out}: --redshift={','.join(map(str, redshifts))} "
                           "paints one map per snapshot into a folder (or a .zarr store); "
                           "give a folder")
    history.check_out(FLAGS.out, redshifts, FLAGS.overwrite, FLAGS.data_dir)
    model = cli_flags.load_model_or_exit(FLAGS.model)
    cli_flags.condition_kind_or_exit(model, FLAGS.model)
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
  cli_flags.check_output_path(FLAGS.out, is_dir=False)
  _refuse_target_name(FLAGS.out)
  model = cli_flags.load_model_or_exit(FLAGS.model)
  cli_flags.condition_kind_or_exit(model, FLAGS.model)
  record = history.paint_one(model, FLAGS.model, FLAGS.data_dir, redshifts[0], FLAGS.out, options)
  print(f"Wrote x_HII map (z={formats.format_redshift(record['redshift'])}, mean x_HII "
        f"{record['mean_xhii']:.4f}, scheduler {FLAGS.scheduler}) to {FLAGS.out}")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  cli_flags.require_flags("model", "out")
  if _uses_scale():
    return _predict_scaled()
  from keras_cnn import inference

  batch_size = FLAGS.batch_size or inference.DEFAULT_BATCH_SIZE

  cli_flags.check_output_path(FLAGS.out, is_dir=False)
  _refuse_target_name(FLAGS.out)
  model = cli_flags.load_model_or_exit(FLAGS.model)
  kind = cli_flags.condition_kind_or_exit(model, FLAGS.model)
  radius = inference.model_radius(model)
  snapshots = cli_flags.load_box_from_flags(radius=radius, require_target=False)
  if FLAGS.box_index >= len(snapshots):
    raise app.UsageError(f"--box_index={FLAGS.box_index} but the data hold "
                         f"{len(snapshots)} box(es)")
  snapshot = snapshot_lib.for_model(snapshots[FLAGS.box_index],
                                    model_lib.source_transform_of(model))
  domain.check_inputs(model, [snapshot], strict=FLAGS.strict_domain, model_name=FLAGS.model)
  condition = conditioning.value(kind, snapshot, FLAGS.condition_value)
  if condition is not None:
    logging.info("Conditioning on the %s: %.6g.", kind, condition)
  try:
    start, stop = inference.shard_bounds(snapshot.shape[0], FLAGS.num_shards, FLAGS.shard_index)
    engine = inference.resolve_engine(model, FLAGS.engine)
  except ValueError as error:
    raise app.UsageError(str(error)) from error
  logging.info("Predicting x-planes [%d, %d) of %s, shape %s, with r=%d, engine %s.", start, stop,
               snapshot.name, snapshot.shape, radius, engine)
  x_hii = inference.predict_map(model, snapshot.n_igm, snapshot.n_src, engine=engine, x_start=start,
                                x_stop=stop, batch_size=batch_size,
                                memory_budget_gb=FLAGS.memory_budget_gb, progress=FLAGS.progress,
                                condition=condition)
  inference.save_array(x_hii, FLAGS.out, overwrite=FLAGS.overwrite)
  where = ("the whole box" if FLAGS.num_shards == 1 else
           f"shard {FLAGS.shard_index} of {FLAGS.num_shards}: x-planes [{start}, {stop}) "
           f"of a box of shape {tuple(snapshot.shape)}")
  print(f"Wrote x_HII map of shape {tuple(x_hii.shape)} float32 ({where}, {engine} engine) "
        f"to {FLAGS.out}")


if __name__ == "__main__":
  cli_flags.run(main)

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

The output file appears only when complete, and an existing file is never replaced
without --overwrite (an input file never); of two commands writing one --out, the
second to finish fails. A map is never written under a target's name (xHII_z{z}.npy,
xfrac...) beside the density and sources of that redshift, where train and evaluate
would read it as the simulation's x_HII.
"""

from absl import app
from absl import flags
from absl import logging

from keras_cnn import cli
from keras_cnn import cli_flags
from keras_cnn import conditioning
from keras_cnn import config
from keras_cnn.data import formats

FLAGS = flags.FLAGS
cli_flags.define_predict_flags()
flags.adopt_module_key_flags(cli_flags)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  cli.require_flags("model", "out")
  from keras_cnn import inference

  settings = cli_flags.apply_config_from_flags(config.PredictConfig)
  cli.check_output_path(FLAGS.out, is_dir=False)
  targeted = formats.snapshot_targeted_by(FLAGS.out)
  if targeted is not None:
    raise app.UsageError(
        f"--out={FLAGS.out} would be read as the x_HII target of the snapshot at "
        f"z={formats.format_redshift(targeted.redshift)} whose density and sources are in that "
        "folder, so evaluate and train would score the prediction against itself; choose "
        "another file name or folder")
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

"""How much of x_HII the excursion-set features explain on their own.

  python -m keras_cnn.benchmarks.excursion_ceiling --excursion_radii=0,1,2,4,8,15

Computes the features of `keras_cnn.model.ExcursionFeatures` (log sphere means of
density and sources, and their largest difference) at every voxel of the synthetic
training, validation and test boxes, then scores on the test box:

- `threshold`: one cut on the largest log-ratio, chosen on the training box (the form of
  an excursion-set rule with one efficiency);
- `mlp`: a small network (two ReLU layers) trained on the training box's features alone,
  `--mlp_steps` steps of 1,024 voxels.

Neither sees the feature maps of the convolutions; what they reach is what the features
alone carry, a reference for a model that has them (`--excursion_radii` of `train`).
One JSON object per scorer: `scorer`, `radii`, `r2`, `ionized_accuracy`.
"""

import json

from absl import app
from absl import flags

FLAGS = flags.FLAGS
flags.DEFINE_list(
    "excursion_radii",
    ["0", "1", "1.5", "2", "2.5", "3", "3.5", "4", "5", "6", "7", "8", "9.5", "11", "13", "15"],
    "Sphere radii in cells.")
flags.DEFINE_integer("radius", 15, "Crop radius the spheres are cut to.")
flags.DEFINE_integer("n_cells", 64, "Box side.")
flags.DEFINE_integer("data_seed", 0, "Seed of the synthetic splits.")
flags.DEFINE_integer("mlp_steps", 3000, "Training steps of the small network (0: skip it).")


def main(argv) -> None:
  del argv
  import keras
  import numpy as np

  from keras_cnn import model as model_lib
  from keras_cnn.data import simulate
  from keras_cnn.data import snapshot as snapshot_lib

  keras.utils.set_random_seed(FLAGS.data_seed)
  radii = [float(r) for r in FLAGS.excursion_radii]
  boxes = {k: v[0] for k, v in simulate.synthetic_splits(FLAGS.n_cells, FLAGS.data_seed).items()}
  fields = {k: (snapshot_lib.overdensity(b.rho), b.n_src, b.x_hii) for k, b in boxes.items()}
  source_mean = float(fields["train"][1].mean())
  layer = model_lib.ExcursionFeatures(radii, source_mean, dtype="float32")
  features, targets = {}, {}
  for split, (n_igm, n_src, x_hii) in fields.items():
    index = np.ix_(*[np.arange(-FLAGS.radius, n + FLAGS.radius) % n for n in n_igm.shape])
    tiles = [np.asarray(f[index], np.float32)[None, ..., None] for f in (n_igm, n_src)]
    out = keras.ops.convert_to_numpy(layer.tile(*tiles, FLAGS.radius))
    features[split] = out.reshape(-1, out.shape[-1])
    targets[split] = np.asarray(x_hii, np.float32).ravel()

  def report(scorer, pred):
    truth = targets["test"]
    r2 = 1.0 - float(np.mean((pred - truth) ** 2) / np.var(truth))
    accuracy = float(np.mean((pred > 0.5) == (truth > 0.5)))
    print(
        json.dumps({
            "scorer": scorer,
            "radii": radii,
            "r2": round(r2, 4),
            "ionized_accuracy": round(accuracy, 4)
        }), flush=True)

  largest = {k: v[:, -1] for k, v in features.items()}
  cuts = np.quantile(largest["train"], np.linspace(0.05, 0.95, 901))
  errors = [np.mean((largest["train"] >= c) != (targets["train"] > 0.5)) for c in cuts]
  report("threshold", (largest["test"] >= cuts[int(np.argmin(errors))]).astype(np.float32))
  if FLAGS.mlp_steps:
    mean, std = features["train"].mean(axis=0), features["train"].std(axis=0) + 1e-6
    net = keras.Sequential([
        keras.Input((features["train"].shape[1],)),
        keras.layers.Dense(128, activation="relu"),
        keras.layers.Dense(64, activation="relu"),
        keras.layers.Dense(1, activation="sigmoid")
    ])
    net.compile(keras.optimizers.Adam(1e-3), "mse")
    rng = np.random.default_rng(FLAGS.data_seed)
    x, y = (features["train"] - mean) / std, targets["train"]
    for _ in range(FLAGS.mlp_steps):
      batch = rng.integers(0, len(y), 1024)
      net.train_on_batch(x[batch], y[batch])
    report("mlp", net.predict((features["test"] - mean) / std, batch_size=8192, verbose=0).ravel())


if __name__ == "__main__":
  app.run(main)

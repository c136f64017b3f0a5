"""keras_cnn: a two-branch 3D CNN that emulates radiative transfer during reionization.

Importing the package registers its Keras layers (`keras_cnn.model`, `keras_cnn.dense`),
so a shared `.keras` file loads after `import keras_cnn` alone:

  import keras
  import keras_cnn
  model = keras.saving.load_model("model.keras", safe_mode=True)

Nothing else is imported: the data pipeline, training, inference and the commands load
on first use (`from keras_cnn import inference`, `python -m keras_cnn.predict`).
"""

from keras_cnn import dense as _dense  # noqa: F401  (registers the custom layers)

"""`python -m keras_cnn.lightcone`: x_HII and 21-cm lightcones of a painted history.

  python -m keras_cnn.lightcone --maps=painted/ --data_dir=boxes/ --out=lightcone/

--maps is a folder of x_HII maps xHII_z{z:.3f}.npy at two or more redshifts (an
index.json beside them is not needed); --data_dir the snapshot folder they were painted
from, whose densities give the brightness temperature and whose x_HII targets, where
present, the true global history. Writes to --out:

  lightcone.npz       xhii and dtb (N, N, L: the line of sight last), redshift and
                      comoving_distance_mpc (L,), the global history (map_redshift,
                      mean_xhii, mean_xhii_true: NaN without target), los_axis,
                      cell_size_mpc
  lightcone.png       a slice of both lightcones
  global_history.png  mean x_HII against redshift, painted and true

The lightcones are tools21cm's `make_lightcone` (extra `astro`). Every map is checked
against its box before any work; each output appears only when complete. An existing
non-empty --out folder is refused unless --overwrite.

"""

import os

from absl import app
from absl import flags
from absl import logging

from keras_cnn import cli
from keras_cnn import cli_flags
from keras_cnn import config
from keras_cnn.data import formats

FLAGS = flags.FLAGS
cli_flags.define_lightcone_flags()
flags.adopt_module_key_flags(cli_flags)


def main(argv, flag_values=FLAGS):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  cli.require_flags("maps", "data_dir", "out", flag_values=flag_values)
  settings = cli_flags.config_from_flags(config.LightconeConfig, flag_values)
  out = flag_values.out
  if os.path.isfile(out):
    raise app.UsageError(f"--out={out} is a file; the lightcone command writes a folder")
  cli.check_output_path(out, is_dir=True, flag_values=flag_values)
  z_range = settings.z_range
  from keras_cnn import metrics

  if not metrics.tools21cm_available():
    raise app.UsageError("the lightcone is built by tools21cm, which is not installed: "
                         "pip install keras_cnn[astro]")
  from keras_cnn import lightcones

  lightcones.check_z_range(z_range, [z for z, _ in lightcones.find_maps(flag_values.maps)])
  history = lightcones.read_history(flag_values.maps, flag_values.data_dir,
                                    data_format=flag_values.data_format,
                                    box_size_mpc=flag_values.box_size_mpc)
  logging.info("Building lightcones along axis %d from %d maps, z = %s to %s.", settings.axis,
               len(history.redshifts), formats.format_redshift(history.redshifts[0]),
               formats.format_redshift(history.redshifts[-1]))
  cones = lightcones.build_lightcones(history, axis=settings.axis,
                                      cell_size_mpc=flag_values.cell_size_mpc, z_range=z_range,
                                      interpolation=settings.interpolation)
  os.makedirs(out, exist_ok=True)
  path = lightcones.save_lightcones(cones, os.path.join(out, lightcones.LIGHTCONE_FILE),
                                    axis=settings.axis, cell_size_mpc=flag_values.cell_size_mpc)
  figures = lightcones.plot_lightcones(cones, out, cell_size_mpc=flag_values.cell_size_mpc)
  redshift = cones["redshift"]
  print(f"Wrote x_HII and dT_b lightcones of shape {tuple(cones['xhii'].shape)} "
        f"(z = {redshift[0]:.3f} to {redshift[-1]:.3f}) to {path}, and "
        f"{', '.join(os.path.basename(f) for f in figures)}")


if __name__ == "__main__":
  cli.run(main)

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

The flags are defined when the module runs as a program (`define_flags`), so importing
it next to the other commands defines none.
"""

import os

from absl import app
from absl import flags
from absl import logging

from keras_cnn import cli_flags
from keras_cnn import conventions
from keras_cnn.data import formats

FLAGS = flags.FLAGS

DEFAULT_AXIS = 0
DEFAULT_CELL_SIZE_MPC = conventions.CELL_SIZE_MPC
DEFAULT_INTERPOLATION = "linear"
DEFAULT_DATA_FORMAT = "auto"


def define_flags(flag_values=FLAGS) -> None:
  """The flags of `keras_cnn.lightcone`, in `flag_values`."""
  flags.DEFINE_string(
      "maps", None, "Required. Folder of painted x_HII maps xHII_z{z:.3f}.npy, "
      "two or more redshifts.", flag_values=flag_values)
  flags.DEFINE_string(
      "data_dir", None, "Required. The snapshot folder the maps were painted from: its "
      "densities (dT_b) and, where present, x_HII targets (the true history).",
      flag_values=flag_values)
  flags.DEFINE_string("out", None, "Required. Output folder (lightcone.npz, PNGs).",
                      flag_values=flag_values)
  flags.DEFINE_integer("axis", DEFAULT_AXIS, "Axis of the boxes along the line of sight.",
                       lower_bound=0, upper_bound=2, flag_values=flag_values)
  flags.DEFINE_float("cell_size_mpc", DEFAULT_CELL_SIZE_MPC,
                     "Comoving cell side in cMpc: the spacing of the lightcone's slices.",
                     flag_values=flag_values)
  flags.DEFINE_list(
      "z_range", None, "low,high: the redshifts the lightcone spans, within those of the maps "
      "(default: all of them).", flag_values=flag_values)
  flags.DEFINE_enum(
      "interpolation", DEFAULT_INTERPOLATION, ["linear", "step", "sigmoid", "step_cell"],
      "How a slice between two maps' redshifts mixes them (tools21cm's make_lightcone).",
      flag_values=flag_values)
  flags.DEFINE_enum("data_format", DEFAULT_DATA_FORMAT, list(formats.DATA_FORMATS),
                    "Layout of the --data_dir files (as for predict).", flag_values=flag_values)
  flags.DEFINE_float("box_size_mpc", None,
                     "CubeP3M box side in cMpc/h, for C2-Ray source lists (as for "
                     "predict).", flag_values=flag_values)
  flags.DEFINE_boolean("overwrite", False, "Replace our files in an existing --out.",
                       flag_values=flag_values)
  flags.register_validator("cell_size_mpc", lambda v: v > 0, message="--cell_size_mpc must be > 0",
                           flag_values=flag_values)


def _z_range(values):
  if values is None:
    return None
  try:
    return tuple(float(v) for v in values)
  except ValueError:
    raise app.UsageError(
        f"--z_range needs two redshifts, low,high; got {','.join(values)}") from None


def main(argv, flag_values=FLAGS):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  cli_flags.require_flags("maps", "data_dir", "out", flag_values=flag_values)
  out = flag_values.out
  if os.path.isfile(out):
    raise app.UsageError(f"--out={out} is a file; the lightcone command writes a folder")
  cli_flags.check_output_path(out, is_dir=True, flag_values=flag_values)
  z_range = _z_range(flag_values.z_range)
  from keras_cnn import metrics

  if not metrics.tools21cm_available():
    raise app.UsageError("the lightcone is built by tools21cm, which is not installed: "
                         "pip install keras_cnn[astro]")
  from keras_cnn import lightcones

  lightcones.check_z_range(z_range, [z for z, _ in lightcones.find_maps(flag_values.maps)])
  history = lightcones.read_history(flag_values.maps, flag_values.data_dir,
                                    data_format=flag_values.data_format,
                                    box_size_mpc=flag_values.box_size_mpc)
  logging.info("Building lightcones along axis %d from %d maps, z = %s to %s.", flag_values.axis,
               len(history.redshifts), formats.format_redshift(history.redshifts[0]),
               formats.format_redshift(history.redshifts[-1]))
  cones = lightcones.build_lightcones(history, axis=flag_values.axis,
                                      cell_size_mpc=flag_values.cell_size_mpc, z_range=z_range,
                                      interpolation=flag_values.interpolation)
  os.makedirs(out, exist_ok=True)
  path = lightcones.save_lightcones(cones, os.path.join(out, lightcones.LIGHTCONE_FILE),
                                    axis=flag_values.axis, cell_size_mpc=flag_values.cell_size_mpc)
  figures = lightcones.plot_lightcones(cones, out, cell_size_mpc=flag_values.cell_size_mpc)
  redshift = cones["redshift"]
  print(f"Wrote x_HII and dT_b lightcones of shape {tuple(cones['xhii'].shape)} "
        f"(z = {redshift[0]:.3f} to {redshift[-1]:.3f}) to {path}, and "
        f"{', '.join(os.path.basename(f) for f in figures)}")


if __name__ == "__main__":
  define_flags()
  cli_flags.run(main)

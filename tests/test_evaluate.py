"""evaluate: metrics on hand-made arrays, power spectra, figures, the JSON line."""

import json
import os

from absl import flags
from absl.testing import flagsaver
import keras
import numpy as np
import pytest

from keras_cnn import conventions
from keras_cnn import evaluate
from keras_cnn import inference
from keras_cnn import metrics
from keras_cnn import plots
from keras_cnn.data import snapshot as snapshot_lib
from keras_cnn.model import ModelConfig, build_model

TINY = ModelConfig(radius=2, kernel_size=3, filters=2, stride_conv=1, kernel_pooling=1,
                   padding="same")
SHAPE = (10, 9, 8)
REDSHIFT = 8.397
BATCH = 32
METRIC_KEYS = {
    "r2", "mse", "mean_xhii_true", "mean_xhii_pred", "num_voxels", "num_boxes", "full_volume",
    "r_k_mean", "pk_ratio_mean", "power_spectrum_method", "engine"
} | set(metrics.MAP_SCORE_KEYS)
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def tiny_snapshot(seed=0) -> snapshot_lib.Snapshot:
  rng = np.random.default_rng(seed)
  return snapshot_lib.Snapshot(rho=rng.lognormal(0.0, 0.5, SHAPE).astype(np.float32),
                               n_src=rng.poisson(0.5, SHAPE).astype(np.float32),
                               x_hii=rng.random(SHAPE, dtype=np.float32), redshift=REDSHIFT,
                               name=f"tiny{seed}")


@pytest.fixture(scope="module")
def model():
  keras.utils.set_random_seed(0)
  return build_model(TINY, n_igm_stats=(0.0, 0.3), n_src_stats=(0.3, 0.2))


def _is_png(path) -> bool:
  with open(path, "rb") as stream:
    return stream.read(8) == PNG_MAGIC


def _no_temporaries(folder) -> bool:
  return not [f for f in os.listdir(folder) if f.startswith(".") or f.endswith(".tmp")]


# -- regression metrics -----------------------------------------------------------------


def test_perfect_prediction_scores_one():
  y = np.random.default_rng(0).random(100)
  result = metrics.regression_metrics(y, y.copy())
  assert result["r2"] == 1.0 and result["mse"] == 0.0
  assert result["mean_xhii_true"] == result["mean_xhii_pred"] == pytest.approx(y.mean())
  assert result["num_voxels"] == 100


@pytest.mark.parametrize("constant,expected_r2", [(None, 0.0), (0.9, None)])
def test_constant_prediction_scores_at_most_zero(constant, expected_r2):
  y = np.linspace(0.0, 1.0, 11)
  y_pred = np.full_like(y, y.mean() if constant is None else constant)
  result = metrics.regression_metrics(y, y_pred)
  assert result["r2"] <= 0.0
  if expected_r2 is not None:
    assert result["r2"] == pytest.approx(expected_r2, abs=1e-12)


def test_metrics_on_a_hand_computed_case():
  result = metrics.regression_metrics([[0.0, 0.5, 1.0]], [0.0, 0.5, 0.5])
  # residual 0.25, total variation 0.5
  assert result == pytest.approx({
      "r2": 0.5,
      "mse": 0.25 / 3,
      "mean_xhii_true": 0.5,
      "mean_xhii_pred": 1.0 / 3,
      "num_voxels": 3
  })


def test_constant_truth_and_bad_inputs():
  assert metrics.regression_metrics([1.0, 1.0], [1.0, 1.0])["r2"] == 1.0
  assert metrics.regression_metrics([1.0, 1.0], [0.5, 1.0])["r2"] == 0.0
  with pytest.raises(ValueError, match="y_true has 3 values but y_pred has 2"):
    metrics.regression_metrics([0, 1, 0], [0, 1])
  with pytest.raises(ValueError, match="y_pred has 1 non-finite values"):
    metrics.regression_metrics([0, 1], [0, np.nan])
  with pytest.raises(ValueError, match="y_true is empty"):
    metrics.regression_metrics([], [])


# -- power spectra ----------------------------------------------------------------------


def test_plane_wave_power_lands_in_its_shell():
  n, length, m = 16, 32.0, 3
  x = np.arange(n)[:, None, None]
  field = np.broadcast_to(np.cos(2 * np.pi * m * x / n), (n, n, n))
  spectrum = metrics.power_spectrum_comparison(field, field, length, kbins=8, method="numpy")
  edges = metrics.k_bin_edges((n, n, n), length, kbins=8)
  k_wave = 2 * np.pi * m / length
  shell = np.searchsorted(edges, k_wave) - 1
  centres = np.sqrt(edges[:-1] * edges[1:])
  row = int(np.flatnonzero(np.isclose(spectrum["k"], centres[shell]))[0])
  # two modes (+-k) of power V/4 each, averaged over the shell's modes
  assert spectrum["pk_true"][row] == pytest.approx(2 * length ** 3 / 4 / spectrum["n_modes"][row],
                                                   rel=1e-9)
  others = np.delete(spectrum["pk_true"], row)
  assert np.all(others < 1e-20 * spectrum["pk_true"][row])
  assert spectrum["r_k"][row] == pytest.approx(1.0)


def test_cross_correlation_of_scaled_and_noisy_maps():
  rng = np.random.default_rng(1)
  truth = rng.random((12, 12, 12))
  scaled = metrics.power_spectrum_comparison(truth, 2.0 * truth + 0.1, 30.0, method="numpy")
  np.testing.assert_allclose(scaled["r_k"], 1.0, rtol=1e-9)
  np.testing.assert_allclose(scaled["pk_pred"], 4.0 * scaled["pk_true"], rtol=1e-9)
  noisy = metrics.power_spectrum_comparison(truth, truth + rng.random(truth.shape), 30.0,
                                            method="numpy")
  assert np.all(noisy["r_k"] < 1.0) and np.all(noisy["r_k"] > 0.3)
  flat = metrics.power_spectrum_comparison(truth, np.full(truth.shape, 0.37), 30.0, method="numpy")
  assert np.isnan(flat["r_k"]).all()
  assert metrics.power_spectrum_summary(flat)["r_k_mean"] is None


def test_tools21cm_and_numpy_agree():
  pytest.importorskip("tools21cm")
  rng = np.random.default_rng(2)
  truth = rng.random((12, 10, 16))
  pred = truth + 0.3 * rng.random(truth.shape)
  box = (28.6, 23.8, 38.1)
  ours = metrics.power_spectrum_comparison(truth, pred, box, kbins=10, method="numpy")
  theirs = metrics.power_spectrum_comparison(truth, pred, box, kbins=10, method="tools21cm")
  assert theirs["method"] == "tools21cm" and ours["method"] == "numpy"
  for key in ("k", "pk_true", "pk_pred", "pk_cross", "r_k", "n_modes"):
    np.testing.assert_allclose(theirs[key], ours[key], rtol=1e-9, err_msg=key)


# -- figures ----------------------------------------------------------------------------


def test_every_plot_writes_a_png_atomically(tmp_path):
  rng = np.random.default_rng(3)
  truth = rng.random(SHAPE)
  pred = np.clip(truth + 0.1 * rng.standard_normal(SHAPE), 0, 1)
  history = tmp_path / "history.csv"
  history.write_text("epoch,learning_rate,loss,r2,val_loss,val_r2\n"
                     "0,0.001,0.09,0.10,0.08,0.20\n1,0.001,0.05,0.45,0.06,0.40\n"
                     "2,0.0005,0.04,0.55,0.05,0.52\n")
  spectrum = metrics.power_spectrum_comparison(truth, pred, 20.0, method="numpy")
  out = tmp_path / "figures"
  written = [
      plots.plot_history(str(history), str(out / "history.png")),
      plots.plot_pred_vs_true(truth, pred, str(out / "pred_vs_true.png")),
      plots.plot_slices(truth, pred, str(out / "slices.png")),
      plots.plot_power_spectra(spectrum, str(out / "power_spectra.png"), title="test"),
  ]
  assert all(_is_png(path) for path in written)
  assert sorted(
      os.listdir(out)) == ["history.png", "power_spectra.png", "pred_vs_true.png", "slices.png"]


# -- evaluate ---------------------------------------------------------------------------


@pytest.mark.backend
def test_evaluate_model_scores_the_whole_map(tmp_path, model):
  box = tiny_snapshot()
  result = inference.evaluate_model(model, [box], str(tmp_path), batch_size=BATCH,
                                    power_spectrum="numpy", progress=False, cell_size_mpc=2.0)
  assert set(result) == METRIC_KEYS
  full_map = inference.predict_volume(model, box.n_igm, box.n_src, batch_size=BATCH, progress=False)
  expected = metrics.regression_metrics(box.x_hii, full_map)
  for key in ("r2", "mse", "mean_xhii_true", "mean_xhii_pred", "num_voxels"):
    assert result[key] == pytest.approx(expected[key], rel=1e-6)
  assert result["num_voxels"] == np.prod(SHAPE)
  assert result["full_volume"] is True and result["power_spectrum_method"] == "numpy"
  assert result["r_k_mean"] is not None
  assert json.loads((tmp_path / "metrics.json").read_text()) == result
  physics = metrics.map_scores(box.x_hii, full_map, box.n_igm, REDSHIFT, 2.0, method="numpy")
  for key in metrics.MAP_SCORE_KEYS:
    if isinstance(physics[key], float):
      assert result[key] == pytest.approx(physics[key], rel=1e-5, abs=1e-9), key
    else:
      assert result[key] == physics[key], key
  for key in ("ionized_accuracy", "xhii_r_k_min", "dtb_r_k_min", "bsd_peak_radius_true_mpc"):
    assert result[key] is not None, key
  assert result["bsd_method"] == result["dtb_method"] == "numpy"
  for name in ("pred_vs_true.png", "slices.png", "power_spectra.png", "summary.png"):
    assert _is_png(tmp_path / name), name
  rows = (tmp_path / "power_spectrum.csv").read_text().splitlines()
  assert rows[0].startswith("box,k_per_cmpc,pk_true_cmpc3") and len(rows) > 2
  assert _no_temporaries(tmp_path)


@pytest.mark.backend
def test_evaluate_samples_voxels_of_large_boxes(tmp_path, model):
  boxes = [tiny_snapshot(0), tiny_snapshot(1)]
  result = inference.evaluate_model(model, boxes, str(tmp_path), batch_size=BATCH,
                                    max_full_voxels=100, num_examples=50, progress=False)
  assert result["num_voxels"] == 100 and result["num_boxes"] == 2
  assert result["full_volume"] is False and result["r_k_mean"] is None
  assert 0.0 <= result["ionized_accuracy"] <= 1.0  # pooled over the sampled voxels
  assert result["xhii_r_k_min"] is None and result["bsd_peak_ratio"] is None
  assert sorted(os.listdir(tmp_path)) == ["metrics.json", "pred_vs_true.png"]


def test_evaluate_needs_targets(tmp_path, model):
  box = tiny_snapshot()
  box.x_hii = None
  with pytest.raises(ValueError, match="tiny0: field 'x_hii' is missing"):
    inference.evaluate_model(model, [box], str(tmp_path), progress=False)


@pytest.mark.backend
def test_command_prints_one_json_line_and_writes_artifacts(tmp_path, model, capfd):
  workdir = tmp_path / "run"
  workdir.mkdir()
  model.save(str(workdir / "model.keras"))
  (workdir / "history.csv").write_text("epoch,loss,r2,val_loss,val_r2\n0,0.1,0.2,0.1,0.3\n"
                                       "1,0.08,0.3,0.09,0.35\n")
  data_dir = tmp_path / "box"
  snapshot_lib.save_snapshot(tiny_snapshot(5), str(data_dir))
  out = tmp_path / "eval"
  capfd.readouterr()
  with flagsaver.flagsaver():
    flags.FLAGS.unparse_flags()
    flags.FLAGS([
        "evaluate", f"--model={workdir / 'model.keras'}", f"--data_dir={data_dir}",
        f"--redshift={REDSHIFT}", f"--out={out}", f"--batch_size={BATCH}", "--noprogress"
    ])
    evaluate.main(["evaluate"])
  stdout = capfd.readouterr().out
  lines = stdout.splitlines()
  assert len(lines) == 1, stdout
  printed = json.loads(lines[0])
  assert set(printed) == METRIC_KEYS
  assert json.loads((out / "metrics.json").read_text()) == printed
  for name in ("pred_vs_true.png", "slices.png", "power_spectra.png", "summary.png", "history.png"):
    assert _is_png(out / name), name


def test_evaluate_refuses_to_write_into_a_training_workdir(tmp_path, model):
  from absl import app

  workdir = tmp_path / "run"
  workdir.mkdir()
  model.save(str(workdir / "model.keras"))
  (workdir / conventions.MANIFEST_FILE).write_text("{}")
  (workdir / "metrics.json").write_text('{"r2": 0.9}')
  for extra in ([], ["--overwrite"]):
    with flagsaver.flagsaver():
      flags.FLAGS.unparse_flags()
      flags.FLAGS([
          "evaluate", f"--model={workdir / 'model.keras'}", "--n_cells=8", f"--out={workdir}",
          "--noprogress", *extra
      ])
      with pytest.raises(app.UsageError, match="is a training workdir"):
        evaluate.main(["evaluate"])
  assert (workdir / "metrics.json").read_text() == '{"r2": 0.9}'

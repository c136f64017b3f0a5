"""The one scorer: whole boxes get the physics scores, other voxels only pooled ones."""

import json

import numpy as np
import pytest

from keras_cnn import metrics
from keras_cnn import scoring
from keras_cnn.data import simulate


@pytest.fixture(scope="module")
def box():
  snap = simulate.simulate_snapshot(16, seed=3)
  rng = np.random.default_rng(0)
  pred = np.clip(snap.x_hii + rng.normal(0.0, 0.1, snap.x_hii.shape), 0, 1).astype(np.float32)
  return scoring.WholeBox(snap.x_hii, pred, snap.n_igm, snap.redshift)


def test_a_whole_box_and_the_same_voxels_pool_alike(box):
  whole = scoring.score([box], method="numpy")
  pooled = scoring.score(voxels=[(box.true_map, box.pred_map)], method="numpy")
  for key in ("r2", "mse", "mean_xhii_true", "mean_xhii_pred", "num_voxels", "ionized_accuracy"):
    assert whole.metrics[key] == pytest.approx(pooled.metrics[key])
  assert set(whole.metrics) == set(pooled.metrics)
  assert len(whole.comparisons) == 1 and not pooled.comparisons
  for key in metrics.MAP_SCORE_KEYS:  # the ionized-map scores pool every voxel
    assert (pooled.metrics[key] is None) == (not key.startswith("ionized_"))
  assert whole.metrics["xhii_r_k_min"] is not None and whole.metrics["r_k_mean"] is not None
  assert whole.metrics["power_spectrum_method"] == "numpy"
  json.dumps(whole.metrics, allow_nan=False)  # JSON-safe as written to metrics.json


def test_physics_scores_can_be_skipped_and_nothing_is_refused(box):
  off = scoring.score([box], method="off")
  assert not off.comparisons and off.metrics["xhii_r_k_min"] is None
  assert off.metrics["num_voxels"] == box.true_map.size
  with pytest.raises(ValueError, match="nothing to score"):
    scoring.score()
